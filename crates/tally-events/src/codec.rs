//! Avro single-object encoding with a fingerprint cache.
//!
//! A message is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin)
//! fingerprint of the writer schema's canonical form, then the Avro binary
//! body. Every schema is parsed once, when the codec is built; decoding
//! looks the writer schema up by fingerprint and, when it is an older
//! version, resolves it to the current one (fields added with defaults).
//!
//! The fingerprint follows the Avro spec's Parsing Canonical Form, so Java,
//! Python (fastavro) and other implementations compute the same one from
//! the schema files (`tests/tests/avro_interop.rs` checks against fastavro).
//! apache-avro 0.21 does not: for a primitive with a logical type it keeps
//! `{"type":"long"}` where the spec's form is `"long"` (AVRO-4004), so
//! [`spec_fingerprint`] mends its canonical form before hashing. Messages
//! that earlier tally builds wrote with apache-avro's fingerprint still
//! decode: both fingerprints of every known schema are accepted.
//!
//! Two readers decode a body. A message in a record's current schema is
//! first read by `serde_avro_fast` straight into the Rust record (no
//! generic `Value` tree: on the metering and aggregator hot paths building
//! and converting that tree was most of the decode). Should that fail for
//! any reason, or the writer be an older version (which needs schema
//! resolution), apache-avro reads it: it is the reference reader, and every
//! refusal, with its reason and message, comes from it. So the fast reader
//! can only change how quickly a good message decodes, never what a bad
//! one is refused for; a differential test checks that whatever the fast
//! reader accepts the reference reader accepts as the same record.
//!
//! Invariants: encoding is deterministic (same record, same bytes); decoding
//! never panics on any input, it returns a [`CodecError`] whose
//! [`CodecError::reason`] is a stable dead-letter code.

use std::{collections::HashMap, sync::LazyLock};

use apache_avro::{rabin::Rabin, types::Value, GenericSingleObjectReader, Schema};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    reason::Reason,
    records::{
        AccountChange, Alert, CreditPurchase, DeadLetter, Input, LedgerEntry, LedgerMarker, PartitionSnapshot,
        UsageEvent,
    },
};

/// The two magic bytes of Avro single-object encoding.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Header length: magic plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// Which record a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// [`UsageEvent`]
    UsageEvent,
    /// [`CreditPurchase`]
    CreditPurchase,
    /// [`AccountChange`]
    AccountChange,
    /// [`LedgerEntry`]
    LedgerEntry,
    /// [`Alert`]
    Alert,
    /// [`DeadLetter`]
    DeadLetter,
    /// [`LedgerMarker`]
    LedgerMarker,
    /// [`PartitionSnapshot`]
    PartitionSnapshot,
}

impl RecordKind {
    /// Every record kind.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::UsageEvent,
        RecordKind::CreditPurchase,
        RecordKind::AccountChange,
        RecordKind::LedgerEntry,
        RecordKind::Alert,
        RecordKind::DeadLetter,
        RecordKind::LedgerMarker,
        RecordKind::PartitionSnapshot,
    ];

    /// The record's Avro name.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::UsageEvent => "UsageEvent",
            RecordKind::CreditPurchase => "CreditPurchase",
            RecordKind::AccountChange => "AccountChange",
            RecordKind::LedgerEntry => "LedgerEntry",
            RecordKind::Alert => "Alert",
            RecordKind::DeadLetter => "DeadLetter",
            RecordKind::LedgerMarker => "LedgerMarker",
            RecordKind::PartitionSnapshot => "PartitionSnapshot",
        }
    }

    /// Schema texts, current version first, then older versions still
    /// decoded, newest first (`schemas/avro/previous/<record>.v<N>.avsc`).
    /// A record added after the first release and never changed has one.
    pub fn schema_texts(self) -> &'static [&'static str] {
        match self {
            RecordKind::UsageEvent => &[
                include_str!("../../../schemas/avro/usage_event.avsc"),
                include_str!("../../../schemas/avro/previous/usage_event.v1.avsc"),
            ],
            RecordKind::CreditPurchase => &[
                include_str!("../../../schemas/avro/credit_purchase.avsc"),
                include_str!("../../../schemas/avro/previous/credit_purchase.v1.avsc"),
            ],
            RecordKind::AccountChange => &[
                include_str!("../../../schemas/avro/account_change.avsc"),
                include_str!("../../../schemas/avro/previous/account_change.v1.avsc"),
            ],
            RecordKind::LedgerEntry => &[
                include_str!("../../../schemas/avro/ledger_entry.avsc"),
                include_str!("../../../schemas/avro/previous/ledger_entry.v3.avsc"),
                include_str!("../../../schemas/avro/previous/ledger_entry.v2.avsc"),
                include_str!("../../../schemas/avro/previous/ledger_entry.v1.avsc"),
            ],
            RecordKind::Alert => &[
                include_str!("../../../schemas/avro/alert.avsc"),
                include_str!("../../../schemas/avro/previous/alert.v2.avsc"),
                include_str!("../../../schemas/avro/previous/alert.v1.avsc"),
            ],
            RecordKind::DeadLetter => &[
                include_str!("../../../schemas/avro/dead_letter.avsc"),
                include_str!("../../../schemas/avro/previous/dead_letter.v2.avsc"),
                include_str!("../../../schemas/avro/previous/dead_letter.v1.avsc"),
            ],
            RecordKind::LedgerMarker => &[include_str!("../../../schemas/avro/ledger_marker.avsc")],
            RecordKind::PartitionSnapshot => &[
                include_str!("../../../schemas/avro/partition_snapshot.avsc"),
                include_str!("../../../schemas/avro/previous/partition_snapshot.v2.avsc"),
                include_str!("../../../schemas/avro/previous/partition_snapshot.v1.avsc"),
            ],
        }
    }
}

/// A Rust type that is the current version of an Avro record.
pub trait Record: Serialize + DeserializeOwned {
    /// Which record.
    const KIND: RecordKind;

    /// Appends the Avro body with a writer of the record's own, where it
    /// has one for its hot path; `None` leaves it to the generic writer.
    /// Must write exactly what the generic writer writes.
    #[doc(hidden)]
    fn write_body(&self, _out: &mut Vec<u8>) -> Option<()> {
        None
    }

    /// Reads an Avro body of the current schema with a reader of the
    /// record's own, where it has one for its hot path; `None` leaves it
    /// to the generic readers. Must read only what they read the same.
    #[doc(hidden)]
    fn read_body(_body: &[u8]) -> Option<Self> {
        None
    }
}

macro_rules! record {
    ($($ty:ident),*) => {$(impl Record for $ty { const KIND: RecordKind = RecordKind::$ty; })*};
}
record!(CreditPurchase, AccountChange, Alert, DeadLetter, LedgerMarker, PartitionSnapshot);

impl Record for UsageEvent {
    const KIND: RecordKind = RecordKind::UsageEvent;

    /// Metering reads one per event: see `body_reader`.
    fn read_body(body: &[u8]) -> Option<Self> {
        crate::body_reader::usage_event(body)
    }
}

impl Record for LedgerEntry {
    const KIND: RecordKind = RecordKind::LedgerEntry;

    /// Metering writes one per input: see `entry_writer`.
    fn write_body(&self, out: &mut Vec<u8>) -> Option<()> {
        crate::entry_writer::write(self, out)
    }

    /// Every ledger reader reads one per record: see `body_reader`.
    fn read_body(body: &[u8]) -> Option<Self> {
        crate::body_reader::ledger_entry(body)
    }
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// Fewer bytes than a header.
    #[error("message of {len} bytes is too short for an Avro single-object header (10 bytes)")]
    TooShort {
        /// Length seen.
        len: usize,
    },
    /// The first two bytes are not `C3 01`.
    #[error("message starts with {found:02x?}, not the Avro single-object magic c3 01")]
    BadMagic {
        /// The bytes seen.
        found: [u8; 2],
    },
    /// A fingerprint of no schema this codec knows.
    #[error("unknown Avro schema fingerprint {fingerprint:016x}")]
    UnknownSchema {
        /// The fingerprint (as read, little-endian).
        fingerprint: u64,
    },
    /// A known schema, but of another record than the one asked for.
    #[error("message is a {found}, expected a {expected}")]
    WrongRecord {
        /// Record asked for.
        expected: &'static str,
        /// Record found.
        found: &'static str,
    },
    /// The body does not decode with the writer schema, or does not fit the type.
    #[error("malformed {record} body: {message}")]
    Malformed {
        /// Record being decoded.
        record: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A decimal field of an input that is not exact decimal text: refused
    /// with the field's own reason, quoting the value as sent.
    #[error("{record} field {field}: {problem}")]
    InvalidDecimal {
        /// Record being decoded.
        record: &'static str,
        /// The field.
        field: &'static str,
        /// The field's dead-letter reason.
        reason: Reason,
        /// What is wrong, quoting the text.
        problem: crate::decimal::DecimalError,
    },
    /// A record that does not fit its own schema (a bug in the caller's data).
    #[error("cannot encode {record}: {message}")]
    Encode {
        /// Record being encoded.
        record: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl CodecError {
    /// The dead-letter reason of this error.
    pub fn reason(&self) -> Reason {
        match self {
            CodecError::UnknownSchema { .. } => Reason::UnknownSchema,
            CodecError::WrongRecord { .. } => Reason::NotAnInput,
            CodecError::InvalidDecimal { reason, .. } => *reason,
            _ => Reason::Malformed,
        }
    }
}

/// Any decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An input record.
    Input(Input),
    /// A ledger entry.
    Ledger(LedgerEntry),
    /// An alert.
    Alert(Alert),
    /// A dead letter.
    DeadLetter(DeadLetter),
    /// A ledger marker.
    Marker(LedgerMarker),
    /// A chunk of a partition snapshot.
    Snapshot(Box<PartitionSnapshot>),
}

struct WriterSchema {
    kind: RecordKind,
    /// Decodes with the schema's names resolved once: `from_avro_datum`
    /// would rebuild that name table for every message.
    reader: GenericSingleObjectReader,
    /// The header `reader` insists on: apache-avro's own fingerprint, which
    /// differs from the spec's for schemas with logical types. The body is
    /// fed to the reader behind this header, whatever header it came with.
    reader_header: [u8; HEADER_LEN],
    current: bool,
    /// The fast reader's and writer's form of the schema, for the current
    /// version only (they resolve no schema to another); `None` in the
    /// reference codec, which reads and writes with apache-avro.
    fast: Option<serde_avro_fast::Schema>,
}

struct CurrentSchema {
    schema: Schema,
    fingerprint: [u8; 8],
    /// Its entry in `Codec::schemas` (which holds its fast form).
    writer: usize,
}

/// Encoder and decoder of every tally record. Build it once (or use
/// [`Codec::global`]); it holds the parsed schemas.
pub struct Codec {
    /// Writer schemas by fingerprint (spec and legacy) as an index into
    /// `schemas`.
    writers: HashMap<u64, usize>,
    schemas: Vec<WriterSchema>,
    current: HashMap<RecordKind, CurrentSchema>,
}

static GLOBAL: LazyLock<Codec> = LazyLock::new(Codec::new);

/// CRC-64-AVRO fingerprint as apache-avro computes it (see the module doc).
fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// The 8-byte CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form
/// as the Avro spec defines it, the one single-object headers carry.
///
/// apache-avro's canonical form drops `logicalType` but leaves the primitive
/// wrapped (`{"type":"long"}`); the spec's \[PRIMITIVES\] rule writes it
/// as `"long"`. Plain text replacement is exact here: in canonical form
/// such an object can only be a schema, since Avro names and symbols cannot
/// hold braces or quotes. The mended form, parsed again, has no logical
/// types left, so apache-avro fingerprints it as the spec does.
pub fn spec_fingerprint(schema: &Schema) -> [u8; 8] {
    const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];
    let mut form = schema.canonical_form();
    for primitive in PRIMITIVES {
        form = form.replace(&format!(r#"{{"type":"{primitive}"}}"#), &format!(r#""{primitive}""#));
    }
    match Schema::parse_str(&form) {
        Ok(plain) => legacy_fingerprint(&plain),
        // A canonical form always parses; should it not, the library's own
        // fingerprint is still a stable identity for this process.
        Err(_) => legacy_fingerprint(schema),
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// Parses every schema. The schemas are compiled in, so a parse error is
    /// a bug caught by the tests, not an operating error.
    pub fn new() -> Self {
        Self::build(true)
    }

    /// A codec that decodes and encodes with apache-avro alone (the
    /// reference reader and writer): what [`Codec::new`] answers for every
    /// message and the bytes it writes for every record, more slowly. For
    /// differential tests and benches of the fast reader and writer.
    pub fn reference() -> Self {
        Self::build(false)
    }

    #[allow(clippy::expect_used)]
    fn build(fast: bool) -> Self {
        let mut writers = HashMap::new();
        let mut schemas = Vec::new();
        let mut current = HashMap::new();
        for kind in RecordKind::ALL {
            for (version, text) in kind.schema_texts().iter().enumerate() {
                let schema = Schema::parse_str(text).expect("tally's own Avro schemas parse");
                let fp = spec_fingerprint(&schema);
                let legacy = legacy_fingerprint(&schema);
                if version == 0 {
                    current
                        .insert(kind, CurrentSchema { schema: schema.clone(), fingerprint: fp, writer: schemas.len() });
                }
                let fast = (fast && version == 0)
                    .then(|| text.parse::<serde_avro_fast::Schema>().expect("tally's own Avro schemas parse"));
                let mut reader_header = [0u8; HEADER_LEN];
                reader_header[..2].copy_from_slice(&MAGIC);
                reader_header[2..].copy_from_slice(&legacy);
                let reader = GenericSingleObjectReader::new(schema).expect("tally's own Avro schemas resolve");
                writers.insert(u64::from_le_bytes(fp), schemas.len());
                writers.insert(u64::from_le_bytes(legacy), schemas.len());
                schemas.push(WriterSchema { kind, reader, reader_header, current: version == 0, fast });
            }
        }
        Codec { writers, schemas, current }
    }

    /// A process-wide codec, built on first use.
    pub fn global() -> &'static Codec {
        &GLOBAL
    }

    /// The current schema of a record kind.
    pub fn schema(&self, kind: RecordKind) -> &Schema {
        &self.current[&kind].schema
    }

    /// The 8-byte fingerprint of a record kind's current schema, as written
    /// in the header.
    pub fn fingerprint(&self, kind: RecordKind) -> [u8; 8] {
        self.current[&kind].fingerprint
    }

    /// Encodes a record with its current schema.
    pub fn encode<T: Record>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(record, &mut out)?;
        Ok(out)
    }

    /// Encodes a record, appending to `out`.
    pub fn encode_into<T: Record>(&self, record: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let current = &self.current[&T::KIND];
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&current.fingerprint);
        // Serialize straight into the buffer, guided by the schema: no
        // intermediate `Value` tree (building and resolving one cost several
        // times the write on the metering hot path). serde_avro_fast writes
        // enums by symbol name and apache-avro (the reference writer) by
        // variant index, so each Rust enum lists its variants in the
        // schema's symbol order and a test compares the writers byte for
        // byte. Our schemas define every named type inline, so no name
        // table is needed.
        let written = match &self.schemas[current.writer].fast {
            Some(_) if record.write_body(out).is_some() => Ok(()),
            Some(fast) => {
                let mut config = serde_avro_fast::ser::SerializerConfig::new(fast);
                serde_avro_fast::to_datum(record, &mut *out, &mut config).map(drop).map_err(|e| e.to_string())
            }
            None => {
                apache_avro::write_avro_datum_ref(&current.schema, record, out).map(drop).map_err(|e| e.to_string())
            }
        };
        if let Err(message) = written {
            out.truncate(start);
            return Err(CodecError::Encode { record: T::KIND.name(), message });
        }
        Ok(())
    }

    fn header<'a>(&self, bytes: &'a [u8]) -> Result<(&WriterSchema, &'a [u8]), CodecError> {
        if bytes.len() < HEADER_LEN {
            return Err(CodecError::TooShort { len: bytes.len() });
        }
        if bytes[..2] != MAGIC {
            return Err(CodecError::BadMagic { found: [bytes[0], bytes[1]] });
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[2..HEADER_LEN]);
        let fingerprint = u64::from_le_bytes(fp);
        let writer = self.writers.get(&fingerprint).ok_or(CodecError::UnknownSchema { fingerprint })?;
        Ok((&self.schemas[*writer], &bytes[HEADER_LEN..]))
    }

    /// The record kind a message claims to be, from its header alone.
    pub fn kind_of(&self, bytes: &[u8]) -> Result<RecordKind, CodecError> {
        Ok(self.header(bytes)?.0.kind)
    }

    /// Decodes a whole message (header included) whose header named
    /// `writer`.
    fn decode_with<T: Record>(&self, writer: &WriterSchema, message: &[u8]) -> Result<T, CodecError> {
        // The current schema (`fast` is only set for it) in the fast codec:
        // the record's own reader, then serde_avro_fast, then apache-avro,
        // each trying only where the one before was not sure.
        if writer.fast.is_some() {
            if let Some(record) = message.get(HEADER_LEN..).and_then(T::read_body) {
                return Ok(record);
            }
        }
        if let Some(record) = writer.fast.as_ref().and_then(|fast| read_fast(fast, message.get(HEADER_LEN..)?)) {
            return Ok(record);
        }
        let value = self.read_value(writer, message)?;
        check_input_decimals(writer.kind, &value)?;
        from_value(&value).map_err(|message| CodecError::Malformed { record: writer.kind.name(), message })
    }

    /// The datum of a whole message whose header named `writer`, in the
    /// record's current schema.
    fn read_value(&self, writer: &WriterSchema, message: &[u8]) -> Result<Value, CodecError> {
        let record = writer.kind.name();
        let malformed = |message: String| CodecError::Malformed { record, message };
        let mut input = std::io::Read::chain(&writer.reader_header[..], message.get(HEADER_LEN..).unwrap_or_default());
        let mut value = writer.reader.read_value(&mut input).map_err(|e| malformed(e.to_string()))?;
        let rest = input.get_ref().1;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes after the record", rest.len())));
        }
        if !writer.current {
            // An older version: fill the fields added since with defaults.
            value = value.resolve(self.schema(writer.kind)).map_err(|e| malformed(e.to_string()))?;
        }
        Ok(value)
    }

    /// Decodes any tally record into a generic Avro value of its current
    /// schema (older versions resolved): for tools that print records
    /// without knowing their type, with [`value_to_json`].
    pub fn decode_value(&self, bytes: &[u8]) -> Result<(RecordKind, Value), CodecError> {
        let (writer, _) = self.header(bytes)?;
        Ok((writer.kind, self.read_value(writer, bytes)?))
    }

    /// Whether the fast reader alone reads `bytes` as a whole record of the
    /// kind its header names: what tests and benches check to know the hot
    /// path takes it. Decoding never needs this.
    pub fn decodes_fast(&self, bytes: &[u8]) -> bool {
        let Ok((writer, body)) = self.header(bytes) else { return false };
        let Some(fast) = &writer.fast else { return false };
        match writer.kind {
            RecordKind::UsageEvent => read_fast::<UsageEvent>(fast, body).is_some(),
            RecordKind::CreditPurchase => read_fast::<CreditPurchase>(fast, body).is_some(),
            RecordKind::AccountChange => read_fast::<AccountChange>(fast, body).is_some(),
            RecordKind::LedgerEntry => read_fast::<LedgerEntry>(fast, body).is_some(),
            RecordKind::Alert => read_fast::<Alert>(fast, body).is_some(),
            RecordKind::DeadLetter => read_fast::<DeadLetter>(fast, body).is_some(),
            RecordKind::LedgerMarker => read_fast::<LedgerMarker>(fast, body).is_some(),
            RecordKind::PartitionSnapshot => read_fast::<PartitionSnapshot>(fast, body).is_some(),
        }
    }

    /// Decodes a message that must be a `T`.
    pub fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (writer, _) = self.header(bytes)?;
        if writer.kind != T::KIND {
            return Err(CodecError::WrongRecord { expected: T::KIND.name(), found: writer.kind.name() });
        }
        self.decode_with(writer, bytes)
    }

    /// Decodes a message of the input topic: a usage event, purchase or
    /// account change.
    pub fn decode_input(&self, bytes: &[u8]) -> Result<Input, CodecError> {
        let (writer, _) = self.header(bytes)?;
        match writer.kind {
            RecordKind::UsageEvent => self.decode_with(writer, bytes).map(Input::Usage),
            RecordKind::CreditPurchase => self.decode_with(writer, bytes).map(Input::Purchase),
            RecordKind::AccountChange => self.decode_with(writer, bytes).map(Input::Account),
            other => Err(CodecError::WrongRecord {
                expected: "usage event, purchase or account change",
                found: other.name(),
            }),
        }
    }

    /// Decodes any tally record.
    pub fn decode_any(&self, bytes: &[u8]) -> Result<Message, CodecError> {
        let (writer, _) = self.header(bytes)?;
        Ok(match writer.kind {
            RecordKind::UsageEvent | RecordKind::CreditPurchase | RecordKind::AccountChange => {
                Message::Input(self.decode_input(bytes)?)
            }
            RecordKind::LedgerEntry => Message::Ledger(self.decode_with(writer, bytes)?),
            RecordKind::Alert => Message::Alert(self.decode_with(writer, bytes)?),
            RecordKind::DeadLetter => Message::DeadLetter(self.decode_with(writer, bytes)?),
            RecordKind::LedgerMarker => Message::Marker(self.decode_with(writer, bytes)?),
            RecordKind::PartitionSnapshot => Message::Snapshot(Box::new(self.decode_with(writer, bytes)?)),
        })
    }

    /// Encodes an input record.
    pub fn encode_input(&self, input: &Input) -> Result<Vec<u8>, CodecError> {
        match input {
            Input::Usage(e) => self.encode(e),
            Input::Purchase(p) => self.encode(p),
            Input::Account(c) => self.encode(c),
        }
    }
}

/// The decimal field of each input record and the reason refusing it
/// carries. Checked on the decoded datum, before it becomes a record, so
/// that a quantity or an amount that is not exact decimal text is refused
/// for what it is (`invalid_quantity`, quoting it) instead of as a
/// malformed message. Other records' decimals are read as exactly, by the
/// records' serde, and fail as malformed.
fn check_input_decimals(kind: RecordKind, value: &Value) -> Result<(), CodecError> {
    let (field, reason) = match kind {
        RecordKind::UsageEvent => ("quantity", Reason::InvalidQuantity),
        RecordKind::CreditPurchase => ("amount_dollars", Reason::InvalidAmount),
        RecordKind::AccountChange => ("low_balance_threshold", Reason::InvalidThreshold),
        _ => return Ok(()),
    };
    let Value::Record(fields) = value else { return Ok(()) };
    match fields.iter().find(|(name, _)| name == field) {
        Some((_, Value::String(text))) => crate::decimal::parse_exact(text)
            .map(|_| ())
            .map_err(|problem| CodecError::InvalidDecimal { record: kind.name(), field, reason, problem }),
        _ => Ok(()),
    }
}

/// A body read by the fast reader, when it reads as a whole `T` with no
/// byte left over; `None` leaves the verdict to the reference reader.
fn read_fast<T: DeserializeOwned>(schema: &serde_avro_fast::Schema, body: &[u8]) -> Option<T> {
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(body, schema);
    let record = T::deserialize(state.deserializer()).ok()?;
    let mut rest = state.into_reader();
    std::io::BufRead::fill_buf(&mut rest).ok()?.is_empty().then_some(record)
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    apache_avro::from_value(value).map_err(|e| e.to_string())
}

/// An Avro datum as plain JSON, the form other Avro tools print: records
/// and maps as objects, enums as their symbol, unions as the value, bytes
/// as lowercase hex, timestamps as epoch milliseconds. Decimals are strings
/// in tally's schemas, so money stays exact.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
        Value::Long(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i)
        | Value::TimeMicros(i) => Json::from(*i),
        Value::Float(f) => Json::from(*f),
        Value::Double(f) => Json::from(*f),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(b.iter().map(|b| format!("{b:02x}")).collect()),
        Value::Union(_, inner) => value_to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        Value::Map(map) => {
            // Sorted: a HashMap's order would make the output differ run to run.
            let sorted: std::collections::BTreeMap<_, _> = map.iter().collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
        }
        Value::Record(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect()),
        Value::Uuid(u) => Json::String(u.to_string()),
        other => Json::String(format!("{other:?}")),
    }
}

/// Encodes with an explicit writer schema: for tests of schema evolution and
/// for tools that must emit an older version.
pub fn encode_with_schema(schema: &Schema, value: Value) -> Result<Vec<u8>, CodecError> {
    let err = |e: apache_avro::Error| CodecError::Encode { record: "value", message: e.to_string() };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&spec_fingerprint(schema));
    let value = value.resolve(schema).map_err(err)?;
    out.extend_from_slice(&apache_avro::to_avro_datum(schema, value).map_err(err)?);
    Ok(out)
}
