//! Event building and deterministic ids.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_events::{
    limits::{check_account_id, check_identifier, quote, IdentifierProblem},
    JobOutcome, Producer, Unit, UsageEvent,
};
use uuid::Uuid;

/// Namespace of usage event ids. Changing it changes every id and breaks
/// deduplication of retries across versions: never change it.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d4e_9a3b_4c5d_8e7f_1a2b_3c4d_5e6f);

/// The id of the usage event of one job of one service and engine.
///
/// UUID v5 over the three parts joined by NUL bytes (which none of them may
/// contain), so ("a", "bc") and ("ab", "c") never collide.
pub fn event_id(job_id: &str, service: &str, engine: &str) -> Uuid {
    input_id(&[job_id, service, engine])
}

/// A deterministic id for any input, from parts that identify it (for a
/// purchase: the payment id; for an account change: its request id).
pub fn input_id(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&EVENT_NAMESPACE, parts.join("\0").as_bytes())
}

/// Why an event could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// A required field is empty.
    #[error("usage event field `{0}` is empty")]
    Empty(&'static str),
    /// A field contains a NUL byte (it would make ids ambiguous).
    #[error("usage event field `{0}` contains a NUL byte")]
    Nul(&'static str),
    /// The account id is not one tally accepts (see
    /// `tally_events::limits::check_account_id`).
    #[error("account id {id} {problem}")]
    AccountId {
        /// The id, quoted and bounded.
        id: String,
        /// What is wrong.
        problem: IdentifierProblem,
    },
    /// A photo-booth event, booth or job id that is too long or holds
    /// control characters.
    #[error("usage event field `{field}` {problem}")]
    Identifier {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: IdentifierProblem,
    },
    /// Quantity not positive, above a million, or with more fractional
    /// digits than its unit allows (whole images and messages, video
    /// seconds to the millisecond).
    #[error("quantity {0} {1:?} must be positive, at most 1000000, whole for images and messages and to the millisecond for video seconds")]
    Quantity(Decimal, Unit),
    /// No quantity set.
    #[error("usage event has no quantity: call .quantity(..)")]
    NoQuantity,
    /// No time set.
    #[error("usage event has no occurred_at: call .occurred_at(..)")]
    NoTime,
}

/// Builds a [`UsageEvent`], checking what a worker can check locally.
#[derive(Debug, Clone)]
pub struct UsageEventBuilder {
    account_id: String,
    job_id: String,
    service: String,
    engine: String,
    photo_event_id: String,
    booth_id: String,
    quantity: Option<(Decimal, Unit)>,
    outcome: JobOutcome,
    occurred_at: Option<DateTime<Utc>>,
    producer: Producer,
    attributes: BTreeMap<String, String>,
}

impl UsageEventBuilder {
    /// Starts an event for one job of one service and engine.
    pub fn new(account_id: &str, job_id: &str, service: &str, engine: &str) -> Self {
        UsageEventBuilder {
            account_id: account_id.into(),
            job_id: job_id.into(),
            service: service.into(),
            engine: engine.into(),
            photo_event_id: String::new(),
            booth_id: String::new(),
            quantity: None,
            outcome: JobOutcome::Succeeded,
            occurred_at: None,
            producer: Producer { worker: "unknown".into(), version: env!("CARGO_PKG_VERSION").into() },
            attributes: BTreeMap::new(),
        }
    }
    /// The photo-booth event the job belongs to.
    pub fn photo_event(mut self, id: &str) -> Self {
        self.photo_event_id = id.into();
        self
    }
    /// The booth that captured the photo.
    pub fn booth(mut self, id: &str) -> Self {
        self.booth_id = id.into();
        self
    }
    /// Units used.
    pub fn quantity(mut self, quantity: Decimal, unit: Unit) -> Self {
        self.quantity = Some((quantity, unit));
        self
    }
    /// Job outcome (default: succeeded).
    pub fn outcome(mut self, outcome: JobOutcome) -> Self {
        self.outcome = outcome;
        self
    }
    /// When the job finished.
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = Some(at);
        self
    }
    /// Which worker emits the event.
    pub fn producer(mut self, worker: &str, version: &str) -> Self {
        self.producer = Producer { worker: worker.into(), version: version.into() };
        self
    }
    /// A free-form attribute.
    pub fn attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Checks and builds the event.
    pub fn build(self) -> Result<UsageEvent, BuildError> {
        for (name, value) in [
            ("account_id", &self.account_id),
            ("job_id", &self.job_id),
            ("service", &self.service),
            ("engine", &self.engine),
        ] {
            if value.is_empty() {
                return Err(BuildError::Empty(name));
            }
            if value.contains('\0') {
                return Err(BuildError::Nul(name));
            }
        }
        check_account_id(&self.account_id)
            .map_err(|problem| BuildError::AccountId { id: quote(&self.account_id), problem })?;
        for (field, value) in
            [("photo_event_id", &self.photo_event_id), ("booth_id", &self.booth_id), ("job_id", &self.job_id)]
        {
            check_identifier(value).map_err(|problem| BuildError::Identifier { field, problem })?;
        }
        let (quantity, unit) = self.quantity.ok_or(BuildError::NoQuantity)?;
        // The ledger's rule (tally_ledger::pricing), checked where the
        // worker can still fix it.
        let scale_max = match unit {
            Unit::Image | Unit::Message => 0,
            Unit::VideoSecond => 3,
        };
        if quantity <= Decimal::ZERO || quantity.normalize().scale() > scale_max || quantity > Decimal::from(1_000_000)
        {
            return Err(BuildError::Quantity(quantity, unit));
        }
        let occurred_at = self.occurred_at.ok_or(BuildError::NoTime)?;
        Ok(UsageEvent {
            event_id: event_id(&self.job_id, &self.service, &self.engine),
            account_id: self.account_id,
            photo_event_id: self.photo_event_id,
            booth_id: self.booth_id,
            job_id: self.job_id,
            service: self.service,
            engine: self.engine,
            quantity,
            unit,
            outcome: self.outcome,
            occurred_at,
            producer: self.producer,
            attributes: self.attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> UsageEventBuilder {
        UsageEventBuilder::new("acct", "job-1", "sms", "standard")
            .quantity(Decimal::ONE, Unit::Message)
            .occurred_at(DateTime::from_timestamp_millis(5).expect("instant"))
    }

    #[test]
    fn a_retried_job_keeps_its_id() {
        let first = builder().build().expect("build");
        // A retry: later, from another worker, same job.
        let retry = builder()
            .occurred_at(DateTime::from_timestamp_millis(9_000).expect("instant"))
            .producer("other-host", "2.0")
            .build()
            .expect("build");
        assert_eq!(first.event_id, retry.event_id);
        assert_ne!(first.event_id, event_id("job-2", "sms", "standard"));
        assert_ne!(event_id("ab", "c", "d"), event_id("a", "bc", "d"));
        // Pinned: the id is part of the data contract across releases.
        assert_eq!(event_id("job-1", "sms", "standard").to_string(), first.event_id.to_string());
        assert_eq!(first.event_id.get_version_num(), 5);
    }

    #[test]
    fn bad_fields_are_refused() {
        assert_eq!(UsageEventBuilder::new("", "j", "s", "e").build().unwrap_err(), BuildError::Empty("account_id"));
        assert!(matches!(
            UsageEventBuilder::new("acct\n", "j", "s", "e").build().unwrap_err(),
            BuildError::AccountId { problem: IdentifierProblem::ControlCharacter('\n'), .. }
        ));
        assert!(matches!(
            UsageEventBuilder::new(&"a".repeat(129), "j", "s", "e").build().unwrap_err(),
            BuildError::AccountId { problem: IdentifierProblem::TooLong { .. }, .. }
        ));
        assert!(matches!(
            builder().booth(&"b".repeat(200)).build().unwrap_err(),
            BuildError::Identifier { field: "booth_id", .. }
        ));
        assert_eq!(
            builder().quantity(Decimal::new(15, 1), Unit::Message).build().unwrap_err(),
            BuildError::Quantity(Decimal::new(15, 1), Unit::Message)
        );
        assert_eq!(
            builder().quantity(Decimal::ZERO, Unit::Message).build().unwrap_err(),
            BuildError::Quantity(Decimal::ZERO, Unit::Message)
        );
        assert!(builder().quantity(Decimal::new(10000, 4), Unit::Message).build().is_ok(), "1.0000 is whole");
        assert!(builder().quantity(Decimal::new(7125, 3), Unit::VideoSecond).build().is_ok(), "7.125 s");
        assert!(builder().quantity(Decimal::new(71255, 4), Unit::VideoSecond).build().is_err(), "7.1255 s");
    }
}
