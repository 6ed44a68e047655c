//! Ledger-shaped data for the ClickHouse benches: counted ledger entries of
//! many accounts, photo-booth events, services and engines over a span of
//! days, with per-account gapless sequences and balance chains, and the
//! same rows as TabSeparated text for `clickhouse-client` (the baseline
//! inserts exactly the rows the aggregator does).

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tally_events::{
    AccountId, Credits, Dollars, EntryStatus, EntryType, Epoch, LedgerEntry, PlanTier, Sequence, SourceOffset,
};

use crate::XorShift as Rng;

/// (service, engine, credits per unit, unit scale).
const SERVICES: [(&str, &str, i64); 14] = [
    ("ai_modify", "nano_banana_2", 4),
    ("ai_modify", "gpt_image_2", 6),
    ("ai_modify", "grok_imagine", 3),
    ("ai_image_to_video", "kling", 2),
    ("ai_image_to_video", "sora", 5),
    ("ai_image_to_video", "seedance", 1),
    ("ai_draw_me", "standard", 3),
    ("background_removal", "standard", 1),
    ("face_switch", "standard", 2),
    ("sms", "standard", 1),
    ("editorial_ai", "standard", 2),
    ("ai_modify", "nano_banana_pro", 8),
    ("ai_image_to_video", "veo", 6),
    ("ai_draw_me", "sketch", 2),
];

/// Generates `n` entries over `accounts` accounts and `events` events,
/// spread over `days` days from `start`; each account's first entry is a
/// purchase. Returns (ledger partition, entry) in ledger order.
pub struct LedgerRows {
    rng: Rng,
    n: usize,
    made: usize,
    accounts: usize,
    events: usize,
    partitions: i32,
    start: DateTime<Utc>,
    span_ms: i64,
    sequences: Vec<i64>,
    balances: Vec<Decimal>,
    /// Booking time of each account's latest entry, s (the booking rule).
    booked: Vec<i64>,
}

impl LedgerRows {
    /// The generator.
    pub fn new(seed: u64, n: usize, accounts: usize, events: usize, days: i64, partitions: i32) -> Self {
        LedgerRows {
            rng: Rng::new(seed),
            n,
            made: 0,
            accounts,
            events,
            partitions,
            start: DateTime::from_timestamp(1_788_220_800, 0).unwrap_or_default(), // 2026-09-01
            span_ms: days * 86_400_000,
            sequences: vec![0; accounts],
            balances: vec![Decimal::ZERO; accounts],
            booked: vec![0; accounts],
        }
    }
}

impl Iterator for LedgerRows {
    type Item = (i32, LedgerEntry);

    fn next(&mut self) -> Option<(i32, LedgerEntry)> {
        if self.made >= self.n {
            return None;
        }
        // Time advances with the entry count; 0.5% of entries are late.
        let mut at_ms = self.span_ms * self.made as i64 / self.n.max(1) as i64;
        if self.rng.below(200) == 0 {
            at_ms = (at_ms - 3_600_000 * (1 + self.rng.below(48) as i64)).max(0);
        }
        self.made += 1;
        let account = self.rng.below(self.accounts);
        self.sequences[account] += 1;
        let sequence = self.sequences[account];
        let (entry_type, service, engine, quantity, credits, event) =
            if sequence == 1 || self.balances[account] < Decimal::from(50) {
                (EntryType::Add, "", "", Decimal::ZERO, Decimal::from(1_000), String::new())
            } else {
                let (service, engine, per_unit) = SERVICES[self.rng.below(SERVICES.len())];
                let quantity = if service == "ai_image_to_video" {
                    Decimal::new(5_000 + self.rng.below(5_000) as i64, 3)
                } else {
                    Decimal::from(1 + self.rng.below(3) as i64)
                };
                let event = format!("event-{:04}", (account * 7 + self.rng.below(3)) % self.events);
                (EntryType::Consume, service, engine, quantity, quantity * Decimal::from(per_unit), event)
            };
        // 1 in 20 jobs fails; a debit the balance cannot cover is refused
        // (as the ledger rules refuse it), so the rows keep every ledger
        // invariant and `tally reconcile` finds them clean.
        let job_failed = entry_type == EntryType::Consume && self.rng.below(20) == 0;
        let refused = entry_type == EntryType::Consume && !job_failed && credits > self.balances[account];
        let failed = job_failed || refused;
        let delta = match (entry_type, failed) {
            (_, true) => Decimal::ZERO,
            (EntryType::Add, _) => credits,
            _ => -credits,
        };
        self.balances[account] += delta;
        let tier = [PlanTier::Payg, PlanTier::Basic, PlanTier::Pro][account % 3];
        let price = [Decimal::new(12, 2), Decimal::new(10, 2), Decimal::new(8, 2)][account % 3];
        let id = uuid::Uuid::from_u128(((account as u128) << 64) | sequence as u128);
        let partition = (account % self.partitions as usize) as i32;
        let occurred_at = self.start + TimeDelta::milliseconds(at_ms);
        self.booked[account] = self.booked[account].max(occurred_at.timestamp());
        let entry = LedgerEntry {
            entry_id: id,
            account_id: AccountId::new_unchecked(crate::account_id(account)),
            sequence: Sequence(sequence),
            epoch: Epoch(0),
            entry_type,
            status: if failed { EntryStatus::Failed } else { EntryStatus::Success },
            reason: if job_failed {
                "job_failed".into()
            } else if refused {
                "insufficient_credits".into()
            } else {
                String::new()
            },
            input_id: id,
            service: service.into(),
            engine: engine.into(),
            photo_event_id: event,
            quantity,
            credits: Credits::new(credits),
            dollars: Dollars::new((credits * price).round_dp(2)),
            tier,
            rate_version: "2026-07".into(),
            balance_after: Credits::new(self.balances[account]),
            low_balance_threshold: Credits::new(Decimal::from(50)),
            paused: false,
            occurred_at,
            source: SourceOffset { topic: "tally.inputs".into(), partition, offset: self.made as i64 },
            booth_id: format!("booth-{}", account % 97),
            input_digest: None,
            booked_at: DateTime::from_timestamp(self.booked[account], 0),
        };
        Some((partition, entry))
    }
}

/// The entry as one TabSeparated line of `ledger_entries`, columns in
/// table order (the migrations': booked_at, added by 005, is last), with
/// its ledger coordinates.
pub fn tsv_line(out: &mut String, entry: &LedgerEntry, partition: i32, offset: i64) {
    use std::fmt::Write;
    let kind = entry.entry_type.name();
    let status = format!("{:?}", entry.status);
    let at = entry.occurred_at;
    let _ = writeln!(
        out,
        "{partition}\t{offset}\t{}\t{}\t{}\t{}\t{kind}\t{status}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t\t{}",
        entry.entry_id,
        entry.account_id,
        entry.sequence.0,
        entry.epoch.0,
        entry.reason,
        entry.input_id,
        entry.service,
        entry.engine,
        entry.photo_event_id,
        entry.booth_id,
        entry.quantity,
        entry.credits,
        entry.dollars,
        entry.tier.name(),
        entry.rate_version,
        entry.balance_after,
        entry.low_balance_threshold,
        u8::from(entry.paused),
        at.format("%Y-%m-%d %H:%M:%S"),
        at.timestamp_subsec_millis(),
        entry.source.topic,
        entry.source.partition,
        entry.source.offset,
        entry.booked_at.unwrap_or(at).format("%Y-%m-%d %H:%M:%S"),
    );
}
