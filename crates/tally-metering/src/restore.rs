//! Rebuilding one partition's state from the ledger, and claiming it.
//!
//! The ledger partition is the source of truth: entries that count under
//! the fence (see `tally_events::fence`) are restored into a fresh
//! [`Ledger`] in log order, and the resume point is the offset after the
//! last input that an entry or PROGRESS marker says was handled.
//!
//! Sequence: append a CLAIM, wait for its acknowledgement (its offset O is
//! the new epoch), read the partition up to O. Reading up to a known offset
//! needs no "end of partition" answer from the broker (some brokers report
//! a high watermark that lags acknowledged writes). Records a zombie lands
//! before O are part of the state (the log order says they came first);
//! records of older epochs after O never count.

use std::sync::Arc;

use rdkafka::{message::BorrowedMessage, Message};
use tally_events::{
    fence::{ClaimOutcome, Fence},
    Codec, LedgerEntry, MarkerKind, Message as Record,
};
use tally_ledger::{Ledger, LedgerConfig, LedgerSnapshot, RateTable};
use uuid::Uuid;

use crate::snapshot::SnapshotPoint;

/// Reads a ledger partition, applying the fence.
pub struct Restorer {
    /// The state being rebuilt.
    pub ledger: Ledger,
    /// The fence.
    pub fence: Fence,
    /// Next input offset to read.
    pub resume: i64,
    /// Entries restored.
    pub entries: u64,
    /// Records ignored by the fence.
    pub fenced: u64,
    input_topic: String,
    input_partition: i32,
}

impl Restorer {
    /// A restorer for one input partition.
    pub fn new(rates: Arc<RateTable>, config: LedgerConfig, input_topic: &str, input_partition: i32) -> Self {
        Restorer {
            ledger: Ledger::new(rates, config),
            fence: Fence::new(),
            resume: 0,
            entries: 0,
            fenced: 0,
            input_topic: input_topic.to_string(),
            input_partition,
        }
    }

    /// A restorer that continues from a snapshot: the state, fence and
    /// resume point it records, ready to visit the ledger from
    /// `point.ledger_next_offset`.
    pub fn from_snapshot(
        rates: Arc<RateTable>,
        config: LedgerConfig,
        point: &SnapshotPoint,
        state: LedgerSnapshot,
    ) -> Self {
        let mut fence = Fence::new();
        fence.observe_claim(point.claim_epoch, point.claim_id);
        Restorer {
            ledger: Ledger::from_snapshot(rates, config, state),
            fence,
            resume: point.resume_input_offset,
            entries: 0,
            fenced: 0,
            input_topic: point.input_topic.clone(),
            input_partition: point.input_partition,
        }
    }

    /// Visits one ledger record in log order.
    pub fn visit(&mut self, message: &BorrowedMessage<'_>) -> Result<(), String> {
        let payload = message.payload().unwrap_or_default();
        let where_ =
            || format!("ledger record {}/{} offset {}", message.topic(), message.partition(), message.offset());
        match Codec::global().decode_any(payload).map_err(|e| format!("{}: {e}", where_()))? {
            Record::Ledger(entry) => self.entry(&entry).map_err(|e| format!("{}: {e}", where_())),
            Record::Marker(marker) => {
                match marker.kind {
                    MarkerKind::Claim => {
                        if self.fence.observe_claim(message.offset(), marker.claim_id) == ClaimOutcome::Stale {
                            self.fenced += 1;
                        }
                    }
                    MarkerKind::Progress => {
                        if self.fence.admits(marker.epoch) {
                            self.resume = self.resume.max(marker.next_input_offset);
                        } else {
                            self.fenced += 1;
                        }
                    }
                }
                Ok(())
            }
            other => Err(format!("{}: not a ledger record: {other:?}", where_())),
        }
    }

    fn entry(&mut self, entry: &LedgerEntry) -> Result<(), String> {
        if !self.fence.admits(entry.epoch) {
            self.fenced += 1;
            return Ok(());
        }
        if entry.source.topic != self.input_topic || entry.source.partition != self.input_partition {
            return Err(format!(
                "entry {} comes from {}/{}, but this ledger partition records {}/{}",
                entry.entry_id, entry.source.topic, entry.source.partition, self.input_topic, self.input_partition
            ));
        }
        self.ledger
            .restore(entry)
            .map_err(|e| format!("entry {} (account {}): {e}", entry.entry_id, entry.account_id))?;
        self.resume = self.resume.max(entry.source.offset + 1);
        self.entries += 1;
        Ok(())
    }

    /// Whether `claim_id` is the claim in force.
    pub fn owns(&self, claim_id: Uuid) -> bool {
        self.fence.claim_id() == Some(claim_id)
    }
}
