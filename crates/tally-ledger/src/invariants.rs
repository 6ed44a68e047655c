//! The ledger's invariants, one predicate each.
//!
//! Three users, one definition: [`crate::Ledger::apply`] asserts them on
//! every entry it is about to return (in release builds too: a violation
//! is a bug, and a crash beats a wrong balance), [`crate::Ledger::restore`]
//! turns a violation into a typed error, and the property tests and
//! reconciliation (`tally reconcile`) check whole accounts with
//! [`check_account`].
//!
//! Per account, with entries in sequence order:
//! 1. gapless sequence: the first entry is 1, each next one is previous + 1;
//! 2. balance chain: `balance_after[n] = balance_after[n-1] + signed_credits[n]`,
//!    starting from 0;
//! 3. never negative: neither a balance nor an entry's credits;
//! 4. nothing debited while paused: a successful CONSUME follows an entry
//!    that left the account not paused; and an account is resumed only by a
//!    successful ADD;
//! 5. conservation: final balance = added − consumed (successful) − forfeited;
//! 6. booking: an entry's `booked_at` is the booking rule applied to the
//!    previous entry's ([`crate::booking::booked`]: never decreasing, never
//!    before its `occurred_at`); entries written before v4 carry none.
//!
//! ```
//! use tally_ledger::invariants::{gapless_sequence, Previous};
//! use tally_events::{AccountId, Sequence};
//! let account = AccountId::parse("acct-1").unwrap();
//! assert!(gapless_sequence(&Previous::START, &account, Sequence(1)).is_ok());
//! assert!(gapless_sequence(&Previous::START, &account, Sequence(2)).is_err());
//! ```

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_events::{
    records::{EntryStatus, EntryType, LedgerEntry},
    AccountId, Credits, Sequence,
};

use crate::{booking, state::AccountState};

/// What an entry follows: the account as the previous entry left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// Sequence of the previous entry (0 before the first).
    pub sequence: Sequence,
    /// Balance after it.
    pub balance: Credits,
    /// Paused after it.
    pub paused: bool,
    /// Its booking time in seconds ([`crate::booking`]; 0 before the first).
    pub booked: u32,
}

impl Previous {
    /// Before an account's first entry.
    pub const START: Previous =
        Previous { sequence: Sequence::BEFORE_FIRST, balance: Credits::ZERO, paused: false, booked: 0 };

    /// The account as `entry` left it.
    pub fn after(entry: &LedgerEntry) -> Previous {
        Previous {
            sequence: entry.sequence,
            balance: entry.balance_after,
            paused: entry.paused,
            booked: booking::of_entry(entry),
        }
    }
}

impl From<&AccountState> for Previous {
    fn from(state: &AccountState) -> Previous {
        Previous { sequence: state.last_sequence, balance: state.balance, paused: state.paused, booked: state.booked }
    }
}

/// A broken invariant: names the account, the entry and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Sequence is not previous + 1.
    #[error("account {account_id}: sequence {found} follows {previous}, expected {}", previous.0 + 1)]
    SequenceGap {
        /// Account.
        account_id: AccountId,
        /// Previous sequence (0 before the first entry).
        previous: Sequence,
        /// Sequence found.
        found: Sequence,
    },
    /// `balance_after` is not the previous balance plus the signed credits.
    #[error(
        "account {account_id}: entry {sequence} has balance_after {found}, expected {previous} {signed:+} = {expected}"
    )]
    BalanceChain {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// Previous balance.
        previous: Credits,
        /// The entry's signed credits.
        signed: Credits,
        /// previous + signed.
        expected: Credits,
        /// The entry's balance_after.
        found: Credits,
    },
    /// A negative balance.
    #[error("account {account_id}: entry {sequence} leaves a negative balance {balance}")]
    NegativeBalance {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// The balance.
        balance: Credits,
    },
    /// Negative credits (the sign belongs to the entry type).
    #[error("account {account_id}: entry {sequence} has negative credits {credits}")]
    NegativeCredits {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// The credits.
        credits: Credits,
    },
    /// A successful CONSUME while the account was paused.
    #[error("account {account_id}: entry {sequence} debits {credits} credits while the account is paused")]
    DebitWhilePaused {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// Credits debited.
        credits: Credits,
    },
    /// The account went from paused to not paused without a purchase.
    #[error(
        "account {account_id}: entry {sequence} ({entry_type:?}) resumes the account, but only a successful ADD may"
    )]
    ResumeWithoutPurchase {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// Its type.
        entry_type: EntryType,
    },
    /// Final balance differs from added − consumed − forfeited.
    #[error("account {account_id}: final balance {balance} differs from added {added} - consumed {consumed} - forfeited {forfeited}")]
    Conservation {
        /// Account.
        account_id: AccountId,
        /// Final balance.
        balance: Credits,
        /// Credits added.
        added: Credits,
        /// Credits consumed (successful CONSUME).
        consumed: Credits,
        /// Credits forfeited.
        forfeited: Credits,
    },
    /// `booked_at` is not what the booking rule gives.
    #[error("account {account_id}: entry {sequence} is booked at {found}, expected {expected} (booking rule)")]
    Booking {
        /// Account.
        account_id: AccountId,
        /// Entry.
        sequence: Sequence,
        /// What the rule gives.
        expected: DateTime<Utc>,
        /// The entry's booked_at.
        found: DateTime<Utc>,
    },
    /// A slice given as one account's entries holds another account's entry.
    #[error("entries of account {expected} include entry {sequence} of account {found}")]
    MixedAccounts {
        /// The first entry's account.
        expected: AccountId,
        /// The other account.
        found: AccountId,
        /// That entry's sequence.
        sequence: Sequence,
    },
}

/// Invariant 1: `sequence` is `previous.sequence + 1` (so the first is 1).
pub fn gapless_sequence(previous: &Previous, account_id: &AccountId, sequence: Sequence) -> Result<(), Violation> {
    if previous.sequence.next() == Some(sequence) {
        Ok(())
    } else {
        Err(Violation::SequenceGap { account_id: account_id.clone(), previous: previous.sequence, found: sequence })
    }
}

/// Invariant 2: `balance_after = previous.balance + signed_credits`.
pub fn balance_chain(previous: &Previous, entry: &LedgerEntry) -> Result<(), Violation> {
    let signed = entry.signed_credits();
    let expected = previous.balance.checked_add(signed);
    if expected == Some(entry.balance_after) {
        Ok(())
    } else {
        Err(Violation::BalanceChain {
            account_id: entry.account_id.clone(),
            sequence: entry.sequence,
            previous: previous.balance,
            signed,
            expected: expected.unwrap_or(Credits::new(Decimal::MAX)),
            found: entry.balance_after,
        })
    }
}

/// Invariant 3: neither the balance after nor the credits of an entry are
/// negative.
pub fn never_negative(entry: &LedgerEntry) -> Result<(), Violation> {
    if entry.balance_after.is_negative() {
        return Err(Violation::NegativeBalance {
            account_id: entry.account_id.clone(),
            sequence: entry.sequence,
            balance: entry.balance_after,
        });
    }
    if entry.credits.is_negative() {
        return Err(Violation::NegativeCredits {
            account_id: entry.account_id.clone(),
            sequence: entry.sequence,
            credits: entry.credits,
        });
    }
    Ok(())
}

/// Invariant 4a: a successful CONSUME requires the account not paused
/// before it.
pub fn no_debit_while_paused(previous: &Previous, entry: &LedgerEntry) -> Result<(), Violation> {
    let debit = entry.entry_type == EntryType::Consume && entry.status == EntryStatus::Success;
    if debit && previous.paused {
        return Err(Violation::DebitWhilePaused {
            account_id: entry.account_id.clone(),
            sequence: entry.sequence,
            credits: entry.credits,
        });
    }
    Ok(())
}

/// Invariant 4b: only a successful ADD takes an account from paused to not
/// paused.
pub fn resume_only_by_purchase(previous: &Previous, entry: &LedgerEntry) -> Result<(), Violation> {
    let purchase = entry.entry_type == EntryType::Add && entry.status == EntryStatus::Success;
    if previous.paused && !entry.paused && !purchase {
        return Err(Violation::ResumeWithoutPurchase {
            account_id: entry.account_id.clone(),
            sequence: entry.sequence,
            entry_type: entry.entry_type,
        });
    }
    Ok(())
}

/// Invariant 6: `booked_at` follows the booking rule (checked when the
/// entry has one: entries written before v4 do not).
pub fn booked_by_rule(previous: &Previous, entry: &LedgerEntry) -> Result<(), Violation> {
    let Some(found) = entry.booked_at else {
        return Ok(());
    };
    let expected = booking::instant(booking::booked(previous.booked, entry.occurred_at));
    if found == expected {
        Ok(())
    } else {
        Err(Violation::Booking { account_id: entry.account_id.clone(), sequence: entry.sequence, expected, found })
    }
}

/// Every per-entry invariant (1–4, 6) of `entry` following `previous`.
pub fn check_entry(previous: &Previous, entry: &LedgerEntry) -> Result<(), Violation> {
    gapless_sequence(previous, &entry.account_id, entry.sequence)?;
    never_negative(entry)?;
    balance_chain(previous, entry)?;
    no_debit_while_paused(previous, entry)?;
    resume_only_by_purchase(previous, entry)?;
    booked_by_rule(previous, entry)
}

/// Invariant 5 over all of one account's entries (in any order): the last
/// entry's balance equals added − consumed − forfeited. An empty slice
/// holds trivially.
pub fn conservation(entries: &[LedgerEntry]) -> Result<(), Violation> {
    let Some(last) = entries.iter().max_by_key(|e| e.sequence) else {
        return Ok(());
    };
    // Checked sums: a reconciliation may feed forged, huge values, and must
    // report them rather than panic on overflow.
    let (mut added, mut consumed, mut forfeited) = (Some(Credits::ZERO), Some(Credits::ZERO), Some(Credits::ZERO));
    for entry in entries.iter().filter(|e| e.status == EntryStatus::Success) {
        let total = match entry.entry_type {
            EntryType::Add => &mut added,
            EntryType::Consume => &mut consumed,
            EntryType::Forfeit => &mut forfeited,
            EntryType::Open | EntryType::Update => continue,
        };
        *total = total.and_then(|sum| sum.checked_add(entry.credits));
    }
    let balance = added.and_then(|a| a.checked_sub(consumed?)).and_then(|b| b.checked_sub(forfeited?));
    if balance == Some(last.balance_after) {
        Ok(())
    } else {
        let (added, consumed, forfeited) = (
            added.unwrap_or(Credits::new(Decimal::MAX)),
            consumed.unwrap_or(Credits::new(Decimal::MAX)),
            forfeited.unwrap_or(Credits::new(Decimal::MAX)),
        );
        Err(Violation::Conservation {
            account_id: last.account_id.clone(),
            balance: last.balance_after,
            added,
            consumed,
            forfeited,
        })
    }
}

/// Every invariant over all of one account's entries, given in sequence
/// order from the first: for reconciliation and tests.
pub fn check_account(entries: &[LedgerEntry]) -> Result<(), Violation> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let mut previous = Previous::START;
    for entry in entries {
        if entry.account_id != first.account_id {
            return Err(Violation::MixedAccounts {
                expected: first.account_id.clone(),
                found: entry.account_id.clone(),
                sequence: entry.sequence,
            });
        }
        check_entry(&previous, entry)?;
        previous = Previous::after(entry);
    }
    conservation(entries)
}
