//! The zombie fence: which records of a ledger partition count.
//!
//! Kafka transactions are not used (not every broker tally runs on commits
//! them), so a metering instance that lost its partition but still writes
//! (a zombie: stalled by GC, SIGSTOP, a network stall, or a produce request
//! still in flight after kill -9) could append to the ledger. The rule:
//!
//! - an owner appends a CLAIM marker with an epoch higher than any epoch in
//!   the partition before it writes anything else;
//! - a claim counts only if its epoch is higher than every claim before it
//!   (a claim that does not is stale; its writer must yield);
//! - an entry or PROGRESS marker counts only if its epoch equals the epoch
//!   of the last counted claim before it.
//!
//! Every reader of the ledger (state restore, aggregator, reconciliation)
//! applies this same rule, record by record, in log order.

use uuid::Uuid;

/// Fence state while reading one ledger partition in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    epoch: i64,
    claim_id: Option<Uuid>,
    highest_seen: i64,
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

    /// Observes a CLAIM marker.
    pub fn observe_claim(&mut self, epoch: i64, claim_id: Uuid) -> ClaimOutcome {
        self.highest_seen = self.highest_seen.max(epoch);
        if epoch > self.epoch {
            self.epoch = epoch;
            self.claim_id = Some(claim_id);
            ClaimOutcome::Accepted
        } else {
            ClaimOutcome::Stale
        }
    }

    /// Whether an entry or PROGRESS marker written with `epoch` counts.
    pub fn admits(&mut self, epoch: i64) -> bool {
        self.highest_seen = self.highest_seen.max(epoch);
        self.claim_id.is_some() && epoch == self.epoch
    }

    /// The epoch of the current owner (0 before any claim).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The current owner's claim.
    pub fn claim_id(&self) -> Option<Uuid> {
        self.claim_id
    }

    /// The highest epoch on any record seen: a new claim must exceed it.
    pub fn highest_seen(&self) -> i64 {
        self.highest_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_older_epochs_do_not_count() {
        let mut fence = Fence::new();
        assert!(!fence.admits(0), "nothing counts before a claim");
        assert_eq!(fence.observe_claim(1, Uuid::from_u128(1)), ClaimOutcome::Accepted);
        assert!(fence.admits(1));
        assert_eq!(fence.observe_claim(2, Uuid::from_u128(2)), ClaimOutcome::Accepted);
        assert!(!fence.admits(1), "the zombie of epoch 1 is fenced");
        assert!(fence.admits(2));
        assert_eq!(fence.observe_claim(2, Uuid::from_u128(3)), ClaimOutcome::Stale, "equal epoch: stale");
        assert_eq!(fence.claim_id(), Some(Uuid::from_u128(2)));
        assert!(fence.admits(2));
        assert_eq!(fence.highest_seen(), 2);
    }
}
