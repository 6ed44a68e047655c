//! The consumer context: statistics for lag, offset-commit results, and,
//! with a consumer group, taking each assigned partition *inside* the
//! rebalance callback.
//!
//! Why inside: the callback sets the offset the assignment starts from
//! (the ledger's resume point) before librdkafka starts fetching.
//! Seeking after the assignment instead races with librdkafka applying
//! the group's committed offset, which can win and skip inputs. What the
//! callback did reaches the loop as [`Change`]s.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use rdkafka::{
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    statistics::Statistics,
    ClientContext, Offset, TopicPartitionList,
};
use tally_ledger::RateTable;
use tally_service::kafka::LagContext;

use crate::{
    config::MeteringConfig, error::MeteringError, metrics::Metrics, outbox::Outbox, partition::PartitionState, restore,
    watch::WatchState,
};

/// What a rebalance did, for the loop to apply.
pub(crate) enum Change {
    /// Partitions taken (claimed and restored), ready to read.
    Assigned(Vec<(i32, PartitionState)>),
    /// Partitions given up.
    Revoked(Vec<i32>),
    /// Taking a partition failed: the service stops.
    Failed(MeteringError),
}

/// What taking a partition needs; shared by the loop and the rebalance
/// callback.
pub(crate) struct Shared {
    pub(crate) config: MeteringConfig,
    pub(crate) rates: Arc<RateTable>,
    pub(crate) producer: Outbox,
    pub(crate) metrics: Metrics,
    /// Host and process, written into claims for operators.
    pub(crate) instance: String,
    /// Owned partitions and restores in progress, for the partition watch.
    pub(crate) watch: WatchState,
}

/// The consumer's context.
#[derive(Clone)]
pub struct MeteringContext {
    pub(crate) watermarks: LagContext,
    changes: Arc<Mutex<Vec<Change>>>,
    pub(crate) shared: Arc<Shared>,
    /// An offset commit failed since the last retry: committed offsets
    /// are the progress other instances watch, so the loop commits again.
    pub(crate) commit_failed: Arc<AtomicBool>,
}

impl MeteringContext {
    pub(crate) fn new(shared: Shared) -> Self {
        MeteringContext {
            watermarks: LagContext::default(),
            changes: Arc::default(),
            shared: Arc::new(shared),
            commit_failed: Arc::default(),
        }
    }

    fn push(&self, change: Change) {
        if let Ok(mut changes) = self.changes.lock() {
            changes.push(change);
        }
    }

    /// The changes since the last call.
    pub(crate) fn take_changes(&self) -> Vec<Change> {
        self.changes.lock().map(|mut c| c.drain(..).collect()).unwrap_or_default()
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
                    let state = match restore::take(&self.shared, consumer, partition) {
                        Ok(state) => state,
                        Err(e) => return self.push(Change::Failed(e)),
                    };
                    // The assignment starts where the ledger says.
                    if let Err(e) = element.set_offset(Offset::Offset(state.next_offset)) {
                        return self
                            .push(Change::Failed(MeteringError::kafka(format!("set offset of {partition}"))(e)));
                    }
                    states.push((partition, state));
                }
                self.push(Change::Assigned(states));
            }
            Rebalance::Revoke(list) => {
                // Records in flight land before the next owner claims:
                // otherwise they would land after its claim and stop it
                // (its contiguity check), costing a restart.
                if let Err(e) = self.shared.producer.flush(self.shared.config.delivery_timeout) {
                    tracing::warn!(error = %e, "flushing before giving partitions up");
                }
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
