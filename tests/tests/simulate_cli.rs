//! `tally simulate` publishes to a real broker and says what it sent.

use std::{collections::BTreeMap, process::Command, time::Duration};

use tally_events::{Codec, Input};
use tally_simulator::{SimConfig, Simulator, Tally};
use tally_testkit::{read_topic, tally_binary, Broker};

#[test]
fn simulate_publishes_the_workload_it_reports() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let output = Command::new(tally_binary()?)
        .args(["simulate", "--brokers", &broker.bootstrap(), "--topic", "sim-inputs", "--partitions", "4"])
        .args(["--accounts", "12", "--events", "3000", "--seed", "9", "--malformed", "0.01"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tally simulate failed:\n{stdout}\n{stderr}");

    // The same seed, generated here, is what the broker must hold.
    let config =
        SimConfig { seed: 9, accounts: 12, usage_events: 3000, malformed_fraction: 0.01, ..SimConfig::default() };
    let mut expected = Tally::default();
    let expected_payloads: Vec<Vec<u8>> =
        Simulator::new(config).inspect(|m| expected.add(m)).map(|m| m.payload).collect();
    assert!(
        stdout.contains(&format!("simulate: {} messages acknowledged", expected.total())),
        "summary names the count:\n{stdout}"
    );
    for (intent, count) in &expected.by_intent {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(intent.name()) && l.trim_end().ends_with(&count.to_string())),
            "summary line for {intent:?} = {count}:\n{stdout}"
        );
    }

    let records = read_topic(&broker.bootstrap(), "sim-inputs", Duration::from_secs(60))?;
    assert_eq!(records.len(), expected_payloads.len());
    let mut got: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone().unwrap_or_default()).collect();
    let mut want = expected_payloads;
    got.sort();
    want.sort();
    assert_eq!(got, want, "the broker holds exactly the generated messages");
    // Per-partition order equals generation order per account.
    let mut per_account: BTreeMap<String, Vec<Input>> = BTreeMap::new();
    for record in &records {
        if let Ok(input) = Codec::global().decode_input(record.payload.as_deref().unwrap_or_default()) {
            per_account.entry(input.account_id().to_string()).or_default().push(input);
        }
    }
    assert!(per_account.len() >= 12, "every account has inputs");
    Ok(())
}

#[test]
fn simulate_fails_clearly_without_a_broker() -> anyhow::Result<()> {
    let port = tally_testkit::free_port()?;
    let output = Command::new(tally_binary()?)
        .args(["simulate", "--brokers", &format!("127.0.0.1:{port}"), "--events", "10"])
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the broker"), "stderr: {stderr}");
    Ok(())
}
