//! Rebalance test: with `assignment = "group"` (the mode for production
//! brokers), instances join and leave one consumer group mid-run while
//! inputs arrive; the ledger must still equal the expected one.
//!
//! Default group settings (10 s session timeout). The instances are
//! supervised as in production: one that exits (superseded, or a partition
//! it saw stall because the broker's coordinator kept a killed member) is
//! started again.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, Broker};

const GROUP: [(&str, &str); 1] = [("TALLY_METERING__ASSIGNMENT", "group")];

#[tokio::test(flavor = "multi_thread")]
async fn instances_added_and_removed_mid_run_change_nothing() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 4)]).await?;
    let config =
        SimConfig { seed: 11, accounts: 120, usage_events: 30_000, duplicate_fraction: 0.05, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    let published = messages.len();
    // Inputs keep arriving while the group churns (about 20 s).
    let publishing = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move { publish_paced(&bootstrap, &messages, Some(1_500)).await })
    };
    let started = Instant::now();
    let owns = |process: &MeteringProcess| process.metric_sum("tally_metering_partitions_owned");
    let reads = |process: &MeteringProcess| process.metric_sum("tally_metering_inputs_total");
    let mut a = MeteringProcess::spawn(&bootstrap, "rebalance-a", &GROUP)?;
    wait_until("a to own and read partitions", Duration::from_secs(60), || Ok(owns(&a) > 0.0 && reads(&a) > 0.0))?;
    let mut b = MeteringProcess::spawn(&bootstrap, "rebalance-b", &GROUP)?;
    wait_until("b to take partitions from a", Duration::from_secs(90), || Ok(owns(&b) > 0.0 && reads(&b) > 0.0))?;
    eprintln!("[rebalance] b owns {} partitions at {:?}", owns(&b), started.elapsed());
    let status = a.terminate(Duration::from_secs(60))?;
    assert!(status.success(), "a leaves cleanly: {status}\n{}", a.log_tail());
    eprintln!("[rebalance] a left at {:?}", started.elapsed());
    wait_until("b to own every partition", Duration::from_secs(90), || Ok(owns(&b) >= 4.0))?;
    let mut a = MeteringProcess::spawn(&bootstrap, "rebalance-a2", &GROUP)?;
    wait_until("a to take partitions again", Duration::from_secs(90), || Ok(owns(&a) > 0.0))?;
    eprintln!("[rebalance] a joined again at {:?}", started.elapsed());
    b.kill();
    eprintln!("[rebalance] b killed at {:?}", started.elapsed());
    let mut c = MeteringProcess::spawn(&bootstrap, "rebalance-c", &GROUP)?;
    eprintln!("[rebalance] c joined at {:?}", started.elapsed());

    publishing.await??;
    let expected = expected(&bootstrap, published)?;
    let actual = wait_for_ledger_supervising(&bootstrap, &expected, Duration::from_secs(300), &mut [&mut a, &mut c])?;
    let report = compare(&expected, &actual);
    report.print("rebalance");
    eprintln!("[rebalance] supervisor restarts: a {} c {}", a.restarts, c.restarts);
    assert!(report.passed(), "ledger differs after rebalances\n{}", a.log_tail());
    assert!(report.claims >= 8, "partitions changed hands: {} claims", report.claims);
    Ok(())
}
