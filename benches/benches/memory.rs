//! Memory bench: metering's peak resident memory at scale, from real runs
//! through the broker.
//!
//! One real Tansu broker (memory storage), 4 partitions, one workload from
//! the simulator at the scale the ledger core is benched at: 1,000,000
//! accounts (`TALLY_BENCH_ACCOUNTS`), each opened and funded, then
//! 3,000,000 usage events (`TALLY_BENCH_EVENTS`) spread over 8 simulated
//! days, so that every account is live in the ledger state and the 7-day
//! dedup window is full (it holds the last 7 days of ids and has started
//! expiring older ones). Duplicates, late and malformed inputs come in the
//! simulator's usual shares.
//!
//! Each of `TALLY_BENCH_ROUNDS` (3) rounds runs the `tally metering`
//! release binary with the shipped defaults (one worker) over all of it, on
//! fresh output topics and a fresh group: a cold start that builds the
//! whole state, cutting snapshots of it as it goes (every 100,000 entries
//! per partition). It then kills that process and starts another on the
//! same topics, which restores the state from the snapshots and the ledger
//! tail. For each it prints the peak resident set (`VmHWM`, allocator
//! slack included), as median (min-max) over the rounds, against the goal
//! of 1 GiB, beside an idle process on an empty topic (the fixed part).
//!
//! One setting differs from the shipped defaults, `on_stall = "report"`:
//! Tansu 0.6 fills a fetch response from the lowest partition up, so with
//! a backlog of millions the last partition gets nothing until the others
//! have caught up (measured: partition 3 at one offset for 60 s+ while
//! 0-2 drained), and the partition watch rightly calls that a stall. With
//! the default `exit` each restart would rebuild the state and the run
//! would measure restarts, not the state's size.
//!
//! Run: `cargo bench -p tally-benches --bench memory` (needs the Tansu
//! binary that deploy/local/install.sh caches; about 15 minutes).

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::TimeDelta;
use support::{median, publish, spread, Metering};
use tally_events::Input;
use tally_simulator::{Intent, SimConfig, Simulator};
use tally_testkit::{create_topics, tally_binary, Broker};

const PARTITIONS: i32 = 4;
const MIB: f64 = 1024.0 * 1024.0;
const GOAL_BYTES: u64 = 1 << 30;
/// See the module docs.
const SETTINGS: &[(&str, &str)] = &[("TALLY_METERING__ON_STALL", "report")];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What was published: messages, and usage events within the last 7 days
/// of simulated time (about what the dedup windows hold at the end).
struct Published {
    messages: u64,
    usage_in_window: u64,
    accounts: u32,
}

/// Generates and publishes the workload as it goes (never all of it in
/// memory), with progress.
async fn publish_workload(bootstrap: &str, accounts: u32, events: u64) -> Result<Published> {
    let span = TimeDelta::days(8);
    // A step (one photo) makes one usage event or more: calibrate the
    // step length on a small dry run so that `events` span 8 days.
    let per_step = usage_per_step();
    let mean = ((span.num_milliseconds() as f64 * per_step / events.max(1) as f64) as i64).max(1);
    let config = SimConfig {
        accounts,
        usage_events: events,
        step_millis: 1..2 * mean,
        duplicate_fraction: 0.02,
        late_fraction: 0.01,
        malformed_fraction: 0.001,
        ..SimConfig::default()
    };
    let started = Instant::now();
    let mut usage_times = Vec::with_capacity(events as usize);
    let workload = Simulator::new(config).enumerate().map(|(n, message)| {
        if let Some(Input::Usage(usage)) = &message.input {
            usage_times.push(usage.occurred_at.timestamp_millis());
        }
        if (n + 1) % 1_000_000 == 0 {
            println!("  published {} inputs in {:.0} s", n + 1, started.elapsed().as_secs_f64());
        }
        (message.key, message.payload)
    });
    let messages = publish(bootstrap, "inputs", workload, None).await?;
    let newest = usage_times.iter().copied().max().unwrap_or_default();
    let cutoff = newest - TimeDelta::days(7).num_milliseconds();
    let usage_in_window = usage_times.iter().filter(|t| **t >= cutoff).count() as u64;
    let first = usage_times.first().copied().unwrap_or_default();
    println!(
        "  published {messages} inputs in {:.0} s ({} usage events over {:.1} simulated days, {usage_in_window} of them in the last 7)",
        started.elapsed().as_secs_f64(),
        usage_times.len(),
        (newest - first) as f64 / 86_400_000.0
    );
    Ok(Published { messages, usage_in_window, accounts })
}

/// Usage events per simulator step, from a dry run with default steps.
fn usage_per_step() -> f64 {
    let config = SimConfig { accounts: 1_000, usage_events: 20_000, late_fraction: 0.0, ..SimConfig::default() };
    let mean_step = (config.step_millis.start + config.step_millis.end) as f64 / 2.0;
    let times: Vec<i64> = Simulator::new(config)
        .filter_map(|m| match m.input {
            Some(Input::Usage(u)) if m.intent == Intent::Usage => Some(u.occurred_at.timestamp_millis()),
            _ => None,
        })
        .collect();
    let (first, last) = (times.first().copied().unwrap_or_default(), times.last().copied().unwrap_or_default());
    let per_event = (last - first) as f64 / times.len().max(1) as f64;
    (mean_step / per_event.max(1.0)).max(1.0)
}

/// Waits for `done`, failing loudly if metering exits or takes too long,
/// and returns the peak resident set.
fn peak_when(metering: &mut Metering, what: &str, done: impl Fn(&Metering) -> bool) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    while !done(metering) {
        metering.check_running()?;
        if Instant::now() > deadline {
            bail!("metering did not finish {what} in 1800 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(metering.memory()?.1)
}

/// One round: a cold run over every input, then a restore of its state.
/// Returns (run peak, restore peak, inputs/s of the run).
fn round(bootstrap: &str, published: &Published, round: usize) -> Result<(u64, u64, f64)> {
    let (prefix, group) = (format!("m{round}-"), format!("bench-memory-{round}"));
    let mut run = Metering::start(bootstrap, "", &prefix, &group, 1, SETTINGS)?;
    let started = Instant::now();
    let run_peak = peak_when(&mut run, "the run", |m| m.acknowledged().unwrap_or(0) >= published.messages)?;
    let rate = published.messages as f64 / started.elapsed().as_secs_f64();
    drop(run);
    let mut restored = Metering::start(bootstrap, "", &prefix, &group, 1, SETTINGS)?;
    let restore_peak = peak_when(&mut restored, "restoring", |m| {
        m.histogram_quantile("restore_seconds", 1.0).is_some_and(|(_, count)| count >= PARTITIONS as u64)
    })?;
    Ok((run_peak, restore_peak, rate))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let accounts: u32 = env_or("TALLY_BENCH_ACCOUNTS", 1_000_000);
    let events: u64 = env_or("TALLY_BENCH_EVENTS", 3_000_000);
    let rounds: usize = env_or("TALLY_BENCH_ROUNDS", 3usize).max(1);
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[("inputs", PARTITIONS), ("idle-inputs", PARTITIONS)]).await?;
    println!(
        "memory bench: {accounts} accounts, {events} usage events over 8 simulated days, {PARTITIONS} partitions, \
         shipped defaults but on_stall = \"report\" (see the bench's docs)"
    );
    tally_binary()?;

    // The fixed part: a process that owns every partition and has no state.
    let mut idle = Metering::start(&bootstrap, "idle-", "idle-", "bench-memory-idle", 1, SETTINGS)?;
    let idle_peak = peak_when(&mut idle, "joining", |m| m.gauge("partitions_owned") == Some(PARTITIONS as i64))?;
    drop(idle);

    let published = publish_workload(&bootstrap, accounts, events).await?;
    let (mut runs, mut restores) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        let (run, restore, rate) = round(&bootstrap, &published, n)?;
        println!(
            "  round {}: run peak {:.0} MiB ({rate:.0} inputs/s), restore peak {:.0} MiB",
            n + 1,
            mib(run),
            mib(restore)
        );
        runs.push(mib(run));
        restores.push(mib(restore));
    }
    let (run, restore, goal) = (median(&runs), median(&restores), mib(GOAL_BYTES));
    let state = published.accounts as u64 + published.usage_in_window;
    println!("  idle (no state):            {:.0} MiB", mib(idle_peak));
    println!("  peak RSS, run:              {}  (goal < {goal:.0} MiB)", spread(&runs, "MiB"));
    println!("  peak RSS, restore:          {}  (goal < {goal:.0} MiB)", spread(&restores, "MiB"));
    println!(
        "  per account or windowed id: {:.0} B above idle ({} accounts + {} ids)",
        (run - mib(idle_peak)).max(0.0) * MIB / state.max(1) as f64,
        published.accounts,
        published.usage_in_window
    );
    if run.max(restore) >= goal {
        println!("  over the goal");
    }
    Ok(())
}
