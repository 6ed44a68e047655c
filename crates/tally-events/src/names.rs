//! Topic names and stable reason codes.
//!
//! Reason codes are part of the data contract: they are written to the
//! ledger and the dead-letter topic and queried by operators. Never rename
//! one; add a new one instead.

/// Default topic names. Services take them from their config; these are
/// the defaults of the local stack.
pub mod topics {
    /// Usage events, purchases and account changes, keyed by account id:
    /// one ordered log per account, so replay order is the log order.
    pub const INPUTS: &str = "tally.inputs";
    /// Ledger entries, keyed by account id; partition p holds the entries
    /// of input partition p.
    pub const LEDGER: &str = "tally.ledger";
    /// Low-balance, paused and resumed alerts, keyed by account id.
    pub const ALERTS: &str = "tally.alerts";
    /// Inputs that could not be applied, with the reason.
    pub const DEAD_LETTERS: &str = "tally.dead-letters";
    /// Compacted snapshots of each ledger partition's state; partition p
    /// holds those of ledger partition p.
    pub const SNAPSHOTS: &str = "tally.snapshots";
}

/// Reason codes of failed ledger entries and dead letters.
pub mod reasons {
    /// The job failed: recorded, nothing debited.
    pub const JOB_FAILED: &str = "job_failed";
    /// The debit was larger than the balance: refused, account paused.
    pub const INSUFFICIENT_CREDITS: &str = "insufficient_credits";
    /// The account is paused: refused until a purchase.
    pub const ACCOUNT_PAUSED: &str = "account_paused";

    /// Bytes that are not a decodable single-object Avro message.
    pub const MALFORMED: &str = "malformed";
    /// A single-object message whose schema fingerprint is unknown.
    pub const UNKNOWN_SCHEMA: &str = "unknown_schema";
    /// A known record that is not an input (e.g. a ledger entry on the input topic).
    pub const NOT_AN_INPUT: &str = "not_an_input";
    /// The (service, engine) pair is not in the rate table in force.
    pub const UNKNOWN_SERVICE: &str = "unknown_service";
    /// The event's unit differs from the rate table's unit for the service.
    pub const UNIT_MISMATCH: &str = "unit_mismatch";
    /// No rate table version was in force at the event's time.
    pub const NO_RATE_VERSION: &str = "no_rate_version";
    /// The account was never opened.
    pub const UNKNOWN_ACCOUNT: &str = "unknown_account";
    /// The account was deleted.
    pub const ACCOUNT_DELETED: &str = "account_deleted";
    /// An OPEN for an account that already exists.
    pub const ACCOUNT_EXISTS: &str = "account_exists";
    /// Quantity not exact decimal text, not positive, above the maximum, or
    /// with more fractional digits than its unit allows (whole images and
    /// messages; video seconds to the millisecond).
    pub const INVALID_QUANTITY: &str = "invalid_quantity";
    /// Purchase amount not exact decimal text, not positive, above the
    /// maximum, or not whole cents.
    pub const INVALID_AMOUNT: &str = "invalid_amount";
    /// Threshold not exact decimal text, negative, above the maximum, or
    /// finer than a ten-thousandth of a credit.
    pub const INVALID_THRESHOLD: &str = "invalid_threshold";
    /// An account id that is empty, too long or holds control characters
    /// (see `tally_events::limits`).
    pub const INVALID_ACCOUNT_ID: &str = "invalid_account_id";
    /// A photo-booth event, booth or job id that is too long or holds
    /// control characters.
    pub const INVALID_IDENTIFIER: &str = "invalid_identifier";
    /// An input id that was already applied with other content (another
    /// quantity, service, amount...): refused, the first content stands.
    /// An identical repeat is a silent duplicate instead.
    pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";
    /// An input whose occurred_at is later than its message's append
    /// timestamp plus the allowed skew: accepting it would make it the
    /// partition's newest time and every later input too late.
    pub const FROM_FUTURE: &str = "from_future";
    /// An input older than the dedup window relative to the newest input
    /// applied on its partition: dedup could not be exact, so it is refused.
    pub const TOO_LATE: &str = "too_late";
    /// An input without a key, or whose key is not its account id.
    pub const BAD_KEY: &str = "bad_key";
}
