//! The schema and every named query on current ClickHouse too.
//!
//! Production runs current ClickHouse; these machines install 18.16. One
//! plan (every migration statement, a fixture of ledger rows, a rollup
//! rebuild exactly as the aggregator runs it, every named query with its
//! parameters bound by the client as `tally query` binds them) runs on the
//! 18.16 server and on ClickHouse 26.x embedded by chDB (PyPI), and the
//! answers must be the same values (decimal text differs: `2.500000` on
//! 18.16, `2.5` on 26.x, so values are compared, not text).
//!
//! Needs Python with chdb: `deploy/local/install.sh python` puts one under
//! `~/.cache/tally/python` (`TALLY_PYTHON` names another). Without it the
//! test fails, saying so.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, ensure, Context, Result};
use rust_decimal::Decimal;
use tally_testkit::ClickHouse;
use tally_warehouse::{
    finance::{self, DayBasis},
    migrations::MIGRATIONS,
    queries, rollups, Warehouse, WarehouseConfig,
};

fn python() -> Result<PathBuf> {
    let python = match std::env::var_os("TALLY_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("TALLY_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tally"));
            cache.join("python/bin/python")
        }
    };
    let ok = Command::new(&python).args(["-c", "import chdb"]).output().is_ok_and(|o| o.status.success());
    ensure!(
        ok,
        "no Python with chdb at {} (run deploy/local/install.sh python, or set TALLY_PYTHON)",
        python.display()
    );
    Ok(python)
}

const FIXTURE: &str = "INSERT INTO ledger_entries (ledger_partition, ledger_offset, entry_id, account_id, sequence, \
    entry_type, status, reason, service, engine, photo_event_id, quantity, credits, dollars, tier, balance_after, \
    occurred_at, occurred_ms) VALUES \
    (0, 1, '00000000-0000-0000-0000-000000000001', 'op-1', 1, 'Add', 'Success', '', '', '', '', 0, 1000, 120.00, 'PAYG', 1000, '2026-11-30 22:00:00', 5), \
    (0, 2, '00000000-0000-0000-0000-000000000002', 'op-1', 2, 'Consume', 'Success', '', 'ai_modify', 'nano_banana_2', 'gala', 1, 2.5, 0.30, 'PAYG', 997.5, '2026-11-30 23:30:00', 10), \
    (0, 3, '00000000-0000-0000-0000-000000000003', 'op-1', 3, 'Consume', 'Failed', 'job_failed', 'ai_image_to_video', 'kling', 'gala', 7.5, 15, 1.80, 'PAYG', 997.5, '2026-12-01 00:15:00', 0), \
    (0, 4, '00000000-0000-0000-0000-000000000004', 'op-1', 4, 'Consume', 'Success', '', 'ai_image_to_video', 'kling', 'gala', 7.5, 15, 1.80, 'PAYG', 982.5, '2026-12-01 00:20:00', 999), \
    (1, 1, '00000000-0000-0000-0000-000000000005', 'op-2', 1, 'Add', 'Success', '', '', '', '', 0, 500.1234, 40.00, 'Pro', 500.1234, '2026-12-01 08:00:00', 0), \
    (1, 2, '00000000-0000-0000-0000-000000000006', 'op-2', 2, 'Consume', 'Success', '', 'sms', 'standard', 'expo', 3, 0.000003, 0.00, 'Pro', 500.123397, '2026-12-02 09:00:00', 0)";

/// The plan: (name, SQL), run in order on both engines.
fn plan(warehouse: &Warehouse, fingerprints: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let mut steps = Vec::new();
    for migration in MIGRATIONS {
        for (i, statement) in migration.statements().into_iter().enumerate() {
            steps.push((format!("migration {:03} #{i}", migration.version), statement));
        }
    }
    steps.push(("fixture".into(), FIXTURE.into()));
    // A rollup rebuild as the aggregator runs it, for a partition with rows
    // and for one without: every swap, then one wait, then the parts.
    let mut checks = Vec::new();
    for (month, ledger_partition, has_rows) in [(202612, 0, true), (202610, 0, false)] {
        for rollup in rollups::rollups() {
            let plan = rollups::rebuild_plan(&rollup, rollups::PartitionKey { month, ledger_partition });
            let mut rebuild = vec![
                ("drop", plan.drop_scratch.clone()),
                ("create", plan.create),
                ("fill", plan.fill),
                ("drop_partition", plan.drop_partition),
            ];
            if has_rows {
                rebuild.push(("attach", plan.attach));
            }
            for (step, sql) in rebuild {
                steps.push((format!("rebuild {} {month} {step}", rollup.table), sql));
            }
            checks.push((format!("rebuild {} {month} parts", rollup.table), plan.parts));
            checks.push((format!("rebuild {} {month} drop", rollup.table), plan.drop_scratch));
        }
    }
    // A few seconds after the swaps no dropped part may be left that a
    // restart would bring back (checked on both engines below): the
    // rollups' old_parts_lifetime is 1 s; 26.x removes them in its cleanup.
    steps.push(("rebuild wait".into(), "SELECT sleep(3)".into()));
    steps.extend(checks);
    // Every rollup's fingerprint, rollup side and raw side (the month of
    // the rows): equal on each engine (checked below).
    steps.extend(fingerprints.iter().cloned());
    let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 2).context("date")?;
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("balance", &[("account", "op-1")]),
        ("activity", &[("account", "op-1")]),
        ("activity", &[("account", "op-1"), ("status", "Failed"), ("service", "ai_image_to_video")]),
        ("activity", &[("account", "op-1"), ("before_sequence", "3"), ("limit", "1"), ("tz", "America/New_York")]),
        ("timeline", &[("account", "op-1"), ("from", "2026-11-01"), ("to", "2026-12-31")]),
        ("timeline", &[("account", "op-1"), ("from", "2026-11-30"), ("to", "2026-12-01"), ("bucket", "hour")]),
        (
            "timeline",
            &[
                ("account", "op-1"),
                ("from", "2026-11-23"),
                ("to", "2026-12-06"),
                ("bucket", "week"),
                ("tz", "Europe/Berlin"),
            ],
        ),
        ("event_credits", &[("event", "gala")]),
        ("event_activity", &[("event", "gala"), ("bucket", "day"), ("tz", "Europe/Berlin")]),
        ("event_ledger", &[("event", "gala"), ("limit", "2")]),
        (
            "event_ledger",
            &[("event", "gala"), ("before_ms", "1796084100000"), ("before_account", "op-1"), ("before_sequence", "3")],
        ),
        ("usage", &[("from", "2026-11-01"), ("to", "2026-12-31"), ("bucket", "month")]),
        ("usage", &[("from", "2026-11-30"), ("to", "2026-12-02"), ("bucket", "day"), ("account", "op-2")]),
        ("finance_day", &[("date", "2026-12-01")]),
    ];
    for (name, params) in cases {
        let query = queries::find(name)?;
        let given: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (bound, _) = query.prepare(warehouse.client(), &given, today)?;
        steps.push((format!("query {name} {params:?}"), bound.sql_display().to_string()));
    }
    // tally finance daily's queries, booked and occurred days, two zones.
    for (basis, zone) in [(DayBasis::Booked, "UTC"), (DayBasis::Occurred, "Europe/Berlin")] {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).context("date")?;
        for (i, query) in finance::day_queries(warehouse.client(), date, zone, basis)?.iter().enumerate() {
            steps.push((format!("query finance day {basis:?} {zone} #{i}"), query.sql_display().to_string()));
        }
    }
    // tally reconcile's range reads of the raw table.
    let (first, last) = (
        chrono::NaiveDate::from_ymd_opt(2026, 11, 30).context("date")?,
        chrono::NaiveDate::from_ymd_opt(2026, 12, 1).context("date")?,
    );
    let days = tally_warehouse::reconcile::days_query(warehouse.client(), first, last);
    // Unordered by design (reconcile sorts); ordered here to compare.
    let days = format!("SELECT * FROM ({}) ORDER BY day, account_id, service", days.sql_display());
    steps.push(("query reconcile days".into(), days));
    let accounts = finance::account_days_query(warehouse.client(), first, last);
    steps.push(("query reconcile account days".into(), accounts.sql_display().to_string()));
    // Every named query is in the plan.
    for (name, _) in queries::FILES {
        ensure!(cases.iter().any(|(n, _)| n == name), "query {name} has no case");
    }
    Ok(steps)
}

/// The fingerprint queries of `tally reconcile`'s rollup check
/// (`tally_warehouse::rollup_check`) for December 2026, built from the
/// tables the migrations make on 18.16 (in a probe database), named
/// `fingerprint TABLE rollup|raw`.
async fn fingerprint_steps(server: &ClickHouse) -> Result<Vec<(String, String)>> {
    server.query("CREATE DATABASE probe")?;
    let probe =
        Warehouse::new(WarehouseConfig { url: server.url(), database: "probe".into(), ..WarehouseConfig::default() });
    tally_warehouse::migrations::migrate(&probe, |_| {}).await?;
    let mut steps = Vec::new();
    for (rollup, plan) in tally_warehouse::rollup_check::plans(&probe).await? {
        let (stored, raw) = plan.queries(202612);
        steps.push((format!("fingerprint {} rollup", rollup.table), stored));
        steps.push((format!("fingerprint {} raw", rollup.table), raw));
    }
    server.query("DROP DATABASE probe")?;
    Ok(steps)
}

/// Values of a TSV answer, decimals normalized (`2.500000` = `2.5`).
fn values(tsv: &str) -> Vec<Vec<String>> {
    tsv.lines()
        .map(|line| {
            line.split('\t')
                .map(|field| match field.parse::<Decimal>() {
                    Ok(d) if field.contains('.') => d.normalize().to_string(),
                    _ => field.to_string(),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schema_and_every_named_query_run_alike_on_18_16_and_current_clickhouse() -> Result<()> {
    let python = python()?;
    let server = ClickHouse::start()?;
    server.query("CREATE DATABASE tally")?;
    let warehouse = Warehouse::new(WarehouseConfig { url: server.url(), ..WarehouseConfig::default() });
    let steps = plan(&warehouse, &fingerprint_steps(&server).await?)?;
    // 18.16.
    let mut old = Vec::new();
    for (name, sql) in &steps {
        let answer = warehouse.fetch_tsv(warehouse.client().query(sql), sql).await;
        old.push(answer.map_err(|e| format!("{name}: {e}")));
    }
    // 26.x in chDB.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chdb/run_plan.py");
    let input: Vec<serde_json::Value> =
        steps.iter().map(|(name, sql)| serde_json::json!({"name": name, "sql": sql})).collect();
    let mut child = Command::new(&python).arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(serde_json::to_string(&input)?.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "chdb plan runner failed");
    let new: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    ensure!(new.len() == steps.len(), "chdb answered {} of {} steps", new.len(), steps.len());
    let mut problems = Vec::new();
    let mut queries_compared = 0;
    let mut parts_seen = 0;
    let mut fingerprints: BTreeMap<(&str, String), Vec<String>> = BTreeMap::new();
    for (((name, _), old), new) in steps.iter().zip(&old).zip(&new) {
        let new_ok = new["ok"].as_bool() == Some(true);
        match (old, new_ok) {
            (Err(e), _) => problems.push(format!("18.16 refused {e}")),
            (Ok(_), false) => problems.push(format!("26.x refused {name}: {}", new["error"])),
            (Ok(old_text), true) if name.starts_with("query") => {
                queries_compared += 1;
                // 18.16's answer has names and types; chdb's names only.
                let mut old_values = values(old_text);
                if old_values.len() > 1 {
                    old_values.remove(1);
                }
                let new_values = values(new["output"].as_str().unwrap_or_default());
                if old_values != new_values {
                    problems.push(format!("{name}: 18.16 {old_values:?} vs 26.x {new_values:?}"));
                }
                eprintln!("[clickhouse_current] {name}: {} rows alike", old_values.len().saturating_sub(1));
            }
            (Ok(old_text), true) if name.ends_with(" parts") => {
                // Nothing else reads the table here, so the dropped parts
                // are gone at once on both engines.
                for (engine, text) in [("18.16", old_text.as_str()), ("26.x", new["output"].as_str().unwrap_or(""))] {
                    let parts: Vec<(u8, i64, i64, u64)> = values(text)
                        .iter()
                        .filter_map(|row| {
                            let field = |i: usize| row.get(i)?.parse::<i64>().ok();
                            Some((field(0)? as u8, field(1)?, field(2)?, field(3)? as u64))
                        })
                        .collect();
                    parts_seen += parts.len();
                    if rollups::uncovered_inactive(&parts) > 0 {
                        problems.push(format!(
                            "{name}: {engine} keeps dropped parts that a restart would revive: {parts:?}"
                        ));
                    }
                }
            }
            (Ok(old_text), true) if name.starts_with("fingerprint ") => {
                // The fingerprint (second column of the one row; 18.16 also
                // has a types line) by engine and table, rollup then raw.
                let table = name.split(' ').nth(1).unwrap_or_default().to_string();
                for (engine, text, row) in
                    [("18.16", old_text.as_str(), 2), ("26.x", new["output"].as_str().unwrap_or(""), 1)]
                {
                    let value = text.lines().nth(row).and_then(|l| l.split('\t').nth(1)).unwrap_or_default();
                    fingerprints.entry((engine, table.clone())).or_default().push(value.to_string());
                }
            }
            (Ok(_), true) => {}
        }
    }
    for ((engine, table), sides) in &fingerprints {
        if sides.len() != 2 || sides[0] != sides[1] || sides[0].is_empty() {
            problems.push(format!("{engine}: rollup {table} and its raw rows fingerprint differently: {sides:?}"));
        }
    }
    assert_eq!(fingerprints.len(), 2 * rollups::rollups().len(), "every rollup fingerprinted on both engines");
    if !problems.is_empty() {
        bail!("the engines differ:\n  {}", problems.join("\n  "));
    }
    assert_eq!(queries_compared, 20, "14 named-query cases, 4 finance queries and 2 of reconcile");
    // Every rollup has a part in the partition rebuilt with rows, on both.
    assert!(parts_seen >= 2 * rollups::rollups().len(), "parts of the rebuilt partitions seen: {parts_seen}");
    Ok(())
}

/// The BI user of deploy/local/clickhouse/users.xml reads tally's tables and
/// can change nothing (docs/BI.md gives the SQL form for current versions).
#[tokio::test(flavor = "multi_thread")]
async fn the_bi_user_reads_and_cannot_write() -> Result<()> {
    let server = ClickHouse::start()?;
    let admin = Warehouse::new(WarehouseConfig { url: server.url(), ..WarehouseConfig::default() });
    tally_warehouse::migrations::migrate(&admin, |_| {}).await?;
    admin.execute(FIXTURE).await?;
    let bi = Warehouse::new(WarehouseConfig {
        url: server.url(),
        user: "tally_bi".into(),
        password: "tally-bi-local".into(),
        ..WarehouseConfig::default()
    });
    let sql = "SELECT count() FROM ledger_entries";
    let rows: Vec<u64> = bi.fetch_all(sql, bi.client().query(sql)).await?;
    assert_eq!(rows, [6], "BI reads the raw table");
    let (query, sql) = queries::find("event_credits")?.prepare(
        bi.client(),
        &[("event".to_string(), "gala".to_string())].into(),
        chrono::NaiveDate::from_ymd_opt(2026, 12, 2).context("date")?,
    )?;
    assert!(bi.fetch_tsv(query, &sql).await?.contains("kling"), "and runs the named queries");
    for write in [
        "INSERT INTO ledger_entries (account_id) VALUES ('x')",
        "DROP TABLE ledger_entries",
        "ALTER TABLE ledger_entries DELETE WHERE 1",
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
    ] {
        let refused = bi.execute(write).await;
        assert!(
            matches!(&refused, Err(tally_warehouse::WarehouseError::Refused { detail, .. }) if detail.contains("readonly") || detail.contains("Cannot execute query in readonly mode") || detail.contains("Code: 164")),
            "{write}: {refused:?}"
        );
    }
    let other = bi.execute("SELECT 1 FROM default.nothing").await;
    assert!(other.is_err(), "no other database");
    let count: Vec<u64> = admin.fetch_all(sql_count(), admin.client().query(sql_count())).await?;
    assert_eq!(count, [6], "nothing changed");
    Ok(())
}

fn sql_count() -> &'static str {
    "SELECT count() FROM ledger_entries"
}
