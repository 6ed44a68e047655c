//! Named crash points for the end-to-end fault tests, compiled only with
//! the `fault-injection` feature (a release build has none).
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

#[cfg(feature = "fault-injection")]
mod enabled {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    };

    struct Plan {
        point: String,
        at: u64,
        seen: AtomicU64,
    }

    fn plan() -> Option<&'static Plan> {
        static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let spec = std::env::var("TALLY_CRASH_AT").ok()?;
            let (point, at) = spec.split_once(':')?;
            Some(Plan { point: point.to_string(), at: at.parse().ok()?, seen: AtomicU64::new(0) })
        })
        .as_ref()
    }

    pub fn point(name: &str) {
        if let Some(plan) = plan() {
            if plan.point == name && plan.seen.fetch_add(1, Ordering::Relaxed) + 1 == plan.at {
                eprintln!("fault injection: crashing at {name} (pass {})", plan.at);
                std::process::abort();
            }
        }
    }

    pub fn blind_resume() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("TALLY_UNSAFE_AGGREGATOR_BLIND_RESUME").is_ok_and(|v| v == "1"))
    }
}

/// Passes a named point; aborts when the plan says so.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    enabled::point(name);
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// Whether the deliberately broken blind-resume variant is on (tests only).
#[inline]
pub fn blind_resume() -> bool {
    #[cfg(feature = "fault-injection")]
    return enabled::blind_resume();
    #[cfg(not(feature = "fault-injection"))]
    false
}
