//! Inputs against debits: reconciliation's check that one input partition
//! and its ledger partition keep the promise of `docs/DESIGN.md`.
//!
//! Every input offset below the partition's *watermark* is exactly one of:
//! - **applied**: exactly one counted entry names it as its source;
//! - **duplicate**: no entry and no dead letter, and an earlier input of
//!   the partition with the same id was applied with the same content (or
//!   by an entry written before ledger entry v3, which recorded no digest,
//!   as [`crate::Ledger::apply`] treats it);
//! - **dead-lettered**: no entry, and a dead letter names it. Dead letters
//!   are at-least-once with stable coordinates, so a repeat of one is
//!   counted, not a mismatch.
//!
//! Besides: no input id is applied twice (a double charge), no entry or
//! dead letter below the watermark names an offset the input topic does
//! not have. The watermark is the next input offset the partition's counted
//! records cover (an entry's source offset + 1, a PROGRESS marker's next
//! offset): inputs from it on are not handled yet and are not judged, and
//! neither are dead letters of them (a dead letter is written before the
//! ledger covers its input).
//!
//! Fed per partition in three passes: the counted entries and PROGRESS
//! markers ([`Coverage::entry`], [`Coverage::progress`]), then the dead
//! letters ([`Coverage::dead_letter`]), then the inputs below the watermark
//! in offset order ([`Coverage::input`], which decodes only an input that
//! has neither entry nor dead letter); [`Coverage::finish`] names what no
//! input matched. Pure. Memory: about 60 bytes per applied input of the
//! partition (its offset, id and digest), plus each account once.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;
use tally_events::{AccountId, Input, InputDigest, Interner, LedgerEntry, LedgerMarker};
use uuid::Uuid;

use crate::digest::digest;

/// What the inputs of a partition were found to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Classified {
    /// Inputs with exactly one entry.
    pub applied: u64,
    /// Inputs that repeat an applied one.
    pub duplicates: u64,
    /// Inputs with a dead letter.
    pub dead_lettered: u64,
    /// Dead letters beyond the first of one input (at-least-once repeats).
    pub dead_letter_repeats: u64,
}

/// A broken promise, with the input's coordinates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// More than one counted entry for one input offset.
    #[error("input {partition}/{offset} has {entries} counted entries (applied more than once)")]
    AppliedTwice {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
        /// Entries found.
        entries: u32,
    },
    /// Two inputs of one id both applied: a double charge.
    #[error("input id {input_id} is applied twice, at input offsets {first} and {second} of partition {partition}")]
    IdAppliedTwice {
        /// Input partition.
        partition: i32,
        /// The id.
        input_id: Uuid,
        /// First input offset.
        first: i64,
        /// Second.
        second: i64,
    },
    /// An entry and a dead letter for one input.
    #[error("input {partition}/{offset} has both an entry and a dead letter")]
    EntryAndDeadLetter {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
    },
    /// An input with neither entry nor dead letter that repeats nothing.
    #[error(
        "input {partition}/{offset} ({what}) has neither an entry nor a dead letter, and repeats no applied input"
    )]
    Unaccounted {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
        /// Its id, or why it could not be read.
        what: String,
    },
    /// A reuse of an applied id with other content that was not
    /// dead-lettered (metering dead-letters it as conflicting_duplicate).
    #[error(
        "input {partition}/{offset} reuses id {input_id} of input {partition}/{first} with other content, \
         and has no dead letter"
    )]
    ConflictNotDeadLettered {
        /// Input partition.
        partition: i32,
        /// Input offset.
        offset: i64,
        /// The id.
        input_id: Uuid,
        /// The applied input's offset.
        first: i64,
    },
    /// An entry or dead letter naming an input offset the input topic does
    /// not have (or another topic or partition).
    #[error("{what} names input {topic}/{partition}/{offset}, which the input partition read does not have")]
    NoSuchInput {
        /// "an entry of account ..." or "a dead letter".
        what: String,
        /// Topic named.
        topic: String,
        /// Partition named.
        partition: i32,
        /// Offset named.
        offset: i64,
    },
}

/// The check of one input partition; see the module docs.
#[derive(Debug)]
pub struct Coverage {
    topic: String,
    partition: i32,
    watermark: i64,
    /// Counted entries per input offset, and the first one's sequence
    /// and account (an index into `accounts`): named only if no input
    /// matches, so no text is made per entry.
    entries: OffsetMap<(u32, i64, u32)>,
    /// The accounts of `entries`.
    accounts: Interner<AccountId>,
    /// First applied input offset and digest per input id.
    applied_ids: FxHashMap<Uuid, (i64, Option<InputDigest>)>,
    /// Dead letters per input offset.
    dead_letters: FxHashMap<i64, u32>,
    classified: Classified,
    problems: Vec<Problem>,
}

impl Coverage {
    /// The check of input `partition` of `topic`.
    pub fn new(topic: &str, partition: i32) -> Self {
        Coverage {
            topic: topic.to_string(),
            partition,
            watermark: 0,
            entries: OffsetMap::default(),
            accounts: Interner::default(),
            applied_ids: FxHashMap::default(),
            dead_letters: FxHashMap::default(),
            classified: Classified::default(),
            problems: Vec::new(),
        }
    }

    /// A counted entry of the ledger partition. Returns its account's
    /// number in [`Coverage::accounts`], for the caller's other per-account
    /// checks of the same entries (one lookup of the account's text).
    pub fn entry(&mut self, entry: &LedgerEntry) -> u32 {
        let account = self.accounts.intern(&entry.account_id);
        let source = &entry.source;
        if source.topic != self.topic || source.partition != self.partition {
            self.problems.push(Problem::NoSuchInput {
                what: format!("entry {} of account {}", entry.sequence.0, entry.account_id),
                topic: source.topic.clone(),
                partition: source.partition,
                offset: source.offset,
            });
            return account;
        }
        self.watermark = self.watermark.max(source.offset + 1);
        self.entries.get_or_insert(source.offset, (0, entry.sequence.0, account)).0 += 1;
        // One probe of the map, which misses the cache on nearly every
        // entry once it holds a partition's ids.
        match self.applied_ids.entry(entry.input_id) {
            Entry::Occupied(held) => {
                let first = held.get().0;
                if first != source.offset {
                    self.problems.push(Problem::IdAppliedTwice {
                        partition: self.partition,
                        input_id: entry.input_id,
                        first: first.min(source.offset),
                        second: first.max(source.offset),
                    });
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert((source.offset, entry.input_digest));
            }
        }
        account
    }

    /// A counted PROGRESS marker of the ledger partition.
    pub fn progress(&mut self, marker: &LedgerMarker) {
        if marker.input_topic == self.topic && marker.input_partition == self.partition {
            self.watermark = self.watermark.max(marker.next_input_offset);
        }
    }

    /// A dead letter naming an input at `source` (topic, partition,
    /// offset); those of other partitions or topics are ignored.
    pub fn dead_letter(&mut self, topic: &str, partition: i32, offset: i64) {
        if topic == self.topic && partition == self.partition {
            *self.dead_letters.entry(offset).or_default() += 1;
        }
    }

    /// The accounts of the entries read, numbered as [`Coverage::entry`]
    /// returned them.
    pub fn accounts(&self) -> &Interner<AccountId> {
        &self.accounts
    }

    /// The input partition checked.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The next input offset the ledger covers: [`Coverage::input`] wants
    /// every input below it.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The input at `offset` (in offset order, below the watermark);
    /// `decode` is called only for an input with neither entry nor dead
    /// letter, to tell a duplicate.
    pub fn input(&mut self, offset: i64, decode: impl FnOnce() -> Result<Input, String>) {
        let partition = self.partition;
        let entries = self.entries.remove(offset).map_or(0, |(n, ..)| n);
        let letters = self.dead_letters.remove(&offset).unwrap_or(0);
        match (entries, letters) {
            (1, 0) => self.classified.applied += 1,
            (0, n) if n > 0 => {
                self.classified.dead_lettered += 1;
                self.classified.dead_letter_repeats += u64::from(n - 1);
            }
            (0, _) => self.unaccounted(offset, decode()),
            (1, _) => self.problems.push(Problem::EntryAndDeadLetter { partition, offset }),
            (entries, _) => self.problems.push(Problem::AppliedTwice { partition, offset, entries }),
        }
    }

    fn unaccounted(&mut self, offset: i64, decoded: Result<Input, String>) {
        let partition = self.partition;
        let input = match decoded {
            Ok(input) => input,
            Err(why) => {
                let what = format!("does not decode: {why}");
                return self.problems.push(Problem::Unaccounted { partition, offset, what });
            }
        };
        let input_id = input.id();
        match self.applied_ids.get(&input_id) {
            Some(&(first, recorded)) if first < offset => match recorded {
                Some(applied) if applied != digest(&input) => {
                    self.problems.push(Problem::ConflictNotDeadLettered { partition, offset, input_id, first })
                }
                _ => self.classified.duplicates += 1,
            },
            _ => self.problems.push(Problem::Unaccounted { partition, offset, what: format!("id {input_id}") }),
        }
    }

    /// What the inputs were, and every problem found, in order: entries and
    /// dead letters below the watermark whose input was never read come
    /// last, by offset.
    pub fn finish(mut self) -> (Classified, Vec<Problem>) {
        let accounts = &self.accounts;
        let mut left: Vec<(i64, String)> = self
            .entries
            .into_entries()
            .map(|(offset, (_, sequence, account))| {
                let account = accounts.get(account).map_or("?", |a| a.as_str());
                (offset, format!("entry {sequence} of account {account}"))
            })
            .collect();
        left.extend(
            self.dead_letters.into_keys().filter(|&o| o < self.watermark).map(|o| (o, "a dead letter".to_string())),
        );
        left.sort();
        self.problems.extend(left.into_iter().map(|(offset, what)| Problem::NoSuchInput {
            what,
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
        }));
        (self.classified, self.problems)
    }
}

/// Values keyed by input offset. A ledger partition's entries name the
/// offsets of one input partition nearly densely and in order, so a
/// vector from the first offset seen holds them; an offset before it, or
/// far past the vector's end (a forged or foreign one), goes to a map, so
/// memory stays within twice the offsets held. At 2.5M entries a
/// partition, a hash map's inserts, growth and probes were a tenth of
/// reconcile's CPU.
#[derive(Debug)]
struct OffsetMap<V> {
    base: Option<i64>,
    dense: Vec<Option<V>>,
    sparse: FxHashMap<i64, V>,
}

impl<V> Default for OffsetMap<V> {
    fn default() -> Self {
        OffsetMap { base: None, dense: Vec::new(), sparse: FxHashMap::default() }
    }
}

impl<V> OffsetMap<V> {
    /// Smallest vector worth growing to for an offset past its end.
    const GROW_MIN: usize = 1 << 16;

    /// Where `offset` lives in the vector, if it does or may.
    fn slot(&self, offset: i64) -> Option<usize> {
        let index = usize::try_from(offset.checked_sub(self.base?)?).ok()?;
        (index < self.dense.len().saturating_mul(2).max(Self::GROW_MIN)).then_some(index)
    }

    /// The value at `offset`, `default` put there first if it had none.
    fn get_or_insert(&mut self, offset: i64, default: V) -> &mut V {
        if self.base.is_none() {
            self.base = Some(offset);
        }
        match self.slot(offset) {
            Some(index) => {
                if index >= self.dense.len() {
                    self.dense.resize_with(index + 1, || None);
                }
                self.dense[index].get_or_insert(default)
            }
            None => self.sparse.entry(offset).or_insert(default),
        }
    }

    /// Takes the value at `offset` out.
    fn remove(&mut self, offset: i64) -> Option<V> {
        match self.slot(offset) {
            Some(index) if index < self.dense.len() => self.dense[index].take(),
            _ => self.sparse.remove(&offset),
        }
    }

    /// Every value left, with its offset (in no particular order).
    fn into_entries(self) -> impl Iterator<Item = (i64, V)> {
        let base = self.base.unwrap_or(0);
        let dense = self.dense.into_iter().enumerate().filter_map(move |(i, v)| Some((base + i as i64, v?)));
        dense.chain(self.sparse)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;
    use tally_events::{
        Credits, Dollars, EntryStatus, EntryType, Epoch, JobOutcome, MarkerKind, PlanTier, Producer, Sequence,
        SourceOffset, Unit, UsageEvent,
    };

    use super::*;

    const TOPIC: &str = "tally.inputs";

    fn usage(id: u128, engine: &str) -> Input {
        Input::Usage(UsageEvent {
            event_id: Uuid::from_u128(id),
            account_id: "acct-1".into(),
            photo_event_id: "wedding".into(),
            booth_id: "booth".into(),
            job_id: format!("job-{id}"),
            service: "ai_modify".into(),
            engine: engine.into(),
            quantity: Decimal::ONE,
            unit: Unit::Image,
            outcome: JobOutcome::Succeeded,
            occurred_at: Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap(),
            producer: Producer { worker: "w".into(), version: "1".into() },
            attributes: Default::default(),
        })
    }

    fn entry(input: &Input, sequence: i64, offset: i64) -> LedgerEntry {
        LedgerEntry {
            entry_id: input.id(),
            account_id: tally_events::AccountId::parse(input.account_id()).unwrap(),
            sequence: Sequence(sequence),
            epoch: Epoch(0),
            entry_type: EntryType::Consume,
            status: EntryStatus::Success,
            reason: String::new(),
            input_id: input.id(),
            service: "ai_modify".into(),
            engine: "nano_banana_2".into(),
            photo_event_id: String::new(),
            quantity: Decimal::ONE,
            credits: Credits::new(Decimal::ONE),
            dollars: Dollars::new(Decimal::ONE),
            tier: PlanTier::Payg,
            rate_version: "v".into(),
            balance_after: Credits::new(Decimal::ONE),
            low_balance_threshold: Credits::new(Decimal::ONE),
            paused: false,
            occurred_at: input.occurred_at(),
            source: SourceOffset { topic: TOPIC.into(), partition: 0, offset },
            booth_id: String::new(),
            input_digest: Some(digest(input)),
            booked_at: Some(input.occurred_at()),
        }
    }

    fn progress(next: i64) -> LedgerMarker {
        LedgerMarker {
            kind: MarkerKind::Progress,
            claim_id: Uuid::nil(),
            epoch: Epoch(0),
            instance: "test".into(),
            input_topic: TOPIC.into(),
            input_partition: 0,
            next_input_offset: next,
        }
    }

    /// Offsets 0 applied, 1 dead-lettered twice, 2 a duplicate of 0, 3 a
    /// conflicting reuse of 0's id (dead-lettered), 4 applied; a marker
    /// covers 5 (a duplicate), and 6 is past the watermark.
    fn clean() -> (Coverage, Vec<Input>) {
        let first = usage(1, "nano_banana_2");
        let inputs =
            vec![first.clone(), usage(2, "x"), first.clone(), usage(1, "gpt_image_2"), usage(4, "sora"), first.clone()];
        let mut coverage = Coverage::new(TOPIC, 0);
        coverage.entry(&entry(&inputs[0], 1, 0));
        coverage.entry(&entry(&inputs[4], 2, 4));
        coverage.progress(&progress(6));
        for offset in [1, 1, 3, 6] {
            coverage.dead_letter(TOPIC, 0, offset);
        }
        coverage.dead_letter(TOPIC, 1, 2);
        (coverage, inputs)
    }

    fn feed(coverage: &mut Coverage, inputs: &[Input]) {
        for offset in 0..coverage.watermark() {
            let input = inputs[offset as usize].clone();
            coverage.input(offset, || Ok(input));
        }
    }

    #[test]
    fn a_clean_partition_has_no_problem() {
        let (mut coverage, inputs) = clean();
        assert_eq!(coverage.watermark(), 6);
        feed(&mut coverage, &inputs);
        let (classified, problems) = coverage.finish();
        assert_eq!(problems, vec![]);
        let expected = Classified { applied: 2, duplicates: 2, dead_lettered: 2, dead_letter_repeats: 1 };
        assert_eq!(classified, expected);
    }

    #[test]
    fn every_broken_promise_is_named() {
        let (mut coverage, mut inputs) = clean();
        // 2 becomes a new input nobody handled; 3 loses its dead letter
        // (a conflicting reuse let through); 4's entry doubles; an entry
        // names offset 9, which the topic does not have.
        inputs[2] = usage(7, "nano_banana_2");
        coverage.dead_letters.remove(&3);
        coverage.entry(&entry(&inputs[4], 3, 4));
        coverage.entry(&entry(&usage(9, "sora"), 4, 9));
        coverage.entry(&entry(&inputs[0], 5, 5));
        // The topic read ends at 6: 6 to 9 were never read.
        for offset in 0..6 {
            let input = inputs[offset as usize].clone();
            coverage.input(offset, || Ok(input));
        }
        let (_, problems) = coverage.finish();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let wanted = [
            "input id 00000000-0000-0000-0000-000000000001 is applied twice, at input offsets 0 and 5",
            "input 0/2 (id 00000000-0000-0000-0000-000000000007) has neither an entry nor a dead letter",
            "input 0/3 reuses id 00000000-0000-0000-0000-000000000001 of input 0/0 with other content",
            "input 0/4 has 2 counted entries",
            "a dead letter names input tally.inputs/0/6",
            "entry 4 of account acct-1 names input tally.inputs/0/9",
        ];
        for want in wanted {
            assert!(text.iter().any(|t| t.contains(want)), "{want:?} not in {text:#?}");
        }
        assert_eq!(text.len(), wanted.len(), "{text:#?}");
    }

    #[test]
    fn an_unreadable_input_without_dead_letter_is_named() {
        let mut coverage = Coverage::new(TOPIC, 0);
        coverage.progress(&progress(1));
        coverage.input(0, || Err("not Avro".into()));
        let (_, problems) = coverage.finish();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("input 0/0 (does not decode: not Avro)"), "{}", problems[0]);
    }

    #[test]
    fn a_dead_letter_of_an_input_not_yet_covered_is_not_judged() {
        let mut coverage = Coverage::new(TOPIC, 0);
        coverage.dead_letter(TOPIC, 0, 0);
        let (classified, problems) = coverage.finish();
        assert_eq!((classified, problems), (Classified::default(), vec![]));
    }

    #[test]
    fn offsets_before_after_and_far_past_the_dense_run_are_all_kept() {
        let mut map: OffsetMap<u32> = OffsetMap::default();
        for offset in [100, 101, 103, 99, 100 + (1 << 20), -5, i64::MAX] {
            *map.get_or_insert(offset, 0) += 1;
        }
        *map.get_or_insert(101, 0) += 1;
        assert_eq!(map.dense.len(), 4, "100..=103 dense; the rest in the map");
        assert_eq!(map.remove(101), Some(2));
        assert_eq!(map.remove(101), None);
        assert_eq!(map.remove(102), None);
        assert_eq!(map.remove(i64::MAX), Some(1));
        let mut left: Vec<(i64, u32)> = map.into_entries().collect();
        left.sort();
        assert_eq!(left, [(-5, 1), (99, 1), (100, 1), (103, 1), (100 + (1 << 20), 1)]);
    }
}
