//! The worker's one producer, with delivery reports taken by callback.
//!
//! Every record a worker writes (ledger entries and markers, dead letters,
//! alerts, claims, snapshot chunks) goes through one idempotent producer,
//! so one producer session orders them. A record sent gets a [`Ticket`] (a
//! number, carried to librdkafka's delivery report as its opaque value:
//! no allocation, no future per record); the producer's polling thread
//! files each report under its ticket, and [`Outbox::take`] takes the
//! reports of the tickets it is given, in the order given: waiting for
//! them, or (to check on batches in flight without stopping) only those
//! already in.
//!
//! Why not `FutureProducer`: a future per record (a boxed sender and a
//! channel each) awaited one by one cost the pipeline bench's bare loop
//! most of its rate (about 140k records/s against 206k-263k counted by
//! callback on the same broker).
//!
//! Invariants:
//! - librdkafka reports every record exactly once (delivered or failed,
//!   within `message.timeout.ms`), so a wait ends; a report missing well
//!   past that is an error, never a hang;
//! - a report is removed by the wait that takes it, so the table holds
//!   only records in flight or not yet waited for;
//! - a failed delivery is an error of the wait that meets it (fatal for
//!   the service: the restart rebuilds from the ledger).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    error::KafkaError,
    message::DeliveryResult,
    producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer},
    types::RDKafkaErrorCode,
    ClientConfig, ClientContext, Message,
};

use rustc_hash::FxHashMap;

use crate::error::MeteringError;

/// A record on its way (see the module docs).
pub(crate) type Ticket = usize;

/// Where a delivered record landed, or why it failed.
type Report = Result<(i32, i64), KafkaError>;

#[derive(Default)]
struct Table {
    /// By ticket. Fx, not SipHash: tickets are our own counter, and this
    /// map takes an insert and a remove per record written.
    reports: FxHashMap<Ticket, Report>,
    /// The ticket each waiter waits for: only its report wakes it.
    awaited: Vec<Ticket>,
}

/// The delivery reports, filed by the producer's polling thread.
#[derive(Default)]
pub(crate) struct Reports {
    table: Mutex<Table>,
    arrived: Condvar,
}

impl Reports {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half
        // changed (each change is one insert or remove).
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producer's context: files reports.
pub(crate) struct Filing(Arc<Reports>);

impl ClientContext for Filing {}

impl ProducerContext for Filing {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Ticket) {
        let report = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        let mut table = self.0.lock();
        table.reports.insert(ticket, report);
        if table.awaited.contains(&ticket) {
            self.0.arrived.notify_all();
        }
    }
}

/// One worker's producer (cheap to clone: shared).
#[derive(Clone)]
pub(crate) struct Outbox {
    producer: Arc<ThreadedProducer<Filing>>,
    reports: Arc<Reports>,
    next: Arc<AtomicUsize>,
    /// How long past a record's delivery timeout its report may be missing
    /// before a wait gives up on it.
    patience: Duration,
}

impl Outbox {
    /// Creates the producer from `config` (which must set
    /// `message.timeout.ms` to `delivery_timeout`).
    pub(crate) fn create(config: &ClientConfig, delivery_timeout: Duration) -> Result<Outbox, KafkaError> {
        let reports = Arc::new(Reports::default());
        let producer = config.create_with_context(Filing(reports.clone()))?;
        Ok(Outbox {
            producer: Arc::new(producer),
            reports,
            next: Arc::new(AtomicUsize::new(0)),
            patience: delivery_timeout + Duration::from_secs(30),
        })
    }

    /// Hands a record to the producer, waiting while its queue is full.
    pub(crate) fn send(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
    ) -> Result<Ticket, MeteringError> {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let mut record = BaseRecord::with_opaque_to(topic, ticket).partition(partition).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(ticket),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The polling thread drains the queue as reports come.
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((source, _)) => return Err(MeteringError::Delivery { topic: topic.to_string(), source }),
            }
        }
    }

    /// Waits for each ticket's report, in order; returns where each record
    /// landed (partition, offset). The first failure is the error.
    pub(crate) fn wait(&self, topic: &str, tickets: &[Ticket]) -> Result<Vec<(i32, i64)>, MeteringError> {
        let mut landed = Vec::with_capacity(tickets.len());
        self.take(topic, tickets, true, &mut landed)?;
        Ok(landed)
    }

    /// Takes the reports of `tickets` in order, appending where each record
    /// landed to `landed`: all of them when `block` (waiting up to the
    /// patience for each), else the longest prefix already in. Returns how
    /// many were taken; the first failure is the error.
    pub(crate) fn take(
        &self,
        topic: &str,
        tickets: &[Ticket],
        block: bool,
        landed: &mut Vec<(i32, i64)>,
    ) -> Result<usize, MeteringError> {
        let mut table = self.reports.lock();
        for (taken, &ticket) in tickets.iter().enumerate() {
            // Read the clock only for a report not in yet: this runs once
            // per record written.
            let mut deadline = None;
            let report = loop {
                if let Some(report) = table.reports.remove(&ticket) {
                    break report;
                }
                if !block {
                    return Ok(taken);
                }
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.patience);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(MeteringError::Delivery { topic: topic.to_string(), source: KafkaError::Canceled });
                }
                table.awaited.push(ticket);
                table = self.reports.arrived.wait_timeout(table, left).unwrap_or_else(|p| p.into_inner()).0;
                if let Some(at) = table.awaited.iter().position(|&t| t == ticket) {
                    table.awaited.swap_remove(at);
                }
            };
            match report {
                Ok(position) => landed.push(position),
                Err(source) => return Err(MeteringError::Delivery { topic: topic.to_string(), source }),
            }
        }
        Ok(tickets.len())
    }

    /// Sends one record and waits for it.
    pub(crate) fn send_and_wait(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(i32, i64), MeteringError> {
        let ticket = self.send(topic, partition, key, payload)?;
        let landed = self.wait(topic, &[ticket])?;
        landed
            .first()
            .copied()
            .ok_or_else(|| MeteringError::Delivery { topic: topic.to_string(), source: KafkaError::Canceled })
    }

    /// Waits until every record sent is delivered or failed.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
