//! Request errors and the one place that turns them into `error` frames for clients.

use shared::{ErrorCode, ServerMsg, ValidationError, frame};
use tracing::warn;

use crate::bus::BusError;

/// Why a client request was refused. The message is for people and never carries internal details.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Machine-readable cause.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// For `muted`, `banned` and `slow_mode`: when the request may succeed (ms since the Unix epoch).
    pub until: Option<u64>,
}

impl RequestError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            until: None,
        }
    }

    /// The same error, saying until when it holds.
    #[must_use]
    pub fn until(mut self, until: Option<u64>) -> Self {
        self.until = until;
        self
    }
}

/// How long from now until `until` (ms since the Unix epoch), for people: "12 s", "10 min", "3 h".
pub fn wait_text(until: u64) -> String {
    let secs = until.saturating_sub(crate::bus::now_ms()).div_ceil(1000);
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{} h", secs.div_ceil(3600)),
    }
}

impl From<ValidationError> for RequestError {
    fn from(e: ValidationError) -> Self {
        let code = match e {
            ValidationError::Room(_) => ErrorCode::InvalidRoom,
            ValidationError::Nick(_) => ErrorCode::InvalidNick,
            ValidationError::Text(_) => ErrorCode::InvalidText,
            ValidationError::ClientId(_) => ErrorCode::InvalidClientId,
        };
        Self::new(code, e.to_string())
    }
}

impl From<BusError> for RequestError {
    fn from(e: BusError) -> Self {
        if let BusError::Refused { code, until } = e {
            let wait = until.map(wait_text).unwrap_or_default();
            let message = match code {
                ErrorCode::CidReused => "this cid was already used for a different message in this room; use a fresh cid for each message".to_owned(),
                ErrorCode::Muted => format!("a moderator muted you in this room for {wait} more; nothing was sent"),
                ErrorCode::Banned => format!("a moderator banned you from this room for {wait} more; nothing was sent"),
                ErrorCode::SlowMode => format!("the room is in slow mode: you can send again in {wait}; this message was not sent"),
                ErrorCode::MessageGone => "that message was deleted or is no longer in the room's history".to_owned(),
                ErrorCode::Forbidden => "only its author can edit a message, and only its author or a moderator can delete it".to_owned(),
                ErrorCode::Unavailable => "the history archive is behind and this room's backlog is full; nothing was stored: try again in a moment with the same cid".to_owned(),
                _ => "refused by the room's rules".to_owned(),
            };
            return Self::new(code, message).until(until);
        }
        warn!(error = %e, "bus request failed");
        Self::new(
            ErrorCode::Unavailable,
            "the message store did not answer in time; try again in a moment (a send retried with the same cid is stored at most once)",
        )
    }
}

/// What an error frame says about the request it answers.
#[derive(Debug, Clone, Default)]
pub struct RequestRef {
    /// The request's `type`.
    pub request: Option<String>,
    /// Its `req` (or `cid` for `send`).
    pub req: Option<String>,
    /// The room it named.
    pub room: Option<String>,
}

impl RequestError {
    /// The `error` frame for this error in answer to `re`.
    pub fn into_frame(self, re: RequestRef) -> ServerMsg {
        metrics::counter!("roomcast_request_errors_total", "code" => format!("{:?}", self.code))
            .increment(1);
        ServerMsg::Error(frame::Error {
            code: self.code,
            message: self.message,
            request: re.request,
            req: re.req,
            room: re.room,
            until: self.until,
        })
    }
}
