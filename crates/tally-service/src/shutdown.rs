//! SIGTERM and SIGINT as a watch channel every task can select on.

use tokio::sync::watch;

/// Returns a receiver that flips to `true` on SIGTERM or SIGINT.
pub fn on_signal() -> std::io::Result<watch::Receiver<bool>> {
    let (sender, receiver) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in hand"),
            _ = int.recv() => tracing::info!("SIGINT: finishing the batch in hand"),
        }
        let _ = sender.send(true);
    });
    Ok(receiver)
}
