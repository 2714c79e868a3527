//! The typed WebSocket client every test drives Roomcast with: it reads its socket continuously (like a browser
//! tab) and keeps every frame it receives, so waiting for one frame never loses another. Besides the panicking
//! helpers a test wants (`join`, `say`, `take`), it has the non-panicking ones a client riding out faults needs
//! (`try_connect`, `try_send`, `next_within`, `join_resuming`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, ServerMsg, frame};
use tokio::sync::mpsc;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::{PATIENCE, Ws};

/// What reading a client's socket gave.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One per frame read, moved at once: boxing would only add an allocation.
enum Incoming {
    Frame(ServerMsg),
    /// The server closed the connection (with its close frame, if it sent one).
    Closed(Option<CloseFrame>),
    /// A text frame that is not a server message.
    Invalid(String),
}

/// Reads frames until the next server message or the end of the connection.
async fn read_one(stream: &mut SplitStream<Ws>) -> Incoming {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str(&text) {
                    Ok(msg) => Incoming::Frame(msg),
                    Err(e) => Incoming::Invalid(format!("{e}: {text}")),
                };
            }
            Some(Ok(Message::Close(frame))) => return Incoming::Closed(frame),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Incoming::Closed(None),
        }
    }
}

/// What one bounded wait for the next frame gave ([`Client::next_within`]).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Returned and matched at once, like the frame itself.
pub enum Received {
    Frame(ServerMsg),
    /// The connection is closed, with the code of the server's close frame if it sent one.
    Closed(Option<u16>),
    /// Nothing arrived in time.
    Silent,
}

/// What a `joined` frame tells a client that resumes ([`Client::join_resuming`]).
#[derive(Debug)]
pub struct Joined {
    /// The history after `since` that fits in the frame; the rest of the backlog follows as `message` frames.
    pub history: Vec<ChatMessage>,
    /// The room's history epoch, to resume with next time.
    pub epoch: String,
    /// The epoch resumed from is gone: the history was reset.
    pub reset: bool,
    /// Messages after `since` are no longer in the history.
    pub truncated: bool,
}

/// How a client's frames reach its inbox.
#[derive(Debug)]
enum Reader {
    /// A task of its own reads the socket as fast as frames come, like a browser tab: the client keeps up with
    /// the server however long the test takes between two looks at its inbox.
    Continuous {
        frames: mpsc::UnboundedReceiver<Incoming>,
        task: tokio::task::JoinHandle<()>,
    },
    /// The socket is read only while the test waits for a frame: a client that stops reading when the test does.
    OnlyWhenAsked(SplitStream<Ws>),
}

/// A typed client that buffers every frame, so waiting for one frame never loses another.
#[derive(Debug)]
pub struct Client {
    sink: SplitSink<Ws, Message>,
    reader: Reader,
    inbox: VecDeque<ServerMsg>,
    /// The close frame, once the server sent one.
    pub closed: Option<Option<CloseFrame>>,
    /// The node id from the welcome.
    pub node: String,
    cid: u64,
    /// Distinct per client, so no two clients of a test binary ever send the same cid (sends are idempotent by it).
    cid_prefix: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        // The reading task holds half of the socket: end it, so dropping a client closes its connection.
        if let Reader::Continuous { task, .. } = &self.reader {
            task.abort();
        }
    }
}

/// What [`Client::start`]'s error begins with when the replica turned the connection away (`try_again`).
const TURNED_AWAY: &str = "turned away";

/// Waits what a `try_again` asks, plus up to as much again (jitter), as every client must.
pub async fn honour_try_again(after_ms: u64) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let jitter = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (after_ms + 1);
    tokio::time::sleep(Duration::from_millis(after_ms + jitter)).await;
}

impl Client {
    /// Connects, consumes the welcome frame and reads continuously from then on. A replica that answers
    /// `try_again` (admission control) is asked again after the wait it named, plus jitter.
    pub async fn connect(url: &str) -> Self {
        let give_up = crate::GiveUp::after_recovery();
        loop {
            let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect timed out")
                .expect("connect failed");
            match Self::start(ws, true).await {
                Ok(client) => return client,
                Err(e) if e.starts_with(TURNED_AWAY) => {
                    give_up.check("the replica kept turning the connection away");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// [`Client::connect`], or `None` when nothing accepts the connection within [`PATIENCE`] or it does not open
    /// with a welcome (a replica that is down, starting or draining).
    pub async fn try_connect(url: &str) -> Option<Self> {
        let Ok(Ok((ws, _))) =
            tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url)).await
        else {
            return None;
        };
        Self::start(ws, true).await.ok()
    }

    /// Connects with a small kernel receive buffer, like a client on a slow link, and reads only when the test
    /// waits for a frame: it stalls as soon as the test stops looking.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let url = format!("ws://{addr}{}", shared::WS_PATH);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("connect failed");
        Self::start(ws, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client on an upgraded connection, reading continuously; consumes the welcome frame.
    pub async fn welcomed(ws: Ws) -> Self {
        Self::start(ws, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts reading and consumes the welcome; the error says what came instead.
    async fn start(ws: Ws, continuous: bool) -> Result<Self, String> {
        let (sink, mut stream) = ws.split();
        let reader = if continuous {
            let (tx, frames) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let incoming = read_one(&mut stream).await;
                    let end = matches!(incoming, Incoming::Closed(_));
                    if tx.send(incoming).is_err() || end {
                        break;
                    }
                }
            });
            Reader::Continuous { frames, task }
        } else {
            Reader::OnlyWhenAsked(stream)
        };
        let mut client = Self {
            sink,
            reader,
            inbox: VecDeque::new(),
            closed: None,
            node: String::new(),
            cid: 0,
            cid_prefix: {
                static CLIENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                format!(
                    "t{}",
                    CLIENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                )
            },
        };
        match client.next_within(PATIENCE).await {
            Received::Frame(ServerMsg::Welcome(frame::Welcome { version, node, .. })) => {
                assert_eq!(version, shared::PROTOCOL_VERSION);
                client.node = node;
                Ok(client)
            }
            Received::Frame(ServerMsg::TryAgain(frame::TryAgain { after_ms, .. })) => {
                honour_try_again(after_ms).await;
                Err(format!("{TURNED_AWAY} (try_again after {after_ms} ms)"))
            }
            Received::Frame(other) => Err(format!("expected welcome, got {other:?}")),
            Received::Closed(code) => Err(format!("closed before the welcome ({code:?})")),
            Received::Silent => Err("no welcome from the server in time".into()),
        }
    }

    /// Sends a typed request.
    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_raw(Message::text(serde_json::to_string(msg).unwrap()))
            .await;
    }

    /// [`Client::send`], returning false instead of failing when the connection is gone.
    pub async fn try_send(&mut self, msg: &ClientMsg) -> bool {
        self.sink
            .send(Message::text(serde_json::to_string(msg).unwrap()))
            .await
            .is_ok()
    }

    /// Sends any frame, valid or not.
    pub async fn send_raw(&mut self, msg: Message) {
        self.sink.send(msg).await.expect("send failed");
    }

    /// [`Client::send_raw`], returning false instead of failing when the connection is gone (a test that sends until
    /// the server closes).
    pub async fn try_send_raw(&mut self, msg: Message) -> bool {
        self.sink.send(msg).await.is_ok()
    }

    /// Moves one server message into the inbox; false once the connection is closed.
    async fn pump(&mut self) -> bool {
        match self.pump_within(PATIENCE).await {
            Some(open) => open,
            None => panic!("no frame from the server in time"),
        }
    }

    /// [`Client::pump`], or `None` when no frame came within `within`.
    async fn pump_within(&mut self, within: Duration) -> Option<bool> {
        if self.closed.is_some() {
            return Some(false);
        }
        let incoming = match &mut self.reader {
            Reader::Continuous { frames, .. } => tokio::time::timeout(within, frames.recv())
                .await
                .ok()?
                .unwrap_or(Incoming::Closed(None)),
            Reader::OnlyWhenAsked(stream) => {
                tokio::time::timeout(within, read_one(stream)).await.ok()?
            }
        };
        Some(match incoming {
            Incoming::Frame(msg) => {
                self.inbox.push_back(msg);
                true
            }
            Incoming::Closed(frame) => {
                self.closed = Some(frame);
                false
            }
            Incoming::Invalid(what) => panic!("server sent invalid JSON ({what})"),
        })
    }

    /// The next frame in arrival order, waiting at most `within` for it to arrive; never fails.
    pub async fn next_within(&mut self, within: Duration) -> Received {
        loop {
            if let Some(msg) = self.inbox.pop_front() {
                return Received::Frame(msg);
            }
            match self.pump_within(within).await {
                Some(true) => {}
                Some(false) => return Received::Closed(self.close_code_received()),
                None => return Received::Silent,
            }
        }
    }

    /// The code of the close frame the server sent (None: still open, or closed without a frame).
    fn close_code_received(&self) -> Option<u16> {
        self.closed.clone().flatten().map(|f| u16::from(f.code))
    }

    /// The next frame, in arrival order.
    pub async fn next(&mut self) -> ServerMsg {
        match self.next_or_close().await {
            Some(msg) => msg,
            None => panic!("connection closed: {:?}", self.closed),
        }
    }

    /// The next frame, or `None` once the server has closed the connection.
    pub async fn next_or_close(&mut self) -> Option<ServerMsg> {
        loop {
            if let Some(msg) = self.inbox.pop_front() {
                return Some(msg);
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// Removes and returns the first frame (buffered or arriving) that `pick` accepts; other frames stay queued.
    pub async fn take<T>(&mut self, pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        match self.take_unless_closed(pick).await {
            Some(found) => found,
            None => panic!(
                "connection closed before the expected frame: {:?}",
                self.closed
            ),
        }
    }

    /// [`Client::take`], or `None` once the server closed the connection without sending such a frame.
    pub async fn take_unless_closed<T>(
        &mut self,
        mut pick: impl FnMut(&ServerMsg) -> Option<T>,
    ) -> Option<T> {
        let mut scanned = 0;
        loop {
            while scanned < self.inbox.len() {
                if let Some(found) = pick(&self.inbox[scanned]) {
                    self.inbox.remove(scanned);
                    return Some(found);
                }
                scanned += 1;
            }
            if !self.pump().await {
                return None;
            }
        }
    }

    /// Joins a room and returns its history.
    pub async fn join(&mut self, room: &str, nick: &str, since: Option<MsgId>) -> Vec<ChatMessage> {
        match self.try_join(room, nick, since).await {
            Ok(history) => history,
            Err((code, message)) => panic!("join {room} failed: {code:?} {message}"),
        }
    }

    /// Joins a room and returns its history, or the error that answered the join.
    pub async fn try_join(
        &mut self,
        room: &str,
        nick: &str,
        since: Option<MsgId>,
    ) -> Result<Vec<ChatMessage>, (ErrorCode, String)> {
        match self.join_answer(room, nick, None, since).await? {
            ServerMsg::Joined(frame::Joined { history, .. }) => Ok(history),
            _ => unreachable!("join_answer returns joined frames"),
        }
    }

    /// Joins a room and returns the whole `joined` frame (history, read state, receipts).
    pub async fn join_frame(
        &mut self,
        room: &str,
        nick: &str,
        since: Option<MsgId>,
    ) -> frame::Joined {
        match self.join_answer(room, nick, None, since).await {
            Ok(ServerMsg::Joined(joined)) => joined,
            Ok(_) => unreachable!("join_answer returns joined frames"),
            Err((code, message)) => panic!("join {room} failed: {code:?} {message}"),
        }
    }

    /// Sends `read` and returns its answer: the room's next `read_state` (a relayed one from another connection of
    /// the same person counts too), or the error that refused it.
    pub async fn read(
        &mut self,
        room: &str,
        id: MsgId,
    ) -> Result<frame::ReadState, (ErrorCode, String)> {
        self.send(&ClientMsg::Read {
            room: room.into(),
            id,
        })
        .await;
        self.take(|m| match m {
            ServerMsg::ReadState(state) if state.room.as_str() == room => Some(Ok(state.clone())),
            ServerMsg::Error(frame::Error {
                code,
                message,
                request: Some(request),
                ..
            }) if request == "read" => Some(Err((*code, message.clone()))),
            _ => None,
        })
        .await
    }

    /// Sends `search` and returns its answer, or the error that refused it.
    pub async fn search(
        &mut self,
        query: &str,
        room: Option<&str>,
        before: Option<MsgId>,
        limit: Option<usize>,
    ) -> Result<frame::SearchResults, (ErrorCode, String)> {
        let req = format!("search-{}", self.next_cid());
        self.send(&ClientMsg::Search {
            query: query.into(),
            room: room.map(Into::into),
            before,
            limit,
            req: Some(req.clone()),
        })
        .await;
        self.answer(&req, |m| match m {
            ServerMsg::SearchResults(found) if found.req.as_deref() == Some(req.as_str()) => {
                Some(found.clone())
            }
            _ => None,
        })
        .await
    }

    /// Joins a room as `person` and returns the members and online count `joined` reported, or the error.
    pub async fn join_as(
        &mut self,
        room: &str,
        nick: &str,
        person: &str,
    ) -> Result<(Vec<String>, u32), (ErrorCode, String)> {
        match self.join_answer(room, nick, Some(person), None).await? {
            ServerMsg::Joined(frame::Joined {
                members, online, ..
            }) => Ok((members.iter().map(ToString::to_string).collect(), online)),
            _ => unreachable!("join_answer returns joined frames"),
        }
    }

    /// Sends a join and waits for its answer: the `joined` frame, or the error's code and message.
    async fn join_answer(
        &mut self,
        room: &str,
        nick: &str,
        person: Option<&str>,
        since: Option<MsgId>,
    ) -> Result<ServerMsg, (ErrorCode, String)> {
        let req = format!("join-{room}-{nick}");
        loop {
            self.send(&ClientMsg::Join {
                person: person.map(Into::into),
                room: room.into(),
                nick: nick.into(),
                since,
                epoch: None,
                req: Some(req.clone()),
            })
            .await;
            let answer = self
                .answer(&req, |m| match m {
                    ServerMsg::Joined(frame::Joined { req: Some(r), .. })
                    | ServerMsg::TryAgain(frame::TryAgain { req: Some(r), .. })
                        if *r == req =>
                    {
                        Some(m.clone())
                    }
                    _ => None,
                })
                .await?;
            match answer {
                ServerMsg::TryAgain(frame::TryAgain { after_ms, .. }) => {
                    honour_try_again(after_ms).await
                }
                joined => return Ok(joined),
            }
        }
    }

    /// Waits for the answer to the request `req` (a join's `req`, a send's cid): what `pick` takes from it, or the
    /// code and message of the error that answered it. Other frames stay queued.
    async fn answer<T>(
        &mut self,
        req: &str,
        mut pick: impl FnMut(&ServerMsg) -> Option<T>,
    ) -> Result<T, (ErrorCode, String)> {
        self.take(|m| match m {
            ServerMsg::Error(frame::Error {
                req: Some(r),
                code,
                message,
                ..
            }) if r == req => Some(Err((*code, message.clone()))),
            _ => pick(m).map(Ok),
        })
        .await
    }

    /// Joins `room` as a resuming client does (`since` + `epoch`), repeating the join while the store answers
    /// `unavailable`, and returns what `joined` said; `None` once the connection closed or stayed silent for
    /// [`PATIENCE`], so the caller can reconnect elsewhere. Frames before the answer are read and dropped: a client
    /// that was not in the room yet has none it needs. Any other refusal fails the test.
    pub async fn join_resuming(
        &mut self,
        room: &str,
        nick: &str,
        since: Option<MsgId>,
        epoch: Option<String>,
    ) -> Option<Joined> {
        let give_up = crate::GiveUp::after_recovery();
        for attempt in 0.. {
            give_up.check("the join was never answered with `joined`");
            let req = format!("j{attempt}");
            let msg = ClientMsg::Join {
                person: None,
                room: room.into(),
                nick: nick.into(),
                since,
                epoch: epoch.clone(),
                req: Some(req.clone()),
            };
            if !self.try_send(&msg).await {
                return None;
            }
            loop {
                match self.next_within(PATIENCE).await {
                    Received::Frame(ServerMsg::Joined(frame::Joined {
                        history,
                        epoch,
                        reset,
                        truncated,
                        req: Some(r),
                        ..
                    })) if r == req => {
                        return Some(Joined {
                            history,
                            epoch,
                            reset,
                            truncated,
                        });
                    }
                    Received::Frame(ServerMsg::Error(frame::Error {
                        code: ErrorCode::Unavailable,
                        req: Some(r),
                        ..
                    })) if r == req => break,
                    Received::Frame(ServerMsg::TryAgain(frame::TryAgain {
                        after_ms,
                        req: Some(r),
                        ..
                    })) if r == req => {
                        honour_try_again(after_ms).await;
                        break;
                    }
                    Received::Frame(ServerMsg::Error(frame::Error { code, message, .. })) => {
                        panic!("join refused: {code:?} {message}")
                    }
                    Received::Frame(_) => {}
                    Received::Closed(_) | Received::Silent => return None,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!("the loop returns or gives up")
    }

    /// Repeats a join until the replica can serve it (for a Redis that is coming back).
    pub async fn join_when_available(&mut self, room: &str, nick: &str) {
        let give_up = crate::GiveUp::after_recovery();
        loop {
            give_up.check(&format!("join {room} never succeeded"));
            match self.try_join(room, nick, None).await {
                Ok(_) => return,
                Err((ErrorCode::Unavailable, _)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(other) => panic!("join {room} failed: {other:?}"),
            }
        }
    }

    fn cid_of(&self, n: u64) -> String {
        format!("{}-{n}", self.cid_prefix)
    }

    /// A cid this client has not used yet.
    fn next_cid(&mut self) -> String {
        self.cid += 1;
        self.cid_of(self.cid)
    }

    /// Sends `text` to `room` under `cid`.
    async fn send_text(&mut self, room: &str, text: &str, cid: &str) {
        self.send(&ClientMsg::Send {
            room: room.into(),
            text: text.into(),
            cid: cid.into(),
            reply_to: None,
        })
        .await;
    }

    /// Waits for the answer to the send with `cid`: the id from its ack, or the error.
    async fn answer_to(&mut self, cid: &str) -> Result<MsgId, (ErrorCode, String)> {
        self.answer(cid, |m| match m {
            ServerMsg::Ack(frame::Ack { cid: c, id, .. }) if c == cid => Some(*id),
            _ => None,
        })
        .await
    }

    /// Sends a message, retrying with the same cid while the store is unavailable, and returns the id from its ack.
    pub async fn say_when_available(&mut self, room: &str, text: &str) -> MsgId {
        let cid = self.next_cid();
        let give_up = crate::GiveUp::after_recovery();
        loop {
            give_up.check(&format!("send to {room} never succeeded"));
            self.send_text(room, text, &cid).await;
            match self.answer_to(&cid).await {
                Ok(id) => return id,
                Err((ErrorCode::Unavailable, _)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err((code, _)) => panic!("send to {room} failed: {code:?}"),
            }
        }
    }

    /// Sends a message and returns the id from its ack.
    pub async fn say(&mut self, room: &str, text: &str) -> MsgId {
        match self.try_say(room, text).await {
            Ok(id) => id,
            Err((code, message)) => panic!("send to {room} failed: {code:?} {message}"),
        }
    }

    /// Sends `n` copies of `text` without waiting in between, then returns their acked ids in order.
    pub async fn say_batch(&mut self, room: &str, text: &str, n: usize) -> Vec<MsgId> {
        let mut cids = Vec::with_capacity(n);
        for _ in 0..n {
            let cid = self.next_cid();
            self.send_text(room, text, &cid).await;
            cids.push(cid);
        }
        let mut ids = Vec::with_capacity(n);
        for cid in cids {
            match self.answer_to(&cid).await {
                Ok(id) => ids.push(id),
                Err((code, message)) => panic!("send {cid} failed: {code:?} {message}"),
            }
        }
        ids
    }

    /// Sends a message and returns the ack's id or the error.
    pub async fn try_say(&mut self, room: &str, text: &str) -> Result<MsgId, (ErrorCode, String)> {
        let cid = self.next_cid();
        self.send_text(room, text, &cid).await;
        self.answer_to(&cid).await
    }

    /// The next chat message delivered in `room`.
    pub async fn message_in(&mut self, room: &str) -> ChatMessage {
        self.take(|m| match m {
            ServerMsg::Message(msg) if msg.room.as_str() == room => Some(msg.clone()),
            _ => None,
        })
        .await
    }

    /// Joins with `since` and collects `expected` messages: `joined`'s history and the backlog frames after it
    /// (`joined` is bounded in bytes; the rest follows as `message` frames).
    pub async fn join_expecting(
        &mut self,
        room: &str,
        nick: &str,
        since: Option<MsgId>,
        expected: usize,
    ) -> Vec<ChatMessage> {
        let mut got = self.join(room, nick, since).await;
        while got.len() < expected {
            got.push(self.message_in(room).await);
        }
        got
    }

    /// The next chat message in any room.
    pub async fn any_message(&mut self) -> ChatMessage {
        self.take(|m| match m {
            ServerMsg::Message(msg) => Some(msg.clone()),
            _ => None,
        })
        .await
    }

    /// The next error frame.
    pub async fn error(&mut self) -> (ErrorCode, String, Option<String>) {
        self.take(|m| match m {
            ServerMsg::Error(frame::Error {
                code, message, req, ..
            }) => Some((*code, message.clone(), req.clone())),
            _ => None,
        })
        .await
    }

    /// Reads until the server closes the connection and returns its close code (None: closed without a frame).
    pub async fn close_code(&mut self) -> Option<u16> {
        while self.pump().await {}
        self.close_code_received()
    }

    /// Frames received but not yet taken.
    pub fn pending(&self) -> &VecDeque<ServerMsg> {
        &self.inbox
    }
}

/// The node that answers a fresh WebSocket at `url` (a replica, or a load balancer in front of several), from its
/// `welcome`.
pub async fn node_behind(url: &str) -> String {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("no welcome from {url}")
    };
    match serde_json::from_str::<ServerMsg>(&text).expect("a server frame") {
        ServerMsg::Welcome(frame::Welcome { node, .. }) => node,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// A plain WebSocket from `tokio_tungstenite`, for the benchmark probes that speak the protocol as raw JSON.
pub type RawWs = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame of `ws` that `done` accepts (the ones before it dropped); panics once the connection ends.
pub async fn next_text(ws: &mut RawWs, done: impl Fn(&str) -> bool) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if done(&t) => return t.to_string(),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}
