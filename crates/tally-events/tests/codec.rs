//! Codec round trips, schema evolution and malformed input.

use std::collections::BTreeMap;

use apache_avro::{types::Value, Schema};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_events::{
    codec::{encode_with_schema, Record as _, RecordKind},
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
        reason: Reason::Malformed.code().into(),
        detail: "bad".into(),
        source: SourceOffset { topic: "t".into(), partition: 0, offset: 1 },
        key: Some(b"acct".to_vec()),
        payload: Some(vec![0, 1, 2, 255]),
        input_id: Uuid::from_u128(5).to_string(),
        original_key_bytes: 4,
        original_payload_bytes: 40_000,
    }
}

fn entry() -> LedgerEntry {
    LedgerEntry {
        entry_id: Uuid::from_u128(1),
        account_id: AccountId::new_unchecked("acct-7"),
        sequence: Sequence(12),
        epoch: Epoch(3),
        entry_type: EntryType::Consume,
        status: EntryStatus::Failed,
        reason: Reason::InsufficientCredits.code().into(),
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
        input_digest: Some(InputDigest([7; 16])),
        booked_at: Some(at(1_767_225_601_000)),
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
        account_id: AccountId::new_unchecked("a"),
        kind: AlertKind::LowBalance,
        sequence: Sequence(4),
        balance: "1.5".parse().expect("decimal"),
        threshold: "10".parse().expect("decimal"),
        occurred_at: at(3),
        message: "low".into(),
        tier: Some(PlanTier::Payg),
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

/// A message written with any older version of each schema (which lacks
/// the fields added since) still decodes, the newer fields taking their
/// defaults.
#[test]
fn previous_schema_versions_still_decode() {
    let codec = Codec::global();
    let mut checked = 0;
    for kind in RecordKind::ALL {
        let record = sample(kind);
        let Value::Record(full) = record_value(&record) else { panic!("record") };
        for (version, text) in kind.schema_texts().iter().enumerate().skip(1) {
            let previous = Schema::parse_str(text).expect("previous parses");
            let current = codec.schema(kind);
            assert_ne!(
                codec::spec_fingerprint(&previous),
                codec::spec_fingerprint(current),
                "{} version -{version} and current must differ",
                kind.name()
            );
            let mut missing = Vec::new();
            let old_value = fit(Value::Record(full.clone()), &previous, "", &mut missing);
            assert!(!missing.is_empty(), "{} version -{version} lacks no field", kind.name());
            let old_bytes = encode_with_schema(&previous, old_value).expect("old encode");
            let decoded = codec.decode_any(&old_bytes).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert_eq!(decoded, with_defaults(record.clone(), &missing), "{} version -{version}", kind.name());
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} older versions checked");
}

/// `value` with only the fields `schema` knows, at any depth (records in
/// records and arrays); the fields left out are pushed to `missing` by
/// dotted path.
fn fit(value: Value, schema: &Schema, path: &str, missing: &mut Vec<String>) -> Value {
    match (value, schema) {
        (Value::Record(fields), Schema::Record(shape)) => {
            let mut kept = Vec::new();
            for (name, field) in fields {
                let at = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                match shape.fields.iter().find(|f| f.name == name) {
                    Some(known) => kept.push((name, fit(field, &known.schema, &at, missing))),
                    None => missing.push(at),
                }
            }
            Value::Record(kept)
        }
        (Value::Array(items), Schema::Array(array)) => {
            let before = missing.len();
            let items = items.into_iter().map(|item| fit(item, &array.items, path, missing)).collect();
            // One path per field, however many items lack it.
            let mut seen: Vec<String> = missing.drain(before..).collect();
            seen.dedup();
            missing.extend(seen);
            Value::Array(items)
        }
        (value, _) => value,
    }
}

/// One record of each kind, every field set to a non-default value.
fn sample(kind: RecordKind) -> Message {
    match kind {
        RecordKind::UsageEvent => Message::Input(Input::Usage(usage())),
        RecordKind::LedgerEntry => Message::Ledger(entry()),
        RecordKind::CreditPurchase => Message::Input(Input::Purchase(CreditPurchase {
            purchase_id: Uuid::from_u128(9),
            account_id: "a".into(),
            amount_dollars: Dollars::new(Decimal::TEN),
            occurred_at: at(10),
            payment_reference: Some("pi_1".into()),
        })),
        RecordKind::AccountChange => Message::Input(Input::Account(AccountChange {
            change_id: Uuid::from_u128(9),
            account_id: "a".into(),
            kind: AccountChangeKind::Open,
            tier: PlanTier::Payg,
            low_balance_threshold: Credits::new(Decimal::TEN),
            occurred_at: at(10),
            reason: Some("new".into()),
        })),
        RecordKind::Alert => Message::Alert(Alert {
            alert_id: Uuid::from_u128(9),
            account_id: AccountId::new_unchecked("a"),
            kind: AlertKind::Paused,
            sequence: Sequence(1),
            balance: Credits::ZERO,
            threshold: Credits::new(Decimal::TEN),
            occurred_at: at(10),
            message: "paused".into(),
            tier: Some(PlanTier::Pro),
        }),
        RecordKind::DeadLetter => Message::DeadLetter(dead_letter()),
        RecordKind::LedgerMarker => Message::Marker(LedgerMarker {
            kind: MarkerKind::Progress,
            claim_id: Uuid::from_u128(2),
            epoch: Epoch(3),
            instance: "h:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 1,
            next_input_offset: 77,
        }),
        RecordKind::PartitionSnapshot => Message::Snapshot(Box::new(snapshot())),
    }
}

fn record_value(message: &Message) -> Value {
    match message {
        Message::Input(Input::Usage(r)) => apache_avro::to_value(r),
        Message::Input(Input::Purchase(r)) => apache_avro::to_value(r),
        Message::Input(Input::Account(r)) => apache_avro::to_value(r),
        Message::Ledger(r) => apache_avro::to_value(r),
        Message::Alert(r) => apache_avro::to_value(r),
        Message::DeadLetter(r) => apache_avro::to_value(r),
        Message::Marker(r) => apache_avro::to_value(r),
        Message::Snapshot(r) => apache_avro::to_value(r.as_ref()),
    }
    .expect("to_value")
}

/// `message` with the named fields at their schema defaults.
fn with_defaults(mut message: Message, fields: &[String]) -> Message {
    for field in fields {
        match (&mut message, field.as_str()) {
            (Message::Input(Input::Usage(e)), "attributes") => e.attributes.clear(),
            (Message::Input(Input::Purchase(p)), "payment_reference") => p.payment_reference = None,
            (Message::Input(Input::Account(c)), "reason") => c.reason = None,
            (Message::Ledger(l), "booth_id") => l.booth_id.clear(),
            (Message::Ledger(l), "input_digest") => l.input_digest = None,
            (Message::Ledger(l), "booked_at") => l.booked_at = None,
            (Message::Snapshot(s), "accounts.booked_at") => s.accounts.iter_mut().for_each(|a| a.booked_at = 0),
            (Message::Alert(a), "message") => a.message.clear(),
            (Message::Alert(a), "tier") => a.tier = None,
            (Message::DeadLetter(d), "input_id") => d.input_id.clear(),
            (Message::DeadLetter(d), "original_key_bytes") => d.original_key_bytes = -1,
            (Message::DeadLetter(d), "original_payload_bytes") => d.original_payload_bytes = -1,
            (Message::Snapshot(s), "dedup_digests") => s.dedup_digests.clear(),
            (message, field) => panic!("no default known for {field} of {message:?}"),
        }
    }
    message
}
#[test]
fn malformed_bytes_give_typed_errors() {
    let codec = Codec::global();
    assert_eq!(codec.decode_input(b"").unwrap_err(), CodecError::TooShort { len: 0 });
    assert_eq!(codec.decode_input(b"{\"json\": true}").unwrap_err().reason(), Reason::Malformed);
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&[9; 8]);
    assert_eq!(codec.decode_input(&unknown).unwrap_err().reason(), Reason::UnknownSchema);
    let good = codec.encode(&usage()).expect("encode");
    let truncated = &good[..good.len() - 5];
    assert_eq!(codec.decode_input(truncated).unwrap_err().reason(), Reason::Malformed);
    let ledger = codec.encode(&entry()).expect("encode");
    assert_eq!(codec.decode_input(&ledger).unwrap_err().reason(), Reason::NotAnInput);
}

/// A record whose field `field` holds the text `text`.
fn with_text<T: serde::Serialize>(record: T, kind: RecordKind, field: &str, text: &str) -> Vec<u8> {
    let Value::Record(mut fields) = apache_avro::to_value(record).expect("to_value") else { panic!() };
    for (name, v) in fields.iter_mut() {
        if name == field {
            *v = Value::String(text.into());
        }
    }
    encode_with_schema(Codec::global().schema(kind), Value::Record(fields)).expect("encode")
}

/// A decimal input field that is not exact decimal text is refused with
/// the field's reason, quoting the text as sent; never rounded.
#[test]
fn input_decimals_are_read_exactly_or_refused_with_their_reason() {
    let codec = Codec::global();
    let purchase = CreditPurchase {
        purchase_id: Uuid::from_u128(9),
        account_id: "a".into(),
        amount_dollars: Dollars::new(Decimal::TEN),
        occurred_at: at(10),
        payment_reference: None,
    };
    let change = AccountChange {
        change_id: Uuid::from_u128(9),
        account_id: "a".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::new(Decimal::TEN),
        occurred_at: at(10),
        reason: None,
    };
    let cases = [
        (with_text(usage(), RecordKind::UsageEvent, "quantity", "seven"), Reason::InvalidQuantity, "\"seven\""),
        (
            with_text(usage(), RecordKind::UsageEvent, "quantity", "1.0000000000000000000000000000001"),
            Reason::InvalidQuantity,
            "\"1.0000000000000000000000000000001\"",
        ),
        (with_text(usage(), RecordKind::UsageEvent, "quantity", "1_000"), Reason::InvalidQuantity, "\"1_000\""),
        (
            with_text(purchase, RecordKind::CreditPurchase, "amount_dollars", "10.0000000000000000000000000000001"),
            Reason::InvalidAmount,
            "amount_dollars",
        ),
        (
            with_text(change, RecordKind::AccountChange, "low_balance_threshold", "1e3"),
            Reason::InvalidThreshold,
            "\"1e3\"",
        ),
    ];
    for (bytes, reason, quoted) in cases {
        let err = codec.decode_input(&bytes).unwrap_err();
        assert_eq!(err.reason(), reason, "{err}");
        assert!(err.to_string().contains(quoted), "{err}");
    }
    // A quantity with 28 fractional digits is exact: it decodes as sent
    // (the ledger rules then refuse it for its unit).
    let exact = with_text(usage(), RecordKind::UsageEvent, "quantity", "1.0000000000000000000000000001");
    let Input::Usage(event) = codec.decode_input(&exact).expect("decodes") else { panic!() };
    assert_eq!(event.quantity.to_string(), "1.0000000000000000000000000001");
    // Decimals of other records are read as exactly; one that does not fit
    // makes the record malformed.
    let entry_bytes = with_text(entry(), RecordKind::LedgerEntry, "credits", "0.00000000000000000000000000001");
    assert_eq!(codec.decode_any(&entry_bytes).unwrap_err().reason(), Reason::Malformed);
}

/// The reference reader alone (apache-avro), to compare the codec with.
static REFERENCE: std::sync::LazyLock<Codec> = std::sync::LazyLock::new(Codec::reference);

/// Every sample record's message, in each kind's current schema.
fn sample_messages() -> Vec<Vec<u8>> {
    RecordKind::ALL
        .iter()
        .map(|kind| encode_with_schema(Codec::global().schema(*kind), record_value(&sample(*kind))).expect("encode"))
        .collect()
}

/// The hot path takes the fast reader for every record kind, and it reads
/// what the reference reader reads.
#[test]
fn the_fast_reader_reads_every_record_kind_as_the_reference_does() {
    for (kind, bytes) in RecordKind::ALL.iter().zip(sample_messages()) {
        assert!(Codec::global().decodes_fast(&bytes), "the fast reader refuses a good {kind:?}");
        assert!(!REFERENCE.decodes_fast(&bytes));
        let decoded = Codec::global().decode_any(&bytes).expect("decodes");
        assert_eq!(decoded, sample(*kind));
        assert_eq!(Ok(decoded), REFERENCE.decode_any(&bytes));
    }
    // An older version goes to the reference reader (schema resolution).
    let old = Schema::parse_str(RecordKind::UsageEvent.schema_texts()[1]).expect("v1 parses");
    let Value::Record(mut fields) = record_value(&sample(RecordKind::UsageEvent)) else { panic!() };
    fields.retain(|(name, _)| name != "attributes");
    let v1 = encode_with_schema(&old, Value::Record(fields)).expect("encode v1");
    assert!(!Codec::global().decodes_fast(&v1));
    assert_eq!(Codec::global().decode_any(&v1), REFERENCE.decode_any(&v1));
}

/// A message's bytes as `codec` writes them.
fn encode_message(codec: &Codec, message: &Message) -> Vec<u8> {
    match message {
        Message::Input(input) => codec.encode_input(input),
        Message::Ledger(r) => codec.encode(r),
        Message::Alert(r) => codec.encode(r),
        Message::DeadLetter(r) => codec.encode(r),
        Message::Marker(r) => codec.encode(r),
        Message::Snapshot(r) => codec.encode(r.as_ref()),
    }
    .expect("encode")
}

/// The fast writer (serde_avro_fast) writes every record kind byte for
/// byte as the reference writer (apache-avro) does: maps with several
/// keys, empty and full arrays, absent optional fields and every enum
/// symbol included.
#[test]
fn the_fast_writer_writes_every_record_kind_as_the_reference_does() {
    let mut messages: Vec<Message> = RecordKind::ALL.iter().map(|kind| sample(*kind)).collect();
    let mut usage = usage();
    for (k, v) in [("zone", "eu"), ("app", "booth"), ("camera", "dslr"), ("lens", "50mm")] {
        usage.attributes.insert(k.into(), v.into());
    }
    for unit in [Unit::Image, Unit::VideoSecond, Unit::Message] {
        for outcome in [JobOutcome::Succeeded, JobOutcome::Failed] {
            messages.push(Message::Input(Input::Usage(UsageEvent { unit, outcome, ..usage.clone() })));
        }
    }
    for entry_type in [EntryType::Open, EntryType::Consume, EntryType::Add, EntryType::Update, EntryType::Forfeit] {
        for (status, tier) in [(EntryStatus::Success, PlanTier::Payg), (EntryStatus::Failed, PlanTier::Pro)] {
            messages.push(Message::Ledger(LedgerEntry { entry_type, status, tier, input_digest: None, ..entry() }));
        }
    }
    messages.push(Message::Snapshot(Box::new(empty_snapshot())));
    messages.push(Message::DeadLetter(DeadLetter { key: None, payload: None, ..dead_letter() }));
    for message in &messages {
        let fast = encode_message(Codec::global(), message);
        assert_eq!(fast, encode_message(&REFERENCE, message), "{message:?}");
        assert_eq!(Codec::global().decode_any(&fast).as_ref(), Ok(message));
    }
}

/// The hand-written readers (usage events, ledger entries) against the
/// reference reader on every one-byte change and every truncation of a
/// good body, and on each with a byte more: the codec reads exactly what
/// apache-avro reads, the same record or the same refusal. A reader that
/// took a damaged body the reference refuses, or read it otherwise, fails
/// here.
#[test]
fn hand_readers_read_every_damaged_body_as_the_reference_does() {
    let mut usage = usage();
    for (k, v) in [("zone", "eu"), ("app", "booth")] {
        usage.attributes.insert(k.into(), v.into());
    }
    let records = [
        encode_message(Codec::global(), &Message::Input(Input::Usage(usage))),
        encode_message(Codec::global(), &Message::Ledger(entry())),
        encode_message(
            Codec::global(),
            &Message::Ledger(LedgerEntry { booked_at: None, input_digest: None, ..entry() }),
        ),
    ];
    let mut checked = 0;
    for good in records {
        let mut variants = Vec::new();
        for at in codec::HEADER_LEN..good.len() {
            for byte in [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, good[at] ^ 0x01, good[at] ^ 0x40] {
                let mut bytes = good.clone();
                bytes[at] = byte;
                variants.push(bytes);
            }
            variants.push(good[..at].to_vec());
        }
        let mut longer = good.clone();
        longer.push(0);
        variants.push(longer);
        for bytes in variants {
            assert_eq!(Codec::global().decode_any(&bytes), REFERENCE.decode_any(&bytes), "{bytes:02x?}");
            checked += 1;
        }
    }
    assert!(checked > 3_000, "{checked} variants");
}

proptest! {
    /// Damaged messages of every kind (bytes changed, cut short, extended):
    /// the codec answers exactly what the reference reader answers, the
    /// same record or the same refusal with the same reason and message.
    #[test]
    fn damaged_messages_decode_as_the_reference_reader_decodes_them(
        kind in 0..RecordKind::ALL.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut bytes = sample_messages().swap_remove(kind);
        for (at, byte) in edits {
            // Leave the header alone: a damaged header has one reader.
            let i = codec::HEADER_LEN + at.index(bytes.len() - codec::HEADER_LEN);
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(codec::HEADER_LEN + cut.index(bytes.len() - codec::HEADER_LEN));
        }
        bytes.extend(extra);
        prop_assert_eq!(Codec::global().decode_any(&bytes), REFERENCE.decode_any(&bytes));
    }

    /// Random ledger entries (any text, ids, decimals of every scale and
    /// sign up to 28 digits, extreme longs, every enum symbol, present and
    /// absent optionals): metering's hand-written entry writer gives the
    /// reference writer's bytes, and they read back as the same entry.
    #[test]
    fn the_entry_writer_writes_what_the_reference_writer_writes(
        ids in any::<(u128, u128)>(),
        texts in proptest::collection::vec(".{0,40}", 8),
        longs in any::<(i64, i64, i32, i64)>(),
        decimals in proptest::collection::vec((any::<i64>(), 0u32..=28, any::<bool>()), 5),
        symbols in (0usize..5, any::<bool>(), 0usize..3, any::<bool>()),
        ms in (-8_000_000_000_000i64..8_000_000_000_000, proptest::option::of(-8_000_000_000_000i64..8_000_000_000_000)),
        digest in proptest::option::of(any::<[u8; 16]>()),
    ) {
        let decimal = |(mantissa, scale, wide): (i64, u32, bool)| {
            let mantissa = if wide { i128::from(mantissa) * 1_000_000_000 } else { i128::from(mantissa) };
            Decimal::from_i128_with_scale(mantissa, scale)
        };
        let d: Vec<Decimal> = decimals.into_iter().map(decimal).collect();
        let e = LedgerEntry {
            entry_id: Uuid::from_u128(ids.0),
            account_id: AccountId::new_unchecked(&texts[0]),
            sequence: Sequence(longs.0),
            epoch: Epoch(longs.1),
            entry_type: [EntryType::Open, EntryType::Consume, EntryType::Add, EntryType::Update, EntryType::Forfeit][symbols.0],
            status: if symbols.1 { EntryStatus::Success } else { EntryStatus::Failed },
            reason: texts[1].clone(),
            input_id: Uuid::from_u128(ids.1),
            service: texts[2].clone(),
            engine: texts[3].clone(),
            photo_event_id: texts[4].clone(),
            quantity: d[0],
            credits: Credits::new(d[1]),
            dollars: Dollars::new(d[2]),
            tier: PlanTier::ALL[symbols.2],
            rate_version: texts[5].clone(),
            balance_after: Credits::new(d[3]),
            low_balance_threshold: Credits::new(d[4]),
            paused: symbols.3,
            occurred_at: at(ms.0),
            source: SourceOffset { topic: texts[6].clone(), partition: longs.2, offset: longs.3 },
            booth_id: texts[7].clone(),
            input_digest: digest.map(InputDigest),
            booked_at: ms.1.map(at),
        };
        let bytes = Codec::global().encode(&e).expect("encode");
        prop_assert_eq!(&bytes, &REFERENCE.encode(&e).expect("encode"));
        // The hand-written reader takes it, and reads the same entry.
        let by_hand = LedgerEntry::read_body(&bytes[codec::HEADER_LEN..]);
        prop_assert_eq!(by_hand.as_ref(), Some(&e));
        prop_assert_eq!(Codec::global().decode::<LedgerEntry>(&bytes).expect("decode"), e);
    }

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
        let bytes = codec.encode(&e).expect("encode");
        let by_hand = UsageEvent::read_body(&bytes[codec::HEADER_LEN..]);
        prop_assert_eq!(by_hand.as_ref(), Some(&e));
        prop_assert_eq!(codec.decode::<UsageEvent>(&bytes).expect("decode"), e);
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
            account_id: AccountId::new_unchecked("a"),
            kind,
            sequence: Sequence(4),
            balance: "1.5".parse().expect("decimal"),
            threshold: "10".parse().expect("decimal"),
            occurred_at: at(3),
            message: "low".into(),
            tier: Some(PlanTier::Basic),
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
            epoch: Epoch(3),
            instance: "h:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 1,
            next_input_offset: 77,
        };
        assert_eq!(codec.encode(&m).expect("encode"), via_value(&m));
    }
}

fn snapshot() -> PartitionSnapshot {
    let account = SnapshotAccount {
        account_id: AccountId::new_unchecked("acct-1"),
        balance: "12.3456".parse().expect("decimal"),
        last_sequence: Sequence(42),
        tier: PlanTier::Pro,
        low_balance_threshold: "50".parse().expect("decimal"),
        paused: false,
        deleted: true,
        booked_at: 1_767_225_601,
    };
    let mut ids = Uuid::from_u128(77).as_bytes().to_vec();
    ids.extend_from_slice(&1_767_225_600_123i64.to_be_bytes());
    PartitionSnapshot {
        snapshot_id: Uuid::from_u128(1),
        chunk: 0,
        chunks: 2,
        input_topic: "tally.inputs".into(),
        input_partition: 3,
        ledger_next_offset: 1_000,
        claim_epoch: Epoch(900),
        claim_id: Uuid::from_u128(2),
        resume_input_offset: 5_000,
        newest_occurred_at: Some(at(1_767_225_600_123)),
        last_source_offset: Some(4_999),
        accounts: vec![account.clone(), SnapshotAccount { account_id: AccountId::new_unchecked("acct-2"), ..account }],
        dedup_ids: ids,
        dedup_digests: vec![9; 16],
    }
}

/// [`snapshot`] with no accounts, no dedup ids and no times.
fn empty_snapshot() -> PartitionSnapshot {
    PartitionSnapshot {
        newest_occurred_at: None,
        last_source_offset: None,
        accounts: Vec::new(),
        dedup_ids: Vec::new(),
        dedup_digests: Vec::new(),
        ..snapshot()
    }
}

#[test]
fn partition_snapshots_round_trip() {
    let codec = Codec::global();
    for snapshot in [snapshot(), empty_snapshot()] {
        let bytes = codec.encode(&snapshot).expect("encode");
        assert_eq!(codec.decode_any(&bytes).expect("decode"), Message::Snapshot(Box::new(snapshot)));
    }
}
