//! The ledger rules, one test per rule, with the numbers worked by hand in
//! the comments. Rates are the default `pipelines/rates.toml`: PAYG 0.12,
//! BASIC 0.10, PRO 0.08 dollars per credit.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_events::{
    records::{
        AccountChange, AccountChangeKind, AlertKind, CreditPurchase, EntryStatus, EntryType, Input, JobOutcome,
        LedgerEntry, PlanTier, Producer, SourceOffset, Unit, UsageEvent,
    },
    Codec,
};
use tally_events::{AccountId, Credits, Dollars, Epoch, Reason, Sequence};
use tally_ledger::{invariants, Applied, Ledger, LedgerConfig, RateTable, RestoreError, Violation};
use uuid::Uuid;

const DEFAULT_TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/rates.toml");

fn rates() -> Arc<RateTable> {
    Arc::new(RateTable::load(DEFAULT_TABLE).expect("default rate table loads"))
}

fn d(text: &str) -> Decimal {
    text.parse().expect("decimal literal")
}

fn c(text: &str) -> Credits {
    text.parse().expect("credits literal")
}

fn usd(text: &str) -> Dollars {
    text.parse().expect("dollars literal")
}

fn id(text: &str) -> AccountId {
    AccountId::new_unchecked(text)
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("instant literal")
}

/// A ledger plus an input offset counter and an id counter.
struct Fixture {
    ledger: Ledger,
    offset: i64,
    next_id: u128,
    /// Every entry applied, in order.
    entries: Vec<LedgerEntry>,
}

impl Fixture {
    fn new() -> Self {
        Self::with_config(LedgerConfig::default())
    }

    fn with_config(config: LedgerConfig) -> Self {
        Fixture { ledger: Ledger::new(rates(), config), offset: 0, next_id: 1, entries: Vec::new() }
    }

    fn id(&mut self) -> Uuid {
        self.next_id += 1;
        Uuid::from_u128(self.next_id)
    }

    fn apply(&mut self, input: &Input) -> Applied {
        let source = SourceOffset { topic: "tally.inputs".into(), partition: 3, offset: self.offset };
        self.offset += 1;
        let applied = self.ledger.apply(input, &source, Epoch(7));
        if let Applied::Entry { entry, .. } = &applied {
            self.entries.push(entry.clone());
        }
        applied
    }

    /// Applies and expects an entry.
    fn entry(&mut self, input: &Input) -> (LedgerEntry, Vec<AlertKind>) {
        match self.apply(input) {
            Applied::Entry { entry, alerts } => (entry, alerts.iter().map(|a| a.kind).collect()),
            other => panic!("expected an entry for {input:?}, got {other:?}"),
        }
    }

    /// Applies and expects a rejection with `reason`.
    fn rejected(&mut self, input: &Input, reason: Reason) -> String {
        match self.apply(input) {
            Applied::Rejected { reason: found, detail } => {
                assert_eq!(found, reason, "{detail}");
                detail
            }
            other => panic!("expected a rejection {reason}, got {other:?}"),
        }
    }

    fn change(&mut self, account: &str, kind: AccountChangeKind, tier: PlanTier, threshold: &str, when: &str) -> Input {
        Input::Account(AccountChange {
            change_id: self.id(),
            account_id: account.into(),
            kind,
            tier,
            low_balance_threshold: c(threshold),
            occurred_at: at(when),
            reason: None,
        })
    }

    fn open(&mut self, account: &str, tier: PlanTier, threshold: &str) -> Input {
        self.change(account, AccountChangeKind::Open, tier, threshold, "2026-02-01T09:00:00Z")
    }

    fn purchase(&mut self, account: &str, dollars: &str, when: &str) -> Input {
        Input::Purchase(CreditPurchase {
            purchase_id: self.id(),
            account_id: account.into(),
            amount_dollars: usd(dollars),
            occurred_at: at(when),
            payment_reference: Some("pi_123".into()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn usage_full(
        &mut self,
        account: &str,
        service: &str,
        engine: &str,
        quantity: &str,
        unit: Unit,
        outcome: JobOutcome,
        when: &str,
    ) -> Input {
        let id = self.id();
        Input::Usage(UsageEvent {
            event_id: id,
            account_id: account.into(),
            photo_event_id: "wedding-42".into(),
            booth_id: "booth-7".into(),
            job_id: format!("job-{id}"),
            service: service.into(),
            engine: engine.into(),
            quantity: d(quantity),
            unit,
            outcome,
            occurred_at: at(when),
            producer: Producer { worker: "worker-1".into(), version: "1.0.0".into() },
            attributes: Default::default(),
        })
    }

    fn usage(&mut self, account: &str, service: &str, engine: &str, quantity: &str, unit: Unit) -> Input {
        self.usage_full(account, service, engine, quantity, unit, JobOutcome::Succeeded, "2026-02-01T10:00:00Z")
    }

    /// Opens `account` on `tier` and buys `dollars` of credits.
    fn funded(&mut self, account: &str, tier: PlanTier, threshold: &str, dollars: &str) {
        let open = self.open(account, tier, threshold);
        self.entry(&open);
        let purchase = self.purchase(account, dollars, "2026-02-01T09:30:00Z");
        self.entry(&purchase);
    }
}

#[test]
fn open_writes_sequence_one_with_every_field() {
    let mut f = Fixture::new();
    let open = f.open("acct-1", PlanTier::Basic, "25.00");
    let (entry, alerts) = f.entry(&open);
    assert!(alerts.is_empty());
    assert_eq!(entry.entry_id, tally_ledger::ledger::entry_id(open.id()));
    assert_eq!(entry.entry_id.get_version_num(), 8);
    assert_ne!(entry.entry_id, open.id());
    assert_eq!(entry.account_id, "acct-1");
    assert_eq!((entry.sequence, entry.epoch), (Sequence(1), Epoch(7)));
    assert_eq!((entry.entry_type, entry.status, entry.reason.as_str()), (EntryType::Open, EntryStatus::Success, ""));
    assert_eq!(entry.input_id, open.id());
    assert_eq!(
        (entry.service.as_str(), entry.engine.as_str(), entry.photo_event_id.as_str(), entry.booth_id.as_str()),
        ("", "", "", "")
    );
    assert_eq!(entry.quantity, Decimal::ZERO);
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("0".into(), "0.00".into()));
    assert_eq!(entry.tier, PlanTier::Basic);
    assert_eq!(entry.rate_version, "2026-01");
    assert_eq!(entry.balance_after, Credits::ZERO);
    assert_eq!(entry.low_balance_threshold.to_string(), "25", "thresholds are normalized");
    assert!(!entry.paused);
    assert_eq!(entry.occurred_at, at("2026-02-01T09:00:00Z"));
    assert_eq!(entry.source, SourceOffset { topic: "tally.inputs".into(), partition: 3, offset: 0 });
    let state = f.ledger.account("acct-1").expect("opened");
    assert_eq!(
        (state.last_sequence, state.tier, state.paused, state.deleted),
        (Sequence(1), PlanTier::Basic, false, false)
    );
    assert_eq!(f.ledger.last_source_offset(), Some(0));
}

#[test]
fn open_is_refused_for_existing_deleted_or_bad_threshold() {
    let mut f = Fixture::new();
    let open = f.open("acct-1", PlanTier::Payg, "10");
    f.entry(&open);
    let again = f.open("acct-1", PlanTier::Pro, "10");
    f.rejected(&again, Reason::AccountExists);
    let negative = f.open("acct-2", PlanTier::Payg, "-1");
    f.rejected(&negative, Reason::InvalidThreshold);
    let delete = f.change("acct-1", AccountChangeKind::Delete, PlanTier::Payg, "0", "2026-02-02T00:00:00Z");
    f.entry(&delete);
    let reopen = f.open("acct-1", PlanTier::Payg, "10");
    f.rejected(&reopen, Reason::AccountDeleted);
    // Rejections change nothing: no offset recorded for them.
    assert_eq!(f.ledger.last_source_offset(), Some(3));
}

#[test]
fn inputs_for_unknown_or_deleted_accounts_are_refused() {
    let mut f = Fixture::new();
    let usage = f.usage("ghost", "sms", "standard", "1", Unit::Message);
    f.rejected(&usage, Reason::UnknownAccount);
    let purchase = f.purchase("ghost", "10.00", "2026-02-01T10:00:00Z");
    f.rejected(&purchase, Reason::UnknownAccount);
    let update = f.change("ghost", AccountChangeKind::Update, PlanTier::Pro, "0", "2026-02-01T10:00:00Z");
    f.rejected(&update, Reason::UnknownAccount);
    let delete = f.change("ghost", AccountChangeKind::Delete, PlanTier::Pro, "0", "2026-02-01T10:00:00Z");
    f.rejected(&delete, Reason::UnknownAccount);

    f.funded("gone", PlanTier::Payg, "0", "12.00");
    let delete = f.change("gone", AccountChangeKind::Delete, PlanTier::Payg, "0", "2026-02-01T11:00:00Z");
    f.entry(&delete);
    let usage = f.usage("gone", "sms", "standard", "1", Unit::Message);
    f.rejected(&usage, Reason::AccountDeleted);
    let purchase = f.purchase("gone", "10.00", "2026-02-01T12:00:00Z");
    f.rejected(&purchase, Reason::AccountDeleted);
    let update = f.change("gone", AccountChangeKind::Update, PlanTier::Pro, "0", "2026-02-01T12:00:00Z");
    f.rejected(&update, Reason::AccountDeleted);
    let delete = f.change("gone", AccountChangeKind::Delete, PlanTier::Pro, "0", "2026-02-01T12:00:00Z");
    f.rejected(&delete, Reason::AccountDeleted);
    assert!(f.ledger.account("gone").expect("tombstone kept").deleted);
}

#[test]
fn purchases_buy_credits_at_the_tier_price_truncated() {
    let mut f = Fixture::new();
    for (account, tier) in [("payg", PlanTier::Payg), ("basic", PlanTier::Basic), ("pro", PlanTier::Pro)] {
        let open = f.open(account, tier, "0");
        f.entry(&open);
    }
    // PAYG: $25.00 / 0.12 = 208.3333… → 208.3333 credits.
    let purchase = f.purchase("payg", "25.00", "2026-02-01T10:00:00Z");
    let (entry, alerts) = f.entry(&purchase);
    assert!(alerts.is_empty());
    assert_eq!((entry.entry_type, entry.status, entry.sequence), (EntryType::Add, EntryStatus::Success, Sequence(2)));
    assert_eq!(entry.credits.to_string(), "208.3333");
    assert_eq!(entry.dollars.to_string(), "25.00");
    assert_eq!(entry.balance_after.to_string(), "208.3333");
    assert_eq!(entry.rate_version, "2026-01");
    // BASIC: $25.00 / 0.10 = 250 credits.
    let purchase = f.purchase("basic", "25", "2026-02-01T10:00:00Z");
    let (entry, _) = f.entry(&purchase);
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("250".into(), "25.00".into()));
    // PRO: $0.01 / 0.08 = 0.125 credits.
    let purchase = f.purchase("pro", "0.01", "2026-02-01T10:00:00Z");
    let (entry, _) = f.entry(&purchase);
    assert_eq!(entry.credits.to_string(), "0.125");
    // A second PAYG purchase adds: 208.3333 + $10.00 / 0.12 (83.3333) = 291.6666.
    let purchase = f.purchase("payg", "10.00", "2026-02-01T11:00:00Z");
    let (entry, _) = f.entry(&purchase);
    assert_eq!(entry.balance_after.to_string(), "291.6666");
}

#[test]
fn invalid_purchase_amounts_are_refused() {
    let mut f = Fixture::new();
    let open = f.open("acct", PlanTier::Payg, "0");
    f.entry(&open);
    for amount in ["0", "-5.00", "10.001", "100000000.01"] {
        let purchase = f.purchase("acct", amount, "2026-02-01T10:00:00Z");
        f.rejected(&purchase, Reason::InvalidAmount);
    }
    // Trailing zeros are fine: 10.000 is $10.00.
    let purchase = f.purchase("acct", "10.000", "2026-02-01T10:00:00Z");
    let (entry, _) = f.entry(&purchase);
    assert_eq!(entry.dollars.to_string(), "10.00");
    // Before the first rate version, a purchase has no price (a fresh
    // partition: here the 2026-02 inputs would make 2025 too late).
    let mut f = Fixture::new();
    let early = Input::Account(AccountChange {
        change_id: f.id(),
        account_id: "early".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::ZERO,
        occurred_at: at("2025-12-30T00:00:00Z"),
        reason: None,
    });
    let (entry, _) = f.entry(&early);
    assert_eq!(entry.rate_version, "", "no version in force yet");
    let purchase = f.purchase("early", "10.00", "2025-12-31T00:00:00Z");
    f.rejected(&purchase, Reason::NoRateVersion);
}

#[test]
fn usage_is_priced_exactly_and_debited() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "25.00"); // 208.3333 credits
                                                    // Kling: 7.5 s × 2 credits/s = 15 credits; × 0.12 = $1.80.
    let usage = f.usage("acct", "ai_image_to_video", "kling", "7.5", Unit::VideoSecond);
    let (entry, alerts) = f.entry(&usage);
    assert!(alerts.is_empty());
    assert_eq!((entry.entry_type, entry.status, entry.reason.as_str()), (EntryType::Consume, EntryStatus::Success, ""));
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("15".into(), "1.80".into()));
    assert_eq!(entry.signed_credits(), c("-15"));
    assert_eq!(entry.balance_after.to_string(), "193.3333"); // 208.3333 − 15
    assert_eq!(entry.sequence, Sequence(3));
    assert_eq!((entry.service.as_str(), entry.engine.as_str()), ("ai_image_to_video", "kling"));
    assert_eq!((entry.photo_event_id.as_str(), entry.booth_id.as_str()), ("wedding-42", "booth-7"));
    assert_eq!(entry.quantity.to_string(), "7.5");
    assert_eq!(entry.rate_version, "2026-01");
    // SMS: 3 × 0.05 = 0.15 credits; × 0.12 = $0.0180 → $0.02.
    let usage = f.usage("acct", "sms", "standard", "3", Unit::Message);
    let (entry, _) = f.entry(&usage);
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("0.15".into(), "0.02".into()));
    assert_eq!(entry.balance_after.to_string(), "193.1833");
    // Seedance: 3.333 s × 1.5 = 4.9995 credits, never rounded; × 0.12 = $0.59994 → $0.60.
    let usage = f.usage("acct", "ai_image_to_video", "seedance", "3.333", Unit::VideoSecond);
    let (entry, _) = f.entry(&usage);
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("4.9995".into(), "0.60".into()));
    assert_eq!(entry.balance_after.to_string(), "188.1838");
    // Quantity 2.000 is 2 after normalizing: Nano Banana 2 × 4 = 8 credits = $0.96.
    let usage = f.usage("acct", "ai_modify", "nano_banana_2", "2.000", Unit::Image);
    let (entry, _) = f.entry(&usage);
    assert_eq!(
        (entry.quantity.to_string(), entry.credits.to_string(), entry.dollars.to_string()),
        ("2".into(), "8".into(), "0.96".into())
    );
}

#[test]
fn dollars_round_half_even_at_the_account_tier() {
    let mut f = Fixture::new();
    f.funded("basic", PlanTier::Basic, "0", "10.00"); // 100 credits
                                                      // 5 SMS = 0.25 credits × 0.10 = $0.025: a midpoint, to the even cent $0.02.
    let usage = f.usage("basic", "sms", "standard", "5", Unit::Message);
    assert_eq!(f.entry(&usage).0.dollars.to_string(), "0.02");
    // 7 SMS = 0.35 credits × 0.10 = $0.035 → $0.04 (even).
    let usage = f.usage("basic", "sms", "standard", "7", Unit::Message);
    assert_eq!(f.entry(&usage).0.dollars.to_string(), "0.04");
    f.funded("pro", PlanTier::Pro, "0", "10.00"); // 125 credits
                                                  // Kling 7.5 s = 15 credits × 0.08 = $1.20; SMS 3 = 0.15 × 0.08 = $0.012 → $0.01.
    let usage = f.usage("pro", "ai_image_to_video", "kling", "7.5", Unit::VideoSecond);
    assert_eq!(f.entry(&usage).0.dollars.to_string(), "1.20");
    let usage = f.usage("pro", "sms", "standard", "3", Unit::Message);
    assert_eq!(f.entry(&usage).0.dollars.to_string(), "0.01");
}

#[test]
fn the_rate_version_in_force_at_occurred_at_prices_the_usage() {
    let mut f = Fixture::new();
    // 1000 credits. GPT-Image 2: 6 credits until 2026-07-01, 7 from then
    // ($0.72 → $0.84).
    f.funded("acct", PlanTier::Payg, "0", "120.00");
    let before = f.usage_full(
        "acct",
        "ai_modify",
        "gpt_image_2",
        "1",
        Unit::Image,
        JobOutcome::Succeeded,
        "2026-06-30T23:59:59.999Z",
    );
    let (entry, _) = f.entry(&before);
    assert_eq!(
        (entry.credits, entry.dollars.to_string(), entry.rate_version.as_str()),
        (c("6"), "0.72".into(), "2026-01")
    );
    let after = f.usage_full(
        "acct",
        "ai_modify",
        "gpt_image_2",
        "1",
        Unit::Image,
        JobOutcome::Succeeded,
        "2026-07-01T00:00:00Z",
    );
    let (entry, _) = f.entry(&after);
    assert_eq!(
        (entry.credits, entry.dollars.to_string(), entry.rate_version.as_str()),
        (c("7"), "0.84".into(), "2026-07")
    );
    // Sora: 10 s × 4.5 = 45 credits in 2026-07 (it was 5/s).
    let sora = f.usage_full(
        "acct",
        "ai_image_to_video",
        "sora",
        "10",
        Unit::VideoSecond,
        JobOutcome::Succeeded,
        "2026-07-02T00:00:00Z",
    );
    assert_eq!(f.entry(&sora).0.credits, c("45"));
}

#[test]
fn invalid_usage_is_refused_with_its_reason() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    for quantity in ["0", "-1", "1.2345", "1000001"] {
        let usage = f.usage("acct", "sms", "standard", quantity, Unit::Message);
        f.rejected(&usage, Reason::InvalidQuantity);
    }
    let usage = f.usage("acct", "ai_modify", "dall_e", "1", Unit::Image);
    let detail = f.rejected(&usage, Reason::UnknownService);
    assert!(detail.contains("ai_modify/dall_e"), "{detail}");
    let usage = f.usage("acct", "ai_image_to_video", "kling", "3", Unit::Image);
    let detail = f.rejected(&usage, Reason::UnitMismatch);
    assert!(detail.contains("video_second"), "{detail}");
    // A failed job with an unknown service is still refused, not recorded.
    let usage = f.usage_full("acct", "nope", "nope", "1", Unit::Image, JobOutcome::Failed, "2026-02-01T10:00:00Z");
    f.rejected(&usage, Reason::UnknownService);
    // Nothing changed: sequence is still 2, balance 100.
    let state = f.ledger.account("acct").expect("exists");
    assert_eq!((state.last_sequence, state.balance), (Sequence(2), c("100")));
}

#[test]
fn usage_before_any_rate_version_is_refused() {
    let mut f = Fixture::new();
    let open = Input::Account(AccountChange {
        change_id: f.id(),
        account_id: "early".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::ZERO,
        occurred_at: at("2025-12-30T00:00:00Z"),
        reason: None,
    });
    f.entry(&open);
    let usage =
        f.usage_full("early", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2025-12-31T23:59:59Z");
    f.rejected(&usage, Reason::NoRateVersion);
}

#[test]
fn failed_jobs_are_recorded_and_not_charged() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00"); // 100 credits
    let usage =
        f.usage_full("acct", "ai_modify", "gpt_image_2", "2", Unit::Image, JobOutcome::Failed, "2026-02-01T10:00:00Z");
    let (entry, alerts) = f.entry(&usage);
    assert!(alerts.is_empty());
    assert_eq!(
        (entry.entry_type, entry.status, entry.reason.as_str()),
        (EntryType::Consume, EntryStatus::Failed, Reason::JobFailed.code())
    );
    // The would-be charge stays visible: 2 × 6 = 12 credits = $1.44.
    assert_eq!((entry.credits, entry.dollars.to_string()), (c("12"), "1.44".into()));
    assert_eq!(entry.signed_credits(), Credits::ZERO);
    assert_eq!(entry.balance_after, c("100"));
}

#[test]
fn insufficient_credits_pause_until_a_purchase_resumes() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "1.20"); // 10 credits
                                                   // Sora 3 s × 5 = 15 credits > 10: refused, account paused.
    let usage = f.usage("acct", "ai_image_to_video", "sora", "3", Unit::VideoSecond);
    let (entry, alerts) = f.entry(&usage);
    assert_eq!((entry.status, entry.reason.as_str()), (EntryStatus::Failed, Reason::InsufficientCredits.code()));
    assert_eq!((entry.credits, entry.dollars.to_string()), (c("15"), "1.80".into()));
    assert_eq!((entry.balance_after, entry.paused), (c("10"), true));
    assert_eq!(alerts, [AlertKind::Paused]);
    // While paused even an affordable usage is refused, with no new alert.
    let usage = f.usage("acct", "background_removal", "standard", "1", Unit::Image);
    let (entry, alerts) = f.entry(&usage);
    assert_eq!((entry.status, entry.reason.as_str()), (EntryStatus::Failed, Reason::AccountPaused.code()));
    assert!(alerts.is_empty());
    assert_eq!(entry.balance_after, c("10"));
    // A failed job on a paused account is recorded as a failed job.
    let usage = f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Failed, "2026-02-01T10:00:00Z");
    assert_eq!(f.entry(&usage).0.reason, Reason::JobFailed.code());
    // An update keeps the account paused.
    let update = f.change("acct", AccountChangeKind::Update, PlanTier::Basic, "0", "2026-02-01T10:30:00Z");
    assert!(f.entry(&update).0.paused);
    // A purchase resumes: $1.00 / 0.10 (now BASIC) = 10 credits → 20.
    let purchase = f.purchase("acct", "1.00", "2026-02-01T11:00:00Z");
    let (entry, alerts) = f.entry(&purchase);
    assert_eq!((entry.balance_after, entry.paused), (c("20"), false));
    assert_eq!(alerts, [AlertKind::Resumed]);
    // And usage is charged again: Sora 3 s = 15 credits → 5.
    let usage = f.usage("acct", "ai_image_to_video", "sora", "3", Unit::VideoSecond);
    let (entry, _) = f.entry(&usage);
    assert_eq!((entry.status, entry.balance_after), (EntryStatus::Success, c("5")));
    invariants::check_account(&f.entries.iter().filter(|e| e.account_id == "acct").cloned().collect::<Vec<_>>())
        .expect("invariants hold");
}

#[test]
fn reaching_exactly_zero_pauses_and_low_balance_comes_first() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "5", "1.20"); // 10 credits, threshold 5
                                                   // Face Switch × 5 = 10 credits: balance 10 → 0, crosses 5 and hits 0.
    let usage = f.usage("acct", "face_switch", "standard", "5", Unit::Image);
    let (entry, alerts) = f.entry(&usage);
    assert_eq!((entry.status, entry.balance_after, entry.paused), (EntryStatus::Success, Credits::ZERO, true));
    assert_eq!(alerts, [AlertKind::LowBalance, AlertKind::Paused]);
}

#[test]
fn low_balance_alerts_once_per_crossing() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Pro, "50", "8.00"); // $8.00 / 0.08 = 100 credits, threshold 50
    let step = |f: &mut Fixture, credits: &str| {
        // Background Removal: 1 credit per image.
        let usage = f.usage("acct", "background_removal", "standard", credits, Unit::Image);
        let (entry, alerts) = f.entry(&usage);
        (entry.balance_after, alerts)
    };
    assert_eq!(step(&mut f, "40"), (c("60"), vec![])); // 100 → 60: above
    assert_eq!(step(&mut f, "10"), (c("50"), vec![])); // 60 → 50: at the threshold is not below
    assert_eq!(step(&mut f, "5"), (c("45"), vec![AlertKind::LowBalance])); // 50 → 45: crossed
    assert_eq!(step(&mut f, "15"), (c("30"), vec![])); // still below: no second alert
    let purchase = f.purchase("acct", "4.00", "2026-02-01T12:00:00Z"); // + 50 → 80
    let (entry, alerts) = f.entry(&purchase);
    assert_eq!((entry.balance_after, alerts), (c("80"), vec![]));
    assert_eq!(step(&mut f, "40"), (c("40"), vec![AlertKind::LowBalance])); // re-armed, crossed again
                                                                            // A failed charge crosses nothing.
    let usage = f.usage_full(
        "acct",
        "background_removal",
        "standard",
        "39",
        Unit::Image,
        JobOutcome::Failed,
        "2026-02-01T13:00:00Z",
    );
    assert!(f.entry(&usage).1.is_empty());
}

#[test]
fn alerts_carry_deterministic_ids_and_the_entry_numbers() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "5", "1.20");
    let usage = f.usage("acct", "face_switch", "standard", "5", Unit::Image);
    let Applied::Entry { entry, alerts } = f.apply(&usage) else { panic!("expected an entry") };
    assert_eq!(alerts.len(), 2);
    for alert in &alerts {
        let code = match alert.kind {
            AlertKind::LowBalance => "LOW_BALANCE",
            AlertKind::Paused => "PAUSED",
            AlertKind::Resumed => "RESUMED",
        };
        assert_eq!(alert.alert_id, Uuid::new_v5(&entry.entry_id, code.as_bytes()));
        assert_eq!(alert.account_id, "acct");
        assert_eq!((alert.sequence, alert.balance, alert.threshold), (entry.sequence, Credits::ZERO, c("5")));
        assert_eq!(alert.occurred_at, entry.occurred_at);
        assert!(!alert.message.is_empty());
    }
    assert_ne!(alerts[0].alert_id, alerts[1].alert_id);
    assert_eq!(alerts[0].message, "Balance of 0 credits fell below the low-balance threshold of 5 credits.");
}

#[test]
fn update_sets_tier_and_threshold_and_keeps_credits() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "10", "12.00"); // 100 credits
    let update = f.change("acct", AccountChangeKind::Update, PlanTier::Pro, "30.5", "2026-02-01T10:00:00Z");
    let (entry, alerts) = f.entry(&update);
    assert!(alerts.is_empty());
    assert_eq!(
        (entry.entry_type, entry.status, entry.sequence),
        (EntryType::Update, EntryStatus::Success, Sequence(3))
    );
    assert_eq!((entry.credits, entry.dollars.to_string()), (Credits::ZERO, "0.00".into()));
    assert_eq!((entry.tier, entry.low_balance_threshold, entry.balance_after), (PlanTier::Pro, c("30.5"), c("100")));
    // The new tier prices the next usage: Kling 7.5 s = 15 credits × 0.08 = $1.20.
    let usage = f.usage("acct", "ai_image_to_video", "kling", "7.5", Unit::VideoSecond);
    assert_eq!(f.entry(&usage).0.dollars.to_string(), "1.20");
    let bad = f.change("acct", AccountChangeKind::Update, PlanTier::Pro, "-0.01", "2026-02-01T11:00:00Z");
    f.rejected(&bad, Reason::InvalidThreshold);
}

#[test]
fn delete_forfeits_the_balance_and_leaves_a_tombstone() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "25.00"); // 208.3333 credits
    let delete = f.change("acct", AccountChangeKind::Delete, PlanTier::Pro, "99", "2026-03-01T00:00:00Z");
    let (entry, alerts) = f.entry(&delete);
    assert!(alerts.is_empty());
    assert_eq!((entry.entry_type, entry.status), (EntryType::Forfeit, EntryStatus::Success));
    // 208.3333 credits × 0.12 = $24.999996 → $25.00; the change's tier and threshold are ignored.
    assert_eq!((entry.credits.to_string(), entry.dollars.to_string()), ("208.3333".into(), "25.00".into()));
    assert_eq!(
        (entry.balance_after, entry.tier, entry.low_balance_threshold),
        (Credits::ZERO, PlanTier::Payg, Credits::ZERO)
    );
    assert_eq!(entry.rate_version, "2026-01");
    assert_eq!(entry.signed_credits(), c("-208.3333"));
    let state = f.ledger.account("acct").expect("tombstone");
    assert!(state.deleted);
    assert_eq!(f.ledger.stats().deleted_accounts, 1);
}

#[test]
fn delete_before_any_rate_version_forfeits_at_zero_dollars() {
    let mut f = Fixture::new();
    let open = Input::Account(AccountChange {
        change_id: f.id(),
        account_id: "early".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::ZERO,
        occurred_at: at("2025-12-30T00:00:00Z"),
        reason: None,
    });
    f.entry(&open);
    let delete = f.change("early", AccountChangeKind::Delete, PlanTier::Payg, "0", "2025-12-31T00:00:00Z");
    let (entry, _) = f.entry(&delete);
    assert_eq!(
        (entry.credits, entry.dollars.to_string(), entry.rate_version.as_str()),
        (Credits::ZERO, "0.00".into(), "")
    );
}

#[test]
fn duplicates_change_nothing() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let usage = f.usage("acct", "sms", "standard", "1", Unit::Message);
    f.entry(&usage);
    let before = f.ledger.snapshot();
    assert_eq!(f.apply(&usage), Applied::Duplicate);
    assert_eq!(f.apply(&usage), Applied::Duplicate);
    assert_eq!(f.ledger.snapshot(), before);
    assert_eq!(f.ledger.stats().duplicates_seen, 2);
    // Same for every kind of input.
    let open = f.entries[0].input_id;
    let replay_open = Input::Account(AccountChange {
        change_id: open,
        account_id: "acct".into(),
        kind: AccountChangeKind::Open,
        tier: PlanTier::Payg,
        low_balance_threshold: Credits::ZERO,
        occurred_at: at("2026-02-01T09:00:00Z"),
        reason: None,
    });
    assert_eq!(f.apply(&replay_open), Applied::Duplicate);
}

#[test]
fn a_reused_id_with_other_content_is_refused_and_named() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let usage = f.usage("acct", "ai_image_to_video", "kling", "5", Unit::VideoSecond);
    f.entry(&usage);
    let before = f.ledger.snapshot();
    let Input::Usage(original) = &usage else { unreachable!() };
    // Another quantity and another engine under the same event id.
    let mut other = original.clone();
    other.quantity = d("50");
    other.engine = "sora".into();
    let detail = f.rejected(&Input::Usage(other), Reason::ConflictingDuplicate);
    assert!(detail.contains("engine, quantity/unit differ"), "{detail}");
    assert!(detail.contains(&original.event_id.to_string()), "{detail}");
    // Only metadata differs, or the same value written differently: a duplicate.
    let mut retry = original.clone();
    retry.producer.worker = "worker-9".into();
    retry.quantity = d("5.000");
    assert_eq!(f.apply(&Input::Usage(retry)), Applied::Duplicate);
    // A purchase id reused with another amount.
    let Input::Purchase(mut purchase) = f.purchase("acct", "10.00", "2026-02-01T10:05:00Z") else { unreachable!() };
    f.entry(&Input::Purchase(purchase.clone()));
    let after_purchase = f.ledger.snapshot();
    purchase.amount_dollars = usd("1000.00");
    let detail = f.rejected(&Input::Purchase(purchase), Reason::ConflictingDuplicate);
    assert!(detail.contains("amount_dollars differ"), "{detail}");
    assert_eq!(f.ledger.snapshot(), after_purchase, "the first purchase stands, the balance is unchanged");
    assert_ne!(before, after_purchase);
}

#[test]
fn a_restored_state_still_tells_duplicates_from_conflicts() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let usage = f.usage("acct", "sms", "standard", "2", Unit::Message);
    f.entry(&usage);
    let mut restored = Ledger::new(rates(), LedgerConfig::default());
    for entry in &f.entries {
        restored.restore(entry).expect("restores");
    }
    let source = SourceOffset { topic: "tally.inputs".into(), partition: 3, offset: 99 };
    assert_eq!(restored.apply(&usage, &source, Epoch(8)), Applied::Duplicate);
    let Input::Usage(mut other) = usage.clone() else { unreachable!() };
    other.quantity = d("3");
    let conflict = restored.apply(&Input::Usage(other.clone()), &source, Epoch(8));
    assert!(matches!(conflict, Applied::Rejected { reason, .. } if reason == Reason::ConflictingDuplicate));
    // Entries written before digests (ledger entry v2) record none: a
    // repeat of their id is taken for a duplicate, as before.
    let mut legacy = Ledger::new(rates(), LedgerConfig::default());
    for entry in &f.entries {
        legacy.restore(&LedgerEntry { input_digest: None, ..entry.clone() }).expect("restores");
    }
    assert_eq!(legacy.apply(&Input::Usage(other), &source, Epoch(8)), Applied::Duplicate);
}

#[test]
fn quantities_have_the_digits_their_unit_allows() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "120.00");
    // Whole images and messages; video seconds to the millisecond.
    for (service, engine, quantity, unit) in [
        ("background_removal", "standard", "1.5", Unit::Image),
        ("sms", "standard", "2.25", Unit::Message),
        ("ai_image_to_video", "kling", "7.0005", Unit::VideoSecond),
    ] {
        let usage = f.usage("acct", service, engine, quantity, unit);
        let detail = f.rejected(&usage, Reason::InvalidQuantity);
        assert!(detail.contains(quantity) && detail.contains(unit.code()), "{detail}");
    }
    for (service, engine, quantity, unit) in [
        ("background_removal", "standard", "2", Unit::Image),
        ("background_removal", "standard", "1.0", Unit::Image),
        ("sms", "standard", "3", Unit::Message),
        ("ai_image_to_video", "kling", "7.125", Unit::VideoSecond),
    ] {
        let usage = f.usage("acct", service, engine, quantity, unit);
        f.entry(&usage);
    }
}

#[test]
fn account_ids_and_identifiers_are_bounded_text() {
    let mut f = Fixture::new();
    let long = "a".repeat(5_000);
    for bad in ["", "acct\n1", "acct\u{7f}", long.as_str()] {
        let open = f.open(bad, PlanTier::Payg, "0");
        let detail = f.rejected(&open, Reason::InvalidAccountId);
        assert!(detail.len() < 250, "the detail quotes a bounded part: {} bytes", detail.len());
        let purchase = f.purchase(bad, "10.00", "2026-02-01T10:00:00Z");
        f.rejected(&purchase, Reason::InvalidAccountId);
    }
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let Input::Usage(mut usage) = f.usage("acct", "sms", "standard", "1", Unit::Message) else { unreachable!() };
    usage.photo_event_id = long.clone();
    let detail = f.rejected(&Input::Usage(usage.clone()), Reason::InvalidIdentifier);
    assert!(detail.starts_with("photo_event_id") && detail.contains("5000 bytes"), "{detail}");
    usage.photo_event_id = String::new();
    usage.booth_id = "booth\r7".into();
    let detail = f.rejected(&Input::Usage(usage.clone()), Reason::InvalidIdentifier);
    assert!(detail.starts_with("booth_id"), "{detail}");
    usage.booth_id = String::new();
    f.entry(&Input::Usage(usage));
}

#[test]
fn thresholds_are_bounded() {
    let mut f = Fixture::new();
    for threshold in ["-1", "0.00001", "1000000000000001"] {
        let open = f.open("acct", PlanTier::Payg, threshold);
        f.rejected(&open, Reason::InvalidThreshold);
    }
    let open = f.open("acct", PlanTier::Payg, "12.3456");
    f.entry(&open);
}

#[test]
fn inputs_older_than_the_window_are_too_late() {
    let mut f = Fixture::with_config(LedgerConfig { dedup_window: TimeDelta::hours(1) });
    let open = f.change("acct", AccountChangeKind::Open, PlanTier::Payg, "0", "2026-02-01T10:00:00Z");
    f.entry(&open);
    let purchase = f.purchase("acct", "12.00", "2026-02-01T12:00:00Z");
    f.entry(&purchase);
    // Newest applied is 12:00: 11:00 is the edge (kept), 10:59:59.999 is too late.
    let edge =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-02-01T11:00:00Z");
    f.entry(&edge);
    let late =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-02-01T10:59:59.999Z");
    let detail = f.rejected(&late, Reason::TooLate);
    assert!(detail.contains("3600 s"), "{detail}");
    // Too late wins over duplicate: the OPEN (10:00) replayed is too late, not a duplicate.
    f.rejected(&open, Reason::TooLate);
    // The OPEN's id was pruned, the edge one is kept.
    assert_eq!(f.ledger.stats().dedup_ids, 2);
    let ids: Vec<Uuid> = f.ledger.snapshot().dedup.iter().map(|id| id.input_id).collect();
    assert_eq!(ids, [edge.id(), purchase.id()], "sorted by occurred_at");
}

#[test]
fn a_too_late_detail_names_the_window_in_days() {
    let mut f = Fixture::new(); // the default 7-day window
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let newest =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-03-01T00:00:00Z");
    f.entry(&newest);
    let late =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-02-01T00:00:00Z");
    let detail = f.rejected(&late, Reason::TooLate);
    assert!(detail.contains("more than 7 days before"), "{detail}");
}

#[test]
fn out_of_order_inputs_within_the_window_apply() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let later =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-02-03T00:00:00Z");
    f.entry(&later);
    let earlier =
        f.usage_full("acct", "sms", "standard", "1", Unit::Message, JobOutcome::Succeeded, "2026-02-02T00:00:00Z");
    let (entry, _) = f.entry(&earlier);
    assert_eq!(entry.sequence, Sequence(4), "sequence follows application order, not occurred_at");
    assert_eq!(f.ledger.newest_occurred_at(), Some(at("2026-02-03T00:00:00Z")));
}

/// A fixed script touching every rule.
fn script(f: &mut Fixture) -> Vec<Input> {
    let mut inputs = vec![
        f.open("a", PlanTier::Payg, "20"),
        f.open("b", PlanTier::Pro, "0"),
        f.purchase("a", "25.00", "2026-02-01T10:00:00Z"),
        f.usage("a", "ai_image_to_video", "kling", "7.5", Unit::VideoSecond),
        f.usage("b", "sms", "standard", "3", Unit::Message),
        f.purchase("b", "3.33", "2026-02-01T11:00:00Z"),
        f.usage("b", "ai_modify", "gpt_image_2", "7", Unit::Image),
        f.usage_full("a", "ai_modify", "gpt_image_2", "30", Unit::Image, JobOutcome::Succeeded, "2026-07-01T00:00:00Z"),
        f.change("a", AccountChangeKind::Update, PlanTier::Basic, "10", "2026-07-01T01:00:00Z"),
        f.purchase("a", "100.00", "2026-07-01T02:00:00Z"),
        f.change("b", AccountChangeKind::Delete, PlanTier::Pro, "0", "2026-07-01T03:00:00Z"),
    ];
    let duplicate = inputs[9].clone();
    inputs.push(duplicate);
    inputs
}

#[test]
fn same_state_and_inputs_give_byte_identical_entries() {
    let run = || {
        let mut f = Fixture::new();
        let inputs = script(&mut f);
        let mut bytes = Vec::new();
        for input in &inputs {
            if let Applied::Entry { entry, alerts } = f.apply(input) {
                bytes.push(Codec::global().encode(&entry).expect("entry encodes"));
                for alert in &alerts {
                    bytes.push(Codec::global().encode(alert).expect("alert encodes"));
                }
            }
        }
        (bytes, f.ledger.snapshot())
    };
    let (first, first_state) = run();
    let (second, second_state) = run();
    // 11 entries; alerts: b PAUSED (0.15 > 0), b RESUMED ($3.33 / 0.08 = 41.625),
    // b PAUSED (42 > 41.625), a PAUSED (210 > 193.3333), a RESUMED.
    assert_eq!(first.len(), 16, "11 entries and 5 alerts");
    assert_eq!(first, second);
    assert_eq!(first_state, second_state);
    let json = |s| serde_json::to_vec(&s).expect("snapshot serializes");
    assert_eq!(json(first_state), json(second_state));
}

#[test]
fn entries_round_trip_through_the_codec() {
    let mut f = Fixture::new();
    for input in script(&mut f) {
        if let Applied::Entry { entry, .. } = f.apply(&input) {
            let bytes = Codec::global().encode(&entry).expect("encodes");
            let back: LedgerEntry = Codec::global().decode(&bytes).expect("decodes");
            assert_eq!(back, entry);
            assert_eq!(back.credits.to_string(), entry.credits.to_string(), "scale kept");
        }
    }
}

#[test]
fn restore_rebuilds_the_same_state_and_ignores_entries_already_reflected() {
    let mut f = Fixture::new();
    for input in script(&mut f) {
        f.apply(&input);
    }
    let mut rebuilt = Ledger::new(rates(), LedgerConfig::default());
    for entry in &f.entries {
        rebuilt.restore(entry).expect("a valid ledger restores");
    }
    assert_eq!(rebuilt.snapshot(), f.ledger.snapshot());
    assert_eq!(rebuilt.last_source_offset(), f.ledger.last_source_offset());
    // Restoring everything again changes nothing.
    for entry in &f.entries {
        rebuilt.restore(entry).expect("already reflected: ignored");
    }
    assert_eq!(rebuilt.snapshot(), f.ledger.snapshot());
    // And the rebuilt ledger knows the recent inputs: the same script
    // (same ids) replayed gives a duplicate for the last one.
    let inputs = script(&mut Fixture::new());
    let source = SourceOffset { topic: "tally.inputs".into(), partition: 3, offset: 99 };
    assert_eq!(rebuilt.apply(&inputs[10], &source, Epoch(8)), Applied::Duplicate);
}

#[test]
fn restore_refuses_a_broken_ledger() {
    let mut f = Fixture::new();
    f.funded("acct", PlanTier::Payg, "0", "12.00");
    let usage = f.usage("acct", "sms", "standard", "1", Unit::Message);
    f.entry(&usage);
    let delete = f.change("acct", AccountChangeKind::Delete, PlanTier::Payg, "0", "2026-02-02T00:00:00Z");
    f.entry(&delete);
    let [open, purchase, consume, forfeit] = <[LedgerEntry; 4]>::try_from(f.entries.clone()).expect("four entries");
    let fresh = || Ledger::new(rates(), LedgerConfig::default());

    // Not opened first.
    let error = fresh().restore(&purchase).expect_err("no OPEN");
    assert!(matches!(error, RestoreError::NotOpened { sequence: Sequence(2), .. }), "{error}");
    // A gap: 1 then 3.
    let mut ledger = fresh();
    ledger.restore(&open).expect("open");
    let error = ledger.restore(&consume).expect_err("gap");
    assert_eq!(
        error,
        RestoreError::Invariant(Violation::SequenceGap {
            account_id: id("acct"),
            previous: Sequence(1),
            found: Sequence(3)
        })
    );
    assert!(error.to_string().contains("sequence 3 follows 1, expected 2"), "{error}");
    // A broken balance chain: 100 credits added but balance_after 101.
    let mut forged = purchase.clone();
    forged.balance_after = c("101");
    let error = ledger.restore(&forged).expect_err("chain");
    assert!(matches!(error, RestoreError::Invariant(Violation::BalanceChain { .. })), "{error}");
    // A negative balance.
    ledger.restore(&purchase).expect("purchase");
    let mut forged = consume.clone();
    forged.credits = c("150");
    forged.balance_after = c("-50");
    let error = ledger.restore(&forged).expect_err("negative");
    assert!(matches!(error, RestoreError::Invariant(Violation::NegativeBalance { .. })), "{error}");
    // A debit while paused.
    let mut paused = fresh();
    let mut paused_open = open.clone();
    paused_open.paused = true;
    paused.restore(&paused_open).expect("an account may be restored paused");
    let mut debit = consume.clone();
    debit.sequence = Sequence(2);
    debit.credits = Credits::ZERO;
    debit.balance_after = Credits::ZERO;
    debit.paused = true;
    let error = paused.restore(&debit).expect_err("debit while paused");
    assert!(
        matches!(error, RestoreError::Invariant(Violation::DebitWhilePaused { sequence: Sequence(2), .. })),
        "{error}"
    );
    // Resumed by something other than a purchase.
    let mut update = debit.clone();
    update.entry_type = EntryType::Update;
    update.paused = false;
    let error = paused.restore(&update).expect_err("resume without purchase");
    assert!(matches!(error, RestoreError::Invariant(Violation::ResumeWithoutPurchase { .. })), "{error}");
    // An OPEN twice.
    let mut ledger = fresh();
    ledger.restore(&open).expect("open");
    let mut reopen = open.clone();
    reopen.sequence = Sequence(2);
    let error = ledger.restore(&reopen).expect_err("open twice");
    assert!(matches!(error, RestoreError::OpenedTwice { .. }), "{error}");
    // After deletion.
    let mut ledger = fresh();
    for entry in [&open, &purchase, &consume, &forfeit] {
        ledger.restore(entry).expect("valid");
    }
    let mut after = consume.clone();
    after.sequence = Sequence(5);
    let error = ledger.restore(&after).expect_err("after deletion");
    assert!(matches!(error, RestoreError::AfterDeletion { deleted_at: Sequence(4), .. }), "{error}");
}

#[test]
fn snapshots_round_trip_and_continue_identically() {
    let mut f = Fixture::new();
    let inputs = script(&mut f);
    let (head, tail) = inputs.split_at(6);
    for input in head {
        f.apply(input);
    }
    let json = serde_json::to_string(&f.ledger.snapshot()).expect("serializes");
    let snapshot = serde_json::from_str(&json).expect("deserializes");
    let mut resumed = Ledger::from_snapshot(rates(), LedgerConfig::default(), snapshot);
    assert_eq!(resumed.snapshot(), f.ledger.snapshot());
    for (index, input) in tail.iter().enumerate() {
        let source = SourceOffset { topic: "tally.inputs".into(), partition: 3, offset: 100 + index as i64 };
        assert_eq!(resumed.apply(input, &source, Epoch(9)), f.ledger.apply(input, &source, Epoch(9)));
    }
    assert_eq!(resumed.snapshot(), f.ledger.snapshot());
}

#[test]
fn stats_count_accounts_ids_and_duplicates() {
    let mut f = Fixture::new();
    for input in script(&mut f) {
        f.apply(&input);
    }
    let stats = f.ledger.stats();
    // Only the 4 July inputs are within 7 days of the newest (2026-07-01T03:00).
    assert_eq!((stats.accounts, stats.deleted_accounts, stats.dedup_ids, stats.duplicates_seen), (2, 1, 4, 1));
}
