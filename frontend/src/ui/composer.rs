//! The message box: Enter sends, Shift+Enter breaks the line, and the server's own text rule is checked as you type.

use leptos::html;
use leptos::prelude::*;
use shared::RoomName;
use shared::validate::TEXT_MAX_CHARS;

use crate::app::use_ui;
use crate::browser;

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

    let placeholder = format!("Message #{room}");
    let typing_room = room.clone();
    let complete_room = room.clone();
    let send = move || {
        let value = text.get_untracked();
        match ui.client.send(&room, &value) {
            Ok(()) => {
                text.set(String::new());
                tried.set(false);
            }
            Err(_) => tried.set(true),
        }
    };
    let send_on_submit = send.clone();
    view! {
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
                    aria-invalid=move || error.with(Option::is_some).to_string()
                    on:input=move |ev| {
                        tried.set(false);
                        if !event_target_value(&ev).is_empty() {
                            ui.client.typing(&typing_room);
                        }
                    }
                    on:keydown=move |ev| {
                        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                            ev.prevent_default();
                            send();
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
                <button type="submit" class="send-button" aria-label="Send message">
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
