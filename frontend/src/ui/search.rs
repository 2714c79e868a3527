//! Search results in the main area: each found message with its room, author and time and the matched parts marked,
//! "More results" for older ones, and what went wrong if anything. Choosing a result opens its room (joining it if
//! needed) and brings the message into view, highlighted.

use leptos::prelude::*;
use shared::frame::Found;

use crate::app::use_ui;
use crate::browser;

/// The results of the search on screen.
#[component]
pub fn SearchView() -> impl IntoView {
    let ui = use_ui();
    let client = ui.client;
    let chat = client.chat();
    let search = Memo::new(move |_| chat.with(|c| c.search().cloned()).unwrap_or_default());
    let query = move || search.with(|s| s.query.clone());
    view! {
        <section class="room search" aria-labelledby="search-title">
            <header class="room-head">
                <h1 id="search-title" class="room-title">
                    "Results for “" {query} "”"
                </h1>
                <button class="button ghost small" on:click=move |_| client.end_search()>
                    "Close"
                </button>
            </header>
            <div class="timeline">
                <ul class="results" aria-label="Messages found">
                    {move || search.get().results.into_iter().map(result_view).collect_view()}
                </ul>
                <p class="placeholder" role="status">
                    {move || {
                        search.with(|s| match (&s.error, s.loading) {
                            (Some(error), _) => error.clone(),
                            (None, true) => "Searching…".into(),
                            (None, false) if s.results.is_empty() => {
                                format!("No messages match “{}”.", s.query)
                            }
                            _ => String::new(),
                        })
                    }}
                </p>
                <button
                    class="button"
                    hidden=move || search.with(|s| s.complete || s.loading || s.results.is_empty())
                    on:click=move |_| client.more_results()
                >
                    "More results"
                </button>
            </div>
        </section>
    }
}

/// One message found: a button that opens it in its room.
fn result_view(found: Found) -> impl IntoView {
    let ui = use_ui();
    let m = found.message;
    let (room, id) = (m.room.clone(), m.id);
    let pieces = crate::text::marked(&m.text, &found.marks);
    view! {
        <li>
            <button
                class="result"
                on:click=move |_| {
                    ui.open(room.clone());
                    ui.jump.set(Some(id));
                    ui.client.end_search();
                }
            >
                <span class="meta">
                    <span class="result-room">"#" {m.room.to_string()}</span>
                    <span class="nick">{m.nick.to_string()}</span>
                    <time datetime=browser::iso_time(m.ts) title=browser::full_time(m.ts)>
                        {format!("{} {}", browser::day_label(m.ts), browser::clock(m.ts))}
                    </time>
                </span>
                <span class="text">
                    {pieces
                        .into_iter()
                        .map(|(piece, hit)| if hit { view! { <mark>{piece}</mark> }.into_any() } else { piece.into_any() })
                        .collect_view()}
                </span>
            </button>
        </li>
    }
}
