//! The components. Each reads the chat through the [`crate::client::Client`] signals and acts through its methods;
//! none of them sees a frame.

mod composer;
mod fields;
mod members;
mod room;
mod search;
mod sidebar;
mod status;
mod timeline;
mod welcome;

pub use room::{EmptyState, RoomView};
pub use search::SearchView;
pub use sidebar::Sidebar;
pub use welcome::Welcome;

use leptos::prelude::*;

/// A stable hue per nickname, so a person's avatar keeps its colour in every room and on every device.
fn hue(nick: &str) -> u32 {
    // FNV-1a: tiny, and spreads similar names apart.
    let hash = nick.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % 360
}

/// A round badge with the nickname's first letter, decorative (the name is always written next to it).
#[component]
fn Avatar(#[prop(into)] nick: String, #[prop(optional)] small: bool) -> impl IntoView {
    // The browser's upper-casing: Rust's would bring Unicode's case tables into the page for one letter.
    let initial: String = nick
        .chars()
        .next()
        .map(|c| js_sys::JsString::from(c.to_string()).to_upper_case().into())
        .unwrap_or_default();
    view! {
        <span class="avatar" class:small=small style=format!("--hue: {}", hue(&nick)) aria-hidden="true">
            {initial}
        </span>
    }
}
