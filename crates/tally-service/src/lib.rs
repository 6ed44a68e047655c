//! What every long-running tally service shares, and nothing else:
//!
//! - [`config`]: load one typed config from a TOML file plus
//!   `TALLY_<SERVICE>__<FIELD>` environment overrides, with errors that name
//!   the file and the field.
//! - [`kafka`]: consumer and producer settings that suit every broker tally
//!   meets, partition counts, and reading a partition (to its end by the
//!   high watermark of fetches, or to a known offset).
//! - [`http`]: `/metrics` (Prometheus text) and `/health`, with timeouts.
//! - [`lifecycle`]: start, run until SIGTERM, drain by a deadline.
//! - [`shutdown`]: SIGTERM / SIGINT as a watch channel.
//! - [`watch`]: every partition of an input topic watched for inputs that
//!   wait with no progress (a partition no live instance owns).
//!
//! It holds no business rule: pricing and ledger rules live in
//! `tally-ledger`.

pub mod config;
pub mod faults;
#[cfg(feature = "http")]
pub mod http;
pub mod kafka;
#[cfg(feature = "http")]
pub mod lifecycle;
pub mod shutdown;
pub mod watch;
