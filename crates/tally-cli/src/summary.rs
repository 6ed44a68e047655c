//! `tally summary`: balances and analytics read straight from the ledger
//! topic (applying the zombie fence), plus dead letters and alerts. What an
//! operator's dashboard shows, in a terminal.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{Context, Result};
use rust_decimal::RoundingStrategy;
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    names::topics,
    AccountId, Codec, Credits, Dollars, EntryStatus, EntryType, LedgerEntry, Message as Record, PlanTier,
};
use tally_service::kafka::{partition_count, read_partition, Until};

/// Options of `tally summary`.
#[derive(clap::Args)]
pub struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Ledger topic.
    #[arg(long, default_value = topics::LEDGER)]
    ledger_topic: String,
    /// Dead-letter topic.
    #[arg(long, default_value = topics::DEAD_LETTERS)]
    dead_letter_topic: String,
    /// Alerts topic.
    #[arg(long, default_value = topics::ALERTS)]
    alerts_topic: String,
    /// Accounts listed (largest balance first); the totals cover all.
    #[arg(long, default_value_t = 20)]
    accounts: usize,
}

#[derive(Default)]
struct AccountView {
    tier: Option<PlanTier>,
    balance: Credits,
    paused: bool,
    deleted: bool,
    entries: u64,
    last: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Default)]
struct Usage {
    jobs: u64,
    failed: u64,
    credits: Credits,
    dollars: Dollars,
}

/// Reads every record of a topic, partition by partition.
fn read_all(brokers: &str, topic: &str, mut visit: impl FnMut(i32, i64, &[u8]) -> Result<()>) -> Result<()> {
    let partitions = partition_count(brokers, topic, Duration::from_secs(10))
        .with_context(|| format!("cannot reach the broker at {brokers}"))?
        .with_context(|| format!("topic {topic} does not exist yet (has metering run?)"))?;
    for partition in 0..partitions {
        read_partition(brokers, topic, partition, 0, Until::End, Duration::from_secs(120), |m| {
            use rdkafka::Message;
            visit(partition, m.offset(), m.payload().unwrap_or_default())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let codec = Codec::global();
    let mut accounts: BTreeMap<AccountId, AccountView> = BTreeMap::new();
    let mut usage: BTreeMap<(String, String), Usage> = BTreeMap::new();
    let mut by_day: BTreeMap<chrono::NaiveDate, [u64; 3]> = BTreeMap::new();
    let (mut added, mut consumed, mut forfeited) = (Credits::ZERO, Credits::ZERO, Credits::ZERO);
    let (mut dollars_added, mut dollars_consumed) = (Dollars::ZERO, Dollars::ZERO);
    let mut fenced = 0u64;
    // One fenced reader per ledger partition: what counts is what every
    // reader of the ledger counts.
    let mut readers: BTreeMap<i32, FencedReader> = BTreeMap::new();
    let mut entries: Vec<LedgerEntry> = Vec::new();
    read_all(&args.brokers, &args.ledger_topic, |partition, offset, payload| {
        let reader = readers.entry(partition).or_insert_with(|| FencedReader::new(partition));
        match reader.read(offset, payload)? {
            LedgerRecord::Entry(entry) => entries.push(entry),
            LedgerRecord::Fenced(_) => fenced += 1,
            LedgerRecord::Progress(_) | LedgerRecord::Claim { .. } => {}
        }
        Ok(())
    })?;
    for entry in &entries {
        let view = accounts.entry(entry.account_id.clone()).or_default();
        view.tier = Some(entry.tier);
        view.balance = entry.balance_after;
        view.paused = entry.paused;
        view.deleted |= entry.entry_type == EntryType::Forfeit;
        view.entries += 1;
        view.last = Some(view.last.map_or(entry.occurred_at, |l| l.max(entry.occurred_at)));
        let ok = entry.status == EntryStatus::Success;
        let day = by_day.entry(entry.occurred_at.date_naive()).or_default();
        match entry.entry_type {
            EntryType::Consume => {
                let u = usage.entry((entry.service.clone(), entry.engine.clone())).or_default();
                u.jobs += 1;
                if ok {
                    u.credits += entry.credits;
                    u.dollars += entry.dollars;
                    consumed += entry.credits;
                    dollars_consumed += entry.dollars;
                    day[0] += 1;
                } else {
                    u.failed += 1;
                    day[1] += 1;
                }
            }
            EntryType::Add => {
                added += entry.credits;
                dollars_added += entry.dollars;
                day[2] += 1;
            }
            EntryType::Forfeit => forfeited += entry.credits,
            EntryType::Open | EntryType::Update => {}
        }
    }
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    read_all(&args.brokers, &args.dead_letter_topic, |_, _, payload| {
        if let Ok(Record::DeadLetter(d)) = codec.decode_any(payload) {
            *dead.entry(d.reason).or_default() += 1;
        }
        Ok(())
    })?;
    let mut alerts: BTreeMap<String, u64> = BTreeMap::new();
    read_all(&args.brokers, &args.alerts_topic, |_, _, payload| {
        if let Ok(Record::Alert(a)) = codec.decode_any(payload) {
            *alerts.entry(format!("{:?}", a.kind)).or_default() += 1;
        }
        Ok(())
    })?;

    // To the cent, rounding down: a balance is never shown larger than it is.
    let cents = |c: Credits| format!("{:.2}", c.decimal().round_dp_with_strategy(2, RoundingStrategy::ToZero));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n== tally summary: {} ledger entries, {} accounts ({} fenced zombie records ignored)",
        entries.len(),
        accounts.len(),
        fenced
    )?;
    writeln!(out, "\nBalances (credits, to the cent), largest first:")?;
    writeln!(
        out,
        "  {:<12} {:<6} {:>12}  {:<8} {:>8}  last activity",
        "account", "tier", "balance", "status", "entries"
    )?;
    let mut listed: Vec<(&AccountId, &AccountView)> = accounts.iter().collect();
    listed.sort_by(|a, b| b.1.balance.cmp(&a.1.balance).then(a.0.cmp(b.0)));
    for (id, view) in listed.iter().take(args.accounts) {
        let status = if view.deleted {
            "deleted"
        } else if view.paused {
            "PAUSED"
        } else {
            "active"
        };
        let tier = view.tier.map_or("-", PlanTier::name);
        let last = view.last.map_or("-".to_string(), |l| l.format("%Y-%m-%d %H:%M").to_string());
        writeln!(
            out,
            "  {:<12} {:<6} {:>12}  {:<8} {:>8}  {last}",
            id,
            tier,
            cents(view.balance),
            status,
            view.entries
        )?;
    }
    if accounts.len() > args.accounts {
        writeln!(out, "  ... {} more", accounts.len() - args.accounts)?;
    }
    let paused = accounts.values().filter(|v| v.paused && !v.deleted).count();
    writeln!(out, "  paused accounts (AI features stopped until a purchase): {paused}")?;

    writeln!(out, "\nCredits by service and engine:")?;
    writeln!(
        out,
        "  {:<20} {:<15} {:>8} {:>7} {:>13} {:>11}",
        "service", "engine", "jobs", "failed", "credits", "dollars"
    )?;
    for ((service, engine), u) in &usage {
        writeln!(
            out,
            "  {:<20} {:<15} {:>8} {:>7} {:>13} {:>11}",
            service,
            engine,
            u.jobs,
            u.failed,
            cents(u.credits),
            u.dollars
        )?;
    }
    writeln!(out, "\nActivity by day (consume ok / consume failed / add):")?;
    for (day, [ok, failed, add]) in &by_day {
        writeln!(out, "  {day}  {ok:>8} {failed:>8} {add:>6}")?;
    }
    writeln!(out, "\nDead letters by reason:")?;
    for (reason, count) in &dead {
        writeln!(out, "  {reason:<22} {count:>8}")?;
    }
    writeln!(out, "\nAlerts by kind:")?;
    for (kind, count) in &alerts {
        writeln!(out, "  {kind:<22} {count:>8}")?;
    }
    let balance_sum: Credits = accounts.values().map(|v| v.balance).sum();
    let conserved = balance_sum == added - consumed - forfeited;
    writeln!(
        out,
        "\nTotals: added {} credits (${}), consumed {} credits (${}), forfeited {}",
        cents(added),
        dollars_added,
        cents(consumed),
        dollars_consumed,
        cents(forfeited)
    )?;
    writeln!(
        out,
        "Conservation: sum of balances {} {} added - consumed - forfeited {}",
        cents(balance_sum),
        if conserved { "==" } else { "!=" },
        cents(added - consumed - forfeited)
    )?;
    anyhow::ensure!(conserved, "the ledger does not conserve credits: investigate with tally reconcile");
    Ok(())
}
