//! Account ids as map keys, stored inline when short.
//!
//! Why: looking an account up compares the key stored in the map with the
//! input's account id. With `String` keys that reads a separate heap
//! allocation, a cache miss of its own on a large map; an inline key sits in
//! the map's slot, which the lookup has just loaded. Ids up to
//! [`INLINE_MAX`] bytes (all of tally's, e.g. `acct-0001234`) are inline;
//! longer ones fall back to the heap. Keys hash and compare as their bytes,
//! with no UTF-8 check (a lookup builds a key on the stack from the `&str`).

use std::hash::Hash;

/// Longest id stored inline.
const INLINE_MAX: usize = 30;

/// An account id, inline when at most [`INLINE_MAX`] bytes.
#[derive(Clone)]
pub(crate) enum AccountKey {
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(Box<str>),
}

impl AccountKey {
    pub(crate) fn new(id: &str) -> Self {
        if id.len() <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            AccountKey::Inline { len: id.len() as u8, bytes }
        } else {
            AccountKey::Heap(id.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            AccountKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            AccountKey::Heap(id) => id.as_bytes(),
        }
    }

    /// The id (for snapshots: not on the hot path).
    pub(crate) fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

impl PartialEq for AccountKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for AccountKey {}

impl Hash for AccountKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_text(), f)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn short_and_long_ids_are_found() {
        let long = "a".repeat(INLINE_MAX + 1);
        let exact = "b".repeat(INLINE_MAX);
        let mut map: HashMap<AccountKey, u32> = HashMap::new();
        for (n, id) in ["acct-1", "", "äccount-ü", exact.as_str(), long.as_str()].iter().enumerate() {
            map.insert(AccountKey::new(id), n as u32);
        }
        let get = |id: &str| map.get(&AccountKey::new(id)).copied();
        assert_eq!(get("acct-1"), Some(0));
        assert_eq!(get(""), Some(1));
        assert_eq!(get("äccount-ü"), Some(2));
        assert_eq!(get(&exact), Some(3));
        assert_eq!(get(&long), Some(4));
        assert_eq!(get("acct-2"), None);
        assert!(matches!(AccountKey::new(&exact), AccountKey::Inline { .. }));
        assert!(matches!(AccountKey::new(&long), AccountKey::Heap(_)));
        assert_eq!(AccountKey::new(&long).to_text(), long);
        assert_eq!(AccountKey::new("äccount-ü").to_text(), "äccount-ü");
    }
}
