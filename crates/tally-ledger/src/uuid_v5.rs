//! UUID v5 of a UUID under a namespace UUID, computed with a SHA-1
//! specialised to that one case.
//!
//! Why: every ledger entry's id is `UUID v5(namespace, input id)`, and the
//! general SHA-1 behind `Uuid::new_v5` was a quarter of the instructions of
//! applying an input. The message here is always 32 bytes (two UUIDs), so it
//! is one SHA-1 block with fixed padding. The result is exactly
//! `Uuid::new_v5(namespace, name.as_bytes())`; a test checks it on many ids.

use uuid::{Builder, Uuid};

/// `Uuid::new_v5(namespace, name.as_bytes())`.
pub(crate) fn v5_of_uuid(namespace: &Uuid, name: &Uuid) -> Uuid {
    // One 64-byte block: namespace (16) + name (16) + 0x80 + zeros + the
    // message length in bits (256) as a big-endian u64.
    let mut block = [0u8; 64];
    block[..16].copy_from_slice(namespace.as_bytes());
    block[16..32].copy_from_slice(name.as_bytes());
    block[32] = 0x80;
    block[56..].copy_from_slice(&256u64.to_be_bytes());
    let digest = sha1_block(&block);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Sets the version (5) and variant (RFC 4122) bits, as `new_v5` does.
    Builder::from_sha1_bytes(bytes).into_uuid()
}

/// SHA-1 (FIPS 180-4) of a message that is exactly this one padded block.
fn sha1_block(block: &[u8; 64]) -> [u8; 20] {
    const INITIAL: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    // The full 80-word schedule up front: constant indexes, so the compiler
    // drops the bounds checks and unrolls the rounds.
    let mut w = [0u32; 80];
    for (word, chunk) in w.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    for t in 16..80 {
        w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
    }
    let [mut a, mut b, mut c, mut d, mut e] = INITIAL;
    let round = |f: u32, k: u32, word: u32, a: &mut u32, b: &mut u32, c: &mut u32, d: &mut u32, e: &mut u32| {
        let temp = a.rotate_left(5).wrapping_add(f).wrapping_add(*e).wrapping_add(k).wrapping_add(word);
        *e = *d;
        *d = *c;
        *c = b.rotate_left(30);
        *b = *a;
        *a = temp;
    };
    for &word in &w[0..20] {
        round((b & c) | (!b & d), 0x5A82_7999, word, &mut a, &mut b, &mut c, &mut d, &mut e);
    }
    for &word in &w[20..40] {
        round(b ^ c ^ d, 0x6ED9_EBA1, word, &mut a, &mut b, &mut c, &mut d, &mut e);
    }
    for &word in &w[40..60] {
        round((b & c) | (b & d) | (c & d), 0x8F1B_BCDC, word, &mut a, &mut b, &mut c, &mut d, &mut e);
    }
    for &word in &w[60..80] {
        round(b ^ c ^ d, 0xCA62_C1D6, word, &mut a, &mut b, &mut c, &mut d, &mut e);
    }
    let mut digest = [0u8; 20];
    for ((chunk, initial), word) in digest.chunks_exact_mut(4).zip(INITIAL).zip([a, b, c, d, e]) {
        chunk.copy_from_slice(&initial.wrapping_add(word).to_be_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_uuid_crate_v5() {
        let namespace = crate::ledger::ENTRY_ID_NAMESPACE;
        let mut state = 0x9E37_79B9_7F4A_7C15_u128;
        for n in 0..20_000u128 {
            // A mix of patterned and scrambled ids.
            state = state.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(n) ^ (state >> 61);
            for name in [Uuid::from_u128(n), Uuid::from_u128(state), Uuid::from_u128(!n)] {
                assert_eq!(v5_of_uuid(&namespace, &name), Uuid::new_v5(&namespace, name.as_bytes()), "{name}");
                assert_eq!(v5_of_uuid(&name, &namespace), Uuid::new_v5(&name, namespace.as_bytes()), "{name}");
            }
        }
        assert_eq!(v5_of_uuid(&Uuid::nil(), &Uuid::max()), Uuid::new_v5(&Uuid::nil(), Uuid::max().as_bytes()));
    }
}
