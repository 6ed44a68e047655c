//! The content digest of an input: what a repeat of an input id must match
//! to be a duplicate, rather than a reuse of the id with other content.
//!
//! A worker that retries a job sends the same event again: same id, same
//! content, a silent duplicate. An id sent again with another quantity,
//! another service or another amount is not a retry; applying it would
//! charge what was never used, and dropping it silently would lose what
//! the worker meant. The ledger refuses it as `conflicting_duplicate`,
//! naming the fields that differ, and the first content stands.
//!
//! What is content: what the input charges or changes, which a retry of
//! the same job, payment or change never alters:
//! - usage: account, service, engine, quantity and unit, outcome, and the
//!   photo-booth event, booth and job ids;
//! - purchase: account, amount;
//! - account change: account, kind, tier, threshold.
//!
//! Not content: when it was reported (`occurred_at`: a job re-run by
//! another worker reports its own finish time, and is still the job that
//! was charged once), producer metadata, free-form attributes, a
//! purchase's payment reference and a change's reason text. Decimals
//! count by value (`7.5` and `7.50` are the same). A failed job reported
//! again as succeeded is a conflict, not a duplicate: it is refused, but
//! with a trace, instead of vanishing uncharged.
//!
//! Layout of the 16 bytes (fixed forever: digests are stored in ledger
//! entries and snapshots): bytes 0-7 are the XXH3-64 of the kind byte
//! followed by every field's own XXH3-64 (little-endian, 7 slots, unused
//! ones zero), so any differing field changes them but for a 2^-64
//! chance; byte 8 is the record kind (1 usage, 2 purchase, 3 account
//! change, never 0, so a digest is never all zero); bytes 9-15 hold the
//! low byte of each field's hash, which names the fields that differ (a
//! differing field keeps its byte with probability 1/256; the conflict is
//! still caught by bytes 0-7, and the detail then says the content
//! differs). Field encodings: text as its UTF-8 bytes; a decimal as
//! rust_decimal's 16-byte form of its normalized value; the quantity's
//! unit as one byte after it; the three ids each as a little-endian u32
//! length and the bytes.
//!
//! ```
//! use tally_events::records::*;
//! use tally_ledger::digest::{differing_fields, digest};
//! let open = |tier| Input::Account(AccountChange {
//!     change_id: uuid::Uuid::nil(),
//!     account_id: "acct-1".into(),
//!     kind: AccountChangeKind::Open,
//!     tier,
//!     low_balance_threshold: "10".parse().unwrap(),
//!     occurred_at: chrono::DateTime::from_timestamp_millis(0).unwrap(),
//!     reason: None,
//! });
//! let (payg, pro) = (digest(&open(PlanTier::Payg)), digest(&open(PlanTier::Pro)));
//! assert_ne!(payg, pro);
//! assert_eq!(differing_fields(&payg, &pro), vec!["tier"]);
//! ```

use rust_decimal::Decimal;
use tally_events::records::{
    AccountChange, AccountChangeKind, CreditPurchase, Input, InputDigest, JobOutcome, PlanTier, Unit, UsageEvent,
};
use xxhash_rust::xxh3::xxh3_64;

/// Field names of each kind, in digest order (bytes 9.. of the digest).
const USAGE_FIELDS: [&str; 6] =
    ["account_id", "service", "engine", "quantity/unit", "outcome", "photo_event_id/booth_id/job_id"];
const PURCHASE_FIELDS: [&str; 2] = ["account_id", "amount_dollars"];
const ACCOUNT_FIELDS: [&str; 4] = ["account_id", "kind", "tier", "low_balance_threshold"];

/// Most fields a kind has (bytes 9 to 15).
const FIELDS_MAX: usize = 7;

/// The content digest of `input`.
pub fn digest(input: &Input) -> InputDigest {
    let mut hashes = [0u64; FIELDS_MAX];
    let kind = match input {
        Input::Usage(event) => {
            usage(event, &mut hashes);
            1
        }
        Input::Purchase(purchase) => {
            self::purchase(purchase, &mut hashes);
            2
        }
        Input::Account(change) => {
            account(change, &mut hashes);
            3
        }
    };
    let mut all = [0u8; FIELDS_MAX * 8 + 1];
    all[0] = kind;
    for (n, hash) in hashes.iter().enumerate() {
        all[1 + n * 8..9 + n * 8].copy_from_slice(&hash.to_le_bytes());
    }
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&xxh3_64(&all).to_le_bytes());
    out[8] = kind;
    for (n, hash) in hashes.iter().enumerate() {
        out[9 + n] = *hash as u8;
    }
    InputDigest(out)
}

/// The fields of two digests' input that differ, by name: empty when the
/// digests are equal. When the kinds differ, `["record type"]`; when only
/// the overall hash tells them apart, `["content"]`.
pub fn differing_fields(a: &InputDigest, b: &InputDigest) -> Vec<&'static str> {
    if a == b {
        return Vec::new();
    }
    let names: &[&'static str] = match (a.0[8], b.0[8]) {
        (x, y) if x != y => return vec!["record type"],
        (1, _) => &USAGE_FIELDS,
        (2, _) => &PURCHASE_FIELDS,
        (3, _) => &ACCOUNT_FIELDS,
        _ => return vec!["content"],
    };
    let differ: Vec<&'static str> =
        names.iter().enumerate().filter(|(n, _)| a.0[9 + n] != b.0[9 + n]).map(|(_, name)| *name).collect();
    if differ.is_empty() {
        vec!["content"]
    } else {
        differ
    }
}

fn text(value: &str) -> u64 {
    xxh3_64(value.as_bytes())
}

/// A decimal by value: normalized (`7.50` is `7.5`), its 16-byte form.
fn decimal(value: Decimal) -> [u8; 16] {
    value.normalize().serialize()
}

/// Strings joined with their lengths, so that ("a", "bc") and ("ab", "c")
/// differ.
fn texts(values: &[&str]) -> u64 {
    let mut joined = Vec::with_capacity(values.iter().map(|v| v.len() + 4).sum());
    for value in values {
        joined.extend_from_slice(&(value.len() as u32).to_le_bytes());
        joined.extend_from_slice(value.as_bytes());
    }
    xxh3_64(&joined)
}

fn usage(event: &UsageEvent, out: &mut [u64; FIELDS_MAX]) {
    let unit = match event.unit {
        Unit::Image => 1u8,
        Unit::VideoSecond => 2,
        Unit::Message => 3,
    };
    let mut quantity = [0u8; 17];
    quantity[..16].copy_from_slice(&decimal(event.quantity));
    quantity[16] = unit;
    let outcome = match event.outcome {
        JobOutcome::Succeeded => 1u8,
        JobOutcome::Failed => 2,
    };
    out[0] = text(&event.account_id);
    out[1] = text(&event.service);
    out[2] = text(&event.engine);
    out[3] = xxh3_64(&quantity);
    out[4] = xxh3_64(&[outcome]);
    out[5] = texts(&[&event.photo_event_id, &event.booth_id, &event.job_id]);
}

fn purchase(purchase: &CreditPurchase, out: &mut [u64; FIELDS_MAX]) {
    out[0] = text(&purchase.account_id);
    out[1] = xxh3_64(&decimal(purchase.amount_dollars.decimal()));
}

fn account(change: &AccountChange, out: &mut [u64; FIELDS_MAX]) {
    let kind = match change.kind {
        AccountChangeKind::Open => 1u8,
        AccountChangeKind::Update => 2,
        AccountChangeKind::Delete => 3,
    };
    let tier = match change.tier {
        PlanTier::Payg => 1u8,
        PlanTier::Basic => 2,
        PlanTier::Pro => 3,
    };
    out[0] = text(&change.account_id);
    out[1] = xxh3_64(&[kind]);
    out[2] = xxh3_64(&[tier]);
    out[3] = xxh3_64(&decimal(change.low_balance_threshold.decimal()));
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use tally_events::records::Producer;
    use uuid::Uuid;

    use super::*;

    fn event() -> UsageEvent {
        UsageEvent {
            event_id: Uuid::from_u128(7),
            account_id: "acct-1".into(),
            photo_event_id: "wedding-1".into(),
            booth_id: "booth-1".into(),
            job_id: "job-1".into(),
            service: "ai_image_to_video".into(),
            engine: "kling".into(),
            quantity: "7.5".parse().expect("decimal"),
            unit: Unit::VideoSecond,
            outcome: JobOutcome::Succeeded,
            occurred_at: DateTime::from_timestamp_millis(1_782_820_800_000).expect("time"),
            producer: Producer { worker: "gpu-1".into(), version: "1".into() },
            attributes: Default::default(),
        }
    }

    fn of(event: &UsageEvent) -> InputDigest {
        digest(&Input::Usage(event.clone()))
    }

    /// Pinned: digests are stored in ledger entries and snapshots, so the
    /// algorithm may never change. If this fails, the change broke every
    /// restored state's duplicate detection. (The value was computed
    /// independently too, from the layout in the module docs, with
    /// Python's `xxhash` package and `decimal` module.)
    #[test]
    fn the_digest_is_fixed_forever() {
        let hex: String = of(&event()).0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "fe46090bb60b4cbc0175867049eb9900");
    }

    #[test]
    fn retries_and_metadata_do_not_change_it() {
        let base = of(&event());
        let mut retry = event();
        retry.producer.worker = "gpu-7".into();
        retry.attributes.insert("attempt".into(), "2".into());
        retry.quantity = "7.500".parse().expect("decimal");
        retry.occurred_at += chrono::TimeDelta::seconds(40);
        assert_eq!(
            of(&retry),
            base,
            "another worker, attributes, its own finish time, the same value written with more zeros"
        );
    }

    #[test]
    fn each_content_field_changes_it_and_is_named() {
        let base = of(&event());
        type Change = Box<dyn Fn(&mut UsageEvent)>;
        let changes: Vec<(&str, Change)> = vec![
            ("account_id", Box::new(|e| e.account_id = "acct-2".into())),
            ("service", Box::new(|e| e.service = "ai_modify".into())),
            ("engine", Box::new(|e| e.engine = "sora".into())),
            ("quantity/unit", Box::new(|e| e.quantity = "7.6".parse().expect("decimal"))),
            ("quantity/unit", Box::new(|e| e.unit = Unit::Image)),
            ("outcome", Box::new(|e| e.outcome = JobOutcome::Failed)),
            ("photo_event_id/booth_id/job_id", Box::new(|e| e.booth_id = "booth-2".into())),
            ("photo_event_id/booth_id/job_id", Box::new(|e| e.job_id = "job-2".into())),
        ];
        for (field, change) in changes {
            let mut changed = event();
            change(&mut changed);
            let digest = of(&changed);
            assert_ne!(digest, base, "{field}");
            assert_eq!(differing_fields(&base, &digest), vec![field]);
        }
        // Ids joined with their lengths: moving a character between two
        // of them is a change.
        let mut a = event();
        (a.photo_event_id, a.booth_id) = ("ab".into(), "c".into());
        let mut b = event();
        (b.photo_event_id, b.booth_id) = ("a".into(), "bc".into());
        assert_ne!(of(&a), of(&b));
    }

    #[test]
    fn kinds_never_share_a_digest_and_none_is_all_zero() {
        let usage = of(&event());
        let purchase = digest(&Input::Purchase(CreditPurchase {
            purchase_id: Uuid::from_u128(7),
            account_id: "acct-1".into(),
            amount_dollars: "25.00".parse().expect("decimal"),
            occurred_at: event().occurred_at,
            payment_reference: None,
        }));
        assert_eq!(differing_fields(&usage, &purchase), vec!["record type"]);
        assert!(usage.0 != [0; 16] && purchase.0 != [0; 16]);
    }
}
