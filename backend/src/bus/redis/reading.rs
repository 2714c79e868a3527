//! Read positions in Redis (`read.lua`, `reads.lua`): one hash of positions per room, beside a sorted set of who read
//! most recently (for read receipts). With an archive, each move is also queued for PostgreSQL, where the archiver
//! writes the moves of the last second in one statement (see `archiving.rs`).

use shared::{MsgId, Nick, RoomName};

use super::{Store, protocol, unavailable};
use crate::bus::{BusError, ReadMove, Reads};

/// `read.lua`'s answer: status, moved, position, last, receipts, others.
type ReadReply = (String, i64, String, String, i64, i64);

/// An id from a script's answer, `None` for `''`.
fn id_of(text: &str) -> Result<Option<MsgId>, BusError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(protocol)
}

/// A reads-hash value, `<id> <nick>`.
fn position(value: &str) -> Result<(MsgId, Nick), BusError> {
    let (id, nick) = value
        .split_once(' ')
        .ok_or_else(|| protocol(format!("read position {value:?}")))?;
    Ok((
        id.parse().map_err(protocol)?,
        Nick::parse(nick).map_err(protocol)?,
    ))
}

impl Store {
    /// Moves `person`'s read position forward (see [`crate::bus::Bus::mark_read`]); with an archive, rebuilds a room
    /// Redis lost first, and queues the move for PostgreSQL.
    pub(super) async fn mark_read(
        &self,
        room: &RoomName,
        person: &str,
        nick: &Nick,
        id: MsgId,
    ) -> Result<ReadMove, BusError> {
        let ks = [
            self.keys.meta(room),
            self.keys.reads(room),
            self.keys.seen(room),
            self.keys.moderation(room),
            self.keys.roster(room)[2].clone(),
        ];
        let archived = if self.archiving.is_some() { "1" } else { "" };
        let mut rebuilt = false;
        loop {
            let script = self.mark_read.clone();
            let (ks, person_, nick_) = (ks.clone(), person.to_owned(), nick.to_string());
            let (status, moved, at, last, receipts, others): ReadReply = self
                .run(|mut conn| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation
                        .arg(person_)
                        .arg(nick_)
                        .arg(id.to_string())
                        .arg(archived);
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            match (status.as_str(), &self.archiving) {
                ("missing", Some(archiving)) if !rebuilt => {
                    self.restore(archiving, room).await?;
                    rebuilt = true;
                }
                ("missing", _) => return Err(unavailable("the room is being rebuilt")),
                _ => {
                    let answer = ReadMove {
                        moved: moved == 1,
                        id: id_of(&at)?,
                        last: id_of(&last)?,
                        receipts: receipts == 1,
                        others: others == 1,
                    };
                    if let (true, Some(at), Some(archiving)) =
                        (answer.moved, answer.id, &self.archiving)
                    {
                        archiving.read_moved(room, person, nick, at);
                    }
                    return Ok(answer);
                }
            }
        }
    }

    /// `person`'s read position and, with receipts on, the most recent readers' (see [`crate::bus::Bus::reads`]).
    pub(super) async fn read_positions(
        &self,
        room: &RoomName,
        person: &str,
    ) -> Result<Reads, BusError> {
        let ks = [
            self.keys.reads(room),
            self.keys.seen(room),
            self.keys.moderation(room),
            self.keys.meta(room),
        ];
        let archived = if self.archiving.is_some() { "1" } else { "" };
        let mut rebuilt = false;
        let (mine, receipts, seen) = loop {
            let script = self.read_positions.clone();
            let (ks, person) = (ks.clone(), person.to_owned());
            let answer: (String, i64, Vec<String>) = self
                .run(|mut conn| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation.arg(person).arg(shared::SEEN_SHOWN).arg(archived);
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            match (answer.0.as_str(), &self.archiving) {
                ("missing", Some(archiving)) if !rebuilt => {
                    self.restore(archiving, room).await?;
                    rebuilt = true;
                }
                ("missing", _) => return Err(unavailable("the room is being rebuilt")),
                _ => break answer,
            }
        };
        let mine = if mine.is_empty() {
            None
        } else {
            Some(position(&mine)?.0)
        };
        let seen = seen
            .iter()
            .map(|v| position(v).map(|(id, nick)| (nick, id)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reads {
            mine,
            receipts: receipts == 1,
            seen,
        })
    }
}
