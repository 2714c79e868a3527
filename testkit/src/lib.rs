//! What the tests, the benchmarks and `cargo xtask` all need to run Roomcast for real: a private `redis-server` on a
//! free loopback port (plain, persistent, replica, Cluster node), Sentinel and Cluster topologies made of them, a
//! `roomcast` replica as a separate process, and small waiting helpers. Never the default Redis port; everything it
//! starts is killed when dropped. Its modules hold the kits the tests drive Roomcast with: the typed WebSocket
//! [`client`], the fault runs under steady [`traffic`], and (feature `browser`) the WebDriver kit `browser`.

#[cfg(feature = "browser")]
pub mod browser;
pub mod client;
mod link;
pub mod netns;
mod postgres;
mod topologies;
pub mod traffic;

use shared::frame;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

pub use link::{Link, Loss};
pub use postgres::{Postgres, connect_when_up as connect_postgres};
pub use topologies::{ClusterSet, MASTER_NAME, SentinelSet};

/// Upper bound on any single wait, so a broken build fails instead of hanging. Not a performance threshold.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long a test keeps retrying something that must come back (a Redis restarting, a failover, a replica
/// restarted): a bound so a broken build fails instead of hanging, never a measure of how fast recovery is.
pub const RECOVERY: Duration = Duration::from_secs(90);

/// A moment after which retrying is pointless: the test fails saying what never happened.
#[derive(Debug, Clone, Copy)]
pub struct GiveUp(tokio::time::Instant);

impl GiveUp {
    /// [`RECOVERY`] from now.
    pub fn after_recovery() -> Self {
        Self(tokio::time::Instant::now() + RECOVERY)
    }

    /// Fails the test with `what` once the moment has passed.
    pub fn check(self, what: &str) {
        assert!(
            tokio::time::Instant::now() < self.0,
            "gave up after {RECOVERY:?}: {what}"
        );
    }
}

pub use localrun::free_port;
pub use localrun::postgres::PASSWORD as POSTGRES_PASSWORD;

/// The redis-server to run: `ROOMCAST_REDIS_SERVER`, else the first on PATH.
pub fn redis_server_binary() -> PathBuf {
    localrun::redis_server().unwrap_or_else(|| {
        panic!("redis-server not found: apt-get install redis-server (or run `cargo xtask test`, which installs it)")
    })
}

/// A redis-server on a private loopback port, killed on drop. Never the default 6379.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    child: Option<Child>,
    /// Its own working directory (AOF, cluster state, the RDB a replica receives); removed on drop. Never the
    /// test's directory: a server would load whatever dump.rdb it finds there.
    dir: PathBuf,
    /// Flags after `--port` and `--bind`.
    args: Vec<String>,
}

const NO_PERSISTENCE: [&str; 4] = localrun::REDIS_NO_PERSISTENCE;

fn scratch_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-redis-{port}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Redis {
    /// Starts a fresh, empty, non-persistent server and waits until it answers.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts a server on a given port (for a replica that was started before its Redis).
    pub async fn start_on(port: u16) -> Self {
        Self::launch(port, NO_PERSISTENCE.map(String::from).into()).await
    }

    /// Starts a fresh server that persists every write to an append-only file (`appendfsync always`), so a
    /// `SHUTDOWN` and restart keeps everything.
    pub async fn start_persistent() -> Self {
        let args = [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .map(String::from)
        .into();
        Self::launch(free_port(), args).await
    }

    /// Starts a non-persistent replica of `master`.
    pub async fn start_replica_of(master: &Redis) -> Self {
        let mut args: Vec<String> = NO_PERSISTENCE.map(String::from).into();
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ]);
        Self::launch(free_port(), args).await
    }

    /// Starts a non-persistent Redis Cluster node (not yet part of a cluster).
    pub async fn start_cluster_node() -> Self {
        let mut args: Vec<String> = NO_PERSISTENCE.map(String::from).into();
        args.extend(
            ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"].map(String::from),
        );
        // The cluster bus port too comes from `free_port`: Redis's default, the port + 10000, lands in the kernel's
        // ephemeral range, where an outgoing connection may hold it (the node then exits at start).
        args.extend(["--cluster-port".into(), free_port().to_string()]);
        Self::launch(free_port(), args).await
    }

    async fn launch(port: u16, args: Vec<String>) -> Self {
        let mut redis = Self {
            port,
            child: None,
            dir: scratch_dir(port),
            args,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child =
            localrun::redis_command(&redis_server_binary(), self.port, &self.dir, &self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start redis-server");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        // A busy machine can take seconds to start a process: wait for the server itself, up to PATIENCE, and stop at
        // once if it exited instead (its own error is on stderr).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited at start ({status})",
                    self.port
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} did not answer within {PATIENCE:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
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

    /// Starts the server again on the same port, empty, as a replica of the server on `master`: a crashed node
    /// rebooted and put back by an operator (or by Sentinel, which takes up to ten seconds to notice it).
    pub async fn restart_as_replica_of(&mut self, master: u16) {
        self.kill();
        self.args = NO_PERSISTENCE.map(String::from).into();
        self.args
            .extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        self.spawn().await;
    }

    /// Starts a server that was stopped (e.g. by `SHUTDOWN`) again on the same port, with the same persistence.
    pub async fn start_again(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Waits until `n` replicas are attached to this master and in sync (so `WAIT` and `ROLE` see them).
    pub async fn wait_in_sync(&self, n: usize) {
        let url = self.url();
        eventually(&format!("{n} replicas in sync with {url}"), || async {
            let mut conn = redis::Client::open(url.as_str())
                .ok()?
                .get_multiplexed_async_connection()
                .await
                .ok()?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .ok()?;
            (info.matches("state=online").count() == n).then_some(())
        })
        .await;
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A replica running as its own OS process (the real `roomcast` binary), so a test can `kill -9` it and read its
/// memory from /proc. Killed on drop.
#[derive(Debug)]
pub struct ReplicaProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl ReplicaProcess {
    /// Starts the `roomcast` binary at `binary` on a free port with the test defaults (generous rate limits) plus
    /// `extra` flags, and waits until `/healthz` answers.
    pub async fn start(binary: &Path, redis_url: &str, node: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Self::launch(Command::new(binary), addr, redis_url, node, extra).await
    }

    /// [`ReplicaProcess::start`] in a host of a private network ([`netns::Host`]), listening on its address.
    pub async fn start_in(
        host: &netns::Host,
        binary: &Path,
        redis_url: &str,
        node: &str,
        extra: &[&str],
    ) -> Self {
        let addr: SocketAddr = (host.ip(), 3000).into();
        let host_flag = ["--host".to_owned(), host.ip().to_string()];
        let mut cmd = host.command(binary);
        cmd.args(host_flag);
        Self::launch(cmd, addr, redis_url, node, extra).await
    }

    async fn launch(
        mut cmd: Command,
        addr: SocketAddr,
        redis_url: &str,
        node: &str,
        extra: &[&str],
    ) -> Self {
        let port = addr.port();
        // No browser client unless `extra` names one.
        let static_dir = if extra.contains(&"--static-dir") {
            &[][..]
        } else {
            &["--static-dir", "/nonexistent-roomcast-static"][..]
        };
        let child = cmd
            .args(["--port", &port.to_string(), "--redis-url", redis_url])
            .args(["--node-id", node])
            .args(static_dir)
            .args(["--sends-per-sec", "10000", "--send-burst", "10000"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Its log goes to stdout: shown with RUST_LOG set (e.g. RUST_LOG=debug), silent otherwise.
            .stdout(if std::env::var_os("RUST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the roomcast binary");
        let replica = Self {
            addr,
            child: Some(child),
        };
        eventually("the replica process answers /healthz", || async {
            let ok =
                TcpStream::connect(addr).await.is_ok() && http_get(addr, "/healthz").await.0 == 200;
            ok.then_some(())
        })
        .await;
        replica
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, shared::WS_PATH)
    }

    /// Kills the process abruptly (SIGKILL): no close frames, no leave notices.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process as an orchestrator does (SIGTERM: drain, close frames), waits up to `grace` for it to exit,
    /// then kills it. Returns whether it exited by itself in time.
    pub async fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory of the process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The value of a Prometheus counter or gauge in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.addr, "/metrics").await;
        body.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// nginx in front of replicas, run from the repository's own `deploy/nginx.conf` (copied byte for byte into a
/// scratch directory, next to the two files it includes: where to listen, and the replicas' addresses). Killed on
/// drop.
#[derive(Debug)]
pub struct Nginx {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `conf` (normally `deploy/nginx.conf`) on a free port, balancing over `upstreams`.
    pub async fn start(conf: &Path, upstreams: &[SocketAddr]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("roomcast-nginx-{}-{port}", std::process::id()));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = localrun::nginx::command(conf, &dir, addr, upstreams)
            .expect("prepare nginx's directory")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nginx: apt-get install nginx-light");
        let nginx = Self {
            addr,
            child: Some(child),
            dir,
        };
        eventually("nginx accepts connections", || async {
            TcpStream::connect(addr).await.is_ok().then_some(())
        })
        .await;
        nginx
    }

    /// `ws://<addr>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, shared::WS_PATH)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `cmd` to its end and returns its standard output, trimmed. A command that cannot start (`what` says what to
/// install) or that fails fails the caller, with everything it printed.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim().to_owned()
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
    let (status, _, body) = http_request(addr, "GET", path, &[], None).await;
    (status, body)
}

/// A minimal HTTP/1.1 request over loopback (`Connection: close`), returning status, the header block and body.
/// `body` is sent as JSON.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let raw = response.get(split + 4..).unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(raw)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    (status, head, body)
}

/// The body of a chunked HTTP/1.1 response (a streamed one, such as an export), decoded on bytes: a chunk may end
/// inside a character.
fn dechunk(body: &[u8]) -> String {
    let mut rest = body;
    let mut out = Vec::new();
    while let Some(line) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let tail = &rest[line + 2..];
        match size {
            Some(size) if size > 0 && tail.len() >= size => {
                out.extend_from_slice(&tail[..size]);
                rest = tail[size..].strip_prefix(b"\r\n").unwrap_or(&tail[size..]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A WebSocket to a replica, as the benchmarks and the typed [`client::Client`] drive it.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `url` and joins `room` as `nick`, returning once `joined` arrived (panics on a refusal).
pub async fn join_ws(url: &str, room: &str, nick: &str) -> Ws {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let join = shared::ClientMsg::Join {
        person: None,
        room: room.into(),
        nick: nick.into(),
        since: None,
        epoch: None,
        req: None,
    };
    ws.send(Message::text(
        serde_json::to_string(&join).expect("serializes"),
    ))
    .await
    .expect("send join");
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("connection closed during join")
        };
        match serde_json::from_str(&t).expect("server frames are JSON") {
            shared::ServerMsg::Joined(_) => return ws,
            shared::ServerMsg::Error(frame::Error { message, .. }) => {
                panic!("join refused: {message}")
            }
            _ => {}
        }
    }
}
