//! Sink bench: the aggregator (ledger topic -> ClickHouse) against
//! `clickhouse-client` bulk-inserting the same rows into the same tables
//! with the same views, in one run, and what each rollup costs.
//!
//! One real Tansu broker (memory), one ClickHouse 18.16 server, one set of
//! ledger-shaped rows (`TALLY_BENCH_ROWS`, default 1,000,000; 10,000
//! accounts, 500 events, 90 days, 4 ledger partitions). Each figure is
//! `TALLY_BENCH_REPS` runs (default 3), each into a fresh database, printed
//! as median [min - max].
//!
//! - baseline: `clickhouse-client --query "INSERT INTO ledger_entries FORMAT
//!   Native"` reading the rows from a file (no text to parse, see
//!   `native_file`): one INSERT stream, the client's own block size, every
//!   view attached (the best that tool does with the same tables and
//!   views); and with no view, and with each view alone, which prices each
//!   rollup;
//! - the aggregator: the release `tally aggregator` with its shipped
//!   defaults, reading the same rows from the ledger topic; rows/s from its
//!   first flush to its last (`tally_aggregator_rows_inserted_total`);
//! - freshness: entries appended at half the aggregator's rate (with every
//!   view), time from append to the row being visible in ClickHouse (an
//!   upper bound: the resume point the aggregator writes right after the
//!   rows, polled every 10 ms; `TALLY_BENCH_FRESHNESS_ONLY=<rate>` runs only
//!   this), p50 and p99, next to the broker's own append-to-poll floor for
//!   the same records (a bare consumer); once with the server's data in the
//!   temp dir and once on tmpfs (see `freshness_both` for why).
//!
//! Run: `cargo bench -p tally-benches --bench sink`.

use std::{
    collections::HashMap,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    ClientConfig, Message,
};
use tally_benches::{
    figures::percentile,
    ledger_rows::{tsv_line, LedgerRows},
};
use tally_events::{Codec, Epoch, LedgerEntry, LedgerMarker, MarkerKind};
use tally_testkit::{create_topics, free_port, tally_binary, Broker, ClickHouse};
use tally_warehouse::{migrations, rollups, Warehouse, WarehouseConfig};

const PARTITIONS: i32 = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn producer(bootstrap: &str) -> Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .set("enable.idempotence", "true")
        .create()?)
}

fn claim(partition: i32) -> LedgerMarker {
    LedgerMarker {
        kind: MarkerKind::Claim,
        claim_id: uuid::Uuid::from_u128(partition as u128 + 1),
        epoch: Epoch(0),
        instance: "bench:1".into(),
        input_topic: "tally.inputs".into(),
        input_partition: partition,
        next_input_offset: 0,
    }
}

/// Writes the rows to `topic` (a claim first in each partition) and returns
/// them as TabSeparated text with the offsets they got.
fn write_ledger(bootstrap: &str, topic: &str, rows: &[(i32, LedgerEntry)]) -> Result<String> {
    let producer = producer(bootstrap)?;
    let codec = Codec::global();
    let mut next = [0i64; PARTITIONS as usize];
    for p in 0..PARTITIONS {
        let bytes = codec.encode(&claim(p))?;
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).partition(p).key(b"claim").payload(&bytes))
            .map_err(|(e, _)| e)?;
        next[p as usize] = 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let mut tsv = String::with_capacity(rows.len() * 220);
    for (partition, entry) in rows {
        let bytes = codec.encode(entry)?;
        loop {
            let record =
                BaseRecord::<str, [u8]>::to(topic).partition(*partition).key(entry.account_id.as_str()).payload(&bytes);
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        tsv_line(&mut tsv, entry, *partition, next[*partition as usize]);
        next[*partition as usize] += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(tsv)
}

fn warehouse(clickhouse: &ClickHouse, database: &str) -> Warehouse {
    Warehouse::new(WarehouseConfig {
        url: clickhouse.url(),
        database: database.into(),
        timeout: Duration::from_secs(600),
        ..WarehouseConfig::default()
    })
}

/// A fresh database with the migrations, keeping only the views named in
/// `views` (`None`: all).
async fn fresh(clickhouse: &ClickHouse, database: &str, views: Option<&[&str]>) -> Result<Warehouse> {
    let w = warehouse(clickhouse, database);
    clickhouse.query(&format!("DROP DATABASE IF EXISTS {database}"))?;
    migrations::migrate(&w, |_| {}).await?;
    if let Some(keep) = views {
        for rollup in rollups::rollups() {
            if !keep.contains(&rollup.table.as_str()) {
                w.execute(&format!("DROP TABLE {}", rollup.view)).await?;
            }
        }
    }
    Ok(w)
}

fn count(clickhouse: &ClickHouse, database: &str) -> Result<u64> {
    Ok(clickhouse.query(&format!("SELECT count() FROM {database}.ledger_entries"))?.trim().parse()?)
}

/// The rows as a Native file, the client's cheapest input: the
/// TabSeparated text is loaded once into a table with no view and read
/// back in FORMAT Native. Measured here (1M rows, all views, 2 runs each,
/// 2026-12-07): Native 83k-123k rows/s where TabSeparated gave 75k-81k, the
/// client's text parsing sharing the 2 cores with the server.
fn native_file(
    rt: &tokio::runtime::Runtime,
    clickhouse: &ClickHouse,
    tsv: &std::path::Path,
    rows: usize,
) -> Result<std::path::PathBuf> {
    let database = "bench_native_source";
    rt.block_on(fresh(clickhouse, database, Some(&[])))?;
    client_insert(clickhouse, database, tsv, "TabSeparated", rows)?;
    let native = tsv.with_extension("native");
    let status = Command::new("clickhouse-client")
        .args(["--host", "127.0.0.1", "--port", &clickhouse.tcp_port().to_string(), "--database", database])
        .args(["--query", "SELECT * FROM ledger_entries FORMAT Native"])
        .stdout(std::fs::File::create(&native)?)
        .status()
        .context("clickhouse-client")?;
    if !status.success() {
        bail!("clickhouse-client could not read the rows back in FORMAT Native");
    }
    clickhouse.query(&format!("DROP DATABASE IF EXISTS {database}"))?;
    Ok(native)
}

/// clickhouse-client inserting the file, in `format`: rows/s.
fn client_insert(
    clickhouse: &ClickHouse,
    database: &str,
    file: &std::path::Path,
    format: &str,
    rows: usize,
) -> Result<f64> {
    let input = std::fs::File::open(file)?;
    let started = Instant::now();
    let out = Command::new("clickhouse-client")
        .args(["--host", "127.0.0.1", "--port", &clickhouse.tcp_port().to_string(), "--database", database])
        .args(["--query", &format!("INSERT INTO ledger_entries FORMAT {format}")])
        .stdin(input)
        .output()
        .context("clickhouse-client")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("clickhouse-client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stored = count(clickhouse, database)? as usize;
    if stored != rows {
        bail!("clickhouse-client stored {stored} of {rows} rows");
    }
    Ok(rows as f64 / took.as_secs_f64())
}

fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// The aggregator from the ledger topic into `database`: rows/s from its
/// first flush to its last.
fn aggregator(bootstrap: &str, clickhouse: &ClickHouse, database: &str, topic: &str, rows: usize) -> Result<f64> {
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("tally-bench-aggregator-{port}.log"));
    let mut child = Command::new(tally_binary()?)
        .arg("aggregator")
        .env("TALLY_AGGREGATOR__BROKERS", bootstrap)
        .env("TALLY_AGGREGATOR__LEDGER_TOPIC", topic)
        .env("TALLY_AGGREGATOR__CLICKHOUSE_URL", clickhouse.url())
        .env("TALLY_AGGREGATOR__CLICKHOUSE_DATABASE", database)
        .env("TALLY_AGGREGATOR__METRICS_ADDRESS", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let name = "tally_aggregator_rows_inserted_total";
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, f64)> = None;
    let result = loop {
        let inserted = metric(port, name).unwrap_or(0.0);
        if inserted > 0.0 && first.is_none() {
            first = Some((Instant::now(), inserted));
        }
        if inserted as usize >= rows {
            let (t1, r1) = first.unwrap_or((Instant::now(), 0.0));
            break Ok((inserted - r1) / t1.elapsed().as_secs_f64().max(1e-3));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the aggregator inserted {inserted} of {rows} rows in 600 s; see {}",
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let stored = count(clickhouse, database)? as usize;
    if result.is_ok() && stored != rows {
        bail!("the aggregator stored {stored} rows for {rows}");
    }
    result
}

fn summary(values: &[f64]) -> String {
    let (median, min, max) = tally_benches::figures::median_range(values);
    format!("{median:>9.0} [{min:.0} - {max:.0}]")
}

/// Freshness at `rate` records/s for `seconds`: (aggregator, floor) latencies in ms.
fn freshness(
    bootstrap: &str,
    clickhouse: &ClickHouse,
    rate: f64,
    seconds: u64,
    run: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    // Names of their own per run: a topic read in an earlier run would show
    // its records visible before they were sent.
    let topic = &format!("tally.ledger.fresh-{run}");
    let database = &format!("bench_fresh_{run}");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(create_topics(bootstrap, &[(topic, PARTITIONS)]))?;
    rt.block_on(fresh(clickhouse, database, None))?;
    let producer = producer(bootstrap)?;
    let codec = Codec::global();
    for p in 0..PARTITIONS {
        let bytes = codec.encode(&claim(p))?;
        producer
            .send(BaseRecord::<[u8], [u8]>::to(topic).partition(p).key(b"claim").payload(&bytes))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    // The floor: a bare consumer of the same records.
    let floor_consumer: BaseConsumer = tally_service::kafka::consumer_config(bootstrap, "bench-floor").create()?;
    floor_consumer.subscribe(&[topic])?;
    let port = free_port()?;
    let mut child = Command::new(tally_binary()?)
        .arg("aggregator")
        .env("TALLY_AGGREGATOR__BROKERS", bootstrap)
        .env("TALLY_AGGREGATOR__LEDGER_TOPIC", topic)
        .env("TALLY_AGGREGATOR__DEAD_LETTER_TOPIC", format!("{topic}.dead-letters"))
        .env("TALLY_AGGREGATOR__CLICKHOUSE_URL", clickhouse.url())
        .env("TALLY_AGGREGATOR__CLICKHOUSE_DATABASE", database)
        .env("TALLY_AGGREGATOR__METRICS_ADDRESS", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", std::env::var("TALLY_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join("tally-bench-freshness-aggregator.log"))?)
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let total = (rate * seconds as f64) as usize;
    let rows: Vec<(i32, LedgerEntry)> = LedgerRows::new(7, total, 10_000, 500, 1, PARTITIONS).collect();
    let mut sent: HashMap<(i32, i64), Instant> = HashMap::with_capacity(total);
    let mut next = [1i64; PARTITIONS as usize];
    let started = Instant::now();
    let floor = std::thread::spawn(move || {
        let mut seen: Vec<((i32, i64), Instant)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = floor_consumer.poll(Duration::from_millis(5)) {
                seen.push(((m.partition(), m.offset()), Instant::now()));
            }
        }
        seen
    });
    // Visible: each partition's highest offset stored, polled every 10 ms
    // while the entries are appended.
    let visible_at = std::thread::scope(|scope| -> Result<HashMap<(i32, i64), Instant>> {
        let poller = scope.spawn(|| -> Result<HashMap<(i32, i64), Instant>> {
            let mut visible_at: HashMap<(i32, i64), Instant> = HashMap::with_capacity(total);
            let mut high = [0i64; PARTITIONS as usize];
            let deadline = Instant::now() + Duration::from_secs(seconds + 60);
            while visible_at.len() < total && Instant::now() < deadline {
                // The aggregator's resume points: it writes one right after
                // a batch's rows, so this is an upper bound of when they
                // became visible, and reading this small table every 10 ms
                // does not load the server the way scanning ledger_entries
                // did (that slowed the very INSERTs being timed).
                let text = clickhouse.query(&format!(
                    "SELECT ledger_partition, max(next_offset) - 1 FROM {database}.sink_progress GROUP BY ledger_partition"
                ))?;
                let now = Instant::now();
                for line in text.lines() {
                    let mut f = line.split('\t');
                    let (Some(p), Some(o)) = (f.next(), f.next()) else { continue };
                    let (p, o): (i32, i64) = (p.parse()?, o.parse()?);
                    for offset in high[p as usize] + 1..=o {
                        visible_at.insert((p, offset), now);
                    }
                    high[p as usize] = high[p as usize].max(o);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(visible_at)
        });
        for (n, (partition, entry)) in rows.iter().enumerate() {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let bytes = codec.encode(entry)?;
            sent.insert((*partition, next[*partition as usize]), Instant::now());
            producer
                .send(
                    BaseRecord::<str, [u8]>::to(topic)
                        .partition(*partition)
                        .key(entry.account_id.as_str())
                        .payload(&bytes),
                )
                .map_err(|(e, _)| e)?;
            next[*partition as usize] += 1;
        }
        producer.flush(Duration::from_secs(30))?;
        poller.join().map_err(|_| anyhow::anyhow!("poller thread"))?
    })?;
    // How the aggregator batched: flushes, rows per flush, seconds per flush.
    let m = |name: &str| metric(port, &format!("tally_aggregator_{name}")).unwrap_or(f64::NAN);
    let (batches, rows_in, secs) = (m("batches_total"), m("rows_inserted_total"), m("insert_seconds_sum"));
    eprintln!(
        "[sink] freshness run: {batches} flushes, {:.0} rows and {:.0} ms each on average",
        rows_in / batches,
        secs * 1e3 / batches
    );
    let _ = child.kill();
    let _ = child.wait();
    clickhouse.query(&format!("DROP DATABASE IF EXISTS {database}"))?;
    let floor_seen = floor.join().map_err(|_| anyhow::anyhow!("floor thread"))?;
    let mut agg: Vec<f64> = visible_at
        .iter()
        .filter_map(|(k, t)| sent.get(k).map(|s| t.saturating_duration_since(*s).as_secs_f64() * 1e3))
        .collect();
    let mut bare: Vec<f64> = floor_seen
        .iter()
        .filter_map(|(k, t)| sent.get(k).map(|s| t.saturating_duration_since(*s).as_secs_f64() * 1e3))
        .collect();
    if agg.len() < total * 99 / 100 {
        bail!("only {} of {total} fresh rows became visible", agg.len());
    }
    agg.sort_by(f64::total_cmp);
    bare.sort_by(f64::total_cmp);
    Ok((agg, bare))
}

/// `reps` freshness runs of 10 s at `rate`: p50 and p99 of each run, as
/// median [min - max] over the runs, next to the broker's floor.
fn freshness_runs(
    bootstrap: &str,
    clickhouse: &ClickHouse,
    rate: f64,
    reps: usize,
    (tag, label): (&str, &str),
) -> Result<String> {
    let (mut p50, mut p99, mut floor, mut over) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let (agg, bare) = freshness(bootstrap, clickhouse, rate, 10, &format!("{tag}_{rep}"))?;
        eprintln!(
            "[sink] freshness run {rep}: p50 {:.0} ms p99 {:.0} ms, floor p99 {:.0} ms",
            percentile(&agg, 0.5),
            percentile(&agg, 0.99),
            percentile(&bare, 0.99)
        );
        p50.push(percentile(&agg, 0.5));
        p99.push(percentile(&agg, 0.99));
        floor.push(percentile(&bare, 0.99));
        over.push(percentile(&agg, 0.99) - percentile(&bare, 0.99));
    }
    Ok(format!(
        "freshness at {rate:.0}/s, {label}, append -> visible in ClickHouse: p50 {} ms, p99 {} ms; broker append -> poll p99 {} ms; p99 over the floor {} ms (goal < 1000)",
        summary(&p50).trim(),
        summary(&p99).trim(),
        summary(&floor).trim(),
        summary(&over).trim()
    ))
}

/// Freshness with the server's data in the temp dir, as every other
/// figure here, and again with a server whose data is on tmpfs
/// (`/dev/shm`, when there is one). This machine's root file system is ext4
/// without a journal, where creating a file scans for free inodes skipping
/// every one deleted in the last half minute (`recently_deleted()` in the
/// kernel's `fs/ext4/ialloc.c`, checked only when there is no journal):
/// ClickHouse creates and deletes thousands of part files a second under
/// small INSERTs and their merges, and a profile of a freshness run at 50k
/// entries/s found a quarter of both cores in that scan. A journaled ext4
/// or XFS, as production servers use, does not pay it; tmpfs shows the
/// pipeline without it. Both lines are printed, labelled.
fn freshness_both(bootstrap: &str, clickhouse: ClickHouse, rate: f64, reps: usize) -> Result<Vec<String>> {
    eprintln!("[sink] freshness at {rate:.0} entries/s for 10 s, {reps} runs, ClickHouse data in the temp dir");
    let mut lines = vec![freshness_runs(bootstrap, &clickhouse, rate, reps, ("disk", "data in the temp dir"))?];
    drop(clickhouse);
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        eprintln!("[sink] freshness at {rate:.0} entries/s for 10 s, {reps} runs, ClickHouse data on tmpfs");
        let on_tmpfs = ClickHouse::start_in(shm)?;
        lines.push(freshness_runs(bootstrap, &on_tmpfs, rate, reps, ("tmpfs", "data on tmpfs (/dev/shm)"))?);
    } else {
        lines.push("freshness with ClickHouse data on tmpfs: not measured, no /dev/shm".into());
    }
    Ok(lines)
}

fn main() -> Result<()> {
    let rows_n = env_usize("TALLY_BENCH_ROWS", 1_000_000);
    let reps = env_usize("TALLY_BENCH_REPS", 3).max(1);
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let clickhouse = ClickHouse::start()?;
    let rt = tokio::runtime::Runtime::new()?;
    if let Ok(rate) = std::env::var("TALLY_BENCH_FRESHNESS_ONLY") {
        // Only the freshness figure, at a given rate (entries/s).
        let rate: f64 = rate.parse().context("TALLY_BENCH_FRESHNESS_ONLY is a rate in entries/s")?;
        for line in freshness_both(&bootstrap, clickhouse, rate, reps)? {
            println!("{line}");
        }
        return Ok(());
    }
    let topic = "tally.ledger";
    rt.block_on(create_topics(&bootstrap, &[(topic, PARTITIONS), ("tally.ledger.dead-letters", PARTITIONS)]))?;
    eprintln!("[sink] generating and publishing {rows_n} ledger entries");
    let rows: Vec<(i32, LedgerEntry)> = LedgerRows::new(42, rows_n, 10_000, 500, 90, PARTITIONS).collect();
    let tsv = write_ledger(&bootstrap, topic, &rows)?;
    let file = std::env::temp_dir().join(format!("tally-bench-sink-{}.tsv", std::process::id()));
    std::fs::write(&file, &tsv)?;
    drop(tsv);
    let native = native_file(&rt, &clickhouse, &file, rows_n)?;
    let _ = std::fs::remove_file(&file);
    let file = native;
    let _ = tally_binary()?; // build before timing anything

    let mut report = Vec::new();
    let mut client_all = Vec::new();
    let mut client_none = Vec::new();
    let mut agg_all = Vec::new();
    let mut agg_none = Vec::new();
    for rep in 0..reps {
        let db = format!("bench_c_all_{rep}");
        rt.block_on(fresh(&clickhouse, &db, None))?;
        client_all.push(client_insert(&clickhouse, &db, &file, "Native", rows_n)?);
        let db = format!("bench_a_all_{rep}");
        rt.block_on(fresh(&clickhouse, &db, None))?;
        agg_all.push(aggregator(&bootstrap, &clickhouse, &db, topic, rows_n)?);
        let db = format!("bench_c_none_{rep}");
        rt.block_on(fresh(&clickhouse, &db, Some(&[])))?;
        client_none.push(client_insert(&clickhouse, &db, &file, "Native", rows_n)?);
        let db = format!("bench_a_none_{rep}");
        rt.block_on(fresh(&clickhouse, &db, Some(&[])))?;
        agg_none.push(aggregator(&bootstrap, &clickhouse, &db, topic, rows_n)?);
        eprintln!(
            "[sink] rep {rep}: client {:.0}/{:.0} rows/s, aggregator {:.0}/{:.0} rows/s (all views / none)",
            client_all[rep], client_none[rep], agg_all[rep], agg_none[rep]
        );
        for db in ["c_all", "a_all", "c_none", "a_none"] {
            clickhouse.query(&format!("DROP DATABASE IF EXISTS bench_{db}_{rep}"))?;
        }
    }
    let ratios: Vec<f64> = agg_all.iter().zip(&client_all).map(|(a, c)| a / c).collect();
    let ratios_none: Vec<f64> = agg_none.iter().zip(&client_none).map(|(a, c)| a / c).collect();
    let ratio = |values: &[f64]| {
        let (median, min, max) = tally_benches::figures::median_range(values);
        format!("{median:.2} [{min:.2} - {max:.2}]")
    };
    report.push(format!("clickhouse-client, all 5 views   {} rows/s", summary(&client_all)));
    report.push(format!("aggregator, all 5 views          {} rows/s", summary(&agg_all)));
    report.push(format!("ratio aggregator / client (views) {}   goal >= 0.9", ratio(&ratios)));
    report.push(format!("clickhouse-client, no view       {} rows/s", summary(&client_none)));
    report.push(format!("aggregator, no view              {} rows/s", summary(&agg_none)));
    report.push(format!("ratio aggregator / client (none)  {}", ratio(&ratios_none)));
    // What each rollup costs alone (clickhouse-client, the same rows).
    for rollup in rollups::rollups() {
        let mut rates = Vec::new();
        for rep in 0..reps {
            let db = format!("bench_one_{rep}");
            rt.block_on(fresh(&clickhouse, &db, Some(&[rollup.table.as_str()])))?;
            rates.push(client_insert(&clickhouse, &db, &file, "Native", rows_n)?);
            clickhouse.query(&format!("DROP DATABASE IF EXISTS {db}"))?;
        }
        report.push(format!("clickhouse-client, only {:<19} {} rows/s", rollup.table, summary(&rates)));
    }
    let _ = std::fs::remove_file(&file);

    // Half the aggregator's median rate with every view, as the goal says.
    let rate = (agg_all[agg_all.len() / 2] / 2.0).round();
    report.extend(freshness_both(&bootstrap, clickhouse, rate, reps)?);
    println!("\n== sink bench: {rows_n} ledger rows, {reps} runs each, median [min - max]");
    for line in report {
        println!("  {line}");
    }
    Ok(())
}
