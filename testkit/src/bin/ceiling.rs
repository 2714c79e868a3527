//! The bare ceiling for the fan-out benchmark: one process, no Redis, no protocol — a WebSocket at `/ws/<room>` whose
//! text frames go to every member of the room through a `tokio::sync::broadcast` channel. What this machine can do
//! when nothing but moving frames costs anything.
//!
//! `ceiling --port 4000`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {port}");
    let rooms: Rooms = Arc::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            // The signature is tungstenite's; its error type is large by design.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, resp: Response| {
                path = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let room = path.strip_prefix("/ws/").unwrap_or("default").to_owned();
            let tx = rooms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(room)
                .or_insert_with(|| broadcast::channel(4096).0)
                .clone();
            let mut rx = tx.subscribe();
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    frame = stream.next() => match frame {
                        Some(Ok(msg @ Message::Text(_))) => { let _ = tx.send(msg); }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    out = rx.recv() => match out {
                        Ok(msg) => {
                            // Batch what is already there into one flush, as Roomcast does.
                            if sink.feed(msg).await.is_err() { return; }
                            while let Ok(more) = rx.try_recv() {
                                if sink.feed(more).await.is_err() { return; }
                            }
                            if sink.flush().await.is_err() { return; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }
}
