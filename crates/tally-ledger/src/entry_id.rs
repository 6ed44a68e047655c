//! Entry ids: a fixed bijection of the input id, written as a UUID v8.
//!
//! An entry id must be a deterministic function of the input id (a replay
//! writes the same id) and differ between inputs. It used to be a UUID v5
//! (SHA-1 of a namespace and the input id): at ~135 ns per input, SHA-1 was
//! the largest single CPU cost of [`crate::Ledger::apply`]. A bijection does
//! the same job in a few nanoseconds, and makes uniqueness a fact instead of
//! a probability:
//!
//! - the 122 bits of the input id that are not its version and variant are
//!   XORed with those of [`ENTRY_ID_NAMESPACE`] (the v5 namespace before,
//!   now a key), mixed by a bijection of 122-bit
//!   integers ([`mix`]), and written into the 122 free bits of a UUID v8
//!   (RFC 9562: version 8, variant `10`, content defined by the application);
//! - so two input ids that differ anywhere but in their version and variant
//!   bits get different entry ids. Every input id tally writes is a UUID v5
//!   (`tally_client::input_id`), so all of them get distinct entry ids; ids
//!   of different versions collide only if their other 122 bits are equal,
//!   as likely as a v5 collision was.
//!
//! Not a secret and not a hash: the input id can be computed back from the
//! entry id, and needs no hiding (every entry carries it).

use uuid::Uuid;

use crate::ledger::ENTRY_ID_NAMESPACE;

/// The free bits of a UUID: all but the version (4 bits) and the variant (2).
const FREE_BITS: u32 = 122;

const FREE_MASK: u128 = (1 << FREE_BITS) - 1;

/// Odd, so each is invertible modulo 2^122. Never change them (nor
/// [`ENTRY_ID_NAMESPACE`]): a replay after a change would write entries
/// with new ids, and readers could no longer match copies.
const MULTIPLIERS: [u128; 2] = [0x0237_79b9_7f4a_7c15_f39c_c060_5ced_c835, 0x02a4_0938_2229_9f31_d008_2efa_98ec_4e6d];

/// The deterministic id of the entry of input `input_id` (see the module
/// docs).
pub fn entry_id(input_id: Uuid) -> Uuid {
    let free = free_bits(input_id.as_u128() ^ ENTRY_ID_NAMESPACE.as_u128());
    Uuid::from_u128(as_v8(mix(free)))
}

/// A bijection of 122-bit integers: xorshifts (which carry high bits down)
/// around multiplications by odd constants (which carry low bits up), each
/// step invertible on its own.
fn mix(mut bits: u128) -> u128 {
    for multiplier in MULTIPLIERS {
        bits ^= bits >> 61;
        bits = bits.wrapping_mul(multiplier) & FREE_MASK;
    }
    bits ^ (bits >> 61)
}

/// The 122 bits of a UUID other than its version (bits 76..80) and variant
/// (bits 62..64), packed.
fn free_bits(uuid: u128) -> u128 {
    let high = uuid >> 80; // 48 bits
    let middle = (uuid >> 64) & 0xFFF; // 12 bits
    let low = uuid & ((1 << 62) - 1); // 62 bits
    high << 74 | middle << 62 | low
}

/// 122 bits as a UUID v8: version 8, variant `10`.
fn as_v8(bits: u128) -> u128 {
    let high = bits >> 74;
    let middle = (bits >> 62) & 0xFFF;
    let low = bits & ((1 << 62) - 1);
    high << 80 | 0x8 << 76 | middle << 64 | 0b10 << 62 | low
}

#[cfg(test)]
mod tests {
    use uuid::{Variant, Version};

    use super::*;

    /// The inverse of [`mix`], step by step: proof by test that `mix` is a
    /// bijection as written.
    fn unmix(mut bits: u128) -> u128 {
        // x ^ (x >> 61) is its own inverse on 122 bits: applied twice, the
        // second shift brings down only bits above 122, which are zero.
        bits ^= bits >> 61;
        for multiplier in MULTIPLIERS.iter().rev() {
            bits = bits.wrapping_mul(inverse(*multiplier)) & FREE_MASK;
            bits ^= bits >> 61;
        }
        bits
    }

    /// The inverse of an odd number modulo 2^122 (Newton: each step doubles
    /// the correct low bits, from 3).
    fn inverse(odd: u128) -> u128 {
        let mut inverse = odd;
        for _ in 0..7 {
            inverse = inverse.wrapping_mul(2u128.wrapping_sub(odd.wrapping_mul(inverse))) & FREE_MASK;
        }
        assert_eq!(odd.wrapping_mul(inverse) & FREE_MASK, 1);
        inverse
    }

    /// Small, extreme and random ids.
    fn inputs() -> impl Iterator<Item = u128> {
        let mut random = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random
        };
        let random_ids = std::iter::repeat_with(move || u128::from(next()) << 64 | u128::from(next()));
        (0..10_000).chain([u128::MAX, 1 << 127, FREE_MASK]).chain(random_ids.take(10_000))
    }

    #[test]
    fn mix_is_a_bijection_of_122_bits() {
        for input in inputs() {
            let bits = free_bits(input);
            assert!(bits <= FREE_MASK);
            assert!(mix(bits) <= FREE_MASK);
            assert_eq!(unmix(mix(bits)), bits, "{input:#x}");
        }
    }

    #[test]
    fn the_free_bits_are_all_but_version_and_variant() {
        for input in inputs() {
            let v8 = as_v8(free_bits(input));
            // Version and variant replaced, every other bit kept.
            let fixed: u128 = 0xF << 76 | 0b11 << 62;
            assert_eq!(v8 & !fixed, input & !fixed, "{input:#x}");
            assert_eq!(free_bits(v8), free_bits(input));
        }
    }

    #[test]
    fn entry_ids_are_uuid_v8() {
        for input in inputs() {
            let id = entry_id(Uuid::from_u128(input));
            assert_eq!(id.get_version(), Some(Version::Custom), "{id}");
            assert_eq!(id.get_variant(), Variant::RFC4122, "{id}");
        }
    }

    #[test]
    fn distinct_inputs_of_one_version_get_distinct_entry_ids() {
        let v5 = |name: u128| Uuid::new_v5(&Uuid::NAMESPACE_OID, &name.to_be_bytes());
        let mut seen = std::collections::HashSet::new();
        for n in 0..20_000 {
            assert!(seen.insert(entry_id(v5(n))));
            assert!(seen.insert(entry_id(Uuid::from_u128(n << 80))));
        }
    }

    /// Pinned: entries already written carry these ids, and a replay must
    /// write the same ones. (Checked against a separate implementation of
    /// the module docs' definition when they were pinned.)
    #[test]
    fn entry_ids_are_pinned() {
        let pinned = [
            ("00000000-0000-0000-0000-000000000000", "83d9a219-34ec-8e7b-915f-7a4be6dd2b90"),
            ("00000000-0000-0000-0000-000000000001", "d84d6fe1-e9e8-83bd-b724-db0c76a3785b"),
            ("6f1c2d4e-9a3b-5c5d-8e7f-1a2b3c4d5e6f", "5febe0df-f083-8334-aa44-a41100d71c85"),
        ];
        for (input, entry) in pinned {
            let input: Uuid = input.parse().expect("uuid");
            assert_eq!(entry_id(input).to_string(), entry, "entry id of {input}");
        }
    }
}
