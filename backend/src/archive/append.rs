//! Writing the archive: a batch of a room's events in one transaction under the room's row lock (so the events go in
//! once each and in order, whichever replicas race for the room), and the retention job.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use shared::{ModerationAction, MsgId, RoomName};
use tracing::{debug, info};

use super::{Postgres, RETENTION_LOCK, id_columns, id_of, query_error};
use crate::bus::archive::{Appended, ArchiveError, Cursor, Expired, LogEntry};
use crate::bus::{Body, MsgState};

/// One day in milliseconds.
const DAY_MS: f64 = 86_400_000.0;

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("bodies and states always serialize")
}

/// Archives `entries` of `room` (see [`crate::bus::archive::Archive::append`]).
pub(super) async fn append(
    pg: &Postgres,
    room: &RoomName,
    epoch: &str,
    entries: Vec<LogEntry>,
) -> Result<Appended, ArchiveError> {
    let q = |e: tokio_postgres::Error| query_error(&e);
    let mut client = pg.client().await?;
    let tx = client.transaction().await.map_err(q)?;
    tx.execute(
        "INSERT INTO rooms (room, epoch) VALUES ($1, $2) ON CONFLICT (room) DO NOTHING",
        &[&room.as_str(), &epoch],
    )
    .await
    .map_err(q)?;
    // The room's lock for this transaction; another replica holding it is archiving the same events.
    let Some(row) = tx
        .query_opt(
            "SELECT epoch, archived_offset, archived_ms, archived_seq FROM rooms WHERE room = $1 \
             FOR UPDATE SKIP LOCKED",
            &[&room.as_str()],
        )
        .await
        .map_err(q)?
    else {
        return Ok(Appended::Busy);
    };
    let cursor = Cursor {
        epoch: row.get(0),
        offset: u64::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
        id: id_of(row.get(2), row.get(3)),
    };
    // Within the archive's epoch, offsets say what is new; a new epoch (Redis lost the room and it was not rebuilt)
    // starts a new run of offsets, and ids, which keep growing across epochs, say what is new.
    let same_epoch = cursor.epoch == epoch;
    let fresh: Vec<LogEntry> = entries
        .into_iter()
        .filter(|e| {
            if same_epoch {
                e.offset > cursor.offset
            } else {
                e.record.id > cursor.id
            }
        })
        .collect();
    let Some(last) = fresh.last() else {
        return Ok(Appended::Done {
            cursor,
            events: 0,
            gaps: 0,
        });
    };
    let new_cursor = Cursor {
        epoch: epoch.to_owned(),
        offset: last.offset,
        id: last.record.id,
    };
    let mut expected = if same_epoch { cursor.offset + 1 } else { 1 };
    let mut gaps = 0;
    for entry in &fresh {
        gaps += entry.offset.saturating_sub(expected);
        expected = entry.offset + 1;
    }

    // The states of the messages this batch acts on: those stored before it, read under the lock, and its own.
    let created: HashSet<MsgId> = fresh
        .iter()
        .filter(|e| e.record.body.is_message())
        .map(|e| e.record.id)
        .collect();
    let earlier: Vec<MsgId> = fresh
        .iter()
        .filter_map(|e| e.record.body.target())
        .filter(|t| !created.contains(t))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut states: HashMap<MsgId, MsgState> = HashMap::new();
    if !earlier.is_empty() {
        let (ms, seq): (Vec<i64>, Vec<i64>) = earlier.iter().map(|id| id_columns(*id)).unzip();
        for row in tx
            .query(
                "SELECT e.ms, e.seq, e.state FROM events e \
                 JOIN unnest($2::int8[], $3::int8[]) AS t(ms, seq) ON e.ms = t.ms AND e.seq = t.seq \
                 WHERE e.room = $1 AND e.kind = 'message'",
                &[&room.as_str(), &ms, &seq],
            )
            .await
            .map_err(q)?
        {
            let state: Option<Value> = row.get(2);
            let state = state
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| ArchiveError(format!("a message state in the archive: {e}")))?
                .unwrap_or_default();
            states.insert(id_of(row.get(0), row.get(1)), state);
        }
    }
    let mut touched: HashSet<MsgId> = HashSet::new();
    let mut deleted: Vec<MsgId> = Vec::new();
    let mut retention: Option<Option<f64>> = None;
    for entry in &fresh {
        let at = entry.record.id.ms;
        match &entry.record.body {
            Body::Message { .. } => {
                states.entry(entry.record.id).or_default();
            }
            Body::Edit { target, text, .. } => {
                if let Some(state) = states.get_mut(target) {
                    state.text = Some(text.clone());
                    state.edited_at = Some(at);
                    touched.insert(*target);
                }
            }
            Body::Delete { target, .. } => {
                if let Some(state) = states.get_mut(target) {
                    *state = MsgState {
                        deleted: 1,
                        ..MsgState::default()
                    };
                    touched.insert(*target);
                    deleted.push(*target);
                }
            }
            Body::React {
                nick,
                target,
                emoji,
                on,
                ..
            } => {
                if let Some(state) = states.get_mut(target) {
                    let nicks = state.reactions.entry(emoji.clone()).or_default();
                    if *on {
                        nicks.insert(nick.to_string(), 1);
                    } else {
                        nicks.remove(nick.as_str());
                    }
                    if nicks.is_empty() {
                        state.reactions.remove(emoji);
                    }
                    touched.insert(*target);
                }
            }
            Body::Moderation {
                action: ModerationAction::Retention,
                secs,
                ..
            } => {
                #[allow(clippy::cast_precision_loss)]
                let days = (*secs > 0).then(|| *secs as f64 / 86_400.0);
                retention = Some(days);
            }
            Body::Moderation { .. } => {}
        }
    }

    // The events, once each (the lock makes a conflict impossible; it is ignored all the same).
    let mut cols = Columns::default();
    for entry in &fresh {
        let (ms, seq) = id_columns(entry.record.id);
        let state = (created.contains(&entry.record.id) && touched.contains(&entry.record.id))
            .then(|| json(&states[&entry.record.id]));
        cols.ms.push(ms);
        cols.seq.push(seq);
        cols.pos
            .push(i64::try_from(entry.offset).unwrap_or(i64::MAX));
        cols.kind.push(entry.record.body.kind());
        cols.body.push(json(&entry.record.body));
        cols.cid.push(entry.cid.clone());
        cols.digest.push(entry.digest.clone());
        cols.state.push(state);
    }
    tx.execute(
        "INSERT INTO events (room, ms, seq, epoch, pos, kind, body, cid, digest, state) \
         SELECT $1, t.ms, t.seq, $2, t.pos, t.kind, t.body, t.cid, t.digest, t.state \
         FROM unnest($3::int8[], $4::int8[], $5::int8[], $6::text[], $7::jsonb[], $8::text[], $9::text[], $10::jsonb[]) \
              AS t(ms, seq, pos, kind, body, cid, digest, state) \
         ON CONFLICT DO NOTHING",
        &[
            &room.as_str(),
            &epoch,
            &cols.ms,
            &cols.seq,
            &cols.pos,
            &cols.kind,
            &cols.body,
            &cols.cid,
            &cols.digest,
            &cols.state,
        ],
    )
    .await
    .map_err(q)?;
    // The states of earlier messages this batch acted on.
    let changed: Vec<MsgId> = touched
        .iter()
        .filter(|id| !created.contains(id))
        .copied()
        .collect();
    if !changed.is_empty() {
        let (ms, seq): (Vec<i64>, Vec<i64>) = changed.iter().map(|id| id_columns(*id)).unzip();
        let state: Vec<Value> = changed.iter().map(|id| json(&states[id])).collect();
        tx.execute(
            "UPDATE events e SET state = t.state \
             FROM unnest($2::int8[], $3::int8[], $4::jsonb[]) AS t(ms, seq, state) \
             WHERE e.room = $1 AND e.ms = t.ms AND e.seq = t.seq",
            &[&room.as_str(), &ms, &seq, &state],
        )
        .await
        .map_err(q)?;
    }
    // A deleted message's text is gone for good: from the message and from its edits.
    if !deleted.is_empty() {
        let (ms, seq): (Vec<i64>, Vec<i64>) = deleted.iter().map(|id| id_columns(*id)).unzip();
        let ids: Vec<String> = deleted.iter().map(ToString::to_string).collect();
        tx.execute(
            "UPDATE events e SET body = jsonb_set(e.body, '{text}', '\"\"') \
             WHERE e.room = $1 AND ( \
               (e.kind = 'message' AND (e.ms, e.seq) IN (SELECT * FROM unnest($2::int8[], $3::int8[]))) \
               OR (e.kind = 'edit' AND e.body->>'target' = ANY($4::text[])))",
            &[&room.as_str(), &ms, &seq, &ids],
        )
        .await
        .map_err(q)?;
    }
    if let Some(days) = retention {
        tx.execute(
            "UPDATE rooms SET retention_days = $2 WHERE room = $1",
            &[&room.as_str(), &days],
        )
        .await
        .map_err(q)?;
    }
    let (ms, seq) = id_columns(new_cursor.id);
    tx.execute(
        "UPDATE rooms SET epoch = $2, archived_offset = $3, archived_ms = $4, archived_seq = $5, \
         gaps = gaps + $6 WHERE room = $1",
        &[
            &room.as_str(),
            &epoch,
            &i64::try_from(new_cursor.offset).unwrap_or(i64::MAX),
            &ms,
            &seq,
            &i64::try_from(gaps).unwrap_or(i64::MAX),
        ],
    )
    .await
    .map_err(q)?;
    tx.commit().await.map_err(q)?;
    debug!(%room, events = fresh.len(), offset = new_cursor.offset, "archived");
    Ok(Appended::Done {
        cursor: new_cursor,
        events: u64::try_from(fresh.len()).unwrap_or(u64::MAX),
        gaps,
    })
}

/// The batch's columns, for one `unnest` insert.
#[derive(Default)]
struct Columns {
    ms: Vec<i64>,
    seq: Vec<i64>,
    pos: Vec<i64>,
    kind: Vec<&'static str>,
    body: Vec<Value>,
    cid: Vec<String>,
    digest: Vec<String>,
    state: Vec<Option<Value>>,
}

/// The retention job (see [`crate::bus::archive::Archive::expire`]).
pub(super) async fn expire(
    pg: &Postgres,
    default_days: Option<f64>,
    every_secs: u64,
    now: u64,
) -> Result<Vec<Expired>, ArchiveError> {
    let q = |e: tokio_postgres::Error| query_error(&e);
    let client = pg.client().await?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
        .await
        .map_err(q)?
        .get(0);
    if !locked {
        return Ok(Vec::new());
    }
    let result = async {
        let due = client
            .query_opt(
                "INSERT INTO jobs (name, last_run) VALUES ('retention', now()) \
                 ON CONFLICT (name) DO UPDATE SET last_run = now() \
                 WHERE jobs.last_run <= now() - make_interval(secs => $1) RETURNING 1",
                &[&f64::from(u32::try_from(every_secs).unwrap_or(u32::MAX))],
            )
            .await
            .map_err(q)?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut expired = Vec::new();
        for row in client
            .query("SELECT room, retention_days FROM rooms", &[])
            .await
            .map_err(q)?
        {
            let name: String = row.get(0);
            let Some(days) = row.get::<_, Option<f64>>(1).or(default_days) else {
                continue;
            };
            let Ok(room) = RoomName::parse(&name) else {
                continue;
            };
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let before = (now as f64 - days * DAY_MS).max(0.0) as u64;
            let deleted = client
                .execute(
                    "DELETE FROM events WHERE room = $1 AND ms < $2",
                    &[&name, &i64::try_from(before).unwrap_or(i64::MAX)],
                )
                .await
                .map_err(q)?;
            if deleted > 0 {
                info!(%room, events = deleted, days, "retention: expired events deleted");
            }
            expired.push(Expired {
                room,
                before: MsgId::new(before, 0),
                events: deleted,
            });
        }
        Ok(expired)
    }
    .await;
    let _ = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
        .await;
    result
}
