//! The notifier's Prometheus metrics (prefix `tally_notify_`). Names are
//! constants here and nowhere else; alert rules are written against them,
//! so a rename is a breaking change.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric of the service.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served on /metrics.
    pub registry: Registry,
    /// `tally_notify_deliveries_total{outcome}`: alerts finished or
    /// skipped, by outcome (`delivered`, `dead_lettered`,
    /// `skipped_duplicate`).
    pub deliveries: IntCounterVec,
    /// `tally_notify_retries_total`: POSTs that failed and were scheduled
    /// again.
    pub retries: IntCounter,
    /// `tally_notify_delivery_duration_seconds`: from reading an alert to
    /// its endpoint's 2xx answer (queueing behind the account's earlier
    /// alerts and every retry included: the latency a receiver sees).
    pub delivery_seconds: Histogram,
    /// `tally_notify_backlog`: alerts read and not yet delivered or
    /// dead-lettered.
    pub backlog: IntGauge,
    /// `tally_notify_endpoint_failures_total{endpoint}`: failed POSTs
    /// (transport error, timeout or non-2xx), by endpoint name.
    pub endpoint_failures: IntCounterVec,
    /// `tally_notify_unreadable_alerts_total`: alerts-topic records that do
    /// not decode (skipped, logged).
    pub unreadable: IntCounter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tally_notify".into()), None)?;
        let deliveries =
            IntCounterVec::new(Opts::new("deliveries_total", "Alerts finished or skipped, by outcome"), &["outcome"])?;
        registry.register(Box::new(deliveries.clone()))?;
        // Every outcome shows from the start (0), so rates and absent()
        // alerts work before the first of each.
        // (A label list in `&[...]`, as the README table's test expects.)
        for outcome in &["delivered", "dead_lettered", "skipped_duplicate"] {
            deliveries.with_label_values(&[*outcome]);
        }
        let retries = IntCounter::new("retries_total", "Failed POSTs scheduled again after a backoff")?;
        registry.register(Box::new(retries.clone()))?;
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_duration_seconds",
                "Seconds from reading an alert to its endpoint's 2xx answer, queueing and retries included",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3_600.0, 86_400.0,
            ]),
        )?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        let backlog = IntGauge::new("backlog", "Alerts read and not yet delivered or dead-lettered")?;
        registry.register(Box::new(backlog.clone()))?;
        let endpoint_failures = IntCounterVec::new(
            Opts::new("endpoint_failures_total", "Failed POSTs (transport, timeout, non-2xx), by endpoint"),
            &["endpoint"],
        )?;
        registry.register(Box::new(endpoint_failures.clone()))?;
        let unreadable = IntCounter::new("unreadable_alerts_total", "Alerts-topic records that do not decode")?;
        registry.register(Box::new(unreadable.clone()))?;
        Ok(Metrics { registry, deliveries, retries, delivery_seconds, backlog, endpoint_failures, unreadable })
    }
}
