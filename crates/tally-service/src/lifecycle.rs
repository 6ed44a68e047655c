//! The lifecycle every tally service runs: start, run until told to stop,
//! drain within a deadline.
//!
//! 1. `/metrics` and `/health` are served first, so that a service that is
//!    still restoring (which can take a while) is visible and reports "not
//!    ready";
//! 2. SIGTERM and SIGINT become a shutdown flag;
//! 3. `start` connects and checks what the service needs (topics, tables);
//!    an error there is an error of the service;
//! 4. the service's [`Service::run`] runs on a thread of its own until it
//!    returns (an error stops the process) or the flag flips; after the
//!    flag, it has `drain` to finish the work in hand, flush and commit. A
//!    service stuck past that is abandoned with [`LifecycleError::Drain`],
//!    so that the process exits non-zero instead of hanging a deploy.

use std::{net::SocketAddr, sync::mpsc, time::Duration, time::Instant};

use prometheus::Registry;
use tokio::{runtime::Handle, sync::watch};

use crate::http::Health;

/// A long-running service.
pub trait Service: Send + 'static {
    /// Why it stopped with an error.
    type Error: std::error::Error + Send + 'static;

    /// Runs until `shutdown` flips to `true`, then finishes the work in
    /// hand and returns. Marks `health` ready once it serves.
    fn run(self, shutdown: watch::Receiver<bool>, health: Health) -> Result<(), Self::Error>;
}

/// Where and how long.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Service name, for logs.
    pub name: &'static str,
    /// Address of `/metrics` and `/health`.
    pub http_address: SocketAddr,
    /// How long the service may take to stop after SIGTERM.
    pub drain: Duration,
}

/// Why a service's lifecycle ended in error.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError<E: std::error::Error + 'static> {
    /// `/metrics` and `/health` could not be served (the address is taken,
    /// say). Not retryable without a config change.
    #[error("cannot serve /metrics and /health on {address}: {source}")]
    Http {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The service failed to start or while running.
    #[error(transparent)]
    Service(E),
    /// The service did not stop within its drain deadline after SIGTERM.
    #[error("{name} did not stop within {drain:?} of the shutdown signal; giving up on the work in hand")]
    Drain {
        /// Service.
        name: &'static str,
        /// The deadline.
        drain: Duration,
    },
    /// The service thread could not start, or panicked.
    #[error("the {name} thread {problem}")]
    Thread {
        /// Service.
        name: &'static str,
        /// What happened.
        problem: String,
    },
}

/// Runs a service through its lifecycle (see the module docs). `start`
/// builds it; it runs on its own thread, `runtime` serves HTTP and signals.
pub fn run<S: Service>(
    runtime: &Handle,
    settings: &Settings,
    registry: Registry,
    start: impl FnOnce() -> Result<S, S::Error>,
) -> Result<(), LifecycleError<S::Error>> {
    let health = Health::default();
    let address = settings.http_address;
    let bound = runtime
        .block_on(crate::http::serve(address, registry, health.clone()))
        .map_err(|source| LifecycleError::Http { address, source })?;
    tracing::info!(service = settings.name, address = %bound, "serving /metrics and /health");
    let shutdown = runtime.block_on(async { crate::shutdown::on_signal() }).map_err(LifecycleError::Signals)?;
    let service = start().map_err(LifecycleError::Service)?;
    let (done, finished) = mpsc::channel();
    let thread = {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        std::thread::Builder::new()
            .name(format!("tally-{}", settings.name))
            .spawn(move || {
                let _ = done.send(service.run(shutdown, health));
            })
            .map_err(|e| LifecycleError::Thread { name: settings.name, problem: format!("cannot start: {e}") })?
    };
    let mut stopping_since: Option<Instant> = None;
    loop {
        match finished.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => {
                let _ = thread.join();
                return result.map_err(LifecycleError::Service);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LifecycleError::Thread { name: settings.name, problem: "panicked".into() });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if *shutdown.borrow() {
            let since = *stopping_since.get_or_insert_with(Instant::now);
            if since.elapsed() > settings.drain {
                health.set_ready(false);
                return Err(LifecycleError::Drain { name: settings.name, drain: settings.drain });
            }
        }
    }
}
