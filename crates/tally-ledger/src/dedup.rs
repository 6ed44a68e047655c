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
//! Each id keeps the content digest of its input ([`crate::digest`]), so
//! that a repeat of the id is told apart from a reuse of it with other
//! content; the digest travels with the id into snapshots and comes back
//! from ledger entries on restore.
//!
//! Never probabilistic (no Bloom filter): a false positive would drop a paid
//! usage or a purchase. The table compares full ids; its short tags only
//! decide which full ids are worth reading.
//!
//! Cost: once the window holds ~600k ids the table is far larger than the
//! cache, and its layout is what every input pays for (see [`IdTable`]): an
//! absent id, the common case, costs one read of an 8-byte slot, and its
//! insert writes that slot (in cache since the read) and appends the id.
//! [`Dedup::find`] hands the slot to [`Dedup::insert`], which does not
//! search again.

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// Buckets per window: bounds both the bucket index (about 1025 counters)
/// and how long an id outlives the window (at most 1/1024 of it: 10 minutes
/// of a 7-day window). Changing it changes snapshot content, not results.
const BUCKETS_PER_WINDOW: i64 = 1024;

/// Fewest slots of a table (a power of two).
const MIN_SLOTS: usize = 16;

/// The table is rebuilt once live and expired ids fill this share of its
/// slots (in 1/1024ths): linear probing slows down quickly past it.
const SWEEP_LOAD: usize = 768;

/// A rebuilt table has enough slots for its live ids to fill at most this
/// share (in 1/1024ths): the next rebuild is then at least `(SWEEP_LOAD -
/// GROW_LOAD) x slots` inserts away, which keeps its cost to a few
/// nanoseconds per insert. For a 7-day window at one input per second
/// (~605k ids): 2^21 slots, 16 MiB, rebuilt every ~970k inserts.
const GROW_LOAD: usize = 384;

/// Input ids seen within the window.
#[derive(Debug, Clone)]
pub(crate) struct Dedup {
    /// Live ids, and expired ones not dropped by a rebuild yet; only live
    /// ones count anywhere.
    table: IdTable,
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
    /// First millisecond of `first_live_bucket`: an id is live exactly when
    /// its `occurred_at` ms is at or after it (a comparison per probe
    /// instead of a division).
    live_from_millis: i64,
}

/// Where [`Dedup::find`] left an id that is not live: the slot an insert
/// takes, valid while the table does not change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    index: usize,
    hash: u64,
    version: u64,
}

/// What [`Dedup::find`] found.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found {
    /// The id is live: its input was applied, with this content digest
    /// (all zero: not recorded).
    Live([u8; 16]),
    /// Not live: where to insert it.
    Absent(Probe),
}

impl Dedup {
    pub(crate) fn new(window: TimeDelta) -> Self {
        Dedup {
            table: IdTable::with_slots(MIN_SLOTS),
            live_per_bucket: VecDeque::new(),
            first_counted_bucket: 0,
            live: 0,
            bucket_millis: (window.num_milliseconds() / BUCKETS_PER_WINDOW).max(1),
            first_live_bucket: i64::MIN,
            live_from_millis: i64::MIN,
        }
    }

    fn bucket_of(&self, millis: i64) -> i64 {
        millis.div_euclid(self.bucket_millis)
    }

    /// Whether an id with this `occurred_at` (ms) is live: its bucket has
    /// not expired.
    fn is_live(&self, millis: i64) -> bool {
        millis >= self.live_from_millis
    }

    /// Whether `id` is live (a repeat) and with which digest; else where
    /// to insert it.
    pub(crate) fn find(&self, id: &Uuid) -> Found {
        let hash = hash(id);
        let index = self.table.find(id, hash);
        if let Some(held) = self.table.held(index) {
            if self.is_live(held.millis) {
                return Found::Live(held.digest);
            }
        }
        Found::Absent(Probe { index, hash, version: self.table.version })
    }

    /// Starts loading the slot a [`Dedup::find`] of `id` reads first.
    pub(crate) fn prefetch(&self, id: &Uuid) {
        crate::prefetch(&self.table.slots[(hash(id) >> self.table.shift) as usize]);
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        matches!(self.find(id), Found::Live(_))
    }

    /// Remembers `id`, unless its bucket is already expired (it would be
    /// dropped at once; see the module docs). Call [`Dedup::prune`] with the
    /// current cutoff first. `probe`, from [`Dedup::find`] for the same id
    /// since the last change to the set, saves searching again.
    pub(crate) fn insert(&mut self, id: Uuid, occurred_at: DateTime<Utc>, digest: [u8; 16], probe: Option<Probe>) {
        let millis = occurred_at.timestamp_millis();
        if !self.is_live(millis) {
            return;
        }
        let (index, hash) = match probe {
            Some(probe) if probe.version == self.table.version => (probe.index, probe.hash),
            _ => {
                let hash = hash(&id);
                (self.table.find(&id, hash), hash)
            }
        };
        match self.table.held(index) {
            Some(held) if self.is_live(held.millis) => return, // already live: keep the first one seen
            Some(_) => self.table.replace(index, millis, digest),
            None => {
                self.table.put(index, hash, Held { id, millis, digest });
                if self.table.occupied() * 1024 > self.table.slots() * SWEEP_LOAD {
                    self.table.rebuild(self.live_from_millis);
                }
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
        let cutoff_millis = cutoff.timestamp_millis();
        // Within the first live bucket, nothing expires: no division needed.
        if cutoff_millis < self.live_from_millis.saturating_add(self.bucket_millis) {
            return;
        }
        // The bucket holding the cutoff ends after it, so it stays live.
        let first_live_bucket = self.bucket_of(cutoff_millis);
        if first_live_bucket <= self.first_live_bucket {
            return;
        }
        self.first_live_bucket = first_live_bucket;
        self.live_from_millis = first_live_bucket * self.bucket_millis;
        while self.first_counted_bucket < first_live_bucket {
            let Some(count) = self.live_per_bucket.pop_front() else { break };
            self.live -= count;
            self.first_counted_bucket += 1;
        }
    }

    /// Number of live ids.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Every live id with its digest, sorted by (occurred_at, id).
    pub(crate) fn sorted(&self) -> Vec<(DateTime<Utc>, Uuid, [u8; 16])> {
        let mut all: Vec<(DateTime<Utc>, Uuid, [u8; 16])> = self
            .table
            .iter()
            .filter(|held| self.is_live(held.millis))
            .filter_map(|held| DateTime::from_timestamp_millis(held.millis).map(|at| (at, held.id, held.digest)))
            .collect();
        all.sort_unstable();
        all
    }
}

/// One id held, with its `occurred_at` in ms and its input's content
/// digest (all zero: not recorded).
#[derive(Debug, Clone, Copy)]
struct Held {
    id: Uuid,
    millis: i64,
    digest: [u8; 16],
}

/// An open-addressing set of ids with linear probing. The slots are 8
/// bytes, a tag (32 bits of the id's hash, never 0) and the index of the
/// full id in `held`, which keeps ids in the order they came.
///
/// Why two arrays: an absent id, the common case, is decided from the
/// slots alone (a full id is read only when a tag matches), and the slots
/// are a third of the size of the ids, so they stay in cache far longer.
/// And an insert writes its id at the end of `held`, a line that is in
/// cache, instead of at a random place in a large array: that random write
/// missed the cache on nearly every input and stalled the stores behind it.
///
/// Ids are never removed one at a time (a random memory access each):
/// expired ones stay until a rebuild drops them all, in sequential passes.
#[derive(Debug, Clone)]
struct IdTable {
    /// 0: empty; else `tag << 32 | index into held`.
    slots: Vec<u64>,
    /// Every id in a slot, live or expired, in the order they came since
    /// the last rebuild.
    held: Vec<Held>,
    /// `64 - log2(slots)`: a hash's top bits are its home slot.
    shift: u32,
    /// Changes to the slots: a [`Probe`] from an older version is searched
    /// again.
    version: u64,
    /// Rebuilds, for tests.
    rebuilds: u64,
}

/// The hash of an id: two folded multiplications (the 128-bit product
/// folded to 64 bits), so that both sequential ids and random ones spread
/// over the whole table. Fixed, not seeded: no per-process randomness,
/// iteration order never reaches an output ([`Dedup::sorted`] sorts), and
/// input ids are written by tally's own producers, not attacker-chosen.
fn hash(id: &Uuid) -> u64 {
    let (high, low) = id.as_u64_pair();
    let folded = fold(high ^ 0x243F_6A88_85A3_08D3, low ^ 0x1319_8A2E_0370_7344);
    fold(folded ^ 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89)
}

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The tag of a hash: its low bits (the home slot uses the high ones),
/// never 0 (the empty slot).
fn tag_of(hash: u64) -> u64 {
    (hash & 0xFFFF_FFFF) | 1
}

impl IdTable {
    fn with_slots(slots: usize) -> Self {
        IdTable { slots: vec![0; slots], held: Vec::new(), shift: shift_for(slots), version: 0, rebuilds: 0 }
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Ids held, live or expired.
    fn occupied(&self) -> usize {
        self.held.len()
    }

    /// The slot holding `id`, or the empty slot that ends its probe.
    fn find(&self, id: &Uuid, hash: u64) -> usize {
        let mask = self.slots() - 1;
        let tag = tag_of(hash);
        let mut index = (hash >> self.shift) as usize;
        loop {
            let slot = self.slots[index];
            if slot == 0 || (slot >> 32 == tag && self.held[slot as u32 as usize].id == *id) {
                return index;
            }
            index = (index + 1) & mask;
        }
    }

    fn held(&self, index: usize) -> Option<&Held> {
        let slot = self.slots[index];
        (slot != 0).then(|| &self.held[slot as u32 as usize])
    }

    /// Gives the (expired) id in slot `index` a new time and digest.
    fn replace(&mut self, index: usize, millis: i64, digest: [u8; 16]) {
        let slot = self.slots[index];
        let held = &mut self.held[slot as u32 as usize];
        held.millis = millis;
        held.digest = digest;
        self.version += 1;
    }

    /// Fills the empty slot `index` (from [`IdTable::find`]).
    fn put(&mut self, index: usize, hash: u64, held: Held) {
        debug_assert_eq!(self.slots[index], 0);
        // Below 2^32: the table holds fewer ids than slots, and a Vec of
        // 2^32 slots would not fit in memory anyway.
        self.slots[index] = tag_of(hash) << 32 | self.held.len() as u64;
        self.held.push(held);
        self.version += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Held> {
        self.held.iter()
    }

    /// Drops every id whose `occurred_at` ms is before `live_from_millis`
    /// and puts the others back in a table sized for them: a sequential
    /// pass over the ids, then one insert each.
    fn rebuild(&mut self, live_from_millis: i64) {
        self.held.retain(|held| held.millis >= live_from_millis);
        let slots = slots_for(self.held.len());
        if slots == self.slots() {
            self.slots.fill(0);
        } else {
            self.slots = vec![0; slots];
            self.shift = shift_for(slots);
        }
        let mask = slots - 1;
        for (n, held) in self.held.iter().enumerate() {
            let hash = hash(&held.id);
            let mut index = (hash >> self.shift) as usize;
            while self.slots[index] != 0 {
                index = (index + 1) & mask;
            }
            self.slots[index] = tag_of(hash) << 32 | n as u64;
        }
        self.version += 1;
        self.rebuilds += 1;
    }
}

/// Slots for `ids` live ids: a power of two they fill to at most
/// [`GROW_LOAD`], so that the next rebuild is at least `(SWEEP_LOAD -
/// GROW_LOAD) x slots` inserts away.
fn slots_for(ids: usize) -> usize {
    let mut slots = MIN_SLOTS;
    while ids * 1024 > slots * GROW_LOAD {
        slots *= 2;
    }
    slots
}

fn shift_for(slots: usize) -> u32 {
    debug_assert!(slots.is_power_of_two());
    64 - slots.trailing_zeros()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const NO_DIGEST: [u8; 16] = [0; 16];

    fn absent(found: Found) -> Option<Probe> {
        match found {
            Found::Absent(probe) => Some(probe),
            Found::Live(_) => None,
        }
    }

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
        dedup.insert(Uuid::from_u128(1), at(30), NO_DIGEST, None);
        dedup.insert(Uuid::from_u128(2), at(10), NO_DIGEST, None);
        dedup.insert(Uuid::from_u128(3), at(20), NO_DIGEST, None);
        dedup.prune(at(20));
        assert!(!dedup.contains(&Uuid::from_u128(2)));
        assert!(dedup.contains(&Uuid::from_u128(1)) && dedup.contains(&Uuid::from_u128(3)));
        assert_eq!(dedup.len(), 2);
        let order: Vec<u128> = dedup.sorted().iter().map(|(_, id, _)| id.as_u128()).collect();
        assert_eq!(order, vec![3, 1]);
    }

    #[test]
    fn keeps_a_bucket_until_it_ends() {
        let mut dedup = dedup();
        let half_second = at(10) + TimeDelta::milliseconds(500);
        dedup.insert(Uuid::from_u128(1), half_second, NO_DIGEST, None);
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
        dedup.insert(Uuid::from_u128(1), at(5), NO_DIGEST, None);
        assert_eq!(dedup.len(), 0);
        assert!(!dedup.contains(&Uuid::from_u128(1)));
        dedup.insert(Uuid::from_u128(2), at(20), NO_DIGEST, None);
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn sweeps_expired_ids_without_changing_content() {
        let mut dedup = dedup();
        for second in 0..20_000 {
            dedup.insert(Uuid::from_u128(second as u128), at(second), NO_DIGEST, None);
            dedup.prune(at(second - 1024));
        }
        // Live: the 1024 s window plus the bucket holding the cutoff.
        assert_eq!(dedup.len(), 1025);
        assert_eq!(dedup.sorted().len(), 1025);
        assert!(dedup.table.rebuilds > 5, "{} rebuilds", dedup.table.rebuilds);
        assert_eq!(dedup.table.slots(), 4096);
        assert!(dedup.table.occupied() <= 3072, "{} ids held", dedup.table.occupied());
        assert!(!dedup.contains(&Uuid::from_u128(100)));
        assert!(dedup.contains(&Uuid::from_u128(19_999 - 1024)));
    }

    #[test]
    fn inserting_twice_keeps_one() {
        let mut dedup = dedup();
        dedup.insert(Uuid::from_u128(1), at(30), NO_DIGEST, None);
        dedup.insert(Uuid::from_u128(1), at(31), NO_DIGEST, None);
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.sorted().len(), 1);
        assert_eq!(dedup.sorted()[0].0, at(30));
    }

    #[test]
    fn an_expired_id_comes_back_in_its_own_slot() {
        let mut dedup = dedup();
        dedup.insert(Uuid::from_u128(1), at(10), NO_DIGEST, None);
        dedup.prune(at(11));
        assert_eq!(dedup.len(), 0);
        dedup.insert(Uuid::from_u128(1), at(12), NO_DIGEST, None);
        assert_eq!((dedup.len(), dedup.table.occupied()), (1, 1));
        assert_eq!(dedup.sorted(), vec![(at(12), Uuid::from_u128(1), NO_DIGEST)]);
    }

    #[test]
    fn a_probe_is_searched_again_after_the_table_changed() {
        let mut dedup = dedup();
        let probe = dedup.find(&Uuid::from_u128(1_000_000));
        // Enough inserts to grow the table several times.
        for n in 0..1000 {
            dedup.insert(Uuid::from_u128(n), at(100), NO_DIGEST, None);
        }
        dedup.insert(Uuid::from_u128(1_000_000), at(100), NO_DIGEST, absent(probe));
        assert_eq!(dedup.len(), 1001);
        for n in (0..1000).chain([1_000_000]) {
            assert!(dedup.contains(&Uuid::from_u128(n)), "{n}");
        }
    }

    /// Two ids whose tags and home slots in a 16-slot table are equal: the
    /// full ids must tell them apart.
    #[test]
    fn ids_with_the_same_tag_are_told_apart() {
        let mut seen = std::collections::HashMap::new();
        let (first, second) = (0..u128::MAX)
            .find_map(|n| {
                let hash = hash(&Uuid::from_u128(n));
                seen.insert((tag_of(hash), hash >> 60), n).map(|other| (other, n))
            })
            .expect("a birthday collision on 36 bits within ~2^18 ids");
        let mut dedup = dedup();
        dedup.insert(Uuid::from_u128(first), at(10), NO_DIGEST, None);
        assert!(dedup.contains(&Uuid::from_u128(first)));
        assert!(!dedup.contains(&Uuid::from_u128(second)));
        dedup.insert(Uuid::from_u128(second), at(11), NO_DIGEST, None);
        assert_eq!(
            dedup.sorted(),
            vec![(at(10), Uuid::from_u128(first), NO_DIGEST), (at(11), Uuid::from_u128(second), NO_DIGEST)]
        );
    }

    /// The table against a plain map: ids that repeat within the window
    /// and after expiring, late ones, and many rebuilds.
    #[test]
    fn agrees_with_a_plain_map() {
        let mut dedup = dedup();
        let mut model: BTreeMap<u128, i64> = BTreeMap::new();
        let mut random = 0x9E37_79B9_7F4A_7C15_u64;
        let (mut newest, mut live_from) = (0, i64::MIN);
        let same = |dedup: &Dedup, model: &BTreeMap<u128, i64>| {
            let held: Vec<(i64, u128)> =
                dedup.sorted().iter().map(|(at, id, _)| (at.timestamp_millis(), id.as_u128())).collect();
            let mut expected: Vec<(i64, u128)> = model.iter().map(|(&id, &millis)| (millis, id)).collect();
            expected.sort_unstable();
            assert_eq!(held, expected);
        };
        for step in 0..60_000_i64 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let id = u128::from(random % 4_000);
            // Mostly advancing, a second per step; some late.
            let millis = (step * 1000 - (random >> 40) as i64 % 600_000).max(0);
            if millis / 1000 > newest {
                newest = millis / 1000;
                dedup.prune(at(newest - 1024));
            }
            if dedup.live_from_millis != live_from {
                live_from = dedup.live_from_millis;
                model.retain(|_, held| *held >= live_from);
            }
            let probe = absent(dedup.find(&Uuid::from_u128(id)));
            assert_eq!(probe.is_none(), model.contains_key(&id), "step {step}");
            if probe.is_some() && millis >= live_from {
                model.insert(id, millis);
            }
            let occurred_at = DateTime::from_timestamp_millis(millis).expect("in range");
            dedup.insert(Uuid::from_u128(id), occurred_at, NO_DIGEST, probe);
            assert_eq!(dedup.len(), model.len(), "step {step}");
            if step % 5_000 == 0 {
                same(&dedup, &model);
            }
        }
        same(&dedup, &model);
        assert!(dedup.table.rebuilds > 10, "{} rebuilds", dedup.table.rebuilds);
    }
}
