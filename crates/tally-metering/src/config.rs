//! The metering service's config: a raw file form, validated into a typed
//! form. Defaults work on the local stack; see `pipelines/metering.toml`.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use tally_events::names::topics;
use tally_service::config::{load, ConfigError, Problems};

/// The file form: every field optional, unknown fields refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Config format version (1).
    pub version: Option<u32>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Consumer group.
    pub group_id: Option<String>,
    /// Input topic.
    pub input_topic: Option<String>,
    /// Ledger topic.
    pub ledger_topic: Option<String>,
    /// Alerts topic.
    pub alerts_topic: Option<String>,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Snapshot topic (compacted).
    pub snapshot_topic: Option<String>,
    /// Snapshot a partition after this many ledger entries (0: never).
    pub snapshot_every_entries: Option<u64>,
    /// Snapshot a partition that changed at least this often, in s.
    pub snapshot_interval_s: Option<u64>,
    /// Rate table file.
    pub rates_file: Option<PathBuf>,
    /// Most inputs handled in one batch.
    pub batch_size_max: Option<usize>,
    /// Longest a batch waits to fill, in ms.
    pub batch_wait_ms: Option<u64>,
    /// Most batches applied and not yet acknowledged (1: stop and wait).
    pub batches_in_flight: Option<usize>,
    /// Dedup window in days.
    pub dedup_window_days: Option<u32>,
    /// Address of /metrics and /health.
    pub metrics_address: Option<String>,
    /// Create the output topics when missing.
    pub create_topics: Option<bool>,
    /// How long a produced record may wait for acknowledgement, in s.
    pub delivery_timeout_s: Option<u64>,
    /// How long rebuilding one partition's state may take, in s.
    pub restore_timeout_s: Option<u64>,
    /// How long a stop may take to finish the batch in hand, in s.
    pub drain_timeout_s: Option<u64>,
    /// Consumer group session timeout, in ms: how soon a dead instance's
    /// partitions move to another.
    pub session_timeout_ms: Option<u64>,
    /// How long the instance may wait for the consumer group to assign it
    /// partitions (at start, or after a revocation) before it exits, in s.
    pub join_timeout_s: Option<u64>,
    /// Longest pause between two polls before the group evicts the
    /// instance, in ms; also the rebalance timeout (how long a rebalance
    /// waits for members to rejoin). Bounds one partition's restore.
    pub max_poll_interval_ms: Option<u64>,
    /// How instances share the input partitions: "fixed" or "group".
    pub assignment: Option<String>,
    /// Fixed assignment: this instance's index, from 0.
    pub instance_index: Option<u32>,
    /// Fixed assignment: how many instances there are.
    pub instance_count: Option<u32>,
    /// Group assignment: static membership id (KIP-345), if any.
    pub group_instance_id: Option<String>,
    /// How often every input partition is checked for waiting inputs, in s.
    pub watch_interval_s: Option<u64>,
    /// How long inputs may wait with no progress before their partition
    /// counts as stalled, in s.
    pub stall_timeout_s: Option<u64>,
    /// What a stall makes the instance do: "exit" or "report".
    pub on_stall: Option<String>,
    /// Worker threads of this instance, each applying its own share of the
    /// instance's partitions.
    pub workers: Option<u32>,
}

/// How the instances of the service share the input partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Instance `index` of `count` owns the partitions p with
    /// `p % count == index`. No group coordinator takes part: a restarted
    /// instance owns its partitions again at once, whatever the broker's
    /// group coordinator remembers. Two instances with the same index are
    /// safe (the claim fence makes every overlap safe) but fight: each
    /// claim supersedes the other.
    Fixed {
        /// This instance, from 0.
        index: u32,
        /// Instances in all.
        count: NonZeroU32,
    },
    /// The Kafka consumer group spreads the partitions over the running
    /// instances; with `instance_id`, as a static member (KIP-345), whose
    /// restart within the session timeout keeps its partitions.
    Group {
        /// `group.instance.id`.
        instance_id: Option<String>,
    },
}

impl Assignment {
    /// Whether this instance owns `partition` by a fixed layout (`None`
    /// for a group, where the coordinator decides).
    pub fn fixed_owner(&self, partition: i32) -> Option<u32> {
        match self {
            Assignment::Fixed { count, .. } => Some(partition.unsigned_abs() % count.get()),
            Assignment::Group { .. } => None,
        }
    }

    /// Fixed layout: the partitions of `0..partitions` that `worker` of
    /// this instance owns. The instance owns p with p % count == index; its
    /// workers deal those out in turn, so the k-th of them goes to worker
    /// k % workers. Every partition has exactly one worker of one instance,
    /// and a change of the worker count moves partitions only between the
    /// workers of one instance. Empty for a group.
    pub fn fixed_partitions(&self, partitions: i32, worker: Worker) -> Vec<i32> {
        let Assignment::Fixed { index, count } = self else { return Vec::new() };
        (0..partitions)
            .filter(|p| p.unsigned_abs() % count.get() == *index)
            .filter(|p| (p.unsigned_abs() / count.get()) % worker.count.get() == worker.index)
            .collect()
    }
}

/// One worker thread of an instance (see `workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    /// This worker, from 0.
    pub index: u32,
    /// Workers of the instance.
    pub count: NonZeroU32,
}

impl Worker {
    /// The one worker of an instance that runs one.
    pub const ONLY: Worker = Worker { index: 0, count: NonZeroU32::MIN };
}

/// What an instance does about a stalled input partition it can help with:
/// one it owns, or, in a consumer group, any (a restart rejoins the group,
/// which then assigns every partition again). A stalled partition of
/// another instance of a fixed layout is reported, never acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStall {
    /// Fail `/health`, log, and exit non-zero so a supervisor restarts it.
    Exit,
    /// Fail `/health` and log; keep running.
    Report,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteringConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Input topic (usage events, purchases, account changes).
    pub input_topic: String,
    /// Ledger topic.
    pub ledger_topic: String,
    /// Alerts topic.
    pub alerts_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Snapshot topic.
    pub snapshot_topic: String,
    /// Ledger entries between two snapshots of a partition (`None`: never).
    pub snapshot_every_entries: Option<u64>,
    /// Longest time between two snapshots of a partition that changed.
    pub snapshot_interval: Duration,
    /// Rate table file.
    pub rates_file: PathBuf,
    /// Most inputs per batch.
    pub batch_size_max: NonZeroUsize,
    /// Longest wait to fill a batch.
    pub batch_wait: Duration,
    /// Most batches applied and not yet acknowledged.
    pub batches_in_flight: NonZeroUsize,
    /// Dedup window.
    pub dedup_window: chrono::TimeDelta,
    /// /metrics and /health address.
    pub metrics_address: SocketAddr,
    /// Create output topics when missing.
    pub create_topics: bool,
    /// Delivery timeout of produced records.
    pub delivery_timeout: Duration,
    /// Bound on one partition's restore.
    pub restore_timeout: Duration,
    /// How long a stop (SIGTERM) may take to finish the batch in hand.
    pub drain_timeout: Duration,
    /// Consumer group session timeout.
    pub session_timeout: Duration,
    /// Bound on waiting for a (possibly empty) assignment from the group.
    pub join_timeout: Duration,
    /// Consumer `max.poll.interval.ms` (and rebalance timeout).
    pub max_poll_interval: Duration,
    /// How instances share the input partitions.
    pub assignment: Assignment,
    /// How often every input partition is checked.
    pub watch_interval: Duration,
    /// How long inputs may wait with no progress before a stall.
    pub stall_timeout: Duration,
    /// What a stall makes the instance do.
    pub on_stall: OnStall,
    /// Worker threads of the instance.
    pub workers: NonZeroU32,
    /// Where the config came from, for messages.
    pub origin: String,
}

impl MeteringConfig {
    /// Loads `path` (or defaults) with `TALLY_METERING__*` overrides from
    /// `env`, and validates it.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (raw, origin): (RawConfig, String) = load("metering", path, env)?;
        Self::validate(raw, origin)
    }

    /// Checks every field, reporting every bad one at once. The defaults
    /// are here and nowhere else (`pipelines/metering.toml` shows them, and
    /// a test holds the two together).
    pub fn validate(raw: RawConfig, origin: String) -> Result<Self, ConfigError> {
        let mut check = Problems::new(&origin);
        if raw.version.is_some_and(|v| v != 1) {
            check.bad("version", "only version 1 is known");
        }
        let input_topic = check.non_empty("input_topic", raw.input_topic, topics::INPUTS);
        let ledger_topic = check.non_empty("ledger_topic", raw.ledger_topic, topics::LEDGER);
        let alerts_topic = check.non_empty("alerts_topic", raw.alerts_topic, topics::ALERTS);
        let dead_letter_topic = check.non_empty("dead_letter_topic", raw.dead_letter_topic, topics::DEAD_LETTERS);
        let snapshot_topic = check.non_empty("snapshot_topic", raw.snapshot_topic, topics::SNAPSHOTS);
        let mut names = [&input_topic, &ledger_topic, &alerts_topic, &dead_letter_topic, &snapshot_topic];
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            check.bad("ledger_topic", "input, ledger, alerts, dead-letter and snapshot topics must all differ");
        }
        let batch_size_max = check.in_range("batch_size_max", raw.batch_size_max, 5_000, 1..=100_000);
        let batch_wait_ms = check.in_range("batch_wait_ms", raw.batch_wait_ms, 5, 0..=10_000);
        let batches_in_flight = check.in_range("batches_in_flight", raw.batches_in_flight, 4, 1..=64);
        let days = check.in_range("dedup_window_days", raw.dedup_window_days, 7, 1..=366);
        let metrics_address =
            raw.metrics_address.unwrap_or_else(|| "127.0.0.1:9464".into()).parse().unwrap_or_else(|_| {
                check.bad("metrics_address", "must be an address like 127.0.0.1:9464");
                SocketAddr::from(([127, 0, 0, 1], 9464))
            });
        let delivery_timeout_s = check.in_range("delivery_timeout_s", raw.delivery_timeout_s, 300, 10..=3_600);
        let restore_timeout_s = check.in_range("restore_timeout_s", raw.restore_timeout_s, 300, 1..=86_400);
        let drain_timeout_s = check.in_range("drain_timeout_s", raw.drain_timeout_s, 60, 1..=3_600);
        let session_timeout_ms = check.in_range("session_timeout_ms", raw.session_timeout_ms, 10_000, 3_000..=300_000);
        let join_timeout_s = check.in_range("join_timeout_s", raw.join_timeout_s, 120, 10..=3_600);
        let max_poll_interval_ms =
            check.in_range("max_poll_interval_ms", raw.max_poll_interval_ms, 300_000, 10_000..=3_600_000);
        if max_poll_interval_ms <= session_timeout_ms {
            check.bad("max_poll_interval_ms", "must be above session_timeout_ms");
        }
        let snapshot_interval_s = check.in_range("snapshot_interval_s", raw.snapshot_interval_s, 300, 1..=86_400);
        let snapshot_every_entries = match raw.snapshot_every_entries.unwrap_or(100_000) {
            0 => None,
            n if n < 100 => {
                check.bad("snapshot_every_entries", "must be 0 (never) or at least 100");
                None
            }
            n => Some(n),
        };
        let assignment = match check.choice(
            "assignment",
            raw.assignment.as_deref(),
            "fixed",
            &[("fixed", true), ("group", false)],
        ) {
            true => {
                if raw.group_instance_id.is_some() {
                    check.bad("group_instance_id", "is for assignment = \"group\" only");
                }
                let count = check.in_range("instance_count", raw.instance_count, 1, 1..=1_024);
                let index = raw.instance_index.unwrap_or(0);
                if index >= count {
                    check.bad("instance_index", format!("{index} must be below instance_count ({count})"));
                }
                Assignment::Fixed { index, count: NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN) }
            }
            false => {
                if raw.instance_index.is_some() || raw.instance_count.is_some() {
                    check.bad("instance_index", "instance_index and instance_count are for assignment = \"fixed\"");
                }
                Assignment::Group { instance_id: raw.group_instance_id.filter(|id| !id.trim().is_empty()) }
            }
        };
        let watch_interval_s = check.in_range("watch_interval_s", raw.watch_interval_s, 5, 1..=300);
        let stall_timeout_s = raw.stall_timeout_s.unwrap_or(30);
        if !(2 * watch_interval_s..=86_400).contains(&stall_timeout_s) {
            check.bad("stall_timeout_s", "must be at least twice watch_interval_s and at most 86400");
        }
        let on_stall = check.choice(
            "on_stall",
            raw.on_stall.as_deref(),
            "exit",
            &[("exit", OnStall::Exit), ("report", OnStall::Report)],
        );
        let workers = check.in_range("workers", raw.workers, 1, 1..=64);
        let config = MeteringConfig {
            brokers: check.non_empty("brokers", raw.brokers, "127.0.0.1:9092"),
            group_id: check.non_empty("group_id", raw.group_id, "tally-metering"),
            input_topic,
            ledger_topic,
            alerts_topic,
            dead_letter_topic,
            snapshot_topic,
            snapshot_every_entries,
            snapshot_interval: Duration::from_secs(snapshot_interval_s),
            rates_file: raw.rates_file.unwrap_or_else(|| PathBuf::from("pipelines/rates.toml")),
            batch_size_max: NonZeroUsize::new(batch_size_max).unwrap_or(NonZeroUsize::MIN),
            batch_wait: Duration::from_millis(batch_wait_ms),
            batches_in_flight: NonZeroUsize::new(batches_in_flight).unwrap_or(NonZeroUsize::MIN),
            dedup_window: chrono::TimeDelta::days(days.into()),
            metrics_address,
            create_topics: raw.create_topics.unwrap_or(true),
            delivery_timeout: Duration::from_secs(delivery_timeout_s),
            restore_timeout: Duration::from_secs(restore_timeout_s),
            drain_timeout: Duration::from_secs(drain_timeout_s),
            session_timeout: Duration::from_millis(session_timeout_ms),
            join_timeout: Duration::from_secs(join_timeout_s),
            max_poll_interval: Duration::from_millis(max_poll_interval_ms),
            assignment,
            watch_interval: Duration::from_secs(watch_interval_s),
            stall_timeout: Duration::from_secs(stall_timeout_s),
            on_stall,
            workers: NonZeroU32::new(workers).unwrap_or(NonZeroU32::MIN),
            origin,
        };
        check.finish(config)
    }
}

impl Default for MeteringConfig {
    /// The defaults: what an empty file gives.
    fn default() -> Self {
        match MeteringConfig::validate(RawConfig::default(), "(defaults)".into()) {
            Ok(config) => config,
            Err(e) => panic!("the built-in defaults are valid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_and_bad_fields_are_named() {
        let config = MeteringConfig::load(None, Vec::new()).expect("defaults");
        assert_eq!(config.input_topic, "tally.inputs");
        assert_eq!(config.batch_size_max.get(), 5_000);
        let env = vec![("TALLY_METERING__BATCH_SIZE_MAX".to_string(), "0".to_string())];
        let err = MeteringConfig::load(None, env).unwrap_err().to_string();
        assert!(err.contains("batch_size_max") && err.contains("TALLY_METERING__BATCH_SIZE_MAX"), "{err}");
        let env = vec![("TALLY_METERING__LEDGER_TOPIC".to_string(), "tally.inputs".to_string())];
        assert!(MeteringConfig::load(None, env).unwrap_err().to_string().contains("must all differ"));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let env = [
            ("TALLY_METERING__BATCH_SIZE_MAX", "0"),
            ("TALLY_METERING__ASSIGNMENT", "sideways"),
            ("TALLY_METERING__METRICS_ADDRESS", "not an address"),
            ("TALLY_METERING__STALL_TIMEOUT_S", "1"),
            ("TALLY_METERING__BROKERS", " "),
        ];
        let err = MeteringConfig::load(None, env.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap_err();
        let ConfigError::Fields { problems, .. } = &err else { panic!("{err}") };
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        for field in ["batch_size_max", "assignment", "metrics_address", "stall_timeout_s", "brokers"] {
            assert!(fields.contains(&field), "{field} in {err}");
        }
    }

    /// Fixed layout with workers: every partition has exactly one worker
    /// of one instance, and the workers of an instance split its
    /// partitions evenly.
    #[test]
    fn every_partition_has_one_worker_of_one_instance() {
        let n = |v: u32| NonZeroU32::new(v).expect("non-zero");
        for (instances, workers, partitions) in [(1, 1, 4), (1, 2, 4), (2, 2, 8), (3, 2, 7), (2, 3, 5), (1, 4, 2)] {
            let mut owners = vec![Vec::new(); partitions as usize];
            for index in 0..instances {
                let assignment = Assignment::Fixed { index, count: n(instances) };
                let mut sizes = Vec::new();
                for w in 0..workers {
                    let mine = assignment.fixed_partitions(partitions, Worker { index: w, count: n(workers) });
                    sizes.push(mine.len());
                    for p in mine {
                        assert_eq!(assignment.fixed_owner(p), Some(index), "partition {p} of instance {index}");
                        owners[p as usize].push((index, w));
                    }
                }
                let (least, most) = (sizes.iter().min(), sizes.iter().max());
                assert!(most.zip(least).is_some_and(|(m, l)| m - l <= 1), "{sizes:?}");
            }
            assert!(owners.iter().all(|o| o.len() == 1), "{instances}x{workers} over {partitions}: {owners:?}");
        }
        let group = Assignment::Group { instance_id: None };
        assert!(group.fixed_partitions(4, Worker::ONLY).is_empty());
    }

    /// The commented file shipped in `pipelines/` gives exactly the
    /// built-in defaults: the two cannot drift apart.
    #[test]
    fn the_shipped_file_is_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/metering.toml");
        let shipped = MeteringConfig::load(Some(&path), Vec::new()).expect("the shipped file loads");
        assert_eq!(
            MeteringConfig { origin: String::new(), ..shipped },
            MeteringConfig { origin: String::new(), ..MeteringConfig::default() }
        );
    }
}
