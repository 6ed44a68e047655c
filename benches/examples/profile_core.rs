//! Runs the ledger core alone for profiling (`perf record`), without
//! criterion: `cargo run --release -p tally-benches --example profile_core --
//! ACCOUNTS SPACING_SECONDS EVENTS`.

use std::{hint::black_box, time::Instant};

use chrono::TimeDelta;
use tally_benches::UsageWorkload;

fn main() {
    let args: Vec<i64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let accounts = args.first().copied().unwrap_or(10_000) as usize;
    let spacing = TimeDelta::seconds(args.get(1).copied().unwrap_or(1));
    let events = args.get(2).copied().unwrap_or(5_000_000) as usize;
    let mut workload = UsageWorkload::with_spacing(accounts, tally_benches::POOL_SIZE, spacing);
    let started = Instant::now();
    for _ in 0..events {
        // By reference: passing the ~400-byte result by value copies it.
        black_box(&workload.apply_next());
    }
    let per_second = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "{accounts} accounts, {} s spacing: {per_second:.0} events/s ({} dedup ids)",
        spacing.num_seconds(),
        workload.ledger.stats().dedup_ids
    );
}
