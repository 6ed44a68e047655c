//! Why the metering service stops, each cause typed.
//!
//! The service never rides out an error it cannot prove harmless: it exits,
//! and its restart rebuilds state from the ledger. [`MeteringError::is_retryable`]
//! says whether such a restart can succeed (the broker was away, another
//! instance superseded this one) or whether something must be mended first
//! (a topic with the wrong partition count, a ledger that breaks an
//! invariant, a bug).

use std::time::Duration;

use rdkafka::error::KafkaError;
use tally_events::CodecError;

use crate::restore::RestoreFailure;

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
    #[error("restoring partition {partition}: {source}")]
    Restore {
        /// Partition.
        partition: i32,
        /// Why (boxed: errors travel by value, and this one is large).
        #[source]
        source: Box<RestoreFailure>,
    },
    /// Another instance claimed the partition in the same instant.
    #[error("lost the claim race for partition {partition}; exiting so a restart claims again")]
    LostClaim {
        /// Partition.
        partition: i32,
    },
    /// An output record did not fit its own schema (a bug, not an input fault).
    #[error("cannot encode an output record for partition {partition}: {source}")]
    Encode {
        /// Partition.
        partition: i32,
        /// Why.
        #[source]
        source: CodecError,
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
    /// The metrics could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The partition watch could not start.
    #[error("partition watch: {0}")]
    Watch(String),
    /// A worker thread could not start, panicked, or stopped unasked (see
    /// `workers`); the instance stops so a restart starts every worker.
    #[error("metering worker: {0}")]
    Worker(String),
}

impl MeteringError {
    /// A [`MeteringError::Kafka`] maker for `map_err`.
    pub(crate) fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> MeteringError {
        let context = context.into();
        move |source| MeteringError::Kafka { context, source }
    }

    /// Whether a restart of the service can succeed as things are: the
    /// broker was away or slow, another instance took over, the group got
    /// stuck. Not: a topic shaped wrong, a ledger breaking an invariant, a
    /// record that does not encode (those need mending first; a supervisor
    /// restarting in a loop shows it, and the error says what).
    pub fn is_retryable(&self) -> bool {
        match self {
            MeteringError::Kafka { .. }
            | MeteringError::Delivery { .. }
            | MeteringError::LostClaim { .. }
            | MeteringError::Superseded { .. }
            | MeteringError::NoAssignment { .. }
            | MeteringError::Stalled { .. }
            | MeteringError::Watch(_)
            | MeteringError::Worker(_) => true,
            MeteringError::Restore { source, .. } => source.is_retryable(),
            MeteringError::Encode { .. } | MeteringError::Topic { .. } | MeteringError::Metrics(_) => false,
        }
    }
}
