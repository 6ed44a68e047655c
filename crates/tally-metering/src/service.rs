//! The metering loop: poll a batch, apply it with the core, write outputs,
//! store progress.
//!
//! Per batch, records are produced while the batch is applied (so the
//! broker's acknowledgements overlap the work), under one rule: a ledger
//! record is sent only after every dead letter and alert before it in the
//! batch is acknowledged. Until the batch's first side record, ledger
//! records go out at once; after it they wait. Then:
//! 1. wait for the dead letters and alerts, send the waiting ledger records
//!    and a PROGRESS marker for a partition whose last handled input
//!    produced no entry, and wait for every ledger acknowledgement;
//! 2. check that this owner's ledger writes are contiguous, snapshot what is
//!    due, and commit consumer offsets (a hint for lag; the resume point
//!    comes from the ledger).
//!
//! A crash before a side record is acknowledged leaves no ledger record
//! covering its input, so the restart re-sends it (at-least-once; dead
//! letters and alerts carry deterministic ids and source coordinates). A
//! crash with ledger records in flight loses nothing and doubles nothing:
//! the restart rebuilds from what the ledger holds and re-applies the rest,
//! which gives the same bytes. Any delivery error is fatal: the process
//! exits and its restart rebuilds state, so a gap in the ledger can never be
//! followed by later entries (`enable.gapless.guarantee` too).

use std::{
    collections::BTreeMap,
    ops::Range,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::OwnedMessage,
    producer::{future_producer::DeliveryFuture, FutureProducer, FutureRecord, Producer},
    statistics::Statistics,
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
};
use tally_events::{
    codec::Record, Alert, Codec, EntryStatus, LedgerMarker, MarkerKind, PartitionSnapshot, SourceOffset,
};
use tally_ledger::{Ledger, LedgerConfig, RateTable};
use tally_service::kafka::{consumer_config, read_partition, LagContext, ReRead, Until};
use tokio::{runtime::Handle, sync::watch};
use uuid::Uuid;

use crate::{
    config::{Assignment, MeteringConfig, OnStall},
    metrics::Metrics,
    restore::Restorer,
    snapshot::{self, SnapshotPoint},
    step::{step, Step},
    watch::{Watch, WatchState},
};

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    /// Kafka failed in a way the service does not ride out.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// A produced record was not acknowledged: state must be rebuilt.
    #[error("delivery to {topic} failed: {source}; exiting so a restart rebuilds state from the ledger")]
    Delivery {
        /// Topic.
        topic: String,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// Rebuilding a partition failed.
    #[error("restoring partition {partition}: {message}")]
    Restore {
        /// Partition.
        partition: i32,
        /// What went wrong.
        message: String,
    },
    /// Another instance claimed the partition in the same instant.
    #[error("lost the claim race for partition {partition}; exiting so a restart claims again")]
    LostClaim {
        /// Partition.
        partition: i32,
    },
    /// An output record did not fit its own schema (a bug, not an input fault).
    #[error("cannot encode an output record for partition {partition}: {message}")]
    Encode {
        /// Partition.
        partition: i32,
        /// What went wrong.
        message: String,
    },
    /// Another writer appended to an owned ledger partition.
    #[error("ledger partition {partition} has a foreign write (expected offset {expected}, got {got}): superseded; exiting so a restart rebuilds from the log")]
    Superseded {
        /// Partition.
        partition: i32,
        /// Offset this owner expected.
        expected: i64,
        /// Offset it got.
        got: i64,
    },
    /// The consumer group gave this instance no assignment (not even an
    /// empty one) within the bound: its membership is stuck.
    #[error(
        "no partition assignment from consumer group {group} within {waited:?}; exiting so a restart joins afresh"
    )]
    NoAssignment {
        /// Group.
        group: String,
        /// How long it waited.
        waited: Duration,
    },
    /// An input partition has inputs waiting and no progress, and a
    /// restart of this instance can mend it (see `watch`).
    #[error("{detail}; exiting so a restart takes the partitions again (on_stall = \"exit\")")]
    Stalled {
        /// What stalled, and who owns it.
        detail: String,
    },
    /// A topic is missing or shaped wrong.
    #[error("topic {topic}: {message}")]
    Topic {
        /// Topic.
        topic: String,
        /// What is wrong.
        message: String,
    },
}

impl MeteringError {
    fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> MeteringError {
        let context = context.into();
        move |source| MeteringError::Kafka { context, source }
    }
}

enum Change {
    Assigned(Vec<(i32, PartitionState)>),
    Revoked(Vec<i32>),
    Failed(MeteringError),
}

/// What restoring a partition needs; shared by the loop and the rebalance
/// callback.
struct Shared {
    config: MeteringConfig,
    rates: Arc<RateTable>,
    producer: FutureProducer,
    metrics: Metrics,
    runtime: Handle,
    instance: String,
    /// Owned partitions and restores in progress, for the partition watch.
    watch: WatchState,
}

/// Consumer context: forwards statistics, and rebuilds each assigned
/// partition's state *inside* the rebalance callback, setting the offset
/// the assignment starts from. Seeking after the assignment instead races
/// with librdkafka applying the group's committed offset (the committed
/// offset can win, skipping inputs).
#[derive(Clone)]
pub struct MeteringContext {
    watermarks: LagContext,
    changes: Arc<Mutex<Vec<Change>>>,
    shared: Arc<Shared>,
    /// An offset commit failed since the last retry: committed offsets
    /// are the progress other instances watch, so the loop commits again.
    commit_failed: Arc<AtomicBool>,
}

impl MeteringContext {
    fn push(&self, change: Change) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }
}

impl ClientContext for MeteringContext {
    fn stats(&self, statistics: Statistics) {
        self.watermarks.record(&statistics);
    }
}

impl ConsumerContext for MeteringContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let topic = &self.shared.config.input_topic;
        match rebalance {
            Rebalance::Assign(list) => {
                let mut states = Vec::new();
                for mut element in list.elements() {
                    if element.topic() != topic {
                        continue;
                    }
                    let partition = element.partition();
                    match restore(&self.shared, consumer, partition) {
                        Ok(state) => {
                            // The assignment starts where the ledger says.
                            if let Err(e) = element.set_offset(Offset::Offset(state.next_offset)) {
                                self.push(Change::Failed(MeteringError::kafka(format!("set offset of {partition}"))(
                                    e,
                                )));
                                return;
                            }
                            states.push((partition, state));
                        }
                        Err(e) => {
                            self.push(Change::Failed(e));
                            return;
                        }
                    }
                }
                self.push(Change::Assigned(states));
            }
            Rebalance::Revoke(list) => {
                let partitions = list.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect();
                self.push(Change::Revoked(partitions));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "offset commit failed (retried)");
            self.commit_failed.store(true, Ordering::Relaxed);
        }
    }
}

struct PartitionState {
    ledger: Ledger,
    epoch: i64,
    claim_id: Uuid,
    /// Next input offset to handle.
    next_offset: i64,
    /// Offset after the input of the last ledger entry or marker written.
    recorded_offset: i64,
    /// Ledger offset of this owner's last write (its claim at first): its
    /// next write must land right after it, or someone else wrote.
    ledger_offset: i64,
    /// Repositioning after a fetch that came back past `next_offset`.
    reread: ReRead,
    /// Ledger entries written since the last snapshot (or the restore).
    since_snapshot: u64,
    /// When the last snapshot was written (or the partition restored).
    last_snapshot: Instant,
    /// Snapshot key slot to write next (alternates; see `snapshot`).
    snapshot_slot: u8,
}

impl PartitionState {
    /// A partition just taken: inputs resume at `resume`, and this owner's
    /// next ledger write must follow `ledger_offset` (-1: not checked).
    fn new(ledger: Ledger, epoch: i64, claim_id: Uuid, resume: i64, ledger_offset: i64) -> Self {
        PartitionState {
            ledger,
            epoch,
            claim_id,
            next_offset: resume,
            recorded_offset: resume,
            ledger_offset,
            reread: ReRead::default(),
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            snapshot_slot: 0,
        }
    }
}

/// The running service.
pub struct Metering {
    config: MeteringConfig,
    consumer: BaseConsumer<MeteringContext>,
    context: MeteringContext,
    producer: FutureProducer,
    metrics: Metrics,
    runtime: Handle,
    instance: String,
    states: BTreeMap<i32, PartitionState>,
    /// Since when the instance waits for the group to assign it partitions
    /// (start, or after a revocation); `None` once an assignment arrived.
    awaiting_assignment: Option<Instant>,
    /// Reused from batch to batch.
    sends: Sends,
    snapshots: SnapshotWriter,
    /// What the partition watch knows of this instance's partitions.
    watch: WatchState,
}

/// One batch's sends. Records go out while the batch is being applied, so
/// their acknowledgements overlap the work. What keeps a crash safe still
/// holds: a ledger record is sent only once every dead letter and alert
/// before it in the batch is acknowledged (the ledger is the resume point,
/// so a side record must never trail a ledger record that covers its
/// input). After the batch's first side record, later ledger records wait
/// in `held` until [`Sends::finish`] has the side acknowledgements.
///
/// Kept from batch to batch: its buffers are reused, so a batch costs no
/// allocation per record.
struct Sends {
    producer: FutureProducer,
    side: Vec<(String, DeliveryFuture)>,
    ledger: Vec<DeliveryFuture>,
    /// Waiting ledger records: key and payload are ranges of `arena`.
    held: Vec<(i32, Range<usize>, Range<usize>)>,
    arena: Vec<u8>,
    /// Encoding buffer of a record sent at once (librdkafka copies it).
    scratch: Vec<u8>,
    /// A side record was sent: ledger records now wait.
    holding: bool,
    started: bool,
}

impl Sends {
    fn new(producer: FutureProducer) -> Self {
        Sends {
            producer,
            side: Vec::new(),
            ledger: Vec::new(),
            held: Vec::new(),
            arena: Vec::new(),
            scratch: Vec::with_capacity(512),
            holding: false,
            started: false,
        }
    }

    /// Starts a batch.
    fn begin(&mut self) {
        self.side.clear();
        self.ledger.clear();
        self.held.clear();
        self.arena.clear();
        self.holding = false;
        self.started = false;
    }

    /// Sends what `scratch` holds.
    fn send_scratch(&mut self, topic: &str, partition: i32, key: &[u8]) -> Result<DeliveryFuture, MeteringError> {
        if !self.started {
            self.started = true;
            crate::faults::point("before_produce");
        }
        produce(&self.producer, topic, partition, key, &self.scratch)
    }

    /// Encodes and sends a dead letter or alert; ledger records wait from now on.
    fn side<T: Record>(&mut self, topic: &str, partition: i32, key: &[u8], record: &T) -> Result<(), MeteringError> {
        encode(&mut self.scratch, partition, record)?;
        let future = self.send_scratch(topic, partition, key)?;
        self.side.push((topic.to_string(), future));
        self.holding = true;
        Ok(())
    }

    /// Encodes a ledger record and sends it, or holds it after a side record.
    fn ledger<T: Record>(&mut self, topic: &str, partition: i32, key: &[u8], record: &T) -> Result<(), MeteringError> {
        if self.holding {
            let key_start = self.arena.len();
            self.arena.extend_from_slice(key);
            let payload_start = self.arena.len();
            Codec::global()
                .encode_into(record, &mut self.arena)
                .map_err(|e| MeteringError::Encode { partition, message: e.to_string() })?;
            self.held.push((partition, key_start..payload_start, payload_start..self.arena.len()));
            return Ok(());
        }
        encode(&mut self.scratch, partition, record)?;
        let future = self.send_scratch(topic, partition, key)?;
        self.ledger.push(future);
        Ok(())
    }

    /// Waits for the side records, sends the held ledger records, waits
    /// for every ledger record; returns (partition, offset) of each ledger
    /// record in the order sent.
    fn finish(&mut self, runtime: &Handle, ledger_topic: &str) -> Result<Vec<(i32, i64)>, MeteringError> {
        crate::faults::point("before_ack");
        for (topic, future) in self.side.drain(..) {
            acknowledged(runtime, &topic, [future])?;
        }
        for (partition, key, payload) in &self.held {
            let future = produce(
                &self.producer,
                ledger_topic,
                *partition,
                &self.arena[key.clone()],
                &self.arena[payload.clone()],
            )?;
            self.ledger.push(future);
        }
        acknowledged(runtime, ledger_topic, self.ledger.drain(..))
    }
}

/// Encodes `record` into `buffer` (cleared first).
fn encode<T: Record>(buffer: &mut Vec<u8>, partition: i32, record: &T) -> Result<(), MeteringError> {
    buffer.clear();
    Codec::global().encode_into(record, buffer).map_err(|e| MeteringError::Encode { partition, message: e.to_string() })
}

/// Produces one record, waiting while librdkafka's queue is full.
fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &[u8],
    payload: &[u8],
) -> Result<DeliveryFuture, MeteringError> {
    let mut record = FutureRecord::to(topic).partition(partition).key(key).payload(payload);
    loop {
        match producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(5));
            }
            Err((source, _)) => return Err(MeteringError::Delivery { topic: topic.to_string(), source }),
        }
    }
}

/// Waits for acknowledgements, in order; any failure is fatal.
fn acknowledged(
    runtime: &Handle,
    topic: &str,
    futures: impl IntoIterator<Item = DeliveryFuture>,
) -> Result<Vec<(i32, i64)>, MeteringError> {
    let mut delivered = Vec::new();
    for future in futures {
        match runtime.block_on(future) {
            Ok(Ok(delivery)) => delivered.push((delivery.partition, delivery.offset)),
            Ok(Err((source, _))) => return Err(MeteringError::Delivery { topic: topic.to_string(), source }),
            Err(_) => return Err(MeteringError::Delivery { topic: topic.to_string(), source: KafkaError::Canceled }),
        }
    }
    Ok(delivered)
}

/// A snapshot cut by the loop, for the snapshot thread to write.
struct SnapshotJob {
    partition: i32,
    slot: u8,
    point: SnapshotPoint,
    state: tally_ledger::LedgerSnapshot,
    cut_at: Instant,
}

/// Writes snapshots off the metering loop: chunking, encoding, producing
/// and waiting for acknowledgements took ~100 ms at a full dedup window,
/// a pause of every owned partition's input. One snapshot at a time; the
/// loop skips (and retries after its next batch) while one is being
/// written. A snapshot that fails or is cut short costs restore time only.
struct SnapshotWriter {
    sender: Option<std::sync::mpsc::SyncSender<SnapshotJob>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SnapshotWriter {
    fn start(producer: FutureProducer, runtime: Handle, metrics: Metrics, topic: String) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<SnapshotJob>(1);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = queued.clone();
        let thread = std::thread::Builder::new()
            .name("tally-snapshots".into())
            .spawn(move || {
                for job in receiver {
                    let (partition, cut_at) = (job.partition, job.cut_at);
                    let ledger_next_offset = job.point.ledger_next_offset;
                    match write_snapshot(&producer, &runtime, &topic, job) {
                        Ok(chunks) => {
                            crate::faults::point("after_snapshot");
                            metrics.snapshots.inc();
                            metrics.snapshot_seconds.observe(cut_at.elapsed().as_secs_f64());
                            tracing::info!(
                                partition,
                                ledger_next_offset,
                                chunks,
                                ms = cut_at.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "snapshot not written (restore reads more ledger)")
                        }
                    }
                    done.fetch_sub(1, std::sync::atomic::Ordering::Release);
                }
            })
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot start the snapshot thread: no snapshots will be written"),
            )
            .ok();
        SnapshotWriter { sender: Some(sender), queued, thread }
    }

    fn busy(&self) -> bool {
        self.queued.load(std::sync::atomic::Ordering::Acquire) > 0 || self.thread.is_none()
    }

    /// Hands a snapshot over; false if the writer is busy.
    fn offer(&self, job: SnapshotJob) -> bool {
        let Some(sender) = &self.sender else { return false };
        self.queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if sender.try_send(job).is_ok() {
            return true;
        }
        self.queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        false
    }

    /// Lets the snapshot in hand finish (shutdown).
    fn finish(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Chunks, encodes and writes one snapshot; returns its chunk count.
fn write_snapshot(
    producer: &FutureProducer,
    runtime: &Handle,
    topic: &str,
    job: SnapshotJob,
) -> Result<usize, MeteringError> {
    let partition = job.partition;
    let chunks = snapshot::chunks(&job.state, &job.point, Uuid::new_v4());
    let mut futures = Vec::with_capacity(chunks.len());
    let mut bytes = Vec::new();
    for chunk in &chunks {
        bytes.clear();
        Codec::global()
            .encode_into(chunk, &mut bytes)
            .map_err(|e| MeteringError::Encode { partition, message: e.to_string() })?;
        let key = snapshot::chunk_key(partition, job.slot, chunk.chunk);
        futures.push(produce(producer, topic, partition, key.as_bytes(), &bytes)?);
    }
    acknowledged(runtime, topic, futures)?;
    Ok(chunks.len())
}

/// Metric increments of one batch, applied once at its end: a labelled
/// counter lookup hashes its labels, too costly per input.
#[derive(Default)]
struct Tally {
    inputs: Vec<(&'static str, u64)>,
    entries: Vec<((&'static str, &'static str), u64)>,
    duplicates: u64,
}

fn bump<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

impl Metering {
    /// Connects, checks and creates topics. `runtime` is used to await
    /// deliveries from the blocking loop.
    pub fn start(
        config: MeteringConfig,
        rates: Arc<RateTable>,
        metrics: Metrics,
        runtime: Handle,
    ) -> Result<Self, MeteringError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .map_err(MeteringError::kafka("create producer"))?;
        let instance = format!("{}:{}", hostname(), std::process::id());
        let watch = WatchState::default();
        let shared = Arc::new(Shared {
            config: config.clone(),
            rates,
            producer: producer.clone(),
            metrics: metrics.clone(),
            runtime: runtime.clone(),
            instance: instance.clone(),
            watch: watch.clone(),
        });
        let context = MeteringContext {
            watermarks: LagContext::default(),
            changes: Arc::default(),
            shared,
            commit_failed: Arc::default(),
        };
        let mut consumer_settings = consumer_config(&config.brokers, &config.group_id);
        consumer_settings
            .set("statistics.interval.ms", "1000")
            .set("max.poll.interval.ms", config.max_poll_interval.as_millis().to_string())
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (config.session_timeout.as_millis() / 3).min(3_000).to_string());
        if let Assignment::Group { instance_id: Some(id) } = &config.assignment {
            consumer_settings.set("group.instance.id", id);
        }
        let consumer: BaseConsumer<MeteringContext> =
            consumer_settings.create_with_context(context.clone()).map_err(MeteringError::kafka("create consumer"))?;
        let sends = Sends::new(producer.clone());
        let snapshots =
            SnapshotWriter::start(producer.clone(), runtime.clone(), metrics.clone(), config.snapshot_topic.clone());
        let mut service = Metering {
            config,
            consumer,
            context,
            producer,
            metrics,
            runtime,
            instance,
            states: BTreeMap::new(),
            awaiting_assignment: Some(Instant::now()),
            sends,
            snapshots,
            watch,
        };
        let partitions = service.prepare_topics()?;
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

    /// Fixed assignment: restores and claims every partition this instance
    /// owns by the layout, then reads them from where the ledger says. No
    /// group coordinator takes part, so nothing the broker remembers of an
    /// earlier member can keep them from this instance.
    fn take_fixed_partitions(&mut self, partitions: usize, index: u32, count: u32) -> Result<(), MeteringError> {
        let mine: Vec<i32> = (0..partitions as i32).filter(|p| p.unsigned_abs() % count == index).collect();
        tracing::info!(instance_index = index, instance_count = count, partitions = ?mine, "fixed assignment");
        let mut list = TopicPartitionList::new();
        for &partition in &mine {
            let state = restore(&self.context.shared, &self.consumer, partition)?;
            list.add_partition_offset(&self.config.input_topic, partition, Offset::Offset(state.next_offset))
                .map_err(MeteringError::kafka(format!("assign partition {partition}")))?;
            self.states.insert(partition, state);
        }
        self.consumer.assign(&list).map_err(MeteringError::kafka("assign the fixed partitions"))?;
        self.awaiting_assignment = None;
        self.metrics.partitions_owned.set(self.states.len() as i64);
        // The resume points are the progress other instances watch.
        self.commit(CommitMode::Async);
        Ok(())
    }

    fn partitions_of(&self, topic: &str) -> Result<Option<usize>, MeteringError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(MeteringError::kafka(format!("metadata of {topic}")))?;
        Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()))
    }

    /// Checks (and creates) the topics; returns the input's partition count.
    fn prepare_topics(&self) -> Result<usize, MeteringError> {
        let input = &self.config.input_topic;
        // Workers may create the input topic after the service starts:
        // wait for it rather than fail, saying so.
        let deadline = Instant::now() + self.config.restore_timeout;
        let partitions = loop {
            match self.partitions_of(input)? {
                Some(n) if n > 0 => break n,
                _ if Instant::now() < deadline => {
                    tracing::info!(topic = %input, "waiting for the input topic to exist");
                    std::thread::sleep(Duration::from_secs(1));
                }
                _ => {
                    return Err(MeteringError::Topic {
                        topic: input.clone(),
                        message: "does not exist (create it, or run tally simulate)".into(),
                    })
                }
            }
        };
        let plain = [&self.config.ledger_topic, &self.config.alerts_topic, &self.config.dead_letter_topic];
        if self.config.create_topics {
            let specs: Vec<(&str, i32)> = plain.iter().map(|t| (t.as_str(), partitions as i32)).collect();
            self.runtime.block_on(tally_service_topics(&self.config.brokers, &specs, &[]))?;
            // Compaction keeps the newest chunk per key: two snapshots'
            // worth per partition, however long the service runs.
            let snapshots = [(self.config.snapshot_topic.as_str(), partitions as i32)];
            self.runtime.block_on(tally_service_topics(
                &self.config.brokers,
                &snapshots,
                &[("cleanup.policy", "compact")],
            ))?;
        }
        let outputs = plain.into_iter().chain([&self.config.snapshot_topic]);
        for topic in outputs {
            match self.partitions_of(topic)? {
                Some(n) if n == partitions => {}
                Some(n) => {
                    return Err(MeteringError::Topic {
                        topic: topic.clone(),
                        message: format!(
                        "has {n} partitions but {input} has {partitions}: ledger partition p records input partition p"
                    ),
                    })
                }
                None => return Err(MeteringError::Topic { topic: topic.clone(), message: "does not exist".into() }),
            }
        }
        Ok(partitions)
    }

    /// Runs until `shutdown` flips, then finishes the batch in hand,
    /// flushes and commits.
    pub fn run(
        mut self,
        shutdown: watch::Receiver<bool>,
        ready: tally_service::http::Health,
    ) -> Result<(), MeteringError> {
        let mut partition_watch = Watch::start(&self.config, self.metrics.clone(), self.watch.clone())
            .map_err(|message| MeteringError::Topic { topic: self.config.input_topic.clone(), message })?;
        ready.set_ready(true);
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(self.config.batch_size_max.get());
        let mut last_lag = Instant::now();
        while !*shutdown.borrow() {
            let mut first_at: Option<Instant> = None;
            while batch.len() < self.config.batch_size_max.get() {
                let wait = match first_at {
                    None => Duration::from_millis(100),
                    Some(at) => self.config.batch_wait.saturating_sub(at.elapsed()),
                };
                let got_nothing = match self.consumer.poll(wait) {
                    Some(Ok(message)) => {
                        first_at.get_or_insert_with(Instant::now);
                        batch.push(message.detach());
                        false
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                        false
                    }
                    None => true,
                };
                self.apply_changes(&mut batch)?;
                let waited_out = first_at.is_some_and(|at| at.elapsed() >= self.config.batch_wait);
                if (got_nothing && first_at.is_none()) || waited_out || *shutdown.borrow() {
                    break;
                }
            }
            if !batch.is_empty() {
                let started = first_at.unwrap_or_else(Instant::now);
                self.process(&batch)?;
                self.metrics.batch_size.observe(batch.len() as f64);
                self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                batch.clear();
            }
            if last_lag.elapsed() > Duration::from_secs(1) {
                last_lag = Instant::now();
                self.check_assignment_wait()?;
                self.tick_partitions(&ready)?;
            }
        }
        tracing::info!("shutting down: flushing and committing");
        ready.set_ready(false);
        partition_watch.finish();
        self.snapshots.finish();
        self.producer.flush(Duration::from_secs(30)).map_err(MeteringError::kafka("flush on shutdown"))?;
        self.commit(CommitMode::Sync);
        Ok(())
    }

    /// Once a second: per-partition lag, offsets for the partition watch, a
    /// retry of a failed offset commit, and what the watch found stalled.
    fn tick_partitions(&self, health: &tally_service::http::Health) -> Result<(), MeteringError> {
        let topic = &self.config.input_topic;
        self.metrics.consumer_lag.set(self.context.watermarks.lag(topic));
        for (partition, state) in &self.states {
            let label = partition.to_string();
            self.metrics.partition_input_offset.with_label_values(&[&label]).set(state.next_offset);
            if let Some(high) = self.context.watermarks.high_watermark(topic, *partition) {
                let lag = (high - state.next_offset).max(0);
                self.metrics.partition_lag.with_label_values(&[&label]).set(lag);
            }
        }
        self.watch.set_owned(self.states.iter().map(|(p, s)| (*p, s.next_offset)));
        if self.context.commit_failed.swap(false, Ordering::Relaxed) {
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

    fn apply_changes(&mut self, batch: &mut Vec<OwnedMessage>) -> Result<(), MeteringError> {
        let changes: Vec<Change> = self.context.changes.lock().map(|mut c| c.drain(..).collect()).unwrap_or_default();
        for change in changes {
            match change {
                Change::Revoked(partitions) => {
                    for p in &partitions {
                        self.states.remove(p);
                        let _ = self.metrics.partition_lag.remove_label_values(&[&p.to_string()]);
                        let _ = self.metrics.partition_input_offset.remove_label_values(&[&p.to_string()]);
                    }
                    batch.retain(|m| !partitions.contains(&m.partition()));
                    tracing::info!(?partitions, "partitions revoked");
                    self.awaiting_assignment = Some(Instant::now());
                }
                Change::Assigned(states) => {
                    // The assignment started at each partition's resume
                    // offset (set in the rebalance callback), so anything
                    // already polled for it is the next input: keep it.
                    tracing::info!(partitions = ?states.iter().map(|(p, _)| *p).collect::<Vec<_>>(), "partitions assigned");
                    for (p, state) in states {
                        self.states.insert(p, state);
                    }
                    self.awaiting_assignment = None;
                }
                Change::Failed(e) => return Err(e),
            }
        }
        self.metrics.partitions_owned.set(self.states.len() as i64);
        Ok(())
    }

    fn process(&mut self, batch: &[OwnedMessage]) -> Result<(), MeteringError> {
        let sends = &mut self.sends;
        sends.begin();
        let mut tally = Tally::default();
        let (ledger_topic, alerts_topic, dead_letter_topic) =
            (&self.config.ledger_topic, &self.config.alerts_topic, &self.config.dead_letter_topic);
        let mut touched: Vec<i32> = Vec::new();
        let mut reseek: Vec<(i32, i64)> = Vec::new();
        for message in batch {
            let partition = message.partition();
            let Some(state) = self.states.get_mut(&partition) else { continue };
            if message.offset() < state.next_offset || reseek.iter().any(|(p, _)| *p == partition) {
                continue; // handled before (a refetch), or being repositioned
            }
            if message.offset() > state.next_offset {
                // The first input is past the resume point (see `ReRead`):
                // seek back; records before the resume point are skipped
                // above.
                if let Some(target) = state.reread.next_start(state.next_offset) {
                    tracing::warn!(
                        partition,
                        expected = state.next_offset,
                        got = message.offset(),
                        seek = target,
                        "input starts past the resume point; seeking back"
                    );
                    reseek.push((partition, target));
                    continue;
                }
                tracing::warn!(partition, expected = state.next_offset, got = message.offset(), "input offsets skip");
            }
            state.reread.reset();
            let source = SourceOffset { topic: message.topic().to_string(), partition, offset: message.offset() };
            let appended_ms = message.timestamp().to_millis();
            match step(&mut state.ledger, message.key(), message.payload(), appended_ms, &source, state.epoch) {
                Step::Entry { entry, alerts, input_type } => {
                    bump(&mut tally.inputs, input_type);
                    let status = match entry.status {
                        EntryStatus::Success => "success",
                        EntryStatus::Failed => "failed",
                    };
                    bump(&mut tally.entries, (entry.entry_type.name(), status));
                    // Its alerts first: the entry must not land before them.
                    for alert in alerts {
                        self.metrics.alerts.with_label_values(&[alert_kind(&alert)]).inc();
                        sends.side(alerts_topic, partition, alert.account_id.as_bytes(), &alert)?;
                    }
                    sends.ledger(ledger_topic, partition, entry.account_id.as_bytes(), &entry)?;
                    state.recorded_offset = message.offset() + 1;
                    state.since_snapshot += 1;
                }
                Step::Duplicate { input_type } => {
                    bump(&mut tally.inputs, input_type);
                    tally.duplicates += 1;
                }
                Step::DeadLetter { letter, input_type } => {
                    bump(&mut tally.inputs, input_type);
                    self.metrics.dead_letters.with_label_values(&[&letter.reason]).inc();
                    sends.side(dead_letter_topic, partition, message.key().unwrap_or_default(), &letter)?;
                }
            }
            state.next_offset = message.offset() + 1;
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
            if let Some(state) = self.states.get_mut(p) {
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
                    sends.ledger(ledger_topic, *p, format!("progress-{p}").as_bytes(), &marker)?;
                    state.recorded_offset = state.next_offset;
                }
            }
        }
        for (input_type, n) in &tally.inputs {
            self.metrics.inputs.with_label_values(&[input_type]).inc_by(*n);
        }
        for ((entry_type, status), n) in &tally.entries {
            self.metrics.entries.with_label_values(&[entry_type, status]).inc_by(*n);
        }
        self.metrics.duplicates.inc_by(tally.duplicates);
        let delivered = sends.finish(&self.runtime, ledger_topic)?;
        // The fence's other half: this owner's writes must follow each other
        // in the log. A gap is someone else's write (a newer claim, a
        // zombie): stop before committing anything.
        for (partition, offset) in delivered {
            if let Some(state) = self.states.get_mut(&partition) {
                if state.ledger_offset >= 0 && offset != state.ledger_offset + 1 {
                    return Err(MeteringError::Superseded {
                        partition,
                        expected: state.ledger_offset + 1,
                        got: offset,
                    });
                }
                state.ledger_offset = offset;
            }
        }
        crate::faults::point("after_ledger_write");
        self.write_due_snapshots()?;
        self.commit(CommitMode::Async);
        Ok(())
    }

    /// Snapshots every owned partition that is due. Runs only after the
    /// batch's contiguity check passed: the state is then exactly the fold
    /// of the ledger up to this owner's last write (see `snapshot`).
    fn write_due_snapshots(&mut self) -> Result<(), MeteringError> {
        let Some(every) = self.config.snapshot_every_entries else { return Ok(()) };
        let interval = self.config.snapshot_interval;
        let due: Vec<i32> = self
            .states
            .iter()
            .filter(|(_, s)| s.ledger_offset >= 0 && s.since_snapshot > 0)
            .filter(|(_, s)| s.since_snapshot >= every || s.last_snapshot.elapsed() >= interval)
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            if self.snapshots.busy() {
                break; // due again after the next batch
            }
            let Some(state) = self.states.get_mut(&partition) else { continue };
            let point = SnapshotPoint {
                input_topic: self.config.input_topic.clone(),
                input_partition: partition,
                ledger_next_offset: state.ledger_offset + 1,
                claim_epoch: state.epoch,
                claim_id: state.claim_id,
                resume_input_offset: state.recorded_offset,
            };
            // Only the cut is made here (the state must be this batch's);
            // chunking, encoding and writing run on the snapshot thread.
            let job = SnapshotJob {
                partition,
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
        Ok(())
    }

    fn commit(&self, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        for (p, state) in &self.states {
            let _ = list.add_partition_offset(&self.config.input_topic, *p, Offset::Offset(state.next_offset));
        }
        if list.count() > 0 {
            if let Err(e) = self.consumer.commit(&list, mode) {
                // Offsets are a hint (lag, monitoring): the ledger holds the
                // resume point, so a failed commit loses nothing.
                tracing::debug!(error = %e, "offset commit failed");
            }
        }
    }
}

/// Rebuilds one partition's state from the ledger and claims it (see
/// `restore` module docs for the sequence).
fn restore(
    shared: &Shared,
    consumer: &BaseConsumer<MeteringContext>,
    partition: i32,
) -> Result<PartitionState, MeteringError> {
    shared.watch.restoring(partition, true);
    let restored = restore_partition(shared, consumer, partition);
    shared.watch.restoring(partition, false);
    restored
}

fn restore_partition(
    shared: &Shared,
    consumer: &BaseConsumer<MeteringContext>,
    partition: i32,
) -> Result<PartitionState, MeteringError> {
    let started = Instant::now();
    let config = &shared.config;
    let restore_error = |message: String| MeteringError::Restore { partition, message };
    let ledger_config = LedgerConfig { dedup_window: config.dedup_window };
    let topic = &config.ledger_topic;
    let claim_id = Uuid::new_v4();
    let claim = LedgerMarker {
        kind: MarkerKind::Claim,
        claim_id,
        epoch: 0,
        instance: shared.instance.clone(),
        input_topic: config.input_topic.clone(),
        input_partition: partition,
        next_input_offset: 0,
    };
    let payload = Codec::global().encode(&claim).map_err(|e| restore_error(e.to_string()))?;
    let key = format!("claim-{partition}");
    let record = FutureRecord::to(topic).partition(partition).key(&key).payload(&payload);
    let delivery = shared
        .runtime
        .block_on(shared.producer.send(record, Duration::from_secs(30)))
        .map_err(|(source, _)| MeteringError::Delivery { topic: topic.clone(), source })?;
    crate::faults::point("restore_after_claim");
    let epoch = delivery.offset;
    if crate::faults::unsafe_skip_restore() {
        let restorer = Restorer::new(shared.rates.clone(), ledger_config, &config.input_topic, partition);
        // Test-only broken variant: claims, but keeps an empty state and
        // starts from the group offset. Proves the crash test can fail.
        let committed = committed_offset(consumer, &config.input_topic, partition);
        tracing::warn!(partition, committed, "TALLY_UNSAFE_SKIP_RESTORE: empty state from the group offset");
        return Ok(PartitionState::new(restorer.ledger, epoch, claim_id, committed, -1));
    }
    // The newest complete snapshot before the claim, then the ledger after it.
    let found = newest_snapshot(config, partition, epoch).map_err(restore_error)?;
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
        restorer.visit(m)
    })
    .map_err(|e| restore_error(e.to_string()))?;
    shared.metrics.restore_records.inc_by(records);
    if !restorer.owns(claim_id) {
        return Err(MeteringError::LostClaim { partition });
    }
    let elapsed = started.elapsed();
    shared.metrics.restore_seconds.observe(elapsed.as_secs_f64());
    tracing::info!(
        partition,
        epoch,
        entries = restorer.entries,
        fenced = restorer.fenced,
        resume = restorer.resume,
        snapshot = from,
        records,
        ms = elapsed.as_millis() as u64,
        "partition restored and claimed"
    );
    Ok(PartitionState::new(restorer.ledger, epoch, claim_id, restorer.resume, epoch))
}

/// Reads a partition's snapshot topic partition and returns the newest
/// complete snapshot whose state ends at or before `limit`. A record that
/// does not decode is skipped with a warning: snapshots only shorten the
/// restore, the ledger stays the truth.
fn newest_snapshot(
    config: &MeteringConfig,
    partition: i32,
    limit: i64,
) -> Result<Option<(SnapshotPoint, tally_ledger::LedgerSnapshot)>, String> {
    let topic = &config.snapshot_topic;
    let mut assembler = snapshot::Assembler::new(&config.input_topic, partition, limit);
    read_partition(&config.brokers, topic, partition, 0, Until::End, config.restore_timeout, |m| {
        match Codec::global().decode::<PartitionSnapshot>(m.payload().unwrap_or_default()) {
            Ok(chunk) => assembler.visit(chunk),
            Err(e) => {
                tracing::warn!(topic, partition, offset = m.offset(), error = %e, "skipping an unreadable snapshot record");
            }
        }
        Ok::<(), String>(())
    })
    .map_err(|e| format!("reading snapshots: {e}"))?;
    if assembler.foreign > 0 {
        tracing::warn!(
            topic,
            partition,
            chunks = assembler.foreign,
            "skipped snapshot chunks of other input partitions: is the snapshot topic shared by two deployments?"
        );
    }
    assembler.finish().map_err(|e| e.to_string())
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

async fn tally_service_topics(
    brokers: &str,
    specs: &[(&str, i32)],
    config: &[(&str, &str)],
) -> Result<(), MeteringError> {
    tally_service::kafka::ensure_topics_with_config(brokers, specs, config).await.map_err(|e| MeteringError::Topic {
        topic: specs.iter().map(|s| s.0).collect::<Vec<_>>().join(","),
        message: e.to_string(),
    })
}

fn alert_kind(alert: &Alert) -> &'static str {
    match alert.kind {
        tally_events::AlertKind::LowBalance => "low_balance",
        tally_events::AlertKind::Paused => "paused",
        tally_events::AlertKind::Resumed => "resumed",
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}
