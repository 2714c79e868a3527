//! The room on screen (header, timeline that follows new messages unless the reader scrolled up, message box), and
//! what shows when no room is.

use leptos::html;
use leptos::prelude::*;
use shared::RoomName;

use super::composer::Composer;
use super::members::{MembersPanel, OnlineButton};
use super::sidebar::{JoinForm, Logo};
use super::status::OutageBanner;
use super::timeline::{Row, RowKey, keep_focus, on_action, row_view, rows};
use crate::app::use_ui;
use crate::browser;
use crate::chat::{Older, Phase};

/// How close to the bottom (in pixels) still counts as "at the bottom", so new messages keep scrolling into view.
const STICK_PX: i32 = 48;

/// Space left above the "New messages" divider when a room opens at it.
const UNREAD_MARGIN_PX: i32 = 48;

/// How close to the top (in pixels) asks for older messages.
const LOAD_OLDER_PX: i32 = 200;

/// One room: header, timeline, composer.
#[component]
pub fn RoomView(room: RoomName) -> impl IntoView {
    let ui = use_ui();
    let chat = ui.client.chat();
    let (r1, r2, r3, r4) = (room.clone(), room.clone(), room.clone(), room.clone());
    let older = Memo::new(move |_| chat.with(|c| c.room(&r4).map(crate::chat::Room::older)));
    let older_room = room.clone();
    // Who else is typing, re-checked every second so the line clears by itself.
    let clock = RwSignal::new(browser::now());
    if let Ok(handle) = set_interval_with_handle(
        move || clock.set(browser::now()),
        std::time::Duration::from_secs(1),
    ) {
        on_cleanup(move || handle.clear());
    }
    let typing_room = room.clone();
    let typing_line = Memo::new(move |_| {
        let now = clock.get();
        chat.with(|c| {
            c.room(&typing_room)
                .map(|r| crate::text::typing(&r.typists(now)))
        })
        .flatten()
    });
    // While a ban lasts, a join would be refused: "Join again" shows only once it is over (the clock above re-checks
    // it). The page does not rejoin by itself then: coming back is seen by everyone in the room ("troll joined"), so
    // it is the person's act, as after a kick, not something that happens while they may be away.
    let ban_room = room.clone();
    let banned = Memo::new(move |_| {
        clock.track();
        chat.with(|c| c.room(&ban_room).and_then(|r| r.banned(browser::wall())))
            .is_some()
    });
    let fill_room = room.clone();
    let rows = Memo::new(move |_| chat.with(|c| c.room(&r1).map(rows).unwrap_or_default()));
    let phase = Memo::new(move |_| chat.with(|c| c.room(&r2).map(|r| r.phase().clone())));
    let nick = Memo::new(move |_| {
        chat.with(|c| c.room(&r3).map(|r| r.nick().to_string()))
            .unwrap_or_default()
    });

    // Follow new messages while the reader is at the bottom; hold still while they scroll back to read.
    let scroller = NodeRef::<html::Div>::new();
    let stick = RwSignal::new(true);
    // Where the page itself last scrolled to. The scroll event of that scroll arrives later, often after more rows
    // were added (a burst): measured against the grown content it looks like the reader scrolled up. Only a
    // position above this one is the reader's doing.
    let auto_top = StoredValue::new(0);
    let to_bottom = move || {
        if let Some(el) = scroller.get_untracked() {
            el.set_scroll_top(el.scroll_height());
            auto_top.set_value(el.scroll_top());
        }
    };
    // When older messages are put on top, keep what the reader looks at where it was: the content grew above it.
    let first_row = StoredValue::new(None::<RowKey>);
    let jumped = StoredValue::new(false);
    // The first layout is done (the room opened at its divider or at the bottom): from then on, being at the bottom
    // means the newest message is on screen.
    let laid_out = RwSignal::new(false);
    let last_height = StoredValue::new(0);
    let jump_room = room.clone();
    Effect::new(move |_| {
        let target = ui.jump.get();
        let first = rows.with(|r| {
            r.iter()
                .map(Row::key)
                .find(|k| matches!(k, RowKey::Message(..)))
        });
        let prepended = first_row
            .get_value()
            .is_some_and(|old| Some(&old) != first.as_ref())
            && older.get_untracked() != Some(Older::Loading);
        first_row.set_value(first);
        let follow = stick.get_untracked();
        let (fill_room, jump_room) = (fill_room.clone(), jump_room.clone());
        request_animation_frame(move || {
            keep_focus();
            let Some(el) = scroller.get_untracked() else {
                return;
            };
            // The first layout with the room's messages: the room opens at its divider, or at the bottom.
            if !jumped.get_value() && rows.with_untracked(|r| !r.is_empty()) {
                jumped.set_value(true);
                laid_out.set(true);
                // Opening a room with unread messages starts at the first of them, not at the bottom (unless a search
                // result or a quote asks for a message).
                let divider = el
                    .query_selector(".unread-divider")
                    .ok()
                    .flatten()
                    .filter(|_| target.is_none())
                    .and_then(|d| wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(d).ok());
                if let Some(divider) = divider {
                    el.set_scroll_top(divider.offset_top() - UNREAD_MARGIN_PX);
                    auto_top.set_value(el.scroll_top());
                    let gap = el.scroll_height() - el.scroll_top() - el.client_height();
                    stick.set(gap <= STICK_PX);
                    last_height.set_value(el.scroll_height());
                    return;
                }
            }
            if follow {
                to_bottom();
            } else if prepended {
                let grown = el.scroll_height() - last_height.get_value();
                el.set_scroll_top(el.scroll_top() + grown);
            }
            last_height.set_value(el.scroll_height());
            if let Some(id) = target {
                // A reply's quote was clicked: show the original, loading older pages until it is here.
                if let Ok(Some(found)) = el.query_selector(&format!("[data-id=\"{id}\"]")) {
                    ui.jump.set(None);
                    stick.set(false);
                    auto_top.set_value(i32::MAX);
                    found.scroll_into_view();
                    let _ = found.class_list().remove_1("highlight");
                    let _ = found.class_list().add_1("highlight");
                    if let Ok(found) = wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(found)
                    {
                        let _ = found.focus();
                    }
                } else if older.get_untracked() == Some(Older::Complete) {
                    ui.jump.set(None);
                } else {
                    ui.client.load_older(&jump_room);
                }
                return;
            }
            // Too few messages to scroll (a tall window): fetch older ones until it fills up or the start is here.
            if el.scroll_top() < LOAD_OLDER_PX {
                ui.client.load_older(&fill_room);
            }
        });
    });
    // Read: the tab is visible, this room is on screen, and its newest message too (the reader is at the bottom).
    let read_room = room.clone();
    let newest = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&read_room)?
                .items()
                .iter()
                .rev()
                .find_map(|item| match item {
                    crate::chat::Item::Message(m) => Some(m.id),
                    _ => None,
                })
        })
    });
    let hidden = Memo::new(move |_| chat.with(crate::chat::Chat::hidden));
    let reader_room = room.clone();
    Effect::new(move |_| {
        if let Some(id) = newest.get()
            && laid_out.get()
            && stick.get()
            && !hidden.get()
        {
            ui.client.read(&reader_room, id);
        }
    });
    let on_scroll = move |_| {
        if let Some(el) = scroller.get_untracked() {
            last_height.set_value(el.scroll_height());
            // Near the top: fetch the page before it, so scrolling back runs into older messages, not a wall.
            if el.scroll_top() < LOAD_OLDER_PX {
                ui.client.load_older(&older_room);
            }
            let gap = el.scroll_height() - el.scroll_top() - el.client_height();
            let following = gap <= STICK_PX || el.scroll_top() >= auto_top.get_value();
            if !following {
                // The reader took over: from now on only reaching the bottom again resumes following.
                auto_top.set_value(i32::MAX);
            }
            stick.set(following);
        }
    };

    let title = room.to_string();
    let (leave_room, retry_room, row_room) = (room.clone(), room.clone(), room.clone());
    // The member list starts open where there is room for it beside the conversation.
    let members_open = RwSignal::new(browser::wide());
    let (online_room, members_room) = (room.clone(), room.clone());
    // Messages refused for good: with more than one, one pair of buttons acts on all of them.
    let failed_room = room.clone();
    let failed = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&failed_room).map_or(0, |r| {
                r.outbox()
                    .iter()
                    .filter(|o| matches!(o.status, crate::chat::SendStatus::Failed { .. }))
                    .count()
            })
        })
    });
    let (retry_all_room, discard_all_room) = (room.clone(), room.clone());
    let empty = move || rows.with(Vec::is_empty);
    let (action_room, live_room) = (room.clone(), room.clone());
    // The live region gets each new line appended (only additions are announced) and keeps the last few; written
    // straight into the DOM, which is all it needs.
    let live_box = NodeRef::<html::Div>::new();
    // The last line appended; before the first run, none: what arrived before the room was opened is not news.
    let live_last = StoredValue::new(None::<Option<shared::MsgId>>);
    Effect::new(move |_| {
        let lines = chat
            .with(|c| c.room(&live_room).map(|r| r.live().to_vec()))
            .unwrap_or_default();
        let Some(el) = live_box.get() else {
            return;
        };
        let Some(last) = live_last.get_value() else {
            live_last.set_value(Some(lines.last().map(|(id, _)| *id)));
            return;
        };
        for (id, line) in lines {
            if last.is_some_and(|last| id <= last) {
                continue;
            }
            live_last.set_value(Some(Some(id)));
            if let Ok(p) = document().create_element("p") {
                p.set_text_content(Some(&line));
                let _ = el.append_child(&p);
            }
        }
        while el.child_element_count() > crate::chat::LIVE_LINES as u32 {
            if let Some(first) = el.first_element_child() {
                first.remove();
            }
        }
    });
    view! {
        <section class="room" aria-labelledby="room-title">
            <header class="room-head">
                <div class="room-title-wrap">
                    <h1 id="room-title" class="room-title">
                        <span class="hash" aria-hidden="true">
                            "#"
                        </span>
                        {title.clone()}
                    </h1>
                    <p class="room-sub muted">"You are " <strong>{nick}</strong> " here"</p>
                </div>
                <div class="room-actions">
                    <OnlineButton room=online_room open=members_open />
                    <button class="button ghost small" on:click=move |_| ui.leave(&leave_room)>
                        "Leave"
                    </button>
                </div>
            </header>
            <OutageBanner />
            <div class="room-body">
            <div class="room-main">
            <div class="timeline-wrap">
                <div
                    class="timeline"
                    node_ref=scroller
                    on:scroll=on_scroll
                    on:click=move |ev| on_action(&ev, &action_room)
                    on:contextmenu=|ev| {
                        // A long press on a touch screen: show the message's actions instead of the browser's menu.
                        let target = ev.target().and_then(|t| wasm_bindgen::JsCast::dyn_into::<web_sys::Element>(t).ok());
                        if let Some(Ok(Some(msg))) = target.map(|t| t.closest(".msg[data-id]")) {
                            ev.prevent_default();
                            if let Ok(msg) = wasm_bindgen::JsCast::dyn_into::<web_sys::HtmlElement>(msg) {
                                let _ = msg.focus();
                            }
                        }
                    }
                    role="log"
                    aria-live="off"
                    aria-label=format!("Messages in #{title}")
                    tabindex="0"
                >
                    <div class="timeline-inner">
                        {move || match older.get() {
                            Some(Older::Complete) if !empty() => Some(
                                view! { <p class="history-edge">"Beginning of the room's history"</p> }
                                    .into_any(),
                            ),
                            Some(Older::Loading) => Some(
                                view! { <p class="history-edge" aria-live="polite">"Loading older messages…"</p> }
                                    .into_any(),
                            ),
                            _ => None,
                        }}
                        {move || match phase.get() {
                            Some(phase @ (Phase::Failed(_) | Phase::Removed(_))) => {
                                let room = retry_room.clone();
                                let (text, again) = match phase {
                                    Phase::Failed(reason) => (format!("Could not join this room: {reason}"), "Try again"),
                                    Phase::Removed(reason) => (format!("{reason}."), "Join again"),
                                    _ => unreachable!(),
                                };
                                Some(
                                    view! {
                                        <div class="callout error" role="alert">
                                            <p>{text}</p>
                                            <button class="button small" hidden=banned on:click=move |_| ui.client.rejoin(&room)>
                                                {again}
                                            </button>
                                        </div>
                                    }
                                        .into_any(),
                                )
                            }
                            Some(Phase::Joining) if empty() => {
                                Some(view! { <p class="placeholder">"Joining…"</p> }.into_any())
                            }
                            Some(Phase::Joined) if empty() => {
                                Some(
                                    view! {
                                        <div class="placeholder">
                                            <p class="placeholder-title">"No messages yet"</p>
                                            <p>"Say hello — everyone who joins will see it."</p>
                                        </div>
                                    }
                                        .into_any(),
                                )
                            }
                            _ => None,
                        }}
                        <For
                            each=move || rows.get()
                            key=|row| row.key()
                            children=move |row| row_view(row, row_room.clone())
                        />
                    </div>
                </div>
                <Show when=move || !stick.get()>
                    <button
                        class="jump"
                        on:click=move |_| {
                            stick.set(true);
                            to_bottom();
                        }
                    >
                        "Jump to latest ↓"
                    </button>
                </Show>
            </div>
            <p class="typing" aria-live="polite">{move || typing_line.get()}</p>
            // New live messages only, for screen readers: the log above stays quiet (history, pages, edits).
            <div class="sr-only live" aria-live="polite" node_ref=live_box></div>
            <Show when=move || { failed.get() > 1 }>
                <div class="outbox-bar" role="status">
                    <span>{move || format!("{} messages not sent", failed.get())}</span>
                    <button
                        class="button small"
                        on:click={
                            let room = retry_all_room.clone();
                            move |_| ui.client.retry_all(&room)
                        }
                    >
                        "Retry all"
                    </button>
                    <button
                        class="button ghost small"
                        on:click={
                            let room = discard_all_room.clone();
                            move |_| ui.client.discard_failed(&room)
                        }
                    >
                        "Discard all"
                    </button>
                </div>
            </Show>
            <Composer room />
            </div>
            <MembersPanel room=members_room open=members_open />
            </div>
        </section>
    }
}

/// Shown when no room is on screen: an invitation to join one, and what went wrong with the address if anything.
#[component]
pub fn EmptyState() -> impl IntoView {
    let ui = use_ui();
    view! {
        <section class="empty" aria-labelledby="empty-title">
            <div class="empty-card">
                <Logo />
                <h1 id="empty-title">"Pick a room"</h1>
                <p class="muted">
                    "Join a room by name; it comes to life the moment someone joins. "
                    "Its address, like " <code>"/r/general"</code> ", is a link you can share."
                </p>
                {move || {
                    let bad = ui.bad_route.get();
                    let initial = bad.as_ref().map(|(raw, _)| raw.clone()).unwrap_or_default();
                    view! {
                        {bad
                            .map(|(raw, _)| {
                                view! {
                                    <p class="callout error">
                                        "The address names “" {raw} "”, which is not a room name."
                                    </p>
                                }
                            })}
                        <JoinForm id="join-main" initial autofocus=true />
                    }
                }}
            </div>
        </section>
    }
}
