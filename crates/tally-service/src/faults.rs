//! Named crash points and deliberately broken variants for the
//! fault-injection tests, shared by every service. Compiled only with the
//! `fault-injection` feature (the end-to-end tests build `tally` with it;
//! in a release build these functions do nothing and return `false`).
//!
//! `TALLY_CRASH_AT=<point>:<n>` aborts the process (no flush, no
//! destructors: what kill -9 does) the n-th time it passes `<point>`. Each
//! service names its points in its own `faults` module. Unset, a point
//! costs one relaxed atomic load.

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
}

/// Passes a named point; aborts when the plan says so.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "fault-injection")]
    enabled::point(name);
    #[cfg(not(feature = "fault-injection"))]
    let _ = name;
}

/// Whether the deliberately broken variant switched on by environment
/// variable `variable` (set to `1`) is on: tests only, never in a release.
#[inline]
pub fn unsafe_variant(variable: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    return std::env::var(variable).is_ok_and(|v| v == "1");
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = variable;
        false
    }
}
