//! Which endpoint an account's alerts go to.
//!
//! An account named in `[accounts]` goes to its endpoint; every other
//! account goes to `default_endpoint`. Both are checked at load against
//! `[endpoints]`, so every alert has exactly one endpoint and routing
//! cannot fail at run time.
//!
//! Routing by plan tier is not supported: alerts carry no tier, and the
//! tier of an account is known only from its account changes on the input
//! topic (a second input to follow and keep per account, with its own
//! ordering against the alerts). An endpoint per tier is expressed today
//! by listing the tier's accounts.

use std::{collections::BTreeMap, sync::Arc};

use crate::backoff::Backoff;

/// A webhook receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name in the config (a metric label, in dead letters).
    pub name: String,
    /// `http://host:port/path`.
    pub url: String,
    /// The HMAC secret (never logged: see the Debug impl).
    pub secret: Vec<u8>,
    /// Its retry schedule.
    pub backoff: Backoff,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// Account -> endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    default: Arc<Endpoint>,
    accounts: BTreeMap<String, Arc<Endpoint>>,
    all: Vec<Arc<Endpoint>>,
}

impl Routes {
    /// Routes with `default` for every account not in `accounts`
    /// (account -> endpoint name; names must be in `endpoints`, which the
    /// config checks).
    pub fn new(endpoints: Vec<Endpoint>, default: &str, accounts: &BTreeMap<String, String>) -> Option<Self> {
        let all: Vec<Arc<Endpoint>> = endpoints.into_iter().map(Arc::new).collect();
        let find = |name: &str| all.iter().find(|e| e.name == name).cloned();
        let default = find(default)?;
        let accounts = accounts
            .iter()
            .map(|(account, name)| find(name).map(|e| (account.clone(), e)))
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Routes { default, accounts, all })
    }

    /// The endpoint of `account`'s alerts.
    pub fn route(&self, account: &str) -> &Arc<Endpoint> {
        self.accounts.get(account).unwrap_or(&self.default)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn endpoint(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            url: format!("http://127.0.0.1:1/{name}"),
            secret: b"s".to_vec(),
            backoff: Backoff {
                retry_min: Duration::from_secs(1),
                retry_max: Duration::from_secs(2),
                retry_for: Duration::from_secs(3),
            },
        }
    }

    #[test]
    fn named_accounts_go_to_their_endpoint_and_the_rest_to_the_default() {
        let accounts = BTreeMap::from([("acct-vip".to_string(), "vip".to_string())]);
        let routes = Routes::new(vec![endpoint("main"), endpoint("vip")], "main", &accounts).expect("routes");
        assert_eq!(routes.route("acct-vip").name, "vip");
        assert_eq!(routes.route("acct-other").name, "main");
        assert_eq!(routes.route("").name, "main");
        assert_eq!(routes.endpoints().len(), 2);
        // Unknown names are refused (the config reports them first).
        assert!(Routes::new(vec![endpoint("main")], "nope", &BTreeMap::new()).is_none());
        assert!(Routes::new(vec![endpoint("main")], "main", &accounts).is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = format!("{:?}", endpoint("main"));
        assert!(text.contains("<redacted>") && !text.contains("secret: [115]"), "{text}");
    }
}
