//! Writing to one WebSocket: single frames with a time limit, and the queued room frames in batches (one flush for
//! many), through a sink that tells the connection's [`Outlet`] whether the socket is refusing bytes — the input of
//! the slow-consumer rule.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt};
use shared::ServerMsg;
use tokio::sync::mpsc;

use super::codec;
use crate::hub::{Outbound, Outlet, Participant};

/// How long one write may block before the peer counts as gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// The socket's receiving half.
pub type Stream = futures_util::stream::SplitStream<WebSocket>;

/// A write failed or timed out: the peer is gone.
#[derive(Debug)]
pub struct Gone;

/// The socket's sending half, telling the connection's [`Outlet`] whether the socket is refusing bytes (a write
/// that has to wait for the peer to read): that, not how soon this task got to run, is what makes a slow consumer.
pub struct Sink {
    inner: SplitSink<WebSocket, Message>,
    outlet: Arc<Outlet>,
}

impl Sink {
    pub fn new(inner: SplitSink<WebSocket, Message>, outlet: Arc<Outlet>) -> Self {
        Self { inner, outlet }
    }

    fn watch(&self, poll: Poll<Result<(), axum::Error>>) -> Poll<Result<(), axum::Error>> {
        self.outlet.set_stalled(poll.is_pending());
        poll
    }
}

impl futures_util::Sink<Message> for Sink {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_ready(cx);
        this.watch(poll)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(poll)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_close(cx);
        this.watch(poll)
    }
}

/// Writes one frame, within [`WRITE_TIMEOUT`].
pub async fn write(sink: &mut Sink, msg: Message) -> Result<(), Gone> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

/// Writes one server message.
pub async fn write_msg(sink: &mut Sink, msg: &ServerMsg) -> Result<(), Gone> {
    write(sink, codec::text(msg)).await
}

/// Writes `first` and every frame already queued behind it (up to [`MAX_BATCH`]) that the participant should
/// receive, then flushes once: under fan-out a busy socket gets one write for many frames instead of one per frame.
/// One timer bounds the batch.
pub async fn write_batch(
    sink: &mut Sink,
    queued: &mut mpsc::UnboundedReceiver<Arc<Outbound>>,
    outlet: &Outlet,
    participant: &mut Participant,
    first: Arc<Outbound>,
) -> Result<(), Gone> {
    let batch = async {
        let mut next = Some(first);
        let mut frames = 0;
        let mut yielded = false;
        loop {
            while let Some(out) = next.take() {
                outlet.taken(&out);
                if participant.admit(&out) {
                    sink.feed(Message::Text(codec::shared_text(out.frame.clone())))
                        .await?;
                    frames += 1;
                    // Encoded before the await: a `ServerMsg` held across it would enlarge every connection's task.
                    if let Some(left) = participant.evicted(&out).map(|left| codec::text(&left)) {
                        sink.feed(left).await?;
                        frames += 1;
                    }
                }
                if frames < MAX_BATCH {
                    next = queued.try_recv().ok();
                }
            }
            // Let the runtime run once before flushing: under fan-out the dispatcher queues more frames for this
            // socket meanwhile, and they leave in the same write. Idle, this costs one scheduler turn.
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
        sink.flush().await
    };
    // Most batches complete at once (the socket has room): arm the write timer only for one that has to wait.
    let mut batch = pin!(batch);
    let result = match batch.as_mut().now_or_never() {
        Some(result) => Ok(result),
        None => tokio::time::timeout(WRITE_TIMEOUT, batch).await,
    };
    match result {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}
