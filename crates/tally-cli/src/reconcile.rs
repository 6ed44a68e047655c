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
//! Memory: the range's tallies (day x account x service), plus, one
//! partition at a time, about 60 bytes per applied input.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{Context, Result};
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    names::topics,
    AccountId,
};
use tally_events::{Codec, DeadLetter};
use tally_ledger::{
    coverage::{Classified, Coverage},
    invariants::{self, Previous},
};
use tally_service::kafka::{partition_count, read_partition, Until};
use tally_warehouse::{
    finance::{self, Chain, DayBasis},
    reconcile::{self, Tallies},
    rollups,
};

use crate::warehouse::{Connection, Days};

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
    let ledger = read_ledger(args, from, to, report)?;
    report.ledger_keys = ledger.len();
    let mut chain = Chain::default();
    for date in from.iter_days().take_while(|d| *d <= to) {
        let clickhouse = reconcile::clickhouse_day(&warehouse, date)
            .await
            .with_context(|| format!("reading {date} from ClickHouse"))?;
        report.clickhouse_keys += clickhouse.len();
        let ledger_day: Tallies =
            ledger.iter().filter(|(k, _)| k.day == date).map(|(k, v)| (k.clone(), v.clone())).collect();
        report.differences.extend(reconcile::compare(&ledger_day, &clickhouse));
        let (accounts, _) = finance::read_day(&warehouse, date, "UTC", DayBasis::Booked).await?;
        let looked_up = finance::balances_after(&warehouse, &chain.unknown_predecessors(&accounts)).await?;
        report.days_not_tying_out.extend(chain.check_day(&accounts, &looked_up).iter().map(|p| format!("{date}: {p}")));
        eprintln!("[reconcile] {date}: {} ledger keys, {} ClickHouse keys", ledger_day.len(), clickhouse.len());
    }
    eprintln!("[reconcile] comparing every rollup with the raw table");
    for check in rollups::verify(&warehouse).await? {
        report.rollups_checked += 1;
        if !check.equal {
            report
                .rollups_unequal
                .push(format!("{} ({} rows, {} from raw)", check.table, check.rows, check.expected_rows));
        }
    }
    Ok(())
}

/// Every counted entry of the ledger topic, through the fenced reader:
/// the range's tallies, the ledger's own invariants per account, and, per
/// partition, inputs against debits.
fn read_ledger(args: &Args, from: chrono::NaiveDate, to: chrono::NaiveDate, report: &mut Report) -> Result<Tallies> {
    let brokers = &args.brokers;
    let topic = &args.ledger_topic;
    let partitions = partition_count(brokers, topic, Duration::from_secs(10))
        .with_context(|| format!("the broker at {brokers}"))?
        .with_context(|| format!("topic {topic} does not exist"))?;
    let mut tallies = Tallies::new();
    let mut previous: BTreeMap<AccountId, Previous> = BTreeMap::new();
    for partition in 0..partitions {
        let mut reader = FencedReader::new(partition);
        let mut coverage = Coverage::new(&args.inputs_topic, partition);
        let mut read = 0u64;
        read_partition(brokers, topic, partition, 0, Until::End, READ_TIMEOUT, |m| {
            use rdkafka::Message;
            read += 1;
            match reader.read(m.offset(), m.payload().unwrap_or_default())? {
                LedgerRecord::Entry(entry) => {
                    report.ledger_entries += 1;
                    coverage.entry(&entry);
                    let before = previous.get(&entry.account_id).copied().unwrap_or(Previous::START);
                    if let Err(violation) = invariants::check_entry(&before, &entry) {
                        report.ledger_violations.push(violation.to_string());
                    }
                    previous.insert(entry.account_id.clone(), Previous::after(&entry));
                    let day = reconcile::key_of(&entry).day;
                    if day >= from && day <= to {
                        report.ledger_entries_in_range += 1;
                        reconcile::add(&mut tallies, &entry);
                    }
                }
                LedgerRecord::Progress(marker) => coverage.progress(&marker),
                LedgerRecord::Claim { .. } | LedgerRecord::Fenced(_) => {}
            }
            Ok::<(), tally_events::ledger_reader::LedgerReadError>(())
        })
        .map_err(|e| anyhow::anyhow!("reading ledger partition {partition}: {e}"))?;
        eprintln!("[reconcile] ledger partition {partition}/{partitions}: {read} records read");
        inputs_against_debits(args, coverage, report)?;
    }
    Ok(tallies)
}

/// How long one partition's read may take before reconcile gives up
/// ("could not check").
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The dead letters, then the inputs below the ledger's watermark, of one
/// partition (`tally_ledger::coverage`).
fn inputs_against_debits(args: &Args, mut coverage: Coverage, report: &mut Report) -> Result<()> {
    use rdkafka::Message;
    let (brokers, partition) = (&args.brokers, coverage.partition());
    let codec = Codec::global();
    let letters = &args.dead_letter_topic;
    let mut unreadable = Vec::new();
    read_partition(brokers, letters, partition, 0, Until::End, READ_TIMEOUT, |m| {
        match codec.decode::<DeadLetter>(m.payload().unwrap_or_default()) {
            Ok(letter) => coverage.dead_letter(&letter.source.topic, letter.source.partition, letter.source.offset),
            Err(e) => unreadable.push(format!("{letters} {partition}/{}: not a dead letter: {e}", m.offset())),
        }
        Ok::<(), std::convert::Infallible>(())
    })
    .map_err(|e| anyhow::anyhow!("reading dead-letter partition {partition}: {e}"))?;
    report.input_problems.extend(unreadable);
    let watermark = coverage.watermark();
    let mut read = 0u64;
    if watermark > 0 {
        read_partition(brokers, &args.inputs_topic, partition, 0, Until::Offset(watermark - 1), READ_TIMEOUT, |m| {
            read += 1;
            let payload = m.payload().unwrap_or_default();
            coverage.input(m.offset(), || codec.decode_input(payload).map_err(|e| e.to_string()));
            Ok::<(), std::convert::Infallible>(())
        })
        .map_err(|e| anyhow::anyhow!("reading input partition {partition}: {e}"))?;
    }
    let (classified, problems) = coverage.finish();
    eprintln!(
        "[reconcile] input partition {partition}: {read} inputs below the ledger's watermark {watermark}: \
         {} applied, {} duplicates, {} dead-lettered, {} problems",
        classified.applied,
        classified.duplicates,
        classified.dead_lettered,
        problems.len()
    );
    report.inputs_read += read;
    let total = &mut report.inputs;
    total.applied += classified.applied;
    total.duplicates += classified.duplicates;
    total.dead_lettered += classified.dead_lettered;
    total.dead_letter_repeats += classified.dead_letter_repeats;
    report.input_problems.extend(problems.iter().map(ToString::to_string));
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
