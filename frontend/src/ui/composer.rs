//! The message box: Enter sends, Shift+Enter breaks the line, and the server's own text rule is checked as you type.
//! It also answers a message (a quote bar above it) or edits one (Up arrow in an empty box edits the last own
//! message; Esc cancels either), and says why it cannot send: muted, slow mode, kicked or banned.

use leptos::html;
use leptos::prelude::*;
use shared::RoomName;
use shared::validate::TEXT_MAX_CHARS;

use crate::app::{Compose, use_ui};
use crate::browser;
use crate::chat::{Act, Phase, duration};

/// Show the character count once a message gets this close to the limit.
const COUNT_FROM: usize = TEXT_MAX_CHARS * 9 / 10;

/// The message box of one room. Its draft survives switching rooms.
#[component]
pub fn Composer(room: RoomName) -> impl IntoView {
    let ui = use_ui();
    let draft = ui
        .drafts
        .with_value(|d| d.get(&room).cloned())
        .unwrap_or_default();
    let text = RwSignal::new(draft);
    // Set when Enter found nothing to send; any edit clears it.
    let tried = RwSignal::new(false);
    let error = Memo::new(move |_| {
        text.with(|t| {
            if t.is_empty() && !tried.get() {
                return None;
            }
            shared::validate::text(t).err().map(|e| e.to_string())
        })
    });
    let count = Memo::new(move |_| text.with(|t| t.chars().count()));
    let input = NodeRef::<html::Textarea>::new();

    let draft_room = room.clone();
    Effect::new(move |_| {
        let t = text.get();
        ui.drafts.update_value(|d| {
            d.insert(draft_room.clone(), t);
        });
    });
    Effect::new(move |_| {
        if let Some(el) = input.get()
            && browser::fine_pointer()
        {
            let _ = el.focus();
        }
    });

    // Replying to or editing a message of this room (the bar above the box).
    let mode_room = room.clone();
    let mode = Memo::new(move |_| ui.compose.get().filter(|c| c.room == mode_room));
    // Editing starts with the message's text in the box.
    let edit_room = room.clone();
    Effect::new(move |_| {
        if let Some(Compose { id, edit: true, .. }) = mode.get() {
            let old = ui.client.chat().with_untracked(|c| {
                c.room(&edit_room)
                    .and_then(|r| r.message(id))
                    .map(|m| m.text.clone())
            });
            text.set(old.unwrap_or_default());
        }
    });
    // Why this box cannot send, or how it must wait; re-checked every second so waits count down.
    let wall = RwSignal::new(browser::wall());
    if let Ok(handle) = set_interval_with_handle(
        move || wall.set(browser::wall()),
        std::time::Duration::from_secs(1),
    ) {
        on_cleanup(move || handle.clear());
    }
    let state_room = room.clone();
    let state = Memo::new(move |_| {
        let now = wall.get();
        ui.client.chat().with(|c| {
            let r = c.room(&state_room)?;
            if let Phase::Removed(why) = r.phase() {
                return Some(match r.banned(now) {
                    // The box stays open while banned: what is written shows as not sent, to retry once back.
                    Some(until) => (
                        false,
                        format!(
                            "You are banned from #{} until {}.",
                            r.name(),
                            browser::clock(until)
                        ),
                    ),
                    None => (true, format!("{why}.")),
                });
            }
            if let Some(until) = r.muted_until().filter(|u| *u > now) {
                return Some((
                    true,
                    format!("You are muted until {}.", browser::clock(until)),
                ));
            }
            let secs = r.slow_mode();
            (secs > 0).then(|| {
                let wait = r
                    .slow_until()
                    .filter(|u| *u > now)
                    .map_or(String::new(), |u| {
                        format!(" You can send again in {} s.", (u - now).div_ceil(1000))
                    });
                (
                    false,
                    format!("Slow mode: one message every {}.{wait}", duration(secs)),
                )
            })
        })
    });
    let blocked = move || state.with(|s| s.as_ref().is_some_and(|s| s.0));

    let placeholder = format!("Message #{room}");
    let typing_room = room.clone();
    let complete_room = room.clone();
    let last_room = room.clone();
    let cancel = move || {
        if ui.compose.get_untracked().is_some_and(|c| c.edit) {
            text.set(String::new());
        }
        ui.compose.set(None);
    };
    let send = move || {
        let value = text.get_untracked();
        let result = match mode.get_untracked() {
            Some(Compose { id, edit: true, .. }) => shared::validate::text(&value)
                .map(|()| ui.client.act(&room, value, Act::Edit { id })),
            reply => ui.client.send(&room, &value, reply.map(|c| c.id)),
        };
        match result {
            Ok(()) => {
                text.set(String::new());
                tried.set(false);
                ui.compose.set(None);
            }
            Err(_) => tried.set(true),
        }
    };
    let send_on_submit = send.clone();
    view! {
        <p class="composer-state" role="status" hidden=move || state.with(Option::is_none)>
            {move || state.get().map(|(_, why)| why)}
        </p>
        <div class="compose-bar" hidden=move || mode.with(Option::is_none)>
            <span>
                {move || mode.get().map(|c| if c.edit { "Editing your message".into() } else { format!("Replying to {}", c.quote) })}
            </span>
            <button type="button" class="icon-button" aria-label="Cancel (Esc)" on:click=move |_| cancel()>"×"</button>
        </div>
        <form
            class="composer"
            on:submit=move |ev| {
                ev.prevent_default();
                send_on_submit();
                if let Some(el) = input.get_untracked() {
                    let _ = el.focus();
                }
            }
        >
            <div class="composer-box" class:invalid=move || error.with(Option::is_some)>
                <label for="composer-input" class="sr-only">
                    {placeholder.clone()}
                </label>
                <textarea
                    id="composer-input"
                    node_ref=input
                    rows="1"
                    placeholder=placeholder.clone()
                    bind:value=text
                    enterkeyhint="send"
                    aria-describedby="composer-msg"
                    disabled=blocked
                    aria-invalid=move || error.with(Option::is_some).to_string()
                    on:input=move |ev| {
                        tried.set(false);
                        if !event_target_value(&ev).is_empty() {
                            ui.client.typing(&typing_room);
                        }
                    }
                    on:keydown=move |ev| {
                        let key = ev.key();
                        if key == "Enter" && !ev.shift_key() && !ev.is_composing() {
                            ev.prevent_default();
                            send();
                        } else if key == "Escape" && ui.compose.with_untracked(Option::is_some) {
                            ev.prevent_default();
                            cancel();
                        } else if key == "ArrowUp" && text.with_untracked(String::is_empty) {
                            // Up in an empty box edits my last message.
                            let last = ui.client.chat().with_untracked(|c| {
                                c.room(&last_room)?.last_own().map(|m| m.id)
                            });
                            if let Some(id) = last {
                                ev.prevent_default();
                                ui.compose.set(Some(Compose {
                                    room: last_room.clone(),
                                    id,
                                    edit: true,
                                    quote: String::new(),
                                }));
                            }
                        } else if ev.key() == "Tab" && !ev.shift_key() {
                            // Complete a nick at the end of the message; otherwise Tab moves on as usual.
                            let completed = ui.client.chat().with_untracked(|c| {
                                let authors = c
                                    .room(&complete_room)
                                    .map(crate::chat::Room::recent_authors)
                                    .unwrap_or_default();
                                text.with_untracked(|t| crate::text::complete_nick(t, &authors))
                            });
                            if let Some(completed) = completed {
                                ev.prevent_default();
                                text.set(completed);
                            }
                        }
                    }
                ></textarea>
                <button type="submit" class="send-button" aria-label="Send message" disabled=blocked>
                    <svg viewBox="0 0 24 24" aria-hidden="true">
                        <path d="M3.4 20.4 21 12 3.4 3.6 3.4 10.2 15 12 3.4 13.8z" />
                    </svg>
                </button>
            </div>
            <div class="composer-foot">
                <p
                    id="composer-msg"
                    class="field-msg"
                    class:error=move || error.with(Option::is_some)
                    aria-live="polite"
                >
                    {move || match error.get() {
                        Some(reason) => reason.into_any(),
                        None => {
                            view! {
                                <span class="keys-hint">
                                    "Enter to send · Shift+Enter for a new line"
                                </span>
                            }
                                .into_any()
                        }
                    }}
                </p>
                <Show when=move || { count.get() >= COUNT_FROM }>
                    <span class="count" class:over=move || { count.get() > TEXT_MAX_CHARS }>
                        {move || format!("{} / {TEXT_MAX_CHARS}", count.get())}
                    </span>
                </Show>
            </div>
        </form>
    }
}
