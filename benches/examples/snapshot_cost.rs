//! What a partition snapshot costs at a full dedup window: cutting the
//! state (`Ledger::snapshot`), chunking, Avro encoding, and on restore
//! decoding, assembling and rebuilding the ledger. Metering cuts and writes
//! snapshots inside its loop, so this is a pause of the partition's input.
//!
//! Run: `cargo run --release -p tally-benches --example snapshot_cost -- [ACCOUNTS] [EVENTS]`
//! (defaults: 10,000 accounts, 1,000,000 events 1 s apart: ~605k ids held).

use std::{sync::Arc, time::Instant};

use chrono::TimeDelta;
use tally_benches::UsageWorkload;
use tally_events::{Codec, PartitionSnapshot};
use tally_ledger::{Ledger, LedgerConfig};
use tally_metering::snapshot::{chunks, Assembler, SnapshotPoint};
use uuid::Uuid;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let accounts = args.first().copied().unwrap_or(10_000);
    let events = args.get(1).copied().unwrap_or(1_000_000);
    let mut workload = UsageWorkload::with_spacing(accounts, tally_benches::POOL_SIZE, TimeDelta::seconds(1));
    for _ in 0..events {
        std::hint::black_box(&workload.apply_next());
    }
    let stats = workload.ledger.stats();
    println!("snapshot cost: {} accounts, {} dedup ids held", stats.accounts, stats.dedup_ids);

    let started = Instant::now();
    let state = workload.ledger.snapshot();
    let cut = started.elapsed();
    let point = SnapshotPoint {
        input_topic: "tally.inputs".into(),
        input_partition: 0,
        ledger_next_offset: 1,
        claim_epoch: tally_events::Epoch(0),
        claim_id: Uuid::nil(),
        resume_input_offset: 1,
    };
    let started = Instant::now();
    let pieces = chunks(&state, &point, Uuid::nil());
    let chunked = started.elapsed();
    let started = Instant::now();
    let codec = Codec::global();
    let encoded: Vec<Vec<u8>> = pieces.iter().map(|c| codec.encode(c).unwrap_or_default()).collect();
    let encode = started.elapsed();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    println!(
        "  write side: cut {:.1} ms, chunk {:.1} ms, encode {:.1} ms ({} chunks, {:.1} MB)",
        cut.as_secs_f64() * 1e3,
        chunked.as_secs_f64() * 1e3,
        encode.as_secs_f64() * 1e3,
        pieces.len(),
        bytes as f64 / 1e6
    );

    let started = Instant::now();
    let mut assembler = Assembler::new("tally.inputs", 0, 1);
    for record in &encoded {
        if let Ok(chunk) = codec.decode::<PartitionSnapshot>(record) {
            assembler.visit(chunk);
        }
    }
    let decode = started.elapsed();
    let started = Instant::now();
    let Ok(Some((_, back))) = assembler.finish() else {
        println!("  the snapshot did not assemble");
        return;
    };
    let rates = Arc::clone(workload.ledger.rates());
    let rebuilt = Ledger::from_snapshot(rates, LedgerConfig::default(), back);
    let rebuild = started.elapsed();
    println!(
        "  restore side: decode {:.1} ms, assemble and rebuild {:.1} ms ({} dedup ids)",
        decode.as_secs_f64() * 1e3,
        rebuild.as_secs_f64() * 1e3,
        rebuilt.stats().dedup_ids
    );
}
