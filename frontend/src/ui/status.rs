//! The connection status line: which replica, or how long until the next attempt, or offline.

use leptos::prelude::*;

use crate::app::use_ui;
use crate::client::Status;

/// A banner over the room while the page is not connected (after it was once): what happens to what the person
/// writes, and a way to retry now. The quiet status line alone is easy to miss.
#[component]
pub fn OutageBanner() -> impl IntoView {
    let client = use_ui().client;
    let status = client.status();
    let ever_connected = RwSignal::new(false);
    Effect::new(move |_| {
        if matches!(status.get(), Status::Connected { .. }) {
            ever_connected.set(true);
        }
    });
    let message = move || {
        if !ever_connected.get() {
            return None;
        }
        match status.get() {
            Status::Connected { .. } => None,
            Status::Connecting => Some("Connection lost — reconnecting…".to_owned()),
            Status::Reconnecting { secs } => {
                Some(format!("Connection lost — trying again in {secs} s."))
            }
            Status::Offline { reason: None } => Some("You are offline.".to_owned()),
            Status::Offline {
                reason: Some(reason),
            } => Some(format!("Disconnected: {reason}")),
        }
    };
    view! {
        <Show when=move || message().is_some()>
            <div class="outage" role="alert">
                <span>
                    {message} " Messages you write are kept and sent by themselves once connected."
                </span>
                <button class="button small" on:click=move |_| client.reconnect_now()>
                    "Retry now"
                </button>
            </div>
        </Show>
    }
}

/// One line saying how connected the page is, with a "Retry now" button whenever the client is waiting.
#[component]
pub fn StatusLine() -> impl IntoView {
    let client = use_ui().client;
    let status = client.status();
    let state = move || match status.get() {
        Status::Connecting => "connecting",
        Status::Connected { .. } => "connected",
        Status::Reconnecting { .. } => "reconnecting",
        Status::Offline { .. } => "offline",
    };
    let text = move || match status.get() {
        Status::Connecting => "Connecting…".to_owned(),
        Status::Connected { node } => format!("Connected to {node}"),
        Status::Reconnecting { secs } => format!("Reconnecting in {secs} s"),
        Status::Offline { reason: None } => "Offline".to_owned(),
        Status::Offline {
            reason: Some(reason),
        } => format!("Offline: {reason}"),
    };
    let waiting = move || {
        matches!(
            status.get(),
            Status::Reconnecting { .. } | Status::Offline { reason: Some(_) }
        )
    };
    view! {
        <div class="status" data-state=state>
            <span class="dot" aria-hidden="true"></span>
            // The countdown changes every second; announcing each tick would drown a screen reader, so only the
            // state word is live and the full text is there to read.
            <span class="sr-only" role="status">
                {state}
            </span>
            <span class="status-text" title=text>
                {text}
            </span>
            <Show when=waiting>
                <button class="link-button" on:click=move |_| client.reconnect_now()>
                    "Retry now"
                </button>
            </Show>
        </div>
    }
}
