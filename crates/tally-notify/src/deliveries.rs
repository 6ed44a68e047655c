//! The delivery log's state: which alerts are finished (delivered or
//! dead-lettered), which one an account was attempting, and whether an
//! alert just read is new or a re-sent duplicate.
//!
//! The log is a compacted topic keyed by **account id**, whose value is
//! the account's whole delivery state ([`AccountRecord`]). That is enough,
//! and bounded, because of two facts:
//!
//! - the notifier finishes an account's alerts one at a time, in the
//!   order it reads them, which is ledger order (alerts are keyed by
//!   account, so an account's are in one partition);
//! - metering re-sends alerts (at-least-once) with the same deterministic
//!   id and never with a sequence above the last one it sent.
//!
//! So an alert is finished iff its sequence is below the account's last
//! finished sequence, or equal to it with its id among those finished at
//! that sequence (one ledger entry can raise LOW_BALANCE and PAUSED). The
//! state per account is one sequence, at most a few ids and the alert in
//! flight: memory and the compacted topic are bounded by the number of
//! accounts that ever alerted, not by the number of alerts.
//!
//! `attempting` is written (and acknowledged) before the first POST of an
//! alert and cleared by the record that finishes it; after a crash, an
//! account restored with `attempting` set may have had that alert
//! delivered already without the log saying so, and its next POST says so
//! (`Tally-Possible-Duplicate: true`).
//!
//! Pure: [`Tracker`] is fed records and alerts; the service does the I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tally_events::Alert;
use uuid::Uuid;

/// How an alert was finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer from its endpoint.
    Delivered,
    /// Given up after retrying; on the dead-letter topic.
    DeadLettered,
}

/// An alert finished at the account's last finished sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// Alert id.
    pub id: Uuid,
    /// How.
    pub outcome: Outcome,
}

/// One account's delivery state: the value of its delivery-log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Format version (1).
    pub version: u32,
    /// Account id (also the record key).
    pub account: String,
    /// Sequence of the last finished alert; -1 before any.
    pub sequence: i64,
    /// Alerts finished at `sequence`.
    pub finished: Vec<Finished>,
    /// The alert whose delivery was started and not finished, if any.
    pub attempting: Option<Uuid>,
}

impl AccountRecord {
    /// The record as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What reading an alert means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Not finished nor queued: deliver it.
    New,
    /// Finished before (a restart re-read it) or already queued (metering
    /// re-sent it): skip it.
    Duplicate,
}

#[derive(Debug, Clone)]
struct Track {
    /// Last finished sequence and what was finished there.
    done_sequence: i64,
    done: Vec<Finished>,
    /// Last accepted (queued or finished) sequence and ids there.
    accepted_sequence: i64,
    accepted: Vec<Uuid>,
    attempting: Option<Uuid>,
}

impl Default for Track {
    /// Nothing finished nor accepted: sequences start at -1, below every
    /// ledger sequence.
    fn default() -> Self {
        Track { done_sequence: -1, done: Vec::new(), accepted_sequence: -1, accepted: Vec::new(), attempting: None }
    }
}

/// Every account's delivery state.
#[derive(Debug, Default)]
pub struct Tracker {
    accounts: HashMap<String, Track>,
}

impl Tracker {
    /// An empty tracker (nothing delivered yet).
    pub fn new() -> Self {
        Tracker::default()
    }

    /// Takes a delivery-log record read at start; later records of an
    /// account replace earlier ones (the log is read in offset order).
    pub fn restore(&mut self, record: AccountRecord) {
        let accepted = record.finished.iter().map(|f| f.id).collect();
        self.accounts.insert(
            record.account,
            Track {
                done_sequence: record.sequence,
                done: record.finished,
                accepted_sequence: record.sequence,
                accepted,
                attempting: record.attempting,
            },
        );
    }

    /// Accounts known.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether no account is known.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// An alert read from the alerts topic: new (queue it) or a duplicate.
    pub fn accept(&mut self, alert: &Alert) -> Accept {
        let track = self.accounts.entry(alert.account_id.to_string()).or_default();
        let sequence = alert.sequence.0;
        if sequence < track.accepted_sequence
            || (sequence == track.accepted_sequence && track.accepted.contains(&alert.alert_id))
        {
            return Accept::Duplicate;
        }
        if sequence > track.accepted_sequence {
            track.accepted_sequence = sequence;
            track.accepted.clear();
        }
        track.accepted.push(alert.alert_id);
        Accept::New
    }

    /// The record to write (and have acknowledged) before the first POST
    /// of `alert`, and whether an earlier run may have delivered it (it was
    /// being attempted when that run stopped).
    pub fn start(&mut self, alert: &Alert) -> (AccountRecord, bool) {
        let account = alert.account_id.to_string();
        let track = self.accounts.entry(account.clone()).or_default();
        let possibly_delivered = track.attempting == Some(alert.alert_id);
        track.attempting = Some(alert.alert_id);
        (record(&account, track), possibly_delivered)
    }

    /// The record that finishes `alert` (to write before the account's
    /// next alert starts).
    pub fn finish(&mut self, alert: &Alert, outcome: Outcome) -> AccountRecord {
        let account = alert.account_id.to_string();
        let track = self.accounts.entry(account.clone()).or_default();
        let sequence = alert.sequence.0;
        if sequence > track.done_sequence {
            track.done_sequence = sequence;
            track.done.clear();
        }
        if !track.done.iter().any(|f| f.id == alert.alert_id) {
            track.done.push(Finished { id: alert.alert_id, outcome });
        }
        if track.attempting == Some(alert.alert_id) {
            track.attempting = None;
        }
        record(&account, track)
    }
}

fn record(account: &str, track: &Track) -> AccountRecord {
    AccountRecord {
        version: 1,
        account: account.to_string(),
        sequence: track.done_sequence,
        finished: track.done.clone(),
        attempting: track.attempting,
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use tally_events::{AccountId, AlertKind, Credits, Sequence};

    use super::*;

    fn alert(account: &str, id: u128, kind: AlertKind, sequence: i64) -> Alert {
        Alert {
            alert_id: Uuid::from_u128(id),
            account_id: AccountId::new_unchecked(account),
            kind,
            sequence: Sequence(sequence),
            balance: Credits::ZERO,
            threshold: Credits::ZERO,
            occurred_at: DateTime::from_timestamp_millis(0).unwrap_or_default(),
            message: String::new(),
            tier: None,
        }
    }

    #[test]
    fn resent_alerts_are_duplicates_and_two_alerts_of_one_entry_are_not() {
        let mut tracker = Tracker::new();
        let low = alert("a", 1, AlertKind::LowBalance, 5);
        let paused = alert("a", 2, AlertKind::Paused, 5);
        assert_eq!(tracker.accept(&low), Accept::New);
        assert_eq!(tracker.accept(&paused), Accept::New, "same sequence, other id");
        assert_eq!(tracker.accept(&low), Accept::Duplicate, "queued already");
        assert_eq!(tracker.accept(&alert("a", 9, AlertKind::Resumed, 4)), Accept::Duplicate, "older");
        assert_eq!(tracker.accept(&alert("b", 1, AlertKind::LowBalance, 1)), Accept::New, "accounts are apart");
        assert_eq!(tracker.accept(&alert("a", 3, AlertKind::Resumed, 8)), Accept::New);
    }

    #[test]
    fn a_restart_skips_what_the_log_finished_and_flags_what_was_in_flight() {
        let mut first = Tracker::new();
        let low = alert("a", 1, AlertKind::LowBalance, 5);
        let paused = alert("a", 2, AlertKind::Paused, 5);
        let resumed = alert("a", 3, AlertKind::Resumed, 9);
        let mut log = Vec::new();
        for a in [&low, &paused, &resumed] {
            assert_eq!(first.accept(a), Accept::New);
        }
        let (record, again) = first.start(&low);
        assert!(!again);
        log.push(record);
        log.push(first.finish(&low, Outcome::Delivered));
        log.push(first.start(&paused).0);
        log.push(first.finish(&paused, Outcome::DeadLettered));
        log.push(first.start(&resumed).0); // crash here: POST outcome unknown
        let last = log.last().expect("a record").clone();
        assert_eq!(last.sequence, 5);
        assert_eq!(last.finished.len(), 2);
        assert_eq!(last.attempting, Some(resumed.alert_id));
        // The log goes through JSON on the topic.
        let mut restarted = Tracker::new();
        for record in &log {
            let bytes = record.to_bytes();
            restarted.restore(serde_json::from_slice(&bytes).expect("json"));
        }
        assert_eq!(restarted.len(), 1);
        // Re-reading the alerts topic from its start:
        assert_eq!(restarted.accept(&low), Accept::Duplicate);
        assert_eq!(restarted.accept(&paused), Accept::Duplicate);
        assert_eq!(restarted.accept(&resumed), Accept::New, "not finished: delivered again");
        let (_, possibly_delivered) = restarted.start(&resumed);
        assert!(possibly_delivered, "it was in flight at the crash");
        let done = restarted.finish(&resumed, Outcome::Delivered);
        assert_eq!((done.sequence, done.attempting), (9, None));
        assert_eq!(done.finished, vec![Finished { id: resumed.alert_id, outcome: Outcome::Delivered }]);
        // Bounded: one sequence and the ids at it, whatever the history.
        let mut busy = Tracker::new();
        for s in 0..10_000 {
            let a = alert("a", s as u128 + 100, AlertKind::LowBalance, s);
            busy.accept(&a);
            busy.start(&a);
            let record = busy.finish(&a, Outcome::Delivered);
            assert!(record.finished.len() <= 1);
        }
        assert_eq!(busy.len(), 1);
    }
}
