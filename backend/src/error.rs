//! Request errors and the one place that turns them into `error` frames for clients.

use shared::{ErrorCode, ServerMsg, ValidationError};
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
}

impl RequestError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
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
        if let BusError::CidReused = e {
            return Self::new(
                ErrorCode::CidReused,
                "this cid was already used for a different message in this room; use a fresh cid for each message",
            );
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
        ServerMsg::Error {
            code: self.code,
            message: self.message,
            request: re.request,
            req: re.req,
            room: re.room,
        }
    }
}
