//! `/metrics` and `/health` over HTTP/1.1 on loopback.
//!
//! Two fixed GET endpoints do not earn a web framework: this answers them
//! and closes each connection (scrapers and probes expect exactly that).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Readiness flag served on `/health` (200 when ready, 503 before).
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// Marks the service ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds `address` and serves until the process ends. Returns the bound
/// address (port 0 picks a free one).
pub async fn serve(address: SocketAddr, registry: Registry, health: Health) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let registry = registry.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = match path {
                    "/metrics" => {
                        let mut body = Vec::new();
                        let encoder = TextEncoder::new();
                        let _ = encoder.encode(&registry.gather(), &mut body);
                        ("200 OK", encoder.format_type().to_string(), body)
                    }
                    "/health" if health.is_ready() => ("200 OK", "text/plain".into(), b"ready\n".to_vec()),
                    "/health" => ("503 Service Unavailable", "text/plain".into(), b"starting\n".to_vec()),
                    _ => ("404 Not Found", "text/plain".into(), b"try /metrics or /health\n".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    Ok(bound)
}
