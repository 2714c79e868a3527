//! A room's timeline as rows on screen: day separators, messages grouped by sender (with their reply quotes,
//! "(edited)", tombstones, reaction chips and action menus), join/leave and moderation notices, the client's own
//! notices (such as lost history), "Seen by …" under the messages members read up to, and own messages that are
//! still queued, pending or failed, with their retry buttons. The message actions are plain buttons marked with
//! `data-act`; one listener on the timeline serves them all ([`on_action`]), which keeps the page small.

use leptos::prelude::*;
use shared::{MsgId, Nick, PresenceKind, RoomName};

use super::Avatar;
use crate::app::{Compose, use_ui};
use crate::browser;
use crate::chat::{Act, Item, ModLine, Outgoing, Posted, PresenceLine, Room, SendStatus};
use crate::text::Segment;

/// Consecutive messages from one sender closer than this share one header.
const GROUP_MS: u64 = 5 * 60 * 1000;

thread_local! {
    /// The reaction chip pressed last, while it keeps the focus. A toggle redraws its message (when the `reacted`
    /// event arrives, and again for any later change), which takes the focus with the old chip; [`keep_focus`] gives
    /// it to the chip that replaced it.
    static PRESSED: std::cell::RefCell<Option<web_sys::Element>> = const { std::cell::RefCell::new(None) };
}

/// After the timeline is redrawn: if the pressed chip was replaced and the focus went with it (to the page), the
/// chip for the same emoji on the same message takes it back, or the message itself when that chip went (a count
/// down to 0). Focus the person moved elsewhere stays where it is.
pub fn keep_focus() {
    use wasm_bindgen::JsCast;
    PRESSED.with_borrow_mut(|pressed| {
        let Some(old) = pressed.take() else {
            return;
        };
        let focused = document().active_element();
        if focused.as_ref() == Some(&old) {
            *pressed = Some(old);
            return;
        }
        if old.is_connected() || focused.is_some_and(|f| f.tag_name() != "BODY") {
            return;
        }
        let attr = |el: &web_sys::Element, name| el.get_attribute(name).unwrap_or_default();
        let Some(id) = old
            .closest("[data-id]")
            .ok()
            .flatten()
            .map(|m| attr(&m, "data-id"))
        else {
            return;
        };
        let Ok(Some(msg)) = document().query_selector(&format!(".timeline [data-id=\"{id}\"]"))
        else {
            return;
        };
        let chip = msg
            .query_selector(&format!(
                ".chip[data-emoji=\"{}\"]",
                attr(&old, "data-emoji")
            ))
            .ok()
            .flatten();
        if let Ok(el) = chip
            .clone()
            .unwrap_or(msg)
            .dyn_into::<web_sys::HtmlElement>()
        {
            let _ = el.focus();
        }
        *pressed = chip;
    });
}

/// One row on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A day separator.
    Day(String),
    /// "New messages": the first message that arrived while the person was elsewhere follows.
    Unread,
    /// A stored message; `cont` when it continues the previous sender's group.
    Message { posted: Posted, cont: bool },
    /// Someone joined, left or took another nick.
    Presence(PresenceLine),
    /// A moderator acted.
    Moderation(ModLine),
    /// A note from the client, such as lost history.
    Notice { key: u64, text: String },
    /// An own message not stored yet.
    Outgoing { out: Outgoing, cont: bool },
    /// Read receipts under a message: "Seen by alice, bob".
    Seen(MsgId, String),
}

/// What identifies a row for the keyed list. Everything that changes a row's look is part of its key, so a changed
/// row is rebuilt and an unchanged one is left alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// A day separator, by its label.
    Day(String),
    /// The unread divider (one at most).
    Unread,
    /// A message: id, own, acked, continues a group, changes applied.
    Message(MsgId, bool, bool, bool, u32),
    /// A presence notice, by its local key.
    Presence(u64),
    /// A moderation line, by its id.
    Moderation(MsgId),
    /// A client notice, by its local key.
    Notice(u64),
    /// An own message in flight: client id, failed, continues a group.
    Outgoing(String, bool, bool),
    /// Receipts under a message, by the message and what they say.
    Seen(MsgId, String),
}

impl Row {
    /// The row's key.
    pub fn key(&self) -> RowKey {
        match self {
            Self::Day(label) => RowKey::Day(label.clone()),
            Self::Unread => RowKey::Unread,
            Self::Message { posted, cont } => {
                RowKey::Message(posted.id, posted.own, posted.acked, *cont, posted.rev)
            }
            Self::Presence(line) => RowKey::Presence(line.key),
            Self::Moderation(line) => RowKey::Moderation(line.id),
            Self::Notice { key, .. } => RowKey::Notice(*key),
            Self::Seen(id, text) => RowKey::Seen(*id, text.clone()),
            Self::Outgoing { out, cont } => RowKey::Outgoing(
                out.cid.clone(),
                matches!(out.status, SendStatus::Failed { .. }),
                *cont,
            ),
        }
    }
}

/// Lays out a room: the stored timeline with day separators and sender groups, then the outbox.
pub fn rows(room: &Room) -> Vec<Row> {
    let mut rows = Vec::with_capacity(room.items().len() + room.outbox().len() + 4);
    let mut day = None;
    let mut last: Option<(&Nick, u64)> = None;
    let seen = room.seen_by();
    for item in room.items() {
        // A client notice has no server time, so it belongs to the day around it.
        let ts = match item {
            Item::Message(m) => Some(m.ts),
            Item::Presence(line) => Some(line.ts),
            Item::Moderation(line) => Some(line.ts),
            Item::Notice { .. } => None,
        };
        if let Some(ts) = ts {
            let this_day = browser::day(ts);
            if day != Some(this_day) {
                day = Some(this_day);
                rows.push(Row::Day(browser::day_label(ts)));
                last = None;
            }
        }
        match item {
            Item::Message(m) if Some(m.id) == room.first_unread() => {
                rows.push(Row::Unread);
                rows.push(Row::Message {
                    posted: m.clone(),
                    cont: false,
                });
                last = Some((&m.nick, m.ts));
            }
            Item::Message(m) => {
                let cont = last.is_some_and(|(nick, at)| {
                    nick == &m.nick && m.ts.saturating_sub(at) < GROUP_MS
                });
                rows.push(Row::Message {
                    posted: m.clone(),
                    cont,
                });
                last = Some((&m.nick, m.ts));
            }
            Item::Presence(line) => {
                rows.push(Row::Presence(line.clone()));
                last = None;
            }
            Item::Moderation(line) => {
                rows.push(Row::Moderation(line.clone()));
                last = None;
            }
            Item::Notice { key, text } => {
                rows.push(Row::Notice {
                    key: *key,
                    text: text.clone(),
                });
                last = None;
            }
        }
        // Receipts go right under the message they name.
        if let Item::Message(m) = item
            && let Some((_, who)) = seen.iter().find(|(id, _)| *id == m.id)
        {
            rows.push(Row::Seen(m.id, crate::text::seen_by(who)));
            last = None;
        }
    }
    let mut own_last = last.is_some_and(|(nick, _)| nick == room.nick());
    for out in room.outbox().iter().filter(|o| o.is_message()) {
        rows.push(Row::Outgoing {
            out: out.clone(),
            cont: own_last,
        });
        own_last = true;
    }
    rows
}

/// Renders one row.
pub fn row_view(row: Row, room: RoomName) -> AnyView {
    match row {
        Row::Day(label) => view! {
            <div class="day" role="separator" aria-label=label.clone()>
                <span>{label.clone()}</span>
            </div>
        }
        .into_any(),
        Row::Unread => view! {
            <div class="day unread-divider" role="separator" aria-label="New messages">
                <span>"New messages"</span>
            </div>
        }
        .into_any(),
        Row::Presence(PresenceLine {
            nick,
            event,
            from,
            ts,
            ..
        }) => {
            // "bob joined", "bob left", "bob is now robert".
            let (who, verb, after) = match (event, from) {
                (PresenceKind::Joined, _) => (nick.to_string(), "joined", None),
                (PresenceKind::Left, _) => (nick.to_string(), "left", None),
                (PresenceKind::Renamed, Some(from)) => {
                    (from.to_string(), "is now", Some(nick.to_string()))
                }
                (PresenceKind::Renamed, None) => (nick.to_string(), "renamed", None),
            };
            view! {
                <p class="presence" class:left=event == PresenceKind::Left>
                    <strong>{who}</strong>
                    " "
                    {verb}
                    {after.map(|to| view! { " " <strong>{to}</strong> })}
                    " · "
                    <time datetime=browser::iso_time(ts) title=browser::full_time(ts)>
                        {browser::clock(ts)}
                    </time>
                </p>
            }
            .into_any()
        }
        Row::Moderation(ModLine { text, ts, .. }) => view! {
            <p class="presence mod">
                {text}
                " · "
                <time datetime=browser::iso_time(ts) title=browser::full_time(ts)>
                    {browser::clock(ts)}
                </time>
            </p>
        }
        .into_any(),
        Row::Seen(_, text) => view! { <p class="seen">{text}</p> }.into_any(),
        Row::Notice { text, .. } => {
            view! { <p class="presence notice" role="note">{text}</p> }.into_any()
        }
        Row::Message { posted, cont } => {
            let (me, moderator) = use_ui()
                .client
                .chat()
                .with_untracked(|c| {
                    c.room(&room)
                        .map(|r| (Some(r.nick().to_string()), r.moderator()))
                })
                .unwrap_or_default();
            message_view(posted, cont, me, moderator)
        }
        Row::Outgoing { out, cont } => outgoing_view(out, cont, room),
    }
}

/// A message's text: plain text, links (opened in a new tab, no referrer, no follow) and mentions of the reader.
fn text_view(text: &str, me: Option<&str>) -> impl IntoView + use<> {
    crate::text::segments(text, me)
        .into_iter()
        .map(|segment| match segment {
            Segment::Text(t) => t.into_any(),
            Segment::Link(url) => view! {
                <a href=url.clone() target="_blank" rel="noopener noreferrer nofollow">{url.clone()}</a>
            }
            .into_any(),
            Segment::Mention(m) => view! { <mark class="mention">{m}</mark> }.into_any(),
        })
        .collect_view()
}

fn message_view(m: Posted, cont: bool, me: Option<String>, moderator: bool) -> AnyView {
    let nick = m.nick.to_string();
    let mentioned = !m.own
        && me
            .as_deref()
            .is_some_and(|me| crate::text::mentions(&m.text, me));
    let time = browser::clock(m.ts);
    let mine = me.as_deref() == Some(nick.as_str());
    let deleted = m.deleted;
    view! {
        <article
            class="msg"
            class:own=m.own
            class:cont=cont
            class:mentioned=mentioned
            data-id=m.id.to_string()
            tabindex="-1"
        >
            <div class="gutter">
                {if cont {
                    view! {
                        <time class="hover-time" datetime=browser::iso_time(m.ts) title=browser::full_time(m.ts)>
                            {time.clone()}
                        </time>
                    }
                        .into_any()
                } else {
                    view! { <Avatar nick=nick.clone() /> }.into_any()
                }}
            </div>
            <div class="body">
                {if cont {
                    view! { <span class="sr-only">{format!("{nick} at {time}: ")}</span> }.into_any()
                } else {
                    view! {
                        <header class="meta">
                            <span class="nick">{nick.clone()}</span>
                            {m.own.then(|| view! { <span class="tag">"you"</span> })}
                            <time datetime=browser::iso_time(m.ts) title=browser::full_time(m.ts)>
                                {time.clone()}
                            </time>
                        </header>
                    }
                        .into_any()
                }}
                {m.reply_to.filter(|_| !deleted).map(|q| view! {
                    <button class="quote" data-act="quote" data-to=q.id.to_string()>
                        <span class="sr-only">"In reply to "</span>
                        <b>{q.nick.to_string()}</b>
                        " "
                        {q.text}
                    </button>
                })}
                <p class="text" class:tombstone=deleted>
                    {text_view(if deleted { "message deleted" } else { &m.text }, me.as_deref())}
                </p>
                // Parts a message may lack are hidden rather than left out: one shape for every message keeps
                // the page's code small.
                <span class="edited" hidden={m.edited_at.is_none() || deleted} title=m.edited_at.map(browser::full_time)>
                    "(edited)"
                </span>
                <div class="reactions">
                    {m.reactions.into_iter().map(|r| {
                        let label = format!("{} {}", r.emoji, r.count);
                        view! {
                            <button class="chip" data-act="chip" data-emoji=r.emoji aria-pressed=r.mine.to_string()>
                                {label}
                            </button>
                        }
                    }).collect_view()}
                </div>
            </div>
            {m.acked.then(|| view! { <span class="tick" title="Sent">"✓"<span class="sr-only">" sent"</span></span> })}
            <div class="actions" role="toolbar" aria-label="Message actions" hidden=deleted>
                <button data-act="reply">"Reply"</button>
                <details>
                    <summary>"React"</summary>
                    <div class="picker">
                        {shared::validate::EMOJI.map(|e| view! {
                            <button data-act="react" data-emoji=e aria-label=format!("React with {e}")>{e}</button>
                        }).collect_view()}
                    </div>
                </details>
                <button data-act="edit" hidden={!mine}>"Edit"</button>
                <button data-act="delete" hidden={!(mine || moderator)}>"Delete"</button>
            </div>
        </article>
    }
    .into_any()
}

/// Serves every message action button of a room's timeline: a click (or Enter/Space, which click a button) on an
/// element marked `data-act` inside a message marked `data-id`.
pub fn on_action(ev: &web_sys::MouseEvent, room: &RoomName) {
    use wasm_bindgen::JsCast;
    let Some(button) = ev
        .target()
        .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
        .and_then(|t| t.closest("[data-act]").ok().flatten())
    else {
        return;
    };
    let attr = |el: &web_sys::Element, name: &str| el.get_attribute(name).unwrap_or_default();
    let Some(id) = button
        .closest("[data-id]")
        .ok()
        .flatten()
        .and_then(|m| attr(&m, "data-id").parse::<MsgId>().ok())
    else {
        return;
    };
    let ui = use_ui();
    let client = ui.client;
    let emoji = attr(&button, "data-emoji");
    let found = client.chat().with_untracked(|c| {
        c.room(room)?.message(id).map(|m| {
            let mine = m.reactions.iter().any(|r| r.emoji == emoji && r.mine);
            (m.nick.to_string(), m.text.clone(), mine)
        })
    });
    let Some((nick, text, mine)) = found else {
        return;
    };
    let compose = |edit| {
        let quote = format!("{nick}: {}", shared::validate::quote(&text));
        ui.compose.set(Some(Compose {
            room: room.clone(),
            id,
            edit,
            quote,
        }));
        if let Some(input) = document().get_element_by_id("composer-input")
            && let Ok(input) = input.dyn_into::<web_sys::HtmlElement>()
        {
            let _ = input.focus();
        }
    };
    match attr(&button, "data-act").as_str() {
        "reply" => compose(false),
        "edit" => compose(true),
        // Deleting cannot be undone: the first press turns the button into "Really delete?", the second deletes.
        "delete" => {
            let _ = button.set_attribute("data-act", "delete-confirm");
            button.set_text_content(Some("Really delete?"));
            if let Ok(button) = button.dyn_into::<web_sys::HtmlElement>() {
                let _ = button.focus();
            }
        }
        "delete-confirm" => client.act(room, String::new(), Act::Delete { id }),
        act @ ("react" | "chip") => {
            if let Some(details) = button.closest("details").ok().flatten() {
                let _ = details.remove_attribute("open");
            }
            if act == "chip" {
                PRESSED.set(Some(button.clone()));
            }
            client.act(
                room,
                String::new(),
                Act::React {
                    id,
                    emoji,
                    on: !mine,
                },
            );
        }
        "quote" => ui.jump.set(attr(&button, "data-to").parse().ok()),
        _ => {}
    }
}

fn outgoing_view(out: Outgoing, cont: bool, room: RoomName) -> AnyView {
    let client = use_ui().client;
    let nick = client
        .chat()
        .with_untracked(|c| c.room(&room).map(|r| r.nick().to_string()))
        .unwrap_or_default();
    // Queued and pending look alike: either way the client is still delivering it by itself.
    let failed = match &out.status {
        SendStatus::Queued | SendStatus::Pending => None,
        SendStatus::Failed { reason, .. } => Some(reason.clone()),
    };
    let pending = failed.is_none();
    let (retry_room, discard_room) = (room.clone(), room);
    let (retry_cid, discard_cid) = (out.cid.clone(), out.cid.clone());
    view! {
        <article class="msg own" class:cont=cont class:pending=pending class:failed=!pending>
            <div class="gutter">
                {(!cont).then(|| view! { <Avatar nick=nick.clone() /> })}
            </div>
            <div class="body">
                {if cont {
                    view! { <span class="sr-only">{format!("{nick}: ")}</span> }.into_any()
                } else {
                    view! {
                        <header class="meta">
                            <span class="nick">{nick.clone()}</span>
                            <span class="tag">"you"</span>
                        </header>
                    }
                        .into_any()
                }}
                <p class="text">{text_view(&out.text, None)}</p>
                {match failed {
                    None => view! { <p class="send-state">"Sending…"</p> }.into_any(),
                    Some(reason) => view! {
                        <div class="send-error" role="alert">
                            <span>"Not sent: " {reason}</span>
                            <button
                                class="link-button"
                                on:click=move |_| client.retry(&retry_room, &retry_cid)
                            >
                                "Retry"
                            </button>
                            <button
                                class="link-button subtle"
                                on:click=move |_| client.discard(&discard_room, &discard_cid)
                            >
                                "Discard"
                            </button>
                        </div>
                    }
                        .into_any(),
                }}
            </div>
        </article>
    }
    .into_any()
}
