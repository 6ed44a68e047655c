//! The ClickHouse side of the aggregator: claims, the resume point, batch
//! INSERTs and recovery. The exactly-once argument is in docs/DESIGN.md
//! ("The ledger in ClickHouse"); this module is its code.
//!
//! Per ledger partition p, in this order, always:
//! 1. **claim** p: append a claim with the next epoch; if the claim before
//!    it was not released cleanly, wait `claim_grace` and until no INSERT
//!    of p is running on the server (every INSERT of p carries a query id
//!    with p's prefix), so that nothing an earlier owner sent can still
//!    land; then check the claim is the one in force;
//! 2. **resume**: W = the highest `next_offset` of `sink_progress` for p;
//!    read the offsets >= W already in `ledger_entries` (left by an INSERT
//!    whose outcome was unknown), rebuild the rollup partitions those rows
//!    are in from raw, and load each account's high water below W;
//! 3. **flush** each batch: check the claim is still in force, INSERT its
//!    rows one month partition at a time (each INSERT is one ClickHouse
//!    partition, under the block size), then append W' to `sink_progress`.
//!    Any error: back to 2 (never a blind retry: the outcome is unknown).

use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use tally_events::{fence::Fence, ledger_reader::FencedReader, Epoch, LedgerEntry};
use tally_warehouse::{
    client::{Warehouse, WarehouseError},
    rollups::{self, PartitionKey},
    row::LedgerRow,
};
use uuid::Uuid;

/// This instance's claim of a ledger partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Ledger partition.
    pub partition: i32,
    /// Epoch: one more than the claim before.
    pub epoch: i64,
    /// Unique per claim.
    pub claim_id: Uuid,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ClaimRow {
    epoch: i64,
    released: u8,
}

#[derive(Debug, clickhouse::Row, serde::Serialize)]
struct ClaimInsert<'a> {
    ledger_partition: i32,
    epoch: i64,
    claim_id: String,
    instance: &'a str,
    released: u8,
    claimed_at: u32,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct ProgressRow {
    ledger_partition: i32,
    next_offset: i64,
    fence_epoch: i64,
    fence_claim_id: String,
    claim_epoch: i64,
    written_at: u32,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct PresentRow {
    ledger_offset: i64,
    month: u32,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct HighWaterRow {
    account_id: String,
    sequence: i64,
    #[serde(with = "clickhouse::serde::uuid")]
    entry_id: Uuid,
}

/// Where a partition resumes, read from ClickHouse.
#[derive(Debug)]
pub struct Resume {
    /// The fenced reader in the state it had at `next`.
    pub reader: FencedReader,
    /// W: every ledger record below it is in ClickHouse if it counts.
    pub next: i64,
    /// Offsets >= W that ClickHouse holds already.
    pub present: FxHashSet<i64>,
    /// Each account's last sequence (and its entry id) below W.
    pub high_water: FxHashMap<String, (i64, Uuid)>,
    /// Rollup partitions rebuilt from raw.
    pub rebuilt: Vec<PartitionKey>,
}

/// The aggregator's handle on the database.
#[derive(Debug, Clone)]
pub struct Sink {
    warehouse: Warehouse,
    instance: String,
    claim_grace: Duration,
}

/// Wall-clock seconds for the bookkeeping columns (`written_at`,
/// `claimed_at`): never ledger time.
#[allow(clippy::disallowed_methods)]
fn now_seconds() -> u32 {
    chrono::Utc::now().timestamp().clamp(0, i64::from(u32::MAX)) as u32
}

impl Sink {
    /// A sink writing as `instance`.
    pub fn new(warehouse: Warehouse, instance: &str, claim_grace: Duration) -> Self {
        Sink { warehouse, instance: instance.to_string(), claim_grace }
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The query id of an INSERT of `partitions`: every partition it
    /// writes is named in it as `-p<n>-`, so that a new owner of any of
    /// them can wait for it (`wait_for_inserts`).
    fn query_id(&self, partitions: &[i32]) -> String {
        let named: String = partitions.iter().map(|p| format!("-p{p}")).collect();
        format!("tally-aggregator-{}{named}-{}", self.warehouse.config().database, Uuid::new_v4())
    }

    async fn claim_in_force(&self, partition: i32) -> Result<Option<ClaimRow>, WarehouseError> {
        let sql = "SELECT epoch, released FROM sink_claims WHERE ledger_partition = ? \
                   ORDER BY epoch DESC, claim_id DESC, released DESC LIMIT 1";
        let rows: Vec<ClaimRow> =
            self.warehouse.fetch_all(sql, self.warehouse.client().query(sql).bind(partition)).await?;
        Ok(rows.into_iter().next())
    }

    async fn append_claim(&self, claim: &Claim, released: bool) -> Result<(), WarehouseError> {
        let row = ClaimInsert {
            ledger_partition: claim.partition,
            epoch: claim.epoch,
            claim_id: claim.claim_id.to_string(),
            instance: &self.instance,
            released: u8::from(released),
            claimed_at: now_seconds(),
        };
        let sql = "INSERT INTO sink_claims";
        let client = self.warehouse.client();
        self.warehouse
            .bounded(sql, async {
                let mut insert = client.insert::<ClaimInsert<'_>>("sink_claims").await?;
                insert.write(&row).await?;
                insert.end().await
            })
            .await
    }

    /// Claims `partition` (step 1 of the module docs). `Ok(None)` when
    /// another claim won meanwhile.
    pub async fn claim(&self, partition: i32) -> Result<Option<Claim>, WarehouseError> {
        let before = self.claim_in_force(partition).await?;
        let epoch = before.as_ref().map_or(1, |c| c.epoch + 1);
        let claim = Claim { partition, epoch, claim_id: Uuid::new_v4() };
        self.append_claim(&claim, false).await?;
        if before.as_ref().is_some_and(|c| c.released == 0) {
            // The owner before did not stop cleanly: an INSERT it checked
            // its claim for may still be on its way.
            tracing::info!(partition, grace = ?self.claim_grace, "previous owner did not release; waiting before resuming");
            tokio::time::sleep(self.claim_grace).await;
        }
        self.wait_for_inserts(partition).await?;
        Ok(self.holds(&claim).await?.then_some(claim))
    }

    /// Whether `claim` is still the claim in force.
    pub async fn holds(&self, claim: &Claim) -> Result<bool, WarehouseError> {
        Ok(self.superseded(&[*claim]).await?.is_empty())
    }

    /// Marks a clean stop: the next claimer need not wait.
    pub async fn release(&self, claim: &Claim) -> Result<(), WarehouseError> {
        if self.holds(claim).await? {
            self.append_claim(claim, true).await?;
        }
        Ok(())
    }

    /// Waits until no INSERT of `partition` runs on the server (an INSERT
    /// whose client died commits or fails within moments; one of a slow
    /// server may take longer, so this waits, bounded by the request
    /// timeout, and fails after that rather than guess).
    pub async fn wait_for_inserts(&self, partition: i32) -> Result<(), WarehouseError> {
        let sql = "SELECT count() FROM system.processes WHERE startsWith(query_id, ?) AND position(query_id, ?) > 0";
        let deadline = Instant::now() + self.warehouse.config().timeout * 3;
        loop {
            let running: Vec<u64> = self
                .warehouse
                .fetch_all(
                    sql,
                    self.warehouse
                        .client()
                        .query(sql)
                        .bind(format!("tally-aggregator-{}-", self.warehouse.config().database))
                        .bind(format!("-p{partition}-")),
                )
                .await?;
            if running.first().copied().unwrap_or(0) == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(WarehouseError::Unavailable {
                    url: self.warehouse.config().url.clone(),
                    what: format!("waiting for INSERTs of ledger partition {partition} to finish"),
                    detail: "still running".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads where `partition` resumes and repairs what an unknown outcome
    /// may have left (step 2 of the module docs). `skip_present` is the
    /// deliberately broken variant of the fault tests.
    pub async fn resume(&self, partition: i32, skip_present: bool) -> Result<Resume, WarehouseError> {
        let client = self.warehouse.client();
        let sql =
            "SELECT ledger_partition, next_offset, fence_epoch, fence_claim_id, claim_epoch, toUInt32(written_at) \
                   FROM sink_progress WHERE ledger_partition = ? ORDER BY next_offset DESC LIMIT 1";
        let progress: Vec<ProgressRow> = self.warehouse.fetch_all(sql, client.query(sql).bind(partition)).await?;
        let (next, reader) = match progress.first() {
            Some(row) => {
                let reader = match (row.fence_epoch, row.fence_claim_id.parse::<Uuid>()) {
                    (epoch, Ok(id)) if epoch >= 0 => FencedReader::resuming(partition, Epoch(epoch), id),
                    _ => FencedReader::new(partition),
                };
                (row.next_offset, reader)
            }
            None => (0, FencedReader::new(partition)),
        };
        let sql = "SELECT ledger_offset, toYYYYMM(occurred_at) AS month FROM ledger_entries \
                   WHERE ledger_partition = ? AND ledger_offset >= ?";
        let present_rows: Vec<PresentRow> =
            self.warehouse.fetch_all(sql, client.query(sql).bind(partition).bind(next)).await?;
        let mut months: Vec<u32> = present_rows.iter().map(|r| r.month).collect();
        months.sort_unstable();
        months.dedup();
        let mut rebuilt = Vec::new();
        for month in months {
            let key = PartitionKey { month, ledger_partition: partition };
            rollups::rebuild(&self.warehouse, key).await?;
            rebuilt.push(key);
        }
        let present: FxHashSet<i64> =
            if skip_present { FxHashSet::default() } else { present_rows.iter().map(|r| r.ledger_offset).collect() };
        let sql = "SELECT account_id, max(sequence) AS last_sequence, argMax(entry_id, sequence) AS last_entry_id \
                   FROM ledger_entries WHERE ledger_partition = ? AND ledger_offset < ? GROUP BY account_id";
        let high: Vec<HighWaterRow> =
            self.warehouse.fetch_all(sql, client.query(sql).bind(partition).bind(next)).await?;
        let high_water = high.into_iter().map(|r| (r.account_id, (r.sequence, r.entry_id))).collect();
        if !present.is_empty() {
            tracing::info!(
                partition,
                next,
                present = present.len(),
                "rows of an unfinished batch found in ClickHouse; they will not be inserted again"
            );
        }
        Ok(Resume { reader, next, present, high_water, rebuilt })
    }

    /// The claims of `claims` that are no longer in force.
    async fn superseded(&self, claims: &[Claim]) -> Result<Vec<i32>, WarehouseError> {
        let partitions: Vec<i32> = claims.iter().map(|c| c.partition).collect();
        let sql = "SELECT ledger_partition, epoch, claim_id, released FROM sink_claims WHERE has(?, ledger_partition) \
                   ORDER BY ledger_partition, epoch DESC, claim_id DESC, released DESC LIMIT 1 BY ledger_partition";
        let rows: Vec<(i32, i64, String, u8)> =
            self.warehouse.fetch_all(sql, self.warehouse.client().query(sql).bind(&partitions)).await?;
        Ok(claims
            .iter()
            .filter(|claim| {
                !rows.iter().any(|(p, epoch, id, released)| {
                    *p == claim.partition
                        && *epoch == claim.epoch
                        && *id == claim.claim_id.to_string()
                        && *released == 0
                })
            })
            .map(|c| c.partition)
            .collect())
    }

    /// Writes the batches of several ledger partitions (step 3): one INSERT
    /// per month holding every partition's rows of that month, then one
    /// INSERT of their new resume points. The claims are checked before
    /// every INSERT; a partition whose claim is no longer in force is left
    /// out from then on and reported. An INSERT may keep any subset of its
    /// rows when it fails (several partitions, a prefix): recovery reads
    /// back exactly what is present per partition, so no atomicity is
    /// assumed. `between` runs between the steps (fault injection).
    pub async fn flush(
        &self,
        batches: &[Batch<'_>],
        mut between: impl FnMut(&'static str),
    ) -> Result<FlushOutcome, WarehouseError> {
        let started = Instant::now();
        let mut live: Vec<Claim> = batches.iter().map(|b| b.claim).collect();
        let mut lost = Vec::new();
        let check = |lost: &mut Vec<i32>, live: &mut Vec<Claim>, gone: Vec<i32>| {
            live.retain(|c| !gone.contains(&c.partition));
            lost.extend(gone);
        };
        let gone = self.superseded(&live).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "flush: claims checked");
        check(&mut lost, &mut live, gone);
        // Encoding cannot fail here: the partition reader dead-letters what
        // does not encode before it queues a row.
        let encoded: Vec<LedgerRow<'_>> = batches
            .iter()
            .flat_map(|b| {
                b.rows.iter().filter_map(|(offset, entry)| LedgerRow::new(entry, b.claim.partition, *offset).ok())
            })
            .collect();
        let mut months: Vec<u32> = encoded.iter().map(LedgerRow::month).collect();
        months.sort_unstable();
        months.dedup();
        let mut inserted = 0usize;
        let mut inserts = 0usize;
        for (i, month) in months.iter().enumerate() {
            if i > 0 {
                between("month_boundary");
                // Checked again before every INSERT: an instance paused
                // between two INSERTs of a batch must not write the second
                // after a new owner resumed.
                let gone = self.superseded(&live).await?;
                check(&mut lost, &mut live, gone);
            }
            let partitions: Vec<i32> = live.iter().map(|c| c.partition).collect();
            let rows: Vec<&LedgerRow<'_>> =
                encoded.iter().filter(|r| r.month() == *month && partitions.contains(&r.partition())).collect();
            if rows.is_empty() {
                continue;
            }
            let sql = "INSERT INTO ledger_entries";
            let timeout = self.warehouse.config().timeout;
            let client = self.warehouse.client().clone().with_setting("query_id", self.query_id(&partitions));
            let count = self
                .warehouse
                .bounded(sql, async {
                    let mut insert = client
                        .insert::<LedgerRow<'_>>("ledger_entries")
                        .await?
                        .with_timeouts(Some(timeout), Some(timeout));
                    for (n, row) in rows.iter().enumerate() {
                        insert.write(*row).await?;
                        if n == 0 {
                            between("mid_insert");
                        }
                    }
                    insert.end().await?;
                    Ok(rows.len())
                })
                .await?;
            inserted += count;
            inserts += 1;
            tracing::debug!(month, rows = count, ms = started.elapsed().as_millis() as u64, "flush: rows inserted");
        }
        between("after_insert");
        let gone = self.superseded(&live).await?;
        check(&mut lost, &mut live, gone);
        let progress: Vec<ProgressRow> = batches
            .iter()
            .filter(|b| live.iter().any(|c| c.partition == b.claim.partition))
            .map(|b| ProgressRow {
                ledger_partition: b.claim.partition,
                next_offset: b.next,
                fence_epoch: b.fence.epoch().map_or(-1, |e| e.0),
                fence_claim_id: b.fence.claim_id().map(|id| id.to_string()).unwrap_or_default(),
                claim_epoch: b.claim.epoch,
                written_at: now_seconds(),
            })
            .collect();
        if !progress.is_empty() {
            let partitions: Vec<i32> = progress.iter().map(|p| p.ledger_partition).collect();
            let client = self.warehouse.client().clone().with_setting("query_id", self.query_id(&partitions));
            self.warehouse
                .bounded("INSERT INTO sink_progress", async {
                    let mut insert = client.insert::<ProgressRow>("sink_progress").await?;
                    for row in &progress {
                        insert.write(row).await?;
                    }
                    insert.end().await
                })
                .await?;
        }
        between("after_progress");
        tracing::debug!(rows = inserted, ms = started.elapsed().as_millis() as u64, "flush: resume points written");
        Ok(FlushOutcome { rows: inserted, inserts, superseded: lost })
    }
}

/// One ledger partition's part of a flush.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The claim it is written under.
    pub claim: Claim,
    /// Its rows, in offset order.
    pub rows: &'a [(i64, LedgerEntry)],
    /// Its resume point once written.
    pub next: i64,
    /// The ledger fence in force at `next`.
    pub fence: Fence,
}

/// What a flush did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Rows inserted.
    pub rows: usize,
    /// INSERT statements into ledger_entries (one per month).
    pub inserts: usize,
    /// Partitions whose claim was no longer in force: nothing more was
    /// written for them; they are no longer this instance's.
    pub superseded: Vec<i32>,
}
