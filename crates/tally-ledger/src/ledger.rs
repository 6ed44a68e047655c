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
//! use tally_events::{records::*, Epoch, Sequence};
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
//! let Applied::Entry { entry, .. } = ledger.apply(&open, &source, Epoch(1)) else { panic!() };
//! assert_eq!((entry.entry_type, entry.sequence), (EntryType::Open, Sequence(1)));
//! assert_eq!(ledger.apply(&open, &source, Epoch(1)), Applied::Duplicate);
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tally_events::{
    records::{EntryType, Input, InputDigest, LedgerEntry, SourceOffset},
    Epoch, Reason,
};
use uuid::Uuid;

pub use crate::rules::{alert_id, entry_id};
use crate::{
    accounts::Accounts,
    booking,
    dedup::{Dedup, Found, Probe},
    digest::{differing_fields, digest},
    invariants::{self, Previous},
    rates::RateTable,
    rules::{alert, check_identifiers, decide, instant_text, window_text, Decision, EntryStrings, Rejection},
    state::{AccountState, Applied, DedupId, LedgerConfig, LedgerSnapshot, LedgerStats, RestoreError},
};

/// Key of ledger entry ids, XORed into the input id before it is mixed into
/// the entry id (see [`entry_id`]; it was the UUID v5 namespace of entry ids
/// before they became a bijection). Never change it: a replay after a
/// change would write entries with new ids, and readers could no longer
/// match copies.
pub const ENTRY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8576_2862_815f_54f4_b7a0_406e_b04c_77ce);

/// A digest as the dedup table holds it: all zero for "not recorded".
fn held_digest(digest: Option<InputDigest>) -> [u8; 16] {
    digest.map_or([0; 16], |d| d.0)
}

fn recorded_digest(held: [u8; 16]) -> Option<InputDigest> {
    (held != [0; 16]).then_some(InputDigest(held))
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
    pub fn apply(&mut self, input: &Input, source: &SourceOffset, epoch: Epoch) -> Applied {
        self.apply_from(input, source, epoch)
    }

    /// [`Ledger::apply`] of an input given by value: the same result, byte
    /// for byte, with the input's strings (account, service, engine,
    /// photo-booth event, booth) moved into the entry instead of copied.
    /// The metering loop, which decodes each input for this call alone,
    /// saves five allocations and copies an entry this way.
    pub fn apply_owned(&mut self, input: Input, source: &SourceOffset, epoch: Epoch) -> Applied {
        self.apply_from(input, source, epoch)
    }

    fn apply_from(&mut self, mut from: impl InputSource, source: &SourceOffset, epoch: Epoch) -> Applied {
        let input = from.input();
        if let Err(Rejection { reason, detail }) = check_identifiers(input) {
            return Applied::Rejected { reason, detail };
        }
        let occurred_at = input.occurred_at();
        if let (Some(cutoff), Some(newest)) = (self.cutoff, self.newest_occurred_at) {
            if occurred_at < cutoff {
                return Applied::Rejected {
                    reason: Reason::TooLate,
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
                        reason: Reason::ConflictingDuplicate,
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
        let Decision { draft, previous, mut after, alerts } = match decide(rates, slot.as_deref(), input) {
            Ok(decision) => decision,
            Err(Rejection { reason, detail }) => return Applied::Rejected { reason, detail },
        };
        // The booking rule, for every kind of entry alike.
        after.booked = booking::booked(previous.booked, draft.occurred_at);
        // Built in place: an entry is ~400 bytes, and each move of it was a
        // visible share of the cost of an input.
        let strings = from.strings();
        let mut applied =
            Applied::Entry { entry: draft.build(strings, &after, source, epoch, content), alerts: Vec::new() };
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
            booked: booking::of_entry(entry),
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

    /// Hints that an input of `account_id` with id `input_id` comes soon:
    /// starts loading the account's slot and the id's slot in the dedup
    /// set, the two cache misses of an [`Ledger::apply`], without waiting
    /// for them. With a million accounts and a week of ids each is
    /// otherwise a memory miss the loop waits for; called a few inputs
    /// ahead, the misses overlap the work on the inputs before. Changes
    /// nothing: leaving it out, or calling it for an input that never
    /// comes, gives the same results.
    #[inline]
    pub fn prefetch_ids(&self, account_id: &str, input_id: &Uuid) {
        self.accounts.prefetch(account_id);
        self.dedup.prefetch(input_id);
    }

    /// [`Ledger::prefetch_ids`] of a decoded input.
    #[inline]
    pub fn prefetch_input(&self, input: &Input) {
        self.prefetch_ids(input.account_id(), &input.id());
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

/// How many inputs ahead of the one applied a caller should call
/// [`Ledger::prefetch_ids`]: enough that the account's and the id's cache
/// lines arrive before they are read, few enough that they are still in
/// cache. The metering loop decodes and prefetches this far ahead, and the
/// `ledger_core` bench's workload does the same.
pub const PREFETCH_AHEAD: usize = 8;

/// An input as [`Ledger::apply`] (borrowed: the entry copies its strings)
/// or [`Ledger::apply_owned`] (by value: the entry takes them) gives it.
trait InputSource {
    fn input(&self) -> &Input;
    /// The entry's strings; asked for once, after every read of the input.
    fn strings(&mut self) -> EntryStrings;
}

impl InputSource for &Input {
    fn input(&self) -> &Input {
        self
    }

    fn strings(&mut self) -> EntryStrings {
        EntryStrings::of(self)
    }
}

impl InputSource for Input {
    fn input(&self) -> &Input {
        self
    }

    fn strings(&mut self) -> EntryStrings {
        EntryStrings::take(self)
    }
}
