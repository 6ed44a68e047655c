//! The ledger rules of each kind of input: CONSUME (usage), ADD
//! (purchase), OPEN, UPDATE and DELETE (account changes), and what every
//! input must be before any rule looks at it (bounded identifiers).
//!
//! Each rule is a free function over the rate table and a copy of the
//! account's state, returning a [`Decision`] (the entry to write, the
//! account after it, its alerts) or a [`Rejection`] (a reason and a
//! detail); [`crate::Ledger::apply`] runs them in the contract's order
//! and keeps the state. Pure: no clock, no I/O, no randomness.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_events::{
    limits::{self, quote},
    records::{
        AccountChange, AccountChangeKind, Alert, AlertKind, CreditPurchase, EntryStatus, EntryType, Input, InputDigest,
        JobOutcome, LedgerEntry, SourceOffset, UsageEvent,
    },
    AccountId, Credits, Dollars, Epoch, Reason, Sequence,
};
use uuid::Uuid;

use crate::{invariants::Previous, pricing, rates::RateTable, state::AccountState};

/// A refusal: a reason code and a detail.
pub(crate) struct Rejection {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
}

pub(crate) fn reject(reason: Reason, detail: String) -> Rejection {
    Rejection { reason, detail }
}

/// Alerts raised by one entry, in publishing order (at most two:
/// LOW_BALANCE then PAUSED).
#[derive(Default)]
pub(crate) struct Alerts {
    pub(crate) kinds: [Option<AlertKind>; 2],
}

impl Alerts {
    pub(crate) fn push(&mut self, kind: AlertKind) {
        if let Some(slot) = self.kinds.iter_mut().find(|slot| slot.is_none()) {
            *slot = Some(kind);
        }
    }
}

/// An entry before its owned strings are made: borrows the rate table, and
/// nothing of the input, so deciding allocates nothing and the input's
/// strings can still be moved into the entry ([`EntryStrings::take`]).
pub(crate) struct Draft<'a> {
    pub(crate) input_id: Uuid,
    pub(crate) entry_type: EntryType,
    pub(crate) status: EntryStatus,
    /// A FAILED entry's reason.
    pub(crate) reason: Option<Reason>,
    /// A usage entry's quantity (zero for other entries).
    pub(crate) quantity: Decimal,
    pub(crate) credits: Credits,
    pub(crate) dollars: Dollars,
    pub(crate) rate_version: &'a str,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// A decided entry: what it is, the account after it, and its alerts.
pub(crate) struct Decision<'a> {
    pub(crate) draft: Draft<'a>,
    pub(crate) previous: Previous,
    pub(crate) after: AccountState,
    pub(crate) alerts: Alerts,
}

/// Dollars of an entry that moves no money, with the usual 2 digits.
pub(crate) const NO_DOLLARS: Dollars = Dollars::new(Decimal::from_parts(0, 0, 0, false, 2));

/// The strings an entry takes from its input: the account, and a usage
/// event's service, engine, photo-booth event and booth (empty for other
/// inputs).
pub(crate) struct EntryStrings {
    account_id: String,
    service: String,
    engine: String,
    photo_event_id: String,
    booth_id: String,
}

impl EntryStrings {
    /// Copies of `input`'s.
    pub(crate) fn of(input: &Input) -> EntryStrings {
        match input {
            Input::Usage(event) => EntryStrings {
                account_id: event.account_id.clone(),
                service: event.service.clone(),
                engine: event.engine.clone(),
                photo_event_id: event.photo_event_id.clone(),
                booth_id: event.booth_id.clone(),
            },
            other => EntryStrings::account_only(other.account_id().to_owned()),
        }
    }

    /// `input`'s own, moved out (it keeps empty strings): an input applied
    /// by value gives its strings to its entry instead of copies.
    pub(crate) fn take(input: &mut Input) -> EntryStrings {
        let take = std::mem::take::<String>;
        match input {
            Input::Usage(event) => EntryStrings {
                account_id: take(&mut event.account_id),
                service: take(&mut event.service),
                engine: take(&mut event.engine),
                photo_event_id: take(&mut event.photo_event_id),
                booth_id: take(&mut event.booth_id),
            },
            Input::Purchase(purchase) => EntryStrings::account_only(take(&mut purchase.account_id)),
            Input::Account(change) => EntryStrings::account_only(take(&mut change.account_id)),
        }
    }

    fn account_only(account_id: String) -> EntryStrings {
        EntryStrings {
            account_id,
            service: String::new(),
            engine: String::new(),
            photo_event_id: String::new(),
            booth_id: String::new(),
        }
    }
}

impl Draft<'_> {
    pub(crate) fn build(
        self,
        strings: EntryStrings,
        after: &AccountState,
        source: &SourceOffset,
        epoch: Epoch,
        digest: InputDigest,
    ) -> LedgerEntry {
        let EntryStrings { account_id, service, engine, photo_event_id, booth_id } = strings;
        LedgerEntry {
            entry_id: entry_id(self.input_id),
            // Checked by rule 1 before any rule ran.
            account_id: AccountId::new_unchecked(account_id),
            sequence: after.last_sequence,
            epoch,
            entry_type: self.entry_type,
            status: self.status,
            reason: self.reason.map_or_else(String::new, |reason| reason.code().to_owned()),
            input_id: self.input_id,
            service,
            engine,
            photo_event_id,
            quantity: self.quantity,
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
            booked_at: Some(crate::booking::instant(after.booked)),
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
pub(crate) fn window_text(window: TimeDelta) -> String {
    match window.num_seconds() {
        s if s % 86_400 == 0 && s / 86_400 == 1 => "1 day".to_string(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s => format!("{s} s"),
    }
}

pub(crate) fn instant_text(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Rule 1: the identifiers an input carries into entries are bounded text.
pub(crate) fn check_identifiers(input: &Input) -> Result<(), Rejection> {
    let account_id = input.account_id();
    if let Err(problem) = limits::check_account_id(account_id) {
        return Err(reject(Reason::InvalidAccountId, format!("account id {} {problem}", quote(account_id))));
    }
    if let Input::Usage(event) = input {
        let fields =
            [("photo_event_id", &event.photo_event_id), ("booth_id", &event.booth_id), ("job_id", &event.job_id)];
        for (field, value) in fields {
            if let Err(problem) = limits::check_identifier(value) {
                return Err(reject(Reason::InvalidIdentifier, format!("{field} {} {problem}", quote(value))));
            }
        }
    }
    Ok(())
}

/// The per-kind rules. Free functions over the rate table and a copy of the
/// account's state, so that `apply` can hold the account's map slot while
/// deciding.
pub(crate) fn decide<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    input: &Input,
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

/// The sequence an account's next entry takes. (No account reaches
/// `i64::MAX` entries; if one did, the gapless-sequence invariant that
/// `apply` asserts would stop the service before a wrong entry is written.)
fn next_sequence(state: &AccountState) -> Sequence {
    Sequence(state.last_sequence.0.wrapping_add(1))
}

/// The state of an open, not deleted account.
pub(crate) fn existing(current: Option<&AccountState>, account_id: &str) -> Result<AccountState, Rejection> {
    match current {
        None => Err(reject(Reason::UnknownAccount, format!("account {account_id:?} was never opened"))),
        Some(state) if state.deleted => {
            Err(reject(Reason::AccountDeleted, format!("account {account_id:?} was deleted")))
        }
        Some(state) => Ok(*state),
    }
}

/// Rule 3, CONSUME: price the usage; record a failed job, a paused
/// account or too few credits as a FAILED entry; else debit.
pub(crate) fn consume<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    event: &UsageEvent,
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
            Reason::InvalidQuantity,
            format!(
                "quantity {} of unit {} must be > 0, at most {} and {digits}",
                event.quantity,
                event.unit.code(),
                pricing::QUANTITY_MAX
            ),
        ));
    }
    let version = rates.version_at(event.occurred_at).ok_or_else(|| {
        reject(Reason::NoRateVersion, format!("no rate version in force at {}", instant_text(event.occurred_at)))
    })?;
    let rate = version.service(&event.service, &event.engine).ok_or_else(|| {
        reject(
            Reason::UnknownService,
            format!("{}/{} is not priced in rate version {}", event.service, event.engine, version.id()),
        )
    })?;
    if rate.unit() != event.unit {
        return Err(reject(
            Reason::UnitMismatch,
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
    let overflow = || reject(Reason::InvalidQuantity, format!("quantity {} is too large to price", event.quantity));
    let credits = pricing::usage_credits(rate.credits_per_unit(), quantity).ok_or_else(overflow)?;
    let dollars = pricing::dollars_of_credits(credits, version.dollars_per_credit(state.tier)).ok_or_else(overflow)?;

    let mut after = state;
    after.last_sequence = next_sequence(&state);
    let mut alerts = Alerts::default();
    // Order matters and is part of the contract: a failed job is
    // recorded as such even on a paused account; a paused account is
    // refused before its balance is looked at.
    let (status, reason) = if event.outcome == JobOutcome::Failed {
        (EntryStatus::Failed, Some(Reason::JobFailed))
    } else if state.paused {
        (EntryStatus::Failed, Some(Reason::AccountPaused))
    } else if credits > state.balance {
        after.paused = true;
        alerts.push(AlertKind::Paused);
        (EntryStatus::Failed, Some(Reason::InsufficientCredits))
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
        (EntryStatus::Success, None)
    };
    Ok(Decision {
        draft: Draft {
            input_id: event.event_id,
            entry_type: EntryType::Consume,
            status,
            reason,
            quantity,
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
pub(crate) fn add<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    purchase: &CreditPurchase,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &purchase.account_id)?;
    let amount = purchase.amount_dollars.normalize();
    if amount <= Dollars::ZERO || amount.scale() > pricing::AMOUNT_SCALE_MAX || amount > pricing::AMOUNT_DOLLARS_MAX {
        return Err(reject(
            Reason::InvalidAmount,
            format!(
                "amount {} must be > 0, at most {} and whole cents",
                purchase.amount_dollars,
                pricing::AMOUNT_DOLLARS_MAX
            ),
        ));
    }
    let version = rates.version_at(purchase.occurred_at).ok_or_else(|| {
        reject(Reason::NoRateVersion, format!("no rate version in force at {}", instant_text(purchase.occurred_at)))
    })?;
    let price = version.dollars_per_credit(state.tier);
    let credits = pricing::credits_of_dollars(amount, price).filter(|c| !c.is_zero()).ok_or_else(|| {
        reject(Reason::InvalidAmount, format!("amount {amount} buys no credit at {price} dollars per credit"))
    })?;
    let balance =
        state.balance.checked_add(credits).filter(|b| *b <= pricing::BALANCE_CREDITS_MAX).ok_or_else(|| {
            reject(Reason::InvalidAmount, format!("the balance would exceed {} credits", pricing::BALANCE_CREDITS_MAX))
        })?;
    let dollars = pricing::cents(amount.decimal());

    let mut after = state;
    after.last_sequence = next_sequence(&state);
    after.balance = balance.normalize();
    let mut alerts = Alerts::default();
    if state.paused {
        after.paused = false;
        alerts.push(AlertKind::Resumed);
    }
    Ok(Decision {
        draft: Draft {
            input_id: purchase.purchase_id,
            entry_type: EntryType::Add,
            status: EntryStatus::Success,
            reason: None,
            quantity: Decimal::ZERO,
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
pub(crate) fn open<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &AccountChange,
) -> Result<Decision<'a>, Rejection> {
    match current {
        Some(state) if state.deleted => {
            return Err(reject(
                Reason::AccountDeleted,
                format!("account {:?} was deleted and cannot be opened again", change.account_id),
            ));
        }
        Some(_) => {
            return Err(reject(Reason::AccountExists, format!("account {:?} is already open", change.account_id)));
        }
        None => {}
    }
    let threshold = valid_threshold(change)?;
    let after = AccountState {
        balance: Credits::ZERO,
        last_sequence: Sequence(1),
        tier: change.tier,
        low_balance_threshold: threshold,
        paused: false,
        deleted: false,
        // Set by the booking rule in `Ledger::apply`, like every entry's.
        booked: 0,
    };
    Ok(change_decision(rates, change, EntryType::Open, Credits::ZERO, NO_DOLLARS, Previous::START, after))
}

/// Rule 6, UPDATE: new tier and threshold; credits kept.
pub(crate) fn update<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &AccountChange,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &change.account_id)?;
    let threshold = valid_threshold(change)?;
    let mut after = state;
    after.last_sequence = next_sequence(&state);
    after.tier = change.tier;
    after.low_balance_threshold = threshold;
    Ok(change_decision(rates, change, EntryType::Update, Credits::ZERO, NO_DOLLARS, Previous::from(&state), after))
}

/// Rule 7, DELETE: the remaining credits are forfeited and the account
/// becomes a tombstone. The change's tier and threshold are ignored: the
/// forfeit is valued at the tier the credits were held under.
pub(crate) fn delete<'a>(
    rates: &'a RateTable,
    current: Option<&AccountState>,
    change: &AccountChange,
) -> Result<Decision<'a>, Rejection> {
    let state = existing(current, &change.account_id)?;
    let credits = state.balance;
    let dollars = rates
        .version_at(change.occurred_at)
        .and_then(|version| pricing::dollars_of_credits(credits, version.dollars_per_credit(state.tier)))
        .unwrap_or(NO_DOLLARS);
    let mut after = state;
    after.last_sequence = next_sequence(&state);
    after.balance = Credits::ZERO;
    after.deleted = true;
    Ok(change_decision(rates, change, EntryType::Forfeit, credits, dollars, Previous::from(&state), after))
}

pub(crate) fn change_decision<'a>(
    rates: &'a RateTable,
    change: &AccountChange,
    entry_type: EntryType,
    credits: Credits,
    dollars: Dollars,
    previous: Previous,
    after: AccountState,
) -> Decision<'a> {
    Decision {
        draft: Draft {
            input_id: change.change_id,
            entry_type,
            status: EntryStatus::Success,
            reason: None,
            quantity: Decimal::ZERO,
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

pub(crate) fn valid_threshold(change: &AccountChange) -> Result<Credits, Rejection> {
    let threshold = change.low_balance_threshold.normalize();
    if threshold.is_negative()
        || threshold > pricing::THRESHOLD_CREDITS_MAX
        || threshold.scale() > pricing::THRESHOLD_SCALE_MAX
    {
        return Err(reject(
            Reason::InvalidThreshold,
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

pub(crate) fn alert(entry: &LedgerEntry, kind: AlertKind) -> Alert {
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
        tier: Some(entry.tier),
    }
}
