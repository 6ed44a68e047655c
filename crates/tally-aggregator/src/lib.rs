//! The aggregator: streams the fenced ledger topic into ClickHouse, exactly
//! once, and keeps the rollups equal to the raw table.
//!
//! - [`partition`]: what each ledger record becomes (row, skip, dead
//!   letter), through the one fenced reader; sans-I/O;
//! - [`sink`]: claims, the resume point, batch INSERTs and recovery in
//!   ClickHouse; the exactly-once argument is in docs/DESIGN.md ("The
//!   ledger in ClickHouse");
//! - [`service`]: the loop; [`config`], [`metrics`]; [`faults`]: crash
//!   points for the fault tests (feature `fault-injection` only).

pub mod config;
pub mod faults;
pub mod metrics;
pub mod partition;
pub mod service;
pub mod sink;

pub use config::AggregatorConfig;
pub use metrics::Metrics;

use tally_service::lifecycle::{self, LifecycleError, Settings};

/// Why the aggregator stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// ClickHouse refused at start (schema missing or changed, say).
    #[error(transparent)]
    Warehouse(tally_warehouse::WarehouseError),
    /// Kafka failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The dead-letter topic could not be created.
    #[error("creating the ledger dead-letter topic: {0}")]
    Topics(#[source] tally_service::kafka::AdminError),
    /// The ledger topic does not exist.
    #[error("ledger topic {0} does not exist (has metering run?)")]
    NoLedger(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl AggregatorError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AggregatorError::Warehouse(e) => e.is_retryable(),
            AggregatorError::Kafka { .. } | AggregatorError::NoLedger(_) | AggregatorError::Topics(_) => true,
            AggregatorError::Metrics(_) => false,
        }
    }
}

/// Runs the aggregator until SIGTERM or SIGINT.
pub fn run(config: AggregatorConfig, runtime: tokio::runtime::Handle) -> Result<(), LifecycleError<AggregatorError>> {
    let metrics = Metrics::new().map_err(|e| LifecycleError::Service(AggregatorError::Metrics(e)))?;
    let settings = Settings { name: "aggregator", http_address: config.metrics_address, drain: config.drain_timeout };
    let registry = metrics.registry.clone();
    let handle = runtime.clone();
    lifecycle::run(&runtime, &settings, registry, move || service::Aggregator::start(config, metrics, handle))
}
