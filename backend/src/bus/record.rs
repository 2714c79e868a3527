//! A room's history in the bus's terms: a [`Record`] is one stored event with the id the store gave it, and
//! [`MsgState`] is what actions left on a message (edited text, deleted, reactions), kept beside the history so a read
//! answers with current state without replaying the actions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::{MsgId, RoomName};

use super::body::Body;

/// One stored event of a room: a message or an action, with the id the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Strictly increasing in the room.
    pub id: MsgId,
    /// The room.
    pub room: RoomName,
    /// What was stored.
    pub body: Body,
}

impl Record {
    /// A rough size in bytes, for frame budgets.
    pub fn size(&self) -> usize {
        let text = match &self.body {
            Body::Message { text, quote, .. } => {
                text.len() + quote.as_ref().map_or(0, |q| q.text.len() + 64)
            }
            Body::Edit { text, .. } => text.len(),
            _ => 32,
        };
        text + 64
    }
}

/// A record as a history read returns it: with the current state of the message it is (a message) or is aimed at
/// (an edit, deletion or reaction); `None` when nothing acted on that message, and for moderation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The stored event.
    pub record: Record,
    /// The state of its message now.
    pub state: Option<MsgState>,
}

impl HistoryItem {
    /// Its message is deleted by now.
    pub fn deleted(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.deleted != 0)
    }
}

/// What actions left on a message: its edited text, whether it is deleted, who reacted with what. Stored as JSON
/// in the room's `state` hash (field names kept short: there is one per message acted on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgState {
    /// The text after the last edit.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When it was last edited.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// 1 when deleted.
    #[serde(rename = "d", default, skip_serializing_if = "is_zero")]
    pub deleted: u8,
    /// Emoji → the nicks that reacted with it (the value is always 1; Lua has no sets).
    #[serde(rename = "r", default, deserialize_with = "lua_map")]
    pub reactions: BTreeMap<String, BTreeMap<String, u8>>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Lua's JSON encoder writes an empty table as `{}` or, sometimes, `[]`: both are an empty map.
fn lua_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BTreeMap<String, u8>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Table {
        Map(BTreeMap<String, serde_json::Value>),
        List(serde::de::IgnoredAny),
    }
    let mut out = BTreeMap::new();
    if let Table::Map(map) = Table::deserialize(d)? {
        for (emoji, nicks) in map {
            if let serde_json::Value::Object(nicks) = nicks {
                let nicks: BTreeMap<String, u8> = nicks.into_iter().map(|(n, _)| (n, 1)).collect();
                if !nicks.is_empty() {
                    out.insert(emoji, nicks);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_what_lua_writes() {
        // cjson writes an emptied table as {} and floats for integers it did not produce.
        let state: MsgState = serde_json::from_str(
            r#"{"t":"x","e":1732190000999,"r":{"👍":{"bob":1,"al":1},"🎉":{}}}"#,
        )
        .unwrap();
        assert_eq!(state.text.as_deref(), Some("x"));
        assert_eq!(state.edited_at, Some(1_732_190_000_999));
        assert_eq!(state.reactions.len(), 1);
        assert_eq!(state.reactions["👍"].len(), 2);
        let empty: MsgState = serde_json::from_str(r#"{"d":1,"r":[]}"#).unwrap();
        assert_eq!(empty.deleted, 1);
        assert!(empty.reactions.is_empty());
    }
}
