//! tally's wire records and their codec.
//!
//! This crate is the bottom of the workspace: every other crate speaks in
//! these types. It does no I/O, reads no clock and uses no floats.
//!
//! - [`records`]: the Rust form of each Avro schema in `schemas/avro/`
//!   (usage events, purchases, account changes, ledger entries, alerts,
//!   dead letters).
//! - [`codec`]: Avro single-object encoding (`C3 01` + 8-byte little-endian
//!   CRC-64-AVRO fingerprint + Avro binary body). Any Avro implementation can
//!   decode these messages without a registry; the codec resolves every
//!   writer schema it knows (current and previous versions) by fingerprint.
//! - [`ledger_reader`]: the one fenced reader of a ledger partition, which
//!   every reader of the ledger uses.
//! - [`names`]: topic names, in one place.
//! - [`reason`]: the stable reason codes of dead letters and failed entries.
//! - [`decimal`]: exact decimal text, the only way decimals are read.
//! - [`money`], [`ids`]: credits, dollars, prices, account ids, sequences
//!   and epochs as types that cannot be mixed up.
//! - [`limits`]: what an identifier may be, and how much outside text is
//!   ever copied into a record or a log line.
//!
//! Invariant: money and credits are [`Credits`] and [`Dollars`] over
//! `rust_decimal::Decimal`, carried on the wire as decimal text read
//! exactly, so no precision is ever lost.
//!
//! ```
//! use tally_events::{codec::Codec, records::CreditPurchase};
//! let purchase = CreditPurchase {
//!     purchase_id: uuid::Uuid::nil(),
//!     account_id: "acct-1".into(),
//!     amount_dollars: "25.00".parse().unwrap(),
//!     occurred_at: chrono::DateTime::from_timestamp_millis(0).unwrap(),
//!     payment_reference: None,
//! };
//! let bytes = Codec::global().encode(&purchase).unwrap();
//! assert_eq!(&bytes[..2], &[0xC3, 0x01]);
//! let back: CreditPurchase = Codec::global().decode(&bytes).unwrap();
//! assert_eq!(back, purchase);
//! ```
#![deny(missing_docs)]

mod body_reader;
pub mod codec;
pub mod decimal;
mod entry_writer;
pub mod fence;
pub mod ids;
pub mod ledger_reader;
pub mod limits;
pub mod money;
pub mod names;
pub mod reason;
pub mod records;

pub use codec::{Codec, CodecError, Message};
pub use ids::{AccountId, Epoch, Interner, Sequence};
pub use money::{Credits, CreditsPerUnit, Dollars, DollarsPerCredit};
pub use reason::Reason;
pub use records::*;
