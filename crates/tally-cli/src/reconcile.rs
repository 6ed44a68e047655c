//! `tally reconcile`: the ledger topic (read through the one fenced reader)
//! against ClickHouse's raw table and every rollup, for booked UTC days.
//!
//! Checks: per day, account and service, entry counts, credit and dollar
//! sums, last sequence and last balance equal on both sides
//! (`tally_warehouse::reconcile`); the ledger's own per-account invariants
//! (gapless sequences, balance chain, booking) over every entry; the raw
//! table's days tie out and chain (`tally_warehouse::finance`); every
//! rollup equals the raw table (`tally_warehouse::rollups::verify`); and
//! inputs against debits: every input offset below what the ledger covers
//! is applied once, a duplicate, or dead-lettered (`tally_ledger::coverage`:
//! the ledger partition, then its dead letters, then the input partition).
//! Prints a report, writes it as JSON with `--json`, writes its result as
//! Prometheus text with `--metrics-file` (for node_exporter's textfile
//! collector), and exits 0 when all agree, 1 on any mismatch, 2 when it
//! could not check (ClickHouse down, ledger unreadable).
//!
//! The ledger side (ledger, dead-letter and input partitions, `--threads`
//! partitions at a time) and the ClickHouse side (day by day, then the
//! rollups) run at once; the tallies are compared when both are done.
//! Memory: the range's tallies (day x account x service) twice, plus, per
//! partition being read, its accounts and about 60 bytes per applied input.

use std::{io::Write, time::Duration};

use anyhow::{Context, Result};
use chrono::Datelike;
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    names::topics,
};
use tally_events::{Codec, DeadLetter};
use tally_ledger::{
    coverage::{Classified, Coverage},
    invariants::{self, Previous},
};
use tally_service::kafka::{partition_count, read_partition, Until};
use tally_warehouse::{
    finance::{self, Chain},
    reconcile::{self, Tallies},
    rollups,
};

use crate::warehouse::{Connection, Days};

/// When the run started, for progress lines.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A progress line on stderr, with the seconds since the run started.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!(
            "[reconcile {:>7.1}s] {}",
            STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs_f64(),
            format_args!($($arg)*)
        )
    };
}

/// Options of `tally reconcile`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Ledger topic.
    #[arg(long, default_value = topics::LEDGER)]
    ledger_topic: String,
    /// Input topic (inputs against debits).
    #[arg(long, default_value = topics::INPUTS)]
    inputs_topic: String,
    /// Metering's dead-letter topic (inputs against debits).
    #[arg(long, default_value = topics::DEAD_LETTERS)]
    dead_letter_topic: String,
    /// The booked UTC days to reconcile.
    #[command(flatten)]
    days: Days,
    /// Ledger partitions read at once (each on its own thread); default:
    /// the machine's cores.
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(2, usize::from))]
    threads: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also write the result as Prometheus text to this file (written
    /// whole, then renamed, as node_exporter's textfile collector needs).
    #[arg(long)]
    metrics_file: Option<std::path::PathBuf>,
}

/// What a run found.
#[derive(Default, serde::Serialize)]
struct Report {
    from: String,
    to: String,
    /// Counted ledger entries read (all days) and those in the range.
    ledger_entries: u64,
    ledger_entries_in_range: u64,
    clickhouse_keys: usize,
    ledger_keys: usize,
    differences: Vec<reconcile::Difference>,
    /// Ledger invariants broken (account, what).
    ledger_violations: Vec<String>,
    /// Inputs read, what they were, and every broken promise (input
    /// partition/offset, what).
    inputs_read: u64,
    inputs: Classified,
    input_problems: Vec<String>,
    /// Raw-table days that do not tie out (day: what).
    days_not_tying_out: Vec<String>,
    /// Rollups unequal to the raw table.
    rollups_unequal: Vec<String>,
    rollups_checked: usize,
    /// Why it could not check, if it could not.
    could_not_check: Option<String>,
}

impl Report {
    fn mismatches(&self) -> usize {
        self.differences.len()
            + self.ledger_violations.len()
            + self.input_problems.len()
            + self.days_not_tying_out.len()
            + self.rollups_unequal.len()
    }
}

/// Runs `tally reconcile`; exits 1 on a mismatch, 2 when it could not check.
pub async fn run(args: Args) -> Result<()> {
    STARTED.get_or_init(std::time::Instant::now);
    let (from, to) = args.days.range()?;
    let mut report = Report { from: from.to_string(), to: to.to_string(), ..Report::default() };
    if let Err(e) = check(&args, from, to, &mut report).await {
        report.could_not_check = Some(format!("{e:#}"));
    }
    print(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metrics_file {
        write_metrics(path, &report)?;
    }
    match (&report.could_not_check, report.mismatches()) {
        (Some(why), _) => {
            eprintln!("[reconcile] COULD NOT CHECK: {why}");
            std::process::exit(2)
        }
        (None, 0) => Ok(()),
        (None, n) => {
            eprintln!("[reconcile] MISMATCH: {n} differences (listed above)");
            std::process::exit(1)
        }
    }
}

async fn check(args: &Args, from: chrono::NaiveDate, to: chrono::NaiveDate, report: &mut Report) -> Result<()> {
    let warehouse = args.connection.warehouse();
    // ClickHouse first: when it is down, say so before reading the ledger.
    warehouse.version().await.with_context(|| format!("ClickHouse at {}", args.connection.clickhouse_url))?;
    // The ledger side (broker reads and decoding, on threads) and the
    // ClickHouse side (queries the server answers) run at once.
    let kafka = Kafka {
        brokers: args.brokers.clone(),
        ledger: args.ledger_topic.clone(),
        inputs: args.inputs_topic.clone(),
        dead_letters: args.dead_letter_topic.clone(),
    };
    let threads = args.threads.max(1);
    let ledger_side = tokio::task::spawn_blocking(move || read_ledger(&kafka, threads, from, to));
    let (ledger, clickhouse) = tokio::try_join!(
        async { ledger_side.await.context("the ledger reader panicked")? },
        clickhouse_side(&warehouse, from, to, report)
    )?;
    report.ledger_entries = ledger.entries;
    report.ledger_entries_in_range = ledger.in_range;
    report.ledger_violations = ledger.violations;
    report.inputs_read = ledger.inputs_read;
    report.inputs = ledger.inputs;
    report.input_problems = ledger.input_problems;
    progress!("comparing the ledger partitions' tallies, walked as one, with {} ClickHouse keys", clickhouse.len());
    let mut walk = reconcile::merged(&ledger.parts);
    report.differences = reconcile::compare(walk.by_ref(), reconcile::walk(&clickhouse));
    report.ledger_keys = walk.yielded();
    progress!("compared {} ledger keys: {} differences", report.ledger_keys, report.differences.len());
    Ok(())
}

/// The ClickHouse side: the range's tallies of the raw table, day by day;
/// the raw days' tie-out and chain; every rollup against raw.
async fn clickhouse_side(
    warehouse: &tally_warehouse::Warehouse,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    report: &mut Report,
) -> Result<Tallies> {
    let mut tallies = Tallies::new();
    let mut chain = Chain::default();
    // A month at a time: one scan each, answers bounded by a month.
    let mut first = from;
    while first <= to {
        let next_month =
            chrono::NaiveDate::from_ymd_opt(first.year() + i32::from(first.month() == 12), first.month() % 12 + 1, 1)
                .context("a date past the calendar")?;
        let last = to.min(next_month - chrono::TimeDelta::days(1));
        let mut month = reconcile::clickhouse_days(warehouse, first, last)
            .await
            .with_context(|| format!("reading {first} to {last} from ClickHouse"))?;
        let keys = month.len();
        report.clickhouse_keys += keys;
        // Later days than any before: still sorted.
        tallies.append(&mut month);
        let days = finance::read_account_days(warehouse, first, last).await?;
        let mut account_days = 0;
        for (date, accounts) in &days {
            account_days += accounts.len();
            let looked_up = finance::balances_after(warehouse, &chain.unknown_predecessors(accounts)).await?;
            report
                .days_not_tying_out
                .extend(chain.check_day(accounts, &looked_up).iter().map(|p| format!("{date}: {p}")));
        }
        progress!("ClickHouse {first} to {last}: {keys} day x account x service keys, {account_days} account days");
        first = next_month;
    }
    progress!("ClickHouse: comparing every rollup with the raw table");
    for check in rollups::verify(warehouse).await? {
        report.rollups_checked += 1;
        if !check.equal {
            report
                .rollups_unequal
                .push(format!("{} ({} rows stored, from {} raw rows)", check.table, check.rows, check.raw_rows));
        }
    }
    progress!("ClickHouse: {} rollups checked", report.rollups_checked);
    Ok(tallies)
}

/// Where the ledger side reads.
#[derive(Clone)]
struct Kafka {
    brokers: String,
    ledger: String,
    inputs: String,
    dead_letters: String,
}

/// What the ledger side found (of one partition, or merged).
#[derive(Default)]
struct LedgerSide {
    /// Each partition's tallies, in partition order: compared walked as
    /// one ([`reconcile::merged`]), never merged into one vector.
    parts: Vec<Tallies>,
    entries: u64,
    in_range: u64,
    violations: Vec<String>,
    inputs_read: u64,
    inputs: Classified,
    input_problems: Vec<String>,
}

impl LedgerSide {
    /// Adds `other` in, its tallies as one more part.
    fn merge(&mut self, other: LedgerSide) {
        self.parts.extend(other.parts);
        self.entries += other.entries;
        self.in_range += other.in_range;
        self.violations.extend(other.violations);
        self.inputs_read += other.inputs_read;
        let (total, one) = (&mut self.inputs, other.inputs);
        total.applied += one.applied;
        total.duplicates += one.duplicates;
        total.dead_lettered += one.dead_lettered;
        total.dead_letter_repeats += one.dead_letter_repeats;
        self.input_problems.extend(other.input_problems);
    }
}

/// Every partition of the ledger topic, `threads` at a time: merged in
/// partition order, so the report does not depend on which finished first.
fn read_ledger(kafka: &Kafka, threads: usize, from: chrono::NaiveDate, to: chrono::NaiveDate) -> Result<LedgerSide> {
    let (brokers, topic) = (&kafka.brokers, &kafka.ledger);
    let partitions = partition_count(brokers, topic, Duration::from_secs(10))
        .with_context(|| format!("the broker at {brokers}"))?
        .with_context(|| format!("topic {topic} does not exist"))?;
    let next = std::sync::atomic::AtomicI32::new(0);
    let mut done: Vec<(i32, Result<LedgerSide>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(partitions as usize))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let partition = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if partition >= partitions {
                            return out;
                        }
                        out.push((partition, read_partition_side(kafka, partition, partitions, from, to)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    if done.len() != partitions as usize {
        anyhow::bail!("a ledger reader thread panicked");
    }
    done.sort_by_key(|(partition, _)| *partition);
    let mut side = LedgerSide::default();
    for (_, one) in done {
        side.merge(one?);
    }
    let keys: usize = side.parts.iter().map(Vec::len).sum();
    progress!("ledger side done: {} counted entries, {keys} partition x key tallies in the range", side.entries);
    Ok(side)
}

/// One ledger partition through the fenced reader: the range's tallies,
/// the ledger's own invariants per account, then inputs against debits.
fn read_partition_side(
    kafka: &Kafka,
    partition: i32,
    partitions: i32,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> Result<LedgerSide> {
    let mut side = LedgerSide::default();
    let mut tallier = reconcile::Tallier::default();
    // Per account number (the coverage check's): what its previous entry
    // left, for the ledger's invariants.
    let mut previous: Vec<Previous> = Vec::new();
    let mut reader = FencedReader::new(partition);
    let mut coverage = Coverage::new(&kafka.inputs, partition);
    let mut read = 0u64;
    read_partition(&kafka.brokers, &kafka.ledger, partition, 0, Until::End, READ_TIMEOUT, |m| {
        use rdkafka::Message;
        read += 1;
        match reader.read(m.offset(), m.payload().unwrap_or_default())? {
            LedgerRecord::Entry(entry) => {
                side.entries += 1;
                let account = coverage.entry(&entry);
                let index = account as usize;
                if index >= previous.len() {
                    previous.resize(index + 1, Previous::START);
                }
                let check = std::mem::replace(&mut previous[index], Previous::after(&entry));
                if let Err(violation) = invariants::check_entry(&check, &entry) {
                    side.violations.push(violation.to_string());
                }
                let day = reconcile::day_of(&entry);
                if day >= from && day <= to {
                    side.in_range += 1;
                    tallier.add(account, &entry);
                }
            }
            LedgerRecord::Progress(marker) => coverage.progress(&marker),
            LedgerRecord::Claim { .. } | LedgerRecord::Fenced(_) => {}
        }
        Ok::<(), tally_events::ledger_reader::LedgerReadError>(())
    })
    .map_err(|e| anyhow::anyhow!("reading ledger partition {partition}: {e}"))?;
    side.parts.push(tallier.finish(coverage.accounts()));
    progress!("ledger partition {partition} ({partitions} in all): {read} records read");
    inputs_against_debits(kafka, coverage, &mut side)?;
    Ok(side)
}

/// How long one partition's read may take before reconcile gives up
/// ("could not check").
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The dead letters, then the inputs below the ledger's watermark, of one
/// partition (`tally_ledger::coverage`).
fn inputs_against_debits(kafka: &Kafka, mut coverage: Coverage, side: &mut LedgerSide) -> Result<()> {
    use rdkafka::Message;
    let (brokers, partition) = (&kafka.brokers, coverage.partition());
    let codec = Codec::global();
    let letters = &kafka.dead_letters;
    let mut unreadable = Vec::new();
    read_partition(brokers, letters, partition, 0, Until::End, READ_TIMEOUT, |m| {
        match codec.decode::<DeadLetter>(m.payload().unwrap_or_default()) {
            Ok(letter) => coverage.dead_letter(&letter.source.topic, letter.source.partition, letter.source.offset),
            Err(e) => unreadable.push(format!("{letters} {partition}/{}: not a dead letter: {e}", m.offset())),
        }
        Ok::<(), std::convert::Infallible>(())
    })
    .map_err(|e| anyhow::anyhow!("reading dead-letter partition {partition}: {e}"))?;
    side.input_problems.extend(unreadable);
    let watermark = coverage.watermark();
    let mut read = 0u64;
    if watermark > 0 {
        read_partition(brokers, &kafka.inputs, partition, 0, Until::Offset(watermark - 1), READ_TIMEOUT, |m| {
            read += 1;
            let payload = m.payload().unwrap_or_default();
            coverage.input(m.offset(), || codec.decode_input(payload).map_err(|e| e.to_string()));
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| anyhow::anyhow!("reading input partition {partition}: {e}"))?;
    }
    let (classified, problems) = coverage.finish();
    progress!(
        "input partition {partition}: {read} inputs below the ledger's watermark {watermark}: \
         {} applied, {} duplicates, {} dead-lettered, {} problems",
        classified.applied,
        classified.duplicates,
        classified.dead_lettered,
        problems.len()
    );
    side.inputs_read = read;
    side.inputs = classified;
    side.input_problems.extend(problems.iter().map(ToString::to_string));
    Ok(())
}

fn print(report: &Report) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "== tally reconcile, booked UTC days {} to {}", report.from, report.to)?;
    if let Some(why) = &report.could_not_check {
        writeln!(out, "could not check: {why}")?;
        return Ok(());
    }
    writeln!(
        out,
        "ledger topic: {} counted entries, {} in the range ({} day x account x service keys); ClickHouse: {} keys",
        report.ledger_entries, report.ledger_entries_in_range, report.ledger_keys, report.clickhouse_keys
    )?;
    writeln!(out, "checked: counts, credits, dollars, last sequence and balance per key; ledger invariants per account; inputs against debits; raw days tie out and chain; {} rollups against raw", report.rollups_checked)?;
    for d in &report.differences {
        writeln!(
            out,
            "DIFFERENCE {} {} {:?}: {} ledger {} vs ClickHouse {}",
            d.day, d.account_id, d.service, d.field, d.ledger, d.clickhouse
        )?;
    }
    for v in &report.ledger_violations {
        writeln!(out, "LEDGER INVARIANT {v}")?;
    }
    let inputs = &report.inputs;
    writeln!(
        out,
        "inputs against debits: {} inputs read below the ledger's watermarks: {} applied, {} duplicates, {} dead-lettered ({} repeated dead letters)",
        report.inputs_read, inputs.applied, inputs.duplicates, inputs.dead_lettered, inputs.dead_letter_repeats
    )?;
    for p in &report.input_problems {
        writeln!(out, "INPUT {p}")?;
    }
    for p in &report.days_not_tying_out {
        writeln!(out, "DOES NOT TIE OUT {p}")?;
    }
    for r in &report.rollups_unequal {
        writeln!(out, "ROLLUP UNEQUAL {r}")?;
    }
    if report.mismatches() == 0 {
        writeln!(out, "result: ledger, ClickHouse and rollups agree")?;
    }
    Ok(())
}

fn write_metrics(path: &std::path::Path, report: &Report) -> Result<()> {
    // The run's end, for "not run for a day" alerts: wall clock on purpose.
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now().timestamp();
    let text = format!(
        "# HELP tally_reconcile_last_run_timestamp_seconds Unix time the last reconciliation finished (whatever it found)\n\
         # TYPE tally_reconcile_last_run_timestamp_seconds gauge\n\
         tally_reconcile_last_run_timestamp_seconds {now}\n\
         # HELP tally_reconcile_mismatches Mismatches between the ledger and ClickHouse the last reconciliation found\n\
         # TYPE tally_reconcile_mismatches gauge\n\
         tally_reconcile_mismatches {}\n\
         # HELP tally_reconcile_could_not_check 1 if the last reconciliation could not check, else 0\n\
         # TYPE tally_reconcile_could_not_check gauge\n\
         tally_reconcile_could_not_check {}\n",
        report.mismatches(),
        u8::from(report.could_not_check.is_some())
    );
    let temporary = path.with_extension("prom.tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
