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
    names::reasons, AccountChange, AccountChangeKind, Codec, CreditPurchase, EntryStatus, Input, LedgerEntry,
    Message as Record, PlanTier, Unit,
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
        low_balance_threshold: Decimal::from(10),
        occurred_at: at(0),
        reason: None,
    })
}

fn usage(account: &str, job: &str, service: &str, engine: &str, quantity: Decimal, unit: Unit, hours: i64) -> Input {
    let mut event = UsageEventBuilder::new(account, job, service, engine)
        .quantity(Decimal::ONE, unit)
        .occurred_at(at(hours))
        .build()
        .expect("valid event");
    event.quantity = quantity; // the builder refuses bad quantities; a broken worker does not
    Input::Usage(event)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_bad_input_is_dead_lettered_and_its_neighbours_applied() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[(INPUTS, 1)]).await?;
    let codec = Codec::global();
    let good = "acct-good";
    let mut messages: Vec<(Vec<u8>, Vec<u8>, Option<&str>)> = Vec::new(); // key, payload, expected reason
    let push_input = |messages: &mut Vec<_>, input: &Input, key: &str, reason: Option<&'static str>| {
        messages.push((key.as_bytes().to_vec(), codec.encode_input(input).expect("encode"), reason));
    };
    push_input(&mut messages, &open(good, 1), good, None);
    push_input(&mut messages, &open("acct-del", 2), "acct-del", None);
    let purchase = Input::Purchase(CreditPurchase {
        purchase_id: Uuid::from_u128(3),
        account_id: good.into(),
        amount_dollars: Decimal::from(40),
        occurred_at: at(1),
        payment_reference: None,
    });
    push_input(&mut messages, &purchase, good, None);
    let mut n = 0;
    let mut neighbour = |messages: &mut Vec<(Vec<u8>, Vec<u8>, Option<&str>)>| {
        n += 1;
        let input = usage(good, &format!("ok-{n}"), "background_removal", "standard", Decimal::ONE, Unit::Image, 240);
        messages.push((good.as_bytes().to_vec(), codec.encode_input(&input).expect("encode"), None));
    };
    neighbour(&mut messages);
    // Newest occurred_at so far is at(240): ten days later than at(0).
    let bad: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (good.into(), b"not avro at all".to_vec(), reasons::MALFORMED),
        (good.into(), Vec::new(), reasons::MALFORMED),
        (good.into(), [&[0xC3, 0x01][..], &[7; 8], b"body"].concat(), reasons::UNKNOWN_SCHEMA),
        (
            good.into(),
            codec.encode_input(&usage(good, "j1", "ai_hologram", "standard", Decimal::ONE, Unit::Image, 240))?,
            reasons::UNKNOWN_SERVICE,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j2", "ai_modify", "dall_e_9", Decimal::ONE, Unit::Image, 240))?,
            reasons::UNKNOWN_SERVICE,
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
            reasons::UNIT_MISMATCH,
        ),
        (
            "acct-ghost".into(),
            codec.encode_input(&usage("acct-ghost", "j4", "sms", "standard", Decimal::ONE, Unit::Message, 240))?,
            reasons::UNKNOWN_ACCOUNT,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j5", "sms", "standard", Decimal::ZERO, Unit::Message, 240))?,
            reasons::INVALID_QUANTITY,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j6", "sms", "standard", -Decimal::ONE, Unit::Message, 240))?,
            reasons::INVALID_QUANTITY,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j7", "sms", "standard", Decimal::new(1, 4), Unit::Message, 240))?,
            reasons::INVALID_QUANTITY,
        ),
        (
            good.into(),
            codec.encode_input(&usage(good, "j8", "sms", "standard", Decimal::ONE, Unit::Message, 0))?,
            reasons::TOO_LATE,
        ),
        // Eighty years ahead of its append time: refused, and the inputs
        // after it are not made "too late" by it.
        (
            good.into(),
            codec.encode_input(&usage(good, "j11", "sms", "standard", Decimal::ONE, Unit::Message, 24 * 365 * 80))?,
            reasons::FROM_FUTURE,
        ),
        (
            "someone-else".into(),
            codec.encode_input(&usage(good, "j9", "sms", "standard", Decimal::ONE, Unit::Message, 240))?,
            reasons::BAD_KEY,
        ),
        (good.into(), codec.encode(&Codec::global().decode::<LedgerEntry>(&sample_entry())?)?, reasons::NOT_AN_INPUT),
        (
            good.into(),
            codec.encode_input(&Input::Purchase(CreditPurchase {
                purchase_id: Uuid::from_u128(4),
                account_id: good.into(),
                amount_dollars: Decimal::from(-5),
                occurred_at: at(240),
                payment_reference: None,
            }))?,
            reasons::INVALID_AMOUNT,
        ),
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
        low_balance_threshold: Decimal::ZERO,
        occurred_at: at(240),
        reason: Some("closing".into()),
    });
    push_input(&mut messages, &delete, "acct-del", None);
    let after_delete = usage("acct-del", "j10", "sms", "standard", Decimal::ONE, Unit::Message, 240);
    push_input(&mut messages, &after_delete, "acct-del", Some(reasons::ACCOUNT_DELETED));
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
                assert_eq!(&letter.reason, reason, "offset {offset}: {}", letter.detail);
                assert!(!letter.detail.is_empty());
                assert_eq!(letter.source.topic, INPUTS);
                assert_eq!(letter.source.partition, 0);
                assert_eq!(letter.key.as_deref(), Some(key.as_slice()));
                assert_eq!(letter.payload.as_deref().unwrap_or_default(), payload.as_slice(), "original bytes kept");
            }
            None => assert!(!letters.contains_key(&offset), "good input at {offset} was dead-lettered"),
        }
    }
    assert_eq!(letters.len(), bad_count, "one dead letter per bad input");
    // Every neighbour was applied: 17 successful debits of 1 credit.
    let debits = actual
        .entries
        .iter()
        .filter(|e| e.input_id != Uuid::nil() && e.service == "background_removal" && e.status == EntryStatus::Success)
        .count();
    assert_eq!(debits, 17);

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
        // The held input is shown decoded exactly when it decodes.
        let decodes = codec.decode_any(letter.payload.as_deref().unwrap_or_default()).is_ok();
        assert_eq!(record.get("payload_value").is_some(), decodes, "{line}");
        seen.insert(offset, ());
    }
    assert_eq!(seen.len(), letters.len(), "inspect lists every dead letter once");
    let quantity = inspect(&bootstrap, &["--reason", reasons::INVALID_QUANTITY])?;
    assert_eq!(quantity.len(), 3, "{quantity:?}");
    assert!(quantity.iter().all(|l| l.contains("DeadLetter") && l.contains(reasons::INVALID_QUANTITY)), "{quantity:?}");
    let ghost = inspect(&bootstrap, &["--account", "acct-ghost"])?;
    assert_eq!(ghost.len(), 1, "{ghost:?}");
    assert!(ghost[0].contains(reasons::UNKNOWN_ACCOUNT), "{ghost:?}");
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
        account_id: "acct-good".into(),
        sequence: 1,
        epoch: 1,
        entry_type: tally_events::EntryType::Open,
        status: EntryStatus::Success,
        reason: String::new(),
        input_id: Uuid::from_u128(9),
        service: String::new(),
        engine: String::new(),
        photo_event_id: String::new(),
        quantity: Decimal::ZERO,
        credits: Decimal::ZERO,
        dollars: Decimal::ZERO,
        tier: PlanTier::Pro,
        rate_version: String::new(),
        balance_after: Decimal::ZERO,
        low_balance_threshold: Decimal::ZERO,
        paused: false,
        occurred_at: at(0),
        source: tally_events::SourceOffset { topic: "x".into(), partition: 0, offset: 0 },
        booth_id: String::new(),
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
