//! Broker restart test with durable (SQLite) storage: the broker stops
//! cleanly, then is killed with -9, mid-run; nothing is lost or doubled.
//! The moments are random (the seed is printed; TALLY_TEST_SEED replays a
//! run): a restart can hit the group join, a restore or a batch in flight.

mod support;

use std::time::Duration;

use rand::{rngs::SmallRng, Rng, SeedableRng};
use support::*;
use tally_simulator::SimMessage;
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, Broker, Storage};

/// A durable (SQLite) broker in its own folder, with a small scenario of
/// simulator `seed` published.
async fn durable_broker_with_inputs(name: &str, seed: u64) -> anyhow::Result<(Broker, String, Vec<SimMessage>)> {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::start(Storage::Sqlite(dir.join("tansu.db")))?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 2)]).await?;
    let config = SimConfig { seed, accounts: 40, usage_events: 4_000, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    publish(&bootstrap, &messages).await?;
    Ok((broker, bootstrap, messages))
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restarts_lose_and_double_nothing() -> anyhow::Result<()> {
    let (mut broker, bootstrap, messages) = durable_broker_with_inputs("broker-restart", 23).await?;

    let mut metering = MeteringProcess::spawn(&bootstrap, "broker-restart", &[])?;
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let (first, second) = (rng.random_range(0..2_500), rng.random_range(0..2_500));
    eprintln!("[broker-restart] seed {seed} (TALLY_TEST_SEED={seed} replays it)");
    std::thread::sleep(Duration::from_millis(first));
    eprintln!("[broker-restart] clean broker restart after {first} ms");
    broker.restart()?;
    std::thread::sleep(Duration::from_millis(second));
    eprintln!("[broker-restart] broker kill -9 and start after {second} ms");
    broker.kill()?;
    std::thread::sleep(Duration::from_millis(500));
    broker.start_again()?;
    // The service rides out short outages; if it gave up (delivery timeout),
    // its supervisor restarts it: do what a supervisor does.
    let expected = expected(&bootstrap, messages.len())?;
    assert_eq!(expected.inputs, messages.len(), "the durable broker kept every input");
    // The service exits by design when a delivery fails (gapless guarantee)
    // or a restore times out; supervise it as production would.
    let actual = wait_for_ledger_supervising(&bootstrap, &expected, Duration::from_secs(240), &mut [&mut metering])?;
    let report = compare(&expected, &actual);
    report.print("broker-restart");
    assert!(report.passed(), "ledger differs after broker restarts\n{}", metering.log_tail());
    Ok(())
}

/// The broker and the metering instance die together (a power loss), then
/// both come back: the group must hand the partitions to the new instance
/// (the dead one never left the group) and the ledger must be complete.
#[tokio::test(flavor = "multi_thread")]
async fn broker_and_metering_killed_together_recover() -> anyhow::Result<()> {
    let (mut broker, bootstrap, messages) = durable_broker_with_inputs("power-loss", 29).await?;
    let expected = expected(&bootstrap, messages.len())?;
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let after = rng.random_range(300..2_000);
    eprintln!("[power-loss] seed {seed} (TALLY_TEST_SEED={seed} replays it)");
    let mut metering = MeteringProcess::spawn(&bootstrap, "power-loss", &[])?;
    std::thread::sleep(Duration::from_millis(after));
    eprintln!("[power-loss] broker and metering kill -9 after {after} ms");
    broker.kill()?;
    metering.kill();
    std::thread::sleep(Duration::from_millis(300));
    broker.start_again()?;
    let mut metering = MeteringProcess::spawn(&bootstrap, "power-loss-restarted", &[])?;
    let actual = wait_for_ledger_supervising(&bootstrap, &expected, Duration::from_secs(120), &mut [&mut metering])?;
    let report = compare(&expected, &actual);
    report.print("power-loss");
    assert!(report.passed(), "ledger differs after a power loss\n{}", metering.log_tail());
    Ok(())
}
