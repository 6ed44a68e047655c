//! One webhook POST over HTTP/1.1 (hyper's pooled client), bounded in
//! time and in how much of the answer is read.
//!
//! Plain `http://` only: the notifier links no TLS stack (build time and
//! size on the machines tally is built on). Production receivers on the
//! internet need TLS: run the notifier next to a TLS-originating proxy
//! (docs/WEBHOOKS.md), or add `hyper-rustls`'s connector here in place of
//! `HttpConnector` (a contained change: only [`Poster::new`] builds it).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, Request};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// Most bytes of an answer's body read (for the error of a failed POST).
const ANSWER_MAX: usize = 64 * 1024;

/// Why a POST failed. Every failure is retried until the alert's retry
/// window is spent: a receiver that is down, slow or refusing may recover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// No answer within the request timeout (the receiver may still have
    /// got the POST).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or sending failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The receiver answered, not with 2xx.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
}

/// POSTs webhook bodies.
#[derive(Clone)]
pub struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Poster {
    /// A client whose every POST (connect, send, answer) ends within
    /// `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(connector);
        Poster { client, timeout }
    }

    /// POSTs `body` with `headers` to `url`; Ok with the 2xx status, Err
    /// otherwise.
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Bytes) -> Result<u16, PostError> {
        let mut request = Request::post(url).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| PostError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| PostError::Transport(error_chain(&e)))?;
            let status = response.status().as_u16();
            // Read the answer (so the connection can be reused, and for the
            // error text), at most ANSWER_MAX bytes of it.
            let answer = Limited::new(response.into_body(), ANSWER_MAX).collect().await;
            let text = answer.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned()).unwrap_or_default();
            if (200..300).contains(&status) {
                Ok(status)
            } else {
                Err(PostError::Status { status, body: crate::body::truncate(text.trim(), 300) })
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| PostError::Timeout(self.timeout))?
    }
}

/// An error and its causes on one line (hyper's own message is terse).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
