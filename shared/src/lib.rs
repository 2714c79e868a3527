//! The Roomcast wire contract: every type that crosses the WebSocket between browser and replica, and the validation
//! rules both sides enforce. What replicas tell each other through Redis is the backend's own (its `bus`).
//!
//! This crate is deliberately synchronous and serde-only so the browser (wasm32) and the backend compile the very
//! same definitions; if a field changes here, both sides change together or neither compiles.

pub mod frame;
mod id;
mod protocol;
pub mod text;
pub mod validate;

pub use id::{MsgId, ParseMsgIdError};
pub use protocol::{
    ChatMessage, ClientMsg, ErrorCode, HISTORY_PAGE_MAX, Limits, MEMBERS_SHOWN, ModerationAction,
    ModerationEvent, PresenceEvent, PresenceKind, Quote, Reaction, SEARCH_PAGE_MAX, SEEN_SHOWN,
    ServerKind, ServerMsg, TYPING_EVERY_MS, TYPING_SHOWN_MS, Tagged, UNREAD_COUNTED,
};
pub use validate::{Nick, RoomName, ValidationError};

/// The protocol version this build speaks. A client that announces another version in `hello` is refused with
/// [`ErrorCode::UnsupportedVersion`] and the connection is closed.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket path every replica serves.
pub const WS_PATH: &str = "/ws";

/// WebSocket close codes Roomcast uses, named so that client and server agree on their meaning.
pub mod close_code {
    /// The server is shutting down; reconnect (to any replica) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket framing itself (RFC 6455): reserved bits set (a compressed frame, say, when no
    /// extension was agreed), an unmasked frame, a bad opcode. Nothing of it was read.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client violated the protocol in a way that cannot be answered with an error frame
    /// (for example an unsupported protocol version).
    pub const POLICY: u16 = 1008;
    /// A frame exceeded [`crate::validate::MAX_FRAME_BYTES`].
    pub const TOO_BIG: u16 = 1009;
    /// The client did not read fast enough and its outgoing queue filled; reconnect and resume with `since`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection's token expired (plus the server's grace period); get a fresh token and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The person's sessions were revoked (`POST /api/sessions/revoke`): the token no longer counts. Do not
    /// reconnect with it; sign in again for a new token.
    pub const SESSION_REVOKED: u16 = 4003;
}
