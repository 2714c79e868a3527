//! The one WebSocket client: connects to the page's own origin, notices a silently dead connection with an
//! application-level heartbeat, reconnects with backoff and jitter, rejoins every room from the last id it saw (in the
//! history epoch that id belongs to), and turns frames into typed updates of [`Chat`]. Components call its small typed
//! API and read its signals; JSON never leaves this file.
//!
//! Own messages go through each room's outbox in [`Chat`]: the client puts on the wire whatever [`Chat::flush`] says
//! is due, whenever that may have changed (a send, a `joined`, the end of a hold after a transient refusal). A
//! message typed offline, or cut off by a disconnect, therefore goes out by itself after the rejoin, with the `cid`
//! it always had, and the server stores it at most once.
//!
//! Reading works the same way: the page says what is read ([`Client::read`]), and the client sends `read` for each
//! room whose position is ahead of the server's, at most every 250 ms per room and again after a reconnect
//! ([`Chat::reads`]).

use std::pin::pin;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{Either, select};
use futures::{SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use leptos::prelude::*;
use shared::{
    ClientMsg, MsgId, Nick, PROTOCOL_VERSION, RoomName, ServerMsg, ValidationError, close_code,
    frame,
};

use crate::backoff::Backoff;
use crate::browser;
use crate::chat::{Act, Chat, Rejoin, TypingDue};
use crate::heartbeat::{Beat, Heartbeat};

/// The close code for a socket this client gives up on: a normal closure, one of the few a browser may send.
const NORMAL_CLOSE: u16 = 1000;

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening a socket (or waiting for `welcome`).
    Connecting,
    /// Talking to a replica, named by its node id so a person can tell replicas apart.
    Connected {
        /// The replica's node id from `welcome`.
        node: String,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// Whole seconds left, counting down.
        secs: u64,
    },
    /// Not trying: the browser has no network, or the server refused this client for good (until a manual retry).
    Offline {
        /// Why, when the server said.
        reason: Option<String>,
    },
}

/// What the components (and the browser's online/offline events) ask of the connection task.
#[derive(Debug)]
enum Cmd {
    /// Send a frame on the open socket.
    Frame(ClientMsg),
    /// Put every send that is due on the wire (see [`Chat::flush`]).
    Flush,
    /// A hold after a transient refusal is over: release it, then flush.
    Release,
    /// Put every `read` that is due on the wire (see [`Chat::reads`]).
    Reads,
    /// Stop waiting and connect now.
    Wake,
    /// The network went away: drop the socket instead of waiting for it to time out.
    Drop,
}

/// How a connection ended.
enum End {
    /// Try again after a backoff.
    Retry,
    /// The server was busy (`try_again`): connect again after this long.
    After(Duration),
    /// Do not try again until the person asks: the server said this client cannot work with it.
    Stop(String),
}

/// A handle to the connection and the chat state it maintains. Cheap to copy; provided as context by the app.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    chat: RwSignal<Chat>,
    status: RwSignal<Status>,
    notice: RwSignal<Option<String>>,
    cmds: StoredValue<mpsc::UnboundedSender<Cmd>>,
    /// Mention notifications on screen, to close once the person read past them (here or on another device).
    shown: StoredValue<Vec<(RoomName, MsgId, web_sys::Notification)>>,
    /// A timer will ask for the `read`s that had to wait.
    reads_timer: StoredValue<bool>,
}

impl Client {
    /// Creates the state and starts the connection task, which lives as long as the page.
    pub fn start() -> Self {
        let (tx, rx) = mpsc::unbounded();
        // A random tag per tab keeps client message ids distinct across tabs and reloads.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let tag = (browser::random() * f64::from(u32::MAX)) as u32;
        let client = Self {
            chat: RwSignal::new(Chat::new(format!("{tag:08x}")).with_person(browser::person())),
            status: RwSignal::new(Status::Connecting),
            notice: RwSignal::new(None),
            cmds: StoredValue::new(tx),
            shown: StoredValue::new(Vec::new()),
            reads_timer: StoredValue::new(false),
        };
        window_event_listener(leptos::ev::online, move |_| client.post(Cmd::Wake));
        window_event_listener(leptos::ev::offline, move |_| client.post(Cmd::Drop));
        client
            .chat
            .update(|chat| chat.set_hidden(document().hidden()));
        window_event_listener(leptos::ev::visibilitychange, move |_| {
            let hidden = document().hidden();
            client.chat.update(|chat| chat.set_hidden(hidden));
        });
        leptos::task::spawn_local(client.run(rx));
        client
    }

    /// The rooms and their timelines.
    pub fn chat(&self) -> ReadSignal<Chat> {
        self.chat.read_only()
    }

    /// The connection, for the status line.
    pub fn status(&self) -> ReadSignal<Status> {
        self.status.read_only()
    }

    /// A server message that belongs to no room or send (rare), until dismissed.
    pub fn notice(&self) -> ReadSignal<Option<String>> {
        self.notice.read_only()
    }

    /// Hides the notice.
    pub fn dismiss_notice(&self) {
        self.notice.set(None);
    }

    /// Opens a room (if not open yet) and joins it; on a later reconnect it is rejoined automatically.
    pub fn join(&self, room: RoomName, nick: Nick) {
        let added = self
            .chat
            .try_update(|chat| chat.open(room.clone(), nick.clone()))
            .unwrap_or(false);
        if added {
            let person = self
                .chat
                .with_untracked(|chat| chat.person().map(str::to_owned));
            self.frame(join_msg(Rejoin {
                room,
                nick,
                person,
                since: None,
                epoch: None,
            }));
        }
    }

    /// Joins a room again after the server refused it, resuming where it left off.
    pub fn rejoin(&self, room: &RoomName) {
        if let Some(rejoin) = self.chat.try_update(|chat| chat.rejoining(room)).flatten() {
            self.frame(join_msg(rejoin));
        }
    }

    /// Tells the room this person is typing (at most every few seconds; nothing when offline).
    pub fn typing(&self, room: &RoomName) {
        if !self.connected() {
            return;
        }
        let now = browser::now();
        match self.chat.try_update(|chat| chat.typing_due(room, now)) {
            Some(TypingDue::Send) => self.frame(ClientMsg::Typing {
                room: room.to_string(),
            }),
            Some(TypingDue::Skip) | None => {}
        }
    }

    /// Asks for the messages before the oldest one shown (scrolling back), unless a request is out already or the
    /// room's beginning is on screen.
    pub fn load_older(&self, room: &RoomName) {
        if !self.connected() {
            return;
        }
        if let Some(before) = self
            .chat
            .try_update(|chat| chat.start_loading_older(room))
            .flatten()
        {
            self.frame(ClientMsg::History {
                room: room.to_string(),
                before,
                limit: crate::chat::OLDER_PAGE,
                req: None,
            });
        }
    }

    /// Leaves a room and forgets its timeline.
    pub fn leave(&self, room: &RoomName) {
        if self.chat.try_update(|chat| chat.close(room)) == Some(true) {
            self.frame(ClientMsg::Leave {
                room: room.to_string(),
                req: None,
            });
        }
    }

    /// Puts a room on screen, which clears its unread count.
    pub fn view(&self, room: Option<RoomName>) {
        self.chat.update(|chat| chat.view(room));
    }

    /// The person has `room` on screen, in a visible tab, down to its newest message `id`: the room is read up to
    /// there (the badge clears at once; `read` goes to the server at most every 250 ms per room).
    pub fn read(&self, room: &RoomName, id: MsgId) {
        let ahead = self.chat.with_untracked(|c| {
            c.room(room)
                .is_some_and(|r| r.read_mark().is_none_or(|m| id > m))
        });
        if ahead {
            self.chat.update(|chat| chat.want_read(room, id));
            self.post(Cmd::Reads);
        }
    }

    /// Searches messages for `query` (a new search replaces the one on screen).
    pub fn search(&self, query: &str) {
        if let Some(msg) = self
            .chat
            .try_update(|chat| chat.start_search(query))
            .flatten()
        {
            self.send_search(msg);
        }
    }

    /// Asks for the next page of the search's results.
    pub fn more_results(&self) {
        if let Some(msg) = self.chat.try_update(Chat::more_results).flatten() {
            self.send_search(msg);
        }
    }

    fn send_search(&self, msg: ClientMsg) {
        if self.connected() {
            self.post(Cmd::Frame(msg));
        } else {
            // Nothing would answer it: say so rather than spin.
            self.chat.update(|chat| chat.search_offline());
        }
    }

    /// Closes the search.
    pub fn end_search(&self) {
        if self.chat.with_untracked(|c| c.search().is_some()) {
            self.chat.update(Chat::end_search);
        }
    }

    /// Uses a new nickname in every room (the server accepts a repeated join as a rename).
    pub fn rename(&self, nick: &Nick) {
        let rejoins = self
            .chat
            .try_update(|chat| chat.rename(nick))
            .unwrap_or_default();
        for rejoin in rejoins {
            self.frame(join_msg(rejoin));
        }
    }

    /// Sends a message: it shows as pending at once and goes out as soon as the room is joined (at once when
    /// connected, otherwise after the reconnect), then shows as sent when acked, or as failed when refused for good.
    /// Refuses text the server would refuse, with the server's own reason.
    pub fn send(
        &self,
        room: &RoomName,
        text: &str,
        reply_to: Option<MsgId>,
    ) -> Result<(), ValidationError> {
        shared::validate::text(text)?;
        let queued = self
            .chat
            .try_update(|chat| chat.queue_send(room, text.to_owned(), reply_to))
            .flatten();
        if queued.is_some() {
            self.post(Cmd::Flush);
        }
        Ok(())
    }

    /// Edits, deletes or reacts to a message (`text` is an edit's new text): through the room's outbox, so it is
    /// sent once joined and resent with the same `cid` after a reconnect, like a message.
    pub fn act(&self, room: &RoomName, text: String, act: Act) {
        if self
            .chat
            .try_update(|chat| chat.queue(room, text, act))
            .flatten()
            .is_some()
        {
            self.post(Cmd::Flush);
        }
    }

    /// Sends a moderation request (`mute`, `kick`, `ban`, `slow_mode`); it is answered `done` and announced in the
    /// room, or refused with a notice.
    pub fn moderate(&self, msg: ClientMsg) {
        self.frame(msg);
    }

    /// Sends a failed message again, with the client message id it always had, so it is stored at most once.
    pub fn retry(&self, room: &RoomName, cid: &str) {
        if self.chat.try_update(|chat| chat.retry(room, cid)) == Some(true) {
            self.post(Cmd::Flush);
        }
    }

    /// Sends every failed message of a room again, in order, each under its own client message id.
    pub fn retry_all(&self, room: &RoomName) {
        if self
            .chat
            .try_update(|chat| chat.retry_all(room))
            .unwrap_or(0)
            > 0
        {
            self.post(Cmd::Flush);
        }
    }

    /// Drops every failed message of a room.
    pub fn discard_failed(&self, room: &RoomName) {
        self.chat.update(|chat| chat.discard_failed(room));
    }

    /// Drops a failed message.
    pub fn discard(&self, room: &RoomName, cid: &str) {
        self.chat.update(|chat| chat.discard(room, cid));
    }

    /// Skips the rest of a reconnect wait (or leaves the offline state) and connects now.
    pub fn reconnect_now(&self) {
        self.post(Cmd::Wake);
    }

    fn connected(&self) -> bool {
        self.status
            .with_untracked(|s| matches!(s, Status::Connected { .. }))
    }

    /// Sends a frame if connected. Without a connection there is nothing to do: joins are replayed from the chat
    /// state on the next `welcome`.
    fn frame(&self, msg: ClientMsg) {
        if self.connected() {
            self.post(Cmd::Frame(msg));
        }
    }

    fn post(&self, cmd: Cmd) {
        self.cmds.with_value(|tx| {
            let _ = tx.unbounded_send(cmd);
        });
    }

    /// The connection task: connect, serve, and on any end wait with backoff (or for the network) and go again.
    async fn run(self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut backoff = Backoff::default();
        loop {
            if !browser::online() {
                self.status.set(Status::Offline { reason: None });
                wake(&mut cmds).await;
            }
            self.status.set(Status::Connecting);
            let end = match WebSocket::open(&ws_url()) {
                Ok(ws) => self.session(ws, &mut cmds, &mut backoff).await,
                Err(_) => End::Retry,
            };
            self.chat.update(Chat::disconnected);
            // Frames queued for the dead socket are void: joins are replayed, and sends were just queued again.
            while cmds.try_recv().is_ok() {}
            match end {
                End::Stop(reason) => {
                    self.status.set(Status::Offline {
                        reason: Some(reason),
                    });
                    wake(&mut cmds).await;
                    backoff.reset();
                }
                End::Retry if browser::online() => {
                    let delay = backoff.next_delay(browser::random());
                    self.count_down(delay, &mut cmds).await;
                }
                End::After(delay) if browser::online() => self.count_down(delay, &mut cmds).await,
                End::Retry | End::After(_) => {}
            }
        }
    }

    /// Shows "reconnecting in N s" while waiting, unless the person or the network says to go now.
    async fn count_down(&self, delay: Duration, cmds: &mut mpsc::UnboundedReceiver<Cmd>) {
        let mut left = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        while left > 0 {
            self.status.set(Status::Reconnecting {
                secs: left.div_ceil(1000),
            });
            let step = match left % 1000 {
                0 => 1000,
                part => part,
            };
            if let Either::Right(_) = select(pin!(sleep(step)), pin!(wake(cmds))).await {
                return;
            }
            left -= step;
        }
    }

    /// Serves one socket until it closes, or until the heartbeat finds it dead.
    async fn session(
        &self,
        mut ws: WebSocket,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        backoff: &mut Backoff,
    ) -> End {
        // The socket may hang while opening as silently as once open: give the handshake the same time the
        // heartbeat gives a quiet connection, a ping included. gloo-net's send waits while the socket connects, so the
        // hello going out says it opened; a socket that failed to open instead takes the hello (the browser drops
        // it) and its `close` event, next in the stream, ends the session below.
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
        };
        let opened = matches!(
            select(
                pin!(put(&mut ws, &hello)),
                pin!(sleep(millis(
                    crate::heartbeat::IDLE + crate::heartbeat::GRACE
                )))
            )
            .await,
            Either::Left((Ok(()), _))
        );
        if !opened {
            let _ = ws.close(Some(NORMAL_CLOSE), Some("could not open"));
            return End::Retry;
        }
        let mut heartbeat = Heartbeat::new(browser::now());
        // One timer at a time: a frame does not restart it; when it fires, the heartbeat says how much is left.
        let mut timer = pin!(sleep(millis(crate::heartbeat::IDLE)));
        loop {
            let event = match select(select(ws.next(), cmds.next()), timer.as_mut()).await {
                Either::Left((Either::Left((frame, _)), _)) => Event::Frame(frame),
                Either::Left((Either::Right((cmd, _)), _)) => Event::Cmd(cmd),
                Either::Right(((), _)) => Event::Tick,
            };
            match event {
                Event::Frame(Some(Ok(Message::Text(text)))) => {
                    heartbeat.received(browser::now());
                    match crate::decode::server_frame(&text) {
                        Ok(msg) => match self.receive(msg, backoff) {
                            Ok(frames) => {
                                if put_all(&mut ws, &frames).await.is_err() {
                                    return End::Retry;
                                }
                            }
                            Err(end) => return end,
                        },
                        // Not the parser's reason: its messages would put serde_json's error formatting in the page.
                        Err(_) => leptos::logging::warn!("ignoring an unreadable frame: {text}"),
                    }
                }
                Event::Frame(Some(Ok(Message::Bytes(_)))) => heartbeat.received(browser::now()),
                Event::Frame(Some(Err(WebSocketError::ConnectionClose(close)))) => {
                    return closed(close.code, close.reason);
                }
                // An `error` event; the `close` event that follows ends the session.
                Event::Frame(Some(Err(_))) => {}
                Event::Frame(None) => return End::Retry,
                Event::Cmd(Some(Cmd::Frame(msg))) => {
                    if put(&mut ws, &msg).await.is_err() {
                        return End::Retry;
                    }
                }
                Event::Cmd(Some(cmd @ (Cmd::Flush | Cmd::Release))) => {
                    let sends = self
                        .chat
                        .try_update(|chat| {
                            if matches!(cmd, Cmd::Release) {
                                chat.release_holds();
                            }
                            chat.flush()
                        })
                        .unwrap_or_default();
                    if put_all(&mut ws, &sends).await.is_err() {
                        return End::Retry;
                    }
                }
                Event::Cmd(Some(Cmd::Reads)) => {
                    if put_all(&mut ws, &self.due_reads()).await.is_err() {
                        return End::Retry;
                    }
                }
                Event::Cmd(Some(Cmd::Wake)) => {}
                Event::Cmd(Some(Cmd::Drop) | None) => return End::Retry,
                Event::Tick => loop {
                    match heartbeat.poll(browser::now()) {
                        Beat::Wait(left) => {
                            timer.set(sleep(millis(left)));
                            break;
                        }
                        Beat::Ping => {
                            if put(&mut ws, &ClientMsg::Ping { req: None }).await.is_err() {
                                return End::Retry;
                            }
                        }
                        Beat::Dead => {
                            leptos::logging::warn!("no answer to ping: reconnecting");
                            let _ = ws.close(Some(NORMAL_CLOSE), Some("no answer to ping"));
                            return End::Retry;
                        }
                    }
                },
            }
        }
    }

    /// The `read`s that are due; when one has to wait, a timer asks again then.
    fn due_reads(&self) -> Vec<ClientMsg> {
        let now = browser::now();
        let (reads, wait) = self
            .chat
            .try_update_untracked(|chat| chat.reads(now))
            .unwrap_or_default();
        if let Some(wait) = wait
            && !self.reads_timer.get_value()
        {
            self.reads_timer.set_value(true);
            let client = *self;
            set_timeout(
                move || {
                    client.reads_timer.set_value(false);
                    client.post(Cmd::Reads);
                },
                Duration::from_millis(wait),
            );
        }
        reads
    }

    /// Handles one server frame and returns the frames to put on the wire for it. `welcome` marks the connection
    /// usable and replays every room's join with `since` and `epoch`; any other frame updates the chat, after which
    /// whatever became due (the outbox of a room just joined, say) goes on the wire. A transient refusal of a send
    /// starts a timer that releases the hold.
    fn receive(&self, msg: ServerMsg, backoff: &mut Backoff) -> Result<Vec<ClientMsg>, End> {
        // A busy replica (a reconnect storm): wait what it asks plus a random part of it, so thousands of pages
        // do not come back in the same instant; then connect again, or send the refused join again.
        if let ServerMsg::TryAgain(frame::TryAgain {
            after_ms,
            request,
            room,
            ..
        }) = &msg
        {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let wait =
                Duration::from_millis(after_ms + (browser::random() * *after_ms as f64) as u64);
            if *request == frame::TryAgainRequest::Connect {
                return Err(End::After(wait));
            }
            if let Some(room) = room.as_deref().and_then(|r| RoomName::parse(r).ok()) {
                let client = *self;
                set_timeout(move || client.rejoin(&room), wait);
            }
            return Ok(Vec::new());
        }
        if let ServerMsg::Welcome(frame::Welcome { version, node, .. }) = &msg {
            if *version != PROTOCOL_VERSION {
                return Err(End::Stop(format!(
                    "the server speaks protocol {version}, this page {PROTOCOL_VERSION}: reload the page"
                )));
            }
            backoff.reset();
            self.status.set(Status::Connected { node: node.clone() });
            return Ok(self
                .chat
                .with_untracked(Chat::rejoins)
                .into_iter()
                .map(join_msg)
                .collect());
        }
        // One update for both, so the components redraw once per frame.
        let (now, wall) = (browser::now(), browser::wall());
        let Some((applied, sends)) = self.chat.try_update(|chat| {
            chat.set_now(now);
            chat.set_wall(wall);
            let applied = chat.apply(msg);
            (applied, chat.flush())
        }) else {
            return Ok(Vec::new());
        };
        if let Some(notice) = applied.notice {
            self.notice.set(Some(notice));
        }
        for mention in applied.mentions {
            if let Some(shown) = browser::notify(
                &format!("{} in #{}", mention.nick, mention.room),
                &mention.text,
                mention.room.as_str(),
            ) {
                self.shown.update_value(|s| {
                    // The browser shows one per room (same tag); the handles of old ones need not pile up.
                    if s.len() >= 32 {
                        s.remove(0);
                    }
                    s.push((mention.room, mention.id, shown));
                });
            }
        }
        if let Some((room, read)) = applied.read {
            // Read past them (here or elsewhere): the room's notifications are stale.
            self.shown.update_value(|s| {
                s.retain(|(r, id, shown)| {
                    let stale = *r == room && *id <= read;
                    if stale {
                        shown.close();
                    }
                    !stale
                });
            });
        }
        if let Some(hold) = applied.retry_after {
            let client = *self;
            set_timeout(move || client.post(Cmd::Release), hold);
        }
        let mut frames = sends;
        frames.extend(self.due_reads());
        Ok(frames)
    }
}

/// One turn of the session loop: a frame from the server, a command from the page, or the heartbeat timer.
enum Event {
    Frame(Option<Result<Message, WebSocketError>>),
    Cmd(Option<Cmd>),
    Tick,
}

fn join_msg(rejoin: Rejoin) -> ClientMsg {
    ClientMsg::Join {
        room: rejoin.room.to_string(),
        nick: rejoin.nick.to_string(),
        person: rejoin.person,
        since: rejoin.since,
        epoch: rejoin.epoch,
        req: None,
    }
}

/// Classifies a close frame. Going away (1001), too slow (1013) and everything else retry; a policy close (1008,
/// e.g. an unsupported protocol version) stops, since trying again would meet the same refusal, and so does a
/// revoked session (4003), whose token is forgotten: it will never work again, and the person must sign in anew.
fn closed(code: u16, reason: String) -> End {
    if code == close_code::SESSION_REVOKED {
        browser::forget_token();
        return End::Stop("your session was revoked: sign in again".into());
    }
    if code == close_code::POLICY {
        End::Stop(if reason.is_empty() {
            "the server refused this client".into()
        } else {
            reason
        })
    } else {
        End::Retry
    }
}

/// The socket URL: the page's own host, `wss://` when the page came over HTTPS.
fn ws_url() -> String {
    let location = window().location();
    let scheme = match location.protocol().as_deref() {
        Ok("https:") => "wss",
        _ => "ws",
    };
    let host = location.host().unwrap_or_default();
    match crate::browser::load_token() {
        Some(token) => format!("{scheme}://{host}{}?token={token}", shared::WS_PATH),
        None => format!("{scheme}://{host}{}", shared::WS_PATH),
    }
}

async fn put(ws: &mut WebSocket, msg: &ClientMsg) -> Result<(), ()> {
    let json = serde_json::to_string(msg).map_err(|_| ())?;
    ws.send(Message::Text(json)).await.map_err(|_| ())
}

/// Puts frames on the wire in order. If one fails the socket is dead; the sends not written were marked pending,
/// and the disconnect queues them again.
async fn put_all(ws: &mut WebSocket, msgs: &[ClientMsg]) -> Result<(), ()> {
    for msg in msgs {
        put(ws, msg).await?;
    }
    Ok(())
}

/// Resolves when a [`Cmd::Wake`] arrives; discards stale frames meanwhile.
async fn wake(cmds: &mut mpsc::UnboundedReceiver<Cmd>) {
    while let Some(cmd) = cmds.next().await {
        if matches!(cmd, Cmd::Wake) {
            return;
        }
    }
    std::future::pending::<()>().await;
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep(ms: u64) {
    let (tx, rx) = oneshot::channel();
    set_timeout(
        move || {
            let _ = tx.send(());
        },
        Duration::from_millis(ms),
    );
    let _ = rx.await;
}
