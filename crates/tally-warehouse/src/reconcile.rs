//! Reconciliation: the ledger topic (the source of truth, read through the
//! one fenced reader by the caller) against the ClickHouse raw table, per
//! booked UTC day, account and service: entry counts, credit and dollar
//! sums, the last sequence and the balance after it.
//!
//! The caller tallies the ledger's counted entries with [`Tallier`];
//! [`clickhouse_days`] tallies days of the raw table the same way in
//! SQL; [`compare`] names every difference with both values. Pure except
//! for [`clickhouse_days`]. Money is `rust_decimal`, read as fixed-point
//! numbers, compared exactly (normalized: `2.50` equals `2.5`).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_events::{Interner, LedgerEntry};

use crate::client::{Warehouse, WarehouseError};

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// Tallies by key: sorted by key, each key once. A vector, not a map:
/// tallies are built in bulk, merged and compared in order, never looked
/// up one by one (at 4.5M keys, building and merging ordered maps cost
/// several seconds more than sorting vectors).
pub type Tallies = Vec<(Key, Totals)>;

/// The key of `entry` (booked day by [`tally_events`]' `booked_at`, or
/// `occurred_at` for an entry written before ledger entry v4, as the raw
/// table's DEFAULT does).
pub fn key_of(entry: &LedgerEntry) -> Key {
    Key { day: day_of(entry), account_id: entry.account_id.to_string(), service: entry.service.clone() }
}

/// The booked UTC day of `entry` ([`key_of`]'s day).
pub fn day_of(entry: &LedgerEntry) -> chrono::NaiveDate {
    entry.booked_at.unwrap_or(entry.occurred_at).date_naive()
}

impl Totals {
    /// Counts `entry` in.
    pub fn add(&mut self, entry: &LedgerEntry) {
        self.entries += 1;
        self.credits = (self.credits + entry.credits.decimal()).normalize();
        self.dollars = (self.dollars + entry.dollars.decimal()).normalize();
        if entry.sequence.0 > self.last_sequence {
            self.last_sequence = entry.sequence.0;
            self.last_balance = entry.balance_after.decimal().normalize();
        }
    }
}

/// The tallies of `entries`, one at a time: the rule [`Tallier`] keeps,
/// written plainly.
pub fn tally<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Tallies {
    let mut map: BTreeMap<Key, Totals> = BTreeMap::new();
    for entry in entries {
        map.entry(key_of(entry)).or_default().add(entry);
    }
    map.into_iter().collect()
}

/// An account's day being tallied: the day and its totals by service
/// number.
type CurrentDay = (chrono::NaiveDate, Vec<(u32, Totals)>);

/// Tallies of a stream of entries (one ledger partition) made cheaply.
/// Accounts come as numbers from the caller's [`Interner`] (shared with
/// the partition's other checks, so an account's text is hashed once per
/// entry), and an account's booked day never goes back along its ledger
/// (booked_at is the running maximum of occurred_at), so each account
/// holds only its current day's totals by service, a few cache lines
/// among a partition's accounts; a day done is appended to a list. (A map
/// keyed by account, day and service held 1.1M keys a partition at 10M
/// entries, and finding the key missed the cache on nearly every entry.)
/// Entries written before ledger entry v4 take occurred_at's day, which
/// can go back: that day is tallied again and [`Tallier::finish`] adds
/// the pieces up. It gives the same [`Tallies`] as [`tally`].
#[derive(Default)]
pub struct Tallier {
    services: Interner<String>,
    /// Per account number: its current day and that day's totals by
    /// service number.
    current: Vec<Option<CurrentDay>>,
    /// Days left behind: account, day, service, totals.
    done: Vec<(u32, chrono::NaiveDate, u32, Totals)>,
}

impl Tallier {
    /// Counts `entry` in, under [`key_of`]'s day; `account` is its
    /// account's number in the interner [`Tallier::finish`] is given.
    pub fn add(&mut self, account: u32, entry: &LedgerEntry) {
        let day = day_of(entry);
        let service = self.services.intern(&entry.service);
        let index = account as usize;
        if index >= self.current.len() {
            self.current.resize_with(index + 1, || None);
        }
        let slot = &mut self.current[index];
        let by_service = match slot {
            Some((current, by_service)) if *current == day => by_service,
            _ => {
                if let Some(left) = slot.take() {
                    retire(&mut self.done, account, left);
                }
                &mut slot.insert((day, Vec::new())).1
            }
        };
        match by_service.iter_mut().find(|(s, _)| *s == service) {
            Some((_, totals)) => totals.add(entry),
            None => {
                let mut totals = Totals::default();
                totals.add(entry);
                by_service.push((service, totals));
            }
        }
    }

    /// The tallies; `accounts` names the account numbers given to
    /// [`Tallier::add`].
    pub fn finish(self, accounts: &Interner<tally_events::AccountId>) -> Tallies {
        let Tallier { services, current, mut done } = self;
        for (account, slot) in current.into_iter().enumerate() {
            if let Some(day) = slot {
                retire(&mut done, account as u32, day);
            }
        }
        let mut keyed: Vec<(Key, Totals)> = done
            .into_iter()
            .map(|(account, day, service, totals)| {
                let key = Key {
                    day,
                    account_id: accounts.get(account).map(ToString::to_string).unwrap_or_default(),
                    service: services.get(service).cloned().unwrap_or_default(),
                };
                (key, totals)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // A day tallied in pieces (a day that went back) is one key.
        let mut tallies: Tallies = Vec::with_capacity(keyed.len());
        for (key, totals) in keyed {
            match tallies.last_mut() {
                Some((last, mine)) if *last == key => mine.absorb(&totals),
                _ => tallies.push((key, totals)),
            }
        }
        tallies
    }
}

/// Moves an account's finished day into the list of days left behind.
fn retire(done: &mut Vec<(u32, chrono::NaiveDate, u32, Totals)>, account: u32, (day, by_service): CurrentDay) {
    done.extend(by_service.into_iter().map(|(service, totals)| (account, day, service, totals)));
}

impl Totals {
    /// Adds `other`'s tally of the same key in (two ledger partitions
    /// holding one key).
    fn absorb(&mut self, other: &Totals) {
        self.entries += other.entries;
        self.credits = (self.credits + other.credits).normalize();
        self.dollars = (self.dollars + other.dollars).normalize();
        if other.last_sequence > self.last_sequence {
            self.last_sequence = other.last_sequence;
            self.last_balance = other.last_balance;
        }
    }
}

/// The tallies of several ledger partitions walked as one, in key order,
/// without building the merged vector. An account lives in one
/// partition, so keys do not meet; if they do (an account written to two
/// partitions), they add up as one key would, so nothing read is lost from
/// the comparison. Building the merged vector first (concatenate, sort,
/// combine) took about 5 s at 4.5M keys: moving 600 MB three times; a walk
/// of the sorted parts' heads moves nothing.
pub struct Merged<'a> {
    parts: &'a [Tallies],
    /// The next key of each part not yet walked, smallest on top.
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(&'a Key, usize)>>,
    next: Vec<usize>,
    yielded: usize,
}

/// [`Merged`] over `parts` (each sorted by key, each key once, as
/// [`Tallier::finish`] gives them).
pub fn merged(parts: &[Tallies]) -> Merged<'_> {
    let heads =
        parts.iter().enumerate().filter_map(|(i, p)| p.first().map(|(k, _)| std::cmp::Reverse((k, i)))).collect();
    Merged { parts, heads, next: vec![0; parts.len()], yielded: 0 }
}

impl Merged<'_> {
    /// Keys given so far.
    pub fn yielded(&self) -> usize {
        self.yielded
    }

    /// The totals at part `i`'s head; moves the head on.
    fn take(&mut self, i: usize) -> Totals {
        let part = &self.parts[i];
        let totals = part[self.next[i]].1;
        self.next[i] += 1;
        if let Some((key, _)) = part.get(self.next[i]) {
            self.heads.push(std::cmp::Reverse((key, i)));
        }
        totals
    }
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a Key, Totals);

    fn next(&mut self) -> Option<Self::Item> {
        let std::cmp::Reverse((key, i)) = self.heads.pop()?;
        let mut totals = self.take(i);
        while let Some(std::cmp::Reverse((other, j))) = self.heads.peek().copied() {
            if other != key {
                break;
            }
            self.heads.pop();
            let theirs = self.take(j);
            totals.absorb(&theirs);
        }
        self.yielded += 1;
        Some((key, totals))
    }
}

/// `tallies` as [`compare`] walks them.
pub fn walk(tallies: &Tallies) -> impl Iterator<Item = (&Key, Totals)> {
    tallies.iter().map(|(key, totals)| (key, *totals))
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
/// sides are walked once, side by side, and text is made only for what
/// differs (at 10M entries there are 4.5M keys, and formatting every value
/// of both sides took about 10 s).
pub fn compare<'a>(
    ledger: impl IntoIterator<Item = (&'a Key, Totals)>,
    clickhouse: impl IntoIterator<Item = (&'a Key, Totals)>,
) -> Vec<Difference> {
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
    let (mut ours, mut theirs) = (ledger.into_iter().peekable(), clickhouse.into_iter().peekable());
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

/// A row of [`days_query`]: the day as ClickHouse's `Date` (days since
/// 1970-01-01) and money as `Decimal128` (the value times 10^scale), read
/// as numbers in RowBinary: formatting 4.5M values as text on the server
/// and parsing them here cost more than the comparison they feed.
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TotalsRow {
    day: u16,
    account_id: String,
    service: String,
    entries: u64,
    credits: i128,
    dollars: i128,
    last_sequence: i64,
    last_balance: i128,
}

/// The query of [`clickhouse_days`], parameters bound (public so that a
/// test runs it on both ClickHouse versions). Unordered: sorting 1.5M
/// rows a month by their strings took ClickHouse 18.16 0.8 s of the
/// month's 1.8 s (by hand, 10M rows); [`clickhouse_days`] sorts them.
/// Each sum has the type [`TotalsRow`] reads, on every version.
pub fn days_query(
    client: &clickhouse::Client,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> clickhouse::query::Query {
    // An entry booked by a day occurred before its end: lets the server
    // skip later months.
    let sql = "SELECT toDate(booked_at) AS day, account_id, service, count() AS entries, \
               toDecimal128(sum(credits), 6) AS credits, toDecimal128(sum(dollars), 2) AS dollars, \
               max(sequence) AS last_sequence, toDecimal128(argMax(balance_after, sequence), 6) AS last_balance \
               FROM ledger_entries WHERE toDate(booked_at) >= toDate(?) AND toDate(booked_at) <= toDate(?) \
               AND occurred_at < toDateTime(toDate(?)) GROUP BY day, account_id, service";
    let text = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let end = last + chrono::TimeDelta::days(1);
    client.query(sql).bind(text(first)).bind(text(last)).bind(text(end))
}

/// `value` / 10^`scale` exactly, or an error naming `column` (a sum past
/// rust_decimal's 96 bits is refused, never rounded).
fn fixed(column: &str, value: i128, scale: u32) -> Result<Decimal, WarehouseError> {
    Decimal::try_from_i128_with_scale(value, scale)
        .map_err(|e| WarehouseError::Query(format!("{column} {value}e-{scale} does not fit a decimal: {e}")))
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
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let mut tallies = Tallies::with_capacity(rows.len());
    for r in rows {
        let day = epoch + chrono::TimeDelta::days(i64::from(r.day));
        tallies.push((
            Key { day, account_id: r.account_id, service: r.service },
            Totals {
                entries: r.entries,
                credits: fixed("credits", r.credits, 6)?,
                dollars: fixed("dollars", r.dollars, 2)?,
                last_sequence: r.last_sequence,
                last_balance: fixed("last_balance", r.last_balance, 6)?,
            },
        ));
    }
    // Sorted here, by Rust's order; a key the query gave twice is an
    // error, not a tally silently replaced.
    tallies.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = tallies.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let key = &pair[0].0;
        return Err(WarehouseError::Query(format!(
            "reconcile days: {} {} {:?} came twice",
            key.day, key.account_id, key.service
        )));
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

    /// An entry of `account` and `service`, booked on day `day` of
    /// December 2026.
    fn entry(account: &str, service: &str, day: u32, sequence: i64, credits: &str) -> LedgerEntry {
        use chrono::TimeZone;
        use tally_events::{
            AccountId, Credits, Dollars, EntryStatus, EntryType, Epoch, PlanTier, Sequence, SourceOffset,
        };
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, day, 12, 0, 0).unwrap();
        let credits: Decimal = credits.parse().expect("decimal");
        LedgerEntry {
            entry_id: uuid::Uuid::from_u128(sequence as u128),
            account_id: AccountId::parse(account).expect("account"),
            sequence: Sequence(sequence),
            epoch: Epoch(0),
            entry_type: EntryType::Consume,
            status: EntryStatus::Success,
            reason: String::new(),
            input_id: uuid::Uuid::from_u128(sequence as u128),
            service: service.into(),
            engine: "standard".into(),
            photo_event_id: String::new(),
            quantity: Decimal::ONE,
            credits: Credits::new(credits),
            dollars: Dollars::new(credits / Decimal::TEN),
            tier: PlanTier::Payg,
            rate_version: "v".into(),
            balance_after: Credits::new(Decimal::from(1000 - sequence)),
            low_balance_threshold: Credits::new(Decimal::ONE),
            paused: false,
            occurred_at: at,
            source: SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: sequence },
            booth_id: String::new(),
            input_digest: None,
            booked_at: Some(at),
        }
    }

    #[test]
    fn the_tallier_gives_what_adding_entries_one_by_one_gives() {
        let entries = [
            entry("acct-b", "sms", 2, 1, "1"),
            entry("acct-a", "sms", 2, 1, "0.5"),
            entry("acct-a", "ai_modify", 2, 2, "4"),
            entry("acct-a", "sms", 2, 3, "0.25"),
            entry("acct-b", "sms", 3, 2, "1"),
            entry("acct-a", "sms", 1, 4, "2"),
        ];
        let mut tallier = Tallier::default();
        let mut accounts = Interner::default();
        for e in &entries {
            tallier.add(accounts.intern(&e.account_id), e);
        }
        let one_by_one = tally(&entries);
        let tallied = tallier.finish(&accounts);
        assert_eq!(tallied, one_by_one);
        assert_eq!(tallied.len(), 5);
        let a_sms = tallied
            .iter()
            .find(|(k, _)| k.account_id == "acct-a" && k.service == "sms" && chrono::Datelike::day0(&k.day) == 1);
        let totals = &a_sms.expect("acct-a sms on the 2nd").1;
        assert_eq!((totals.entries, totals.credits, totals.last_sequence), (2, "0.75".parse().expect("d"), 3));
        assert!(Tallier::default().finish(&accounts).is_empty());
    }

    /// [`merged`], collected.
    fn merge(parts: &[Tallies]) -> Tallies {
        super::merged(parts).map(|(key, totals)| (key.clone(), totals)).collect()
    }

    #[test]
    fn merged_tallies_keep_every_key_and_add_up_the_ones_that_meet() {
        let first = Tallies::from([(key("a"), totals(2, "1.5")), (key("c"), totals(1, "1"))]);
        let mut later = totals(3, "0.5");
        later.last_sequence = 9;
        later.last_balance = Decimal::ONE;
        let second = Tallies::from([(key("b"), totals(1, "2")), (key("c"), later), (key("d"), totals(1, "1"))]);
        let merged = merge(&[first, Tallies::new(), second]);
        let keys: Vec<&str> = merged.iter().map(|(k, _)| k.account_id.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
        let c = &merged[2].1;
        assert_eq!(
            (c.entries, c.credits, c.last_sequence, c.last_balance),
            (4, "1.5".parse().expect("d"), 9, Decimal::ONE)
        );
        assert_eq!(merged[0].1, totals(2, "1.5"));
        assert!(merge(&[]).is_empty());
        assert_eq!(merge(&[Tallies::from([(key("z"), totals(1, "1"))])]).len(), 1);
        // One key in three parts adds up once; the walk counts keys.
        let parts = [
            Tallies::from([(key("c"), totals(1, "1"))]),
            Tallies::from([(key("a"), totals(1, "1")), (key("c"), totals(2, "2"))]),
            Tallies::from([(key("c"), totals(3, "3")), (key("e"), totals(1, "1"))]),
        ];
        let mut walk = super::merged(&parts);
        let keys: Vec<(String, u64)> = walk.by_ref().map(|(k, t)| (k.account_id.clone(), t.entries)).collect();
        assert_eq!(keys, [("a".to_string(), 1), ("c".to_string(), 6), ("e".to_string(), 1)]);
        assert_eq!(walk.yielded(), 3);
    }

    #[test]
    fn every_difference_is_named_with_both_values() {
        let ledger =
            Tallies::from([(key("a"), totals(2, "1.5")), (key("b"), totals(1, "1")), (key("c"), totals(1, "1"))]);
        let clickhouse =
            Tallies::from([(key("a"), totals(3, "1.5")), (key("c"), totals(1, "2")), (key("d"), totals(1, "1"))]);
        let found = compare(walk(&ledger), walk(&clickhouse));
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
        assert!(compare(walk(&ledger), walk(&ledger)).is_empty(), "no false alarm on equal data");
        // A value is a number: its scale is not a difference.
        let scaled = Tallies::from([(key("a"), totals(2, "1.50"))]);
        assert!(compare(walk(&Tallies::from([(key("a"), totals(2, "1.5"))])), walk(&scaled)).is_empty());
        assert_eq!(compare(walk(&Tallies::new()), walk(&scaled)).len(), 1, "one side empty");
        assert_eq!(compare(walk(&scaled), walk(&Tallies::new())).len(), 1, "the other side empty");
    }
}
