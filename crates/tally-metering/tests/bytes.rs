//! The bytes metering writes, pinned: ledger entries, alerts, dead letters
//! and snapshot chunks of a fixed simulated run, through the same `step`
//! the service runs. A refactor must leave every byte as it was (entries
//! are compared byte for byte by replays, and readers match copies); a
//! change of format is a new schema version and a new pin, on purpose.

use std::sync::Arc;

use tally_events::{Codec, Epoch, SourceOffset};
use tally_ledger::{Ledger, LedgerConfig, RateTable};
use tally_metering::{
    snapshot::{chunks, SnapshotPoint},
    step::{step, Step},
};
use tally_simulator::{SimConfig, Simulator};
use xxhash_rust::xxh3::xxh3_128;

/// Digest of every record written, each length-prefixed, in order.
struct Written {
    bytes: Vec<u8>,
    records: usize,
}

impl Written {
    fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(record);
        self.records += 1;
    }
}

#[test]
fn a_fixed_run_writes_the_pinned_bytes() {
    let rates = Arc::new(
        RateTable::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/rates.toml")).expect("rates load"),
    );
    let config = SimConfig {
        seed: 1234,
        accounts: 60,
        usage_events: 12_000,
        duplicate_fraction: 0.05,
        late_fraction: 0.02,
        malformed_fraction: 0.01,
        ..SimConfig::default()
    };
    let mut ledger = Ledger::new(rates, LedgerConfig::default());
    let codec = Codec::global();
    let mut written = Written { bytes: Vec::new(), records: 0 };
    let (mut entries, mut alerts, mut dead) = (0, 0, 0);
    for (offset, message) in Simulator::new(config).enumerate() {
        let source = SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: offset as i64 };
        // A fixed append time: the future check compares with it.
        let appended = Some(1_893_456_000_000); // 2030-01-01
        match step(&mut ledger, Some(&message.key), Some(&message.payload), appended, &source, Epoch(3)) {
            Step::Entry { entry, alerts: raised, .. } => {
                for alert in &raised {
                    written.push(&codec.encode(alert).expect("alert encodes"));
                    alerts += 1;
                }
                written.push(&codec.encode(&entry).expect("entry encodes"));
                entries += 1;
            }
            Step::Duplicate { .. } => {}
            Step::DeadLetter { letter, .. } => {
                written.push(&codec.encode(&letter).expect("dead letter encodes"));
                dead += 1;
            }
        }
    }
    let point = SnapshotPoint {
        input_topic: "tally.inputs".into(),
        input_partition: 0,
        ledger_next_offset: 99,
        claim_epoch: Epoch(3),
        claim_id: uuid::Uuid::from_u128(3),
        resume_input_offset: 12_345,
    };
    for chunk in chunks(&ledger.snapshot(), &point, uuid::Uuid::from_u128(9)) {
        written.push(&codec.encode(&chunk).expect("chunk encodes"));
    }
    assert!(entries > 12_000 && alerts > 0 && dead > 100, "{entries} entries, {alerts} alerts, {dead} dead letters");
    let digest = format!("{:032x}", xxh3_128(&written.bytes));
    println!("{} records, {} bytes, digest {digest}", written.records, written.bytes.len());
    assert_eq!(digest, "8ca1c5cfb159ff9653c00f11c29a6a9b", "the bytes metering writes changed");
}
