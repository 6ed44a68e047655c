//! What the notifier writes: the webhook body a receiver gets, and the
//! dead letter of an alert that could not be delivered.
//!
//! Both are JSON (a receiver needs no Avro). Amounts are decimal text, as
//! on every tally record, so no value passes through a float; times are
//! RFC 3339 UTC with milliseconds. The body's fields are a public contract
//! (docs/WEBHOOKS.md): add fields, never rename or remove one.

use serde::{Deserialize, Serialize};
use tally_events::{Alert, AlertKind};

/// The JSON body of one webhook POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertBody {
    /// The alert id (UUID): stable across retries and restarts; the key a
    /// receiver deduplicates on (also sent as the `Tally-Alert-Id` header).
    pub id: String,
    /// Account alerted.
    pub account: String,
    /// `LOW_BALANCE`, `PAUSED` or `RESUMED`.
    pub kind: String,
    /// Balance in credits after the ledger entry that raised the alert.
    pub balance: String,
    /// The account's low-balance threshold in credits.
    pub threshold: String,
    /// When the input that raised the alert happened (RFC 3339, UTC).
    pub occurred_at: String,
    /// Sequence of the ledger entry that raised the alert: an account's
    /// alerts arrive in increasing (LOW_BALANCE then PAUSED may share one).
    pub sequence: i64,
    /// Human-readable summary.
    pub message: String,
    /// The account's plan tier after the entry (`PAYG`, `BASIC`, `PRO`;
    /// null for an alert written before alert v3).
    pub tier: Option<String>,
}

/// The text of an alert kind on the wire.
pub fn kind_text(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LowBalance => "LOW_BALANCE",
        AlertKind::Paused => "PAUSED",
        AlertKind::Resumed => "RESUMED",
    }
}

/// The text of a plan tier on the wire (the Avro symbol).
pub fn tier_text(tier: tally_events::PlanTier) -> &'static str {
    match tier {
        tally_events::PlanTier::Payg => "PAYG",
        tally_events::PlanTier::Basic => "BASIC",
        tally_events::PlanTier::Pro => "PRO",
    }
}

impl AlertBody {
    /// The body of `alert`.
    pub fn of(alert: &Alert) -> Self {
        AlertBody {
            id: alert.alert_id.to_string(),
            account: alert.account_id.to_string(),
            kind: kind_text(alert.kind).to_string(),
            balance: alert.balance.to_string(),
            threshold: alert.threshold.to_string(),
            occurred_at: alert.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sequence: alert.sequence.0,
            message: alert.message.clone(),
            tier: alert.tier.map(|t| tier_text(t).to_string()),
        }
    }

    /// The bytes POSTed (and signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and an integer always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Longest `last_error` kept in a dead letter, in bytes.
pub const LAST_ERROR_MAX: usize = 1_000;

/// An alert the notifier gave up on, on the dead-letter topic (keyed by
/// account id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The body it tried to deliver.
    pub alert: AlertBody,
    /// The endpoint's name in the config.
    pub endpoint: String,
    /// The URL POSTed to.
    pub url: String,
    /// POSTs made.
    pub attempts: u32,
    /// First attempt (RFC 3339, UTC).
    pub first_attempt_at: String,
    /// Last attempt (RFC 3339, UTC).
    pub last_attempt_at: String,
    /// Why the last attempt failed, at most [`LAST_ERROR_MAX`] bytes.
    pub last_error: String,
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    // Room for the ellipsis (3 bytes), then back to a character boundary.
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use tally_events::{AccountId, Credits, Sequence};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn the_body_carries_every_field_exactly() {
        let alert = Alert {
            alert_id: Uuid::from_u128(7),
            account_id: AccountId::new_unchecked("acct-1"),
            kind: AlertKind::LowBalance,
            sequence: Sequence(42),
            balance: "9.5".parse::<Credits>().expect("credits"),
            threshold: "10".parse::<Credits>().expect("credits"),
            occurred_at: DateTime::from_timestamp_millis(1_782_820_800_123).expect("time"),
            message: "low".into(),
            tier: Some(tally_events::PlanTier::Pro),
        };
        let json: serde_json::Value = serde_json::from_slice(&AlertBody::of(&alert).to_bytes()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000007",
                "account": "acct-1",
                "kind": "LOW_BALANCE",
                "balance": "9.5",
                "threshold": "10",
                "occurred_at": "2026-06-30T12:00:00.123Z",
                "sequence": 42,
                "message": "low",
                "tier": "PRO",
            })
        );
    }

    #[test]
    fn truncation_is_bounded_and_keeps_characters_whole() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(2_000);
        let cut = truncate(&long, LAST_ERROR_MAX);
        assert!(cut.len() <= LAST_ERROR_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
