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
//! Where things are:
//! - [`workers`]: an instance's worker threads, each a loop over its own
//!   share of the partitions;
//! - [`service`]: the loop, one batch at a time;
//! - [`sends`]: the hold rule (no ledger record acknowledged before an
//!   earlier dead letter or alert of its batch);
//! - `outbox`: the worker's one producer, delivery reports by callback;
//! - [`partition`]: one owned partition and the contiguity check; `polled`:
//!   a batch of inputs in one reused buffer;
//! - [`restore`]: claiming a partition and rebuilding it from the ledger;
//! - [`context`]: the consumer context (rebalances, statistics, commits);
//! - [`watch`]: noticing partitions nobody consumes;
//! - [`step`]: what one input becomes (shared with the tests' model);
//! - [`snapshot`], `snapshot_writer`: snapshot chunks, and writing them off
//!   the loop; [`error`], [`config`], [`metrics`].
//!
//! What it never does: read the wall clock for pricing, commit input offsets
//! before the ledger has acknowledged the entries, or continue after a
//! failed delivery.

pub mod config;
pub mod context;
pub mod error;
pub mod faults;
pub mod metrics;
mod outbox;
pub mod partition;
mod polled;
pub mod restore;
pub mod sends;
pub mod service;
pub mod snapshot;
mod snapshot_writer;
pub mod step;
mod tally;
mod topics;
pub mod watch;
pub mod workers;

use std::sync::Arc;

pub use config::MeteringConfig;
pub use error::MeteringError;
pub use metrics::Metrics;
pub use service::Metering;
use tally_ledger::RateTable;
use tally_service::lifecycle::{self, LifecycleError, Settings};
pub use workers::Workers;

/// Runs the service through its lifecycle (`tally_service::lifecycle`):
/// `/metrics` and `/health` first, then start (topics, restores), then the
/// loops (one per worker) until SIGTERM/SIGINT, then a drain within
/// `drain_timeout_s`.
pub fn run(
    config: MeteringConfig,
    rates: Arc<RateTable>,
    runtime: tokio::runtime::Handle,
) -> Result<(), LifecycleError<MeteringError>> {
    let metrics = Metrics::new().map_err(|e| LifecycleError::Service(MeteringError::Metrics(e)))?;
    let settings = Settings { name: "metering", http_address: config.metrics_address, drain: config.drain_timeout };
    let registry = metrics.registry.clone();
    let handle = runtime.clone();
    lifecycle::run(&runtime, &settings, registry, move || Workers::start(config, rates, metrics, handle))
}
