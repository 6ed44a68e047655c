//! Workloads for tally's benches.
//!
//! Everything here is built in setup, outside the timed loops, and is
//! deterministic: accounts, services and quantities are drawn from a
//! fixed-seed xorshift generator, so two runs measure the same work.
//!
//! [`UsageWorkload`] holds a [`Ledger`] with N accounts opened and funded,
//! and a small pool of usage events (services, quantities, outcomes). Each
//! [`UsageWorkload::apply_next`] takes the next event of the pool, gives it
//! a fresh id, the next instant (so it is never a duplicate and never too
//! late) and a random account, and applies it: what is timed is pricing plus
//! the ledger rules on in-memory state, including exact dedup and the
//! invariant asserts.
//!
//! The pool is small (it stays in cache, like an input just decoded) and
//! the account id is rewritten in place for each event: a pool as large as
//! the account set would make the bench measure cache misses on its own
//! inputs rather than on the ledger's state. The account and id of the
//! event [`PREFETCH_AHEAD`] ahead are drawn early and prefetched, as the
//! metering loop prefetches the inputs it decodes ahead: the misses on the
//! ledger's state are still paid, overlapped as in the service.
//!
//! ```
//! let mut workload = tally_benches::UsageWorkload::new(100, 1_000);
//! assert!(matches!(workload.apply_next(), tally_ledger::Applied::Entry { .. }));
//! ```

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_events::records::{
    AccountChange, AccountChangeKind, CreditPurchase, Input, JobOutcome, PlanTier, Producer, SourceOffset, Unit,
    UsageEvent,
};
use tally_ledger::{Applied, Ledger, LedgerConfig, RateTable, PREFETCH_AHEAD};
use uuid::Uuid;

/// The default rate table, read from the repository.
pub const RATES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/rates.toml");

/// Services priced by the default table, with their units and typical
/// quantities.
/// A quantity as (mantissa, scale): `(75, 1)` is 7.5.
type Quantity = (i64, u32);

const SERVICES: [(&str, &str, Unit, &[Quantity]); 11] = [
    ("background_removal", "standard", Unit::Image, &[(1, 0)]),
    ("face_switch", "standard", Unit::Image, &[(1, 0), (2, 0)]),
    ("ai_modify", "nano_banana_2", Unit::Image, &[(1, 0)]),
    ("ai_modify", "gpt_image_2", Unit::Image, &[(1, 0)]),
    ("ai_modify", "grok_imagine", Unit::Image, &[(1, 0)]),
    ("ai_draw_me", "standard", Unit::Image, &[(1, 0)]),
    ("ai_image_to_video", "kling", Unit::VideoSecond, &[(5, 0), (75, 1)]),
    ("ai_image_to_video", "sora", Unit::VideoSecond, &[(10, 0), (4_250, 3)]),
    ("ai_image_to_video", "seedance", Unit::VideoSecond, &[(5, 0), (33, 1)]),
    ("sms", "standard", Unit::Message, &[(1, 0), (3, 0)]),
    ("editorial_ai", "standard", Unit::Image, &[(1, 0)]),
];

/// A pool size that stays in cache and still mixes services well.
pub const POOL_SIZE: usize = 1024;

/// Start of the workload's clock: inside the 2026-01 rate version.
const START: &str = "2026-02-01T00:00:00Z";

pub mod ledger_rows;

/// A fixed-seed xorshift64* generator: deterministic, dependency-free.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

/// Account id of account number `index`.
pub fn account_id(index: usize) -> String {
    format!("acct-{index:07}")
}

/// Writes [`account_id`]`(index)` into `out`, reusing its buffer (no
/// allocation, no formatting machinery: cheap enough not to blur the
/// measurement).
pub fn write_account_id(out: &mut String, index: usize) {
    out.clear();
    out.push_str("acct-");
    let mut digits = [b'0'; 7];
    let mut rest = index;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    for &digit in &digits {
        out.push(char::from(digit));
    }
}

/// A ledger over the default rates with `accounts` accounts opened (tiers
/// in turn) and funded with $10,000,000 each, so that no bench drains one.
pub fn funded_ledger(accounts: usize, start: DateTime<Utc>) -> (Ledger, i64) {
    let rates = Arc::new(RateTable::load(RATES_FILE).unwrap_or_else(|e| panic!("{e}")));
    let mut ledger = Ledger::new(rates, LedgerConfig::default());
    let mut source = SourceOffset { topic: "tally.inputs".into(), partition: 0, offset: 0 };
    let mut id: u128 = 1 << 64;
    for index in 0..accounts {
        let account_id = account_id(index);
        id += 1;
        let open = Input::Account(AccountChange {
            change_id: Uuid::from_u128(id),
            account_id: account_id.clone(),
            kind: AccountChangeKind::Open,
            tier: PlanTier::ALL[index % 3],
            low_balance_threshold: tally_events::Credits::new(Decimal::from(100)),
            occurred_at: start,
            reason: None,
        });
        id += 1;
        let purchase = Input::Purchase(CreditPurchase {
            purchase_id: Uuid::from_u128(id),
            account_id,
            amount_dollars: tally_events::Dollars::new(Decimal::from(10_000_000)),
            occurred_at: start,
            payment_reference: None,
        });
        for input in [open, purchase] {
            let applied = ledger.apply(&input, &source, tally_events::Epoch(1));
            assert!(matches!(applied, Applied::Entry { .. }), "setup input refused: {applied:?}");
            source.offset += 1;
        }
    }
    (ledger, source.offset)
}

/// Usage events applied one after the other to a funded ledger.
#[derive(Debug)]
pub struct UsageWorkload {
    /// The ledger under test.
    pub ledger: Ledger,
    pool: Vec<Input>,
    cursor: usize,
    accounts: usize,
    random: XorShift,
    next_id: u128,
    clock: DateTime<Utc>,
    step: TimeDelta,
    source: SourceOffset,
    /// The accounts of the next [`PREFETCH_AHEAD`] events, drawn ahead so that
    /// each event's account and id are prefetched that early, as the
    /// metering loop does for the inputs it decodes ahead.
    upcoming: std::collections::VecDeque<usize>,
    scratch: String,
}

impl UsageWorkload {
    /// `accounts` funded accounts and a pool of `pool_size` usage events
    /// (random services and quantities; 3% failed jobs), each applied to a
    /// random account.
    ///
    /// The clock advances one second per event, so the 7-day dedup window
    /// holds at most 604,800 ids once warm: a steady state, like a service
    /// that has run for a week. The setup inputs are pruned before this
    /// returns (the clock starts 8 days after them).
    pub fn new(accounts: usize, pool_size: usize) -> Self {
        Self::with_spacing(accounts, pool_size, TimeDelta::seconds(1))
    }

    /// As [`UsageWorkload::new`], with `spacing` between the events'
    /// `occurred_at`: the dedup window then holds `7 days / spacing` ids.
    pub fn with_spacing(accounts: usize, pool_size: usize, spacing: TimeDelta) -> Self {
        let start: DateTime<Utc> = START.parse().unwrap_or_else(|e| panic!("{e}"));
        let (ledger, offset) = funded_ledger(accounts, start);
        let mut random = XorShift::new(0x7A11_7A11);
        let pool = (0..pool_size)
            .map(|n| {
                let (service, engine, unit, quantities) = SERVICES[random.below(SERVICES.len())];
                let (mantissa, scale) = quantities[random.below(quantities.len())];
                let outcome = if random.below(100) < 3 { JobOutcome::Failed } else { JobOutcome::Succeeded };
                Input::Usage(UsageEvent {
                    event_id: Uuid::nil(),
                    account_id: account_id(0),
                    photo_event_id: format!("event-{}", n % 997),
                    booth_id: format!("booth-{}", n % 89),
                    job_id: format!("job-{n}"),
                    service: service.into(),
                    engine: engine.into(),
                    quantity: Decimal::new(mantissa, scale),
                    unit,
                    outcome,
                    occurred_at: start,
                    producer: Producer { worker: "bench".into(), version: "1".into() },
                    attributes: Default::default(),
                })
            })
            .collect();
        let mut workload = UsageWorkload {
            ledger,
            pool,
            cursor: 0,
            accounts,
            random,
            next_id: 1 << 96,
            clock: start + TimeDelta::days(8),
            step: spacing,
            source: SourceOffset { topic: "tally.inputs".into(), partition: 0, offset },
            upcoming: std::collections::VecDeque::with_capacity(PREFETCH_AHEAD + 1),
            scratch: String::new(),
        };
        for _ in 0..PREFETCH_AHEAD {
            let account = workload.random.below(accounts);
            workload.upcoming.push_back(account);
        }
        // The first event prunes the setup ids: keep that out of the timings.
        workload.apply_next();
        workload
    }

    /// Applies the next event of the pool, with a fresh id and time.
    pub fn apply_next(&mut self) -> Applied {
        let index = self.cursor;
        self.cursor = if index + 1 == self.pool.len() { 0 } else { index + 1 };
        let input = &mut self.pool[index];
        self.next_id += 1;
        self.clock += self.step;
        self.source.offset += 1;
        let account = self.upcoming.pop_front().unwrap_or_default();
        let ahead = self.random.below(self.accounts);
        self.upcoming.push_back(ahead);
        // The input PREFETCH_AHEAD ahead: its account and its id.
        write_account_id(&mut self.scratch, ahead);
        self.ledger.prefetch_ids(&self.scratch, &Uuid::from_u128(self.next_id + PREFETCH_AHEAD as u128));
        if let Input::Usage(event) = input {
            event.event_id = Uuid::from_u128(self.next_id);
            event.occurred_at = self.clock;
            write_account_id(&mut event.account_id, account);
        }
        self.ledger.apply(input, &self.source, tally_events::Epoch(1))
    }

    /// The pool's events, for benches of pricing alone.
    pub fn pool(&self) -> &[Input] {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_account_ids_match_formatted_ones() {
        let mut out = String::from("something longer than an id");
        for index in [0, 7, 1_234, 999_999, 1_000_000] {
            write_account_id(&mut out, index);
            assert_eq!(out, account_id(index));
        }
    }
}

/// How every bench reports repeated figures: the median with the range
/// (min, max) of the runs or rounds, and nearest-rank percentiles.
pub mod figures {
    /// `(median, min, max)` of `values` (the upper median of an even
    /// count).
    ///
    /// ```
    /// assert_eq!(tally_benches::figures::median_range(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
    /// ```
    pub fn median_range(values: &[f64]) -> (f64, f64, f64) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        (sorted[sorted.len() / 2], sorted[0], sorted[sorted.len() - 1])
    }

    /// The median of `values` ([`median_range`]'s).
    pub fn median(values: &[f64]) -> f64 {
        median_range(values).0
    }

    /// The nearest-rank `p` percentile of sorted values (with 200 runs,
    /// p99 is the 198th, not the slowest).
    pub fn percentile(sorted: &[f64], p: f64) -> f64 {
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }
}
