//! Zombie test: an instance is frozen (SIGSTOP) with a batch in hand, a new
//! owner takes its partitions and claims them, then the frozen one is thawed
//! (SIGCONT). Its late writes carry an old epoch and must have no effect.
//!
//! With the shipped fixed assignment the new owner is a second instance of
//! the same index, as a supervisor that gave up on a hung process would
//! start; no session timeout comes into it.

mod support;

use std::time::Duration;

use support::*;
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, Broker};

#[tokio::test(flavor = "multi_thread")]
async fn a_thawed_zombie_has_no_effect() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 2)]).await?;
    let config = SimConfig { seed: 31, accounts: 80, usage_events: 40_000, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    let third = messages.len() / 3;
    publish(&bootstrap, &messages[..third]).await?;

    // Small batches so the zombie is likely frozen with one in hand.
    let small = [("TALLY_METERING__BATCH_SIZE_MAX", "200")];
    let zombie = MeteringProcess::spawn(&bootstrap, "zombie", &small)?;
    wait_until("the first instance to write 2,000 entries", Duration::from_secs(60), || {
        Ok(actual(&bootstrap, false)?.entries.len() >= 2_000)
    })?;
    // Keep input flowing so the zombie has a batch in hand when frozen:
    // freeze it once it reads the new inputs.
    let read_before = zombie.metric_sum("tally_metering_inputs_total");
    let publishing = {
        let bootstrap = bootstrap.clone();
        let rest = messages[third..2 * third].to_vec();
        tokio::spawn(async move { publish(&bootstrap, &rest).await })
    };
    wait_until("the zombie to read the new inputs", Duration::from_secs(60), || {
        Ok(zombie.metric_sum("tally_metering_inputs_total") > read_before + 1_000.0)
    })?;
    zombie.stop_signal();
    eprintln!("[zombie] SIGSTOP");
    publishing.await??;
    let mut owner = MeteringProcess::spawn(&bootstrap, "owner", &[])?;
    // The owner claims both partitions at once.
    wait_until("the new owner to claim", Duration::from_secs(90), || Ok(actual(&bootstrap, false)?.claims >= 3))?;
    // Thaw the zombie while the owner is writing the last third.
    let owner_read = owner.metric_sum("tally_metering_inputs_total");
    let publishing = {
        let bootstrap = bootstrap.clone();
        let rest = messages[2 * third..].to_vec();
        tokio::spawn(async move { publish(&bootstrap, &rest).await })
    };
    wait_until("the owner to read new inputs", Duration::from_secs(60), || {
        Ok(owner.metric_sum("tally_metering_inputs_total") > owner_read + 500.0)
    })?;
    zombie.continue_signal();
    eprintln!("[zombie] SIGCONT");
    publishing.await??;
    let expected = expected(&bootstrap, messages.len())?;
    // The owner exits when it finds the zombie's writes in its partition
    // (contiguity check); a supervisor restarts it.
    let actual = wait_for_ledger_supervising(&bootstrap, &expected, Duration::from_secs(240), &mut [&mut owner])?;
    let report = compare(&expected, &actual);
    report.print("zombie");
    eprintln!("[zombie] zombie log:\n{}", zombie.log_tail());
    assert!(report.passed(), "the zombie changed the ledger\n{}", owner.log_tail());
    Ok(())
}
