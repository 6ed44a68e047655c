//! The Avro single-object codec on the metering hot path: decoding an input
//! (header lookup by fingerprint, then the datum) and encoding a ledger
//! entry, per record.
//!
//! Run: `cargo bench -p tally-benches --bench codec`. Metering decodes one
//! input and encodes one entry per event; on the 2-core machine (2026-11) a
//! usage event took about 2.7 us to decode and a ledger entry about 1.35 us
//! to encode.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use tally_benches::UsageWorkload;
use tally_events::{Codec, LedgerEntry};
use tally_ledger::Applied;

fn codec(c: &mut Criterion) {
    let codec = Codec::global();
    let mut workload = UsageWorkload::new(1_000, tally_benches::POOL_SIZE);
    let inputs: Vec<Vec<u8>> =
        workload.pool().iter().map(|input| codec.encode_input(input).expect("input encodes")).collect();
    let entries: Vec<LedgerEntry> = (0..tally_benches::POOL_SIZE)
        .filter_map(|_| match workload.apply_next() {
            Applied::Entry { entry, .. } => Some(entry),
            _ => None,
        })
        .collect();
    assert!(!entries.is_empty(), "the workload applies usage events");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("decode_usage_event", |b| {
        b.iter(|| {
            for bytes in &inputs {
                black_box(codec.decode_input(black_box(bytes)).expect("decodes"));
            }
        })
    });
    group.throughput(Throughput::Elements(entries.len() as u64));
    let mut out = Vec::with_capacity(512 * entries.len());
    group.bench_function("encode_ledger_entry", |b| {
        b.iter(|| {
            out.clear();
            for entry in &entries {
                codec.encode_into(black_box(entry), &mut out).expect("encodes");
            }
            black_box(out.len())
        })
    });
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    codec(&mut criterion);
    criterion.final_summary();
}
