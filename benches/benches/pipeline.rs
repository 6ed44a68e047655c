//! Pipeline bench: the metering service against a bare rdkafka loop.
//!
//! One real Tansu broker (memory storage), one set of inputs from the
//! simulator (1,000,000 by default; `TALLY_BENCH_INPUTS` changes it), 4
//! partitions. Side by side:
//! (c) the honest bare loop: consume each input and produce one record of
//!     the same size to the same partition of another topic as it is
//!     polled, never waiting for acknowledgements before the next poll
//!     (counted by a delivery callback), committing a batch's positions once
//!     all its records are acknowledged: what the broker allows;
//! (a) the stop-and-wait bare loop: the same, batch by batch, waiting for
//!     the acknowledgements of each batch before polling the next (what
//!     metering does today), a labelled second line;
//! (b) the `tally metering` release binary with the shipped defaults
//!     (`workers = 1`), timed from its first handled input to the last
//!     acknowledgement of its last batch (its /metrics counters), as the
//!     loops are timed from their first poll to their last acknowledgement;
//! (b2) the same with `workers = 2`: two loops in one process, each on
//!     its own half of the partitions (does throughput grow with cores?);
//! (b1) the same as (b) with `batches_in_flight = 1`: metering stopping
//!     for each batch's acknowledgements (what pipelining gains).
//! `TALLY_BENCH_ROUNDS` (3) rounds of the four in turn on the same inputs
//! give each figure as median (min-max). It prints the rates and
//! metering's ratio to each loop (goal: metering >= 0.9 of the honest
//! loop), then runs metering again on a fresh topic fed at half its
//! median rate and prints the latency from input append to ledger entry
//! append (p50, p99), where metering's own batches spend it, and the same
//! latency for the honest loop at the same rate: the floor the broker and
//! the machine set (goal: metering p50 within 10 ms of it, p99 within
//! 50 ms).
//!
//! Run: `cargo bench -p tally-benches --bench pipeline` (needs the Tansu
//! binary that deploy/local/install.sh caches).

mod support;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message,
};
use support::{median, publish, spread, Metering};
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, read_topic, tally_binary, Broker};

const PARTITIONS: i32 = 4;

/// The producer settings both bare loops use (metering's own are
/// `tally_service::kafka::ProducerSettings`: idempotent, acks=all, 5 ms).
fn loop_producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    config
}

/// (a): the stop-and-wait bare loop. Returns records per second.
async fn bare_loop(bootstrap: &str, input: &str, output: &str, total: usize, group: &str) -> Result<f64> {
    let consumer: BaseConsumer = tally_testkit::consumer_config(bootstrap, Some(group)).create()?;
    consumer.subscribe(&[input])?;
    let producer: FutureProducer = loop_producer_config(bootstrap).create()?;
    let mut done = 0usize;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < total {
        if Instant::now() > deadline {
            bail!("bare loop did not finish: {done} of {total}");
        }
        let mut batch = Vec::new();
        while batch.len() < 5_000 {
            match consumer.poll(Duration::from_millis(if batch.is_empty() { 100 } else { 0 })) {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(e)) => bail!("consume: {e}"),
                None => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        started.get_or_insert_with(Instant::now);
        let mut futures = Vec::with_capacity(batch.len());
        for message in &batch {
            let record = FutureRecord::to(output)
                .partition(message.partition())
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default());
            futures.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for future in futures {
            future.await.context("canceled")?.map_err(|(e, _)| e)?;
        }
        consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async).ok();
        done += batch.len();
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Delivery reports of the streaming loop, counted by callback (no future
/// per record).
#[derive(Default)]
struct Acks {
    acked: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

struct AckContext(Arc<Acks>);

impl rdkafka::ClientContext for AckContext {}

impl rdkafka::producer::ProducerContext for AckContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.0.acked } else { &self.0.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// (c): the honest bare loop, as fast as the broker allows: each input is
/// produced as it is polled (borrowed, not copied), deliveries are counted
/// by callback and never waited for before the next poll, and a batch's
/// consumer positions are committed once every record produced up to it is
/// acknowledged (what at-least-once needs, and no more). Timed from the
/// first input to the last acknowledgement. Returns records per second.
/// `ready` is set once the group has assigned every partition.
fn streaming_loop(
    bootstrap: &str,
    input: &str,
    output: &str,
    total: usize,
    group: &str,
    ready: Arc<AtomicBool>,
) -> Result<f64> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let consumer: BaseConsumer = tally_testkit::consumer_config(bootstrap, Some(group)).create()?;
    consumer.subscribe(&[input])?;
    let acks = Arc::new(Acks::default());
    let producer: ThreadedProducer<AckContext> =
        loop_producer_config(bootstrap).create_with_context(AckContext(acks.clone()))?;
    let (mut sent, mut in_batch) = (0u64, 0usize);
    let mut started = None;
    // (records produced up to the batch's end, positions after it)
    let mut pending: std::collections::VecDeque<(u64, rdkafka::TopicPartitionList)> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while (sent as usize) < total {
        if Instant::now() > deadline {
            bail!("streaming loop did not finish: {sent} of {total}");
        }
        if !ready.load(Ordering::Relaxed) && consumer.assignment().is_ok_and(|a| a.count() == PARTITIONS as usize) {
            ready.store(true, Ordering::Relaxed);
        }
        let mut caught_up = false;
        match consumer.poll(Duration::from_millis(if in_batch == 0 { 100 } else { 0 })) {
            Some(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                loop {
                    let record = BaseRecord::<[u8], [u8]>::to(output)
                        .partition(message.partition())
                        .key(message.key().unwrap_or_default())
                        .payload(message.payload().unwrap_or_default());
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            _,
                        )) => std::thread::sleep(Duration::from_millis(1)),
                        Err((e, _)) => bail!("produce: {e}"),
                    }
                }
                sent += 1;
                in_batch += 1;
            }
            Some(Err(e)) => bail!("consume: {e}"),
            None => caught_up = true,
        }
        // A batch ends at 5,000 inputs or when the poll comes back empty.
        if in_batch >= 5_000 || (caught_up && in_batch > 0) {
            pending.push_back((sent, consumer.position()?));
            in_batch = 0;
        }
        while pending.front().is_some_and(|(upto, _)| acks.acked.load(Ordering::Relaxed) >= *upto) {
            if let Some((_, positions)) = pending.pop_front() {
                consumer.commit(&positions, rdkafka::consumer::CommitMode::Async).ok();
            }
        }
        if acks.failed.load(Ordering::Relaxed) > 0 {
            bail!("a delivery failed");
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    if acks.acked.load(Ordering::Relaxed) != sent {
        bail!("{} of {sent} deliveries acknowledged", acks.acked.load(Ordering::Relaxed));
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// (b): metering with `workers` workers, from its first handled input to
/// the moment every input's outputs are acknowledged (the loops' clocks
/// also stop at their last acknowledgement).
fn metering_rate(bootstrap: &str, total: u64, round: usize, workers: u32, in_flight: Option<&str>) -> Result<f64> {
    let prefix = format!("r{round}w{workers}f{}-", in_flight.unwrap_or("d"));
    let group = format!("bench-metering-{round}-{workers}-{}", in_flight.unwrap_or("d"));
    let settings: Vec<(&str, &str)> = in_flight.map(|f| ("TALLY_METERING__BATCHES_IN_FLIGHT", f)).into_iter().collect();
    let metering = Metering::start(bootstrap, "", &prefix, &group, workers, &settings)?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let handled = metering.handled().unwrap_or(0);
        if handled > 0 && first.is_none() {
            first = Some((Instant::now(), handled));
        }
        if metering.acknowledged().unwrap_or(0) >= total {
            let (at, n0) = first.context("no progress seen")?;
            return Ok((total - n0) as f64 / at.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("metering handled {handled} of {total} in 900 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prints and returns (p50, p99).
fn report_latency(latencies: &mut [i64], rate: f64, what: &str) -> Result<(i64, i64)> {
    latencies.sort_unstable();
    if latencies.is_empty() {
        bail!("no records to measure the latency of {what} on");
    }
    println!(
        "  latency of {what} at {rate:.0} inputs/s, {} records: p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    Ok((percentile(latencies, 0.5), percentile(latencies, 0.99)))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let total: usize = std::env::var("TALLY_BENCH_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[("inputs", PARTITIONS)]).await?;
    let config = SimConfig {
        accounts: 2_000,
        usage_events: total as u64,
        duplicate_fraction: 0.02,
        late_fraction: 0.0,
        malformed_fraction: 0.001,
        ..SimConfig::default()
    };
    let messages: Vec<(Vec<u8>, Vec<u8>)> = Simulator::new(config).take(total).map(|m| (m.key, m.payload)).collect();
    let mean_size = messages.iter().map(|(_, p)| p.len()).sum::<usize>() / messages.len().max(1);
    println!(
        "pipeline bench: {} inputs (mean {mean_size} B), {PARTITIONS} partitions, Tansu memory storage",
        messages.len()
    );
    publish(&bootstrap, "inputs", messages.iter().map(|(k, p)| (k, p)), None).await?;
    // Build the release binary before timing anything.
    tally_binary()?;

    // Rounds, each loop and metering in turn on the same inputs (fresh
    // groups, fresh output topics), so each figure has a run-to-run range.
    let rounds: usize = std::env::var("TALLY_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let (mut streamings, mut bares, mut meterings, mut meterings2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut stop_and_waits = Vec::new();
    for round in 0..rounds {
        let (out_c, out_a) = (format!("stream-out-{round}"), format!("bare-out-{round}"));
        create_topics(&bootstrap, &[(out_c.as_str(), PARTITIONS), (out_a.as_str(), PARTITIONS)]).await?;
        let (bootstrap_c, n) = (bootstrap.clone(), messages.len());
        let streaming = tokio::task::spawn_blocking(move || {
            streaming_loop(&bootstrap_c, "inputs", &out_c, n, &format!("bench-stream-{round}"), Arc::default())
        })
        .await??;
        let bare = bare_loop(&bootstrap, "inputs", &out_a, messages.len(), &format!("bench-bare-{round}")).await?;
        let metering = metering_rate(&bootstrap, messages.len() as u64, round, 1, None)?;
        let metering2 = metering_rate(&bootstrap, messages.len() as u64, round, 2, None)?;
        let stop_and_wait = metering_rate(&bootstrap, messages.len() as u64, round, 1, Some("1"))?;
        println!(
            "  round {}: (c) {streaming:>8.0}  (a) {bare:>8.0}  (b) {metering:>8.0}  (b2) {metering2:>8.0}  (b1) {stop_and_wait:>8.0}  (b)/(c) {:.2}  (b2)/(c) {:.2}",
            round + 1,
            metering / streaming,
            metering2 / streaming
        );
        streamings.push(streaming);
        bares.push(bare);
        meterings.push(metering);
        meterings2.push(metering2);
        stop_and_waits.push(stop_and_wait);
    }
    println!("  (c) honest bare loop (never waits):    {}", spread(&streamings, "records/s"));
    println!("  (a) stop-and-wait bare loop:           {}", spread(&bares, "records/s"));
    println!("  (b) tally metering, 1 worker:          {}", spread(&meterings, "inputs/s"));
    println!("  (b2) tally metering, 2 workers:        {}", spread(&meterings2, "inputs/s"));
    println!("  (b1) tally metering, stop and wait:    {}", spread(&stop_and_waits, "inputs/s"));
    let ratios: Vec<f64> = meterings.iter().zip(&streamings).map(|(m, c)| m / c).collect();
    let ratios_a: Vec<f64> = meterings.iter().zip(&bares).map(|(m, a)| m / a).collect();
    println!("  ratio (b)/(c): {} (goal >= 0.90)", spread(&ratios, ""));
    println!("  ratio (b)/(a): {}", spread(&ratios_a, ""));
    let ratios2: Vec<f64> = meterings2.iter().zip(&streamings).map(|(m, c)| m / c).collect();
    let scaling: Vec<f64> = meterings2.iter().zip(&meterings).map(|(two, one)| two / one).collect();
    println!("  ratio (b2)/(c): {} (goal >= 0.90)", spread(&ratios2, ""));
    println!("  2 workers / 1 worker: {}", spread(&scaling, ""));
    let metering = median(&meterings);

    // Latency at half the measured metering rate, on fresh topics.
    // TALLY_BENCH_LATENCY_RATE overrides it (inputs/s), to see how the
    // latency floor of a shared machine moves with load.
    let rate = std::env::var("TALLY_BENCH_LATENCY_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(metering / 2.0);
    let count = ((rate * 20.0) as usize).clamp(1_000, messages.len());
    create_topics(&bootstrap, &[("lat-inputs", PARTITIONS)]).await?;
    let latency = Metering::start(&bootstrap, "lat-", "lat-", "bench-latency", 1, &[])?;
    // Time the steady state, not the group join and restore.
    let deadline = Instant::now() + Duration::from_secs(60);
    while latency.gauge("partitions_owned") != Some(PARTITIONS as i64) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    publish(&bootstrap, "lat-inputs", messages[..count].iter().map(|(k, p)| (k, p)), Some(rate)).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while latency.acknowledged().unwrap_or(0) < count as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let batch_p50 = latency.histogram_quantile("batch_seconds", 0.5);
    let batch_p99 = latency.histogram_quantile("batch_seconds", 0.99);
    let held = latency.gauge("ledger_held_total");
    drop(latency);
    let ledger = read_topic(&bootstrap, "lat-ledger", Duration::from_secs(60))?;
    // Timestamps are the producers' append times: the worker's publish for
    // inputs, metering's produce for entries (one machine, one clock).
    let appended = timestamps(&bootstrap, "lat-inputs")?;
    let ledger_stamps = timestamps(&bootstrap, "lat-ledger")?;
    // (input append time, latency): the append time shows whether latency
    // is a steady state or a backlog formed once and never worked off.
    let mut samples: Vec<(i64, i64)> = Vec::new();
    for record in &ledger {
        let Ok(tally_events::Message::Ledger(entry)) =
            tally_events::Codec::global().decode_any(record.payload.as_deref().unwrap_or_default())
        else {
            continue;
        };
        if let (Some(input_ts), Some(entry_ts)) = (
            appended.get(&(entry.source.partition, entry.source.offset)),
            ledger_stamps.get(&(record.partition, record.offset)),
        ) {
            samples.push((*input_ts, entry_ts - input_ts));
        }
    }
    let mut latencies: Vec<i64> = samples.iter().map(|(_, latency)| *latency).collect();
    let (metering_p50, metering_p99) = report_latency(&mut latencies, rate, "tally metering")?;
    println!("  metering p50 by second of the run (ms): {}", per_second_p50(&mut samples));
    if let (Some((p50, batches)), Some((p99, _))) = (batch_p50, batch_p99) {
        println!(
            "  metering batches ({batches}): p50 <= {:.0} ms, p99 <= {:.0} ms (first input polled to outputs acknowledged)",
            p50 * 1e3,
            p99 * 1e3
        );
    }
    // What the hold rule cost this run: each held record waited for an
    // alert's or dead letter's acknowledgement before it was sent.
    if let Some(held) = held {
        println!(
            "  ledger records held behind an alert or dead letter: {held} of {} ({:.0}%)",
            ledger.len(),
            100.0 * held as f64 / ledger.len().max(1) as f64
        );
    }

    // The same measure for the honest bare loop: the floor this broker and
    // machine set (publisher batching, broker append and fetch, one
    // produce).
    create_topics(&bootstrap, &[("lat-bare-in", PARTITIONS), ("lat-bare-out", PARTITIONS)]).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let loop_task = {
        let (bootstrap, ready) = (bootstrap.clone(), ready.clone());
        tokio::task::spawn_blocking(move || {
            streaming_loop(&bootstrap, "lat-bare-in", "lat-bare-out", count, "bench-bare-latency", ready)
        })
    };
    // Time the steady state, not the group join: publish once it owns all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&bootstrap, "lat-bare-in", messages[..count].iter().map(|(k, p)| (k, p)), Some(rate)).await?;
    loop_task.await??;
    let inputs = timestamps(&bootstrap, "lat-bare-in")?;
    let outputs = timestamps(&bootstrap, "lat-bare-out")?;
    // Fresh topics, one consumer in offset order: output p/k is input p/k.
    let mut bare_samples: Vec<(i64, i64)> =
        outputs.iter().filter_map(|(key, out_ts)| inputs.get(key).map(|in_ts| (*in_ts, out_ts - in_ts))).collect();
    let mut bare_latencies: Vec<i64> = bare_samples.iter().map(|(_, latency)| *latency).collect();
    let (floor_p50, floor_p99) = report_latency(&mut bare_latencies, rate, "honest bare loop (floor)")?;
    println!("  floor p50 by second of the run (ms): {}", per_second_p50(&mut bare_samples));
    println!(
        "  metering over the floor: p50 +{} ms (goal <= 10), p99 +{} ms (goal <= 50)",
        metering_p50 - floor_p50,
        metering_p99 - floor_p99
    );
    Ok(())
}

/// The median latency of the inputs appended in each second of a run,
/// from its first input: "12 14 480 470 ..." shows a backlog that formed
/// and stayed, "12 14 15 ..." a steady state.
fn per_second_p50(samples: &mut [(i64, i64)]) -> String {
    let Some(start) = samples.iter().map(|(t, _)| *t).min() else { return String::new() };
    samples.sort_unstable();
    let mut out = Vec::new();
    for chunk in samples.chunk_by(|a, b| (a.0 - start) / 1000 == (b.0 - start) / 1000) {
        let mut lat: Vec<i64> = chunk.iter().map(|(_, l)| *l).collect();
        lat.sort_unstable();
        out.push(percentile(&lat, 0.5).to_string());
    }
    out.join(" ")
}

/// (partition, offset) -> message timestamp (ms), read to the end.
fn timestamps(bootstrap: &str, topic: &str) -> Result<HashMap<(i32, i64), i64>> {
    let mut out = HashMap::new();
    for partition in 0..PARTITIONS {
        read_timestamps(bootstrap, topic, partition, &mut out)?;
    }
    Ok(out)
}

fn read_timestamps(bootstrap: &str, topic: &str, partition: i32, out: &mut HashMap<(i32, i64), i64>) -> Result<()> {
    let consumer: BaseConsumer<tally_service::kafka::ReaderContext> = tally_testkit::consumer_config(bootstrap, None)
        .set("enable.partition.eof", "true")
        .create_with_context(tally_service::kafka::ReaderContext)?;
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, partition, rdkafka::Offset::Offset(0))?;
    consumer.assign(&list)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                if let Some(ts) = m.timestamp().to_millis() {
                    out.insert((m.partition(), m.offset()), ts);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => bail!("{e}"),
            None => {}
        }
    }
    bail!("reading {topic}/{partition} timed out")
}
