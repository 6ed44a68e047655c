//! Following the alerts topic: which accounts are paused.
//!
//! Metering writes LOW_BALANCE, PAUSED and RESUMED alerts keyed by account
//! (so an account's alerts are in one partition, in ledger order). A worker
//! runs one [`AlertWatcher`] and asks [`AlertWatcher::ai_allowed`] before it
//! offers an AI feature; non-AI features never need to ask.
//!
//! Invariants: alerts are at-least-once (a metering restart can re-send a
//! batch's alerts), so an alert counts only if its ledger sequence is not
//! below the last one applied for its account; the view is eventually
//! consistent (it lags metering by the alert's delivery), and the ledger
//! stays the truth: metering refuses a paused account's usage whatever a
//! worker believed.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use tally_events::{names::topics, AccountId, Alert, AlertKind, Codec};

use crate::ClientError;

/// Where to follow alerts.
#[derive(Debug, Clone)]
pub struct AlertWatcherConfig {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Alerts topic.
    pub topic: String,
}

impl Default for AlertWatcherConfig {
    fn default() -> Self {
        AlertWatcherConfig { bootstrap_servers: "127.0.0.1:9092".into(), topic: topics::ALERTS.into() }
    }
}

/// What the alerts say about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountAlerts {
    /// AI features paused (a PAUSED alert not yet followed by RESUMED).
    pub paused: bool,
    /// The latest alert applied.
    pub last: Alert,
}

type View = Arc<RwLock<HashMap<AccountId, AccountAlerts>>>;

/// Follows the alerts topic from its beginning in a background thread.
pub struct AlertWatcher {
    view: View,
    applied: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AlertWatcher {
    /// Starts following `config.topic`. Fails if the topic cannot be found
    /// within 10 s.
    pub fn start(config: &AlertWatcherConfig) -> Result<Self, ClientError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", "tally-alert-watcher")
            .set("enable.auto.commit", "false")
            // Some brokers answer a fetch only when this wait runs out.
            .set("fetch.wait.max.ms", "5")
            // Catching up from the beginning, librdkafka's default (1000 ms
            // before the next fetch once the prefetch queue is full) left
            // every consumer here idle for 0.4-0.5 s of each second
            // (tally_service::kafka::consumer_config says more).
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .map_err(ClientError::Follow)?;
        let metadata =
            consumer.fetch_metadata(Some(&config.topic), Duration::from_secs(10)).map_err(ClientError::Follow)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
            .ok_or_else(|| ClientError::Topic(format!("alerts topic {} not found", config.topic)))?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&config.topic, partition, Offset::Beginning)
                .map_err(ClientError::Follow)?;
        }
        consumer.assign(&assignment).map_err(ClientError::Follow)?;
        let view: View = Arc::default();
        let applied = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (view, applied, stop) = (view.clone(), applied.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tally-alerts".into())
                .spawn(move || follow(consumer, view, applied, stop))
                .map_err(|e| ClientError::Topic(format!("cannot start the alerts thread: {e}")))?
        };
        Ok(AlertWatcher { view, applied, stop, thread: Some(thread) })
    }

    /// Whether the account may use AI features (not paused, as far as the
    /// alerts read so far say).
    pub fn ai_allowed(&self, account_id: &str) -> bool {
        self.account(account_id).is_none_or(|a| !a.paused)
    }

    /// The latest state the alerts give for an account.
    pub fn account(&self, account_id: &str) -> Option<AccountAlerts> {
        self.view.read().ok()?.get(account_id).cloned()
    }

    /// Accounts currently paused, sorted.
    pub fn paused_accounts(&self) -> Vec<String> {
        let mut paused: Vec<String> = self
            .view
            .read()
            .map(|v| v.iter().filter(|(_, a)| a.paused).map(|(id, _)| id.to_string()).collect())
            .unwrap_or_default();
        paused.sort();
        paused
    }

    /// Alerts applied so far (re-sent or stale ones not counted).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }
}

impl Drop for AlertWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn follow(consumer: BaseConsumer, view: View, applied: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let codec = Codec::global();
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::debug!(error = %e, "alerts consumer error (librdkafka retries)"),
            Some(Ok(message)) => match codec.decode::<Alert>(message.payload().unwrap_or_default()) {
                Ok(alert) => {
                    if let Ok(mut view) = view.write() {
                        if apply(&mut view, alert) {
                            applied.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %e,
                    "skipping an unreadable alert"
                ),
            },
        }
    }
}

/// Applies one alert; false if it is older than what the account has.
fn apply(view: &mut HashMap<AccountId, AccountAlerts>, alert: Alert) -> bool {
    let paused_by = |kind: AlertKind, before: bool| match kind {
        AlertKind::Paused => true,
        AlertKind::Resumed => false,
        AlertKind::LowBalance => before,
    };
    match view.get_mut(&alert.account_id) {
        Some(state) if alert.sequence < state.last.sequence => false,
        // One entry can raise LOW_BALANCE then PAUSED (same sequence): the
        // later one in the log wins, and a re-sent LOW_BALANCE after it
        // must not undo the pause.
        Some(state) if alert.sequence == state.last.sequence && alert.kind == AlertKind::LowBalance => false,
        Some(state) => {
            state.paused = paused_by(alert.kind, state.paused);
            state.last = alert;
            true
        }
        None => {
            let paused = paused_by(alert.kind, false);
            view.insert(alert.account_id.clone(), AccountAlerts { paused, last: alert });
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use super::*;

    fn alert(account: &str, kind: AlertKind, sequence: i64) -> Alert {
        Alert {
            alert_id: Uuid::from_u128(sequence as u128),
            account_id: AccountId::new_unchecked(account),
            kind,
            sequence: tally_events::Sequence(sequence),
            balance: tally_events::Credits::ZERO,
            threshold: tally_events::Credits::new(Decimal::TEN),
            occurred_at: DateTime::from_timestamp_millis(0).unwrap_or_default(),
            message: String::new(),
            tier: None,
        }
    }

    #[test]
    fn pause_and_resume_follow_sequences_and_ignore_resent_alerts() {
        let mut view = HashMap::new();
        assert!(apply(&mut view, alert("a", AlertKind::LowBalance, 3)));
        assert!(!view["a"].paused);
        assert!(apply(&mut view, alert("a", AlertKind::Paused, 3)));
        assert!(view["a"].paused);
        // A re-sent LOW_BALANCE of the same entry does not undo the pause.
        assert!(!apply(&mut view, alert("a", AlertKind::LowBalance, 3)));
        assert!(view["a"].paused);
        assert!(apply(&mut view, alert("a", AlertKind::Resumed, 9)));
        assert!(!view["a"].paused);
        // A re-sent older PAUSED (a metering restart) is stale.
        assert!(!apply(&mut view, alert("a", AlertKind::Paused, 3)));
        assert!(!view["a"].paused);
        assert!(apply(&mut view, alert("b", AlertKind::Paused, 1)));
        assert!(view["b"].paused);
    }
}
