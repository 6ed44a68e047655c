//! The notifier's config: a raw file form, validated into a typed form.
//! Defaults work on the local stack; see `pipelines/notify.toml`. Secrets
//! come from the environment (`TALLY_NOTIFY__ENDPOINTS__<NAME>__SECRET`),
//! so endpoint names are lower-case letters, digits and `_`: the names an
//! environment override can address.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;
use tally_events::{names::topics, PlanTier};
use tally_service::config::{load, ConfigError, Problems};

use crate::{backoff::Backoff, routing::Endpoint, routing::Routes};

/// Default delivery-log topic (compacted, keyed by account id).
pub const DELIVERIES_TOPIC: &str = "tally.notify.deliveries";
/// Default dead-letter topic for alerts that could not be delivered.
pub const DEAD_LETTER_TOPIC: &str = "tally.notify.dead-letters";
/// Shortest secret accepted, in bytes.
pub const SECRET_MIN: usize = 16;

/// One endpoint in the file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// `http://host:port/path`.
    pub url: Option<String>,
    /// HMAC secret.
    pub secret: Option<String>,
}

/// The file form: every field optional, unknown fields refused.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Config format version (1).
    pub version: Option<u32>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Alerts topic (metering's output).
    pub alerts_topic: Option<String>,
    /// Delivery-log topic.
    pub deliveries_topic: Option<String>,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Endpoint of every account not in `accounts`.
    pub default_endpoint: Option<String>,
    /// Endpoints by name.
    pub endpoints: Option<BTreeMap<String, RawEndpoint>>,
    /// Account id -> endpoint name.
    pub accounts: Option<BTreeMap<String, String>>,
    /// Tier (`payg`, `basic`, `pro`) -> endpoint, for accounts not in
    /// `accounts`.
    pub tiers: Option<BTreeMap<String, String>>,
    /// Bound on one POST (connect, send, answer), in ms.
    pub request_timeout_ms: Option<u64>,
    /// First wait after a failed POST, in ms.
    pub retry_min_ms: Option<u64>,
    /// Longest wait between two POSTs of one alert, in ms.
    pub retry_max_ms: Option<u64>,
    /// How long an alert is retried before it is dead-lettered, in s.
    pub retry_for_s: Option<u64>,
    /// Most POSTs in flight to one endpoint.
    pub max_in_flight_per_endpoint: Option<usize>,
    /// Most alerts read and not yet finished; reading pauses beyond it.
    pub max_backlog: Option<usize>,
    /// Address of /metrics and /health.
    pub metrics_address: Option<String>,
    /// How long a stop may take, in s.
    pub drain_timeout_s: Option<u64>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Alerts topic.
    pub alerts_topic: String,
    /// Delivery-log topic.
    pub deliveries_topic: String,
    /// Dead-letter topic.
    pub dead_letter_topic: String,
    /// Account -> endpoint.
    pub routes: Routes,
    /// Bound on one POST.
    pub request_timeout: Duration,
    /// Most POSTs in flight to one endpoint.
    pub max_in_flight_per_endpoint: usize,
    /// Most alerts read and not finished.
    pub max_backlog: usize,
    /// /metrics and /health.
    pub metrics_address: SocketAddr,
    /// Drain deadline.
    pub drain_timeout: Duration,
    /// Where the config came from.
    pub origin: String,
}

impl NotifyConfig {
    /// Loads `path` (or defaults) with `TALLY_NOTIFY__*` overrides.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (raw, origin): (RawConfig, String) = load("notify", path, env)?;
        Self::validate(raw, origin)
    }

    /// Checks every field, reporting every bad one at once. The defaults
    /// are here and nowhere else (`pipelines/notify.toml` shows them; a
    /// test holds the two together).
    pub fn validate(raw: RawConfig, origin: String) -> Result<Self, ConfigError> {
        let mut check = Problems::new(&origin);
        if raw.version.is_some_and(|v| v != 1) {
            check.bad("version", "only version 1 is known");
        }
        let alerts_topic = check.non_empty("alerts_topic", raw.alerts_topic, topics::ALERTS);
        let deliveries_topic = check.non_empty("deliveries_topic", raw.deliveries_topic, DELIVERIES_TOPIC);
        let dead_letter_topic = check.non_empty("dead_letter_topic", raw.dead_letter_topic, DEAD_LETTER_TOPIC);
        if alerts_topic == deliveries_topic
            || alerts_topic == dead_letter_topic
            || deliveries_topic == dead_letter_topic
        {
            check.bad("deliveries_topic", "alerts, deliveries and dead-letter topics must all differ");
        }
        let request_timeout_ms = check.in_range("request_timeout_ms", raw.request_timeout_ms, 10_000, 10..=300_000);
        let retry_min_ms = check.in_range("retry_min_ms", raw.retry_min_ms, 1_000, 10..=3_600_000);
        let retry_max_ms = check.in_range("retry_max_ms", raw.retry_max_ms, 3_600_000, 10..=86_400_000);
        if retry_max_ms < retry_min_ms {
            check.bad("retry_max_ms", "must be at least retry_min_ms");
        }
        let retry_for_s = check.in_range("retry_for_s", raw.retry_for_s, 86_400, 1..=30 * 86_400);
        let backoff = Backoff {
            retry_min: Duration::from_millis(retry_min_ms),
            retry_max: Duration::from_millis(retry_max_ms),
            retry_for: Duration::from_secs(retry_for_s),
        };
        let mut endpoints = Vec::new();
        let raw_endpoints = raw.endpoints.unwrap_or_default();
        for (name, endpoint) in raw_endpoints {
            let field = |f: &str| format!("endpoints.{name}.{f}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                check.bad(&format!("endpoints.{name}"), "names are lower-case letters, digits and _");
            }
            let url = endpoint.url.unwrap_or_default();
            if url.starts_with("https://") {
                check.bad(
                    &field("url"),
                    "https is not built into this notifier (no TLS stack): terminate TLS in a local proxy \
                     or see docs/WEBHOOKS.md",
                );
            } else if !url.starts_with("http://") || url.parse::<hyper::Uri>().is_err() {
                check.bad(&field("url"), format!("{url:?} is not an http:// URL"));
            }
            let secret = endpoint.secret.unwrap_or_default();
            if secret.len() < SECRET_MIN {
                let env = format!("TALLY_NOTIFY__ENDPOINTS__{}__SECRET", name.to_ascii_uppercase());
                check.bad(&field("secret"), format!("must be at least {SECRET_MIN} bytes; set it in {env}"));
            }
            endpoints.push(Endpoint { name, url, secret: secret.into_bytes(), backoff });
        }
        let default_endpoint = check.non_empty("default_endpoint", raw.default_endpoint, "main");
        let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
        if !names.contains(&default_endpoint.as_str()) {
            check.bad("default_endpoint", format!("{default_endpoint:?} is not in [endpoints] ({names:?})"));
        }
        let accounts = raw.accounts.unwrap_or_default();
        for (account, name) in &accounts {
            if !names.contains(&name.as_str()) {
                check.bad(&format!("accounts.{account}"), format!("{name:?} is not in [endpoints] ({names:?})"));
            }
        }
        let mut tiers = BTreeMap::new();
        for (tier, name) in raw.tiers.unwrap_or_default() {
            let parsed = match tier.to_ascii_lowercase().as_str() {
                "payg" => Some(PlanTier::Payg),
                "basic" => Some(PlanTier::Basic),
                "pro" => Some(PlanTier::Pro),
                _ => None,
            };
            match parsed {
                None => check.bad(&format!("tiers.{tier}"), "is not a tier (payg, basic or pro)"),
                Some(_) if !names.contains(&name.as_str()) => {
                    check.bad(&format!("tiers.{tier}"), format!("{name:?} is not in [endpoints] ({names:?})"))
                }
                Some(parsed) => {
                    tiers.insert(parsed, name);
                }
            }
        }
        let metrics_address =
            raw.metrics_address.unwrap_or_else(|| "127.0.0.1:9466".into()).parse().unwrap_or_else(|_| {
                check.bad("metrics_address", "must be an address like 127.0.0.1:9466");
                SocketAddr::from(([127, 0, 0, 1], 9466))
            });
        let max_in_flight_per_endpoint =
            check.in_range("max_in_flight_per_endpoint", raw.max_in_flight_per_endpoint, 8, 1..=1_024);
        let max_backlog = check.in_range("max_backlog", raw.max_backlog, 100_000, 1..=10_000_000);
        let drain_timeout_s = check.in_range("drain_timeout_s", raw.drain_timeout_s, 30, 1..=3_600);
        let brokers = check.non_empty("brokers", raw.brokers, "127.0.0.1:9092");
        let Some(routes) = Routes::new(endpoints, &default_endpoint, &accounts, &tiers) else {
            // Reported above (an unknown default or account endpoint):
            // finish gives every problem.
            let unknown = ConfigError::field(&origin, "default_endpoint", "names an endpoint not in [endpoints]");
            return check.finish(()).and(Err(unknown));
        };
        let config = NotifyConfig {
            brokers,
            alerts_topic,
            deliveries_topic,
            dead_letter_topic,
            routes,
            request_timeout: Duration::from_millis(request_timeout_ms),
            max_in_flight_per_endpoint,
            max_backlog,
            metrics_address,
            drain_timeout: Duration::from_secs(drain_timeout_s),
            origin,
        };
        check.finish(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_env() -> Vec<(String, String)> {
        vec![("TALLY_NOTIFY__ENDPOINTS__MAIN__SECRET".to_string(), "a-local-test-secret-000".to_string())]
    }

    fn shipped() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/notify.toml")
    }

    #[test]
    fn the_shipped_file_gives_the_defaults_once_a_secret_is_set() {
        let error = NotifyConfig::load(Some(&shipped()), Vec::new()).expect_err("no secret").to_string();
        assert!(error.contains("TALLY_NOTIFY__ENDPOINTS__MAIN__SECRET"), "{error}");
        let mut config = NotifyConfig::load(Some(&shipped()), secret_env()).expect("valid with a secret");
        assert_eq!(config.alerts_topic, "tally.alerts");
        assert_eq!(config.deliveries_topic, DELIVERIES_TOPIC);
        assert_eq!(config.dead_letter_topic, DEAD_LETTER_TOPIC);
        let main = config.routes.route("any-account", None);
        assert_eq!(main.name, "main");
        assert_eq!(main.secret, b"a-local-test-secret-000");
        assert_eq!(main.backoff.retry_for, Duration::from_secs(86_400), "a day of retries by default");
        // Everything but the endpoints is the built-in default.
        let raw = RawConfig {
            endpoints: Some(BTreeMap::from([(
                "main".to_string(),
                RawEndpoint {
                    url: Some("http://127.0.0.1:8080/tally/alerts".into()),
                    secret: Some("a-local-test-secret-000".into()),
                },
            )])),
            ..RawConfig::default()
        };
        let mut defaults = NotifyConfig::validate(raw, String::new()).expect("defaults");
        config.origin.clear();
        defaults.origin.clear();
        assert_eq!(config, defaults);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let dir = std::env::temp_dir().join(format!("tally-notify-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("notify.toml");
        std::fs::write(
            &file,
            r#"
default_endpoint = "nowhere"
retry_min_ms = 5000
retry_max_ms = 100
[endpoints.main]
url = "https://hooks.example.com/x"
secret = "short"
[endpoints.Bad-Name]
url = "ftp://x"
secret = "0123456789abcdef0123"
[accounts]
"acct-1" = "missing"
[tiers]
pro = "absent"
gold = "main"
"#,
        )
        .expect("write");
        let error = NotifyConfig::load(Some(&file), Vec::new()).expect_err("refused").to_string();
        for part in [
            "default_endpoint",
            "retry_max_ms",
            "endpoints.main.url",
            "endpoints.main.secret",
            "endpoints.Bad-Name",
            "endpoints.Bad-Name.url",
            "accounts.acct-1",
            "tiers.pro",
            "tiers.gold",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
        assert!(!error.contains("a-local"), "no secret in errors");
    }
}
