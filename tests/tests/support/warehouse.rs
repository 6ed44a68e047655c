//! What the aggregator tests compare: the fenced ledger in the topic (the
#![allow(dead_code)] // each test file uses a part
//! source of truth, read by the one fenced reader) against the raw table
//! in ClickHouse, and every rollup against the raw table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rust_decimal::Decimal;
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    LedgerEntry,
};
use tally_testkit::{read_topic, tally_binary, ClickHouse};
use tally_warehouse::{Warehouse, WarehouseConfig};

use tally_events::names::topics::LEDGER;
#[allow(unused_imports)] // used by the aggregator tests only
pub use tally_events::names::topics::LEDGER_DEAD_LETTERS;

/// Runs `tally migrate` against `clickhouse`.
pub fn migrate(clickhouse: &ClickHouse) -> Result<()> {
    let out = std::process::Command::new(tally_binary()?)
        .args(["migrate", "--clickhouse-url", &clickhouse.url()])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    if !out.status.success() {
        bail!("tally migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A connection for checks made from the test.
pub fn warehouse(clickhouse: &ClickHouse) -> Warehouse {
    Warehouse::new(WarehouseConfig {
        url: clickhouse.url(),
        timeout: Duration::from_secs(60),
        ..WarehouseConfig::default()
    })
}

/// The counted entries of the ledger topic with their coordinates, and
/// the entries a reader must store: the first of each (account, sequence).
pub fn fenced_ledger(bootstrap: &str) -> Result<Vec<(i32, i64, LedgerEntry)>> {
    let mut readers: BTreeMap<i32, FencedReader> = BTreeMap::new();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for record in read_topic(bootstrap, LEDGER, Duration::from_secs(120))? {
        let reader = readers.entry(record.partition).or_insert_with(|| FencedReader::new(record.partition));
        // Records that do not decode are the aggregator's to dead-letter.
        if let Ok(LedgerRecord::Entry(entry)) =
            reader.read(record.offset, record.payload.as_deref().unwrap_or_default())
        {
            if seen.insert((entry.account_id.clone(), entry.sequence)) {
                out.push((record.partition, record.offset, entry));
            }
        }
    }
    Ok(out)
}

/// The raw table against the fenced ledger, and the rollups against raw.
#[derive(Debug, Default)]
pub struct Equality {
    pub expected: usize,
    pub rows: usize,
    pub missing: usize,
    pub doubled: usize,
    pub mismatched: usize,
    pub extra: usize,
    pub rollups_unequal: Vec<String>,
    pub examples: Vec<String>,
}

impl Equality {
    pub fn holds(&self) -> bool {
        self.missing == 0
            && self.doubled == 0
            && self.mismatched == 0
            && self.extra == 0
            && self.rollups_unequal.is_empty()
    }

    pub fn print(&self, title: &str) {
        eprintln!(
            "[{title}] ledger entries {} | ClickHouse rows {} | missing {} doubled {} mismatched {} extra {} | rollups unequal {:?}",
            self.expected, self.rows, self.missing, self.doubled, self.mismatched, self.extra, self.rollups_unequal
        );
        if !self.examples.is_empty() {
            eprintln!("[{title}] first differences: {}", self.examples.join("; "));
        }
    }
}

fn content(entry: &LedgerEntry) -> (String, String, i64, String, String, Decimal, Decimal, Decimal, i64) {
    (
        entry.entry_id.to_string(),
        entry.account_id.to_string(),
        entry.sequence.0,
        entry.entry_type.name().to_string(),
        format!("{:?}", entry.status),
        entry.credits.decimal().normalize(),
        entry.dollars.decimal().normalize(),
        entry.balance_after.decimal().normalize(),
        entry.occurred_at.timestamp_millis(),
    )
}

/// Compares ClickHouse with `ledger` (from [`fenced_ledger`]).
pub async fn equality(clickhouse: &ClickHouse, ledger: &[(i32, i64, LedgerEntry)]) -> Result<Equality> {
    let text = clickhouse.query(
        "SELECT ledger_partition, ledger_offset, toString(entry_id), account_id, sequence, toString(entry_type), \
         toString(status), toString(credits), toString(dollars), toString(balance_after), \
         toInt64(toUInt32(occurred_at)) * 1000 + occurred_ms FROM tally.ledger_entries FORMAT TSV",
    )?;
    let mut rows: BTreeMap<(i32, i64), Vec<_>> = BTreeMap::new();
    let mut keys: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut count = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 11 {
            bail!("unexpected row {line:?}");
        }
        count += 1;
        let d = |s: &str| s.parse::<Decimal>().map(|v| v.normalize()).context("decimal");
        let row = (
            f[2].to_string(),
            f[3].to_string(),
            f[4].parse::<i64>()?,
            f[5].to_string(),
            f[6].to_string(),
            d(f[7])?,
            d(f[8])?,
            d(f[9])?,
            f[10].parse::<i64>()?,
        );
        *keys.entry((row.1.clone(), row.2)).or_default() += 1;
        rows.entry((f[0].parse()?, f[1].parse()?)).or_default().push(row);
    }
    let mut eq = Equality { expected: ledger.len(), rows: count, ..Equality::default() };
    eq.doubled = keys.values().filter(|n| **n > 1).count() + rows.values().filter(|r| r.len() > 1).count();
    let mut expected_at = BTreeSet::new();
    for (partition, offset, entry) in ledger {
        expected_at.insert((*partition, *offset));
        match rows.get(&(*partition, *offset)) {
            None => {
                eq.missing += 1;
                if eq.examples.len() < 8 {
                    eq.examples.push(format!("missing {partition}/{offset} {}#{}", entry.account_id, entry.sequence.0));
                }
            }
            Some(found) if found.iter().any(|r| *r != content(entry)) => {
                eq.mismatched += 1;
                if eq.examples.len() < 8 {
                    eq.examples.push(format!(
                        "mismatched {partition}/{offset}: {:?} vs {:?}",
                        found[0],
                        content(entry)
                    ));
                }
            }
            Some(_) => {}
        }
    }
    eq.extra = rows.keys().filter(|k| !expected_at.contains(k)).count();
    for check in tally_warehouse::rollups::verify(&warehouse(clickhouse)).await? {
        if !check.equal {
            eq.rollups_unequal
                .push(format!("{} ({} rows stored, from {} raw rows)", check.table, check.rows, check.raw_rows));
        }
    }
    Ok(eq)
}

/// Waits until ClickHouse equals the fenced ledger (or `timeout`); the
/// last comparison either way.
pub async fn wait_for_equality(clickhouse: &ClickHouse, bootstrap: &str, timeout: Duration) -> Result<Equality> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let ledger = fenced_ledger(bootstrap)?;
        let eq = equality(clickhouse, &ledger).await?;
        if eq.holds() || std::time::Instant::now() > deadline {
            return Ok(eq);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
