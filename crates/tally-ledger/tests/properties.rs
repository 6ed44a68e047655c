//! Property tests: random input sequences over a few accounts (opens,
//! purchases, usage that succeeds or fails on known and unknown services,
//! updates, deletes, exact duplicates, replays of earlier inputs, earlier
//! ids reused with other content, invalid account ids, times out of order
//! and too late) run on the ledger and on a tiny independent model,
//! compared at every step; then the invariants, idempotence, restore and
//! resume properties are checked on the result.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::{prelude::*, test_runner::FileFailurePersistence};
use rust_decimal::{Decimal, RoundingStrategy};
use tally_events::{
    records::{
        AccountChange, AccountChangeKind, AlertKind, CreditPurchase, EntryStatus, EntryType, Input, JobOutcome,
        LedgerEntry, PlanTier, Producer, SourceOffset, Unit, UsageEvent,
    },
    Codec, Credits, Dollars, Epoch, Reason,
};
use tally_ledger::{invariants, Applied, Ledger, LedgerConfig, RateTable};
use uuid::Uuid;

const DEFAULT_TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/rates.toml");
const ACCOUNTS: [&str; 3] = ["acct-a", "acct-b", "acct-c"];
/// One byte over the limit.
const LONG_ACCOUNT_ID: &str = "acct-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Known services (as in the default table) and two the table never prices.
const SERVICES: [(&str, &str, Unit); 13] = [
    ("background_removal", "standard", Unit::Image),
    ("face_switch", "standard", Unit::Image),
    ("ai_modify", "nano_banana_2", Unit::Image),
    ("ai_modify", "gpt_image_2", Unit::Image),
    ("ai_modify", "grok_imagine", Unit::Image),
    ("ai_draw_me", "standard", Unit::Image),
    ("ai_image_to_video", "kling", Unit::VideoSecond),
    ("ai_image_to_video", "sora", Unit::VideoSecond),
    ("ai_image_to_video", "seedance", Unit::VideoSecond),
    ("sms", "standard", Unit::Message),
    ("editorial_ai", "standard", Unit::Image),
    ("ai_modify", "dall_e", Unit::Image),
    ("teleport", "standard", Unit::Image),
];

fn rates() -> Arc<RateTable> {
    Arc::new(RateTable::load(DEFAULT_TABLE).expect("default rate table loads"))
}

/// Small dedup window so that out-of-order and too-late inputs both occur.
fn config() -> LedgerConfig {
    LedgerConfig { dedup_window: TimeDelta::hours(12) }
}

#[derive(Debug, Clone)]
enum Action {
    Open {
        account: usize,
        tier: PlanTier,
        threshold: u32,
    },
    Purchase {
        account: usize,
        cents: i64,
    },
    Usage {
        account: usize,
        service: usize,
        quantity: Decimal,
        failed: bool,
        wrong_unit: bool,
    },
    Update {
        account: usize,
        tier: PlanTier,
        threshold: i64,
    },
    Delete {
        account: usize,
    },
    /// Apply the previous input again, unchanged.
    Duplicate,
    /// Apply an earlier input again (index counted back from the last).
    Replay {
        back: usize,
    },
    /// Send an earlier input's id again with other content.
    Conflict {
        back: usize,
        change: Change,
    },
    /// A usage event whose account id is not a valid one.
    BadAccountId {
        id: &'static str,
    },
}

/// How a conflicting repeat differs from the input whose id it reuses.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// One more unit (usage), one more cent (purchase), one more credit of
    /// threshold (account change).
    More,
    /// Another service (usage), another account (purchase), another tier
    /// (account change).
    Other,
    /// Only metadata and the time reported: producer and attributes
    /// (usage), payment reference (purchase), reason (account change):
    /// still a duplicate.
    Metadata,
}

#[derive(Debug, Clone)]
struct Step {
    action: Action,
    /// Seconds the clock moves forward before this step.
    advance_seconds: i64,
    /// How much earlier than the clock the input occurred: out of order
    /// within the window, or (rarely) too late.
    lateness_seconds: i64,
}

fn tier() -> impl Strategy<Value = PlanTier> {
    prop_oneof![Just(PlanTier::Payg), Just(PlanTier::Basic), Just(PlanTier::Pro)]
}

fn action() -> impl Strategy<Value = Action> {
    let account = 0..ACCOUNTS.len();
    // Quantities: mostly valid (whole, or up to 3 fractional digits for
    // video seconds), sometimes not.
    let quantity = prop_oneof![
        4 => (1i64..=20_000).prop_map(|milli| Decimal::new(milli, 3)),
        10 => (1i64..=12).prop_map(Decimal::from),
        1 => (-2i64..=0).prop_map(Decimal::from),
        1 => (1i64..=9_999).prop_map(|q| Decimal::new(q * 10 + 1, 4)),
    ];
    prop_oneof![
        6 => (account.clone(), tier(), 0u32..=200).prop_map(|(account, tier, threshold)| Action::Open { account, tier, threshold }),
        12 => (account.clone(), prop_oneof![5 => (1i64..=30).prop_map(|d| d * 100), 4 => 1i64..=3_000, 1 => -100i64..=0]).prop_map(|(account, cents)| Action::Purchase { account, cents }),
        36 => (account.clone(), 0..SERVICES.len(), quantity, prop::bool::weighted(0.2), prop::bool::weighted(0.05))
            .prop_map(|(account, service, quantity, failed, wrong_unit)| Action::Usage { account, service, quantity, failed, wrong_unit }),
        6 => (account.clone(), tier(), -5i64..=200).prop_map(|(account, tier, threshold)| Action::Update { account, tier, threshold }),
        1 => account.prop_map(|account| Action::Delete { account }),
        6 => Just(Action::Duplicate),
        6 => (0usize..40).prop_map(|back| Action::Replay { back }),
        4 => (0usize..40, prop_oneof![Just(Change::More), Just(Change::Other), Just(Change::Metadata)])
            .prop_map(|(back, change)| Action::Conflict { back, change }),
        1 => prop_oneof![Just(""), Just("acct\nb"), Just("acct\u{0}"), Just(LONG_ACCOUNT_ID)]
            .prop_map(|id| Action::BadAccountId { id }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let advance = prop_oneof![
        12 => 0i64..=7_200,      // up to 2 h
        1 => 40_000i64..=90_000, // a jump past the 12 h window: prunes old ids
    ];
    let lateness = prop_oneof![
        12 => Just(0i64),
        6 => 0i64..=3_600,             // out of order, within the window
        1 => 43_201i64..=200_000,      // beyond the 12 h window: too late
    ];
    let step = (action(), advance, lateness).prop_map(|(action, advance_seconds, lateness_seconds)| Step {
        action,
        advance_seconds,
        lateness_seconds,
    });
    // Most runs open two of the three accounts first, so that most inputs
    // reach the rules; the third one is opened (or not) at random.
    let opening = (tier(), 0u32..=200, tier(), 0u32..=200).prop_map(|(tier_a, threshold_a, tier_b, threshold_b)| {
        vec![
            Step {
                action: Action::Open { account: 0, tier: tier_a, threshold: threshold_a },
                advance_seconds: 0,
                lateness_seconds: 0,
            },
            Step {
                action: Action::Open { account: 1, tier: tier_b, threshold: threshold_b },
                advance_seconds: 0,
                lateness_seconds: 0,
            },
        ]
    });
    (prop::bool::weighted(0.9), opening, prop::collection::vec(step, 1..120)).prop_map(
        |(open_first, mut opening, rest)| {
            if !open_first {
                opening.clear();
            }
            opening.extend(rest);
            opening
        },
    )
}

/// Turns steps into inputs. Time starts on 2026-06-29 so the 2026-07 rate
/// change falls inside most runs.
fn inputs(steps: &[Step]) -> Vec<Input> {
    let mut clock: DateTime<Utc> = "2026-06-29T12:00:00Z".parse().expect("instant");
    let mut made: Vec<Input> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        clock += TimeDelta::seconds(step.advance_seconds);
        let now = clock - TimeDelta::seconds(step.lateness_seconds);
        let id = Uuid::from_u128(0x1000 + index as u128);
        let input = match &step.action {
            Action::Open { account, tier, threshold } => Input::Account(AccountChange {
                change_id: id,
                account_id: ACCOUNTS[*account].into(),
                kind: AccountChangeKind::Open,
                tier: *tier,
                low_balance_threshold: Credits::new(Decimal::from(*threshold)),
                occurred_at: now,
                reason: None,
            }),
            Action::Purchase { account, cents } => Input::Purchase(CreditPurchase {
                purchase_id: id,
                account_id: ACCOUNTS[*account].into(),
                amount_dollars: Dollars::new(Decimal::new(*cents, 2)),
                occurred_at: now,
                payment_reference: None,
            }),
            Action::Usage { account, service, quantity, failed, wrong_unit } => {
                let (service, engine, unit) = SERVICES[*service];
                let unit = match (wrong_unit, unit) {
                    (false, unit) => unit,
                    (true, Unit::Image) => Unit::Message,
                    (true, _) => Unit::Image,
                };
                Input::Usage(UsageEvent {
                    event_id: id,
                    account_id: ACCOUNTS[*account].into(),
                    photo_event_id: format!("event-{index}"),
                    booth_id: "booth-1".into(),
                    job_id: format!("job-{index}"),
                    service: service.into(),
                    engine: engine.into(),
                    quantity: *quantity,
                    unit,
                    outcome: if *failed { JobOutcome::Failed } else { JobOutcome::Succeeded },
                    occurred_at: now,
                    producer: Producer { worker: "w".into(), version: "1".into() },
                    attributes: Default::default(),
                })
            }
            Action::Update { account, tier, threshold } => Input::Account(AccountChange {
                change_id: id,
                account_id: ACCOUNTS[*account].into(),
                kind: AccountChangeKind::Update,
                tier: *tier,
                low_balance_threshold: Credits::new(Decimal::from(*threshold)),
                occurred_at: now,
                reason: None,
            }),
            Action::Delete { account } => Input::Account(AccountChange {
                change_id: id,
                account_id: ACCOUNTS[*account].into(),
                kind: AccountChangeKind::Delete,
                tier: PlanTier::Payg,
                low_balance_threshold: Credits::ZERO,
                occurred_at: now,
                reason: None,
            }),
            Action::Duplicate => match made.last() {
                Some(previous) => previous.clone(),
                None => continue,
            },
            Action::Replay { back } => match made.len().checked_sub(back + 1) {
                Some(earlier) => made[earlier].clone(),
                None => continue,
            },
            Action::Conflict { back, change } => match made.len().checked_sub(back + 1) {
                Some(earlier) => changed(&made[earlier], *change),
                None => continue,
            },
            Action::BadAccountId { id: account_id } => Input::Usage(UsageEvent {
                event_id: id,
                account_id: (*account_id).into(),
                photo_event_id: format!("event-{index}"),
                booth_id: "booth-1".into(),
                job_id: format!("job-{index}"),
                service: "background_removal".into(),
                engine: "standard".into(),
                quantity: Decimal::ONE,
                unit: Unit::Image,
                outcome: JobOutcome::Succeeded,
                occurred_at: now,
                producer: Producer { worker: "w".into(), version: "1".into() },
                attributes: Default::default(),
            }),
        };
        made.push(input);
    }
    made
}

/// `input` with its id kept and its content (or only metadata) changed.
fn changed(input: &Input, change: Change) -> Input {
    let mut input = input.clone();
    match (&mut input, change) {
        (Input::Usage(e), Change::More) => e.quantity += Decimal::ONE,
        (Input::Usage(e), Change::Other) => {
            e.service = if e.service == "face_switch" { "ai_draw_me".into() } else { "face_switch".into() };
            e.engine = "standard".into();
        }
        (Input::Usage(e), Change::Metadata) => {
            e.producer.worker = "another-worker".into();
            e.attributes.insert("retry".into(), "2".into());
            e.occurred_at += TimeDelta::seconds(30);
        }
        (Input::Purchase(p), Change::More) => p.amount_dollars += Dollars::new(Decimal::new(1, 2)),
        (Input::Purchase(p), Change::Other) => {
            p.account_id = if p.account_id == ACCOUNTS[0] { ACCOUNTS[1] } else { ACCOUNTS[0] }.into()
        }
        (Input::Purchase(p), Change::Metadata) => p.payment_reference = Some("pay-retry".into()),
        (Input::Account(c), Change::More) => c.low_balance_threshold += Credits::new(Decimal::ONE),
        (Input::Account(c), Change::Other) => {
            c.tier = if c.tier == PlanTier::Pro { PlanTier::Basic } else { PlanTier::Pro };
        }
        (Input::Account(c), Change::Metadata) => c.reason = Some("retried".into()),
    }
    input
}

fn source(offset: usize) -> SourceOffset {
    SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: offset as i64 }
}

/// Runs `inputs` on a fresh ledger; returns the results and the ledger.
fn run(inputs: &[Input]) -> (Vec<Applied>, Ledger) {
    let mut ledger = Ledger::new(rates(), config());
    let results =
        inputs.iter().enumerate().map(|(offset, input)| ledger.apply(input, &source(offset), Epoch(1))).collect();
    (results, ledger)
}

fn entries(results: &[Applied]) -> Vec<LedgerEntry> {
    results
        .iter()
        .filter_map(|applied| match applied {
            Applied::Entry { entry, .. } => Some(entry.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The model: the rules written again, as plainly as possible, with no dedup
// pruning (it keeps every id forever) and no shared code with the ledger
// beyond the rate table's data.

#[derive(Debug, Clone)]
struct ModelAccount {
    balance: Decimal,
    tier: PlanTier,
    threshold: Decimal,
    paused: bool,
    deleted: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Entry {
        entry_type: EntryType,
        status: EntryStatus,
        reason: Option<Reason>,
        credits: Decimal,
        balance: Decimal,
        paused: bool,
        alerts: Vec<AlertKind>,
    },
    Duplicate,
    Rejected(Reason),
}

#[derive(Default)]
struct Model {
    accounts: BTreeMap<String, ModelAccount>,
    /// Every applied id, with its content written out.
    seen: HashMap<Uuid, String>,
    newest: Option<DateTime<Utc>>,
}

/// What a repeat must equal to be a duplicate: every field but metadata
/// and the time it was reported, decimals by value.
fn content(input: &Input) -> String {
    match input {
        Input::Usage(e) => format!(
            "usage {} {} {} {} {:?} {:?} {} {} {}",
            e.account_id,
            e.service,
            e.engine,
            e.quantity.normalize(),
            e.unit,
            e.outcome,
            e.photo_event_id,
            e.booth_id,
            e.job_id
        ),
        Input::Purchase(p) => format!("purchase {} {}", p.account_id, p.amount_dollars.normalize()),
        Input::Account(c) => {
            format!("account {} {:?} {:?} {}", c.account_id, c.kind, c.tier, c.low_balance_threshold.normalize())
        }
    }
}

impl Model {
    fn apply(&mut self, rates: &RateTable, input: &Input) -> Expected {
        let account = input.account_id();
        if account.is_empty() || account.len() > 128 || account.chars().any(char::is_control) {
            return Expected::Rejected(Reason::InvalidAccountId);
        }
        let at = input.occurred_at();
        if let Some(newest) = self.newest {
            if at < newest - config().dedup_window {
                return Expected::Rejected(Reason::TooLate);
            }
        }
        if let Some(applied) = self.seen.get(&input.id()) {
            return if *applied == content(input) {
                Expected::Duplicate
            } else {
                Expected::Rejected(Reason::ConflictingDuplicate)
            };
        }
        let expected = self.rules(rates, input);
        if matches!(expected, Expected::Entry { .. }) {
            self.seen.insert(input.id(), content(input));
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
        }
        expected
    }

    fn rules(&mut self, rates: &RateTable, input: &Input) -> Expected {
        let id = input.account_id().to_string();
        if let Input::Account(change) = input {
            if change.kind == AccountChangeKind::Open {
                return match self.accounts.get(&id) {
                    Some(account) if account.deleted => Expected::Rejected(Reason::AccountDeleted),
                    Some(_) => Expected::Rejected(Reason::AccountExists),
                    None if change.low_balance_threshold.is_negative() => Expected::Rejected(Reason::InvalidThreshold),
                    None => {
                        self.accounts.insert(
                            id,
                            ModelAccount {
                                balance: Decimal::ZERO,
                                tier: change.tier,
                                threshold: change.low_balance_threshold.decimal(),
                                paused: false,
                                deleted: false,
                            },
                        );
                        entry(EntryType::Open, EntryStatus::Success, None, Decimal::ZERO, Decimal::ZERO, false, vec![])
                    }
                };
            }
        }
        let Some(account) = self.accounts.get_mut(&id) else { return Expected::Rejected(Reason::UnknownAccount) };
        if account.deleted {
            return Expected::Rejected(Reason::AccountDeleted);
        }
        match input {
            Input::Usage(event) => {
                let q = event.quantity;
                // Whole images and messages; video seconds to the ms.
                let step = if event.unit == Unit::VideoSecond { Decimal::from(1000) } else { Decimal::ONE };
                if q <= Decimal::ZERO || q * step != (q * step).trunc() {
                    return Expected::Rejected(Reason::InvalidQuantity);
                }
                let Some(version) = rates.version_at(event.occurred_at) else {
                    return Expected::Rejected(Reason::NoRateVersion);
                };
                let Some(rate) = version.service(&event.service, &event.engine) else {
                    return Expected::Rejected(Reason::UnknownService);
                };
                if rate.unit() != event.unit {
                    return Expected::Rejected(Reason::UnitMismatch);
                }
                let credits = rate.credits_per_unit().decimal() * q;
                let before = account.balance;
                let (status, reason, mut alerts) = if event.outcome == JobOutcome::Failed {
                    (EntryStatus::Failed, Some(Reason::JobFailed), vec![])
                } else if account.paused {
                    (EntryStatus::Failed, Some(Reason::AccountPaused), vec![])
                } else if credits > before {
                    account.paused = true;
                    (EntryStatus::Failed, Some(Reason::InsufficientCredits), vec![AlertKind::Paused])
                } else {
                    account.balance = before - credits;
                    (EntryStatus::Success, None, vec![])
                };
                if status == EntryStatus::Success {
                    if before >= account.threshold && account.balance < account.threshold {
                        alerts.push(AlertKind::LowBalance);
                    }
                    if account.balance == Decimal::ZERO {
                        account.paused = true;
                        alerts.push(AlertKind::Paused);
                    }
                }
                entry(EntryType::Consume, status, reason, credits, account.balance, account.paused, alerts)
            }
            Input::Purchase(purchase) => {
                let amount = purchase.amount_dollars.decimal();
                if amount <= Decimal::ZERO || amount.round_dp(2) != amount {
                    return Expected::Rejected(Reason::InvalidAmount);
                }
                let Some(version) = rates.version_at(purchase.occurred_at) else {
                    return Expected::Rejected(Reason::NoRateVersion);
                };
                let credits = (amount / version.dollars_per_credit(account.tier).decimal())
                    .round_dp_with_strategy(4, RoundingStrategy::ToZero);
                account.balance += credits;
                let alerts = if account.paused { vec![AlertKind::Resumed] } else { vec![] };
                account.paused = false;
                entry(EntryType::Add, EntryStatus::Success, None, credits, account.balance, false, alerts)
            }
            Input::Account(change) => match change.kind {
                AccountChangeKind::Update if change.low_balance_threshold.is_negative() => {
                    Expected::Rejected(Reason::InvalidThreshold)
                }
                AccountChangeKind::Update => {
                    account.tier = change.tier;
                    account.threshold = change.low_balance_threshold.decimal();
                    entry(
                        EntryType::Update,
                        EntryStatus::Success,
                        None,
                        Decimal::ZERO,
                        account.balance,
                        account.paused,
                        vec![],
                    )
                }
                AccountChangeKind::Delete => {
                    let credits = account.balance;
                    account.balance = Decimal::ZERO;
                    account.deleted = true;
                    entry(
                        EntryType::Forfeit,
                        EntryStatus::Success,
                        None,
                        credits,
                        Decimal::ZERO,
                        account.paused,
                        vec![],
                    )
                }
                AccountChangeKind::Open => unreachable!("handled above"),
            },
        }
    }
}

fn entry(
    entry_type: EntryType,
    status: EntryStatus,
    reason: Option<Reason>,
    credits: Decimal,
    balance: Decimal,
    paused: bool,
    alerts: Vec<AlertKind>,
) -> Expected {
    Expected::Entry { entry_type, status, reason, credits, balance, paused, alerts }
}

fn observed(applied: &Applied) -> Expected {
    match applied {
        Applied::Entry { entry, alerts } => Expected::Entry {
            entry_type: entry.entry_type,
            status: entry.status,
            reason: entry.failure_reason(),
            credits: entry.credits.decimal(),
            balance: entry.balance_after.decimal(),
            paused: entry.paused,
            alerts: alerts.iter().map(|a| a.kind).collect(),
        },
        Applied::Duplicate => Expected::Duplicate,
        Applied::Rejected { reason, .. } => Expected::Rejected(*reason),
    }
}

proptest! {
    // Failures are saved where cargo runs the tests (the crate directory),
    // in proptest-regressions/, and replayed first on the next run.
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/properties.txt"))),
        ..ProptestConfig::default()
    })]

    /// The ledger agrees with the model at every step, and per account the
    /// entries keep every invariant: gapless sequences, balance chain, never
    /// negative, nothing debited while paused, conservation.
    #[test]
    fn ledger_matches_model_and_keeps_invariants(steps in steps()) {
        let inputs = inputs(&steps);
        let rates = rates();
        let mut model = Model::default();
        let mut ledger = Ledger::new(Arc::clone(&rates), config());
        let mut all = Vec::new();
        for (offset, input) in inputs.iter().enumerate() {
            let before = ledger.snapshot();
            let applied = ledger.apply(input, &source(offset), Epoch(1));
            prop_assert_eq!(observed(&applied), model.apply(&rates, input), "step {} input {:?}", offset, input);
            if !matches!(applied, Applied::Entry { .. }) {
                // A duplicate, a conflicting repeat or any other refusal
                // changes no balance, and no state at all.
                prop_assert_eq!(&ledger.snapshot(), &before, "step {} changed the state", offset);
            }
            if let Applied::Entry { entry, .. } = applied {
                prop_assert_eq!(entry.entry_id, tally_ledger::ledger::entry_id(input.id()));
                all.push(entry);
            }
        }
        let entry_ids: std::collections::HashSet<_> = all.iter().map(|e| e.entry_id).collect();
        prop_assert_eq!(entry_ids.len(), all.len(), "entry ids are unique");
        for account in ACCOUNTS {
            let mine: Vec<LedgerEntry> = all.iter().filter(|e| e.account_id == account).cloned().collect();
            prop_assert!(invariants::check_account(&mine).is_ok(), "{:?}", invariants::check_account(&mine));
            // Booking: the running maximum of occurred_at to the second,
            // computed here independently of the booking rule's code.
            let mut latest: Option<DateTime<Utc>> = None;
            for entry in &mine {
                let occurred = DateTime::from_timestamp(entry.occurred_at.timestamp(), 0).expect("in range");
                latest = Some(latest.map_or(occurred, |l| l.max(occurred)));
                prop_assert_eq!(entry.booked_at, latest, "booking of {} #{}", account, entry.sequence.0);
            }
            if let Some(last) = mine.last() {
                let state = ledger.account(account).expect("an account with entries exists");
                prop_assert_eq!((state.balance, state.last_sequence, state.paused), (last.balance_after, last.sequence, last.paused));
                prop_assert!(!state.balance.is_negative());
            }
        }
    }

    /// Applying every input twice in a row gives the same entries and the
    /// same state as applying it once; the second application is a
    /// duplicate (or the same rejection).
    /// Prefetching is a hint: prefetching each input some inputs ahead
    /// (as the metering loop does), and inputs that never come, gives the
    /// same results and the same state as not prefetching at all.
    #[test]
    fn prefetching_changes_nothing(steps in steps(), ahead in 0usize..10) {
        let inputs = inputs(&steps);
        let (plain, plain_ledger) = run(&inputs);
        let mut ledger = Ledger::new(rates(), config());
        let mut results = Vec::new();
        for (offset, input) in inputs.iter().enumerate() {
            if let Some(next) = inputs.get(offset + ahead) {
                ledger.prefetch_input(next);
            }
            ledger.prefetch_ids("acct-never-seen", &uuid::Uuid::from_u128(offset as u128));
            results.push(ledger.apply(input, &source(offset), Epoch(1)));
        }
        prop_assert_eq!(results, plain);
        prop_assert_eq!(ledger.snapshot(), plain_ledger.snapshot());
    }

    /// Applying inputs by value (their strings moved into the entries)
    /// gives the same results and state as applying them borrowed.
    #[test]
    fn applying_owned_inputs_is_applying_borrowed_ones(steps in steps()) {
        let inputs = inputs(&steps);
        let (borrowed, borrowed_ledger) = run(&inputs);
        let mut ledger = Ledger::new(rates(), config());
        let owned: Vec<Applied> = inputs
            .iter()
            .enumerate()
            .map(|(offset, input)| ledger.apply_owned(input.clone(), &source(offset), Epoch(1)))
            .collect();
        prop_assert_eq!(owned, borrowed);
        prop_assert_eq!(ledger.snapshot(), borrowed_ledger.snapshot());
    }

    #[test]
    fn applying_twice_is_applying_once(steps in steps()) {
        let inputs = inputs(&steps);
        let (once, once_ledger) = run(&inputs);
        let mut twice_ledger = Ledger::new(rates(), config());
        let mut twice = Vec::new();
        for (offset, input) in inputs.iter().enumerate() {
            let first = twice_ledger.apply(input, &source(offset), Epoch(1));
            let second = twice_ledger.apply(input, &source(offset), Epoch(1));
            match &first {
                Applied::Entry { .. } => prop_assert_eq!(&second, &Applied::Duplicate),
                other => prop_assert_eq!(&second, other),
            }
            twice.push(first);
        }
        prop_assert_eq!(&twice, &once);
        prop_assert_eq!(twice_ledger.snapshot(), once_ledger.snapshot());
    }

    /// State is a function of the ledger: restoring every entry into a
    /// fresh ledger gives the same snapshot, and restoring again changes
    /// nothing.
    #[test]
    fn restore_rebuilds_the_same_state(steps in steps()) {
        let inputs = inputs(&steps);
        let (results, ledger) = run(&inputs);
        let entries = entries(&results);
        let mut rebuilt = Ledger::new(rates(), config());
        for entry in &entries {
            prop_assert!(rebuilt.restore(entry).is_ok());
        }
        prop_assert_eq!(rebuilt.snapshot(), ledger.snapshot());
        prop_assert_eq!(rebuilt.last_source_offset(), ledger.last_source_offset());
        for entry in &entries {
            prop_assert!(rebuilt.restore(entry).is_ok());
        }
        prop_assert_eq!(rebuilt.snapshot(), ledger.snapshot());
    }

    /// A replay after a crash: the state restored from the entries the
    /// first `cut` inputs wrote, then the inputs from there on again, give
    /// byte-identical entries and the same refusals (conflicting repeats
    /// included) as the run that never stopped.
    #[test]
    fn restore_then_replay_writes_the_same_bytes(steps in steps(), cut in 0usize..120) {
        let inputs = inputs(&steps);
        let cut = cut.min(inputs.len());
        let (uninterrupted, _) = run(&inputs);
        let mut restored = Ledger::new(rates(), config());
        for entry in entries(&uninterrupted[..cut]) {
            prop_assert!(restored.restore(&entry).is_ok());
        }
        let replayed: Vec<Applied> =
            inputs.iter().enumerate().skip(cut).map(|(o, i)| restored.apply(i, &source(o), Epoch(1))).collect();
        prop_assert_eq!(&replayed[..], &uninterrupted[cut..]);
        let encode = |entries: Vec<LedgerEntry>| -> Vec<Vec<u8>> {
            entries.iter().map(|e| Codec::global().encode(e).expect("entry encodes")).collect()
        };
        prop_assert_eq!(encode(entries(&replayed)), encode(entries(&uninterrupted[cut..])));
    }

    /// Snapshot (through JSON) at any point, resume, continue: the entries
    /// are byte-identical to an uninterrupted run.
    #[test]
    fn snapshot_resume_continues_identically(steps in steps(), cut in 0usize..120) {
        let inputs = inputs(&steps);
        let cut = cut.min(inputs.len());
        let (uninterrupted, whole) = run(&inputs);

        let mut first = Ledger::new(rates(), config());
        let mut results: Vec<Applied> = inputs[..cut].iter().enumerate().map(|(o, i)| first.apply(i, &source(o), Epoch(1))).collect();
        let json = serde_json::to_vec(&first.snapshot()).expect("snapshot serializes");
        let snapshot = serde_json::from_slice(&json).expect("snapshot deserializes");
        let mut resumed = Ledger::from_snapshot(rates(), config(), snapshot);
        results.extend(inputs.iter().enumerate().skip(cut).map(|(o, i)| resumed.apply(i, &source(o), Epoch(1))));

        prop_assert_eq!(&results, &uninterrupted);
        let encode = |entries: Vec<LedgerEntry>| -> Vec<Vec<u8>> {
            entries.iter().map(|e| Codec::global().encode(e).expect("entry encodes")).collect()
        };
        prop_assert_eq!(encode(entries(&results)), encode(entries(&uninterrupted)));
        prop_assert_eq!(resumed.snapshot(), whole.snapshot());
    }
}

/// The generator reaches every rule: each outcome below occurs in a fixed
/// sample of generated runs (so the properties above are not vacuous).
#[test]
fn generated_runs_reach_every_rule() {
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let steps = steps().new_tree(&mut runner).expect("a tree").current();
        let (results, _) = run(&inputs(&steps));
        for applied in &results {
            let key = match applied {
                Applied::Entry { entry, alerts } => {
                    for alert in alerts {
                        *seen.entry(format!("alert {:?}", alert.kind)).or_default() += 1;
                    }
                    format!("{:?} {:?} {}", entry.entry_type, entry.status, entry.reason)
                }
                Applied::Duplicate => "duplicate".to_string(),
                Applied::Rejected { reason, .. } => format!("rejected {reason}"),
            };
            *seen.entry(key).or_default() += 1;
        }
    }
    let expected = [
        "Open Success ".to_string(),
        "Add Success ".to_string(),
        "Consume Success ".to_string(),
        format!("Consume Failed {}", Reason::JobFailed),
        format!("Consume Failed {}", Reason::AccountPaused),
        format!("Consume Failed {}", Reason::InsufficientCredits),
        "Update Success ".to_string(),
        "Forfeit Success ".to_string(),
        "duplicate".to_string(),
        "alert LowBalance".to_string(),
        "alert Paused".to_string(),
        "alert Resumed".to_string(),
        format!("rejected {}", Reason::TooLate),
        format!("rejected {}", Reason::UnknownAccount),
        format!("rejected {}", Reason::AccountDeleted),
        format!("rejected {}", Reason::AccountExists),
        format!("rejected {}", Reason::InvalidQuantity),
        format!("rejected {}", Reason::InvalidAmount),
        format!("rejected {}", Reason::InvalidThreshold),
        format!("rejected {}", Reason::UnknownService),
        format!("rejected {}", Reason::UnitMismatch),
        format!("rejected {}", Reason::ConflictingDuplicate),
        format!("rejected {}", Reason::InvalidAccountId),
    ];
    println!("{seen:#?}");
    for key in expected {
        assert!(seen.contains_key(&key), "no {key:?} in {seen:#?}");
    }
}
