//! What the pipeline and memory benches share (`mod support;`), so both
//! feed, run and report the same way: publishing inputs through the
//! client crate, the `tally metering` release binary (started with the
//! shipped defaults and a few topic names, read through its own /metrics,
//! measured from outside: its resident memory from /proc), and figures as
//! median (min-max) over rounds.

// Each bench uses its own subset of these helpers.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tally_client::{InFlight, Publisher, PublisherConfig};
use tally_testkit::{free_port, tally_binary};

/// Publishes (key, payload) pairs to `topic` as they come, at `rate` per
/// second if given (else as fast as the broker takes them), with at most
/// 20,000 unacknowledged; returns how many it published.
pub async fn publish<K: AsRef<[u8]>, P: AsRef<[u8]>>(
    bootstrap: &str,
    topic: &str,
    messages: impl IntoIterator<Item = (K, P)>,
    rate: Option<f64>,
) -> Result<u64> {
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: bootstrap.into(),
        topic: topic.into(),
        ..PublisherConfig::default()
    })?;
    let started = Instant::now();
    let mut in_flight = InFlight::new(20_000);
    let mut published = 0u64;
    for (key, payload) in messages {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(published as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        in_flight.push(publisher.enqueue_raw(key.as_ref(), payload.as_ref()).await?).await?;
        published += 1;
    }
    in_flight.finish().await?;
    publisher.flush(Duration::from_secs(120))?;
    Ok(published)
}

pub use tally_benches::figures::median;

/// "median (min-max) unit" over the rounds.
pub fn spread(values: &[f64], unit: &str) -> String {
    let (median, min, max) = tally_benches::figures::median_range(values);
    let digits = if unit.is_empty() { 2 } else { 0 };
    format!("{median:.digits$} ({min:.digits$}-{max:.digits$}) {unit}")
}

pub struct Metering {
    child: Child,
    port: u16,
}

impl Metering {
    /// Metering reading `{input_prefix}inputs`, writing `{prefix}ledger`
    /// and the rest, with `settings` (`TALLY_METERING__*` variables) on top
    /// of the shipped defaults.
    pub fn start(
        bootstrap: &str,
        input_prefix: &str,
        prefix: &str,
        group: &str,
        workers: u32,
        settings: &[(&str, &str)],
    ) -> Result<Metering> {
        let port = free_port()?;
        let rates = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/rates.toml");
        let log = std::fs::File::create(std::env::temp_dir().join(format!("tally-bench-{group}.log")))?;
        let child = Command::new(tally_binary()?)
            .arg("metering")
            .env("TALLY_METERING__BROKERS", bootstrap)
            .env("TALLY_METERING__GROUP_ID", group)
            .env("TALLY_METERING__INPUT_TOPIC", format!("{input_prefix}inputs"))
            .env("TALLY_METERING__LEDGER_TOPIC", format!("{prefix}ledger"))
            .env("TALLY_METERING__ALERTS_TOPIC", format!("{prefix}alerts"))
            .env("TALLY_METERING__DEAD_LETTER_TOPIC", format!("{prefix}dead-letters"))
            .env("TALLY_METERING__SNAPSHOT_TOPIC", format!("{prefix}snapshots"))
            .env("TALLY_METERING__RATES_FILE", rates)
            .env("TALLY_METERING__METRICS_ADDRESS", format!("127.0.0.1:{port}"))
            .env("TALLY_METERING__WORKERS", workers.to_string())
            .envs(settings.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Metering { child, port })
    }

    pub fn metrics(&self) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// The upper bound of the histogram bucket holding quantile `q` of
    /// `tally_metering_<name>` (where in the service the time goes).
    pub fn histogram_quantile(&self, name: &str, q: f64) -> Option<(f64, u64)> {
        let body = self.metrics()?;
        let prefix = format!("tally_metering_{name}_bucket{{le=\"");
        let buckets: Vec<(f64, u64)> = body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse::<f64>().ok()? as u64))
            })
            .collect();
        let total = buckets.last()?.1;
        let target = (total as f64 * q).ceil() as u64;
        buckets.iter().find(|(_, c)| *c >= target).map(|(le, _)| (*le, total))
    }

    /// The value of a metric without labels (a gauge, or a counter such
    /// as `ledger_held_total`).
    pub fn gauge(&self, name: &str) -> Option<i64> {
        let body = self.metrics()?;
        let prefix = format!("tally_metering_{name} ");
        body.lines().find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
    }

    /// Inputs handled so far (sum of inputs_total), if the server answers.
    pub fn handled(&self) -> Option<u64> {
        let body = self.metrics()?;
        Some(
            body.lines()
                .filter(|l| l.starts_with("tally_metering_inputs_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }

    /// Inputs whose outputs are all acknowledged
    /// (`inputs_acknowledged_total`), if the server answers.
    pub fn acknowledged(&self) -> Option<u64> {
        let body = self.metrics()?;
        body.lines().find_map(|l| l.strip_prefix("tally_metering_inputs_acknowledged_total ")?.trim().parse().ok())
    }

    /// Resident memory now and at its peak so far (`VmRSS`, `VmHWM`), in
    /// bytes: what the kernel charges the process, allocator slack included.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("metering's /proc status (has it exited?)")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
                .with_context(|| format!("no {name} in metering's /proc status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Fails if the process has exited (a crash or an out-of-memory kill
    /// must not read as a slow run).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("metering exited: {status} (its log is in the temp dir)"),
        }
    }
}

impl Drop for Metering {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
