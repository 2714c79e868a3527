//! Reads the server's frames: the `type` first, then only that payload, straight from the frame's text.
//!
//! The derived `Deserialize` of [`ServerMsg`] accepts `type` anywhere in the object, so it buffers every member of
//! every frame in a generic tree before decoding; that machinery alone is about 5 KB of the compressed wasm. Reading
//! the frame twice (once skipping everything but `type`) keeps it out of the page and accepts the same frames.

use shared::{ServerMsg, Tagged};

/// Decodes one text frame from a replica.
pub fn server_frame(text: &str) -> serde_json::Result<ServerMsg> {
    let Tagged { kind } = serde_json::from_str(text)?;
    let mut frame = serde_json::Deserializer::from_str(text);
    let msg = ServerMsg::decode(kind, &mut frame)?;
    frame.end()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{ErrorCode, frame};

    #[test]
    fn a_frame_decodes_wherever_its_type_is() {
        let first = r#"{"type":"gap","room":"lobby","epoch":"e2","reset":true}"#;
        let last = r#"{"room":"lobby","epoch":"e2","reset":true,"type":"gap"}"#;
        let expected: ServerMsg = serde_json::from_str(first).unwrap();
        assert!(matches!(
            &expected,
            ServerMsg::Gap(frame::Gap { reset: true, .. })
        ));
        assert_eq!(server_frame(first).unwrap(), expected);
        assert_eq!(server_frame(last).unwrap(), expected);
    }

    #[test]
    fn payloads_with_nested_values_and_defaults_decode() {
        let text =
            r#"{"type":"error","code":"muted","message":"You are muted.","until":1700000000000}"#;
        let Ok(ServerMsg::Error(error)) = server_frame(text) else {
            panic!("not an error frame")
        };
        assert_eq!(
            (error.code, error.until, error.req),
            (ErrorCode::Muted, Some(1_700_000_000_000), None)
        );
        let text = r#"{"type":"message","id":"1700000000000-0","room":"lobby","nick":"ann","text":"hi","ts":1700000000000}"#;
        let Ok(ServerMsg::Message(message)) = server_frame(text) else {
            panic!("not a message")
        };
        assert_eq!((message.text.as_str(), message.deleted), ("hi", false));
    }

    #[test]
    fn unreadable_frames_are_errors() {
        for text in [
            r#"{"type":"no_such_frame"}"#,
            r#"{"room":"lobby"}"#,
            r#"{"type":"gap","room":"lobby"}"#,
            r#"{"type":"pong"} trailing"#,
            "[1,2]",
        ] {
            assert!(server_frame(text).is_err(), "{text}");
        }
    }
}
