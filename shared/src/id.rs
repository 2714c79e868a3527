//! Message ids: `<milliseconds>-<sequence>`, the same shape as a Redis Stream entry id, ordered numerically.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A message id, assigned exactly once by the bus when a message is stored.
///
/// Within one room ids strictly increase. The millisecond part is the server time at which the message was stored,
/// so it doubles as the message timestamp. On the wire it is the string `"1732190000000-0"`; compare ids with
/// [`Ord`], never as strings (`"9-0" > "10-0"` as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId {
    /// Milliseconds since the Unix epoch on the bus's clock.
    pub ms: u64,
    /// Disambiguates messages stored within the same millisecond.
    pub seq: u64,
}

impl MsgId {
    /// Creates an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The smallest id that sorts after `self`, useful to build exclusive ranges.
    pub const fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsgIdError(String);

impl fmt::Display for ParseMsgIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid message id {:?}: expected <milliseconds>-<sequence>, e.g. \"1732190000000-0\"",
            self.0
        )
    }
}

impl std::error::Error for ParseMsgIdError {}

impl FromStr for MsgId {
    type Err = ParseMsgIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMsgIdError(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

impl Serialize for MsgId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_redis_stream_ids() {
        let id: MsgId = "1732190000000-7".parse().unwrap();
        assert_eq!(id, MsgId::new(1_732_190_000_000, 7));
        assert_eq!(id.to_string(), "1732190000000-7");
    }

    #[test]
    fn orders_numerically_not_lexically() {
        let a: MsgId = "9-0".parse().unwrap();
        let b: MsgId = "10-0".parse().unwrap();
        assert!(a < b);
        assert!(MsgId::new(5, 1) > MsgId::new(5, 0));
        assert_eq!(MsgId::new(5, u64::MAX).successor(), MsgId::new(6, 0));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-1-1",
            "+1-0",
            "1 -0",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<MsgId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn serde_is_a_string() {
        let id = MsgId::new(12, 3);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"12-3\"");
        assert_eq!(serde_json::from_str::<MsgId>("\"12-3\"").unwrap(), id);
        assert!(serde_json::from_str::<MsgId>("12").is_err());
    }
}
