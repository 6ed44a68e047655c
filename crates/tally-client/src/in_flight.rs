//! A bounded window of deliveries awaited in order.

use std::collections::VecDeque;

use crate::{ClientError, PendingDelivery};

/// Deliveries still to be acknowledged, oldest first, at most `limit`:
/// pushing one more first waits for the oldest. A publisher of many
/// records keeps memory bounded this way and loses no time, since
/// acknowledgements come back in order per partition.
pub struct InFlight {
    pending: VecDeque<PendingDelivery>,
    limit: usize,
    acknowledged: u64,
}

impl InFlight {
    /// A window of at most `limit` (at least 1) deliveries.
    pub fn new(limit: usize) -> Self {
        InFlight { pending: VecDeque::new(), limit: limit.max(1), acknowledged: 0 }
    }

    /// Adds a delivery, waiting for the oldest ones while the window is full.
    pub async fn push(&mut self, delivery: PendingDelivery) -> Result<(), ClientError> {
        self.pending.push_back(delivery);
        while self.pending.len() > self.limit {
            if let Some(oldest) = self.pending.pop_front() {
                oldest.wait().await?;
                self.acknowledged += 1;
            }
        }
        Ok(())
    }

    /// Deliveries not yet acknowledged.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Waits for every delivery; returns how many were acknowledged in all.
    pub async fn finish(mut self) -> Result<u64, ClientError> {
        while let Some(oldest) = self.pending.pop_front() {
            oldest.wait().await?;
            self.acknowledged += 1;
        }
        Ok(self.acknowledged)
    }
}
