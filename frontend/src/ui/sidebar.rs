//! The side panel (a top bar on phones): brand, connection status, the search box, the room list with unread and
//! mention counts, a form to join another room, and the nickname.

use leptos::html;
use leptos::prelude::*;
use shared::{Nick, RoomName};

use super::Avatar;
use super::fields::{TextField, reason};
use super::status::StatusLine;
use crate::app::use_ui;
use crate::browser;
use crate::chat::Chat;
use crate::chat::Phase;

/// The side panel.
#[component]
pub fn Sidebar() -> impl IntoView {
    let ui = use_ui();
    let chat = ui.client.chat();
    let names = Memo::new(move |_| chat.with(Chat::room_names));
    // On phones the join form and nickname fold away behind this toggle; on wide screens they always show.
    let open = RwSignal::new(false);
    view! {
        <aside class="sidebar" class:open=open aria-label="Rooms">
            <div class="brand-row">
                <span class="brand">
                    <Logo />
                    "Roomcast"
                </span>
                <button
                    class="icon-button menu-toggle"
                    aria-expanded=move || open.get().to_string()
                    aria-controls="sidebar-more"
                    aria-label="Join a room or change your nickname"
                    on:click=move |_| open.update(|o| *o = !*o)
                >
                    {move || if open.get() { "×" } else { "+" }}
                </button>
            </div>
            <StatusLine />
            <SearchBox />
            <nav class="rooms" aria-labelledby="rooms-title">
                <h2 id="rooms-title" class="section-title">
                    "Rooms"
                </h2>
                <ul class="room-list">
                    <For each=move || names.get() key=|name| name.clone() let(name)>
                        <RoomLink name />
                    </For>
                </ul>
                <Show when=move || names.with(Vec::is_empty)>
                    <p class="muted small">"No rooms yet."</p>
                </Show>
            </nav>
            <div id="sidebar-more" class="sidebar-more">
                <JoinForm id="join-side" />
                <NickControl />
                <MentionNotifications />
                <p class="muted small shortcut-hint">
                    <kbd>"Alt"</kbd>
                    " + "
                    <kbd>"↑"</kbd>
                    " / "
                    <kbd>"↓"</kbd>
                    " switches rooms"
                </p>
            </div>
        </aside>
    }
}

/// The app's mark: two overlapping speech bubbles.
#[component]
pub fn Logo() -> impl IntoView {
    view! {
        <svg class="logo" viewBox="0 0 32 32" aria-hidden="true">
            <rect x="3" y="5" width="19" height="14" rx="5" class="logo-back" />
            <rect x="10" y="12" width="19" height="14" rx="5" class="logo-front" />
            <path d="M14 26 l0 4 l4 -4z" class="logo-front" />
        </svg>
    }
}

/// One room in the list: a real link (so it can be opened in a new tab or copied), with its unread count.
#[component]
fn RoomLink(name: RoomName) -> impl IntoView {
    let ui = use_ui();
    let chat = ui.client.chat();
    let href = browser::room_path(&name);
    let (n1, n2, n3) = (name.clone(), name.clone(), name.clone());
    let active = Memo::new(move |_| chat.with(|c| c.active() == Some(&n1)));
    let unread = Memo::new(move |_| {
        chat.with(|c| c.room(&n2).map(crate::chat::Room::unread))
            .unwrap_or_default()
    });
    let failed = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&n3)
                .is_some_and(|r| matches!(r.phase(), Phase::Failed(_)))
        })
    });
    let label = name.to_string();
    view! {
        <li>
            <a
                href=href
                class="room-link"
                class:active=active
                class:failed=failed
                aria-current=move || active.get().then_some("page")
                on:click=move |ev| {
                    if ev.ctrl_key() || ev.meta_key() || ev.shift_key() || ev.button() != 0 {
                        return;
                    }
                    ev.prevent_default();
                    ui.open(name.clone());
                }
            >
                <span class="hash" aria-hidden="true">
                    "#"
                </span>
                <span class="room-name">{label}</span>
                <Show when=move || { unread.get().count > 0 }>
                    // "12 · @3" on screen; "12 unread, 3 mentioning you" for screen readers.
                    <span class="badge" class:mention=move || { unread.get().mentions > 0 }>
                        {move || {
                            let u = unread.get();
                            let count = if u.more { "2,000+".to_owned() } else { u.count.to_string() };
                            let (shown, said) = match u.mentions {
                                0 => (count.clone(), format!("{count} unread")),
                                m => (format!("{count} · @{m}"), format!("{count} unread, {m} mentioning you")),
                            };
                            view! {
                                <span aria-hidden="true">{shown}</span>
                                <span class="sr-only">{said}</span>
                            }
                        }}
                    </span>
                </Show>
            </a>
        </li>
    }
}

/// The search box: Enter searches every room this person may read; the results take the main area.
#[component]
fn SearchBox() -> impl IntoView {
    let client = use_ui().client;
    let input = NodeRef::<html::Input>::new();
    view! {
        <form
            class="search-form"
            role="search"
            on:submit=move |ev| {
                ev.prevent_default();
                if let Some(el) = input.get_untracked() {
                    client.search(&el.value());
                }
            }
        >
            <label for="search-input" class="sr-only">
                "Search messages"
            </label>
            <input id="search-input" class="input" type="search" node_ref=input placeholder="Search messages" autocomplete="off" />
        </form>
    }
}

/// A form to join a room by name, checked with the server's own rule before anything is sent.
#[component]
pub fn JoinForm(
    /// The input's id: the form appears twice on some screens.
    id: &'static str,
    /// Text to start with (a mistyped room from the address bar).
    #[prop(optional)]
    initial: String,
    /// Put the cursor in the field on mount.
    #[prop(optional)]
    autofocus: bool,
) -> impl IntoView {
    let ui = use_ui();
    let value = RwSignal::new(initial.clone());
    let tried = RwSignal::new(!initial.is_empty());
    let error = reason(value, tried, shared::validate::loose_room_name);
    let input = NodeRef::<html::Input>::new();
    if autofocus {
        Effect::new(move |_| {
            if let Some(el) = input.get()
                && browser::fine_pointer()
            {
                let _ = el.focus();
            }
        });
    }
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        tried.set(true);
        let name = value.get_untracked();
        if let Ok(room) = RoomName::parse(&shared::validate::normalize_room(&name)) {
            value.set(String::new());
            tried.set(false);
            ui.open(room);
        } else if let Some(el) = input.get_untracked() {
            let _ = el.focus();
        }
    };
    view! {
        <form class="join-form" on:submit=submit aria-label="Join a room" novalidate>
            <TextField
                id
                label="Join a room"
                value
                error
                hint="Letters, digits, - and _ (opened in lowercase)"
                prefix="#"
                input_ref=input
            />
            <button type="submit" class="button">
                "Join"
            </button>
        </form>
    }
}

/// Shows the nickname, and lets the person change it in place.
/// Offers browser notifications for mentions of the person's nick while the tab is in the background, and says
/// where they stand once decided.
#[component]
fn MentionNotifications() -> impl IntoView {
    use web_sys::NotificationPermission as P;
    let state = RwSignal::new(browser::notifications());
    let ask = move |_| browser::ask_for_notifications(move |answer| state.set(Some(answer)));
    move || {
        match state.get() {
        Some(P::Default) => Some(
            view! {
                <button class="link-button small notify-button" on:click=ask>
                    "Notify me when I am mentioned"
                </button>
            }
            .into_any(),
        ),
        Some(P::Granted) => Some(
            view! { <p class="muted small notify-state">"Mentions notify you while this tab is hidden"</p> }
                .into_any(),
        ),
        Some(P::Denied) => Some(
            view! { <p class="muted small notify-state">"Notifications are blocked in the browser's settings"</p> }
                .into_any(),
        ),
        _ => None,
    }
    }
}

#[component]
fn NickControl() -> impl IntoView {
    let ui = use_ui();
    let editing = RwSignal::new(false);
    let value = RwSignal::new(String::new());
    let tried = RwSignal::new(false);
    let error = reason(value, tried, shared::validate::nickname);
    let input = NodeRef::<html::Input>::new();
    let change = NodeRef::<html::Button>::new();
    Effect::new(move |_| {
        if let Some(el) = input.get() {
            let _ = el.focus();
        }
    });
    let start = move |_| {
        value.set(
            ui.nick
                .get_untracked()
                .map(String::from)
                .unwrap_or_default(),
        );
        tried.set(false);
        editing.set(true);
    };
    let stop = move || {
        editing.set(false);
        request_animation_frame(move || {
            if let Some(el) = change.get_untracked() {
                let _ = el.focus();
            }
        });
    };
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        tried.set(true);
        if let Ok(nick) = Nick::parse(value.get_untracked().trim()) {
            ui.set_nick(nick);
            stop();
        }
    };
    let nick = move || ui.nick.get().map(String::from).unwrap_or_default();
    view! {
        <div class="me">
            <Show
                when=move || editing.get()
                fallback=move || {
                    view! {
                        <div class="me-row">
                            <Avatar nick=nick() small=true />
                            <span class="me-name">
                                <span class="muted">"You are "</span>
                                <strong>{nick}</strong>
                            </span>
                            <button class="link-button" node_ref=change on:click=start>
                                "Change"
                            </button>
                        </div>
                    }
                }
            >
                <form
                    class="nick-form"
                    on:submit=save
                    on:keydown=move |ev| {
                        if ev.key() == "Escape" {
                            stop();
                        }
                    }
                    novalidate
                >
                    <TextField
                        id="nick-edit"
                        label="Nickname"
                        value
                        error
                        autocomplete="nickname"
                        input_ref=input
                    />
                    <div class="row">
                        <button type="submit" class="button">
                            "Save"
                        </button>
                        <button type="button" class="button ghost" on:click=move |_| stop()>
                            "Cancel"
                        </button>
                    </div>
                </form>
            </Show>
        </div>
    }
}
