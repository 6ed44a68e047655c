//! Named crash points for fault-injection tests, compiled only with the
//! `fault-injection` feature (the end-to-end tests build `tally` with it;
//! a release build has none, and these functions do nothing there).
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

    pub fn unsafe_skip_restore() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("TALLY_UNSAFE_SKIP_RESTORE").is_ok_and(|v| v == "1"))
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

/// Whether the deliberately broken skip-restore variant is on (tests only).
#[inline]
pub fn unsafe_skip_restore() -> bool {
    #[cfg(feature = "fault-injection")]
    return enabled::unsafe_skip_restore();
    #[cfg(not(feature = "fault-injection"))]
    false
}
