//! The ledger's state and settings, as values: what one input partition
//! holds ([`AccountState`] per account, [`LedgerSnapshot`] of all of it),
//! its settings ([`LedgerConfig`]), and what [`crate::Ledger::apply`] and
//! [`crate::Ledger::restore`] return ([`Applied`], [`RestoreError`]).
//! No behaviour here: the rules are in `rules`, the partition in `ledger`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tally_events::{
    records::{Alert, EntryType, InputDigest, LedgerEntry, PlanTier},
    AccountId, Credits, Reason, Sequence,
};
use uuid::Uuid;

use crate::invariants::Violation;

/// Ledger settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// How far behind the newest applied input an input may be and still be
    /// deduplicated exactly; older inputs are rejected as too late. Also how
    /// long input ids are kept, so memory grows with window × input rate.
    pub dedup_window: TimeDelta,
}

impl Default for LedgerConfig {
    /// A 7-day window: workers retry for at most a day, and a week covers a
    /// booth that was offline over a long weekend.
    fn default() -> Self {
        LedgerConfig { dedup_window: TimeDelta::days(7) }
    }
}

/// One account as its latest entry left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// Credits held (never negative).
    pub balance: Credits,
    /// Sequence of the latest entry (1 after OPEN).
    pub last_sequence: Sequence,
    /// Plan tier.
    pub tier: PlanTier,
    /// Low-balance threshold in credits.
    pub low_balance_threshold: Credits,
    /// AI features paused (until a purchase).
    pub paused: bool,
    /// Deleted: kept as a tombstone so that later inputs are rejected.
    pub deleted: bool,
    /// Booking time of the latest entry, seconds since 1970
    /// ([`crate::booking`]; 0 before the first entry).
    pub booked: u32,
}

/// What [`crate::Ledger::apply`] made of an input.
// `Entry` is by far the most common result; boxing it to shrink the rare
// variants would cost an allocation per input.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied: exactly one ledger entry, and the alerts it raised in a fixed
    /// order (LOW_BALANCE before PAUSED).
    Entry {
        /// The entry to write.
        entry: LedgerEntry,
        /// Alerts to publish.
        alerts: Vec<Alert>,
    },
    /// Already applied: nothing changed.
    Duplicate,
    /// Not applicable: for the dead-letter topic.
    Rejected {
        /// Why.
        reason: Reason,
        /// Human-readable detail.
        detail: String,
    },
}

/// The ledger state of a partition, as a serde value: sorted, so two equal
/// states serialize to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSnapshot {
    /// Every account, deleted ones included, by id.
    pub accounts: BTreeMap<String, AccountState>,
    /// Input ids held for dedup, by (occurred_at, input id): those within
    /// the window, and those of its oldest time bucket (at most 1/1024 of
    /// the window older).
    pub dedup: Vec<DedupId>,
    /// Latest `occurred_at` applied.
    pub newest_occurred_at: Option<DateTime<Utc>>,
    /// Highest source offset applied.
    pub last_source_offset: Option<i64>,
}

/// One input id held for dedup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupId {
    /// Input id.
    pub input_id: Uuid,
    /// Its `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// Its input's content digest; `None` when the entry it was restored
    /// from did not record one (written before ledger entry v3).
    pub digest: Option<InputDigest>,
}

/// Counts, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LedgerStats {
    /// Accounts held, deleted ones included.
    pub accounts: usize,
    /// Of which deleted (tombstones).
    pub deleted_accounts: usize,
    /// Input ids held for dedup.
    pub dedup_ids: usize,
    /// Duplicates seen by this instance (not part of the state: a rebuilt
    /// ledger starts from zero).
    pub duplicates_seen: u64,
}

/// Why an entry read back from the ledger cannot be restored: the ledger
/// topic breaks an invariant. Not retryable: the data is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// An invariant does not hold.
    #[error("cannot restore: {0}")]
    Invariant(#[from] Violation),
    /// The first entry of an account is not its OPEN.
    #[error(
        "cannot restore: account {account_id}: entry {sequence} ({entry_type:?}) comes before the account was opened"
    )]
    NotOpened {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// Its type.
        entry_type: EntryType,
    },
    /// An OPEN for an account already open.
    #[error("cannot restore: account {account_id}: OPEN at sequence {sequence} for an account already open")]
    OpenedTwice {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
    },
    /// An entry after the account's deletion.
    #[error("cannot restore: account {account_id}: entry {sequence} follows the account's deletion at sequence {deleted_at}")]
    AfterDeletion {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// Sequence of the FORFEIT.
        deleted_at: Sequence,
    },
}
