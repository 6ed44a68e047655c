//! The notifier's loop: restore the delivery log, follow the alerts topic,
//! queue each new alert on its account, and deliver every account's queue
//! in order on a task of its own.
//!
//! Threads and tasks:
//! - the service thread polls the alerts consumer (all partitions,
//!   assigned by hand from the beginning: no consumer group, so nothing
//!   depends on a group coordinator or committed offsets), asks the
//!   [`Tracker`] whether each alert is new, and appends new ones to their
//!   account's queue; it stops reading while `max_backlog` alerts are
//!   unfinished, which bounds memory;
//! - an account with queued alerts has one task on the runtime that
//!   delivers them one at a time: so an account's alerts are delivered in
//!   order, and an account whose endpoint fails waits alone while every
//!   other account goes on;
//! - each endpoint has a semaphore of `max_in_flight_per_endpoint` POSTs:
//!   a slow endpoint holds only its own permits (and its own pooled
//!   connections), never another endpoint's.
//!
//! Per alert: write "attempting" to the delivery log and wait for the ack;
//! POST (signed afresh each try) until a 2xx, backing off with jitter; then
//! write "delivered" and wait for the ack before the account's next alert.
//! Spent its retry window: dead letter (acked), then "dead-lettered" in the
//! log. A delivery-log write that fails (after the producer's own retries,
//! 300 s) stops the service: going on could deliver an alert twice after
//! the next restart.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hyper::body::Bytes;
use rand::Rng;
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
    Message, Offset, TopicPartitionList,
};
use tally_events::{Alert, Codec};
use tally_service::{
    http::Health,
    kafka::{
        consumer_config, ensure_topics, ensure_topics_with_config, partition_count, read_partition, ProducerSettings,
        ReaderContext, Until,
    },
    lifecycle::Service,
};
use tokio::{
    runtime::Handle,
    sync::{watch, Semaphore},
};

use crate::{
    body::{truncate, AlertBody, DeadLetter, LAST_ERROR_MAX},
    client::{PostError, Poster},
    config::NotifyConfig,
    deliveries::{Accept, AccountRecord, Outcome, Tracker},
    faults,
    metrics::Metrics,
    routing::Endpoint,
    signing, NotifyError,
};

/// Header with the alert id: the receiver's idempotency key.
pub const ALERT_ID_HEADER: &str = "Tally-Alert-Id";
/// Header with the attempt number (1 for the first POST in this run).
pub const ATTEMPT_HEADER: &str = "Tally-Delivery-Attempt";
/// Header present (`true`) when an earlier POST of this alert may have
/// reached the receiver: a retry after a timeout or transport error, or the
/// first POST after a restart that found the alert in flight.
pub const POSSIBLE_DUPLICATE_HEADER: &str = "Tally-Possible-Duplicate";

struct Queue {
    alerts: VecDeque<(Alert, Instant)>,
    running: bool,
}

/// What the delivery tasks share.
struct Shared {
    config: NotifyConfig,
    metrics: Metrics,
    producer: FutureProducer,
    poster: Poster,
    tracker: Mutex<Tracker>,
    queues: Mutex<HashMap<String, Queue>>,
    permits: HashMap<String, Arc<Semaphore>>,
    shutdown: watch::Receiver<bool>,
    /// Alerts accepted and not finished.
    backlog: AtomicUsize,
    /// Account tasks running.
    running: AtomicUsize,
    /// Why the service must stop (a delivery-log write failed).
    fatal: Mutex<Option<String>>,
}

/// The notifier, started: topics checked, the delivery log restored.
pub struct Notifier {
    config: NotifyConfig,
    metrics: Metrics,
    runtime: Handle,
    consumer: BaseConsumer<ReaderContext>,
    producer: FutureProducer,
    tracker: Tracker,
}

impl Notifier {
    /// Waits (up to 60 s) for the alerts topic, creates the delivery-log
    /// (compacted) and dead-letter topics, and reads the delivery log to
    /// its end: nothing is delivered before every finished alert is known.
    pub fn start(config: NotifyConfig, metrics: Metrics, runtime: Handle) -> Result<Self, NotifyError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let partitions = loop {
            match partition_count(&config.brokers, &config.alerts_topic, Duration::from_secs(10)) {
                Ok(Some(n)) => break n,
                Ok(None) if Instant::now() < deadline => {
                    tracing::info!(topic = %config.alerts_topic, "alerts topic does not exist yet; waiting for metering");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Ok(None) => return Err(NotifyError::NoAlerts(config.alerts_topic.clone())),
                Err(source) => {
                    return Err(NotifyError::Kafka { what: "reading the alerts topic's partitions", source })
                }
            }
        };
        runtime
            .block_on(async {
                ensure_topics_with_config(
                    &config.brokers,
                    &[(config.deliveries_topic.as_str(), partitions)],
                    &[("cleanup.policy", "compact")],
                )
                .await?;
                ensure_topics(&config.brokers, &[(config.dead_letter_topic.as_str(), partitions)]).await
            })
            .map_err(NotifyError::Topics)?;
        let tracker = restore(&config)?;
        let consumer: BaseConsumer<ReaderContext> = consumer_config(&config.brokers, "tally-notify")
            .create_with_context(ReaderContext)
            .map_err(|source| NotifyError::Kafka { what: "creating the alerts consumer", source })?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(&config.alerts_topic, partition, Offset::Beginning)
                .map_err(|source| NotifyError::Kafka { what: "assigning the alerts partitions", source })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| NotifyError::Kafka { what: "assigning the alerts partitions", source })?;
        let producer: FutureProducer = ProducerSettings::new(&config.brokers)
            .client_config()
            .create()
            .map_err(|source| NotifyError::Kafka { what: "creating the producer", source })?;
        tracing::info!(
            partitions,
            accounts = tracker.len(),
            endpoints = ?config.routes.endpoints().iter().map(|e| (&e.name, &e.url)).collect::<Vec<_>>(),
            "delivery log restored; following the alerts topic from its start"
        );
        Ok(Notifier { config, metrics, runtime, consumer, producer, tracker })
    }
}

/// Reads every delivery-log partition to its end into a tracker.
fn restore(config: &NotifyConfig) -> Result<Tracker, NotifyError> {
    let mut tracker = Tracker::new();
    let partitions = partition_count(&config.brokers, &config.deliveries_topic, Duration::from_secs(10))
        .map_err(|source| NotifyError::Kafka { what: "reading the delivery log's partitions", source })?
        .unwrap_or(0);
    let mut records = 0u64;
    for partition in 0..partitions {
        read_partition(
            &config.brokers,
            &config.deliveries_topic,
            partition,
            0,
            Until::End,
            Duration::from_secs(120),
            |message| {
                let Some(payload) = message.payload() else { return Ok(()) }; // a tombstone
                let record: AccountRecord = serde_json::from_slice(payload)
                    .map_err(|e| format!("record at {partition}/{} is not a delivery record: {e}", message.offset()))?;
                tracker.restore(record);
                records += 1;
                Ok::<(), String>(())
            },
        )
        .map_err(|e| NotifyError::DeliveryLog {
            what: "reading",
            retryable: e.is_retryable(),
            detail: e.to_string(),
        })?;
    }
    tracing::info!(records, accounts = tracker.len(), "read the delivery log");
    Ok(tracker)
}

impl Service for Notifier {
    type Error = NotifyError;

    fn run(self, shutdown: watch::Receiver<bool>, health: Health) -> Result<(), NotifyError> {
        let Notifier { config, metrics, runtime, consumer, producer, tracker } = self;
        let permits = config
            .routes
            .endpoints()
            .iter()
            .map(|e| (e.name.clone(), Arc::new(Semaphore::new(config.max_in_flight_per_endpoint))))
            .collect();
        let shared = Arc::new(Shared {
            poster: Poster::new(config.request_timeout),
            config,
            metrics,
            producer,
            tracker: Mutex::new(tracker),
            queues: Mutex::new(HashMap::new()),
            permits,
            shutdown: shutdown.clone(),
            backlog: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            fatal: Mutex::new(None),
        });
        health.set_ready(true);
        let codec = Codec::global();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            if let Some(problem) = shared.fatal.lock().ok().and_then(|f| f.clone()) {
                health.set_problem(Some(problem.clone()));
                break Err(NotifyError::DeliveryLog { what: "writing", retryable: true, detail: problem });
            }
            if shared.backlog.load(Ordering::SeqCst) >= shared.config.max_backlog {
                // Bounded memory: read on once deliveries catch up.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match consumer.poll(Duration::from_millis(50)) {
                None => {}
                Some(Err(e)) => tracing::debug!(error = %e, "alerts consumer error (librdkafka retries)"),
                Some(Ok(message)) => match codec.decode::<Alert>(message.payload().unwrap_or_default()) {
                    Ok(alert) => accept(&shared, &runtime, alert),
                    Err(e) => {
                        shared.metrics.unreadable.inc();
                        tracing::warn!(
                            partition = message.partition(),
                            offset = message.offset(),
                            error = %e,
                            "skipping an unreadable alert"
                        );
                    }
                },
            }
        };
        // Drain: tasks finish the POST in hand (and its log record) and
        // stop; what is left is re-read at the next start.
        let deadline = Instant::now() + shared.config.drain_timeout.saturating_sub(Duration::from_secs(1));
        while shared.running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = rdkafka::producer::Producer::flush(&shared.producer, Duration::from_secs(5));
        health.set_ready(false);
        result
    }
}

/// One alert read: skipped (a duplicate) or queued on its account.
fn accept(shared: &Arc<Shared>, runtime: &Handle, alert: Alert) {
    let verdict = match shared.tracker.lock() {
        Ok(mut tracker) => tracker.accept(&alert),
        Err(_) => return,
    };
    if verdict == Accept::Duplicate {
        shared.metrics.deliveries.with_label_values(&["skipped_duplicate"]).inc();
        tracing::debug!(alert = %alert.alert_id, account = %alert.account_id, "skipping a finished or queued alert");
        return;
    }
    shared.backlog.fetch_add(1, Ordering::SeqCst);
    shared.metrics.backlog.inc();
    let account = alert.account_id.to_string();
    let Ok(mut queues) = shared.queues.lock() else { return };
    let queue = queues.entry(account.clone()).or_insert_with(|| Queue { alerts: VecDeque::new(), running: false });
    queue.alerts.push_back((alert, Instant::now()));
    if !queue.running {
        queue.running = true;
        shared.running.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        runtime.spawn(async move { deliver_account(shared, account).await });
    }
}

/// Delivers one account's queue in order, until it is empty (or the
/// service stops, or fails).
async fn deliver_account(shared: Arc<Shared>, account: String) {
    loop {
        let next = {
            let Ok(mut queues) = shared.queues.lock() else { break };
            let stopping = *shared.shutdown.borrow() || shared.fatal.lock().map(|f| f.is_some()).unwrap_or(true);
            let next = if stopping { None } else { queues.get_mut(&account).and_then(|q| q.alerts.pop_front()) };
            if next.is_none() {
                // Under the lock: the reader sees `running == false` and
                // starts a new task for anything it queues after this.
                if let Some(queue) = queues.get_mut(&account) {
                    queue.running = false;
                    if queue.alerts.is_empty() {
                        queues.remove(&account);
                    }
                }
            }
            next
        };
        let Some((alert, read_at)) = next else { break };
        match deliver(&shared, &alert, read_at).await {
            Ok(true) => {
                shared.backlog.fetch_sub(1, Ordering::SeqCst);
                shared.metrics.backlog.dec();
            }
            Ok(false) => {} // stopping: the alert stays unfinished in the log
            Err(problem) => {
                tracing::error!(account, alert = %alert.alert_id, problem, "the delivery log cannot be written; stopping");
                if let Ok(mut fatal) = shared.fatal.lock() {
                    fatal.get_or_insert(problem);
                }
            }
        }
    }
    shared.running.fetch_sub(1, Ordering::SeqCst);
}

/// Delivers (or dead-letters) one alert. Ok(true): finished and logged;
/// Ok(false): the service is stopping and the alert is left unfinished;
/// Err: the delivery log or the dead-letter topic could not be written.
async fn deliver(shared: &Shared, alert: &Alert, read_at: Instant) -> Result<bool, String> {
    let endpoint = shared.config.routes.route(alert.account_id.as_str(), alert.tier).clone();
    let body = AlertBody::of(alert);
    let bytes = Bytes::from(body.to_bytes());
    let (record, possibly_delivered) = match shared.tracker.lock() {
        Ok(mut tracker) => tracker.start(alert),
        Err(_) => return Err("the tracker's lock is poisoned".into()),
    };
    write_log(shared, &record).await?;
    faults::point("notify_after_attempting");
    let permits = shared.permits.get(&endpoint.name).cloned().unwrap_or_else(|| Arc::new(Semaphore::new(1)));
    let first_attempt_at = wall_clock();
    let started = Instant::now();
    let mut failures = 0u32;
    let mut maybe_received = possibly_delivered;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let Ok(permit) = permits.acquire().await else { return Ok(false) };
        let headers = headers(&endpoint, alert, &bytes, failures + 1, maybe_received);
        let result = shared.poster.post(&endpoint.url, &headers, bytes.clone()).await;
        drop(permit);
        let error = match result {
            Ok(status) => {
                faults::point("notify_after_post");
                shared.metrics.delivery_seconds.observe(read_at.elapsed().as_secs_f64());
                let record = match shared.tracker.lock() {
                    Ok(mut tracker) => tracker.finish(alert, Outcome::Delivered),
                    Err(_) => return Err("the tracker's lock is poisoned".into()),
                };
                write_log(shared, &record).await?;
                shared.metrics.deliveries.with_label_values(&["delivered"]).inc();
                tracing::info!(
                    alert = %alert.alert_id,
                    account = %alert.account_id,
                    kind = body.kind,
                    endpoint = endpoint.name,
                    status,
                    attempts = failures + 1,
                    "alert delivered"
                );
                return Ok(true);
            }
            Err(error) => error,
        };
        failures += 1;
        // A timeout or a broken connection may follow a POST the receiver
        // got: the next one says it may be a duplicate.
        maybe_received |= matches!(error, PostError::Timeout(_) | PostError::Transport(_));
        shared.metrics.endpoint_failures.with_label_values(&[&endpoint.name]).inc();
        let unit: f64 = rand::rng().random();
        match endpoint.backoff.next(failures, started.elapsed(), unit) {
            Some(delay) => {
                shared.metrics.retries.inc();
                tracing::warn!(
                    alert = %alert.alert_id,
                    account = %alert.account_id,
                    endpoint = endpoint.name,
                    attempts = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "delivery failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
                }
            }
            None => {
                let letter = DeadLetter {
                    alert: body.clone(),
                    endpoint: endpoint.name.clone(),
                    url: endpoint.url.clone(),
                    attempts: failures,
                    first_attempt_at: first_attempt_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    last_attempt_at: wall_clock().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    last_error: truncate(&error.to_string(), LAST_ERROR_MAX),
                };
                let payload = serde_json::to_vec(&letter).map_err(|e| e.to_string())?;
                let key = alert.account_id.as_str();
                shared
                    .producer
                    .send(FutureRecord::to(&shared.config.dead_letter_topic).key(key).payload(&payload), Timeout::Never)
                    .await
                    .map_err(|(e, _)| format!("writing the dead letter of {}: {e}", alert.alert_id))?;
                let record = match shared.tracker.lock() {
                    Ok(mut tracker) => tracker.finish(alert, Outcome::DeadLettered),
                    Err(_) => return Err("the tracker's lock is poisoned".into()),
                };
                write_log(shared, &record).await?;
                shared.metrics.deliveries.with_label_values(&["dead_lettered"]).inc();
                tracing::error!(
                    alert = %alert.alert_id,
                    account = %alert.account_id,
                    endpoint = endpoint.name,
                    attempts = failures,
                    %error,
                    "alert dead-lettered after its retry window"
                );
                return Ok(true);
            }
        }
    }
}

/// The headers of one POST, signed now.
fn headers(
    endpoint: &Endpoint,
    alert: &Alert,
    body: &[u8],
    attempt: u32,
    maybe_received: bool,
) -> Vec<(&'static str, String)> {
    let now = wall_clock().timestamp();
    let mut headers = vec![
        (signing::HEADER, signing::sign(&endpoint.secret, now, body)),
        (ALERT_ID_HEADER, alert.alert_id.to_string()),
        (ATTEMPT_HEADER, attempt.to_string()),
        ("user-agent", concat!("tally-notify/", env!("CARGO_PKG_VERSION")).to_string()),
    ];
    if maybe_received {
        headers.push((POSSIBLE_DUPLICATE_HEADER, "true".to_string()));
    }
    headers
}

/// The wall clock: a signature's `t` must be the receiver's idea of now
/// (it checks the tolerance against its own clock), and a dead letter's
/// attempt times are when the POSTs happened. Never used for ledger time.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Writes an account's delivery record and waits for the broker's ack.
async fn write_log(shared: &Shared, record: &AccountRecord) -> Result<(), String> {
    let payload = record.to_bytes();
    shared
        .producer
        .send(
            FutureRecord::to(&shared.config.deliveries_topic).key(record.account.as_str()).payload(&payload),
            Timeout::Never,
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| format!("writing the delivery record of {}: {e}", record.account))
}
