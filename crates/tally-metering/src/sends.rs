//! One batch's outputs, and the rule that keeps a crash from losing a dead
//! letter or an alert: **a ledger record is never acknowledged before a
//! dead letter or alert that comes before it in the batch.**
//!
//! Why: the ledger is the resume point. A ledger record (an entry, or a
//! PROGRESS marker) covering an input makes a restart resume after that
//! input; if the input's dead letter or alerts were still in flight when
//! the process died, they would never be written. So records go out as
//! the batch is applied (their acknowledgements overlap the work), ledger
//! records at once until the batch's first side record (dead letter or
//! alert), and after it they are held in an arena until
//! [`Sends::finish`] has every side record's acknowledgement. Then the
//! held ones go out and every ledger acknowledgement is awaited; their
//! offsets, in the order sent, go to the contiguity check.
//!
//! The sending itself is behind [`Outlet`] (Kafka in the service, a
//! recording fake in the tests below), so the rule is tested here, beside
//! the code.

use std::ops::Range;

use tally_events::{codec::Record, Codec};

use crate::{
    error::MeteringError,
    outbox::{Outbox, Ticket},
};

/// Where records go.
pub(crate) trait Outlet {
    /// A record on its way.
    type Ticket;
    /// Hands a record over.
    fn send(&mut self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<Self::Ticket, MeteringError>;
    /// Waits for each record's acknowledgement, in order; returns where
    /// each landed (partition, offset). Any failure is an error.
    fn wait(&mut self, topic: &str, tickets: Vec<Self::Ticket>) -> Result<Vec<(i32, i64)>, MeteringError>;
}

/// The Kafka outlet: the worker's idempotent producer.
impl Outlet for Outbox {
    type Ticket = Ticket;

    fn send(&mut self, topic: &str, partition: i32, key: &[u8], payload: &[u8]) -> Result<Ticket, MeteringError> {
        Outbox::send(self, topic, partition, key, payload)
    }

    fn wait(&mut self, topic: &str, tickets: Vec<Ticket>) -> Result<Vec<(i32, i64)>, MeteringError> {
        Outbox::wait(self, topic, &tickets)
    }
}

/// One batch's sends (see the module docs). Kept from batch to batch: its
/// buffers are reused, so a batch costs no allocation per record.
pub(crate) struct Sends<O: Outlet> {
    outlet: O,
    side: Vec<(String, O::Ticket)>,
    ledger: Vec<O::Ticket>,
    /// Held ledger records: partition, and key and payload as ranges of
    /// `arena`.
    held: Vec<(i32, Range<usize>, Range<usize>)>,
    arena: Vec<u8>,
    /// Encoding buffer of a record sent at once (the outlet copies it).
    scratch: Vec<u8>,
    /// A side record was sent: ledger records are held from now on.
    holding: bool,
    started: bool,
}

impl<O: Outlet> Sends<O> {
    pub(crate) fn new(outlet: O) -> Self {
        Sends {
            outlet,
            side: Vec::new(),
            ledger: Vec::new(),
            held: Vec::new(),
            arena: Vec::new(),
            scratch: Vec::with_capacity(512),
            holding: false,
            started: false,
        }
    }

    /// Starts a batch.
    pub(crate) fn begin(&mut self) {
        self.side.clear();
        self.ledger.clear();
        self.held.clear();
        self.arena.clear();
        self.holding = false;
        self.started = false;
    }

    /// Sends what `scratch` holds.
    fn send_scratch(&mut self, topic: &str, partition: i32, key: &[u8]) -> Result<O::Ticket, MeteringError> {
        if !self.started {
            self.started = true;
            crate::faults::point("before_produce");
        }
        self.outlet.send(topic, partition, key, &self.scratch)
    }

    /// Encodes and sends a dead letter or alert; ledger records are held
    /// from now on.
    pub(crate) fn side<T: Record>(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        record: &T,
    ) -> Result<(), MeteringError> {
        encode(&mut self.scratch, partition, record)?;
        let ticket = self.send_scratch(topic, partition, key)?;
        self.side.push((topic.to_string(), ticket));
        self.holding = true;
        Ok(())
    }

    /// Encodes a ledger record and sends it, or holds it after a side record.
    pub(crate) fn ledger<T: Record>(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        record: &T,
    ) -> Result<(), MeteringError> {
        if self.holding {
            let key_start = self.arena.len();
            self.arena.extend_from_slice(key);
            let payload_start = self.arena.len();
            Codec::global()
                .encode_into(record, &mut self.arena)
                .map_err(|source| MeteringError::Encode { partition, source })?;
            self.held.push((partition, key_start..payload_start, payload_start..self.arena.len()));
            return Ok(());
        }
        encode(&mut self.scratch, partition, record)?;
        let ticket = self.send_scratch(topic, partition, key)?;
        self.ledger.push(ticket);
        Ok(())
    }

    /// Waits for the side records, sends the held ledger records, waits
    /// for every ledger record; returns (partition, offset) of each ledger
    /// record in the order sent.
    pub(crate) fn finish(&mut self, ledger_topic: &str) -> Result<Vec<(i32, i64)>, MeteringError> {
        crate::faults::point("before_ack");
        for (topic, ticket) in self.side.drain(..) {
            self.outlet.wait(&topic, vec![ticket])?;
        }
        for (partition, key, payload) in &self.held {
            let ticket =
                self.outlet.send(ledger_topic, *partition, &self.arena[key.clone()], &self.arena[payload.clone()])?;
            self.ledger.push(ticket);
        }
        let ledger = std::mem::take(&mut self.ledger);
        self.outlet.wait(ledger_topic, ledger)
    }
}

/// Encodes `record` into `buffer` (cleared first).
pub(crate) fn encode<T: Record>(buffer: &mut Vec<u8>, partition: i32, record: &T) -> Result<(), MeteringError> {
    buffer.clear();
    Codec::global().encode_into(record, buffer).map_err(|source| MeteringError::Encode { partition, source })
}

#[cfg(test)]
mod tests {
    use tally_events::{DeadLetter, Epoch, LedgerMarker, MarkerKind, SourceOffset};
    use uuid::Uuid;

    use super::*;

    /// Records what was sent and acknowledged, in order; a record counts
    /// as acknowledged when `wait` returns for it.
    #[derive(Default)]
    struct Recording {
        events: Vec<String>,
        next_offset: i64,
    }

    impl Outlet for &mut Recording {
        type Ticket = (String, i64);

        fn send(&mut self, topic: &str, _: i32, key: &[u8], _: &[u8]) -> Result<(String, i64), MeteringError> {
            let name = format!("{topic}:{}", String::from_utf8_lossy(key));
            self.events.push(format!("send {name}"));
            self.next_offset += 1;
            Ok((name, self.next_offset))
        }

        fn wait(&mut self, _: &str, tickets: Vec<(String, i64)>) -> Result<Vec<(i32, i64)>, MeteringError> {
            Ok(tickets
                .into_iter()
                .map(|(name, offset)| {
                    self.events.push(format!("ack {name}"));
                    (0, offset)
                })
                .collect())
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

    #[test]
    fn no_ledger_record_is_acknowledged_before_an_earlier_side_record() {
        let mut recording = Recording::default();
        let mut sends = Sends::new(&mut recording);
        sends.begin();
        sends.ledger("ledger", 0, b"e1", &marker(1)).expect("send");
        sends.side("dead", 0, b"d1", &letter()).expect("send");
        sends.ledger("ledger", 0, b"e2", &marker(2)).expect("hold");
        sends.side("alerts", 0, b"a1", &letter()).expect("send");
        sends.ledger("ledger", 0, b"e3", &marker(3)).expect("hold");
        let landed = sends.finish("ledger").expect("finish");
        let events = &recording.events;
        // e1 went out at once; e2 and e3 only after d1 and a1 were acknowledged.
        assert!(position(events, "send ledger:e1") < position(events, "send dead:d1"));
        for held in ["send ledger:e2", "send ledger:e3"] {
            assert!(position(events, "ack dead:d1") < position(events, held), "{events:?}");
            assert!(position(events, "ack alerts:a1") < position(events, held), "{events:?}");
        }
        // Every ledger acknowledgement comes after every earlier side one.
        for ack in ["ack ledger:e1", "ack ledger:e2", "ack ledger:e3"] {
            assert!(position(events, "ack alerts:a1") < position(events, ack), "{events:?}");
        }
        assert_eq!(landed.len(), 3, "every ledger record, in the order sent");
        assert!(landed.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn a_batch_without_side_records_holds_nothing_and_the_next_batch_starts_over() {
        let mut recording = Recording::default();
        let mut sends = Sends::new(&mut recording);
        sends.begin();
        sends.side("dead", 0, b"d1", &letter()).expect("send");
        sends.ledger("ledger", 0, b"e1", &marker(1)).expect("hold");
        sends.finish("ledger").expect("finish");
        sends.begin();
        sends.ledger("ledger", 0, b"e2", &marker(2)).expect("send");
        sends.finish("ledger").expect("finish");
        let events = &recording.events;
        let e2 = position(events, "send ledger:e2");
        assert_eq!(events[e2 - 1], "ack ledger:e1", "e2 was sent at once, not held: {events:?}");
    }
}
