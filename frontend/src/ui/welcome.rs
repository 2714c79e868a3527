//! The first screen: choose a nickname (remembered for next time) and a room.

use leptos::html;
use leptos::prelude::*;
use shared::{Nick, RoomName};

use super::fields::{TextField, reason};
use super::sidebar::Logo;
use super::status::StatusLine;
use crate::app::use_ui;
use crate::browser::{self, Route};

/// Asks for a nickname and a room, with the room from the address bar (a shared link) filled in.
#[component]
pub fn Welcome() -> impl IntoView {
    let ui = use_ui();
    let suggested = match browser::route() {
        Route::Room(room) => room.to_string(),
        Route::Invalid(raw, _) => raw,
        Route::Home => browser::load_rooms()
            .first()
            .map_or_else(|| "general".to_owned(), ToString::to_string),
    };
    let nick = RwSignal::new(String::new());
    let room = RwSignal::new(suggested);
    let tried = RwSignal::new(false);
    let nick_error = reason(nick, tried, shared::validate::nickname);
    let room_error = reason(room, tried, shared::validate::loose_room_name);
    let nick_input = NodeRef::<html::Input>::new();
    let room_input = NodeRef::<html::Input>::new();
    Effect::new(move |_| {
        if let Some(el) = nick_input.get() {
            let _ = el.focus();
        }
    });
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        tried.set(true);
        let parsed_nick = Nick::parse(nick.get_untracked().trim());
        let parsed_room = RoomName::parse(&shared::validate::normalize_room(&room.get_untracked()));
        match (parsed_nick, parsed_room) {
            (Ok(n), Ok(r)) => {
                ui.set_nick(n);
                ui.open(r);
            }
            (Err(_), _) => {
                if let Some(el) = nick_input.get_untracked() {
                    let _ = el.focus();
                }
            }
            (Ok(_), Err(_)) => {
                if let Some(el) = room_input.get_untracked() {
                    let _ = el.focus();
                }
            }
        }
    };
    view! {
        <main class="welcome">
            <div class="welcome-card">
                <div class="welcome-brand">
                    <Logo />
                    <span>"Roomcast"</span>
                </div>
                <h1>"Chat in real time, in rooms."</h1>
                <p class="muted">
                    "Pick a nickname and a room. Anyone with the room’s link can join you."
                </p>
                <form class="welcome-form" on:submit=submit novalidate>
                    <TextField
                        id="welcome-nick"
                        label="Nickname"
                        value=nick
                        error=nick_error
                        hint="Up to 24 letters, digits, spaces, - _ ."
                        autocomplete="nickname"
                        input_ref=nick_input
                    />
                    <TextField
                        id="welcome-room"
                        label="Room"
                        value=room
                        error=room_error
                        hint="Letters, digits, - and _ (opened in lowercase)"
                        prefix="#"
                        input_ref=room_input
                    />
                    <button class="button primary wide" type="submit">
                        "Start chatting"
                    </button>
                </form>
                <StatusLine />
            </div>
        </main>
    }
}
