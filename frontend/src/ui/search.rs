//! Search results in the main area: each found message with its room, author and time and the matched parts marked,
//! "More results" for older ones, and what went wrong if anything. Choosing a result opens its room (joining it if
//! needed) and brings the message into view, highlighted.
//!
//! The results are written straight into the DOM, as text nodes and `<mark>` elements (never as HTML), and one
//! listener serves every result: the view machinery for a list that only ever grows cost the page 4 KB.

use leptos::html;
use leptos::prelude::*;
use shared::RoomName;
use wasm_bindgen::{JsCast, UnwrapThrowExt};

use crate::app::use_ui;
use crate::browser;

/// The results of the search on screen.
#[component]
pub fn SearchView() -> impl IntoView {
    let ui = use_ui();
    let client = ui.client;
    let chat = client.chat();
    let list = NodeRef::<html::Ul>::new();
    // How many results are in the list; fewer in the search means a new search.
    let shown = StoredValue::new(0_usize);
    Effect::new(move |_| {
        let Some(ul) = list.get() else {
            return;
        };
        chat.with(|c| {
            let Some(search) = c.search() else {
                return;
            };
            if search.results.len() < shown.get_value() {
                ul.set_text_content(None);
                shown.set_value(0);
            }
            for found in &search.results[shown.get_value()..] {
                let _ = ul.append_child(&result(&found.message, &found.marks));
            }
            shown.set_value(search.results.len());
        });
    });
    let status = move || {
        chat.with(|c| {
            let s = c.search()?;
            Some(match (&s.error, s.loading) {
                (Some(error), _) => error.clone(),
                (None, true) => "Searching…".into(),
                (None, false) if s.results.is_empty() => {
                    format!("No messages match “{}”.", s.query)
                }
                _ => String::new(),
            })
        })
    };
    let no_more = move || {
        chat.with(|c| {
            c.search()
                .is_none_or(|s| s.complete || s.loading || s.results.is_empty())
        })
    };
    let title = move || chat.with(|c| c.search().map(|s| format!("Results for “{}”", s.query)));
    let open = move |ev: leptos::ev::MouseEvent| {
        let Some(button) = ev
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
            .and_then(|t| t.closest("[data-id]").ok().flatten())
        else {
            return;
        };
        let attr = |name| button.get_attribute(name).unwrap_or_default();
        if let (Ok(room), Ok(id)) = (RoomName::parse(&attr("data-room")), attr("data-id").parse()) {
            client.end_search();
            ui.open(room);
            ui.jump.set(Some(id));
        }
    };
    view! {
        <section class="room search" aria-labelledby="search-title">
            <header class="room-head">
                <h1 id="search-title" class="room-title">
                    {title}
                </h1>
                <button class="button ghost small" on:click=move |_| client.end_search()>
                    "Close"
                </button>
            </header>
            <div class="timeline">
                <ul class="results" aria-label="Messages found" node_ref=list on:click=open></ul>
                <p class="placeholder" role="status">
                    {status}
                </p>
                <button class="button" hidden=no_more on:click=move |_| client.more_results()>
                    "More results"
                </button>
            </div>
        </section>
    }
}

/// An element with a class and, if given, its text.
fn el(tag: &str, class: &str, text: Option<&str>) -> web_sys::Element {
    // `expect_throw`: a plain `expect` would format the browser's error with `Debug`, code the page need not carry.
    let el = document().create_element(tag).expect_throw("a known tag");
    if !class.is_empty() {
        el.set_class_name(class);
    }
    el.set_text_content(text);
    el
}

/// One message found, as `<li><button data-room data-id>` with its room, author, time and marked text.
fn result(m: &shared::ChatMessage, marks: &[(u32, u32)]) -> web_sys::Element {
    let li = el("li", "", None);
    let button = el("button", "result", None);
    let _ = button.set_attribute("data-room", m.room.as_str());
    let _ = button.set_attribute("data-id", &m.id.to_string());
    let meta = el("span", "meta", None);
    let room = format!("#{}", m.room);
    let when = format!("{} {}", browser::day_label(m.ts), browser::clock(m.ts));
    let time = el("time", "", Some(&when));
    let _ = time.set_attribute("title", &browser::full_time(m.ts));
    for part in [
        el("span", "result-room", Some(&room)),
        el("span", "nick", Some(m.nick.as_str())),
        time,
    ] {
        let _ = meta.append_child(&part);
    }
    let text = el("span", "text", None);
    for (piece, hit) in crate::text::marked(&m.text, marks) {
        let node: web_sys::Node = if hit {
            el("mark", "", Some(&piece)).into()
        } else {
            document().create_text_node(&piece).into()
        };
        let _ = text.append_child(&node);
    }
    let _ = button.append_child(&meta);
    let _ = button.append_child(&text);
    let _ = li.append_child(&button);
    li
}
