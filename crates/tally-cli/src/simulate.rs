//! `tally simulate`: publishes the simulator's workload to the input topic,
//! with progress on stderr and a summary on stdout.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tally_client::{InFlight, Publisher, PublisherConfig};
use tally_events::names::topics;
use tally_service::kafka::ensure_topics;
use tally_simulator::{SimConfig, Simulator, Tally};

/// Options of `tally simulate`.
#[derive(clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Input topic (usage events, purchases, account changes).
    #[arg(long, default_value = topics::INPUTS)]
    topic: String,
    /// Partitions of the input topic, when this run creates it.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Operator accounts.
    #[arg(long, default_value_t = 40)]
    accounts: u32,
    /// Usage events to publish (purchases, account changes and faults come on top).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Seed: the same seed publishes the same messages.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Messages per second; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Simulated time of the first message (RFC 3339, UTC).
    #[arg(long)]
    start: Option<DateTime<Utc>>,
    /// Fraction of usage events re-sent as exact duplicates.
    #[arg(long, default_value_t = 0.02)]
    duplicates: f64,
    /// Fraction of usage events sent late (some beyond the dedup window).
    #[arg(long, default_value_t = 0.01)]
    late: f64,
    /// Fraction of messages that are bad input.
    #[arg(long, default_value_t = 0.005)]
    malformed: f64,
    /// Print no progress lines.
    #[arg(long)]
    quiet: bool,
}

fn fraction(name: &str, value: f64) -> Result<f64> {
    anyhow::ensure!((0.0..=1.0).contains(&value), "--{name} must be between 0 and 1, got {value}");
    Ok(value)
}

pub async fn run(args: Args) -> Result<()> {
    let defaults = SimConfig::default();
    let config = SimConfig {
        seed: args.seed,
        accounts: args.accounts.max(1),
        usage_events: args.events,
        start: args.start.unwrap_or(defaults.start),
        step_millis: defaults.step_millis,
        duplicate_fraction: fraction("duplicates", args.duplicates)?,
        late_fraction: fraction("late", args.late)?,
        malformed_fraction: fraction("malformed", args.malformed)?,
    };
    anyhow::ensure!(args.partitions > 0, "--partitions must be positive");
    // Only the input topic: the metering service creates its outputs with
    // as many partitions as the input has.
    ensure_topics(&args.brokers, &[(args.topic.as_str(), args.partitions)]).await.with_context(|| {
        format!("cannot reach the broker at {} (is the stack up? deploy/local/stack.sh up)", args.brokers)
    })?;
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: args.brokers.clone(),
        topic: args.topic.clone(),
        ..PublisherConfig::default()
    })?;

    eprintln!(
        "simulating {} accounts, {} usage events (seed {}) -> {} on {}",
        config.accounts, config.usage_events, config.seed, args.topic, args.brokers
    );
    let started = Instant::now();
    let mut tally = Tally::default();
    // Bound what is awaited later: acknowledgements come back in order.
    let mut in_flight = InFlight::new(10_000);
    let mut last_report = Instant::now();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    for (n, message) in Simulator::new(config).enumerate() {
        if let Some(interval) = interval {
            let due = started + interval * n as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        tally.add(&message);
        in_flight
            .push(publisher.enqueue_raw(&message.key, &message.payload).await?)
            .await
            .context("delivery failed")?;
        if !args.quiet && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let rate = tally.total() as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "  sent {:>9} messages ({rate:>8.0}/s), {:>6} awaiting acknowledgement",
                tally.total(),
                in_flight.len()
            );
        }
    }
    let delivered = in_flight.finish().await.context("delivery failed")?;
    publisher.flush(Duration::from_secs(30))?;
    let elapsed = started.elapsed();
    print_summary(&tally, delivered, elapsed);
    Ok(())
}

fn print_summary(tally: &Tally, delivered: u64, elapsed: Duration) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nsimulate: {delivered} messages acknowledged in {:.1} s ({:.0}/s), {} bytes",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        tally.bytes
    );
    let _ = writeln!(out, "  {:<28} {:>9}", "message", "count");
    for (intent, count) in &tally.by_intent {
        let _ = writeln!(out, "  {:<28} {count:>9}", intent.name());
    }
    let _ = writeln!(out, "  {:<28} {:>9}", "credit purchases ($)", tally.dollars_purchased);
    let _ = writeln!(out, "  usage by service and engine:");
    for ((service, engine), count) in &tally.by_service {
        let _ = writeln!(out, "    {:<20} {:<16} {count:>9}", service, engine);
    }
}
