//! Exact deduplication of input ids over a time window.
//!
//! The set holds the id of every input applied (or restored) whose
//! `occurred_at` is within the window of the newest `occurred_at` applied on
//! the partition (`cutoff = newest - window`). Ids are counted in time
//! buckets of `window / BUCKETS_PER_WINDOW`, and a whole bucket expires once
//! its end is at or before the cutoff: so an id is live exactly while
//! `bucket_end(occurred_at) > cutoff`, which keeps every id of the window and
//! a few older ones (at most one bucket, 1/1024 of the window). Times are
//! kept to the millisecond, the precision of the wire.
//!
//! Why expiring ids never lets a duplicate through: the ledger refuses an
//! input whose `occurred_at < cutoff` as too late *before* it asks the set,
//! and every expired id has `occurred_at < bucket_end <= cutoff`. So an
//! input whose id expired is always refused as too late, never applied
//! twice.
//!
//! Why the content is a function of the entries alone (a ledger rebuilt from
//! its entries holds the same set): `newest` only grows, buckets expire by
//! the current cutoff only, and an id whose bucket has already expired is
//! not inserted at all. So the live set is always exactly {ids applied with
//! `bucket_end(occurred_at) > cutoff(newest)`}, whatever the order.
//!
//! Cost: one hash lookup per input (the insert hits the slot the lookup just
//! loaded). Expired ids are not removed one by one (a random memory access
//! each); they stay in the map, ignored, until a sequential sweep drops them
//! all once they outnumber the live ids.
//!
//! Never probabilistic (no Bloom filter): a false positive would drop a paid
//! usage or a purchase.

use std::collections::{hash_map::Entry, HashMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use rustc_hash::FxBuildHasher;
use uuid::Uuid;

/// Buckets per window: bounds both the bucket index (about 1025 counters)
/// and how long an id outlives the window (at most 1/1024 of it: 10 minutes
/// of a 7-day window). Changing it changes snapshot content, not results.
const BUCKETS_PER_WINDOW: i64 = 1024;

/// Expired ids are swept from the map once they outnumber the live ones by
/// this many (plus the live count): a sequential pass, amortized over at
/// least as many inserts, instead of one random memory access per expired id.
const SWEEP_SLACK: usize = 4096;

/// Input ids seen within the window.
#[derive(Debug, Clone)]
pub(crate) struct Dedup {
    /// Input id → `occurred_at` in ms (the wire's precision). Holds the live
    /// ids and expired ones not swept yet; only live ones count anywhere.
    /// Fixed hasher (`FxBuildHasher`), not `RandomState`: no per-process
    /// randomness, iteration order never reaches an output (the sweep only
    /// drops ids, [`Dedup::sorted`] sorts), and input ids are written by
    /// tally's own producers, not attacker-chosen.
    ids: HashMap<Uuid, i64, FxBuildHasher>,
    /// Live ids per bucket (`occurred_at` ms divided by `bucket_millis`),
    /// for buckets `first_counted_bucket ..`: expiring a bucket is popping
    /// its counter from the front. At most about `BUCKETS_PER_WINDOW + 1`
    /// counters, since every live bucket is within a window of the newest.
    live_per_bucket: VecDeque<usize>,
    /// Bucket of `live_per_bucket[0]`.
    first_counted_bucket: i64,
    /// Number of live ids.
    live: usize,
    bucket_millis: i64,
    /// Buckets before this one are expired.
    first_live_bucket: i64,
}

impl Dedup {
    pub(crate) fn new(window: TimeDelta) -> Self {
        Dedup {
            ids: HashMap::default(),
            live_per_bucket: VecDeque::new(),
            first_counted_bucket: 0,
            live: 0,
            bucket_millis: (window.num_milliseconds() / BUCKETS_PER_WINDOW).max(1),
            first_live_bucket: i64::MIN,
        }
    }

    fn bucket_of(&self, millis: i64) -> i64 {
        millis.div_euclid(self.bucket_millis)
    }

    /// Whether an id with this `occurred_at` (ms) is live: its bucket has
    /// not expired.
    fn is_live(&self, millis: i64) -> bool {
        self.bucket_of(millis) >= self.first_live_bucket
    }

    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.ids.get(id).is_some_and(|&millis| self.is_live(millis))
    }

    /// Remembers `id`, unless its bucket is already expired (it would be
    /// dropped at once; see the module docs). Call [`Dedup::prune`] with the
    /// current cutoff first.
    pub(crate) fn insert(&mut self, id: Uuid, occurred_at: DateTime<Utc>) {
        let millis = occurred_at.timestamp_millis();
        if !self.is_live(millis) {
            return;
        }
        let first_live_bucket = self.first_live_bucket;
        let bucket_millis = self.bucket_millis;
        match self.ids.entry(id) {
            Entry::Occupied(mut held) => {
                if held.get().div_euclid(bucket_millis) >= first_live_bucket {
                    return; // already live: keep the first time seen
                }
                held.insert(millis);
            }
            Entry::Vacant(slot) => {
                slot.insert(millis);
            }
        }
        self.live += 1;
        self.count(self.bucket_of(millis));
    }

    /// Adds one live id to `bucket`'s counter, growing the counters at
    /// either end as needed (bounded: `bucket` is live, so within about a
    /// window of every other counted bucket).
    fn count(&mut self, bucket: i64) {
        if self.live_per_bucket.is_empty() {
            self.first_counted_bucket = bucket;
        }
        while bucket < self.first_counted_bucket {
            self.live_per_bucket.push_front(0);
            self.first_counted_bucket -= 1;
        }
        let index = (bucket - self.first_counted_bucket) as usize;
        if index >= self.live_per_bucket.len() {
            self.live_per_bucket.resize(index + 1, 0);
        }
        self.live_per_bucket[index] += 1;
    }

    /// Expires every bucket that ends at or before `cutoff`.
    pub(crate) fn prune(&mut self, cutoff: DateTime<Utc>) {
        // The bucket holding the cutoff ends after it, so it stays live.
        let first_live_bucket = self.bucket_of(cutoff.timestamp_millis());
        if first_live_bucket <= self.first_live_bucket {
            return;
        }
        self.first_live_bucket = first_live_bucket;
        while self.first_counted_bucket < first_live_bucket {
            let Some(count) = self.live_per_bucket.pop_front() else { break };
            self.live -= count;
            self.first_counted_bucket += 1;
        }
        if self.ids.len() > 2 * self.live + SWEEP_SLACK {
            self.ids.retain(|_, millis| millis.div_euclid(self.bucket_millis) >= first_live_bucket);
        }
    }

    /// Number of live ids.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Every live id, sorted by (occurred_at, id).
    pub(crate) fn sorted(&self) -> Vec<(DateTime<Utc>, Uuid)> {
        let mut all: Vec<(DateTime<Utc>, Uuid)> = self
            .ids
            .iter()
            .filter(|(_, &millis)| self.is_live(millis))
            .filter_map(|(&id, &millis)| DateTime::from_timestamp_millis(millis).map(|at| (at, id)))
            .collect();
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("in range")
    }

    /// A window of 1024 s: buckets of one second.
    fn dedup() -> Dedup {
        Dedup::new(TimeDelta::seconds(1024))
    }

    #[test]
    fn prunes_by_time_not_by_insertion_order() {
        let mut dedup = dedup();
        dedup.insert(Uuid::from_u128(1), at(30));
        dedup.insert(Uuid::from_u128(2), at(10));
        dedup.insert(Uuid::from_u128(3), at(20));
        dedup.prune(at(20));
        assert!(!dedup.contains(&Uuid::from_u128(2)));
        assert!(dedup.contains(&Uuid::from_u128(1)) && dedup.contains(&Uuid::from_u128(3)));
        assert_eq!(dedup.len(), 2);
        let order: Vec<u128> = dedup.sorted().iter().map(|(_, id)| id.as_u128()).collect();
        assert_eq!(order, vec![3, 1]);
    }

    #[test]
    fn keeps_a_bucket_until_it_ends() {
        let mut dedup = dedup();
        let half_second = at(10) + TimeDelta::milliseconds(500);
        dedup.insert(Uuid::from_u128(1), half_second);
        // The cutoff is inside the bucket [10 s, 11 s): the id is kept.
        dedup.prune(at(10) + TimeDelta::milliseconds(900));
        assert!(dedup.contains(&Uuid::from_u128(1)));
        dedup.prune(at(11));
        assert!(!dedup.contains(&Uuid::from_u128(1)));
    }

    #[test]
    fn does_not_insert_an_id_already_past_the_cutoff() {
        let mut dedup = dedup();
        dedup.prune(at(20));
        dedup.insert(Uuid::from_u128(1), at(5));
        assert_eq!(dedup.len(), 0);
        assert!(!dedup.contains(&Uuid::from_u128(1)));
        dedup.insert(Uuid::from_u128(2), at(20));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn sweeps_expired_ids_without_changing_content() {
        let mut dedup = dedup();
        for second in 0..20_000 {
            dedup.insert(Uuid::from_u128(second as u128), at(second));
            dedup.prune(at(second - 1024));
        }
        // Live: the 1024 s window plus the bucket holding the cutoff.
        assert_eq!(dedup.len(), 1025);
        assert_eq!(dedup.sorted().len(), 1025);
        assert!(dedup.ids.len() <= 2 * 1025 + SWEEP_SLACK + 1, "{} ids held", dedup.ids.len());
        assert!(!dedup.contains(&Uuid::from_u128(100)));
        assert!(dedup.contains(&Uuid::from_u128(19_999 - 1024)));
    }

    #[test]
    fn inserting_twice_keeps_one() {
        let mut dedup = dedup();
        dedup.insert(Uuid::from_u128(1), at(30));
        dedup.insert(Uuid::from_u128(1), at(31));
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.sorted().len(), 1);
    }
}
