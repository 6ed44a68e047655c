//! Exact deduplication of input ids over a time window.
//!
//! The set holds the id of every input applied (or restored) whose
//! `occurred_at` is not older than `newest - window`, where `newest` is the
//! latest `occurred_at` applied on the partition. Older ids are pruned,
//! deterministically, by time.
//!
//! Why pruning never lets a duplicate through: the ledger refuses an input
//! whose `occurred_at < newest - window` as too late *before* it asks the
//! set, with the same bound as the pruning. So an input whose id was pruned
//! is always refused as too late, never applied twice. And since `newest`
//! only grows, the set's content is a function of the applied entries alone,
//! not of the order of pruning: a ledger rebuilt from its entries holds the
//! same set.
//!
//! Never probabilistic (no Bloom filter): a false positive would drop a paid
//! usage or a purchase.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Input ids seen within the window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dedup {
    /// Membership: one hash lookup per input.
    ids: HashSet<Uuid>,
    /// The same ids ordered by (occurred_at, id): pruning pops from the
    /// front, and snapshots list them in a deterministic order.
    by_time: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Dedup {
    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    pub(crate) fn insert(&mut self, id: Uuid, occurred_at: DateTime<Utc>) {
        if self.ids.insert(id) {
            self.by_time.insert((occurred_at, id));
        }
    }

    /// Forgets every id whose `occurred_at` is before `cutoff`.
    pub(crate) fn prune_before(&mut self, cutoff: DateTime<Utc>) {
        while let Some(&(occurred_at, id)) = self.by_time.first() {
            if occurred_at >= cutoff {
                break;
            }
            self.by_time.pop_first();
            self.ids.remove(&id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Ids in (occurred_at, id) order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(DateTime<Utc>, Uuid)> {
        self.by_time.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("in range")
    }

    #[test]
    fn prunes_by_time_not_by_insertion_order() {
        let mut dedup = Dedup::default();
        dedup.insert(Uuid::from_u128(1), at(30));
        dedup.insert(Uuid::from_u128(2), at(10));
        dedup.insert(Uuid::from_u128(3), at(20));
        dedup.prune_before(at(20));
        assert!(!dedup.contains(&Uuid::from_u128(2)));
        assert!(dedup.contains(&Uuid::from_u128(1)) && dedup.contains(&Uuid::from_u128(3)));
        assert_eq!(dedup.len(), 2);
        let order: Vec<u128> = dedup.iter().map(|(_, id)| id.as_u128()).collect();
        assert_eq!(order, vec![3, 1]);
    }

    #[test]
    fn inserting_twice_keeps_one() {
        let mut dedup = Dedup::default();
        dedup.insert(Uuid::from_u128(1), at(30));
        dedup.insert(Uuid::from_u128(1), at(31));
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.iter().count(), 1);
    }
}
