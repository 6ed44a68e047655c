//! The ledger rules: (state, input) → one ledger entry and its alerts, a
//! duplicate, or a rejection.
//!
//! One [`Ledger`] holds the state of one input partition: every account
//! keyed to it, the ids of recent inputs (exact dedup) and the newest
//! `occurred_at` and source offset applied. It never does I/O, never reads
//! a clock and never draws a random number: [`Ledger::apply`] is a pure
//! function of the state and its arguments, so a replay of the same inputs
//! in the same order writes byte-identical entries.
//!
//! Check order for every input (changing it changes which reason a replay
//! writes, so it is part of the contract):
//! 1. identifiers: the account id, and the photo-booth event, booth and
//!    job ids of a usage event, are bounded text (`tally_events::limits`)
//!    → else rejected (`invalid_account_id`, `invalid_identifier`);
//! 2. too late: `occurred_at < newest applied - dedup window` → rejected
//!    (`too_late`), because dedup could no longer be exact;
//! 3. repeat: the id was applied → [`Applied::Duplicate`] if the input's
//!    content digest ([`crate::digest`]) is the one applied, nothing
//!    changes; else rejected (`conflicting_duplicate`, naming the fields
//!    that differ), and the first content stands;
//! 4. the rules of the input's kind (see the methods of [`Ledger`]).
//!
//! Only an [`Applied::Entry`] changes state. Every entry is checked against
//! the invariants ([`crate::invariants`]) before it is returned, in release
//! builds too.
//!
//! ```
//! use std::sync::Arc;
//! use tally_events::records::*;
//! use tally_ledger::{Applied, Ledger, LedgerConfig, RateTable};
//! # let rates = RateTable::parse(r#"
//! # format_version = 1
//! # [[versions]]
//! # id = "2026-01"
//! # effective_from = 2026-01-01T00:00:00Z
//! # tiers = { PAYG = "0.12", BASIC = "0.10", PRO = "0.08" }
//! # [[versions.services]]
//! # service = "sms"
//! # engine = "standard"
//! # display = "SMS"
//! # unit = "message"
//! # credits_per_unit = "0.05"
//! # "#, "rates.toml").unwrap();
//! let mut ledger = Ledger::new(Arc::new(rates), LedgerConfig::default());
//! let open = Input::Account(AccountChange {
//!     change_id: uuid::Uuid::from_u128(1),
//!     account_id: "acct-1".into(),
//!     kind: AccountChangeKind::Open,
//!     tier: PlanTier::Payg,
//!     low_balance_threshold: "10".parse().unwrap(),
//!     occurred_at: "2026-02-01T10:00:00Z".parse().unwrap(),
//!     reason: None,
//! });
//! let source = SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: 0 };
//! let Applied::Entry { entry, .. } = ledger.apply(&open, &source, 1) else { panic!() };
//! assert_eq!((entry.entry_type, entry.sequence), (EntryType::Open, 1));
//! assert_eq!(ledger.apply(&open, &source, 1), Applied::Duplicate);
//! ```

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_events::{
    limits::{self, quote},
    names::reasons,
    records::{
        AccountChange, AccountChangeKind, Alert, AlertKind, CreditPurchase, EntryStatus, EntryType, Input, InputDigest,
        JobOutcome, LedgerEntry, PlanTier, SourceOffset, UsageEvent,
    },
};
use uuid::Uuid;

use crate::{
    accounts::Accounts,
    dedup::{Dedup, Found, Probe},
    digest::{differing_fields, digest},
    invariants::{self, Previous, Violation},
    pricing,
    rates::RateTable,
};

/// Key of ledger entry ids, XORed into the input id before it is mixed into
/// the entry id (see [`entry_id`]; it was the UUID v5 namespace of entry ids
/// before they became a bijection). Never change it: a replay after a
/// change would write entries with new ids, and readers could no longer
/// match copies.
pub const ENTRY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8576_2862_815f_54f4_b7a0_406e_b04c_77ce);

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
    pub balance: Decimal,
    /// Sequence of the latest entry (1 after OPEN).
    pub last_sequence: i64,
    /// Plan tier.
    pub tier: PlanTier,
    /// Low-balance threshold in credits.
    pub low_balance_threshold: Decimal,
    /// AI features paused (until a purchase).
    pub paused: bool,
    /// Deleted: kept as a tombstone so that later inputs are rejected.
    pub deleted: bool,
}

/// What [`Ledger::apply`] made of an input.
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
        /// A [`tally_events::names::reasons`] code.
        reason: &'static str,
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

/// A digest as the dedup table holds it: all zero for "not recorded".
fn held_digest(digest: Option<InputDigest>) -> [u8; 16] {
    digest.map_or([0; 16], |d| d.0)
}

fn recorded_digest(held: [u8; 16]) -> Option<InputDigest> {
    (held != [0; 16]).then_some(InputDigest(held))
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
        account_id: String,
        /// Entry.
        sequence: i64,
        /// Its type.
        entry_type: EntryType,
    },
    /// An OPEN for an account already open.
    #[error("cannot restore: account {account_id}: OPEN at sequence {sequence} for an account already open")]
    OpenedTwice {
        /// Account.
        account_id: String,
        /// Entry.
        sequence: i64,
    },
    /// An entry after the account's deletion.
    #[error("cannot restore: account {account_id}: entry {sequence} follows the account's deletion at sequence {deleted_at}")]
    AfterDeletion {
        /// Account.
        account_id: String,
        /// Entry.
        sequence: i64,
        /// Sequence of the FORFEIT.
        deleted_at: i64,
    },
}

/// The ledger state of one input partition.
#[derive(Debug, Clone)]
pub struct Ledger {
    rates: Arc<RateTable>,
    config: LedgerConfig,
    /// Looked up by `&str`, never iterated into an output unsorted.
    accounts: Accounts,
    dedup: Dedup,
    newest_occurred_at: Option<DateTime<Utc>>,
    /// `newest_occurred_at - dedup_window`, kept with it: inputs older than
    /// this are too late, and dedup ids older than this expire.
    cutoff: Option<DateTime<Utc>>,
    last_source_offset: Option<i64>,
    duplicates_seen: u64,
}

/// A refusal: a reason code and a detail.
struct Rejection {
    reason: &'static str,
    detail: String,
}

fn reject(reason: &'static str, detail: String) -> Rejection {
    Rejection { reason, detail }
}

/// Alerts raised by one entry, in publishing order (at most two:
/// LOW_BALANCE then PAUSED).
#[derive(Default)]
struct Alerts {
    kinds: [Option<AlertKind>; 2],
}

impl Alerts {
    fn push(&mut self, kind: AlertKind) {
        if let Some(slot) = self.kinds.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(kind);
        }
    }
}

/// An entry before its owned strings are made: borrows the input and the
/// rate table, so deciding allocates nothing until the entry is built.
struct Draft<'a> {
    input_id: Uuid,
    account_id: &'a str,
    entry_type: EntryType,
    status: EntryStatus,
    reason: &'static str,
    usage: Option<(&'a UsageEvent, Decimal)>,
    credits: Decimal,
    dollars: Decimal,
    rate_version: &'a str,
    occurred_at: DateTime<Utc>,
}

/// A decided entry: what it is, the account after it, and its alerts.
struct Decision<'a> {
    draft: Draft<'a>,
    previous: Previous,
    after: AccountState,
    alerts: Alerts,
}

/// Dollars of an entry that moves no money, with the usual 2 digits.
const NO_DOLLARS: Decimal = Decimal::from_parts(0, 0, 0, false, 2);

impl Draft<'_> {
    fn build(self, after: &AccountState, source: &SourceOffset, epoch: i64, digest: InputDigest) -> LedgerEntry {
        let (service, engine, photo_event_id, booth_id, quantity) = match self.usage {
            Some((event, quantity)) => (
                event.service.clone(),
                event.engine.clone(),
                event.photo_event_id.clone(),
                event.booth_id.clone(),
                quantity,
            ),
            None => (String::new(), String::new(), String::new(), String::new(), Decimal::ZERO),
        };
        LedgerEntry {
            entry_id: entry_id(self.input_id),
            account_id: self.account_id.to_owned(),
            sequence: after.last_sequence,
            epoch,
            entry_type: self.entry_type,
            status: self.status,
            reason: self.reason.to_owned(),
            input_id: self.input_id,
            service,
            engine,
            photo_event_id,
            quantity,
            credits: self.credits,
            dollars: self.dollars,
            tier: after.tier,
            rate_version: self.rate_version.to_owned(),
            balance_after: after.balance,
            low_balance_threshold: after.low_balance_threshold,
            paused: after.paused,
            occurred_at: self.occurred_at,
            source: source.clone(),
            booth_id,
            input_digest: Some(digest),
        }
    }
}

/// The deterministic id of the entry of input `input_id`: a UUID v8 whose
/// 122 free bits are a fixed bijection of the input id's (all but its
/// version and variant), so distinct input ids of one UUID version always
/// get distinct entry ids. See `entry_id.rs` for why not UUID v5.
pub fn entry_id(input_id: Uuid) -> Uuid {
    crate::entry_id::entry_id(input_id)
}

/// The deterministic id of the `kind` alert of entry `entry_id`.
pub fn alert_id(entry_id: Uuid, kind: AlertKind) -> Uuid {
    let code: &str = match kind {
        AlertKind::LowBalance => "LOW_BALANCE",
        AlertKind::Paused => "PAUSED",
        AlertKind::Resumed => "RESUMED",
    };
    Uuid::new_v5(&entry_id, code.as_bytes())
}

/// A window as operators configure it: whole days, else seconds.
fn window_text(window: TimeDelta) -> String {
    match window.num_seconds() {
        s if s % 86_400 == 0 && s / 86_400 == 1 => "1 day".to_string(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s => format!("{s} s"),
    }
}

fn instant_text(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Ledger {
    /// An empty ledger pricing with `rates`.
    pub fn new(rates: Arc<RateTable>, config: LedgerConfig) -> Self {
        Ledger {
            rates,
            config,
            accounts: Accounts::default(),
            dedup: Dedup::new(config.dedup_window),
            newest_occurred_at: None,
            cutoff: None,
            last_source_offset: None,
            duplicates_seen: 0,
        }
    }

    /// Applies one input read at `source`, writing `epoch` into the entry.
    /// Pure: the result depends only on state + arguments.
    ///
    /// # Panics
    /// If the entry it would return breaks an invariant: that is a bug in
    /// these rules, and writing the entry would corrupt the ledger.
    pub fn apply(&mut self, input: &Input, source: &SourceOffset, epoch: i64) -> Applied {
        if let Err(Rejection { reason, detail }) = check_identifiers(input) {
            return Applied::Rejected { reason, detail };
        }
        let occurred_at = input.occurred_at();
        if let (Some(cutoff), Some(newest)) = (self.cutoff, self.newest_occurred_at) {
            if occurred_at < cutoff {
                return Applied::Rejected {
                    reason: reasons::TOO_LATE,
                    detail: format!(
                        "occurred_at {} is more than {} before the newest input applied on this partition ({}), \
                         outside the deduplication window",
                        instant_text(occurred_at),
                        window_text(self.config.dedup_window),
                        instant_text(newest)
                    ),
                };
            }
        }
        let input_id = input.id();
        let Ledger { rates, accounts, dedup, duplicates_seen, .. } = self;
        // One account lookup per input: the decision reads a copy of the
        // state, and the same slot takes the state after the entry. Right
        // before the dedup probe, so that both cache misses overlap.
        let slot = accounts.get_mut(input.account_id());
        let found = dedup.find(&input_id);
        let content = digest(input);
        let probe = match found {
            Found::Absent(probe) => probe,
            Found::Live(held) => match recorded_digest(held) {
                Some(applied) if applied != content => {
                    return Applied::Rejected {
                        reason: reasons::CONFLICTING_DUPLICATE,
                        detail: format!(
                            "input id {input_id} was already applied with other content ({} differ); \
                             the first stands: send a new id for a new input",
                            differing_fields(&applied, &content).join(", ")
                        ),
                    };
                }
                // The same content, or an id restored from an entry that
                // recorded none (written before digests): a duplicate.
                _ => {
                    *duplicates_seen += 1;
                    return Applied::Duplicate;
                }
            },
        };
        let Decision { draft, previous, after, alerts } = match decide(rates, slot.as_deref(), input) {
            Ok(decision) => decision,
            Err(Rejection { reason, detail }) => return Applied::Rejected { reason, detail },
        };
        // Built in place: an entry is ~400 bytes, and each move of it was a
        // visible share of the cost of an input.
        let mut applied = Applied::Entry { entry: draft.build(&after, source, epoch, content), alerts: Vec::new() };
        if let Applied::Entry { entry, alerts: raised } = &mut applied {
            if let Err(violation) = invariants::check_entry(&previous, entry) {
                panic!("ledger rules broke an invariant on input {input_id}: {violation}");
            }
            raised.extend(alerts.kinds.iter().flatten().map(|&kind| alert(entry, kind)));
            match slot {
                Some(state) => *state = after,
                None => {
                    accounts.insert(&entry.account_id, after);
                }
            }
        }
        self.remember(input_id, occurred_at, content.0, source.offset, Some(probe));
        applied
    }

    /// Rebuilds state from an entry read back from the ledger topic (after a
    /// crash/rebalance). Checks the invariants (sequence = last + 1, balance
    /// chain) and returns a typed error on violation; idempotent for an
    /// entry already reflected (same account, sequence <= last: ignored,
    /// returns Ok).
    pub fn restore(&mut self, entry: &LedgerEntry) -> Result<(), RestoreError> {
        let previous = match self.accounts.get(&entry.account_id) {
            Some(state) if entry.sequence <= state.last_sequence => return Ok(()),
            Some(state) if state.deleted => {
                return Err(RestoreError::AfterDeletion {
                    account_id: entry.account_id.clone(),
                    sequence: entry.sequence,
                    deleted_at: state.last_sequence,
                });
            }
            Some(state) => {
                if entry.entry_type == EntryType::Open {
                    return Err(RestoreError::OpenedTwice {
                        account_id: entry.account_id.clone(),
                        sequence: entry.sequence,
                    });
                }
                Previous::from(state)
            }
            None => {
                if entry.entry_type != EntryType::Open {
                    return Err(RestoreError::NotOpened {
                        account_id: entry.account_id.clone(),
                        sequence: entry.sequence,
                        entry_type: entry.entry_type,
                    });
                }
                Previous::START
            }
        };
        invariants::check_entry(&previous, entry)?;
        let after = AccountState {
            balance: entry.balance_after,
            last_sequence: entry.sequence,
            tier: entry.tier,
            low_balance_threshold: entry.low_balance_threshold,
            paused: entry.paused,
            deleted: entry.entry_type == EntryType::Forfeit,
        };
        self.accounts.insert(&entry.account_id, after);
        self.remember(entry.input_id, entry.occurred_at, held_digest(entry.input_digest), entry.source.offset, None);
        Ok(())
    }

    /// The state of `account_id`, deleted accounts included.
    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id)
    }

    /// Highest source offset of any applied or restored entry.
    pub fn last_source_offset(&self) -> Option<i64> {
        self.last_source_offset
    }

    /// Latest `occurred_at` of any applied or restored entry.
    pub fn newest_occurred_at(&self) -> Option<DateTime<Utc>> {
        self.newest_occurred_at
    }

    /// The rate table this ledger prices with.
    pub fn rates(&self) -> &Arc<RateTable> {
        &self.rates
    }

    /// The state as a sorted, serializable value.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            accounts: self.accounts.iter().map(|(id, state)| (id.into_owned(), *state)).collect(),
            dedup: self
                .dedup
                .sorted()
                .into_iter()
                .map(|(occurred_at, input_id, digest)| DedupId {
                    input_id,
                    occurred_at,
                    digest: recorded_digest(digest),
                })
                .collect(),
            newest_occurred_at: self.newest_occurred_at,
            last_source_offset: self.last_source_offset,
        }
    }

    /// A ledger in the state of `snapshot`. Ids older than `config`'s window
    /// are pruned, so a smaller window takes effect at once.
    pub fn from_snapshot(rates: Arc<RateTable>, config: LedgerConfig, snapshot: LedgerSnapshot) -> Self {
        let mut ledger = Ledger::new(rates, config);
        for (id, state) in &snapshot.accounts {
            ledger.accounts.insert(id, *state);
        }
        ledger.newest_occurred_at = snapshot.newest_occurred_at;
        ledger.cutoff = ledger.dedup_cutoff();
        ledger.last_source_offset = snapshot.last_source_offset;
        if let Some(cutoff) = ledger.cutoff {
            ledger.dedup.prune(cutoff);
        }
        for id in snapshot.dedup {
            ledger.dedup.insert(id.input_id, id.occurred_at, held_digest(id.digest), None);
        }
        ledger
    }

    /// Counts, for metrics.
    pub fn stats(&self) -> LedgerStats {
        LedgerStats {
            accounts: self.accounts.len(),
            deleted_accounts: self.accounts.states().filter(|state| state.deleted).count(),
            dedup_ids: self.dedup.len(),
            duplicates_seen: self.duplicates_seen,
        }
    }

    /// Inputs older than this are too late; ids older than this are pruned.
    fn dedup_cutoff(&self) -> Option<DateTime<Utc>> {
        self.newest_occurred_at?.checked_sub_signed(self.config.dedup_window)
    }

    /// Records an applied or restored entry's input: dedup (with its
    /// content digest, all zero if unknown), newest time, source offset,
    /// then prunes. `probe`: where [`Dedup::find`] left the id.
    fn remember(
        &mut self,
        input_id: Uuid,
        occurred_at: DateTime<Utc>,
        digest: [u8; 16],
        offset: i64,
        probe: Option<Probe>,
    ) {
        self.last_source_offset = Some(self.last_source_offset.map_or(offset, |last| last.max(offset)));
        if self.newest_occurred_at.is_none_or(|newest| occurred_at > newest) {
            self.newest_occurred_at = Some(occurred_at);
            self.cutoff = self.dedup_cutoff();
            // Prune by the new cutoff, then insert against it: the held set
            // is then the same whatever the order of entries (see `dedup`).
            if let Some(cutoff) = self.cutoff {
                self.dedup.prune(cutoff);
            }
        }
        self.dedup.insert(input_id, occurred_at, digest, probe);
    }
}

/// Rule 1: the identifiers an input carries into entries are bounded text.
fn check_identifiers(input: &Input) -> Result<(), Rejection> {
    let account_id = input.account_id();
    if let Err(problem) = limits::check_account_id(account_id) {
        return Err(reject(reasons::INVALID_ACCOUNT_ID, format!("account id {} {problem}", quote(account_id))));
    }
    if let Input::Usage(event) = input {
        let fields =
            [("photo_event_id", &event.photo_event_id), ("booth_id", &event.booth_id), ("job_id", &event.job_id)];
        for (field, value) in fields {
            if let Err(problem) = limits::check_identifier(value) {
                return Err(reject(reasons::INVALID_IDENTIFIER, format!("{field} {} {problem}", quote(value))));
            }
        }
    }
    Ok(())
}

/// The per-kind rules. Free functions over the rate table and a copy of the
/// account's state, so that `apply` can hold the account's map slot while
/// deciding.
fn decide<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    input: &'a Input,
) -> Result<Decision<'a>, Rejection> {
    match input {
        Input::Usage(event) => consume(rates, current, event),
        Input::Purchase(purchase) => add(rates, current, purchase),
        Input::Account(change) => match change.kind {
            AccountChangeKind::Open => open(rates, current, change),
            AccountChangeKind::Update => update(rates, current, change),
            AccountChangeKind::Delete => delete(rates, current, change),
        },
    }
}

/// The state of an open, not deleted account.
fn existing(current: Option<&AccountState>, account_id: &str) -> Result<AccountState, Rejection> {
    match current {
        None => Err(reject(reasons::UNKNOWN_ACCOUNT, format!("account {account_id:?} was never opened"))),
        Some(state) if state.deleted => {
            Err(reject(reasons::ACCOUNT_DELETED, format!("account {account_id:?} was deleted")))
        }
        Some(state) => Ok(*state),
    }
}

/// Rule 3, CONSUME: price the usage; record a failed job, a paused
/// account or too few credits as a FAILED entry; else debit.
fn consume<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    event: &'a UsageEvent,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &event.account_id)?;
    let quantity = event.quantity.normalize();
    let scale_max = pricing::quantity_scale_max(event.unit);
    if quantity <= Decimal::ZERO || quantity.scale() > scale_max || quantity > pricing::QUANTITY_MAX {
        let digits = match scale_max {
            0 => "be whole".to_string(),
            n => format!("have at most {n} fractional digits"),
        };
        return Err(reject(
            reasons::INVALID_QUANTITY,
            format!(
                "quantity {} of unit {} must be > 0, at most {} and {digits}",
                event.quantity,
                event.unit.code(),
                pricing::QUANTITY_MAX
            ),
        ));
    }
    let version = rates.version_at(event.occurred_at).ok_or_else(|| {
        reject(reasons::NO_RATE_VERSION, format!("no rate version in force at {}", instant_text(event.occurred_at)))
    })?;
    let rate = version.service(&event.service, &event.engine).ok_or_else(|| {
        reject(
            reasons::UNKNOWN_SERVICE,
            format!("{}/{} is not priced in rate version {}", event.service, event.engine, version.id()),
        )
    })?;
    if rate.unit() != event.unit {
        return Err(reject(
            reasons::UNIT_MISMATCH,
            format!(
                "{}/{} is priced per {} in rate version {}, the event counts {}",
                event.service,
                event.engine,
                rate.unit().code(),
                version.id(),
                event.unit.code()
            ),
        ));
    }
    // Quantity and credits_per_unit are bounded, so these cannot fail;
    // if they did, refusing the input beats a wrong charge.
    let overflow = || reject(reasons::INVALID_QUANTITY, format!("quantity {} is too large to price", event.quantity));
    let credits = pricing::usage_credits(rate.credits_per_unit(), quantity).ok_or_else(overflow)?;
    let dollars = pricing::dollars_of_credits(credits, version.dollars_per_credit(state.tier)).ok_or_else(overflow)?;

    let mut after = state;
    after.last_sequence += 1;
    let mut alerts = Alerts::default();
    // Order matters and is part of the contract: a failed job is
    // recorded as such even on a paused account; a paused account is
    // refused before its balance is looked at.
    let (status, reason) = if event.outcome == JobOutcome::Failed {
        (EntryStatus::Failed, reasons::JOB_FAILED)
    } else if state.paused {
        (EntryStatus::Failed, reasons::ACCOUNT_PAUSED)
    } else if credits > state.balance {
        after.paused = true;
        alerts.push(AlertKind::Paused);
        (EntryStatus::Failed, reasons::INSUFFICIENT_CREDITS)
    } else {
        after.balance = (state.balance - credits).normalize();
        // One alert per crossing: only the debit that takes the balance
        // from at-or-above to below the threshold raises it.
        if state.balance >= state.low_balance_threshold && after.balance < state.low_balance_threshold {
            alerts.push(AlertKind::LowBalance);
        }
        if after.balance.is_zero() {
            after.paused = true;
            alerts.push(AlertKind::Paused);
        }
        (EntryStatus::Success, "")
    };
    Ok(Decision {
        draft: Draft {
            input_id: event.event_id,
            account_id: &event.account_id,
            entry_type: EntryType::Consume,
            status,
            reason,
            usage: Some((event, quantity)),
            credits,
            dollars,
            rate_version: version.id(),
            occurred_at: event.occurred_at,
        },
        previous: Previous::from(&state),
        after,
        alerts,
    })
}

/// Rule 5, ADD: credits bought at the tier's price in force at the
/// purchase; resumes a paused account.
fn add<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    purchase: &'a CreditPurchase,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &purchase.account_id)?;
    let amount = purchase.amount_dollars.normalize();
    if amount <= Decimal::ZERO || amount.scale() > pricing::AMOUNT_SCALE_MAX || amount > pricing::AMOUNT_DOLLARS_MAX {
        return Err(reject(
            reasons::INVALID_AMOUNT,
            format!(
                "amount {} must be > 0, at most {} and whole cents",
                purchase.amount_dollars,
                pricing::AMOUNT_DOLLARS_MAX
            ),
        ));
    }
    let version = rates.version_at(purchase.occurred_at).ok_or_else(|| {
        reject(reasons::NO_RATE_VERSION, format!("no rate version in force at {}", instant_text(purchase.occurred_at)))
    })?;
    let price = version.dollars_per_credit(state.tier);
    let credits = pricing::credits_of_dollars(amount, price).filter(|c| !c.is_zero()).ok_or_else(|| {
        reject(reasons::INVALID_AMOUNT, format!("amount {amount} buys no credit at {price} dollars per credit"))
    })?;
    let balance =
        state.balance.checked_add(credits).filter(|b| *b <= pricing::BALANCE_CREDITS_MAX).ok_or_else(|| {
            reject(
                reasons::INVALID_AMOUNT,
                format!("the balance would exceed {} credits", pricing::BALANCE_CREDITS_MAX),
            )
        })?;
    let mut dollars = amount;
    dollars.rescale(pricing::DOLLARS_SCALE);

    let mut after = state;
    after.last_sequence += 1;
    after.balance = balance.normalize();
    let mut alerts = Alerts::default();
    if state.paused {
        after.paused = false;
        alerts.push(AlertKind::Resumed);
    }
    Ok(Decision {
        draft: Draft {
            input_id: purchase.purchase_id,
            account_id: &purchase.account_id,
            entry_type: EntryType::Add,
            status: EntryStatus::Success,
            reason: "",
            usage: None,
            credits,
            dollars,
            rate_version: version.id(),
            occurred_at: purchase.occurred_at,
        },
        previous: Previous::from(&state),
        after,
        alerts,
    })
}

/// Rule 2, OPEN: a new account with balance 0, not paused.
fn open<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &'a AccountChange,
) -> Result<Decision<'a>, Rejection> {
    match current {
        Some(state) if state.deleted => {
            return Err(reject(
                reasons::ACCOUNT_DELETED,
                format!("account {:?} was deleted and cannot be opened again", change.account_id),
            ));
        }
        Some(_) => {
            return Err(reject(reasons::ACCOUNT_EXISTS, format!("account {:?} is already open", change.account_id)));
        }
        None => {}
    }
    let threshold = valid_threshold(change)?;
    let after = AccountState {
        balance: Decimal::ZERO,
        last_sequence: 1,
        tier: change.tier,
        low_balance_threshold: threshold,
        paused: false,
        deleted: false,
    };
    Ok(change_decision(rates, change, EntryType::Open, Decimal::ZERO, NO_DOLLARS, Previous::START, after))
}

/// Rule 6, UPDATE: new tier and threshold; credits kept.
fn update<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &'a AccountChange,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &change.account_id)?;
    let threshold = valid_threshold(change)?;
    let mut after = state;
    after.last_sequence += 1;
    after.tier = change.tier;
    after.low_balance_threshold = threshold;
    Ok(change_decision(rates, change, EntryType::Update, Decimal::ZERO, NO_DOLLARS, Previous::from(&state), after))
}

/// Rule 7, DELETE: the remaining credits are forfeited and the account
/// becomes a tombstone. The change's tier and threshold are ignored: the
/// forfeit is valued at the tier the credits were held under.
fn delete<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &'a AccountChange,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &change.account_id)?;
    let credits = state.balance;
    let dollars = rates
        .version_at(change.occurred_at)
        .and_then(|version| pricing::dollars_of_credits(credits, version.dollars_per_credit(state.tier)))
        .unwrap_or(NO_DOLLARS);
    let mut after = state;
    after.last_sequence += 1;
    after.balance = Decimal::ZERO;
    after.deleted = true;
    Ok(change_decision(rates, change, EntryType::Forfeit, credits, dollars, Previous::from(&state), after))
}

fn change_decision<'a>(
    rates: &'a RateTable,
    change: &'a AccountChange,
    entry_type: EntryType,
    credits: Decimal,
    dollars: Decimal,
    previous: Previous,
    after: AccountState,
) -> Decision<'a> {
    Decision {
        draft: Draft {
            input_id: change.change_id,
            account_id: &change.account_id,
            entry_type,
            status: EntryStatus::Success,
            reason: "",
            usage: None,
            credits,
            dollars,
            // Account changes do not need a price; they name the
            // version in force when there is one.
            rate_version: rates.version_at(change.occurred_at).map_or("", |version| version.id()),
            occurred_at: change.occurred_at,
        },
        previous,
        after,
        alerts: Alerts::default(),
    }
}

fn valid_threshold(change: &AccountChange) -> Result<Decimal, Rejection> {
    let threshold = change.low_balance_threshold.normalize();
    if threshold < Decimal::ZERO
        || threshold > pricing::THRESHOLD_CREDITS_MAX
        || threshold.scale() > pricing::THRESHOLD_SCALE_MAX
    {
        return Err(reject(
            reasons::INVALID_THRESHOLD,
            format!(
                "low_balance_threshold {} must be >= 0, at most {} credits and have at most {} fractional digits",
                change.low_balance_threshold,
                pricing::THRESHOLD_CREDITS_MAX,
                pricing::THRESHOLD_SCALE_MAX
            ),
        ));
    }
    Ok(threshold)
}

fn alert(entry: &LedgerEntry, kind: AlertKind) -> Alert {
    let message = match kind {
        AlertKind::LowBalance => format!(
            "Balance of {} credits fell below the low-balance threshold of {} credits.",
            entry.balance_after, entry.low_balance_threshold
        ),
        AlertKind::Paused if entry.status == EntryStatus::Failed => format!(
            "AI features paused: a charge of {} credits exceeds the balance of {} credits.",
            entry.credits, entry.balance_after
        ),
        AlertKind::Paused => "AI features paused: the balance is 0 credits.".to_string(),
        AlertKind::Resumed => format!(
            "AI features resumed: a purchase added {} credits, balance {} credits.",
            entry.credits, entry.balance_after
        ),
    };
    Alert {
        alert_id: alert_id(entry.entry_id, kind),
        account_id: entry.account_id.clone(),
        kind,
        sequence: entry.sequence,
        balance: entry.balance_after,
        threshold: entry.low_balance_threshold,
        occurred_at: entry.occurred_at,
        message,
    }
}
