//! Reading the archive: a room's cursor, messages older than Redis's window (scrolling back), pages of messages and
//! moderation (export), and what an emptied Redis is rebuilt from.

use serde_json::Value;
use shared::{ModerationAction, MsgId, RoomName};
use tokio_postgres::Row;

use super::{Postgres, id_columns, id_of, query_error};
use crate::bus::archive::{ArchiveError, Cursor, LogEntry, Seed};
use crate::bus::{Body, HistoryItem, MsgState, Record};

/// A room's cursor, or `None` for a room the archive has never seen.
pub(super) async fn cursor(pg: &Postgres, room: &RoomName) -> Result<Option<Cursor>, ArchiveError> {
    let client = pg.client().await?;
    let row = client
        .query_opt(
            "SELECT epoch, archived_offset, archived_ms, archived_seq FROM rooms WHERE room = $1",
            &[&room.as_str()],
        )
        .await
        .map_err(|e| query_error(&e))?;
    Ok(row.map(|row| Cursor {
        epoch: row.get(0),
        offset: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
        id: id_of(row.get(2), row.get(3)),
    }))
}

/// The columns every read selects, in this order.
const COLUMNS: &str = "ms, seq, pos, body, cid, digest, state";

/// A row of [`COLUMNS`] as a log entry and its message's state.
fn entry(room: &RoomName, row: &Row) -> Result<(LogEntry, Option<MsgState>), ArchiveError> {
    let bad = |what: &str, e: serde_json::Error| {
        ArchiveError(format!(
            "an event of room {room} in the archive: {what}: {e}"
        ))
    };
    let body: Body = serde_json::from_value(row.get::<_, Value>(3)).map_err(|e| bad("body", e))?;
    let state = row
        .get::<_, Option<Value>>(6)
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| bad("state", e))?;
    Ok((
        LogEntry {
            offset: u64::try_from(row.get::<_, i64>(2)).unwrap_or_default(),
            record: Record {
                id: id_of(row.get(0), row.get(1)),
                room: room.clone(),
                body,
            },
            cid: row.get(4),
            digest: row.get(5),
        },
        state,
    ))
}

fn items(room: &RoomName, rows: &[Row]) -> Result<Vec<HistoryItem>, ArchiveError> {
    rows.iter()
        .map(|row| {
            let (entry, state) = entry(room, row)?;
            Ok(HistoryItem {
                record: entry.record,
                state,
            })
        })
        .collect()
}

/// Up to `limit` messages before `before`, oldest first.
pub(super) async fn older(
    pg: &Postgres,
    room: &RoomName,
    before: MsgId,
    limit: usize,
) -> Result<Vec<HistoryItem>, ArchiveError> {
    let client = pg.client().await?;
    let (ms, seq) = id_columns(before);
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE room = $1 AND kind = 'message' AND (ms, seq) < ($2, $3) \
                 ORDER BY ms DESC, seq DESC LIMIT $4"
            ),
            &[
                &room.as_str(),
                &ms,
                &seq,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(|e| query_error(&e))?;
    let mut out = items(room, &rows)?;
    out.reverse();
    Ok(out)
}

/// Up to `limit` events of every kind after `since` and before `before`, oldest first, each with its message's state
/// (an action's target's); and whether the archive reaches back to `since`.
pub(super) async fn after(
    pg: &Postgres,
    room: &RoomName,
    since: MsgId,
    before: Option<MsgId>,
    limit: usize,
) -> Result<(bool, Vec<HistoryItem>), ArchiveError> {
    let q = |e: tokio_postgres::Error| query_error(&e);
    let client = pg.client().await?;
    let (since_ms, since_seq) = id_columns(since);
    let (before_ms, before_seq) = before.map_or((i64::MAX, i64::MAX), id_columns);
    let reaches: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM events WHERE room = $1 AND (ms, seq) <= ($2, $3))",
            &[&room.as_str(), &since_ms, &since_seq],
        )
        .await
        .map_err(q)?
        .get(0);
    let rows = client
        .query(
            "SELECT e.ms, e.seq, e.pos, e.body, e.cid, e.digest, COALESCE(e.state, t.state) FROM events e \
             LEFT JOIN events t ON e.kind IN ('edit', 'delete', 'react') AND t.room = e.room \
               AND t.ms = split_part(e.body->>'target', '-', 1)::int8 \
               AND t.seq = split_part(e.body->>'target', '-', 2)::int8 \
             WHERE e.room = $1 AND (e.ms, e.seq) > ($2, $3) AND (e.ms, e.seq) < ($4, $5) \
             ORDER BY e.ms, e.seq LIMIT $6",
            &[
                &room.as_str(),
                &since_ms,
                &since_seq,
                &before_ms,
                &before_seq,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(q)?;
    Ok((reaches, items(room, &rows)?))
}

/// Up to `limit` messages and moderation events after `after` and before `before`, oldest first.
pub(super) async fn page(
    pg: &Postgres,
    room: &RoomName,
    after: Option<MsgId>,
    before: Option<MsgId>,
    limit: usize,
) -> Result<Vec<HistoryItem>, ArchiveError> {
    let client = pg.client().await?;
    let (after_ms, after_seq) = after.map_or((-1, -1), id_columns);
    let (before_ms, before_seq) = before.map_or((i64::MAX, i64::MAX), id_columns);
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE room = $1 AND kind IN ('message', 'moderation') \
                 AND (ms, seq) > ($2, $3) AND (ms, seq) < ($4, $5) ORDER BY ms, seq LIMIT $6"
            ),
            &[
                &room.as_str(),
                &after_ms,
                &after_seq,
                &before_ms,
                &before_seq,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(|e| query_error(&e))?;
    items(room, &rows)
}

/// What to rebuild the room's Redis keys from (see [`crate::bus::archive::Archive::seed`]).
pub(super) async fn seed(
    pg: &Postgres,
    room: &RoomName,
    window: usize,
    now: u64,
    cids_since: u64,
) -> Result<Option<Seed>, ArchiveError> {
    let q = |e: tokio_postgres::Error| query_error(&e);
    let Some(cursor) = cursor(pg, room).await? else {
        return Ok(None);
    };
    let client = pg.client().await?;
    // The newest events of the cursor's epoch: their offsets go on in it.
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE room = $1 AND epoch = $2 ORDER BY ms DESC, seq DESC LIMIT $3"
            ),
            &[
                &room.as_str(),
                &cursor.epoch,
                &i64::try_from(window).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(q)?;
    let mut entries = rows
        .iter()
        .map(|row| entry(room, row))
        .collect::<Result<Vec<_>, _>>()?;
    entries.reverse();
    // The moderation in force: the newest mute and ban of each nick, the newest slow mode and read receipts.
    let mut seed = Seed {
        cursor,
        entries,
        ..Seed::default()
    };
    for row in client
        .query(
            &format!(
                "SELECT DISTINCT ON (body->>'action', body->>'nick') {COLUMNS} FROM events \
                 WHERE room = $1 AND kind = 'moderation' AND body->>'action' IN ('mute', 'ban', 'slow_mode', 'receipts') \
                 ORDER BY body->>'action', body->>'nick', ms DESC, seq DESC"
            ),
            &[&room.as_str()],
        )
        .await
        .map_err(q)?
    {
        let (event, _) = entry(room, &row)?;
        let Body::Moderation {
            action,
            nick,
            secs,
            person,
            ..
        } = event.record.body
        else {
            continue;
        };
        let until = event.record.id.ms + secs * 1000;
        match (action, nick) {
            (ModerationAction::SlowMode, _) => seed.slow_secs = secs,
            (ModerationAction::Receipts, _) => seed.receipts = secs > 0,
            (ModerationAction::Mute, Some(nick)) if until > now => {
                seed.moderation.push((format!("mute:{nick}"), until));
            }
            (ModerationAction::Ban, Some(nick)) if until > now => {
                seed.moderation.push((format!("ban:{nick}"), until));
                if let Some(person) = person {
                    seed.moderation.push((format!("ban:person:{person}"), until));
                }
            }
            _ => {}
        }
    }
    // The idempotency keys still within the dedupe window: a retry of an archived send stays a retry.
    for row in client
        .query(
            &format!("SELECT {COLUMNS} FROM events WHERE room = $1 AND ms >= $2"),
            &[
                &room.as_str(),
                &i64::try_from(cids_since).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(q)?
    {
        let (event, _) = entry(room, &row)?;
        seed.cids.push((
            event.record.body.author().to_string(),
            event.cid,
            event.record.id,
            event.digest,
        ));
    }
    seed.reads = super::search::reads(&client, room).await?;
    Ok(Some(seed))
}
