//! `/metrics` and `/health` over HTTP/1.1 on loopback.
//!
//! Two fixed GET endpoints do not earn a web framework: this answers them
//! and closes each connection (scrapers and probes expect exactly that).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// What `/health` answers: 200 `ready` once the service is ready and
/// nothing is wrong; 503 with the reason while it starts, stops, or while
/// a problem is reported (a partition with inputs waiting and no progress,
/// say), so that a probe or a supervisor sees it.
#[derive(Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    problem: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Marks the service ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    /// Reports a problem (`Some`) or its end (`None`).
    pub fn set_problem(&self, problem: Option<String>) {
        if let Ok(mut held) = self.problem.lock() {
            *held = problem;
        }
    }
    /// The problem reported, if any.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }
    /// The status line and body `/health` answers with.
    fn answer(&self) -> (&'static str, String) {
        match (self.is_ready(), self.problem()) {
            (_, Some(problem)) => ("503 Service Unavailable", format!("unhealthy: {problem}\n")),
            (true, None) => ("200 OK", "ready\n".to_string()),
            (false, None) => ("503 Service Unavailable", "not ready (starting or stopping)\n".to_string()),
        }
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
                    "/health" => {
                        let (status, body) = health.answer();
                        (status, "text/plain".into(), body.into_bytes())
                    }
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
