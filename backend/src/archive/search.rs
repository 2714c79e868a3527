//! Search over messages' current text, and read positions: what the archive keeps besides the events.

use serde_json::Value;
use shared::text::Word;
use shared::{MsgId, RoomName};

use super::{Postgres, id_columns, id_of, query_error};
use crate::bus::archive::{ArchiveError, ReadPosition};
use crate::bus::{Body, HistoryItem, Record};

/// `word` as an `ILIKE` pattern that finds it anywhere: `%`, `_` and `\` stand for themselves.
fn anywhere(word: &Word) -> String {
    let mut pattern = String::from("%");
    for c in &word.chars {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(*c);
    }
    pattern.push('%');
    pattern
}

/// Up to `limit` messages matching `words`, newest first (see [`crate::bus::archive::Archive::search`]). Words that
/// may be part of a word are `ILIKE` substrings (the trigram index); whole words are a full-text match (the words
/// index). Both are on the current text, which PostgreSQL keeps with each message row (`text_now`).
pub(super) async fn search(
    pg: &Postgres,
    rooms: Option<Vec<RoomName>>,
    words: Vec<Word>,
    before: Option<MsgId>,
    limit: usize,
) -> Result<Vec<HistoryItem>, ArchiveError> {
    let client = pg.client().await?;
    let patterns: Vec<String> = words.iter().filter(|w| !w.whole).map(anywhere).collect();
    let whole: Vec<String> = words.iter().filter(|w| w.whole).map(Word::text).collect();
    let whole = whole.join(" ");
    let rooms: Option<Vec<String>> = rooms.map(|r| r.iter().map(ToString::to_string).collect());
    let (ms, seq) = before.map_or((i64::MAX, i64::MAX), id_columns);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // One condition per word, each a plain operator on the column: PostgreSQL combines their index scans (an
    // `ILIKE ALL (array)` or an `OR` around a room filter would hide them from the indexes).
    let mut sql = String::from(
        "SELECT room, ms, seq, body, state FROM events WHERE text_now IS NOT NULL AND (ms, seq) < ($1, $2)",
    );
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ms, &seq, &limit];
    for pattern in &patterns {
        params.push(pattern);
        sql.push_str(&format!(" AND text_now ILIKE ${}", params.len()));
    }
    if !whole.is_empty() {
        params.push(&whole);
        sql.push_str(&format!(
            " AND to_tsvector('simple', text_now) @@ plainto_tsquery('simple', ${})",
            params.len()
        ));
    }
    if let Some(rooms) = &rooms {
        params.push(rooms);
        sql.push_str(&format!(" AND room = ANY(${})", params.len()));
    }
    sql.push_str(" ORDER BY ms DESC, seq DESC LIMIT $3");
    let rows = client
        .query(&sql, &params)
        .await
        .map_err(|e| query_error(&e))?;
    rows.iter()
        .map(|row| {
            let name: String = row.get(0);
            let bad = |what: &str, e: &dyn std::fmt::Display| {
                ArchiveError(format!(
                    "a message of room {name} in the archive: {what}: {e}"
                ))
            };
            let room = RoomName::parse(&name).map_err(|e| bad("room", &e))?;
            let body: Body =
                serde_json::from_value(row.get::<_, Value>(3)).map_err(|e| bad("body", &e))?;
            let state = row
                .get::<_, Option<Value>>(4)
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| bad("state", &e))?;
            Ok(HistoryItem {
                record: Record {
                    id: id_of(row.get(1), row.get(2)),
                    room,
                    body,
                },
                state,
            })
        })
        .collect()
}

/// Keeps read positions, forward only (see [`crate::bus::archive::Archive::save_reads`]): one statement for all.
pub(super) async fn save_reads(
    pg: &Postgres,
    reads: Vec<ReadPosition>,
) -> Result<(), ArchiveError> {
    if reads.is_empty() {
        return Ok(());
    }
    let client = pg.client().await?;
    let (mut rooms, mut persons, mut nicks) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mss, mut seqs): (Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new());
    for read in reads {
        let (ms, seq) = id_columns(read.id);
        rooms.push(read.room.to_string());
        persons.push(read.person);
        mss.push(ms);
        seqs.push(seq);
        nicks.push(read.nick);
    }
    client
        .execute(
            "INSERT INTO reads (room, person, ms, seq, nick) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[]) \
             ON CONFLICT (room, person) DO UPDATE SET ms = excluded.ms, seq = excluded.seq, nick = excluded.nick \
             WHERE (reads.ms, reads.seq) < (excluded.ms, excluded.seq)",
            &[&rooms, &persons, &mss, &seqs, &nicks],
        )
        .await
        .map_err(|e| query_error(&e))?;
    Ok(())
}

/// A room's read positions, for a rebuild.
pub(super) async fn reads(
    client: &deadpool_postgres::Object,
    room: &RoomName,
) -> Result<Vec<ReadPosition>, ArchiveError> {
    let rows = client
        .query(
            "SELECT person, nick, ms, seq FROM reads WHERE room = $1",
            &[&room.as_str()],
        )
        .await
        .map_err(|e| query_error(&e))?;
    Ok(rows
        .iter()
        .map(|row| ReadPosition {
            room: room.clone(),
            person: row.get(0),
            nick: row.get(1),
            id: id_of(row.get(2), row.get(3)),
        })
        .collect())
}
