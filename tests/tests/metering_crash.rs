//! Crash test: kill -9 the metering process at random moments and at named
//! points while workers keep publishing 50,000+ inputs; the ledger must
//! equal the one the core computes offline, entry for entry, and every
//! restart must consume every partition again within the stated bound.
//!
//! The service runs with the shipped defaults (fixed assignment, one
//! instance). The one exception is the round that crashes right after a
//! snapshot: the default cadence (a snapshot per 100,000 entries) is more
//! than this whole run writes, so that round snapshots every 1,000.
//!
//! The seed is printed; set TALLY_TEST_SEED to replay a run.

mod support;

use std::time::{Duration, Instant};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use support::*;
use tally_events::{EntryStatus, EntryType};
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, Broker};

/// Every partition is consumed again within this long of a restart (see
/// `assignment = "fixed"` in pipelines/metering.toml).
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// Inputs per second the workers publish. They keep publishing through
/// every fault, and stop once the final run consumes every partition and
/// at least [`INPUTS_MIN`] are published.
const PUBLISH_RATE: u32 = 1_000;

/// The least the run publishes.
const INPUTS_MIN: usize = 50_000;

const PARTITIONS: i32 = 4;

/// A broker with the input topic, and workers publishing a fault-test
/// workload over `accounts` accounts at [`PUBLISH_RATE`] on a task: more
/// inputs than a run publishes (the publisher stops when `paced` says).
async fn paced_workload(
    seed: u64,
    accounts: u32,
) -> anyhow::Result<(Broker, String, Paced, tokio::task::JoinHandle<anyhow::Result<usize>>)> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, PARTITIONS)]).await?;
    let config = SimConfig {
        seed,
        accounts,
        usage_events: 200_000,
        duplicate_fraction: 0.05,
        late_fraction: 0.01,
        malformed_fraction: 0.005,
        ..SimConfig::default()
    };
    let messages: Vec<_> = Simulator::new(config).collect();
    let paced = Paced::default();
    let publishing = {
        let (bootstrap, paced) = (bootstrap.clone(), paced.clone());
        tokio::spawn(async move { publish_until(&bootstrap, &messages, Some(PUBLISH_RATE), &paced).await })
    };
    Ok((broker, bootstrap, paced, publishing))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_while_inputs_arrive_loses_doubles_and_conflicts_nothing() -> anyhow::Result<()> {
    let seed = seed();
    eprintln!("[crash] seed {seed} (TALLY_TEST_SEED={seed} replays it)");
    let (_broker, bootstrap, paced, publishing) = paced_workload(seed, 300).await?;

    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut recoveries = Vec::new();
    let mut logs = Vec::new();
    for round in 0..5 {
        let mut metering = MeteringProcess::spawn(&bootstrap, "crash", &[])?;
        logs.push(metering.log.clone());
        let recovery = time_to_progress_everywhere(&metering, PARTITIONS, RECOVERY_BOUND);
        recoveries.push((format!("random round {round}"), recovery, metering.log_tail()));
        let after = Duration::from_millis(rng.random_range(0..2_500));
        std::thread::sleep(after);
        metering.kill();
        faults.push(format!(
            "round {round}: kill -9 {after:?} after every partition progressed (t={:?})",
            started.elapsed()
        ));
    }
    for point in ["before_produce", "before_ack", "after_ledger_write", "after_snapshot", "restore_after_claim"] {
        let pass = rng.random_range(1..4u32).to_string();
        let spec = format!("{point}:{pass}");
        let mut env = vec![("TALLY_CRASH_AT", spec.as_str())];
        if point == "after_snapshot" {
            env.push(("TALLY_METERING__SNAPSHOT_EVERY_ENTRIES", "1000"));
        }
        let mut metering = MeteringProcess::spawn(&bootstrap, "crash-point", &env)?;
        logs.push(metering.log.clone());
        // The point must be reached in its round: a crash point that is
        // never passed proves nothing.
        let status = metering.wait_exit(Duration::from_secs(60));
        let log = std::fs::read_to_string(&metering.log)?;
        assert!(
            status.is_some() && log.contains(&format!("fault injection: crashing at {point}")),
            "seed {seed}: {spec} was not reached within 60 s (status {status:?})\n{}",
            metering.log_tail()
        );
        faults.push(format!("crash at {spec}: {status:?} (t={:?})", started.elapsed()));
    }
    let mut metering = MeteringProcess::spawn(&bootstrap, "crash-final", &[])?;
    logs.push(metering.log.clone());
    let recovery = time_to_progress_everywhere(&metering, PARTITIONS, RECOVERY_BOUND);
    recoveries.push(("final run".to_string(), recovery, metering.log_tail()));
    while paced.published() < INPUTS_MIN {
        std::thread::sleep(Duration::from_millis(200));
    }
    paced.stop();
    let published = publishing.await??;
    let publish_done = started.elapsed();
    let expected = expected(&bootstrap, published)?;
    let catch_up = Instant::now();
    let actual = wait_for_ledger(&bootstrap, &expected, Duration::from_secs(300))?;
    for fault in &faults {
        eprintln!("[crash] {fault}");
    }
    for (what, recovery, _) in &recoveries {
        eprintln!("[crash] {what}: every partition consumed again after {recovery:?} (bound {RECOVERY_BOUND:?})");
    }
    eprintln!("[crash] publishing ended at t={publish_done:?}; the final run caught up {:?} later", catch_up.elapsed());
    let status = metering.terminate(Duration::from_secs(30))?;
    let report = compare(&expected, &actual);
    report.print("crash");

    // The scenario has what the issue asks for.
    assert!(expected.inputs >= INPUTS_MIN, "{} inputs", expected.inputs);
    let entries: Vec<_> = expected.entries.values().collect();
    let reason = |r: &str| entries.iter().filter(|e| e.reason == r).count();
    assert!(reason("insufficient_credits") > 0, "an account runs out of credits");
    assert!(reason("job_failed") > 0, "failed jobs");
    assert!(entries.iter().any(|e| e.entry_type == EntryType::Update), "a plan change");
    let versions: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.entry_type == EntryType::Consume && e.status == EntryStatus::Success)
        .map(|e| e.rate_version.as_str())
        .collect();
    assert!(versions.len() >= 2, "a rate version change: {versions:?}");
    assert!(expected.duplicates > 1_000, "5% duplicates: {}", expected.duplicates);

    assert!(status.success(), "SIGTERM exits 0: {status}\n{}", metering.log_tail());
    assert!(report.passed(), "seed {seed}: the ledger differs from the expected one\n{}", metering.log_tail());
    assert!(
        report.claims >= 6 * PARTITIONS as usize,
        "every restart claimed every partition: {} claims",
        report.claims
    );
    for (what, recovery, log) in &recoveries {
        assert!(
            recovery.is_some(),
            "seed {seed}: {what}: a partition was not consumed within {RECOVERY_BOUND:?}\n{log}"
        );
    }
    let from_snapshots = restores_from_snapshots(&logs);
    eprintln!("[crash] restores that started from a snapshot: {from_snapshots}");
    assert!(from_snapshots > 0, "restarts restored from snapshots, not only from ledger offset 0");
    Ok(())
}

/// The deliberately broken variant (state not rebuilt from the ledger on
/// restart) must fail the same check: proof that the check can fail.
#[tokio::test(flavor = "multi_thread")]
async fn the_check_catches_a_service_that_does_not_rebuild_state() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 2)]).await?;
    let config = SimConfig { seed: 5, accounts: 30, usage_events: 6_000, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    publish(&bootstrap, &messages).await?;
    let expected = expected(&bootstrap, messages.len())?;
    let broken = [("TALLY_UNSAFE_SKIP_RESTORE", "1"), ("TALLY_METERING__BATCH_SIZE_MAX", "500")];
    let mut first = MeteringProcess::spawn(
        &bootstrap,
        "broken",
        &[broken[0], broken[1], ("TALLY_CRASH_AT", "after_ledger_write:3")],
    )?;
    first.wait_exit(Duration::from_secs(60));
    first.kill();
    let _second = MeteringProcess::spawn(&bootstrap, "broken-2", &broken)?;
    let actual = wait_for_ledger(&bootstrap, &expected, Duration::from_secs(60))?;
    let report = compare(&expected, &actual);
    report.print("broken variant");
    assert!(!report.passed(), "a service that forgets its state must fail the check");
    assert!(report.lost + report.conflicting + report.doubled + report.mismatched + report.extra > 0);
    Ok(())
}

/// Two workers in one instance (`workers = 2`): each owns half of the
/// partitions, and kill -9 at random moments, a crash with records in
/// flight and a change of the worker count between restarts (partitions
/// move from one worker to another) lose, double and conflict nothing.
/// Otherwise the shipped defaults.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_split_the_partitions_and_survive_kill_9_and_a_worker_count_change() -> anyhow::Result<()> {
    let seed = seed();
    eprintln!("[workers] seed {seed} (TALLY_TEST_SEED={seed} replays it)");
    let (_broker, bootstrap, paced, publishing) = paced_workload(seed, 200).await?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    // Two workers, then one (the other's partitions move to it), then two.
    for (round, workers) in ["2", "2", "1", "2"].into_iter().enumerate() {
        let mut metering = MeteringProcess::spawn(&bootstrap, "workers", &[("TALLY_METERING__WORKERS", workers)])?;
        let recovery = time_to_progress_everywhere(&metering, PARTITIONS, RECOVERY_BOUND);
        assert!(
            recovery.is_some(),
            "seed {seed}: round {round} ({workers} workers): a partition was not consumed within {RECOVERY_BOUND:?}\n{}",
            metering.log_tail()
        );
        // The gauge sums the workers' shares.
        let owned = metering.metric_sum("tally_metering_partitions_owned");
        assert_eq!(owned, PARTITIONS as f64, "round {round}: partitions owned over {workers} workers");
        if workers == "2" {
            let log = std::fs::read_to_string(&metering.log)?;
            for (worker, partitions) in [(0, "[0, 2]"), (1, "[1, 3]")] {
                let line = format!("worker={worker} partitions={partitions}");
                assert!(log.contains(&line), "round {round}: no '{line}' in\n{}", metering.log_tail());
            }
        }
        let after = Duration::from_millis(rng.random_range(0..2_000));
        std::thread::sleep(after);
        metering.kill();
        faults.push(format!("round {round}: {workers} worker(s), kill -9 {after:?} after every partition progressed"));
    }
    // Records in flight in one worker when the process dies.
    let mut crashing = MeteringProcess::spawn(
        &bootstrap,
        "workers-crash",
        &[("TALLY_METERING__WORKERS", "2"), ("TALLY_CRASH_AT", "before_ack:3")],
    )?;
    let status = crashing.wait_exit(Duration::from_secs(60));
    let log = std::fs::read_to_string(&crashing.log)?;
    assert!(
        status.is_some() && log.contains("fault injection: crashing at before_ack"),
        "seed {seed}: before_ack:3 was not reached within 60 s (status {status:?})\n{}",
        crashing.log_tail()
    );
    faults.push(format!("crash at before_ack:3 with 2 workers: {status:?}"));
    let mut metering = MeteringProcess::spawn(&bootstrap, "workers-final", &[("TALLY_METERING__WORKERS", "2")])?;
    while paced.published() < INPUTS_MIN / 2 {
        std::thread::sleep(Duration::from_millis(200));
    }
    paced.stop();
    let published = publishing.await??;
    let expected = expected(&bootstrap, published)?;
    let actual = wait_for_ledger(&bootstrap, &expected, Duration::from_secs(300))?;
    for fault in &faults {
        eprintln!("[workers] {fault}");
    }
    let status = metering.terminate(Duration::from_secs(30))?;
    let report = compare(&expected, &actual);
    report.print("two workers");
    assert!(status.success(), "SIGTERM stops both workers and exits 0: {status}\n{}", metering.log_tail());
    assert!(report.passed(), "seed {seed}: the ledger differs from the expected one\n{}", metering.log_tail());
    assert!(report.claims >= 6 * PARTITIONS as usize, "every start claimed every partition: {} claims", report.claims);
    Ok(())
}
