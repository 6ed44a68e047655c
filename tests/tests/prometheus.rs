//! The pipeline's own observability (`deploy/prometheus/`): the rules and
//! the scrape config pass promtool's checks and unit tests, and a real
//! Prometheus run with the shipped config scrapes a real broker, metering
//! and aggregator, sees every job up, loads and evaluates every rule, and
//! finds no tally metric missing from the README's "Metrics" table.
//!
//! promtool and prometheus come from Debian's `prometheus` package
//! (`deploy/local/install.sh prometheus`). A missing binary fails these
//! tests, naming the install step: they never skip.

mod support;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use support::{warehouse::migrate, *};
use tally_simulator::{SimConfig, Simulator};
use tally_testkit::{create_topics, free_port, Broker, ClickHouse};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn prometheus_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

/// Runs a binary of the `prometheus` package in `deploy/prometheus`,
/// failing with the install step if it is missing and with its output if
/// it fails.
fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool).args(args).current_dir(prometheus_dir()).output().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {tool} ({e}): install it with `deploy/local/install.sh prometheus` \
             (Debian: apt-get install prometheus)"
        )
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{tool} {} failed ({}):\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

fn files(dir: &str, suffix: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(prometheus_dir().join(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    names.sort();
    Ok(names)
}

/// The alert names of every rule file (lines `- alert: NAME`).
fn alert_names() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for file in files("rules", ".yml")? {
        let text = std::fs::read_to_string(prometheus_dir().join(file))?;
        names.extend(text.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_string()));
    }
    Ok(names)
}

#[test]
fn promtool_checks_the_rules_and_the_config() -> Result<()> {
    let rules = files("rules", ".yml")?;
    assert!(rules.len() >= 4, "expected the rule files of deploy/prometheus/rules, found {rules:?}");
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    let out = run_tool("promtool", &args)?;
    eprintln!("{out}");
    // check config also checks every rule file the config loads: all of them.
    let out = run_tool("promtool", &["check", "config", "prometheus.yml"])?;
    assert!(
        out.contains(&format!("{} rule files found", rules.len())),
        "prometheus.yml does not load every file of rules/:\n{out}"
    );
    Ok(())
}

#[test]
fn promtool_unit_tests_pass_and_cover_every_alert() -> Result<()> {
    let tests = files("tests", "_test.yml")?;
    assert!(!tests.is_empty(), "no rule unit tests in deploy/prometheus/tests");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let out = run_tool("promtool", &args)?;
    eprintln!("{out}");
    // Every alert has a unit test, and a runbook section in the README.
    let mut tested = String::new();
    for test in &tests {
        tested.push_str(&std::fs::read_to_string(prometheus_dir().join(test))?);
    }
    let readme = std::fs::read_to_string(prometheus_dir().join("README.md"))?;
    for alert in alert_names()? {
        assert!(tested.contains(&format!("alertname: {alert}\n")), "alert {alert} has no promtool unit test");
        assert!(readme.contains(&format!("### {alert}\n")), "alert {alert} has no runbook section in the README");
    }
    Ok(())
}

/// `promtool check metrics` on a text exposition: its lint of the naming
/// conventions (`_total` on counters only, base units, help texts).
fn lint_metrics(what: &str, exposition: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run promtool ({e}): install it with `deploy/local/install.sh prometheus`")
        })?;
    child.stdin.take().context("promtool stdin")?.write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics finds problems in {what}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The file reconcile is to write for node_exporter's textfile collector
/// (an example until `tally reconcile` exists) passes promtool's lint and
/// holds the three names its rules use.
#[test]
fn reconcile_textfile_example_follows_the_conventions() -> Result<()> {
    let text = std::fs::read_to_string(prometheus_dir().join("tally_reconcile.prom.example"))?;
    lint_metrics("tally_reconcile.prom.example", &text)?;
    let rules = std::fs::read_to_string(prometheus_dir().join("rules/reconcile.yml"))?;
    for name in
        ["tally_reconcile_last_run_timestamp_seconds", "tally_reconcile_mismatches", "tally_reconcile_could_not_check"]
    {
        assert!(text.contains(&format!("# TYPE {name} gauge\n")), "the example has no gauge {name}");
        assert!(rules.contains(name), "rules/reconcile.yml does not use {name}");
    }
    Ok(())
}

/// GET `path` from 127.0.0.1:`port`. HTTP/1.0, so the answer is never
/// chunked and the connection closes at its end.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}\n{body}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real `prometheus` on a free port with its storage in a temp dir,
/// stopped (and its storage removed) on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(config: &str) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tally-prometheus-{port}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run prometheus ({e}): install it with `deploy/local/install.sh prometheus` \
                     (Debian: apt-get install prometheus)"
                )
            })?;
        Ok(Prometheus { child, port, dir })
    }

    /// The `data` of an API answer, failing on an error status.
    fn api(&self, path: &str) -> Result<Value> {
        let body = http_get(self.port, path)?;
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))?;
        if answer["status"] != "success" {
            bail!("GET {path}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// The instant vector of `query`: (labels, value) per sample.
    fn query(&self, query: &str) -> Result<Vec<(Value, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(query)))?;
        let samples = data["result"].as_array().cloned().unwrap_or_default();
        Ok(samples
            .into_iter()
            .map(|s| (s["metric"].clone(), s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)))
            .collect())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped `deploy/prometheus/prometheus.yml` pointed at this test's
/// services: same job names and rules, their ports, a 1 s scrape and
/// evaluation interval. node_exporter's job (for reconcile's textfile;
/// no node_exporter runs here) is cut: nothing here serves it.
fn test_config(metering_port: u16, aggregator_port: u16, notify_port: u16) -> Result<String> {
    let shipped = std::fs::read_to_string(prometheus_dir().join("prometheus.yml"))?;
    let cut = shipped
        .find("  # node_exporter's textfile collector")
        .context("prometheus.yml: expected node_exporter's job after the tally services'")?;
    let config = shipped[..cut]
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("- rules/*.yml", &format!("- {}/rules/*.yml", prometheus_dir().display()))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{metering_port}"))
        .replace("127.0.0.1:9465", &format!("127.0.0.1:{aggregator_port}"))
        .replace("127.0.0.1:9466", &format!("127.0.0.1:{notify_port}"));
    for expected in ["scrape_interval: 1s", "evaluation_interval: 1s", "rules/*.yml", "job_name: tally-metering"] {
        assert!(config.contains(expected), "prometheus.yml changed shape: no {expected:?} in\n{config}");
    }
    assert!(
        !config.contains(":9464") && !config.contains(":9465") && !config.contains(":9466"),
        "prometheus.yml: default ports left in\n{config}"
    );
    Ok(config)
}

/// Metric names in the README's "Metrics" table (first column, in backticks).
fn readme_metrics() -> Result<BTreeSet<String>> {
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    let section = readme.split("\n## Metrics\n").nth(1).context("README.md has no \"## Metrics\" section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    Ok(section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_string())
        .collect())
}

/// The metric family a sample name belongs to: a histogram's `_bucket`,
/// `_sum` and `_count` series are the histogram's.
fn family(name: &str, known: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if known.contains(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

#[test]
fn readme_metrics_table_follows_the_conventions() -> Result<()> {
    let names = readme_metrics()?;
    assert!(names.len() >= 30, "the README's Metrics table lists only {names:?}");
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    for row in readme.lines().filter(|l| l.starts_with("| `tally_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, kind) = (cells[1].trim_matches('`'), cells[2]);
        assert!(name.starts_with("tally_"), "{name}: no tally_ prefix");
        match kind {
            "counter" => assert!(name.ends_with("_total"), "counter {name} does not end in _total"),
            "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{kind} {name} ends in _total"),
            other => panic!("{name}: unknown type {other:?} in the README's Metrics table"),
        }
    }
    Ok(())
}

/// The metric names a service's `metrics.rs` registers, with its prefix:
/// every lowercase string literal there, above its unit tests, once the
/// registry prefix and the label lists (`&[...]`) are taken out (help texts
/// have spaces).
fn registered(krate: &str, prefix: &str, at_least: usize) -> Result<BTreeSet<String>> {
    let source = std::fs::read_to_string(root().join("crates").join(krate).join("src/metrics.rs"))?;
    // Unit tests at the bottom register throwaway gauges; they are not the service's.
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut code = String::new();
    let mut rest = source;
    while let Some(start) = rest.find("&[") {
        code.push_str(&rest[..start]);
        rest = rest[start..].split_once(']').map_or("", |(_, after)| after);
    }
    code.push_str(rest);
    let names: BTreeSet<String> = code
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|lit| !lit.is_empty() && lit.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .filter(|lit| *lit != prefix)
        .map(|lit| format!("{prefix}_{lit}"))
        .collect();
    assert!(names.len() >= at_least, "found only {names:?} in {krate}/src/metrics.rs");
    Ok(names)
}

/// The README table's metering, aggregator and notifier rows are exactly what their
/// `metrics.rs` registers: nothing missing (labelled metrics are not
/// exported before their first sample, so the scrape test cannot see them
/// all), nothing stale.
#[test]
fn readme_metrics_table_is_what_the_services_register() -> Result<()> {
    let documented = readme_metrics()?;
    let services = [
        ("tally-metering", "tally_metering", 10),
        ("tally-aggregator", "tally_aggregator", 10),
        ("tally-notify", "tally_notify", 5),
    ];
    for (krate, prefix, at_least) in services {
        let registered = registered(krate, prefix, at_least)?;
        let rows: BTreeSet<String> =
            documented.iter().filter(|n| n.starts_with(&format!("{prefix}_"))).cloned().collect();
        let missing: Vec<_> = registered.difference(&rows).collect();
        let stale: Vec<_> = rows.difference(&registered).collect();
        assert!(missing.is_empty(), "{krate} registers metrics the README's Metrics table lacks: {missing:?}");
        assert!(stale.is_empty(), "the README's Metrics table lists metrics {krate} does not register: {stale:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_service_and_loads_the_rules() -> Result<()> {
    let started = Instant::now();
    let broker = Broker::memory()?;
    let bootstrap = broker.bootstrap();
    let clickhouse = ClickHouse::start()?;
    migrate(&clickhouse)?;
    create_topics(&bootstrap, &[(INPUTS, 4)]).await?;
    let mut metering = MeteringProcess::spawn(&bootstrap, "prometheus", &[])?;
    let aggregator = MeteringProcess::aggregator(&bootstrap, &clickhouse.url(), "prometheus", &[])?;
    // Some traffic, with bad inputs, so the labelled metrics (dead letters
    // by reason, entries by type) have samples to export.
    let config =
        SimConfig { seed: seed(), accounts: 10, usage_events: 400, malformed_fraction: 0.05, ..SimConfig::default() };
    let messages: Vec<_> = Simulator::new(config).collect();
    publish(&bootstrap, &messages).await?;
    wait_until("the aggregator to insert rows", Duration::from_secs(60), || {
        Ok(aggregator.metric_sum("tally_aggregator_rows_inserted_total") > 0.0)
    })
    .with_context(|| format!("metering log:\n{}\naggregator log:\n{}", metering.log_tail(), aggregator.log_tail()))?;

    // The notifier, following the alerts metering writes, towards an
    // endpoint nobody listens on (its deliveries retry; it serves metrics).
    let notify_config = std::env::temp_dir().join(format!("tally-prometheus-notify-{}.toml", std::process::id()));
    std::fs::write(
        &notify_config,
        "version = 1\ndefault_endpoint = \"main\"\n[endpoints.main]\nurl = \"http://127.0.0.1:9/alerts\"\n",
    )?;
    let secret = [("TALLY_NOTIFY__ENDPOINTS__MAIN__SECRET", "prometheus-test-secret")];
    let notifier = MeteringProcess::notify(&bootstrap, &notify_config, "prometheus", &secret)?;
    wait_until("the notifier to serve /metrics", Duration::from_secs(30), || {
        Ok(notifier.metrics().is_ok_and(|m| m.contains("tally_notify_")))
    })
    .with_context(|| format!("notifier log:\n{}", notifier.log_tail()))?;

    // What they serve follows the naming conventions.
    lint_metrics("metering's /metrics", &metering.metrics()?)?;
    lint_metrics("the aggregator's /metrics", &aggregator.metrics()?)?;
    lint_metrics("the notifier's /metrics", &notifier.metrics()?)?;

    let prometheus =
        Prometheus::start(&test_config(metering.metrics_port, aggregator.metrics_port, notifier.metrics_port)?)?;
    let jobs = ["tally-metering", "tally-aggregator", "tally-notify"];
    let mut last = String::new();
    let up = wait_until("every job up in Prometheus, with tally metrics", Duration::from_secs(30), || {
        let up = match prometheus.query("up") {
            Ok(up) => up,
            Err(e) => {
                last = format!("query failed: {e}");
                return Ok(false);
            }
        };
        let up_jobs: BTreeSet<String> =
            up.iter().filter(|(_, v)| *v == 1.0).filter_map(|(m, _)| m["job"].as_str().map(String::from)).collect();
        let with_metrics: BTreeSet<String> = prometheus
            .query(r#"count by (job) ({__name__=~"tally_.+"})"#)?
            .iter()
            .filter_map(|(m, _)| m["job"].as_str().map(String::from))
            .collect();
        last = format!("up == 1: {up_jobs:?}; jobs with tally_ metrics: {with_metrics:?}; all: {up:?}");
        Ok(jobs.iter().all(|j| up_jobs.contains(*j) && with_metrics.contains(*j)) && up.len() == jobs.len())
    });
    if let Err(e) = up {
        bail!("{e}: {last}\nprometheus log:\n{}", prometheus.log_tail());
    }
    eprintln!("[prometheus] every job up after {:?} from the start", started.elapsed());

    // Every rule group loaded, and every rule evaluated without error.
    let expected_alerts = alert_names()?;
    let mut last = String::new();
    let rules_ok = wait_until("every rule loaded and evaluated", Duration::from_secs(20), || {
        let data = prometheus.api("/api/v1/rules")?;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        let alerts: BTreeSet<String> = rules
            .iter()
            .filter(|r| r["type"] == "alerting")
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        let unhealthy: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        last = format!("{} groups, alerts {alerts:?}, not ok: {unhealthy:?}", groups.len());
        Ok(groups.len() >= 4 && alerts == expected_alerts && unhealthy.is_empty())
    });
    if let Err(e) = rules_ok {
        bail!("{e}: {last} (expected alerts {expected_alerts:?})\nprometheus log:\n{}", prometheus.log_tail());
    }
    // A recording rule over real data: metering's input rate.
    wait_until("tally:metering_inputs:rate5m recorded", Duration::from_secs(20), || {
        Ok(!prometheus.query("tally:metering_inputs:rate5m")?.is_empty())
    })?;

    // No tally metric the services export is missing from the README table.
    let documented = readme_metrics()?;
    let names = prometheus.api("/api/v1/label/__name__/values")?;
    let exported: BTreeSet<String> = names
        .as_array()
        .context("no metric names")?
        .iter()
        .filter_map(Value::as_str)
        .filter(|n| n.starts_with("tally_"))
        .map(|n| family(n, &documented))
        .collect();
    eprintln!("[prometheus] {} tally metrics exported: {exported:?}", exported.len());
    let missing: Vec<&String> = exported.difference(&documented).collect();
    assert!(missing.is_empty(), "metrics exported but not in the README's Metrics table: {missing:?}");
    assert!(
        exported.contains("tally_metering_dead_letters_total") && exported.contains("tally_aggregator_insert_seconds"),
        "expected dead letters and insert latency among {exported:?}"
    );

    // A service that dies is seen: TallyServiceDown goes pending for its
    // job at the next evaluation (it fires after its `for` of 2 minutes).
    metering.kill();
    let mut last = String::new();
    let down = wait_until("TallyServiceDown pending for tally-metering", Duration::from_secs(20), || {
        let alerts = prometheus.api("/api/v1/alerts")?;
        let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
        last = format!("{alerts:?}");
        Ok(alerts.iter().any(|a| {
            a["labels"]["alertname"] == "TallyServiceDown"
                && a["labels"]["job"] == "tally-metering"
                && a["state"] == "pending"
        }))
    });
    if let Err(e) = down {
        bail!("{e}: alerts {last}");
    }
    eprintln!("[prometheus] done in {:?}", started.elapsed());
    Ok(())
}
