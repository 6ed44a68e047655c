//! The worker SDK: what an AI engine worker links to report usage.
//!
//! - [`UsageEventBuilder`] builds a validated [`UsageEvent`].
//! - [`event_id`] derives the event id from (job id, service, engine), so a
//!   worker that retries the same job emits the same id and tally charges
//!   it once.
//! - [`Publisher`] is an idempotent Kafka producer (`enable.idempotence`,
//!   `acks=all`) with batching (`linger.ms`), backpressure (a bounded queue:
//!   [`Publisher::enqueue`] waits while it is full) and [`Publisher::flush`]
//!   for shutdown; [`InFlight`] bounds the acknowledgements a bulk
//!   publisher awaits.
//! - [`AlertWatcher`] follows the alerts topic, so a worker stops offering
//!   AI features to a paused account ([`AlertWatcher::ai_allowed`]) and
//!   offers them again once it is resumed.
//!
//! Invariant: every record is keyed by its account id, so all of an
//! account's inputs land in one partition, in the order the worker sent them.
//!
//! ```
//! use tally_client::{event_id, UsageEventBuilder};
//! use tally_events::{JobOutcome, Unit};
//! let event = UsageEventBuilder::new("acct-1", "job-77", "ai_modify", "nano_banana_2")
//!     .photo_event("wedding-9")
//!     .booth("booth-2")
//!     .quantity("1".parse().unwrap(), Unit::Image)
//!     .outcome(JobOutcome::Succeeded)
//!     .occurred_at(chrono::DateTime::from_timestamp_millis(1_767_225_600_000).unwrap())
//!     .build()
//!     .unwrap();
//! assert_eq!(event.event_id, event_id("job-77", "ai_modify", "nano_banana_2"));
//! ```
#![deny(missing_docs)]

mod alerts;
mod builder;
mod in_flight;
mod publisher;

pub use alerts::{AccountAlerts, AlertWatcher, AlertWatcherConfig};
pub use builder::{event_id, input_id, BuildError, UsageEventBuilder};
pub use in_flight::InFlight;
pub use publisher::{ClientError, Delivery, PendingDelivery, Publisher, PublisherConfig};
pub use tally_events::{Input, UsageEvent};
