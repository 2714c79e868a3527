//! A TCP link the tests can cut: a proxy on a loopback port that forwards to a server until [`Link::cut`], then
//! forwards nothing either way and closes nothing — what a network partition looks like from both ends (no RST, no
//! FIN: bytes simply stop arriving), until [`Link::heal`]. Bytes read while the link is cut are held and delivered
//! once it heals, as TCP would retransmit them. Connections opened while it is cut are accepted and held silent.
//! [`Link::start_slow`] also delays every byte by a fixed time each way (a long link; this kernel has no `netem`),
//! and [`Loss`] drops a share of the link's packets in the kernel (`nft`), which TCP hides as retransmissions.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A cuttable proxy to one server; stops (closing its connections) when dropped.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_slow(target, Duration::ZERO).await
    }

    /// A link to `target` that delivers every byte `delay` after it was sent, each way, in order.
    pub async fn start_slow(target: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link's port");
        let addr = listener.local_addr().expect("the link's address");
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                let mut pumps = tokio::task::JoinSet::new();
                while let Ok((inbound, _)) = listener.accept().await {
                    let _ = inbound.set_nodelay(true);
                    pumps.spawn(connect(inbound, target, cut.subscribe(), delay));
                }
            }
        });
        Self { addr, cut, task }
    }

    /// The link's port (what [`Loss`] drops packets of).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://<addr>`: the link's address as a Redis URL.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops forwarding, both ways, on every connection, without closing any.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again, what was held first.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the link is cut.
async fn while_cut(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !*cut).await;
}

async fn connect(
    inbound: TcpStream,
    target: SocketAddr,
    mut cut: watch::Receiver<bool>,
    delay: Duration,
) {
    while_cut(&mut cut).await;
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, cut.clone(), delay),
        pump(out_read, in_write, cut, delay)
    );
}

/// Copies `from` to `to`, each chunk `delay` after it was read, holding what it read while the link is cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
    delay: Duration,
) {
    // The chunks in flight, each with when it arrives; `None` once the sender closed.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let mut reader_cut = cut.clone();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while_cut(&mut cut).await;
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while_cut(&mut reader_cut).await;
            let chunk = match from.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let end = chunk.is_none();
            if tx.send((Instant::now() + delay, chunk)).is_err() || end {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// Drops `percent` % of the packets to and from a loopback port, at random, in the kernel (an `nft` table of its
/// own, removed when dropped): TCP retransmits them, so the link is lossy and slow but whole. Needs root and `nft`.
#[derive(Debug)]
pub struct Loss {
    table: String,
}

impl Loss {
    /// Starts dropping; panics, naming the cause, where `nft` is missing or refuses.
    pub fn start(port: u16, percent: u8) -> Self {
        let table = format!("roomcast_loss_{}_{port}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0 ; }}\n\
             add rule inet {table} out ip daddr 127.0.0.0/8 tcp dport {port} numgen random mod 100 < {percent} drop\n\
             add rule inet {table} out ip daddr 127.0.0.0/8 tcp sport {port} numgen random mod 100 < {percent} drop\n"
        );
        nft(None, &script);
        Self { table }
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// Runs the `nft` script `script`, in the network namespace `ns` when given; panics, naming the cause, where `nft` is
/// missing or refuses (it needs root).
pub(crate) fn nft(ns: Option<&str>, script: &str) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "nft"]);
            cmd
        }
        None => Command::new("nft"),
    };
    let out = cmd
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run nft (apt-get install nftables)");
    assert!(
        out.status.success(),
        "nft refused {script:?}{} (root needed): {}",
        ns.map(|ns| format!(" in {ns}")).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
}
