//! Who is in the room: the online count in the room's header, and the member list — a side panel on wide screens,
//! a sheet over the conversation on phones.

use leptos::prelude::*;
use shared::RoomName;

use super::Avatar;
use crate::app::use_ui;

/// "3 online": opens and closes the member list.
#[component]
pub fn OnlineButton(room: RoomName, open: RwSignal<bool>) -> impl IntoView {
    let chat = use_ui().client.chat();
    let online =
        Memo::new(move |_| chat.with(|c| c.room(&room).map_or(0, crate::chat::Room::online)));
    view! {
        <button
            class="button ghost small online-button"
            aria-controls="members"
            aria-expanded=move || open.get().to_string()
            on:click=move |_| open.update(|o| *o = !*o)
        >
            <span class="online-dot" aria-hidden="true"></span>
            {move || format!("{} online", online.get())}
        </button>
    }
}

/// The member list of a room, the person's own nick first-class ("you"), in the order people arrived.
#[component]
pub fn MembersPanel(room: RoomName, open: RwSignal<bool>) -> impl IntoView {
    let chat = use_ui().client.chat();
    let list_room = room.clone();
    let members = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&list_room).map(|r| {
                let me = r.nick().clone();
                let listed: Vec<(String, bool)> = r
                    .members()
                    .iter()
                    .map(|m| (m.to_string(), *m == me))
                    .collect();
                let more = usize::try_from(r.online())
                    .unwrap_or(usize::MAX)
                    .saturating_sub(listed.len());
                (listed, more)
            })
        })
        .unwrap_or_default()
    });
    let online = move || members.with(|(listed, more)| listed.len() + more);
    let close = move |_| open.set(false);
    view! {
        <div class="members-backdrop" class:open=move || open.get() on:click=close></div>
        <aside
            id="members"
            class="members"
            class:open=move || open.get()
            aria-label=format!("People in #{room}")
            on:keydown=move |ev| {
                if ev.key() == "Escape" {
                    open.set(false);
                }
            }
        >
            <div class="members-head">
                <h2 class="section-title">"In this room · " {online}</h2>
                <button class="icon-button members-close" aria-label="Close the member list" on:click=close>
                    "×"
                </button>
            </div>
            <ul class="member-list">
                // At most 100 short rows: redrawn whole when someone comes or goes.
                {move || {
                    members
                        .get()
                        .0
                        .into_iter()
                        .map(|(nick, me)| {
                            view! {
                                <li class="member" class:me=me>
                                    <Avatar nick=nick.clone() small=true />
                                    <span class="member-nick">{nick}</span>
                                    {me.then(|| view! { <span class="muted member-you">"you"</span> })}
                                </li>
                            }
                        })
                        .collect_view()
                }}
            </ul>
            {move || {
                let more = members.with(|(_, more)| *more);
                (more > 0).then(|| view! { <p class="muted members-more">{format!("and {more} more")}</p> })
            }}
        </aside>
    }
}
