//! The one fenced ledger reader: which records of a ledger partition
//! count, for every reader of the ledger.
//!
//! Restore (metering rebuilding a partition's state), `tally summary`,
//! `tally inspect`, the aggregator that streams the ledger into
//! ClickHouse, reconciliation and the end-to-end tests all read ledger
//! partitions, and they must all agree on what the ledger says. So they
//! all read through [`FencedReader`]: feed it each record of one
//! partition in offset order, get back what the record is and whether it
//! counts under the zombie fence ([`crate::fence`]):
//!
//! - a CLAIM marker moves the fence (or is stale, superseded already);
//! - an entry or PROGRESS marker counts only if written with the epoch of
//!   the claim in force, else it is [`LedgerRecord::Fenced`]: a zombie's
//!   write, or an in-flight write of a killed process that landed after a
//!   newer claim;
//! - anything else is an error: the ledger topic holds only these.
//!
//! Sans-I/O: reading the partition from the broker (with the mid-batch
//! re-read some brokers need) is `tally_service::kafka::read_partition`'s
//! job; this is the fold over what it reads.
//!
//! ```
//! use tally_events::{ledger_reader::{FencedReader, LedgerRecord}, Codec, LedgerMarker, MarkerKind, Epoch};
//! let claim = LedgerMarker {
//!     kind: MarkerKind::Claim, claim_id: uuid::Uuid::nil(), epoch: Epoch(0), instance: "h:1".into(),
//!     input_topic: "tally.inputs".into(), input_partition: 0, next_input_offset: 0,
//! };
//! let mut reader = FencedReader::new(0);
//! let read = reader.read(0, &Codec::global().encode(&claim).unwrap()).unwrap();
//! assert!(matches!(read, LedgerRecord::Claim { accepted: true, .. }));
//! assert_eq!(reader.fence().epoch(), Some(Epoch(0)));
//! ```

use uuid::Uuid;

use crate::{
    codec::{Codec, CodecError},
    fence::{ClaimOutcome, Fence},
    ids::Epoch,
    records::{LedgerEntry, LedgerMarker, MarkerKind},
    Message,
};

/// What one ledger record is, under the fence.
// The entry is the common case and is handed over at once: boxing it
// would cost an allocation per record read.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerRecord {
    /// An entry that counts.
    Entry(LedgerEntry),
    /// A PROGRESS marker that counts: its writer handled every input below
    /// `next_input_offset`.
    Progress(LedgerMarker),
    /// A CLAIM marker; `accepted` when it is the new owner (else stale).
    Claim {
        /// The marker.
        marker: LedgerMarker,
        /// Whether it moved the fence.
        accepted: bool,
    },
    /// An entry or PROGRESS marker of an older epoch: it does not count.
    Fenced(Fenced),
}

/// A record the fence ignores.
#[allow(clippy::large_enum_variant)] // handed over at once, as `LedgerRecord`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// An entry.
    Entry(LedgerEntry),
    /// A PROGRESS marker.
    Progress(LedgerMarker),
}

/// Why a ledger record could not be read. Never retryable: the bytes are
/// what they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerReadError {
    /// The bytes do not decode.
    #[error("ledger partition {partition} offset {offset}: {source}")]
    Decode {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A record that has no place in a ledger topic.
    #[error("ledger partition {partition} offset {offset}: a {found}, not a ledger entry or marker")]
    NotLedger {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What it is.
        found: &'static str,
    },
    /// Records fed out of offset order.
    #[error("ledger partition {partition}: offset {offset} read after offset {previous}")]
    OutOfOrder {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// The previous one.
        previous: i64,
    },
}

/// Counts of what a reader has read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    /// Entries that count.
    pub entries: u64,
    /// PROGRESS markers that count.
    pub progress: u64,
    /// Claims, accepted or stale.
    pub claims: u64,
    /// Stale claims.
    pub stale_claims: u64,
    /// Entries and PROGRESS markers the fence ignored.
    pub fenced: u64,
}

/// Reads one ledger partition in offset order under the fence.
#[derive(Debug, Clone)]
pub struct FencedReader {
    partition: i32,
    fence: Fence,
    last_offset: Option<i64>,
    counts: ReadCounts,
}

impl FencedReader {
    /// A reader from the start of ledger partition `partition`.
    pub fn new(partition: i32) -> Self {
        FencedReader { partition, fence: Fence::new(), last_offset: None, counts: ReadCounts::default() }
    }

    /// A reader that continues after a point where the claim of `epoch`
    /// and `claim_id` was in force (a snapshot's).
    pub fn resuming(partition: i32, epoch: Epoch, claim_id: Uuid) -> Self {
        let mut reader = FencedReader::new(partition);
        reader.fence.observe_claim(epoch.0, claim_id);
        reader
    }

    /// Reads the record at `offset` (after every earlier one read).
    pub fn read(&mut self, offset: i64, payload: &[u8]) -> Result<LedgerRecord, LedgerReadError> {
        let partition = self.partition;
        if let Some(previous) = self.last_offset.filter(|previous| offset <= *previous) {
            return Err(LedgerReadError::OutOfOrder { partition, offset, previous });
        }
        let message = Codec::global().decode_any(payload).map_err(|source| LedgerReadError::Decode {
            partition,
            offset,
            source,
        })?;
        let record = match message {
            Message::Ledger(entry) if self.fence.admits(entry.epoch) => {
                self.counts.entries += 1;
                LedgerRecord::Entry(entry)
            }
            Message::Ledger(entry) => {
                self.counts.fenced += 1;
                LedgerRecord::Fenced(Fenced::Entry(entry))
            }
            Message::Marker(marker) => match marker.kind {
                MarkerKind::Claim => {
                    self.counts.claims += 1;
                    let accepted = self.fence.observe_claim(offset, marker.claim_id) == ClaimOutcome::Accepted;
                    if !accepted {
                        self.counts.stale_claims += 1;
                    }
                    LedgerRecord::Claim { marker, accepted }
                }
                MarkerKind::Progress if self.fence.admits(marker.epoch) => {
                    self.counts.progress += 1;
                    LedgerRecord::Progress(marker)
                }
                MarkerKind::Progress => {
                    self.counts.fenced += 1;
                    LedgerRecord::Fenced(Fenced::Progress(marker))
                }
            },
            other => {
                let found = match other {
                    Message::Input(_) => "input",
                    Message::Alert(_) => "alert",
                    Message::DeadLetter(_) => "dead letter",
                    Message::Snapshot(_) => "snapshot chunk",
                    Message::Ledger(_) | Message::Marker(_) => "ledger record",
                };
                return Err(LedgerReadError::NotLedger { partition, offset, found });
            }
        };
        self.last_offset = Some(offset);
        Ok(record)
    }

    /// The fence as the records read so far leave it.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// What has been read.
    pub fn counts(&self) -> ReadCounts {
        self.counts
    }

    /// The partition read.
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ids::{AccountId, Sequence},
        money::{Credits, Dollars},
        records::{EntryStatus, EntryType, PlanTier, SourceOffset},
        Alert, AlertKind,
    };

    fn marker(kind: MarkerKind, epoch: i64, id: u128) -> Vec<u8> {
        let marker = LedgerMarker {
            kind,
            claim_id: Uuid::from_u128(id),
            epoch: Epoch(epoch),
            instance: "h:1".into(),
            input_topic: "tally.inputs".into(),
            input_partition: 0,
            next_input_offset: 5,
        };
        Codec::global().encode(&marker).expect("encode")
    }

    fn entry(epoch: i64, sequence: i64) -> Vec<u8> {
        let entry = LedgerEntry {
            entry_id: Uuid::from_u128(sequence as u128),
            account_id: AccountId::parse("acct").expect("id"),
            sequence: Sequence(sequence),
            epoch: Epoch(epoch),
            entry_type: EntryType::Open,
            status: EntryStatus::Success,
            reason: String::new(),
            input_id: Uuid::from_u128(sequence as u128),
            service: String::new(),
            engine: String::new(),
            photo_event_id: String::new(),
            quantity: rust_decimal::Decimal::ZERO,
            credits: Credits::ZERO,
            dollars: Dollars::ZERO,
            tier: PlanTier::Pro,
            rate_version: String::new(),
            balance_after: Credits::ZERO,
            low_balance_threshold: Credits::ZERO,
            paused: false,
            occurred_at: chrono::DateTime::from_timestamp_millis(0).expect("time"),
            source: SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: sequence },
            booth_id: String::new(),
            input_digest: None,
            booked_at: None,
        };
        Codec::global().encode(&entry).expect("encode")
    }

    #[test]
    fn only_the_writes_of_the_claim_in_force_count() {
        let mut reader = FencedReader::new(0);
        let kind = |r: &LedgerRecord| match r {
            LedgerRecord::Entry(_) => "entry",
            LedgerRecord::Progress(_) => "progress",
            LedgerRecord::Claim { accepted: true, .. } => "claim",
            LedgerRecord::Claim { accepted: false, .. } => "stale claim",
            LedgerRecord::Fenced(_) => "fenced",
        };
        let log = [
            (0, entry(0, 1)),                     // before any claim
            (1, marker(MarkerKind::Claim, 0, 1)), // epoch 1
            (2, entry(1, 1)),                     // the owner's
            (3, marker(MarkerKind::Progress, 1, 1)),
            (4, marker(MarkerKind::Claim, 0, 2)), // epoch 4 supersedes
            (5, entry(1, 2)),                     // the old owner: a zombie
            (6, marker(MarkerKind::Progress, 1, 1)),
            (7, entry(4, 2)), // the new owner's
        ];
        let kinds: Vec<&str> = log.iter().map(|(o, bytes)| kind(&reader.read(*o, bytes).expect("reads"))).collect();
        assert_eq!(kinds, ["fenced", "claim", "entry", "progress", "claim", "fenced", "fenced", "entry"]);
        assert_eq!(reader.counts(), ReadCounts { entries: 2, progress: 1, claims: 2, stale_claims: 0, fenced: 3 });
        assert_eq!(reader.fence().epoch(), Some(Epoch(4)));
    }

    #[test]
    fn a_reader_resuming_from_a_snapshot_keeps_its_claim() {
        let mut reader = FencedReader::resuming(0, Epoch(1), Uuid::from_u128(1));
        assert!(matches!(reader.read(9, &entry(1, 3)).expect("reads"), LedgerRecord::Entry(_)));
        assert!(matches!(reader.read(10, &entry(0, 4)).expect("reads"), LedgerRecord::Fenced(_)));
    }

    #[test]
    fn what_is_no_ledger_record_is_an_error() {
        let mut reader = FencedReader::new(3);
        assert!(matches!(reader.read(0, b"garbage"), Err(LedgerReadError::Decode { partition: 3, offset: 0, .. })));
        let alert = Alert {
            alert_id: Uuid::nil(),
            account_id: AccountId::parse("a").expect("id"),
            kind: AlertKind::Paused,
            sequence: Sequence(1),
            balance: Credits::ZERO,
            threshold: Credits::ZERO,
            occurred_at: chrono::DateTime::from_timestamp_millis(0).expect("time"),
            message: String::new(),
            tier: None,
        };
        let bytes = Codec::global().encode(&alert).expect("encode");
        assert!(matches!(reader.read(1, &bytes), Err(LedgerReadError::NotLedger { found: "alert", .. })));
        reader.read(5, &marker(MarkerKind::Claim, 0, 1)).expect("reads");
        assert!(matches!(reader.read(5, &entry(5, 1)), Err(LedgerReadError::OutOfOrder { .. })));
    }
}
