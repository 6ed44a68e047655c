//! The rollups and how one of their partitions is rebuilt from the raw
//! table.
//!
//! Every rollup is a table filled by a materialized view
//! `<table>_mv TO <table>` over `ledger_entries`, partitioned like the raw
//! table by `(month, ledger_partition)`. Raw rows and each view commit
//! separately (measured: a failed INSERT can leave raw rows with a view
//! missing or partial), so after any INSERT whose outcome is unknown the
//! aggregator rebuilds the rollup partitions that INSERT touched, from raw:
//! the view's own query, restricted to the partition, into a scratch table
//! of the same structure, then `DROP PARTITION` and `ATTACH PARTITION ..
//! FROM` the scratch table, then a wait until the dropped parts are gone
//! from disk.
//!
//! Why not `REPLACE PARTITION`: it is atomic for readers but not durable
//! across a crash. Measured on 18.16: the replaced parts stay on disk as
//! outdated for `old_parts_lifetime` (480 s), the new part's block range
//! does not cover theirs, so a kill -9 of the server within those minutes
//! brings them back as active next to the new part, and the rollup counts
//! the partition twice. DROP + ATTACH alone is not enough either: the
//! source parts of a recent merge are outdated too, covered only by the
//! merged part the DROP removes, and came back the same way. So the rebuild
//! waits until no inactive part of the partition is left uncovered by an
//! active one; migration 003 gives the rollup tables
//! `old_parts_lifetime = 1`, which bounds that wait to seconds (measured
//! 5-10 s on 18.16 with the server's cleanup cadence). Current ClickHouse
//! removes or covers such parts at once. The price: readers may see the
//! partition empty between the DROP and the ATTACH (milliseconds), and a
//! crash between them leaves it empty until the next rebuild, which the
//! aggregator's recovery always runs (the rows that caused it are still
//! above its resume point) and an operator reruns with
//! `tally migrate --rebuild-rollups`.
//!
//! Invariant: the query that rebuilds a rollup is the query its view runs,
//! taken from the migrations (the latest `CREATE MATERIALIZED VIEW` of the
//! view), never a second copy. Those queries have no subquery, so the
//! restriction is one more condition in their `WHERE`.

pub use crate::rollup_check::{verify, RollupCheck};
use crate::{
    client::{Warehouse, WarehouseError},
    migrations::MIGRATIONS,
};

/// One rollup: its table, its view and the view's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    /// The table.
    pub table: String,
    /// The materialized view filling it.
    pub view: String,
    /// The view's query, whitespace collapsed.
    pub select: String,
}

impl Rollup {
    /// The view's query restricted by `condition` (a boolean SQL
    /// expression over `ledger_entries` columns).
    pub fn select_where(&self, condition: &str) -> String {
        let (head, tail) = match self.select.find(" GROUP BY ") {
            Some(at) => self.select.split_at(at),
            None => (self.select.as_str(), ""),
        };
        match head.find(" WHERE ") {
            Some(at) => {
                let (before, after) = head.split_at(at);
                let existing = &after[" WHERE ".len()..];
                format!("{before} WHERE ({condition}) AND ({existing}){tail}")
            }
            None => format!("{head} WHERE {condition}{tail}"),
        }
    }
}

/// Every rollup the migrations define, in the order they define them.
pub fn rollups() -> Vec<Rollup> {
    let mut found: Vec<Rollup> = Vec::new();
    for migration in MIGRATIONS {
        for statement in migration.statements() {
            let flat: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some(rest) = flat.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
                let mut words = rest.splitn(4, ' ');
                let (view, to, table, body) = (words.next(), words.next(), words.next(), words.next());
                if let (Some(view), Some("TO"), Some(table), Some(body)) = (view, to, table, body) {
                    let select = body.strip_prefix("AS ").unwrap_or(body).to_string();
                    found.retain(|r| r.table != table);
                    found.push(Rollup { table: table.to_string(), view: view.to_string(), select });
                }
            } else if let Some(view) = flat.strip_prefix("DROP TABLE IF EXISTS ") {
                found.retain(|r| r.view != view.trim());
            }
        }
    }
    found
}

/// The latest `CREATE TABLE` of `table` in the migrations, whitespace
/// collapsed.
pub fn latest_create_table(table: &str) -> Option<String> {
    let head = format!("CREATE TABLE IF NOT EXISTS {table} ");
    MIGRATIONS
        .iter()
        .flat_map(|migration| migration.statements())
        .map(|statement| statement.split_whitespace().collect::<Vec<_>>().join(" "))
        .rfind(|flat| flat.starts_with(&head))
}

/// The expression of `table`'s month in its partition key, from the
/// latest `CREATE TABLE` of it in the migrations: `PARTITION BY (<month>,
/// ledger_partition)`. Each rollup's month is its rows' `occurred_at` month,
/// the raw table's partition month.
pub fn month_expression(table: &str) -> Option<String> {
    let flat = latest_create_table(table)?;
    let key = flat.split_once("PARTITION BY (").map(|(_, rest)| rest)?;
    key.split_once(", ledger_partition)").map(|(month, _)| month.to_string())
}

/// A partition of the raw table and of every rollup: month x ledger
/// partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    /// `toYYYYMM`.
    pub month: u32,
    /// Ledger partition.
    pub ledger_partition: i32,
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.month, self.ledger_partition)
    }
}

/// Rebuilds partition `key` of every rollup from the raw table. The
/// caller makes sure nothing writes raw rows of that partition meanwhile
/// (the aggregator owning the ledger partition is paused in recovery; an
/// operator stops the aggregators before `tally migrate --rebuild-rollups`).
pub async fn rebuild(warehouse: &Warehouse, key: PartitionKey) -> Result<(), WarehouseError> {
    let plans: Vec<(Rollup, RebuildPlan)> = rollups()
        .into_iter()
        .map(|r| {
            let plan = rebuild_plan(&r, key);
            (r, plan)
        })
        .collect();
    for (rollup, plan) in &plans {
        swap(warehouse, plan).await?;
        tracing::debug!(rollup = %rollup.table, %key, "rollup partition swapped in from the raw table");
    }
    // One wait for every rollup of the partition (the cleanup that removes
    // the parts runs per table, concurrently).
    for (rollup, plan) in &plans {
        wait_for_dropped_parts(warehouse, rollup, plan, key).await?;
        warehouse.execute(&plan.drop_scratch).await?;
    }
    tracing::info!(%key, rollups = plans.len(), "rebuilt rollup partitions from the raw table, durably");
    Ok(())
}

/// The statements that rebuild partition `key` of `rollup`, in order:
/// `drop_scratch`, `create`, `fill`, `count`, `drop_partition`, then
/// `attach` when the count is above zero, `parts` polled until no dropped
/// part can come back, and `drop_scratch` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildPlan {
    /// Drops the scratch table.
    pub drop_scratch: String,
    /// Creates the scratch table like the rollup.
    pub create: String,
    /// Fills it with the view's query over the partition's raw rows.
    pub fill: String,
    /// Counts its rows.
    pub count: String,
    /// Empties the rollup's partition.
    pub drop_partition: String,
    /// Copies the scratch table's partition in.
    pub attach: String,
    /// The rollup's parts in the partition: `(active, min_block_number,
    /// max_block_number, rows)`.
    pub parts: String,
}

/// The plan of [`rebuild`] for one rollup.
pub fn rebuild_plan(rollup: &Rollup, key: PartitionKey) -> RebuildPlan {
    let PartitionKey { month, ledger_partition } = key;
    let tag = if ledger_partition < 0 { format!("m{}", -ledger_partition) } else { ledger_partition.to_string() };
    // A fresh scratch table per attempt: an INSERT ... SELECT of an earlier
    // attempt that its client gave up on may still finish on the server,
    // and must not land in this attempt's table.
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = format!("{}_rebuild_{month}_{tag}_{}_{attempt}", rollup.table, std::process::id());
    let condition = format!("toYYYYMM(occurred_at) = {month} AND ledger_partition = {ledger_partition}");
    let partition = format!("({month}, {ledger_partition})");
    RebuildPlan {
        drop_scratch: format!("DROP TABLE IF EXISTS {scratch}"),
        create: format!("CREATE TABLE {scratch} AS {}", rollup.table),
        fill: format!("INSERT INTO {scratch} {}", rollup.select_where(&condition)),
        count: format!("SELECT count() FROM {scratch}"),
        drop_partition: format!("ALTER TABLE {} DROP PARTITION {partition}", rollup.table),
        attach: format!("ALTER TABLE {} ATTACH PARTITION {partition} FROM {scratch}", rollup.table),
        parts: format!(
            "SELECT active, min_block_number, max_block_number, rows FROM system.parts \
             WHERE database = currentDatabase() AND table = '{}' AND partition_id = '{month}-{ledger_partition}'",
            rollup.table
        ),
    }
}

/// How long a rebuild waits for its dropped parts to leave the disk: the
/// rollups' `old_parts_lifetime` (1 s) plus 18.16's cleanup cadence, and a
/// query still reading a part holds it longer, so a generous bound.
const DROPPED_PARTS_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How many parts of `parts` could bring rows back at a restart: inactive,
/// not empty, and not covered by an active part's block range. ClickHouse
/// loads every part on disk at start and deactivates only covered ones.
/// (Current ClickHouse marks a DROP with an empty part covering the dropped
/// range; that one may come back, harmlessly.)
pub fn uncovered_inactive(parts: &[(u8, i64, i64, u64)]) -> usize {
    parts
        .iter()
        .filter(|(active, min, max, rows)| {
            *active == 0 && *rows > 0 && !parts.iter().any(|(a, lo, hi, _)| *a == 1 && lo <= min && max <= hi)
        })
        .count()
}

async fn swap(warehouse: &Warehouse, plan: &RebuildPlan) -> Result<(), WarehouseError> {
    warehouse.execute(&plan.drop_scratch).await?;
    warehouse.execute(&plan.create).await?;
    warehouse.execute(&plan.fill).await?;
    let rows: Vec<u64> = warehouse.fetch_all(&plan.count, warehouse.client().query(&plan.count)).await?;
    warehouse.execute(&plan.drop_partition).await?;
    // No raw rows: the rollup's partition stays empty (current ClickHouse
    // refuses an ATTACH from an empty source partition).
    if rows.first().copied().unwrap_or(0) > 0 {
        warehouse.execute(&plan.attach).await?;
    }
    Ok(())
}

async fn wait_for_dropped_parts(
    warehouse: &Warehouse,
    rollup: &Rollup,
    plan: &RebuildPlan,
    key: PartitionKey,
) -> Result<(), WarehouseError> {
    let deadline = std::time::Instant::now() + DROPPED_PARTS_WAIT;
    loop {
        let parts: Vec<(u8, i64, i64, u64)> =
            warehouse.fetch_all(&plan.parts, warehouse.client().query(&plan.parts)).await?;
        let lingering = uncovered_inactive(&parts);
        if lingering == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            // The partition is right now, but a server crash could bring
            // the dropped parts back: report it, so the caller rebuilds
            // again later rather than count this one done.
            return Err(WarehouseError::Unavailable {
                url: warehouse.config().url.clone(),
                what: format!("rebuild of {} partition {key}", rollup.table),
                detail: format!(
                    "{lingering} dropped parts still on disk after {DROPPED_PARTS_WAIT:?} \
                     (a long query reading them, or a table without migration 003's old_parts_lifetime?)"
                ),
            });
        }
        tracing::debug!(rollup = %rollup.table, %key, lingering, "waiting for dropped rollup parts to leave the disk");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Every (month, ledger partition) present in the raw table or in any
/// rollup, with months between `from` and `to` (`toYYYYMM`, inclusive).
pub async fn partitions(warehouse: &Warehouse, from: u32, to: u32) -> Result<Vec<PartitionKey>, WarehouseError> {
    let mut tables: Vec<String> = rollups().into_iter().map(|r| r.table).collect();
    tables.push("ledger_entries".into());
    let sql = "SELECT DISTINCT partition_id FROM system.parts WHERE active AND database = ? AND has(?, table)";
    let query = warehouse.client().query(sql).bind(&warehouse.config().database).bind(&tables);
    let ids: Vec<String> = warehouse.fetch_all(sql, query).await?;
    let mut keys: Vec<PartitionKey> = ids
        .iter()
        .filter_map(|id| {
            // A tuple key's partition id is its values joined by '-'.
            let (month, partition) = id.split_once('-')?;
            Some(PartitionKey { month: month.parse().ok()?, ledger_partition: partition.parse().ok()? })
        })
        .filter(|k| (from..=to).contains(&k.month))
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rollup_names_its_month_in_its_partition_key() {
        let months: Vec<(String, Option<String>)> =
            rollups().into_iter().map(|r| (r.table.clone(), month_expression(&r.table))).collect();
        let expected = [
            ("event_usage_hourly", "toYYYYMM(hour)"),
            ("event_entries", "toYYYYMM(occurred_at)"),
            ("service_hourly", "toYYYYMM(hour)"),
            ("finance_booked_daily", "month"),
            ("account_booked_daily", "month"),
        ];
        let expected: Vec<(String, Option<String>)> =
            expected.iter().map(|(t, m)| (t.to_string(), Some(m.to_string()))).collect();
        assert_eq!(months, expected);
        assert_eq!(month_expression("ledger_entries").as_deref(), Some("toYYYYMM(occurred_at)"));
    }

    #[test]
    fn every_rollup_has_a_view_query_without_subqueries() {
        let all = rollups();
        let tables: Vec<&str> = all.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(
            tables,
            ["event_usage_hourly", "event_entries", "service_hourly", "finance_booked_daily", "account_booked_daily"]
        );
        for rollup in &all {
            assert_eq!(rollup.view, format!("{}_mv", rollup.table));
            assert!(rollup.select.starts_with("SELECT "), "{}", rollup.select);
            assert!(rollup.select.contains(" FROM ledger_entries"), "a rollup reads only the raw table");
            assert_eq!(rollup.select.matches("SELECT").count(), 1, "no subquery: {}", rollup.select);
            assert!(rollup.select.matches(" WHERE ").count() <= 1);
            assert!(rollup.select.matches(" GROUP BY ").count() <= 1);
        }
    }

    #[test]
    fn the_restriction_joins_the_views_own_condition() {
        let r = |select: &str| Rollup { table: "t".into(), view: "t_mv".into(), select: select.into() };
        assert_eq!(
            r("SELECT a FROM ledger_entries WHERE x = 1 OR y = 2 GROUP BY a").select_where("p = 0"),
            "SELECT a FROM ledger_entries WHERE (p = 0) AND (x = 1 OR y = 2) GROUP BY a"
        );
        assert_eq!(
            r("SELECT a FROM ledger_entries GROUP BY a").select_where("p = 0"),
            "SELECT a FROM ledger_entries WHERE p = 0 GROUP BY a"
        );
        assert_eq!(
            r("SELECT a FROM ledger_entries WHERE x").select_where("p"),
            "SELECT a FROM ledger_entries WHERE (p) AND (x)"
        );
        assert_eq!(r("SELECT a FROM ledger_entries").select_where("p"), "SELECT a FROM ledger_entries WHERE p");
    }

    #[test]
    fn a_dropped_part_counts_until_an_active_part_covers_it() {
        // 18.16 after DROP + ATTACH: the attached part has new block numbers.
        assert_eq!(uncovered_inactive(&[(0, 1, 1, 5), (0, 2, 2, 5), (1, 4, 4, 9)]), 2);
        assert_eq!(uncovered_inactive(&[(1, 4, 4, 9)]), 0);
        // A merge: the merged part covers its sources.
        assert_eq!(uncovered_inactive(&[(0, 1, 1, 5), (0, 2, 2, 5), (1, 1, 2, 9)]), 0);
        assert_eq!(uncovered_inactive(&[(0, 1, 3, 5), (1, 1, 2, 9)]), 1);
        // Current ClickHouse: the empty part marking a DROP.
        assert_eq!(uncovered_inactive(&[(0, 1, 2, 0), (1, 3, 3, 9)]), 0);
        assert_eq!(uncovered_inactive(&[]), 0);
    }

    #[test]
    fn a_rebuild_drops_then_attaches_never_replaces() {
        let rollup = Rollup { table: "t".into(), view: "t_mv".into(), select: "SELECT a FROM ledger_entries".into() };
        let plan = rebuild_plan(&rollup, PartitionKey { month: 202612, ledger_partition: 3 });
        assert_eq!(plan.drop_partition, "ALTER TABLE t DROP PARTITION (202612, 3)");
        assert!(plan.attach.starts_with("ALTER TABLE t ATTACH PARTITION (202612, 3) FROM t_rebuild_202612_3_"));
        assert!(plan.parts.ends_with("table = 't' AND partition_id = '202612-3'"), "{}", plan.parts);
        assert!(plan.fill.ends_with("WHERE toYYYYMM(occurred_at) = 202612 AND ledger_partition = 3"));
    }
}
