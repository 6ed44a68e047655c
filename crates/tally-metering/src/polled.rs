//! A polled batch of inputs, copied into one buffer reused from batch to
//! batch.
//!
//! A message the consumer returns borrows the consumer, so a batch must
//! either copy its messages or hold the consumer borrowed while the batch
//! is applied. `OwnedMessage::detach` copies too, into three or four new
//! allocations per message (topic, key, payload, headers); this copies key
//! and payload into one arena and keeps ranges, so a batch allocates
//! nothing once the arena has grown to a batch's size.
//!
//! Invariant: inputs are kept in poll order (per partition, offset order),
//! and removing a partition's inputs keeps the others' order.

use std::ops::Range;

use rdkafka::{message::BorrowedMessage, Message};

/// One input of the batch.
#[derive(Debug, Clone)]
pub(crate) struct Polled {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// Broker append time (or create time), milliseconds since the epoch.
    pub(crate) timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
}

/// The batch (see the module docs).
#[derive(Default)]
pub(crate) struct Batch {
    inputs: Vec<Polled>,
    arena: Vec<u8>,
}

impl Batch {
    pub(crate) fn with_capacity(inputs: usize) -> Batch {
        Batch { inputs: Vec::with_capacity(inputs), arena: Vec::new() }
    }

    /// Copies a polled message in.
    pub(crate) fn push(&mut self, message: &BorrowedMessage<'_>) {
        let (partition, offset, timestamp_ms) =
            (message.partition(), message.offset(), message.timestamp().to_millis());
        self.push_parts(partition, offset, timestamp_ms, message.key(), message.payload());
    }

    /// Copies an input in from its parts.
    fn push_parts(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let key = key.map(|k| self.copy(k));
        let payload = payload.map(|p| self.copy(p));
        self.inputs.push(Polled { partition, offset, timestamp_ms, key, payload });
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        start..self.arena.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.inputs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.inputs.clear();
        self.arena.clear();
    }

    /// Drops the inputs of `partitions` (given up in a rebalance); their
    /// bytes stay in the arena until the next `clear`.
    pub(crate) fn remove_partitions(&mut self, partitions: &[i32]) {
        self.inputs.retain(|input| !partitions.contains(&input.partition));
    }

    /// The inputs in poll order.
    pub(crate) fn inputs(&self) -> &[Polled] {
        &self.inputs
    }

    pub(crate) fn key(&self, input: &Polled) -> Option<&[u8]> {
        input.key.clone().map(|range| &self.arena[range])
    }

    pub(crate) fn payload(&self, input: &Polled) -> Option<&[u8]> {
        input.payload.clone().map(|range| &self.arena[range])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_keep_their_bytes_and_order_across_removal_and_reuse() {
        let mut batch = Batch::with_capacity(4);
        batch.push_parts(0, 10, None, Some(b"a"), Some(b"payload-a"));
        batch.push_parts(1, 20, None, None, Some(b""));
        batch.push_parts(0, 11, None, Some(b"b"), None);
        batch.remove_partitions(&[1]);
        let got: Vec<_> = batch
            .inputs()
            .iter()
            .map(|i| (i.partition, i.offset, batch.key(i).map(<[u8]>::to_vec), batch.payload(i).map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            got,
            vec![(0, 10, Some(b"a".to_vec()), Some(b"payload-a".to_vec())), (0, 11, Some(b"b".to_vec()), None)]
        );
        batch.clear();
        assert!(batch.is_empty());
        batch.push_parts(2, 5, None, Some(b"c"), Some(b"x"));
        let only = &batch.inputs()[0];
        assert_eq!((batch.key(only), batch.payload(only)), (Some(&b"c"[..]), Some(&b"x"[..])));
        // An empty payload is Some(empty), not None: a tombstone differs.
        let mut batch = Batch::default();
        batch.push_parts(0, 0, None, None, Some(b""));
        assert_eq!(batch.payload(&batch.inputs()[0]), Some(&b""[..]));
    }
}
