//! The Roomcast browser client. This is the placeholder page; the chat UI arrives with the browser-client issue.

use leptos::prelude::*;

/// The root component.
#[component]
pub fn App() -> impl IntoView {
    view! {
        <main class="placeholder">
            <h1>"Roomcast"</h1>
            <p>
                "Protocol v" {shared::PROTOCOL_VERSION} ". The WebSocket endpoint is "
                <code>{shared::WS_PATH}</code> "."
            </p>
        </main>
    }
}
