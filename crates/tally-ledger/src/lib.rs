//! tally's pricing and ledger core.
//!
//! Maps (state, input) to ledger entries, alerts and rejections, as values.
//! The metering service does the I/O around it; this crate never does I/O
//! (besides [`RateTable::load`] reading its file), never reads a clock,
//! never draws a random number, never uses floats, and never lets a hash
//! map's iteration order reach an output. So the same state and the same
//! inputs in the same order give byte-identical entries, which is what
//! makes replays after a crash idempotent.
//!
//! - [`rates`]: the versioned rate table (`pipelines/rates.toml`) and its
//!   validation;
//! - [`pricing`]: exact credit and dollar arithmetic, and its one rounding
//!   per kind;
//! - [`booking`]: the booking rule (the time finance books an entry at,
//!   never decreasing along an account's sequence);
//! - [`digest`]: an input's content digest, which tells a duplicate from a
//!   conflicting reuse of its id;
//! - [`ledger`]: one input partition: the order the rules run in
//!   ([`Ledger::apply`]) and the rebuild of its state from the ledger topic
//!   ([`Ledger::restore`]); the rules of each kind are in `rules`, the
//!   state and settings types in [`state`];
//! - [`coverage`]: inputs against debits (every input applied once,
//!   a duplicate, or dead-lettered), for reconciliation;
//! - [`invariants`]: one predicate per ledger invariant, shared by `apply`
//!   (release asserts), `restore`, property tests and reconciliation.
//!
//! Invariants kept per account: sequences gapless from 1; balance chain
//! `balance_after[n] = balance_after[n-1] + signed_credits[n]` from 0; balance
//! never negative; nothing debited while paused, resumed only by a purchase;
//! final balance = added − consumed − forfeited; at most one entry per input
//! id (exact dedup within the window).
#![deny(missing_docs)]

mod accounts;
pub mod booking;
pub mod coverage;
mod dedup;
pub mod digest;
mod entry_id;
pub mod invariants;
pub mod ledger;
pub mod pricing;
pub mod rates;
mod rules;
pub mod state;

pub use invariants::Violation;
pub use ledger::{Ledger, ENTRY_ID_NAMESPACE, PREFETCH_AHEAD};
pub use rates::{RateTable, RateVersion, RatesError, ServiceRate};
pub use state::{AccountState, Applied, DedupId, LedgerConfig, LedgerSnapshot, LedgerStats, RestoreError};

/// Asks the CPU to bring `value`'s cache line in, without waiting for it
/// (x86-64's `prefetcht0`; nothing on other targets). A hint: no state,
/// no result depends on it.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    safe_arch::prefetch_t0(value);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = value;
}
