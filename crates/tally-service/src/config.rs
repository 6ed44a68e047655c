//! Config files with environment overrides.
//!
//! A service defines a raw `serde` struct (`deny_unknown_fields`), loads it
//! with [`load`], then validates it into its typed config. Environment
//! variables `TALLY_<SERVICE>__<FIELD>` (nested fields joined by `__`)
//! override the file; values are read as TOML literals when they parse
//! (`5`, `true`, `"x"`, `[1, 2]`) and as plain strings otherwise.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid for the config.
    #[error("invalid config {origin}: {message}")]
    Invalid {
        /// File (and overrides) it came from.
        origin: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Fields with bad values: every one of them, each with its problem.
    #[error("invalid config {origin}:{}", problems.iter().map(|(f, p)| format!("\n  field `{f}`: {p}")).collect::<String>())]
    Fields {
        /// File (and overrides) it came from.
        origin: String,
        /// (field, problem) for every bad field, in the order checked.
        problems: Vec<(String, String)>,
    },
}

impl ConfigError {
    /// An error about one field of a config, after loading.
    pub fn field(origin: &str, field: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError::Fields { origin: origin.to_string(), problems: vec![(field.to_string(), problem.to_string())] }
    }

    /// Never retryable: the config must be mended.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Collects every bad field of a config while it is validated, so that one
/// run reports them all; each check returns a value to go on with (the
/// default, when the field is bad).
#[derive(Debug)]
pub struct Problems {
    origin: String,
    problems: Vec<(String, String)>,
}

impl Problems {
    /// Checks of the config that came from `origin`.
    pub fn new(origin: &str) -> Self {
        Problems { origin: origin.to_string(), problems: Vec::new() }
    }

    /// Reports `field` as bad.
    pub fn bad(&mut self, field: &str, problem: impl std::fmt::Display) {
        self.problems.push((field.to_string(), problem.to_string()));
    }

    /// `value` (or `default`) if within `range`; else reports it and
    /// returns `default`.
    pub fn in_range<T>(&mut self, field: &str, value: Option<T>, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        let value = value.unwrap_or(default);
        if range.contains(&value) {
            value
        } else {
            self.bad(field, format!("{value} is not between {} and {}", range.start(), range.end()));
            default
        }
    }

    /// `value` (or `default`) if not blank; else reports it.
    pub fn non_empty(&mut self, field: &str, value: Option<String>, default: &str) -> String {
        let value = value.unwrap_or_else(|| default.to_string());
        if value.trim().is_empty() {
            self.bad(field, "must not be empty");
            return default.to_string();
        }
        value
    }

    /// One of `choices` by name (or the `default` name, which must be one
    /// of them); else reports it and returns the default's.
    pub fn choice<T: Copy>(&mut self, field: &str, value: Option<&str>, default: &str, choices: &[(&str, T)]) -> T {
        let find = |name: &str| choices.iter().find(|(n, _)| *n == name).map(|(_, choice)| *choice);
        let name = value.unwrap_or(default);
        if let Some(choice) = find(name) {
            return choice;
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.bad(field, format!("{name:?} is none of {}", names.join(", ")));
        match find(default) {
            Some(choice) => choice,
            None => panic!("the default {default:?} of `{field}` is not one of its choices"),
        }
    }

    /// Whether nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(value)` if no field was bad, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError::Fields { origin: self.origin, problems: self.problems })
        }
    }
}

/// Loads `path` (or only defaults and overrides when `None`), applying the
/// environment overrides of `service` from `env`.
pub fn load<T: DeserializeOwned>(
    service: &str,
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(T, String), ConfigError> {
    let (mut table, mut origin) = match path {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
            (table, path.display().to_string())
        }
        None => (toml::Table::new(), "(defaults)".to_string()),
    };
    let prefix = format!("TALLY_{}__", service.to_ascii_uppercase());
    let mut overridden = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
    env.sort();
    for (key, raw) in env {
        let path: Vec<String> = key[prefix.len()..].split("__").map(str::to_ascii_lowercase).collect();
        let value = parse_literal(&raw);
        let mut table_at = &mut table;
        for part in &path[..path.len() - 1] {
            let entry = table_at.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(inner) = entry.as_table_mut() else {
                return Err(ConfigError::Invalid { origin: key.clone(), message: format!("`{part}` is not a table") });
            };
            table_at = inner;
        }
        table_at.insert(path[path.len() - 1].clone(), value);
        overridden.push(key);
    }
    if !overridden.is_empty() {
        origin = format!("{origin} with overrides {}", overridden.join(", "));
    }
    let config = T::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Invalid { origin: origin.clone(), message: e.to_string() })?;
    Ok((config, origin))
}

fn parse_literal(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(default)]
        brokers: String,
        #[serde(default)]
        batch: u32,
        #[serde(default)]
        kafka: Option<Nested>,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        linger_ms: u32,
    }

    #[test]
    fn env_overrides_the_file_and_names_bad_fields() {
        let dir = std::env::temp_dir().join(format!("tally-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("svc.toml");
        std::fs::write(&file, "brokers = \"a:1\"\nbatch = 5\n").expect("write");
        let env = vec![
            ("TALLY_SVC__BATCH".to_string(), "7".to_string()),
            ("TALLY_SVC__KAFKA__LINGER_MS".to_string(), "3".to_string()),
            ("TALLY_OTHER__BATCH".to_string(), "9".to_string()),
        ];
        let (raw, origin): (Raw, String) = load("svc", Some(&file), env).expect("load");
        assert_eq!(raw, Raw { brokers: "a:1".into(), batch: 7, kafka: Some(Nested { linger_ms: 3 }) });
        assert!(origin.contains("TALLY_SVC__BATCH"), "{origin}");

        std::fs::write(&file, "brokers = \"a:1\"\nbatchh = 5\n").expect("write");
        let err = load::<Raw>("svc", Some(&file), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("svc.toml") && err.contains("batchh"), "{err}");
        let err = load::<Raw>("svc", None, vec![("TALLY_SVC__BATCH".into(), "many".into())]).unwrap_err().to_string();
        assert!(err.contains("TALLY_SVC__BATCH") && err.contains("invalid type"), "{err}");
    }

    #[test]
    fn problems_are_all_reported_at_once() {
        let mut check = Problems::new("svc.toml");
        assert_eq!(check.in_range("batch", Some(0u32), 5, 1..=10), 5);
        assert_eq!(check.in_range("wait", None, 20u64, 0..=100), 20);
        assert_eq!(check.non_empty("topic", Some(" ".into()), "t"), "t");
        assert!(check.choice("mode", Some("sideways"), "fixed", &[("fixed", true), ("group", false)]), "the default");
        let err = check.finish(()).unwrap_err();
        let text = err.to_string();
        for part in [
            "svc.toml",
            "field `batch`: 0 is not between 1 and 10",
            "field `topic`",
            "\"sideways\" is none of \"fixed\", \"group\"",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert!(!text.contains("`wait`"));
    }
}
