//! Exact decimal text: the one way tally reads a quantity, an amount of
//! money or a number of credits off the wire.
//!
//! Decimals travel as text (see the schemas), so that no precision is lost
//! in transit. Reading them back must not lose any either: `Decimal`'s own
//! `FromStr` rounds a number with more digits than its 96-bit mantissa holds
//! (`1.000…0001` with 30 digits reads as `1`), and accepts `_` separators.
//! [`parse_exact`] takes only plain decimal text (`-?[0-9]+(\.[0-9]+)?`)
//! and refuses, rather than rounds, what a `Decimal` cannot hold exactly.
//!
//! ```
//! use tally_events::decimal::{parse_exact, DecimalError};
//! assert_eq!(parse_exact("7.500").unwrap().to_string(), "7.500");
//! assert!(matches!(parse_exact("1.000000000000000000000000000001"), Err(DecimalError::Inexact { .. })));
//! assert!(matches!(parse_exact("1_000"), Err(DecimalError::Syntax { .. })));
//! ```

use rust_decimal::Decimal;

use crate::limits::quote;

/// Why a decimal text was refused. Each quotes the text as sent (bounded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not plain decimal text.
    #[error("{text} is not a plain decimal number (digits, an optional leading '-', an optional '.' and digits)")]
    Syntax {
        /// The text as sent, quoted and bounded.
        text: String,
    },
    /// More digits than a `Decimal` holds exactly (28 fractional digits,
    /// a 96-bit integer of significant digits).
    #[error("{text} has more digits than tally holds exactly (at most 28 significant or fractional digits)")]
    Inexact {
        /// The text as sent, quoted and bounded.
        text: String,
    },
}

/// Parses plain decimal text exactly, keeping its scale (`7.50` stays
/// `7.50`), or says why not.
pub fn parse_exact(text: &str) -> Result<Decimal, DecimalError> {
    if !is_plain_decimal(text) {
        return Err(DecimalError::Syntax { text: quote(text) });
    }
    Decimal::from_str_exact(text).map_err(|_| DecimalError::Inexact { text: quote(text) })
}

/// `-?[0-9]+(\.[0-9]+)?`.
fn is_plain_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_parses_with_its_scale() {
        for (text, shown) in [("0", "0"), ("-12.5", "-12.5"), ("7.500", "7.500"), ("0012", "12"), ("25.00", "25.00")] {
            assert_eq!(parse_exact(text).map(|d| d.to_string()), Ok(shown.to_string()), "{text}");
        }
        // 28 fractional digits, and the largest 96-bit integer, still fit.
        assert!(parse_exact("0.0000000000000000000000000001").is_ok());
        assert!(parse_exact("79228162514264337593543950335").is_ok());
    }

    #[test]
    fn what_does_not_fit_is_refused_not_rounded() {
        for text in [
            "1.00000000000000000000000000001",   // would round to 1
            "10.000000000000000000000000000001", // would round to 10
            "0.00000000000000000000000000001",   // would round to 0
            "79228162514264337593543950336",     // one above the largest
        ] {
            assert!(matches!(parse_exact(text), Err(DecimalError::Inexact { .. })), "{text}");
        }
    }

    #[test]
    fn anything_but_plain_decimal_text_is_refused() {
        for text in ["", "-", ".5", "5.", "+1", "1_000", "1e3", " 1", "1 ", "1.2.3", "NaN", "0x10", "١"] {
            assert!(matches!(parse_exact(text), Err(DecimalError::Syntax { .. })), "{text:?}");
        }
    }

    #[test]
    fn errors_quote_the_text_as_sent_and_bounded() {
        let long = format!("1.{}", "0".repeat(5_000));
        let message = parse_exact(&long).unwrap_err().to_string();
        assert!(message.starts_with("\"1.000"), "{message}");
        assert!(message.len() < 300, "bounded: {} bytes", message.len());
        assert!(message.contains("5002 bytes"), "says how long it was: {message}");
    }
}
