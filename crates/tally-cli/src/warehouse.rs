//! `tally migrate` and `tally query`: the ClickHouse schema and the named
//! questions.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{bail, Context, Result};
use tally_warehouse::{
    migrations,
    queries::{self, Answer},
    rollups::{self, PartitionKey},
    Warehouse, WarehouseConfig,
};

/// Where ClickHouse is.
#[derive(clap::Args)]
pub struct Connection {
    /// ClickHouse HTTP URL.
    #[arg(long, env = "TALLY_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    pub(crate) clickhouse_url: String,
    /// Database.
    #[arg(long, env = "TALLY_CLICKHOUSE_DATABASE", default_value = "tally")]
    database: String,
    /// User.
    #[arg(long, env = "TALLY_CLICKHOUSE_USER", default_value = "default")]
    user: String,
    /// Password.
    #[arg(long, env = "TALLY_CLICKHOUSE_PASSWORD", default_value = "", hide_env_values = true)]
    password: String,
    /// Bound on one request, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

impl Connection {
    pub(crate) fn warehouse(&self) -> Warehouse {
        Warehouse::new(WarehouseConfig {
            url: self.clickhouse_url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            timeout: Duration::from_secs(self.timeout_s),
        })
    }
}

/// One day (`--date`) or a range (`--from`, `--to`, inclusive), for
/// `tally finance daily` and `tally reconcile`.
#[derive(clap::Args)]
pub struct Days {
    /// The day (YYYY-MM-DD).
    #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present_all = ["from", "to"])]
    date: Option<chrono::NaiveDate>,
    /// First day of a range (a month-end close).
    #[arg(long, requires = "to")]
    from: Option<chrono::NaiveDate>,
    /// Last day of the range, inclusive.
    #[arg(long, requires = "from")]
    to: Option<chrono::NaiveDate>,
}

impl Days {
    /// The first and last day.
    pub fn range(&self) -> Result<(chrono::NaiveDate, chrono::NaiveDate)> {
        match (self.date, self.from, self.to) {
            (Some(day), _, _) => Ok((day, day)),
            (None, Some(from), Some(to)) if from <= to => Ok((from, to)),
            (None, Some(from), Some(to)) => bail!("--to {to} is before --from {from}"),
            _ => bail!("give --date D, or --from D --to D"),
        }
    }
}

/// Options of `tally migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    connection: Connection,
    /// Rebuild every rollup from the raw table (stop the aggregators
    /// first: a rebuild assumes nothing writes the partitions it rebuilds).
    #[arg(long)]
    rebuild_rollups: bool,
    /// First day (YYYY-MM-DD) whose month is rebuilt.
    #[arg(long, requires = "rebuild_rollups")]
    from: Option<chrono::NaiveDate>,
    /// Last day (YYYY-MM-DD) whose month is rebuilt.
    #[arg(long, requires = "rebuild_rollups")]
    to: Option<chrono::NaiveDate>,
    /// Compare every rollup with its aggregate of the raw table now, and
    /// exit non-zero if one differs (scans the raw table once per rollup).
    #[arg(long)]
    check_rollups: bool,
}

fn month(date: chrono::NaiveDate) -> u32 {
    use chrono::Datelike;
    date.year() as u32 * 100 + date.month()
}

pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let warehouse = args.connection.warehouse();
    let version = warehouse
        .version()
        .await
        .with_context(|| format!("cannot reach ClickHouse at {}", args.connection.clickhouse_url))?;
    eprintln!("ClickHouse {version} at {}, database {}", args.connection.clickhouse_url, args.connection.database);
    let report = migrations::migrate(&warehouse, |step| eprintln!("  {step}")).await?;
    eprintln!(
        "migrations: {} applied now, {} already applied; schema is at version {}",
        report.applied.len(),
        report.already.len(),
        migrations::MIGRATIONS.last().map_or(0, |m| m.version)
    );
    if args.rebuild_rollups {
        let from = args.from.map_or(0, month);
        let to = args.to.map_or(u32::MAX, month);
        let keys: Vec<PartitionKey> = rollups::partitions(&warehouse, from, to).await?;
        eprintln!("rebuilding {} rollup partitions (month, ledger partition) from the raw table", keys.len());
        for (i, key) in keys.iter().enumerate() {
            rollups::rebuild(&warehouse, *key).await.with_context(|| format!("rebuilding partition {key}"))?;
            eprintln!("  [{}/{}] {key} rebuilt", i + 1, keys.len());
        }
    }
    if args.check_rollups {
        let checks = rollups::verify(&warehouse).await?;
        let mut unequal = 0;
        for check in &checks {
            let verdict = if check.equal { "equal" } else { "DIFFERS" };
            println!(
                "rollup {:<20} {verdict:<8} {} rows stored, from {} raw rows",
                check.table, check.rows, check.raw_rows
            );
            unequal += usize::from(!check.equal);
        }
        if unequal > 0 {
            bail!("{unequal} rollups differ from the raw table: `tally migrate --rebuild-rollups` rebuilds them (stop the aggregators first)");
        }
    }
    Ok(())
}

/// Options of `tally query`.
#[derive(clap::Args)]
pub struct QueryArgs {
    #[command(flatten)]
    connection: Connection,
    /// The query's name (see --list).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// A parameter, as name=value (repeat for each).
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "json", "csv"])]
    format: String,
    /// List the named queries and their parameters.
    #[arg(long)]
    list: bool,
}

pub async fn query(args: QueryArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if args.list {
        for query in queries::catalog() {
            writeln!(out, "{}\n  {}", query.name, query.about)?;
            for p in &query.params {
                let default = p.default.as_ref().map_or(" (required)".to_string(), |d| format!(" = {d:?}"));
                writeln!(out, "    --param {}=<{:?}>{default}", p.name, p.kind)?;
            }
        }
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or_default();
    let query = queries::find(name)?;
    let mut given = BTreeMap::new();
    for param in &args.params {
        let Some((k, v)) = param.split_once('=') else { bail!("--param {param:?} must be name=value") };
        given.insert(k.to_string(), v.to_string());
    }
    let warehouse = args.connection.warehouse();
    // "today" and "this month" of a query's defaults are the caller's UTC date.
    #[allow(clippy::disallowed_methods)]
    let today = chrono::Utc::now().date_naive();
    let text = query
        .run(&warehouse, &given, today)
        .await
        .with_context(|| format!("running query {name} on {}", args.connection.clickhouse_url))?;
    let answer = Answer::parse(&text);
    match args.format.as_str() {
        "json" => writeln!(out, "{}", to_json(&answer))?,
        "csv" => write_csv(&mut out, &answer)?,
        _ => write_table(&mut out, &answer)?,
    }
    Ok(())
}

fn is_number(kind: &str) -> bool {
    kind.starts_with("UInt") || kind.starts_with("Int") || kind.starts_with("Float")
}

/// JSON rows: integers as numbers; decimals as strings, exact (a JSON
/// number is a double for most readers, which would round money).
pub(crate) fn to_json(answer: &Answer) -> String {
    let rows: Vec<serde_json::Value> = answer
        .rows
        .iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            for (i, name) in answer.names.iter().enumerate() {
                let text = row.get(i).cloned().unwrap_or_default();
                let kind = answer.types.get(i).map_or("", String::as_str);
                let value = match text.parse::<i128>() {
                    Ok(n) if is_number(kind) && n.unsigned_abs() < (1 << 53) => serde_json::Value::from(n as i64),
                    _ => serde_json::Value::String(text),
                };
                object.insert(name.clone(), value);
            }
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

pub(crate) fn write_csv(out: &mut impl Write, answer: &Answer) -> Result<()> {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    writeln!(out, "{}", answer.names.iter().map(|n| quote(n)).collect::<Vec<_>>().join(","))?;
    for row in &answer.rows {
        writeln!(out, "{}", row.iter().map(|v| quote(v)).collect::<Vec<_>>().join(","))?;
    }
    Ok(())
}

pub(crate) fn write_table(out: &mut impl Write, answer: &Answer) -> Result<()> {
    let widths: Vec<usize> = (0..answer.names.len())
        .map(|i| {
            answer
                .rows
                .iter()
                .map(|r| r.get(i).map_or(0, |v| v.chars().count()))
                .chain([answer.names[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let right = |i: usize| answer.types.get(i).is_some_and(|t| is_number(t) || t.starts_with("Decimal"));
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if right(i) { format!("{c:>w$}", w = widths[i]) } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(&answer.names))?;
    writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "))?;
    for row in &answer.rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out, "({} rows)", answer.rows.len())?;
    Ok(())
}
