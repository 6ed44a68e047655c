//! The notifier's named crash points for the end-to-end fault tests (the
//! mechanism, shared by every service, is `tally_service::faults`),
//! compiled only with the `fault-injection` feature (a release build has
//! none).
//!
//! `TALLY_CRASH_AT=<point>:<n>` aborts the process (what kill -9 does) the
//! n-th time it passes `<point>`. Points: `notify_after_attempting` (the
//! "attempting" record acknowledged, nothing POSTed), `notify_after_post`
//! (the endpoint answered 2xx, the "delivered" record not written: the
//! one window in which a second POST of the alert is possible).

pub use tally_service::faults::point;
