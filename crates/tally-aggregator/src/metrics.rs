//! The aggregator's Prometheus metrics (prefix `tally_aggregator_`). Names
//! are constants here and nowhere else.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric of the service.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served on /metrics.
    pub registry: Registry,
    /// Rows inserted into ledger_entries.
    pub rows_inserted: IntCounter,
    /// Batches flushed.
    pub batches: IntCounter,
    /// INSERT statements into ledger_entries (one per month per batch).
    pub inserts: IntCounter,
    /// Seconds to flush one batch (claim check, INSERTs, progress).
    pub insert_seconds: Histogram,
    /// Failed flushes or recoveries, each followed by a backoff and a
    /// recovery from what ClickHouse holds.
    pub retries: IntCounter,
    /// Ledger records read, by what became of them (row, present,
    /// duplicate, not_counted, dead).
    pub records: IntCounterVec,
    /// Dead letters, by reason.
    pub dead_letters: IntCounterVec,
    /// Sequence gaps seen in the ledger.
    pub gaps: IntCounter,
    /// Rollup partitions rebuilt from the raw table.
    pub rollup_rebuilds: IntCounter,
    /// Ledger partitions this instance owns and writes.
    pub partitions_owned: IntGauge,
    /// Per owned ledger partition: records not yet in ClickHouse (high
    /// watermark minus the resume point).
    pub partition_lag: IntGaugeVec,
    /// Per owned ledger partition: the resume point (next offset) last
    /// recorded in ClickHouse.
    pub last_inserted_offset: IntGaugeVec,
    /// 1 while ClickHouse is failing for this instance.
    pub clickhouse_failing: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tally_aggregator".into()), None)?;
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge_vec = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["partition"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let insert_seconds = Histogram::with_opts(
            HistogramOpts::new("insert_seconds", "Seconds to flush one batch into ClickHouse")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        registry.register(Box::new(insert_seconds.clone()))?;
        Ok(Metrics {
            rows_inserted: counter("rows_inserted_total", "Rows inserted into ledger_entries")?,
            batches: counter("batches_total", "Batches flushed into ClickHouse")?,
            inserts: counter("inserts_total", "INSERT statements into ledger_entries")?,
            insert_seconds,
            retries: counter("retries_total", "Failed flushes or recoveries, retried after a backoff")?,
            records: counter_vec("records_total", "Ledger records read, by outcome", &["outcome"])?,
            dead_letters: counter_vec("dead_letters_total", "Ledger records dead-lettered, by reason", &["reason"])?,
            gaps: counter("sequence_gaps_total", "Entries whose sequence skipped ahead of the account's last")?,
            rollup_rebuilds: counter("rollup_rebuilds_total", "Rollup partitions rebuilt from the raw table")?,
            partitions_owned: gauge("partitions_owned", "Ledger partitions this instance writes")?,
            partition_lag: gauge_vec("partition_lag", "Ledger records not yet in ClickHouse, per partition")?,
            last_inserted_offset: gauge_vec(
                "last_inserted_offset",
                "Resume point last recorded in ClickHouse, per partition",
            )?,
            clickhouse_failing: gauge("clickhouse_failing", "1 while ClickHouse requests fail")?,
            registry,
        })
    }
}
