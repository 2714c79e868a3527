//! Who is in the room: the online count in the room's header, and the member list — a side panel on wide screens,
//! a sheet over the conversation on phones. A moderator also gets Mute / Kick / Ban per member there, for a length
//! they choose, a form that lifts a mute or a ban by nick (a banned person is no longer in the list), the room's
//! slow mode and its read receipts.

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

/// How long a Mute or a Ban from the member list lasts: the moderator's choice, 10 minutes first.
const FOR_SECS: [u64; 4] = [600, 3600, 86_400, 604_800];
/// The slow mode choices, in seconds (0 = off).
const SLOW_SECS: [u64; 5] = [0, 10, 30, 60, 300];

/// A ban (`ban`) or a mute of `nick` for `secs`; 0 lifts it.
fn restrict(ban: bool, room: String, nick: String, secs: u64) -> ClientMsg {
    let req = None;
    if ban {
        ClientMsg::Ban {
            room,
            nick,
            secs,
            req,
            cid: None,
        }
    } else {
        ClientMsg::Mute {
            room,
            nick,
            secs,
            req,
            cid: None,
        }
    }
}

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
    let (act_room, slow_set_room, lift_room, receipts_room) = (
        room.to_string(),
        room.to_string(),
        room.to_string(),
        room.clone(),
    );
    let receipts = Memo::new(move |_| {
        chat.with(|c| {
            c.room(&receipts_room)
                .is_some_and(crate::chat::Room::receipts)
        })
    });
    let receipts_set_room = room.to_string();
    let span = RwSignal::new(FOR_SECS[0]);
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
        let room = act_room.clone();
        client.moderate(match button.get_attribute("data-mod").as_deref() {
            Some("kick") => ClientMsg::Kick {
                room,
                nick,
                req: None,
                cid: None,
            },
            act => restrict(act == Some("ban"), room, nick, span.get_untracked()),
        });
    };
    // Lifting: a mute or a ban with 0 seconds, for a nick typed in (validated as the server will).
    let lift_nick = NodeRef::<leptos::html::Input>::new();
    let lift_error = RwSignal::new(None::<String>);
    let lift = move |ban: bool| {
        let Some(input) = lift_nick.get() else {
            return;
        };
        match shared::Nick::parse(&input.value()) {
            Ok(nick) => {
                lift_error.set(None);
                input.set_value("");
                client.moderate(restrict(ban, lift_room.clone(), nick.to_string(), 0));
            }
            Err(e) => lift_error.set(Some(e.to_string())),
        }
    };
    let unban = lift.clone();
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
            <div class="mod-panel" hidden=move || !moderator.get()>
                <label class="slow-mode">
                    "Slow mode "
                    <select
                        prop:value=move || slow.get().to_string()
                        on:change={
                            let room = slow_set_room.clone();
                            move |ev| {
                                let secs = event_target_value(&ev).parse().unwrap_or(0);
                                client.moderate(ClientMsg::SlowMode { room: room.clone(), secs, req: None, cid: None });
                            }
                        }
                    >
                        {SLOW_SECS.map(|s| {
                            let label = if s == 0 { "off".to_owned() } else { crate::chat::duration(s) };
                            view! { <option value=s.to_string()>{label}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <label class="slow-mode receipts">
                    "Read receipts "
                    <select
                        prop:value=move || receipts.get().to_string()
                        on:change=move |ev| {
                            client.moderate(ClientMsg::Receipts {
                                room: receipts_set_room.clone(),
                                on: event_target_value(&ev) == "true",
                                req: None,
                                cid: None,
                            });
                        }
                    >
                        <option value="false">"off"</option>
                        <option value="true">"on"</option>
                    </select>
                </label>
                <label class="mod-span">
                    "Mute or ban for "
                    <select on:change=move |ev| span.set(event_target_value(&ev).parse().unwrap_or(FOR_SECS[0]))>
                        {FOR_SECS.map(|s| view! { <option value=s.to_string()>{crate::chat::duration(s)}</option> }).collect_view()}
                    </select>
                </label>
                <div class="mod-lift" role="group" aria-label="Lift a mute or a ban">
                    <input
                        node_ref=lift_nick
                        class="input small"
                        placeholder="nick"
                        aria-label="Nick to unmute or unban"
                        aria-invalid=move || lift_error.with(Option::is_some).to_string()
                        aria-describedby="mod-lift-error"
                        autocomplete="off"
                    />
                    <button class="button ghost small" data-lift="mute" on:click=move |_| lift(false)>"Unmute"</button>
                    <button class="button ghost small" data-lift="ban" on:click=move |_| unban(true)>"Unban"</button>
                </div>
                <p id="mod-lift-error" class="field-msg error mod-lift-error" hidden=move || lift_error.with(Option::is_none)>
                    {move || lift_error.get()}
                </p>
            </div>
            <ul class="member-list" on:click=on_mod>
                // At most 100 short rows: redrawn whole when someone comes or goes, or the mute/ban length changes.
                {move || {
                    let length = crate::chat::duration(span.get());
                    members
                        .get()
                        .0
                        .into_iter()
                        .map(|(nick, me)| {
                            let mute = format!("Mute {nick} for {length}");
                            let ban = format!("Ban {nick} for {length}");
                            let tools = view! {
                                <span class="mod-tools" hidden={!moderator.get() || me}>
                                    <button data-mod="mute" aria-label=mute>"Mute"</button>
                                    <button data-mod="kick" aria-label=format!("Kick {nick}")>"Kick"</button>
                                    <button data-mod="ban" aria-label=ban>"Ban"</button>
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
