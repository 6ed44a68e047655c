//! Bad input lands in the dead-letter topic with its reason, original bytes
//! and source coordinates; the good inputs around it are applied; the
//! partition never stalls. And SIGTERM is a clean stop.

mod support;

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use support::*;
use tally_client::{Publisher, PublisherConfig, UsageEventBuilder};
use tally_events::{
    AccountChange, AccountChangeKind, Codec, CreditPurchase, Credits, Dollars, EntryStatus, Input, LedgerEntry,
    Message as Record, PlanTier, Reason, Unit,
};
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, read_topic, Broker};
use uuid::Uuid;

fn at(hours: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_782_820_800, 0).expect("instant") + TimeDelta::hours(hours)
}

fn open(account: &str, n: u128) -> Input {
    Input::Account(AccountChange {
        change_id: Uuid::from_u128(n),
        account_id: account.into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Pro,
        low_balance_threshold: Credits::new(Decimal::from(10)),
        occurred_at: at(0),
        reason: None,
    })
}

/// An input whose decimal field `field` is the text `value` on the wire,
/// whatever a `Decimal` could hold: what a worker with another Avro
/// library can send.
fn with_decimal_text(input: &Input, field: &str, value: &str) -> Vec<u8> {
    use apache_avro::types::Value;
    let codec = Codec::global();
    let (kind, datum) = codec.decode_value(&codec.encode_input(input).expect("encode")).expect("decode");
    let Value::Record(mut fields) = datum else { panic!("a record") };
    for (name, v) in &mut fields {
        if name == field {
            *v = Value::String(value.into());
        }
    }
    tally_events::codec::encode_with_schema(codec.schema(kind), Value::Record(fields)).expect("encode")
}

fn usage(account: &str, job: &str, service: &str, engine: &str, quantity: Decimal, unit: Unit, hours: i64) -> Input {
    let mut event = UsageEventBuilder::new("acct-placeholder", job, service, engine)
        .quantity(Decimal::ONE, unit)
        .occurred_at(at(hours))
        .build()
        .expect("valid event");
    // The builder refuses bad quantities and account ids; a broken worker
    // (or one with another client library) does not.
    event.quantity = quantity;
    event.account_id = account.into();
    Input::Usage(event)
}

const ONE_AND_A_BIT: &str = "1.0000000000000000000000000000001";
const TEN_DOLLARS_AND_A_BIT: &str = "10.0000000000000000000000000000001";
static HUGE_ACCOUNT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "acct-".repeat(1_000));

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_input_is_dead_lettered_and_its_neighbours_applied() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 1)]).await?;
    let codec = Codec::global();
    let good = "acct-good";
    let mut messages: Vec<(Vec<u8>, Vec<u8>, Option<Reason>)> = Vec::new(); // key, payload, expected reason
    let push_input = |messages: &mut Vec<_>, input: &Input, key: &str, reason: Option<Reason>| {
        messages.push((key.as_bytes().to_vec(), codec.encode_input(input).expect("encode"), reason));
    };
    push_input(&mut messages, &open(good, 1), good, None);
    push_input(&mut messages, &open("acct-del", 2), "acct-del", None);
    let purchase = Input::Purchase(CreditPurchase {
        purchase_id: Uuid::from_u128(3),
        account_id: good.into(),
        amount_dollars: Dollars::new(Decimal::from(40)),
        occurred_at: at(1),
        payment_reference: None,
    });
    push_input(&mut messages, &purchase, good, None);
    let mut n = 0;
    let mut neighbour = |messages: &mut Vec<(Vec<u8>, Vec<u8>, Option<Reason>)>| {
        n += 1;
        let input = usage(good, &format!("ok-{n}"), "background_removal", "standard", Decimal::ONE, Unit::Image, 240);
        messages.push((good.as_bytes().to_vec(), codec.encode_input(&input).expect("encode"), None));
    };
    neighbour(&mut messages);
    // Newest occurred_at so far is at(240): ten days later than at(0).
    let bad: Vec<(Vec<u8>, Vec<u8>, Reason)> = vec![
        (good.into(), b"not avro at all".to_vec(), Reason::Malformed),
        (good.into(), Vec::new(), Reason::Malformed),
        (good.into(), [&[0xC3, 0x01][..], &[7; 8], b"body"].concat(), Reason::UnknownSchema),
        (
            good.into(),
            codec.encode_input(&usage(good, "j1", "ai_hologram", "standard", Decimal::ONE, Unit::Image, 240))?,
            Reason::UnknownService,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j2", "ai_modify", "dall_e_9", Decimal::ONE, Unit::Image, 240))?,
            Reason::UnknownService,
        ),
        (
            good.into(),
            codec.encode_input(&usage(
                good,
                "j3",
                "background_removal",
                "standard",
                Decimal::ONE,
                Unit::VideoSecond,
                240,
            ))?,
            Reason::UnitMismatch,
        ),
        (
            "acct-ghost".into(),
            codec.encode_input(&usage("acct-ghost", "j4", "sms", "standard", Decimal::ONE, Unit::Message, 240))?,
            Reason::UnknownAccount,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j5", "sms", "standard", Decimal::ZERO, Unit::Message, 240))?,
            Reason::InvalidQuantity,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j6", "sms", "standard", -Decimal::ONE, Unit::Message, 240))?,
            Reason::InvalidQuantity,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j7", "sms", "standard", Decimal::new(1, 4), Unit::Message, 240))?,
            Reason::InvalidQuantity,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j8", "sms", "standard", Decimal::ONE, Unit::Message, 0))?,
            Reason::TooLate,
        ),
        // Eighty years ahead of its append time: refused, and the inputs
        // after it are not made "too late" by it.
        (
            good.into(),
            codec.encode_input(&usage(good, "j11", "sms", "standard", Decimal::ONE, Unit::Message, 24 * 365 * 80))?,
            Reason::FromFuture,
        ),
        (
            "someone-else".into(),
            codec.encode_input(&usage(good, "j9", "sms", "standard", Decimal::ONE, Unit::Message, 240))?,
            Reason::BadKey,
        ),
        (good.into(), codec.encode(&Codec::global().decode::<LedgerEntry>(&sample_entry())?)?, Reason::NotAnInput),
        (
            good.into(),
            codec.encode_input(&Input::Purchase(CreditPurchase {
                purchase_id: Uuid::from_u128(4),
                account_id: good.into(),
                amount_dollars: Dollars::new(Decimal::from(-5)),
                occurred_at: at(240),
                payment_reference: None,
            }))?,
            Reason::InvalidAmount,
        ),
        // Decimals with more digits than fit: refused, not rounded to 1
        // image or to $10.00.
        (
            good.into(),
            with_decimal_text(
                &usage(good, "j12", "background_removal", "standard", Decimal::ONE, Unit::Image, 240),
                "quantity",
                ONE_AND_A_BIT,
            ),
            Reason::InvalidQuantity,
        ),
        (
            good.into(),
            with_decimal_text(
                &Input::Purchase(CreditPurchase {
                    purchase_id: Uuid::from_u128(6),
                    account_id: good.into(),
                    amount_dollars: Dollars::new(Decimal::from(10)),
                    occurred_at: at(240),
                    payment_reference: None,
                }),
                "amount_dollars",
                TEN_DOLLARS_AND_A_BIT,
            ),
            Reason::InvalidAmount,
        ),
        // Half an image.
        (
            good.into(),
            codec.encode_input(&usage(
                good,
                "j13",
                "background_removal",
                "standard",
                Decimal::new(15, 1),
                Unit::Image,
                240,
            ))?,
            Reason::InvalidQuantity,
        ),
        // An empty account id under an empty key, and one of 5 KB under
        // its own key.
        (
            Vec::new(),
            codec.encode_input(&usage("", "j14", "sms", "standard", Decimal::ONE, Unit::Message, 240))?,
            Reason::InvalidAccountId,
        ),
        (
            HUGE_ACCOUNT.as_bytes().to_vec(),
            codec.encode_input(&usage(
                HUGE_ACCOUNT.as_str(),
                "j15",
                "sms",
                "standard",
                Decimal::ONE,
                Unit::Message,
                240,
            ))?,
            Reason::InvalidAccountId,
        ),
        // A neighbour's event id again, with ten times its quantity.
        (
            good.into(),
            codec.encode_input(&usage(
                good,
                "ok-1",
                "background_removal",
                "standard",
                Decimal::TEN,
                Unit::Image,
                240,
            ))?,
            Reason::ConflictingDuplicate,
        ),
        // 200 KB of garbage: its dead letter keeps the first 64 KiB.
        (good.into(), vec![0x42; 200_000], Reason::Malformed),
    ];
    for (key, payload, reason) in bad {
        messages.push((key, payload, Some(reason)));
        neighbour(&mut messages);
    }
    let delete = Input::Account(AccountChange {
        change_id: Uuid::from_u128(5),
        account_id: "acct-del".into(),
        kind: AccountChangeKind::Delete,
        tier: PlanTier::Pro,
        low_balance_threshold: Credits::ZERO,
        occurred_at: at(240),
        reason: Some("closing".into()),
    });
    push_input(&mut messages, &delete, "acct-del", None);
    let after_delete = usage("acct-del", "j10", "sms", "standard", Decimal::ONE, Unit::Message, 240);
    push_input(&mut messages, &after_delete, "acct-del", Some(Reason::AccountDeleted));
    neighbour(&mut messages);

    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: bootstrap.clone(),
        topic: INPUTS.into(),
        ..PublisherConfig::default()
    })?;
    for (key, payload, _) in &messages {
        publisher.enqueue_raw(key, payload).await?.wait().await?;
    }
    let mut metering = MeteringProcess::spawn(&bootstrap, "bad-input", &[])?;
    let expected = expected(&bootstrap, messages.len())?;
    let actual = wait_for_ledger(&bootstrap, &expected, Duration::from_secs(60))?;
    let report = compare(&expected, &actual);
    report.print("bad-input");
    assert!(report.passed(), "{}", metering.log_tail());

    // Each bad message is in the dead-letter topic at its source offset,
    // with the reason, the original key and bytes.
    let letters: BTreeMap<i64, tally_events::DeadLetter> =
        read_topic(&bootstrap, DEAD_LETTERS, Duration::from_secs(30))?
            .into_iter()
            .map(|r| match codec.decode_any(r.payload.as_deref().unwrap_or_default()) {
                Ok(Record::DeadLetter(d)) => (d.source.offset, d),
                other => panic!("not a dead letter: {other:?}"),
            })
            .collect();
    let mut bad_count = 0;
    for (offset, (key, payload, reason)) in messages.iter().enumerate() {
        let offset = offset as i64;
        match reason {
            Some(reason) => {
                bad_count += 1;
                let letter =
                    letters.get(&offset).unwrap_or_else(|| panic!("no dead letter for offset {offset} ({reason})"));
                assert_eq!(letter.reason, reason.code(), "offset {offset}: {}", letter.detail);
                assert!(!letter.detail.is_empty());
                assert_eq!(letter.source.topic, INPUTS);
                assert_eq!(letter.source.partition, 0);
                let kept_key = &key[..key.len().min(tally_events::limits::DEAD_LETTER_KEY_BYTES_MAX)];
                assert!(letter.key.as_deref() == Some(kept_key), "offset {offset}: the key, up to 1 KiB");
                // The original bytes, up to 64 KiB, and their length.
                let kept = &payload[..payload.len().min(tally_events::limits::DEAD_LETTER_PAYLOAD_BYTES_MAX)];
                assert_eq!(letter.payload.as_deref().unwrap_or_default(), kept, "original bytes kept");
                assert_eq!(letter.original_payload_bytes, payload.len() as i64);
                assert_eq!(letter.original_key_bytes, key.len() as i64);
                assert_eq!(letter.truncated(), payload.len() > kept.len() || key.len() > kept_key.len());
                assert!(letter.detail.len() < 400, "a bounded detail: {} bytes", letter.detail.len());
            }
            None => assert!(!letters.contains_key(&offset), "good input at {offset} was dead-lettered"),
        }
    }
    assert_eq!(letters.len(), bad_count, "one dead letter per bad input");
    // Values are quoted as sent, not rounded.
    let detail_of =
        |reason: Reason, text: &str| letters.values().any(|l| l.reason == reason.code() && l.detail.contains(text));
    assert!(detail_of(Reason::InvalidQuantity, ONE_AND_A_BIT), "the quantity as sent");
    assert!(detail_of(Reason::InvalidAmount, TEN_DOLLARS_AND_A_BIT), "the amount as sent");
    assert!(detail_of(Reason::ConflictingDuplicate, "quantity/unit differ"), "the conflicting field named");
    // Every neighbour was applied: 24 successful debits of 1 credit.
    let debits = actual
        .entries
        .iter()
        .filter(|e| e.input_id != Uuid::nil() && e.service == "background_removal" && e.status == EntryStatus::Success)
        .count();
    assert_eq!(debits, 24);

    // What an operator sees with `tally inspect`: every dead letter, its
    // reason and source offset, and the input it held when that decodes.
    let lines = inspect(&bootstrap, &["--json"])?;
    let mut seen = BTreeMap::new();
    for line in &lines {
        let record: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(record["record"], "tally.DeadLetter", "{line}");
        let offset = record["value"]["source"]["offset"].as_i64().expect("source offset");
        let letter = letters.get(&offset).unwrap_or_else(|| panic!("inspect shows no such dead letter: {line}"));
        assert_eq!(record["value"]["reason"], letter.reason.as_str(), "{line}");
        // The held input is shown decoded exactly when its datum decodes
        // (a quantity that is no exact decimal is shown as sent).
        let decodes = codec.decode_value(letter.payload.as_deref().unwrap_or_default()).is_ok();
        assert_eq!(record.get("payload_value").is_some(), decodes, "{line}");
        seen.insert(offset, ());
    }
    assert_eq!(seen.len(), letters.len(), "inspect lists every dead letter once");
    let quantity = inspect(&bootstrap, &["--reason", Reason::InvalidQuantity.code()])?;
    assert_eq!(quantity.len(), 5, "{quantity:?}");
    assert!(
        quantity.iter().all(|l| l.contains("DeadLetter") && l.contains(Reason::InvalidQuantity.code())),
        "{quantity:?}"
    );
    let ghost = inspect(&bootstrap, &["--account", "acct-ghost"])?;
    assert_eq!(ghost.len(), 1, "{ghost:?}");
    assert!(ghost[0].contains(Reason::UnknownAccount.code()), "{ghost:?}");
    assert_eq!(inspect(&bootstrap, &["--limit", "2"])?.len(), 2);

    let status = metering.terminate(Duration::from_secs(30))?;
    assert!(status.success());
    Ok(())
}

/// `tally inspect` of the dead-letter topic: its stdout lines.
fn inspect(bootstrap: &str, extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let output = std::process::Command::new(tally_testkit::tally_binary()?)
        .args(["inspect", DEAD_LETTERS, "--brokers", bootstrap])
        .args(extra)
        .output()?;
    anyhow::ensure!(output.status.success(), "tally inspect failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.lines().map(str::to_string).collect())
}

fn sample_entry() -> Vec<u8> {
    let entry = LedgerEntry {
        entry_id: Uuid::from_u128(9),
        account_id: tally_events::AccountId::new_unchecked("acct-good"),
        sequence: tally_events::Sequence(1),
        epoch: tally_events::Epoch(1),
        entry_type: tally_events::EntryType::Open,
        status: EntryStatus::Success,
        reason: String::new(),
        input_id: Uuid::from_u128(9),
        service: String::new(),
        engine: String::new(),
        photo_event_id: String::new(),
        quantity: Decimal::ZERO,
        credits: Credits::ZERO,
        dollars: Dollars::ZERO,
        tier: PlanTier::Pro,
        rate_version: String::new(),
        balance_after: Credits::ZERO,
        low_balance_threshold: Credits::ZERO,
        paused: false,
        occurred_at: at(0),
        source: tally_events::SourceOffset { topic: "x".into(), partition: 0, offset: 0 },
        booth_id: String::new(),
        input_digest: None,
        booked_at: None,
    };
    Codec::global().encode(&entry).expect("encode")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_flushes_commits_and_exits_0() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 2)]).await?;
    let messages: Vec<_> =
        Simulator::new(SimConfig { seed: 3, accounts: 20, usage_events: 8_000, ..SimConfig::default() }).collect();
    publish(&bootstrap, &messages).await?;
    let mut metering = MeteringProcess::spawn(&bootstrap, "sigterm", &[])?;
    std::thread::sleep(Duration::from_millis(1_500));
    let status = metering.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "exit status {status}\n{}", metering.log_tail());
    let log = std::fs::read_to_string(&metering.log)?;
    assert!(log.contains("shutting down"), "{log}");
    // Whatever it wrote is consistent, and a restart completes the ledger.
    let expected = expected(&bootstrap, messages.len())?;
    let partial = compare(&expected, &actual(&bootstrap, false)?);
    assert_eq!((partial.conflicting, partial.mismatched, partial.extra, partial.doubled), (0, 0, 0, 0));
    let _again = MeteringProcess::spawn(&bootstrap, "sigterm-again", &[])?;
    let report = compare(&expected, &wait_for_ledger(&bootstrap, &expected, Duration::from_secs(120))?);
    report.print("sigterm");
    assert!(report.passed());
    Ok(())
}
