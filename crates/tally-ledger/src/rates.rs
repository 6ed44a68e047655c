//! The rate table: what one unit of each AI service costs in credits, and
//! what one credit costs in dollars for each plan tier, by version.
//!
//! The table is a human-edited TOML file (`pipelines/rates.toml`). It is
//! loaded the way every tally config is: a raw `serde` form with
//! `deny_unknown_fields`, then a pure validation that names the file, the
//! line and the field of every problem, then the typed [`RateTable`].
//!
//! Invariants of a loaded table (checked once, at load; lookups rely on them):
//! - at least one version, each with at least one service;
//! - version ids are unique and `effective_from` strictly increases in file
//!   order, so exactly one version is in force at any instant after the first
//!   `effective_from` (no overlap, no ambiguity on replay);
//! - every version prices all three tiers, each `> 0` with at most
//!   [`DOLLARS_PER_CREDIT_SCALE_MAX`] fractional digits, and
//!   PAYG >= BASIC >= PRO;
//! - `(service, engine)` is unique within a version and `credits_per_unit`
//!   is `> 0` with at most [`CREDITS_PER_UNIT_SCALE_MAX`] fractional digits.
//!
//! Decimals are never read through a float: a value may be written as a
//! string (`"0.12"`), an integer (`2`) or a bare TOML float (`1.5`), whose
//! source text (not the parsed `f64`) is read as an exact decimal.
//!
//! ```
//! use tally_ledger::rates::RateTable;
//! let table = RateTable::parse(r#"
//! format_version = 1
//! [[versions]]
//! id = "2026-01"
//! effective_from = 2026-01-01T00:00:00Z
//! tiers = { PAYG = "0.12", BASIC = "0.10", PRO = "0.08" }
//! [[versions.services]]
//! service = "sms"
//! engine = "standard"
//! display = "SMS"
//! unit = "message"
//! credits_per_unit = "0.05"
//! "#, "example.toml").unwrap();
//! let at = "2026-03-01T00:00:00Z".parse().unwrap();
//! let version = table.version_at(at).unwrap();
//! assert_eq!(version.service("sms", "standard").unwrap().credits_per_unit().to_string(), "0.05");
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;
use serde::Deserialize;
use tally_events::{
    records::{PlanTier, Unit},
    CreditsPerUnit, DollarsPerCredit,
};
use toml::Spanned;

/// The file format this code reads (`format_version` at the top of the file).
/// Bump it, and keep reading the old one, when the layout changes.
pub const FORMAT_VERSION: i64 = 1;

/// Credits per unit have at most this many fractional digits: with quantities
/// of at most 3 fractional digits, every charge is exact at 6 digits.
pub const CREDITS_PER_UNIT_SCALE_MAX: u32 = 3;

/// Dollars per credit have at most this many fractional digits (a hundredth
/// of a cent), which keeps every product with credits exact.
pub const DOLLARS_PER_CREDIT_SCALE_MAX: u32 = 4;

/// The price of one service on one engine in one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRate {
    service: String,
    engine: String,
    display: String,
    unit: Unit,
    credits_per_unit: Decimal,
}

impl ServiceRate {
    /// Service code, e.g. `ai_modify`.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// Engine code, e.g. `nano_banana_2`.
    pub fn engine(&self) -> &str {
        &self.engine
    }
    /// Name shown to operators, e.g. `AI Modify · Nano Banana 2`.
    pub fn display(&self) -> &str {
        &self.display
    }
    /// What one unit counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }
    /// Credits charged per unit (normalized, `> 0`).
    pub fn credits_per_unit(&self) -> CreditsPerUnit {
        CreditsPerUnit::new(self.credits_per_unit)
    }
}

/// One version of the rate table, in force from `effective_from` until the
/// next version's `effective_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateVersion {
    id: String,
    effective_from: DateTime<Utc>,
    /// Indexed by [`tier_index`].
    dollars_per_credit: [Decimal; 3],
    /// In file order, for display.
    services: Vec<ServiceRate>,
    /// Service code → (engine code, index into `services`): every usage
    /// event looks its price up here, by borrowed strings, with no
    /// allocation (a service has only a few engines, scanned in order).
    /// Fixed hasher (`FxBuildHasher`): no per-process randomness, never
    /// iterated into an output, and the keys come from the rate file.
    index: HashMap<String, Vec<(String, usize)>, FxBuildHasher>,
}

fn tier_index(tier: PlanTier) -> usize {
    match tier {
        PlanTier::Payg => 0,
        PlanTier::Basic => 1,
        PlanTier::Pro => 2,
    }
}

impl RateVersion {
    /// Version id, e.g. `2026-07`; written into every ledger entry priced by it.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// First instant the version is in force.
    pub fn effective_from(&self) -> DateTime<Utc> {
        self.effective_from
    }
    /// Dollar price of one credit for `tier`.
    pub fn dollars_per_credit(&self, tier: PlanTier) -> DollarsPerCredit {
        DollarsPerCredit::new(self.dollars_per_credit[tier_index(tier)])
    }
    /// The rate of `service` on `engine`, if this version prices it.
    pub fn service(&self, service: &str, engine: &str) -> Option<&ServiceRate> {
        let engines = self.index.get(service)?;
        engines.iter().find(|(code, _)| code == engine).map(|&(_, index)| &self.services[index])
    }
    /// Every service rate, in file order.
    pub fn services(&self) -> &[ServiceRate] {
        &self.services
    }
}

/// A validated, versioned rate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTable {
    source: String,
    /// Sorted by strictly increasing `effective_from` (checked at load).
    versions: Vec<RateVersion>,
}

impl RateTable {
    /// Reads and validates the rate table at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, RatesError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RatesError::Read { path: path.into(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Validates the rate table in `text`; `source_name` (usually the file
    /// path) is named in every error.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, RatesError> {
        let raw: RawTable = toml::from_str(text).map_err(|e| toml_error(&e, text, source_name))?;
        Validator { text, file: source_name }.table(raw)
    }

    /// Where the table was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> &[RateVersion] {
        &self.versions
    }

    /// The version in force at `instant`: the latest one with
    /// `effective_from <= instant`; `None` before the first version.
    pub fn version_at(&self, instant: DateTime<Utc>) -> Option<&RateVersion> {
        // Versions are sorted by effective_from (a load invariant), so the
        // ones in force form a prefix and its last element is the answer.
        let in_force = self.versions.partition_point(|v| v.effective_from <= instant);
        in_force.checked_sub(1).map(|i| &self.versions[i])
    }

    /// The version with id `id`.
    pub fn version(&self, id: &str) -> Option<&RateVersion> {
        self.versions.iter().find(|v| v.id == id)
    }
}

/// Why a rate table could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum RatesError {
    /// The file could not be read.
    #[error("cannot read rate table {}: {source}", path.display())]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The table is not valid: names the file, the 1-based line and the field.
    #[error("invalid rate table {file}:{line}: field `{field}`: {problem}")]
    Invalid {
        /// File (the `source_name` given to [`RateTable::parse`]).
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// Path of the field, e.g. `versions[1].services[3].credits_per_unit`.
        field: String,
        /// What is wrong (boxed: keeps every `Result` of this module small).
        problem: Box<Problem>,
    },
    /// No version is in force at the instant asked for.
    #[error("rate table {file}: no version in force at {}", at.to_rfc3339_opts(SecondsFormat::Secs, true))]
    NoVersionAt {
        /// File.
        file: String,
        /// Instant asked for.
        at: DateTime<Utc>,
    },
}

impl RatesError {
    /// Whether trying again unchanged may succeed: only a transient read
    /// failure; an invalid table needs an edit.
    pub fn is_retryable(&self) -> bool {
        match self {
            RatesError::Read { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            RatesError::Invalid { .. } | RatesError::NoVersionAt { .. } => false,
        }
    }
}

/// What is wrong with one field of a rate table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not valid TOML, or not the expected layout (unknown or missing field,
    /// wrong type); the message comes from the TOML parser.
    #[error("{0}")]
    Toml(String),
    /// `format_version` is not one this code reads.
    #[error("format_version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedFormat(i64),
    /// The table has no version.
    #[error("the table has no [[versions]]: at least one is required")]
    NoVersions,
    /// A version prices no service.
    #[error("the version has no [[versions.services]]: at least one is required")]
    NoServices,
    /// A code or name is empty.
    #[error("must not be empty")]
    Empty,
    /// `effective_from` is not an RFC 3339 instant with an offset.
    #[error("{0} is not an RFC 3339 instant with a UTC offset (e.g. 2026-01-01T00:00:00Z)")]
    BadInstant(String),
    /// A value is not an exact decimal.
    #[error("{0} is not a decimal number (write it as a string, e.g. \"0.12\")")]
    NotADecimal(String),
    /// A price is zero or negative.
    #[error("{0} must be greater than zero")]
    NotPositive(Decimal),
    /// A price has too many fractional digits.
    #[error("{value} has more than {max} fractional digits")]
    TooManyFractionalDigits {
        /// The value.
        value: Decimal,
        /// Most fractional digits allowed.
        max: u32,
    },
    /// A tier name that is not PAYG, BASIC or PRO.
    #[error("unknown tier {0:?} (expected PAYG, BASIC or PRO)")]
    UnknownTier(String),
    /// A tier is not priced.
    #[error("tier {0} is missing: every version prices PAYG, BASIC and PRO")]
    MissingTier(&'static str),
    /// Tier prices out of order.
    #[error("PAYG must be the highest price per credit and PRO the lowest, but {higher} ({higher_price}) is above {lower} ({lower_price})")]
    TierOrder {
        /// The tier that should not be above.
        higher: &'static str,
        /// Its price.
        higher_price: Decimal,
        /// The tier that should be above or equal.
        lower: &'static str,
        /// Its price.
        lower_price: Decimal,
    },
    /// A unit that is not image, video_second or message.
    #[error("unknown unit {0:?} (expected image, video_second or message)")]
    UnknownUnit(String),
    /// `(service, engine)` priced twice in one version.
    #[error("{service}/{engine} is already priced in this version at line {first_line}")]
    DuplicateService {
        /// Service code.
        service: String,
        /// Engine code.
        engine: String,
        /// Line of the first one.
        first_line: usize,
    },
    /// A version id used twice.
    #[error("version id {id:?} is already used at line {first_line}")]
    DuplicateVersion {
        /// The id.
        id: String,
        /// Line of the first one.
        first_line: usize,
    },
    /// Versions not in strictly increasing `effective_from` order.
    #[error("{from} is not after {previous_from} of the previous version {previous_id:?}: versions must be listed in strictly increasing effective_from order")]
    VersionOrder {
        /// This version's effective_from.
        from: String,
        /// The previous version's id.
        previous_id: String,
        /// The previous version's effective_from.
        previous_from: String,
    },
}

// ---------------------------------------------------------------------------
// Raw form: what serde reads. Values whose problems we report ourselves are
// kept `Spanned` so the error can name their line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    format_version: Spanned<i64>,
    #[serde(default)]
    versions: Vec<Spanned<RawVersion>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    id: Spanned<String>,
    effective_from: Spanned<toml::Value>,
    tiers: Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    #[serde(default)]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    service: Spanned<String>,
    engine: Spanned<String>,
    display: Spanned<String>,
    unit: Spanned<String>,
    credits_per_unit: Spanned<toml::Value>,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Turns a TOML parser error into [`RatesError::Invalid`]. The parser does
/// not report the key path, so the field is the first backquoted name in its
/// message (`unknown field `x``, `missing field `y``) or else the key written
/// on the offending line.
fn toml_error(error: &toml::de::Error, text: &str, file: &str) -> RatesError {
    let offset = error.span().map_or(0, |span| span.start);
    let line = line_of(text, offset);
    let message = error.message().trim().lines().map(str::trim).collect::<Vec<_>>().join("; ");
    let is_key =
        |name: &&str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let quoted = message.split('`').nth(1).filter(is_key);
    let field = match quoted {
        Some(name) => name.to_string(),
        None => {
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            match line_text.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() => key.trim().to_string(),
                _ => line_text.trim().to_string(),
            }
        }
    };
    RatesError::Invalid { file: file.to_string(), line, field, problem: Box::new(Problem::Toml(message)) }
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn error(&self, offset: usize, field: impl Into<String>, problem: Problem) -> RatesError {
        RatesError::Invalid {
            file: self.file.to_string(),
            line: line_of(self.text, offset),
            field: field.into(),
            problem: Box::new(problem),
        }
    }

    fn table(&self, raw: RawTable) -> Result<RateTable, RatesError> {
        if *raw.format_version.get_ref() != FORMAT_VERSION {
            return Err(self.error(
                raw.format_version.span().start,
                "format_version",
                Problem::UnsupportedFormat(*raw.format_version.get_ref()),
            ));
        }
        if raw.versions.is_empty() {
            return Err(self.error(self.text.len(), "versions", Problem::NoVersions));
        }
        let mut versions: Vec<RateVersion> = Vec::with_capacity(raw.versions.len());
        let mut first_lines: BTreeMap<String, usize> = BTreeMap::new();
        for (index, raw_version) in raw.versions.into_iter().enumerate() {
            let id_offset = raw_version.get_ref().id.span().start;
            let from_offset = raw_version.get_ref().effective_from.span().start;
            let version = self.version(index, raw_version.into_inner())?;
            if let Some(&first_line) = first_lines.get(&version.id) {
                return Err(self.error(
                    id_offset,
                    format!("versions[{index}].id"),
                    Problem::DuplicateVersion { id: version.id, first_line },
                ));
            }
            first_lines.insert(version.id.clone(), line_of(self.text, id_offset));
            // Strictly increasing: an equal instant would make two versions
            // in force at once, and replay would depend on file order.
            if let Some(previous) = versions.last() {
                if version.effective_from <= previous.effective_from {
                    return Err(self.error(
                        from_offset,
                        format!("versions[{index}].effective_from"),
                        Problem::VersionOrder {
                            from: instant_text(version.effective_from),
                            previous_id: previous.id.clone(),
                            previous_from: instant_text(previous.effective_from),
                        },
                    ));
                }
            }
            versions.push(version);
        }
        Ok(RateTable { source: self.file.to_string(), versions })
    }

    fn version(&self, index: usize, raw: RawVersion) -> Result<RateVersion, RatesError> {
        let field = |name: &str| format!("versions[{index}].{name}");
        let id = self.code(&raw.id, field("id"))?;
        let effective_from = self.instant(&raw.effective_from, field("effective_from"))?;

        let tiers_offset = raw.tiers.span().start;
        let mut prices: [Option<Decimal>; 3] = [None; 3];
        for (name, value) in raw.tiers.get_ref() {
            let tier_field = format!("versions[{index}].tiers.{}", name.get_ref());
            let tier = match name.get_ref().as_str() {
                "PAYG" => PlanTier::Payg,
                "BASIC" => PlanTier::Basic,
                "PRO" => PlanTier::Pro,
                other => {
                    return Err(self.error(name.span().start, tier_field, Problem::UnknownTier(other.to_string())));
                }
            };
            prices[tier_index(tier)] = Some(self.price(value, tier_field, DOLLARS_PER_CREDIT_SCALE_MAX)?);
        }
        let mut dollars_per_credit = [Decimal::ZERO; 3];
        for (tier, code) in [(PlanTier::Payg, "PAYG"), (PlanTier::Basic, "BASIC"), (PlanTier::Pro, "PRO")] {
            match prices[tier_index(tier)] {
                Some(price) => dollars_per_credit[tier_index(tier)] = price,
                None => {
                    return Err(self.error(
                        tiers_offset,
                        format!("versions[{index}].tiers.{code}"),
                        Problem::MissingTier(code),
                    ));
                }
            }
        }
        // Weak order: BASIC may equal PAYG (e.g. a promotion), but a cheaper
        // plan never charges more per credit than a dearer one.
        for (higher, lower, higher_code, lower_code) in
            [(PlanTier::Basic, PlanTier::Payg, "BASIC", "PAYG"), (PlanTier::Pro, PlanTier::Basic, "PRO", "BASIC")]
        {
            let (higher_price, lower_price) =
                (dollars_per_credit[tier_index(higher)], dollars_per_credit[tier_index(lower)]);
            if higher_price > lower_price {
                let offset = raw
                    .tiers
                    .get_ref()
                    .iter()
                    .find(|(name, _)| name.get_ref() == higher_code)
                    .map_or(tiers_offset, |(_, value)| value.span().start);
                return Err(self.error(
                    offset,
                    format!("versions[{index}].tiers.{higher_code}"),
                    Problem::TierOrder { higher: higher_code, higher_price, lower: lower_code, lower_price },
                ));
            }
        }

        if raw.services.is_empty() {
            return Err(self.error(raw.id.span().start, field("services"), Problem::NoServices));
        }
        let mut services: Vec<ServiceRate> = Vec::with_capacity(raw.services.len());
        let mut first_lines: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (service_index, raw_service) in raw.services.iter().enumerate() {
            let raw_service = raw_service.get_ref();
            let field = |name: &str| format!("versions[{index}].services[{service_index}].{name}");
            let rate = ServiceRate {
                service: self.code(&raw_service.service, field("service"))?,
                engine: self.code(&raw_service.engine, field("engine"))?,
                display: self.code(&raw_service.display, field("display"))?,
                unit: self.unit(&raw_service.unit, field("unit"))?,
                credits_per_unit: self.price(
                    &raw_service.credits_per_unit,
                    field("credits_per_unit"),
                    CREDITS_PER_UNIT_SCALE_MAX,
                )?,
            };
            let key = (rate.service.clone(), rate.engine.clone());
            let offset = raw_service.service.span().start;
            if let Some(&first_line) = first_lines.get(&key) {
                return Err(self.error(
                    offset,
                    field("service"),
                    Problem::DuplicateService { service: key.0, engine: key.1, first_line },
                ));
            }
            first_lines.insert(key, line_of(self.text, offset));
            services.push(rate);
        }
        let mut index: HashMap<String, Vec<(String, usize)>, FxBuildHasher> = HashMap::default();
        for (position, rate) in services.iter().enumerate() {
            index.entry(rate.service.clone()).or_default().push((rate.engine.clone(), position));
        }
        Ok(RateVersion { id, effective_from, dollars_per_credit, services, index })
    }

    fn code(&self, value: &Spanned<String>, field: String) -> Result<String, RatesError> {
        let text = value.get_ref().trim();
        if text.is_empty() {
            return Err(self.error(value.span().start, field, Problem::Empty));
        }
        Ok(text.to_string())
    }

    fn unit(&self, value: &Spanned<String>, field: String) -> Result<Unit, RatesError> {
        match value.get_ref().as_str() {
            "image" => Ok(Unit::Image),
            "video_second" => Ok(Unit::VideoSecond),
            "message" => Ok(Unit::Message),
            other => Err(self.error(value.span().start, field, Problem::UnknownUnit(other.to_string()))),
        }
    }

    fn instant(&self, value: &Spanned<toml::Value>, field: String) -> Result<DateTime<Utc>, RatesError> {
        let offset = value.span().start;
        let text = match value.get_ref() {
            toml::Value::String(text) => text.clone(),
            // A bare TOML datetime: only an offset datetime is an instant; a
            // local date or time would depend on the reader's time zone.
            toml::Value::Datetime(datetime)
                if datetime.date.is_some() && datetime.time.is_some() && datetime.offset.is_some() =>
            {
                datetime.to_string()
            }
            other => return Err(self.error(offset, field, Problem::BadInstant(other.to_string()))),
        };
        DateTime::parse_from_rfc3339(&text)
            .map(|instant| instant.with_timezone(&Utc))
            .map_err(|_| self.error(offset, field, Problem::BadInstant(format!("{text:?}"))))
    }

    fn price(&self, value: &Spanned<toml::Value>, field: String, scale_max: u32) -> Result<Decimal, RatesError> {
        let span = value.span();
        let parsed = match value.get_ref() {
            toml::Value::String(text) => text.trim().parse::<Decimal>().ok().filter(|_| is_plain_decimal(text.trim())),
            toml::Value::Integer(integer) => Some(Decimal::from(*integer)),
            // Read the literal as written, never the f64 the parser made of it.
            toml::Value::Float(_) => {
                let literal = self.text.get(span.clone()).unwrap_or("").trim().replace('_', "");
                if is_plain_decimal(&literal) {
                    literal.parse::<Decimal>().ok()
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some(price) = parsed else {
            let shown = self.text.get(span.clone()).unwrap_or("").trim().to_string();
            return Err(self.error(span.start, field, Problem::NotADecimal(shown)));
        };
        if price <= Decimal::ZERO {
            return Err(self.error(span.start, field, Problem::NotPositive(price)));
        }
        let price = price.normalize();
        if price.scale() > scale_max {
            return Err(self.error(
                span.start,
                field,
                Problem::TooManyFractionalDigits { value: price, max: scale_max },
            ));
        }
        Ok(price)
    }
}

/// `[+-]digits[.digits]`: no exponent, no `inf`/`nan`, so the text is the
/// exact value.
fn is_plain_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()) && fraction.bytes().all(|b| b.is_ascii_digit())
}

fn instant_text(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
}
