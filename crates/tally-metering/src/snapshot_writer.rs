//! Writes partition snapshots off the metering loop.
//!
//! Chunking, encoding, producing and waiting for acknowledgements took
//! ~100 ms at a full dedup window: a pause of every owned partition's
//! input. So the loop only cuts the state (the state must be that of the
//! batch whose contiguity check just passed, see `snapshot`), and this
//! thread does the rest, one snapshot at a time; the loop skips (and
//! retries after its next batch) while one is being written. A snapshot
//! that fails or is cut short costs restore time only.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

use tally_events::Codec;
use uuid::Uuid;

use crate::{
    error::MeteringError,
    metrics::Metrics,
    outbox::Outbox,
    snapshot::{self, SnapshotPoint},
};

/// A snapshot cut by the loop, for the snapshot thread to write.
pub(crate) struct SnapshotJob {
    pub(crate) partition: i32,
    pub(crate) slot: u8,
    pub(crate) point: SnapshotPoint,
    pub(crate) state: tally_ledger::LedgerSnapshot,
    pub(crate) cut_at: Instant,
}

/// Writes snapshots off the metering loop: chunking, encoding, producing
/// and waiting for acknowledgements took ~100 ms at a full dedup window,
/// a pause of every owned partition's input. One snapshot at a time; the
/// loop skips (and retries after its next batch) while one is being
/// written. A snapshot that fails or is cut short costs restore time only.
pub(crate) struct SnapshotWriter {
    sender: Option<mpsc::SyncSender<SnapshotJob>>,
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    pub(crate) fn start(producer: Outbox, metrics: Metrics, topic: String) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<SnapshotJob>(1);
        let queued = Arc::new(AtomicUsize::new(0));
        let done = queued.clone();
        let thread = std::thread::Builder::new()
            .name("tally-snapshots".into())
            .spawn(move || {
                for job in receiver {
                    let (partition, cut_at) = (job.partition, job.cut_at);
                    let ledger_next_offset = job.point.ledger_next_offset;
                    match write_snapshot(&producer, &topic, job) {
                        Ok(chunks) => {
                            crate::faults::point("after_snapshot");
                            metrics.snapshots.inc();
                            metrics.snapshot_seconds.observe(cut_at.elapsed().as_secs_f64());
                            tracing::info!(
                                partition,
                                ledger_next_offset,
                                chunks,
                                ms = cut_at.elapsed().as_millis() as u64,
                                "snapshot written"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "snapshot not written (restore reads more ledger)")
                        }
                    }
                    done.fetch_sub(1, Ordering::Release);
                }
            })
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot start the snapshot thread: no snapshots will be written"),
            )
            .ok();
        SnapshotWriter { sender: Some(sender), queued, thread }
    }

    pub(crate) fn busy(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0 || self.thread.is_none()
    }

    /// Hands a snapshot over; false if the writer is busy.
    pub(crate) fn offer(&self, job: SnapshotJob) -> bool {
        let Some(sender) = &self.sender else { return false };
        self.queued.fetch_add(1, Ordering::AcqRel);
        if sender.try_send(job).is_ok() {
            return true;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Lets the snapshot in hand finish (shutdown).
    pub(crate) fn finish(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Chunks, encodes and writes one snapshot; returns its chunk count.
fn write_snapshot(producer: &Outbox, topic: &str, job: SnapshotJob) -> Result<usize, MeteringError> {
    let partition = job.partition;
    let chunks = snapshot::chunks(&job.state, &job.point, Uuid::new_v4());
    let mut tickets = Vec::with_capacity(chunks.len());
    let mut bytes = Vec::new();
    for chunk in &chunks {
        bytes.clear();
        Codec::global().encode_into(chunk, &mut bytes).map_err(|source| MeteringError::Encode { partition, source })?;
        let key = snapshot::chunk_key(partition, job.slot, chunk.chunk);
        tickets.push(producer.send(topic, partition, key.as_bytes(), &bytes)?);
    }
    producer.wait(topic, &tickets)?;
    Ok(chunks.len())
}
