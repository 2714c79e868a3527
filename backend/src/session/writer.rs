//! Writing to one WebSocket: single frames with a time limit, and the queued room frames in batches — many frames,
//! one vectored write, their shared bytes never copied — through the socket's [`Io`], which tells the connection's
//! [`Outlet`] whether the socket is refusing bytes: the input of the slow-consumer rule.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt};
use shared::ServerMsg;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::codec;
use super::socket::{Io, Socket};
use crate::hub::{Outbound, Outlet, Participant};

/// How long one write may block before the peer counts as gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames written at once.
const MAX_BATCH: usize = 64;

/// A write failed or timed out: the peer is gone.
#[derive(Debug)]
pub struct Gone;

/// Writes one control frame (ping, close) through tungstenite, within [`WRITE_TIMEOUT`].
pub async fn write_control(socket: &mut Socket, msg: Message) -> Result<(), Gone> {
    match tokio::time::timeout(WRITE_TIMEOUT, socket.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

/// Writes one server message, within [`WRITE_TIMEOUT`].
pub async fn write_msg(socket: &mut Socket, msg: &ServerMsg) -> Result<(), Gone> {
    let io = socket.get_mut();
    io.queue_text(codec::encode(msg));
    drain(io).await
}

/// Writes everything queued on the socket, within [`WRITE_TIMEOUT`]: at once when the socket has room (most
/// writes), else with the timer armed.
async fn drain(io: &mut Io) -> Result<(), Gone> {
    let mut write = pin!(std::future::poll_fn(|cx| io.poll_drain(cx)));
    let result = match write.as_mut().now_or_never() {
        Some(result) => Ok(result),
        None => tokio::time::timeout(WRITE_TIMEOUT, write).await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

/// Writes `first` and every frame already queued behind it (up to [`MAX_BATCH`]) that the participant should
/// receive, in one vectored write: under fan-out a busy socket gets one write for many frames instead of one per
/// frame.
pub async fn write_batch(
    socket: &mut Socket,
    queued: &mut mpsc::UnboundedReceiver<Arc<Outbound>>,
    outlet: &Outlet,
    participant: &mut Participant,
    first: Arc<Outbound>,
) -> Result<(), Gone> {
    let io = socket.get_mut();
    let mut next = Some(first);
    let mut frames = 0;
    let mut yielded = false;
    loop {
        while let Some(out) = next.take() {
            outlet.taken(&out);
            if participant.admit(&out) {
                io.queue_text(out.frame.clone());
                frames += 1;
                if let Some(left) = participant.evicted(&out) {
                    io.queue_text(codec::encode(&left));
                    frames += 1;
                }
            }
            if frames < MAX_BATCH {
                next = queued.try_recv().ok();
            }
        }
        // Let the runtime run once before writing: under fan-out the dispatcher queues more frames for this socket
        // meanwhile, and they leave in the same write. Idle, this costs one scheduler turn.
        if yielded || frames >= MAX_BATCH {
            break;
        }
        yielded = true;
        tokio::task::yield_now().await;
        next = queued.try_recv().ok();
        if next.is_none() {
            break;
        }
    }
    drain(io).await
}
