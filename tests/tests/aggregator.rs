//! The aggregator end to end: simulator -> broker -> metering -> aggregator
//! -> ClickHouse, with the shipped defaults, under the faults of the
//! ClickHouse issue while inputs keep arriving. After every run the raw
//! table equals the fenced ledger entry for entry, and every rollup equals
//! its aggregate of the raw table. A deliberately broken resume must fail
//! the same check.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{warehouse::*, *};
use tally_events::{
    AccountId, Codec, Credits, DeadLetter, Dollars, EntryStatus, EntryType, Epoch, LedgerEntry, LedgerMarker,
    MarkerKind, Message as Record, PlanTier, Sequence, SourceOffset,
};
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, read_topic, Broker, ClickHouse};

/// Kills the process with its crash plan and waits for the abort.
fn crash_at(process: &mut MeteringProcess, point: &str, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    match process.wait_exit(timeout) {
        Some(status) if !status.success() => Ok(started.elapsed()),
        Some(status) => bail!("the aggregator exited with {status} instead of crashing at {point}"),
        None => bail!("the aggregator did not reach {point} within {timeout:?}\n{}", process.log_tail()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_holds_the_fenced_ledger_exactly_once_through_faults() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let mut clickhouse = ClickHouse::start()?;
    migrate(&clickhouse)?;
    create_topics(&bootstrap, &[(INPUTS, 4)]).await?;
    let config = SimConfig { seed: seed(), accounts: 60, usage_events: 24_000, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    let _metering = MeteringProcess::spawn(&bootstrap, "agg-e2e", &[])?;
    // Two aggregators split the four ledger partitions.
    let two =
        |i: &'static str| vec![("TALLY_AGGREGATOR__INSTANCE_COUNT", "2"), ("TALLY_AGGREGATOR__INSTANCE_INDEX", i)];
    let url = clickhouse.url();
    let mut first = MeteringProcess::aggregator(&bootstrap, &url, "first", &two("0"))?;
    let mut second = MeteringProcess::aggregator(&bootstrap, &url, "second", &two("1"))?;
    let paced = Paced::default();
    let publishing = {
        let (bootstrap, paced, messages) = (bootstrap.clone(), paced.clone(), messages.clone());
        tokio::spawn(async move { publish_until(&bootstrap, &messages, Some(300), &paced).await })
    };
    wait_until("the aggregators to insert rows", Duration::from_secs(90), || {
        Ok(first.metric_sum("tally_aggregator_rows_inserted_total") > 0.0
            && second.metric_sum("tally_aggregator_rows_inserted_total") > 0.0)
    })?;

    // Named points, each while inputs keep arriving.
    for (process, index, point, pass) in [(&mut first, "0", "mid_insert", "3"), (&mut second, "1", "after_insert", "2")]
    {
        let crash = format!("{point}:{pass}");
        let mut env = two(index);
        env.push(("TALLY_CRASH_AT", &crash));
        let name = format!("{point}-crash");
        let mut crashing = MeteringProcess::aggregator(&bootstrap, &url, &name, &env)?;
        process.kill();
        let took = crash_at(&mut crashing, point, Duration::from_secs(60))?;
        eprintln!("[aggregator] crashed at {point} after {took:?}");
        process.respawn()?;
    }
    // kill -9 at random moments.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed());
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_500))).await;
        let victim = if round % 2 == 0 { &mut first } else { &mut second };
        victim.respawn()?;
        eprintln!("[aggregator] kill -9 and restart, round {round}");
    }
    // ClickHouse stopped for 20 s, then killed -9 while inserting.
    clickhouse.stop()?;
    eprintln!("[aggregator] ClickHouse stopped");
    tokio::time::sleep(Duration::from_secs(20)).await;
    clickhouse.start_again()?;
    eprintln!("[aggregator] ClickHouse started again");
    let inserted = first.metric_sum("tally_aggregator_rows_inserted_total");
    wait_until("inserts to go on after the outage", Duration::from_secs(60), || {
        Ok(first.metric_sum("tally_aggregator_rows_inserted_total") > inserted)
    })?;
    clickhouse.kill()?;
    eprintln!("[aggregator] ClickHouse killed -9");
    tokio::time::sleep(Duration::from_secs(2)).await;
    clickhouse.start_again()?;
    let published = publishing.await??;
    eprintln!("[aggregator] {published} inputs published");

    let eq = wait_for_equality(&clickhouse, &bootstrap, Duration::from_secs(180)).await?;
    eq.print("aggregator faults");
    let retries =
        first.metric_sum("tally_aggregator_retries_total") + second.metric_sum("tally_aggregator_retries_total");
    eprintln!("[aggregator] retries after the outage: {retries}");
    assert!(eq.expected > 10_000, "the run wrote a real ledger ({} entries)", eq.expected);
    assert!(eq.holds(), "ClickHouse must equal the fenced ledger and its rollups the raw table");
    assert!(retries > 0.0, "the outage was seen and retried, not skipped");
    let owned =
        first.metric_sum("tally_aggregator_partitions_owned") + second.metric_sum("tally_aggregator_partitions_owned");
    assert_eq!(owned, 4.0, "the two aggregators own the four ledger partitions between them");
    Ok(())
}

fn entry(account: &str, sequence: i64, epoch: i64, at: &str, credits: &str) -> LedgerEntry {
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().expect("decimal");
    let occurred_at = chrono::DateTime::parse_from_rfc3339(at).expect("time").to_utc();
    LedgerEntry {
        entry_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{account}#{sequence}").as_bytes()),
        account_id: AccountId::parse(account).expect("id"),
        sequence: Sequence(sequence),
        epoch: Epoch(epoch),
        entry_type: if sequence == 1 { EntryType::Add } else { EntryType::Consume },
        status: EntryStatus::Success,
        reason: String::new(),
        input_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{account}#{sequence}").as_bytes()),
        service: if sequence == 1 { String::new() } else { "ai_image_to_video".into() },
        engine: if sequence == 1 { String::new() } else { "kling".into() },
        photo_event_id: if sequence == 1 { String::new() } else { "wedding-7".into() },
        quantity: if sequence == 1 { d("0") } else { d("7.5") },
        credits: Credits::new(d(credits)),
        dollars: Dollars::new(d("1.80")),
        tier: PlanTier::Payg,
        rate_version: "2026-01".into(),
        balance_after: Credits::new(d("1000") - d(credits) * rust_decimal::Decimal::from(sequence - 1)),
        low_balance_threshold: Credits::new(d("10")),
        paused: false,
        occurred_at,
        source: SourceOffset { topic: INPUTS.into(), partition: 0, offset: sequence },
        booth_id: "booth-1".into(),
        input_digest: None,
    }
}

fn claim(epoch_offset_id: u128) -> LedgerMarker {
    LedgerMarker {
        kind: MarkerKind::Claim,
        claim_id: uuid::Uuid::from_u128(epoch_offset_id),
        epoch: Epoch(0),
        instance: "test:1".into(),
        input_topic: INPUTS.into(),
        input_partition: 0,
        next_input_offset: 0,
    }
}

/// Writes a ledger by hand (partition 0): a claim, entries of two accounts
/// that alternate between November and December (every batch crosses the
/// month boundary), a benign duplicate, a record no reader can decode, a
/// zombie's write after a newer claim.
async fn handmade_ledger(bootstrap: &str) -> Result<usize> {
    create_topics(bootstrap, &[(LEDGER, 1)]).await?;
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let codec = Codec::global();
    let mut records: Vec<Vec<u8>> = vec![codec.encode(&claim(1))?];
    let mut entries = 0;
    for sequence in 1..=150 {
        for (account, month) in [("acct-a", "11-30T23"), ("acct-b", "12-01T00")] {
            // acct-b's times are in December, acct-a's in November.
            let at = format!("2026-{month}:{:02}:{:02}Z", sequence % 60, (sequence * 7) % 60);
            records.push(codec.encode(&entry(account, sequence, 0, &at, "15"))?);
            entries += 1;
        }
        if sequence == 40 {
            // A benign duplicate: the same entry again.
            let at = format!("2026-11-30T23:{:02}:{:02}Z", sequence % 60, (sequence * 7) % 60);
            records.push(codec.encode(&entry("acct-a", sequence, 0, &at, "15"))?);
        }
        if sequence == 70 {
            records.push(b"\x00\x01 a foreign writer's bytes".to_vec());
        }
    }
    // A newer claim (epoch = its offset), then a zombie's write with epoch 0.
    let claim_offset = records.len() as i64;
    records.push(codec.encode(&claim(2))?);
    records.push(codec.encode(&entry("acct-a", 151, 0, "2026-12-01T01:00:00Z", "15"))?);
    records.push(codec.encode(&entry("acct-a", 151, claim_offset, "2026-12-01T01:00:01Z", "15"))?);
    entries += 1;
    for (i, payload) in records.iter().enumerate() {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(LEDGER).partition(0).key(&key).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(entries)
}

#[tokio::test(flavor = "multi_thread")]
async fn month_boundaries_foreign_records_duplicates_and_zombies() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let clickhouse = ClickHouse::start()?;
    migrate(&clickhouse)?;
    let entries = handmade_ledger(&bootstrap).await?;
    let url = clickhouse.url();
    // Small batches, so that there are many, each across two months; the
    // first crash falls between the November and the December INSERT.
    let small = [("TALLY_AGGREGATOR__BATCH_ROWS_MAX", "40"), ("TALLY_CRASH_AT", "month_boundary:2")];
    let mut crashing = MeteringProcess::aggregator(&bootstrap, &url, "month", &small)?;
    crash_at(&mut crashing, "month_boundary", Duration::from_secs(60))?;
    let aggregator = MeteringProcess::aggregator(&bootstrap, &url, "after-month", &small[..1])?;
    let eq = wait_for_equality(&clickhouse, &bootstrap, Duration::from_secs(60)).await?;
    eq.print("handmade ledger");
    assert_eq!(eq.expected, entries, "the fenced ledger the test wrote");
    assert!(eq.holds());
    wait_until("the dead letter to be counted", Duration::from_secs(10), || {
        Ok(aggregator
            .metric("tally_aggregator_dead_letters_total")?
            .iter()
            .any(|(l, v)| l.contains("ledger_undecodable") && *v == 1.0))
    })?;
    let letters: Vec<DeadLetter> = read_topic(&bootstrap, LEDGER_DEAD_LETTERS, Duration::from_secs(30))?
        .into_iter()
        .filter_map(|r| match Codec::global().decode_any(r.payload.as_deref().unwrap_or_default()) {
            Ok(Record::DeadLetter(d)) => Some(d),
            _ => None,
        })
        .collect();
    assert!(!letters.is_empty());
    assert!(letters.iter().all(|d| d.reason == "ledger_undecodable" && d.source.topic == LEDGER));
    assert_eq!(letters[0].payload.as_deref(), Some(&b"\x00\x01 a foreign writer's bytes"[..]), "the record as it was");
    let outcomes = aggregator.metric("tally_aggregator_records_total")?;
    let count = |outcome: &str| {
        outcomes.iter().filter(|(l, _)| l.contains(&format!("\"{outcome}\""))).map(|(_, v)| v).sum::<f64>()
    };
    assert!(count("duplicate") >= 1.0, "the benign duplicate was seen and skipped: {outcomes:?}");
    assert!(count("not_counted") >= 2.0, "the zombie's write and the claims were not rows: {outcomes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blind_resume_fails_the_same_check() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let clickhouse = ClickHouse::start()?;
    migrate(&clickhouse)?;
    handmade_ledger(&bootstrap).await?;
    let url = clickhouse.url();
    let broken = [
        ("TALLY_AGGREGATOR__BATCH_ROWS_MAX", "40"),
        ("TALLY_UNSAFE_AGGREGATOR_BLIND_RESUME", "1"),
        ("TALLY_CRASH_AT", "after_insert:2"),
    ];
    let mut crashing = MeteringProcess::aggregator(&bootstrap, &url, "blind", &broken)?;
    crash_at(&mut crashing, "after_insert", Duration::from_secs(60))?;
    let _blind = MeteringProcess::aggregator(&bootstrap, &url, "blind-after", &broken[..2])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let eq = loop {
        let eq = equality(&clickhouse, &fenced_ledger(&bootstrap)?).await?;
        if eq.missing == 0 || Instant::now() > deadline {
            break eq;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eq.print("blind resume (must fail)");
    assert_eq!(eq.missing, 0);
    assert!(eq.doubled > 0, "the broken variant inserts a batch twice, and the check sees it");
    assert!(!eq.holds());
    Ok(())
}
