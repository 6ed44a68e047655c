//! The metering loop: poll a batch, apply it with the core, write outputs
//! under the hold rule, and, as each batch's acknowledgements come in,
//! check contiguity and commit; snapshot with nothing in flight. One
//! [`Metering`] is one worker of an instance (see `workers`): it owns its
//! partitions, consumer and producer, and shares nothing else but the
//! metrics and the partition watch.
//!
//! Per batch (see `sends` for the hold rule and `partition` for the
//! contiguity check):
//! 1. apply each input in offset order with the core, producing as it goes
//!    (ledger records behind an unacknowledged dead letter or alert are
//!    held until it is in);
//! 2. a PROGRESS marker for a partition whose batch ended on inputs that
//!    wrote no entry, so a restart does not handle them again;
//! 3. poll and apply the next batches while this one's acknowledgements
//!    come in: up to `batches_in_flight` batches are applied and not yet
//!    acknowledged (1: stop and wait for each);
//! 4. when every ledger record of the batch is acknowledged (batches
//!    complete in order): check that this owner's ledger writes are
//!    contiguous and commit consumer offsets up to the batch's end, at most
//!    once a second (a hint for lag and for the partition watch; the
//!    resume point is in the ledger);
//! 5. a snapshot that is due is cut only with no batch in flight, so the
//!    state cut is exactly the fold of the ledger up to this owner's last
//!    acknowledged write.
//!
//! A crash before a side record is acknowledged leaves no ledger record
//! covering its input, so the restart re-sends it (at-least-once; dead
//! letters and alerts carry deterministic ids and source coordinates). A
//! crash with ledger records in flight, of any number of batches, loses
//! nothing and doubles nothing: the idempotent, gapless producer lands a
//! prefix of each partition's records in the order sent, the restart
//! rebuilds from what the ledger holds and re-applies the rest, which
//! gives the same bytes. Any delivery error is fatal: the process exits and
//! its restart rebuilds state, so a gap in the ledger can never be
//! followed by later entries (`enable.gapless.guarantee` too).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    Offset, TopicPartitionList,
};
use tally_events::{CodecError, Input, LedgerMarker, MarkerKind, SourceOffset};
use tally_ledger::{RateTable, PREFETCH_AHEAD};
use tally_service::{
    http::Health,
    kafka::{consumer_config, ProducerSettings},
    lifecycle::Service,
};
use tokio::{runtime::Handle, sync::watch};

use crate::{
    config::{Assignment, MeteringConfig, OnStall, Worker},
    context::{Change, MeteringContext, Shared},
    error::MeteringError,
    metrics::{GaugeShare, Metrics},
    outbox::Outbox,
    partition::{ForeignWrite, PartitionState},
    polled::Batch,
    restore,
    sends::{Done, Sends},
    snapshot::SnapshotPoint,
    snapshot_writer::{SnapshotJob, SnapshotWriter},
    step::{decode, step_decoded, Step},
    tally::Tally,
    topics,
    watch::{Watch, WatchState},
};

/// One running worker of the service.
pub struct Metering {
    config: MeteringConfig,
    consumer: BaseConsumer<MeteringContext>,
    context: MeteringContext,
    producer: Outbox,
    metrics: Metrics,
    instance: String,
    states: BTreeMap<i32, PartitionState>,
    /// Since when the instance waits for the group to assign it partitions
    /// (start, or after a revocation); `None` once an assignment arrived.
    awaiting_assignment: Option<Instant>,
    /// Reused from batch to batch.
    sends: Sends<Outbox>,
    snapshots: SnapshotWriter,
    /// What the partition watch knows of this worker's partitions.
    watch: WatchState,
    /// Which worker of the instance this is.
    worker: Worker,
    /// This worker's part of `partitions_owned` and `consumer_lag`.
    owned_gauge: GaugeShare,
    lag_gauge: GaugeShare,
    /// Where the loop's time went since it was last published.
    spent: Spent,
    /// When a completed batch last committed offsets (`None`: none has, so
    /// the first one does at once), and whether batches completed since
    /// the last commit (see [`COMMIT_EVERY`]).
    last_commit: Option<Instant>,
    uncommitted: bool,
}

/// Seconds of the loop by phase, published to `loop_seconds` once a
/// second (not per poll: a labelled counter costs a lookup per add).
#[derive(Default)]
struct Spent {
    poll: Duration,
    apply: Duration,
    settle: Duration,
}

impl Spent {
    fn publish(&mut self, metrics: &Metrics) {
        for (phase, spent) in [("poll", &mut self.poll), ("apply", &mut self.apply), ("settle", &mut self.settle)] {
            metrics.loop_seconds.with_label_values(&[phase]).inc_by(spent.as_secs_f64());
            *spent = Duration::ZERO;
        }
    }
}

impl Service for Metering {
    type Error = MeteringError;

    /// Runs until `shutdown` flips, then finishes the batch in hand,
    /// flushes and commits.
    fn run(mut self, shutdown: watch::Receiver<bool>, health: Health) -> Result<(), MeteringError> {
        // One partition watch per instance, on its first worker's thread
        // budget; it sees every worker's partitions.
        let mut partition_watch = match self.worker.index {
            0 => Some(
                Watch::start(&self.config, self.metrics.clone(), self.watch.clone()).map_err(MeteringError::Watch)?,
            ),
            _ => None,
        };
        health.set_ready(true);
        let mut batch = Batch::with_capacity(self.config.batch_size_max.get());
        let mut last_tick = Instant::now();
        let keep = self.config.batches_in_flight.get() - 1;
        while !*shutdown.borrow() {
            match self.poll_batch(&mut batch, &shutdown)? {
                Some(started) => {
                    let applying = Instant::now();
                    self.process(&batch, started)?;
                    self.spent.apply += applying.elapsed();
                    self.metrics.batch_size.observe(batch.len() as f64);
                    batch.clear();
                    self.settle(keep)?;
                }
                // No input for a while: finish what is in flight.
                None => self.settle(0)?,
            }
            if self.snapshot_due() {
                self.settle(0)?;
                self.write_due_snapshots();
            }
            if last_tick.elapsed() > Duration::from_secs(1) {
                last_tick = Instant::now();
                self.spent.publish(&self.metrics);
                self.check_assignment_wait()?;
                self.tick(&health)?;
            }
        }
        tracing::info!("shutting down: flushing and committing");
        health.set_ready(false);
        self.settle(0)?;
        if let Some(watch) = partition_watch.as_mut() {
            watch.finish();
        }
        self.snapshots.finish();
        self.producer.flush(Duration::from_secs(30)).map_err(MeteringError::kafka("flush on shutdown"))?;
        self.commit(CommitMode::Sync);
        Ok(())
    }
}

impl Metering {
    /// Connects, checks and creates topics, and (fixed assignment) takes
    /// this worker's partitions. `runtime` runs the admin calls; `watch` is
    /// the instance's partition watch state.
    pub fn start(
        config: MeteringConfig,
        rates: Arc<RateTable>,
        metrics: Metrics,
        runtime: Handle,
        worker: Worker,
        watch: WatchState,
    ) -> Result<Self, MeteringError> {
        let producer_config = ProducerSettings {
            delivery_timeout: config.delivery_timeout,
            gapless: true,
            ..ProducerSettings::new(&config.brokers)
        }
        .client_config();
        let producer = Outbox::create(&producer_config, config.delivery_timeout)
            .map_err(MeteringError::kafka("create producer"))?;
        let instance = match worker.count.get() {
            1 => format!("{}:{}", hostname(), std::process::id()),
            _ => format!("{}:{}/worker-{}", hostname(), std::process::id(), worker.index),
        };
        let context = MeteringContext::new(Shared {
            config: config.clone(),
            rates,
            producer: producer.clone(),
            metrics: metrics.clone(),
            instance: instance.clone(),
            watch: watch.clone(),
        });
        let mut settings = consumer_config(&config.brokers, &config.group_id);
        settings
            .set("statistics.interval.ms", "1000")
            .set("max.poll.interval.ms", config.max_poll_interval.as_millis().to_string())
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (config.session_timeout.as_millis() / 3).min(3_000).to_string());
        if let Assignment::Group { instance_id: Some(id) } = &config.assignment {
            // Each worker is a member of its own: static ids must differ.
            match worker.count.get() {
                1 => settings.set("group.instance.id", id),
                _ => settings.set("group.instance.id", format!("{id}-worker-{}", worker.index)),
            };
        }
        let consumer: BaseConsumer<MeteringContext> =
            settings.create_with_context(context.clone()).map_err(MeteringError::kafka("create consumer"))?;
        let partitions = topics::prepare(&config, &consumer, &runtime)?;
        let sends = Sends::new(producer.clone(), &config.ledger_topic);
        let snapshots = SnapshotWriter::start(producer.clone(), metrics.clone(), config.snapshot_topic.clone());
        let (metrics_owned, metrics_lag) = (metrics.partitions_owned.clone(), metrics.consumer_lag.clone());
        let mut service = Metering {
            config,
            consumer,
            context,
            producer,
            metrics,
            instance,
            states: BTreeMap::new(),
            awaiting_assignment: Some(Instant::now()),
            sends,
            snapshots,
            watch,
            worker,
            owned_gauge: GaugeShare::new(&metrics_owned),
            lag_gauge: GaugeShare::new(&metrics_lag),
            spent: Spent::default(),
            last_commit: None,
            uncommitted: false,
        };
        match service.config.assignment.clone() {
            Assignment::Group { .. } => {
                service
                    .consumer
                    .subscribe(&[&service.config.input_topic])
                    .map_err(MeteringError::kafka("subscribe"))?;
            }
            Assignment::Fixed { index, count } => service.take_fixed_partitions(partitions, index, count.get())?,
        }
        Ok(service)
    }

    /// Fixed assignment: takes every partition this worker owns by the
    /// layout, then reads them from where the ledger says. No group
    /// coordinator takes part, so nothing the broker remembers of an
    /// earlier member can keep them from this instance.
    fn take_fixed_partitions(&mut self, partitions: i32, index: u32, count: u32) -> Result<(), MeteringError> {
        let mine = self.config.assignment.fixed_partitions(partitions, self.worker);
        tracing::info!(
            instance_index = index,
            instance_count = count,
            worker = self.worker.index,
            partitions = ?mine,
            "fixed assignment"
        );
        if mine.is_empty() {
            tracing::warn!(
                worker = self.worker.index,
                workers = self.worker.count.get(),
                "this worker owns no partition: the instance has more workers than partitions"
            );
        }
        let mut list = TopicPartitionList::new();
        for &partition in &mine {
            let state = restore::take(&self.context.shared, &self.consumer, partition)?;
            list.add_partition_offset(&self.config.input_topic, partition, Offset::Offset(state.next_offset))
                .map_err(MeteringError::kafka(format!("assign partition {partition}")))?;
            self.states.insert(partition, state);
        }
        self.consumer.assign(&list).map_err(MeteringError::kafka("assign the fixed partitions"))?;
        self.awaiting_assignment = None;
        self.owned_gauge.set(self.states.len() as i64);
        // The resume points are the progress other instances watch.
        self.commit(CommitMode::Async);
        Ok(())
    }

    /// Fills `batch` up to `batch_size_max` inputs or `batch_wait` after
    /// its first one; returns when the first came, `None` if none came
    /// within [`IDLE_POLL`]. While batches are in flight it polls in short
    /// slices and completes those already acknowledged, so held records go
    /// out and offsets are committed without waiting for the next batch.
    fn poll_batch(
        &mut self,
        batch: &mut Batch,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Instant>, MeteringError> {
        let mut first_at: Option<Instant> = None;
        let polling_since = Instant::now();
        let mut polled: u32 = 0;
        // One clock read per poll, after it, serves the next poll's start,
        // its wait, the poll's time and the batch's start: this runs per
        // input. (So the poll phase also counts the pushes and checks
        // between two polls, well under a microsecond each.)
        let mut polling = polling_since;
        while batch.len() < self.config.batch_size_max.get() {
            let busy = self.sends.busy();
            let mut wait = match first_at {
                None => IDLE_POLL.saturating_sub(polling.duration_since(polling_since)),
                Some(at) => self.config.batch_wait.saturating_sub(polling.duration_since(at)),
            };
            if busy {
                wait = wait.min(BUSY_POLL);
            }
            let polled_one = self.consumer.poll(wait);
            let polled_at = Instant::now();
            self.spent.poll += polled_at.duration_since(polling);
            polling = polled_at;
            let got_nothing = match polled_one {
                Some(Ok(message)) => {
                    first_at.get_or_insert(polled_at);
                    batch.push(&message);
                    false
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                    false
                }
                None => true,
            };
            self.apply_changes(batch)?;
            polled = polled.wrapping_add(1);
            if busy && (got_nothing || polled % 64 == 0) {
                self.settle_ready()?;
                polling = Instant::now(); // settling is counted apart
            }
            let waited_out = first_at.is_some_and(|at| polled_at.duration_since(at) >= self.config.batch_wait);
            let idle = got_nothing && first_at.is_none() && polled_at.duration_since(polling_since) >= IDLE_POLL;
            if idle || waited_out || *shutdown.borrow() {
                break;
            }
        }
        Ok(if batch.is_empty() { None } else { first_at.or_else(|| Some(Instant::now())) })
    }

    /// Completes the batches already acknowledged, and sends the held
    /// records their side records release. Never waits.
    fn settle_ready(&mut self) -> Result<(), MeteringError> {
        let settling = Instant::now();
        self.sends.pump()?;
        while let Some(done) = self.sends.complete(false)? {
            self.completed(done)?;
        }
        self.spent.settle += settling.elapsed();
        Ok(())
    }

    /// Completes batches until at most `keep` are in flight, waiting for
    /// the oldest as needed.
    fn settle(&mut self, keep: usize) -> Result<(), MeteringError> {
        self.settle_ready()?;
        let settling = Instant::now();
        while self.sends.in_flight() > keep {
            match self.sends.complete(true)? {
                Some(done) => self.completed(done)?,
                None => break,
            }
        }
        self.spent.settle += settling.elapsed();
        Ok(())
    }

    /// A batch whose ledger records are all acknowledged: contiguity, then
    /// the offsets it read up to are durable and committed.
    fn completed(&mut self, done: Done) -> Result<(), MeteringError> {
        // Contiguity: a write anywhere but right after this owner's last
        // one is someone else's: stop before committing anything.
        for (partition, offset) in done.landed {
            if let Some(state) = self.states.get_mut(&partition) {
                state
                    .contiguity
                    .landed(offset)
                    .map_err(|ForeignWrite { expected, got }| MeteringError::Superseded { partition, expected, got })?;
            }
        }
        crate::faults::point("after_ledger_write");
        for (partition, next) in done.offsets {
            if let Some(state) = self.states.get_mut(&partition) {
                state.durable_offset = next;
            }
        }
        self.metrics.batch_seconds.observe(done.started.elapsed().as_secs_f64());
        self.metrics.inputs_acknowledged.inc_by(done.inputs as u64);
        self.uncommitted = true;
        if self.last_commit.is_none_or(|at| at.elapsed() >= COMMIT_EVERY) {
            self.last_commit = Some(Instant::now());
            self.commit(CommitMode::Async);
        }
        Ok(())
    }

    /// Applies what rebalances did: partitions taken or given up.
    fn apply_changes(&mut self, batch: &mut Batch) -> Result<(), MeteringError> {
        for change in self.context.take_changes() {
            match change {
                Change::Revoked(partitions) => {
                    for p in &partitions {
                        self.states.remove(p);
                        let _ = self.metrics.partition_lag.remove_label_values(&[&p.to_string()]);
                        let _ = self.metrics.partition_input_offset.remove_label_values(&[&p.to_string()]);
                    }
                    batch.remove_partitions(&partitions);
                    // Their records in flight were flushed in the rebalance
                    // callback; what is still held is dropped (the next
                    // owner re-applies those inputs).
                    self.sends.forget(&partitions);
                    tracing::info!(?partitions, "partitions revoked");
                    self.awaiting_assignment = Some(Instant::now());
                }
                Change::Assigned(states) => {
                    // The assignment started at each partition's resume
                    // offset (set in the rebalance callback), so anything
                    // already polled for it is the next input: keep it.
                    tracing::info!(partitions = ?states.iter().map(|(p, _)| *p).collect::<Vec<_>>(), "partitions assigned");
                    self.states.extend(states);
                    self.awaiting_assignment = None;
                }
                Change::Failed(e) => return Err(e),
            }
        }
        self.owned_gauge.set(self.states.len() as i64);
        Ok(())
    }

    /// Applies one batch and sends its outputs (see the module docs); its
    /// acknowledgements are taken later, by `settle`.
    fn process(&mut self, batch: &Batch, started: Instant) -> Result<(), MeteringError> {
        let sends = &mut self.sends;
        sends.begin();
        let mut tally = Tally::default();
        let (alerts_topic, dead_letter_topic) = (&self.config.alerts_topic, &self.config.dead_letter_topic);
        let mut touched: Vec<i32> = Vec::new();
        let mut reseek: Vec<(i32, i64)> = Vec::new();
        let mut handled = 0;
        // One source per batch, its partition and offset set per input (no
        // allocation per input).
        let mut source = SourceOffset { topic: self.config.input_topic.clone(), partition: 0, offset: 0 };
        let inputs = batch.inputs();
        // Inputs decoded ahead of the one applied, each with its index: an
        // input's account and id are each a cache miss in its partition's
        // ledger once the accounts outgrow the cache, so they are
        // prefetched `PREFETCH_AHEAD` inputs early. Decoding reads no
        // state, so decoding early changes no outcome.
        let mut decoded: VecDeque<(usize, Result<Input, CodecError>)> = VecDeque::with_capacity(PREFETCH_AHEAD + 1);
        let mut decoded_to = 0;
        for (n, message) in inputs.iter().enumerate() {
            while decoded_to < inputs.len() && decoded_to <= n + PREFETCH_AHEAD {
                let ahead = &inputs[decoded_to];
                let input = decode(batch.payload(ahead));
                if let (Ok(input), Some(state)) = (&input, self.states.get(&ahead.partition)) {
                    state.ledger.prefetch_input(input);
                }
                decoded.push_back((decoded_to, input));
                decoded_to += 1;
            }
            if n % 64 == 63 {
                // Acknowledgements of side records release held ones.
                sends.pump()?;
            }
            let partition = message.partition;
            let Some(state) = self.states.get_mut(&partition) else { continue };
            if message.offset < state.next_offset || reseek.iter().any(|(p, _)| *p == partition) {
                continue; // handled before (a refetch), or being repositioned
            }
            if message.offset > state.next_offset {
                // The first input is past the resume point (see `ReRead`):
                // seek back; records before the resume point are skipped
                // above.
                if let Some(target) = state.reread.next_start(state.next_offset) {
                    tracing::warn!(
                        partition,
                        expected = state.next_offset,
                        got = message.offset,
                        seek = target,
                        "input starts past the resume point; seeking back"
                    );
                    reseek.push((partition, target));
                    continue;
                }
                tracing::warn!(partition, expected = state.next_offset, got = message.offset, "input offsets skip");
            }
            state.reread.reset();
            handled += 1;
            (source.partition, source.offset) = (partition, message.offset);
            let (key, payload) = (batch.key(message), batch.payload(message));
            while decoded.front().is_some_and(|(index, _)| *index < n) {
                decoded.pop_front(); // skipped above
            }
            // Every input up to n + PREFETCH_AHEAD was decoded above, so the
            // front is input n's; should it not be, input n is decoded here
            // (and a later input whose decode was dropped is decoded then).
            let input = match decoded.pop_front() {
                Some((index, input)) if index == n => input,
                _ => decode(payload),
            };
            match step_decoded(&mut state.ledger, input, key, payload, message.timestamp_ms, &source, state.epoch) {
                Step::Entry { entry, alerts, input_type } => {
                    tally.input(input_type);
                    tally.entry(&entry);
                    // Its alerts first: the entry must not land before them.
                    for alert in alerts {
                        tally.alert(&alert);
                        sends.side(alerts_topic, partition, alert.account_id.as_bytes(), &alert)?;
                    }
                    sends.ledger(partition, entry.account_id.as_bytes(), &entry)?;
                    state.recorded_offset = message.offset + 1;
                    state.since_snapshot += 1;
                }
                Step::Duplicate { input_type } => {
                    tally.input(input_type);
                    tally.duplicate();
                }
                Step::DeadLetter { letter, input_type } => {
                    tally.input(input_type);
                    tally.dead_letter(&letter.reason);
                    sends.side(dead_letter_topic, partition, key.unwrap_or_default(), &letter)?;
                }
            }
            state.next_offset = message.offset + 1;
            if !touched.contains(&partition) {
                touched.push(partition);
            }
        }
        for (partition, offset) in reseek {
            self.consumer
                .seek(&self.config.input_topic, partition, Offset::Offset(offset), Duration::from_secs(10))
                .map_err(MeteringError::kafka(format!("seek partition {partition} to {offset}")))?;
        }
        // Progress markers where the batch ended on inputs without entries,
        // so a restart does not dead-letter them again.
        for p in &touched {
            let Some(state) = self.states.get_mut(p) else { continue };
            if state.next_offset > state.recorded_offset {
                let marker = LedgerMarker {
                    kind: MarkerKind::Progress,
                    claim_id: state.claim_id,
                    epoch: state.epoch,
                    instance: self.instance.clone(),
                    input_topic: self.config.input_topic.clone(),
                    input_partition: *p,
                    next_input_offset: state.next_offset,
                };
                sends.ledger(*p, format!("progress-{p}").as_bytes(), &marker)?;
                state.recorded_offset = state.next_offset;
            }
        }
        tally.publish(&self.metrics);
        self.metrics.ledger_held.inc_by(self.sends.take_held());
        let offsets = touched.iter().filter_map(|p| self.states.get(p).map(|s| (*p, s.next_offset))).collect();
        self.sends.close(offsets, handled, started);
        Ok(())
    }

    /// Whether a partition is due a snapshot and the writer can take one.
    fn snapshot_due(&self) -> bool {
        let Some(every) = self.config.snapshot_every_entries else { return false };
        !self.snapshots.busy()
            && self.states.values().any(|state| state.snapshot_due(every, self.config.snapshot_interval))
    }

    /// Snapshots every owned partition that is due. Runs only with no batch
    /// in flight and every contiguity check passed: the state is then
    /// exactly the fold of the ledger up to this owner's last write (see
    /// `snapshot`).
    fn write_due_snapshots(&mut self) {
        let Some(every) = self.config.snapshot_every_entries else { return };
        debug_assert!(!self.sends.busy(), "a snapshot cut with batches in flight");
        let interval = self.config.snapshot_interval;
        for (partition, state) in &mut self.states {
            let Some(ledger_next_offset) = state.contiguity.next_offset() else { continue };
            if !state.snapshot_due(every, interval) {
                continue;
            }
            if self.snapshots.busy() {
                break; // due again after the next batch
            }
            let point = SnapshotPoint {
                input_topic: self.config.input_topic.clone(),
                input_partition: *partition,
                ledger_next_offset,
                claim_epoch: state.epoch,
                claim_id: state.claim_id,
                resume_input_offset: state.recorded_offset,
            };
            // Only the cut is made here (the state must be this batch's);
            // chunking, encoding and writing run on the snapshot thread.
            let job = SnapshotJob {
                partition: *partition,
                slot: state.snapshot_slot,
                point,
                state: state.ledger.snapshot(),
                cut_at: Instant::now(),
            };
            if self.snapshots.offer(job) {
                state.since_snapshot = 0;
                state.last_snapshot = Instant::now();
                state.snapshot_slot ^= 1;
            }
        }
    }

    /// Once a second: per-partition lag and offsets, offsets for the
    /// partition watch, a retry of a failed offset commit, and what the
    /// watch found stalled.
    fn tick(&mut self, health: &Health) -> Result<(), MeteringError> {
        let topic = &self.config.input_topic;
        self.lag_gauge.set(self.context.watermarks.lag(topic));
        for (partition, state) in &self.states {
            let label = partition.to_string();
            self.metrics.partition_input_offset.with_label_values(&[&label]).set(state.next_offset);
            if let Some(high) = self.context.watermarks.high_watermark(topic, *partition) {
                let lag = (high - state.next_offset).max(0);
                self.metrics.partition_lag.with_label_values(&[&label]).set(lag);
            }
        }
        self.watch.set_owned(self.states.iter().map(|(p, s)| (*p, s.next_offset)));
        if self.context.commit_failed.swap(false, Ordering::Relaxed) || self.uncommitted {
            self.commit(CommitMode::Async);
        }
        let actionable: Vec<String> =
            self.watch.stalled().iter().filter(|s| s.actionable()).map(ToString::to_string).collect();
        if actionable.is_empty() {
            health.set_problem(None);
            return Ok(());
        }
        let detail = actionable.join("; ");
        health.set_problem(Some(detail.clone()));
        match self.config.on_stall {
            OnStall::Exit => Err(MeteringError::Stalled { detail }),
            OnStall::Report => Ok(()),
        }
    }

    /// A member whose join never completes (a coordinator that lost it, a
    /// broker restart mid-join) would otherwise idle silently forever. An
    /// idle standby is fine: it did receive an (empty) assignment.
    fn check_assignment_wait(&self) -> Result<(), MeteringError> {
        let Some(since) = self.awaiting_assignment else { return Ok(()) };
        let waited = since.elapsed();
        if waited > self.config.join_timeout {
            return Err(MeteringError::NoAssignment { group: self.config.group_id.clone(), waited });
        }
        if waited > Duration::from_secs(10) {
            tracing::warn!(group = %self.config.group_id, waited_s = waited.as_secs(), "waiting for a partition assignment");
        }
        Ok(())
    }

    fn commit(&mut self, mode: CommitMode) {
        self.uncommitted = false;
        let mut list = TopicPartitionList::new();
        for (p, state) in &self.states {
            let _ = list.add_partition_offset(&self.config.input_topic, *p, Offset::Offset(state.durable_offset));
        }
        if list.count() > 0 {
            if let Err(e) = self.consumer.commit(&list, mode) {
                // Offsets are a hint (lag, the partition watch): the ledger
                // holds the resume point, so a failed commit loses nothing.
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
    }
}

/// How long a poll waits for a first input before the loop finishes what
/// is in flight and checks in (ticks, shutdown).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Completed batches commit offsets at most this often (the first one at
/// once), and a tick commits what completed since (so twice a second at
/// most): they are hints for lag and the partition watch, the resume point
/// is in the ledger, and tens of commits a second buy nothing. The empty
/// polls once blamed on per-batch commits were mostly librdkafka's fetch
/// backoff (`tally_service::kafka::consumer_config`; docs/DESIGN.md, the
/// batch protocol).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Longest single poll while batches are in flight: their completions are
/// checked between polls.
const BUSY_POLL: Duration = Duration::from_millis(5);

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}
