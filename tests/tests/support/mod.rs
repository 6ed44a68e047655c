//! Shared harness of the metering end-to-end tests: run the real `tally
//! metering` binary, compute the expected ledger offline with the same core,
//! read what the broker holds, and compare.
#![allow(dead_code)] // each test file uses a part

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tally_client::{InFlight, Publisher, PublisherConfig};
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    AccountId, Codec, Epoch, LedgerEntry, Message as Record, Sequence, SourceOffset,
};
use tally_ledger::{Ledger, LedgerConfig, RateTable};
use tally_metering::step::{step, Step};
use tally_simulator::SimMessage;
use tally_testkit::{free_port, read_topic, read_topic_at_least, tally_binary};

pub mod warehouse;

pub const INPUTS: &str = "tally.inputs";
pub const LEDGER: &str = "tally.ledger";
pub const ALERTS: &str = "tally.alerts";
pub const DEAD_LETTERS: &str = "tally.dead-letters";

pub fn rates_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/rates.toml")
}

pub fn rates() -> Arc<RateTable> {
    Arc::new(RateTable::load(rates_path()).expect("the default rate table loads"))
}

/// How many restores in these metering logs started from a snapshot (not
/// from ledger offset 0).
#[allow(dead_code)] // not every test binary checks it
pub fn restores_from_snapshots(logs: &[PathBuf]) -> usize {
    logs.iter()
        .filter_map(|log| std::fs::read_to_string(log).ok())
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|line| line.contains("partition restored and claimed"))
        .filter(|line| line.split_whitespace().any(|w| w.starts_with("snapshot=") && w != "snapshot=0"))
        .count()
}

/// A test's random seed: `TALLY_TEST_SEED`, or the clock. Tests print it
/// so a failing run can be replayed.
#[allow(dead_code)] // not every test binary draws random faults
pub fn seed() -> u64 {
    std::env::var("TALLY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        #[allow(clippy::disallowed_methods)] // a seed, printed: not business time
        let now = std::time::SystemTime::now();
        now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    })
}

/// A `tally metering` child process, run with the shipped defaults: the
/// only settings a test gives are where things are (broker, rate table,
/// metrics port) and what its scenario is about, passed in `env`.
pub struct MeteringProcess {
    /// `metering`, `aggregator` or `notify`.
    service: &'static str,
    /// Arguments after the subcommand.
    args: Vec<String>,
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
    bootstrap: String,
    name: String,
    env: Vec<(String, String)>,
    /// Times it was started again by [`MeteringProcess::respawn`].
    pub restarts: usize,
}

impl MeteringProcess {
    pub fn spawn(bootstrap: &str, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_service("metering", bootstrap, name, env)
    }

    /// A `tally aggregator` child process with the shipped defaults, told
    /// only where the broker and ClickHouse are (and what `env` adds).
    pub fn aggregator(bootstrap: &str, clickhouse_url: &str, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut all = vec![("TALLY_AGGREGATOR__CLICKHOUSE_URL", clickhouse_url)];
        all.extend_from_slice(env);
        Self::spawn_service("aggregator", bootstrap, name, &all)
    }

    /// A `tally notify --config <config>` child process, told where the
    /// broker is (and what `env` adds: secrets, short retry windows).
    pub fn notify(bootstrap: &str, config: &Path, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut process = Self::unstarted("notify", bootstrap, name, env);
        process.args = vec!["--config".into(), config.display().to_string()];
        process.start()?;
        Ok(process)
    }

    fn spawn_service(service: &'static str, bootstrap: &str, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut process = Self::unstarted(service, bootstrap, name, env);
        process.start()?;
        Ok(process)
    }

    fn unstarted(service: &'static str, bootstrap: &str, name: &str, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        MeteringProcess {
            service,
            args: Vec::new(),
            child: None,
            metrics_port: 0,
            log: PathBuf::new(),
            bootstrap: bootstrap.to_string(),
            name: name.to_string(),
            env,
            restarts: 0,
        }
    }

    fn start(&mut self) -> Result<()> {
        self.metrics_port = free_port()?;
        self.log = std::env::temp_dir().join(format!("tally-{}-{}-{}.log", self.service, self.name, self.metrics_port));
        let file = std::fs::File::create(&self.log)?;
        let mut command = Command::new(tally_binary()?);
        let prefix = format!("TALLY_{}__", self.service.to_uppercase());
        command
            .args([self.service])
            .args(&self.args)
            .env(format!("{prefix}BROKERS"), &self.bootstrap)
            .env(format!("{prefix}METRICS_ADDRESS"), format!("127.0.0.1:{}", self.metrics_port));
        if self.service == "metering" {
            command.env("TALLY_METERING__RATES_FILE", rates_path());
        }
        command
            .env("RUST_LOG", std::env::var("TALLY_TEST_RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into()))
            // Error messages, not backtraces, in the log tails tests print.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().with_context(|| format!("start tally {}", self.service))?);
        Ok(())
    }

    /// Starts it again, with the same settings (a supervisor's restart).
    pub fn respawn(&mut self) -> Result<()> {
        self.kill();
        self.restarts += 1;
        self.start()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop_signal(&self) {
        self.signal("-STOP");
    }

    pub fn continue_signal(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, then wait up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal("-TERM");
        let mut child = self.child.take().context("not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("metering did not exit within {timeout:?} of SIGTERM; log: {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Exited by itself (crash point, fatal error)?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET a path of its HTTP server: (status code, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
        let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string());
        Ok((status, body))
    }

    /// GET /metrics.
    pub fn metrics(&self) -> Result<String> {
        Ok(self.get("/metrics")?.1)
    }

    /// Every sample of metric `name`: (label text, value).
    pub fn metric(&self, name: &str) -> Result<Vec<(String, f64)>> {
        Ok(samples(&self.metrics()?, name))
    }
}

impl MeteringProcess {
    /// The sum of every sample of metric `name` (0 when it has none yet or
    /// the process does not answer).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metric(name).map_or(0.0, |samples| samples.iter().map(|(_, v)| v).sum())
    }
}

/// Waits until `condition` holds, checking every 100 ms, or fails after
/// `timeout` saying what it waited for: tests wait on conditions, never on
/// bare sleeps.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited {timeout:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The samples of metric `name` in a Prometheus text exposition.
pub fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

impl Drop for MeteringProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes simulator messages (raw: bad ones too), in order.
pub async fn publish(bootstrap: &str, messages: &[SimMessage]) -> Result<()> {
    publish_paced(bootstrap, messages, None).await
}

/// Publishes in order, at most `per_second` messages a second if given:
/// inputs that keep arriving while a fault test kills and restarts.
pub async fn publish_paced(bootstrap: &str, messages: &[SimMessage], per_second: Option<u32>) -> Result<()> {
    publish_until(bootstrap, messages, per_second, &Paced::default()).await.map(|_| ())
}

/// How far a paced publisher got, and a way to make it stop early.
#[derive(Clone, Default)]
pub struct Paced {
    /// Messages acknowledged so far.
    pub published: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Paced {
    /// Asks the publisher to stop after the message in hand.
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Messages published so far.
    pub fn published(&self) -> usize {
        self.published.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Publishes in order at `per_second` until done or told to stop; returns
/// how many were published (all acknowledged).
pub async fn publish_until(
    bootstrap: &str,
    messages: &[SimMessage],
    per_second: Option<u32>,
    paced: &Paced,
) -> Result<usize> {
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: bootstrap.into(),
        topic: INPUTS.into(),
        ..PublisherConfig::default()
    })?;
    let mut in_flight = InFlight::new(5_000);
    let started = Instant::now();
    let mut sent: usize = 0;
    for (n, message) in messages.iter().enumerate() {
        if paced.stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if let Some(rate) = per_second {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        in_flight.push(publisher.enqueue_raw(&message.key, &message.payload).await?).await?;
        sent += 1;
        paced.published.store(sent.saturating_sub(in_flight.len()), std::sync::atomic::Ordering::Relaxed);
    }
    in_flight.finish().await?;
    publisher.flush(Duration::from_secs(30))?;
    paced.published.store(sent, std::sync::atomic::Ordering::Relaxed);
    Ok(sent)
}

/// The ledger the core computes offline from what the input topic holds.
pub struct Expected {
    pub inputs: usize,
    pub entries: BTreeMap<(AccountId, Sequence), LedgerEntry>,
    pub dead_letters: BTreeMap<(i32, i64), String>,
    pub duplicates: usize,
}

impl Expected {
    pub fn dead_letters_by_reason(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for reason in self.dead_letters.values() {
            *out.entry(reason.clone()).or_default() += 1;
        }
        out
    }
}

/// `published`: how many input messages the test wrote (the reader waits
/// until it sees them all).
pub fn expected(bootstrap: &str, published: usize) -> Result<Expected> {
    let records = read_topic_at_least(bootstrap, INPUTS, published, Duration::from_secs(120))?;
    Ok(expected_of(&records))
}

/// The ledger the core computes from these input records, one ledger per
/// partition, as metering applies them.
pub fn expected_of(records: &[tally_testkit::Record]) -> Expected {
    let rates = rates();
    let mut ledgers: BTreeMap<i32, Ledger> = BTreeMap::new();
    let mut out =
        Expected { inputs: records.len(), entries: BTreeMap::new(), dead_letters: BTreeMap::new(), duplicates: 0 };
    for record in records {
        let ledger =
            ledgers.entry(record.partition).or_insert_with(|| Ledger::new(rates.clone(), LedgerConfig::default()));
        let source = SourceOffset { topic: INPUTS.into(), partition: record.partition, offset: record.offset };
        match step(ledger, record.key.as_deref(), record.payload.as_deref(), record.timestamp, &source, Epoch(0)) {
            Step::Entry { entry, .. } => {
                out.entries.insert((entry.account_id.clone(), entry.sequence), entry.content());
            }
            Step::Duplicate { .. } => out.duplicates += 1,
            Step::DeadLetter { letter, .. } => {
                out.dead_letters.insert((record.partition, record.offset), letter.reason);
            }
        }
    }
    out
}

/// What the broker holds, read under the fence.
pub struct Actual {
    /// Counted entries, in log order per partition.
    pub entries: Vec<LedgerEntry>,
    /// Records the fence ignored.
    pub fenced: usize,
    /// Claims seen.
    pub claims: usize,
    /// Dead letters: (partition, offset) -> reasons seen (a re-send repeats one).
    pub dead_letters: BTreeMap<(i32, i64), BTreeSet<String>>,
    pub dead_letter_records: usize,
    pub dead_letters_intact: bool,
    pub alerts: usize,
}

pub fn actual(bootstrap: &str, with_dead_letters: bool) -> Result<Actual> {
    let codec = Codec::global();
    let mut out = Actual {
        entries: Vec::new(),
        fenced: 0,
        claims: 0,
        dead_letters: BTreeMap::new(),
        dead_letter_records: 0,
        dead_letters_intact: true,
        alerts: 0,
    };
    // The one fenced reader every reader of the ledger uses.
    let mut readers: BTreeMap<i32, FencedReader> = BTreeMap::new();
    for record in read_topic(bootstrap, LEDGER, Duration::from_secs(120))? {
        let reader = readers.entry(record.partition).or_insert_with(|| FencedReader::new(record.partition));
        match reader.read(record.offset, record.payload.as_deref().unwrap_or_default())? {
            LedgerRecord::Entry(entry) => out.entries.push(entry),
            LedgerRecord::Fenced(_) => out.fenced += 1,
            LedgerRecord::Claim { .. } => out.claims += 1,
            LedgerRecord::Progress(_) => {}
        }
    }
    if with_dead_letters {
        for record in read_topic(bootstrap, DEAD_LETTERS, Duration::from_secs(120))? {
            out.dead_letter_records += 1;
            let Record::DeadLetter(letter) = codec.decode_any(record.payload.as_deref().unwrap_or_default())? else {
                bail!("not a dead letter in {DEAD_LETTERS}");
            };
            out.dead_letters_intact &= letter.source.topic == INPUTS && letter.source.partition == record.partition;
            out.dead_letters.entry((letter.source.partition, letter.source.offset)).or_default().insert(letter.reason);
        }
    }
    Ok(out)
}

/// The figures every fault run prints (RELIABILITY.md).
#[derive(Debug, Default)]
pub struct Report {
    pub inputs: usize,
    pub expected_entries: usize,
    pub distinct_entries: usize,
    pub lost: usize,
    pub doubled: usize,
    pub conflicting: usize,
    pub mismatched: usize,
    pub extra: usize,
    pub gaps: usize,
    pub fenced: usize,
    pub claims: usize,
    pub dead_letters_expected: BTreeMap<String, usize>,
    pub dead_letters_actual: BTreeMap<String, usize>,
    pub dead_letters_wrong: usize,
    /// A few lost entries' input coordinates, for diagnosis.
    pub lost_examples: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.conflicting == 0
            && self.mismatched == 0
            && self.extra == 0
            && self.gaps == 0
            && self.dead_letters_wrong == 0
            && self.dead_letters_expected == self.dead_letters_actual
    }

    pub fn print(&self, title: &str) {
        eprintln!(
            "[{title}] inputs {} | entries expected {} distinct {} | lost {} doubled {} conflicting {} mismatched {} extra {} gaps {} | fenced {} claims {}\n[{title}] dead letters expected {:?}\n[{title}] dead letters actual   {:?} (wrong {})",
            self.inputs,
            self.expected_entries,
            self.distinct_entries,
            self.lost,
            self.doubled,
            self.conflicting,
            self.mismatched,
            self.extra,
            self.gaps,
            self.fenced,
            self.claims,
            self.dead_letters_expected,
            self.dead_letters_actual,
            self.dead_letters_wrong,
        );
        if !self.lost_examples.is_empty() {
            eprintln!("[{title}] lost, first by input coordinates: {}", self.lost_examples.join(", "));
        }
    }
}

/// Compares what the broker holds with the expected ledger.
pub fn compare(expected: &Expected, actual: &Actual) -> Report {
    let mut report = Report {
        inputs: expected.inputs,
        expected_entries: expected.entries.len(),
        fenced: actual.fenced,
        claims: actual.claims,
        dead_letters_expected: expected.dead_letters_by_reason(),
        ..Report::default()
    };
    // Distinct (account, sequence), with every content seen.
    let mut by_key: BTreeMap<(AccountId, Sequence), Vec<LedgerEntry>> = BTreeMap::new();
    for entry in &actual.entries {
        let contents = by_key.entry((entry.account_id.clone(), entry.sequence)).or_default();
        let content = entry.content();
        if !contents.contains(&content) {
            contents.push(content);
        }
    }
    report.distinct_entries = by_key.len();
    let mut input_keys: BTreeMap<uuid::Uuid, BTreeSet<(AccountId, Sequence)>> = BTreeMap::new();
    for (key, contents) in &by_key {
        if contents.len() > 1 {
            report.conflicting += 1;
        }
        for content in contents {
            input_keys.entry(content.input_id).or_default().insert(key.clone());
        }
        match expected.entries.get(key) {
            None => report.extra += 1,
            Some(want) => {
                if contents.len() == 1 && &contents[0] != want {
                    report.mismatched += 1;
                }
            }
        }
    }
    report.doubled = input_keys.values().filter(|keys| keys.len() > 1).count();
    let lost: Vec<&LedgerEntry> =
        expected.entries.iter().filter(|(k, _)| !by_key.contains_key(*k)).map(|(_, e)| e).collect();
    report.lost = lost.len();
    let mut lost_sources: Vec<(i32, i64, &str, Sequence)> =
        lost.iter().map(|e| (e.source.partition, e.source.offset, e.account_id.as_str(), e.sequence)).collect();
    lost_sources.sort();
    report.lost_examples =
        lost_sources.iter().take(12).map(|(p, o, a, s)| format!("input {p}/{o} -> {a}#{s}")).collect();
    let mut sequences: BTreeMap<&str, Vec<Sequence>> = BTreeMap::new();
    for (account, sequence) in by_key.keys() {
        sequences.entry(account.as_str()).or_default().push(*sequence);
    }
    report.gaps = sequences.values().filter(|s| s.iter().enumerate().any(|(i, seq)| seq.0 != i as i64 + 1)).count();
    for (coordinates, reasons) in &actual.dead_letters {
        match expected.dead_letters.get(coordinates) {
            Some(reason) if reasons.len() == 1 && reasons.contains(reason) => {
                *report.dead_letters_actual.entry(reason.clone()).or_default() += 1;
            }
            _ => report.dead_letters_wrong += 1,
        }
    }
    if !actual.dead_letters_intact {
        report.dead_letters_wrong += 1;
    }
    report
}

/// Polls until the broker holds at least the expected entries and dead
/// letters, or the timeout passes. Returns the last reading.
pub fn wait_for_ledger(bootstrap: &str, expected: &Expected, timeout: Duration) -> Result<Actual> {
    wait_for_ledger_supervising(bootstrap, expected, timeout, &mut [])
}

/// Like [`wait_for_ledger`], restarting each of `processes` whenever it
/// exits, as a supervisor (systemd, Kubernetes) would: the service exits by
/// design when it finds itself superseded, cannot deliver or sees a
/// partition stall. And, as a liveness probe would, it restarts them all
/// when no ledger output appears for 45 s while inputs are outstanding.
pub fn wait_for_ledger_supervising(
    bootstrap: &str,
    expected: &Expected,
    timeout: Duration,
    processes: &mut [&mut MeteringProcess],
) -> Result<Actual> {
    let deadline = Instant::now() + timeout;
    let stall_limit = Duration::from_secs(45);
    let mut progress = (0usize, Instant::now());
    loop {
        for process in processes.iter_mut() {
            if let Some(status) = process.exited() {
                eprintln!(
                    "[supervisor] {} exited ({status}), restarting it; its last words:\n{}",
                    process.name,
                    process.log_tail()
                );
                process.respawn()?;
                progress.1 = Instant::now();
            }
        }
        if !processes.is_empty() && progress.1.elapsed() > stall_limit {
            for process in processes.iter_mut() {
                eprintln!(
                    "[supervisor] no ledger progress for {stall_limit:?}: kill -9 and restart {}; last words:\n{}",
                    process.name,
                    process.log_tail()
                );
                process.respawn()?;
            }
            progress.1 = Instant::now();
        }
        let actual = actual(bootstrap, true)?;
        let distinct: BTreeSet<(&str, Sequence)> =
            actual.entries.iter().map(|e| (e.account_id.as_str(), e.sequence)).collect();
        if distinct.len() >= expected.entries.len() && actual.dead_letters.len() >= expected.dead_letters.len() {
            return Ok(actual);
        }
        let done = distinct.len() + actual.dead_letters.len();
        if done > progress.0 {
            progress = (done, Instant::now());
        }
        if Instant::now() > deadline {
            eprintln!(
                "timed out waiting: {} of {} entries, {} of {} dead letters",
                distinct.len(),
                expected.entries.len(),
                actual.dead_letters.len(),
                expected.dead_letters.len()
            );
            return Ok(actual);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Waits until every input partition in `0..partitions` has progressed
/// past where `process` first reported it (its next input offset, from
/// `/metrics`), or `bound` passes: how long a started instance takes to
/// consume every partition again while inputs keep arriving. `None` if it
/// did not within the bound.
pub fn time_to_progress_everywhere(process: &MeteringProcess, partitions: i32, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut first: BTreeMap<String, f64> = BTreeMap::new();
    let mut moved: BTreeSet<String> = BTreeSet::new();
    while started.elapsed() < bound {
        for (labels, offset) in process.metric("tally_metering_partition_input_offset").unwrap_or_default() {
            let seen = *first.entry(labels.clone()).or_insert(offset);
            if offset > seen {
                moved.insert(labels);
            }
        }
        if moved.len() as i32 >= partitions {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
