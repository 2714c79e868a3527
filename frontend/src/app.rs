//! The root component: starts the client, ties the address bar to the room on screen, and lays out the page.

use leptos::prelude::*;
use shared::{MsgId, Nick, RoomName};

use crate::browser::{self, Route};
use crate::chat::Chat;
use crate::client::Client;
use crate::ui::{EmptyState, RoomView, SearchView, Sidebar, Welcome};

/// What every component may need besides the client: the nickname, per-room drafts, and navigation.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// The connection and chat state.
    pub client: Client,
    /// The chosen nickname; `None` until the person picks one.
    pub nick: RwSignal<Option<Nick>>,
    /// Unsent text per room, so switching rooms does not lose a half-written message.
    pub drafts: StoredValue<Drafts>,
    /// A `/r/<name>` address whose name is not valid: the text and why, shown with a join form to fix it.
    pub bad_route: RwSignal<Option<(String, String)>>,
    /// What the message box is doing besides writing a new message: answering one, or editing one.
    pub compose: RwSignal<Option<Compose>>,
    /// A message to scroll to and highlight (a reply's quote was clicked); older pages load until it shows.
    pub jump: RwSignal<Option<MsgId>>,
}

/// The message box answers or edits a message of `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// The room.
    pub room: RoomName,
    /// The message answered or edited.
    pub id: MsgId,
    /// Editing it (else replying to it).
    pub edit: bool,
    /// What the bar above the box shows of it: "nick: the start of its text".
    pub quote: String,
}

/// Unsent text per room: a short list (a `HashMap` would bring a hasher and a table into the page for a few rooms).
#[derive(Debug, Default)]
pub struct Drafts(Vec<(RoomName, String)>);

impl Drafts {
    /// The draft of `room`, if any.
    pub fn get(&self, room: &RoomName) -> Option<&String> {
        self.0.iter().find(|(r, _)| r == room).map(|(_, t)| t)
    }

    /// Keeps `text` as the draft of `room`.
    pub fn insert(&mut self, room: RoomName, text: String) {
        self.remove(&room);
        self.0.push((room, text));
    }

    /// Forgets the draft of `room`.
    pub fn remove(&mut self, room: &RoomName) {
        self.0.retain(|(r, _)| r != room);
    }
}

/// The component context. Panics only if called outside [`App`], which would be a bug.
pub fn use_ui() -> Ui {
    expect_context::<Ui>()
}

impl Ui {
    /// Joins `room` if needed, puts it on screen (in place of search results), and names it in the address bar so the
    /// link can be shared.
    pub fn open(&self, room: RoomName) {
        self.client.end_search();
        if let Some(nick) = self.nick.get_untracked() {
            self.client.join(room.clone(), nick);
        }
        self.bad_route.set(None);
        browser::set_route(Some(&room), false);
        self.client.view(Some(room));
    }

    /// Leaves `room` and moves to a neighbouring one (or to the empty state).
    pub fn leave(&self, room: &RoomName) {
        let next = self.client.chat().with_untracked(|chat| {
            let rooms = chat.rooms();
            let at = rooms.iter().position(|r| r.name() == room)?;
            rooms
                .get(at + 1)
                .or_else(|| at.checked_sub(1).and_then(|i| rooms.get(i)))
                .map(|r| r.name().clone())
        });
        self.client.leave(room);
        self.drafts.update_value(|d| {
            d.remove(room);
        });
        browser::set_route(next.as_ref(), true);
        self.client.view(next);
    }

    /// Moves `by` rooms up or down the list, wrapping around (Alt+↑/↓).
    fn cycle(&self, by: isize) {
        let next = self.client.chat().with_untracked(|chat| {
            let rooms = chat.rooms();
            let len = isize::try_from(rooms.len()).ok().filter(|&n| n > 0)?;
            let at = chat
                .active()
                .and_then(|a| rooms.iter().position(|r| r.name() == a))
                .and_then(|i| isize::try_from(i).ok())
                .unwrap_or(-1);
            let to = usize::try_from((at + by).rem_euclid(len)).ok()?;
            Some(rooms[to].name().clone())
        });
        if let Some(room) = next {
            self.open(room);
        }
    }

    /// Follows the address bar (on load and on back/forward).
    fn follow_route(&self, initial: bool) {
        match browser::route() {
            Route::Room(room) => {
                // `/r/General` opens `general`: show the address the room is shared by.
                browser::set_route(Some(&room), true);
                if let Some(nick) = self.nick.get_untracked() {
                    self.client.join(room.clone(), nick);
                }
                self.bad_route.set(None);
                self.client.view(Some(room));
            }
            Route::Invalid(raw, why) => {
                self.bad_route.set(Some((raw, why.to_string())));
                self.client.view(None);
            }
            Route::Home => {
                self.bad_route.set(None);
                let first = self
                    .client
                    .chat()
                    .with_untracked(|chat| chat.rooms().first().map(|r| r.name().clone()));
                if initial && first.is_some() {
                    browser::set_route(first.as_ref(), true);
                }
                self.client.view(if initial { first } else { None });
            }
        }
    }

    /// Sets the nickname for the first time or changes it, everywhere.
    pub fn set_nick(&self, nick: Nick) {
        browser::save_nick(&nick);
        let first = self.nick.get_untracked().is_none();
        self.nick.set(Some(nick.clone()));
        if first {
            for room in browser::load_rooms() {
                self.client.join(room, nick.clone());
            }
        } else {
            self.client.rename(&nick);
        }
    }
}

/// The whole app.
#[component]
pub fn App() -> impl IntoView {
    let ui = Ui {
        client: Client::start(),
        // A sign-in token fixes the nick; otherwise the one chosen on an earlier visit.
        nick: RwSignal::new(
            browser::load_token()
                .and_then(|t| crate::token::nick(&t))
                .or_else(browser::load_nick),
        ),
        drafts: StoredValue::new(Drafts::default()),
        bad_route: RwSignal::new(None),
        compose: RwSignal::new(None),
        jump: RwSignal::new(None),
    };
    provide_context(ui);
    let chat = ui.client.chat();

    if let Some(nick) = ui.nick.get_untracked() {
        for room in browser::load_rooms() {
            ui.client.join(room, nick.clone());
        }
    }
    ui.follow_route(true);
    window_event_listener(leptos::ev::popstate, move |_| ui.follow_route(false));
    window_event_listener(leptos::ev::keydown, move |ev| {
        // Esc closes search results, back to the room.
        if ev.key() == "Escape" {
            ui.client.end_search();
        }
        if ev.alt_key() && !ev.ctrl_key() && !ev.meta_key() {
            let by = match ev.key().as_str() {
                "ArrowUp" => -1,
                "ArrowDown" => 1,
                _ => return,
            };
            ev.prevent_default();
            ui.cycle(by);
        }
    });

    // Remember the open rooms (once there is a nickname: before that, the list is not restored yet).
    let names = Memo::new(move |_| chat.with(Chat::room_names));
    Effect::new(move |_| {
        let names = names.get();
        if ui.nick.with(Option::is_some) {
            browser::save_rooms(&names);
        }
    });
    Effect::new(move |_| browser::set_title(chat.with(Chat::unread_total)));

    let active = Memo::new(move |_| chat.with(|c| c.active().cloned()));
    let searching = Memo::new(move |_| chat.with(|c| c.search().is_some()));
    view! {
        <Show when=move || ui.nick.with(Option::is_some) fallback=|| view! { <Welcome /> }>
            <div class="shell">
                <a
                    class="skip-link"
                    href=move || {
                        if active.with(Option::is_some) { "#composer-input" } else { "#join-main" }
                    }
                >
                    "Skip to the message box"
                </a>
                <Sidebar />
                <main class="main">
                    <Notice />
                    {move || match (searching.get(), active.get()) {
                        (true, _) => view! { <SearchView /> }.into_any(),
                        (false, Some(room)) => view! { <RoomView room /> }.into_any(),
                        (false, None) => view! { <EmptyState /> }.into_any(),
                    }}
                </main>
            </div>
        </Show>
    }
}

/// A server message that fits no room, until dismissed.
#[component]
fn Notice() -> impl IntoView {
    let client = use_ui().client;
    move || {
        client.notice().get().map(|text| {
            view! {
                <div class="notice-banner" role="alert">
                    <span>{text}</span>
                    <button
                        class="icon-button"
                        aria-label="Dismiss"
                        on:click=move |_| client.dismiss_notice()
                    >
                        "×"
                    </button>
                </div>
            }
        })
    }
}
