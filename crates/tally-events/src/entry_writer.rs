//! The Avro body of a ledger entry, written by hand: metering writes one
//! per input, and this is its hot path.
//!
//! A generic serde writer looks each field up by name and formats every
//! decimal and id through a heap `String` (`collect_str`); together that
//! was over a quarter of metering's CPU per input. Here the fields are
//! written in the schema's order (`schemas/avro/ledger_entry.avsc`) with
//! Avro's binary encoding: zig-zag varint longs and lengths, enums by
//! symbol index, decimals and UUIDs as text formatted on the stack.
//!
//! Invariant: the bytes equal the reference writer's (apache-avro guided by
//! the schema) for every entry; `tests/codec.rs` checks it for every enum
//! symbol, absent and present optional fields and random entries. A schema
//! change must change this file too, and that test fails until it does.
//! Anything that does not fit the stack buffers (no valid entry) returns
//! `None` and the codec uses the generic writer, so this can only be
//! faster, never different.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};

use crate::records::LedgerEntry;

/// Appends the body of `entry` to `out`, or `None` (with `out` as it was)
/// when a text field does not fit the stack buffer.
pub(crate) fn write(entry: &LedgerEntry, out: &mut Vec<u8>) -> Option<()> {
    let start = out.len();
    let written = write_fields(entry, out);
    if written.is_none() {
        out.truncate(start);
    }
    written
}

fn write_fields(entry: &LedgerEntry, out: &mut Vec<u8>) -> Option<()> {
    uuid(out, &entry.entry_id);
    string(out, entry.account_id.as_str());
    long(out, entry.sequence.0);
    long(out, entry.epoch.0);
    // Enums by index: each Rust enum lists its variants in the schema's
    // symbol order (the codec's writers rely on it too).
    long(out, entry.entry_type as i64);
    long(out, entry.status as i64);
    string(out, &entry.reason);
    uuid(out, &entry.input_id);
    string(out, &entry.service);
    string(out, &entry.engine);
    string(out, &entry.photo_event_id);
    decimal(out, entry.quantity)?;
    decimal(out, entry.credits.decimal())?;
    decimal(out, entry.dollars.decimal())?;
    long(out, entry.tier as i64);
    string(out, &entry.rate_version);
    decimal(out, entry.balance_after.decimal())?;
    decimal(out, entry.low_balance_threshold.decimal())?;
    out.push(u8::from(entry.paused));
    millis(out, &entry.occurred_at);
    string(out, &entry.source.topic);
    long(out, i64::from(entry.source.partition));
    long(out, entry.source.offset);
    string(out, &entry.booth_id);
    match &entry.input_digest {
        Some(digest) => bytes(out, &digest.0),
        None => bytes(out, &[]),
    }
    match &entry.booked_at {
        None => long(out, 0),
        Some(at) => {
            long(out, 1);
            millis(out, at);
        }
    }
    Some(())
}

/// A zig-zag varint long (Avro `int` and `long` alike).
fn long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    long(out, value.len() as i64);
    out.extend_from_slice(value);
}

fn string(out: &mut Vec<u8>, value: &str) {
    bytes(out, value.as_bytes());
}

fn millis(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    long(out, at.timestamp_millis());
}

fn uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(out, id.hyphenated().encode_lower(&mut buffer));
}

/// A decimal's `Display` text (every digit of its scale, as rust_decimal
/// prints it). Amounts are non-negative and far below 2^64 units of their
/// scale, so their digits come from one u64, written back to front; any
/// other value (negative, or a mantissa past 64 bits) takes `Display`.
/// rust_decimal's own formatting divides the 96-bit mantissa word by word
/// and was about 5% of metering's CPU (five amounts per entry).
fn decimal(out: &mut Vec<u8>, value: rust_decimal::Decimal) -> Option<()> {
    let mantissa = value.mantissa();
    let Ok(mut units) = u64::try_from(mantissa) else { return text(out, &value) };
    if value.is_sign_negative() {
        return text(out, &value);
    }
    let scale = value.scale() as usize;
    // Digits back to front: at most 20 for a u64, plus the point and the
    // leading zeros of a scale (at most 28) larger than the digits.
    let mut buffer = [b'0'; 52];
    let mut at = buffer.len();
    let mut written = 0;
    while units > 0 || written <= scale {
        if written == scale && scale > 0 {
            at -= 1;
            buffer[at] = b'.';
        }
        at -= 1;
        buffer[at] = b'0' + (units % 10) as u8;
        units /= 10;
        written += 1;
    }
    bytes(out, &buffer[at..]);
    Some(())
}

/// A value's `Display` text, formatted on the stack.
fn text(out: &mut Vec<u8>, value: &impl fmt::Display) -> Option<()> {
    let mut buffer = Stack::default();
    write!(buffer, "{value}").ok()?;
    bytes(out, buffer.as_bytes());
    Some(())
}

/// Room for any decimal's text (at most 29 digits, a sign and a point).
struct Stack {
    bytes: [u8; 48],
    len: usize,
}

impl Default for Stack {
    fn default() -> Self {
        Stack { bytes: [0; 48], len: 0 }
    }
}

impl Stack {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for Stack {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    /// The fast path writes exactly `Display`'s text, for every scale,
    /// zeros with scale, mantissas at and past 64 bits, and negatives.
    #[test]
    fn decimals_are_written_as_display_writes_them() {
        let mut values = Vec::new();
        for scale in 0..=28u32 {
            for mantissa in [0i128, 1, 5, 9, 10, 99, 100, 1234, 120, 1_000_000, i128::from(u64::MAX)] {
                for negative in [false, true] {
                    let m = if negative { -mantissa } else { mantissa };
                    values.push(Decimal::from_i128_with_scale(m, scale));
                }
            }
            values.push(Decimal::from_i128_with_scale(i128::from(u64::MAX) + 1, scale));
            values.push(Decimal::MAX);
            values.push(Decimal::MIN);
        }
        let mut random = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let mantissa = i128::from(random >> (random % 64));
            values.push(Decimal::from_i128_with_scale(mantissa, (random % 29) as u32));
        }
        for value in values {
            let (mut fast, mut shown) = (Vec::new(), Vec::new());
            decimal(&mut fast, value).expect("fits");
            text(&mut shown, &value).expect("fits");
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&shown), "{value:?}");
        }
    }

    #[test]
    fn longs_are_zig_zag_varints() {
        let cases: [(i64, &[u8]); 7] = [
            (0, &[0]),
            (-1, &[1]),
            (1, &[2]),
            (63, &[126]),
            (64, &[128, 1]),
            (-65, &[129, 1]),
            (i64::MIN, &[255, 255, 255, 255, 255, 255, 255, 255, 255, 1]),
        ];
        for (value, expected) in cases {
            let mut out = Vec::new();
            long(&mut out, value);
            assert_eq!(out, expected, "{value}");
        }
    }

    #[test]
    fn text_that_does_not_fit_is_refused_not_cut() {
        let mut out = vec![7];
        assert_eq!(text(&mut out, &"x".repeat(49)), None);
        assert_eq!(text(&mut out, &"x".repeat(48)), Some(()));
        assert_eq!(out.len(), 1 + 1 + 48);
    }
}
