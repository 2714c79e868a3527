//! A TCP link the tests can cut: a proxy on a loopback port that forwards to a server until [`Link::cut`], then
//! forwards nothing either way and closes nothing — what a network partition looks like from both ends (no RST, no
//! FIN: bytes simply stop arriving), until [`Link::heal`]. Bytes read while the link is cut are held and delivered
//! once it heals, as TCP would retransmit them. Connections opened while it is cut are accepted and held silent.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
                    pumps.spawn(connect(inbound, target, cut.subscribe()));
                }
            }
        });
        Self { addr, cut, task }
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

async fn connect(inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    while_cut(&mut cut).await;
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        pump(in_read, out_write, cut.clone()),
        pump(out_read, in_write, cut)
    );
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while_cut(&mut cut).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        while_cut(&mut cut).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
