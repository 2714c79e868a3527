//! Test harness shared by every integration test: a private redis-server, in-process replicas on loopback ports,
//! and a typed WebSocket client that keeps every frame it receives.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backend::Config;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, ServerMsg};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub use testkit::{PATIENCE, Redis, ReplicaProcess, eventually, free_port, http_get};

/// Starts this build's `roomcast` binary as its own process (see [`ReplicaProcess`]) with the test defaults plus
/// `extra` flags.
pub async fn replica_process(redis_url: &str, node: &str, extra: &[&str]) -> ReplicaProcess {
    ReplicaProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_roomcast")),
        redis_url,
        node,
        extra,
    )
    .await
}

/// A replica running in this process on a loopback port.
#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Replica {
    /// Starts a replica on a free port, on the Redis bus if `redis_url` is given, else on the in-memory bus.
    pub async fn start(redis_url: Option<&str>) -> Self {
        Self::start_with(config(redis_url)).await
    }

    /// Starts a replica with a custom configuration (port 0 picks a free one).
    pub async fn start_with(config: Config) -> Self {
        // RUST_LOG=debug shows the replicas' logs next to a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let listener = tokio::net::TcpListener::bind((config.host, config.port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            backend::run(listener, config, token)
                .await
                .expect("replica failed");
        });
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, shared::WS_PATH)
    }

    /// Opens a client connection and reads its welcome.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Shuts the replica down gracefully and waits until it has exited.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("replica did not stop")
                .unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The default test configuration: any free port, no static dir, generous rate limits unless a test lowers them.
pub fn config(redis_url: Option<&str>) -> Config {
    let mut config = Config::defaults();
    config.port = 0;
    config.redis_url = redis_url.map(|url| url.parse().expect("a Redis URL"));
    config.static_dir = PathBuf::from("/nonexistent-roomcast-static");
    config.sends_per_sec = 10_000;
    config.send_burst = 10_000;
    config
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What reading a client's socket gave.
#[derive(Debug)]
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

impl Client {
    /// Connects, consumes the welcome frame and reads continuously from then on.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Self::welcomed(ws).await
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
        Self::start(ws, false).await
    }

    /// A client on an upgraded connection, reading continuously; consumes the welcome frame.
    pub async fn welcomed(ws: Ws) -> Self {
        Self::start(ws, true).await
    }

    async fn start(ws: Ws, continuous: bool) -> Self {
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
        match client.next().await {
            ServerMsg::Welcome { version, node, .. } => {
                assert_eq!(version, shared::PROTOCOL_VERSION);
                client.node = node;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    /// Sends a typed request.
    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_raw(Message::text(serde_json::to_string(msg).unwrap()))
            .await;
    }

    /// Sends any frame, valid or not.
    pub async fn send_raw(&mut self, msg: Message) {
        self.sink.send(msg).await.expect("send failed");
    }

    /// Moves one server message into the inbox; false once the connection is closed.
    async fn pump(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let incoming = match &mut self.reader {
            Reader::Continuous { frames, .. } => tokio::time::timeout(PATIENCE, frames.recv())
                .await
                .expect("no frame from the server in time")
                .unwrap_or(Incoming::Closed(None)),
            Reader::OnlyWhenAsked(stream) => tokio::time::timeout(PATIENCE, read_one(stream))
                .await
                .expect("no frame from the server in time"),
        };
        match incoming {
            Incoming::Frame(msg) => {
                self.inbox.push_back(msg);
                true
            }
            Incoming::Closed(frame) => {
                self.closed = Some(frame);
                false
            }
            Incoming::Invalid(what) => panic!("server sent invalid JSON ({what})"),
        }
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
            ServerMsg::Joined { history, .. } => Ok(history),
            _ => unreachable!("join_answer returns joined frames"),
        }
    }

    /// Joins a room as `person` and returns the members and online count `joined` reported, or the error.
    pub async fn join_as(
        &mut self,
        room: &str,
        nick: &str,
        person: &str,
    ) -> Result<(Vec<String>, u32), (ErrorCode, String)> {
        match self.join_answer(room, nick, Some(person), None).await? {
            ServerMsg::Joined {
                members, online, ..
            } => Ok((members.iter().map(ToString::to_string).collect(), online)),
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
        self.send(&ClientMsg::Join {
            person: person.map(Into::into),
            room: room.into(),
            nick: nick.into(),
            since,
            epoch: None,
            req: Some(req.clone()),
        })
        .await;
        self.take(|m| match m {
            ServerMsg::Joined { req: Some(r), .. } if *r == req => Some(Ok(m.clone())),
            ServerMsg::Error {
                req: Some(r),
                code,
                message,
                ..
            } if *r == req => Some(Err((*code, message.clone()))),
            _ => None,
        })
        .await
    }

    /// Repeats a join until the replica can serve it (for a Redis that is coming back).
    pub async fn join_when_available(&mut self, room: &str, nick: &str) {
        for _ in 0..600 {
            match self.try_join(room, nick, None).await {
                Ok(_) => return,
                Err((ErrorCode::Unavailable, _)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(other) => panic!("join {room} failed: {other:?}"),
            }
        }
        panic!("join {room} never succeeded");
    }

    fn cid_of(&self, n: u64) -> String {
        format!("{}-{n}", self.cid_prefix)
    }

    /// Sends a message, retrying with the same cid while the store is unavailable, and returns the id from its ack.
    pub async fn say_when_available(&mut self, room: &str, text: &str) -> MsgId {
        self.cid += 1;
        let cid = self.cid_of(self.cid);
        for _ in 0..600 {
            self.send(&ClientMsg::Send {
                room: room.into(),
                text: text.into(),
                cid: cid.clone(),
            })
            .await;
            let answer = self
                .take(|m| match m {
                    ServerMsg::Ack { cid: c, id, .. } if *c == cid => Some(Ok(*id)),
                    ServerMsg::Error {
                        req: Some(c), code, ..
                    } if *c == cid => Some(Err(*code)),
                    _ => None,
                })
                .await;
            match answer {
                Ok(id) => return id,
                Err(ErrorCode::Unavailable) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(code) => panic!("send to {room} failed: {code:?}"),
            }
        }
        panic!("send to {room} never succeeded");
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
        let first = self.cid + 1;
        for _ in 0..n {
            self.cid += 1;
            let msg = ClientMsg::Send {
                room: room.into(),
                text: text.into(),
                cid: self.cid_of(self.cid),
            };
            self.send(&msg).await;
        }
        let mut ids = Vec::with_capacity(n);
        for cid in first..=self.cid {
            let cid = self.cid_of(cid);
            ids.push(
                self.take(|m| match m {
                    ServerMsg::Ack { cid: c, id, .. } if *c == cid => Some(*id),
                    ServerMsg::Error {
                        req: Some(c),
                        code,
                        message,
                        ..
                    } if *c == cid => {
                        panic!("send {cid} failed: {code:?} {message}")
                    }
                    _ => None,
                })
                .await,
            );
        }
        ids
    }

    /// Sends a message and returns the ack's id or the error.
    pub async fn try_say(&mut self, room: &str, text: &str) -> Result<MsgId, (ErrorCode, String)> {
        self.cid += 1;
        let cid = self.cid_of(self.cid);
        self.send(&ClientMsg::Send {
            room: room.into(),
            text: text.into(),
            cid: cid.clone(),
        })
        .await;
        self.take(|m| match m {
            ServerMsg::Ack { cid: c, id, .. } if *c == cid => Some(Ok(*id)),
            ServerMsg::Error {
                req: Some(c),
                code,
                message,
                ..
            } if *c == cid => Some(Err((*code, message.clone()))),
            _ => None,
        })
        .await
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
            ServerMsg::Error {
                code, message, req, ..
            } => Some((*code, message.clone(), req.clone())),
            _ => None,
        })
        .await
    }

    /// Reads until the server closes the connection and returns its close code (None: closed without a frame).
    pub async fn close_code(&mut self) -> Option<u16> {
        while self.pump().await {}
        self.closed.clone().flatten().map(|f| u16::from(f.code))
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
        ServerMsg::Welcome { node, .. } => node,
        other => panic!("expected welcome, got {other:?}"),
    }
}
