//! A connection to tally's ClickHouse database, and its errors.
//!
//! One [`Warehouse`] wraps the `clickhouse` crate's client (HTTP, RowBinary,
//! LZ4) with what every user of the database needs: the database name,
//! a bound on every request, and what the server supports. Schema
//! validation of the crate is off: it asks the server with a setting that
//! ClickHouse 18.16 does not know; the migrations and the tests on both
//! engines hold the row types and the tables together instead.

use std::time::Duration;

/// Where the database is and how long a request may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseConfig {
    /// HTTP URL of the server, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding tally's tables.
    pub database: String,
    /// User.
    pub user: String,
    /// Password (empty: none).
    pub password: String,
    /// Bound on one request (a query, or an INSERT from first byte to
    /// answer).
    pub timeout: Duration,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "tally".into(),
            user: "default".into(),
            password: String::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request to ClickHouse failed.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The server could not be reached, or the request timed out: it may
    /// be down, restarting or overloaded. Retryable. For an INSERT the
    /// outcome is unknown: nothing, a prefix, or all of it may be stored.
    #[error("ClickHouse at {url} did not answer `{what}`: {detail}")]
    Unavailable {
        /// Server.
        url: String,
        /// The statement, shortened.
        what: String,
        /// Why.
        detail: String,
    },
    /// The server refused the request. Retryable only for the codes that
    /// mean "not now" (too many parts, memory, too many queries).
    #[error("ClickHouse refused `{what}`: {detail}")]
    Refused {
        /// The statement, shortened.
        what: String,
        /// The server's message.
        detail: String,
        /// Whether trying again later may succeed.
        retryable: bool,
    },
    /// The schema in the database is not the one this build knows.
    #[error("ClickHouse schema: {0}")]
    Schema(String),
    /// A named query or its parameters are wrong.
    #[error("{0}")]
    Query(String),
}

impl WarehouseError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            WarehouseError::Unavailable { .. } => true,
            WarehouseError::Refused { retryable, .. } => *retryable,
            WarehouseError::Schema(_) | WarehouseError::Query(_) => false,
        }
    }
}

/// Server error codes that mean "not now": TOO_MANY_PARTS (252),
/// MEMORY_LIMIT_EXCEEDED (241), TOO_MANY_SIMULTANEOUS_QUERIES (202),
/// TIMEOUT_EXCEEDED (159), SOCKET_TIMEOUT (209), NETWORK_ERROR (210),
/// table being dropped or restarting (218, ABORTED 236).
const RETRYABLE_CODES: [&str; 8] = ["252", "241", "202", "159", "209", "210", "218", "236"];

fn shorten(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        format!("{}...", flat.chars().take(117).collect::<String>())
    } else {
        flat
    }
}

/// A connection to the database (cheap to clone).
#[derive(Clone)]
pub struct Warehouse {
    config: WarehouseConfig,
    client: clickhouse::Client,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse").field("url", &self.config.url).field("database", &self.config.database).finish()
    }
}

impl Warehouse {
    /// A connection (nothing is sent until the first request).
    pub fn new(config: WarehouseConfig) -> Self {
        let mut client = clickhouse::Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_database(&config.database)
            .with_validation(false);
        if !config.password.is_empty() {
            client = client.with_password(&config.password);
        }
        Warehouse { config, client }
    }

    /// The config.
    pub fn config(&self) -> &WarehouseConfig {
        &self.config
    }

    /// The crate's client, for typed inserts and fetches.
    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// The same server without a database (to create it).
    pub fn without_database(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.config.url)
            .with_user(&self.config.user)
            .with_validation(false);
        if !self.config.password.is_empty() {
            client = client.with_password(&self.config.password);
        }
        client
    }

    /// Maps the crate's error for statement `sql`.
    pub fn error(&self, sql: &str, error: clickhouse::error::Error) -> WarehouseError {
        use clickhouse::error::Error;
        match error {
            Error::BadResponse(detail) => {
                let code = detail.strip_prefix("Code: ").and_then(|rest| rest.split([',', '.', ' ']).next());
                let retryable = code.is_some_and(|c| RETRYABLE_CODES.contains(&c));
                WarehouseError::Refused { what: shorten(sql), detail, retryable }
            }
            other => WarehouseError::Unavailable {
                url: self.config.url.clone(),
                what: shorten(sql),
                detail: other.to_string(),
            },
        }
    }

    fn timed_out(&self, sql: &str) -> WarehouseError {
        WarehouseError::Unavailable {
            url: self.config.url.clone(),
            what: shorten(sql),
            detail: format!("no answer within {:?}", self.config.timeout),
        }
    }

    /// Runs `future` (a request for `sql`) within the request bound.
    pub async fn bounded<T>(
        &self,
        sql: &str,
        future: impl std::future::Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, WarehouseError> {
        match tokio::time::timeout(self.config.timeout, future).await {
            Ok(result) => result.map_err(|e| self.error(sql, e)),
            Err(_) => Err(self.timed_out(sql)),
        }
    }

    /// Runs a statement that returns nothing.
    pub async fn execute(&self, sql: &str) -> Result<(), WarehouseError> {
        self.bounded(sql, self.client.query(sql).execute()).await
    }

    /// Runs a query and returns its rows as TabSeparated text with names
    /// and types (the first two lines).
    pub async fn fetch_tsv(&self, query: clickhouse::query::Query, sql: &str) -> Result<String, WarehouseError> {
        let work = async {
            let mut cursor = query.fetch_bytes("TabSeparatedWithNamesAndTypes")?;
            let bytes = cursor.collect().await?;
            Ok::<_, clickhouse::error::Error>(bytes)
        };
        let bytes = self.bounded(sql, work).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| WarehouseError::Query(format!("answer is not UTF-8: {e}")))
    }

    /// Fetches typed rows.
    pub async fn fetch_all<T>(&self, sql: &str, query: clickhouse::query::Query) -> Result<Vec<T>, WarehouseError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.bounded(sql, query.fetch_all::<T>()).await
    }

    /// The server's version, e.g. `18.16.1` (asked without the database,
    /// which may not exist yet).
    pub async fn version(&self) -> Result<String, WarehouseError> {
        let sql = "SELECT version()";
        let rows: Vec<String> = self.fetch_all(sql, self.without_database().query(sql)).await?;
        rows.into_iter().next().ok_or_else(|| WarehouseError::Schema("version() returned nothing".into()))
    }

    /// Whether the server has setting `name` (settings differ by version:
    /// 18.16 rejects ones it does not know).
    pub async fn has_setting(&self, name: &str) -> Result<bool, WarehouseError> {
        let sql = "SELECT count() FROM system.settings WHERE name = ?";
        let rows: Vec<u64> = self.fetch_all(sql, self.client.query(sql).bind(name)).await?;
        Ok(rows.first().copied().unwrap_or(0) > 0)
    }
}
