//! `tally finance daily`: finance's day (or range of days) from ClickHouse,
//! per account and platform-wide, and whether it ties out
//! (`tally_warehouse::finance`). Exits non-zero, naming the accounts, when
//! a booked day does not.

use std::{collections::BTreeMap, io::Write};

use anyhow::{bail, Context, Result};
use rust_decimal::Decimal;
use tally_warehouse::{
    finance::{self, AccountDay, Chain, Consumption, DayBasis, Problem},
    queries::Answer,
};

use crate::warehouse::{to_json, write_csv, write_table, Connection, Days};

/// `tally finance ...`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Per account: opening, added and paid, consumed per service and
    /// engine, forfeited, closing; platform totals; and the checks that
    /// each day ties out (opening + added - consumed - forfeited = closing,
    /// each day's closing = the next one's opening).
    Daily(DailyArgs),
}

/// Options of `tally finance daily`.
#[derive(clap::Args)]
pub struct DailyArgs {
    #[command(flatten)]
    connection: Connection,
    /// The days, in --tz.
    #[command(flatten)]
    days_asked: Days,
    /// IANA time zone the days are in.
    #[arg(long, default_value = "UTC")]
    tz: String,
    /// Bucket by booking time (what finance closes on) or by occurred_at
    /// (for comparison: late events break its chain by design).
    #[arg(long, default_value = "booked", value_parser = ["booked", "occurred"])]
    days: String,
    /// Output format (csv: the accounts, consumption and totals sections,
    /// each with its header, separated by a blank line).
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    format: String,
}

/// Runs `tally finance`.
pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Daily(args) => daily(args).await,
    }
}

/// Platform totals per (service, engine).
#[derive(Default)]
struct Total {
    jobs: u64,
    successes: u64,
    credits: Decimal,
    dollars: Decimal,
}

async fn daily(args: DailyArgs) -> Result<()> {
    let (from, to) = args.days_asked.range()?;
    finance::check_zone(&args.tz)?;
    let basis = if args.days == "occurred" { DayBasis::Occurred } else { DayBasis::Booked };
    let warehouse = args.connection.warehouse();
    let url = args.connection.clickhouse_url.clone();
    let mut chain = Chain::default();
    let mut account_rows = Vec::new();
    let mut consumption_rows = Vec::new();
    let mut problems: Vec<(chrono::NaiveDate, Problem)> = Vec::new();
    let mut totals: BTreeMap<(String, String), Total> = BTreeMap::new();
    let days = (to - from).num_days() + 1;
    for (n, date) in from.iter_days().take_while(|d| *d <= to).enumerate() {
        let (accounts, consumption) = finance::read_day(&warehouse, date, &args.tz, basis)
            .await
            .with_context(|| format!("reading {date} from ClickHouse at {url}"))?;
        let unknown = chain.unknown_predecessors(&accounts);
        let looked_up = finance::balances_after(&warehouse, &unknown)
            .await
            .with_context(|| format!("reading the entries before {date} from ClickHouse at {url}"))?;
        let found = chain.check_day(&accounts, &looked_up);
        eprintln!(
            "[finance] {date} ({}/{days}): {} accounts, {} consumption lines, {} problems",
            n + 1,
            accounts.len(),
            consumption.len(),
            found.len()
        );
        let flagged: Vec<&str> = found.iter().map(problem_account).collect();
        for a in &accounts {
            account_rows.push(account_row(date, a, flagged.contains(&a.account_id.as_str())));
        }
        for c in &consumption {
            let total = totals.entry((c.service.clone(), c.engine.clone())).or_default();
            total.jobs += c.jobs;
            total.successes += c.successes;
            total.credits += c.credits;
            total.dollars += c.dollars;
            consumption_rows.push(consumption_row(date, c));
        }
        problems.extend(found.into_iter().map(|p| (date, p)));
    }
    let accounts =
        Answer { names: ACCOUNT_COLUMNS.map(String::from).to_vec(), types: types(&ACCOUNT_TYPES), rows: account_rows };
    let consumption = Answer {
        names: CONSUMPTION_COLUMNS.map(String::from).to_vec(),
        types: types(&CONSUMPTION_TYPES),
        rows: consumption_rows,
    };
    let totals = Answer {
        names: TOTAL_COLUMNS.map(String::from).to_vec(),
        types: types(&TOTAL_TYPES),
        rows: totals
            .into_iter()
            .map(|((service, engine), t)| {
                vec![
                    service,
                    engine,
                    t.jobs.to_string(),
                    t.successes.to_string(),
                    t.credits.to_string(),
                    t.dollars.to_string(),
                ]
            })
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    match args.format.as_str() {
        "json" => {
            let parse = |a: &Answer| serde_json::from_str::<serde_json::Value>(&to_json(a)).unwrap_or_default();
            let report = serde_json::json!({
                "from": from.to_string(),
                "to": to.to_string(),
                "tz": args.tz,
                "days": args.days,
                "accounts": parse(&accounts),
                "consumption": parse(&consumption),
                "totals": parse(&totals),
                "problems": problems.iter().map(|(day, p)| serde_json::json!({
                    "day": day.to_string(),
                    "account_id": problem_account(p),
                    "problem": p.to_string(),
                })).collect::<Vec<_>>(),
            });
            writeln!(out, "{report}")?;
        }
        "csv" => {
            write_csv(&mut out, &accounts)?;
            writeln!(out)?;
            write_csv(&mut out, &consumption)?;
            writeln!(out)?;
            write_csv(&mut out, &totals)?;
        }
        _ => {
            let zone = if args.tz == "UTC" { String::new() } else { format!(" ({})", args.tz) };
            writeln!(out, "== finance, {} days {from} to {to}{zone}: accounts", args.days)?;
            write_table(&mut out, &accounts)?;
            writeln!(out, "\n== consumption by account, service and engine")?;
            write_table(&mut out, &consumption)?;
            writeln!(out, "\n== platform totals by service and engine")?;
            write_table(&mut out, &totals)?;
            for (day, problem) in &problems {
                writeln!(out, "DOES NOT TIE OUT {day}: {problem}")?;
            }
        }
    }
    out.flush()?;
    if problems.is_empty() {
        eprintln!("[finance] every account ties out: opening + added - consumed - forfeited = closing, and each day opens where the previous closed");
        return Ok(());
    }
    let accounts: std::collections::BTreeSet<&str> = problems.iter().map(|(_, p)| problem_account(p)).collect();
    if basis == DayBasis::Occurred {
        eprintln!(
            "[finance] {} account-days do not chain by occurred_at ({} accounts): expected where events arrived late; finance closes on booked days (--days booked)",
            problems.len(),
            accounts.len()
        );
        return Ok(());
    }
    bail!(
        "{} problems: these accounts do not tie out: {}",
        problems.len(),
        accounts.iter().take(20).copied().collect::<Vec<_>>().join(", ")
            + if accounts.len() > 20 { ", ..." } else { "" }
    )
}

const ACCOUNT_COLUMNS: [&str; 13] = [
    "day",
    "account_id",
    "opening",
    "added",
    "paid",
    "consumed",
    "consumed_dollars",
    "forfeited",
    "forfeited_dollars",
    "closing",
    "first_sequence",
    "last_sequence",
    "check",
];
const ACCOUNT_TYPES: [&str; 13] = [
    "Date", "String", "Decimal", "Decimal", "Decimal", "Decimal", "Decimal", "Decimal", "Decimal", "Decimal", "Int64",
    "Int64", "String",
];
const CONSUMPTION_COLUMNS: [&str; 8] =
    ["day", "account_id", "service", "engine", "jobs", "successes", "credits", "dollars"];
const CONSUMPTION_TYPES: [&str; 8] = ["Date", "String", "String", "String", "UInt64", "UInt64", "Decimal", "Decimal"];
const TOTAL_COLUMNS: [&str; 6] = ["service", "engine", "jobs", "successes", "credits", "dollars"];
const TOTAL_TYPES: [&str; 6] = ["String", "String", "UInt64", "UInt64", "Decimal", "Decimal"];

fn types(names: &[&str]) -> Vec<String> {
    names.iter().map(|t| t.to_string()).collect()
}

/// Credits as exact text, trailing zeros dropped.
fn credits(value: Decimal) -> String {
    value.normalize().to_string()
}

/// Dollars as exact text with at least the cents (adding zeros is exact;
/// nothing is ever rounded away).
fn dollars(value: Decimal) -> String {
    let mut value = value.normalize();
    if value.scale() < 2 {
        value.rescale(2);
    }
    value.to_string()
}

fn account_row(day: chrono::NaiveDate, a: &AccountDay, flagged: bool) -> Vec<String> {
    vec![
        day.to_string(),
        a.account_id.clone(),
        credits(a.opening),
        credits(a.added),
        dollars(a.paid),
        credits(a.consumed),
        dollars(a.consumed_dollars),
        credits(a.forfeited),
        dollars(a.forfeited_dollars),
        credits(a.closing),
        a.first_sequence.to_string(),
        a.last_sequence.to_string(),
        if flagged { "MISMATCH".into() } else { "ok".into() },
    ]
}

fn consumption_row(day: chrono::NaiveDate, c: &Consumption) -> Vec<String> {
    vec![
        day.to_string(),
        c.account_id.clone(),
        c.service.clone(),
        c.engine.clone(),
        c.jobs.to_string(),
        c.successes.to_string(),
        credits(c.credits),
        dollars(c.dollars),
    ]
}

fn problem_account(problem: &Problem) -> &str {
    match problem {
        Problem::Identity { account_id, .. }
        | Problem::NotContiguous { account_id, .. }
        | Problem::Chain { account_id, .. } => account_id,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_prints_exactly_with_cents() {
        let d = |s: &str| s.parse::<rust_decimal::Decimal>().expect("decimal");
        assert_eq!(super::dollars(d("520.5")), "520.50");
        assert_eq!(super::dollars(d("3735.000")), "3735.00");
        assert_eq!(super::dollars(d("0.125")), "0.125", "never rounded");
        assert_eq!(super::credits(d("1530.000000")), "1530");
    }
}
