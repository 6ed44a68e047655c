//! The Avro bodies of a usage event and a ledger entry in their current
//! schemas, read by hand: metering reads an input per event, and every
//! ledger reader (the aggregator, reconciliation, metering's restore) an
//! entry per record; these are their hot paths.
//!
//! The generic reader (`serde_avro_fast`, behind it apache-avro) matches
//! each field by name through serde's visitors, checks UTF-8 and copies
//! every string through them: about 1 us per entry and 0.6 us per input.
//! Here the fields are read in the schema's order
//! (`schemas/avro/usage_event.avsc`, `ledger_entry.avsc`) with Avro's
//! binary encoding, and texts are parsed by the same functions the serde
//! path calls (`Uuid`'s `FromStr`, [`crate::decimal::parse_exact`]).
//!
//! Invariant: a body read here reads as the same record by the generic
//! reader. Anything this reader is not sure of (a varint that is not in
//! its shortest form or does not fit its type, an enum index past the
//! symbols, text that is not UTF-8 or does not parse, a repeated map key,
//! bytes left over) returns `None`, and the codec gives the body to the
//! generic readers, whose verdict and error stand. So this can only be
//! faster, never different; `tests/codec.rs` checks both directions on
//! random records and on every one-byte change of encoded ones. A schema
//! change must change this file too, and those tests fail until it does.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    decimal::parse_exact,
    ids::{AccountId, Epoch, Sequence},
    money::{Credits, Dollars},
    records::{
        EntryStatus, EntryType, InputDigest, JobOutcome, LedgerEntry, PlanTier, Producer, SourceOffset, Unit,
        UsageEvent,
    },
};

/// Reads a usage event's body, or `None` (see the module docs).
pub(crate) fn usage_event(body: &[u8]) -> Option<UsageEvent> {
    let mut r = Reader(body);
    let event = UsageEvent {
        event_id: r.uuid()?,
        account_id: r.string()?,
        photo_event_id: r.string()?,
        booth_id: r.string()?,
        job_id: r.string()?,
        service: r.string()?,
        engine: r.string()?,
        quantity: r.decimal()?,
        unit: [Unit::Image, Unit::VideoSecond, Unit::Message][r.index(3)?],
        outcome: [JobOutcome::Succeeded, JobOutcome::Failed][r.index(2)?],
        occurred_at: r.millis()?,
        producer: Producer { worker: r.string()?, version: r.string()? },
        attributes: r.string_map()?,
    };
    r.end()?;
    Some(event)
}

/// Reads a ledger entry's body, or `None` (see the module docs).
pub(crate) fn ledger_entry(body: &[u8]) -> Option<LedgerEntry> {
    let mut r = Reader(body);
    let entry = LedgerEntry {
        entry_id: r.uuid()?,
        account_id: AccountId::new_unchecked(r.string()?),
        sequence: Sequence(r.long()?),
        epoch: Epoch(r.long()?),
        entry_type: [EntryType::Open, EntryType::Consume, EntryType::Add, EntryType::Update, EntryType::Forfeit]
            [r.index(5)?],
        status: [EntryStatus::Success, EntryStatus::Failed][r.index(2)?],
        reason: r.string()?,
        input_id: r.uuid()?,
        service: r.string()?,
        engine: r.string()?,
        photo_event_id: r.string()?,
        quantity: r.decimal()?,
        credits: Credits::new(r.decimal()?),
        dollars: Dollars::new(r.decimal()?),
        tier: [PlanTier::Payg, PlanTier::Basic, PlanTier::Pro][r.index(3)?],
        rate_version: r.string()?,
        balance_after: Credits::new(r.decimal()?),
        low_balance_threshold: Credits::new(r.decimal()?),
        paused: r.boolean()?,
        occurred_at: r.millis()?,
        source: SourceOffset { topic: r.string()?, partition: r.int()?, offset: r.long()? },
        booth_id: r.string()?,
        input_digest: match r.bytes()? {
            [] => None,
            digest => Some(InputDigest(digest.try_into().ok()?)),
        },
        booked_at: match r.index(2)? {
            0 => None,
            _ => Some(r.millis()?),
        },
    };
    r.end()?;
    Some(entry)
}

/// The bytes not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A zig-zag varint long, in its shortest form only.
    fn long(&mut self) -> Option<i64> {
        let mut value: u64 = 0;
        for (n, &byte) in self.0.iter().enumerate().take(10) {
            let bits = u64::from(byte & 0x7F);
            // The tenth byte holds the one bit left of 64.
            if n == 9 && bits > 1 {
                return None;
            }
            value |= bits << (7 * n);
            if byte & 0x80 == 0 {
                // A last byte of zero after others is a longer form of a
                // shorter number.
                if n > 0 && byte == 0 {
                    return None;
                }
                self.0 = &self.0[n + 1..];
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }

    /// An Avro `int`: a long that fits 32 bits.
    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    /// An enum's symbol index (or a union's branch) below `symbols`.
    fn index(&mut self, symbols: usize) -> Option<usize> {
        usize::try_from(self.long()?).ok().filter(|&index| index < symbols)
    }

    fn boolean(&mut self) -> Option<bool> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        match byte {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.long()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// A UUID carried as text, parsed as the serde path parses it.
    fn uuid(&mut self) -> Option<Uuid> {
        self.str()?.parse().ok()
    }

    /// A decimal carried as text, read exactly as the serde path reads it.
    fn decimal(&mut self) -> Option<Decimal> {
        parse_exact(self.str()?).ok()
    }

    /// A `timestamp-millis` long.
    fn millis(&mut self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self.long()?)
    }

    /// A map of strings: blocks of entries, each block's count first (a
    /// negative count is followed by the block's size in bytes), ended by
    /// an empty block.
    fn string_map(&mut self) -> Option<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Some(map);
            }
            if count < 0 {
                self.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                let key = self.string()?;
                let value = self.string()?;
                if map.insert(key, value).is_some() {
                    return None; // a repeated key: the generic reader decides
                }
            }
        }
    }

    /// Nothing may be left after the record.
    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}
