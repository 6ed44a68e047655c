//! Metric increments of one batch, applied once at its end: a labelled
//! counter lookup hashes its labels, too costly per input.

use tally_events::{Alert, AlertKind, EntryStatus, LedgerEntry};

use crate::metrics::Metrics;

/// What one batch counted.
#[derive(Default)]
pub(crate) struct Tally {
    inputs: Vec<(&'static str, u64)>,
    entries: Vec<((&'static str, &'static str), u64)>,
    dead_letters: Vec<(String, u64)>,
    alerts: Vec<(&'static str, u64)>,
    duplicates: u64,
}

fn bump<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

impl Tally {
    pub(crate) fn input(&mut self, input_type: &'static str) {
        bump(&mut self.inputs, input_type);
    }

    pub(crate) fn entry(&mut self, entry: &LedgerEntry) {
        let status = match entry.status {
            EntryStatus::Success => "success",
            EntryStatus::Failed => "failed",
        };
        bump(&mut self.entries, (entry.entry_type.name(), status));
    }

    pub(crate) fn alert(&mut self, alert: &Alert) {
        bump(&mut self.alerts, alert_kind(alert.kind));
    }

    pub(crate) fn dead_letter(&mut self, reason: &str) {
        match self.dead_letters.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => self.dead_letters.push((reason.to_string(), 1)),
        }
    }

    pub(crate) fn duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// Adds the batch's counts to the metrics.
    pub(crate) fn publish(&self, metrics: &Metrics) {
        for (input_type, n) in &self.inputs {
            metrics.inputs.with_label_values(&[input_type]).inc_by(*n);
        }
        for ((entry_type, status), n) in &self.entries {
            metrics.entries.with_label_values(&[entry_type, status]).inc_by(*n);
        }
        for (reason, n) in &self.dead_letters {
            metrics.dead_letters.with_label_values(&[reason]).inc_by(*n);
        }
        for (kind, n) in &self.alerts {
            metrics.alerts.with_label_values(&[kind]).inc_by(*n);
        }
        metrics.duplicates.inc_by(self.duplicates);
    }
}

/// The label of an alert kind.
fn alert_kind(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LowBalance => "low_balance",
        AlertKind::Paused => "paused",
        AlertKind::Resumed => "resumed",
    }
}
