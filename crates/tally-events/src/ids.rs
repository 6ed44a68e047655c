//! Identity as types: [`AccountId`], [`Sequence`], [`Epoch`].
//!
//! On the wire they are what they were (a string, two longs); in code they
//! cannot be mixed up: a sequence is not an offset, an epoch is not a
//! sequence, an account id is not any string.
//!
//! ```
//! use tally_events::ids::{AccountId, Sequence};
//! let account = AccountId::parse("acct-0042").unwrap();
//! assert_eq!(account.as_str(), "acct-0042");
//! assert!(AccountId::parse("").is_err());
//! assert_eq!(Sequence::BEFORE_FIRST.next(), Some(Sequence(1)));
//! ```

use std::{borrow::Borrow, fmt, ops::Deref};

use serde::{Deserialize, Serialize};

use crate::limits::{check_account_id, IdentifierProblem};

/// An account id. Made by [`AccountId::parse`] where it enters the ledger
/// (the rules refuse any other), so every ledger entry and alert holds a
/// valid one; records read back hold what was written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    /// A checked account id (see [`crate::limits::check_account_id`]).
    #[inline]
    pub fn parse(id: &str) -> Result<AccountId, IdentifierProblem> {
        check_account_id(id).map(|()| AccountId(id.to_string()))
    }

    /// An id taken as it is: one already checked, or read back from a
    /// record.
    #[inline]
    pub fn new_unchecked(id: impl Into<String>) -> AccountId {
        AccountId(id.into())
    }

    /// The id as text.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for AccountId {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for AccountId {
    #[inline]
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AccountId {
    #[inline]
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths and alignment (`{:<12}`) apply.
        f.pad(&self.0)
    }
}

impl PartialEq<str> for AccountId {
    #[inline]
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for AccountId {
    #[inline]
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The place of an entry in its account's ledger: gapless from 1 (the
/// OPEN entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sequence(pub i64);

impl Sequence {
    /// Before an account's first entry.
    pub const BEFORE_FIRST: Sequence = Sequence(0);

    /// The next one, or `None` past `i64::MAX`.
    #[inline]
    pub fn next(self) -> Option<Sequence> {
        self.0.checked_add(1).map(Sequence)
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A writer epoch: the ledger offset of the CLAIM marker of the instance
/// that wrote a record (see [`crate::fence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub i64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Values kept once each and numbered in order of first sight, so that a
/// tally over millions of records holds a small number per record instead
/// of a clone of its account id or service (reconciliation's coverage and
/// tallies). Looked up once per record, so with the fast non-keyed hash
/// both used before sharing this (the ids are the ledger's, not an
/// attacker's).
#[derive(Debug, Clone)]
pub struct Interner<K> {
    values: Vec<K>,
    index: rustc_hash::FxHashMap<K, u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner { values: Vec::new(), index: rustc_hash::FxHashMap::default() }
    }
}

impl<K: Clone + Eq + std::hash::Hash + Borrow<str>> Interner<K> {
    /// The number of `value`, given it if it is new (cloned once).
    pub fn intern(&mut self, value: &K) -> u32 {
        if let Some(&number) = self.index.get(value.borrow()) {
            return number;
        }
        let number = u32::try_from(self.values.len()).expect("fewer than 2^32 distinct values");
        self.values.push(value.clone());
        self.index.insert(value.clone(), number);
        number
    }

    /// The value numbered `number`.
    pub fn get(&self, number: u32) -> Option<&K> {
        self.values.get(number as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interner_numbers_each_value_once_in_order_of_first_sight() {
        let mut interner: Interner<String> = Interner::default();
        let numbers: Vec<u32> = ["b", "a", "b", "c", "a"].iter().map(|v| interner.intern(&v.to_string())).collect();
        assert_eq!(numbers, [0, 1, 0, 2, 1]);
        assert_eq!(interner.get(1).map(String::as_str), Some("a"));
        assert_eq!(interner.get(3), None);
    }
}
