//! Reason codes: why an input was dead-lettered or an entry failed.
//!
//! Part of the data contract: the codes are written to the ledger
//! (`reason` of a FAILED entry) and to dead letters, stored in ClickHouse
//! and filtered on by dashboards and operators (`tally inspect --reason`).
//! Never rename or remove one; add a new one instead. A test pins every
//! code.
//!
//! ```
//! use tally_events::Reason;
//! assert_eq!(Reason::TooLate.code(), "too_late");
//! assert_eq!("too_late".parse::<Reason>(), Ok(Reason::TooLate));
//! ```

/// Why an input was refused or an entry recorded as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The job failed: recorded, nothing debited.
    JobFailed,
    /// The debit was larger than the balance: refused, account paused.
    InsufficientCredits,
    /// The account is paused: refused until a purchase.
    AccountPaused,
    /// Bytes that are not a decodable single-object Avro message.
    Malformed,
    /// A single-object message whose schema fingerprint is unknown.
    UnknownSchema,
    /// A known record that is not an input (e.g. a ledger entry on the input topic).
    NotAnInput,
    /// The (service, engine) pair is not in the rate table in force.
    UnknownService,
    /// The event's unit differs from the rate table's unit for the service.
    UnitMismatch,
    /// No rate table version was in force at the event's time.
    NoRateVersion,
    /// The account was never opened.
    UnknownAccount,
    /// The account was deleted.
    AccountDeleted,
    /// An OPEN for an account that already exists.
    AccountExists,
    /// Quantity not exact decimal text, not positive, above the maximum, or
    /// with more fractional digits than its unit allows (whole images and
    /// messages; video seconds to the millisecond).
    InvalidQuantity,
    /// Purchase amount not exact decimal text, not positive, above the
    /// maximum, or not whole cents.
    InvalidAmount,
    /// Threshold not exact decimal text, negative, above the maximum, or
    /// finer than a ten-thousandth of a credit.
    InvalidThreshold,
    /// An account id that is empty, too long or holds control characters
    /// (see `tally_events::limits`).
    InvalidAccountId,
    /// A photo-booth event, booth or job id that is too long or holds
    /// control characters.
    InvalidIdentifier,
    /// An input id that was already applied with other content (another
    /// quantity, service, amount...): refused, the first content stands.
    /// An identical repeat is a silent duplicate instead.
    ConflictingDuplicate,
    /// An input whose occurred_at is later than its message's append
    /// timestamp plus the allowed skew: accepting it would make it the
    /// partition's newest time and every later input too late.
    FromFuture,
    /// An input older than the dedup window relative to the newest input
    /// applied on its partition: dedup could not be exact, so it is refused.
    TooLate,
    /// An input without a key, or whose key is not its account id.
    BadKey,
    /// A record on the ledger topic that does not decode as a ledger entry
    /// or marker (a foreign writer, a newer schema): the aggregator cannot
    /// store it and dead-letters it instead of stalling.
    LedgerUndecodable,
    /// A counted ledger entry that ClickHouse cannot store exactly (a
    /// decimal finer than its column, a time outside `DateTime`).
    LedgerUnstorable,
    /// A counted ledger entry that reuses an account's sequence with other
    /// content than the entry already stored: the first one stands.
    LedgerConflict,
}

impl Reason {
    /// Every reason, in code order of the contract.
    pub const ALL: [Reason; 24] = [
        Reason::JobFailed,
        Reason::InsufficientCredits,
        Reason::AccountPaused,
        Reason::Malformed,
        Reason::UnknownSchema,
        Reason::NotAnInput,
        Reason::UnknownService,
        Reason::UnitMismatch,
        Reason::NoRateVersion,
        Reason::UnknownAccount,
        Reason::AccountDeleted,
        Reason::AccountExists,
        Reason::InvalidQuantity,
        Reason::InvalidAmount,
        Reason::InvalidThreshold,
        Reason::InvalidAccountId,
        Reason::InvalidIdentifier,
        Reason::ConflictingDuplicate,
        Reason::FromFuture,
        Reason::TooLate,
        Reason::BadKey,
        Reason::LedgerUndecodable,
        Reason::LedgerUnstorable,
        Reason::LedgerConflict,
    ];

    /// The stable snake_case code.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::JobFailed => "job_failed",
            Reason::InsufficientCredits => "insufficient_credits",
            Reason::AccountPaused => "account_paused",
            Reason::Malformed => "malformed",
            Reason::UnknownSchema => "unknown_schema",
            Reason::NotAnInput => "not_an_input",
            Reason::UnknownService => "unknown_service",
            Reason::UnitMismatch => "unit_mismatch",
            Reason::NoRateVersion => "no_rate_version",
            Reason::UnknownAccount => "unknown_account",
            Reason::AccountDeleted => "account_deleted",
            Reason::AccountExists => "account_exists",
            Reason::InvalidQuantity => "invalid_quantity",
            Reason::InvalidAmount => "invalid_amount",
            Reason::InvalidThreshold => "invalid_threshold",
            Reason::InvalidAccountId => "invalid_account_id",
            Reason::InvalidIdentifier => "invalid_identifier",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::FromFuture => "from_future",
            Reason::TooLate => "too_late",
            Reason::BadKey => "bad_key",
            Reason::LedgerUndecodable => "ledger_undecodable",
            Reason::LedgerUnstorable => "ledger_unstorable",
            Reason::LedgerConflict => "ledger_conflict",
        }
    }

    /// The reason of a code, if it is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// Whether this is the reason of a FAILED ledger entry (recorded,
    /// nothing debited) rather than of a dead letter.
    pub const fn fails_an_entry(self) -> bool {
        matches!(self, Reason::JobFailed | Reason::InsufficientCredits | Reason::AccountPaused)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Reason::from_code(code).ok_or_else(|| UnknownReason(code.to_string()))
    }
}

/// A text that is no reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason code {0:?}")]
pub struct UnknownReason(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are stored and queried: pinned, in order. Adding a reason
    /// adds a line here; changing one breaks every stored row.
    #[test]
    fn the_codes_are_pinned() {
        let codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                "job_failed",
                "insufficient_credits",
                "account_paused",
                "malformed",
                "unknown_schema",
                "not_an_input",
                "unknown_service",
                "unit_mismatch",
                "no_rate_version",
                "unknown_account",
                "account_deleted",
                "account_exists",
                "invalid_quantity",
                "invalid_amount",
                "invalid_threshold",
                "invalid_account_id",
                "invalid_identifier",
                "conflicting_duplicate",
                "from_future",
                "too_late",
                "bad_key",
                "ledger_undecodable",
                "ledger_unstorable",
                "ledger_conflict",
            ]
        );
        for reason in Reason::ALL {
            assert_eq!(reason.code().parse::<Reason>(), Ok(reason));
        }
        assert!("no_such_reason".parse::<Reason>().is_err());
        let failed: Vec<Reason> = Reason::ALL.into_iter().filter(|r| r.fails_an_entry()).collect();
        assert_eq!(failed, [Reason::JobFailed, Reason::InsufficientCredits, Reason::AccountPaused]);
    }
}
