//! The accounts of a partition, by id: an open-addressing table whose
//! 64-byte slots each hold one account's state and id.
//!
//! Why not a `HashMap`: with a million accounts the map outgrows the cache,
//! and a hashbrown lookup is two dependent cache misses, its control bytes
//! then its slot (80 bytes, often across two lines). Here a slot is one
//! cache line holding the whole account, with ids up to [`INLINE_MAX`] bytes
//! (all of tally's, e.g. `acct-0001234`) stored in it: a lookup reads the
//! line of its home slot, and starts loading the next one at the same time
//! (linear probing leaves many accounts one slot past their home), so that
//! both misses overlap. Longer ids are kept aside and their slot holds a
//! hash of them and their index: looking one up reads it too, a miss of its
//! own.
//!
//! Accounts are never removed (a deleted account is a tombstone state), so
//! the table needs no deletion; it doubles once half full.
//!
//! The hash is fixed, not seeded: no per-process randomness, iteration
//! order never reaches an output (snapshots sort), and account ids come from
//! tally's account service, not an attacker.

use std::borrow::Cow;

use tally_events::{records::PlanTier, Credits, Sequence};

use crate::{prefetch, state::AccountState};

/// Longest id stored in its slot.
const INLINE_MAX: usize = 15;

/// `key[0]` of an empty slot.
const EMPTY: u8 = 0xFF;

/// `key[0]` of a slot whose id is longer than [`INLINE_MAX`]: `key[1..9]`
/// holds the id's hash, `key[9..13]` its index in `long_ids`.
const LONG: u8 = 0xFE;

/// Fewest slots (a power of two).
const MIN_SLOTS: usize = 16;

/// One account, one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    state: AccountState,
    /// `key[0]`: [`EMPTY`], [`LONG`], or the length of an id stored in
    /// `key[1..]`, zero-padded (so keys compare as 16 bytes).
    key: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

const VACANT: Slot = Slot {
    state: AccountState {
        balance: Credits::ZERO,
        last_sequence: Sequence(0),
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::ZERO,
        paused: false,
        deleted: false,
        booked: 0,
    },
    key: [EMPTY; 16],
};

/// An id as a lookup compares it with slots.
enum Key<'a> {
    /// The slot key it must equal.
    Inline([u8; 16]),
    /// The hash a slot must hold, and the id.
    Long(u64, &'a str),
}

impl<'a> Key<'a> {
    fn new(id: &'a str) -> Self {
        if id.len() <= INLINE_MAX {
            let mut key = [0u8; 16];
            key[0] = id.len() as u8;
            key[1..=id.len()].copy_from_slice(id.as_bytes());
            Key::Inline(key)
        } else {
            Key::Long(hash_bytes(id.as_bytes()), id)
        }
    }

    fn hash(&self) -> u64 {
        match self {
            Key::Inline(key) => {
                let key = u128::from_le_bytes(*key);
                let folded = fold(key as u64 ^ 0x243F_6A88_85A3_08D3, (key >> 64) as u64 ^ 0x1319_8A2E_0370_7344);
                fold(folded, 0x082E_FA98_EC4E_6C89)
            }
            Key::Long(hash, _) => *hash,
        }
    }
}

/// A hash of an id longer than [`INLINE_MAX`], 16 bytes at a time.
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash = 0xA409_3822_299F_31D0 ^ bytes.len() as u64;
    for chunk in bytes.chunks(16) {
        let mut block = [0u8; 16];
        block[..chunk.len()].copy_from_slice(chunk);
        let block = u128::from_le_bytes(block);
        hash = fold(hash ^ block as u64, (block >> 64) as u64 ^ 0x1319_8A2E_0370_7344);
    }
    fold(hash, 0x082E_FA98_EC4E_6C89)
}

/// The 128-bit product folded to 64 bits.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Accounts by id.
#[derive(Clone)]
pub(crate) struct Accounts {
    slots: Vec<Slot>,
    /// Ids longer than [`INLINE_MAX`], in the order they came.
    long_ids: Vec<Box<str>>,
    len: usize,
    /// `64 - log2(slots)`: a hash's top bits are its home slot.
    shift: u32,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts::with_slots(MIN_SLOTS)
    }
}

impl Accounts {
    fn with_slots(slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        Accounts { slots: vec![VACANT; slots], long_ids: Vec::new(), len: 0, shift: 64 - slots.trailing_zeros() }
    }

    /// Number of accounts.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot holding `key` (`Ok`), or the empty slot ending its probe.
    fn find(&self, key: &Key<'_>) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut index = (key.hash() >> self.shift) as usize;
        // Start loading the next slot's line with the home slot's: many
        // accounts are there, and two misses at once cost about one.
        std::hint::black_box(self.slots[(index + 1) & mask].key[0]);
        loop {
            let slot = &self.slots[index];
            if slot.key[0] == EMPTY {
                return Err(index);
            }
            let found = match key {
                Key::Inline(key) => slot.key == *key,
                Key::Long(hash, id) => {
                    slot.key[0] == LONG
                        && long_hash(&slot.key) == *hash
                        && *self.long_ids[long_index(&slot.key)] == **id
                }
            };
            if found {
                return Ok(index);
            }
            index = (index + 1) & mask;
        }
    }

    /// Starts loading the cache lines a lookup of `id` reads first (its
    /// home slot and the next), without waiting for them: called a few
    /// inputs ahead, the lookup then finds them in cache. A hint only: it
    /// changes no state and no result.
    pub(crate) fn prefetch(&self, id: &str) {
        let mask = self.slots.len() - 1;
        let index = (Key::new(id).hash() >> self.shift) as usize;
        prefetch(&self.slots[index]);
        prefetch(&self.slots[(index + 1) & mask]);
    }

    pub(crate) fn get(&self, id: &str) -> Option<&AccountState> {
        self.find(&Key::new(id)).ok().map(|index| &self.slots[index].state)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut AccountState> {
        self.find(&Key::new(id)).ok().map(|index| &mut self.slots[index].state)
    }

    /// Sets the state of `id`, adding the account if it is new.
    pub(crate) fn insert(&mut self, id: &str, state: AccountState) {
        let key = Key::new(id);
        let index = match self.find(&key) {
            Ok(index) => index,
            Err(_) if (self.len + 1) * 2 > self.slots.len() => {
                self.grow();
                self.find(&key).err().unwrap_or_else(|| unreachable!("the id was not there before growing"))
            }
            Err(index) => index,
        };
        let slot = &mut self.slots[index];
        if slot.key[0] == EMPTY {
            slot.key = match key {
                Key::Inline(key) => key,
                Key::Long(hash, id) => {
                    let mut key = [0u8; 16];
                    key[0] = LONG;
                    key[1..9].copy_from_slice(&hash.to_le_bytes());
                    // Fewer than 2^32 accounts: each takes a 64-byte slot.
                    key[9..13].copy_from_slice(&(self.long_ids.len() as u32).to_le_bytes());
                    self.long_ids.push(id.into());
                    key
                }
            };
            self.len += 1;
        }
        slot.state = state;
    }

    /// Doubles the slots, moving every account to its slot in the new size.
    fn grow(&mut self) {
        let slots = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![VACANT; slots]);
        self.shift = 64 - slots.trailing_zeros();
        let mask = slots - 1;
        for slot in old.into_iter().filter(|slot| slot.key[0] != EMPTY) {
            let hash = if slot.key[0] == LONG { long_hash(&slot.key) } else { Key::Inline(slot.key).hash() };
            let mut index = (hash >> self.shift) as usize;
            while self.slots[index].key[0] != EMPTY {
                index = (index + 1) & mask;
            }
            self.slots[index] = slot;
        }
    }

    /// Every account's state, in no particular order.
    pub(crate) fn states(&self) -> impl Iterator<Item = &AccountState> {
        self.slots.iter().filter(|slot| slot.key[0] != EMPTY).map(|slot| &slot.state)
    }

    /// Every account as (id, state), in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, &AccountState)> {
        self.slots.iter().filter(|slot| slot.key[0] != EMPTY).map(|slot| (self.id(&slot.key), &slot.state))
    }

    fn id<'s>(&'s self, key: &'s [u8; 16]) -> Cow<'s, str> {
        if key[0] == LONG {
            Cow::Borrowed(&self.long_ids[long_index(key)])
        } else {
            // Valid UTF-8: the bytes of a `&str` that fit whole.
            String::from_utf8_lossy(&key[1..=usize::from(key[0])])
        }
    }
}

/// The hash in a [`LONG`] slot's key.
fn long_hash(key: &[u8; 16]) -> u64 {
    (u128::from_le_bytes(*key) >> 8) as u64
}

/// The index in `long_ids` of a [`LONG`] slot's id.
fn long_index(key: &[u8; 16]) -> usize {
    (u128::from_le_bytes(*key) >> 72) as u32 as usize
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn state(last_sequence: i64) -> AccountState {
        AccountState { last_sequence: Sequence(last_sequence), ..VACANT.state }
    }

    #[test]
    fn short_and_long_ids_are_found() {
        let long = "a".repeat(INLINE_MAX + 1);
        let exact = "b".repeat(INLINE_MAX);
        let mut accounts = Accounts::default();
        let ids = ["acct-1", "", "äccount-ü", exact.as_str(), long.as_str()];
        for (n, id) in ids.iter().enumerate() {
            accounts.insert(id, state(n as i64));
        }
        let get = |id: &str| accounts.get(id).map(|state| state.last_sequence.0);
        assert_eq!(get("acct-1"), Some(0));
        assert_eq!(get(""), Some(1));
        assert_eq!(get("äccount-ü"), Some(2));
        assert_eq!(get(&exact), Some(3));
        assert_eq!(get(&long), Some(4));
        assert_eq!(get("acct-2"), None);
        assert_eq!(get(&"a".repeat(INLINE_MAX + 2)), None);
        assert_eq!(accounts.len(), 5);
        let mut listed: Vec<(String, i64)> =
            accounts.iter().map(|(id, state)| (id.into_owned(), state.last_sequence.0)).collect();
        listed.sort();
        let mut expected: Vec<(String, i64)> =
            ids.iter().enumerate().map(|(n, id)| (id.to_string(), n as i64)).collect();
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn agrees_with_a_plain_map_through_growth() {
        let mut accounts = Accounts::default();
        let mut model = BTreeMap::new();
        for n in 0..20_000_i64 {
            // Short and long ids; every third insert updates an account.
            let id =
                if n % 5 == 0 { format!("a-long-account-id-{:06}", n % 7_000) } else { format!("acct-{}", n % 9_000) };
            accounts.insert(&id, state(n));
            model.insert(id, n);
            if n % 3 == 0 {
                let state = accounts.get_mut(&format!("acct-{}", n % 9_000));
                if let Some(state) = state {
                    state.last_sequence.0 += 1;
                    *model.get_mut(&format!("acct-{}", n % 9_000)).expect("in both") += 1;
                }
            }
        }
        assert_eq!(accounts.len(), model.len());
        let listed: BTreeMap<String, i64> =
            accounts.iter().map(|(id, state)| (id.into_owned(), state.last_sequence.0)).collect();
        assert_eq!(listed, model);
        for (id, sequence) in &model {
            assert_eq!(accounts.get(id).map(|state| state.last_sequence.0), Some(*sequence), "{id}");
        }
        assert!(accounts.slots.len() >= 2 * accounts.len());
    }

    /// Long ids whose hashes collide are still told apart.
    #[test]
    fn long_ids_are_compared_whole() {
        let mut accounts = Accounts::default();
        let (first, second) = ("x".repeat(40), "y".repeat(40));
        accounts.insert(&first, state(1));
        // Forge a slot for `second` with `first`'s hash: a lookup of
        // `second` must not take it for `first`, nor the other way.
        let hash = hash_bytes(first.as_bytes());
        assert!(accounts.find(&Key::Long(hash, &second)).is_err());
        assert!(accounts.find(&Key::Long(hash, &first)).is_ok());
        assert_eq!(accounts.get(&second), None);
    }
}
