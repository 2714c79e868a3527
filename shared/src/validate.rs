//! Validation rules for room names, nicknames, message text and client message ids, with their limits.
//!
//! The browser calls these before sending so a person sees the reason next to the input; the server calls the same
//! functions again and answers with the same message, so the two can never disagree.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest room name, in characters.
pub const ROOM_MAX_CHARS: usize = 32;
/// Longest nickname, in characters.
pub const NICK_MAX_CHARS: usize = 24;
/// Longest message text, in characters (Unicode scalar values).
pub const TEXT_MAX_CHARS: usize = 2000;
/// Longest client message id, in bytes.
pub const CID_MAX_BYTES: usize = 64;
/// Largest WebSocket frame a client may send. Larger frames close the connection with code 1009.
///
/// A maximal `send` (2000 four-byte characters, all JSON-escaped worst case) fits comfortably.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

// A maximal `send` (every character escaped as \uXXXX, plus the envelope) must fit in one frame.
const _: () = assert!(TEXT_MAX_CHARS * 6 + 512 <= MAX_FRAME_BYTES);

/// Why a room name, nickname, text or client id was refused. The `Display` text is meant for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// The room name breaks the room name rules.
    Room(String),
    /// The nickname breaks the nickname rules.
    Nick(String),
    /// The message text breaks the text rules.
    Text(String),
    /// The client message id breaks the id rules.
    ClientId(String),
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Room(m) | Self::Nick(m) | Self::Text(m) | Self::ClientId(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ValidationError {}

/// A validated room name: 1 to 32 characters, lowercase ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit. Cheap to clone, so it can key maps and travel with every fanned-out frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name` as a room name.
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        room_name(name).map(|()| Self(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RoomName {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RoomName> for String {
    fn from(value: RoomName) -> Self {
        value.0.to_string()
    }
}

/// A validated nickname: 1 to 24 characters of letters, digits, spaces, `-`, `_` and `.`, with no space at either end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nick(Arc<str>);

impl Nick {
    /// Validates `nick` as a nickname.
    pub fn parse(nick: &str) -> Result<Self, ValidationError> {
        nickname(nick).map(|()| Self(Arc::from(nick)))
    }

    /// The nickname as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Nick {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Nick> for String {
    fn from(value: Nick) -> Self {
        value.0.to_string()
    }
}

/// What a person most likely meant by a room name typed or linked loosely: trimmed, lowercase, inner spaces as
/// `-` ("General" and " my room " open `general` and `my-room`). The result still has to pass [`room_name`];
/// what cannot be normalised (other punctuation, other scripts) is refused there with its reason.
pub fn normalize_room(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join("-")
        .to_ascii_lowercase()
}

/// Checks a room name as a person typed it: [`room_name`] of its [`normalize_room`] form.
pub fn loose_room_name(name: &str) -> Result<(), ValidationError> {
    room_name(&normalize_room(name))
}

/// Checks a room name. Rooms appear in URLs (`/r/general`) and Redis keys, hence the narrow alphabet.
pub fn room_name(name: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError::Room(format!("room name {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.chars().count() > ROOM_MAX_CHARS {
        return bad(&format!("is longer than {ROOM_MAX_CHARS} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return bad("must start with a lowercase letter or digit");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
    {
        return bad(&format!(
            "may only use lowercase letters, digits, '-' and '_' (found {c:?})"
        ));
    }
    Ok(())
}

/// Checks a nickname. Any script's letters are welcome; punctuation beyond `-_.` and invisible characters are not.
pub fn nickname(nick: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError::Nick(format!("nickname {why}")));
    if nick.is_empty() {
        return bad("is empty");
    }
    if nick.chars().count() > NICK_MAX_CHARS {
        return bad(&format!("is longer than {NICK_MAX_CHARS} characters"));
    }
    if nick.starts_with(' ') || nick.ends_with(' ') {
        return bad("may not start or end with a space");
    }
    if let Some(c) = nick
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.')))
    {
        return bad(&format!(
            "may only use letters, digits, spaces, '-', '_' and '.' (found {c:?})"
        ));
    }
    Ok(())
}

/// Checks message text: 1 to 2000 characters, not only whitespace, no control characters but newline and tab.
pub fn text(text: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| Err(ValidationError::Text(format!("message {why}")));
    if text.trim().is_empty() {
        return bad("is empty");
    }
    let chars = text.chars().count();
    if chars > TEXT_MAX_CHARS {
        return bad(&format!(
            "is {chars} characters long; the limit is {TEXT_MAX_CHARS}"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return bad("contains control characters");
    }
    Ok(())
}

/// Checks a client message id: 1 to 64 printable ASCII characters, chosen by the client to match acks to sends.
pub fn client_id(cid: &str) -> Result<(), ValidationError> {
    if cid.is_empty() || cid.len() > CID_MAX_BYTES || !cid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::ClientId(format!(
            "client message id must be 1 to {CID_MAX_BYTES} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// The reactions a member may add: a small set every system font draws. `react` with anything else is refused
/// with `invalid_emoji`.
pub const EMOJI: [&str; 10] = ["👍", "👎", "😂", "❤️", "🎉", "😮", "😢", "🙏", "👀", "🚀"];

/// Longest quote of a replied-to message, in characters.
pub const QUOTE_MAX_CHARS: usize = 140;

/// Longest mute, ban or slow mode, in seconds: one week.
pub const MODERATION_MAX_SECS: u64 = 7 * 24 * 3600;

/// The longest retention a room may be given, in days (a hundred years).
pub const RETENTION_MAX_DAYS: u32 = 36_500;

/// Whether `emoji` is one of [`EMOJI`].
pub fn emoji(emoji: &str) -> bool {
    EMOJI.contains(&emoji)
}

/// The quote of a text a reply shows: its first [`QUOTE_MAX_CHARS`] characters, `…` marking a cut.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Shortest person id (see `join`'s `person`).
pub const PERSON_MIN_CHARS: usize = 8;
/// Longest person id.
pub const PERSON_MAX_CHARS: usize = 64;

/// Whether `person` is a valid person id: 8 to 64 ASCII letters, digits, `-` or `_`.
pub fn person(person: &str) -> bool {
    (PERSON_MIN_CHARS..=PERSON_MAX_CHARS).contains(&person.len())
        && person
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        for ok in [
            "general",
            "a",
            "r2-d2",
            "x_y",
            "0day",
            &"a".repeat(ROOM_MAX_CHARS),
        ] {
            assert_eq!(room_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "General",
            "-x",
            "_x",
            "a b",
            "a/b",
            "ü",
            "a.b",
            &"a".repeat(ROOM_MAX_CHARS + 1),
        ] {
            assert!(
                matches!(room_name(bad), Err(ValidationError::Room(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            room_name("a b").unwrap_err().to_string(),
            "room name may only use lowercase letters, digits, '-' and '_' (found ' ')"
        );
    }

    #[test]
    fn nicknames() {
        for ok in [
            "alice",
            "Bob Smith",
            "zoë",
            "山田",
            "a.b-c_d",
            &"n".repeat(NICK_MAX_CHARS),
        ] {
            assert_eq!(nickname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            " a",
            "a ",
            "a<b",
            "a\u{200b}",
            "a\nb",
            &"n".repeat(NICK_MAX_CHARS + 1),
        ] {
            assert!(
                matches!(nickname(bad), Err(ValidationError::Nick(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn texts() {
        assert_eq!(text("hi"), Ok(()));
        assert_eq!(text("line 1\nline\t2"), Ok(()));
        assert_eq!(text("<b>bold</b>"), Ok(()));
        assert_eq!(text(&"é".repeat(TEXT_MAX_CHARS)), Ok(()));
        for bad in ["", "   ", "\n", "a\u{0}b", "a\u{1b}[31m"] {
            assert!(
                matches!(text(bad), Err(ValidationError::Text(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            text(&"x".repeat(TEXT_MAX_CHARS + 1))
                .unwrap_err()
                .to_string(),
            "message is 2001 characters long; the limit is 2000"
        );
    }

    #[test]
    fn emoji_and_quotes() {
        assert!(EMOJI.iter().all(|e| emoji(e)));
        assert!(!emoji("x") && !emoji("") && !emoji("👍👍"));
        assert_eq!(quote("short"), "short");
        let long = "é".repeat(QUOTE_MAX_CHARS + 5);
        assert_eq!(quote(&long), format!("{}…", "é".repeat(QUOTE_MAX_CHARS)));
        assert_eq!(
            quote(&"é".repeat(QUOTE_MAX_CHARS)),
            "é".repeat(QUOTE_MAX_CHARS)
        );
    }

    #[test]
    fn client_ids() {
        assert_eq!(client_id("c-1"), Ok(()));
        for bad in ["", "a b", "é", &"x".repeat(CID_MAX_BYTES + 1)] {
            assert!(client_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loose_room_names_normalise() {
        assert_eq!(normalize_room("General"), "general");
        assert_eq!(normalize_room("  My Room "), "my-room");
        assert_eq!(normalize_room("dev_ops-2"), "dev_ops-2");
        assert!(
            room_name(&normalize_room("Café")).is_err(),
            "not everything can be normalised"
        );
    }

    #[test]
    fn newtypes_validate_on_deserialize() {
        assert!(serde_json::from_str::<RoomName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<RoomName>("\"Not Ok\"").is_err());
        assert!(serde_json::from_str::<Nick>("\" x\"").is_err());
    }
}
