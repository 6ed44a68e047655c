//! Taking a partition: claiming it and rebuilding its state from the
//! ledger.
//!
//! The ledger partition is the source of truth. Sequence:
//! 1. append a CLAIM marker and wait for its acknowledgement: its offset O
//!    is the new epoch;
//! 2. take the newest complete snapshot whose state ends at or before O
//!    (see `snapshot`), or an empty state at ledger offset 0;
//! 3. read the ledger from there up to O through the one fenced reader
//!    ([`tally_events::ledger_reader::FencedReader`]), restoring every entry
//!    that counts into a fresh [`Ledger`]; the resume point is the offset
//!    after the last input an entry or PROGRESS marker says was handled.
//!
//! Reading up to a known offset needs no "end of partition" answer from the
//! broker (some brokers report a high watermark that lags acknowledged
//! writes). Records a zombie lands before O are part of the state (the log
//! order says they came first); records of older epochs after O never
//! count. If the claim is not the one in force at O, another instance
//! claimed in the same instant: this one stops.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, TopicPartitionList,
};
use tally_events::{
    ledger_reader::{FencedReader, LedgerReadError, LedgerRecord},
    Codec, CodecError, Epoch, LedgerEntry, LedgerMarker, MarkerKind, PartitionSnapshot,
};
use tally_ledger::{Ledger, LedgerConfig, LedgerSnapshot, RateTable};
use tally_service::kafka::{read_partition, ReadError, Until};
use uuid::Uuid;

use crate::{
    config::MeteringConfig,
    context::{MeteringContext, Shared},
    error::MeteringError,
    partition::PartitionState,
    snapshot::{self, SnapshotError, SnapshotPoint},
};

/// Why a partition's state could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    /// A ledger record does not read.
    #[error(transparent)]
    Record(#[from] LedgerReadError),
    /// A counted entry that records another input partition.
    #[error("entry {entry_id} comes from {topic}/{partition}, but this ledger partition records {expected_topic}/{expected_partition}")]
    ForeignEntry {
        /// Entry.
        entry_id: Uuid,
        /// Its input topic.
        topic: String,
        /// Its input partition.
        partition: i32,
        /// The input topic of this ledger partition.
        expected_topic: String,
        /// The input partition of this ledger partition.
        expected_partition: i32,
    },
    /// A counted entry breaks a ledger rule.
    #[error("entry {entry_id} (account {account_id}) at ledger offset {offset}: {source}")]
    Rules {
        /// Entry.
        entry_id: Uuid,
        /// Account.
        account_id: String,
        /// Ledger offset.
        offset: i64,
        /// Which rule.
        #[source]
        source: Box<tally_ledger::RestoreError>,
    },
    /// Reading the ledger partition failed.
    #[error("reading the ledger: {0}")]
    Ledger(#[source] ReadError<Box<RestoreFailure>>),
    /// Reading the snapshot partition failed.
    #[error("reading snapshots: {0}")]
    Snapshots(#[source] ReadError),
    /// The newest snapshot is not usable.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The claim marker did not encode (a bug).
    #[error("cannot encode the claim: {0}")]
    Claim(#[source] CodecError),
}

impl RestoreFailure {
    /// Whether a later restore may succeed: the broker was away or slow.
    /// A ledger that does not read or breaks a rule stays so.
    pub fn is_retryable(&self) -> bool {
        match self {
            RestoreFailure::Ledger(ReadError::Visit(inner)) => inner.is_retryable(),
            RestoreFailure::Ledger(read) => read.is_retryable(),
            RestoreFailure::Snapshots(read) => read.is_retryable(),
            _ => false,
        }
    }
}

/// Folds a ledger partition, under the fence, into a partition's state.
pub struct Restorer {
    /// The state being rebuilt.
    pub ledger: Ledger,
    reader: FencedReader,
    /// Next input offset to read.
    pub resume: i64,
    input_topic: String,
    input_partition: i32,
}

impl Restorer {
    /// A restorer of one input partition from ledger offset 0.
    pub fn new(rates: Arc<RateTable>, config: LedgerConfig, input_topic: &str, input_partition: i32) -> Self {
        Restorer {
            ledger: Ledger::new(rates, config),
            reader: FencedReader::new(input_partition),
            resume: 0,
            input_topic: input_topic.to_string(),
            input_partition,
        }
    }

    /// A restorer that continues from a snapshot: the state, fence and
    /// resume point it records, ready to read the ledger from
    /// `point.ledger_next_offset`.
    pub fn from_snapshot(
        rates: Arc<RateTable>,
        config: LedgerConfig,
        point: &SnapshotPoint,
        state: LedgerSnapshot,
    ) -> Self {
        Restorer {
            ledger: Ledger::from_snapshot(rates, config, state),
            reader: FencedReader::resuming(point.input_partition, point.claim_epoch, point.claim_id),
            resume: point.resume_input_offset,
            input_topic: point.input_topic.clone(),
            input_partition: point.input_partition,
        }
    }

    /// Reads the ledger record at `offset`, in log order.
    pub fn visit(&mut self, offset: i64, payload: &[u8]) -> Result<(), RestoreFailure> {
        match self.reader.read(offset, payload)? {
            LedgerRecord::Entry(entry) => self.entry(offset, &entry),
            LedgerRecord::Progress(marker) => {
                self.resume = self.resume.max(marker.next_input_offset);
                Ok(())
            }
            LedgerRecord::Claim { .. } | LedgerRecord::Fenced(_) => Ok(()),
        }
    }

    fn entry(&mut self, offset: i64, entry: &LedgerEntry) -> Result<(), RestoreFailure> {
        if entry.source.topic != self.input_topic || entry.source.partition != self.input_partition {
            return Err(RestoreFailure::ForeignEntry {
                entry_id: entry.entry_id,
                topic: entry.source.topic.clone(),
                partition: entry.source.partition,
                expected_topic: self.input_topic.clone(),
                expected_partition: self.input_partition,
            });
        }
        self.ledger.restore(entry).map_err(|source| RestoreFailure::Rules {
            entry_id: entry.entry_id,
            account_id: entry.account_id.to_string(),
            offset,
            source: Box::new(source),
        })?;
        self.resume = self.resume.max(entry.source.offset + 1);
        Ok(())
    }

    /// Whether `claim_id` is the claim in force.
    pub fn owns(&self, claim_id: Uuid) -> bool {
        self.reader.fence().claim_id() == Some(claim_id)
    }

    /// Entries restored.
    pub fn entries(&self) -> u64 {
        self.reader.counts().entries
    }

    /// Records the fence ignored.
    pub fn fenced(&self) -> u64 {
        self.reader.counts().fenced
    }
}

/// Claims `partition` and rebuilds its state (see the module docs).
pub(crate) fn take(
    shared: &Shared,
    consumer: &BaseConsumer<MeteringContext>,
    partition: i32,
) -> Result<PartitionState, MeteringError> {
    shared.watch.restoring(partition, true);
    let taken = claim_and_restore(shared, consumer, partition);
    shared.watch.restoring(partition, false);
    taken
}

fn claim_and_restore(
    shared: &Shared,
    consumer: &BaseConsumer<MeteringContext>,
    partition: i32,
) -> Result<PartitionState, MeteringError> {
    let started = Instant::now();
    let config = &shared.config;
    let failed = |source: RestoreFailure| MeteringError::Restore { partition, source: Box::new(source) };
    let ledger_config = LedgerConfig { dedup_window: config.dedup_window };
    let topic = &config.ledger_topic;
    let claim_id = Uuid::new_v4();
    let claim = LedgerMarker {
        kind: MarkerKind::Claim,
        claim_id,
        epoch: Epoch(0),
        instance: shared.instance.clone(),
        input_topic: config.input_topic.clone(),
        input_partition: partition,
        next_input_offset: 0,
    };
    let payload = Codec::global().encode(&claim).map_err(|e| failed(RestoreFailure::Claim(e)))?;
    let key = format!("claim-{partition}");
    let (_, epoch) = shared.producer.send_and_wait(topic, partition, key.as_bytes(), &payload)?;
    crate::faults::point("restore_after_claim");
    if crate::faults::unsafe_skip_restore() {
        let restorer = Restorer::new(shared.rates.clone(), ledger_config, &config.input_topic, partition);
        // Test-only broken variant: claims, but keeps an empty state and
        // starts from the group offset. Proves the crash test can fail.
        let committed = committed_offset(consumer, &config.input_topic, partition);
        tracing::warn!(partition, committed, "TALLY_UNSAFE_SKIP_RESTORE: empty state from the group offset");
        return Ok(PartitionState::new(restorer.ledger, Epoch(epoch), claim_id, committed, -1));
    }
    // The newest complete snapshot before the claim, then the ledger after it.
    let found = newest_snapshot(config, partition, epoch).map_err(failed)?;
    let (mut restorer, from) = match found {
        Some((point, state)) => {
            let from = point.ledger_next_offset;
            (Restorer::from_snapshot(shared.rates.clone(), ledger_config, &point, state), from)
        }
        None => (Restorer::new(shared.rates.clone(), ledger_config, &config.input_topic, partition), 0),
    };
    let mut records = 0u64;
    read_partition(&config.brokers, topic, partition, from, Until::Offset(epoch), config.restore_timeout, |m| {
        records += 1;
        restorer.visit(m.offset(), m.payload().unwrap_or_default()).map_err(Box::new)
    })
    .map_err(|e| failed(RestoreFailure::Ledger(e)))?;
    shared.metrics.restore_records.inc_by(records);
    if !restorer.owns(claim_id) {
        return Err(MeteringError::LostClaim { partition });
    }
    let elapsed = started.elapsed();
    shared.metrics.restore_seconds.observe(elapsed.as_secs_f64());
    tracing::info!(
        partition,
        epoch,
        entries = restorer.entries(),
        fenced = restorer.fenced(),
        resume = restorer.resume,
        snapshot = from,
        records,
        ms = elapsed.as_millis() as u64,
        "partition restored and claimed"
    );
    Ok(PartitionState::new(restorer.ledger, Epoch(epoch), claim_id, restorer.resume, epoch))
}

/// Reads a partition's snapshot topic partition and returns the newest
/// complete snapshot whose state ends at or before `limit`. A record that
/// does not decode is skipped with a warning: snapshots only shorten the
/// restore, the ledger stays the truth.
fn newest_snapshot(
    config: &MeteringConfig,
    partition: i32,
    limit: i64,
) -> Result<Option<(SnapshotPoint, LedgerSnapshot)>, RestoreFailure> {
    let topic = &config.snapshot_topic;
    let mut assembler = snapshot::Assembler::new(&config.input_topic, partition, limit);
    read_partition(&config.brokers, topic, partition, 0, Until::End, config.restore_timeout, |m| {
        match Codec::global().decode::<PartitionSnapshot>(m.payload().unwrap_or_default()) {
            Ok(chunk) => assembler.visit(chunk),
            Err(e) => {
                tracing::warn!(topic, partition, offset = m.offset(), error = %e, "skipping an unreadable snapshot record");
            }
        }
        Ok(())
    })
    .map_err(RestoreFailure::Snapshots)?;
    if assembler.foreign > 0 {
        tracing::warn!(
            topic,
            partition,
            chunks = assembler.foreign,
            "skipped snapshot chunks of other input partitions: is the snapshot topic shared by two deployments?"
        );
    }
    Ok(assembler.finish()?)
}

fn committed_offset(consumer: &BaseConsumer<MeteringContext>, topic: &str, partition: i32) -> i64 {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .ok()
        .and_then(|l| l.find_partition(topic, partition).map(|e| e.offset()))
        .and_then(|o| o.to_raw())
        .filter(|o| *o >= 0)
        .unwrap_or(0)
}
