//! Test harness shared by every integration test: a private redis-server, in-process replicas on loopback ports,
//! and a typed WebSocket client that keeps every frame it receives.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backend::Config;
use futures_util::{SinkExt, StreamExt};
use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, ServerMsg};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Upper bound on any single wait, so a broken build fails instead of hanging. Not a performance threshold.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ROOMCAST_REDIS_SERVER") {
        return path.into();
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("redis-server not found: apt-get install redis-server (or run `cargo xtask test`, which installs it)")
    })
}

/// A redis-server on a private loopback port, killed on drop. Never the default 6379.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts a fresh, empty, non-persistent server and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.spawn().await;
        redis
    }

    /// Starts a server on a given port (for a replica that was started before its Redis).
    pub async fn start_on(port: u16) -> Self {
        let mut redis = Self { port, child: None };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        assert_ne!(self.port, 6379);
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server abruptly (SIGKILL), losing everything in it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A plain connection for inspecting the server from a test.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// `PUBSUB CHANNELS *`, sorted.
    pub async fn channels(&self) -> Vec<String> {
        let mut conn = self.conn().await;
        let mut channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        channels.sort();
        channels
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
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
    config.redis_url = redis_url.map(str::to_owned);
    config.static_dir = PathBuf::from("/nonexistent-roomcast-static");
    config.sends_per_sec = 10_000;
    config.send_burst = 10_000;
    config
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A typed client that buffers every frame, so waiting for one frame never loses another.
#[derive(Debug)]
pub struct Client {
    ws: Ws,
    inbox: VecDeque<ServerMsg>,
    /// The close frame, once the server sent one.
    pub closed: Option<Option<CloseFrame>>,
    /// The node id from the welcome.
    pub node: String,
    cid: u64,
}

impl Client {
    /// Connects and consumes the welcome frame.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Self::welcomed(ws).await
    }

    /// Connects with a small kernel receive buffer, like a client on a slow link: it stalls sooner.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let url = format!("ws://{addr}{}", shared::WS_PATH);
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("connect failed");
        Self::welcomed(ws).await
    }

    async fn welcomed(ws: Ws) -> Self {
        let mut client = Self {
            ws,
            inbox: VecDeque::new(),
            closed: None,
            node: String::new(),
            cid: 0,
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
        self.ws.send(msg).await.expect("send failed");
    }

    /// Reads one frame from the socket into the inbox; false once the connection is closed.
    async fn pump(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let frame = tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("no frame from the server in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let msg: ServerMsg = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}"));
                self.inbox.push_back(msg);
                true
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = Some(frame);
                false
            }
            Some(Ok(_)) => true,
            Some(Err(_)) | None => {
                self.closed = Some(None);
                false
            }
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
    pub async fn take<T>(&mut self, mut pick: impl FnMut(&ServerMsg) -> Option<T>) -> T {
        let mut scanned = 0;
        loop {
            while scanned < self.inbox.len() {
                if let Some(found) = pick(&self.inbox[scanned]) {
                    self.inbox.remove(scanned);
                    return found;
                }
                scanned += 1;
            }
            assert!(
                self.pump().await,
                "connection closed before the expected frame: {:?}",
                self.closed
            );
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
        let req = format!("join-{room}");
        self.send(&ClientMsg::Join {
            room: room.into(),
            nick: nick.into(),
            since,
            req: Some(req.clone()),
        })
        .await;
        self.take(|m| match m {
            ServerMsg::Joined {
                req: Some(r),
                history,
                ..
            } if *r == req => Some(Ok(history.clone())),
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
                cid: format!("c{}", self.cid),
            };
            self.send(&msg).await;
        }
        let mut ids = Vec::with_capacity(n);
        for cid in first..=self.cid {
            let cid = format!("c{cid}");
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
        let cid = format!("c{}", self.cid);
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

/// Retries `f` until it returns `Some`, for state that settles asynchronously (e.g. a Redis reconnect).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 GET over loopback, returning status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
