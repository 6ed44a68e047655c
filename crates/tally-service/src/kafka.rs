//! Kafka settings and reads every tally service shares.
//!
//! Reading "to the end" stops at librdkafka's partition-EOF event, which it
//! raises when the fetch position reaches the high watermark carried by the
//! fetch response itself, and queues after that fetch's messages. Never
//! ListOffsets(latest), and not the statistics' `hi_offset` either (it is
//! refreshed by ListOffsets too): some brokers (Tansu's memory storage)
//! answer ListOffsets(latest) wrongly.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    message::BorrowedMessage,
    statistics::Statistics,
    ClientConfig, Message, Offset, TopicPartitionList,
};

/// Consumer settings every tally consumer uses.
///
/// `fetch.wait.max.ms=5`: some brokers (Tansu) answer a fetch only when
/// that wait runs out, so the default 500 ms would add half a second per
/// hop. Offsets are committed by the services, per batch, never
/// automatically.
///
/// `fetch.queue.backoff.ms=10`: once a partition's prefetched queue passes
/// librdkafka's thresholds (`queued.min.messages`,
/// `queued.max.messages.kbytes`), its next fetch is put off by this long,
/// 1000 ms by default. A consumer catching up drains that queue in well
/// under a second and then polls nothing until the second is up: measured
/// (pipeline bench, 500k inputs, Tansu, 2026-12-07) as runs of about 0.6 s
/// followed by 0.4-0.5 s with the whole machine idle, every consumer on
/// the host included. At 10 ms, metering with one worker went from 125k
/// to 220k inputs/s and the bare loop from 190k-430k to 450k records/s.
/// The queue bounds themselves, and so memory, are unchanged.
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        // After a fetch error (an offset the broker does not serve yet, a
        // leader moving) librdkafka waits 500 ms by default before fetching
        // that partition again: half a second of latency per hiccup.
        .set("fetch.error.backoff.ms", "20")
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.partition.eof", "false");
    config
}

/// Settings of an idempotent producer: what every tally producer shares.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// How long records wait to be batched (`linger.ms`).
    pub linger: Duration,
    /// How long a record may wait for acknowledgement before it fails
    /// (`message.timeout.ms`): rides out broker outages up to this long.
    pub delivery_timeout: Duration,
    /// Records queued before sends wait (`queue.buffering.max.messages`).
    pub queue_max_messages: u32,
    /// Make any delivery failure that could leave a gap fatal
    /// (`enable.gapless.guarantee`): a service whose resume point is its
    /// own output (metering's ledger) must never write past a gap.
    pub gapless: bool,
}

impl ProducerSettings {
    /// Defaults for `brokers`: 5 ms linger, 300 s delivery timeout, a
    /// million queued records, no gapless guarantee.
    pub fn new(brokers: &str) -> Self {
        ProducerSettings {
            brokers: brokers.to_string(),
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(300),
            queue_max_messages: 1_000_000,
            gapless: false,
        }
    }

    /// The librdkafka settings: idempotent (`enable.idempotence`, which
    /// keeps retries inside one producer session from duplicating or
    /// reordering records; across sessions, tally's deterministic ids do),
    /// `acks=all`, no compression.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("message.timeout.ms", self.delivery_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", self.queue_max_messages.to_string())
            .set("compression.type", "none");
        if self.gapless {
            config.set("enable.gapless.guarantee", "true");
        }
        config
    }
}

/// Keeps the per-partition consumer lag and high watermark that
/// librdkafka's statistics report for the partitions a consumer fetches.
/// The high watermark comes with every fetch response, so it is right for
/// a partition being fetched on every broker; for one not fetched it is
/// stale. Good for lag metrics, not for deciding where a partition ends
/// (see the module docs).
#[derive(Default, Clone)]
pub struct LagContext {
    partitions: Arc<Mutex<HashMap<String, HashMap<i32, PartitionStats>>>>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionStats {
    consumer_lag: i64,
    high_watermark: i64,
}

impl LagContext {
    /// Sum of the consumer lag of every partition of `topic` (unknown = 0).
    pub fn lag(&self, topic: &str) -> i64 {
        self.partitions
            .lock()
            .map_or(0, |all| all.get(topic).map_or(0, |p| p.values().map(|s| s.consumer_lag.max(0)).sum()))
    }

    /// The high watermark of `topic`/`partition` as the last statistics
    /// report gave it (`None`: not known yet).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .lock()
            .ok()
            .and_then(|all| all.get(topic).and_then(|p| p.get(&partition)).map(|s| s.high_watermark))
            .filter(|hw| *hw >= 0)
    }

    /// Records a statistics report (call from a context's `stats`).
    pub fn record(&self, statistics: &Statistics) {
        if let Ok(mut all) = self.partitions.lock() {
            for (name, topic) in &statistics.topics {
                let partitions = all.entry(name.clone()).or_default();
                for (id, partition) in &topic.partitions {
                    if *id >= 0 {
                        let stats = PartitionStats {
                            consumer_lag: partition.consumer_lag,
                            high_watermark: partition.hi_offset,
                        };
                        partitions.insert(*id, stats);
                    }
                }
            }
        }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.record(&statistics);
    }
}

impl ConsumerContext for LagContext {}

/// Context of readers that ask for partition-EOF events: librdkafka also
/// reports each one as a client error, which is noise, not a fault.
#[derive(Default, Clone, Copy)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Why a partition read failed; `E` is why the visitor refused a record.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E: std::fmt::Display = std::convert::Infallible> {
    /// Kafka failed.
    #[error("reading {topic}/{partition}: {source}")]
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Cause.
        #[source]
        source: KafkaError,
    },
    /// The end was not reached in time.
    #[error("reading {topic}/{partition} did not reach offset {target:?} within {timeout:?} (at {at})")]
    Timeout {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// What it waited for (None: the high watermark).
        target: Option<i64>,
        /// Next offset it would have read.
        at: i64,
        /// The bound.
        timeout: Duration,
    },
    /// The visitor refused a record.
    #[error("{0}")]
    Visit(E),
}

impl<E: std::fmt::Display> ReadError<E> {
    /// Whether reading again later may succeed (the broker, not the data).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ReadError::Kafka { .. } | ReadError::Timeout { .. })
    }
}

/// Where a read stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// The high watermark, as fetches report it after the read starts.
    End,
    /// This offset, included.
    Offset(i64),
}

/// Where to re-read a partition from when a fetch from `resume` returned
/// records past it. Kafka answers a fetch with the record batch that
/// contains the offset; some brokers (Tansu 0.6) answer with the next
/// batch, skipping the rest of that one. Each call goes further back (256
/// offsets, then 4 times more) down to offset 0, always a batch start; what
/// precedes `resume` is the reader's to skip.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReRead {
    back_off: i64,
}

impl ReRead {
    /// The offset to re-read from, or `None` once a read from offset 0
    /// still came back past `resume`: a real gap in the log (compaction,
    /// transaction markers).
    pub fn next_start(&mut self, resume: i64) -> Option<i64> {
        if self.back_off > 0 && resume - self.back_off <= 0 {
            return None;
        }
        self.back_off = if self.back_off == 0 { 256 } else { self.back_off * 4 };
        Some((resume - self.back_off).max(0))
    }

    /// The records arrived where expected: the next miss starts over.
    pub fn reset(&mut self) {
        self.back_off = 0;
    }
}

/// A deadline for a poll loop that does not read the clock per record: a
/// clock read per record was 5% of reconcile's profile. The clock is read
/// on the first check, after a poll that gave no record (nothing, an
/// error, an end of partition: polls that waited, or may repeat at once),
/// and every `every` polls; a loop of records passes the deadline by at
/// most `every` records.
#[derive(Debug, Clone)]
pub struct PollDeadline {
    at: Instant,
    every: u32,
    polls: u32,
    read_clock: bool,
}

impl PollDeadline {
    /// A deadline at `at`, checked against the clock every `every` polls.
    pub fn new(at: Instant, every: u32) -> PollDeadline {
        PollDeadline { at, every: every.max(1), polls: 0, read_clock: true }
    }

    /// Whether the deadline has passed; call once before each poll.
    pub fn passed(&mut self) -> bool {
        self.polls = self.polls.wrapping_add(1);
        let read = std::mem::take(&mut self.read_clock) || self.polls % self.every == 0;
        read && Instant::now() >= self.at
    }

    /// The last poll gave no record: the next check reads the clock.
    pub fn no_record(&mut self) {
        self.read_clock = true;
    }
}

/// Reads one partition from `from` to `until`, calling `visit` on each
/// record in offset order. Returns the next offset after the last record
/// read.
pub fn read_partition<E: std::fmt::Display>(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    from: i64,
    until: Until,
    timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<i64, ReadError<E>> {
    let kafka = |source| ReadError::Kafka { topic: topic.to_string(), partition, source };
    let consumer: BaseConsumer<ReaderContext> = consumer_config(bootstrap, "tally-partition-reader")
        .set("enable.partition.eof", "true")
        .create_with_context(ReaderContext)
        .map_err(kafka)?;
    let assign = |start: i64| -> Result<(), ReadError<E>> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(kafka)?;
        consumer.assign(&assignment).map_err(kafka)
    };
    assign(from)?;
    let mut deadline = PollDeadline::new(Instant::now() + timeout, 256);
    let mut next = from;
    let mut reread = ReRead::default();
    let mut seen = false;
    loop {
        if let Until::Offset(last) = until {
            if next > last {
                return Ok(next);
            }
        }
        if deadline.passed() {
            let target = match until {
                Until::Offset(o) => Some(o),
                Until::End => None,
            };
            return Err(ReadError::Timeout { topic: topic.into(), partition, target, at: next, timeout });
        }
        match consumer.poll(Duration::from_millis(10)) {
            None => deadline.no_record(),
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => {
                if matches!(until, Until::End) {
                    return Ok(next);
                }
                deadline.no_record();
            }
            // Transport errors are retried by librdkafka; the deadline
            // bounds the read.
            Some(Err(e)) => {
                tracing::debug!(error = %e, topic, partition, "consumer error while reading (retried)");
                deadline.no_record();
            }
            Some(Ok(message)) => {
                if !seen && message.offset() > next && from > 0 {
                    if let Some(start) = reread.next_start(from) {
                        tracing::debug!(
                            topic,
                            partition,
                            from,
                            got = message.offset(),
                            start,
                            "fetch skipped records; re-reading"
                        );
                        assign(start)?;
                        continue;
                    }
                }
                if message.offset() < next {
                    seen = true;
                    continue;
                }
                seen = true;
                next = message.offset() + 1;
                visit(&message).map_err(ReadError::Visit)?;
            }
        }
    }
}

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The admin client could not be created or reached the broker.
    #[error("kafka admin request to {bootstrap} failed: {source}")]
    Kafka {
        /// `bootstrap.servers`.
        bootstrap: String,
        /// Kafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {code}")]
    Refused {
        /// Topic.
        topic: String,
        /// Kafka's error code.
        code: RDKafkaErrorCode,
    },
}

/// Creates each `(name, partitions)` topic that does not exist yet.
/// Goes through the Kafka admin API, so the same call works on Tansu,
/// Apache Kafka, Redpanda or a managed service.
pub async fn ensure_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<(), AdminError> {
    ensure_topics_with_config(bootstrap, topics, &[]).await
}

/// [`ensure_topics`], with topic configs (e.g. `cleanup.policy=compact`)
/// for the topics it creates.
pub async fn ensure_topics_with_config(
    bootstrap: &str,
    topics: &[(&str, i32)],
    config: &[(&str, &str)],
) -> Result<(), AdminError> {
    let kafka = |source| AdminError::Kafka { bootstrap: bootstrap.to_string(), source };
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(kafka)?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            config
                .iter()
                .fold(NewTopic::new(name, *partitions, TopicReplication::Fixed(1)), |topic, (k, v)| topic.set(k, v))
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&new, &options).await.map_err(kafka)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Refused { topic, code }),
        }
    }
    Ok(())
}

/// Partitions of a topic, or `None` when it does not exist (a short-lived
/// client; see [`partition_count_with`] to ask with one already open).
pub fn partition_count(bootstrap: &str, topic: &str, timeout: Duration) -> Result<Option<i32>, KafkaError> {
    let consumer: BaseConsumer = consumer_config(bootstrap, "tally-metadata").create()?;
    partition_count_with(&consumer, topic, timeout)
}

/// Partitions of a topic, asked with `consumer`; `None` when it does not
/// exist or has none. The one place tally reads a partition count.
pub fn partition_count_with<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{PollDeadline, ReRead};

    /// A passed deadline is seen at the first check, after a poll with no
    /// record, and within `every` polls of records; never before it passes.
    #[test]
    fn a_poll_deadline_reads_the_clock_first_after_empty_polls_and_every_n() {
        let past = Instant::now() - Duration::from_secs(1);
        assert!(PollDeadline::new(past, 4).passed(), "the first check reads the clock");
        let mut deadline = PollDeadline::new(past, 4);
        deadline.read_clock = false; // as after a first check of records
        let checks: Vec<bool> = (0..4).map(|_| deadline.passed()).collect();
        assert_eq!(checks, [false, false, false, true], "every 4th poll of records");
        deadline.read_clock = false;
        deadline.no_record();
        assert!(deadline.passed(), "after a poll with no record");
        let mut future = PollDeadline::new(Instant::now() + Duration::from_secs(3600), 1);
        assert!((0..10).all(|_| !future.passed()));
    }

    #[test]
    fn rereads_go_further_back_down_to_zero_then_stop() {
        let mut reread = ReRead::default();
        assert_eq!(reread.next_start(5_000), Some(4_744));
        assert_eq!(reread.next_start(5_000), Some(3_976));
        assert_eq!(reread.next_start(5_000), Some(904));
        assert_eq!(reread.next_start(5_000), Some(0));
        assert_eq!(reread.next_start(5_000), None, "read from 0 and still past: a real gap");
        reread.reset();
        assert_eq!(reread.next_start(100), Some(0));
        assert_eq!(reread.next_start(100), None);
    }
}
