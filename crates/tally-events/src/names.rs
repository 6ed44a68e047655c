//! Topic names, in one place (reason codes are [`crate::Reason`]).

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
    /// Ledger records the aggregator could not store in ClickHouse, with
    /// the reason and the record as it was.
    pub const LEDGER_DEAD_LETTERS: &str = "tally.ledger.dead-letters";
}
