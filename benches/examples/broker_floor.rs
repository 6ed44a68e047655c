//! The latency floor of a broker, with no tally code in the path: a bare
//! idempotent producer publishes at a fixed rate, a bare consumer polls.
//! Prints the producer's acknowledgement latency (send to delivery report)
//! and the visibility latency (send to first poll), so a latency tail can be
//! placed: in the produce path, or between an acknowledged append and a
//! fetch that returns it.
//!
//! Run: `cargo run --release -p tally-benches --example broker_floor -- [RATE] [SECONDS] [plain]`
//! (a fresh Tansu memory broker; defaults 20000 records/s for 15 s).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message,
};
use tally_testkit::{create_topics, Broker};

const PARTITIONS: i32 = 4;

fn quantiles(name: &str, values: &mut [f64]) {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        println!("  {name}: no samples");
        return;
    }
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    println!(
        "  {name}: {} samples, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        values.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000.0);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(15.0);
    // `plain`: no idempotence, acks=1, to see whether the tail is the
    // idempotent producer's or the broker's.
    let plain = args.next().as_deref() == Some("plain");
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    create_topics(&bootstrap, &[("floor", PARTITIONS)]).await?;
    let total = (rate * seconds) as usize;
    let producer_kind = if plain { "plain producer (acks=1)" } else { "idempotent producer (acks=all)" };
    println!("broker floor: {total} records of 170 B at {rate:.0}/s, {PARTITIONS} partitions, Tansu memory storage, {producer_kind}");

    // The consumer records when each (partition, offset) is first polled.
    let sent_at: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let polled_at: Arc<Mutex<HashMap<(i32, i64), Instant>>> = Arc::default();
    let consumer: BaseConsumer = tally_testkit::consumer_config(&bootstrap, Some("floor")).create()?;
    consumer.subscribe(&["floor"])?;
    let reader = {
        let polled_at = polled_at.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
            let mut seen = 0usize;
            while seen < total && Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    if let Ok(mut polled) = polled_at.lock() {
                        polled.insert((m.partition(), m.offset()), Instant::now());
                    }
                    seen += 1;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await; // group join

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", if plain { "false" } else { "true" })
        .set("acks", if plain { "1" } else { "all" })
        .set("linger.ms", "1")
        .create()?;
    let payload = vec![7u8; 170];
    let started = Instant::now();
    let mut acks = Vec::with_capacity(total);
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let key = format!("acct-{}", n % 997);
        let sent = Instant::now();
        let future = producer.send_result(FutureRecord::to("floor").key(&key).payload(&payload));
        let Ok(future) = future else { continue };
        let sent_at = sent_at.clone();
        tasks.push(tokio::spawn(async move {
            let delivery = future.await.ok()?.ok()?;
            if let Ok(mut map) = sent_at.lock() {
                map.insert((delivery.partition, delivery.offset), sent);
            }
            Some(sent.elapsed().as_secs_f64() * 1e3)
        }));
    }
    for task in tasks {
        if let Ok(Some(ms)) = task.await {
            acks.push(ms);
        }
    }
    let _ = reader.join();
    let sent_at = sent_at.lock().map(|m| m.clone()).unwrap_or_default();
    let polled_at = polled_at.lock().map(|m| m.clone()).unwrap_or_default();
    let mut visible: Vec<f64> = polled_at
        .iter()
        .filter_map(|(key, polled)| {
            sent_at.get(key).map(|sent| polled.saturating_duration_since(*sent).as_secs_f64() * 1e3)
        })
        .collect();
    quantiles("produce -> acknowledged", &mut acks);
    quantiles("produce -> first poll", &mut visible);
    Ok(())
}
