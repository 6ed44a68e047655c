//! Reconcile bench: `tally reconcile` over a whole ledger against
//! `clickhouse-client` reading the same rows from ClickHouse, in one run.
//!
//! One real Tansu broker (memory) and one ClickHouse 18.16 server. The
//! ledger (`TALLY_BENCH_ROWS`, default 10,000,000 entries; 10,000 accounts,
//! 500 events, 90 days, 4 partitions, `benches/src/ledger_rows.rs`) is
//! written to the ledger topic, each entry's input to the input topic at
//! the offset the entry names, and the same rows into ClickHouse with every
//! rollup view attached (clickhouse-client, as the aggregator would leave
//! them). Streamed: no step holds the whole ledger in memory.
//!
//! - baseline: `clickhouse-client --query "SELECT * FROM ledger_entries
//!   FORMAT Native"` to /dev/null: every raw row read once, in the
//!   cheapest format the client has (no text rendering);
//! - reconcile: the release `tally reconcile --from D --to D` over every
//!   day, which must find the data clean (exit 0): it reads the ledger
//!   topic, the dead letters and the inputs, and asks ClickHouse per day,
//!   plus the finance day checks and every rollup against raw;
//! - the broker's floor: a bare consumer per core reading the ledger and
//!   input topics from the start to the offsets written, counting records
//!   and decoding nothing: what any reconcile that takes the ledger topic
//!   as its source of truth (and checks inputs against debits) pays before
//!   it compares anything.
//!
//! `TALLY_BENCH_THREADS` sets reconcile's `--threads` (default: its own,
//! the cores). Each figure is `TALLY_BENCH_REPS` runs (default 3), median
//! [min - max];
//! the ratio reconcile / baseline has the goal < 2, and reconcile / floor
//! says how much of the rest is reconcile's own.
//!
//! Run: `cargo bench -p tally-benches --bench reconcile`
//! (`TALLY_BENCH_KEEP_TSV=FILE` keeps the rows as TabSeparated).

use std::{
    io::{BufWriter, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    ClientConfig, Offset, TopicPartitionList,
};
use tally_benches::ledger_rows::{tsv_line, LedgerRows};
use tally_events::{
    Codec, CreditPurchase, EntryStatus, EntryType, Epoch, Input, JobOutcome, LedgerEntry, LedgerMarker, MarkerKind,
    Producer as Worker, Unit, UsageEvent,
};
use tally_testkit::{create_topics, tally_binary, Broker, ClickHouse};
use tally_warehouse::{migrations, Warehouse, WarehouseConfig};

const PARTITIONS: i32 = 4;
const DATABASE: &str = "bench_reconcile";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The input an entry records (what a worker or the billing system sent).
fn input_of(entry: &LedgerEntry) -> Input {
    match entry.entry_type {
        EntryType::Consume => Input::Usage(UsageEvent {
            event_id: entry.input_id,
            account_id: entry.account_id.to_string(),
            photo_event_id: entry.photo_event_id.clone(),
            booth_id: entry.booth_id.clone(),
            job_id: format!("job-{}", entry.sequence.0),
            service: entry.service.clone(),
            engine: entry.engine.clone(),
            quantity: entry.quantity,
            unit: match entry.service.as_str() {
                "ai_image_to_video" => Unit::VideoSecond,
                "sms" => Unit::Message,
                _ => Unit::Image,
            },
            outcome: if entry.status == EntryStatus::Failed { JobOutcome::Failed } else { JobOutcome::Succeeded },
            occurred_at: entry.occurred_at,
            producer: Worker { worker: "bench".into(), version: "1".into() },
            attributes: Default::default(),
        }),
        _ => Input::Purchase(CreditPurchase {
            purchase_id: entry.input_id,
            account_id: entry.account_id.to_string(),
            amount_dollars: entry.dollars,
            occurred_at: entry.occurred_at,
            payment_reference: None,
        }),
    }
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    p: i32,
    key: &str,
    bytes: &[u8],
) -> Result<()> {
    loop {
        match producer.send(BaseRecord::<str, [u8]>::to(topic).partition(p).key(key).payload(bytes)) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Records written per partition of each topic: (topic, partition, count).
type Written = Vec<(&'static str, i32, i64)>;

/// Writes the ledger, its inputs and the TabSeparated rows; returns the
/// first and last booked day and what each topic partition holds.
fn write_all(bootstrap: &str, rows: usize, tsv: &std::path::Path) -> Result<(String, String, Written)> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create()?;
    let codec = Codec::global();
    for p in 0..PARTITIONS {
        let claim = LedgerMarker {
            kind: MarkerKind::Claim,
            claim_id: uuid::Uuid::from_u128(p as u128 + 1),
            epoch: Epoch(0),
            instance: "bench:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: p,
            next_input_offset: 0,
        };
        send(&producer, "tally.ledger", p, "claim", &codec.encode(&claim)?)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let mut out = BufWriter::new(std::fs::File::create(tsv)?);
    let mut line = String::new();
    let (mut ledger_next, mut input_next) = ([1i64; PARTITIONS as usize], [0i64; PARTITIONS as usize]);
    let (mut first, mut last) = (None, None);
    let started = Instant::now();
    for (n, (partition, mut entry)) in LedgerRows::new(42, rows, 10_000, 500, 90, PARTITIONS).enumerate() {
        let p = partition as usize;
        entry.source.offset = input_next[p];
        input_next[p] += 1;
        let key = entry.account_id.to_string();
        send(&producer, "tally.inputs", partition, &key, &codec.encode_input(&input_of(&entry))?)?;
        send(&producer, "tally.ledger", partition, &key, &codec.encode(&entry)?)?;
        line.clear();
        tsv_line(&mut line, &entry, partition, ledger_next[p]);
        ledger_next[p] += 1;
        out.write_all(line.as_bytes())?;
        let day = entry.booked_at.unwrap_or(entry.occurred_at).date_naive();
        first = Some(first.map_or(day, |f: chrono::NaiveDate| f.min(day)));
        last = Some(last.map_or(day, |l: chrono::NaiveDate| l.max(day)));
        if (n + 1) % 1_000_000 == 0 {
            eprintln!(
                "[reconcile] {} entries written ({:.0}/s)",
                n + 1,
                (n + 1) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    out.flush()?;
    producer.flush(Duration::from_secs(300))?;
    let (first, last) = (first.context("no rows")?, last.context("no rows")?);
    let written = (0..PARTITIONS)
        .flat_map(|p| [("tally.ledger", p, ledger_next[p as usize]), ("tally.inputs", p, input_next[p as usize])])
        .collect();
    Ok((first.to_string(), last.to_string(), written))
}

/// The broker's floor (see the module docs): `threads` bare consumers,
/// each reading its share of the topic partitions from offset 0 to what
/// was written; returns seconds.
fn read_topics(bootstrap: &str, written: &Written, threads: usize) -> Result<f64> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|t| {
                let share: Vec<_> = written.iter().skip(t).step_by(threads).copied().collect();
                scope.spawn(move || -> Result<()> {
                    let consumer: BaseConsumer = tally_testkit::consumer_config(bootstrap, None).create()?;
                    let mut list = TopicPartitionList::new();
                    for (topic, partition, _) in &share {
                        list.add_partition_offset(topic, *partition, Offset::Beginning)?;
                    }
                    consumer.assign(&list)?;
                    let (mut left, deadline) =
                        (share.iter().map(|(_, _, n)| n).sum::<i64>(), Instant::now() + Duration::from_secs(1800));
                    while left > 0 {
                        if Instant::now() > deadline {
                            bail!("the bare read timed out with {left} records unread");
                        }
                        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                            message?;
                            left -= 1;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        readers.into_iter().try_for_each(|reader| reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?)
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn client(clickhouse: &ClickHouse, query: &str) -> Command {
    let mut command = Command::new("clickhouse-client");
    command
        .args(["--host", "127.0.0.1", "--port", &clickhouse.tcp_port().to_string(), "--database", DATABASE])
        .args(["--query", query]);
    command
}

fn summary(values: &[f64], unit: &str) -> String {
    let (median, min, max) = tally_benches::figures::median_range(values);
    format!("{median:.2} {unit} [{min:.2} - {max:.2}]")
}

fn main() -> Result<()> {
    let rows = env_usize("TALLY_BENCH_ROWS", 10_000_000);
    let reps = env_usize("TALLY_BENCH_REPS", 3).max(1);
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let clickhouse = ClickHouse::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    let topics = [("tally.ledger", PARTITIONS), ("tally.inputs", PARTITIONS), ("tally.dead-letters", PARTITIONS)];
    rt.block_on(create_topics(&bootstrap, &topics))?;
    let tsv = std::env::temp_dir().join(format!("tally-bench-reconcile-{}.tsv", std::process::id()));
    eprintln!("[reconcile] writing {rows} ledger entries, their inputs, and the same rows as TabSeparated");
    let (from, to, written) = write_all(&bootstrap, rows, &tsv)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let warehouse = Warehouse::new(WarehouseConfig {
        url: clickhouse.url(),
        database: DATABASE.into(),
        timeout: Duration::from_secs(600),
        ..WarehouseConfig::default()
    });
    clickhouse.query(&format!("DROP DATABASE IF EXISTS {DATABASE}"))?;
    rt.block_on(migrations::migrate(&warehouse, |_| {}))?;
    let load = client(&clickhouse, "INSERT INTO ledger_entries FORMAT TabSeparated")
        .stdin(std::fs::File::open(&tsv)?)
        .output()
        .context("clickhouse-client")?;
    match std::env::var_os("TALLY_BENCH_KEEP_TSV") {
        // For looking into a figure with clickhouse-client afterwards.
        Some(keep) => std::fs::rename(&tsv, &keep)?,
        None => std::fs::remove_file(&tsv)?,
    }
    if !load.status.success() {
        bail!("loading ClickHouse: {}", String::from_utf8_lossy(&load.stderr));
    }
    let stored: usize = clickhouse.query(&format!("SELECT count() FROM {DATABASE}.ledger_entries"))?.trim().parse()?;
    if stored != rows {
        bail!("ClickHouse holds {stored} of {rows} rows");
    }
    let tally = tally_binary()?;
    let (mut read, mut reconcile, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor, mut floor_ratios) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let started = Instant::now();
        let status = client(&clickhouse, "SELECT * FROM ledger_entries FORMAT Native")
            .stdout(Stdio::null())
            .status()
            .context("clickhouse-client")?;
        let baseline = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("clickhouse-client read failed: {status}");
        }
        let started = Instant::now();
        let mut command = Command::new(&tally);
        command.args(["reconcile", "--clickhouse-url", &clickhouse.url(), "--database", DATABASE]);
        command.args(["--brokers", &bootstrap, "--from", &from, "--to", &to, "--timeout-s", "600"]);
        // `TALLY_BENCH_THREADS` sets reconcile's --threads (its default:
        // the cores).
        if let Ok(threads) = std::env::var("TALLY_BENCH_THREADS") {
            command.args(["--threads", &threads]);
        }
        let out = command.stderr(Stdio::inherit()).output().context("tally reconcile")?;
        let took = started.elapsed().as_secs_f64();
        if !out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let head: String = stdout.lines().take(40).collect::<Vec<_>>().join("\n");
            bail!("tally reconcile did not find the data clean ({}):\n{head}", out.status);
        }
        let topics = read_topics(&bootstrap, &written, threads)?;
        eprintln!(
            "[reconcile] rep {rep}: clickhouse-client read {baseline:.2} s, tally reconcile {took:.2} s, \
             bare topic read {topics:.2} s"
        );
        read.push(baseline);
        reconcile.push(took);
        ratios.push(took / baseline);
        floor.push(topics);
        floor_ratios.push(took / topics);
    }
    println!("\n== reconcile bench: {rows} ledger rows ({from} to {to}), {reps} runs each, median [min - max]");
    println!("  clickhouse-client read, FORMAT Native  {}", summary(&read, "s"));
    println!("  tally reconcile, every day            {}", summary(&reconcile, "s"));
    println!("  ratio reconcile / read                {}   goal < 2", summary(&ratios, "x"));
    println!("  bare read of ledger + input topics, {threads} consumers  {}", summary(&floor, "s"));
    println!("  ratio reconcile / bare topic read     {}", summary(&floor_ratios, "x"));
    Ok(())
}
