//! One participant's rooms and the rules of every request, behind one entry point, [`Participant::handle`]: a
//! request in, a [`Reply`] out. Join (subscribe, then history and the roster change, with rollback), leave, send and
//! the actions on messages (validation, rate limit, idempotent publish), moderation, scrolling back, typing. A
//! WebSocket connection is a participant with a queue; the HTTP API and the CLI are publishers, which publish as a
//! nick without joining — under that nick's room rules — and read a room's history. No path reaches the bus without
//! these rules.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use shared::{
    ChatMessage, ClientMsg, ErrorCode, HISTORY_PAGE_MAX, ModerationAction, MsgId, Nick,
    PROTOCOL_VERSION, RoomName, SEARCH_PAGE_MAX, ServerMsg, TYPING_EVERY_MS, close_code,
};
use shared::{frame, validate};
use tracing::{debug, info, warn};

use super::reads::{self, Counts};
use super::registry::{ConnId, Member, Outbound};
use super::{Grant, Hub, frames, presence};
use crate::bus::{
    Body, Draft, HistoryItem, HistoryQuery, Notice, ReadNotice, Reads, RosterOp, TypingNotice,
    new_epoch,
};
use crate::error::{RequestError, wait_text};
use crate::ratelimit::TokenBucket;

/// Largest `joined` frame the history may grow to; the rest follows as `message` frames. Keeps every frame far
/// below the socket's write limit, whatever the messages' length.
pub const JOINED_BUDGET_BYTES: usize = 64 * 1024;
/// Messages read per history request while a joining member catches up.
pub const CATCH_UP_PAGE: usize = 200;

/// A request to the room core: a client's, from whichever way in, or one only a publisher makes.
#[derive(Debug, Clone)]
pub enum Request {
    /// What a WebSocket client sends; the HTTP API and the CLI send the same requests as a publisher.
    Client(ClientMsg),
    /// A publisher reads a room's messages with their current state: those after `since`, or the newest `limit`.
    Messages {
        /// The room.
        room: String,
        /// Messages after this id; `None`: the newest.
        since: Option<MsgId>,
        /// At most this many.
        limit: usize,
    },
    /// A publisher exports a room: its messages in their current state and its moderation events, from its first
    /// (with an archive) or after `after`, about `limit` at a time.
    Export {
        /// The room.
        room: String,
        /// Events after this id; `None`: from the room's first.
        after: Option<MsgId>,
        /// About this many per page.
        limit: usize,
    },
    /// A publisher (the API key's holder, the CLI) revokes a person's sessions on every replica: their connections
    /// whose tokens were issued before `issued_before` close, and those tokens are refused from then on.
    Revoke {
        /// The person: the tokens' `sub`.
        person: String,
        /// Seconds since the Unix epoch.
        issued_before: u64,
    },
}

impl From<ClientMsg> for Request {
    fn from(msg: ClientMsg) -> Self {
        Self::Client(msg)
    }
}

/// A page of a room's messages, with their current state (answers [`Request::Messages`]).
#[derive(Debug, Clone)]
pub struct Messages {
    /// The room.
    pub room: RoomName,
    /// The room's history epoch.
    pub epoch: String,
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    /// `since` is older than the oldest message kept: some messages in between are gone.
    pub truncated: bool,
}

/// What a request comes to. The transport turns it into frames (the WebSocket session) or a response (the HTTP
/// API); the rules decide only what is said, never how.
pub enum Reply<'a> {
    /// Nothing is answered (`typing`, a `hello` of this protocol version).
    Silent,
    /// One frame answers the request.
    Frame(ServerMsg),
    /// The frames to send, in order, before anything else reaches the participant: `joined`, then the history that
    /// did not fit in it. Ends with `Err` if the rest of the history could not be read: the connection must close.
    Frames(BoxStream<'a, Result<ServerMsg, Close>>),
    /// A page of messages (a publisher's read).
    Messages(Messages),
    /// A page of an export: frames (`message` in its current state, `moderation`), and where the next page starts
    /// (`None`: this was the last).
    Export(Vec<ServerMsg>, Option<MsgId>),
    /// The person's sessions are revoked: tokens issued before this time (seconds) no longer count (the later of
    /// the one asked for and an earlier revocation).
    Revoked(u64),
    /// The request is refused; with `close`, the connection must close after saying why.
    Refused {
        /// Why, for the client.
        error: RequestError,
        /// Close the connection after the error, with this code and reason.
        close: Option<Close>,
    },
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Silent => f.write_str("Silent"),
            Self::Frame(msg) => f.debug_tuple("Frame").field(msg).finish(),
            Self::Frames(_) => f.write_str("Frames(..)"),
            Self::Messages(page) => f.debug_tuple("Messages").field(page).finish(),
            Self::Export(lines, next) => f
                .debug_tuple("Export")
                .field(&lines.len())
                .field(next)
                .finish(),
            Self::Revoked(before) => f.debug_tuple("Revoked").field(before).finish(),
            Self::Refused { error, close } => f
                .debug_struct("Refused")
                .field("error", error)
                .field("close", close)
                .finish(),
        }
    }
}

impl Reply<'_> {
    /// What a write (`send`, an action on a message, a moderation) that is not the WebSocket's comes to: the frame
    /// that answers it, `ack` or `done`, or why it was refused.
    pub fn written(self) -> Result<ServerMsg, RequestError> {
        match self {
            Self::Frame(frame @ (ServerMsg::Ack(_) | ServerMsg::Done(_))) => Ok(frame),
            Self::Refused { error, .. } => Err(error),
            other => unreachable!("a write is acked, done or refused, not answered with {other:?}"),
        }
    }
}

/// How a connection must close: a WebSocket close code and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code (`shared::close_code`).
    pub code: u16,
    /// The reason, for people.
    pub reason: String,
}

struct Joined {
    nick: Nick,
    /// Highest message id delivered in this room; later frames at or below it are duplicates.
    last: Option<MsgId>,
    /// When this connection's last `typing` in the room was relayed.
    typed: Option<tokio::time::Instant>,
    /// The person's read position in the room as this connection last told it: relayed moves behind it are dropped.
    read: Option<MsgId>,
}

/// Stored messages and actions a member still has to receive after `joined`, read page by page.
#[derive(Debug)]
struct Backlog {
    room: RoomName,
    ready: Vec<ServerMsg>,
    after: Option<MsgId>,
}

/// What a `join` answers: the `joined` frame, then the backlog to write before anything else.
#[derive(Debug)]
struct JoinAnswer {
    /// The `joined` frame, its history bounded by [`JOINED_BUDGET_BYTES`].
    joined: ServerMsg,
    /// The messages that did not fit, and the pages still to read.
    backlog: Backlog,
}

/// Who a participant is.
enum Role {
    /// A connection: it joins rooms, and their frames reach it through this member's queue.
    Member(Member),
    /// Publishes as this nick without joining, under the nick's room rules (mute, ban, slow mode), its rate limited
    /// by its caller (the HTTP API per key, the CLI once); moderates every room; reads any room's history.
    Publisher(Nick),
}

/// One connection's (or one publisher's) rooms, and the rules every request of it goes through.
pub struct Participant {
    hub: Hub,
    conn: ConnId,
    role: Role,
    rooms: HashMap<RoomName, Joined>,
    sends: TokenBucket,
    /// What the connection's token allows; `None` when authentication is off.
    /// Boxed: most connections have none, and the rest keep it for the connection's life.
    grant: Option<Box<Grant>>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("conn", &self.conn)
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// A connection in no room yet; room frames for it go to `member`'s queue.
    pub fn new(hub: Hub, conn: ConnId, member: Member, grant: Option<Box<Grant>>) -> Self {
        let sends = TokenBucket::new(hub.config.sends_per_sec, hub.config.send_burst);
        Self {
            hub,
            conn,
            role: Role::Member(member),
            rooms: HashMap::new(),
            sends,
            grant,
        }
    }

    /// One who publishes as `nick` without joining: the HTTP API (which limits each key's rate itself) and the CLI.
    /// Its sends go through the same validation, room rules, ids, history and idempotency as a member's.
    pub fn publisher(hub: Hub, nick: Nick) -> Self {
        Self {
            hub,
            conn: ConnId::MAX,
            role: Role::Publisher(nick),
            rooms: HashMap::new(),
            sends: TokenBucket::new(u32::MAX, u32::MAX),
            grant: None,
        }
    }

    /// One who searches through the HTTP API with a person's token: only the rooms the token allows.
    pub fn searcher(hub: Hub, grant: Grant) -> Result<Self, RequestError> {
        let nick = Nick::parse(&grant.nick)?;
        let mut searcher = Self::publisher(hub, nick);
        searcher.grant = Some(Box::new(grant));
        Ok(searcher)
    }

    /// Answers one request: the one way into the room rules for every transport.
    pub async fn handle(&mut self, request: impl Into<Request>) -> Reply<'_> {
        let request = match request.into() {
            Request::Client(request) => request,
            Request::Messages { room, since, limit } => {
                return match self.messages(&room, since, limit).await {
                    Ok(page) => Reply::Messages(page),
                    Err(error) => Reply::Refused { error, close: None },
                };
            }
            Request::Export { room, after, limit } => {
                return match self.export(&room, after, limit).await {
                    Ok((lines, next)) => Reply::Export(lines, next),
                    Err(error) => Reply::Refused { error, close: None },
                };
            }
            Request::Revoke {
                person,
                issued_before,
            } => {
                return match self.revoke(&person, issued_before).await {
                    Ok(before) => Reply::Revoked(before),
                    Err(error) => Reply::Refused { error, close: None },
                };
            }
        };
        if let Err(error) = self.authorize(&request) {
            return Reply::Refused { error, close: None };
        }
        let result = match request {
            ClientMsg::Hello { version } if version == PROTOCOL_VERSION => return Reply::Silent,
            ClientMsg::Hello { version } => {
                let message = format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                );
                warn!(version, "client speaks an unsupported protocol version");
                return Reply::Refused {
                    error: RequestError::new(ErrorCode::UnsupportedVersion, message.clone()),
                    close: Some(Close {
                        code: close_code::POLICY,
                        reason: message,
                    }),
                };
            }
            ClientMsg::Join {
                room,
                nick,
                person,
                since,
                epoch,
                req,
            } => match self.hub.admission.joins.admit() {
                Err(wait) => {
                    metrics::counter!("roomcast_admission_refused_total", "what" => "join")
                        .increment(1);
                    return Reply::Frame(ServerMsg::TryAgain(frame::TryAgain {
                        after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        request: frame::TryAgainRequest::Join,
                        room: Some(room),
                        req,
                    }));
                }
                Ok(()) => match self.join(&room, &nick, person, since, epoch, req).await {
                    Ok(answer) => return Reply::Frames(self.join_frames(answer)),
                    Err(e) => Err(e),
                },
            },
            ClientMsg::Leave { room, req } => self.leave(&room).map(|room| {
                ServerMsg::Left(frame::Left {
                    room,
                    reason: None,
                    req,
                })
            }),
            ClientMsg::Send {
                room,
                text,
                cid,
                reply_to,
            } => {
                self.send(&room, cid, reply_to, |nick| {
                    validate::text(&text)?;
                    Ok(Body::Message {
                        nick,
                        text,
                        quote: None,
                    })
                })
                .await
            }
            ClientMsg::Edit {
                room,
                id,
                text,
                cid,
            } => {
                self.send(&room, cid, None, |nick| {
                    validate::text(&text)?;
                    Ok(Body::Edit {
                        nick,
                        target: id,
                        text,
                    })
                })
                .await
            }
            ClientMsg::Delete { room, id, cid } => {
                self.send(&room, cid, None, |nick| {
                    Ok(Body::Delete { nick, target: id })
                })
                .await
            }
            ClientMsg::React {
                room,
                id,
                emoji,
                on,
                cid,
            } => {
                self.send(&room, cid, None, |nick| {
                    if !validate::emoji(&emoji) {
                        return Err(RequestError::new(
                            ErrorCode::InvalidEmoji,
                            format!("react with one of {}", validate::EMOJI.join(" ")),
                        ));
                    }
                    Ok(Body::React {
                        nick,
                        target: id,
                        emoji,
                        on,
                        count: 0,
                    })
                })
                .await
            }
            ClientMsg::Mute {
                room,
                nick,
                secs,
                req,
                cid,
            } => {
                let order = Order::new(ModerationAction::Mute, Some(nick), secs, req, cid);
                self.moderate(&room, order).await
            }
            ClientMsg::Kick {
                room,
                nick,
                req,
                cid,
            } => {
                let order = Order::new(ModerationAction::Kick, Some(nick), 0, req, cid);
                self.moderate(&room, order).await
            }
            ClientMsg::Ban {
                room,
                nick,
                secs,
                req,
                cid,
            } => {
                let order = Order::new(ModerationAction::Ban, Some(nick), secs, req, cid);
                self.moderate(&room, order).await
            }
            ClientMsg::Retention {
                room,
                days,
                req,
                cid,
            } => {
                if days > validate::RETENTION_MAX_DAYS {
                    Err(RequestError::new(
                        ErrorCode::BadRequest,
                        format!("days must be 0 to {}", validate::RETENTION_MAX_DAYS),
                    ))
                } else {
                    let secs = u64::from(days) * 86_400;
                    let order = Order::new(ModerationAction::Retention, None, secs, req, cid);
                    self.moderate(&room, order).await
                }
            }
            ClientMsg::SlowMode {
                room,
                secs,
                req,
                cid,
            } => {
                let order = Order::new(ModerationAction::SlowMode, None, secs, req, cid);
                self.moderate(&room, order).await
            }
            ClientMsg::Receipts { room, on, req, cid } => {
                let order = Order::new(ModerationAction::Receipts, None, u64::from(on), req, cid);
                self.moderate(&room, order).await
            }
            ClientMsg::Read { room, id } => self.read(&room, id).await,
            ClientMsg::Search {
                query,
                room,
                before,
                limit,
                req,
            } => self.search(query, room, before, limit, req).await,
            ClientMsg::Ping { req } => Ok(ServerMsg::Pong(frame::Pong { req })),
            ClientMsg::History {
                room,
                before,
                limit,
                req,
            } => self.older(&room, before, limit, req).await,
            ClientMsg::Typing { room } => match self.typing(&room) {
                Ok(()) => return Reply::Silent,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(frame) => Reply::Frame(frame),
            Err(error) => Reply::Refused { error, close: None },
        }
    }

    /// Checks a request against the connection's grant before its own rules run: a request naming a room outside the
    /// token's `rooms` is `forbidden`, whatever its type, so no request reaches a room the token does not allow (every
    /// request type says which room it names, see `ClientMsg::room`). An invalid room name is left to the request's
    /// own rules (`invalid_room`). Without a token, or a token without `rooms`, every room is allowed.
    fn authorize(&self, request: &ClientMsg) -> Result<(), RequestError> {
        let allowed = self.grant.as_ref().and_then(|g| g.rooms.as_ref());
        match (allowed, request.room()) {
            (Some(allowed), Some(room))
                if validate::room_name(room).is_ok() && !allowed.contains(room) =>
            {
                Err(RequestError::new(
                    ErrorCode::Forbidden,
                    format!("your token does not allow the room {room}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The room core's shared state this participant acts in.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The connection's id on this replica.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// What the connection's token allows, when authentication is on.
    pub fn grant(&self) -> Option<&Grant> {
        self.grant.as_deref()
    }

    /// Joins (or re-joins) a room. Subscribes before reading history, so a message stored in between arrives
    /// through both and never through neither; the per-room high-water mark then drops the second copy.
    async fn join(
        &mut self,
        room: &str,
        nick: &str,
        person: Option<String>,
        since: Option<MsgId>,
        epoch: Option<String>,
        req: Option<String>,
    ) -> Result<JoinAnswer, RequestError> {
        let Role::Member(member) = &self.role else {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                "a publisher sends without joining rooms",
            ));
        };
        let member = member.clone();
        let room = RoomName::parse(room)?;
        let nick = Nick::parse(nick)?;
        if let Some(person) = &person
            && !validate::person(person)
        {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!(
                    "person must be {} to {} letters, digits, '-' or '_'",
                    validate::PERSON_MIN_CHARS,
                    validate::PERSON_MAX_CHARS
                ),
            ));
        }
        // The room was checked against the token's `rooms` as every request's is (`authorize`); the nick is join's.
        if let Some(grant) = &self.grant
            && grant.nick != nick.as_str()
        {
            return Err(RequestError::new(
                ErrorCode::Forbidden,
                format!(
                    "your token is for the nick {:?}; join with that nick",
                    grant.nick
                ),
            ));
        }
        let rejoin = self.rooms.contains_key(&room);
        let max_rooms = self.hub.config.max_rooms as usize;
        if !rejoin && self.rooms.len() >= max_rooms {
            return Err(RequestError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {max_rooms} rooms; leave one first"),
            ));
        }
        let reader = self.person_of(&nick);
        if rejoin {
            self.hub
                .rooms
                .set_person(&room, self.conn, reader.as_str().into());
        } else {
            let member = Member {
                person: Some(reader.as_str().into()),
                ..member
            };
            if let Err(e) = self.hub.rooms.join(&room, self.conn, member).await {
                self.hub.rooms.leave(&room, self.conn);
                return Err(e.into());
            }
        }
        // A re-join never repeats what this connection already received.
        let delivered = self.rooms.get(&room).and_then(|j| j.last);
        let since = match (since, delivered) {
            (Some(s), Some(d)) => Some(s.max(d)),
            (s, d) => s.or(d),
        };
        let query = HistoryQuery {
            since,
            epoch,
            recent: self.hub.config.history_on_join as usize,
            limit: CATCH_UP_PAGE,
        };
        // With a token the nick is proven: nobody else can hold it, whatever device they use, so no person check.
        let person = if self.grant.is_some() { None } else { person };
        let previous = self.rooms.get(&room).map(|j| j.nick.clone());
        let op = match previous {
            None => RosterOp::Join {
                nick: nick.clone(),
                person,
            },
            Some(from) if from != nick => RosterOp::Rename {
                from,
                to: nick.clone(),
                person,
            },
            Some(_) => RosterOp::List,
        };
        // History and members at once: a join costs one round trip to the store, not two. The roster change is
        // boxed, so its state does not enlarge every connection's task for good.
        let (history, roster, positions) = tokio::join!(
            self.hub.bus.history(&room, query),
            Box::pin(presence::apply(&self.hub, &room, self.conn, op)),
            self.hub.bus.reads(&room, &reader),
        );
        let roster = match roster {
            Ok(change) if !change.taken && change.banned_until.is_none() => change,
            refused => {
                if !rejoin {
                    self.hub.rooms.leave(&room, self.conn);
                }
                return Err(match refused {
                    Err(e) => e.into(),
                    Ok(change) if change.taken => RequestError::new(
                        ErrorCode::NickTaken,
                        format!("someone else is {nick} in this room; choose another nickname"),
                    ),
                    Ok(change) => RequestError::new(
                        ErrorCode::Banned,
                        format!(
                            "a moderator banned you from {room}; you can join again in {}",
                            change.banned_until.map(wait_text).unwrap_or_default()
                        ),
                    )
                    .until(change.banned_until),
                });
            }
        };
        let history = match history {
            Ok(history) => history,
            Err(e) => {
                if !rejoin {
                    self.hub.rooms.leave(&room, self.conn);
                    // The roster took this connection in: take it out again.
                    self.release(&room, nick.clone());
                }
                return Err(e.into());
            }
        };
        let resumed = since.is_some() && !history.reset;
        // Read state: a failure to read it does not fail the join (the next `read` brings it).
        let mut positions = positions.unwrap_or_else(|e| {
            debug!(%room, error = %e, "read positions not read");
            Reads::default()
        });
        if positions.mine.is_none() {
            // A person's first join of the room: what is there already is not news to them; what comes after is.
            let at = history
                .items
                .last()
                .map(|i| i.record.id)
                .or(since)
                .unwrap_or_default();
            match self.hub.bus.mark_read(&room, &reader, &nick, at).await {
                Ok(moved) => positions.mine = moved.id,
                Err(e) => debug!(%room, error = %e, "no read position yet"),
            }
        }
        let counts = match positions.mine {
            Some(mine) => {
                let since = since.filter(|_| resumed);
                self.join_counts(&room, &nick, mine, since, &history.items)
                    .await
            }
            None => Counts::default(),
        };
        let newest = history.items.last().map(|i| i.record.id);
        let after = (resumed && history.items.len() >= CATCH_UP_PAGE)
            .then_some(newest)
            .flatten();
        let entry = match self.rooms.entry(room.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Joined {
                nick: nick.clone(),
                last: None,
                typed: None,
                read: None,
            }),
        };
        entry.nick = nick.clone();
        entry.read = entry.read.max(positions.mine);
        if history.reset {
            entry.last = None;
        }
        entry.last = entry.last.max(newest.or(since));
        if !rejoin {
            info!(%room, %nick, history = history.items.len(), ?since, reset = history.reset, truncated = history.truncated, "joined");
        }
        let mut events: Vec<ServerMsg> = history
            .items
            .iter()
            .filter_map(|item| frames::resumed(item, Some(&nick)))
            .collect();
        let fit = fitting(&events, JOINED_BUDGET_BYTES);
        let ready = events.split_off(fit);
        let messages = events
            .into_iter()
            .filter_map(|e| match e {
                ServerMsg::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        let moderator = self.moderator(&room);
        let backlog = Backlog {
            room: room.clone(),
            ready,
            after,
        };
        Ok(JoinAnswer {
            joined: ServerMsg::Joined(frame::Joined {
                room,
                nick,
                history: messages,
                epoch: history.epoch.to_string(),
                reset: history.reset,
                truncated: history.truncated,
                members: roster.members,
                online: roster.online,
                moderator,
                muted_until: roster.muted_until,
                slow_mode: roster.slow_mode,
                read: positions.mine,
                unread: counts.unread,
                mentions: counts.mentions,
                more: counts.more,
                upto: positions.mine.and(counts.upto),
                receipts: positions.receipts,
                seen: positions
                    .seen
                    .into_iter()
                    .map(|(nick, id)| frame::SeenAt { nick, id })
                    .collect(),
                req,
            }),
            backlog,
        })
    }

    /// The counts after `mine` for a joining member: from the history the join read when it holds every message
    /// after `mine` (a resume from `since`, or the newest messages), else read for them.
    async fn join_counts(
        &self,
        room: &RoomName,
        nick: &Nick,
        mine: MsgId,
        since: Option<MsgId>,
        items: &[HistoryItem],
    ) -> Counts {
        let complete = match since {
            Some(since) => mine >= since && items.len() < CATCH_UP_PAGE,
            None => items.first().is_some_and(|first| first.record.id <= mine),
        };
        if complete {
            let mut counts = Counts {
                upto: items.last().map(|i| i.record.id).max(Some(mine)),
                ..Counts::default()
            };
            counts.tally(items, mine, nick);
            return counts;
        }
        reads::count(&self.hub, room, Some(mine), None, nick)
            .await
            .unwrap_or_else(|e| {
                debug!(%room, error = %e, "unread counts not read");
                Counts::default()
            })
    }

    /// Who this participant is, for read state: the token's subject, else the nick it reads as.
    fn person_of(&self, nick: &Nick) -> String {
        match &self.grant {
            Some(grant) => grant.person.clone(),
            None => nick.to_string(),
        }
    }

    /// Moves this person's read position in a joined room forward to `id`, answers with the room's counts after it,
    /// and tells the person's other connections (and, with read receipts on, the room).
    async fn read(&mut self, room: &str, id: MsgId) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let nick = self
            .rooms
            .get(&room)
            .ok_or_else(|| not_joined(&room))?
            .nick
            .clone();
        let person = self.person_of(&nick);
        let moved = self.hub.bus.mark_read(&room, &person, &nick, id).await?;
        let counts = reads::count(&self.hub, &room, moved.id, moved.last, &nick).await?;
        let at = moved.id.unwrap_or_default();
        if let Some(joined) = self.rooms.get_mut(&room) {
            joined.read = joined.read.max(moved.id);
        }
        if moved.moved {
            metrics::counter!("roomcast_read_positions_moved_total").increment(1);
        }
        if moved.moved && (moved.others || moved.receipts) {
            let notice = Notice::Read(ReadNotice {
                person,
                nick,
                id: at,
                unread: counts.unread,
                mentions: counts.mentions,
                more: counts.more,
                upto: counts.upto,
                receipts: moved.receipts,
                node: self.hub.node.to_string(),
                conn: self.conn,
            });
            let fut = self.hub.bus.announce(&room, &notice);
            let room = room.clone();
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    debug!(%room, error = %e, "read notice not relayed; other devices catch up on their next join");
                }
            });
        }
        Ok(ServerMsg::ReadState(frame::ReadState {
            room,
            id: at,
            unread: counts.unread,
            mentions: counts.mentions,
            more: counts.more,
            upto: counts.upto,
        }))
    }

    /// Searches the current text of messages in the rooms this participant may read (see `ClientMsg::Search`).
    async fn search(
        &mut self,
        query: String,
        room: Option<String>,
        before: Option<MsgId>,
        limit: Option<usize>,
        req: Option<String>,
    ) -> Result<ServerMsg, RequestError> {
        let Some(words) = shared::text::query_words(&query) else {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!(
                    "query must have 1 to {} words and at most {} characters",
                    shared::text::QUERY_MAX_WORDS,
                    shared::text::QUERY_MAX_CHARS
                ),
            ));
        };
        let limit = limit.unwrap_or(20);
        if !(1..=SEARCH_PAGE_MAX).contains(&limit) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("search limit must be 1 to {SEARCH_PAGE_MAX}"),
            ));
        }
        let allowed = self.grant.as_ref().and_then(|g| g.rooms.as_ref());
        let rooms = match room {
            // A room outside the token's `rooms` was refused before (`authorize`).
            Some(room) => Some(vec![RoomName::parse(&room)?]),
            None => allowed.map(|allowed| {
                allowed
                    .iter()
                    .filter_map(|r| RoomName::parse(r).ok())
                    .collect()
            }),
        };
        if !self.sends.take() {
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                "searching too fast: searches count against the send rate; try again in a moment",
            ));
        }
        let viewer = self.grant.as_ref().and_then(|g| Nick::parse(&g.nick).ok());
        let started = std::time::Instant::now();
        let found = self
            .hub
            .bus
            .search(rooms, words.clone(), before, limit + 1)
            .await?;
        metrics::histogram!("roomcast_search_seconds").record(started.elapsed().as_secs_f64());
        let fetched = found.len();
        let mut used = 0;
        let mut results = Vec::new();
        for item in found.iter().take(limit) {
            let Some(message) = frames::message(item, viewer.as_ref()) else {
                continue;
            };
            used += message_size(&message);
            if used > JOINED_BUDGET_BYTES && !results.is_empty() {
                break;
            }
            let marks = shared::text::find(&message.text, &words).unwrap_or_default();
            results.push(frame::Found { message, marks });
        }
        Ok(ServerMsg::SearchResults(frame::SearchResults {
            query,
            complete: results.len() == fetched,
            results,
            req,
        }))
    }

    /// `joined`, then the rest of the history, page by page, as one stream of frames.
    fn join_frames(&mut self, answer: JoinAnswer) -> BoxStream<'_, Result<ServerMsg, Close>> {
        let JoinAnswer { joined, backlog } = answer;
        let rest = futures_util::stream::unfold(
            (self, backlog, VecDeque::new(), false),
            |(participant, mut backlog, mut ready, failed)| async move {
                if failed {
                    return None;
                }
                loop {
                    if let Some(frame) = ready.pop_front() {
                        return Some((Ok(frame), (participant, backlog, ready, false)));
                    }
                    match participant.next_backlog(&mut backlog).await {
                        Ok(page) if page.is_empty() => return None,
                        Ok(page) => ready.extend(page),
                        Err(_) => {
                            // The member is joined but cannot be brought up to date now: it resumes with `since`.
                            let close = Close {
                                code: close_code::TRY_AGAIN_LATER,
                                reason: "history unavailable while catching up; reconnect and resume with since"
                                    .into(),
                            };
                            return Some((Err(close), (participant, backlog, ready, true)));
                        }
                    }
                }
            },
        );
        futures_util::stream::once(async move { Ok(joined) })
            .chain(rest)
            .boxed()
    }

    /// The next messages of a backlog, oldest first; empty once it is exhausted.
    async fn next_backlog(
        &mut self,
        backlog: &mut Backlog,
    ) -> Result<Vec<ServerMsg>, RequestError> {
        if !backlog.ready.is_empty() {
            return Ok(std::mem::take(&mut backlog.ready));
        }
        let Some(after) = backlog.after.take() else {
            return Ok(Vec::new());
        };
        if !self.rooms.contains_key(&backlog.room) {
            return Ok(Vec::new());
        }
        let viewer = self.rooms.get(&backlog.room).map(|j| j.nick.clone());
        let query = HistoryQuery {
            since: Some(after),
            limit: CATCH_UP_PAGE,
            ..HistoryQuery::default()
        };
        let page = self.hub.bus.history(&backlog.room, query).await?.items;
        let newest = page.last().map(|i| i.record.id);
        if page.len() >= CATCH_UP_PAGE {
            backlog.after = newest;
        }
        if let (Some(joined), Some(newest)) = (self.rooms.get_mut(&backlog.room), newest) {
            joined.last = joined.last.max(Some(newest));
        }
        let frames: Vec<ServerMsg> = page
            .iter()
            .filter_map(|item| frames::resumed(item, viewer.as_ref()))
            .collect();
        if frames.is_empty() && backlog.after.is_some() {
            // A page of skipped actions only: read on (an empty answer would end the backlog).
            return Box::pin(self.next_backlog(backlog)).await;
        }
        Ok(frames)
    }

    /// Older messages of a joined room (scrolling back): up to `limit` before `before`, as many of the newest of them
    /// as fit in [`JOINED_BUDGET_BYTES`]. `complete` when nothing older is left.
    async fn older(
        &mut self,
        room: &str,
        before: MsgId,
        limit: usize,
        req: Option<String>,
    ) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let viewer = self
            .rooms
            .get(&room)
            .ok_or_else(|| not_joined(&room))?
            .nick
            .clone();
        if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("history limit must be 1 to {HISTORY_PAGE_MAX}"),
            ));
        }
        let mut messages: Vec<ChatMessage> = self
            .hub
            .bus
            .older(&room, before, limit)
            .await?
            .iter()
            .filter_map(|item| frames::message(item, Some(&viewer)))
            .collect();
        let fetched = messages.len();
        // Keep the newest part: the page continues right where the client's view begins.
        messages.reverse();
        let fit = messages
            .iter()
            .scan(0, |used, m| {
                *used += message_size(m);
                Some(*used <= JOINED_BUDGET_BYTES)
            })
            .take_while(|fits| *fits)
            .count()
            .max(1)
            .min(fetched);
        messages.truncate(fit);
        messages.reverse();
        Ok(ServerMsg::HistoryPage(frame::HistoryPage {
            room,
            complete: fit == fetched && fetched < limit,
            messages,
            req,
        }))
    }

    /// Relays that the person is typing in a joined room, at most once per [`TYPING_EVERY_MS`] (more are dropped:
    /// typing is a hint, not a message).
    fn typing(&mut self, room: &str) -> Result<(), RequestError> {
        let room = RoomName::parse(room)?;
        let joined = self.rooms.get_mut(&room).ok_or_else(|| not_joined(&room))?;
        let now = tokio::time::Instant::now();
        if joined.typed.is_some_and(|at| {
            now.duration_since(at) < std::time::Duration::from_millis(TYPING_EVERY_MS)
        }) {
            return Ok(());
        }
        joined.typed = Some(now);
        let notice = Notice::Typing(TypingNotice {
            nick: joined.nick.clone(),
            node: self.hub.node.to_string(),
            conn: self.conn,
        });
        let fut = self.hub.bus.announce(&room, &notice);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                debug!(%room, error = %e, "typing notice not delivered");
            }
        });
        Ok(())
    }

    /// Leaves a joined room.
    fn leave(&mut self, room: &str) -> Result<RoomName, RequestError> {
        let room = RoomName::parse(room)?;
        let joined = self.rooms.remove(&room).ok_or_else(|| not_joined(&room))?;
        self.hub.rooms.leave(&room, self.conn);
        info!(%room, nick = %joined.nick, "left");
        self.release(&room, joined.nick);
        Ok(room)
    }

    /// Whether this participant may moderate `room`: publishers (the HTTP API key holder, the CLI) moderate every
    /// room; a connection, the rooms its token's `roles` name.
    fn moderator(&self, room: &RoomName) -> bool {
        match &self.role {
            Role::Publisher(_) => true,
            Role::Member(_) => self
                .grant
                .as_ref()
                .is_some_and(|g| g.moderates(room.as_str())),
        }
    }

    /// The nick this participant acts as in `room`: a publisher's own, a connection's in that joined room.
    fn nick_in(&self, room: &RoomName) -> Result<Nick, RequestError> {
        match &self.role {
            Role::Publisher(nick) => Ok(nick.clone()),
            Role::Member(_) => Ok(self
                .rooms
                .get(room)
                .ok_or_else(|| not_joined(room))?
                .nick
                .clone()),
        }
    }

    /// Stores a message or an action in a joined room (a publisher: in any room), at most once per `cid`:
    /// validated (`body` builds and checks it for the sender's nick), rate limited, then checked against the room's
    /// rules, stored and relayed by the bus in one step.
    async fn send(
        &mut self,
        room: &str,
        cid: String,
        reply_to: Option<MsgId>,
        body: impl FnOnce(Nick) -> Result<Body, RequestError>,
    ) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let nick = self.nick_in(&room)?;
        validate::client_id(&cid)?;
        let body = body(nick.clone())?;
        if !self.sends.take() {
            let (rate, burst) = (self.hub.config.sends_per_sec, self.hub.config.send_burst);
            warn!(%room, "send rate exceeded");
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                format!(
                    "sending too fast: at most {rate} messages or actions per second after a burst of {burst}; this one was not sent"
                ),
            ));
        }
        // A publisher writes *as* a nick, under that nick's rules: its moderator's right is the moderation request.
        let moderator = matches!(self.role, Role::Member(_)) && self.moderator(&room);
        let draft = Draft {
            nick,
            cid: cid.clone(),
            body,
            reply_to,
            moderator,
        };
        let is_message = draft.body.is_message();
        let published = self.hub.bus.publish(&room, draft).await?;
        if is_message && let Some(joined) = self.rooms.get_mut(&room) {
            // A message ends what was being typed: the next keystroke starts a new `typing`, relayed at once (the
            // others cleared the line when the message arrived).
            joined.typed = None;
        }
        if published.duplicate {
            metrics::counter!("roomcast_duplicate_sends_total").increment(1);
            debug!(%room, id = %published.id, "repeated cid: answered with the original id");
        } else {
            metrics::counter!("roomcast_messages_published_total").increment(1);
            debug!(%room, id = %published.id, "published");
        }
        Ok(ServerMsg::Ack(frame::Ack {
            room,
            cid,
            id: published.id,
            ts: published.id.ms,
            duplicate: published.duplicate,
        }))
    }

    /// A moderator's action: checked, then stored in the room as a `moderation` event whose effect (mute, ban, slow
    /// mode) the bus records in the same step, at most once per `cid`. Kicks and bans take effect on every replica as
    /// the event arrives.
    async fn moderate(&mut self, room: &str, order: Order) -> Result<ServerMsg, RequestError> {
        let Order {
            action,
            nick,
            secs,
            req,
            cid,
        } = order;
        let room = RoomName::parse(room)?;
        if !self.moderator(&room) {
            return Err(RequestError::new(
                ErrorCode::Forbidden,
                format!("only moderators of {room} can do that"),
            ));
        }
        let by = self.nick_in(&room)?;
        let target = match (action, nick) {
            (
                ModerationAction::SlowMode
                | ModerationAction::Retention
                | ModerationAction::Receipts,
                _,
            ) => None,
            (_, Some(nick)) => Some(Nick::parse(&nick)?),
            (_, None) => {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    "say whom: nick is missing",
                ));
            }
        };
        if action != ModerationAction::Retention && secs > validate::MODERATION_MAX_SECS {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("secs must be 0 to {}", validate::MODERATION_MAX_SECS),
            ));
        }
        let cid = match cid {
            Some(cid) => {
                validate::client_id(&cid)?;
                cid
            }
            None => format!("mod-{}", new_epoch()),
        };
        let secs = if action == ModerationAction::Kick {
            0
        } else {
            secs
        };
        let draft = Draft {
            nick: by.clone(),
            cid,
            body: Body::Moderation {
                by,
                action,
                nick: target.clone(),
                secs,
                person: None,
            },
            reply_to: None,
            moderator: true,
        };
        let published = self.hub.bus.publish(&room, draft).await?;
        info!(%room, ?action, ?target, secs, duplicate = published.duplicate, "moderated");
        Ok(ServerMsg::Done(frame::Done {
            room,
            id: published.id,
            duplicate: published.duplicate,
            req,
        }))
    }

    /// Revokes a person's sessions on every replica (a publisher without a person's token only: the API key's holder,
    /// the CLI). Returns the revocation in force.
    async fn revoke(&mut self, person: &str, issued_before: u64) -> Result<u64, RequestError> {
        if !matches!(self.role, Role::Publisher(_)) || self.grant.is_some() {
            return Err(RequestError::new(
                ErrorCode::Forbidden,
                "only the API key's holder revokes sessions",
            ));
        }
        if person.is_empty()
            || person.len() > crate::bus::revocation::PERSON_MAX_BYTES
            || person.chars().any(char::is_control)
        {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!(
                    "sub must be a token's subject: 1 to {} bytes, no control characters",
                    crate::bus::revocation::PERSON_MAX_BYTES
                ),
            ));
        }
        let before = self.hub.bus.revoke(person, issued_before).await?;
        info!(person, issued_before = before, "sessions revoked");
        Ok(before)
    }

    /// A page of a publisher's export of a room: its messages in their current state and its moderation events after
    /// `after`, oldest first.
    async fn export(
        &mut self,
        room: &str,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<(Vec<ServerMsg>, Option<MsgId>), RequestError> {
        let room = RoomName::parse(room)?;
        if !matches!(self.role, Role::Publisher(_)) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                "members read history with join and history",
            ));
        }
        let page = self.hub.bus.page(&room, after, limit).await?;
        let lines = page
            .items
            .iter()
            .filter_map(|item| match &item.record.body {
                Body::Message { .. } => frames::message(item, None).map(ServerMsg::Message),
                _ => Some(frames::live(&item.record)),
            })
            .collect();
        Ok((lines, page.next))
    }

    /// A publisher's read of a room's messages, with their current state: those after `since`, or the newest.
    async fn messages(
        &mut self,
        room: &str,
        since: Option<MsgId>,
        limit: usize,
    ) -> Result<Messages, RequestError> {
        let room = RoomName::parse(room)?;
        if !matches!(self.role, Role::Publisher(_)) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                "members read history with join and history",
            ));
        }
        let query = HistoryQuery {
            since,
            epoch: None,
            recent: limit,
            limit,
        };
        let history = self.hub.bus.history(&room, query).await?;
        Ok(Messages {
            room,
            epoch: history.epoch.to_string(),
            // Messages with their current state; the actions that led there are the WebSocket's business.
            messages: history
                .items
                .iter()
                .filter_map(|item| frames::message(item, None))
                .collect(),
            truncated: history.truncated,
        })
    }

    /// After a queued frame was written: when it was a moderator's kick or ban of this connection's nick in that
    /// room, the connection leaves the room, and this is the `left` that tells it why.
    pub fn evicted(&mut self, out: &Outbound) -> Option<ServerMsg> {
        let (nick, reason) = out.evict.as_ref()?;
        if self.rooms.get(&out.room).is_none_or(|j| j.nick != *nick) {
            return None;
        }
        let room = self.leave(out.room.as_str()).ok()?;
        info!(%room, %nick, reason, "taken out of the room by a moderator");
        Some(ServerMsg::Left(frame::Left {
            room,
            reason: Some((*reason).to_owned()),
            req: None,
        }))
    }

    /// Whether a queued frame should reach the client: it belongs to a joined room and is not a duplicate.
    pub fn admit(&mut self, out: &Outbound) -> bool {
        let Some(joined) = self.rooms.get_mut(&out.room) else {
            return false;
        };
        if out.reset {
            joined.last = None;
        }
        if let Some(id) = out.id {
            if joined.last.is_some_and(|last| id <= last) {
                return false;
            }
            joined.last = Some(id);
        }
        if let Some(read) = out.read {
            if joined.read.is_some_and(|known| read <= known) {
                return false;
            }
            joined.read = Some(read);
        }
        true
    }

    /// Leaves every room (the connection is ending).
    pub fn leave_all(&mut self) {
        for (room, joined) in std::mem::take(&mut self.rooms) {
            self.hub.rooms.leave(&room, self.conn);
            self.release(&room, joined.nick);
        }
    }

    /// Takes this connection out of the room's members (in the background: the connection may be closing). Its nick
    /// stays a member for the grace period if it was the last connection using it.
    fn release(&self, room: &RoomName, nick: Nick) {
        let (hub, room, conn) = (self.hub.clone(), room.clone(), self.conn);
        tokio::spawn(async move {
            if let Err(e) = presence::apply(&hub, &room, conn, RosterOp::Leave { nick }).await {
                debug!(%room, error = %e, "leave not recorded in the roster; the member expires with the heartbeat");
            }
        });
    }
}

/// A moderation request's parts.
struct Order {
    action: ModerationAction,
    nick: Option<String>,
    secs: u64,
    req: Option<String>,
    cid: Option<String>,
}

impl Order {
    fn new(
        action: ModerationAction,
        nick: Option<String>,
        secs: u64,
        req: Option<String>,
        cid: Option<String>,
    ) -> Self {
        Self {
            action,
            nick,
            secs,
            req,
            cid,
        }
    }
}

fn not_joined(room: &RoomName) -> RequestError {
    RequestError::new(
        ErrorCode::NotJoined,
        format!("you have not joined room {room}; join it first"),
    )
}

/// An upper bound of a message's JSON: escapes at most double a text (control characters other than newline and
/// tab are refused), plus the envelope, the quote and the reactions.
fn message_size(m: &shared::ChatMessage) -> usize {
    let quote = m
        .reply_to
        .as_ref()
        .map_or(0, |q| 2 * (q.text.len() + q.nick.as_str().len()) + 64);
    2 * (m.text.len() + m.nick.as_str().len())
        + m.room.as_str().len()
        + 96
        + quote
        + 48 * m.reactions.len()
        + 64
}

/// How many of `events`, from the first, go into `joined`: the leading messages that fit in `budget` bytes of JSON.
/// The first action ends it (actions follow `joined` as frames, in order).
fn fitting(events: &[ServerMsg], budget: usize) -> usize {
    let mut used = 0;
    events
        .iter()
        .take_while(|e| match e {
            ServerMsg::Message(m) => {
                used += message_size(m);
                used <= budget
            }
            _ => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> shared::ChatMessage {
        shared::ChatMessage::new(
            MsgId::new(1_732_190_000_000, 7),
            RoomName::parse("general").unwrap(),
            Nick::parse("alice").unwrap(),
            text.into(),
        )
    }

    #[test]
    fn the_budget_bounds_the_encoded_size() {
        for text in ["x", "\"\\\"\\", "字字字", "a\nb\tc"] {
            let m = message(&text.repeat(500));
            let encoded = serde_json::to_string(&m).unwrap().len();
            assert_eq!(fitting(&[ServerMsg::Message(m.clone())], usize::MAX), 1);
            let estimate = message_size(&m);
            assert!(encoded <= estimate, "{encoded} > {estimate}");
        }
        let many = vec![ServerMsg::Message(message(&"字".repeat(2000))); 30];
        let fit = fitting(&many, JOINED_BUDGET_BYTES);
        let frame = serde_json::to_string(&many[..fit]).unwrap().len();
        assert!(
            (1..30).contains(&fit) && frame <= JOINED_BUDGET_BYTES,
            "{fit} {frame}"
        );
    }
}
