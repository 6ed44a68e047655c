//! Rebalance test: instances join and leave one consumer group mid-run; the
//! ledger must still equal the expected one.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, Broker};

#[tokio::test(flavor = "multi_thread")]
async fn instances_added_and_removed_mid_run_change_nothing() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 4)]).await?;
    let config =
        SimConfig { seed: 11, accounts: 120, usage_events: 30_000, duplicate_fraction: 0.05, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    // Publish in two halves so both instances have work while they churn.
    let half = messages.len() / 2;
    publish(&bootstrap, &messages[..half]).await?;
    let started = Instant::now();
    let mut a = MeteringProcess::spawn(&bootstrap, "rebalance-a", &[])?;
    std::thread::sleep(Duration::from_millis(1_500));
    let mut b = MeteringProcess::spawn(&bootstrap, "rebalance-b", &[])?;
    eprintln!("[rebalance] b joined at {:?}", started.elapsed());
    publish(&bootstrap, &messages[half..]).await?;
    std::thread::sleep(Duration::from_millis(1_500));
    let status = a.terminate(Duration::from_secs(60))?;
    assert!(status.success(), "a leaves cleanly: {status}\n{}", a.log_tail());
    eprintln!("[rebalance] a left at {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(1_000));
    let a = MeteringProcess::spawn(&bootstrap, "rebalance-a2", &[])?;
    eprintln!("[rebalance] a joined again at {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(1_500));
    b.kill();
    eprintln!("[rebalance] b killed at {:?}", started.elapsed());
    let _c = MeteringProcess::spawn(&bootstrap, "rebalance-c", &[])?;
    eprintln!("[rebalance] c joined at {:?}", started.elapsed());

    let expected = expected(&bootstrap, messages.len())?;
    let actual = wait_for_ledger(&bootstrap, &expected, Duration::from_secs(240))?;
    let report = compare(&expected, &actual);
    report.print("rebalance");
    assert!(report.passed(), "ledger differs after rebalances\n{}", a.log_tail());
    assert!(report.claims >= 8, "partitions changed hands: {} claims", report.claims);
    Ok(())
}
