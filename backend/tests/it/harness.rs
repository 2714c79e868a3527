//! Test harness shared by every integration test: a private redis-server, in-process replicas on loopback ports,
//! and the typed WebSocket client (from `testkit`) that keeps every frame it receives.

use std::net::SocketAddr;
use std::path::PathBuf;

use backend::Config;
use tokio_util::sync::CancellationToken;

pub use testkit::client::{Client, node_behind};
pub use testkit::{PATIENCE, Postgres, Redis, ReplicaProcess, eventually, free_port, http_get};

/// Starts this build's `roomcast` binary as its own process (see [`ReplicaProcess`]) with the test defaults plus
/// `extra` flags.
/// Whether this is a `cargo xtask test --chaos` run (`ROOMCAST_CHAOS` set): the network fault tests then hold their
/// faults longer and repeat them.
pub fn chaos() -> bool {
    std::env::var_os("ROOMCAST_CHAOS").is_some()
}

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

    /// Starts shutting the replica down (SIGTERM): it stops accepting and drains, without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
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
    // Stopping a test replica closes its connections at once unless a test asks for a drain window.
    config.drain_secs = 0;
    config
}

/// The HTTP status and body of a refused WebSocket upgrade (panics if it was accepted or failed otherwise).
pub async fn refused_upgrade(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}
