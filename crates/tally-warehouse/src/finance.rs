//! Finance's day: per account, the opening balance, credits added and
//! dollars paid, credits consumed (per service and engine, with their
//! dollars at the tier in force at each entry), forfeits and the closing
//! balance, read from the raw table for one day in any time zone; and the
//! checks that make a day "tie out".
//!
//! Days are **booked** days by default (`booked_at`, ledger entry v4: the
//! running maximum of `occurred_at` per account, `tally-ledger`'s
//! `booking.rs`). An account's entries booked on a day are one run of its
//! sequences, so for every account and day:
//!
//! 1. identity: `opening + added - consumed - forfeited = closing`;
//! 2. contiguity: the day's entries are sequences `first..=last`, no gap;
//! 3. chain: the day's opening is the closing of the account's previous
//!    booked day (the balance after entry `first - 1`).
//!
//! [`Chain`] checks them (pure, unit-tested); [`read_day`] and
//! [`balances_after`] are the only I/O. Days by `occurred_at`
//! ([`DayBasis::Occurred`]) are reported too, for comparison: late events
//! make them break 2 and 3 by design, and finance closes on booked days.
//!
//! Money is `rust_decimal`, read from ClickHouse as decimal text (never a
//! float) and compared exactly.

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::client::{Warehouse, WarehouseError};

/// Which time buckets entries into days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayBasis {
    /// `booked_at`: what finance closes on.
    Booked,
    /// `occurred_at`: when the job ran, as its worker said.
    Occurred,
}

impl DayBasis {
    fn column(self) -> &'static str {
        match self {
            DayBasis::Booked => "booked_at",
            DayBasis::Occurred => "occurred_at",
        }
    }
}

/// One account's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDay {
    /// Account.
    pub account_id: String,
    /// Balance before the day's first entry (by sequence).
    pub opening: Decimal,
    /// Credits added by successful purchases.
    pub added: Decimal,
    /// Dollars paid for them.
    pub paid: Decimal,
    /// Credits consumed by successful jobs.
    pub consumed: Decimal,
    /// Their dollar value at the tier in force at each entry.
    pub consumed_dollars: Decimal,
    /// Credits forfeited (account deleted).
    pub forfeited: Decimal,
    /// Their notional dollar value.
    pub forfeited_dollars: Decimal,
    /// Balance after the day's last entry (by sequence).
    pub closing: Decimal,
    /// The day's first sequence.
    pub first_sequence: i64,
    /// The day's last sequence.
    pub last_sequence: i64,
    /// Entries of the day.
    pub entries: u64,
}

/// Consumption of one account, service and engine in a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumption {
    /// Account.
    pub account_id: String,
    /// Service code.
    pub service: String,
    /// Engine code.
    pub engine: String,
    /// Jobs (CONSUME entries, failed ones included).
    pub jobs: u64,
    /// Of which successful (charged).
    pub successes: u64,
    /// Credits charged.
    pub credits: Decimal,
    /// Their dollars.
    pub dollars: Decimal,
}

/// Why a day does not tie out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// opening + added - consumed - forfeited != closing.
    Identity {
        /// Account.
        account_id: String,
        /// opening + added - consumed - forfeited.
        expected: Decimal,
        /// The closing balance.
        closing: Decimal,
    },
    /// The day's sequences have a gap: entries of the run were booked on
    /// another day, or are missing.
    NotContiguous {
        /// Account.
        account_id: String,
        /// First sequence.
        first: i64,
        /// Last sequence.
        last: i64,
        /// Entries found.
        entries: u64,
    },
    /// The opening is not the balance after the previous entry.
    Chain {
        /// Account.
        account_id: String,
        /// The day's opening.
        opening: Decimal,
        /// The balance after entry `first - 1` (`None`: that entry is
        /// missing).
        previous_closing: Option<Decimal>,
        /// That entry's sequence.
        previous_sequence: i64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Identity { account_id, expected, closing } => write!(
                f,
                "{account_id}: opening + added - consumed - forfeited = {expected}, but the closing balance is {closing}"
            ),
            Problem::NotContiguous { account_id, first, last, entries } => write!(
                f,
                "{account_id}: {entries} entries between sequences {first} and {last}: the day is not one run of the account's entries"
            ),
            Problem::Chain { account_id, opening, previous_closing: Some(previous), previous_sequence } => write!(
                f,
                "{account_id}: opens at {opening}, but entry {previous_sequence} (the previous day's last) closed at {previous}"
            ),
            Problem::Chain { account_id, opening, previous_closing: None, previous_sequence } => write!(
                f,
                "{account_id}: opens at {opening}, but entry {previous_sequence} (the previous day's last) is not in ClickHouse"
            ),
        }
    }
}

/// The checks over consecutive days: remembers each account's last
/// sequence and closing balance of the days seen (bounded by the accounts
/// active in the range).
#[derive(Debug, Default)]
pub struct Chain {
    last: HashMap<String, (i64, Decimal)>,
}

impl Chain {
    /// The accounts of `day` whose previous entry this chain has not seen:
    /// their (account, sequence) to look up with [`balances_after`].
    pub fn unknown_predecessors(&self, day: &[AccountDay]) -> Vec<(String, i64)> {
        day.iter()
            .filter(|a| a.first_sequence > 1)
            .filter(|a| self.last.get(&a.account_id).is_none_or(|(seq, _)| *seq != a.first_sequence - 1))
            .map(|a| (a.account_id.clone(), a.first_sequence - 1))
            .collect()
    }

    /// Checks one day's accounts, in day order; `looked_up` holds the
    /// balances after the predecessors [`Chain::unknown_predecessors`]
    /// named.
    pub fn check_day(&mut self, day: &[AccountDay], looked_up: &HashMap<(String, i64), Decimal>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for a in day {
            let expected = a.opening + a.added - a.consumed - a.forfeited;
            if expected != a.closing {
                problems.push(Problem::Identity { account_id: a.account_id.clone(), expected, closing: a.closing });
            }
            let span = a.last_sequence - a.first_sequence + 1;
            if u64::try_from(span).ok() != Some(a.entries) {
                problems.push(Problem::NotContiguous {
                    account_id: a.account_id.clone(),
                    first: a.first_sequence,
                    last: a.last_sequence,
                    entries: a.entries,
                });
            }
            let previous_sequence = a.first_sequence - 1;
            let previous_closing = if previous_sequence < 1 {
                Some(Decimal::ZERO)
            } else {
                match self.last.get(&a.account_id) {
                    Some((seq, closing)) if *seq == previous_sequence => Some(*closing),
                    _ => looked_up.get(&(a.account_id.clone(), previous_sequence)).copied(),
                }
            };
            if previous_closing != Some(a.opening) {
                problems.push(Problem::Chain {
                    account_id: a.account_id.clone(),
                    opening: a.opening,
                    previous_closing,
                    previous_sequence,
                });
            }
            self.last.insert(a.account_id.clone(), (a.last_sequence, a.closing));
        }
        problems
    }
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct AccountRow {
    /// The day, in a read of several days ('' in a read of one).
    day: String,
    account_id: String,
    opening: String,
    added: String,
    paid: String,
    consumed: String,
    consumed_dollars: String,
    forfeited: String,
    forfeited_dollars: String,
    closing: String,
    first_sequence: i64,
    last_sequence: i64,
    entries: u64,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ConsumptionRow {
    account_id: String,
    service: String,
    engine: String,
    jobs: u64,
    successes: u64,
    credits: String,
    dollars: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct BalanceRow {
    account_id: String,
    sequence: i64,
    balance_after: String,
}

/// Decimal text from ClickHouse (`toString` of a Decimal), exactly.
pub(crate) fn decimal(column: &str, text: &str) -> Result<Decimal, WarehouseError> {
    text.parse::<Decimal>()
        .map(|d| d.normalize())
        .map_err(|e| WarehouseError::Query(format!("{column} {text:?} is not exact decimal text: {e}")))
}

/// Checks a time zone name's shape (ClickHouse refuses unknown ones).
pub fn check_zone(zone: &str) -> Result<(), WarehouseError> {
    let ok =
        !zone.is_empty() && zone.len() <= 64 && zone.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(WarehouseError::Query(format!("{zone:?} is not a time zone name like Europe/Berlin")))
    }
}

/// The signed change of balance of an entry, in SQL: the ledger's rule
/// (`LedgerEntry::signed_credits`).
const SIGNED: &str = "multiIf(status = 'Success' AND entry_type = 'Add', credits, \
     status = 'Success' AND (entry_type = 'Consume' OR entry_type = 'Forfeit'), -credits, toDecimal128(0, 6))";

/// What an account's day sums up: the columns of [`AccountRow`] after
/// `account_id`.
fn account_day_columns() -> String {
    format!(
        "toString(argMin(balance_after - {SIGNED}, sequence)) AS opening, \
         toString(sumIf(credits, entry_type = 'Add' AND status = 'Success')) AS added, \
         toString(sumIf(dollars, entry_type = 'Add' AND status = 'Success')) AS paid, \
         toString(sumIf(credits, entry_type = 'Consume' AND status = 'Success')) AS consumed, \
         toString(sumIf(dollars, entry_type = 'Consume' AND status = 'Success')) AS consumed_dollars, \
         toString(sumIf(credits, entry_type = 'Forfeit' AND status = 'Success')) AS forfeited, \
         toString(sumIf(dollars, entry_type = 'Forfeit' AND status = 'Success')) AS forfeited_dollars, \
         toString(argMax(balance_after, sequence)) AS closing, \
         min(sequence) AS first_sequence, max(sequence) AS last_sequence, count() AS entries"
    )
}

/// The two queries of [`read_day`], parameters bound: the accounts' day,
/// then their consumption by service and engine (public so that a test
/// runs them on both ClickHouse versions).
pub fn day_queries(
    client: &clickhouse::Client,
    date: chrono::NaiveDate,
    zone: &str,
    basis: DayBasis,
) -> Result<[clickhouse::query::Query; 2], WarehouseError> {
    check_zone(zone)?;
    let column = basis.column();
    let day = date.format("%Y-%m-%d").to_string();
    // An entry booked on the day occurred before the day's end (to the
    // second), whatever the zone: lets the server skip later months.
    let end = (date + chrono::TimeDelta::days(2)).format("%Y-%m-%d").to_string();
    let filter = format!("toDate({column}, ?) = toDate(?) AND occurred_at < toDateTime(toDate(?))");
    let accounts = format!(
        "SELECT '' AS day, account_id, {} \
         FROM ledger_entries WHERE {filter} GROUP BY account_id ORDER BY account_id",
        account_day_columns()
    );
    let consumption = format!(
        "SELECT account_id, service, engine, count() AS jobs, countIf(status = 'Success') AS successes, \
         toString(sumIf(credits, status = 'Success')) AS credits, \
         toString(sumIf(dollars, status = 'Success')) AS dollars \
         FROM ledger_entries WHERE entry_type = 'Consume' AND {filter} \
         GROUP BY account_id, service, engine ORDER BY account_id, service, engine"
    );
    let bind = |sql: &str| client.query(sql).bind(zone).bind(&day).bind(&end);
    Ok([bind(&accounts), bind(&consumption)])
}

/// Every account's day `date` in zone `zone`, and its consumption by
/// service and engine, from the raw table (so any zone, and the same
/// answer the rollups must give in UTC).
pub async fn read_day(
    warehouse: &Warehouse,
    date: chrono::NaiveDate,
    zone: &str,
    basis: DayBasis,
) -> Result<(Vec<AccountDay>, Vec<Consumption>), WarehouseError> {
    let [accounts_query, consumption_query] = day_queries(warehouse.client(), date, zone, basis)?;
    let what = format!("finance day {date}");
    let accounts = account_days(warehouse, &what, accounts_query).await?;
    let rows: Vec<ConsumptionRow> = warehouse.fetch_all(&what, consumption_query).await?;
    let mut consumption = Vec::with_capacity(rows.len());
    for r in rows {
        consumption.push(Consumption {
            credits: decimal("credits", &r.credits)?,
            dollars: decimal("dollars", &r.dollars)?,
            account_id: r.account_id,
            service: r.service,
            engine: r.engine,
            jobs: r.jobs,
            successes: r.successes,
        });
    }
    Ok((accounts, consumption))
}

/// The query of [`read_account_days`], parameters bound (public so that a
/// test runs it on both ClickHouse versions).
pub fn account_days_query(
    client: &clickhouse::Client,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> clickhouse::query::Query {
    let sql = format!(
        "SELECT toString(toDate(booked_at)) AS day, account_id, {} FROM ledger_entries \
         WHERE toDate(booked_at) >= toDate(?) AND toDate(booked_at) <= toDate(?) \
         AND occurred_at < toDateTime(toDate(?)) GROUP BY day, account_id ORDER BY day, account_id",
        account_day_columns()
    );
    let text = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let end = last + chrono::TimeDelta::days(1);
    client.query(&sql).bind(text(first)).bind(text(last)).bind(text(end))
}

/// The accounts' days (UTC, booked) of `first` to `last` in one scan,
/// by day in order: what reconciliation's tie-out checks need.
pub async fn read_account_days(
    warehouse: &Warehouse,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> Result<Vec<(chrono::NaiveDate, Vec<AccountDay>)>, WarehouseError> {
    let query = account_days_query(warehouse.client(), first, last);
    let rows: Vec<AccountRow> = warehouse.fetch_all("finance account days", query).await?;
    let mut days: Vec<(chrono::NaiveDate, Vec<AccountDay>)> = Vec::new();
    for row in rows {
        let day: chrono::NaiveDate =
            row.day.parse().map_err(|e| WarehouseError::Query(format!("day {:?} is not a date: {e}", row.day)))?;
        let account = account_day(row)?;
        match days.last_mut() {
            Some((last, accounts)) if *last == day => accounts.push(account),
            _ => days.push((day, vec![account])),
        }
    }
    Ok(days)
}

fn account_day(r: AccountRow) -> Result<AccountDay, WarehouseError> {
    Ok(AccountDay {
        opening: decimal("opening", &r.opening)?,
        added: decimal("added", &r.added)?,
        paid: decimal("paid", &r.paid)?,
        consumed: decimal("consumed", &r.consumed)?,
        consumed_dollars: decimal("consumed_dollars", &r.consumed_dollars)?,
        forfeited: decimal("forfeited", &r.forfeited)?,
        forfeited_dollars: decimal("forfeited_dollars", &r.forfeited_dollars)?,
        closing: decimal("closing", &r.closing)?,
        first_sequence: r.first_sequence,
        last_sequence: r.last_sequence,
        entries: r.entries,
        account_id: r.account_id,
    })
}

async fn account_days(
    warehouse: &Warehouse,
    what: &str,
    query: clickhouse::query::Query,
) -> Result<Vec<AccountDay>, WarehouseError> {
    let rows: Vec<AccountRow> = warehouse.fetch_all(what, query).await?;
    rows.into_iter().map(account_day).collect()
}

/// The balance after each (account, sequence) asked, where the raw table
/// has that entry.
pub async fn balances_after(
    warehouse: &Warehouse,
    keys: &[(String, i64)],
) -> Result<HashMap<(String, i64), Decimal>, WarehouseError> {
    let mut found = HashMap::new();
    // Bounded requests: a day of a million accounts asks in slices.
    for slice in keys.chunks(10_000) {
        let accounts: Vec<&str> = slice.iter().map(|(a, _)| a.as_str()).collect();
        let wanted: Vec<String> = slice.iter().map(|(a, s)| format!("{a}#{s}")).collect();
        let sql = "SELECT account_id, sequence, toString(balance_after) AS balance_after FROM ledger_entries \
                   WHERE has(?, account_id) AND has(?, concat(account_id, '#', toString(sequence)))";
        let query = warehouse.client().query(sql).bind(&accounts).bind(&wanted);
        let rows: Vec<BalanceRow> = warehouse.fetch_all(sql, query).await?;
        for r in rows {
            found.insert((r.account_id, r.sequence), decimal("balance_after", &r.balance_after)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    fn day(account: &str, opening: &str, added: &str, consumed: &str, closing: &str, seqs: (i64, i64)) -> AccountDay {
        AccountDay {
            account_id: account.into(),
            opening: d(opening),
            added: d(added),
            paid: Decimal::ZERO,
            consumed: d(consumed),
            consumed_dollars: Decimal::ZERO,
            forfeited: Decimal::ZERO,
            forfeited_dollars: Decimal::ZERO,
            closing: d(closing),
            first_sequence: seqs.0,
            last_sequence: seqs.1,
            entries: (seqs.1 - seqs.0 + 1) as u64,
        }
    }

    #[test]
    fn days_that_tie_out_raise_nothing() {
        let mut chain = Chain::default();
        let first = [day("a", "0", "100", "30", "70", (1, 4))];
        assert!(chain.unknown_predecessors(&first).is_empty(), "sequence 1 opens at 0");
        assert_eq!(chain.check_day(&first, &HashMap::new()), []);
        let second = [day("a", "70", "0", "20", "50", (5, 9))];
        assert!(chain.unknown_predecessors(&second).is_empty(), "the previous day is known");
        assert_eq!(chain.check_day(&second, &HashMap::new()), []);
    }

    #[test]
    fn each_broken_rule_is_named() {
        let mut chain = Chain::default();
        let wrong = [day("a", "0", "100", "30", "71", (1, 4))];
        assert!(matches!(chain.check_day(&wrong, &HashMap::new())[..], [Problem::Identity { .. }]));
        let mut gap = day("b", "0", "10", "0", "10", (1, 4));
        gap.entries = 3;
        assert!(matches!(chain.check_day(&[gap], &HashMap::new())[..], [Problem::NotContiguous { .. }]));
        // A first day in the range: its predecessor is looked up.
        let later = [day("c", "40", "0", "10", "30", (7, 8))];
        assert_eq!(chain.unknown_predecessors(&later), [("c".to_string(), 6)]);
        let looked_up = HashMap::from([(("c".to_string(), 6), d("41"))]);
        let problems = chain.check_day(&later, &looked_up);
        assert!(matches!(&problems[..], [Problem::Chain { previous_closing: Some(p), .. }] if *p == d("41")));
        let missing = [day("e", "40", "0", "10", "30", (7, 8))];
        let problems = chain.check_day(&missing, &HashMap::new());
        assert!(matches!(&problems[..], [Problem::Chain { previous_closing: None, .. }]), "{problems:?}");
        assert!(problems[0].to_string().contains("not in ClickHouse"));
    }
}
