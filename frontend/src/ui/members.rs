//! Who is in the room: the online count in the room's header, and the member list — a side panel on wide screens,
//! a sheet over the conversation on phones. A moderator also gets Mute 10 min / Kick / Ban 1 day per member and the
//! room's slow mode there.

use leptos::prelude::*;
use shared::{ClientMsg, RoomName};

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

/// How long the member list's Mute lasts.
const MUTE_SECS: u64 = 600;
/// How long its Ban lasts.
const BAN_SECS: u64 = 86_400;
/// The slow mode choices, in seconds (0 = off).
const SLOW_SECS: [u64; 5] = [0, 10, 30, 60, 300];

/// The member list of a room, the person's own nick first-class ("you"), in the order people arrived.
#[component]
pub fn MembersPanel(room: RoomName, open: RwSignal<bool>) -> impl IntoView {
    let client = use_ui().client;
    let chat = client.chat();
    let mod_room = room.clone();
    let moderator = Memo::new(move |_| {
        chat.with(|c| c.room(&mod_room).is_some_and(crate::chat::Room::moderator))
    });
    let slow_room = room.clone();
    let slow = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&slow_room)
                .map_or(0, crate::chat::Room::slow_mode_set)
        })
    });
    let (act_room, slow_set_room) = (room.to_string(), room.to_string());
    // One listener for every member's buttons (`data-mod` on the button, `data-nick` on its row).
    let on_mod = move |ev: leptos::ev::MouseEvent| {
        use wasm_bindgen::JsCast;
        let Some(button) = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|t| t.closest("[data-mod]").ok().flatten())
        else {
            return;
        };
        let nick = button
            .closest("[data-nick]")
            .ok()
            .flatten()
            .and_then(|li| li.get_attribute("data-nick"))
            .unwrap_or_default();
        let (room, req) = (act_room.clone(), None);
        client.moderate(match button.get_attribute("data-mod").as_deref() {
            Some("mute") => ClientMsg::Mute {
                room,
                nick,
                secs: MUTE_SECS,
                req,
            },
            Some("kick") => ClientMsg::Kick { room, nick, req },
            _ => ClientMsg::Ban {
                room,
                nick,
                secs: BAN_SECS,
                req,
            },
        });
    };
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
                <label class="slow-mode" hidden=move || !moderator.get()>
                    "Slow mode "
                    <select
                        prop:value=move || slow.get().to_string()
                        on:change={
                            let room = slow_set_room.clone();
                            move |ev| {
                                let secs = event_target_value(&ev).parse().unwrap_or(0);
                                client.moderate(ClientMsg::SlowMode { room: room.clone(), secs, req: None });
                            }
                        }
                    >
                        {SLOW_SECS.map(|s| {
                            let label = if s == 0 { "off".to_owned() } else { crate::chat::duration(s) };
                            view! { <option value=s.to_string()>{label}</option> }
                        }).collect_view()}
                    </select>
                </label>
            <ul class="member-list" on:click=on_mod>
                // At most 100 short rows: redrawn whole when someone comes or goes.
                {move || {
                    members
                        .get()
                        .0
                        .into_iter()
                        .map(|(nick, me)| {
                            let labels = [
                                format!("Mute {nick} for 10 minutes"),
                                format!("Kick {nick}"),
                                format!("Ban {nick} for 1 day"),
                            ];
                            let [mute, kick, ban] = labels;
                            let tools = view! {
                                <span class="mod-tools" hidden={!moderator.get() || me}>
                                    <button data-mod="mute" aria-label=mute>"Mute 10 min"</button>
                                    <button data-mod="kick" aria-label=kick>"Kick"</button>
                                    <button data-mod="ban" aria-label=ban>"Ban 1 day"</button>
                                </span>
                            };
                            let (attr, avatar) = (nick.clone(), nick.clone());
                            view! {
                                <li class="member" class:me=me data-nick=attr>
                                    <Avatar nick=avatar small=true />
                                    <span class="member-nick">{nick}</span>
                                    {me.then(|| view! { <span class="muted member-you">"you"</span> })}
                                    {tools}
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
