//! The HTTP/1.1 server loop: accepts connections and serves each with hyper, under a deadline for the request's
//! headers, until shutdown. What `axum::serve` does, plus the limits it has no settings for: a connection that has
//! not sent a whole request head within `--header-timeout-secs` (a slow-loris handshake, a half-open connection that
//! never sends a byte, an idle keep-alive connection) is closed, and a request head may not exceed
//! [`MAX_HEAD_BYTES`]. A flood of half-open handshakes therefore costs at most a read buffer of twice that and one
//! small task per connection, each for at most the timeout.
//!
//! HTTP/1.1 only, as before (`axum::serve` was built without HTTP/2 here): a WebSocket upgrades over HTTP/1.1. Not
//! hyper-util's auto builder, which first reads the HTTP/2 preface without a deadline: a connection that never sends
//! a byte would wait there before the header timer starts.

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// The largest request head (request line and headers) a client may send: far above a WebSocket upgrade with a
/// token in its URL and a browser's cookies for the site, far below what a flood of connections could make costly.
/// A larger head is answered 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener` until `stop` resolves, then stops accepting, lets each open HTTP connection finish
/// its request, and returns once they are closed. Upgraded WebSockets are not HTTP connections any more: their
/// sessions are the caller's to wait for.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) where
    L: Listener,
    L::Addr: std::fmt::Debug + 'static,
{
    let mut http = http1::Builder::new();
    // The read buffer may hold a head at its cap and a little of what follows it, no more.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(2 * MAX_HEAD_BYTES);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut stop = pin!(stop);
    loop {
        // `accept` retries by itself on errors (a full file table, say) after a pause.
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping.cancelled() => {
                    // Finish the request in progress, if any, then close; an idle connection closes at once.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // A header timeout, a head too large, a peer gone: the connection's own business.
                debug!(?peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}
