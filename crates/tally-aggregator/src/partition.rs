//! One ledger partition as the aggregator reads it: which records become
//! rows, which are skipped and which are dead-lettered. Sans-I/O.
//!
//! Invariants (docs/DESIGN.md, "The ledger in ClickHouse"):
//! - records are taken in offset order from `next`; an earlier one (a
//!   re-read, a stale fetch) is ignored;
//! - what counts is what the one fenced reader says counts
//!   ([`FencedReader`]): markers and fenced records never become rows;
//! - an offset found in ClickHouse already at recovery (`present`: written
//!   by an INSERT whose outcome was unknown) is never inserted again;
//! - an entry whose (account, sequence) is at or below the account's high
//!   water is a duplicate: skipped when it is the same entry (a benign
//!   duplicate in the topic), dead-lettered as `ledger_conflict` when its
//!   content differs; either way never a second row;
//! - a record that does not decode, or cannot be stored exactly, is
//!   dead-lettered with its coordinates and bytes, never dropped silently
//!   and never a reason to stop reading.

use rustc_hash::{FxHashMap, FxHashSet};
use tally_events::{
    ledger_reader::{FencedReader, LedgerRecord},
    DeadLetter, LedgerEntry, Reason, SourceOffset,
};
use tally_warehouse::row::LedgerRow;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below `next`: read already.
    Stale,
    /// A counted entry, queued as a row.
    Row,
    /// A counted entry ClickHouse holds already (found at recovery).
    Present,
    /// The same entry again.
    Duplicate,
    /// A marker, or a record the fence ignores.
    NotCounted,
    /// Dead-lettered, with this reason.
    Dead(Reason),
}

/// Counts of what a partition read, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rows queued.
    pub rows: u64,
    /// Entries skipped because ClickHouse had them.
    pub present: u64,
    /// Benign duplicates skipped.
    pub duplicates: u64,
    /// Markers and fenced records.
    pub not_counted: u64,
    /// Dead letters.
    pub dead: u64,
    /// Entries whose sequence skipped ahead of the account's high water.
    pub gaps: u64,
}

/// The read state of one ledger partition.
#[derive(Debug)]
pub struct PartitionReader {
    ledger_topic: String,
    reader: FencedReader,
    next: i64,
    present: FxHashSet<i64>,
    high_water: FxHashMap<String, (i64, uuid::Uuid)>,
    pending: Vec<(i64, LedgerEntry)>,
    dead: Vec<DeadLetter>,
    tally: Tally,
}

impl PartitionReader {
    /// Reading partition `reader.partition()` from `next`, with the
    /// offsets at or after `next` that ClickHouse holds already and each
    /// account's high water (last sequence and its entry id) below `next`.
    pub fn new(
        ledger_topic: &str,
        reader: FencedReader,
        next: i64,
        present: FxHashSet<i64>,
        high_water: FxHashMap<String, (i64, uuid::Uuid)>,
    ) -> Self {
        PartitionReader {
            ledger_topic: ledger_topic.to_string(),
            reader,
            next,
            present,
            high_water,
            pending: Vec::new(),
            dead: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.reader.partition()
    }

    /// The next offset to read.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// The fence in force at `next`.
    pub fn fence(&self) -> &tally_events::fence::Fence {
        self.reader.fence()
    }

    /// What was read so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// Rows queued and not yet flushed.
    pub fn pending_rows(&self) -> usize {
        self.pending.len()
    }

    fn dead_letter(
        &mut self,
        reason: Reason,
        detail: String,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Outcome {
        let source = SourceOffset { topic: self.ledger_topic.clone(), partition: self.partition(), offset };
        tracing::error!(partition = self.partition(), offset, reason = reason.code(), %detail, "ledger record dead-lettered");
        self.dead.push(DeadLetter::of_input(reason, detail, source, key, Some(payload), String::new()));
        self.tally.dead += 1;
        Outcome::Dead(reason)
    }

    /// Takes the record at `offset`.
    pub fn accept(&mut self, offset: i64, key: Option<&[u8]>, payload: &[u8]) -> Outcome {
        if offset < self.next {
            return Outcome::Stale;
        }
        self.next = offset + 1;
        let entry = match self.reader.read(offset, payload) {
            Ok(LedgerRecord::Entry(entry)) => entry,
            Ok(_) => {
                self.tally.not_counted += 1;
                return Outcome::NotCounted;
            }
            Err(error) => return self.dead_letter(Reason::LedgerUndecodable, error.to_string(), offset, key, payload),
        };
        let account = entry.account_id.as_str();
        let sequence = entry.sequence.0;
        let last = self.high_water.get(account).copied();
        if self.present.remove(&offset) {
            self.high_water.insert(account.to_string(), (sequence, entry.entry_id));
            self.tally.present += 1;
            return Outcome::Present;
        }
        if let Some((high, id)) = last {
            if sequence <= high {
                if sequence == high && id == entry.entry_id {
                    self.tally.duplicates += 1;
                    return Outcome::Duplicate;
                }
                let detail = format!(
                    "account {account} sequence {sequence} is at or below its last stored sequence {high}; \
                     the stored entry stands"
                );
                return self.dead_letter(Reason::LedgerConflict, detail, offset, key, payload);
            }
            if sequence > high + 1 {
                self.tally.gaps += 1;
                tracing::warn!(
                    partition = self.partition(),
                    offset,
                    account,
                    sequence,
                    high,
                    "sequence gap in the ledger"
                );
            }
        }
        if let Err(error) = LedgerRow::new(&entry, self.partition(), offset) {
            return self.dead_letter(Reason::LedgerUnstorable, error.to_string(), offset, key, payload);
        }
        self.high_water.insert(account.to_string(), (sequence, entry.entry_id));
        self.pending.push((offset, entry));
        self.tally.rows += 1;
        Outcome::Row
    }

    /// The queued rows and dead letters, handed over for a flush.
    pub fn take(&mut self) -> (Vec<(i64, LedgerEntry)>, Vec<DeadLetter>) {
        (std::mem::take(&mut self.pending), std::mem::take(&mut self.dead))
    }

    /// Whether anything was read since the last flush that ClickHouse
    /// should learn (rows, dead letters, or just progress).
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.dead.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_events::{
        AccountId, Codec, Credits, Dollars, EntryStatus, EntryType, Epoch, LedgerMarker, MarkerKind, PlanTier, Sequence,
    };
    use uuid::Uuid;

    fn entry(account: &str, sequence: i64, epoch: i64, id: u128) -> Vec<u8> {
        let entry = LedgerEntry {
            entry_id: Uuid::from_u128(id),
            account_id: AccountId::parse(account).expect("id"),
            sequence: Sequence(sequence),
            epoch: Epoch(epoch),
            entry_type: EntryType::Consume,
            status: EntryStatus::Success,
            reason: String::new(),
            input_id: Uuid::from_u128(id),
            service: "ai_modify".into(),
            engine: "nano_banana_2".into(),
            photo_event_id: "ev".into(),
            quantity: rust_decimal::Decimal::ONE,
            credits: Credits::new(rust_decimal::Decimal::new(25, 1)),
            dollars: Dollars::new(rust_decimal::Decimal::new(30, 2)),
            tier: PlanTier::Payg,
            rate_version: "2026-01".into(),
            balance_after: Credits::ZERO,
            low_balance_threshold: Credits::ZERO,
            paused: false,
            occurred_at: chrono::DateTime::from_timestamp_millis(1_796_083_200_123).expect("time"),
            source: SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: sequence },
            booth_id: String::new(),
            input_digest: None,
            booked_at: None,
        };
        Codec::global().encode(&entry).expect("encode")
    }

    fn claim(id: u128) -> Vec<u8> {
        let marker = LedgerMarker {
            kind: MarkerKind::Claim,
            claim_id: Uuid::from_u128(id),
            epoch: Epoch(0),
            instance: "h:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 0,
            next_input_offset: 0,
        };
        Codec::global().encode(&marker).expect("encode")
    }

    fn reader() -> PartitionReader {
        PartitionReader::new("tally.ledger", FencedReader::new(0), 0, FxHashSet::default(), FxHashMap::default())
    }

    #[test]
    fn counted_entries_become_rows_and_nothing_else_does() {
        let mut r = reader();
        assert_eq!(r.accept(0, None, &claim(1)), Outcome::NotCounted);
        assert_eq!(r.accept(1, None, &entry("a", 1, 0, 1)), Outcome::Row);
        assert_eq!(r.accept(1, None, &entry("a", 1, 0, 1)), Outcome::Stale, "a re-read is ignored");
        assert_eq!(r.accept(2, None, &entry("a", 1, 0, 1)), Outcome::Duplicate, "the same entry again");
        assert_eq!(r.accept(3, None, &claim(2)), Outcome::NotCounted);
        assert_eq!(r.accept(4, None, &entry("a", 2, 0, 2)), Outcome::NotCounted, "a zombie's write is fenced");
        assert_eq!(r.accept(5, None, &entry("a", 2, 3, 3)), Outcome::Row);
        assert_eq!(r.accept(6, None, b"not avro"), Outcome::Dead(Reason::LedgerUndecodable));
        assert_eq!(r.accept(7, None, &entry("a", 2, 3, 9)), Outcome::Dead(Reason::LedgerConflict));
        assert_eq!(r.next(), 8);
        let (rows, dead) = r.take();
        assert_eq!(rows.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].source.offset, 6);
        assert_eq!(dead[0].payload.as_deref(), Some(&b"not avro"[..]), "the record as it was");
        assert_eq!(dead[1].reason, "ledger_conflict");
        assert!(!r.has_work());
    }

    #[test]
    fn offsets_clickhouse_holds_are_not_inserted_again() {
        let present: FxHashSet<i64> = [11].into_iter().collect();
        let high: FxHashMap<String, (i64, Uuid)> = [("a".to_string(), (4, Uuid::from_u128(4)))].into_iter().collect();
        let mut fence = FencedReader::new(0);
        fence.read(0, &claim(1)).expect("claim");
        let mut r = PartitionReader::new("tally.ledger", fence, 10, present, high);
        assert_eq!(r.accept(10, None, &entry("b", 1, 0, 10)), Outcome::Row);
        assert_eq!(r.accept(11, None, &entry("a", 5, 0, 5)), Outcome::Present);
        assert_eq!(r.accept(12, None, &entry("a", 5, 0, 5)), Outcome::Duplicate, "the high water moved past it");
        assert_eq!(r.accept(13, None, &entry("a", 7, 0, 7)), Outcome::Row);
        assert_eq!(r.tally().gaps, 1, "a sequence gap is counted, and the entry still stored");
    }
}
