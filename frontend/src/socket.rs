//! The WebSocket, straight from the browser's API: its events as a stream, text frames out. A general wrapper
//! (gloo-net's) cost the page several kilobytes for what this client never uses (binary frames, a `Sink`, typed errors).

use futures::StreamExt;
use futures::channel::mpsc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// What the socket says.
#[derive(Debug)]
pub enum WsEvent {
    /// The connection is open: frames may be sent.
    Open,
    /// A text frame.
    Text(String),
    /// A frame that is not text (this protocol sends none; it still shows the connection lives).
    Other,
    /// The connection closed, with the close frame's code and reason (1006 when there was none).
    Closed {
        /// The close code.
        code: u16,
        /// The reason given.
        reason: String,
    },
}

type Handler = Closure<dyn FnMut(JsValue)>;

/// One browser WebSocket. Dropping it closes the connection and detaches its handlers.
#[derive(Debug)]
pub struct Socket {
    ws: web_sys::WebSocket,
    events: mpsc::UnboundedReceiver<WsEvent>,
    _handlers: [Handler; 3],
}

impl Socket {
    /// Starts connecting to `url`; `None` when the browser refuses the URL at once.
    pub fn open(url: &str) -> Option<Self> {
        let ws = web_sys::WebSocket::new(url).ok()?;
        let (tx, events) = mpsc::unbounded();
        let on = |f: fn(JsValue) -> WsEvent| {
            let tx = tx.clone();
            Handler::new(move |ev: JsValue| {
                let _ = tx.unbounded_send(f(ev));
            })
        };
        let handlers = [
            on(|_| WsEvent::Open),
            on(|ev| {
                ev.unchecked_into::<web_sys::MessageEvent>()
                    .data()
                    .as_string()
                    .map_or(WsEvent::Other, WsEvent::Text)
            }),
            // An `error` event is always followed by this one, which ends the connection.
            on(|ev| {
                let ev = ev.unchecked_into::<web_sys::CloseEvent>();
                WsEvent::Closed {
                    code: ev.code(),
                    reason: ev.reason(),
                }
            }),
        ];
        ws.set_onopen(Some(handlers[0].as_ref().unchecked_ref()));
        ws.set_onmessage(Some(handlers[1].as_ref().unchecked_ref()));
        ws.set_onclose(Some(handlers[2].as_ref().unchecked_ref()));
        Some(Self {
            ws,
            events,
            _handlers: handlers,
        })
    }

    /// The next event; `None` never comes while the socket lives.
    pub fn next(&mut self) -> futures::stream::Next<'_, mpsc::UnboundedReceiver<WsEvent>> {
        self.events.next()
    }

    /// Sends a text frame; an error means the socket is not open (any more).
    pub fn send(&self, text: &str) -> Result<(), ()> {
        self.ws.send_with_str(text).map_err(|_| ())
    }

    /// Closes the connection with `code` (1000 or 3000–4999, as browsers allow) and `reason`.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.ws.close_with_code_and_reason(code, reason);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}
