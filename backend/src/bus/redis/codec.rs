//! The two formats the Redis bus puts into Redis: the payload on a room's channel and the entry in a room's stream.
//!
//! This file is their only definition. The Rust side encodes and decodes with the functions below; the publish
//! script does not spell either format: it gets [`STORED_PAYLOAD`] (filled in with `string.format`) and the entry
//! field names as arguments.

use std::collections::HashMap;
use std::sync::Arc;

use shared::{MsgId, RoomName};

use crate::bus::{Body, BusError, Notice, Record};

/// A stored message on the channel, `<id> <offset> <epoch> <prev> <body>`: each `%s` is filled in that order, by
/// [`stored_payload`] here and by the publish script, which gets this template as an argument. `prev` is the id of
/// the room's entry before it (`0-0` for the first), so a replica that relayed `prev` last knows the message
/// continues the history it relayed, not another one that a failover put in its place with the same offsets.
pub(super) const STORED_PAYLOAD: &str = "%s %s %s %s %s";

/// The layout before `prev`, `<id> <offset> <epoch> <body>`: still read, so replicas of both versions can run side
/// by side during an upgrade (the tracker then checks such a message by its offset alone).
const STORED_PAYLOAD_V1: &str = "%s %s %s %s";

/// A presence or typing notice on the channel, `- <body>`. Notices are never stored, so only Rust writes them.
const NOTICE_PAYLOAD: &str = "- %s";

/// The stream entry field holding the message's offset in its room.
pub(super) const OFFSET_FIELD: &str = "o";

/// The stream entry field holding the message body (JSON).
pub(super) const BODY_FIELD: &str = "m";

/// The stream entry field that marks an action (its value is the kind): history skips these without parsing them.
pub(super) const ACTION_FIELD: &str = "a";

/// The stream entry field holding the client id the event was stored under (for the archive).
pub(super) const CID_FIELD: &str = "c";

/// The stream entry field holding the digest a repeated cid must match (for the archive).
pub(super) const DIGEST_FIELD: &str = "h";

/// A raw stream entry as Redis returns it: its id and its field/value pairs.
pub(super) type Entry = (String, HashMap<String, String>);

/// One stored message or action as read from a stream, with its offset and the idempotency key it was stored under
/// (empty for entries written before the archive existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub offset: u64,
    pub record: Record,
    pub cid: String,
    pub digest: String,
    /// The length of its body as stored (what the publish script counts as pending until archived).
    pub body_len: usize,
}

impl StoredEntry {
    /// The entry as the archive takes it.
    pub(crate) fn into_log(self) -> crate::bus::archive::LogEntry {
        crate::bus::archive::LogEntry {
            offset: self.offset,
            record: self.record,
            cid: self.cid,
            digest: self.digest,
        }
    }
}

/// A decoded channel payload.
#[derive(Debug)]
pub(super) enum Incoming {
    /// A message or action the publish script stored, with its position in the room.
    Stored {
        offset: u64,
        epoch: Arc<str>,
        /// The id of the room's entry before it; `None` from a replica of the version before it was sent.
        prev: Option<MsgId>,
        record: Record,
    },
    /// A notice that was never stored.
    Notice(Notice),
}

/// A body as JSON: the body field of a stream entry and the last part of a stored event's channel payload.
pub(super) fn body_json(body: &Body) -> String {
    serde_json::to_string(body).expect("bodies always serialize")
}

/// The channel payload of a stored message, as the publish script would have sent it.
pub(super) fn stored_payload(
    id: &str,
    offset: u64,
    epoch: &str,
    prev: &str,
    body_json: &str,
) -> String {
    fill(
        STORED_PAYLOAD,
        &[id, &offset.to_string(), epoch, prev, body_json],
    )
}

/// The channel payload of a notice.
pub(super) fn notice_payload(notice: &Notice) -> String {
    let json = serde_json::to_string(notice).expect("notices always serialize");
    fill(NOTICE_PAYLOAD, &[&json])
}

/// Decodes a channel payload of `room`: a stored message or a notice.
pub(super) fn decode_payload(room: &RoomName, payload: &[u8]) -> Result<Incoming, String> {
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    if let Some([json]) = unfill(NOTICE_PAYLOAD, text) {
        return serde_json::from_str(json)
            .map(Incoming::Notice)
            .map_err(|e| format!("not a notice: {e}"));
    }
    // A body is JSON, so it never reads as an id: a payload whose fourth value is not one has the old layout.
    let (id, offset, epoch, prev, json) = match unfill(STORED_PAYLOAD, text) {
        Some([id, offset, epoch, prev, json]) if prev.parse::<MsgId>().is_ok() => {
            (id, offset, epoch, prev.parse().ok(), json)
        }
        _ => match unfill(STORED_PAYLOAD_V1, text) {
            Some([id, offset, epoch, json]) => (id, offset, epoch, None, json),
            None => return Err("expected `<id> <offset> <epoch> <prev> <body>`".into()),
        },
    };
    let id: MsgId = id
        .parse()
        .map_err(|e: shared::ParseMsgIdError| e.to_string())?;
    let offset: u64 = offset
        .parse()
        .map_err(|_| format!("bad offset {offset:?}"))?;
    let body = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(Incoming::Stored {
        offset,
        epoch: epoch.into(),
        prev,
        record: Record {
            id,
            room: room.clone(),
            body,
        },
    })
}

/// Reads one stream entry of `room`: its id, [`OFFSET_FIELD`] and [`BODY_FIELD`].
pub(super) fn decode_entry(room: &RoomName, (id, fields): Entry) -> Result<StoredEntry, BusError> {
    let bad = |why: String| BusError::Protocol(format!("stream entry {id} of room {room}: {why}"));
    let msg_id: MsgId = id
        .parse()
        .map_err(|e: shared::ParseMsgIdError| bad(e.to_string()))?;
    // Entries written before offsets existed have none; they sort before every offset.
    let offset = match fields.get(OFFSET_FIELD) {
        Some(o) => o.parse().map_err(|_| bad(format!("offset {o:?}")))?,
        None => 0,
    };
    let json = fields
        .get(BODY_FIELD)
        .ok_or_else(|| bad(format!("no field {BODY_FIELD}")))?;
    let body = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let field = |name| fields.get(name).cloned().unwrap_or_default();
    Ok(StoredEntry {
        offset,
        record: Record {
            id: msg_id,
            room: room.clone(),
            body,
        },
        cid: field(CID_FIELD),
        digest: field(DIGEST_FIELD),
        body_len: json.len(),
    })
}

/// Decodes `data` as a channel payload of a room and as a stream entry (its lines: the id, then field and value
/// lines), as the fuzz target `bus_payload` asks: whatever decodes encodes again to the same value.
pub(crate) fn check_decoders(data: &[u8]) {
    let room = RoomName::parse("fuzz").expect("a valid room");
    match decode_payload(&room, data) {
        Ok(Incoming::Stored {
            offset,
            epoch,
            prev,
            record,
        }) => {
            let payload = stored_payload(
                &record.id.to_string(),
                offset,
                &epoch,
                &prev.unwrap_or_default().to_string(),
                &body_json(&record.body),
            );
            let Ok(Incoming::Stored {
                offset: offset_again,
                epoch: epoch_again,
                prev: prev_again,
                record: record_again,
            }) = decode_payload(&room, payload.as_bytes())
            else {
                panic!("a stored payload encoded again is not one: {payload}");
            };
            assert_eq!(
                (offset_again, &*epoch_again, prev_again, &record_again),
                (offset, &*epoch, Some(prev.unwrap_or_default()), &record),
                "{payload}"
            );
        }
        Ok(Incoming::Notice(notice)) => {
            let payload = notice_payload(&notice);
            let Ok(Incoming::Notice(again)) = decode_payload(&room, payload.as_bytes()) else {
                panic!("a notice encoded again is not one: {payload}");
            };
            assert_eq!(again, notice, "{payload}");
        }
        Err(_) => {}
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let id = lines.next().unwrap_or_default().to_owned();
    let mut fields = HashMap::new();
    while let (Some(field), Some(value)) = (lines.next(), lines.next()) {
        fields.insert(field.to_owned(), value.to_owned());
    }
    if let Ok(entry) = decode_entry(&room, (id, fields.clone())) {
        let json = body_json(&entry.record.body);
        let mut again = fields;
        again.insert(BODY_FIELD.to_owned(), json.clone());
        let read = decode_entry(&room, (entry.record.id.to_string(), again))
            .unwrap_or_else(|e| panic!("an entry encoded again is refused: {e}"));
        assert_eq!(read.record, entry.record, "{json}");
        assert_eq!(read.offset, entry.offset);
    }
}

/// Fills a template's `%s` with `values`, in order. A value may contain anything, `%s` included: only the template
/// is searched.
fn fill(template: &str, values: &[&str]) -> String {
    let mut pieces = template.split("%s");
    let mut out = String::from(pieces.next().unwrap_or_default());
    let mut values = values.iter();
    for piece in pieces {
        out.push_str(values.next().expect("a value for every %s"));
        out.push_str(piece);
    }
    out
}

/// The inverse of [`fill`]: the `N` values of a filled template. Every value but the last ends where the template's
/// text after it first appears; the last one takes the rest, so the body may contain anything.
fn unfill<'a, const N: usize>(template: &str, text: &'a str) -> Option<[&'a str; N]> {
    let mut pieces = template.split("%s");
    let mut rest = text.strip_prefix(pieces.next()?)?;
    let after: Vec<&str> = pieces.collect();
    if after.len() != N {
        return None;
    }
    let mut values = [""; N];
    for (i, literal) in after.iter().enumerate() {
        if i + 1 == N {
            values[i] = rest.strip_suffix(literal)?;
        } else {
            let (value, tail) = rest.split_once(literal)?;
            values[i] = value;
            rest = tail;
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use shared::Nick;

    use super::*;
    use crate::bus::{PresenceNotice, TypingNotice};

    fn room() -> RoomName {
        RoomName::parse("r").unwrap()
    }

    fn message(id: MsgId, text: &str) -> Record {
        let body = Body::Message {
            nick: Nick::parse("al").unwrap(),
            text: text.into(),
            quote: None,
        };
        Record {
            id,
            room: room(),
            body,
        }
    }

    fn message_json(m: &Record) -> String {
        body_json(&m.body)
    }

    #[test]
    fn stored_payloads_round_trip() {
        // Spaces, a `%s` and a leading dash in the text must not confuse the layout.
        for text in ["x", "x y  z", "%s %d 100%", "- not a notice", ""] {
            let sent = message(MsgId::new(1_732_190_000_500, 3), text);
            let payload = stored_payload(
                &sent.id.to_string(),
                42,
                "ab12",
                "1732190000400-0",
                &message_json(&sent),
            );
            let Ok(Incoming::Stored {
                offset,
                epoch,
                prev,
                record,
            }) = decode_payload(&room(), payload.as_bytes())
            else {
                panic!("a stored message: {payload}")
            };
            assert_eq!(
                (offset, &*epoch, prev, &record),
                (42, "ab12", Some(MsgId::new(1_732_190_000_400, 0)), &sent)
            );
        }
    }

    #[test]
    fn the_stored_payload_is_the_documented_layout() {
        // What the publish script's `string.format` makes of the template, for the same values.
        assert_eq!(
            stored_payload("5-1", 7, "ab12", "4-0", r#"{"kind":"message"}"#),
            r#"5-1 7 ab12 4-0 {"kind":"message"}"#
        );
        let Ok(Incoming::Stored {
            offset,
            prev,
            record,
            ..
        }) = decode_payload(
            &room(),
            br#"5-1 7 ab12 4-0 {"kind":"message","nick":"a","text":"x y"}"#,
        )
        else {
            panic!("a stored message")
        };
        let Body::Message { text, .. } = &record.body else {
            panic!("a message")
        };
        assert_eq!(
            (offset, prev, record.id, text.as_str()),
            (7, Some(MsgId::new(4, 0)), MsgId::new(5, 1), "x y")
        );
        // What cjson writes for a reaction the script counted (its own key order).
        let Ok(Incoming::Stored { record, .. }) = decode_payload(
            &room(),
            r#"5-2 8 ab12 5-1 {"on":true,"count":2,"kind":"react","emoji":"👍","target":"5-1","nick":"a"}"#
                .as_bytes(),
        ) else {
            panic!("a stored reaction")
        };
        assert!(matches!(record.body, Body::React { count: 2, .. }));
    }

    #[test]
    fn payloads_of_the_version_before_prev_are_still_read() {
        // A replica not yet upgraded publishes `<id> <offset> <epoch> <body>`; spaces in the body must not pass for
        // a `prev`.
        for body in [
            r#"{"kind":"message","nick":"a","text":"x"}"#,
            r#"{"kind":"message","nick":"a","text":"x y 5-1 z"}"#,
        ] {
            let Ok(Incoming::Stored {
                offset,
                prev,
                record,
                ..
            }) = decode_payload(&room(), format!("5-1 7 ab12 {body}").as_bytes())
            else {
                panic!("an old stored message: {body}")
            };
            assert_eq!(
                (offset, prev, record.id),
                (7, None, MsgId::new(5, 1)),
                "{body}"
            );
        }
    }

    #[test]
    fn notices_round_trip() {
        let presence = Notice::Presence(PresenceNotice {
            nick: Nick::parse("bob").unwrap(),
            event: shared::PresenceKind::Joined,
            from: None,
            ts: 1,
            node: "n".into(),
            conn: 2,
        });
        let typing = Notice::Typing(TypingNotice {
            nick: Nick::parse("bob").unwrap(),
            node: "n".into(),
            conn: 2,
        });
        for notice in [presence, typing] {
            let payload = notice_payload(&notice);
            assert!(payload.starts_with("- "), "{payload}");
            let Ok(Incoming::Notice(back)) = decode_payload(&room(), payload.as_bytes()) else {
                panic!("a notice: {payload}")
            };
            assert_eq!(back, notice);
        }
    }

    #[test]
    fn bad_payloads_are_refused() {
        for bad in [
            &b"garbage"[..],
            b"x-1 1 e {}",
            br#"5-1 {"kind":"message","nick":"a","text":"x"}"#,
            br#"5-1 x e {"kind":"message","nick":"a","text":"x"}"#,
            br#"- {"kind":"message","nick":"a","text":"x"}"#,
            br#"5-1 1 e {"kind":"typing","nick":"a","node":"n","conn":1}"#,
            b"\xff\xfe",
        ] {
            assert!(
                decode_payload(&room(), bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stream_entries_decode() {
        let sent = message(MsgId::new(9, 0), "hello there");
        let entry = |fields: &[(&str, &str)]| -> Entry {
            (
                sent.id.to_string(),
                fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let json = message_json(&sent);
        let read = decode_entry(&room(), entry(&[(OFFSET_FIELD, "12"), (BODY_FIELD, &json)]));
        assert_eq!(
            read.unwrap(),
            StoredEntry {
                offset: 12,
                record: sent.clone(),
                cid: String::new(),
                digest: String::new(),
                body_len: json.len(),
            }
        );
        // Entries from before offsets existed sort before every offset.
        let old = decode_entry(&room(), entry(&[(BODY_FIELD, &json)])).unwrap();
        assert_eq!(old.offset, 0);
        assert!(decode_entry(&room(), entry(&[(OFFSET_FIELD, "1")])).is_err());
        assert!(decode_entry(&room(), entry(&[(OFFSET_FIELD, "x"), (BODY_FIELD, &json)])).is_err());
        let bad_id = ("nope".to_owned(), entry(&[(BODY_FIELD, &json)]).1);
        assert!(decode_entry(&room(), bad_id).is_err());
    }

    #[test]
    fn templates_fill_and_unfill() {
        assert_eq!(fill("<%s|%s>", &["a", "%s"]), "<a|%s>");
        assert_eq!(unfill::<2>("<%s|%s>", "<a|b|c>"), Some(["a", "b|c"]));
        assert_eq!(unfill::<2>("<%s|%s>", "a|b>"), None);
        assert_eq!(unfill::<3>("<%s|%s>", "<a|b>"), None);
    }
}
