//! Codec round trips, schema evolution and malformed input.

use std::collections::BTreeMap;

use apache_avro::{types::Value, Schema};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_events::{
    codec::{encode_with_schema, RecordKind},
    names::reasons,
    *,
};
use uuid::Uuid;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("valid instant")
}

fn usage() -> UsageEvent {
    UsageEvent {
        event_id: Uuid::from_u128(0x1234),
        account_id: "acct-7".into(),
        photo_event_id: "wedding-42".into(),
        booth_id: "booth-3".into(),
        job_id: "job-99".into(),
        service: "ai_image_to_video".into(),
        engine: "kling".into(),
        quantity: "7.125".parse().expect("decimal"),
        unit: Unit::VideoSecond,
        outcome: JobOutcome::Succeeded,
        occurred_at: at(1_767_225_600_123),
        producer: Producer { worker: "gpu-1".into(), version: "1.2.3".into() },
        attributes: BTreeMap::from([("region".into(), "eu".into())]),
    }
}

fn dead_letter() -> DeadLetter {
    DeadLetter {
        reason: reasons::MALFORMED.into(),
        detail: "bad".into(),
        source: SourceOffset { topic: "t".into(), partition: 0, offset: 1 },
        key: Some(b"acct".to_vec()),
        payload: Some(vec![0, 1, 2, 255]),
        input_id: String::new(),
    }
}

fn entry() -> LedgerEntry {
    LedgerEntry {
        entry_id: Uuid::from_u128(1),
        account_id: "acct-7".into(),
        sequence: 12,
        epoch: 3,
        entry_type: EntryType::Consume,
        status: EntryStatus::Failed,
        reason: reasons::INSUFFICIENT_CREDITS.into(),
        input_id: Uuid::from_u128(2),
        service: "sms".into(),
        engine: "standard".into(),
        photo_event_id: "corp-1".into(),
        quantity: "3".parse().expect("decimal"),
        credits: "0.15".parse().expect("decimal"),
        dollars: "0.02".parse().expect("decimal"),
        tier: PlanTier::Pro,
        rate_version: "2026-01".into(),
        balance_after: "0.1".parse().expect("decimal"),
        low_balance_threshold: "10".parse().expect("decimal"),
        paused: true,
        occurred_at: at(1_767_225_600_000),
        source: SourceOffset { topic: "tally.inputs".into(), partition: 2, offset: 991 },
        booth_id: "booth-1".into(),
    }
}

#[test]
fn rabin_fingerprint_matches_the_avro_spec() {
    // The Avro spec's reference value: CRC-64-AVRO of "null" is
    // 0x63dd24e7cc258f8a, written little-endian in the header.
    let schema = Schema::parse_str(r#""null""#).expect("parse");
    let fp = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
    assert_eq!(u64::from_le_bytes(fp[..8].try_into().expect("8 bytes")), 0x63dd_24e7_cc25_8f8a);
}

/// The spec's canonical form strips `logicalType`, so a schema and the same
/// schema without its logical types share a fingerprint; apache-avro 0.21
/// alone gets this wrong (AVRO-4004), and Java or Python peers would not
/// find tally's schemas by fingerprint.
#[test]
fn fingerprints_ignore_logical_types_as_the_spec_says() {
    let with = Schema::parse_str(
        r#"{"type":"record","name":"r","namespace":"tally","fields":[
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"},"doc":"d"},
            {"name":"id","type":{"type":"string","logicalType":"uuid"}}]}"#,
    )
    .expect("parse");
    let without = Schema::parse_str(
        r#"{"type":"record","name":"tally.r","fields":[{"name":"at","type":"long"},{"name":"id","type":"string"}]}"#,
    )
    .expect("parse");
    assert_eq!(codec::spec_fingerprint(&with), codec::spec_fingerprint(&without));
    assert_eq!(
        codec::spec_fingerprint(&without),
        without.fingerprint::<apache_avro::rabin::Rabin>().bytes[..8],
        "no logical types: both computations agree"
    );
    // Every tally record carries the spec fingerprint of its schema file.
    for kind in RecordKind::ALL {
        let schema = Schema::parse_str(kind.schema_texts()[0]).expect("parse");
        assert_eq!(Codec::global().fingerprint(kind), codec::spec_fingerprint(&schema), "{}", kind.name());
    }
}

/// Earlier tally builds wrote apache-avro's own fingerprint; those messages
/// (ledger topics, snapshots) still decode.
#[test]
fn messages_with_the_legacy_fingerprint_still_decode() {
    let codec = Codec::global();
    let e = usage();
    let mut bytes = codec.encode(&e).expect("encode");
    let legacy = codec.schema(RecordKind::UsageEvent).fingerprint::<apache_avro::rabin::Rabin>().bytes;
    assert_ne!(&bytes[2..10], &legacy[..8], "usage events have logical types: the two differ");
    bytes[2..10].copy_from_slice(&legacy[..8]);
    assert_eq!(codec.decode::<UsageEvent>(&bytes).expect("decode legacy"), e);
}

#[test]
fn every_record_round_trips() {
    let codec = Codec::global();
    let e = usage();
    let bytes = codec.encode(&e).expect("encode");
    assert_eq!(&bytes[..2], &codec::MAGIC);
    assert_eq!(&bytes[2..10], &codec.fingerprint(RecordKind::UsageEvent));
    assert_eq!(codec.decode::<UsageEvent>(&bytes).expect("decode"), e);
    assert_eq!(codec.decode_input(&bytes).expect("input"), Input::Usage(e));

    let p = CreditPurchase {
        purchase_id: Uuid::from_u128(5),
        account_id: "a".into(),
        amount_dollars: "49.99".parse().expect("decimal"),
        occurred_at: at(1),
        payment_reference: Some("ch_1".into()),
    };
    assert_eq!(codec.decode::<CreditPurchase>(&codec.encode(&p).expect("encode")).expect("decode"), p);

    let c = AccountChange {
        change_id: Uuid::from_u128(6),
        account_id: "a".into(),
        kind: AccountChangeKind::Update,
        tier: PlanTier::Basic,
        low_balance_threshold: "25.5".parse().expect("decimal"),
        occurred_at: at(2),
        reason: None,
    };
    assert_eq!(codec.decode::<AccountChange>(&codec.encode(&c).expect("encode")).expect("decode"), c);

    let l = entry();
    assert_eq!(codec.decode::<LedgerEntry>(&codec.encode(&l).expect("encode")).expect("decode"), l);

    let a = Alert {
        alert_id: Uuid::from_u128(7),
        account_id: "a".into(),
        kind: AlertKind::LowBalance,
        sequence: 4,
        balance: "1.5".parse().expect("decimal"),
        threshold: "10".parse().expect("decimal"),
        occurred_at: at(3),
        message: "low".into(),
    };
    assert_eq!(codec.decode::<Alert>(&codec.encode(&a).expect("encode")).expect("decode"), a);

    let d = dead_letter();
    let back = codec.decode_any(&codec.encode(&d).expect("encode")).expect("decode");
    assert_eq!(back, Message::DeadLetter(d));
}

#[test]
fn encoding_is_deterministic() {
    let codec = Codec::global();
    assert_eq!(codec.encode(&entry()).expect("encode"), codec.encode(&entry()).expect("encode"));
    // Map entries are written in key order, so equal events give equal bytes.
    let mut a = usage();
    let mut b = usage();
    for (k, v) in [("zone", "eu"), ("app", "booth"), ("camera", "dslr"), ("lens", "50mm")] {
        a.attributes.insert(k.into(), v.into());
    }
    for (k, v) in [("lens", "50mm"), ("camera", "dslr"), ("app", "booth"), ("zone", "eu")] {
        b.attributes.insert(k.into(), v.into());
    }
    let bytes = codec.encode(&a).expect("encode");
    assert_eq!(bytes, codec.encode(&b).expect("encode"));
    let text = String::from_utf8_lossy(&bytes);
    let positions: Vec<usize> =
        ["app", "camera", "lens", "region", "zone"].iter().map(|k| text.find(k).expect("key written")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "map keys in sorted order: {positions:?}");
}

/// A message written with the previous version of each schema (which lacks
/// the field v2 added) still decodes, the new field taking its default.
#[test]
fn previous_schema_versions_still_decode() {
    let codec = Codec::global();
    for kind in RecordKind::ALL {
        if kind.schema_texts().len() < 2 {
            continue; // added after the first release: no previous version
        }
        let previous = Schema::parse_str(kind.schema_texts()[1]).expect("previous parses");
        let current = codec.schema(kind);
        assert_ne!(
            previous.fingerprint::<apache_avro::rabin::Rabin>().bytes,
            current.fingerprint::<apache_avro::rabin::Rabin>().bytes,
            "{} previous and current must differ",
            kind.name()
        );
        // Encode a current record, drop the v2 field, write it with v1.
        let full = match kind {
            RecordKind::UsageEvent => apache_avro::to_value(usage()),
            RecordKind::LedgerEntry => apache_avro::to_value(entry()),
            RecordKind::CreditPurchase => apache_avro::to_value(CreditPurchase {
                purchase_id: Uuid::from_u128(9),
                account_id: "a".into(),
                amount_dollars: Decimal::TEN,
                occurred_at: at(10),
                payment_reference: None,
            }),
            RecordKind::AccountChange => apache_avro::to_value(AccountChange {
                change_id: Uuid::from_u128(9),
                account_id: "a".into(),
                kind: AccountChangeKind::Open,
                tier: PlanTier::Payg,
                low_balance_threshold: Decimal::TEN,
                occurred_at: at(10),
                reason: None,
            }),
            RecordKind::Alert => apache_avro::to_value(Alert {
                alert_id: Uuid::from_u128(9),
                account_id: "a".into(),
                kind: AlertKind::Paused,
                sequence: 1,
                balance: Decimal::ZERO,
                threshold: Decimal::TEN,
                occurred_at: at(10),
                message: String::new(),
            }),
            RecordKind::LedgerMarker | RecordKind::PartitionSnapshot => unreachable!("one version"),
            RecordKind::DeadLetter => apache_avro::to_value(DeadLetter {
                reason: "too_late".into(),
                detail: "d".into(),
                source: SourceOffset { topic: "t".into(), partition: 1, offset: 2 },
                key: None,
                payload: None,
                input_id: String::new(),
            }),
        }
        .expect("to_value");
        let Value::Record(mut fields) = full else { panic!("record") };
        fields.pop();
        let old_bytes = encode_with_schema(&previous, Value::Record(fields)).expect("v1 encode");
        let decoded = codec.decode_any(&old_bytes).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        match (kind, decoded) {
            (RecordKind::UsageEvent, Message::Input(Input::Usage(e))) => {
                assert_eq!(e, UsageEvent { attributes: BTreeMap::new(), ..usage() })
            }
            (RecordKind::LedgerEntry, Message::Ledger(l)) => {
                assert_eq!(l, LedgerEntry { booth_id: String::new(), ..entry() })
            }
            (RecordKind::CreditPurchase, Message::Input(Input::Purchase(p))) => {
                assert_eq!((p.amount_dollars, p.payment_reference), (Decimal::TEN, None))
            }
            (RecordKind::AccountChange, Message::Input(Input::Account(c))) => assert_eq!(c.reason, None),
            (RecordKind::Alert, Message::Alert(a)) => assert_eq!(a.message, ""),
            (RecordKind::DeadLetter, Message::DeadLetter(d)) => assert_eq!(d.input_id, ""),
            (kind, other) => panic!("{} decoded as {other:?}", kind.name()),
        }
    }
}

#[test]
fn malformed_bytes_give_typed_errors() {
    let codec = Codec::global();
    assert_eq!(codec.decode_input(b"").unwrap_err(), CodecError::TooShort { len: 0 });
    assert_eq!(codec.decode_input(b"{\"json\": true}").unwrap_err().reason(), reasons::MALFORMED);
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&[9; 8]);
    assert_eq!(codec.decode_input(&unknown).unwrap_err().reason(), reasons::UNKNOWN_SCHEMA);
    let good = codec.encode(&usage()).expect("encode");
    let truncated = &good[..good.len() - 5];
    assert_eq!(codec.decode_input(truncated).unwrap_err().reason(), reasons::MALFORMED);
    let ledger = codec.encode(&entry()).expect("encode");
    assert_eq!(codec.decode_input(&ledger).unwrap_err().reason(), reasons::NOT_AN_INPUT);
    // A well-formed body whose decimal text is not a number.
    let bad = UsageEvent { ..usage() };
    let Value::Record(mut fields) = apache_avro::to_value(bad).expect("to_value") else { panic!() };
    for (name, v) in fields.iter_mut() {
        if name == "quantity" {
            *v = Value::String("seven".into());
        }
    }
    let bytes = encode_with_schema(codec.schema(RecordKind::UsageEvent), Value::Record(fields)).expect("encode");
    let err = codec.decode_input(&bytes).unwrap_err();
    assert_eq!(err.reason(), reasons::MALFORMED, "{err}");
}

proptest! {
    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), valid_header in any::<bool>()) {
        let codec = Codec::global();
        let mut msg = bytes;
        if valid_header {
            let mut head = codec::MAGIC.to_vec();
            head.extend_from_slice(&codec.fingerprint(RecordKind::UsageEvent));
            head.extend(msg);
            msg = head;
        }
        let _ = codec.decode_any(&msg);
    }

    /// Usage events with arbitrary content round-trip.
    #[test]
    fn usage_events_round_trip(id in any::<u128>(), account in "[a-z0-9-]{1,20}", qty in 1u64..10_000_000, scale in 0u32..=3, ms in 0i64..4_000_000_000_000) {
        let mut e = usage();
        e.event_id = Uuid::from_u128(id);
        e.account_id = account;
        e.quantity = Decimal::new(qty as i64, scale);
        e.occurred_at = at(ms);
        let codec = Codec::global();
        prop_assert_eq!(codec.decode::<UsageEvent>(&codec.encode(&e).expect("encode")).expect("decode"), e);
    }
}

/// The codec serializes straight from serde into the buffer; this checks it
/// writes exactly what apache-avro's generic `Value` path writes (enum
/// symbol order, logical types, nested records, maps, bytes).
#[test]
fn direct_encoding_matches_the_generic_value_path() {
    fn via_value<T: tally_events::codec::Record>(record: &T) -> Vec<u8> {
        let codec = Codec::global();
        let schema = codec.schema(T::KIND);
        let value = apache_avro::to_value(record).expect("to value").resolve(schema).expect("resolve");
        let mut out = codec::MAGIC.to_vec();
        out.extend_from_slice(&codec.fingerprint(T::KIND));
        out.extend_from_slice(&apache_avro::to_avro_datum(schema, value).expect("datum"));
        out
    }
    let codec = Codec::global();
    // One attribute: the Value path holds a map in a HashMap, so with more
    // keys its byte order varies from run to run (the direct path writes
    // the BTreeMap's sorted order; see `encoding_is_deterministic`).
    let mut usage = usage();
    for unit in [Unit::Image, Unit::VideoSecond, Unit::Message] {
        for outcome in [JobOutcome::Succeeded, JobOutcome::Failed] {
            usage.unit = unit;
            usage.outcome = outcome;
            assert_eq!(codec.encode(&usage).expect("encode"), via_value(&usage), "{unit:?} {outcome:?}");
        }
    }
    for entry_type in [EntryType::Open, EntryType::Consume, EntryType::Add, EntryType::Update, EntryType::Forfeit] {
        for (status, tier) in [(EntryStatus::Success, PlanTier::Payg), (EntryStatus::Failed, PlanTier::Pro)] {
            let mut e = entry();
            e.entry_type = entry_type;
            e.status = status;
            e.tier = tier;
            assert_eq!(codec.encode(&e).expect("encode"), via_value(&e), "{entry_type:?} {status:?}");
        }
    }
    for kind in [AlertKind::LowBalance, AlertKind::Paused, AlertKind::Resumed] {
        let a = Alert {
            alert_id: Uuid::from_u128(7),
            account_id: "a".into(),
            kind,
            sequence: 4,
            balance: "1.5".parse().expect("decimal"),
            threshold: "10".parse().expect("decimal"),
            occurred_at: at(3),
            message: "low".into(),
        };
        assert_eq!(codec.encode(&a).expect("encode"), via_value(&a));
    }
    for kind in [AccountChangeKind::Open, AccountChangeKind::Update, AccountChangeKind::Delete] {
        let c = AccountChange {
            change_id: Uuid::from_u128(6),
            account_id: "a".into(),
            kind,
            tier: PlanTier::Basic,
            low_balance_threshold: "25.5".parse().expect("decimal"),
            occurred_at: at(2),
            reason: Some("why".into()),
        };
        assert_eq!(codec.encode(&c).expect("encode"), via_value(&c));
    }
    let d = dead_letter();
    assert_eq!(codec.encode(&d).expect("encode"), via_value(&d));
    let none = DeadLetter { key: None, payload: None, ..d };
    assert_eq!(codec.encode(&none).expect("encode"), via_value(&none));
    for kind in [MarkerKind::Claim, MarkerKind::Progress] {
        let m = LedgerMarker {
            kind,
            claim_id: Uuid::from_u128(9),
            epoch: 3,
            instance: "h:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 1,
            next_input_offset: 77,
        };
        assert_eq!(codec.encode(&m).expect("encode"), via_value(&m));
    }
}

#[test]
fn partition_snapshots_round_trip() {
    let codec = Codec::global();
    let account = SnapshotAccount {
        account_id: "acct-1".into(),
        balance: "12.3456".parse().expect("decimal"),
        last_sequence: 42,
        tier: PlanTier::Pro,
        low_balance_threshold: "50".parse().expect("decimal"),
        paused: false,
        deleted: true,
    };
    let mut ids = Uuid::from_u128(77).as_bytes().to_vec();
    ids.extend_from_slice(&1_767_225_600_123i64.to_be_bytes());
    let full = PartitionSnapshot {
        snapshot_id: Uuid::from_u128(1),
        chunk: 0,
        chunks: 2,
        input_topic: "tally.inputs".into(),
        input_partition: 3,
        ledger_next_offset: 1_000,
        claim_epoch: 900,
        claim_id: Uuid::from_u128(2),
        resume_input_offset: 5_000,
        newest_occurred_at: Some(at(1_767_225_600_123)),
        last_source_offset: Some(4_999),
        accounts: vec![account.clone(), SnapshotAccount { account_id: "acct-2".into(), ..account }],
        dedup_ids: ids,
    };
    let empty = PartitionSnapshot {
        newest_occurred_at: None,
        last_source_offset: None,
        accounts: Vec::new(),
        dedup_ids: Vec::new(),
        ..full.clone()
    };
    for snapshot in [full, empty] {
        let bytes = codec.encode(&snapshot).expect("encode");
        assert_eq!(codec.decode_any(&bytes).expect("decode"), Message::Snapshot(Box::new(snapshot)));
    }
}
