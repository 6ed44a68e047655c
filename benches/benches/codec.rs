//! The Avro single-object codec on the metering hot path: decoding an input
//! (header lookup by fingerprint, then the datum) and encoding a ledger
//! entry, per record.
//!
//! Run: `cargo bench -p tally-benches --bench codec`. Metering decodes one
//! input and encodes one entry per event; the aggregator and every ledger
//! reader decode entries. Each decode is timed twice in one run: by the
//! codec as shipped (usage events and entries by their hand-written
//! readers) and by [`Codec::reference`], the apache-avro reader it falls
//! back to, and each encode by the fast writer
//! and by apache-avro's, so the gain is printed side by side.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use tally_benches::UsageWorkload;
use tally_events::{codec::Record as _, Codec, LedgerEntry, UsageEvent};
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

    let encoded: Vec<Vec<u8>> = entries.iter().map(|entry| codec.encode(entry).expect("entry encodes")).collect();
    assert!(inputs.iter().chain(&encoded).all(|bytes| codec.decodes_fast(bytes)), "the hot path takes the fast reader");
    // Usage events and entries take their hand-written readers first.
    let body = tally_events::codec::HEADER_LEN..;
    assert!(
        inputs.iter().all(|bytes| UsageEvent::read_body(&bytes[body.clone()]).is_some()),
        "usage events read by hand"
    );
    assert!(encoded.iter().all(|bytes| LedgerEntry::read_body(&bytes[body.clone()]).is_some()), "entries read by hand");
    let reference = Codec::reference();

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    for (name, codec) in [("decode_usage_event", codec), ("decode_usage_event_reference", &reference)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for bytes in &inputs {
                    black_box(codec.decode_input(black_box(bytes)).expect("decodes"));
                }
            })
        });
    }
    group.throughput(Throughput::Elements(encoded.len() as u64));
    for (name, codec) in [("decode_ledger_entry", codec), ("decode_ledger_entry_reference", &reference)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for bytes in &encoded {
                    black_box(codec.decode::<LedgerEntry>(black_box(bytes)).expect("decodes"));
                }
            })
        });
    }
    group.throughput(Throughput::Elements(entries.len() as u64));
    let mut out = Vec::with_capacity(512 * entries.len());
    for (name, codec) in [("encode_ledger_entry", codec), ("encode_ledger_entry_reference", &reference)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                for entry in &entries {
                    codec.encode_into(black_box(entry), &mut out).expect("encodes");
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    codec(&mut criterion);
    criterion.final_summary();
}
