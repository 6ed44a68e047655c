//! Kafka settings and reads every tally service shares.
//!
//! Reading "to the end" uses the high watermark that fetch responses carry
//! (reported through librdkafka's statistics), never ListOffsets(latest):
//! some brokers (Tansu's memory storage) answer that one wrongly, and the
//! fetch watermark is what the broker actually serves.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
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
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .set("enable.partition.eof", "false");
    config
}

/// Keeps the per-partition high watermarks and consumer lag that
/// librdkafka's statistics report.
#[derive(Default, Clone)]
pub struct WatermarkContext {
    partitions: Arc<Mutex<HashMap<(String, i32), (i64, i64)>>>,
    reports: Arc<AtomicU64>,
}

impl WatermarkContext {
    /// The last reported high watermark of a partition, if known.
    pub fn high(&self, topic: &str, partition: i32) -> Option<i64> {
        let partitions = self.partitions.lock().ok()?;
        partitions.get(&(topic.to_string(), partition)).map(|(high, _)| *high).filter(|h| *h >= 0)
    }
    /// Sum of the consumer lag of every partition of `topic` (unknown = 0).
    pub fn lag(&self, topic: &str) -> i64 {
        self.partitions.lock().map_or(0, |p| {
            p.iter().filter(|((t, _), _)| t == topic).map(|(_, (_, lag))| (*lag).max(0)).sum()
        })
    }
    /// How many statistics reports arrived.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::SeqCst)
    }
    /// Records a statistics report (call from a context's `stats`).
    pub fn record(&self, statistics: &Statistics) {
        if let Ok(mut partitions) = self.partitions.lock() {
            for (name, topic) in &statistics.topics {
                for (id, partition) in &topic.partitions {
                    if *id >= 0 {
                        partitions.insert((name.clone(), *id), (partition.hi_offset, partition.consumer_lag));
                    }
                }
            }
        }
        self.reports.fetch_add(1, Ordering::SeqCst);
    }
}

impl ClientContext for WatermarkContext {
    fn stats(&self, statistics: Statistics) {
        self.record(&statistics);
    }
}

impl ConsumerContext for WatermarkContext {}

/// Why a partition read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
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
    /// The callback refused a record.
    #[error("{0}")]
    Visit(String),
}

/// Where a read stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// The high watermark, as fetches report it after the read starts.
    End,
    /// This offset, included.
    Offset(i64),
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
) -> Result<i64, ReadError> {
    let kafka = |source| ReadError::Kafka { topic: topic.to_string(), partition, source };
    let context = WatermarkContext::default();
    let consumer: BaseConsumer<WatermarkContext> = consumer_config(bootstrap, "tally-partition-reader")
        .set("statistics.interval.ms", "20")
        .create_with_context(context.clone())
        .map_err(kafka)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(kafka)?;
    consumer.assign(&assignment).map_err(kafka)?;
    // Only reports made after the assignment count: an earlier one may
    // predate records produced just before this read.
    let reports_at_start = context.reports();
    let deadline = Instant::now() + timeout;
    let mut next = from;
    loop {
        let reached = match until {
            Until::Offset(last) => next > last,
            Until::End => {
                context.reports() >= reports_at_start + 2 && context.high(topic, partition).is_some_and(|h| next >= h)
            }
        };
        if reached {
            return Ok(next);
        }
        if Instant::now() > deadline {
            let target = match until {
                Until::Offset(o) => Some(o),
                Until::End => None,
            };
            return Err(ReadError::Timeout { topic: topic.into(), partition, target, at: next, timeout });
        }
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message.map_err(kafka)?;
            if message.offset() < next {
                continue;
            }
            next = message.offset() + 1;
            visit(&message).map_err(|e| ReadError::Visit(e.to_string()))?;
        }
    }
}
