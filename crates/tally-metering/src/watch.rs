//! The metering service's partition watch: every input partition, owned
//! or not, checked for inputs that wait with no progress.
//!
//! Nothing else would notice a partition that nobody consumes: a consumer
//! group that keeps a killed member (Tansu 0.6 after kill -9), an instance
//! of a fixed layout that is down, a fetch that never returns. A thread
//! probes every partition each `watch_interval_s` (see
//! `tally_service::watch` for how: the group's committed offsets, and a
//! read from them) and applies the stall rule. For the partitions this
//! instance owns it uses its own next input offset instead of the committed
//! one, which is exact (a failed offset commit cannot fake a stall there);
//! partitions it is restoring are left out until the restore is done.
//!
//! What a stall does depends on whether a restart of this instance can
//! mend it ([`Stalled::actionable`]): a stalled partition it owns, or any
//! stalled partition of a consumer group (a restart rejoins the group and
//! makes the coordinator assign every partition again), fails `/health`
//! and, with `on_stall = "exit"` (the default), stops the instance with an
//! error so a supervisor restarts it. A stalled partition that belongs to
//! another instance of a fixed layout is logged and counted, and left to
//! that instance's supervisor. Every stall is logged as an error naming the
//! partition, its owner, the committed offset and how long inputs waited.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tally_service::watch::{PartitionProbe, StallTracker, Status};

use crate::{
    config::{Assignment, MeteringConfig},
    metrics::Metrics,
};

/// Who is meant to own a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This instance.
    ThisInstance,
    /// Instance `index` of a fixed layout, not this one.
    FixedInstance(u32),
    /// Another member of the consumer group, or none.
    GroupMember,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::ThisInstance => f.write_str("this instance"),
            Owner::FixedInstance(index) => write!(f, "instance_index {index} (fixed assignment): is it running?"),
            Owner::GroupMember => f.write_str("another member of the consumer group, or none"),
        }
    }
}

/// A partition with inputs waiting and no progress for the stall timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// Partition.
    pub partition: i32,
    /// Who should be consuming it.
    pub owner: Owner,
    /// Where its progress stands (the owner's next input offset, or the
    /// group's committed offset).
    pub progress: Option<i64>,
    /// First waiting input.
    pub waiting_from: Option<i64>,
    /// How long inputs have waited.
    pub waiting_for: Duration,
}

impl Stalled {
    /// Whether restarting this instance can mend it.
    pub fn actionable(&self) -> bool {
        matches!(self.owner, Owner::ThisInstance | Owner::GroupMember)
    }
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "input partition {} has had inputs waiting (from offset {}) for {} s with no progress past offset {}; owner: {}",
            self.partition,
            self.waiting_from.map_or("?".to_string(), |o| o.to_string()),
            self.waiting_for.as_secs(),
            self.progress.map_or("(never committed)".to_string(), |o| o.to_string()),
            self.owner
        )
    }
}

#[derive(Default)]
struct State {
    /// Per worker of the instance, owned partitions and their next input
    /// offset.
    owned: BTreeMap<u32, BTreeMap<i32, i64>>,
    /// Partitions this instance is restoring.
    restoring: BTreeSet<i32>,
    /// Stalled partitions as of the last check.
    stalled: Vec<Stalled>,
}

/// What the service loop and the rebalance callback tell the watch, and
/// what it tells them back. One per instance; each worker holds a handle
/// to it ([`WatchState::for_worker`]) and the watch sees their union.
#[derive(Clone, Default)]
pub struct WatchState {
    state: Arc<Mutex<State>>,
    worker: u32,
}

impl WatchState {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut state| f(&mut state))
    }

    /// The handle of worker `worker` of the same instance.
    pub fn for_worker(&self, worker: u32) -> WatchState {
        WatchState { state: self.state.clone(), worker }
    }

    /// This worker owns `partitions` with these next input offsets (all
    /// it owns: the rest are not its own any more).
    pub fn set_owned(&self, owned: impl IntoIterator<Item = (i32, i64)>) {
        let owned: BTreeMap<i32, i64> = owned.into_iter().collect();
        let worker = self.worker;
        self.with(|state| state.owned.insert(worker, owned));
    }

    /// What every worker of the instance owns.
    fn owned(state: &State) -> BTreeMap<i32, i64> {
        state.owned.values().flat_map(|owned| owned.iter().map(|(p, o)| (*p, *o))).collect()
    }

    /// A restore of `partition` starts (`true`) or ends.
    pub fn restoring(&self, partition: i32, restoring: bool) {
        self.with(|state| {
            if restoring {
                state.restoring.insert(partition);
            } else {
                state.restoring.remove(&partition);
            }
        });
    }

    /// Stalled partitions as of the last check.
    pub fn stalled(&self) -> Vec<Stalled> {
        self.with(|state| state.stalled.clone()).unwrap_or_default()
    }
}

/// The watch thread: one per instance, whatever its workers.
pub struct Watch {
    state: WatchState,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Starts watching every partition of the input topic.
    pub fn start(config: &MeteringConfig, metrics: Metrics, state: WatchState) -> Result<Watch, String> {
        let probe = PartitionProbe::new(&config.brokers, &config.group_id, &config.input_topic, Duration::from_secs(5))
            .map_err(|e| format!("cannot create the partition probe: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, state, config) = (stop.clone(), state.clone(), config.clone());
            std::thread::Builder::new()
                .name("tally-partition-watch".into())
                .spawn(move || watch(&config, &probe, &metrics, &state, &stop))
                .map_err(|e| format!("cannot start the partition watch thread: {e}"))?
        };
        Ok(Watch { state, stop, thread: Some(thread) })
    }

    /// What the loop and the rebalance callback share with the watch.
    pub fn state(&self) -> &WatchState {
        &self.state
    }

    /// Stops the thread (it finishes the check in hand).
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.finish();
    }
}

fn watch(config: &MeteringConfig, probe: &PartitionProbe, metrics: &Metrics, state: &WatchState, stop: &AtomicBool) {
    let mut tracker = StallTracker::new(config.stall_timeout);
    let mut reported: BTreeMap<i32, Instant> = BTreeMap::new();
    let mut next = Instant::now() + config.watch_interval;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = Instant::now() + config.watch_interval;
        let partitions = match probe.partitions() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(topic = %config.input_topic, error = %e, "partition watch: cannot read the partitions");
                continue;
            }
        };
        let mut observations = match probe.observe(partitions) {
            Ok(observations) => observations,
            Err(e) => {
                tracing::warn!(topic = %config.input_topic, error = %e, "partition watch: cannot probe the partitions");
                continue;
            }
        };
        let Some((owned, restoring)) = state.with(|s| (WatchState::owned(s), s.restoring.clone())) else { return };
        observations.retain(|o| !restoring.contains(&o.partition));
        for p in &restoring {
            tracker.forget(*p);
        }
        for observation in &mut observations {
            if let Some(next_offset) = owned.get(&observation.partition) {
                observation.committed = Some(*next_offset);
            }
        }
        let statuses = tracker.observe(Instant::now(), &observations);
        let stalled = stalled(&statuses, &owned, &config.assignment);
        for status in &statuses {
            metrics
                .partition_waiting_seconds
                .with_label_values(&[&status.partition.to_string()])
                .set(status.waiting_for.as_secs() as i64);
        }
        metrics.partitions_stalled.set(stalled.len() as i64);
        for stall in &stalled {
            // An error when it starts, then every minute while it lasts.
            let due = reported.get(&stall.partition).is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
            if due {
                tracing::error!(partition = stall.partition, actionable = stall.actionable(), "{stall}");
                reported.insert(stall.partition, Instant::now());
            }
        }
        reported.retain(|partition, _| {
            let still = stalled.iter().any(|s| s.partition == *partition);
            if !still {
                tracing::info!(partition, "input partition makes progress again");
            }
            still
        });
        state.with(|s| s.stalled = stalled);
    }
}

/// The stalled partitions among `statuses`, with their owners.
fn stalled(statuses: &[Status], owned: &BTreeMap<i32, i64>, assignment: &Assignment) -> Vec<Stalled> {
    statuses
        .iter()
        .filter(|s| s.stalled)
        .map(|s| Stalled {
            partition: s.partition,
            owner: if owned.contains_key(&s.partition) {
                Owner::ThisInstance
            } else {
                match assignment.fixed_owner(s.partition) {
                    Some(index) => Owner::FixedInstance(index),
                    None => Owner::GroupMember,
                }
            },
            progress: s.committed,
            waiting_from: s.waiting_from,
            waiting_for: s.waiting_for,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn status(partition: i32, stalled: bool) -> Status {
        Status {
            partition,
            committed: Some(10),
            waiting_from: Some(10),
            waiting_for: Duration::from_secs(if stalled { 40 } else { 5 }),
            stalled,
        }
    }

    #[test]
    fn owners_and_what_a_restart_can_mend() {
        let fixed = Assignment::Fixed { index: 0, count: NonZeroU32::new(2).expect("2") };
        let owned = BTreeMap::from([(0, 10), (2, 10)]);
        let statuses = [status(0, true), status(1, true), status(2, false), status(3, true)];
        let found = stalled(&statuses, &owned, &fixed);
        let owners: Vec<(i32, Owner, bool)> =
            found.iter().map(|s| (s.partition, s.owner.clone(), s.actionable())).collect();
        assert_eq!(
            owners,
            vec![
                (0, Owner::ThisInstance, true),
                (1, Owner::FixedInstance(1), false),
                (3, Owner::FixedInstance(1), false)
            ]
        );
        let text = found[1].to_string();
        assert!(text.contains("input partition 1") && text.contains("instance_index 1"), "{text}");
        // In a consumer group, a restart rejoins and gets the group to
        // assign everything again: every stall is actionable.
        let group = Assignment::Group { instance_id: None };
        assert!(stalled(&statuses, &owned, &group).iter().all(Stalled::actionable));
    }
}
