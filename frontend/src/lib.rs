//! The Roomcast browser client: a Leptos app over one WebSocket, with its state rules in plain, natively tested Rust.
//!
//! `chat`, `backoff` and `heartbeat` use no browser API, so `cargo test -p frontend` runs their tests natively;
//! everything else needs a page and is compiled for wasm32 only.

pub mod backoff;
pub mod chat;
pub mod decode;
pub mod heartbeat;
pub mod text;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
mod ui;

#[cfg(target_arch = "wasm32")]
pub use app::App;
