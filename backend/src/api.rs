//! The HTTP API for publishing from outside (a backend, a cron job) and reading history — the role socket.io's
//! emitter plays, but through the same room rules as a WebSocket `send`: validation, a rate limit, ids, history
//! and idempotency by `cid`.
//!
//! `POST /api/rooms/{room}/messages`, `GET /api/rooms/{room}/messages?since=&limit=`,
//! `POST /api/rooms/{room}/moderation` and `POST /api/sessions/revoke`, all with `Authorization: Bearer <key>` (the
//! key holder moderates every room and revokes anyone's sessions). With no key configured (`--api-keys`) the API is
//! off and says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::{
    ChatMessage, ClientMsg, ErrorCode, ModerationAction, MsgId, Nick, RoomName, ServerMsg, frame,
};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::AppState;
use crate::error::RequestError;
use crate::hub::{Participant, Reply, Request};
use crate::ratelimit::TokenBucket;

/// Largest request body the API reads; a message is at most a few KiB of JSON.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most messages one history request returns.
pub const MAX_HISTORY_PAGE: usize = 1000;

/// The API's routes (merged into the replica's router).
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/api/rooms/{room}/messages",
            get(history).post(post_message),
        )
        .route("/api/rooms/{room}/moderation", post(post_moderation))
        .route("/api/rooms/{room}/export", get(export))
        .route("/api/search", get(search))
        .route("/api/sessions/revoke", post(post_revoke))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_in_time,
        ))
}

/// Reads a request's whole body, at most [`MAX_BODY_BYTES`], within `--header-timeout-secs` of its head, before the
/// endpoint sees it. A client that sends its body slowly (a slow POST, the body's slow loris) is answered 408
/// `request_timeout` and its connection closed, as one that sends its head slowly is closed by the server loop; a
/// body over the cap is answered 413 `too_large`.
async fn body_in_time(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.config.header_timeout();
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                too_large_error().into_response()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    format!("the request body could not be read: {e}"),
                )
                .into_response()
            }
        }
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ApiCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s of its head",
                    limit.as_secs()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// 413 `too_large`.
fn too_large_error() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ApiCode::TooLarge,
        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// One rate-limit bucket per API key, so one integration cannot starve another.
#[derive(Debug, Default, Clone)]
pub struct KeyBuckets(Arc<Mutex<HashMap<String, TokenBucket>>>);

impl KeyBuckets {
    fn take(&self, key: &str, per_sec: u32, burst: u32) -> bool {
        let mut buckets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(per_sec, burst))
            .take()
    }
}

/// A message to publish.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Shown as the author.
    pub nick: String,
    /// The message text.
    pub text: String,
    /// Idempotency key: a retry with the same `cid` is stored once. Without it, each request is a new message.
    pub cid: Option<String>,
    /// The message this one replies to.
    pub reply_to: Option<MsgId>,
}

/// A moderator's action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostModeration {
    /// What to do.
    pub action: ModerationAction,
    /// To whom (mute, kick, ban).
    pub nick: Option<String>,
    /// How long (mute, ban, slow mode); 0 lifts it.
    pub secs: Option<u64>,
    /// For `retention`: how many days the room keeps its messages (0: the server's retention).
    pub days: Option<u32>,
    /// For `receipts`: on or off.
    pub on: Option<bool>,
    /// The name the room sees as the moderator (default `moderator`).
    pub by: Option<String>,
    /// Idempotency key: a retry with the same `cid` (and `by`) moderates once. Without it, each request is new.
    pub cid: Option<String>,
}

/// A revocation of a person's sessions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostRevoke {
    /// The person: the tokens' `sub` (for tokens without one, their nick).
    pub sub: String,
    /// Tokens issued before this (`iat`, seconds since the Unix epoch) no longer count; default: now, so every
    /// token issued so far.
    pub issued_before: Option<u64>,
}

/// The answer to a revocation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// The person.
    pub sub: String,
    /// The revocation in force: the later of the one asked for and an earlier one (a revocation never moves back).
    pub issued_before: u64,
}

/// The answer to a moderation request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Moderated {
    /// The id of the `moderation` event stored in the room.
    pub id: MsgId,
    /// The `cid` was used already: this is the original event, nothing was done again.
    #[serde(default)]
    pub duplicate: bool,
}

/// The answer to a stored message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Posted {
    /// The message id.
    pub id: MsgId,
    /// Milliseconds since the Unix epoch when it was stored.
    pub ts: u64,
    /// The `cid` was already stored: this is the original message, nothing new was stored.
    #[serde(default)]
    pub duplicate: bool,
}

/// Query of a history read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Messages after this id; without it, the newest `limit`.
    pub since: Option<String>,
    /// At most this many messages (default 100, at most [`MAX_HISTORY_PAGE`]).
    pub limit: Option<usize>,
}

/// Query of an export.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Events after this id (the last line of an interrupted export); without it, from the room's first.
    pub since: Option<String>,
}

/// How many events an export reads at a time.
pub const EXPORT_PAGE: usize = 1000;

/// A page of history.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The room.
    pub room: RoomName,
    /// The room's history epoch (changes when Redis lost the history).
    pub epoch: String,
    /// Messages, oldest first.
    pub messages: Vec<ChatMessage>,
    /// `since` is older than the oldest message kept: some messages in between are gone.
    pub truncated: bool,
}

/// Query of a search.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words or parts of words.
    pub q: String,
    /// Only this room.
    pub room: Option<String>,
    /// Only messages older than this id (the last result of the previous page).
    pub before: Option<String>,
    /// At most this many results (1–50, default 20).
    pub limit: Option<usize>,
}

/// The answer to a search: as the WebSocket's `search_results`, without its `type`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Found {
    /// The query answered.
    pub query: String,
    /// The messages found, newest first, each with where the query matched in its text.
    pub results: Vec<frame::Found>,
    /// No older message matches.
    pub complete: bool,
}

/// The `error` code of an API error: the room rules' own codes (the WebSocket protocol's `ErrorCode`, spelled by
/// serde as there) and the few only the API has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiCode {
    /// The API is off on this replica (no `--api-keys`).
    ApiDisabled,
    /// No key, or a key this replica does not accept.
    Unauthorized,
    /// The body is over [`MAX_BODY_BYTES`].
    TooLarge,
    /// The body did not arrive within `--header-timeout-secs` of the request's head.
    RequestTimeout,
    /// A code of the room rules.
    #[serde(untagged)]
    Rules(ErrorCode),
}

impl ApiCode {
    /// The code as it appears in the JSON body and the metric's label.
    pub fn as_string(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(code)) => code,
            _ => unreachable!("every code serializes as a string"),
        }
    }
}

/// An API error: an HTTP status and a JSON body `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ApiCode,
    message: String,
}

impl ApiError {
    /// A body that is not the JSON `shape` the endpoint expects: 400 `bad_request`, saying what was expected and why
    /// the body was refused.
    fn bad_json(shape: &str, rejection: &JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("expected JSON {shape}: {}", rejection.body_text()),
        )
    }

    fn new(status: StatusCode, code: impl Into<ApiCode>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<ErrorCode> for ApiCode {
    fn from(code: ErrorCode) -> Self {
        Self::Rules(code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code.as_string();
        metrics::counter!("roomcast_api_errors_total", "code" => code.clone()).increment(1);
        let body = serde_json::json!({"error": code, "message": self.message});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let status = match e.code {
            ErrorCode::InvalidRoom
            | ErrorCode::InvalidNick
            | ErrorCode::InvalidText
            | ErrorCode::InvalidClientId => StatusCode::BAD_REQUEST,
            ErrorCode::CidReused | ErrorCode::MessageGone => StatusCode::CONFLICT,
            ErrorCode::Forbidden | ErrorCode::Muted | ErrorCode::Banned => StatusCode::FORBIDDEN,
            ErrorCode::SlowMode => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoArchive => StatusCode::NOT_IMPLEMENTED,
            _ => return Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, e.message),
        };
        Self::new(status, e.code, e.message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return too_large_error();
        }
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "expected JSON {{\"nick\", \"text\", \"cid\"?}} with Content-Type: application/json: {}",
                rejection.body_text()
            ),
        )
    }
}

/// Checks `Authorization: Bearer <key>` against the configured keys; returns the key.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ApiCode::ApiDisabled,
            "the HTTP API is off on this replica: start it with --api-keys (ROOMCAST_API_KEYS) to enable it",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ApiCode::Unauthorized,
                "send the API key as Authorization: Bearer <key>",
            )
        })?;
    // Compare every key in full, so the time taken does not tell how much of a guess was right.
    let mut found = None;
    for key in keys {
        if bool::from(key.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(key.clone());
        }
    }
    found.ok_or_else(|| {
        warn!("API request with an unknown key");
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ApiCode::Unauthorized,
            "this API key is not accepted here",
        )
    })
}

async fn post_message(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<Posted>), ApiError> {
    let key = authorize(&state, &headers)?;
    let Json(post) = body?;
    let room = RoomName::parse(&room).map_err(RequestError::from)?;
    let nick = Nick::parse(&post.nick).map_err(RequestError::from)?;
    let (per_sec, burst) = (
        state.config.api_sends_per_sec,
        state.config.api_sends_per_sec,
    );
    if !state.api_buckets.take(&key, per_sec, burst) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "at most {per_sec} messages per second per API key; this message was not stored"
            ),
        ));
    }
    let request = ClientMsg::Send {
        room: room.to_string(),
        text: post.text,
        cid: post
            .cid
            .unwrap_or_else(|| format!("api-{}", crate::bus::new_epoch())),
        reply_to: post.reply_to,
    };
    // The same rules as a WebSocket send from that nick, as a publisher: the key's rate limit above replaces the
    // connection's.
    let answer = Participant::publisher(state.hub.clone(), nick)
        .handle(request)
        .await
        .written()?;
    let ServerMsg::Ack(frame::Ack { id, duplicate, .. }) = answer else {
        unreachable!("a send is acked or refused, not answered with {answer:?}")
    };
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Posted {
            id,
            ts: id.ms,
            duplicate,
        }),
    ))
}

/// `GET /api/search?q=&room=&before=&limit=`: with the API key, over every room; with a person's token (when the
/// replicas check tokens), over the rooms it allows — the same search as the WebSocket's.
async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Found>, ApiError> {
    // A person's token (when the replicas check tokens), else the API key.
    let grant = state
        .auth
        .as_ref()
        .and_then(|verifier| verifier.check(uri.query(), &headers).ok());
    let grant = match grant {
        Some(grant) => Some(
            crate::auth::not_revoked(grant, state.hub.revocations())
                .await
                .map_err(|e| {
                    let code = if e.status() == StatusCode::UNAUTHORIZED {
                        ApiCode::Unauthorized
                    } else {
                        ErrorCode::Unavailable.into()
                    };
                    ApiError::new(e.status(), code, e.to_string())
                })?,
        ),
        None => None,
    };
    let mut searcher = match grant {
        Some(grant) => {
            limit_rate(&state, &format!("person:{}", grant.person))?;
            Participant::searcher(state.hub.clone(), grant)?
        }
        None => {
            let key = authorize(&state, &headers)?;
            limit_rate(&state, &key)?;
            let nick = Nick::parse("api").map_err(RequestError::from)?;
            Participant::publisher(state.hub.clone(), nick)
        }
    };
    let Query(params) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!(
                "{} (use ?q=<words>&room=<room>&before=<id>&limit=<n>)",
                e.body_text()
            ),
        )
    })?;
    let before = params
        .before
        .map(|s| s.parse::<MsgId>())
        .transpose()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "before must be a message id like 1732190000456-0",
            )
        })?;
    let request = ClientMsg::Search {
        query: params.q,
        room: params.room,
        before,
        limit: params.limit,
        req: None,
    };
    match searcher.handle(request).await {
        Reply::Frame(ServerMsg::SearchResults(found)) => Ok(Json(Found {
            query: found.query,
            results: found.results,
            complete: found.complete,
        })),
        Reply::Refused { error, .. } => Err(error.into()),
        other => unreachable!("a search is answered with results or refused, not {other:?}"),
    }
}

/// Takes one request from the bucket of `key` (an API key, or a person searching with a token).
fn limit_rate(state: &AppState, key: &str) -> Result<(), ApiError> {
    let per_sec = state.config.api_sends_per_sec;
    if state.api_buckets.take(key, per_sec, per_sec) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!("at most {per_sec} requests per second per API key or person; nothing was done"),
    ))
}

async fn history(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    authorize(&state, &headers)?;
    let Query(params) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("{} (use ?since=<id>&limit=<n>)", e.body_text()),
        )
    })?;
    let since = params
        .since
        .map(|s| s.parse::<MsgId>())
        .transpose()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "since must be a message id like 1732190000456-0",
            )
        })?;
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_HISTORY_PAGE);
    // Read through the room core like everything else; the API key's holder reads any room.
    let reader = Nick::parse("api").map_err(RequestError::from)?;
    let request = Request::Messages { room, since, limit };
    match Participant::publisher(state.hub.clone(), reader)
        .handle(request)
        .await
    {
        Reply::Messages(page) => Ok(Json(HistoryPage {
            room: page.room,
            epoch: page.epoch,
            messages: page.messages,
            truncated: page.truncated,
        })),
        Reply::Refused { error, .. } => Err(error.into()),
        other => unreachable!("a read is answered with messages or refused, not {other:?}"),
    }
}

/// The room's history as JSON Lines: each message once, in its current state, and each moderation event, oldest first,
/// read a page at a time (from the archive, then Redis) and streamed as it is read.
async fn export(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(params) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("{} (use ?since=<id>)", e.body_text()),
        )
    })?;
    let since = params
        .since
        .map(|s| s.parse::<MsgId>())
        .transpose()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "since must be a message id like 1732190000456-0",
            )
        })?;
    let reader = Nick::parse("api").map_err(RequestError::from)?;
    let mut exporter = Participant::publisher(state.hub.clone(), reader);
    // The first page answers errors with a status; later ones end the stream (resume with the last line's id).
    let first = export_page(&mut exporter, &room, since).await?;
    let pages = futures_util::stream::unfold(
        (exporter, room, Some(first)),
        |(mut exporter, room, page)| async move {
            let (body, next) = page?;
            let following = match next {
                None => None,
                Some(after) => Some(
                    export_page(&mut exporter, &room, Some(after))
                        .await
                        .map_err(|e| std::io::Error::other(e.message)),
                ),
            };
            let state = match following {
                None => (exporter, room, None),
                Some(Ok(page)) => (exporter, room, Some(page)),
                Some(Err(e)) => {
                    warn!(error = %e, "export interrupted");
                    return Some((Err(e), (exporter, room, None)));
                }
            };
            Some((Ok(body), state))
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}

/// One page of an export as JSON Lines, and where the next starts.
async fn export_page(
    exporter: &mut Participant,
    room: &str,
    after: Option<MsgId>,
) -> Result<(bytes::Bytes, Option<MsgId>), ApiError> {
    let request = Request::Export {
        room: room.to_owned(),
        after,
        limit: EXPORT_PAGE,
    };
    match exporter.handle(request).await {
        Reply::Export(lines, next) => Ok((json_lines(&lines), next)),
        Reply::Refused { error, .. } => Err(error.into()),
        other => unreachable!("an export is answered with a page or refused, not {other:?}"),
    }
}

/// Frames as JSON Lines.
pub fn json_lines(lines: &[ServerMsg]) -> bytes::Bytes {
    let mut out = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut out, line).expect("frames always serialize");
        out.push(b'\n');
    }
    out.into()
}

async fn post_moderation(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PostModeration>, JsonRejection>,
) -> Result<Json<Moderated>, ApiError> {
    let key = authorize(&state, &headers)?;
    let Json(post) = body.map_err(|rejection| {
        ApiError::bad_json(
            r#"{"action": "mute"|"kick"|"ban"|"slow_mode"|"retention"|"receipts", "nick"?, "secs"?, "days"?, "on"?, "by"?, "cid"?}"#,
            &rejection,
        )
    })?;
    let by = Nick::parse(post.by.as_deref().unwrap_or("moderator")).map_err(RequestError::from)?;
    let per_sec = state.config.api_sends_per_sec;
    if !state.api_buckets.take(&key, per_sec, per_sec) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!("at most {per_sec} requests per second per API key; nothing was done"),
        ));
    }
    let request = moderation_request(
        room,
        post.action,
        post.nick,
        post.secs
            .or(post.days.map(u64::from))
            .or(post.on.map(u64::from))
            .unwrap_or(0),
        post.cid,
    )?;
    // The key holder moderates every room, through the same rules as a moderator's WebSocket request.
    let answer = Participant::publisher(state.hub.clone(), by)
        .handle(request)
        .await
        .written()?;
    let ServerMsg::Done(frame::Done { id, duplicate, .. }) = answer else {
        unreachable!("a moderation is done or refused, not answered with {answer:?}")
    };
    Ok(Json(Moderated { id, duplicate }))
}

async fn post_revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PostRevoke>, JsonRejection>,
) -> Result<Json<Revoked>, ApiError> {
    let key = authorize(&state, &headers)?;
    let Json(post) =
        body.map_err(|rejection| ApiError::bad_json(r#"{"sub", "issued_before"?}"#, &rejection))?;
    limit_rate(&state, &key)?;
    let issued_before = post
        .issued_before
        .unwrap_or_else(|| crate::bus::now_ms() / 1000);
    let request = Request::Revoke {
        person: post.sub.clone(),
        issued_before,
    };
    let nick = Nick::parse("api").map_err(RequestError::from)?;
    match Participant::publisher(state.hub.clone(), nick)
        .handle(request)
        .await
    {
        Reply::Revoked(issued_before) => Ok(Json(Revoked {
            sub: post.sub,
            issued_before,
        })),
        Reply::Refused { error, .. } => Err(error.into()),
        other => unreachable!("a revocation is answered revoked or refused, not {other:?}"),
    }
}

/// The protocol's request for a moderator's `action` (what the API's and the CLI's moderation send); `bad_request`
/// when it names nobody and must. `amount` is seconds, or days for `retention`.
pub fn moderation_request(
    room: String,
    action: ModerationAction,
    nick: Option<String>,
    amount: u64,
    cid: Option<String>,
) -> Result<ClientMsg, RequestError> {
    let secs = amount;
    let whom = || {
        nick.clone()
            .ok_or_else(|| RequestError::new(ErrorCode::BadRequest, "say whom: nick is missing"))
    };
    Ok(match action {
        ModerationAction::Mute => ClientMsg::Mute {
            room,
            nick: whom()?,
            secs,
            req: None,
            cid,
        },
        ModerationAction::Kick => ClientMsg::Kick {
            room,
            nick: whom()?,
            req: None,
            cid,
        },
        ModerationAction::Ban => ClientMsg::Ban {
            room,
            nick: whom()?,
            secs,
            req: None,
            cid,
        },
        ModerationAction::SlowMode => ClientMsg::SlowMode {
            room,
            secs,
            req: None,
            cid,
        },
        ModerationAction::Retention => ClientMsg::Retention {
            room,
            days: u32::try_from(amount).unwrap_or(u32::MAX),
            req: None,
            cid,
        },
        ModerationAction::Receipts => ClientMsg::Receipts {
            room,
            on: amount > 0,
            req: None,
            cid,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The revocation request and answer documented in the protocol doc are what the endpoint reads and writes.
    #[test]
    fn the_documented_revocation_parses() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc
            .split("`POST /api/sessions/revoke` with the same key")
            .nth(1)
            .expect("the protocol doc documents the revocation endpoint");
        let bodies: Vec<&str> = section
            .split("```http")
            .skip(1)
            .take(2)
            .map(|block| {
                let block = block.split("```").next().unwrap();
                block.lines().rfind(|l| l.starts_with('{')).unwrap()
            })
            .collect();
        let request: PostRevoke = serde_json::from_str(bodies[0]).unwrap();
        assert_eq!(
            (request.sub.as_str(), request.issued_before),
            ("u-42", Some(1_732_190_000))
        );
        let answer: Revoked = serde_json::from_str(bodies[1]).unwrap();
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            bodies[1].replace(' ', "")
        );
    }

    #[test]
    fn codes_are_the_protocols_own_or_the_apis() {
        assert_eq!(
            ApiCode::from(ErrorCode::InvalidRoom).as_string(),
            "invalid_room"
        );
        assert_eq!(
            ApiCode::from(ErrorCode::CidReused).as_string(),
            "cid_reused"
        );
        assert_eq!(ApiCode::ApiDisabled.as_string(), "api_disabled");
        assert_eq!(ApiCode::TooLarge.as_string(), "too_large");
        let rate = ApiError::from(RequestError::new(ErrorCode::RateLimited, "slow down"));
        assert_eq!(
            (rate.status, rate.code),
            (
                StatusCode::TOO_MANY_REQUESTS,
                ApiCode::Rules(ErrorCode::RateLimited)
            )
        );
        let other = ApiError::from(RequestError::new(ErrorCode::NotJoined, "x"));
        assert_eq!(
            (other.status, other.code),
            (
                StatusCode::BAD_REQUEST,
                ApiCode::Rules(ErrorCode::BadRequest)
            )
        );
    }
}
