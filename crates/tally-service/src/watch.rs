//! Watching every partition of an input topic for inputs that wait with
//! no progress, whoever is meant to own the partition.
//!
//! A consumer group can leave a partition with no live owner: Tansu 0.6
//! keeps a member killed with -9 when a rebalance completes before its
//! session expires, so its partitions stay assigned to a ghost. A fixed
//! layout of instances can too, when one of them is down. Either way no
//! error is raised anywhere: the partition just stops. So each service
//! instance watches *all* partitions of its input topic, owned or not:
//!
//! - **progress** is the consumer group's committed offset of the
//!   partition, which the owner commits after every batch whose outputs
//!   were acknowledged (any client may read a group's offsets, member or
//!   not; the offset is a progress hint only, never a resume point);
//! - **waiting inputs** are found by reading the partition from that
//!   offset: a record at or after it means inputs wait, the end of the
//!   partition (a fetch response's high watermark) means none. Not
//!   ListOffsets(latest), which Tansu's memory storage answers wrongly
//!   (with the base offset of the last record batch, plus one); a fetch
//!   answers right on every broker.
//!
//! A partition is **stalled** when inputs have waited beyond an unchanged
//! committed offset for the whole stall timeout. [`StallTracker`] holds
//! that rule, pure and unit-tested; [`PartitionProbe`] does the reads.
//! What a stall means (exit, fail `/health`, log) is the service's call.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    ClientConfig, Message, Offset, TopicPartitionList,
};

use crate::kafka::{consumer_config, partition_count_with, ReRead, ReaderContext};

/// Whether inputs wait beyond a partition's committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// None: the partition ends at the committed offset.
    No,
    /// Yes, from this offset on (the first record read at or after the
    /// committed offset).
    From(i64),
    /// The read did not tell in time (a broker away, say): no conclusion.
    Unknown,
}

/// One partition as a probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Partition.
    pub partition: i32,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// Inputs waiting beyond it.
    pub waiting: Waiting,
}

/// A partition's standing after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Partition.
    pub partition: i32,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// First waiting input offset, when inputs wait.
    pub waiting_from: Option<i64>,
    /// How long inputs have waited with the committed offset unchanged.
    pub waiting_for: Duration,
    /// Waited at least the stall timeout.
    pub stalled: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Track {
    committed: Option<i64>,
    /// Since when inputs wait with `committed` unchanged.
    since: Option<Instant>,
    seen: bool,
}

/// The stall rule: a partition is stalled when inputs have waited beyond
/// its committed offset, unchanged, for at least `timeout`. A committed
/// offset that moves is progress and restarts the clock; a partition that
/// ends at its committed offset is idle; an inconclusive read changes
/// nothing.
#[derive(Debug, Clone)]
pub struct StallTracker {
    timeout: Duration,
    tracks: BTreeMap<i32, Track>,
}

impl StallTracker {
    /// A tracker that calls a partition stalled after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        StallTracker { timeout, tracks: BTreeMap::new() }
    }

    /// Takes the observations made at `now` (one per partition); returns
    /// each observed partition's status.
    pub fn observe(&mut self, now: Instant, observations: &[Observation]) -> Vec<Status> {
        observations
            .iter()
            .map(|observation| {
                let track = self.tracks.entry(observation.partition).or_default();
                if !track.seen || track.committed != observation.committed {
                    // First sight, or progress: the clock starts over.
                    track.committed = observation.committed;
                    track.since = None;
                    track.seen = true;
                }
                let waiting_from = match observation.waiting {
                    Waiting::From(offset) => {
                        track.since.get_or_insert(now);
                        Some(offset)
                    }
                    Waiting::No => {
                        track.since = None;
                        None
                    }
                    Waiting::Unknown => None,
                };
                let waiting_for = track.since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
                Status {
                    partition: observation.partition,
                    committed: observation.committed,
                    waiting_from,
                    waiting_for,
                    stalled: track.since.is_some() && waiting_for >= self.timeout,
                }
            })
            .collect()
    }

    /// Forgets a partition (this instance restores it: its commits will
    /// come after the restore).
    pub fn forget(&mut self, partition: i32) {
        self.tracks.remove(&partition);
    }
}

/// Reads a group's committed offsets and whether inputs wait beyond them,
/// with one consumer that never joins the group (it only assigns itself
/// partitions, so it takes nothing from the members).
pub struct PartitionProbe {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    /// How long one probe may take before a partition counts as unknown.
    timeout: Duration,
}

/// After this long with nothing read for a partition, it is re-read from
/// further back (see [`ReRead`]: a fetch from inside the last record batch
/// returns nothing on some brokers).
const QUIET: Duration = Duration::from_millis(400);

impl PartitionProbe {
    /// A probe of `topic` for consumer group `group`.
    pub fn new(bootstrap: &str, group: &str, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        Self::with_config(consumer_config(bootstrap, group), topic, timeout)
    }

    /// A probe with these consumer settings (they must name the group).
    pub fn with_config(mut config: ClientConfig, topic: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let consumer = config
            .set("enable.partition.eof", "true")
            // One small fetch per partition is all a probe needs.
            .set("max.partition.fetch.bytes", "65536")
            .set("fetch.max.bytes", "1048576")
            .set("queued.min.messages", "100")
            .create_with_context(ReaderContext)?;
        Ok(PartitionProbe { consumer, topic: topic.to_string(), timeout })
    }

    /// How many partitions the topic has (0 while it does not exist).
    pub fn partitions(&self) -> Result<i32, KafkaError> {
        Ok(partition_count_with(&self.consumer, &self.topic, self.timeout)?.unwrap_or(0))
    }

    /// Observes partitions `0..partitions`.
    pub fn observe(&self, partitions: i32) -> Result<Vec<Observation>, KafkaError> {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&self.topic, partition);
        }
        let committed = self.consumer.committed_offsets(list, self.timeout)?;
        let committed: BTreeMap<i32, Option<i64>> = (0..partitions)
            .map(|p| {
                let offset = committed.find_partition(&self.topic, p).and_then(|e| e.offset().to_raw());
                (p, offset.filter(|o| *o >= 0))
            })
            .collect();
        let starts: BTreeMap<i32, i64> = committed.iter().map(|(p, c)| (*p, c.unwrap_or(0))).collect();
        let waiting = self.waiting(&starts)?;
        Ok((0..partitions)
            .map(|p| Observation {
                partition: p,
                committed: committed[&p],
                waiting: waiting.get(&p).copied().unwrap_or(Waiting::Unknown),
            })
            .collect())
    }

    /// For each (partition, offset): is there a record at or after the offset?
    fn waiting(&self, starts: &BTreeMap<i32, i64>) -> Result<BTreeMap<i32, Waiting>, KafkaError> {
        let mut found: BTreeMap<i32, Waiting> = BTreeMap::new();
        let mut rereads: BTreeMap<i32, ReRead> = BTreeMap::new();
        let mut reading_from: BTreeMap<i32, i64> = starts.clone();
        let assign = |from: &BTreeMap<i32, i64>, found: &BTreeMap<i32, Waiting>| -> Result<(), KafkaError> {
            let mut list = TopicPartitionList::new();
            for (p, offset) in from.iter().filter(|(p, _)| !found.contains_key(p)) {
                list.add_partition_offset(&self.topic, *p, Offset::Offset(*offset))?;
            }
            self.consumer.assign(&list)
        };
        assign(&reading_from, &found)?;
        let deadline = Instant::now() + self.timeout;
        let mut quiet_since = Instant::now();
        while found.len() < starts.len() && Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    let p = message.partition();
                    if found.contains_key(&p) || message.offset() < starts.get(&p).copied().unwrap_or(0) {
                        continue; // decided, or before the offset (a re-read)
                    }
                    found.insert(p, Waiting::From(message.offset()));
                    quiet_since = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    found.entry(p).or_insert(Waiting::No);
                    quiet_since = Instant::now();
                }
                Some(Err(e)) => tracing::debug!(error = %e, topic = %self.topic, "probe read error (retried)"),
                None if quiet_since.elapsed() > QUIET => {
                    // Nothing for the undecided ones: re-read them from
                    // further back (records before the offset are skipped).
                    let undecided: Vec<(i32, i64)> =
                        starts.iter().filter(|(p, _)| !found.contains_key(p)).map(|(p, s)| (*p, *s)).collect();
                    for (p, start) in undecided {
                        match rereads.entry(p).or_default().next_start(start) {
                            Some(from) => {
                                reading_from.insert(p, from);
                            }
                            None => {
                                found.insert(p, Waiting::Unknown);
                            }
                        }
                    }
                    assign(&reading_from, &found)?;
                    quiet_since = Instant::now();
                }
                None => {}
            }
        }
        self.consumer.unassign()?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(partition: i32, committed: Option<i64>, waiting: Waiting) -> Observation {
        Observation { partition, committed, waiting }
    }

    #[test]
    fn waiting_inputs_with_no_progress_stall_after_the_timeout() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut tracker = StallTracker::new(Duration::from_secs(30));
        let status = tracker.observe(at(0), &[seen(0, Some(10), Waiting::From(10))]);
        assert_eq!((status[0].stalled, status[0].waiting_for), (false, Duration::ZERO));
        let status = tracker.observe(at(20), &[seen(0, Some(10), Waiting::From(10))]);
        assert_eq!((status[0].stalled, status[0].waiting_for), (false, Duration::from_secs(20)));
        let status = tracker.observe(at(30), &[seen(0, Some(10), Waiting::From(12))]);
        assert!(status[0].stalled, "30 s with inputs waiting and the same committed offset");
        assert_eq!(status[0].waiting_from, Some(12));
        // An inconclusive read changes nothing.
        let status = tracker.observe(at(35), &[seen(0, Some(10), Waiting::Unknown)]);
        assert!(status[0].stalled);
        // Progress: the clock starts over, even with inputs still waiting.
        let status = tracker.observe(at(40), &[seen(0, Some(500), Waiting::From(500))]);
        assert_eq!((status[0].stalled, status[0].waiting_for), (false, Duration::ZERO));
    }

    #[test]
    fn an_idle_partition_never_stalls() {
        let start = Instant::now();
        let mut tracker = StallTracker::new(Duration::from_secs(30));
        for s in [0, 60, 600] {
            let status = tracker.observe(start + Duration::from_secs(s), &[seen(3, Some(7), Waiting::No)]);
            assert!(!status[0].stalled);
        }
        // Inputs arrive and nobody takes them: stalled 30 s later.
        let status = tracker.observe(start + Duration::from_secs(601), &[seen(3, Some(7), Waiting::From(7))]);
        assert!(!status[0].stalled);
        let status = tracker.observe(start + Duration::from_secs(631), &[seen(3, Some(7), Waiting::From(7))]);
        assert!(status[0].stalled);
    }

    #[test]
    fn a_partition_never_committed_stalls_too() {
        let start = Instant::now();
        let mut tracker = StallTracker::new(Duration::from_secs(5));
        tracker.observe(start, &[seen(1, None, Waiting::From(0))]);
        let status = tracker.observe(start + Duration::from_secs(5), &[seen(1, None, Waiting::From(0))]);
        assert!(status[0].stalled, "inputs from offset 0, never consumed");
        tracker.forget(1);
        let status = tracker.observe(start + Duration::from_secs(6), &[seen(1, None, Waiting::From(0))]);
        assert!(!status[0].stalled, "forgotten: the clock starts over");
    }
}
