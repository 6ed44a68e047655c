//! The notifier: follows the alerts topic and delivers LOW_BALANCE, PAUSED
//! and RESUMED alerts to HTTP webhooks, signed, retried, in order per
//! account, and once per alert id across restarts as far as a webhook can
//! be (the argument and its one window are in docs/DESIGN.md, "Delivering
//! alerts"; the receiver's side is docs/WEBHOOKS.md).
//!
//! - [`signing`]: `Tally-Signature` (HMAC-SHA256 over `<t>.<body>`) and its
//!   verification with a replay tolerance; pure;
//! - [`body`]: the JSON body and the dead letter; pure;
//! - [`routing`]: account -> endpoint; pure;
//! - [`backoff`]: exponential backoff with jitter within a retry window;
//!   pure;
//! - [`deliveries`]: the delivery log's state (finished alerts, the one in
//!   flight) and duplicate detection; pure;
//! - [`client`]: one bounded HTTP POST;
//! - [`service`]: the loop; [`config`], [`metrics`]; [`faults`]: crash
//!   points for the fault tests (feature `fault-injection` only).
//!
//! The guarantee, in short: per account, alerts are POSTed one at a time
//! in ledger order; each is recorded in a compacted delivery log (keyed by
//! account: one sequence and a few ids per account, so memory is bounded
//! by accounts) as `attempting` before its first POST and `delivered` or
//! `dead_lettered` after; the log is read to its end before anything is
//! delivered. After a restart no alert the log calls finished is POSTed
//! again. The one window (a crash between the receiver's 2xx and the log's
//! ack) makes one more POST possible, always with
//! `Tally-Possible-Duplicate: true` and the same `Tally-Alert-Id`, which a
//! receiver deduplicates on.
//!
//! It depends on no other service: only on `tally-events` (the alert
//! record) and `tally-service` (config, Kafka, HTTP, lifecycle).

pub mod backoff;
pub mod body;
pub mod client;
pub mod config;
pub mod deliveries;
pub mod faults;
pub mod metrics;
pub mod routing;
pub mod service;
pub mod signing;

pub use config::NotifyConfig;
pub use metrics::Metrics;

use tally_service::lifecycle::{self, LifecycleError, Settings};

/// Why the notifier stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Kafka failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The delivery-log or dead-letter topic could not be created.
    #[error("creating the notifier's topics: {0}")]
    Topics(#[source] tally_service::kafka::AdminError),
    /// The alerts topic does not exist.
    #[error("alerts topic {0} does not exist (has metering run?)")]
    NoAlerts(String),
    /// The delivery log could not be read at start or written while
    /// running: going on could deliver an alert twice.
    #[error("{what} the delivery log: {detail}")]
    DeliveryLog {
        /// `reading` or `writing`.
        what: &'static str,
        /// Whether starting again may succeed (the broker, not the data).
        retryable: bool,
        /// What failed.
        detail: String,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl NotifyError {
    /// Whether starting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            NotifyError::Kafka { .. } | NotifyError::NoAlerts(_) | NotifyError::Topics(_) => true,
            NotifyError::DeliveryLog { retryable, .. } => *retryable,
            NotifyError::Metrics(_) => false,
        }
    }
}

/// Runs the notifier until SIGTERM or SIGINT.
pub fn run(config: NotifyConfig, runtime: tokio::runtime::Handle) -> Result<(), LifecycleError<NotifyError>> {
    let metrics = Metrics::new().map_err(|e| LifecycleError::Service(NotifyError::Metrics(e)))?;
    let settings = Settings { name: "notify", http_address: config.metrics_address, drain: config.drain_timeout };
    let registry = metrics.registry.clone();
    let handle = runtime.clone();
    lifecycle::run(&runtime, &settings, registry, move || service::Notifier::start(config, metrics, handle))
}
