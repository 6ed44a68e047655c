//! Metering's named crash points for fault-injection tests (the mechanism,
//! shared by every service, is `tally_service::faults`), compiled only with
//! the `fault-injection` feature (the end-to-end tests build `tally` with
//! it; a release build has none, and these functions do nothing there).
//!
//! `TALLY_CRASH_AT=<point>:<n>` aborts the process (no flush, no
//! destructors: what kill -9 does) the n-th time it passes `<point>`.
//! Points: `before_produce`, `before_ack` (records in flight),
//! `after_ledger_write` (ledger acknowledged, offsets not committed),
//! `after_snapshot` (a snapshot acknowledged),
//! `restore_after_claim` (claim written, state not yet rebuilt). Unset, a
//! point costs one relaxed atomic load.
//!
//! `TALLY_UNSAFE_SKIP_RESTORE=1` is a deliberately broken variant for the
//! crash test's self-check: it starts partitions from the consumer group's
//! committed offset with empty state, ignoring the ledger.

pub use tally_service::faults::point;

/// Whether the deliberately broken variant is on (tests only).
#[inline]
pub fn unsafe_skip_restore() -> bool {
    tally_service::faults::unsafe_variant("TALLY_UNSAFE_SKIP_RESTORE")
}
