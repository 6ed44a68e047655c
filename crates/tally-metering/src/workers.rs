//! An instance's worker threads: `workers` independent metering loops in
//! one process, so an instance applies its partitions on more than one
//! core.
//!
//! Input partitions are independent logs and all state is per partition,
//! so the split is by partition, not by record: each worker is a complete
//! [`Metering`] with its own consumer, producer, snapshot writer and
//! partitions, and the exactly-once argument of one instance holds for each
//! worker unchanged (`docs/DESIGN.md`, "Workers"). With a fixed layout,
//! worker w of an instance takes every `workers`-th of the instance's
//! partitions ([`crate::config::Assignment::fixed_partitions`]); in a
//! consumer group each worker is a member of the group (with
//! `group_instance_id`, a static member of its own, `<id>-worker-<w>`).
//!
//! What the workers share: the metrics (see `metrics` for the gauges that
//! sum over them), `/health`, and one partition watch that sees every
//! worker's partitions. Invariants:
//! - every partition of the instance is owned by exactly one worker, so no
//!   two workers ever write one ledger partition (the claim fence would
//!   stop the second anyway);
//! - a worker that fails stops the instance: the others are told to stop,
//!   finish their batch in hand, flush and commit, and the instance exits
//!   with the first error, so a supervisor restarts the whole instance and
//!   no partition is left to a dead worker.

use std::{
    num::NonZeroU32,
    sync::{mpsc, Arc},
    time::Duration,
};

use tally_ledger::RateTable;
use tally_service::{http::Health, lifecycle::Service};
use tokio::{runtime::Handle, sync::watch};

use crate::{
    config::{MeteringConfig, Worker},
    error::MeteringError,
    metrics::Metrics,
    service::Metering,
    watch::WatchState,
};

/// The workers of one instance, started.
pub struct Workers {
    workers: Vec<Metering>,
}

impl Workers {
    /// Starts `config.workers` workers side by side (with a fixed layout
    /// each claims and restores its partitions here, in parallel). The
    /// first error of any stops the start.
    pub fn start(
        config: MeteringConfig,
        rates: Arc<RateTable>,
        metrics: Metrics,
        runtime: Handle,
    ) -> Result<Workers, MeteringError> {
        let count: NonZeroU32 = config.workers;
        let watch = WatchState::default();
        let started: Vec<Result<Metering, MeteringError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..count.get())
                .map(|index| {
                    let worker = Worker { index, count };
                    let (config, rates, metrics, runtime) =
                        (config.clone(), rates.clone(), metrics.clone(), runtime.clone());
                    let watch = watch.for_worker(index);
                    std::thread::Builder::new()
                        .name(format!("tally-start-{index}"))
                        .spawn_scoped(scope, move || Metering::start(config, rates, metrics, runtime, worker, watch))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| match handle {
                    Ok(handle) => {
                        handle.join().unwrap_or_else(|_| Err(MeteringError::Worker("panicked while starting".into())))
                    }
                    Err(e) => Err(MeteringError::Worker(format!("cannot start a thread: {e}"))),
                })
                .collect()
        });
        let workers = started.into_iter().collect::<Result<Vec<_>, _>>()?;
        tracing::info!(workers = workers.len(), "metering workers started");
        Ok(Workers { workers })
    }
}

impl Service for Workers {
    type Error = MeteringError;

    /// Runs every worker on its own thread until `shutdown` flips or one
    /// fails (see the module docs), and returns the first error.
    fn run(mut self, shutdown: watch::Receiver<bool>, health: Health) -> Result<(), MeteringError> {
        if self.workers.len() == 1 {
            if let Some(only) = self.workers.pop() {
                return only.run(shutdown, health);
            }
        }
        let (stop, stopping) = watch::channel(false);
        let (done, finished) = mpsc::channel::<(usize, Result<(), MeteringError>)>();
        let mut threads = Vec::new();
        for (index, worker) in self.workers.into_iter().enumerate() {
            let (stopping, health, done) = (stopping.clone(), health.clone(), done.clone());
            let thread = std::thread::Builder::new().name(format!("tally-metering-{index}")).spawn(move || {
                // A panic is a worker failure like any other (and must not
                // leave this loop waiting for a result that never comes).
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run(stopping, health)))
                    .unwrap_or_else(|_| Err(MeteringError::Worker(format!("worker {index} panicked"))));
                let _ = done.send((index, result));
            });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    stop.send_replace(true);
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(MeteringError::Worker(format!("cannot start worker {index}: {e}")));
                }
            }
        }
        drop(done);
        let mut first_error: Option<MeteringError> = None;
        let mut running = threads.len();
        while running > 0 {
            if *shutdown.borrow() {
                stop.send_replace(true);
            }
            match finished.recv_timeout(Duration::from_millis(50)) {
                Ok((index, result)) => {
                    running -= 1;
                    if !*stop.borrow() {
                        // A worker stopped on its own: the instance stops
                        // with it (a supervisor restarts it whole).
                        let error = result.err().unwrap_or_else(|| {
                            MeteringError::Worker(format!("worker {index} stopped without being asked to"))
                        });
                        tracing::error!(worker = index, error = %error, "worker failed: stopping the others");
                        first_error.get_or_insert(error);
                        stop.send_replace(true);
                    } else if let Err(e) = result {
                        first_error.get_or_insert(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    first_error.get_or_insert(MeteringError::Worker(format!("{running} worker(s) panicked")));
                    break;
                }
            }
        }
        for thread in threads {
            let _ = thread.join();
        }
        first_error.map_or(Ok(()), Err)
    }
}
