//! What an identifier may be, and how much of any outside text tally
//! copies into a record or a log line.
//!
//! Inputs come from workers tally does not control. Whatever they send,
//! what tally writes stays bounded: an account id or a photo-booth event id
//! copied into every ledger entry, a value quoted in a dead letter's
//! detail, the original bytes a dead letter carries. Unbounded, one input
//! of a megabyte could make its dead letter larger than the broker takes,
//! and a record that can never be written stalls its partition.
//!
//! ```
//! use tally_events::limits::{check_account_id, quote, IdentifierProblem};
//! assert!(check_account_id("acct-0042").is_ok());
//! assert_eq!(check_account_id(""), Err(IdentifierProblem::Empty));
//! assert!(quote(&"x".repeat(10_000)).len() < 200);
//! ```

/// Longest account id, in bytes of UTF-8. Every ledger entry, alert and
/// ClickHouse row carries it.
pub const ACCOUNT_ID_BYTES_MAX: usize = 128;

/// Longest photo-booth event id, booth id or job id, in bytes.
pub const IDENTIFIER_BYTES_MAX: usize = 128;

/// Most characters of an outside value quoted in a dead letter's detail or
/// a log line; the rest is cut and its length given.
pub const QUOTE_CHARS_MAX: usize = 96;

/// Most bytes of an input's key a dead letter keeps.
pub const DEAD_LETTER_KEY_BYTES_MAX: usize = 1_024;

/// Most bytes of an input's value a dead letter keeps: well under the
/// 1 MB a Kafka broker takes by default, so that a dead letter of the
/// largest input the broker accepted can still be written. Real inputs are
/// a few hundred bytes; a dead letter says the original size.
pub const DEAD_LETTER_PAYLOAD_BYTES_MAX: usize = 64 * 1_024;

/// What is wrong with an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierProblem {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Longer than the limit.
    #[error("is {bytes} bytes long, more than the {max} allowed")]
    TooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Holds a control character (a newline, a NUL, an escape...).
    #[error("holds the control character {0:?}")]
    ControlCharacter(char),
}

/// An account id: non-empty, at most [`ACCOUNT_ID_BYTES_MAX`] bytes of
/// UTF-8, no control characters. (The message key must equal it too; the
/// metering service checks that, since only it sees the key.)
pub fn check_account_id(id: &str) -> Result<(), IdentifierProblem> {
    if id.is_empty() {
        return Err(IdentifierProblem::Empty);
    }
    check_text(id, ACCOUNT_ID_BYTES_MAX)
}

/// An optional identifier copied into ledger entries (photo-booth event,
/// booth, job): may be empty, at most [`IDENTIFIER_BYTES_MAX`] bytes, no
/// control characters.
pub fn check_identifier(id: &str) -> Result<(), IdentifierProblem> {
    check_text(id, IDENTIFIER_BYTES_MAX)
}

fn check_text(id: &str, max: usize) -> Result<(), IdentifierProblem> {
    if id.len() > max {
        return Err(IdentifierProblem::TooLong { bytes: id.len(), max });
    }
    // Printable ASCII, nearly every id, has no control character: a byte
    // test the compiler vectorizes, before the scan by character.
    if id.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Ok(());
    }
    match id.chars().find(|c| c.is_control()) {
        Some(c) => Err(IdentifierProblem::ControlCharacter(c)),
        None => Ok(()),
    }
}

/// `text` quoted (Rust string escapes, so control characters show), cut
/// to [`QUOTE_CHARS_MAX`] characters with its full length said.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS_MAX) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// Bytes that should be UTF-8 text (a message key), quoted like [`quote`];
/// invalid UTF-8 is shown with replacement characters.
pub fn quote_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_CHARS_MAX * 4)];
    let text = String::from_utf8_lossy(shown);
    if shown.len() == bytes.len() {
        quote(&text)
    } else {
        let cut: String = text.chars().take(QUOTE_CHARS_MAX).collect();
        format!("{cut:?}... ({} bytes)", bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert_eq!(check_account_id("acct-1"), Ok(()));
        assert_eq!(check_account_id("Café Über 写真"), Ok(()), "any printable text");
        assert_eq!(check_account_id(""), Err(IdentifierProblem::Empty));
        assert_eq!(check_account_id("a\nb"), Err(IdentifierProblem::ControlCharacter('\n')));
        assert_eq!(check_account_id("a\u{0}"), Err(IdentifierProblem::ControlCharacter('\u{0}')));
        assert_eq!(check_account_id("a\u{9b}"), Err(IdentifierProblem::ControlCharacter('\u{9b}')), "C1 too");
        assert_eq!(check_account_id("a\u{7f}"), Err(IdentifierProblem::ControlCharacter('\u{7f}')), "DEL too");
        // Every one-character id agrees with the definition by character.
        for c in (0..0x250u32).filter_map(char::from_u32) {
            let expected = if c.is_control() { Err(IdentifierProblem::ControlCharacter(c)) } else { Ok(()) };
            assert_eq!(check_identifier(&format!("id-{c}")), expected, "{c:?}");
        }
        assert_eq!(check_account_id(&"a".repeat(128)), Ok(()));
        assert_eq!(check_account_id(&"a".repeat(129)), Err(IdentifierProblem::TooLong { bytes: 129, max: 128 }));
        // The limit is in bytes: 43 three-byte characters are 129 bytes.
        assert!(matches!(check_account_id(&"写".repeat(43)), Err(IdentifierProblem::TooLong { bytes: 129, .. })));
        assert_eq!(check_identifier(""), Ok(()), "optional identifiers may be empty");
    }

    #[test]
    fn quotes_are_bounded_and_say_the_length() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "é".repeat(5_000);
        let quoted = quote(&long);
        assert!(quoted.ends_with("... (10000 bytes)"), "{quoted}");
        assert_eq!(quoted.chars().filter(|c| *c == 'é').count(), QUOTE_CHARS_MAX);
        assert_eq!(quote_bytes(b"acct-1"), "\"acct-1\"");
        assert!(quote_bytes(&[0xFF; 10_000]).ends_with("... (10000 bytes)"));
        assert_eq!(quote_bytes(&[0x61, 0xFF]), "\"a\u{FFFD}\"");
    }
}
