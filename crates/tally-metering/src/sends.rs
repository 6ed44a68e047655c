//! The outputs of the batches in flight, and the rule that keeps a crash
//! from losing a dead letter or an alert: **a ledger record is never sent
//! before every dead letter and alert that comes before it (in input
//! order, across batches) is acknowledged.**
//!
//! Why: the ledger is the resume point. A ledger record (an entry, or a
//! PROGRESS marker) covering an input makes a restart resume after that
//! input; if the input's dead letter or alerts were still in flight when
//! the process died, they would never be written. Kafka orders nothing
//! across topics, so only an acknowledgement tells that a side record is
//! in; a ledger record that comes after an unacknowledged one is *held*
//! (its bytes kept here) and sent once the side records before it are
//! acknowledged. Ledger records are sent in input order: once one is held,
//! every later one is held behind it, so the ledger's order per partition
//! is the order inputs were applied in, whatever the batches.
//!
//! Batches are pipelined (see `service`): batch *n+1* is applied and sent
//! while batch *n*'s acknowledgements are on their way. Each batch keeps its
//! ledger tickets; [`Sends::complete`] returns the oldest batch once every
//! side record before its end is acknowledged, its held records are sent
//! and every one of its ledger records is acknowledged, with their offsets
//! in the order sent (for the contiguity check). Batches complete in the
//! order they were applied. [`Sends::pump`] releases held records as
//! acknowledgements arrive, without waiting.
//!
//! Invariants (tested below with a recording outlet):
//! - a ledger record is sent only when every side record sent before it
//!   was applied is acknowledged;
//! - ledger records are sent in the order [`Sends::ledger`] was called;
//! - a batch completes only after all earlier batches, and only with all
//!   of its ledger records acknowledged.
//!
//! The sending itself is behind [`Outlet`] (Kafka in the service, a
//! recording fake in the tests below), so the rule is tested here, beside
//! the code.

use std::{collections::VecDeque, time::Instant};

use tally_events::{codec::Record, Codec};

use crate::{
    error::MeteringError,
    outbox::{Outbox, Ticket},
};

/// Where records go.
pub(crate) trait Outlet {
    /// A record on its way.
    type Ticket: Copy;
    /// Hands a record over.
    fn send(&mut self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<Self::Ticket, MeteringError>;
    /// Takes the acknowledgements of `tickets` in order, appending where
    /// each landed (partition, offset) to `landed`: all of them when
    /// `block`, else the longest prefix already in. Returns how many were
    /// taken. Any failure is an error.
    fn take(
        &mut self,
        topic: &str,
        tickets: &[Self::Ticket],
        block: bool,
        landed: &mut Vec<(i32, i64)>,
    ) -> Result<usize, MeteringError>;
}

/// The Kafka outlet: the worker's idempotent producer.
impl Outlet for Outbox {
    type Ticket = Ticket;

    fn send(&mut self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<Ticket, MeteringError> {
        Outbox::send(self, topic, partition, key, payload)
    }

    fn take(
        &mut self,
        topic: &str,
        tickets: &[Ticket],
        block: bool,
        landed: &mut Vec<(i32, i64)>,
    ) -> Result<usize, MeteringError> {
        Outbox::take(self, topic, tickets, block, landed)
    }
}

/// A ledger record waiting for side records before it.
struct Held {
    /// The batch it belongs to.
    batch: u64,
    partition: i32,
    /// Key, then payload.
    bytes: Vec<u8>,
    key_len: usize,
    /// Side records sent before it: all of them must be acknowledged.
    after_side: u64,
}

/// A batch whose outputs are not all acknowledged.
struct InFlight<T> {
    id: u64,
    /// Its ledger records sent so far, in order.
    tickets: Vec<T>,
    /// Where the first `landed.len()` of them landed.
    landed: Vec<(i32, i64)>,
    /// Its ledger records still held.
    held: usize,
    /// Set when the batch was applied.
    closed: Option<Closed>,
    /// Something of it was sent (for the `before_produce` fault point).
    sent: bool,
    /// Its completion was tried (for the `before_ack` fault point).
    tried: bool,
}

/// What a batch was, once applied.
struct Closed {
    /// Side records sent up to its end.
    side_upto: u64,
    offsets: Vec<(i32, i64)>,
    inputs: usize,
    started: Instant,
}

/// A batch whose outputs are all acknowledged.
#[derive(Debug)]
pub(crate) struct Done {
    /// Where each of its ledger records landed, in the order sent.
    pub(crate) landed: Vec<(i32, i64)>,
    /// Per partition, the input offset it read up to (exclusive), as given
    /// to [`Sends::close`].
    pub(crate) offsets: Vec<(i32, i64)>,
    /// How many inputs it had.
    pub(crate) inputs: usize,
    /// When its first input was polled.
    pub(crate) started: Instant,
}

/// The batches in flight (see the module docs). Kept for the worker's
/// life: its buffers are reused, so a batch costs no allocation per record.
pub(crate) struct Sends<O: Outlet> {
    outlet: O,
    ledger_topic: String,
    /// Side records sent and not yet known acknowledged, in order.
    side: VecDeque<(String, O::Ticket)>,
    /// Side records sent, and acknowledged (a prefix of those sent).
    side_sent: u64,
    side_acked: u64,
    held: VecDeque<Held>,
    /// Buffers of held records already sent, for reuse.
    spare: Vec<Vec<u8>>,
    /// Oldest first; the last one is open while a batch is being applied.
    batches: VecDeque<InFlight<O::Ticket>>,
    open: bool,
    next_batch: u64,
    /// Encoding buffer of a record sent at once (the outlet copies it).
    scratch: Vec<u8>,
    /// Ledger records held since [`Sends::take_held`] last counted them.
    held_count: u64,
}

impl<O: Outlet> Sends<O> {
    pub(crate) fn new(outlet: O, ledger_topic: &str) -> Self {
        Sends {
            outlet,
            ledger_topic: ledger_topic.to_string(),
            side: VecDeque::new(),
            side_sent: 0,
            side_acked: 0,
            held: VecDeque::new(),
            spare: Vec::new(),
            batches: VecDeque::new(),
            open: false,
            next_batch: 0,
            scratch: Vec::with_capacity(512),
            held_count: 0,
        }
    }

    /// Opens a batch: the records sent until [`Sends::close`] are its.
    pub(crate) fn begin(&mut self) {
        debug_assert!(!self.open, "a batch is already open");
        let capacity = self.batches.back().map_or(0, |b| b.tickets.capacity());
        self.batches.push_back(InFlight {
            id: self.next_batch,
            tickets: Vec::with_capacity(capacity),
            landed: Vec::new(),
            held: 0,
            closed: None,
            sent: false,
            tried: false,
        });
        self.next_batch += 1;
        self.open = true;
    }

    /// Closes the open batch: `offsets` is what it read up to per
    /// partition, of `inputs` inputs, the first polled at `started`.
    pub(crate) fn close(&mut self, offsets: Vec<(i32, i64)>, inputs: usize, started: Instant) {
        if let Some(batch) = self.batches.back_mut().filter(|_| self.open) {
            batch.closed = Some(Closed { side_upto: self.side_sent, offsets, inputs, started });
        }
        self.open = false;
    }

    /// Closed batches not yet complete.
    pub(crate) fn in_flight(&self) -> usize {
        self.batches.len() - usize::from(self.open)
    }

    /// Anything held, unacknowledged or in flight. A held record or an
    /// unacknowledged side record always belongs to a batch not yet
    /// complete, so the batches tell.
    pub(crate) fn busy(&self) -> bool {
        !self.batches.is_empty()
    }

    fn open_batch(&mut self) -> &mut InFlight<O::Ticket> {
        let batch = self.batches.back_mut().filter(|_| self.open).expect("a record sent outside a batch");
        if !batch.sent {
            batch.sent = true;
            crate::faults::point("before_produce");
        }
        batch
    }

    /// Encodes and sends a dead letter or alert; later ledger records are
    /// held until it is acknowledged.
    pub(crate) fn side<T: Record>(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        record: &T,
    ) -> Result<(), MeteringError> {
        self.scratch.clear();
        append(&mut self.scratch, partition, record)?;
        self.open_batch();
        let ticket = self.outlet.send(topic, partition, key, &self.scratch)?;
        self.side.push_back((topic.to_string(), ticket));
        self.side_sent += 1;
        Ok(())
    }

    /// Encodes a ledger record and sends it, or holds it behind
    /// unacknowledged side records or earlier held ones.
    pub(crate) fn ledger<T: Record>(&mut self, partition: i32, key: &[u8], record: &T) -> Result<(), MeteringError> {
        if self.held.is_empty() && self.side_acked == self.side_sent {
            self.scratch.clear();
            append(&mut self.scratch, partition, record)?;
            self.open_batch();
            let ticket = self.outlet.send(&self.ledger_topic, partition, key, &self.scratch)?;
            self.open_batch().tickets.push(ticket);
            return Ok(());
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(key);
        append(&mut bytes, partition, record)?;
        let batch = self.open_batch();
        batch.held += 1;
        let batch = batch.id;
        self.held_count += 1;
        self.held.push_back(Held { batch, partition, bytes, key_len: key.len(), after_side: self.side_sent });
        Ok(())
    }

    /// How many ledger records were held (not sent at once) since the last
    /// call: what the hold rule costs, for the metrics.
    pub(crate) fn take_held(&mut self) -> u64 {
        std::mem::take(&mut self.held_count)
    }

    /// Takes the side acknowledgements already in and sends the held
    /// records they release. Never waits.
    pub(crate) fn pump(&mut self) -> Result<(), MeteringError> {
        self.take_side(u64::MAX, false)?;
        self.release()
    }

    /// Takes side acknowledgements in order until `upto` are in (waiting
    /// when `block`, else stopping at the first not in).
    fn take_side(&mut self, upto: u64, block: bool) -> Result<(), MeteringError> {
        let mut scratch = Vec::new();
        while self.side_acked < upto {
            let Some((topic, ticket)) = self.side.front() else { break };
            if self.outlet.take(topic, &[*ticket], block, &mut scratch)? == 0 {
                break;
            }
            self.side.pop_front();
            self.side_acked += 1;
        }
        Ok(())
    }

    /// Sends the held records whose side records are all acknowledged, in
    /// order, stopping at the first that must wait.
    fn release(&mut self) -> Result<(), MeteringError> {
        while self.held.front().is_some_and(|h| h.after_side <= self.side_acked) {
            let Some(held) = self.held.pop_front() else { break };
            let (key, payload) = held.bytes.split_at(held.key_len);
            let ticket = self.outlet.send(&self.ledger_topic, held.partition, key, payload)?;
            let first = self.batches.front().map_or(0, |b| b.id);
            // Batches complete only with nothing held, so its batch is here.
            let batch = &mut self.batches[(held.batch - first) as usize];
            batch.tickets.push(ticket);
            batch.held -= 1;
            self.spare.push(held.bytes);
        }
        Ok(())
    }

    /// Completes the oldest closed batch: with `block`, waits for it;
    /// without, returns it only if it is already complete. `None`: no
    /// closed batch, or (not blocking) not complete yet.
    pub(crate) fn complete(&mut self, block: bool) -> Result<Option<Done>, MeteringError> {
        let Some(front) = self.batches.front_mut() else { return Ok(None) };
        let Some(side_upto) = front.closed.as_ref().map(|c| c.side_upto) else { return Ok(None) };
        if !front.tried {
            front.tried = true;
            crate::faults::point("before_ack");
        }
        self.take_side(side_upto, block)?;
        self.release()?;
        let front = self.batches.front_mut().expect("the batch is still here");
        if front.held > 0 {
            // Only when not blocking: blocking took every side record
            // before the batch's end, which releases all it holds.
            debug_assert!(!block, "a blocking completion left records held");
            return Ok(None);
        }
        let from = front.landed.len();
        let taken = self.outlet.take(&self.ledger_topic, &front.tickets[from..], block, &mut front.landed)?;
        if from + taken < front.tickets.len() {
            return Ok(None);
        }
        let done = self.batches.pop_front().expect("the batch is still here");
        let Closed { offsets, inputs, started, .. } = done.closed.expect("checked closed above");
        Ok(Some(Done { landed: done.landed, offsets, inputs, started }))
    }

    /// Drops the held records of `partitions` (given up: their new owner
    /// re-applies those inputs from what the ledger holds).
    pub(crate) fn forget(&mut self, partitions: &[i32]) {
        let first = self.batches.front().map_or(0, |b| b.id);
        let batches = &mut self.batches;
        self.held.retain(|held| {
            let keep = !partitions.contains(&held.partition);
            if !keep {
                batches[(held.batch - first) as usize].held -= 1;
            }
            keep
        });
    }
}

/// Encodes `record` onto the end of `buffer`.
fn append<T: Record>(buffer: &mut Vec<u8>, partition: i32, record: &T) -> Result<(), MeteringError> {
    Codec::global().encode_into(record, buffer).map_err(|source| MeteringError::Encode { partition, source })
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use tally_events::{DeadLetter, Epoch, LedgerMarker, MarkerKind, SourceOffset};
    use uuid::Uuid;

    use super::*;

    /// Records what was sent and acknowledged, in order. A ticket is the
    /// record's number; a blocking take acknowledges at once, a
    /// non-blocking one only records the test has let arrive.
    #[derive(Default)]
    struct Recording {
        events: Vec<String>,
        /// Name and partition of each record sent, by ticket.
        sent: Vec<(String, i32)>,
        arrived: Vec<usize>,
    }

    /// The outlet: shared, so the test can let acknowledgements arrive
    /// while `Sends` holds it.
    #[derive(Clone, Default)]
    struct Fake(Rc<RefCell<Recording>>);

    impl Outlet for Fake {
        type Ticket = usize;

        fn send(&mut self, topic: &str, partition: i32, key: &[u8], _: &[u8]) -> Result<usize, MeteringError> {
            let mut recording = self.0.borrow_mut();
            let name = format!("{topic}:{}", String::from_utf8_lossy(key));
            recording.events.push(format!("send {name}"));
            recording.sent.push((name, partition));
            Ok(recording.sent.len() - 1)
        }

        fn take(
            &mut self,
            _: &str,
            tickets: &[usize],
            block: bool,
            landed: &mut Vec<(i32, i64)>,
        ) -> Result<usize, MeteringError> {
            let mut recording = self.0.borrow_mut();
            for (taken, &ticket) in tickets.iter().enumerate() {
                if !block && !recording.arrived.contains(&ticket) {
                    return Ok(taken);
                }
                let (name, partition) = recording.sent[ticket].clone();
                recording.events.push(format!("ack {name}"));
                landed.push((partition, ticket as i64));
            }
            Ok(tickets.len())
        }
    }

    impl Fake {
        /// Lets the acknowledgement of the record named `name` arrive.
        fn arrive(&self, name: &str) {
            let mut recording = self.0.borrow_mut();
            let ticket =
                recording.sent.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} not sent"));
            recording.arrived.push(ticket);
        }

        fn events(&self) -> Vec<String> {
            self.0.borrow().events.clone()
        }

        /// The names of the records `done` landed, in order.
        fn landed(&self, done: &Done) -> Vec<String> {
            let recording = self.0.borrow();
            done.landed.iter().map(|(_, ticket)| recording.sent[*ticket as usize].0.clone()).collect()
        }
    }

    fn marker(n: i64) -> LedgerMarker {
        LedgerMarker {
            kind: MarkerKind::Progress,
            claim_id: Uuid::nil(),
            epoch: Epoch(1),
            instance: "h".into(),
            input_topic: "in".into(),
            input_partition: 0,
            next_input_offset: n,
        }
    }

    fn letter() -> DeadLetter {
        let source = SourceOffset { topic: "in".into(), partition: 0, offset: 1 };
        DeadLetter::of_input(
            tally_events::Reason::Malformed,
            "bad".into(),
            source,
            Some(b"k"),
            Some(b"x"),
            String::new(),
        )
    }

    fn position(events: &[String], event: &str) -> usize {
        events.iter().position(|e| e == event).unwrap_or_else(|| panic!("no {event} in {events:?}"))
    }

    fn close(sends: &mut Sends<Fake>) {
        sends.close(Vec::new(), 0, Instant::now());
    }

    #[test]
    fn no_ledger_record_is_sent_before_an_earlier_side_record_is_acknowledged() {
        let fake = Fake::default();
        let mut sends = Sends::new(fake.clone(), "ledger");
        sends.begin();
        sends.ledger(0, b"e1", &marker(1)).expect("send");
        sends.side("dead", 0, b"d1", &letter()).expect("send");
        sends.ledger(0, b"e2", &marker(2)).expect("hold");
        sends.side("alerts", 0, b"a1", &letter()).expect("send");
        sends.ledger(0, b"e3", &marker(3)).expect("hold");
        close(&mut sends);
        assert_eq!(sends.take_held(), 2, "e2 and e3 were held, e1 was not");
        assert_eq!(sends.take_held(), 0, "counted once");
        let done = sends.complete(true).expect("complete").expect("a closed batch");
        let events = fake.events();
        // e1 went out at once; e2 and e3 only after d1 and a1 were acknowledged.
        assert!(position(&events, "send ledger:e1") < position(&events, "send dead:d1"));
        for held in ["send ledger:e2", "send ledger:e3"] {
            assert!(position(&events, "ack dead:d1") < position(&events, held), "{events:?}");
            assert!(position(&events, "ack alerts:a1") < position(&events, held), "{events:?}");
        }
        assert_eq!(fake.landed(&done), ["ledger:e1", "ledger:e2", "ledger:e3"], "in the order sent");
        assert!(!sends.busy());
    }

    #[test]
    fn held_records_keep_input_order_across_batches_and_go_out_as_acknowledgements_arrive() {
        let fake = Fake::default();
        let mut sends = Sends::new(fake.clone(), "ledger");
        sends.begin();
        sends.side("dead", 0, b"d1", &letter()).expect("send");
        sends.ledger(0, b"e1", &marker(1)).expect("hold");
        close(&mut sends);
        // Batch 2 is applied while batch 1 waits: e2 has no side record
        // before it in its own batch, but e1 is still held, so e2 waits
        // behind it or the ledger would be out of input order.
        sends.begin();
        sends.ledger(1, b"e2", &marker(2)).expect("hold");
        sends.pump().expect("pump");
        assert!(sends.complete(false).expect("complete").is_none(), "d1 is not acknowledged yet");
        close(&mut sends);
        assert_eq!(sends.in_flight(), 2);
        assert!(!fake.events().iter().any(|e| e.starts_with("send ledger")), "{:?}", fake.events());

        // d1's acknowledgement arrives: a pump sends e1 then e2 at once.
        fake.arrive("dead:d1");
        sends.pump().expect("pump");
        let events = fake.events();
        assert!(position(&events, "send ledger:e1") < position(&events, "send ledger:e2"), "{events:?}");
        // A later ledger record with nothing unacknowledged before it goes
        // out at once.
        sends.begin();
        sends.ledger(0, b"e3", &marker(3)).expect("send");
        assert!(fake.events().contains(&"send ledger:e3".to_string()));
        assert_eq!(sends.take_held(), 2, "e1 and e2 were held, e3 went at once");
        close(&mut sends);
        // Batch 2's records are acknowledged first: batch 1 still completes first.
        fake.arrive("ledger:e2");
        assert!(sends.complete(false).expect("complete").is_none(), "e1 is not acknowledged yet");
        fake.arrive("ledger:e1");
        let first = sends.complete(false).expect("complete").expect("batch 1");
        assert_eq!(fake.landed(&first), ["ledger:e1"]);
        let second = sends.complete(false).expect("complete").expect("batch 2");
        assert_eq!(fake.landed(&second), ["ledger:e2"]);
        let third = sends.complete(true).expect("complete").expect("batch 3");
        assert_eq!(fake.landed(&third), ["ledger:e3"]);
        assert!(!sends.busy());
    }

    #[test]
    fn the_open_batch_never_completes_and_a_given_up_partition_drops_its_held_records() {
        let fake = Fake::default();
        let mut sends = Sends::new(fake.clone(), "ledger");
        sends.begin();
        sends.side("dead", 0, b"d1", &letter()).expect("send");
        sends.ledger(0, b"e1", &marker(1)).expect("hold");
        sends.ledger(1, b"e2", &marker(2)).expect("hold");
        assert!(sends.complete(true).expect("complete").is_none(), "still being applied");
        sends.forget(&[0]);
        close(&mut sends);
        let done = sends.complete(true).expect("complete").expect("closed");
        assert_eq!(fake.landed(&done), ["ledger:e2"], "partition 0's held record is dropped, 1's kept");
        assert!(!fake.events().contains(&"send ledger:e1".to_string()));
        assert!(!sends.busy());
    }
}
