//! The metering service: reads usage events, purchases and account changes
//! from the input topic, applies them with the pricing and ledger core
//! (`tally-ledger`), and writes the ledger, alerts and dead-letter topics.
//!
//! Exactly-once effects without broker transactions: the ledger topic is
//! the source of truth. Ledger partition p records input partition p; its
//! owner rebuilds state from it (see [`restore`]) before reading input, and
//! a claim marker with a new epoch fences off any older writer (zombie).
//! Snapshots of that state ([`snapshot`], on a compacted topic) keep the
//! rebuild short: the newest one plus the ledger written after it.
//! `docs/DESIGN.md` has the whole argument.
//!
//! What it never does: read the wall clock for pricing, commit input offsets
//! before the ledger has acknowledged the entries, or continue after a
//! failed delivery.

pub mod config;
pub mod faults;
pub mod metrics;
pub mod restore;
pub mod service;
pub mod snapshot;
pub mod step;
pub mod watch;

use std::sync::Arc;

pub use config::MeteringConfig;
pub use metrics::Metrics;
pub use service::{Metering, MeteringError};
use tally_ledger::RateTable;
use tally_service::http::Health;

/// Runs the service until SIGTERM/SIGINT. Blocks the calling thread; needs a
/// tokio runtime handle for deliveries and the metrics server.
pub fn run(config: MeteringConfig, rates: Arc<RateTable>, runtime: tokio::runtime::Handle) -> Result<(), RunError> {
    let metrics = Metrics::new().map_err(|e| RunError::Setup(format!("metrics: {e}")))?;
    let health = Health::default();
    let address = runtime
        .block_on(tally_service::http::serve(config.metrics_address, metrics.registry.clone(), health.clone()))
        .map_err(|e| RunError::Setup(format!("cannot serve /metrics on {}: {e}", config.metrics_address)))?;
    tracing::info!(%address, "serving /metrics and /health");
    let shutdown = runtime
        .block_on(async { tally_service::shutdown::on_signal() })
        .map_err(|e| RunError::Setup(format!("signals: {e}")))?;
    let service = Metering::start(config, rates, metrics, runtime)?;
    service.run(shutdown, health)?;
    Ok(())
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Metrics server or signals could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The service failed.
    #[error(transparent)]
    Metering(#[from] MeteringError),
}
