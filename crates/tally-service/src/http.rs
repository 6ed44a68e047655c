//! `/metrics` and `/health` over HTTP/1.1, for every long-running service.
//!
//! Served by hyper with bounds on what a client can hold: a request's
//! headers must arrive within [`HEADER_READ_TIMEOUT`] (hyper's own timeout,
//! which it quietly disables unless a timer is set, so it is set), a
//! connection lives at most [`CONNECTION_TIMEOUT`], and an accept error
//! (out of file descriptors, say) backs off instead of spinning.
//!
//! `/health` answers 200 `ready` once the service is ready and no problem
//! is reported; 503 with the reason otherwise (starting, stopping, or a
//! problem such as a partition with inputs waiting and no progress), so
//! that a probe or a supervisor sees it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// A request's headers must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this, whatever it is doing.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/health` answers.
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
    /// The status and body `/health` answers with.
    fn answer(&self) -> (StatusCode, String) {
        match (self.is_ready(), self.problem()) {
            (_, Some(problem)) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {problem}\n")),
            (true, None) => (StatusCode::OK, "ready\n".to_string()),
            (false, None) => (StatusCode::SERVICE_UNAVAILABLE, "not ready (starting or stopping)\n".to_string()),
        }
    }
}

/// Binds `address` and serves until the runtime ends. Returns the bound
/// address (port 0 picks a free one).
pub async fn serve(address: SocketAddr, registry: Registry, health: Health) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a /metrics connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (registry, health) = (registry.clone(), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (registry, health) = (registry.clone(), health.clone());
                    async move { answer(request, &registry, &health).await }
                });
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "/metrics connection ended"),
                    Err(_) => tracing::debug!("/metrics connection closed after {CONNECTION_TIMEOUT:?}"),
                }
            });
        }
    });
    Ok(bound)
}

async fn answer(
    request: Request<Incoming>,
    registry: &Registry,
    health: &Health,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            let mut body = Vec::new();
            let encoder = TextEncoder::new();
            let _ = encoder.encode(&registry.gather(), &mut body);
            (StatusCode::OK, encoder.format_type().to_string(), body)
        }
        "/health" => {
            let (status, body) = health.answer();
            (status, "text/plain".to_string(), body.into_bytes())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain".to_string(), b"try /metrics or /health\n".to_vec()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn metrics_health_and_a_client_that_never_finishes() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("things_total", "Things").expect("counter");
        registry.register(Box::new(counter.clone())).expect("register");
        counter.inc();
        let health = Health::default();
        let address = serve("127.0.0.1:0".parse().expect("address"), registry, health.clone()).await.expect("serve");

        assert!(get(address, "/metrics").await.contains("things_total 1"));
        assert!(get(address, "/health").await.starts_with("HTTP/1.1 503"), "not ready yet");
        health.set_ready(true);
        assert!(get(address, "/health").await.starts_with("HTTP/1.1 200"));
        health.set_problem(Some("partition 3 stalled".into()));
        let unhealthy = get(address, "/health").await;
        assert!(unhealthy.starts_with("HTTP/1.1 503") && unhealthy.contains("partition 3 stalled"), "{unhealthy}");
        assert!(get(address, "/nope").await.starts_with("HTTP/1.1 404"));

        // A client that sends half a request and goes quiet is cut off
        // after the header timeout, and does not hold up others.
        let mut slow = tokio::net::TcpStream::connect(address).await.expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n").await.expect("write");
        assert!(get(address, "/metrics").await.contains("things_total"), "others are served meanwhile");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the quiet client was cut off");
    }
}
