//! A realistic, reproducible workload for tally: photo-booth operators on
//! each plan tier run events (weddings, corporate parties...), guests take
//! photos, and each photo triggers the event's AI workflow (background
//! removal, AI Modify with an engine, face switch, image-to-video, AI Draw
//! Me, editorial AI, SMS sharing). Operators buy credits, some upgrade or
//! downgrade, a few let their balance run out, one in a while deletes the
//! account.
//!
//! The generator does no I/O and reads no clock: the same [`SimConfig`]
//! (seed included) yields the same messages, byte for byte. Faults are
//! injected at configured fractions: exact duplicates (worker retries),
//! late events (out of order; some beyond the dedup window) and malformed
//! messages of every class the metering service must dead-letter.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use rust_decimal::Decimal;
use tally_client::{input_id, UsageEventBuilder};
use tally_events::{
    AccountChange, AccountChangeKind, Codec, CreditPurchase, Credits, Dollars, Input, JobOutcome, PlanTier, Unit,
    UsageEvent,
};

/// Workload settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Operator accounts.
    pub accounts: u32,
    /// Usage events to generate (purchases and account changes come on top).
    pub usage_events: u64,
    /// Simulated time of the first message.
    pub start: DateTime<Utc>,
    /// Simulated milliseconds between two steps (a usage event and what
    /// comes with it), drawn uniformly from this range: the workload's
    /// simulated rate, hence how many ids a dedup window holds.
    pub step_millis: std::ops::Range<i64>,
    /// Fraction of usage events re-sent as exact duplicates (worker retries).
    pub duplicate_fraction: f64,
    /// Fraction of usage events sent late: 1-48 h back in time, and one in
    /// five 8-10 days back (beyond the 7-day dedup window: too late).
    pub late_fraction: f64,
    /// Fraction of messages that are bad input (malformed bytes, unknown
    /// schema, unknown service, bad quantity, unknown account).
    pub malformed_fraction: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            accounts: 40,
            usage_events: 20_000,
            // Just before the 2026-07 rate version, so a default run
            // crosses a rate change.
            start: DateTime::from_timestamp(1_782_820_800, 0).unwrap_or_default(), // 2026-06-30T12:00:00Z
            // About one step per 6 s, a photo booth's pace.
            step_millis: 200..12_000,
            duplicate_fraction: 0.02,
            late_fraction: 0.01,
            malformed_fraction: 0.005,
        }
    }
}

/// What the generator meant a message to be (for the summary and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Intent {
    /// Account opened.
    Open,
    /// Credits bought.
    Purchase,
    /// Tier change.
    PlanChange,
    /// Account deleted.
    Delete,
    /// A usage event, sent once.
    Usage,
    /// A usage event sent late.
    LateUsage,
    /// An exact copy of an earlier usage event.
    Duplicate,
    /// Random bytes.
    GarbageBytes,
    /// A valid header with a truncated body.
    Truncated,
    /// A header with a fingerprint no schema has.
    UnknownSchema,
    /// A service no rate table lists.
    UnknownService,
    /// Zero or negative quantity.
    BadQuantity,
    /// An account never opened.
    UnknownAccount,
}

impl Intent {
    /// Short name for summaries.
    pub fn name(self) -> &'static str {
        match self {
            Intent::Open => "account opened",
            Intent::Purchase => "credit purchase",
            Intent::PlanChange => "plan change",
            Intent::Delete => "account deleted",
            Intent::Usage => "usage event",
            Intent::LateUsage => "late usage event",
            Intent::Duplicate => "duplicate (retry)",
            Intent::GarbageBytes => "bad: garbage bytes",
            Intent::Truncated => "bad: truncated avro",
            Intent::UnknownSchema => "bad: unknown schema",
            Intent::UnknownService => "bad: unknown service",
            Intent::BadQuantity => "bad: non-positive quantity",
            Intent::UnknownAccount => "bad: unknown account",
        }
    }
}

/// One message to publish: a key and the bytes, with what it is meant to be.
#[derive(Debug, Clone)]
pub struct SimMessage {
    /// Kafka key (the account id).
    pub key: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
    /// What it is.
    pub intent: Intent,
    /// The decoded input, for well-formed inputs.
    pub input: Option<Input>,
}

struct Account {
    id: String,
    tier: PlanTier,
    /// What the operator believes the balance is, in credits (they watch
    /// the dashboard): a rough figure that decides when they top up.
    believed_credits: Decimal,
    /// Never tops up: runs out of credits and gets paused.
    thrifty: bool,
    deleted: bool,
    purchases: u32,
    changes: u32,
    photo_events: u32,
    current_event: Option<PhotoEvent>,
}

struct PhotoEvent {
    id: String,
    booths: u32,
    photos_left: u32,
    photo_no: u32,
    workflow: Vec<(&'static str, &'static str, Unit)>,
}

const AI_MODIFY_ENGINES: [&str; 3] = ["nano_banana_2", "gpt_image_2", "grok_imagine"];
const VIDEO_ENGINES: [&str; 3] = ["kling", "sora", "seedance"];
const EVENT_KINDS: [&str; 5] = ["wedding", "corporate", "birthday", "school", "festival"];

/// The accounts whose operator would top up now (not thrifty, not
/// deleted, believed balance under 150 credits), kept up to date at each
/// change so that a top-up picks one in O(1) instead of scanning every
/// account per step (which made 1M-account workloads O(events x accounts)).
/// Order is deterministic: members are swapped out on removal.
#[derive(Default)]
struct LowAccounts {
    members: Vec<usize>,
    /// Position of each account in `members`, or `usize::MAX`.
    position: Vec<usize>,
}

impl LowAccounts {
    fn set(&mut self, index: usize, low: bool) {
        if self.position.len() <= index {
            self.position.resize(index + 1, usize::MAX);
        }
        let at = self.position[index];
        match (low, at == usize::MAX) {
            (true, true) => {
                self.position[index] = self.members.len();
                self.members.push(index);
            }
            (false, false) => {
                self.members.swap_remove(at);
                if let Some(&moved) = self.members.get(at) {
                    self.position[moved] = at;
                }
                self.position[index] = usize::MAX;
            }
            _ => {}
        }
    }
}

/// The generator: an iterator of messages.
pub struct Simulator {
    config: SimConfig,
    rng: SmallRng,
    now: DateTime<Utc>,
    accounts: Vec<Account>,
    setup: VecDeque<SimMessage>,
    recent: VecDeque<UsageEvent>,
    usage_left: u64,
    pending: VecDeque<SimMessage>,
    low: LowAccounts,
}

impl Simulator {
    /// A generator for the config.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut sim = Simulator {
            now: config.start,
            usage_left: config.usage_events,
            accounts: Vec::new(),
            setup: VecDeque::new(),
            recent: VecDeque::new(),
            pending: VecDeque::new(),
            low: LowAccounts::default(),
            rng: SmallRng::seed_from_u64(0),
            config,
        };
        for n in 0..sim.config.accounts {
            let tier = match rng.random_range(0..10) {
                0..=4 => PlanTier::Payg,
                5..=7 => PlanTier::Basic,
                _ => PlanTier::Pro,
            };
            sim.accounts.push(Account {
                id: format!("acct-{n:04}"),
                tier,
                believed_credits: Decimal::ZERO,
                thrifty: rng.random_bool(0.1),
                deleted: false,
                purchases: 0,
                changes: 0,
                photo_events: 0,
                current_event: None,
            });
        }
        sim.rng = rng;
        for index in 0..sim.accounts.len() {
            let open = sim.account_change(index, AccountChangeKind::Open);
            sim.setup.push_back(open);
            let first = sim.purchase(index);
            sim.setup.push_back(first);
        }
        sim
    }

    /// Keeps [`LowAccounts`] in step with account `index`.
    fn refresh_low(&mut self, index: usize) {
        let a = &self.accounts[index];
        let low = !a.thrifty && !a.deleted && a.believed_credits < Decimal::from(150);
        self.low.set(index, low);
    }

    fn tick(&mut self) {
        let millis = self.rng.random_range(self.config.step_millis.clone());
        self.now += TimeDelta::milliseconds(millis);
    }

    fn message(&self, input: Input, intent: Intent) -> SimMessage {
        // Encoding a record of our own types cannot fail short of a bug.
        let payload = Codec::global().encode_input(&input).unwrap_or_default();
        SimMessage { key: input.account_id().as_bytes().to_vec(), payload, intent, input: Some(input) }
    }

    fn account_change(&mut self, index: usize, kind: AccountChangeKind) -> SimMessage {
        let account = &mut self.accounts[index];
        account.changes += 1;
        let threshold = match account.tier {
            PlanTier::Payg => Decimal::from(20),
            PlanTier::Basic => Decimal::from(50),
            PlanTier::Pro => Decimal::from(150),
        };
        let change = AccountChange {
            change_id: input_id(&["account-change", &account.id, &account.changes.to_string()]),
            account_id: account.id.clone(),
            kind,
            tier: account.tier,
            low_balance_threshold: Credits::new(threshold),
            occurred_at: self.now,
            reason: None,
        };
        let intent = match kind {
            AccountChangeKind::Open => Intent::Open,
            AccountChangeKind::Update => Intent::PlanChange,
            AccountChangeKind::Delete => Intent::Delete,
        };
        self.message(Input::Account(change), intent)
    }

    fn purchase(&mut self, index: usize) -> SimMessage {
        let (low, high) = match self.accounts[index].tier {
            PlanTier::Payg => (2_000, 10_000),
            PlanTier::Basic => (5_000, 30_000),
            PlanTier::Pro => (20_000, 100_000),
        };
        let cents: i64 = self.rng.random_range(low..=high) / 500 * 500;
        let account = &mut self.accounts[index];
        account.purchases += 1;
        // Roughly what the dashboard would show after the purchase.
        let per_credit = match account.tier {
            PlanTier::Payg => Decimal::new(12, 2),
            PlanTier::Basic => Decimal::new(10, 2),
            PlanTier::Pro => Decimal::new(8, 2),
        };
        account.believed_credits += Decimal::new(cents, 2) / per_credit;
        self.refresh_low(index);
        let account = &self.accounts[index];
        let purchase = CreditPurchase {
            purchase_id: input_id(&["purchase", &account.id, &account.purchases.to_string()]),
            account_id: account.id.clone(),
            amount_dollars: Dollars::new(Decimal::new(cents, 2)),
            occurred_at: self.now,
            payment_reference: Some(format!("pay_{}_{}", account.id, account.purchases)),
        };
        self.message(Input::Purchase(purchase), Intent::Purchase)
    }

    fn new_photo_event(&mut self, index: usize) -> PhotoEvent {
        let rng = &mut self.rng;
        let kind = EVENT_KINDS[rng.random_range(0..EVENT_KINDS.len())];
        let mut workflow = vec![("background_removal", "standard", Unit::Image)];
        if rng.random_bool(0.7) {
            workflow.push(("ai_modify", AI_MODIFY_ENGINES[rng.random_range(0..3)], Unit::Image));
        }
        if rng.random_bool(0.3) {
            workflow.push(("face_switch", "standard", Unit::Image));
        }
        if rng.random_bool(0.15) {
            workflow.push(("ai_image_to_video", VIDEO_ENGINES[rng.random_range(0..3)], Unit::VideoSecond));
        }
        if rng.random_bool(0.1) {
            workflow.push(("ai_draw_me", "standard", Unit::Image));
        }
        if rng.random_bool(0.1) {
            workflow.push(("editorial_ai", "standard", Unit::Image));
        }
        if rng.random_bool(0.4) {
            workflow.push(("sms", "standard", Unit::Message));
        }
        let account = &mut self.accounts[index];
        account.photo_events += 1;
        PhotoEvent {
            id: format!("{}-{kind}-{}", account.id, account.photo_events),
            booths: rng.random_range(1..=3),
            photos_left: rng.random_range(40..400),
            photo_no: 0,
            workflow,
        }
    }

    /// The usage events of one guest photo.
    fn photo(&mut self) -> Vec<SimMessage> {
        // A few big operators do most of the volume.
        let count = self.accounts.len();
        let index = if self.rng.random_bool(0.5) {
            self.rng.random_range(0..count.div_ceil(5))
        } else {
            self.rng.random_range(0..count)
        };
        if self.accounts[index].deleted {
            // Workers do not know yet: their events are refused.
            return vec![self.usage_for(index, "background_removal", "standard", Unit::Image, "deleted-account")];
        }
        if self.accounts[index].current_event.as_ref().is_none_or(|e| e.photos_left == 0) {
            let event = self.new_photo_event(index);
            self.accounts[index].current_event = Some(event);
        }
        let mut out = Vec::new();
        let Some(event) = self.accounts[index].current_event.as_mut() else { return out };
        event.photos_left -= 1;
        event.photo_no += 1;
        let workflow = event.workflow.clone();
        let photo_key = format!("{}-p{}", event.id, event.photo_no);
        for (service, engine, unit) in workflow {
            out.push(self.usage_for(index, service, engine, unit, &photo_key));
        }
        out
    }

    fn usage_for(&mut self, index: usize, service: &str, engine: &str, unit: Unit, photo_key: &str) -> SimMessage {
        let account = &self.accounts[index];
        let (event_id, booths) =
            account.current_event.as_ref().map_or(("none".to_string(), 1), |e| (e.id.clone(), e.booths));
        let quantity = match unit {
            Unit::VideoSecond => {
                [Decimal::from(5), Decimal::new(75, 1), Decimal::from(10)][self.rng.random_range(0..3)]
            }
            Unit::Message => Decimal::from(self.rng.random_range(1..=3)),
            Unit::Image => Decimal::ONE,
        };
        let outcome = if self.rng.random_bool(0.03) { JobOutcome::Failed } else { JobOutcome::Succeeded };
        let booth = format!("booth-{}", self.rng.random_range(1..=booths));
        let job = format!("{photo_key}-{service}");
        let worker = format!("gpu-{}", self.rng.random_range(1..=8));
        let mut occurred_at = self.now;
        let mut intent = Intent::Usage;
        if self.rng.random_bool(self.config.late_fraction) {
            intent = Intent::LateUsage;
            let back = if self.rng.random_bool(0.2) {
                TimeDelta::hours(self.rng.random_range(8 * 24..10 * 24))
            } else {
                TimeDelta::minutes(self.rng.random_range(60..48 * 60))
            };
            occurred_at -= back;
        }
        let event = UsageEventBuilder::new(&account.id, &job, service, engine)
            .photo_event(&event_id)
            .booth(&booth)
            .quantity(quantity, unit)
            .outcome(outcome)
            .occurred_at(occurred_at)
            .producer(&worker, "1.4.2")
            .build();
        // The operator sees the balance drop by roughly the list price.
        let rough_credits = match (service, engine) {
            ("background_removal", _) => Decimal::ONE,
            ("face_switch", _) | ("editorial_ai", _) => Decimal::TWO,
            ("ai_modify", "gpt_image_2") => Decimal::from(6),
            ("ai_modify", "nano_banana_2") => Decimal::from(4),
            ("ai_modify", _) | ("ai_draw_me", _) => Decimal::from(3),
            ("ai_image_to_video", "sora") => Decimal::from(5),
            ("ai_image_to_video", "kling") => Decimal::TWO,
            ("ai_image_to_video", _) => Decimal::new(15, 1),
            _ => Decimal::new(5, 2),
        } * quantity;
        self.accounts[index].believed_credits -= rough_credits;
        self.refresh_low(index);
        match event {
            Ok(event) => {
                self.recent.push_back(event.clone());
                if self.recent.len() > 1_000 {
                    self.recent.pop_front();
                }
                self.message(Input::Usage(event), intent)
            }
            // The builder refuses only what we never generate here.
            Err(e) => self.garbage(format!("builder refused: {e}").into_bytes(), Intent::GarbageBytes),
        }
    }

    fn garbage(&self, payload: Vec<u8>, intent: Intent) -> SimMessage {
        SimMessage { key: b"acct-0000".to_vec(), payload, intent, input: None }
    }

    fn bad_input(&mut self) -> SimMessage {
        let index = self.rng.random_range(0..self.accounts.len());
        let account = self.accounts[index].id.clone();
        let good = |sim: &mut Simulator| {
            let mut event = UsageEventBuilder::new(
                &account,
                &format!("bad-{}", sim.rng.random::<u64>()),
                "ai_modify",
                "gpt_image_2",
            )
            .photo_event("bad-event")
            .booth("booth-1")
            .quantity(Decimal::ONE, Unit::Image)
            .occurred_at(sim.now)
            .build();
            if let Ok(event) = event.as_mut() {
                event.producer.worker = "broken-worker".into();
            }
            event
        };
        let kind = self.rng.random_range(0..6);
        let Ok(mut event) = good(self) else { return self.garbage(b"x".to_vec(), Intent::GarbageBytes) };
        let (intent, bytes) = match kind {
            0 => {
                let len = self.rng.random_range(0..64);
                (Intent::GarbageBytes, (0..len).map(|_| self.rng.random::<u8>()).collect())
            }
            1 => {
                let bytes = Codec::global().encode(&event).unwrap_or_default();
                let cut = self.rng.random_range(10..bytes.len().max(11));
                (Intent::Truncated, bytes[..cut.min(bytes.len())].to_vec())
            }
            2 => {
                let mut bytes = Codec::global().encode(&event).unwrap_or_default();
                for b in bytes.iter_mut().skip(2).take(8) {
                    *b ^= 0x5A;
                }
                (Intent::UnknownSchema, bytes)
            }
            3 => {
                event.service = "ai_hologram".into();
                (Intent::UnknownService, Codec::global().encode(&event).unwrap_or_default())
            }
            4 => {
                event.quantity = -Decimal::from(self.rng.random_range(0..3));
                (Intent::BadQuantity, Codec::global().encode(&event).unwrap_or_default())
            }
            _ => {
                event.account_id = format!("ghost-{}", self.rng.random_range(0..100));
                (Intent::UnknownAccount, Codec::global().encode(&event).unwrap_or_default())
            }
        };
        let input = Codec::global().decode_input(&bytes).ok();
        let key = input.as_ref().map_or(account.clone(), |i| i.account_id().to_string());
        SimMessage { key: key.into_bytes(), payload: bytes, intent, input }
    }

    fn step(&mut self) -> Vec<SimMessage> {
        self.tick();
        let roll: f64 = self.rng.random();
        let mut out = Vec::new();
        if roll < self.config.malformed_fraction {
            out.push(self.bad_input());
        } else {
            let photo = self.photo();
            self.usage_left = self.usage_left.saturating_sub(photo.len() as u64);
            // Worker retries: each usage event is re-sent, later, with the
            // configured probability (an exact copy of a recent event).
            let mut retries = Vec::new();
            for _ in 0..photo.len() {
                if self.rng.random_bool(self.config.duplicate_fraction) && !self.recent.is_empty() {
                    let pick = self.rng.random_range(0..self.recent.len());
                    let event = self.recent[pick].clone();
                    retries.push(self.message(Input::Usage(event), Intent::Duplicate));
                }
            }
            out.extend(photo);
            out.extend(retries);
        }
        // Operators top up when their balance looks low (most react within
        // a few photos); thrifty ones never do, run dry and get paused.
        if self.rng.random_bool(0.3) && !self.low.members.is_empty() {
            let index = self.low.members[self.rng.random_range(0..self.low.members.len())];
            out.push(self.purchase(index));
        }
        if self.rng.random_bool(0.0005) {
            let index = self.rng.random_range(0..self.accounts.len());
            if !self.accounts[index].deleted {
                let tiers = PlanTier::ALL;
                self.accounts[index].tier = tiers[self.rng.random_range(0..tiers.len())];
                out.push(self.account_change(index, AccountChangeKind::Update));
            }
        }
        if self.rng.random_bool(0.00005) {
            let index = self.rng.random_range(0..self.accounts.len());
            if !self.accounts[index].deleted {
                out.push(self.account_change(index, AccountChangeKind::Delete));
                self.accounts[index].deleted = true;
                self.refresh_low(index);
            }
        }
        out
    }
}

impl Iterator for Simulator {
    type Item = SimMessage;

    fn next(&mut self) -> Option<SimMessage> {
        if let Some(message) = self.setup.pop_front() {
            return Some(message);
        }
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some(message);
            }
            if self.usage_left == 0 {
                return None;
            }
            let batch = self.step();
            self.pending.extend(batch);
        }
    }
}

/// Counts of what was generated.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Messages by intent.
    pub by_intent: BTreeMap<Intent, u64>,
    /// Usage events by service and engine.
    pub by_service: BTreeMap<(String, String), u64>,
    /// Dollars of credit purchases.
    pub dollars_purchased: Dollars,
    /// Bytes of payload.
    pub bytes: u64,
}

impl Tally {
    /// Counts one message.
    pub fn add(&mut self, message: &SimMessage) {
        *self.by_intent.entry(message.intent).or_default() += 1;
        self.bytes += message.payload.len() as u64;
        match (&message.input, message.intent) {
            (Some(Input::Usage(e)), Intent::Usage | Intent::LateUsage) => {
                *self.by_service.entry((e.service.clone(), e.engine.clone())).or_default() += 1;
            }
            (Some(Input::Purchase(p)), _) => self.dollars_purchased += p.amount_dollars,
            _ => {}
        }
    }
    /// Messages counted.
    pub fn total(&self) -> u64 {
        self.by_intent.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_balance_set_always_matches_a_scan_of_every_account() {
        let mut sim = Simulator::new(SimConfig { accounts: 50, usage_events: 20_000, ..SimConfig::default() });
        let mut purchases = 0;
        for n in 0.. {
            let Some(message) = sim.next() else { break };
            purchases += usize::from(message.intent == Intent::Purchase);
            if n % 97 == 0 {
                let mut scan: Vec<usize> = (0..sim.accounts.len())
                    .filter(|i| {
                        let a = &sim.accounts[*i];
                        !a.thrifty && !a.deleted && a.believed_credits < Decimal::from(150)
                    })
                    .collect();
                let mut kept = sim.low.members.clone();
                scan.sort_unstable();
                kept.sort_unstable();
                assert_eq!(kept, scan, "after message {n}");
            }
        }
        assert!(purchases > 50, "operators topped up beyond their first purchase: {purchases}");
    }

    #[test]
    fn the_same_seed_gives_the_same_messages() {
        let config = SimConfig { usage_events: 2_000, ..SimConfig::default() };
        let a: Vec<Vec<u8>> = Simulator::new(config.clone()).map(|m| m.payload).collect();
        let b: Vec<Vec<u8>> = Simulator::new(config.clone()).map(|m| m.payload).collect();
        assert_eq!(a, b);
        let c: Vec<Vec<u8>> = Simulator::new(SimConfig { seed: 7, ..config }).map(|m| m.payload).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn the_workload_has_every_kind_of_message() {
        let config =
            SimConfig { usage_events: 30_000, malformed_fraction: 0.01, late_fraction: 0.02, ..SimConfig::default() };
        let mut tally = Tally::default();
        let mut keyed_right = true;
        for message in Simulator::new(config) {
            if let Some(input) = &message.input {
                keyed_right &= input.account_id().as_bytes() == message.key.as_slice();
            }
            tally.add(&message);
        }
        assert!(keyed_right, "every decodable input is keyed by its account");
        for intent in [
            Intent::Open,
            Intent::Purchase,
            Intent::PlanChange,
            Intent::Usage,
            Intent::LateUsage,
            Intent::Duplicate,
            Intent::GarbageBytes,
            Intent::Truncated,
            Intent::UnknownSchema,
            Intent::UnknownService,
            Intent::BadQuantity,
            Intent::UnknownAccount,
        ] {
            assert!(tally.by_intent.get(&intent).copied().unwrap_or(0) > 0, "no {intent:?} in {:?}", tally.by_intent);
        }
        assert_eq!(tally.by_intent[&Intent::Open], 40);
        assert!(tally.by_service.len() >= 10, "service mix {:?}", tally.by_service.keys());
        assert!(tally.dollars_purchased > Dollars::ZERO);
    }
}
