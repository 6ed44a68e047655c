//! The zombie fence: which records of a ledger partition count.
//!
//! Kafka transactions are not used (not every broker tally runs on commits
//! them), so a metering instance that lost its partition but still writes
//! (a zombie: stalled by GC, SIGSTOP, a network stall, or a produce request
//! still in flight after kill -9) could append to the ledger. The rule:
//!
//! - an owner appends a CLAIM marker before it writes anything else; the
//!   claim's epoch is its own offset in the partition (unique, increasing,
//!   and known to nobody before it is written, so no two claims share one);
//! - every entry and PROGRESS marker carries its writer's epoch, and counts
//!   only if that epoch is the offset of the last claim before it.
//!
//! A claim therefore always supersedes the ones before it. The owner checks
//! that its own writes land at contiguous offsets after its claim: a gap
//! means someone else wrote in between (a newer claim, a zombie), and the
//! owner stops before committing anything, so a restart rebuilds from what
//! the log says. Every reader of the ledger (state restore, summary,
//! aggregator, reconciliation) applies this same rule, record by record, in
//! log order: [`crate::ledger_reader::FencedReader`] is that rule applied to
//! the bytes of a partition, and the one way tally reads its ledger.

use uuid::Uuid;

use crate::ids::Epoch;

/// Fence state while reading one ledger partition in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    /// Epoch (claim offset) and id of the claim in force.
    claim: Option<(Epoch, Uuid)>,
}

/// What a claim did to the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// A new owner: records of older epochs no longer count.
    Accepted,
    /// Its epoch was not above the current one: ignored.
    Stale,
}

impl Fence {
    /// A fence before any record.
    pub fn new() -> Self {
        Fence::default()
    }

    /// Observes a CLAIM marker read at `offset`, which is its epoch.
    pub fn observe_claim(&mut self, offset: i64, claim_id: Uuid) -> ClaimOutcome {
        match self.claim {
            Some((epoch, _)) if offset <= epoch.0 => ClaimOutcome::Stale,
            _ => {
                self.claim = Some((Epoch(offset), claim_id));
                ClaimOutcome::Accepted
            }
        }
    }

    /// Whether an entry or PROGRESS marker written with `epoch` counts.
    pub fn admits(&self, epoch: Epoch) -> bool {
        self.claim.is_some_and(|(current, _)| current == epoch)
    }

    /// The epoch (claim offset) of the current owner, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.claim.map(|(epoch, _)| epoch)
    }

    /// The current owner's claim.
    pub fn claim_id(&self) -> Option<Uuid> {
        self.claim.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_epochs_do_not_count() {
        let mut fence = Fence::new();
        assert!(!fence.admits(Epoch(0)), "nothing counts before a claim");
        assert_eq!(fence.observe_claim(0, Uuid::from_u128(1)), ClaimOutcome::Accepted, "a claim at offset 0");
        assert!(fence.admits(Epoch(0)));
        assert_eq!(fence.observe_claim(7, Uuid::from_u128(2)), ClaimOutcome::Accepted);
        assert!(!fence.admits(Epoch(0)), "the zombie of epoch 0 is fenced");
        assert!(fence.admits(Epoch(7)));
        assert_eq!(fence.observe_claim(7, Uuid::from_u128(3)), ClaimOutcome::Stale, "not after the current claim");
        assert_eq!(fence.claim_id(), Some(Uuid::from_u128(2)));
        assert_eq!(fence.epoch(), Some(Epoch(7)));
    }
}
