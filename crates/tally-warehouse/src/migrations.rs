//! Versioned schema migrations (`schemas/clickhouse/migrations/NNN_name.sql`),
//! built into the binary and applied by `tally migrate`.
//!
//! Invariants:
//! - each migration runs once per database, in version order, and is
//!   recorded in `tally_migrations` with a checksum of its text after it
//!   ran to the end; a statement that fails stops the run with nothing
//!   recorded for that migration, and every statement is written to be run
//!   again (`IF NOT EXISTS`), so running `tally migrate` again resumes it;
//! - a migration whose text changed after it ran is refused (the database
//!   would not be what the file says): write a new migration instead;
//! - a database with a migration this build does not know is refused by
//!   [`check`] (an older binary must not write to a newer schema).
//!
//! ClickHouse 18.16 has no `ALTER .. ADD COLUMN IF NOT EXISTS` and no
//! `MODIFY QUERY`: a later migration adds columns after reading
//! `system.columns`, and changes a view by dropping and creating it.

use crate::client::{Warehouse, WarehouseError};

/// One migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Version, from the file name.
    pub version: u32,
    /// Name, from the file name.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

/// Every migration, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger_entries",
        sql: include_str!("../../../schemas/clickhouse/migrations/001_ledger_entries.sql"),
    },
    Migration {
        version: 2,
        name: "rollups",
        sql: include_str!("../../../schemas/clickhouse/migrations/002_rollups.sql"),
    },
    Migration {
        version: 3,
        name: "rollup_part_lifetime",
        sql: include_str!("../../../schemas/clickhouse/migrations/003_rollup_part_lifetime.sql"),
    },
    Migration {
        version: 4,
        name: "service_hourly",
        sql: include_str!("../../../schemas/clickhouse/migrations/004_service_hourly.sql"),
    },
    Migration {
        version: 5,
        name: "booked_days",
        sql: include_str!("../../../schemas/clickhouse/migrations/005_booked_days.sql"),
    },
];

/// A migration whose text holds this recreates rollup tables: `migrate`
/// refills every rollup partition from the raw table after its statements
/// and before it records it, so a crash in between runs it all again.
const REBUILDS_ROLLUPS: &str = "tally: rebuild rollups";

impl Migration {
    /// Checksum of the text: 32 hex digits of XXH3-128.
    pub fn checksum(&self) -> String {
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(self.sql.as_bytes()))
    }

    /// The statements, without comment lines, in order.
    pub fn statements(&self) -> Vec<String> {
        statements(self.sql)
    }
}

/// Splits SQL text into statements: `--` comment lines dropped, split at
/// `;` (tally's migrations hold no `;` inside literals).
pub fn statements(sql: &str) -> Vec<String> {
    let text: Vec<&str> = sql.lines().filter(|line| !line.trim_start().starts_with("--")).collect();
    text.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The table and column of an `ALTER TABLE t ADD COLUMN c ...` statement:
/// 18.16 has no `IF NOT EXISTS` there, so [`migrate`] asks
/// `system.columns` first and a migration run again after a crash skips it.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let head: Vec<&str> = words.by_ref().take(2).collect();
    if head != ["ALTER", "TABLE"] {
        return None;
    }
    let table = words.next()?;
    let verb: Vec<&str> = words.by_ref().take(2).collect();
    if verb != ["ADD", "COLUMN"] {
        return None;
    }
    Some((table, words.next()?))
}

async fn has_column(warehouse: &Warehouse, table: &str, column: &str) -> Result<bool, WarehouseError> {
    let sql = "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?";
    let query = warehouse.client().query(sql).bind(&warehouse.config().database).bind(table).bind(column);
    let found: Vec<u64> = warehouse.fetch_all(sql, query).await?;
    Ok(found.first().copied().unwrap_or(0) > 0)
}

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS tally_migrations \
    (version UInt32, name String, checksum String, applied_at DateTime('UTC')) \
    ENGINE = MergeTree ORDER BY version";

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Migrations applied now.
    pub applied: Vec<(u32, &'static str)>,
    /// Migrations found applied already.
    pub already: Vec<(u32, &'static str)>,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize, serde::Serialize)]
struct AppliedRow {
    version: u32,
    name: String,
    checksum: String,
    applied_at: u32,
}

async fn applied(warehouse: &Warehouse) -> Result<Vec<AppliedRow>, WarehouseError> {
    let sql = "SELECT version, name, checksum, toUInt32(applied_at) FROM tally_migrations ORDER BY version";
    warehouse.fetch_all(sql, warehouse.client().query(sql)).await
}

fn compare(known: &Migration, row: &AppliedRow) -> Result<(), WarehouseError> {
    if row.checksum != known.checksum() {
        return Err(WarehouseError::Schema(format!(
            "migration {:03}_{} changed after it ran (recorded checksum {}, file {}): \
             never edit an applied migration, add a new one",
            known.version,
            known.name,
            row.checksum,
            known.checksum()
        )));
    }
    Ok(())
}

/// Creates the database if needed and applies every migration not applied
/// yet, in order; `progress` is told of each.
pub async fn migrate(warehouse: &Warehouse, mut progress: impl FnMut(&str)) -> Result<MigrateReport, WarehouseError> {
    let database = &warehouse.config().database;
    if !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || database.is_empty() {
        return Err(WarehouseError::Schema(format!("database name {database:?} must be letters, digits and _")));
    }
    let create = format!("CREATE DATABASE IF NOT EXISTS {database}");
    warehouse.bounded(&create, warehouse.without_database().query(&create).execute()).await?;
    warehouse.execute(BOOKKEEPING).await?;
    let done = applied(warehouse).await?;
    let mut report = MigrateReport::default();
    for migration in MIGRATIONS {
        if let Some(row) = done.iter().find(|r| r.version == migration.version) {
            compare(migration, row)?;
            report.already.push((migration.version, migration.name));
            continue;
        }
        progress(&format!("applying {:03}_{}", migration.version, migration.name));
        for statement in migration.statements() {
            if let Some((table, column)) = added_column(&statement) {
                if has_column(warehouse, table, column).await? {
                    // Added by an earlier run that stopped before the
                    // migration was recorded.
                    continue;
                }
            }
            warehouse.execute(&statement).await?;
        }
        if migration.sql.contains(REBUILDS_ROLLUPS) {
            let keys = crate::rollups::partitions(warehouse, 0, u32::MAX).await?;
            for (i, key) in keys.iter().enumerate() {
                crate::rollups::rebuild(warehouse, *key).await?;
                progress(&format!("  refilled rollup partition {key} from raw [{}/{}]", i + 1, keys.len()));
            }
        }
        let mut insert = warehouse
            .client()
            .insert::<AppliedRow>("tally_migrations")
            .await
            .map_err(|e| warehouse.error("INSERT INTO tally_migrations", e))?;
        // When a migration ran is bookkeeping, not ledger time.
        #[allow(clippy::disallowed_methods)]
        let now = chrono::Utc::now();
        let row = AppliedRow {
            version: migration.version,
            name: migration.name.to_string(),
            checksum: migration.checksum(),
            applied_at: now.timestamp().clamp(0, i64::from(u32::MAX)) as u32,
        };
        warehouse
            .bounded("INSERT INTO tally_migrations", async {
                insert.write(&row).await?;
                insert.end().await
            })
            .await?;
        report.applied.push((migration.version, migration.name));
    }
    if let Some(newer) = done.iter().find(|r| !MIGRATIONS.iter().any(|m| m.version == r.version)) {
        return Err(unknown(newer));
    }
    Ok(report)
}

fn unknown(row: &AppliedRow) -> WarehouseError {
    WarehouseError::Schema(format!(
        "the database has migration {:03}_{} that this build does not know: run a newer tally",
        row.version, row.name
    ))
}

/// Checks that the database has exactly this build's migrations, unchanged:
/// what a service runs before it writes.
pub async fn check(warehouse: &Warehouse) -> Result<(), WarehouseError> {
    let done = applied(warehouse).await.map_err(|e| match e {
        WarehouseError::Refused { detail, .. } if detail.contains("60") || detail.contains("81") => {
            WarehouseError::Schema(format!(
                "database {} has no tally schema yet: run `tally migrate` ({detail})",
                warehouse.config().database
            ))
        }
        other => other,
    })?;
    for migration in MIGRATIONS {
        match done.iter().find(|r| r.version == migration.version) {
            Some(row) => compare(migration, row)?,
            None => {
                return Err(WarehouseError::Schema(format!(
                    "migration {:03}_{} has not run on database {}: run `tally migrate`",
                    migration.version,
                    migration.name,
                    warehouse.config().database
                )))
            }
        }
    }
    if let Some(newer) = done.iter().find(|r| !MIGRATIONS.iter().any(|m| m.version == r.version)) {
        return Err(unknown(newer));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_in_order_and_statements_split() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1, "versions are 1, 2, ... with no gap");
            let statements = migration.statements();
            assert!(!statements.is_empty());
            for s in statements {
                assert!(s.starts_with("CREATE") || s.starts_with("DROP") || s.starts_with("ALTER"), "{s}");
            }
        }
        assert_eq!(statements("-- a; b\nCREATE x;\n\nCREATE y"), ["CREATE x", "CREATE y"]);
        assert_eq!(
            added_column("ALTER TABLE ledger_entries ADD COLUMN booked_at DateTime('UTC') DEFAULT occurred_at"),
            Some(("ledger_entries", "booked_at"))
        );
        assert_eq!(added_column("ALTER TABLE t DROP PARTITION 1"), None);
        assert_eq!(added_column("CREATE TABLE t (a UInt8) ENGINE = Log"), None);
    }

    #[test]
    fn checksums_are_stable() {
        let m = Migration { version: 9, name: "x", sql: "CREATE TABLE t (a UInt8) ENGINE = Log" };
        assert_eq!(m.checksum(), m.checksum());
        assert_eq!(m.checksum().len(), 32);
    }
}
