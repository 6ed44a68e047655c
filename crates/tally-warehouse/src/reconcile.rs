//! Reconciliation: the ledger topic (the source of truth, read through the
//! one fenced reader by the caller) against the ClickHouse raw table, per
//! booked UTC day, account and service: entry counts, credit and dollar
//! sums, the last sequence and the balance after it.
//!
//! The caller tallies the ledger's counted entries with [`Tallies::add`];
//! [`clickhouse_days`] tallies days of the raw table the same way in
//! SQL; [`compare`] names every difference with both values. Pure except
//! for [`clickhouse_days`]. Money is `rust_decimal`, read as decimal text,
//! compared exactly (normalized: `2.50` equals `2.5`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_events::LedgerEntry;

use crate::{
    client::{Warehouse, WarehouseError},
    finance::decimal,
};

/// What is tallied: a booked UTC day, an account, a service ('' for
/// entries that are not usage).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Booked day (UTC).
    pub day: chrono::NaiveDate,
    /// Account.
    pub account_id: String,
    /// Service code, '' for OPEN, ADD, UPDATE, FORFEIT.
    pub service: String,
}

/// The tally of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Entries.
    pub entries: u64,
    /// Sum of credits (every entry, whatever its status).
    pub credits: Decimal,
    /// Sum of dollars.
    pub dollars: Decimal,
    /// Highest sequence.
    pub last_sequence: i64,
    /// Balance after it.
    pub last_balance: Decimal,
}

/// Tallies by key.
pub type Tallies = BTreeMap<Key, Totals>;

/// The key of `entry` (booked day by [`tally_events`]' `booked_at`, or
/// `occurred_at` for an entry written before ledger entry v4, as the raw
/// table's DEFAULT does).
pub fn key_of(entry: &LedgerEntry) -> Key {
    let booked = entry.booked_at.unwrap_or(entry.occurred_at);
    Key { day: booked.date_naive(), account_id: entry.account_id.to_string(), service: entry.service.clone() }
}

/// Adds `entry` to `tallies`.
pub fn add(tallies: &mut Tallies, entry: &LedgerEntry) {
    let totals = tallies.entry(key_of(entry)).or_default();
    totals.entries += 1;
    totals.credits = (totals.credits + entry.credits.decimal()).normalize();
    totals.dollars = (totals.dollars + entry.dollars.decimal()).normalize();
    if entry.sequence.0 > totals.last_sequence {
        totals.last_sequence = entry.sequence.0;
        totals.last_balance = entry.balance_after.decimal().normalize();
    }
}

/// Adds the tallies `other` (of another ledger partition) to `into`. An
/// account lives in one partition, so keys do not meet; if they do (an
/// account written to two partitions), they add up as one key would, so
/// nothing read is lost from the comparison. Both maps are walked once,
/// side by side, and the result built from the sorted sequence (inserting
/// 1M keys one by one into a map of millions cost seconds at 10M entries).
pub fn merge(into: &mut Tallies, other: Tallies) {
    use std::cmp::Ordering;
    if other.is_empty() {
        return;
    }
    let mut merged = Vec::with_capacity(into.len() + other.len());
    let (mut ours, mut theirs) = (std::mem::take(into).into_iter().peekable(), other.into_iter().peekable());
    loop {
        let order = match (ours.peek(), theirs.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        let next = match order {
            Ordering::Less => ours.next(),
            Ordering::Greater => theirs.next(),
            Ordering::Equal => match (ours.next(), theirs.next()) {
                (Some((key, mut mine)), Some((_, theirs))) => {
                    mine.entries += theirs.entries;
                    mine.credits = (mine.credits + theirs.credits).normalize();
                    mine.dollars = (mine.dollars + theirs.dollars).normalize();
                    if theirs.last_sequence > mine.last_sequence {
                        mine.last_sequence = theirs.last_sequence;
                        mine.last_balance = theirs.last_balance;
                    }
                    Some((key, mine))
                }
                _ => None,
            },
        };
        merged.extend(next);
    }
    // Sorted input: the map is built in bulk.
    *into = merged.into_iter().collect();
}

/// One difference between the ledger and ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Booked day.
    pub day: String,
    /// Account.
    pub account_id: String,
    /// Service ('' for non-usage entries).
    pub service: String,
    /// What differs: `entries`, `credits`, `dollars`, `last_sequence`,
    /// `last_balance`, or `present` (a key only one side has).
    pub field: String,
    /// The ledger topic's value.
    pub ledger: String,
    /// ClickHouse's value.
    pub clickhouse: String,
}

/// Every difference between `ledger` and `clickhouse`, in key order.
/// Values compare as numbers (a decimal's scale is not a difference); both
/// maps are walked once, side by side, and text is made only for what
/// differs (at 10M entries there are 4.5M keys, and formatting every value
/// of both sides took about 10 s).
pub fn compare(ledger: &Tallies, clickhouse: &Tallies) -> Vec<Difference> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let diff = |key: &Key, field: &str, ledger: String, clickhouse: String| Difference {
        day: key.day.to_string(),
        account_id: key.account_id.clone(),
        service: key.service.clone(),
        field: field.into(),
        ledger,
        clickhouse,
    };
    let (mut ours, mut theirs) = (ledger.iter().peekable(), clickhouse.iter().peekable());
    loop {
        let order = match (ours.peek(), theirs.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                let Some((key, l)) = ours.next() else { break };
                out.push(diff(key, "present", format!("{} entries", l.entries), "none".into()));
            }
            Ordering::Greater => {
                let Some((key, c)) = theirs.next() else { break };
                out.push(diff(key, "present", "none".into(), format!("{} entries", c.entries)));
            }
            Ordering::Equal => {
                let (Some((key, l)), Some((_, c))) = (ours.next(), theirs.next()) else { break };
                if l.entries != c.entries {
                    out.push(diff(key, "entries", l.entries.to_string(), c.entries.to_string()));
                }
                if l.credits != c.credits {
                    out.push(diff(key, "credits", l.credits.to_string(), c.credits.to_string()));
                }
                if l.dollars != c.dollars {
                    out.push(diff(key, "dollars", l.dollars.to_string(), c.dollars.to_string()));
                }
                if l.last_sequence != c.last_sequence {
                    out.push(diff(key, "last_sequence", l.last_sequence.to_string(), c.last_sequence.to_string()));
                }
                if l.last_balance != c.last_balance {
                    out.push(diff(key, "last_balance", l.last_balance.to_string(), c.last_balance.to_string()));
                }
            }
        }
    }
    out
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TotalsRow {
    day: String,
    account_id: String,
    service: String,
    entries: u64,
    credits: String,
    dollars: String,
    last_sequence: i64,
    last_balance: String,
}

/// The query of [`clickhouse_days`], parameters bound (public so that a
/// test runs it on both ClickHouse versions).
pub fn days_query(
    client: &clickhouse::Client,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> clickhouse::query::Query {
    // An entry booked by a day occurred before its end: lets the server
    // skip later months.
    let sql = "SELECT toString(toDate(booked_at)) AS day, account_id, service, count() AS entries, \
               toString(sum(credits)) AS credits, toString(sum(dollars)) AS dollars, \
               max(sequence) AS last_sequence, toString(argMax(balance_after, sequence)) AS last_balance \
               FROM ledger_entries WHERE toDate(booked_at) >= toDate(?) AND toDate(booked_at) <= toDate(?) \
               AND occurred_at < toDateTime(toDate(?)) GROUP BY day, account_id, service \
               ORDER BY day, account_id, service";
    let text = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let end = last + chrono::TimeDelta::days(1);
    client.query(sql).bind(text(first)).bind(text(last)).bind(text(end))
}

/// The raw table's tallies of the booked UTC days `first` to `last`, in
/// one scan (a range no longer than a month or so keeps the answer small:
/// the caller chunks).
pub async fn clickhouse_days(
    warehouse: &Warehouse,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> Result<Tallies, WarehouseError> {
    let query = days_query(warehouse.client(), first, last);
    let rows: Vec<TotalsRow> = warehouse.fetch_all("reconcile days", query).await?;
    let mut tallies = Tallies::new();
    for r in rows {
        let day = r.day.parse().map_err(|e| WarehouseError::Query(format!("day {:?} is not a date: {e}", r.day)))?;
        tallies.insert(
            Key { day, account_id: r.account_id, service: r.service },
            Totals {
                entries: r.entries,
                credits: decimal("credits", &r.credits)?,
                dollars: decimal("dollars", &r.dollars)?,
                last_sequence: r.last_sequence,
                last_balance: decimal("last_balance", &r.last_balance)?,
            },
        );
    }
    Ok(tallies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(account: &str) -> Key {
        Key {
            day: chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("day"),
            account_id: account.into(),
            service: "sms".into(),
        }
    }

    fn totals(entries: u64, credits: &str) -> Totals {
        Totals {
            entries,
            credits: credits.parse().expect("decimal"),
            dollars: Decimal::ZERO,
            last_sequence: 4,
            last_balance: Decimal::TEN,
        }
    }

    #[test]
    fn merged_tallies_keep_every_key_and_add_up_the_ones_that_meet() {
        let mut into = Tallies::from([(key("a"), totals(2, "1.5")), (key("c"), totals(1, "1"))]);
        let mut later = totals(3, "0.5");
        later.last_sequence = 9;
        later.last_balance = Decimal::ONE;
        merge(&mut into, Tallies::from([(key("b"), totals(1, "2")), (key("c"), later), (key("d"), totals(1, "1"))]));
        let keys: Vec<&str> = into.keys().map(|k| k.account_id.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
        let c = &into[&key("c")];
        assert_eq!(
            (c.entries, c.credits, c.last_sequence, c.last_balance),
            (4, "1.5".parse().expect("d"), 9, Decimal::ONE)
        );
        assert_eq!(into[&key("a")], totals(2, "1.5"));
        merge(&mut into, Tallies::new());
        assert_eq!(into.len(), 4);
        let mut empty = Tallies::new();
        merge(&mut empty, Tallies::from([(key("z"), totals(1, "1"))]));
        assert_eq!(empty.len(), 1);
    }

    #[test]
    fn every_difference_is_named_with_both_values() {
        let ledger =
            Tallies::from([(key("a"), totals(2, "1.5")), (key("b"), totals(1, "1")), (key("c"), totals(1, "1"))]);
        let clickhouse =
            Tallies::from([(key("a"), totals(3, "1.5")), (key("c"), totals(1, "2")), (key("d"), totals(1, "1"))]);
        let found = compare(&ledger, &clickhouse);
        let named: Vec<(&str, &str, &str, &str)> = found
            .iter()
            .map(|d| (d.account_id.as_str(), d.field.as_str(), d.ledger.as_str(), d.clickhouse.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("a", "entries", "2", "3"),
                ("b", "present", "1 entries", "none"),
                ("c", "credits", "1", "2"),
                ("d", "present", "none", "1 entries")
            ]
        );
        assert!(compare(&ledger, &ledger).is_empty(), "no false alarm on equal data");
        // A value is a number: its scale is not a difference.
        let scaled = Tallies::from([(key("a"), totals(2, "1.50"))]);
        assert!(compare(&Tallies::from([(key("a"), totals(2, "1.5"))]), &scaled).is_empty());
        assert_eq!(compare(&Tallies::new(), &scaled).len(), 1, "one side empty");
        assert_eq!(compare(&scaled, &Tallies::new()).len(), 1, "the other side empty");
    }
}
