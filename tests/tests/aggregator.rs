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
    let mut metering = MeteringProcess::spawn(&bootstrap, "agg-e2e", &[])?;
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
    finance_days_tie_out(&clickhouse, &bootstrap, eq.expected)?;
    metering.kill();
    ledger_forgeries_are_named(&clickhouse, &bootstrap).await?;
    Ok(())
}

/// `tally finance daily` over the whole run (real metering output, late
/// events included): every booked day ties out in UTC and in another zone,
/// its totals equal the raw table's, days by occurred_at are reported as
/// not chaining where events came late, and a doubled row is caught and
/// named; `tally reconcile` agrees on the clean data and names each
/// injected corruption. Runs last: it corrupts the raw table.
fn finance_days_tie_out(clickhouse: &ClickHouse, bootstrap: &str, entries: usize) -> Result<()> {
    let finance = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(tally_testkit::tally_binary()?)
            .args(["finance", "daily", "--clickhouse-url", &clickhouse.url()])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()?)
    };
    let range = clickhouse.query("SELECT min(toDate(booked_at)), max(toDate(booked_at)) FROM tally.ledger_entries")?;
    let (from, to) = range.trim().split_once('\t').expect("two dates");
    let (from, to) = (from.to_string(), to.to_string());
    for zone in ["UTC", "America/New_York"] {
        let out = finance(&["--from", &from, "--to", &to, "--tz", zone, "--format", "json"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "booked days tie out in {zone}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let consumed: rust_decimal::Decimal =
            report["accounts"].as_array().expect("accounts").iter().map(|a| dec(&a["consumed"])).sum();
        let raw = clickhouse.query(
            "SELECT toString(sumIf(credits, entry_type = 'Consume' AND status = 'Success')) FROM tally.ledger_entries",
        )?;
        let lines = report["accounts"].as_array().map_or(0, Vec::len);
        eprintln!("[finance] {zone}: {lines} account-days from {from} to {to}, {consumed} credits consumed");
        if zone == "UTC" {
            // The range is every booked UTC day: all of the raw table.
            let raw: rust_decimal::Decimal = raw.trim().parse()?;
            assert_eq!(consumed, raw, "the report's consumption is the raw table's");
        }
        assert!(lines >= 60, "each of the 60 accounts has a day ({lines})");
    }
    let late: u64 = clickhouse
        .query("SELECT count() FROM tally.ledger_entries WHERE toDate(booked_at) != toDate(occurred_at)")?
        .trim()
        .parse()?;
    let occurred = finance(&["--from", &from, "--to", &to, "--days", "occurred"])?;
    let stderr = String::from_utf8_lossy(&occurred.stderr);
    assert!(occurred.status.success(), "the occurred view is a report: {stderr}");
    eprintln!("[finance] {late} entries booked on a later day than they occurred");
    if late > 0 {
        assert!(stderr.contains("do not chain by occurred_at"), "late entries break occurred days: {stderr}");
    }
    let reconcile = |url: &str, args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(tally_testkit::tally_binary()?)
            .args(["reconcile", "--clickhouse-url", url, "--brokers", bootstrap])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()?)
    };
    let json = std::env::temp_dir().join(format!("tally-reconcile-{}.json", std::process::id()));
    let metrics = std::env::temp_dir().join(format!("tally-reconcile-{}.prom", std::process::id()));
    let (json_arg, metrics_arg) = (json.display().to_string(), metrics.display().to_string());
    let clean = reconcile(
        &clickhouse.url(),
        &["--from", &from, "--to", &to, "--json", &json_arg, "--metrics-file", &metrics_arg],
    )?;
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "clean data reconciles: {stdout}\n{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(stdout.contains("ledger, ClickHouse and rollups agree"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(report["ledger_entries"].as_u64(), Some(entries as u64), "every counted entry read: {report}");
    assert!(std::fs::read_to_string(&metrics)?.contains("tally_reconcile_mismatches 0"));
    let inputs = &report["inputs"];
    let count = |what: &str| inputs[what].as_u64().unwrap_or_default();
    assert_eq!(count("applied"), entries as u64, "each counted entry is one applied input: {report}");
    assert!(count("duplicates") > 0 && count("dead_lettered") > 0, "the run had duplicates and bad inputs: {inputs}");
    assert_eq!(
        count("applied") + count("duplicates") + count("dead_lettered"),
        report["inputs_read"].as_u64().unwrap_or_default(),
        "every input read is exactly one of the three: {report}"
    );
    // ClickHouse unreachable: "could not check", not "mismatch".
    let closed = format!("http://127.0.0.1:{}", tally_testkit::free_port()?);
    let down = reconcile(&closed, &["--date", &from, "--metrics-file", &metrics_arg])?;
    assert_eq!(down.status.code(), Some(2), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(std::fs::read_to_string(&metrics)?.contains("tally_reconcile_could_not_check 1"));
    // A row doubled in ClickHouse: its account's day no longer ties out.
    clickhouse.query(
        "INSERT INTO tally.ledger_entries SELECT * FROM tally.ledger_entries \
         WHERE entry_type = 'Consume' AND status = 'Success' ORDER BY account_id, sequence LIMIT 1",
    )?;
    let doubled = clickhouse.query(
        "SELECT account_id, toString(toDate(booked_at)) FROM tally.ledger_entries \
         GROUP BY account_id, sequence, booked_at HAVING count() > 1",
    )?;
    let (account, day) = doubled.trim().split_once('\t').expect("one doubled row");
    let out = finance(&["--date", day])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a doubled row fails the day");
    assert!(
        stderr.contains(account) && stdout.contains(&format!("DOES NOT TIE OUT {day}: {account}")),
        "{stdout}\n{stderr}"
    );
    let caught = reconcile(&clickhouse.url(), &["--date", day])?;
    let stdout = String::from_utf8_lossy(&caught.stdout);
    assert_eq!(caught.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("DIFFERENCE {day} {account}")) && stdout.contains("entries ledger"), "{stdout}");
    // A row deleted, and another's credits altered (a copy with other
    // credits in place of the original), in two other accounts.
    let others = clickhouse.query(&format!(
        "SELECT account_id, max(sequence), toString(toDate(argMax(booked_at, sequence))) FROM tally.ledger_entries \
         WHERE account_id != '{account}' GROUP BY account_id ORDER BY account_id LIMIT 2"
    ))?;
    let others: Vec<Vec<&str>> = others.lines().map(|l| l.split('\t').collect()).collect();
    let [deleted, altered] = [&others[0], &others[1]];
    let gone = |who: &[&str], extra: &str| -> Result<bool> {
        let left = clickhouse.query(&format!(
            "SELECT count() FROM tally.ledger_entries WHERE account_id = '{}' AND sequence = {}{extra}",
            who[0], who[1]
        ))?;
        Ok(left.trim() == "0")
    };
    clickhouse.query(&format!(
        "ALTER TABLE tally.ledger_entries DELETE WHERE account_id = '{}' AND sequence = {}",
        deleted[0], deleted[1]
    ))?;
    let columns =
        clickhouse.query("SELECT name FROM system.columns WHERE database = 'tally' AND table = 'ledger_entries'")?;
    let select: Vec<String> = columns
        .lines()
        .map(|c| if c == "credits" { "credits + toDecimal128(1, 6)".to_string() } else { c.to_string() })
        .collect();
    let original = clickhouse.query(&format!(
        "SELECT toString(credits) FROM tally.ledger_entries WHERE account_id = '{}' AND sequence = {}",
        altered[0], altered[1]
    ))?;
    clickhouse.query(&format!(
        "INSERT INTO tally.ledger_entries SELECT {} FROM tally.ledger_entries WHERE account_id = '{}' AND sequence = {}",
        select.join(", "),
        altered[0],
        altered[1]
    ))?;
    clickhouse.query(&format!(
        "ALTER TABLE tally.ledger_entries DELETE WHERE account_id = '{}' AND sequence = {} AND credits = toDecimal128('{}', 6)",
        altered[0],
        altered[1],
        original.trim()
    ))?;
    let only_copy = format!(" AND credits = toDecimal128('{}', 6)", original.trim());
    wait_until("the two ALTER DELETE mutations to finish", Duration::from_secs(60), || {
        Ok(gone(deleted, "")? && gone(altered, &only_copy)?)
    })?;
    for who in [deleted, altered] {
        let out = reconcile(&clickhouse.url(), &["--date", who[2]])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(&format!("DIFFERENCE {} {}", who[2], who[0])), "{} named: {stdout}", who[0]);
    }
    let out = String::from_utf8_lossy(&reconcile(&clickhouse.url(), &["--date", altered[2]])?.stdout).to_string();
    assert!(out.contains("credits ledger"), "{out}");
    // A rollup row altered behind the aggregator's back.
    clickhouse.query(
        "INSERT INTO tally.service_hourly (ledger_partition, hour, service, engine, entries, successes, credits) \
         VALUES (0, toDateTime('2026-07-01 00:00:00', 'UTC'), 'sms', 'standard', 1, 1, 5)",
    )?;
    let rollup = reconcile(&clickhouse.url(), &["--date", day])?;
    let stdout = String::from_utf8_lossy(&rollup.stdout);
    assert_eq!(rollup.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ROLLUP UNEQUAL service_hourly"), "{stdout}");
    Ok(())
}

/// Forgeries in the ledger topic itself, written with the owner's epoch
/// after metering is killed, so that every reader counts them: a gap in an
/// account's sequence, a wrong balance after, and an input that the
/// ledger covers (a PROGRESS marker past it) with neither entry nor dead
/// letter. `tally reconcile` names each.
async fn ledger_forgeries_are_named(clickhouse: &ClickHouse, bootstrap: &str) -> Result<()> {
    let codec = Codec::global();
    // The owner's fence and the last counted entry of ledger partition 0.
    let mut reader = tally_events::ledger_reader::FencedReader::new(0);
    let mut last = None;
    for record in read_topic(bootstrap, LEDGER, Duration::from_secs(120))?.into_iter().filter(|r| r.partition == 0) {
        if let tally_events::ledger_reader::LedgerRecord::Entry(entry) =
            reader.read(record.offset, record.payload.as_deref().unwrap_or_default())?
        {
            last = Some(entry);
        }
    }
    let last = last.expect("ledger partition 0 has entries");
    let (epoch, claim_id) = (reader.fence().epoch().expect("an owner"), reader.fence().claim_id().expect("a claim"));
    // Three new usage inputs of its account, on its input partition, made
    // from one metering applied.
    let template = read_topic(bootstrap, INPUTS, Duration::from_secs(60))?
        .into_iter()
        .filter(|r| r.partition == 0)
        .filter_map(|r| codec.decode_input(r.payload.as_deref().unwrap_or_default()).ok())
        .find(|input| matches!(input, tally_events::Input::Usage(_)) && input.account_id() == last.account_id.as_str())
        .expect("a usage input of the account");
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut forged_inputs = Vec::new();
    for n in 0..3u128 {
        let mut input = template.clone();
        if let tally_events::Input::Usage(event) = &mut input {
            event.event_id = uuid::Uuid::from_u128(0xf0f0_0000 + n);
        }
        let payload = codec.encode_input(&input)?;
        let offset = producer
            .send(
                FutureRecord::to(INPUTS).partition(0).key(last.account_id.as_str()).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?
            .offset;
        forged_inputs.push((input.id(), offset));
    }
    let forge = |sequence: i64, (input_id, offset): (uuid::Uuid, i64)| {
        let mut entry = last.clone();
        entry.sequence = Sequence(sequence);
        entry.entry_id = input_id;
        entry.input_id = input_id;
        entry.input_digest = None;
        entry.source = SourceOffset { topic: INPUTS.into(), partition: 0, offset };
        entry
    };
    // Sequence last + 2 (a gap), a failed entry, so the balance is right.
    let mut gap = forge(last.sequence.0 + 2, forged_inputs[0]);
    gap.entry_type = EntryType::Consume;
    gap.status = EntryStatus::Failed;
    gap.reason = "job_failed".into();
    gap.balance_after = last.balance_after;
    // Then a successful debit of 1 credit that leaves the balance as it was.
    let mut wrong = forge(last.sequence.0 + 3, forged_inputs[1]);
    wrong.entry_type = EntryType::Consume;
    wrong.status = EntryStatus::Success;
    wrong.reason = String::new();
    wrong.credits = Credits::new(rust_decimal::Decimal::ONE);
    wrong.balance_after = last.balance_after;
    let covered = LedgerMarker {
        kind: MarkerKind::Progress,
        claim_id,
        epoch,
        instance: "forger".into(),
        input_topic: INPUTS.into(),
        input_partition: 0,
        next_input_offset: forged_inputs[2].1 + 1,
    };
    for payload in [codec.encode(&gap)?, codec.encode(&wrong)?, codec.encode(&covered)?] {
        producer
            .send(
                FutureRecord::to(LEDGER).partition(0).key(last.account_id.as_str()).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let range = clickhouse.query("SELECT min(toDate(booked_at)), max(toDate(booked_at)) FROM tally.ledger_entries")?;
    let (from, to) = range.trim().split_once('\t').expect("two dates");
    let out = std::process::Command::new(tally_testkit::tally_binary()?)
        .args(["reconcile", "--clickhouse-url", &clickhouse.url(), "--brokers", bootstrap, "--from", from, "--to", to])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let account = &last.account_id;
    for wanted in [
        format!("LEDGER INVARIANT account {account}: sequence {} follows {}", gap.sequence.0, last.sequence.0),
        format!("LEDGER INVARIANT account {account}: entry {} has balance_after", wrong.sequence.0),
        format!(
            "INPUT input 0/{} (id {}) has neither an entry nor a dead letter",
            forged_inputs[2].1, forged_inputs[2].0
        ),
    ] {
        assert!(stdout.contains(&wanted), "{wanted:?} named: {stdout}");
    }
    eprintln!("[reconcile] a forged gap, a wrong balance and an unaccounted input are each named");
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
        booked_at: Some(occurred_at),
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
    let (records, entries) = handmade_records()?;
    write_records(bootstrap, &records).await?;
    Ok(entries)
}

/// The records of [`handmade_ledger`] and how many entries count.
fn handmade_records() -> Result<(Vec<Vec<u8>>, usize)> {
    let codec = Codec::global();
    let mut records: Vec<Vec<u8>> = vec![codec.encode(&claim(1))?];
    let mut entries = 0;
    for sequence in 1..=150 {
        for (account, month) in [("acct-a", "11-30T23"), ("acct-b", "12-01T00")] {
            // acct-b's times are in December, acct-a's in November.
            let at = format!("2026-{month}:{:02}:{:02}Z", sequence % 60, (sequence * 7) % 60);
            records.push(codec.encode(&entry(account, sequence, 0, &at, "5"))?);
            entries += 1;
        }
        if sequence == 40 {
            // A benign duplicate: the same entry again.
            let at = format!("2026-11-30T23:{:02}:{:02}Z", sequence % 60, (sequence * 7) % 60);
            records.push(codec.encode(&entry("acct-a", sequence, 0, &at, "5"))?);
        }
        if sequence == 70 {
            records.push(b"\x00\x01 a foreign writer's bytes".to_vec());
        }
    }
    // A newer claim (epoch = its offset), then a zombie's write with epoch 0.
    let claim_offset = records.len() as i64;
    records.push(codec.encode(&claim(2))?);
    records.push(codec.encode(&entry("acct-a", 151, 0, "2026-12-01T01:00:00Z", "5"))?);
    records.push(codec.encode(&entry("acct-a", 151, claim_offset, "2026-12-01T01:00:01Z", "5"))?);
    entries += 1;
    Ok((records, entries))
}

/// Appends `records` to ledger partition 0 (creating the topic).
async fn write_records(bootstrap: &str, records: &[Vec<u8>]) -> Result<()> {
    create_topics(bootstrap, &[(LEDGER, 1)]).await?;
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    for (i, payload) in records.iter().enumerate() {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(LEDGER).partition(0).key(&key).payload(payload), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
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
    named_queries_answer_from_known_data(&clickhouse)?;
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

/// `tally query NAME --param ... --format json`, parsed.
fn query(clickhouse: &ClickHouse, name: &str, params: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut command = std::process::Command::new(tally_testkit::tally_binary()?);
    command.args(["query", name, "--format", "json", "--clickhouse-url", &clickhouse.url()]);
    for p in params {
        command.args(["--param", p]);
    }
    let out = command.env("RUST_BACKTRACE", "0").output()?;
    if !out.status.success() {
        bail!("tally query {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn field<'a>(row: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &row[name]
}

fn dec(value: &serde_json::Value) -> rust_decimal::Decimal {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{value} is a decimal string"))
}

/// Every named query against the handmade ledger, whose answers are known:
/// acct-a has an ADD then 150 consumes of 5 credits (the 151st written by
/// the owner after a zombie's), all at 2026-11-30 23:xx UTC
/// but the last (2026-12-01 01:00); acct-b the same shape in December.
fn named_queries_answer_from_known_data(clickhouse: &ClickHouse) -> Result<()> {
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().expect("decimal");
    let balance = query(clickhouse, "balance", &["account=acct-a"])?;
    assert_eq!(balance.len(), 1);
    // 1000 - 5 x 150 (the balance the owner's entry 151 carries).
    assert_eq!(dec(field(&balance[0], "balance")), d("250"));
    assert_eq!(dec(field(&balance[0], "balance_to_cent")), d("250"));
    assert_eq!(field(&balance[0], "last_sequence"), 151);
    assert_eq!(field(&balance[0], "tier"), "PAYG");

    let page = query(clickhouse, "activity", &["account=acct-a", "limit=5"])?;
    let sequences: Vec<i64> = page.iter().map(|r| field(r, "sequence").as_i64().unwrap_or(-1)).collect();
    assert_eq!(sequences, [151, 150, 149, 148, 147], "newest first");
    assert_eq!(field(&page[0], "time"), "01:00:01", "the owner's entry, not the zombie's");
    let next = query(clickhouse, "activity", &["account=acct-a", "limit=3", "before_sequence=147"])?;
    let sequences: Vec<i64> = next.iter().map(|r| field(r, "sequence").as_i64().unwrap_or(-1)).collect();
    assert_eq!(sequences, [146, 145, 144], "keyset: the page after 147");
    let adds = query(clickhouse, "activity", &["account=acct-a", "type=Add"])?;
    assert_eq!(adds.len(), 1);

    let months =
        query(clickhouse, "timeline", &["account=acct-b", "from=2026-11-01", "to=2026-12-31", "bucket=month"])?;
    let counts: Vec<(String, i64)> = months
        .iter()
        .map(|r| {
            (field(r, "bucket_start").as_str().unwrap_or("").to_string(), field(r, "entries").as_i64().unwrap_or(-1))
        })
        .collect();
    assert_eq!(
        counts,
        [("2026-11-01 00:00:00".to_string(), 0), ("2026-12-01 00:00:00".to_string(), 150)],
        "an empty month shows as 0"
    );
    // In Tokyo (UTC+9) all of acct-a's entries fall on 2026-12-01.
    let tokyo = query(
        clickhouse,
        "timeline",
        &["account=acct-a", "from=2026-11-30", "to=2026-12-01", "bucket=day", "tz=Asia/Tokyo"],
    )?;
    let counts: Vec<i64> = tokyo.iter().map(|r| field(r, "entries").as_i64().unwrap_or(-1)).collect();
    assert_eq!(counts, [0, 151], "days in the zone asked for");

    let donut = query(clickhouse, "event_credits", &["event=wedding-7"])?;
    assert_eq!(donut.len(), 1);
    assert_eq!(field(&donut[0], "jobs"), 299);
    assert_eq!(dec(field(&donut[0], "credits")), d("1495"), "299 x 5");
    let per_day = query(clickhouse, "event_activity", &["event=wedding-7", "bucket=day"])?;
    let jobs: Vec<i64> = per_day.iter().map(|r| field(r, "jobs").as_i64().unwrap_or(-1)).collect();
    assert_eq!(jobs, [149, 150], "2026-11-30: acct-a's; 2026-12-01: acct-b's and acct-a's last");
    let ledger = query(clickhouse, "event_ledger", &["event=wedding-7", "limit=2"])?;
    assert_eq!(field(&ledger[0], "account_id"), "acct-a");
    assert_eq!(field(&ledger[0], "sequence"), 151);
    let (at, account, sequence) =
        (field(&ledger[1], "at_ms"), field(&ledger[1], "account_id"), field(&ledger[1], "sequence"));
    let after = query(
        clickhouse,
        "event_ledger",
        &[
            "event=wedding-7",
            "limit=1",
            &format!("before_ms={at}"),
            &format!("before_account={}", account.as_str().unwrap_or("")),
            &format!("before_sequence={sequence}"),
        ],
    )?;
    assert_ne!(field(&after[0], "sequence"), sequence, "the next page starts after the last row");

    let usage = query(clickhouse, "usage", &["from=2026-11-30", "to=2026-12-01", "bucket=day"])?;
    let jobs: Vec<i64> = usage.iter().map(|r| field(r, "jobs").as_i64().unwrap_or(-1)).collect();
    assert_eq!(jobs, [149, 150]);
    // One account's usage reads its raw entries: acct-a's last is on 12-01.
    let usage = query(clickhouse, "usage", &["from=2026-11-30", "to=2026-12-01", "bucket=day", "account=acct-a"])?;
    let jobs: Vec<i64> = usage.iter().map(|r| field(r, "jobs").as_i64().unwrap_or(-1)).collect();
    assert_eq!(jobs, [149, 1], "{usage:?}");
    assert_eq!(dec(field(&usage[0], "credits")), d("745"), "149 x 5");
    let finance = query(clickhouse, "finance_day", &["date=2026-11-30"])?;
    let a: Vec<&serde_json::Value> = finance.iter().filter(|r| field(r, "account_id") == "acct-a").collect();
    assert_eq!(a.len(), 2, "one ADD row and one consume row");
    let consumed: rust_decimal::Decimal =
        a.iter().filter(|r| field(r, "type") == "Consume").map(|r| dec(field(r, "credits"))).sum();
    assert_eq!(consumed, d("745"), "149 x 5");
    assert_eq!(dec(field(a[0], "closing_balance")), d("255"), "after entry 150");
    // The handmade ADD of 5 credits leaves 1000 (it is not a real
    // purchase), so the balance before it is 1000 - 5: opening is the
    // balance before the day's first entry.
    assert_eq!(dec(field(a[0], "opening_balance")), d("995"), "before the ADD, its first entry");
    // The next day opens with that closing balance (booked days chain).
    let next = query(clickhouse, "finance_day", &["date=2026-12-01"])?;
    let a: Vec<&serde_json::Value> = next.iter().filter(|r| field(r, "account_id") == "acct-a").collect();
    assert_eq!(a.len(), 1, "{next:?}");
    assert_eq!(
        (dec(field(a[0], "opening_balance")), dec(field(a[0], "closing_balance"))),
        (d("255"), d("250")),
        "entry 151 alone"
    );
    // Paged by account, one account a page: the pages put together are
    // the whole day, every account's rows on one page.
    let mut pages: Vec<serde_json::Value> = Vec::new();
    let mut after = String::new();
    loop {
        let page =
            query(clickhouse, "finance_day", &["date=2026-12-01", "accounts=1", &format!("after_account={after}")])?;
        let Some(last) = page.last() else { break };
        let accounts: std::collections::BTreeSet<&str> =
            page.iter().map(|r| field(r, "account_id").as_str().unwrap_or("")).collect();
        assert_eq!(accounts.len(), 1, "one account a page: {page:?}");
        after = field(last, "account_id").as_str().unwrap_or("").to_string();
        pages.extend(page);
        assert!(pages.len() <= next.len(), "paging does not end");
    }
    assert_eq!(pages, next, "the pages are the whole day");
    assert!(next.iter().any(|r| field(r, "account_id") != "acct-a"), "more than one account to page through");
    let refused = std::process::Command::new(tally_testkit::tally_binary()?)
        .args(["query", "activity", "--clickhouse-url", &clickhouse.url(), "--param", "status=maybe"])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(message.contains("account") && message.contains("status"), "every bad param named: {message}");
    Ok(())
}

/// `tally migrate --check-rollups` finds a rollup that differs from raw,
/// and `--rebuild-rollups` mends it, durably: a kill -9 of ClickHouse right
/// after the rebuild brings back none of the parts it dropped (with
/// `REPLACE PARTITION` the replaced parts came back as active on 18.16 and
/// the rollup counted the partition twice; docs/DESIGN.md, "Rollup
/// rebuilds").
fn rollups_are_checked_and_rebuilt(clickhouse: &mut ClickHouse) -> Result<()> {
    let url = clickhouse.url();
    let migrate = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(tally_testkit::tally_binary()?)
            .arg("migrate")
            .args(["--clickhouse-url", &url])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()?)
    };
    assert!(migrate(&["--check-rollups"])?.status.success(), "clean rollups pass");
    // A rollup row altered behind the aggregator's back.
    clickhouse.query(
        "INSERT INTO tally.service_hourly (ledger_partition, hour, service, engine, entries, successes, credits) \
         VALUES (0, '2026-11-30 23:00:00', 'ai_image_to_video', 'kling', 1, 1, 5)",
    )?;
    let check = migrate(&["--check-rollups"])?;
    assert!(!check.status.success(), "an altered rollup is caught");
    assert!(String::from_utf8_lossy(&check.stdout).contains("service_hourly       DIFFERS"));
    let rebuild = migrate(&["--rebuild-rollups", "--from", "2026-11-01", "--to", "2026-12-31", "--check-rollups"])?;
    assert!(rebuild.status.success(), "rebuilt: {}", String::from_utf8_lossy(&rebuild.stderr));
    clickhouse.kill()?;
    clickhouse.start_again()?;
    let after = migrate(&["--check-rollups"])?;
    assert!(
        after.status.success(),
        "the rebuild survives a ClickHouse kill -9: {}",
        String::from_utf8_lossy(&after.stdout)
    );
    Ok(())
}

/// A zombie frozen between batches (the case the claim covers; see
/// docs/DESIGN.md, "Zombies", for the one window it does not) and thawed
/// after a new owner took the partition writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_aggregator_thawed_after_a_new_owner_claimed_writes_nothing() -> Result<()> {
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let mut clickhouse = ClickHouse::start()?;
    migrate(&clickhouse)?;
    let (records, _) = handmade_records()?;
    let half = records.len() / 2;
    write_records(&bootstrap, &records[..half]).await?;
    let url = clickhouse.url();
    let small = [("TALLY_AGGREGATOR__BATCH_ROWS_MAX", "5")];
    let zombie = MeteringProcess::aggregator(&bootstrap, &url, "zombie", &small)?;
    wait_until("the first instance to store the first half", Duration::from_secs(60), || {
        Ok(zombie.metric_sum("tally_aggregator_last_inserted_offset") == half as f64)
    })?;
    zombie.stop_signal();
    let owner = MeteringProcess::aggregator(&bootstrap, &url, "owner", &small)?;
    wait_until("the new owner to claim", Duration::from_secs(60), || {
        Ok(owner.metric_sum("tally_aggregator_partitions_owned") == 1.0)
    })?;
    // The rest of the ledger arrives while the zombie is frozen; thawed, it
    // reads it too and tries to flush.
    write_records(&bootstrap, &records[half..]).await?;
    zombie.continue_signal();
    wait_until("the thawed instance to see it lost the partition", Duration::from_secs(30), || {
        Ok(zombie.get("/health")?.0 == 503 && zombie.metric_sum("tally_aggregator_partitions_owned") == 0.0)
    })?;
    let eq = wait_for_equality(&clickhouse, &bootstrap, Duration::from_secs(60)).await?;
    eq.print("aggregator zombie");
    assert!(eq.holds(), "the zombie's late batch is not in ClickHouse");
    // A rebuild runs with the sink stopped.
    drop(owner);
    drop(zombie);
    rollups_are_checked_and_rebuilt(&mut clickhouse)?;
    Ok(())
}
