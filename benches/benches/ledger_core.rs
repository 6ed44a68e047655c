//! Throughput of tally's core: pricing + ledger rules applied to usage
//! events on in-memory state (no I/O, no encoding), with 10k and 1M
//! accounts opened and funded in setup.
//!
//! Criterion reports events/s (`Throughput::Elements`); after it, each case
//! is timed again over [`ROUNDS`] rounds of a fixed number of events and
//! printed as events per second per core, best and spread (the core is
//! single-threaded: one `Ledger` per partition; the best round is the one
//! least disturbed by other work on the machine). Goal: >= 1,000,000
//! events/s per core with the full dedup window.
//!
//! What an event costs, roughly: one account lookup and one dedup probe
//! (each a cache miss once the tables outgrow the cache; prefetched
//! [`tally_ledger::PREFETCH_AHEAD`] events ahead, as the metering loop
//! prefetches the inputs it decodes ahead, so that they overlap the work
//! on the events before), seven small strings for the entry (allocated, and
//! freed when the entry is dropped), and exact decimal arithmetic with the
//! invariant checks.
//!
//! Run: `cargo bench -p tally-benches --bench ledger_core` (under a minute
//! once built). A bare argument filters the cases by substring of their
//! id, for criterion and for the rounds alike: `cargo bench -p
//! tally-benches --bench ledger_core -- 1M_accounts`.

use std::{hint::black_box, time::Duration, time::Instant};

use chrono::TimeDelta;
use criterion::{BenchmarkId, Criterion, Throughput};
use tally_benches::UsageWorkload;
use tally_events::records::Input;
use tally_ledger::pricing;

/// Events per criterion iteration: large enough that the loop, not the
/// timer, dominates.
const BATCH: usize = 10_000;

/// Distinct events in the pool (ids, times and accounts are renewed on
/// each use).
const POOL: usize = tally_benches::POOL_SIZE;

/// Events of one round of the explicit per-core measurement.
const MEASURED_EVENTS: usize = 1_000_000;

/// Rounds of the explicit measurement: the best shows the core, the spread
/// shows how noisy the machine was.
const ROUNDS: usize = 3;

/// Applies one event and keeps the result observable. By reference: moving
/// the ~400-byte result into `black_box` cost a memcpy per event that the
/// service does not pay.
fn apply_one(workload: &mut UsageWorkload) {
    let applied = workload.apply_next();
    black_box(&applied);
}

fn ledger_core(c: &mut Criterion, filter: Option<&str>) {
    let mut figures = Vec::new();
    // Events 1 s apart keep ~605k ids in the 7-day dedup window: the map
    // outgrows the cache and costs memory misses per event. The last case
    // (10 min apart, ~1k ids) shows the core's CPU cost without them.
    let cases = [
        ("10k_accounts", 10_000, TimeDelta::seconds(1)),
        ("1M_accounts", 1_000_000, TimeDelta::seconds(1)),
        ("10k_accounts_small_dedup", 10_000, TimeDelta::minutes(10)),
    ];
    for (label, accounts, spacing) in cases {
        if filter.is_some_and(|filter| !format!("ledger_core/apply_usage/{label}").contains(filter)) {
            continue;
        }
        let setup = Instant::now();
        let mut workload = UsageWorkload::with_spacing(accounts, POOL, spacing);
        println!("setup of {label}: {} accounts opened and funded in {:.1?}", accounts, setup.elapsed());

        let mut group = c.benchmark_group("ledger_core");
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("apply_usage", label), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    apply_one(&mut workload);
                }
            })
        });
        group.finish();

        let mut rates = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..MEASURED_EVENTS {
                apply_one(&mut workload);
            }
            rates.push(MEASURED_EVENTS as f64 / started.elapsed().as_secs_f64());
        }
        let best = rates.iter().copied().fold(0.0, f64::max);
        let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let stats = workload.ledger.stats();
        figures.push(format!(
            "ledger_core apply_usage {label:<26} {best:>9.0} events/s per core (best of {ROUNDS} rounds of \
             {MEASURED_EVENTS} events, worst {worst:.0}; {} accounts, {} dedup ids held)",
            stats.accounts, stats.dedup_ids
        ));
    }

    if filter.is_some_and(|filter| !"ledger_core/price_usage".contains(filter)) {
        print_figures(&figures);
        return;
    }
    // Pricing alone (rate lookup, credits, dollars): the share of the work
    // that is arithmetic, for profiling.
    let workload = UsageWorkload::new(1_000, POOL);
    let rates = std::sync::Arc::clone(workload.ledger.rates());
    let events: Vec<_> = workload
        .pool()
        .iter()
        .filter_map(|input| match input {
            Input::Usage(event) => Some(event.clone()),
            _ => None,
        })
        .take(BATCH)
        .collect();
    let mut group = c.benchmark_group("ledger_core");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("price_usage", |b| {
        b.iter(|| {
            for event in &events {
                let version = rates.version_at(event.occurred_at).unwrap_or_else(|| panic!("in force"));
                let rate = version.service(&event.service, &event.engine).unwrap_or_else(|| panic!("priced"));
                let credits = pricing::usage_credits(rate.credits_per_unit(), event.quantity)
                    .unwrap_or(tally_events::Credits::ZERO);
                black_box(pricing::dollars_of_credits(
                    credits,
                    version.dollars_per_credit(tally_events::PlanTier::Payg),
                ));
            }
        })
    });
    group.finish();
    print_figures(&figures);
}

/// The per-core figures, together at the end where they are easy to find.
fn print_figures(figures: &[String]) {
    println!();
    for figure in figures {
        println!("{figure}");
    }
}

fn main() {
    // Small samples keep the whole run under a minute on 2 cores; each
    // sample is still BATCH events, so the figures are stable.
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    // The first bare argument, as criterion reads it (`--bench` and
    // options start with a dash).
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    ledger_core(&mut criterion, filter.as_deref());
    criterion.final_summary();
}
