//! Webhook signatures: what a receiver checks to know a POST came from
//! tally, unchanged, and recently (docs/WEBHOOKS.md is the receiver's
//! guide; this module is the reference implementation of both sides).
//!
//! The scheme is the one Stripe and Metronome use: the header
//!
//! ```text
//! Tally-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! signs the exact body bytes together with the time of signing, so a
//! captured request cannot be replayed later than the receiver's tolerance
//! ([`DEFAULT_TOLERANCE`], 300 s) and a body cannot be swapped under an old
//! signature. Each attempt is signed afresh (a retry a day later carries
//! that day's `t`). Several `v1=` entries may appear (reserved for secret
//! rotation); a receiver accepts if any matches.
//!
//! Invariant: verification compares MACs in constant time (the `hmac`
//! crate's `verify_slice`), never with `==` on strings.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "Tally-Signature";
/// How far a signature's timestamp may be from the receiver's clock.
pub const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Tally-Signature` value for `body` signed at `timestamp` (unix s).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=<int>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed Tally-Signature header: {0}")]
    Malformed(String),
    /// The timestamp is outside the tolerance: a replay, or a clock off.
    #[error("signature timestamp {timestamp} is {skew_s} s from now, beyond the {tolerance_s} s tolerance")]
    Stale {
        /// The header's `t`.
        timestamp: i64,
        /// |now - t| in seconds.
        skew_s: i64,
        /// The tolerance in seconds.
        tolerance_s: u64,
    },
    /// No `v1` matches: another secret, or the body was changed.
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a `Tally-Signature` header against the body as received, at
/// `now` (unix s), accepting timestamps within `tolerance` either way.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: std::time::Duration,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) =
            part.trim().split_once('=').ok_or_else(|| VerifyError::Malformed(format!("`{part}` is not key=value")))?;
        match key {
            "t" => {
                timestamp = Some(
                    value.parse::<i64>().map_err(|_| VerifyError::Malformed(format!("t={value} is not a number")))?,
                )
            }
            "v1" => candidates
                .push(hex::decode(value).map_err(|_| VerifyError::Malformed(format!("v1={value} is not hex")))?),
            _ => {} // other schemes: ignored, as Stripe's receivers do
        }
    }
    let timestamp = timestamp.ok_or_else(|| VerifyError::Malformed("no t=".into()))?;
    if candidates.is_empty() {
        return Err(VerifyError::Malformed("no v1=".into()));
    }
    let skew_s = now.saturating_sub(timestamp).saturating_abs();
    if skew_s.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale { timestamp, skew_s, tolerance_s: tolerance.as_secs() });
    }
    let expected = mac(secret, timestamp, body);
    if candidates.iter().any(|candidate| expected.clone().verify_slice(candidate).is_ok()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret_0123456789";

    #[test]
    fn a_known_vector() {
        // printf '%s' '1700000000.{"id":"x"}' | openssl dgst -sha256 -hmac 'whsec_test_secret_0123456789'
        assert_eq!(
            sign(SECRET, 1_700_000_000, br#"{"id":"x"}"#),
            "t=1700000000,v1=00895370fc571fb66444a1183b5fa5244a0422ea934347dac2fcbbfa93de3a81"
        );
    }

    #[test]
    fn verify_accepts_the_signed_body_and_refuses_a_tampered_one() {
        let body = br#"{"id":"a","balance":"9"}"#;
        let header = sign(SECRET, 1_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_010, DEFAULT_TOLERANCE), Ok(()));
        let tampered = br#"{"id":"a","balance":"99"}"#;
        assert_eq!(verify(SECRET, &header, tampered, 1_010, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        assert_eq!(verify(b"another secret", &header, body, 1_010, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        // A re-stamped old signature fails too: t is inside the MAC.
        let restamped = header.replacen("t=1000", "t=1005", 1);
        assert_eq!(verify(SECRET, &restamped, body, 1_010, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        // Rotation: any matching v1 is enough.
        let rotated =
            format!("{},v1={}", header.replacen("v1=", "v1=00", 1), &header[header.find("v1=").expect("v1") + 3..]);
        assert_eq!(verify(SECRET, &rotated, body, 1_010, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_outside_the_tolerance() {
        let body = b"{}";
        let header = sign(SECRET, 1_000, body);
        assert_eq!(verify(SECRET, &header, body, 1_300, DEFAULT_TOLERANCE), Ok(()), "300 s: the edge is accepted");
        assert!(matches!(
            verify(SECRET, &header, body, 1_301, DEFAULT_TOLERANCE),
            Err(VerifyError::Stale { skew_s: 301, .. })
        ));
        assert!(matches!(verify(SECRET, &header, body, 699, DEFAULT_TOLERANCE), Err(VerifyError::Stale { .. })));
    }

    #[test]
    fn malformed_headers_are_named() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert!(
                matches!(verify(SECRET, header, b"", 1, DEFAULT_TOLERANCE), Err(VerifyError::Malformed(_))),
                "{header:?}"
            );
        }
    }
}
