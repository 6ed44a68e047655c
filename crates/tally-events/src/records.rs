//! The Rust form of each Avro record in `schemas/avro/`.
//!
//! Field names and order follow the schema files exactly (serde maps them by
//! name). UUIDs and decimals travel as text, instants as `timestamp-millis`.
//! Maps are `BTreeMap` so that encoding is deterministic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    ids::{AccountId, Epoch, Sequence},
    money::{Credits, Dollars},
    reason::Reason,
};

/// What a usage quantity counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Unit {
    /// One processed image.
    Image,
    /// One second of generated video.
    VideoSecond,
    /// One message sent (SMS).
    Message,
}

impl Unit {
    /// Stable lowercase code, as used in the rate table and ClickHouse.
    pub fn code(self) -> &'static str {
        match self {
            Unit::Image => "image",
            Unit::VideoSecond => "video_second",
            Unit::Message => "message",
        }
    }
}

/// Whether the engine delivered a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobOutcome {
    /// The job delivered: it is charged.
    Succeeded,
    /// The job failed: recorded, not charged.
    Failed,
}

/// Plan tier: sets the dollar price of one credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PlanTier {
    /// Pay as you go: the highest price per credit.
    #[serde(rename = "PAYG")]
    Payg,
    /// Basic subscription.
    #[serde(rename = "BASIC")]
    Basic,
    /// Pro subscription: the lowest price per credit.
    #[serde(rename = "PRO")]
    Pro,
}

impl PlanTier {
    /// All tiers, highest price first.
    pub const ALL: [PlanTier; 3] = [PlanTier::Payg, PlanTier::Basic, PlanTier::Pro];

    /// Display name, as operators see it.
    pub fn name(self) -> &'static str {
        match self {
            PlanTier::Payg => "PAYG",
            PlanTier::Basic => "Basic",
            PlanTier::Pro => "Pro",
        }
    }
}

impl std::str::FromStr for PlanTier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PAYG" => Ok(PlanTier::Payg),
            "BASIC" => Ok(PlanTier::Basic),
            "PRO" => Ok(PlanTier::Pro),
            _ => Err(format!("unknown plan tier {s:?} (expected PAYG, BASIC or PRO)")),
        }
    }
}

/// Which worker emitted an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Producer {
    /// Worker name or host.
    pub worker: String,
    /// Worker software version.
    pub version: String,
}

/// One use of a metered service by an AI engine worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Idempotency key, derived from (job id, service, engine).
    #[serde(with = "text")]
    pub event_id: Uuid,
    /// Account charged.
    pub account_id: String,
    /// Photo-booth event the job belongs to.
    pub photo_event_id: String,
    /// Booth that captured the photo.
    pub booth_id: String,
    /// Worker job / request id.
    pub job_id: String,
    /// Service code, e.g. `ai_modify`.
    pub service: String,
    /// Engine code, e.g. `nano_banana_2`.
    pub engine: String,
    /// Units used.
    #[serde(with = "decimal_text")]
    pub quantity: Decimal,
    /// Unit of the quantity.
    pub unit: Unit,
    /// Job outcome.
    pub outcome: JobOutcome,
    /// When the job finished.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// Producer metadata.
    pub producer: Producer,
    /// Free-form worker attributes (v2).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// An operator bought credits for a dollar amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditPurchase {
    /// Idempotency key.
    #[serde(with = "text")]
    pub purchase_id: Uuid,
    /// Account credited.
    pub account_id: String,
    /// Dollars paid.
    pub amount_dollars: Dollars,
    /// When the payment settled.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// Payment processor reference (v2).
    #[serde(default)]
    pub payment_reference: Option<String>,
}

/// What an account change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccountChangeKind {
    /// Create the account with a zero balance.
    Open,
    /// Set tier and threshold; credits are kept.
    Update,
    /// Delete the account; remaining credits are forfeited.
    Delete,
}

/// Opens, updates or deletes an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountChange {
    /// Idempotency key.
    #[serde(with = "text")]
    pub change_id: Uuid,
    /// Account changed.
    pub account_id: String,
    /// What the change does.
    pub kind: AccountChangeKind,
    /// Tier from this change on.
    pub tier: PlanTier,
    /// Low-balance threshold in credits.
    pub low_balance_threshold: Credits,
    /// When the change took effect.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// Why (v2).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Ledger entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryType {
    /// Account opened, balance zero.
    Open,
    /// A usage debit.
    Consume,
    /// A purchase.
    Add,
    /// Tier or threshold changed.
    Update,
    /// Credits forfeited at deletion.
    Forfeit,
}

impl EntryType {
    /// Display name, as operators see it.
    pub fn name(self) -> &'static str {
        match self {
            EntryType::Open => "Open",
            EntryType::Consume => "Consume",
            EntryType::Add => "Add",
            EntryType::Update => "Update",
            EntryType::Forfeit => "Forfeit",
        }
    }
}

/// Ledger entry status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryStatus {
    /// Applied.
    Success,
    /// Recorded, changed no balance.
    Failed,
}

/// Kafka coordinates of an input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A fingerprint of an input's content: what a repeat of its id must
/// match to be a duplicate rather than a conflicting reuse of the id.
/// Computed by the ledger rules (`tally_ledger::digest`); 16 bytes, never
/// all zero (all zero marks "not recorded" in packed snapshot arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputDigest(pub [u8; 16]);

/// One immutable ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Deterministic entry id.
    #[serde(with = "text")]
    pub entry_id: Uuid,
    /// Account.
    pub account_id: AccountId,
    /// Per-account gapless sequence, from 1.
    pub sequence: Sequence,
    /// Writer epoch (fence); not content.
    pub epoch: Epoch,
    /// Type.
    pub entry_type: EntryType,
    /// Status.
    pub status: EntryStatus,
    /// Reason code of a failed entry, empty otherwise.
    pub reason: String,
    /// Input id.
    #[serde(with = "text")]
    pub input_id: Uuid,
    /// Service code (CONSUME).
    pub service: String,
    /// Engine code (CONSUME).
    pub engine: String,
    /// Photo-booth event (CONSUME).
    pub photo_event_id: String,
    /// Units used (CONSUME).
    #[serde(with = "decimal_text")]
    pub quantity: Decimal,
    /// Credits moved, never negative.
    pub credits: Credits,
    /// Dollar value, to the cent.
    pub dollars: Dollars,
    /// Tier at the entry.
    pub tier: PlanTier,
    /// Rate table version id.
    pub rate_version: String,
    /// Balance after the entry.
    pub balance_after: Credits,
    /// Threshold after the entry.
    pub low_balance_threshold: Credits,
    /// Paused after the entry.
    pub paused: bool,
    /// The input's occurred_at.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// The input's coordinates.
    pub source: SourceOffset,
    /// Booth (CONSUME) (v2).
    #[serde(default)]
    pub booth_id: String,
    /// Fingerprint of the input's content, so that a restored state tells
    /// a duplicate from a conflicting reuse of the id (v3; `None` in
    /// entries written before).
    #[serde(default, with = "digest_bytes")]
    pub input_digest: Option<InputDigest>,
    /// Booking time: the latest `occurred_at`, truncated to the second,
    /// of this entry and every earlier entry of the account, so it never
    /// decreases along the account's sequence (the rule is
    /// `tally_ledger::rules::booked_at`). Finance books days by it (v4;
    /// `None` in entries written before).
    #[serde(default, with = "chrono::serde::ts_milliseconds_option")]
    pub booked_at: Option<DateTime<Utc>>,
}

impl LedgerEntry {
    /// The signed change of balance this entry makes: `+credits` for a
    /// successful ADD, `-credits` for a successful CONSUME or FORFEIT, zero
    /// otherwise.
    pub fn signed_credits(&self) -> Credits {
        match (self.status, self.entry_type) {
            (EntryStatus::Success, EntryType::Add) => self.credits,
            (EntryStatus::Success, EntryType::Consume | EntryType::Forfeit) => -self.credits,
            _ => Credits::ZERO,
        }
    }

    /// The entry with the writer epoch cleared: what two copies of the same
    /// entry must agree on. The epoch is fencing metadata, not content.
    pub fn content(&self) -> LedgerEntry {
        LedgerEntry { epoch: Epoch(0), ..self.clone() }
    }

    /// The reason of a FAILED entry, when it is one this build knows.
    pub fn failure_reason(&self) -> Option<Reason> {
        Reason::from_code(&self.reason)
    }
}

/// Ledger marker kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MarkerKind {
    /// A new owner of the partition, with a new epoch.
    Claim,
    /// Inputs handled up to an offset.
    Progress,
}

/// A control record in a ledger partition (see `schemas/avro/ledger_marker.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMarker {
    /// Kind.
    pub kind: MarkerKind,
    /// Claim id.
    #[serde(with = "text")]
    pub claim_id: Uuid,
    /// Writer epoch.
    pub epoch: Epoch,
    /// Writer process, for operators.
    pub instance: String,
    /// Input topic.
    pub input_topic: String,
    /// Input partition.
    pub input_partition: i32,
    /// Every input offset below this was handled.
    pub next_input_offset: i64,
}

/// One chunk of a partition snapshot (see
/// `schemas/avro/partition_snapshot.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Shared by the chunks of one snapshot.
    #[serde(with = "text")]
    pub snapshot_id: Uuid,
    /// Index of this chunk.
    pub chunk: i32,
    /// Chunks in the snapshot.
    pub chunks: i32,
    /// Input topic.
    pub input_topic: String,
    /// Input (and ledger, and snapshot) partition.
    pub input_partition: i32,
    /// The state covers ledger records below this offset.
    pub ledger_next_offset: i64,
    /// Epoch of the claim in force.
    pub claim_epoch: Epoch,
    /// Id of that claim.
    #[serde(with = "text")]
    pub claim_id: Uuid,
    /// Every input offset below this one was handled.
    pub resume_input_offset: i64,
    /// Latest occurred_at applied.
    #[serde(with = "chrono::serde::ts_milliseconds_option")]
    pub newest_occurred_at: Option<DateTime<Utc>>,
    /// Highest input offset applied.
    pub last_source_offset: Option<i64>,
    /// Accounts of this chunk.
    pub accounts: Vec<SnapshotAccount>,
    /// Packed dedup ids: 16 UUID bytes then 8 bytes big-endian ms, each.
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub dedup_ids: Vec<u8>,
    /// The content digest of each dedup id, 16 bytes each in the same
    /// order (all zero: not recorded); empty in v1 snapshots.
    #[serde(default, with = "apache_avro::serde_avro_bytes")]
    pub dedup_digests: Vec<u8>,
}

/// One account in a [`PartitionSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAccount {
    /// Account id.
    pub account_id: AccountId,
    /// Credits held.
    pub balance: Credits,
    /// Sequence of the latest entry.
    pub last_sequence: Sequence,
    /// Plan tier.
    pub tier: PlanTier,
    /// Low-balance threshold.
    pub low_balance_threshold: Credits,
    /// Paused.
    pub paused: bool,
    /// Deleted.
    pub deleted: bool,
    /// Booking time of the latest entry, seconds since 1970 (v3; 0 in
    /// snapshots written before).
    #[serde(default)]
    pub booked_at: i64,
}

/// Alert kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    /// Balance fell below the threshold.
    LowBalance,
    /// AI features paused.
    Paused,
    /// AI features resumed by a purchase.
    Resumed,
}

/// A balance alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic alert id.
    #[serde(with = "text")]
    pub alert_id: Uuid,
    /// Account.
    pub account_id: AccountId,
    /// Kind.
    pub kind: AlertKind,
    /// Sequence of the entry that raised it.
    pub sequence: Sequence,
    /// Balance after that entry.
    pub balance: Credits,
    /// Threshold.
    pub threshold: Credits,
    /// occurred_at of the input.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// Human-readable summary (v2).
    #[serde(default)]
    pub message: String,
    /// The account's plan tier after the entry (v3; `None` in alerts
    /// written before).
    #[serde(default)]
    pub tier: Option<PlanTier>,
}

/// An input that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stable reason code (see [`crate::Reason`]).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// Where the input was read.
    pub source: SourceOffset,
    /// Original key: at most its first
    /// [`crate::limits::DEAD_LETTER_KEY_BYTES_MAX`] bytes.
    #[serde(with = "opt_bytes")]
    pub key: Option<Vec<u8>>,
    /// Original bytes: at most the first
    /// [`crate::limits::DEAD_LETTER_PAYLOAD_BYTES_MAX`].
    #[serde(with = "opt_bytes")]
    pub payload: Option<Vec<u8>>,
    /// Input id, when the message decoded (v2).
    #[serde(default)]
    pub input_id: String,
    /// Length of the key as sent, -1 without one (v3; -1 before).
    #[serde(default = "unknown_length")]
    pub original_key_bytes: i64,
    /// Length of the value as sent, -1 without one (v3; -1 before).
    #[serde(default = "unknown_length")]
    pub original_payload_bytes: i64,
}

fn unknown_length() -> i64 {
    -1
}

impl DeadLetter {
    /// A dead letter of the input read at `source` with `key` and
    /// `payload`, keeping at most the limits' bytes of each and their
    /// original lengths.
    pub fn of_input(
        reason: Reason,
        detail: String,
        source: SourceOffset,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        input_id: String,
    ) -> DeadLetter {
        let kept = |bytes: Option<&[u8]>, max: usize| bytes.map(|b| b[..b.len().min(max)].to_vec());
        let length = |bytes: Option<&[u8]>| bytes.map_or(-1, |b| b.len() as i64);
        DeadLetter {
            reason: reason.code().to_string(),
            detail,
            source,
            key: kept(key, crate::limits::DEAD_LETTER_KEY_BYTES_MAX),
            payload: kept(payload, crate::limits::DEAD_LETTER_PAYLOAD_BYTES_MAX),
            input_id,
            original_key_bytes: length(key),
            original_payload_bytes: length(payload),
        }
    }

    /// Whether the key or payload held is shorter than what was sent.
    pub fn truncated(&self) -> bool {
        let held = |bytes: &Option<Vec<u8>>| bytes.as_ref().map_or(-1, |b| b.len() as i64);
        (self.original_key_bytes >= 0 && held(&self.key) < self.original_key_bytes)
            || (self.original_payload_bytes >= 0 && held(&self.payload) < self.original_payload_bytes)
    }
}

/// An input of the metering service: the three records of the input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A usage event.
    Usage(UsageEvent),
    /// A credit purchase.
    Purchase(CreditPurchase),
    /// An account change.
    Account(AccountChange),
}

impl Input {
    /// The idempotency key.
    pub fn id(&self) -> Uuid {
        match self {
            Input::Usage(e) => e.event_id,
            Input::Purchase(p) => p.purchase_id,
            Input::Account(c) => c.change_id,
        }
    }
    /// The account the input concerns (also its Kafka key).
    pub fn account_id(&self) -> &str {
        match self {
            Input::Usage(e) => &e.account_id,
            Input::Purchase(p) => &p.account_id,
            Input::Account(c) => &c.account_id,
        }
    }
    /// When it happened.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Input::Usage(e) => e.occurred_at,
            Input::Purchase(p) => p.occurred_at,
            Input::Account(c) => c.occurred_at,
        }
    }
}

/// Serde for types carried as text (UUIDs, decimals): Display / FromStr.
mod text {
    use std::{fmt::Display, str::FromStr};

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
    }
}

/// Serde for decimals carried as text: read exactly (see
/// [`crate::decimal`]), never rounded.
mod decimal_text {
    use rust_decimal::Decimal;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        crate::decimal::parse_exact(&text).map_err(D::Error::custom)
    }
}

/// Serde for an optional [`InputDigest`] as Avro `bytes`: empty when
/// absent, 16 bytes when present.
mod digest_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use super::InputDigest;

    pub fn serialize<S: Serializer>(value: &Option<InputDigest>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(digest) => s.serialize_bytes(&digest.0),
            None => s.serialize_bytes(&[]),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<InputDigest>, D::Error> {
        let bytes = super::opt_bytes::ByteBuf::deserialize(d)?.0;
        match bytes.len() {
            0 => Ok(None),
            16 => {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&bytes);
                Ok(Some(InputDigest(digest)))
            }
            n => Err(D::Error::custom(format!("an input digest is 16 bytes, not {n}"))),
        }
    }
}

/// Serde for optional bytes: Avro `["null","bytes"]` must see bytes, not a
/// sequence of integers.
mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&serde_bytes_ref(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }

    struct Bytes<'a>(&'a [u8]);
    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    fn serde_bytes_ref(bytes: &[u8]) -> Bytes<'_> {
        Bytes(bytes)
    }

    pub(super) struct ByteBuf(pub(super) Vec<u8>);
    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}
