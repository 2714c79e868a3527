//! The checks the coverage-guided fuzz targets (`fuzz/`, `cargo xtask fuzz`) run on arbitrary bytes, kept in the
//! library so the normal test suite replays every saved corpus input and every crash through the same code.
//!
//! Each check is one decoder of hostile input: a client's WebSocket frame, what the Redis bus reads back from Redis
//! (channel payloads, stream entries, message states), a token, an HTTP API body or query. Each must never panic, and
//! what it accepts must survive a round trip (encoded again, it decodes to the same value). A check that finds either
//! broken panics, which is what the fuzzer reports as a crash.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, header};
use shared::{ClientMsg, ErrorCode, validate};

use crate::api::{ExportParams, HistoryParams, PostMessage, PostModeration, SearchParams};
use crate::auth::Verifier;
use crate::session::codec;

/// A fuzz target's check: panics when the input breaks a property.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name: the name is the target's binary in `fuzz/` and its corpus directory.
pub const TARGETS: [(&str, Check); 4] = [
    ("client_frame", client_frame),
    ("bus_payload", bus_payload),
    ("jwt", jwt),
    ("api_body", api_body),
];

/// A client's text frame as the WebSocket session decodes it: a request that round-trips, or one of the three
/// decoding errors. The validations the server runs on the decoded fields must not panic either.
pub fn client_frame(data: &[u8]) {
    // The session hands the decoder text frames only (a binary frame is `malformed` before any decoding).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match codec::decode(text) {
        Ok((msg, _)) => {
            round_trips(&msg);
            validate_fields(&msg);
        }
        Err((err, _)) => assert!(
            matches!(
                err.code,
                ErrorCode::Malformed | ErrorCode::BadRequest | ErrorCode::UnknownType
            ),
            "a frame refused with {:?}: {text}",
            err.code
        ),
    }
}

/// A decoded request encodes to a frame that decodes to the same request.
fn round_trips(msg: &ClientMsg) {
    let again = serde_json::to_string(msg).expect("a decoded request encodes");
    let back = codec::decode(&again)
        .unwrap_or_else(|(e, _)| panic!("re-encoded {again} is refused: {:?}", e.code))
        .0;
    assert_eq!(&back, msg, "the request changed on its round trip: {again}");
}

/// Runs every validation the server applies to a request's fields (their verdicts do not matter here).
fn validate_fields(msg: &ClientMsg) {
    let room = |room: &str| {
        let _ = validate::room_name(room);
        let _ = validate::loose_room_name(room);
        let _ = validate::normalize_room(room);
    };
    match msg {
        ClientMsg::Join {
            room: r,
            nick,
            person,
            ..
        } => {
            room(r);
            let _ = validate::nickname(nick);
            if let Some(person) = person {
                let _ = validate::person(person);
            }
        }
        ClientMsg::Send {
            room: r, text, cid, ..
        }
        | ClientMsg::Edit {
            room: r, text, cid, ..
        } => {
            room(r);
            if validate::text(text).is_ok() {
                // What a reply quotes of it.
                let quote = validate::quote(text);
                assert!(quote.chars().count() <= validate::QUOTE_MAX_CHARS + 1);
            }
            let _ = validate::client_id(cid);
            let _ = shared::text::segments(text, Some("alice"));
        }
        ClientMsg::React {
            room: r,
            emoji,
            cid,
            ..
        } => {
            room(r);
            let _ = validate::emoji(emoji);
            let _ = validate::client_id(cid);
        }
        ClientMsg::Search { query, room: r, .. } => {
            if let Some(r) = r {
                room(r);
            }
            if let Some(words) = shared::text::query_words(query) {
                let _ = shared::text::find(query, &words);
            }
        }
        ClientMsg::Mute { room: r, nick, .. }
        | ClientMsg::Kick { room: r, nick, .. }
        | ClientMsg::Ban { room: r, nick, .. } => {
            room(r);
            let _ = validate::nickname(nick);
        }
        _ => {}
    }
}

/// What the Redis bus reads back from Redis, which another build, a script or a person may have written: a channel
/// payload, a stream entry (the input's lines: the id, then field and value lines) and a message's state (JSON).
/// Whatever decodes encodes again to the same value.
pub fn bus_payload(data: &[u8]) {
    crate::bus::redis::check_decoders(data);
    if let Ok(state) = serde_json::from_slice::<crate::bus::MsgState>(data) {
        let again = serde_json::to_string(&state).expect("a state encodes");
        let back: crate::bus::MsgState =
            serde_json::from_str(&again).unwrap_or_else(|e| panic!("{e}: {again}"));
        assert_eq!(back, state, "the state changed on its round trip: {again}");
    }
}

/// The secret the `jwt` target's verifier checks signatures with.
const SECRET: &str = "a-fuzzing-secret-of-at-least-32-bytes";

/// A token, as the query parameter and as the `Authorization` header of an upgrade: never a panic; a token whose
/// header names another algorithm than the verifier's (`none`, RS256 against an HS256 secret) never passes. The input
/// is also taken as a token's claims, signed with the right key: whatever they say, a grant that comes out names a
/// valid nick.
pub fn jwt(data: &[u8]) {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let mut config = crate::Config::defaults();
        config.jwt_secret = Some(SECRET.to_owned());
        Verifier::from_config(&config)
            .expect("a valid key")
            .expect("authentication on")
    });
    let text = String::from_utf8_lossy(data);
    let by_query = verifier.check(Some(&format!("token={text}")), &HeaderMap::new());
    if let Ok(token_header) = jsonwebtoken::decode_header(text.as_bytes())
        && token_header.alg != jsonwebtoken::Algorithm::HS256
    {
        assert!(
            by_query.is_err(),
            "a token signed with {:?} passed: {text}",
            token_header.alg
        );
    }
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {text}")) {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value);
        let _ = verifier.check(None, &headers);
    }
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        );
        if let Ok(token) = token
            && let Ok(grant) = verifier.check(Some(&format!("token={token}")), &HeaderMap::new())
        {
            assert!(
                validate::nickname(&grant.nick).is_ok(),
                "a grant for the invalid nick {:?}",
                grant.nick
            );
        }
    }
}

/// The HTTP API's bodies and queries as its handlers extract them: a message to post, a moderation (turned into the
/// protocol request a WebSocket moderator would send, which must decode as such), and the history, export and search
/// queries. Never a panic.
pub fn api_body(data: &[u8]) {
    if let Ok(axum::Json(post)) = axum::Json::<PostMessage>::from_bytes(data) {
        let _ = validate::nickname(&post.nick);
        let _ = validate::text(&post.text);
        if let Some(cid) = &post.cid {
            let _ = validate::client_id(cid);
        }
        round_trips(&ClientMsg::Send {
            room: "general".into(),
            text: post.text,
            cid: post.cid.unwrap_or_else(|| "api".into()),
            reply_to: post.reply_to,
        });
    }
    if let Ok(axum::Json(post)) = axum::Json::<PostModeration>::from_bytes(data) {
        let _ = validate::nickname(post.by.as_deref().unwrap_or("moderator"));
        let amount = post
            .secs
            .or(post.days.map(u64::from))
            .or(post.on.map(u64::from))
            .unwrap_or(0);
        if let Ok(request) = crate::api::moderation_request(
            "general".into(),
            post.action,
            post.nick,
            amount,
            post.cid,
        ) {
            round_trips(&request);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/api?{text}").parse::<axum::http::Uri>() else {
        return;
    };
    if let Ok(axum::extract::Query(params)) =
        axum::extract::Query::<HistoryParams>::try_from_uri(&uri)
        && let Some(since) = params.since
    {
        let _ = since.parse::<shared::MsgId>();
    }
    if let Ok(axum::extract::Query(params)) =
        axum::extract::Query::<ExportParams>::try_from_uri(&uri)
        && let Some(since) = params.since
    {
        let _ = since.parse::<shared::MsgId>();
    }
    if let Ok(axum::extract::Query(params)) =
        axum::extract::Query::<SearchParams>::try_from_uri(&uri)
        && let Some(words) = shared::text::query_words(&params.q)
    {
        let _ = shared::text::find(&params.q, &words);
    }
}

#[cfg(test)]
mod tests {
    //! Every saved input of every fuzz target — the corpus seeds and the crashes the fuzzer found, kept as
    //! regression inputs — runs through its check in the normal test suite.

    use std::path::PathBuf;

    use super::TARGETS;

    fn fuzz_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    #[test]
    fn every_saved_fuzz_input_passes_its_check() {
        let mut ran = 0;
        for (target, check) in TARGETS {
            for kind in ["corpus", "regressions"] {
                let dir = fuzz_dir().join(kind).join(target);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    assert_ne!(kind, "corpus", "{} has no seeds", dir.display());
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    let outcome = std::panic::catch_unwind(|| check(&data));
                    assert!(outcome.is_ok(), "{} fails its check", path.display());
                    ran += 1;
                }
            }
        }
        assert!(ran >= TARGETS.len(), "only {ran} inputs");
    }

    #[test]
    fn every_target_has_its_binary() {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for (target, _) in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "fuzz/Cargo.toml lacks {target}"
            );
            assert!(
                fuzz_dir()
                    .join(format!("fuzz_targets/{target}.rs"))
                    .exists()
            );
        }
    }
}
