//! The aggregator's config: a raw file form, validated into a typed form.
//! Defaults work on the local stack; see `pipelines/aggregator.toml`.

use std::{net::SocketAddr, num::NonZeroU32, time::Duration};

use serde::Deserialize;
use tally_events::names::topics;
use tally_service::config::{load, ConfigError, Problems};
use tally_warehouse::WarehouseConfig;

/// The file form: every field optional, unknown fields refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Config format version (1).
    pub version: Option<u32>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Ledger topic.
    pub ledger_topic: Option<String>,
    /// Where ledger records that cannot be stored go.
    pub dead_letter_topic: Option<String>,
    /// ClickHouse HTTP URL.
    pub clickhouse_url: Option<String>,
    /// ClickHouse database.
    pub clickhouse_database: Option<String>,
    /// ClickHouse user.
    pub clickhouse_user: Option<String>,
    /// ClickHouse password.
    pub clickhouse_password: Option<String>,
    /// Bound on one ClickHouse request, in s.
    pub request_timeout_s: Option<u64>,
    /// Most rows in one batch.
    pub batch_rows_max: Option<usize>,
    /// Longest a batch waits to fill, in ms.
    pub batch_wait_ms: Option<u64>,
    /// Wait after claiming a partition whose owner did not stop cleanly, in ms.
    pub claim_grace_ms: Option<u64>,
    /// First wait after a failed flush, in ms (doubles up to retry_max_ms).
    pub retry_min_ms: Option<u64>,
    /// Longest wait between two tries, in ms.
    pub retry_max_ms: Option<u64>,
    /// Address of /metrics and /health.
    pub metrics_address: Option<String>,
    /// How long a stop may take, in s.
    pub drain_timeout_s: Option<u64>,
    /// This instance's index, from 0.
    pub instance_index: Option<u32>,
    /// How many instances share the ledger partitions.
    pub instance_count: Option<u32>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Ledger topic.
    pub ledger_topic: String,
    /// Dead-letter topic for ledger records.
    pub dead_letter_topic: String,
    /// ClickHouse.
    pub warehouse: WarehouseConfig,
    /// Most rows per batch (each month of a batch is one INSERT, far under
    /// ClickHouse's 1,048,576-row block, the bound of an atomic INSERT).
    pub batch_rows_max: usize,
    /// How long a batch's first row waits for more before the batch is
    /// due (it goes once the flush ahead of it has finished, and is filled
    /// first while the broker holds a full batch more).
    pub batch_wait: Duration,
    /// Wait after claiming a partition its owner did not release.
    pub claim_grace: Duration,
    /// First backoff after a failure.
    pub retry_min: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// /metrics and /health.
    pub metrics_address: SocketAddr,
    /// Drain deadline.
    pub drain_timeout: Duration,
    /// This instance.
    pub instance_index: u32,
    /// Instances in all: instance i owns the ledger partitions p with
    /// p % count == i.
    pub instance_count: NonZeroU32,
    /// Where the config came from.
    pub origin: String,
}

impl AggregatorConfig {
    /// Loads `path` (or defaults) with `TALLY_AGGREGATOR__*` overrides.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (raw, origin): (RawConfig, String) = load("aggregator", path, env)?;
        Self::validate(raw, origin)
    }

    /// Checks every field, reporting every bad one at once. The defaults
    /// are here and nowhere else (`pipelines/aggregator.toml` shows them;
    /// a test holds the two together).
    pub fn validate(raw: RawConfig, origin: String) -> Result<Self, ConfigError> {
        let mut check = Problems::new(&origin);
        if raw.version.is_some_and(|v| v != 1) {
            check.bad("version", "only version 1 is known");
        }
        let ledger_topic = check.non_empty("ledger_topic", raw.ledger_topic, topics::LEDGER);
        let dead_letter_topic =
            check.non_empty("dead_letter_topic", raw.dead_letter_topic, topics::LEDGER_DEAD_LETTERS);
        if ledger_topic == dead_letter_topic {
            check.bad("dead_letter_topic", "must differ from ledger_topic");
        }
        let url = check.non_empty("clickhouse_url", raw.clickhouse_url, "http://127.0.0.1:8123");
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            check
                .bad("clickhouse_url", "must be an http:// or https:// URL (the HTTP interface, port 8123 by default)");
        }
        let database = check.non_empty("clickhouse_database", raw.clickhouse_database, "tally");
        if !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            check.bad("clickhouse_database", "must be letters, digits and _");
        }
        let request_timeout_s = check.in_range("request_timeout_s", raw.request_timeout_s, 10, 1..=600);
        let batch_rows_max = check.in_range("batch_rows_max", raw.batch_rows_max, 50_000, 1..=500_000);
        let batch_wait_ms = check.in_range("batch_wait_ms", raw.batch_wait_ms, 200, 0..=60_000);
        let claim_grace_ms = check.in_range("claim_grace_ms", raw.claim_grace_ms, 2_000, 0..=600_000);
        let retry_min_ms = check.in_range("retry_min_ms", raw.retry_min_ms, 200, 10..=60_000);
        let retry_max_ms = check.in_range("retry_max_ms", raw.retry_max_ms, 10_000, 10..=600_000);
        if retry_max_ms < retry_min_ms {
            check.bad("retry_max_ms", "must be at least retry_min_ms");
        }
        let metrics_address =
            raw.metrics_address.unwrap_or_else(|| "127.0.0.1:9465".into()).parse().unwrap_or_else(|_| {
                check.bad("metrics_address", "must be an address like 127.0.0.1:9465");
                SocketAddr::from(([127, 0, 0, 1], 9465))
            });
        let drain_timeout_s = check.in_range("drain_timeout_s", raw.drain_timeout_s, 60, 1..=3_600);
        let count = check.in_range("instance_count", raw.instance_count, 1, 1..=1_024);
        let index = raw.instance_index.unwrap_or(0);
        if index >= count {
            check.bad("instance_index", format!("{index} must be below instance_count ({count})"));
        }
        let config = AggregatorConfig {
            brokers: check.non_empty("brokers", raw.brokers, "127.0.0.1:9092"),
            ledger_topic,
            dead_letter_topic,
            warehouse: WarehouseConfig {
                url,
                database,
                user: check.non_empty("clickhouse_user", raw.clickhouse_user, "default"),
                password: raw.clickhouse_password.unwrap_or_default(),
                timeout: Duration::from_secs(request_timeout_s),
            },
            batch_rows_max,
            batch_wait: Duration::from_millis(batch_wait_ms),
            claim_grace: Duration::from_millis(claim_grace_ms),
            retry_min: Duration::from_millis(retry_min_ms),
            retry_max: Duration::from_millis(retry_max_ms),
            metrics_address,
            drain_timeout: Duration::from_secs(drain_timeout_s),
            instance_index: index,
            instance_count: NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN),
            origin,
        };
        check.finish(config)
    }

    /// Whether this instance owns ledger partition `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        partition.unsigned_abs() % self.instance_count.get() == self.instance_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_and_every_bad_field_is_named() {
        let config = AggregatorConfig::load(None, Vec::new()).expect("defaults");
        assert_eq!(config.ledger_topic, "tally.ledger");
        assert_eq!(config.warehouse.database, "tally");
        assert!(config.owns(0) && config.owns(3));
        let env = vec![
            ("TALLY_AGGREGATOR__BATCH_ROWS_MAX".to_string(), "0".to_string()),
            ("TALLY_AGGREGATOR__CLICKHOUSE_URL".to_string(), "127.0.0.1:9000".to_string()),
            ("TALLY_AGGREGATOR__INSTANCE_INDEX".to_string(), "2".to_string()),
        ];
        let error = AggregatorConfig::load(None, env).expect_err("refused").to_string();
        for field in ["batch_rows_max", "clickhouse_url", "instance_index"] {
            assert!(error.contains(field), "{error} names {field}");
        }
    }

    #[test]
    fn the_shipped_file_gives_exactly_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/aggregator.toml");
        let mut shipped = AggregatorConfig::load(Some(&path), Vec::new()).expect("the shipped file is valid");
        let mut defaults = AggregatorConfig::load(None, Vec::new()).expect("defaults");
        shipped.origin.clear();
        defaults.origin.clear();
        assert_eq!(shipped, defaults);
    }
}
