//! Thin wrappers over the browser APIs the app needs besides the socket: localStorage, the URL, clocks (wall and
//! monotonic) and media queries. Each swallows the browser's errors (storage disabled, private mode) because none of
//! them is worth breaking the chat over.

use leptos::prelude::window;
use shared::{Nick, RoomName, ValidationError};
use wasm_bindgen::JsValue;

const NICK_KEY: &str = "roomcast.nick";
const TOKEN_KEY: &str = "roomcast.token";
const ROOMS_KEY: &str = "roomcast.rooms";
const PERSON_KEY: &str = "roomcast.person";
const ROOM_PREFIX: &str = "/r/";

fn storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}

/// The nickname chosen on an earlier visit, if it is still valid.
pub fn load_nick() -> Option<Nick> {
    let raw = storage()?.get_item(NICK_KEY).ok().flatten()?;
    Nick::parse(&raw).ok()
}

/// Remembers the nickname for the next visit.
pub fn save_nick(nick: &Nick) {
    if let Some(storage) = storage() {
        let _ = storage.set_item(NICK_KEY, nick.as_str());
    }
}

/// Who this browser is to the server (`join`'s `person`): made once at random and kept, so every tab and every
/// reconnect of this person is one member, and another person cannot take the nick meanwhile. Without storage it
/// lasts as long as the page.
pub fn person() -> String {
    let stored = storage().and_then(|s| s.get_item(PERSON_KEY).ok().flatten());
    if let Some(person) = stored.filter(|p| shared::validate::person(p)) {
        return person;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let part = || (random() * f64::from(u32::MAX)) as u32;
    let person = format!("p-{:08x}{:08x}{:08x}", part(), part(), part());
    if let Some(storage) = storage() {
        let _ = storage.set_item(PERSON_KEY, &person);
    }
    person
}

/// The sign-in token: from the URL fragment (then remembered, and the fragment cleared from the address bar), else
/// the one remembered from an earlier visit.
pub fn load_token() -> Option<String> {
    let location = window().location();
    if let Some(token) = location
        .hash()
        .ok()
        .and_then(|h| crate::token::from_fragment(&h))
    {
        if let Some(storage) = storage() {
            let _ = storage.set_item(TOKEN_KEY, &token);
        }
        if let (Ok(history), Ok(path)) = (window().history(), location.pathname()) {
            let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&path));
        }
        return Some(token);
    }
    storage()?.get_item(TOKEN_KEY).ok().flatten()
}

/// Forgets the remembered sign-in token (its session was revoked: it will never work again).
pub fn forget_token() {
    if let Some(storage) = storage() {
        let _ = storage.remove_item(TOKEN_KEY);
    }
}

/// The rooms open on the last visit, so a reload brings them all back.
pub fn load_rooms() -> Vec<RoomName> {
    storage()
        .and_then(|s| s.get_item(ROOMS_KEY).ok().flatten())
        .map(|raw| {
            raw.split(',')
                .filter_map(|name| RoomName::parse(name).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Remembers the open rooms. Room names cannot contain commas, so a comma list is unambiguous.
pub fn save_rooms(rooms: &[RoomName]) {
    if let Some(storage) = storage() {
        let list: Vec<&str> = rooms.iter().map(RoomName::as_str).collect();
        let _ = storage.set_item(ROOMS_KEY, &list.join(","));
    }
}

/// What the address bar names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No room: `/` or anything outside `/r/`.
    Home,
    /// `/r/<room>` with a valid room name.
    Room(RoomName),
    /// `/r/<something>` that is not a valid room name: the text, and why.
    Invalid(String, ValidationError),
}

/// Reads the room from the current URL.
pub fn route() -> Route {
    let path = window().location().pathname().unwrap_or_default();
    let Some(raw) = path.strip_prefix(ROOM_PREFIX) else {
        return Route::Home;
    };
    let raw = raw.trim_end_matches('/');
    let name = js_sys::decode_uri_component(raw)
        .ok()
        .and_then(|s| s.as_string())
        .unwrap_or_else(|| raw.to_owned());
    if name.is_empty() {
        return Route::Home;
    }
    match RoomName::parse(&shared::validate::normalize_room(&name)) {
        Ok(room) => Route::Room(room),
        Err(e) => Route::Invalid(name, e),
    }
}

/// The shareable path of a room.
pub fn room_path(room: &RoomName) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// Points the address bar at `room` (or home), adding a history entry unless `replace`.
pub fn set_route(room: Option<&RoomName>, replace: bool) {
    let path = room.map_or_else(|| "/".to_owned(), room_path);
    if window().location().pathname().ok().as_deref() == Some(path.as_str()) {
        return;
    }
    let Ok(history) = window().history() else {
        return;
    };
    let _ = if replace {
        history.replace_state_with_url(&JsValue::NULL, "", Some(&path))
    } else {
        history.push_state_with_url(&JsValue::NULL, "", Some(&path))
    };
}

/// Shows the unread count in the tab title, where it is visible from other tabs.
pub fn set_title(unread: u32) {
    let title = if unread == 0 {
        "Roomcast".to_owned()
    } else {
        format!("({unread}) Roomcast")
    };
    if let Some(doc) = window().document() {
        doc.set_title(&title);
    }
}

/// A random number in `[0, 1)` for backoff jitter and client id prefixes.
pub fn random() -> f64 {
    js_sys::Math::random()
}

/// Milliseconds on the page's monotonic clock (`performance.now()`), for timeouts: unlike the wall clock it does
/// not jump when the system time is corrected.
pub fn now() -> u64 {
    let ms = window()
        .performance()
        .map_or_else(js_sys::Date::now, |p| p.now());
    // The clock is a non-negative millisecond count well below 2^53.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = ms as u64;
    ms
}

/// Milliseconds since the Unix epoch on the wall clock, to compare with the server's times (`until`).
pub fn wall() -> u64 {
    // Far below 2^53 and never negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = js_sys::Date::now() as u64;
    ms
}

/// Whether the browser believes it has a network at all.
pub fn online() -> bool {
    window().navigator().on_line()
}

/// Whether the main pointer is precise (mouse, trackpad). Focus moves to the message box only then: on a phone
/// that would pop the on-screen keyboard over the conversation at every room switch.
pub fn fine_pointer() -> bool {
    window()
        .match_media("(pointer: fine)")
        .ok()
        .flatten()
        .is_some_and(|mq| mq.matches())
}

/// Where browser notifications stand: `None` when the browser has none (or forbids them here, as on plain HTTP).
pub fn notifications() -> Option<web_sys::NotificationPermission> {
    let supported =
        js_sys::Reflect::has(&window(), &JsValue::from_str("Notification")).unwrap_or(false);
    supported.then(web_sys::Notification::permission)
}

/// Asks the person to allow notifications; `done` gets the answer.
pub fn ask_for_notifications(done: impl FnOnce(web_sys::NotificationPermission) + 'static) {
    use wasm_bindgen::closure::Closure;
    let Ok(promise) = web_sys::Notification::request_permission() else {
        return;
    };
    let answer = Closure::once(move |_: JsValue| done(web_sys::Notification::permission()));
    let _ = promise.then(&answer);
    answer.forget();
}

/// Shows a notification if the person allowed them, and returns it (to close it once read). `tag` groups them: a
/// newer one with the same tag replaces the older (one per room, not a pile).
pub fn notify(title: &str, body: &str, tag: &str) -> Option<web_sys::Notification> {
    if notifications() != Some(web_sys::NotificationPermission::Granted) {
        return None;
    }
    let options = web_sys::NotificationOptions::new();
    options.set_body(body);
    options.set_tag(tag);
    web_sys::Notification::new_with_options(title, &options).ok()
}

/// Whether the window is wide enough for side panels next to the conversation (else they open as sheets).
pub fn wide() -> bool {
    window()
        .match_media("(min-width: 961px)")
        .ok()
        .flatten()
        .is_some_and(|mq| mq.matches())
}

fn date(ts: u64) -> js_sys::Date {
    // Millisecond timestamps stay far below 2^53, so the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    js_sys::Date::new(&JsValue::from_f64(ts as f64))
}

/// The local wall-clock time of a timestamp, `14:05`.
pub fn clock(ts: u64) -> String {
    let d = date(ts);
    format!("{:02}:{:02}", d.get_hours(), d.get_minutes())
}

/// The full local date and time, for tooltips.
pub fn full_time(ts: u64) -> String {
    String::from(date(ts).to_locale_string("default", &JsValue::UNDEFINED))
}

/// A machine-readable timestamp for `<time datetime>`.
pub fn iso_time(ts: u64) -> String {
    String::from(date(ts).to_iso_string())
}

/// The local calendar day of a timestamp, comparable between messages.
pub fn day(ts: u64) -> (u32, u32, u32) {
    let d = date(ts);
    (d.get_full_year(), d.get_month(), d.get_date())
}

/// A day separator's label: "Today", "Yesterday", or "Tuesday, 12 May" (with the year when it is not this one).
pub fn day_label(ts: u64) -> String {
    const WEEKDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let now = js_sys::Date::now();
    // The clock is a positive millisecond count well below 2^53.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let now = now as u64;
    let today = day(now);
    if day(ts) == today {
        return "Today".into();
    }
    if day(ts + 86_400_000) == today {
        return "Yesterday".into();
    }
    let d = date(ts);
    let weekday = WEEKDAYS[d.get_day() as usize % 7];
    let month = MONTHS[d.get_month() as usize % 12];
    if d.get_full_year() == today.0 {
        format!("{weekday}, {} {month}", d.get_date())
    } else {
        format!("{weekday}, {} {month} {}", d.get_date(), d.get_full_year())
    }
}
