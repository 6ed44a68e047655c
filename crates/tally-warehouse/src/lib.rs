//! tally's ClickHouse side, shared by every service and command that reads
//! or writes the ledger in ClickHouse (the aggregator, `tally migrate`,
//! `tally query`, reconciliation):
//!
//! - [`migrations`]: the versioned schema in `schemas/clickhouse/migrations/`,
//!   applied once each and checked by checksum;
//! - [`row`]: one counted ledger entry as the raw table stores it, exactly;
//! - [`rollups`]: the rollups the views fill, and how a partition of them is
//!   rebuilt from the raw table;
//! - [`queries`]: the named, parameterised questions in
//!   `schemas/clickhouse/queries/`, with typed parameters bound by the
//!   client (never spliced);
//! - [`finance`]: finance's day per account (opening, added, consumed,
//!   forfeited, closing) in any zone, and the checks that it ties out;
//! - [`reconcile`]: the ledger topic's tallies per booked day, account and
//!   service against the raw table's, every difference named;
//! - [`client`]: the connection and its typed, retry-aware errors.
//!
//! The SQL runs unchanged on ClickHouse 18.16 and on current versions: see
//! the comments of each migration for the choices that makes.

pub mod client;
pub mod finance;
pub mod migrations;
pub mod queries;
pub mod reconcile;
pub mod rollup_check;
pub mod rollups;
pub mod row;

pub use client::{Warehouse, WarehouseConfig, WarehouseError};
