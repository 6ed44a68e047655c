//! The aggregator's named crash points for the end-to-end fault tests (the
//! mechanism, shared by every service, is `tally_service::faults`),
//! compiled only with the `fault-injection` feature (a release build has
//! none).
//!
//! `TALLY_CRASH_AT=<point>:<n>` aborts the process (what kill -9 does) the
//! n-th time it passes `<point>`. Points: `mid_insert` (the first row of an
//! INSERT body sent, the rest not), `month_boundary` (one month's INSERT
//! done, the next not started), `after_insert` (every INSERT of a batch
//! done, the resume point not recorded), `after_progress`.
//!
//! `TALLY_UNSAFE_AGGREGATOR_BLIND_RESUME=1` is a deliberately broken
//! variant for the tests' self-check: it resumes from the recorded point
//! without reading back what an unfinished batch left, so that rows are
//! inserted twice.

pub use tally_service::faults::point;

/// Whether the deliberately broken variant is on (tests only).
#[inline]
pub fn blind_resume() -> bool {
    tally_service::faults::unsafe_variant("TALLY_UNSAFE_AGGREGATOR_BLIND_RESUME")
}
