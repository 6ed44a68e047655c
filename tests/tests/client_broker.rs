//! The client crate against the real broker: what a worker publishes is what
//! the pipeline reads back.

use std::time::Duration;

use chrono::DateTime;
use rust_decimal::Decimal;
use tally_client::{event_id, Publisher, PublisherConfig, UsageEventBuilder};
use tally_events::{AccountChange, AccountChangeKind, Codec, CreditPurchase, Input, JobOutcome, PlanTier, Unit};
use tally_testkit::{create_topics, read_topic, Broker};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn published_inputs_come_back_identical_and_keyed_by_account() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    let topic = "inputs-roundtrip";
    create_topics(&broker.bootstrap(), &[(topic, 3)]).await?;
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: broker.bootstrap(),
        topic: topic.into(),
        ..PublisherConfig::default()
    })?;
    let at = |ms: i64| DateTime::from_timestamp_millis(1_767_225_600_000 + ms).expect("instant");
    let open = Input::Account(AccountChange {
        change_id: Uuid::from_u128(1),
        account_id: "acct-a".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Basic,
        low_balance_threshold: tally_events::Credits::new(Decimal::from(50)),
        occurred_at: at(0),
        reason: None,
    });
    let purchase = Input::Purchase(CreditPurchase {
        purchase_id: Uuid::from_u128(2),
        account_id: "acct-a".into(),
        amount_dollars: tally_events::Dollars::new(Decimal::new(2500, 2)),
        occurred_at: at(1),
        payment_reference: None,
    });
    let mut sent = vec![open, purchase];
    for n in 0..50 {
        let account = if n % 2 == 0 { "acct-a" } else { "acct-b" };
        let event = UsageEventBuilder::new(account, &format!("job-{n}"), "ai_image_to_video", "kling")
            .photo_event("wedding-1")
            .booth("booth-1")
            .quantity(Decimal::new(75, 1), Unit::VideoSecond)
            .outcome(if n % 10 == 0 { JobOutcome::Failed } else { JobOutcome::Succeeded })
            .occurred_at(at(10 + n))
            .producer("gpu-1", "test")
            .build()?;
        sent.push(Input::Usage(event));
    }
    let mut partitions = std::collections::BTreeMap::new();
    for input in &sent {
        let delivery = publisher.send(input).await?;
        partitions.entry(input.account_id().to_string()).or_insert_with(Vec::new).push(delivery.partition);
    }
    publisher.flush(Duration::from_secs(10))?;
    for (account, parts) in &partitions {
        assert!(parts.windows(2).all(|w| w[0] == w[1]), "{account} spread over partitions {parts:?}");
    }

    let records = read_topic(&broker.bootstrap(), topic, Duration::from_secs(30))?;
    assert_eq!(records.len(), sent.len(), "every published input is read back once");
    let mut received = Vec::new();
    for record in &records {
        let input = Codec::global().decode_input(record.payload.as_deref().unwrap_or_default())?;
        assert_eq!(record.key.as_deref(), Some(input.account_id().as_bytes()), "keyed by account id");
        received.push(input);
    }
    // Per account, order is kept; overall, the same set.
    for account in ["acct-a", "acct-b"] {
        let want: Vec<_> = sent.iter().filter(|i| i.account_id() == account).collect();
        let got: Vec<_> = received.iter().filter(|i| i.account_id() == account).collect();
        assert_eq!(got, want, "{account}: same inputs in the same order");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_job_is_published_with_the_same_event_id() -> anyhow::Result<()> {
    let broker = Broker::memory()?;
    create_topics(&broker.bootstrap(), &[("retries", 1)]).await?;
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: broker.bootstrap(),
        topic: "retries".into(),
        ..PublisherConfig::default()
    })?;
    for attempt in 0..3 {
        let event = UsageEventBuilder::new("acct-r", "job-retry", "ai_modify", "gpt_image_2")
            .quantity(Decimal::ONE, Unit::Image)
            .occurred_at(DateTime::from_timestamp_millis(1_000 * attempt).expect("instant"))
            .producer(&format!("worker-{attempt}"), "1")
            .build()?;
        publisher.send(&Input::Usage(event)).await?;
    }
    let records = read_topic(&broker.bootstrap(), "retries", Duration::from_secs(30))?;
    assert_eq!(records.len(), 3);
    for record in records {
        let input = Codec::global().decode_input(record.payload.as_deref().unwrap_or_default())?;
        assert_eq!(input.id(), event_id("job-retry", "ai_modify", "gpt_image_2"));
    }
    Ok(())
}
