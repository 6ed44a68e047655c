//! What happens to one input message: the pure part of the service loop.
//!
//! Shared by the service and by the tests' offline model, so "the ledger
//! the core computes offline from the same inputs" is computed by exactly
//! the code that runs in production, minus the I/O.

use tally_events::{
    limits::{quote, quote_bytes},
    Alert, Codec, CodecError, DeadLetter, Epoch, Input, LedgerEntry, Reason, SourceOffset,
};
use tally_ledger::{Applied, Ledger};

/// The outcome of one input message.
#[derive(Debug, Clone, PartialEq, Eq)]
// Returned by value and consumed at once: boxing the entry would add an
// allocation per input for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Applied: one entry, maybe alerts.
    Entry {
        /// The ledger entry.
        entry: LedgerEntry,
        /// Alerts it raised.
        alerts: Vec<Alert>,
        /// Input type, for metrics.
        input_type: &'static str,
    },
    /// Already applied.
    Duplicate {
        /// Input type, for metrics.
        input_type: &'static str,
    },
    /// Cannot be applied.
    DeadLetter {
        /// The dead letter.
        letter: DeadLetter,
        /// Input type, for metrics ("undecodable" when it did not decode).
        input_type: &'static str,
    },
}

/// How far an input's occurred_at may run ahead of its message's append
/// timestamp (clock skew between workers and the broker).
pub const FUTURE_SKEW_MAX: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Decodes and applies one message read at `source`, appended at
/// `appended_ms` (the message timestamp, ms since the epoch, if it has one).
///
/// The future check uses the message's timestamp, not the wall clock, so a
/// replay decides exactly as the first run did.
pub fn step(
    ledger: &mut Ledger,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    appended_ms: Option<i64>,
    source: &SourceOffset,
    epoch: Epoch,
) -> Step {
    step_decoded(ledger, decode(payload), key, payload, appended_ms, source, epoch)
}

/// Decodes a message's payload as an input: the part of [`step`] that
/// reads no state, so the service can run it a few messages ahead and
/// prefetch what the input will look up ([`Ledger::prefetch_input`]).
pub fn decode(payload: Option<&[u8]>) -> Result<Input, CodecError> {
    Codec::global().decode_input(payload.unwrap_or_default())
}

/// [`step`] with the payload already decoded by [`decode`]: the same
/// outcome, byte for byte.
pub fn step_decoded(
    ledger: &mut Ledger,
    decoded: Result<Input, CodecError>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    appended_ms: Option<i64>,
    source: &SourceOffset,
    epoch: Epoch,
) -> Step {
    let dead = |reason: Reason, detail: String, input_id: String| {
        DeadLetter::of_input(reason, detail, source.clone(), key, payload, input_id)
    };
    let input = match decoded {
        Ok(input) => input,
        Err(e) => {
            return Step::DeadLetter {
                letter: dead(e.reason(), e.to_string(), String::new()),
                input_type: "undecodable",
            }
        }
    };
    let input_type = match &input {
        Input::Usage(_) => "usage",
        Input::Purchase(_) => "purchase",
        Input::Account(_) => "account",
    };
    // The key decides the partition, so it decides which writer and which
    // order an account's inputs get: a wrong key would split an account.
    if key != Some(input.account_id().as_bytes()) {
        let detail = format!(
            "message key {} must be the account id {}",
            key.map_or_else(|| "(none)".to_string(), quote_bytes),
            quote(input.account_id())
        );
        return Step::DeadLetter { letter: dead(Reason::BadKey, detail, input.id().to_string()), input_type };
    }
    if let Some(appended) = appended_ms.and_then(chrono::DateTime::from_timestamp_millis) {
        if input.occurred_at() > appended + FUTURE_SKEW_MAX {
            let detail = format!(
                "occurred_at {} is more than {} min after the message was appended ({appended})",
                input.occurred_at(),
                FUTURE_SKEW_MAX.num_minutes()
            );
            return Step::DeadLetter { letter: dead(Reason::FromFuture, detail, input.id().to_string()), input_type };
        }
    }
    let input_id = input.id();
    // By value: the entry takes the decoded input's strings.
    match ledger.apply_owned(input, source, epoch) {
        Applied::Entry { entry, alerts } => Step::Entry { entry, alerts, input_type },
        Applied::Duplicate => Step::Duplicate { input_type },
        Applied::Rejected { reason, detail } => {
            Step::DeadLetter { letter: dead(reason, detail, input_id.to_string()), input_type }
        }
    }
}
