//! The Grafana dashboards of `deploy/grafana/`, generated here so they
//! cannot drift from what they show:
//!
//! - `business.json` (ClickHouse, `grafana-clickhouse-datasource`): each
//!   panel's SQL is a named query's (`schemas/clickhouse/queries/`) with a
//!   Grafana variable, or a fixed value, in place of each `{param}`;
//! - `pipeline.json` (Prometheus): throughput, lag, dead letters by reason,
//!   insert latency, over the recording rules of `deploy/prometheus/`.
//!
//! The tests fail if a committed file differs from what this generates, if
//! a business panel's SQL is not its named query's, or if a pipeline
//! expression does not parse (promtool) or names a metric that is neither
//! in the README's Metrics table nor a recording rule. After changing a
//! query or a panel: `TALLY_BLESS=1 cargo test -p tally-e2e --test grafana`
//! rewrites the files; review the diff.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tally_warehouse::queries::{self, NamedQuery};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// What stands in a panel's SQL for parameter `param` of query `query`.
/// Text is quoted by Grafana's `sqlstring` format (doubles `'`); dates are
/// the time picker's range; paging starts at the first page; `limit` is
/// fixed, since a number spliced from a URL could be anything.
fn grafana_value(query: &str, param: &queries::Param) -> Result<String> {
    Ok(match (query, param.name.as_str()) {
        (_, "from") => "'${__from:date:YYYY-MM-DD}'".into(),
        (_, "to") | ("finance_day", "date") => "'${__to:date:YYYY-MM-DD}'".into(),
        (_, "bucket") => format!("${{{query}_bucket:sqlstring}}"),
        (_, "before_sequence" | "before_ms") => "0".into(),
        (_, "before_account" | "after_account") => "''".into(),
        (_, "limit") => "100".into(),
        // A dashboard table of a day's finance: its first 1,000 accounts
        // (the whole day is `tally finance daily`).
        ("finance_day", "accounts") => "1000".into(),
        (_, "account" | "event" | "service" | "status" | "type" | "tz") => format!("${{{}:sqlstring}}", param.name),
        _ => bail!("query {query}: no Grafana value for param {} ({:?})", param.name, param.kind),
    })
}

/// A named query's SQL as a panel runs it.
fn panel_sql(query: &NamedQuery) -> Result<String> {
    let mut sql = query.sql.clone();
    for param in &query.params {
        sql = sql.replace(&format!("{{{}}}", param.name), &grafana_value(query.name, param)?);
    }
    // Every `{` left is a Grafana variable's `${`.
    if sql.replace("${", "").contains('{') {
        bail!("query {}: a {{param}} is left in\n{sql}", query.name);
    }
    Ok(sql)
}

const CLICKHOUSE: &str = "grafana-clickhouse-datasource";

/// One business panel: a named query's result as a table, bar chart, pie
/// chart or stat.
fn business_panel(id: u32, query: &str, title: &str, kind: &str, grid: [u32; 4], options: Value) -> Result<Value> {
    let named = queries::find(query)?;
    let [x, y, w, h] = grid;
    Ok(json!({
        "id": id,
        "type": kind,
        "title": title,
        "description": format!("Named query `{query}` (schemas/clickhouse/queries/{query}.sql): {}", named.about),
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": {"type": CLICKHOUSE, "uid": "${datasource}"},
        "options": options,
        "targets": [{
            "refId": "A",
            "datasource": {"type": CLICKHOUSE, "uid": "${datasource}"},
            "editorType": "sql",
            "queryType": "table",
            // 1: table. The named queries return their buckets as text.
            "format": 1,
            "rawSql": panel_sql(&named)?,
        }],
    }))
}

fn custom_variable(name: &str, label: &str, values: &[&str]) -> Value {
    let options: Vec<Value> =
        values.iter().enumerate().map(|(i, v)| json!({"text": v, "value": v, "selected": i == 0})).collect();
    json!({
        "type": "custom", "name": name, "label": label, "query": values.join(","),
        "current": {"text": values[0], "value": values[0]}, "options": options,
    })
}

fn textbox(name: &str, label: &str, default: &str) -> Value {
    json!({
        "type": "textbox", "name": name, "label": label, "query": default,
        "current": {"text": default, "value": default},
    })
}

fn business() -> Result<Value> {
    let table = json!({"showHeader": true});
    let bars =
        |x: &str| json!({"xField": x, "stacking": "none", "legend": {"showLegend": true, "displayMode": "list"}});
    let panels = vec![
        business_panel(
            1,
            "balance",
            "Balance",
            "stat",
            [0, 0, 8, 5],
            json!({"reduceOptions": {"values": true, "calcs": [], "fields": "/^balance$|^tier$|^paused$/"}, "textMode": "value_and_name"}),
        )?,
        business_panel(2, "timeline", "Activity timeline", "barchart", [8, 0, 16, 9], bars("bucket_start"))?,
        business_panel(3, "activity", "Activity (newest first)", "table", [0, 9, 24, 10], table.clone())?,
        business_panel(
            4,
            "usage",
            "Credits by service and engine (all accounts if Account is empty)",
            "table",
            [0, 19, 24, 9],
            table.clone(),
        )?,
        business_panel(
            5,
            "event_credits",
            "Event: credits by engine",
            "piechart",
            [0, 28, 8, 10],
            json!({"reduceOptions": {"values": true, "calcs": [], "fields": "/^credits$/"}, "pieType": "donut",
                   "displayLabels": ["name", "percent"], "legend": {"showLegend": true, "displayMode": "table"}}),
        )?,
        business_panel(
            6,
            "event_activity",
            "Event: usage over time",
            "barchart",
            [8, 28, 16, 10],
            bars("bucket_start"),
        )?,
        business_panel(7, "event_ledger", "Event: jobs (newest first)", "table", [0, 38, 24, 10], table.clone())?,
        business_panel(8, "finance_day", "Finance: the day at the range's end (UTC)", "table", [0, 48, 24, 10], table)?,
    ];
    let variables = vec![
        json!({"type": "datasource", "name": "datasource", "label": "ClickHouse", "query": CLICKHOUSE}),
        textbox("account", "Account", ""),
        textbox("event", "Photo-booth event", ""),
        textbox("service", "Service (empty: all)", ""),
        custom_variable("status", "Status", &["any", "Success", "Failed"]),
        custom_variable("type", "Entry type", &["any", "Open", "Consume", "Add", "Update", "Forfeit"]),
        custom_variable("tz", "Time zone", &["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]),
        custom_variable("timeline_bucket", "Timeline bucket", &["month", "week", "day", "hour"]),
        custom_variable("usage_bucket", "Usage bucket", &["day", "week", "month"]),
        custom_variable("event_activity_bucket", "Event bucket", &["hour", "day"]),
    ];
    Ok(dashboard("tally-business", "tally: business (ClickHouse)", "now/y", panels, variables))
}

const PROMETHEUS: &str = "prometheus";

/// One pipeline panel: PromQL expressions, each with its legend.
fn pipeline_panel(id: u32, title: &str, unit: &str, grid: [u32; 4], exprs: &[(&str, &str)]) -> Value {
    let [x, y, w, h] = grid;
    let targets: Vec<Value> = exprs
        .iter()
        .zip('A'..)
        .map(|((expr, legend), id)| {
            json!({"refId": id.to_string(), "datasource": {"type": PROMETHEUS, "uid": "${datasource}"},
                   "expr": expr, "legendFormat": legend})
        })
        .collect();
    json!({
        "id": id, "type": "timeseries", "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": {"type": PROMETHEUS, "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
    })
}

fn pipeline() -> Value {
    let panels = vec![
        pipeline_panel(1, "Services up", "none", [0, 0, 8, 6], &[(r#"up{job=~"tally-.*"}"#, "{{job}} {{instance}}")]),
        pipeline_panel(
            2,
            "Throughput",
            "ops",
            [8, 0, 16, 8],
            &[
                ("tally:metering_inputs:rate5m", "inputs read: {{type}}"),
                ("sum by (status) (tally:metering_entries:rate5m)", "ledger entries: {{status}}"),
                ("tally:aggregator_rows_inserted:rate5m", "rows into ClickHouse"),
            ],
        ),
        pipeline_panel(
            3,
            "Lag (records not yet handled)",
            "short",
            [0, 8, 12, 8],
            &[("tally:partition_lag:sum", "{{job}}"), ("sum(tally_notify_backlog)", "notifier backlog")],
        ),
        pipeline_panel(
            4,
            "Dead letters by reason",
            "ops",
            [12, 8, 12, 8],
            &[
                ("tally:dead_letters:rate5m", "{{job}}: {{reason}}"),
                (r#"tally:notify_deliveries:rate5m{outcome="dead_lettered"}"#, "notifier: dead_lettered"),
            ],
        ),
        pipeline_panel(
            5,
            "Aggregator insert latency",
            "s",
            [0, 16, 12, 8],
            &[
                ("tally:aggregator_insert_seconds:p50_5m", "p50"),
                ("tally:aggregator_insert_seconds:p99_5m", "p99"),
                ("tally:metering_batch_seconds:p99_5m", "metering batch p99"),
            ],
        ),
        pipeline_panel(
            6,
            "Failures and retries",
            "short",
            [12, 16, 12, 8],
            &[
                ("sum by (instance) (tally_aggregator_clickhouse_failing)", "ClickHouse failing: {{instance}}"),
                ("sum(rate(tally_aggregator_retries_total[$__rate_interval]))", "aggregator retries/s"),
                ("max(tally_metering_partitions_stalled)", "stalled input partitions"),
                ("sum(rate(tally_notify_retries_total[$__rate_interval]))", "notifier retries/s"),
            ],
        ),
    ];
    let variables =
        vec![json!({"type": "datasource", "name": "datasource", "label": "Prometheus", "query": PROMETHEUS})];
    dashboard("tally-pipeline", "tally: pipeline", "now-3h", panels, variables)
}

fn dashboard(uid: &str, title: &str, from: &str, panels: Vec<Value>, variables: Vec<Value>) -> Value {
    json!({
        "uid": uid,
        "title": title,
        "description": "Generated by tests/tests/grafana.rs (TALLY_BLESS=1 rewrites it); edit there, not here.",
        "tags": ["tally"],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": from, "to": "now"},
        "refresh": "1m",
        "templating": {"list": variables},
        "panels": panels,
    })
}

/// Compares a generated dashboard with its committed file (or rewrites the
/// file with `TALLY_BLESS=1`).
fn check_file(name: &str, generated: &Value) -> Result<()> {
    let path = root().join("deploy/grafana").join(name);
    let text = serde_json::to_string_pretty(generated)? + "\n";
    if std::env::var("TALLY_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text)?;
        eprintln!("[grafana] wrote {}", path.display());
        return Ok(());
    }
    let committed = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let parsed: Value = serde_json::from_str(&committed).with_context(|| format!("{name} is not valid JSON"))?;
    if &parsed != generated || committed != text {
        bail!(
            "deploy/grafana/{name} is not what tests/tests/grafana.rs generates: \
             run TALLY_BLESS=1 cargo test -p tally-e2e --test grafana and review the diff"
        );
    }
    Ok(())
}

fn read(name: &str) -> Result<Value> {
    let path = root().join("deploy/grafana").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{name} is not valid JSON"))
}

#[test]
fn dashboards_are_generated_from_the_named_queries_and_the_rules() -> Result<()> {
    check_file("business.json", &business()?)?;
    check_file("pipeline.json", &pipeline())
}

/// Independent of the generator: reads the committed file and checks every
/// panel's SQL against the named query its description names.
#[test]
fn every_business_panel_runs_its_named_querys_sql() -> Result<()> {
    let dashboard = read("business.json")?;
    let panels = dashboard["panels"].as_array().context("no panels")?;
    let mut shown = BTreeSet::new();
    for panel in panels {
        let description = panel["description"].as_str().unwrap_or("");
        let name = description
            .strip_prefix("Named query `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
            .with_context(|| format!("panel {} names no named query", panel["title"]))?;
        let named = queries::find(name)?;
        let targets = panel["targets"].as_array().context("no targets")?;
        assert_eq!(targets.len(), 1, "panel {} runs more than its named query", panel["title"]);
        let sql = targets[0]["rawSql"].as_str().context("no rawSql")?;
        assert_eq!(sql, panel_sql(&named)?, "panel {} drifted from {name}.sql", panel["title"]);
        // The variables it uses exist.
        for param in &named.params {
            let value = grafana_value(name, param)?;
            if let Some(var) = value.strip_prefix("${").and_then(|v| v.split(':').next()) {
                let defined = dashboard["templating"]["list"]
                    .as_array()
                    .is_some_and(|vars| vars.iter().any(|v| v["name"] == var));
                assert!(defined || var.starts_with("__"), "{name}: variable {var} is not defined");
            }
        }
        shown.insert(name.to_string());
    }
    // The business figures the issue asks for.
    for needed in ["balance", "timeline", "activity", "usage", "event_credits", "event_activity"] {
        assert!(shown.contains(needed), "no panel shows the named query {needed}");
    }
    Ok(())
}

/// Every expression of the pipeline dashboard parses (promtool, given them
/// as recording rules) and names only documented metrics or recording
/// rules.
#[test]
fn every_pipeline_expression_parses_and_names_known_metrics() -> Result<()> {
    let dashboard = read("pipeline.json")?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .context("no panels")?
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace("$__rate_interval", "1m")))
        .collect();
    assert!(exprs.len() >= 8, "pipeline.json has only {} expressions", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules
            .push_str(&format!("      - record: dashboard:expr_{i}\n        expr: {}\n", serde_json::to_string(expr)?));
    }
    let file = std::env::temp_dir().join(format!("tally-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&file, rules)?;
    let out = Command::new("promtool").arg("check").arg("rules").arg(&file).output().map_err(|e| {
        anyhow::anyhow!("cannot run promtool ({e}): install it with `deploy/local/install.sh prometheus`")
    })?;
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "a pipeline.json expression does not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let recording = std::fs::read_to_string(root().join("deploy/prometheus/rules/recording.yml"))?;
    for expr in &exprs {
        // Metric names: identifiers with a tally prefix (recording rules
        // are `tally:...`).
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.starts_with("tally:") {
                assert!(recording.contains(&format!("record: {token}\n")), "{token} is not a recording rule");
            } else if token.starts_with("tally_") {
                assert!(readme.contains(&format!("| `{token}` |")), "{token} is not in the README's Metrics table");
            }
        }
    }
    Ok(())
}

/// Interpolates a panel's SQL as Grafana does: `${name:sqlstring}` quoted
/// with `'` doubled, the time picker's `${__from/__to:date:YYYY-MM-DD}`.
fn interpolate(sql: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        sql.replace("${__from:date:YYYY-MM-DD}", "2026-01-01").replace("${__to:date:YYYY-MM-DD}", "2026-12-31");
    for (name, value) in values {
        out = out.replace(&format!("${{{name}:sqlstring}}"), &format!("'{}'", value.replace('\'', "''")));
    }
    out
}

/// Every business panel's SQL, interpolated as Grafana would, runs on the
/// local stack's ClickHouse (18.16) against the migrated schema, with a
/// text value holding a quote (Grafana's `sqlstring` doubles it).
#[tokio::test(flavor = "multi_thread")]
async fn every_business_panel_runs_on_clickhouse() -> Result<()> {
    let clickhouse = tally_testkit::ClickHouse::start()?;
    let out = Command::new(tally_testkit::tally_binary()?)
        .args(["migrate", "--clickhouse-url", &clickhouse.url()])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    assert!(out.status.success(), "tally migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    let warehouse = tally_warehouse::Warehouse::new(tally_warehouse::WarehouseConfig {
        url: clickhouse.url(),
        ..tally_warehouse::WarehouseConfig::default()
    });
    let dashboard = read("business.json")?;
    let values = [
        ("account", "o'brien"),
        ("event", "booth-1"),
        ("service", ""),
        ("status", "any"),
        ("type", "any"),
        ("tz", "Europe/Berlin"),
        ("timeline_bucket", "week"),
        ("usage_bucket", "day"),
        ("event_activity_bucket", "hour"),
    ];
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let sql = interpolate(panel["targets"][0]["rawSql"].as_str().context("no rawSql")?, &values);
        assert!(!sql.contains("${"), "panel {}: a variable is left in\n{sql}", panel["title"]);
        let rows = warehouse
            .fetch_tsv(warehouse.client().query(&sql), &sql)
            .await
            .with_context(|| format!("panel {} fails on ClickHouse 18.16", panel["title"]))?;
        // Names and types are the first two lines.
        eprintln!("[grafana] panel {} ran: {} rows", panel["title"], rows.lines().count().saturating_sub(2));
    }
    Ok(())
}
