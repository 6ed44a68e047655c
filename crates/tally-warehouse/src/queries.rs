//! Named, parameterised questions (`schemas/clickhouse/queries/NAME.sql`),
//! run by `tally query NAME --param k=v`, by the demo, and by dashboards
//! (whose SQL is these files').
//!
//! A file starts with comment lines: the first says what the query
//! answers; `-- param NAME: TYPE [= DEFAULT]` declares each parameter. The
//! body names a parameter as `{NAME}`. Values are checked against their
//! type here and bound by the `clickhouse` crate's client-side binding (it
//! quotes and escapes), never spliced into the text: ClickHouse 18.16 has
//! no server-side `{name:Type}` parameters.
//!
//! Types: `String`, `UInt64`, `Date` (YYYY-MM-DD; defaults `today`,
//! `start_of_month`, `start_of_year`, UTC), `Timezone` (an IANA name such
//! as `Europe/Berlin`, checked by ClickHouse), `Choice(a|b|c)`.

use std::collections::BTreeMap;

use crate::client::{Warehouse, WarehouseError};

/// A parameter's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    /// Any text.
    String,
    /// A non-negative integer.
    UInt64,
    /// A calendar date.
    Date,
    /// An IANA time zone name.
    Timezone,
    /// One of these words.
    Choice(Vec<String>),
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ParamType,
    /// Default (`None`: required).
    pub default: Option<String>,
}

/// One named query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedQuery {
    /// Name (the file's stem).
    pub name: &'static str,
    /// What it answers (first comment line).
    pub about: String,
    /// Its parameters, in declaration order.
    pub params: Vec<Param>,
    /// The body.
    pub sql: String,
}

macro_rules! catalog {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../schemas/clickhouse/queries/", $name, ".sql")))),*]
    };
}

/// Every named query file, built into the binary.
pub const FILES: &[(&str, &str)] = catalog![
    "balance",
    "activity",
    "timeline",
    "event_credits",
    "event_activity",
    "event_ledger",
    "usage",
    "finance_day",
];

fn parse_type(text: &str) -> Option<ParamType> {
    Some(match text {
        "String" => ParamType::String,
        "UInt64" => ParamType::UInt64,
        "Date" => ParamType::Date,
        "Timezone" => ParamType::Timezone,
        other => {
            let inner = other.strip_prefix("Choice(")?.strip_suffix(')')?;
            ParamType::Choice(inner.split('|').map(|s| s.trim().to_string()).collect())
        }
    })
}

/// Parses one query file.
pub fn parse(name: &'static str, text: &str) -> Result<NamedQuery, WarehouseError> {
    let bad = |why: String| WarehouseError::Query(format!("query file {name}.sql: {why}"));
    let mut about = String::new();
    let mut params = Vec::new();
    let mut body = Vec::new();
    for line in text.lines() {
        match line.trim_start().strip_prefix("--") {
            Some(comment) => {
                let comment = comment.trim();
                if let Some(decl) = comment.strip_prefix("param ") {
                    let (name, rest) = decl.split_once(':').ok_or_else(|| bad(format!("bad param line {decl:?}")))?;
                    let (kind, default) = match rest.split_once('=') {
                        Some((kind, default)) => (kind.trim(), Some(default.trim().to_string())),
                        None => (rest.trim(), None),
                    };
                    let kind = parse_type(kind).ok_or_else(|| bad(format!("unknown type {kind:?}")))?;
                    params.push(Param { name: name.trim().to_string(), kind, default });
                } else if about.is_empty() {
                    about = comment.to_string();
                }
            }
            None => body.push(line),
        }
    }
    let sql = body.join("\n").trim().trim_end_matches(';').to_string();
    for param in &params {
        if !sql.contains(&format!("{{{}}}", param.name)) {
            return Err(bad(format!("param {} is declared but not used", param.name)));
        }
    }
    Ok(NamedQuery { name, about, params, sql })
}

/// Every named query.
pub fn catalog() -> Vec<NamedQuery> {
    FILES.iter().filter_map(|(name, text)| parse(name, text).ok()).collect()
}

/// A named query by name.
pub fn find(name: &str) -> Result<NamedQuery, WarehouseError> {
    let Some((name, text)) = FILES.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        return Err(WarehouseError::Query(format!("no query named {name:?}; the queries are {}", names.join(", "))));
    };
    parse(name, text)
}

/// A checked parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Number(u64),
}

fn check(param: &Param, raw: &str, today: chrono::NaiveDate) -> Result<Value, String> {
    use chrono::Datelike;
    match &param.kind {
        ParamType::String => Ok(Value::Text(raw.to_string())),
        ParamType::UInt64 => {
            raw.parse::<u64>().map(Value::Number).map_err(|_| format!("{raw:?} is not a whole number"))
        }
        ParamType::Date => {
            let date = match raw {
                "today" => today,
                "start_of_month" => today.with_day(1).unwrap_or(today),
                "start_of_year" => today.with_ordinal(1).unwrap_or(today),
                _ => chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                    .map_err(|_| format!("{raw:?} is not a date like 2026-12-01"))?,
            };
            Ok(Value::Text(date.format("%Y-%m-%d").to_string()))
        }
        ParamType::Timezone => {
            let ok = !raw.is_empty()
                && raw.len() <= 64
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            if ok {
                Ok(Value::Text(raw.to_string()))
            } else {
                Err(format!("{raw:?} is not a time zone name like Europe/Berlin"))
            }
        }
        ParamType::Choice(choices) => {
            if choices.iter().any(|c| c == raw) {
                Ok(Value::Text(raw.to_string()))
            } else {
                Err(format!("{raw:?} is not one of {}", choices.join(", ")))
            }
        }
    }
}

impl NamedQuery {
    /// The query text with `?` for each use of a parameter, and the checked
    /// values in that order. Every problem with the given parameters is
    /// reported at once.
    pub fn bind_plan(
        &self,
        given: &BTreeMap<String, String>,
        today: chrono::NaiveDate,
    ) -> Result<(String, Vec<(String, String)>), WarehouseError> {
        let mut problems = Vec::new();
        for name in given.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                problems.push(format!("unknown param {name:?}"));
            }
        }
        let mut values: BTreeMap<&str, Value> = BTreeMap::new();
        for param in &self.params {
            let raw = given.get(&param.name).cloned().or_else(|| param.default.clone());
            match raw {
                None => problems.push(format!("param {} ({:?}) is required", param.name, param.kind)),
                Some(raw) => match check(param, &raw, today) {
                    Ok(value) => {
                        values.insert(&param.name, value);
                    }
                    Err(why) => problems.push(format!("param {}: {why}", param.name)),
                },
            }
        }
        if !problems.is_empty() {
            return Err(WarehouseError::Query(format!("query {}: {}", self.name, problems.join("; "))));
        }
        // Replace each {name} in order of appearance.
        let mut sql = String::with_capacity(self.sql.len());
        let mut order = Vec::new();
        let mut rest = self.sql.as_str();
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else { break };
            let name = &rest[start + 1..start + len];
            match values.get(name) {
                Some(value) => {
                    sql.push_str(&rest[..start]);
                    sql.push('?');
                    let text = match value {
                        Value::Text(t) => t.clone(),
                        Value::Number(n) => n.to_string(),
                    };
                    order.push((name.to_string(), text));
                }
                None => sql.push_str(&rest[..start + len + 1]),
            }
            rest = &rest[start + len + 1..];
        }
        sql.push_str(rest);
        Ok((sql, order))
    }

    /// The query with `given` parameters bound by the client (quoted and
    /// escaped by the `clickhouse` crate), ready to run; its SQL shows as
    /// sent with `sql_display()`.
    pub fn prepare(
        &self,
        client: &clickhouse::Client,
        given: &BTreeMap<String, String>,
        today: chrono::NaiveDate,
    ) -> Result<(clickhouse::query::Query, String), WarehouseError> {
        let (sql, order) = self.bind_plan(given, today)?;
        let mut query = client.query(&sql);
        for (name, text) in &order {
            let param = self.params.iter().find(|p| &p.name == name);
            query = match param.map(|p| &p.kind) {
                Some(ParamType::UInt64) => query.bind(text.parse::<u64>().unwrap_or_default()),
                _ => query.bind(text.as_str()),
            };
        }
        Ok((query, sql))
    }

    /// Runs the query with `given` parameters; the answer as
    /// TabSeparatedWithNamesAndTypes text.
    pub async fn run(
        &self,
        warehouse: &Warehouse,
        given: &BTreeMap<String, String>,
        today: chrono::NaiveDate,
    ) -> Result<String, WarehouseError> {
        let (query, sql) = self.prepare(warehouse.client(), given, today)?;
        warehouse.fetch_tsv(query, &sql).await
    }
}

/// A TabSeparatedWithNamesAndTypes answer, parsed: names, types, rows of
/// unescaped text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Column names.
    pub names: Vec<String>,
    /// Column types as ClickHouse names them.
    pub types: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<String>>,
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

impl Answer {
    /// Parses the text of [`NamedQuery::run`].
    pub fn parse(text: &str) -> Answer {
        let mut lines = text.lines();
        let split = |line: Option<&str>| -> Vec<String> {
            line.map(|l| l.split('\t').map(unescape).collect()).unwrap_or_default()
        };
        let names = split(lines.next());
        let types = split(lines.next());
        let rows = lines.map(|l| l.split('\t').map(unescape).collect()).collect();
        Answer { names, types, rows }
    }

    /// The column named `name`'s values.
    pub fn column(&self, name: &str) -> Option<Vec<&str>> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.rows.iter().map(|r| r.get(i).map_or("", String::as_str)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 12, 2).expect("date")
    }

    #[test]
    fn every_query_file_parses_and_uses_its_params() {
        for (name, text) in FILES {
            let query = parse(name, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!query.about.is_empty(), "{name} says what it answers");
            assert!(!query.sql.contains(';'), "{name} is one statement");
        }
        assert_eq!(catalog().len(), FILES.len());
    }

    #[test]
    fn values_are_checked_and_bound_not_spliced() {
        let query = parse(
            "t",
            "-- t\n-- param account: String\n-- param from: Date = start_of_month\n-- param n: UInt64 = 50\n\
             -- param bucket: Choice(day|month) = day\n\
             SELECT {account}, {from}, {account}, {n}, {bucket}, '{not_a_param}'",
        )
        .expect("parses");
        let given: BTreeMap<String, String> = [("account".to_string(), "a'; DROP TABLE x".to_string())].into();
        let (sql, order) = query.bind_plan(&given, today()).expect("binds");
        assert_eq!(sql, "SELECT ?, ?, ?, ?, ?, '{not_a_param}'");
        let values: Vec<&str> = order.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["a'; DROP TABLE x", "2026-12-01", "a'; DROP TABLE x", "50", "day"]);
        let bad: BTreeMap<String, String> =
            [("from".into(), "yesterday".into()), ("bucket".into(), "week".into()), ("x".into(), "1".into())].into();
        let error = query.bind_plan(&bad, today()).expect_err("refused").to_string();
        for part in ["unknown param \"x\"", "account", "is required", "not a date", "not one of day, month"] {
            assert!(error.contains(part), "{error} names {part}");
        }
    }

    #[test]
    fn answers_parse_with_escapes() {
        let answer = Answer::parse("a\tb\nString\tUInt8\nx\\ty\t1\n");
        assert_eq!(answer.rows, [vec!["x\ty".to_string(), "1".to_string()]]);
        assert_eq!(answer.column("b"), Some(vec!["1"]));
    }
}
