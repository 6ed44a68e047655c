//! The aggregator's loop: read owned ledger partitions, batch, flush into
//! ClickHouse, recover from whatever ClickHouse holds after any failure.
//!
//! Each owned partition is in one of three states:
//! - `Recovering`: not read (so memory stays bounded while ClickHouse is
//!   down); at its retry time it claims the partition if it has no claim
//!   yet and reads the resume point ([`Sink::claim`], [`Sink::resume`]);
//! - `Active`: read from the resume point by the consumer, rows queued in
//!   its [`PartitionReader`], flushed by size or time;
//! - `Lost`: another claim is in force; this instance stops writing it
//!   and says so on `/health`.
//!
//! A failed flush sends the partition back to `Recovering` with a doubling
//! backoff: never a blind retry, since a failed INSERT's outcome is unknown.

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use tally_events::Codec;
use tally_service::{
    http::Health,
    kafka::{consumer_config, ensure_topics, partition_count, LagContext, PollDeadline, ProducerSettings, ReRead},
    lifecycle::Service,
};
use tally_warehouse::migrations;
use tokio::{runtime::Handle, sync::watch};

use crate::{
    config::AggregatorConfig,
    faults,
    metrics::Metrics,
    partition::{Outcome, PartitionReader},
    sink::{Batch, Claim, FlushOutcome, Sink},
    AggregatorError,
};

enum Slot {
    Recovering { claim: Option<Claim>, retry_at: Instant, backoff: Duration, problem: Option<String> },
    Active(Box<Active>),
    Lost,
}

struct Active {
    claim: Claim,
    reader: PartitionReader,
    reread: ReRead,
    seen: bool,
    recorded_next: i64,
    first_pending: Option<Instant>,
    last_flush: Instant,
}

/// The running aggregator.
pub struct Aggregator {
    config: AggregatorConfig,
    metrics: Metrics,
    runtime: Handle,
    sink: Sink,
    consumer: BaseConsumer<LagContext>,
    lag: LagContext,
    producer: FutureProducer,
    slots: Vec<(i32, Slot)>,
    in_flight: Option<InFlight>,
}

impl Aggregator {
    /// Connects and checks what the service needs: the schema migrated,
    /// the ledger topic present.
    pub fn start(config: AggregatorConfig, metrics: Metrics, runtime: Handle) -> Result<Self, AggregatorError> {
        let warehouse = tally_warehouse::Warehouse::new(config.warehouse.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        // A start (a supervisor's restart, say) while ClickHouse is down
        // waits for it like a running aggregator does, within the deadline.
        let mut backoff = Duration::from_secs(1);
        loop {
            match runtime.block_on(migrations::check(&warehouse)) {
                Ok(()) => break,
                Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                    tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "cannot check the schema yet");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(AggregatorError::Warehouse(e)),
            }
        }
        let partitions = loop {
            match partition_count(&config.brokers, &config.ledger_topic, Duration::from_secs(10)) {
                Ok(Some(n)) => break n,
                Ok(None) if Instant::now() < deadline => {
                    tracing::info!(topic = %config.ledger_topic, "ledger topic does not exist yet; waiting for metering");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Ok(None) => return Err(AggregatorError::NoLedger(config.ledger_topic.clone())),
                Err(source) => {
                    return Err(AggregatorError::Kafka { what: "reading the ledger topic's partitions", source })
                }
            }
        };
        runtime
            .block_on(ensure_topics(&config.brokers, &[(config.dead_letter_topic.as_str(), partitions)]))
            .map_err(AggregatorError::Topics)?;
        let lag = LagContext::default();
        let consumer: BaseConsumer<LagContext> = consumer_config(&config.brokers, "tally-aggregator")
            .set("statistics.interval.ms", "1000")
            .create_with_context(lag.clone())
            .map_err(|source| AggregatorError::Kafka { what: "creating the ledger consumer", source })?;
        let producer: FutureProducer = ProducerSettings::new(&config.brokers)
            .client_config()
            .create()
            .map_err(|source| AggregatorError::Kafka { what: "creating the dead-letter producer", source })?;
        let instance = format!(
            "{}:{}#{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            config.instance_index
        );
        let sink = Sink::new(warehouse, &instance, config.claim_grace);
        let now = Instant::now();
        let slots: Vec<(i32, Slot)> = (0..partitions)
            .filter(|p| config.owns(*p))
            .map(|p| (p, Slot::Recovering { claim: None, retry_at: now, backoff: config.retry_min, problem: None }))
            .collect();
        tracing::info!(
            partitions = ?slots.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            instance = %instance,
            "aggregator owns these ledger partitions"
        );
        Ok(Aggregator { config, metrics, runtime, sink, consumer, lag, producer, slots, in_flight: None })
    }

    /// Brings the consumer's assignment in line with the active
    /// partitions: a partition that became active is added at its next
    /// offset, one that stopped being active is removed, and one that stays
    /// active is left alone. Re-assigning a partition that is being read
    /// would restart its fetch at the reader's position, which may lie
    /// inside a record batch: Tansu 0.6 answers such a fetch with the next
    /// batch, and the rest of the batch was skipped (found by the
    /// aggregator fault test: six rows missing after another partition's
    /// resume re-assigned every partition).
    fn assign(&self) -> Result<(), AggregatorError> {
        let kafka = |source| AggregatorError::Kafka { what: "assigning ledger partitions", source };
        let current = self.consumer.assignment().map_err(kafka)?;
        let mut add = TopicPartitionList::new();
        let mut remove = TopicPartitionList::new();
        for (p, slot) in &self.slots {
            let assigned = current.elements().iter().any(|e| e.partition() == *p);
            match slot {
                Slot::Active(active) if !assigned => {
                    add.add_partition_offset(&self.config.ledger_topic, *p, Offset::Offset(active.reader.next()))
                        .map_err(kafka)?;
                }
                Slot::Active(_) => {}
                _ if assigned => {
                    remove.add_partition(&self.config.ledger_topic, *p);
                }
                _ => {}
            }
        }
        if remove.count() > 0 {
            self.consumer.incremental_unassign(&remove).map_err(kafka)?;
        }
        if add.count() > 0 {
            self.consumer.incremental_assign(&add).map_err(kafka)?;
        }
        Ok(())
    }

    fn recover(&mut self, index: usize) -> bool {
        let (partition, slot) = &mut self.slots[index];
        let partition = *partition;
        let Slot::Recovering { claim, backoff, retry_at, problem } = slot else { return false };
        if Instant::now() < *retry_at {
            return false;
        }
        let sink = self.sink.clone();
        let held = *claim;
        // The claim is kept across failed resumes: claiming again would
        // start a new epoch (and wait the grace) on every retry.
        let claimed = self.runtime.block_on(async {
            match held {
                Some(claim) if sink.holds(&claim).await? => Ok(Some(claim)),
                Some(_) => Ok(None),
                None => sink.claim(partition).await,
            }
        });
        let result = match claimed {
            Ok(Some(claim)) => {
                *slot = Slot::Recovering {
                    claim: Some(claim),
                    retry_at: *retry_at,
                    backoff: *backoff,
                    problem: problem.clone(),
                };
                self.runtime
                    .block_on(async {
                        sink.wait_for_inserts(partition).await?;
                        sink.resume(partition, faults::blind_resume()).await
                    })
                    .map(|resume| Some((claim, resume)))
            }
            Ok(None) => Ok(None),
            Err(error) => Err(error),
        };
        let Slot::Recovering { backoff, retry_at, problem, .. } = slot else { return false };
        match result {
            Ok(None) => {
                tracing::error!(
                    partition,
                    "another aggregator's claim is in force: this instance no longer writes the partition"
                );
                *slot = Slot::Lost;
                true
            }
            Ok(Some((claim, resume))) => {
                self.metrics.rollup_rebuilds.inc_by(resume.rebuilt.len() as u64);
                self.metrics.last_inserted_offset.with_label_values(&[&partition.to_string()]).set(resume.next);
                tracing::info!(
                    partition,
                    next = resume.next,
                    present = resume.present.len(),
                    epoch = claim.epoch,
                    "partition resumes"
                );
                let reader = PartitionReader::new(
                    &self.config.ledger_topic,
                    resume.reader,
                    resume.next,
                    resume.present,
                    resume.high_water,
                );
                *slot = Slot::Active(Box::new(Active {
                    claim,
                    recorded_next: resume.next,
                    reader,
                    reread: ReRead::default(),
                    seen: false,
                    first_pending: None,
                    last_flush: Instant::now(),
                }));
                self.metrics.clickhouse_failing.set(0);
                true
            }
            Err(error) => {
                self.metrics.retries.inc();
                self.metrics.clickhouse_failing.set(1);
                tracing::warn!(partition, %error, retry_in = ?*backoff, "cannot resume the partition yet");
                *problem = Some(format!("ledger partition {partition}: {error}"));
                *retry_at = Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(self.config.retry_max);
                false
            }
        }
    }

    fn take_record(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) -> bool {
        let Some(index) = self.slots.iter().position(|(p, _)| *p == partition) else { return false };
        let Slot::Active(active) = &mut self.slots[index].1 else { return false };
        let next = active.reader.next();
        if offset > next && (active.seen || next > 0) {
            // Records were skipped. Some brokers answer a fetch from inside
            // a record batch with the next batch; the ledger topic has no
            // gaps of its own (no transactions, no compaction), so a skip
            // in the middle of a read is the same fault, not a gap to
            // accept: read again from further back. Only a read from
            // offset 0 that still comes back past `next` is a real gap.
            if let Some(start) = active.reread.next_start(next) {
                if active.seen {
                    tracing::warn!(partition, offset, next, start, "the fetch skipped records mid-read; re-reading");
                } else {
                    tracing::debug!(partition, offset, start, "fetch skipped records; re-reading");
                }
                let mut list = TopicPartitionList::new();
                let _ = list.add_partition_offset(&self.config.ledger_topic, partition, Offset::Offset(start));
                let _ = self.consumer.seek_partitions(list, Duration::from_secs(5));
                return false;
            }
        }
        if offset == next {
            active.reread.reset();
        }
        if offset <= next {
            active.seen = true;
        }
        let gaps = active.reader.tally().gaps;
        let outcome = active.reader.accept(offset, key, payload);
        self.metrics.gaps.inc_by(active.reader.tally().gaps - gaps);
        let label = match outcome {
            Outcome::Stale => return false,
            Outcome::Row => "row",
            Outcome::Present => "present",
            Outcome::Duplicate => "duplicate",
            Outcome::NotCounted => "not_counted",
            Outcome::Dead(reason) => {
                self.metrics.dead_letters.with_label_values(&[reason.code()]).inc();
                "dead"
            }
        };
        active.seen = true;
        self.metrics.records.with_label_values(&[label]).inc();
        if matches!(outcome, Outcome::Row | Outcome::Dead(_)) && active.first_pending.is_none() {
            active.first_pending = Some(Instant::now());
        }
        false
    }

    fn pending_rows(&self) -> usize {
        self.slots
            .iter()
            .map(|(_, s)| match s {
                Slot::Active(a) => a.reader.pending_rows(),
                _ => 0,
            })
            .sum()
    }

    /// When the next batch is due by time: the earliest row waiting plus
    /// `batch_wait`, or `batch_wait` from now when no row waits.
    fn next_due(&self) -> Instant {
        let wait = self.config.batch_wait.max(Duration::from_millis(5));
        self.slots
            .iter()
            .filter_map(|(_, slot)| match slot {
                Slot::Active(active) => active.first_pending.map(|t| t + wait),
                _ => None,
            })
            .min()
            .unwrap_or_else(|| Instant::now() + wait)
    }

    /// Whether the active partitions' unread records (the broker's high
    /// watermarks, from the client's statistics, at most a second old)
    /// add up to a full batch or more.
    fn behind(&self) -> bool {
        let unread: i64 = self
            .slots
            .iter()
            .filter_map(|(p, slot)| match slot {
                Slot::Active(active) => {
                    self.lag.high_watermark(&self.config.ledger_topic, *p).map(|hw| (hw - active.reader.next()).max(0))
                }
                _ => None,
            })
            .sum();
        unread >= self.config.batch_rows_max as i64
    }

    /// Whether a flush is in flight and not finished yet.
    fn flushing(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| !f.handle.is_finished())
    }

    /// Whether the rows read and not yet flushed make a full batch.
    fn full(&self) -> bool {
        self.pending_rows() >= self.config.batch_rows_max
    }

    /// The partitions whose batch is due (or all with work, `force`).
    fn due(&self, force: bool) -> Vec<usize> {
        let full = self.full();
        let mut due: Vec<usize> = Vec::new();
        for (index, (_, slot)) in self.slots.iter().enumerate() {
            let Slot::Active(active) = slot else { continue };
            let waited = active.first_pending.is_some_and(|t| t.elapsed() >= self.config.batch_wait);
            let moved = active.reader.next() > active.recorded_next;
            let progress_only = moved && active.last_flush.elapsed() >= Duration::from_secs(1);
            if (active.reader.has_work() && (full || waited || force)) || progress_only || (force && moved) {
                due.push(index);
            }
        }
        due
    }

    /// Starts a flush of the partitions that are due (or all with work,
    /// `force`): one flush, one INSERT per month for all of them. At most
    /// one flush is in flight: the one before is finished first, so that
    /// flushes (and their resume points) land in order. Reading goes on
    /// during the flush (the loop does not stop and wait for each INSERT),
    /// up to a full batch. Returns whether the set of active partitions
    /// changed.
    fn flush(&mut self, force: bool) -> bool {
        let mut changed = self.finish_flush(false);
        if self.due(force).is_empty() {
            return changed;
        }
        changed |= self.finish_flush(true);
        // Finishing may have sent partitions back to recovery.
        let due = self.due(force);
        if due.is_empty() {
            return changed;
        }
        let mut taken = Vec::with_capacity(due.len());
        for &index in &due {
            let Slot::Active(active) = &mut self.slots[index].1 else { continue };
            let (rows, dead) = active.reader.take();
            // Not due again until this flush finishes or a new row waits.
            active.first_pending = None;
            taken.push(Taken {
                index,
                claim: active.claim,
                rows,
                dead,
                next: active.reader.next(),
                fence: active.reader.fence().clone(),
            });
        }
        let sink = self.sink.clone();
        let producer = self.producer.clone();
        let dead_topic = self.config.dead_letter_topic.clone();
        let handle = self.runtime.spawn(async move {
            let result = write(&sink, &producer, &dead_topic, &taken).await;
            let done: Vec<(usize, Claim, i64)> = taken.iter().map(|t| (t.index, t.claim, t.next)).collect();
            (done, result)
        });
        self.in_flight = Some(InFlight { started: Instant::now(), handle });
        // The loop reads on while ClickHouse inserts this batch, caught up
        // or not: the next batch's wait starts at its first row, so it is
        // usually due when this flush ends and goes at once. Measured (sink
        // bench, freshness at 50k entries/s, 3 runs, ClickHouse on tmpfs):
        // p99 append -> visible 855 ms instead of 1,509 ms when a caught-up
        // loop waited for each flush and only then started the next wait.
        changed
    }

    /// Applies the outcome of the flush in flight, if there is one and it
    /// has finished (or waits for it, `wait`). Returns whether the set of
    /// active partitions changed.
    fn finish_flush(&mut self, wait: bool) -> bool {
        let Some(in_flight) = self.in_flight.take() else { return false };
        if !wait && !in_flight.handle.is_finished() {
            self.in_flight = Some(in_flight);
            return false;
        }
        let started = in_flight.started;
        let (done, result) = match self.runtime.block_on(in_flight.handle) {
            Ok(finished) => finished,
            // A panic in the flush task: its outcome is unknown like any
            // failed INSERT's, and recovery is the answer to both.
            Err(error) => (Vec::new(), Err(format!("the flush task failed: {error}"))),
        };
        let mut changed = false;
        match result {
            Ok(outcome) => {
                self.metrics.rows_inserted.inc_by(outcome.rows as u64);
                self.metrics.inserts.inc_by(outcome.inserts as u64);
                self.metrics.batches.inc();
                self.metrics.insert_seconds.observe(started.elapsed().as_secs_f64());
                self.metrics.clickhouse_failing.set(0);
                for (index, claim, next) in &done {
                    let (partition, slot) = &mut self.slots[*index];
                    if outcome.superseded.contains(&claim.partition) {
                        tracing::error!(
                            partition = *partition,
                            "another aggregator's claim is in force: this instance no longer writes the partition"
                        );
                        *slot = Slot::Lost;
                        changed = true;
                    } else if let Slot::Active(active) = slot {
                        self.metrics.last_inserted_offset.with_label_values(&[&partition.to_string()]).set(*next);
                        active.recorded_next = *next;
                        active.last_flush = Instant::now();
                    }
                }
            }
            Err(error) => {
                self.metrics.retries.inc();
                self.metrics.clickhouse_failing.set(1);
                // Every partition that was active goes back to recovery,
                // including what was read meanwhile: it is read again from
                // what ClickHouse holds.
                let failed: Vec<usize> = if done.is_empty() {
                    (0..self.slots.len()).collect()
                } else {
                    done.iter().map(|(index, ..)| *index).collect()
                };
                for index in failed {
                    let (partition, slot) = &mut self.slots[index];
                    let Slot::Active(active) = slot else { continue };
                    tracing::warn!(partition = *partition, %error, "flush failed; the partition resumes from what ClickHouse holds");
                    *slot = Slot::Recovering {
                        claim: Some(active.claim),
                        retry_at: Instant::now() + self.config.retry_min,
                        backoff: self.config.retry_min * 2,
                        problem: Some(format!("ledger partition {partition}: {error}")),
                    };
                }
                changed = true;
            }
        }
        changed
    }

    fn report(&self, health: &Health) {
        let mut owned = 0;
        let mut problems = Vec::new();
        for (partition, slot) in &self.slots {
            match slot {
                Slot::Active(active) => {
                    owned += 1;
                    if let Some(hw) = self.lag.high_watermark(&self.config.ledger_topic, *partition) {
                        let lag = (hw - active.recorded_next).max(0);
                        self.metrics.partition_lag.with_label_values(&[&partition.to_string()]).set(lag);
                    }
                }
                Slot::Recovering { problem: Some(problem), .. } => problems.push(problem.clone()),
                Slot::Recovering { .. } => problems.push(format!("ledger partition {partition}: resuming")),
                Slot::Lost => problems.push(format!("ledger partition {partition}: claimed by another aggregator")),
            }
        }
        self.metrics.partitions_owned.set(owned);
        health.set_problem(if problems.is_empty() { None } else { Some(problems.join("; ")) });
        health.set_ready(problems.is_empty());
    }
}

/// One partition's part of the flush in flight, owned by its task.
struct Taken {
    index: usize,
    claim: Claim,
    rows: Vec<(i64, tally_events::LedgerEntry)>,
    dead: Vec<tally_events::DeadLetter>,
    next: i64,
    fence: tally_events::fence::Fence,
}

type FlushDone = (Vec<(usize, Claim, i64)>, Result<FlushOutcome, String>);

/// The flush running on the runtime while the loop reads on.
struct InFlight {
    started: Instant,
    handle: tokio::task::JoinHandle<FlushDone>,
}

/// One flush: dead letters first (the resume point never passes a record
/// whose dead letter is not acknowledged), then the sink's INSERTs.
async fn write(
    sink: &Sink,
    producer: &FutureProducer,
    dead_topic: &str,
    taken: &[Taken],
) -> Result<FlushOutcome, String> {
    for letter in taken.iter().flat_map(|t| t.dead.iter()) {
        let bytes = Codec::global().encode(letter).map_err(|e| format!("encoding a dead letter: {e}"))?;
        let key = letter.key.clone().unwrap_or_default();
        producer
            .send(FutureRecord::to(dead_topic).key(&key).payload(&bytes), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| format!("producing a dead letter to {dead_topic}: {e}"))?;
    }
    let batches: Vec<Batch<'_>> =
        taken.iter().map(|t| Batch { claim: t.claim, rows: &t.rows, next: t.next, fence: t.fence.clone() }).collect();
    sink.flush(&batches, faults::point).await.map_err(|e| e.to_string())
}

impl Service for Aggregator {
    type Error = AggregatorError;

    fn run(mut self, shutdown: watch::Receiver<bool>, health: Health) -> Result<(), AggregatorError> {
        let mut last_report = Instant::now() - Duration::from_secs(1);
        let (mut key_buffer, mut payload_buffer) = (Vec::new(), Vec::new());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut changed = false;
            for index in 0..self.slots.len() {
                changed |= self.recover(index);
            }
            if changed {
                self.assign()?;
            }
            // Read until a batch is due: full, or its first row has waited
            // `batch_wait` (the clock read every 64 records, not per
            // record), no flush is still running and the broker holds less
            // than a batch more. A batch due by time while the flush ahead
            // of it runs could only wait for it, so the loop reads on
            // meanwhile (stopping there left the sink bench's bulk load
            // idle during each INSERT: aggregator / client 0.81-0.86
            // against 0.94-1.07); and while a full batch or more waits in
            // the broker (catching up, bulk), batches go full: a flush
            // costs ClickHouse about 0.1 s whatever its size. Each record's
            // bytes are copied out of the consumer's message into buffers
            // reused across records.
            let mut until = PollDeadline::new(self.next_due(), 64);
            while !self.full() && (!until.passed() || self.flushing() || self.behind()) {
                match self.consumer.poll(Duration::from_millis(5)) {
                    None => until.no_record(),
                    Some(Err(error)) => tracing::debug!(%error, "ledger consumer error (retried by the client)"),
                    Some(Ok(message)) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        let has_key = message.key().map(|key| {
                            key_buffer.clear();
                            key_buffer.extend_from_slice(key);
                        });
                        payload_buffer.clear();
                        payload_buffer.extend_from_slice(message.payload().unwrap_or_default());
                        drop(message);
                        self.take_record(partition, offset, has_key.map(|()| &key_buffer[..]), &payload_buffer);
                    }
                }
            }
            if self.flush(false) {
                self.assign()?;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                self.report(&health);
                last_report = Instant::now();
            }
        }
        tracing::info!("stopping: flushing the batch in hand and releasing claims");
        self.flush(true);
        self.finish_flush(true);
        for (partition, slot) in &self.slots {
            if let Slot::Active(active) = slot {
                if let Err(error) = self.runtime.block_on(self.sink.release(&active.claim)) {
                    tracing::warn!(partition, %error, "cannot release the claim; the next owner will wait the claim grace");
                }
            }
        }
        Ok(())
    }
}
