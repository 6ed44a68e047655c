//! The metering service's Prometheus metrics. Names are constants here and
//! nowhere else.
//!
//! Every worker of a process (see `workers`) tallies into the same
//! metrics: counters and histograms add up by themselves, per-partition
//! gauges are disjoint (a partition has one worker), and a gauge that is a
//! sum over the workers (partitions owned, lag) is moved by each worker's
//! change through a [`GaugeShare`], never set outright.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric of the service.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served on /metrics.
    pub registry: Registry,
    /// Inputs read, by type (usage, purchase, account, undecodable).
    pub inputs: IntCounterVec,
    /// Ledger entries written, by type and status.
    pub entries: IntCounterVec,
    /// Duplicate inputs (already applied).
    pub duplicates: IntCounter,
    /// Dead letters, by reason.
    pub dead_letters: IntCounterVec,
    /// Alerts, by kind.
    pub alerts: IntCounterVec,
    /// Ledger records held behind an alert or dead letter not yet
    /// acknowledged (the hold rule).
    pub ledger_held: IntCounter,
    /// Inputs whose batch completed: every output acknowledged.
    pub inputs_acknowledged: IntCounter,
    /// Inputs per batch.
    pub batch_size: Histogram,
    /// Seconds from batch start to acknowledged outputs.
    pub batch_seconds: Histogram,
    /// Consumer lag of the input topic.
    pub consumer_lag: IntGauge,
    /// Seconds to rebuild a partition's state.
    pub restore_seconds: Histogram,
    /// Partitions owned.
    pub partitions_owned: IntGauge,
    /// Input partitions, owned or not, with inputs waiting and no progress
    /// for the stall timeout: partitions no live instance consumes.
    pub partitions_stalled: IntGauge,
    /// Per input partition: how long inputs have waited with no progress.
    pub partition_waiting_seconds: IntGaugeVec,
    /// Per owned input partition: inputs not yet read (the high watermark
    /// of the last fetch minus the next input offset).
    pub partition_lag: IntGaugeVec,
    /// Per owned input partition: the next input offset to handle.
    pub partition_input_offset: IntGaugeVec,
    /// Snapshots written.
    pub snapshots: IntCounter,
    /// Seconds to cut, encode and write one snapshot.
    pub snapshot_seconds: Histogram,
    /// Ledger records read by restores (after the snapshot they started
    /// from, if any).
    pub restore_records: IntCounter,
    /// Seconds the workers' loops spent, by phase: `poll` (in the
    /// consumer's poll: reading inputs, or waiting for them), `apply`
    /// (decoding, applying and handing outputs to the producer), `settle`
    /// (taking acknowledgements and completing batches, waiting for them
    /// when `batches_in_flight` are out). Where a worker that is not keeping
    /// up spends its time; the rest is ticks and snapshots.
    pub loop_seconds: CounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("tally_metering".into()), None)?;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let duplicates = IntCounter::new("duplicates_total", "Inputs already applied (changed nothing)")?;
        registry.register(Box::new(duplicates.clone()))?;
        let snapshots = IntCounter::new("snapshots_total", "Partition snapshots written")?;
        registry.register(Box::new(snapshots.clone()))?;
        let inputs_acknowledged = IntCounter::new(
            "inputs_acknowledged_total",
            "Inputs whose batch completed: every output of it acknowledged",
        )?;
        registry.register(Box::new(inputs_acknowledged.clone()))?;
        let restore_records =
            IntCounter::new("restore_records_total", "Ledger records read by restores, after their snapshot")?;
        registry.register(Box::new(restore_records.clone()))?;
        let ledger_held = IntCounter::new(
            "ledger_held_total",
            "Ledger records held until an alert or dead letter before them was acknowledged (the hold rule)",
        )?;
        registry.register(Box::new(ledger_held.clone()))?;
        Ok(Metrics {
            inputs: counter_vec("inputs_total", "Inputs read, by type", &["type"])?,
            entries: counter_vec("entries_total", "Ledger entries written, by type and status", &["type", "status"])?,
            duplicates,
            dead_letters: counter_vec("dead_letters_total", "Inputs dead-lettered, by reason", &["reason"])?,
            alerts: counter_vec("alerts_total", "Alerts written, by kind", &["kind"])?,
            ledger_held,
            inputs_acknowledged,
            batch_size: histogram(
                "batch_size",
                "Inputs per batch",
                vec![1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0],
            )?,
            batch_seconds: histogram(
                "batch_seconds",
                "Seconds from the first input of a batch to its acknowledged outputs",
                prometheus::exponential_buckets(0.001, 2.0, 14)?,
            )?,
            consumer_lag: gauge(
                "consumer_lag",
                "Inputs not yet read, summed over owned partitions (librdkafka statistics; on brokers with a wrong ListOffsets, such as Tansu memory storage, approximate)",
            )?,
            restore_seconds: histogram(
                "restore_seconds",
                "Seconds to rebuild one partition's state from the ledger",
                prometheus::exponential_buckets(0.01, 2.0, 14)?,
            )?,
            partitions_owned: gauge("partitions_owned", "Input partitions this instance owns")?,
            partitions_stalled: gauge(
                "partitions_stalled",
                "Input partitions (owned by any instance) with inputs waiting and no progress for stall_timeout_s",
            )?,
            partition_waiting_seconds: gauge_vec(
                "partition_waiting_seconds",
                "Seconds inputs have waited in an input partition with no progress (0: progressing or idle)",
                &["partition"],
            )?,
            partition_input_offset: gauge_vec(
                "partition_input_offset",
                "Next input offset to handle in an owned input partition (updated each second)",
                &["partition"],
            )?,
            partition_lag: gauge_vec(
                "partition_lag",
                "Inputs not yet read in an owned input partition (last fetched high watermark - next input offset)",
                &["partition"],
            )?,
            snapshots,
            snapshot_seconds: histogram(
                "snapshot_seconds",
                "Seconds to cut, encode and write one partition snapshot",
                prometheus::exponential_buckets(0.001, 2.0, 14)?,
            )?,
            restore_records,
            loop_seconds: {
                let c = CounterVec::new(
                    Opts::new("loop_seconds_total", "Seconds the metering loops spent, by phase (poll, apply, settle)"),
                    &["phase"],
                )?;
                registry.register(Box::new(c.clone()))?;
                c
            },
            registry,
        })
    }
}

/// One worker's part of a gauge that sums over the workers: `set` moves the
/// gauge by the change of this part, and dropping the part takes it out.
pub struct GaugeShare {
    gauge: IntGauge,
    mine: AtomicI64,
}

impl GaugeShare {
    /// A part of `gauge`, 0 so far.
    pub fn new(gauge: &IntGauge) -> Self {
        GaugeShare { gauge: gauge.clone(), mine: AtomicI64::new(0) }
    }

    /// This worker's part is now `value`.
    pub fn set(&self, value: i64) {
        let before = self.mine.swap(value, Ordering::Relaxed);
        self.gauge.add(value - before);
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.sub(self.mine.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_gauge_add_up_and_leave_with_their_worker() {
        let gauge = IntGauge::new("g", "g").expect("gauge");
        let (a, b) = (GaugeShare::new(&gauge), GaugeShare::new(&gauge));
        a.set(3);
        b.set(5);
        a.set(2);
        assert_eq!(gauge.get(), 7);
        drop(b);
        assert_eq!(gauge.get(), 2);
    }
}
