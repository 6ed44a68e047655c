//! A fixed, fast hasher for the ledger's maps (account ids, input ids,
//! service codes).
//!
//! Why not the standard `RandomState` (SipHash-1-3 with random keys): it was
//! the largest single cost of applying an input (two to four hashes per
//! input), and its per-process random keys are randomness this crate does
//! not otherwise have. Hashing never reaches an output either way (maps are
//! only looked up, never iterated into an entry or a snapshot unsorted), so
//! a fixed hash changes no result, only speed.
//!
//! The keys are ids written by tally's own producers (UUIDs derived by
//! SHA-1, account ids from the account service), not attacker-chosen, so
//! hash flooding is not a concern; the finalizer still mixes every input bit
//! into every output bit, since hashbrown takes the bucket from the low bits
//! and a tag from the top 7.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiplier of the word-mixing step (from the FxHash / rustc family).
const WORD_MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;
/// Multiplier of the finalizer (from the Murmur3 / SplitMix64 finalizers).
const FINAL_MULTIPLIER: u64 = 0xff51_afd7_ed55_8ccd;

/// Word-at-a-time multiply-rotate hasher with a full-avalanche finalizer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(WORD_MULTIPLIER).rotate_left(23);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut hash = self.hash;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(FINAL_MULTIPLIER);
        hash ^= hash >> 33;
        hash
    }
}

/// Builds [`FastHasher`]s: the same hash in every process.
pub(crate) type FastHash = BuildHasherDefault<FastHasher>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn spreads_sequential_keys_over_low_and_high_bits() {
        let build = FastHash::default();
        let mut low = std::collections::BTreeSet::new();
        let mut high = std::collections::BTreeSet::new();
        for index in 0..4096 {
            let hash = build.hash_one(format!("acct-{index:07}"));
            low.insert(hash & 0xfff);
            high.insert(hash >> 57);
        }
        // 4096 keys over 4096 low-bit buckets: a good hash fills ~63%.
        assert!(low.len() > 2400, "{} distinct low-bit buckets", low.len());
        assert_eq!(high.len(), 128, "every 7-bit tag used");
    }

    #[test]
    fn is_the_same_in_every_process() {
        assert_eq!(FastHash::default().hash_one("acct-1"), FastHash::default().hash_one("acct-1"));
        assert_ne!(FastHash::default().hash_one("ab"), FastHash::default().hash_one("ab\0"));
    }
}
