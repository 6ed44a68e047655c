//! Which endpoint an account's alerts go to.
//!
//! An account named in `[accounts]` goes to its endpoint; else an alert
//! whose tier (alert v3 carries the account's plan tier after the entry)
//! is named in `[tiers]` goes to that tier's endpoint; every other goes to
//! `default_endpoint` (alerts written before v3 have no tier, and go to
//! the default unless their account is named). Every name is checked at
//! load against `[endpoints]`, so every alert has exactly one endpoint and
//! routing cannot fail at run time. An account that changes tier routes by
//! the tier of each alert: its alerts may then go to two endpoints, each
//! in order.

use std::{collections::BTreeMap, sync::Arc};

use tally_events::PlanTier;

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
    tiers: BTreeMap<PlanTier, Arc<Endpoint>>,
    all: Vec<Arc<Endpoint>>,
}

impl Routes {
    /// Routes: `accounts` (account -> endpoint name) first, then `tiers`
    /// (tier -> endpoint name), then `default`; names must be in
    /// `endpoints`, which the config checks (`None` otherwise).
    pub fn new(
        endpoints: Vec<Endpoint>,
        default: &str,
        accounts: &BTreeMap<String, String>,
        tiers: &BTreeMap<PlanTier, String>,
    ) -> Option<Self> {
        let all: Vec<Arc<Endpoint>> = endpoints.into_iter().map(Arc::new).collect();
        let find = |name: &str| all.iter().find(|e| e.name == name).cloned();
        let default = find(default)?;
        let accounts = accounts
            .iter()
            .map(|(account, name)| find(name).map(|e| (account.clone(), e)))
            .collect::<Option<BTreeMap<_, _>>>()?;
        let tiers =
            tiers.iter().map(|(tier, name)| find(name).map(|e| (*tier, e))).collect::<Option<BTreeMap<_, _>>>()?;
        Some(Routes { default, accounts, tiers, all })
    }

    /// The endpoint of an alert of `account` at `tier`.
    pub fn route(&self, account: &str, tier: Option<PlanTier>) -> &Arc<Endpoint> {
        self.accounts.get(account).or_else(|| tier.and_then(|t| self.tiers.get(&t))).unwrap_or(&self.default)
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
        let none = BTreeMap::new();
        let routes = Routes::new(vec![endpoint("main"), endpoint("vip")], "main", &accounts, &none).expect("routes");
        assert_eq!(routes.route("acct-vip", None).name, "vip");
        assert_eq!(routes.route("acct-other", Some(PlanTier::Pro)).name, "main");
        assert_eq!(routes.route("", None).name, "main");
        assert_eq!(routes.endpoints().len(), 2);
        // Unknown names are refused (the config reports them first).
        assert!(Routes::new(vec![endpoint("main")], "nope", &BTreeMap::new(), &none).is_none());
        assert!(Routes::new(vec![endpoint("main")], "main", &accounts, &none).is_none());
        let tiers = BTreeMap::from([(PlanTier::Pro, "nope".to_string())]);
        assert!(Routes::new(vec![endpoint("main")], "main", &BTreeMap::new(), &tiers).is_none());
    }

    #[test]
    fn an_account_named_beats_its_tier_and_a_tier_beats_the_default() {
        let accounts = BTreeMap::from([("acct-vip".to_string(), "vip".to_string())]);
        let tiers = BTreeMap::from([(PlanTier::Pro, "pro".to_string())]);
        let endpoints = vec![endpoint("main"), endpoint("vip"), endpoint("pro")];
        let routes = Routes::new(endpoints, "main", &accounts, &tiers).expect("routes");
        assert_eq!(routes.route("acct-vip", Some(PlanTier::Pro)).name, "vip");
        assert_eq!(routes.route("acct-2", Some(PlanTier::Pro)).name, "pro");
        assert_eq!(routes.route("acct-2", Some(PlanTier::Basic)).name, "main");
        assert_eq!(routes.route("acct-2", None).name, "main", "an alert written before v3 has no tier");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = format!("{:?}", endpoint("main"));
        assert!(text.contains("<redacted>") && !text.contains("secret: [115]"), "{text}");
    }
}
