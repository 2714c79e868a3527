//! Names of a room's Redis keys and channel. The `{room}` hash tag keeps all of them in one Cluster slot, so the
//! publish script may touch them together.

use std::sync::Arc;

use shared::{Nick, RoomName};

/// Builds key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The deployment's prefix (`--redis-prefix`).
    pub prefix: Arc<str>,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: Arc::from(prefix),
        }
    }

    /// The room's history: a capped Stream whose entry ids are the message ids.
    pub fn stream(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:log", self.prefix)
    }

    /// The room's position: a hash with `epoch`, `seq` (the newest offset) and `last` (the newest id).
    pub fn meta(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    /// Remembers that `nick` stored `cid` in the room, for the dedupe window.
    pub fn cid(&self, room: &RoomName, nick: &Nick, cid: &str) -> String {
        // A nick never contains ':', so the key is unambiguous.
        format!("{}:{{{room}}}:cid:{nick}:{cid}", self.prefix)
    }

    /// What actions left on the room's messages: message id → JSON state.
    pub fn state(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:state", self.prefix)
    }

    /// The room's moderation: mutes, bans, slow mode.
    pub fn moderation(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:mod", self.prefix)
    }

    /// Read positions: person → `<id> <nick>` (the newest message read, the nick read as).
    pub fn reads(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:reads", self.prefix)
    }

    /// Who read most recently: person → the read position's milliseconds, for read receipts.
    pub fn seen(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:seen", self.prefix)
    }

    /// When each nick last sent, for slow mode.
    pub fn slow(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:slow", self.prefix)
    }

    /// The room's members online (see `roster.lua`): instances, connections, counts, members, leaving, holders.
    pub fn roster(&self, room: &RoomName) -> [String; 6] {
        ["inst", "conns", "counts", "members", "leaving", "holders"]
            .map(|part| format!("{}:{{{room}}}:roster:{part}", self.prefix))
    }

    /// Every room that was ever written to, for the archiver's sweep (with an archive only). One key: rooms are
    /// added once per replica process, before their first write.
    pub fn rooms(&self) -> String {
        format!("{}:rooms", self.prefix)
    }

    /// Revoked sessions: person (a token's `sub`) → their tokens issued before this (seconds) are revoked. One hash
    /// for the deployment, under the `{_sessions}` hash tag (no room name starts with `_`), so it, its counter and
    /// its channel share one Cluster slot and `revoke.lua` may touch them together.
    pub fn revoked(&self) -> String {
        format!("{}:{{_sessions}}:revoked", self.prefix)
    }

    /// Counts the changes to [`Keys::revoked`]: a replica that sees it move reloads the list.
    pub fn revoked_seq(&self) -> String {
        format!("{}:{{_sessions}}:revoked:seq", self.prefix)
    }

    /// Where revocations are relayed to the replicas: `<issued_before> <person>`.
    pub fn revoked_channel(&self) -> String {
        format!("{}:{{_sessions}}:live", self.prefix)
    }

    /// The room's live relay channel.
    pub fn channel(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:live", self.prefix)
    }

    /// The room a channel name belongs to, if it is one of ours.
    pub fn room_of_channel(&self, channel: &str) -> Option<RoomName> {
        let inner = channel
            .strip_prefix(&*self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:live")?;
        RoomName::parse(inner).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let keys = Keys::new("rc");
        let room = RoomName::parse("general").unwrap();
        assert_eq!(keys.channel(&room), "rc:{general}:live");
        assert_eq!(keys.stream(&room), "rc:{general}:log");
        assert_eq!(keys.meta(&room), "rc:{general}:meta");
        let nick = Nick::parse("Al ice").unwrap();
        assert_eq!(keys.cid(&room, &nick, "c-1"), "rc:{general}:cid:Al ice:c-1");
        assert_eq!(keys.roster(&room)[3], "rc:{general}:roster:members");
        assert_eq!(keys.room_of_channel("rc:{general}:live"), Some(room));
        assert_eq!(keys.room_of_channel("other:{general}:live"), None);
        assert_eq!(keys.room_of_channel("rc:{Bad Room}:live"), None);
        // The revocations' channel is no room's.
        assert_eq!(keys.room_of_channel(&keys.revoked_channel()), None);
        assert_eq!(keys.revoked(), "rc:{_sessions}:revoked");
    }
}
