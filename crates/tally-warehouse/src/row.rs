//! The raw ledger row: one counted ledger entry as `ledger_entries` stores
//! it (`schemas/clickhouse/migrations/001_ledger_entries.sql`).
//!
//! Invariants:
//! - exact: every decimal is rescaled to its column's scale without
//!   losing a digit, or the entry is refused with [`RowError`] (ClickHouse
//!   18.16 would reject more digits, current versions would truncate them
//!   silently; neither is acceptable for money);
//! - complete: every field of the entry is stored, plus its ledger
//!   partition and offset; milliseconds of `occurred_at` in their own
//!   column;
//! - borrowed: strings point into the entry, so encoding a batch copies
//!   each string once, into the INSERT body.

use rust_decimal::Decimal;
use tally_events::{EntryStatus, EntryType, LedgerEntry, PlanTier};
use uuid::Uuid;

/// Why an entry cannot be stored exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// A decimal with more fractional digits than its column keeps, or
    /// too large for it.
    #[error("{column} = {value} does not fit Decimal(precision {precision}, scale {scale}) exactly")]
    Decimal {
        /// Column.
        column: &'static str,
        /// The value as the entry has it.
        value: String,
        /// Digits the column keeps in all.
        precision: u32,
        /// Fractional digits the column keeps.
        scale: u32,
    },
    /// A time before 1970 or after 2105 (`DateTime` is 32-bit seconds).
    #[error("occurred_at {0} is outside what DateTime stores (1970-2105)")]
    Time(String),
}

impl RowError {
    /// Never retryable: the entry is what it is.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// One row of `ledger_entries`, in column order (RowBinary is positional).
#[derive(Debug, clickhouse::Row, serde::Serialize)]
pub struct LedgerRow<'a> {
    ledger_partition: i32,
    ledger_offset: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    entry_id: Uuid,
    account_id: &'a str,
    sequence: i64,
    epoch: i64,
    entry_type: i8,
    status: i8,
    reason: &'a str,
    #[serde(with = "clickhouse::serde::uuid")]
    input_id: Uuid,
    service: &'a str,
    engine: &'a str,
    photo_event_id: &'a str,
    booth_id: &'a str,
    quantity: i64,
    credits: i128,
    dollars: i64,
    tier: i8,
    rate_version: &'a str,
    balance_after: i128,
    low_balance_threshold: i128,
    paused: u8,
    occurred_at: u32,
    occurred_ms: u16,
    input_topic: &'a str,
    input_partition: i32,
    input_offset: i64,
    #[serde(with = "serde_bytes_as_string")]
    input_digest: &'a [u8],
    /// Whole seconds (the booking rule truncates); `occurred_at`'s for an
    /// entry written before ledger entry v4, which has none.
    booked_at: u32,
}

/// `Enum8` value of an entry type (append-only; see the migration).
pub fn entry_type_code(kind: EntryType) -> i8 {
    match kind {
        EntryType::Open => 1,
        EntryType::Consume => 2,
        EntryType::Add => 3,
        EntryType::Update => 4,
        EntryType::Forfeit => 5,
    }
}

fn status_code(status: EntryStatus) -> i8 {
    match status {
        EntryStatus::Success => 1,
        EntryStatus::Failed => 2,
    }
}

fn tier_code(tier: PlanTier) -> i8 {
    match tier {
        PlanTier::Payg => 1,
        PlanTier::Basic => 2,
        PlanTier::Pro => 3,
    }
}

/// `value` as an integer scaled by 10^`scale`, if that is exact and has at
/// most `precision` digits.
pub fn scaled(column: &'static str, value: Decimal, precision: u32, scale: u32) -> Result<i128, RowError> {
    let refuse = || RowError::Decimal { column, value: value.to_string(), precision, scale };
    let normalized = value.normalize();
    if normalized.scale() > scale {
        return Err(refuse());
    }
    let factor = 10i128.checked_pow(scale - normalized.scale()).ok_or_else(refuse)?;
    let scaled = normalized.mantissa().checked_mul(factor).ok_or_else(refuse)?;
    let limit = 10i128.checked_pow(precision).ok_or_else(refuse)?;
    if scaled.abs() >= limit {
        return Err(refuse());
    }
    Ok(scaled)
}

fn scaled64(column: &'static str, value: Decimal, scale: u32) -> Result<i64, RowError> {
    // Decimal64 keeps 18 digits, so the i128 always fits an i64.
    scaled(column, value, 18, scale).map(|v| v as i64)
}

impl<'a> LedgerRow<'a> {
    /// The row of `entry`, read at `offset` of ledger partition `partition`.
    pub fn new(entry: &'a LedgerEntry, partition: i32, offset: i64) -> Result<Self, RowError> {
        let millis = entry.occurred_at.timestamp_millis();
        let seconds =
            u32::try_from(millis.div_euclid(1000)).map_err(|_| RowError::Time(entry.occurred_at.to_rfc3339()))?;
        let booked = entry.booked_at.map_or(millis.div_euclid(1000), |at| at.timestamp());
        let booked_at = u32::try_from(booked)
            .map_err(|_| RowError::Time(entry.booked_at.unwrap_or(entry.occurred_at).to_rfc3339()))?;
        Ok(LedgerRow {
            ledger_partition: partition,
            ledger_offset: offset,
            entry_id: entry.entry_id,
            account_id: entry.account_id.as_str(),
            sequence: entry.sequence.0,
            epoch: entry.epoch.0,
            entry_type: entry_type_code(entry.entry_type),
            status: status_code(entry.status),
            reason: &entry.reason,
            input_id: entry.input_id,
            service: &entry.service,
            engine: &entry.engine,
            photo_event_id: &entry.photo_event_id,
            booth_id: &entry.booth_id,
            quantity: scaled64("quantity", entry.quantity, 3)?,
            credits: scaled("credits", entry.credits.decimal(), 38, 6)?,
            dollars: scaled64("dollars", entry.dollars.decimal(), 2)?,
            tier: tier_code(entry.tier),
            rate_version: &entry.rate_version,
            balance_after: scaled("balance_after", entry.balance_after.decimal(), 38, 6)?,
            low_balance_threshold: scaled("low_balance_threshold", entry.low_balance_threshold.decimal(), 38, 6)?,
            paused: u8::from(entry.paused),
            occurred_at: seconds,
            occurred_ms: millis.rem_euclid(1000) as u16,
            input_topic: &entry.source.topic,
            input_partition: entry.source.partition,
            input_offset: entry.source.offset,
            input_digest: entry.input_digest.as_ref().map_or(&[][..], |d| &d.0[..]),
            booked_at,
        })
    }

    /// The month partition (`toYYYYMM(occurred_at)`) the row goes to.
    pub fn month(&self) -> u32 {
        month_of_seconds(self.occurred_at)
    }

    /// The ledger partition.
    pub fn partition(&self) -> i32 {
        self.ledger_partition
    }
}

/// `toYYYYMM` of a UTC time in seconds.
pub fn month_of_seconds(seconds: u32) -> u32 {
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp(i64::from(seconds), 0).unwrap_or_default();
    at.year() as u32 * 100 + at.month()
}

/// RowBinary `String` from bytes (the digest is 16 raw bytes, or none).
mod serde_bytes_as_string {
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().expect("decimal")
    }

    #[test]
    fn decimals_are_rescaled_exactly_or_refused() {
        assert_eq!(scaled("c", d("2.5"), 38, 6), Ok(2_500_000));
        assert_eq!(scaled("c", d("2.500000000"), 38, 6), Ok(2_500_000), "trailing zeros are not digits");
        assert_eq!(scaled("c", d("-0.000001"), 38, 6), Ok(-1));
        assert!(scaled("c", d("0.0000001"), 38, 6).is_err(), "a 7th fractional digit is refused, not dropped");
        assert_eq!(scaled("c", d("1000000000000000"), 38, 6), Ok(1_000_000_000_000_000_000_000));
        assert!(scaled64("q", d("1000000000000000000"), 3).is_err(), "more than 18 digits do not fit Decimal64");
        assert_eq!(scaled64("d", d("999999999999999.99"), 2), Ok(99_999_999_999_999_999));
    }

    #[test]
    fn months_are_utc() {
        // 2026-11-30T23:59:59Z and one second later.
        assert_eq!(month_of_seconds(1_796_083_199), 202611);
        assert_eq!(month_of_seconds(1_796_083_200), 202612);
    }
}
