//! One owned input partition: its ledger state, where its input and its
//! ledger writes stand, and the contiguity check that keeps a superseded
//! owner from writing on.
//!
//! Contiguity, the fence's other half: after its claim, an owner's writes
//! must land at consecutive ledger offsets. A write that lands anywhere
//! else means someone wrote in between (a newer claim from an instance
//! that took the partition, a zombie's late write): the owner stops before
//! committing anything, and its restart claims again and rebuilds from what
//! the log says. Without the check, an owner superseded by a later claim
//! would keep writing entries that every reader ignores.

use std::time::Instant;

use tally_events::Epoch;
use tally_ledger::Ledger;
use tally_service::kafka::ReRead;
use uuid::Uuid;

/// Where this owner's next ledger write must land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contiguity {
    /// Ledger offset of this owner's last write (its claim at first);
    /// `None`: not checked (the deliberately broken test variant).
    last: Option<i64>,
}

/// A write that did not land right after the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignWrite {
    /// Where it had to land.
    pub expected: i64,
    /// Where it landed.
    pub got: i64,
}

impl Contiguity {
    /// Writes must follow `claim_offset`.
    pub fn after(claim_offset: i64) -> Self {
        Contiguity { last: Some(claim_offset) }
    }

    /// No check (only the deliberately broken variant of the tests).
    pub fn unchecked() -> Self {
        Contiguity { last: None }
    }

    /// Takes the offset where this owner's next write landed.
    pub fn landed(&mut self, offset: i64) -> Result<(), ForeignWrite> {
        if let Some(last) = self.last {
            if offset != last + 1 {
                return Err(ForeignWrite { expected: last + 1, got: offset });
            }
            self.last = Some(offset);
        }
        Ok(())
    }

    /// The offset after this owner's last write: what a snapshot cut now
    /// covers. `None` when unchecked.
    pub fn next_offset(&self) -> Option<i64> {
        self.last.map(|last| last + 1)
    }
}

/// One owned input partition.
pub(crate) struct PartitionState {
    pub(crate) ledger: Ledger,
    pub(crate) epoch: Epoch,
    pub(crate) claim_id: Uuid,
    /// Next input offset to handle.
    pub(crate) next_offset: i64,
    /// Input offset up to which every ledger record is acknowledged (the
    /// end of the last completed batch): what offset commits report.
    pub(crate) durable_offset: i64,
    /// Offset after the input of the last ledger entry or marker written.
    pub(crate) recorded_offset: i64,
    /// Where this owner's next ledger write must land.
    pub(crate) contiguity: Contiguity,
    /// Repositioning after a fetch that came back past `next_offset`.
    pub(crate) reread: ReRead,
    /// Ledger entries written since the last snapshot (or the restore).
    pub(crate) since_snapshot: u64,
    /// When the last snapshot was written (or the partition restored).
    pub(crate) last_snapshot: Instant,
    /// Snapshot key slot to write next (alternates; see `snapshot`).
    pub(crate) snapshot_slot: u8,
}

impl PartitionState {
    /// A partition just taken: inputs resume at `resume`, and this owner's
    /// next ledger write must follow `ledger_offset` (-1: not checked).
    pub(crate) fn new(ledger: Ledger, epoch: Epoch, claim_id: Uuid, resume: i64, ledger_offset: i64) -> Self {
        PartitionState {
            ledger,
            epoch,
            claim_id,
            next_offset: resume,
            durable_offset: resume,
            recorded_offset: resume,
            contiguity: if ledger_offset >= 0 { Contiguity::after(ledger_offset) } else { Contiguity::unchecked() },
            reread: ReRead::default(),
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            snapshot_slot: 0,
        }
    }
}

impl PartitionState {
    /// Whether a snapshot is due: entries since the last one, and either
    /// `every` of them or `interval` passed.
    pub(crate) fn snapshot_due(&self, every: u64, interval: std::time::Duration) -> bool {
        self.contiguity.next_offset().is_some()
            && self.since_snapshot > 0
            && (self.since_snapshot >= every || self.last_snapshot.elapsed() >= interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_must_follow_each_other_from_the_claim() {
        let mut contiguity = Contiguity::after(10);
        assert_eq!(contiguity.landed(11), Ok(()));
        assert_eq!(contiguity.landed(12), Ok(()));
        assert_eq!(contiguity.next_offset(), Some(13));
        // Someone wrote at 13: this owner's write came back at 14.
        assert_eq!(contiguity.landed(14), Err(ForeignWrite { expected: 13, got: 14 }));
        // A write that lands before (a stale acknowledgement) is foreign too.
        let mut contiguity = Contiguity::after(10);
        assert_eq!(contiguity.landed(10), Err(ForeignWrite { expected: 11, got: 10 }));
    }

    #[test]
    fn the_broken_variant_checks_nothing() {
        let mut contiguity = Contiguity::unchecked();
        assert_eq!(contiguity.landed(99), Ok(()));
        assert_eq!(contiguity.next_offset(), None);
    }
}
