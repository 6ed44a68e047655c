//! Partition snapshots: the state of one ledger partition, cut into
//! [`PartitionSnapshot`] chunks for the compacted snapshot topic, and put
//! back together on restore.
//!
//! A snapshot states: "folding the ledger records at offsets below
//! `ledger_next_offset`, with the fence, gives this state". Restore starts
//! from the newest complete snapshot and reads the ledger from
//! `ledger_next_offset` only, instead of from offset 0.
//!
//! Why a snapshot can be trusted whoever wrote it: an owner writes one only
//! after the contiguity check of its last batch passed, that is when every
//! record it wrote since its claim landed right after the previous one. No
//! other record (a newer claim, a zombie's write) lies between its claim and
//! `ledger_next_offset`, so its in-memory state is exactly the fold of that
//! prefix. A zombie's late snapshot is still the fold of a prefix: older,
//! never wrong; restore reads what follows it with the fence.
//!
//! Chunks are keyed `{partition}/{slot}/{chunk}` with two alternating slots:
//! compaction keeps the newest value per key, so a crash halfway through a
//! snapshot damages one slot and the other still holds a complete one. A
//! snapshot missing any chunk is ignored; with no complete snapshot, restore
//! reads the ledger from offset 0 (slower, same result).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tally_events::{AccountId, Epoch, InputDigest, PartitionSnapshot, SnapshotAccount};
use tally_ledger::{AccountState, DedupId, LedgerSnapshot};
use uuid::Uuid;

/// Accounts per chunk (about 60 bytes each): chunks stay far below the
/// 1 MB default record size limit of Kafka brokers.
pub const ACCOUNTS_PER_CHUNK: usize = 4_096;
/// Dedup ids per chunk (24 bytes each).
pub const IDS_PER_CHUNK: usize = 16_384;
/// Bytes per packed dedup id: 16 UUID bytes, 8 bytes of big-endian ms.
const ID_LEN: usize = 24;
/// Bytes per packed content digest (all zero: not recorded).
const DIGEST_LEN: usize = 16;

/// Where a snapshot stands in the ledger partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPoint {
    /// Input topic.
    pub input_topic: String,
    /// Input partition (= ledger partition = snapshot partition).
    pub input_partition: i32,
    /// The state covers ledger records below this offset.
    pub ledger_next_offset: i64,
    /// Epoch (offset) of the claim in force there.
    pub claim_epoch: Epoch,
    /// Id of that claim.
    pub claim_id: Uuid,
    /// Every input offset below this one was handled.
    pub resume_input_offset: i64,
}

/// Cuts a state into chunks; `snapshot_id` ties them together.
pub fn chunks(state: &LedgerSnapshot, point: &SnapshotPoint, snapshot_id: Uuid) -> Vec<PartitionSnapshot> {
    let accounts: Vec<SnapshotAccount> = state
        .accounts
        .iter()
        .map(|(id, a)| SnapshotAccount {
            account_id: AccountId::new_unchecked(id.as_str()),
            balance: a.balance,
            last_sequence: a.last_sequence,
            tier: a.tier,
            low_balance_threshold: a.low_balance_threshold,
            paused: a.paused,
            deleted: a.deleted,
            booked_at: i64::from(a.booked),
        })
        .collect();
    let mut bodies: Vec<(Vec<SnapshotAccount>, Vec<u8>, Vec<u8>)> =
        accounts.chunks(ACCOUNTS_PER_CHUNK).map(|c| (c.to_vec(), Vec::new(), Vec::new())).collect();
    for ids in state.dedup.chunks(IDS_PER_CHUNK) {
        let mut packed = Vec::with_capacity(ids.len() * ID_LEN);
        let mut digests = Vec::with_capacity(ids.len() * DIGEST_LEN);
        for id in ids {
            packed.extend_from_slice(id.input_id.as_bytes());
            packed.extend_from_slice(&id.occurred_at.timestamp_millis().to_be_bytes());
            digests.extend_from_slice(&id.digest.map_or([0; DIGEST_LEN], |d| d.0));
        }
        bodies.push((Vec::new(), packed, digests));
    }
    if bodies.is_empty() {
        bodies.push((Vec::new(), Vec::new(), Vec::new()));
    }
    let count = bodies.len() as i32;
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (accounts, dedup_ids, dedup_digests))| PartitionSnapshot {
            snapshot_id,
            chunk: i as i32,
            chunks: count,
            input_topic: point.input_topic.clone(),
            input_partition: point.input_partition,
            ledger_next_offset: point.ledger_next_offset,
            claim_epoch: point.claim_epoch,
            claim_id: point.claim_id,
            resume_input_offset: point.resume_input_offset,
            newest_occurred_at: state.newest_occurred_at,
            last_source_offset: state.last_source_offset,
            accounts,
            dedup_ids,
            dedup_digests,
        })
        .collect()
}

/// The key of a chunk: partition, slot, chunk index.
pub fn chunk_key(partition: i32, slot: u8, chunk: i32) -> String {
    format!("{partition}/{slot}/{chunk}")
}

/// Why a chunk read back cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Packed dedup ids of a length that is not a multiple of 24.
    #[error("snapshot {snapshot_id} chunk {chunk}: {len} bytes of dedup ids is not a multiple of 24")]
    BadIds {
        /// Snapshot.
        snapshot_id: Uuid,
        /// Chunk.
        chunk: i32,
        /// Length.
        len: usize,
    },
    /// Packed digests that do not match the ids one for one.
    #[error("snapshot {snapshot_id} chunk {chunk}: {len} bytes of digests for {ids} dedup ids")]
    BadDigests {
        /// Snapshot.
        snapshot_id: Uuid,
        /// Chunk.
        chunk: i32,
        /// Length.
        len: usize,
        /// Ids in the chunk.
        ids: usize,
    },
    /// A booking time outside 1970-2106 (whole seconds in a `u32`).
    #[error("snapshot {snapshot_id}: account {account_id} has booked_at {booked_at} s, outside 0..=4294967295")]
    BadBooking {
        /// Snapshot.
        snapshot_id: Uuid,
        /// Account.
        account_id: String,
        /// The value.
        booked_at: i64,
    },
    /// A timestamp out of chrono's range.
    #[error("snapshot {snapshot_id}: occurred_at {ms} ms is out of range")]
    BadTime {
        /// Snapshot.
        snapshot_id: Uuid,
        /// The value.
        ms: i64,
    },
}

/// Collects chunks read in log order and keeps the newest complete
/// snapshot at or below a ledger offset.
#[derive(Debug)]
pub struct Assembler {
    input_topic: String,
    input_partition: i32,
    /// Only snapshots with `ledger_next_offset <= limit` count.
    limit: i64,
    partial: HashMap<Uuid, Vec<Option<PartitionSnapshot>>>,
    best: Option<Vec<PartitionSnapshot>>,
    /// Chunks of other input partitions (a snapshot topic shared by two
    /// deployments, or re-partitioned): skipped.
    pub foreign: u64,
}

impl Assembler {
    /// Assembles snapshots of `input_topic`/`input_partition` whose state
    /// ends at or before ledger offset `limit` (the restoring owner's claim).
    pub fn new(input_topic: &str, input_partition: i32, limit: i64) -> Self {
        Assembler {
            input_topic: input_topic.to_string(),
            input_partition,
            limit,
            partial: HashMap::new(),
            best: None,
            foreign: 0,
        }
    }

    /// Takes one chunk; chunks of other input partitions are counted in
    /// [`Assembler::foreign`] and skipped.
    pub fn visit(&mut self, chunk: PartitionSnapshot) {
        if chunk.input_topic != self.input_topic || chunk.input_partition != self.input_partition {
            self.foreign += 1;
            return;
        }
        if chunk.ledger_next_offset > self.limit || chunk.chunks < 1 || !(0..chunk.chunks).contains(&chunk.chunk) {
            return;
        }
        if self.best.as_ref().is_some_and(|b| b[0].ledger_next_offset >= chunk.ledger_next_offset) {
            return;
        }
        let id = chunk.snapshot_id;
        let slots = self.partial.entry(id).or_insert_with(|| vec![None; chunk.chunks as usize]);
        if slots.len() != chunk.chunks as usize {
            return; // inconsistent chunk counts: never complete
        }
        let index = chunk.chunk as usize;
        slots[index] = Some(chunk);
        if slots.iter().all(Option::is_some) {
            if let Some(slots) = self.partial.remove(&id) {
                self.best = Some(slots.into_iter().flatten().collect());
            }
        }
    }

    /// The newest complete snapshot: where it stands and the state.
    pub fn finish(self) -> Result<Option<(SnapshotPoint, LedgerSnapshot)>, SnapshotError> {
        let Some(chunks) = self.best else { return Ok(None) };
        let first = &chunks[0];
        let point = SnapshotPoint {
            input_topic: first.input_topic.clone(),
            input_partition: first.input_partition,
            ledger_next_offset: first.ledger_next_offset,
            claim_epoch: first.claim_epoch,
            claim_id: first.claim_id,
            resume_input_offset: first.resume_input_offset,
        };
        let mut state = LedgerSnapshot {
            accounts: Default::default(),
            dedup: Vec::new(),
            newest_occurred_at: first.newest_occurred_at,
            last_source_offset: first.last_source_offset,
        };
        for chunk in &chunks {
            for a in &chunk.accounts {
                let account = AccountState {
                    balance: a.balance,
                    last_sequence: a.last_sequence,
                    tier: a.tier,
                    low_balance_threshold: a.low_balance_threshold,
                    paused: a.paused,
                    deleted: a.deleted,
                    // Range-checked: a forged value must not wrap.
                    booked: u32::try_from(a.booked_at).map_err(|_| SnapshotError::BadBooking {
                        snapshot_id: chunk.snapshot_id,
                        account_id: a.account_id.to_string(),
                        booked_at: a.booked_at,
                    })?,
                };
                state.accounts.insert(a.account_id.to_string(), account);
            }
            if chunk.dedup_ids.len() % ID_LEN != 0 {
                return Err(SnapshotError::BadIds {
                    snapshot_id: chunk.snapshot_id,
                    chunk: chunk.chunk,
                    len: chunk.dedup_ids.len(),
                });
            }
            let ids = chunk.dedup_ids.len() / ID_LEN;
            // A v1 snapshot has no digests: its ids have none recorded,
            // as if restored from entries written before digests.
            if !chunk.dedup_digests.is_empty() && chunk.dedup_digests.len() != ids * DIGEST_LEN {
                return Err(SnapshotError::BadDigests {
                    snapshot_id: chunk.snapshot_id,
                    chunk: chunk.chunk,
                    len: chunk.dedup_digests.len(),
                    ids,
                });
            }
            for (n, packed) in chunk.dedup_ids.chunks_exact(ID_LEN).enumerate() {
                let mut id = [0u8; 16];
                id.copy_from_slice(&packed[..16]);
                let mut ms = [0u8; 8];
                ms.copy_from_slice(&packed[16..]);
                let ms = i64::from_be_bytes(ms);
                let occurred_at: DateTime<Utc> = DateTime::from_timestamp_millis(ms)
                    .ok_or(SnapshotError::BadTime { snapshot_id: chunk.snapshot_id, ms })?;
                let digest = chunk.dedup_digests.get(n * DIGEST_LEN..(n + 1) * DIGEST_LEN).and_then(|bytes| {
                    let mut digest = [0u8; DIGEST_LEN];
                    digest.copy_from_slice(bytes);
                    (digest != [0; DIGEST_LEN]).then_some(InputDigest(digest))
                });
                state.dedup.push(DedupId { input_id: Uuid::from_bytes(id), occurred_at, digest });
            }
        }
        Ok(Some((point, state)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use tally_events::{Credits, PlanTier, Sequence};

    use super::*;

    fn point(ledger_next_offset: i64) -> SnapshotPoint {
        SnapshotPoint {
            input_topic: "in".into(),
            input_partition: 2,
            ledger_next_offset,
            claim_epoch: Epoch(7),
            claim_id: Uuid::from_u128(7),
            resume_input_offset: 100,
        }
    }

    fn state(accounts: usize, ids: usize) -> LedgerSnapshot {
        let account = |i: usize| AccountState {
            balance: Credits::new(Decimal::new(i as i64 * 12_345, 4)),
            last_sequence: Sequence(i as i64 + 1),
            tier: [PlanTier::Payg, PlanTier::Basic, PlanTier::Pro][i % 3],
            low_balance_threshold: Credits::new(Decimal::from(10 + i as i64)),
            paused: i % 2 == 0,
            deleted: i % 7 == 0,
            booked: 1_796_083_200 + i as u32,
        };
        LedgerSnapshot {
            accounts: (0..accounts).map(|i| (format!("acct-{i:06}"), account(i))).collect::<BTreeMap<_, _>>(),
            dedup: (0..ids)
                .map(|i| DedupId {
                    input_id: Uuid::from_u128(i as u128 * 7919),
                    occurred_at: DateTime::from_timestamp_millis(1_767_225_600_000 + i as i64).expect("time"),
                    // Some ids without a digest (restored from old entries).
                    digest: (i % 5 != 0).then(|| InputDigest([(i % 251) as u8 + 1; 16])),
                })
                .collect(),
            newest_occurred_at: DateTime::from_timestamp_millis(1_767_225_600_000 + ids as i64),
            last_source_offset: Some(99),
        }
    }

    fn assemble(chunks: Vec<PartitionSnapshot>, limit: i64) -> Option<(SnapshotPoint, LedgerSnapshot)> {
        let mut assembler = Assembler::new("in", 2, limit);
        for chunk in chunks {
            assembler.visit(chunk);
        }
        assembler.finish().expect("finish")
    }

    #[test]
    fn a_state_survives_chunking_and_the_avro_codec() {
        for (accounts, ids) in [(0, 0), (3, 5), (ACCOUNTS_PER_CHUNK + 1, 2 * IDS_PER_CHUNK + 3)] {
            let state = state(accounts, ids);
            let chunks = chunks(&state, &point(50), Uuid::from_u128(1));
            let expected = accounts.div_ceil(ACCOUNTS_PER_CHUNK) + ids.div_ceil(IDS_PER_CHUNK);
            assert_eq!(chunks.len(), expected.max(1));
            let codec = tally_events::Codec::global();
            let decoded: Vec<PartitionSnapshot> =
                chunks.iter().map(|c| codec.decode(&codec.encode(c).expect("encode")).expect("decode")).collect();
            let (back_point, back) = assemble(decoded, 50).expect("complete");
            assert_eq!(back_point, point(50));
            assert_eq!(back, state);
        }
    }

    #[test]
    fn a_v1_snapshot_without_digests_restores_ids_without_them() {
        let state = state(2, 40);
        let mut chunks = chunks(&state, &point(50), Uuid::from_u128(1));
        for chunk in &mut chunks {
            chunk.dedup_digests.clear();
        }
        let (_, back) = assemble(chunks, 50).expect("complete");
        assert_eq!(back.dedup.len(), 40);
        assert!(back.dedup.iter().all(|id| id.digest.is_none()));
        let mut torn = super::chunks(&state, &point(50), Uuid::from_u128(1));
        torn.last_mut().expect("a chunk").dedup_digests.pop();
        let mut assembler = Assembler::new("in", 2, 50);
        torn.into_iter().for_each(|chunk| assembler.visit(chunk));
        assert!(matches!(assembler.finish(), Err(SnapshotError::BadDigests { .. })));
    }

    #[test]
    fn the_newest_complete_snapshot_within_the_limit_wins() {
        let s = state(5_000, 20_000);
        let older = chunks(&s, &point(10), Uuid::from_u128(1));
        let newer = chunks(&s, &point(20), Uuid::from_u128(2));
        let beyond = chunks(&s, &point(30), Uuid::from_u128(3));
        assert!(newer.len() > 2);
        // The newer one lost a chunk (a crash mid-write): the older counts.
        let mut torn = newer.clone();
        torn.remove(1);
        let all = [older.clone(), torn, beyond.clone()].concat();
        assert_eq!(assemble(all, 25).expect("one complete").0.ledger_next_offset, 10);
        let all = [older, newer, beyond].concat();
        assert_eq!(assemble(all.clone(), 25).expect("complete").0.ledger_next_offset, 20);
        assert_eq!(assemble(all, 30).expect("complete").0.ledger_next_offset, 30);
        assert!(assemble(Vec::new(), 30).is_none());
    }

    #[test]
    fn chunks_of_another_partition_are_skipped_and_counted() {
        let mine = chunks(&state(1, 1), &point(5), Uuid::from_u128(1));
        let mut other = mine.clone();
        for chunk in &mut other {
            chunk.input_partition = 3;
            chunk.ledger_next_offset = 9;
        }
        let foreign = other.len() as u64;
        let mut assembler = Assembler::new("in", 2, 10);
        for chunk in other.into_iter().chain(mine) {
            assembler.visit(chunk);
        }
        assert_eq!(assembler.foreign, foreign);
        assert_eq!(assembler.finish().expect("finish").expect("complete").0.ledger_next_offset, 5);
    }
}
