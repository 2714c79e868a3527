//! The WebSocket wire codec: a text frame in, a typed request (or exactly what is wrong with it and which request
//! it was) out; a server message out as the JSON text of a frame. The request kinds are `ClientMsg`'s own:
//! serde names them, and an unknown `type` is told apart from a malformed known one by serde's own verdict.

use shared::{ClientMsg, ErrorCode};

use crate::error::{RequestError, RequestRef};
pub use crate::hub::registry::encode;

/// Parses a request, or says exactly what is wrong with it and which request it was.
pub fn decode(text: &str) -> Result<(ClientMsg, RequestRef), (RequestError, RequestRef)> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let err = RequestError::new(
            ErrorCode::Malformed,
            format!("frame is not valid JSON: {e}"),
        );
        (err, RequestRef::default())
    })?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = field("type");
    let re = RequestRef {
        request: kind.clone(),
        req: if matches!(kind.as_deref(), Some("send" | "edit" | "delete" | "react")) {
            field("cid")
        } else {
            field("req")
        },
        room: field("room"),
    };
    let Some(kind) = kind else {
        let err = RequestError::new(ErrorCode::BadRequest, "frame has no string field \"type\"");
        return Err((err, re));
    };
    match serde_json::from_value::<ClientMsg>(value) {
        Ok(msg) => Ok((msg, re)),
        Err(e) => {
            let err = match unknown_kind(&e.to_string()) {
                Some(known) => RequestError::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type {kind:?}; expected one of {known}"),
                ),
                None => RequestError::new(ErrorCode::BadRequest, format!("invalid {kind}: {e}")),
            };
            Err((err, re))
        }
    }
}

/// For serde's "unknown variant `x`, expected one of `a`, `b`" (the tag names no `ClientMsg` variant), the
/// variants it lists, as `a, b`.
fn unknown_kind(serde_error: &str) -> Option<String> {
    let rest = serde_error.strip_prefix("unknown variant ")?;
    let (_, expected) = rest.split_once(", expected one of ")?;
    let list = expected.split(" at line").next().unwrap_or(expected);
    Some(list.replace('`', ""))
}

#[cfg(test)]
mod fuzz {
    //! The frame decoder against a million random and mutated frames: it never panics, and every frame either
    //! decodes to a request that survives a round trip or is answered with one of the three decoding error codes.

    use proptest::prelude::*;

    use super::*;

    /// Valid frames of every type, the seeds that mutations start from.
    const SEEDS: &[&str] = &[
        r#"{"type":"hello","version":1}"#,
        r#"{"type":"join","room":"general","nick":"alice","since":"1732190000000-0","epoch":"9f86d081884c7d65","req":"j1"}"#,
        r#"{"type":"join","room":"general","nick":"alice"}"#,
        r#"{"type":"leave","room":"general","req":"l1"}"#,
        r#"{"type":"send","room":"general","text":"hello <b>world</b> \u00e9 字","cid":"c-42"}"#,
        r#"{"type":"ping","req":"p7"}"#,
        r#"{"type":"send","room":"general","text":"re","cid":"c-43","reply_to":"1732190000000-0"}"#,
        r#"{"type":"edit","room":"general","id":"1732190000000-0","text":"fixed","cid":"c-44"}"#,
        r#"{"type":"delete","room":"general","id":"1732190000000-0","cid":"c-45"}"#,
        r#"{"type":"react","room":"general","id":"1732190000000-0","emoji":"🎉","on":true,"cid":"c-46"}"#,
        r#"{"type":"ban","room":"general","nick":"troll","secs":60,"req":"m1"}"#,
        r#"{"type":"slow_mode","room":"general","secs":30}"#,
    ];

    fn check(text: &str) -> Result<(), TestCaseError> {
        match decode(text) {
            Ok((msg, _)) => {
                let again = serde_json::to_string(&msg).unwrap();
                let (back, _) = decode(&again).map_err(|(e, _)| {
                    TestCaseError::fail(format!("re-encoded {again} fails: {:?}", e.code))
                })?;
                prop_assert_eq!(back, msg);
            }
            Err((err, _)) => prop_assert!(
                matches!(
                    err.code,
                    ErrorCode::Malformed | ErrorCode::BadRequest | ErrorCode::UnknownType
                ),
                "unexpected code {:?}",
                err.code
            ),
        }
        Ok(())
    }

    /// One edit of a byte string: replace, insert or delete a byte, truncate, or splice in a JSON fragment.
    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        const FRAGMENTS: &[&[u8]] = &[
            b"null",
            b"1e999",
            b"-0",
            b"[]",
            b"{}",
            b"\"",
            b"\\u0000",
            b"\\ud800",
            b"true",
            b"\"type\"",
            b"18446744073709551616-0",
            b",",
            b":",
            b"\xff\xfe",
        ];
        for &(kind, at, byte) in edits {
            let at = if bytes.is_empty() {
                0
            } else {
                at % (bytes.len() + 1)
            };
            match kind % 5 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    let fragment = FRAGMENTS[usize::from(byte) % FRAGMENTS.len()];
                    bytes.splice(at..at, fragment.iter().copied());
                }
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn mutated_frames(seed in 0..SEEDS.len(), edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..6)) {
            let bytes = mutate(SEEDS[seed].as_bytes().to_vec(), &edits);
            check(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn random_text(text in ".{0,64}") {
            check(&text)?;
        }

        #[test]
        fn random_objects(
            kind in prop::sample::select(vec!["hello", "join", "leave", "send", "ping", "history", "typing", "dance", ""]),
            fields in prop::collection::vec((
                prop::sample::select(vec!["room", "nick", "text", "cid", "since", "epoch", "req", "version", "type", "before", "limit"]),
                prop_oneof![
                    Just(serde_json::Value::Null),
                    any::<bool>().prop_map(serde_json::Value::from),
                    any::<i64>().prop_map(serde_json::Value::from),
                    any::<f64>().prop_map(serde_json::Value::from),
                    ".{0,20}".prop_map(serde_json::Value::from),
                    Just(serde_json::json!([1, "x"])),
                    Just(serde_json::json!({"a": 1})),
                ],
            ), 0..6),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), kind.into());
            for (name, value) in fields {
                object.insert(name.into(), value);
            }
            check(&serde_json::Value::Object(object).to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_told_apart_and_named_from_client_msg() {
        let (err, _) = decode(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        for kind in [
            "hello", "join", "leave", "send", "ping", "history", "typing",
        ] {
            assert!(err.message.contains(kind), "{} lacks {kind}", err.message);
        }
        let (err, _) = decode(r#"{"type":"join"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{}", err.message);
    }

    #[test]
    fn decode_classifies_errors() {
        let code = |t: &str| decode(t).err().map(|(e, _)| e.code);
        assert_eq!(code("{"), Some(ErrorCode::Malformed));
        assert_eq!(code("[1]"), Some(ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(
            code(r#"{"type":"send","room":"r"}"#),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"join","room":"r","nick":"n","since":"x"}"#),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"send","room":"r","text":"t","cid":"c"}"#),
            None
        );
        let (_, re) = decode(r#"{"type":"send","room":"r","cid":"c9"}"#).unwrap_err();
        assert_eq!(
            (re.request.as_deref(), re.req.as_deref(), re.room.as_deref()),
            (Some("send"), Some("c9"), Some("r"))
        );
    }
}
