//! The connection's socket: tungstenite reads the client's frames and writes the control frames (ping, pong,
//! close), while the room frames — already encoded once per replica and shared by every member — are written
//! straight from their shared bytes behind a 2–10 byte header, many per vectored write. Nothing here keeps a buffer
//! once it has written it: an idle connection costs the same whatever it was once sent. (tungstenite copies every
//! frame into a write buffer that keeps the capacity of the largest batch ever written, so a member that once got a
//! 10 KB `joined` kept 10 KB for its life.)

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;

use crate::hub::Outlet;

/// A WebSocket whose frames out are written by [`Io`].
pub type Socket = WebSocketStream<Io>;

/// The most chunks one vectored write takes (a header and a body per frame).
const MAX_SLICES: usize = 128;
/// A drained queue that grew beyond this many chunks gives its memory back.
const KEEP_CHUNKS: usize = 4;

/// One piece of what is queued for the socket: a frame header (room frames only) and bytes.
#[derive(Debug)]
struct Chunk {
    head: [u8; 10],
    /// How much of `head` is left to write (from `head_at`).
    head_len: u8,
    head_at: u8,
    body: Bytes,
}

impl Chunk {
    fn remaining(&self) -> usize {
        usize::from(self.head_len - self.head_at) + self.body.len()
    }

    /// Marks `n` bytes as written; returns what is left of `n` past this chunk.
    fn advance(&mut self, mut n: usize) -> usize {
        let head = usize::from(self.head_len - self.head_at).min(n);
        self.head_at += u8::try_from(head).unwrap_or(u8::MAX);
        n -= head;
        let body = self.body.len().min(n);
        let _ = self.body.split_to(body);
        n - body
    }
}

/// The upgraded connection, with a queue of what is to be written to it. tungstenite writes its control frames
/// through [`AsyncWrite`] (queued whole, never partly, so frames never interleave); the session queues room frames
/// with [`Io::queue_text`]; a flush writes everything queued, in order, with vectored writes.
#[derive(Debug)]
pub struct Io {
    inner: TokioIo<Upgraded>,
    out: VecDeque<Chunk>,
    /// Told whether the socket is refusing bytes: the input of the slow-consumer rule.
    outlet: Arc<Outlet>,
}

impl Io {
    /// The upgraded connection of the member whose state `outlet` is.
    pub fn new(inner: TokioIo<Upgraded>, outlet: Arc<Outlet>) -> Self {
        Self {
            inner,
            out: VecDeque::new(),
            outlet,
        }
    }

    /// Queues one text frame (unmasked, unfragmented, as a server sends it) with `text` as its payload; nothing is
    /// copied.
    pub fn queue_text(&mut self, text: Bytes) {
        let (head, head_len) = text_head(text.len());
        self.out.push_back(Chunk {
            head,
            head_len,
            head_at: 0,
            body: text,
        });
    }

    /// Writes what is queued; ready once all of it is written (and the connection flushed).
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            while self.out.front().is_some_and(|c| c.remaining() == 0) {
                self.out.pop_front();
            }
            if self.out.is_empty() {
                break;
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut used = 0;
            for chunk in &self.out {
                if used + 2 > MAX_SLICES {
                    break;
                }
                let head = &chunk.head[usize::from(chunk.head_at)..usize::from(chunk.head_len)];
                if !head.is_empty() {
                    slices[used] = IoSlice::new(head);
                    used += 1;
                }
                if !chunk.body.is_empty() {
                    slices[used] = IoSlice::new(&chunk.body);
                    used += 1;
                }
            }
            let written = match Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..used]) {
                Poll::Pending => {
                    self.outlet.set_stalled(true);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => n,
            };
            self.outlet.set_stalled(false);
            let mut left = written;
            while left > 0 {
                let Some(chunk) = self.out.front_mut() else {
                    break;
                };
                left = chunk.advance(left);
                if chunk.remaining() == 0 {
                    self.out.pop_front();
                }
            }
        }
        if self.out.capacity() > KEEP_CHUNKS {
            self.out = VecDeque::new();
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }
}

/// The header of a final, unmasked text frame of `len` bytes (RFC 6455, section 5.2), and its length.
fn text_head(len: usize) -> ([u8; 10], u8) {
    let mut head = [0; 10];
    head[0] = 0x81;
    match u16::try_from(len) {
        Ok(short) if short < 126 => {
            head[1] = u8::try_from(short).unwrap_or_default();
            (head, 2)
        }
        Ok(medium) => {
            head[1] = 126;
            head[2..4].copy_from_slice(&medium.to_be_bytes());
            (head, 4)
        }
        Err(_) => {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            (head, 10)
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    /// tungstenite's own frames (pong, ping, close): queued whole, behind whatever is queued already.
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().out.push_back(Chunk {
            head: [0; 10],
            head_len: 0,
            head_at: 0,
            body: Bytes::copy_from_slice(buf),
        });
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    use super::*;

    #[test]
    fn headers_are_the_ones_tungstenite_writes() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let mut expected = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut expected)
                .unwrap();
            let (head, head_len) = text_head(len);
            let mut ours = head[..usize::from(head_len)].to_vec();
            ours.extend_from_slice(&payload);
            assert_eq!(ours, expected, "length {len}");
        }
    }

    #[test]
    fn partial_writes_advance_through_head_and_body() {
        let (head, head_len) = text_head(3);
        let mut chunk = Chunk {
            head,
            head_len,
            head_at: 0,
            body: Bytes::from_static(b"abc"),
        };
        assert_eq!(chunk.remaining(), 5);
        assert_eq!(chunk.advance(1), 0);
        assert_eq!(chunk.remaining(), 4);
        assert_eq!(chunk.advance(2), 0);
        assert_eq!(&chunk.body[..], b"bc");
        assert_eq!(
            chunk.advance(7),
            5,
            "what is left over goes to the next chunk"
        );
        assert_eq!(chunk.remaining(), 0);
    }
}
