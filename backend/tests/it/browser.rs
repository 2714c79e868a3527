//! The browser client end to end: two headless Chromium pages, each served by its own replica, chatting through a
//! real Redis, and one of them riding out a restart of its replica. Screenshots go to the test output directory.
//! The WebDriver kit (chromedriver, pages, waits, screenshots) is `testkit::browser`; what a person does in
//! Roomcast's pages is [`Chat`], here.

use shared::frame;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use testkit::browser::{Chromedriver, ENTER, Locator, Page, TAB, output_dir, workspace};

use crate::harness::{Redis, Replica, config, replica_process};

/// The room both pages meet in (a fresh Redis per test, so no other test shares it).
const ROOM: &str = "e2e";

/// Every chat message on a page, as `[nick, text]`, oldest first. A message that continues its sender's group has no
/// header of its own, so it takes the nickname of the header above it.
const MESSAGES: &str = r"(() => {
    let nick = null;
    return [...document.querySelectorAll('.timeline .msg')].map(m => {
        const header = m.querySelector('.meta .nick');
        if (header) nick = header.textContent;
        return [nick, m.querySelector('.text').textContent];
    });
})()";

/// The status line as `[state, text]` (its `data-state` and its text).
const STATUS: &str = r"(() => {
    const s = document.querySelector('.status');
    return s ? [s.dataset.state, s.querySelector('.status-text').textContent] : ['', ''];
})()";

/// The built browser client (`ROOMCAST_DIST`, else `<workspace>/dist`). A missing build fails the test: skipping
/// would make a test that cannot fail.
fn dist_dir() -> PathBuf {
    let dist =
        std::env::var_os("ROOMCAST_DIST").map_or_else(|| workspace().join("dist"), PathBuf::from);
    assert!(
        dist.join("index.html").is_file(),
        "{} has no index.html: build the browser client first with `cargo xtask frontend` (or run `cargo xtask test`)",
        dist.display()
    );
    dist
}

/// Opens a fresh page (see [`Page::open`]) whose failed waits show its status line and messages.
async fn open(driver: &Chromedriver, name: &'static str, out: &Path) -> Page {
    explained(Page::open(driver, name, out).await)
}

/// A page whose failed waits show its status line and messages.
fn explained(page: Page) -> Page {
    page.explained_by(format!(
        "return 'status: ' + JSON.stringify({STATUS}) + '\\nmessages: ' + JSON.stringify({MESSAGES});"
    ))
}

/// What a person does in Roomcast's pages, and what the test reads from them.
trait Chat {
    /// Opens a room by its address, as a person following a shared link does, and picks a nickname on the welcome
    /// screen (a fresh profile has none), then waits for the room with its message box.
    async fn enter_room(&self, replica: SocketAddr, nick: &str) {
        self.enter_room_at(replica, ROOM, nick).await;
    }

    /// [`Chat::enter_room`] through the address `/r/<as_typed>`.
    async fn enter_room_at(&self, replica: SocketAddr, as_typed: &str, nick: &str);

    /// Types `text` into the message box and presses Enter, then waits until the server acknowledged it.
    async fn send(&self, text: &str) {
        self.type_message(text).await;
        self.wait_acked(text).await;
    }

    /// Types `text` into the message box and presses Enter.
    async fn type_message(&self, text: &str);

    /// Waits until the own message `text` shows as acknowledged.
    async fn wait_acked(&self, text: &str);

    /// Waits until the timeline shows a message `text` under the nickname `nick`.
    async fn wait_message(&self, nick: &str, text: &str);

    /// The timeline's messages as `(nick, text)`, oldest first.
    async fn messages(&self) -> Vec<(String, String)>;

    /// Waits until the status line says the page is connected to `node`.
    async fn wait_connected(&self, node: &str);
}

impl Chat for Page {
    async fn enter_room_at(&self, replica: SocketAddr, as_typed: &str, nick: &str) {
        self.goto(&format!("http://{replica}/r/{as_typed}")).await;
        self.wait_for("the welcome screen's nickname field", "#welcome-nick")
            .await;
        let input = self
            .client
            .find(Locator::Css("#welcome-nick"))
            .await
            .unwrap();
        input.send_keys(&format!("{nick}{ENTER}")).await.unwrap();
        self.wait_for("the room's message box", "#composer-input")
            .await;
    }

    async fn type_message(&self, text: &str) {
        let input = self
            .client
            .find(Locator::Css("#composer-input"))
            .await
            .unwrap();
        input.send_keys(&format!("{text}{ENTER}")).await.unwrap();
    }

    async fn wait_acked(&self, text: &str) {
        self.wait_until(
            &format!("own message {text:?} acknowledged"),
            "return [...document.querySelectorAll('.timeline .msg.own')]
                .some(m => m.querySelector('.text').textContent === arguments[0] && m.querySelector('.tick'));",
            json!(text),
        )
        .await;
    }

    async fn wait_message(&self, nick: &str, text: &str) {
        self.wait_until(
            &format!("message {text:?} from {nick}"),
            &format!(
                "const [nick, text] = arguments[0];
                 return {MESSAGES}.some(([n, t]) => n === nick && t === text);"
            ),
            json!([nick, text]),
        )
        .await;
    }

    async fn messages(&self) -> Vec<(String, String)> {
        let rows: Vec<(Option<String>, String)> =
            self.js(&format!("return {MESSAGES};"), Value::Null).await;
        rows.into_iter()
            .map(|(nick, text)| (nick.unwrap_or_default(), text))
            .collect()
    }

    async fn wait_connected(&self, node: &str) {
        self.wait_until(
            &format!("status line \"Connected to {node}\""),
            "const s = document.querySelector('.status');
             return !!s && s.dataset.state === 'connected'
                 && s.querySelector('.status-text').textContent === 'Connected to ' + arguments[0];",
            json!(node),
        )
        .await;
    }
}

/// What every browser test starts with: chromedriver, Redis, and two replicas serving the built client.
struct Stage {
    dist: PathBuf,
    out: PathBuf,
    driver: Chromedriver,
    redis: Redis,
    one: Replica,
    two: Replica,
}

impl Stage {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Stage::start`] with both replicas' configuration changed by `tweak`.
    async fn start_with(tweak: impl Fn(&mut backend::Config)) -> Self {
        let dist = dist_dir();
        let out = output_dir();
        let driver = Chromedriver::start().await;
        let redis = Redis::start().await;
        let config = |node, port| {
            let mut c = replica_config(&redis, &dist, node, port);
            tweak(&mut c);
            c
        };
        let one = Replica::start_with(config("replica-1", 0)).await;
        let two = Replica::start_with(config("replica-2", 0)).await;
        Self {
            dist,
            out,
            driver,
            redis,
            one,
            two,
        }
    }
}

/// A test replica on the Redis bus serving the browser client, named so its status line can be recognised.
fn replica_config(redis: &Redis, dist: &Path, node: &str, port: u16) -> backend::Config {
    let mut c = config(Some(&redis.url()));
    c.static_dir = dist.to_path_buf();
    c.node_id = Some(node.into());
    c.port = port;
    c
}

/// Two people in one room through two replicas and Redis, as a browser shows it: the join notice, a message each way,
/// markup kept as text; then one replica restarts and its page reconnects by itself and catches up exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_two_replicas_chat_and_one_survives_its_replica_restarting() {
    let Stage {
        dist,
        out,
        driver,
        redis,
        mut one,
        two,
    } = Stage::start().await;
    let a = open(&driver, "A", &out).await;
    let b = open(&driver, "B", &out).await;

    // A joins first and sees the empty room; B's arrival then shows on A as a join notice.
    a.enter_room(one.addr, "alice").await;
    a.wait_connected("replica-1").await;
    a.wait_for("the empty room", ".placeholder-title").await;
    // B follows a link typed loosely: /r/E2E opens the room e2e, and the address bar says so.
    b.enter_room_at(two.addr, &ROOM.to_uppercase(), "bob").await;
    b.wait_connected("replica-2").await;
    b.wait_until(
        "the address bar to show the room's own name",
        "return location.pathname === arguments[0];",
        json!(format!("/r/{ROOM}")),
    )
    .await;
    a.wait_until(
        "the notice \"bob joined\"",
        "return [...document.querySelectorAll('.timeline .presence')]
            .some(p => p.textContent.startsWith(arguments[0]));",
        json!("bob joined"),
    )
    .await;

    // A message each way, across replicas.
    a.send("Hello from replica one!").await;
    b.wait_message("alice", "Hello from replica one!").await;
    b.send("Hi alice, bob here on replica two.").await;
    a.wait_message("bob", "Hi alice, bob here on replica two.")
        .await;

    // Markup in a message is text: it shows literally and creates no element.
    let markup = "<b>bold</b>";
    a.send(markup).await;
    b.wait_message("alice", markup).await;
    for page in [&a, &b] {
        let bold: usize = page
            .js(
                "return document.querySelectorAll('.timeline b').length;",
                Value::Null,
            )
            .await;
        assert_eq!(
            bold, 0,
            "page {}: the message created a <b> element",
            page.name
        );
    }

    // Web links become links (new tab, no referrer, no follow); other schemes stay text; a mention of A is marked.
    let linked = "docs at https://example.org/x, not javascript:alert(1) — @alice look";
    b.send(linked).await;
    a.wait_message("bob", linked).await;
    let (rel, target, scripts, mentioned): (String, String, usize, bool) = a
        .js(
            "const link = document.querySelector('.timeline .msg .text a[href=\"https://example.org/x\"]');
             return [link ? link.rel : '', link ? link.target : '',
                     [...document.querySelectorAll('.timeline a')].filter(l => !/^https?:/.test(l.href)).length,
                     [...document.querySelectorAll('.timeline .msg.mentioned mark.mention')]
                        .some(m => m.textContent === '@alice')];",
            Value::Null,
        )
        .await;
    assert_eq!(
        (rel.as_str(), target.as_str()),
        ("noopener noreferrer nofollow", "_blank")
    );
    assert_eq!(scripts, 0, "only http(s) URLs become links");
    assert!(
        mentioned,
        "the mention of alice is highlighted on alice's page"
    );
    a.screenshot("").await;
    b.screenshot("").await;

    // Replica 1 goes away; B keeps talking through replica 2 meanwhile.
    let port = one.addr.port();
    one.stop().await;
    a.wait_until(
        "the status line to notice the lost connection",
        "return document.querySelector('.status')?.dataset.state !== 'connected';",
        Value::Null,
    )
    .await;
    a.wait_for(
        "the outage banner over the room",
        ".room .outage[role=alert]",
    )
    .await;
    a.screenshot("outage").await;
    let missed = "Sent while replica one was down.";
    b.send(missed).await;
    // A types while offline: the message waits in A's outbox instead of failing.
    let offline = "Typed on A while offline.";
    a.type_message(offline).await;
    a.wait_for(
        "the offline message waiting in the outbox",
        ".timeline .msg.own.pending",
    )
    .await;

    // Replica 1 is back on the same port: A reconnects by itself, gets what it missed, and its outbox goes out by
    // itself; every page shows every message exactly once.
    let _one = Replica::start_with(replica_config(&redis, &dist, "replica-1", port)).await;
    a.wait_connected("replica-1").await;
    a.wait_until(
        "the outage banner to go",
        "return document.querySelector('.outage') === null;",
        Value::Null,
    )
    .await;
    a.wait_message("bob", missed).await;
    b.wait_message("alice", offline).await;
    a.wait_acked(offline).await;
    let expected = [
        ("alice", "Hello from replica one!"),
        ("bob", "Hi alice, bob here on replica two."),
        ("alice", markup),
        ("bob", linked),
        ("bob", missed),
        ("alice", offline),
    ]
    .map(|(n, t)| (n.to_owned(), t.to_owned()));
    assert_eq!(a.messages().await, expected, "page A after the restart");
    assert_eq!(b.messages().await, expected, "page B");
    a.screenshot("reconnected").await;

    a.close().await;
    b.close().await;
}

/// A reader sitting at the bottom of a busy room stays there: a burst of 200 messages from another replica arrives
/// while page A watches, and A still shows the newest message with no "Jump to latest" (auto-scroll is not
/// mistaken for the reader scrolling up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_at_the_bottom_follows_a_burst() {
    let stage = Stage::start().await;
    let a = open(&stage.driver, "burst", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    a.wait_connected("replica-1").await;

    let mut bob = stage.two.client().await;
    bob.join(ROOM, "bob", None).await;
    for i in 0..200 {
        bob.send(&shared::ClientMsg::Send {
            room: ROOM.into(),
            text: format!("burst {i}"),
            cid: format!("burst-{i}"),
            reply_to: None,
        })
        .await;
    }
    a.wait_message("bob", "burst 199").await;
    // Before the fix the page was left thousands of pixels up with the jump button shown, and never came back.
    a.wait_until(
        "the timeline to stay at the newest message",
        "const t = document.querySelector('.timeline');
         return t.scrollHeight - t.scrollTop - t.clientHeight <= 48 && !document.querySelector('.jump');",
        Value::Null,
    )
    .await;
    assert_eq!(a.messages().await.len(), 200, "every message once");
    a.close().await;
}

/// Scrolling back: 120 messages were posted before page A opened the room, which shows the newest 50; scrolling to
/// the top loads older pages until "Beginning of the room's history", and the timeline then holds all 120 messages
/// once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_back_reaches_the_first_message() {
    let stage = Stage::start().await;
    let mut bob = stage.two.client().await;
    bob.join(ROOM, "bob", None).await;
    let texts: Vec<String> = (0..120).map(|i| format!("old {i}")).collect();
    for text in &texts {
        bob.say(ROOM, text).await;
    }

    let a = open(&stage.driver, "scrollback", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    a.wait_message("bob", "old 119").await;
    a.wait_until(
        "scrolling to the top to reach the beginning of the room's history",
        "const t = document.querySelector('.timeline');
         t.scrollTop = 0;
         t.dispatchEvent(new Event('scroll'));
         return [...document.querySelectorAll('.history-edge')]
             .some(e => e.textContent.startsWith('Beginning'));",
        Value::Null,
    )
    .await;
    let expected: Vec<(String, String)> = texts
        .iter()
        .map(|t| ("bob".to_owned(), t.clone()))
        .collect();
    assert_eq!(a.messages().await, expected, "every message once, in order");
    a.screenshot("start").await;
    a.close().await;
}

/// Typing across replicas: B types without sending; A shows "bob is typing…", and the line clears by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_shows_on_the_other_page_and_clears_by_itself() {
    let stage = Stage::start().await;
    let a = open(&stage.driver, "typing-a", &stage.out).await;
    let b = open(&stage.driver, "typing-b", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    b.enter_room(stage.two.addr, "bob").await;
    a.wait_connected("replica-1").await;
    b.wait_connected("replica-2").await;

    // A records every text its typing line takes, so the test sees the line even if this machine is too busy to
    // look within the 5 s it shows.
    let _: bool = a.js(TYPING_RECORDER, Value::Null).await;
    let input = b
        .client
        .find(Locator::Css("#composer-input"))
        .await
        .unwrap();
    input.send_keys("I am writing someth").await.unwrap();
    let line = "return document.querySelector('.typing')?.textContent ?? '';";
    a.wait_until(
        "\"bob is typing…\" on A",
        "return window.typingLines.includes(arguments[0]);",
        json!("bob is typing…"),
    )
    .await;
    let own: String = b.js(line, Value::Null).await;
    assert_eq!(own, "", "B does not see itself typing");
    a.screenshot("typing").await;
    a.wait_until(
        "the typing line to clear by itself",
        "return (document.querySelector('.typing')?.textContent ?? '') === '';",
        Value::Null,
    )
    .await;
    a.close().await;
    b.close().await;
}

/// Installs `window.typingLines`: every text the typing line above the message box has shown, in order.
const TYPING_RECORDER: &str = r"window.typingLines = [];
    const record = () => {
        const text = document.querySelector('.typing')?.textContent ?? '';
        if (window.typingLines[window.typingLines.length - 1] !== text) window.typingLines.push(text);
    };
    new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true });
    record();
    return true;";

/// The "New messages" divider: A reads another room while bob writes in e2e; back in e2e, the divider sits right
/// before the first message A has not seen, and the room opens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unread_divider_marks_where_reading_stopped() {
    let stage = Stage::start().await;
    let mut bob = stage.two.client().await;
    bob.join(ROOM, "bob", None).await;
    bob.say(ROOM, "seen before").await;

    let a = open(&stage.driver, "unread", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    a.wait_message("bob", "seen before").await;
    let join = a.client.find(Locator::Css("#join-side")).await.unwrap();
    join.send_keys(&format!("side{ENTER}")).await.unwrap();
    a.wait_until(
        "room side on screen",
        "return location.pathname === '/r/side';",
        Value::Null,
    )
    .await;
    bob.say(ROOM, "while away 1").await;
    bob.say(ROOM, "while away 2").await;
    a.wait_until(
        "the unread count of e2e",
        "return [...document.querySelectorAll('.room-link')].some(l => /2/.test(l.textContent));",
        Value::Null,
    )
    .await;
    a.click(&format!(".room-link[href='/r/{ROOM}']")).await;
    a.wait_until(
        "the divider right before the first unread message",
        "const d = document.querySelector('.timeline .unread-divider');
         const next = d && d.nextElementSibling;
         return !!next && next.querySelector('.text')?.textContent === arguments[0];",
        json!("while away 1"),
    )
    .await;
    a.screenshot("divider").await;

    // Tab completes a nick of someone who wrote here, as a mention.
    let input = a
        .client
        .find(Locator::Css("#composer-input"))
        .await
        .unwrap();
    input.send_keys("thanks bo").await.unwrap();
    input.send_keys(TAB).await.unwrap();
    a.wait_until(
        "Tab to complete bob's nick",
        "return document.querySelector('#composer-input').value === arguments[0];",
        json!("thanks @bob "),
    )
    .await;
    a.close().await;
}

/// What the member list shows: the listed nicks and the header's count, as `alice,bob | 2 online`.
const MEMBER_LIST: &str = r"return [...document.querySelectorAll('#members .member-nick')].map(n => n.textContent).join(',')
    + ' | ' + (document.querySelector('.online-button')?.textContent ?? '') === arguments[0];";

/// The timeline's join/leave lines without their time, as `bob joined`.
const PRESENCE_LINES: &str = "return [...document.querySelectorAll('.timeline .presence')].map(p => p.textContent.split(' · ')[0]);";

/// The member list across replicas: A and B each see both, with the count in the header; a second tab of B is
/// still one member; when B closes, A's list drops B once the grace period is over, and A's timeline says so once.
/// The list is a side panel on a wide window and a sheet on a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_list_shows_who_is_here_on_every_replica() {
    let stage = Stage::start().await;
    let a = open(&stage.driver, "members-a", &stage.out).await;
    let b = open(&stage.driver, "members-b", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    b.enter_room(stage.two.addr, "bob").await;
    let both = json!("alice,bob | 2 online");
    a.wait_until("A's member list: alice and bob", MEMBER_LIST, both.clone())
        .await;
    b.wait_until("B's member list: alice and bob", MEMBER_LIST, both.clone())
        .await;
    // A second tab of bob (the same browser and origin, so the same person; a new connection): still one member.
    let first_tab = b.client.window().await.unwrap();
    let tab = b.client.new_window(true).await.unwrap();
    b.client.switch_to_window(tab.handle).await.unwrap();
    b.client
        .goto(&format!("http://{}/r/{ROOM}", stage.two.addr))
        .await
        .unwrap();
    b.wait_until("bob's second tab: alice and bob", MEMBER_LIST, both.clone())
        .await;
    b.client.close_window().await.unwrap();
    b.client.switch_to_window(first_tab).await.unwrap();
    a.screenshot("members").await;
    // A phone-sized window shows the list as a sheet, opened from the header's count (close it first if the wide
    // window had it open).
    a.client.set_window_size(390, 844).await.unwrap();
    let toggle = "document.querySelector('.online-button').click(); return true;";
    if a.js::<bool>(
        "return document.querySelector('#members.open') !== null;",
        Value::Null,
    )
    .await
    {
        a.js::<bool>(toggle, Value::Null).await;
    }
    a.wait_until(
        "the member sheet to be closed",
        "return document.querySelector('#members.open') === null;",
        Value::Null,
    )
    .await;
    a.js::<bool>(toggle, Value::Null).await;
    a.wait_for("the member sheet", "#members.open").await;
    a.screenshot("members-phone").await;
    a.client.set_window_size(1200, 800).await.unwrap();
    b.close().await;
    a.wait_until(
        "A's member list without bob",
        MEMBER_LIST,
        json!("alice | 1 online"),
    )
    .await;
    let lines: Vec<String> = a.js(PRESENCE_LINES, Value::Null).await;
    assert_eq!(
        lines,
        ["bob joined", "bob left"],
        "one join and one leave for bob, whatever his tabs did"
    );
    a.close().await;
}

/// Mentions while the tab is hidden: the title counts what arrived, and a mention (only a mention) shows a browser
/// notification once the person allowed them; back on the tab, the room is read and the notification closes. Chromium's own `Notification` is wrapped to record what the page shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_in_a_hidden_tab_badges_the_title_and_notifies() {
    let stage = Stage::start().await;
    let a = explained(
        Page::open_with_prefs(
            &stage.driver,
            "mention",
            &stage.out,
            json!({"profile.default_content_setting_values.notifications": 1}),
        )
        .await,
    );
    a.enter_room(stage.one.addr, "alice").await;
    a.wait_for("the sidebar to say mentions notify", ".notify-state")
        .await;
    let mut bob = stage.two.client().await;
    bob.join(ROOM, "bob", None).await;
    let _: bool = a
        .js(
            r"const Real = window.Notification;
            window.shown = [];
            window.closedNotes = [];
            function Recorded(title, options) {
                window.shown.push([title, options && options.body]);
                const n = new Real(title, options);
                const close = n.close.bind(n);
                n.close = () => { window.closedNotes.push(title); close(); };
                return n;
            }
            Object.defineProperty(Recorded, 'permission', { get: () => Real.permission });
            Recorded.requestPermission = (...args) => Real.requestPermission(...args);
            window.Notification = Recorded;
            Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
            Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
            document.dispatchEvent(new Event('visibilitychange', { bubbles: true }));
            return true;",
            Value::Null,
        )
        .await;
    bob.say(ROOM, "nothing for anyone").await;
    bob.say(ROOM, "hey @alice, look at this").await;
    a.wait_message("bob", "hey @alice, look at this").await;
    a.wait_until(
        "the title to count two unread messages",
        "return document.title.startsWith('(2) ');",
        Value::Null,
    )
    .await;
    let shown: Vec<(String, String)> = a.js("return window.shown;", Value::Null).await;
    assert_eq!(
        shown,
        [(
            "bob in #e2e".to_string(),
            "hey @alice, look at this".to_string()
        )],
        "one notification, for the mention only"
    );
    // Back on the tab: read, so the badge goes.
    let _: bool = a
        .js(
            r"Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
            Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
            document.dispatchEvent(new Event('visibilitychange', { bubbles: true }));
            return true;",
            Value::Null,
        )
        .await;
    a.wait_until(
        "the title without a badge",
        "return !document.title.startsWith('(');",
        Value::Null,
    )
    .await;
    // Read now (the server confirmed it): the notification of the mention is closed.
    a.wait_until(
        "the mention's notification closed",
        "return JSON.stringify(window.closedNotes) === JSON.stringify(['bob in #e2e']);",
        Value::Null,
    )
    .await;
    a.close().await;
}

/// A replica killed under a page (SIGKILL: no goodbye): the other replica's page drops that person from its member
/// list once the killed replica has missed 3 heartbeats, and says once that they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_people_leave_the_member_list() {
    let stage = Stage::start().await;
    let dist = stage.dist.to_string_lossy().into_owned();
    let mut doomed = replica_process(
        &stage.redis.url(),
        "replica-doomed",
        &["--static-dir", &dist, "--presence-heartbeat-ms", "1000"],
    )
    .await;
    let a = open(&stage.driver, "kill-a", &stage.out).await;
    let b = open(&stage.driver, "kill-b", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    b.enter_room(doomed.addr, "bob").await;
    a.wait_until(
        "A's member list: alice and bob",
        MEMBER_LIST,
        json!("alice,bob | 2 online"),
    )
    .await;
    doomed.kill9();
    let killed = std::time::Instant::now();
    a.wait_until(
        "A's member list without bob",
        MEMBER_LIST,
        json!("alice | 1 online"),
    )
    .await;
    println!(
        "bob left A's member list {} ms after his replica was killed (its 3 heartbeats of 1 s, then A's replica's \
         next heartbeat, every 5 s)",
        killed.elapsed().as_millis()
    );
    let lines: Vec<String> = a.js(PRESENCE_LINES, Value::Null).await;
    assert_eq!(lines, ["bob joined", "bob left"]);
    a.close().await;
    b.close().await;
}

/// Marks the timeline message whose text is `arguments[0]` with `data-target` (and no other), scrolled into view,
/// so WebDriver can find it by a selector.
const MARK_MESSAGE: &str = r"document.querySelectorAll('[data-target]').forEach(e => e.removeAttribute('data-target'));
    const m = [...document.querySelectorAll('.timeline .msg')]
        .find(m => m.querySelector('.text').textContent === arguments[0]);
    if (!m) return false;
    m.setAttribute('data-target', '');
    m.scrollIntoView({ block: 'center' });
    return true;";

/// A function of a message's text: what the page shows of that message, `{quote, edited, tombstone, chips}` (chips
/// as `[label, pressed]`), or null.
const MESSAGE_STATE: &str = r"(text) => {
    const m = [...document.querySelectorAll('.timeline .msg')]
        .find(m => m.querySelector('.text').textContent === text);
    if (!m) return null;
    return {
        quote: m.querySelector('.quote')?.textContent ?? null,
        edited: !!m.querySelector('.edited:not([hidden])'),
        tombstone: !!m.querySelector('.text.tombstone'),
        chips: [...m.querySelectorAll('.chip')].map(c => [c.textContent, c.getAttribute('aria-pressed')]),
    };
}";

/// The message actions a person reaches with the mouse: hover a message (its menu shows), press one of its buttons.
trait Actions {
    /// Hovers the message `text` and presses its menu's `selector` (inside the message).
    async fn on_message(&self, text: &str, selector: &str);

    /// Waits until the message `text` shows `state` (see [`MESSAGE_STATE`]; fields left out are not checked).
    async fn wait_state(&self, text: &str, state: Value);
}

impl Actions for Page {
    async fn on_message(&self, text: &str, selector: &str) {
        self.wait_until(
            &format!("message {text:?} on the page"),
            MARK_MESSAGE,
            json!(text),
        )
        .await;
        self.hover(".msg[data-target]").await;
        self.client
            .find(Locator::Css(&format!(".msg[data-target] {selector}")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "page {}: cannot press {selector} on {text:?}: {e}",
                    self.name
                )
            });
    }

    async fn wait_state(&self, text: &str, state: Value) {
        self.wait_until(
            &format!("message {text:?} showing {state}"),
            &format!(
                "const shown = ({MESSAGE_STATE})(arguments[0][0]);
                 const want = arguments[0][1];
                 return !!shown && Object.keys(want).every(k => JSON.stringify(shown[k]) === JSON.stringify(want[k]));"
            ),
            json!([text, state]),
        )
        .await;
    }
}

/// Whether the message box holds exactly `arguments[0]`.
const COMPOSER_HOLDS: &str =
    "return document.querySelector('#composer-input').value === arguments[0];";

/// Checks the page's accessibility tree as Chromium builds it for screen readers (DevTools
/// `Accessibility.getFullAXTree`): the timeline is a log, and every button, link, text box, select or disclosure
/// has a name. Returns how many interactive nodes it checked.
async fn check_accessibility_tree(page: &Page) -> usize {
    let tree = page.cdp("Accessibility.getFullAXTree", json!({})).await;
    let nodes = tree["nodes"].as_array().expect("an accessibility tree");
    let role = |n: &Value| n["role"]["value"].as_str().unwrap_or("").to_owned();
    let name = |n: &Value| n["name"]["value"].as_str().unwrap_or("").trim().to_owned();
    let live: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["ignored"] != json!(true))
        .collect();
    assert!(
        live.iter()
            .any(|n| role(n) == "log" && name(n) == format!("Messages in #{ROOM}")),
        "the timeline is a named log"
    );
    let interactive = [
        "button",
        "link",
        "textbox",
        "combobox",
        "checkbox",
        "menuitem",
        "DisclosureTriangle",
        "PopUpButton",
        "listbox",
    ];
    let checked: Vec<&&Value> = live
        .iter()
        .filter(|n| interactive.contains(&role(n).as_str()))
        .collect();
    let unnamed: Vec<String> = checked
        .iter()
        .filter(|n| name(n).is_empty())
        .map(|n| format!("{} {}", role(n), n["nodeId"]))
        .collect();
    assert!(
        unnamed.is_empty(),
        "interactive nodes without a name: {unnamed:?}"
    );
    checked.len()
}

/// Replies, edits, deletes and reactions between two pages on two replicas, and a screen reader's view of it: a
/// reply's quote jumps to the original (loading older pages until it is there); an edit and a delete on A show on
/// B; a reaction toggled on both pages (by mouse and by keyboard) keeps the same count on both; A's live region
/// announces B's new message and nothing from history; the accessibility tree names the log and every control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_edits_deletes_and_reactions_reach_the_other_replica() {
    let stage = Stage::start().await;
    // Carol (a script on replica 2) wrote the original long ago: 60 messages later she answers it.
    let mut carol = stage.two.client().await;
    carol.join(ROOM, "carol", None).await;
    let original = carol.say(ROOM, "the original").await;
    for i in 0..60 {
        carol.say(ROOM, &format!("filler {i}")).await;
    }
    carol
        .send(&shared::ClientMsg::Send {
            room: ROOM.into(),
            text: "a late answer".into(),
            cid: "late".into(),
            reply_to: Some(original),
        })
        .await;
    let answer = carol
        .take(|m| match m {
            shared::ServerMsg::Ack(frame::Ack { cid, .. }) if cid == "late" => Some(Ok(())),
            shared::ServerMsg::Error(frame::Error { req, message, .. })
                if req.as_deref() == Some("late") =>
            {
                Some(Err(message.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(answer, Ok(()), "carol's reply stored");

    let a = open(&stage.driver, "actions-a", &stage.out).await;
    let b = open(&stage.driver, "actions-b", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    b.enter_room(stage.two.addr, "bob").await;
    a.wait_message("carol", "a late answer").await;
    a.wait_connected("replica-1").await;
    b.wait_connected("replica-2").await;
    assert!(
        !a.messages().await.iter().any(|(_, t)| t == "the original"),
        "the original is older than the first page"
    );

    // The live region: B's new message, and nothing of the history shown at the join.
    b.send("hello live").await;
    a.wait_until(
        "A's live region announcing bob's message",
        "return [...document.querySelectorAll('.live p')].map(p => p.textContent).includes('bob: hello live');",
        Value::Null,
    )
    .await;
    let live: Vec<String> = a
        .js(
            "return [...document.querySelectorAll('.live p')].map(p => p.textContent);",
            Value::Null,
        )
        .await;
    assert_eq!(live, ["bob: hello live"], "only the new live message");

    // The quote jumps to the original, loading older pages until it is there, and highlights it.
    a.wait_state(
        "a late answer",
        json!({ "quote": "In reply to carol the original" }),
    )
    .await;
    a.on_message("a late answer", ".quote").await;
    a.wait_until(
        "the original highlighted, in view and focused",
        "const m = document.querySelector('.msg.highlight');
         if (!m || m.querySelector('.text').textContent !== 'the original') return false;
         const r = m.getBoundingClientRect(), t = document.querySelector('.timeline').getBoundingClientRect();
         return r.top >= t.top && r.bottom <= t.bottom && document.activeElement === m;",
        Value::Null,
    )
    .await;

    // A replies to it from the message's menu: a quote bar over the box, and the quote on both pages.
    a.on_message("the original", "[data-act=reply]").await;
    a.wait_until(
        "the quote bar over A's message box",
        "return (document.querySelector('.compose-bar')?.textContent ?? '').includes('Replying to carol: the original');",
        Value::Null,
    )
    .await;
    a.send("agreed").await;
    let quoted = json!({ "quote": "In reply to carol the original" });
    a.wait_state("agreed", quoted.clone()).await;
    b.wait_state("agreed", quoted).await;
    let bar: bool = a
        .js(
            "return document.querySelector('.compose-bar').hidden;",
            Value::Null,
        )
        .await;
    assert!(bar, "the quote bar goes once the reply is sent");

    // An edit from the menu: the box takes the text; what is saved shows "(edited)" on both pages.
    a.send("see you at 5").await;
    a.on_message("see you at 5", "[data-act=edit]").await;
    a.wait_until(
        "the message's text in A's box",
        COMPOSER_HOLDS,
        json!("see you at 5"),
    )
    .await;
    let input = a
        .client
        .find(Locator::Css("#composer-input"))
        .await
        .unwrap();
    input.send_keys(" (or 6)").await.unwrap();
    input.send_keys(ENTER).await.unwrap();
    b.wait_state("see you at 5 (or 6)", json!({ "edited": true }))
        .await;
    a.wait_state("see you at 5 (or 6)", json!({ "edited": true }))
        .await;

    // Up arrow in the empty box edits my last message; Esc cancels.
    a.send("second thoughts").await;
    input.send_keys("\u{e013}").await.unwrap(); // ArrowUp
    a.wait_until(
        "Up arrow putting the last own message in the box",
        COMPOSER_HOLDS,
        json!("second thoughts"),
    )
    .await;
    input.send_keys("\u{e00c}").await.unwrap(); // Escape
    a.wait_until("Esc emptying the box", COMPOSER_HOLDS, json!(""))
        .await;

    // A deletes it, asked to confirm first: a tombstone on both pages, in its place.
    a.on_message("second thoughts", "[data-act=delete]").await;
    a.wait_until(
        "Delete asking to confirm",
        "return [...document.querySelectorAll('.msg[data-target] [data-act=delete-confirm]')]
             .some(b => b.textContent === 'Really delete?' && b === document.activeElement);",
        Value::Null,
    )
    .await;
    a.on_message("second thoughts", "[data-act=delete-confirm]")
        .await;
    for page in [&a, &b] {
        page.wait_until(
            "a tombstone where alice's last message was",
            &format!(
                "const last = {MESSAGES}.filter(([n]) => n === 'alice').pop();
                 return !!last && last[1] === 'message deleted'
                     && !{MESSAGES}.some(([, t]) => t === 'second thoughts');"
            ),
            Value::Null,
        )
        .await;
    }

    // A reaction: A adds 👍 to bob's message from the picker; B adds its own from the chip by keyboard (Enter);
    // A takes its back with a click. Both pages agree on every count.
    a.on_message("hello live", "details summary").await;
    a.on_message("hello live", "[data-act=react][data-emoji='👍']")
        .await;
    a.wait_state("hello live", json!({ "chips": [["👍 1", "true"]] }))
        .await;
    b.wait_state("hello live", json!({ "chips": [["👍 1", "false"]] }))
        .await;
    b.wait_until("hello live", MARK_MESSAGE, json!("hello live"))
        .await;
    b.client
        .find(Locator::Css(".msg[data-target] .chip"))
        .await
        .unwrap()
        .send_keys(ENTER)
        .await
        .unwrap();
    b.wait_state("hello live", json!({ "chips": [["👍 2", "true"]] }))
        .await;
    a.wait_state("hello live", json!({ "chips": [["👍 2", "true"]] }))
        .await;
    a.on_message("hello live", ".chip").await;
    a.wait_state("hello live", json!({ "chips": [["👍 1", "false"]] }))
        .await;
    b.wait_state("hello live", json!({ "chips": [["👍 1", "true"]] }))
        .await;

    let checked = check_accessibility_tree(&a).await;
    assert!(checked > 20, "the tree has the page's controls ({checked})");
    // The README's picture: a reply with its quote, an edited message, a tombstone, reaction chips.
    a.js::<bool>(
        "document.querySelector('.timeline').scrollTop = 1e9; document.activeElement.blur(); return true;",
        Value::Null,
    )
    .await;
    a.screenshot("actions").await;
    a.close().await;
    b.close().await;
}

/// A token for the stage's replicas: `nick`, valid for an hour, with `roles` if given.
fn token(nick: &str, roles: Option<Value>) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut claims = json!({ "nick": nick, "exp": exp });
    if let Some(roles) = roles {
        claims["roles"] = roles;
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

const JWT_SECRET: &str = "a-browser-test-secret-of-at-least-32-bytes";

/// Moderation in the browser, signed in with tokens (the moderator's has `roles: {e2e: moderator}`): the moderator
/// sees Mute / Kick / Ban beside the other member and the slow-mode control; muting troll (on the other replica)
/// makes troll's message box say why and stop sending; slow mode and a kick are announced and explained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_member_is_told_why_in_the_message_box() {
    let stage = Stage::start_with(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    let a = open(&stage.driver, "moderator", &stage.out).await;
    let b = open(&stage.driver, "troll", &stage.out).await;
    let moderator = token("mod", Some(json!({ ROOM: "moderator" })));
    a.goto(&format!(
        "http://{}/r/{ROOM}#token={moderator}",
        stage.one.addr
    ))
    .await;
    b.goto(&format!(
        "http://{}/r/{ROOM}#token={}",
        stage.two.addr,
        token("troll", None)
    ))
    .await;
    for page in [&a, &b] {
        page.wait_for("the room's message box", "#composer-input")
            .await;
    }
    a.wait_for(
        "Mute beside troll",
        "[data-nick=troll] .mod-tools:not([hidden]) [data-mod=mute]",
    )
    .await;
    let own_tools: bool = b
        .js(
            "return [...document.querySelectorAll('[data-mod], .slow-mode')].every(e => !e.checkVisibility());",
            Value::Null,
        )
        .await;
    assert!(own_tools, "troll is no moderator: no tools");
    b.send("first!").await;
    a.wait_message("troll", "first!").await;
    let mute = a
        .client
        .find(Locator::Css("[data-nick=troll] [data-mod=mute]"))
        .await
        .unwrap();
    assert_eq!(
        mute.attr("aria-label").await.unwrap().as_deref(),
        Some("Mute troll for 10 min")
    );
    // The moderator chooses how long: 1 hour.
    a.choose(".mod-span select", "3600").await;
    a.wait_until(
        "Mute saying 1 h",
        "return document.querySelector('[data-nick=troll] [data-mod=mute]').getAttribute('aria-label') === 'Mute troll for 1 h';",
        Value::Null,
    )
    .await;
    a.screenshot("moderation").await;
    mute.click().await.unwrap();
    b.wait_until(
        "troll's message box saying it is muted, and disabled",
        r"const s = document.querySelector('.composer-state')?.textContent ?? '';
         return /^You are muted until \d\d:\d\d\.$/.test(s) && document.querySelector('#composer-input').disabled;",
        Value::Null,
    )
    .await;
    announced(&[&a, &b], "mod muted troll for 1 h").await;
    b.screenshot("muted").await;

    // Lifting it by nick: a nick that cannot be is refused in place, with the shared validation's reason; then
    // Unmute frees troll's message box, on the other replica, and the room is told.
    let lift = a
        .client
        .find(Locator::Css(".mod-lift input"))
        .await
        .unwrap();
    lift.send_keys("no such nick!").await.unwrap();
    a.click("[data-lift=mute]").await;
    a.wait_until(
        "the lift form refusing a bad nick",
        "const e = document.querySelector('#mod-lift-error');
         return !e.hidden && e.textContent.length > 0
             && document.querySelector('.mod-lift input').getAttribute('aria-invalid') === 'true';",
        Value::Null,
    )
    .await;
    lift.clear().await.unwrap();
    lift.send_keys("troll").await.unwrap();
    a.click("[data-lift=mute]").await;
    b.wait_until(
        "troll's message box free again",
        "return (document.querySelector('.composer-state')?.textContent ?? '') === ''
             && !document.querySelector('#composer-input').disabled;",
        Value::Null,
    )
    .await;
    announced(&[&a, &b], "mod unmuted troll").await;

    // Slow mode from its control; then a kick, which troll's page explains.
    a.choose(".slow-mode select", "30").await;
    announced(&[&b], "mod turned on slow mode: 30 s").await;
    a.click("[data-nick=troll] [data-mod=kick]").await;
    b.wait_until(
        "troll's page saying it was kicked",
        "return (document.querySelector('.composer-state')?.textContent ?? '') === 'You were kicked from #e2e.'
             && document.querySelector('#composer-input').disabled;",
        Value::Null,
    )
    .await;
    a.close().await;
    b.close().await;
}

/// Whether the message box says the person is banned from the room until a time, and no "Join again" (which the
/// server would refuse before then) is offered.
const BANNED_UNTIL: &str = r"const s = document.querySelector('.composer-state')?.textContent ?? '';
    return /^You are banned from #e2e until \d\d:\d\d\.$/.test(s)
        && ![...document.querySelectorAll('.timeline .callout button')].some(b => b.checkVisibility());";

/// A ban, told where the person writes, with until when, and nothing left hanging: the moderator on replica 1 bans
/// troll on replica 2; troll's message box says "You are banned from #e2e until HH:MM." with no "Join again"
/// before then; after a reload (the server refuses the join as `banned`) it still says so, and a message troll types
/// shows as not sent with Retry and Discard, never as "Sending…".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_member_is_told_until_when_and_nothing_waits_in_vain() {
    let stage = Stage::start_with(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    let a = open(&stage.driver, "ban-moderator", &stage.out).await;
    let b = open(&stage.driver, "banned", &stage.out).await;
    let moderator = token("mod", Some(json!({ ROOM: "moderator" })));
    a.goto(&format!(
        "http://{}/r/{ROOM}#token={moderator}",
        stage.one.addr
    ))
    .await;
    b.goto(&format!(
        "http://{}/r/{ROOM}#token={}",
        stage.two.addr,
        token("troll", None)
    ))
    .await;
    b.wait_for("the room's message box", "#composer-input")
        .await;
    b.send("before the ban").await;
    a.wait_for(
        "Ban beside troll",
        "[data-nick=troll] .mod-tools:not([hidden]) [data-mod=ban]",
    )
    .await;
    a.click("[data-nick=troll] [data-mod=ban]").await;
    announced(&[&a, &b], "mod banned troll for 10 min").await;
    b.wait_until(
        "troll's message box saying until when it is banned, and no Join again",
        BANNED_UNTIL,
        Value::Null,
    )
    .await;
    b.screenshot("banned").await;

    // A reload: the join is refused as banned, and the page says the same.
    b.client.refresh().await.unwrap();
    b.wait_until(
        "after a reload, troll's message box still saying until when it is banned",
        BANNED_UNTIL,
        Value::Null,
    )
    .await;
    b.type_message("let me back in").await;
    b.wait_until(
        "troll's message shown as not sent, with Retry and Discard, and nothing Sending…",
        "const m = [...document.querySelectorAll('.timeline .msg.own.failed')]
             .find(m => m.querySelector('.text').textContent === arguments[0]);
         return !!m && !document.querySelector('.send-state')
             && [...m.querySelectorAll('.send-error button')].map(b => b.textContent).join() === 'Retry,Discard';",
        json!("let me back in"),
    )
    .await;
    b.screenshot("banned-reloaded").await;
    a.close().await;
    b.close().await;
}

/// Toggling a reaction chip by keyboard keeps the focus on it: the server's `reacted` redraws the message, and the
/// chip that replaces the pressed one (same message, same emoji) takes the focus. Enter presses it, Space releases
/// it (carol's reaction keeps the chip there throughout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_chip_keeps_the_keyboard_focus_when_toggled() {
    let stage = Stage::start().await;
    let mut carol = stage.two.client().await;
    carol.join(ROOM, "carol", None).await;
    let id = carol.say(ROOM, "react to me").await;
    carol
        .send(&shared::ClientMsg::React {
            room: ROOM.into(),
            id,
            emoji: "👍".into(),
            on: true,
            cid: "r1".into(),
        })
        .await;
    let a = open(&stage.driver, "chip-focus", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    a.wait_state("react to me", json!({ "chips": [["👍 1", "false"]] }))
        .await;
    a.wait_until("react to me", MARK_MESSAGE, json!("react to me"))
        .await;
    let focused: bool = a
        .js(
            "const c = document.querySelector('.msg[data-target] .chip');
             c.focus();
             return document.activeElement === c;",
            Value::Null,
        )
        .await;
    assert!(focused, "the chip takes the focus");
    for (key, label, pressed) in [(ENTER, "👍 2", "true"), (" ", "👍 1", "false")] {
        a.client
            .active_element()
            .await
            .unwrap()
            .send_keys(key)
            .await
            .unwrap();
        a.wait_until(
            &format!("the focused element being the chip on \"react to me\", now {label:?}, pressed {pressed}"),
            "const [label, pressed] = arguments[0];
             const c = document.activeElement;
             return !!c && c.matches('.msg .chip') && c.dataset.emoji === '👍'
                 && c.closest('.msg').querySelector('.text').textContent === 'react to me'
                 && c.textContent === label && c.getAttribute('aria-pressed') === pressed;",
            json!([label, pressed]),
        )
        .await;
    }
    a.close().await;
}

/// Waits until every page shows a moderation line in the room starting with `line`.
async fn announced(pages: &[&Page], line: &str) {
    for page in pages {
        page.wait_until(
            &format!("{line:?} announced in the room"),
            "return [...document.querySelectorAll('.timeline .presence.mod')].some(p => p.textContent.startsWith(arguments[0]));",
            json!(line),
        )
        .await;
    }
}

/// "Typing right after sending is not shown", fixed: B sends a message and at once types the next one key by key
/// for about a second; A shows "bob is typing…" again (B's message had cleared it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_right_after_sending_is_shown() {
    let stage = Stage::start().await;
    let a = open(&stage.driver, "typing-after-a", &stage.out).await;
    let b = open(&stage.driver, "typing-after-b", &stage.out).await;
    a.enter_room(stage.one.addr, "alice").await;
    b.enter_room(stage.two.addr, "bob").await;
    a.wait_connected("replica-1").await;
    b.wait_connected("replica-2").await;
    b.send("hi").await;
    a.wait_message("bob", "hi").await;
    a.wait_until(
        "A's typing line cleared by bob's message",
        "return (document.querySelector('.typing')?.textContent ?? '') === '';",
        Value::Null,
    )
    .await;
    let _: bool = a.js(TYPING_RECORDER, Value::Null).await;
    let input = b
        .client
        .find(Locator::Css("#composer-input"))
        .await
        .unwrap();
    for key in "and then".chars() {
        input.send_keys(&key.to_string()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    }
    a.wait_until(
        "\"bob is typing…\" on A after bob's message",
        "return window.typingLines.includes(arguments[0]);",
        json!("bob is typing…"),
    )
    .await;
    a.close().await;
    b.close().await;
}

/// A token for the stage's replicas: `nick` for the person `sub`, allowed `rooms` (every room without), moderating
/// `ROOM` when `moderator`.
fn person_token(nick: &str, sub: &str, rooms: Option<&[&str]>, moderator: bool) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut claims = json!({ "nick": nick, "sub": sub, "exp": exp });
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    if moderator {
        claims["roles"] = json!({ ROOM: "moderator" });
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A test client on `replica` signed in as `nick` (its own person), for replicas that require tokens.
async fn signed_client(replica: &Replica, nick: &str) -> testkit::client::Client {
    let token = person_token(nick, &format!("u-{nick}"), None, false);
    testkit::client::Client::connect(&format!("{}?token={token}", replica.ws_url())).await
}

/// Records, from before the page's own scripts run, every `console.error` call and every uncaught error or rejected
/// promise (a Rust panic is one of them) in `window.pageErrors`, for [`no_errors`].
async fn record_errors(page: &Page) {
    page.cdp(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.pageErrors = [];
            const error = console.error.bind(console);
            console.error = (...args) => { window.pageErrors.push(args.map(String).join(' ')); error(...args); };
            addEventListener('error', e => window.pageErrors.push('error: ' + e.message));
            addEventListener('unhandledrejection', e => window.pageErrors.push('rejection: ' + e.reason));" }),
    )
    .await;
}

/// Asserts that the page reported no error since it loaded (see [`record_errors`]).
async fn no_errors(page: &Page) {
    let errors: Vec<String> = page
        .js("return window.pageErrors ?? ['not recorded'];", Value::Null)
        .await;
    assert!(
        errors.is_empty(),
        "page {}: errors in the page: {errors:?}",
        page.name
    );
}

/// Opens `/r/<room>` on `replica` signed in with `token`, and waits for the room's message box and the connection.
/// Errors in the page are recorded from the start (see [`no_errors`]).
async fn sign_in(page: &Page, replica: SocketAddr, room: &str, token: &str) {
    record_errors(page).await;
    page.goto(&format!("http://{replica}/r/{room}#token={token}"))
        .await;
    page.wait_for("the room's message box", "#composer-input")
        .await;
    page.wait_until(
        "the page to be connected",
        "return document.querySelector('.status')?.dataset.state === 'connected';",
        Value::Null,
    )
    .await;
}

/// [`sign_in`] to `ROOM` as `nick`, the person `u-<nick>`, who moderates nothing.
async fn sign_in_person(page: &Page, replica: SocketAddr, nick: &str) {
    let token = person_token(nick, &format!("u-{nick}"), None, false);
    sign_in(page, replica, ROOM, &token).await;
}

/// Opens another room from the sidebar's join form, and waits until it is on screen.
async fn open_room(page: &Page, room: &str) {
    let join = page.client.find(Locator::Css("#join-side")).await.unwrap();
    join.send_keys(&format!("{room}{ENTER}")).await.unwrap();
    page.wait_until(
        &format!("room {room} on screen"),
        "return location.pathname === '/r/' + arguments[0] && !!document.querySelector('#composer-input');",
        json!(room),
    )
    .await;
}

/// The badge of a room in the room list as it shows ("" when none), without the words for screen readers.
const BADGE: &str = "(room) => document.querySelector(`.room-link[href='/r/${room}'] .badge [aria-hidden]`)?.textContent ?? ''";

/// Waits until the room list shows `badge` for `room` and the tab title is `title`.
async fn wait_badge(page: &Page, room: &str, badge: &str, title: &str) {
    page.wait_until(
        &format!("badge {badge:?} on #{room} and the title {title:?}"),
        &format!(
            "const [room, badge, title] = arguments[0];
             return ({BADGE})(room) === badge && document.title === title;"
        ),
        json!([room, badge, title]),
    )
    .await;
}

/// Sets the browser's network on or off (DevTools network emulation: `navigator.onLine` and the `online`/`offline`
/// events follow, as when a laptop loses its Wi-Fi).
async fn network(page: &Page, online: bool) {
    page.cdp("Network.enable", json!({})).await;
    page.cdp(
        "Network.emulateNetworkConditions",
        json!({ "offline": !online, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1 }),
    )
    .await;
}

/// Read state across devices and replicas, with tokens: alice has two pages (the same `sub`) on two replicas, carol a
/// page of her own. Messages alice has not read badge the room on both of her pages, mentions counted apart; reading
/// them on one page clears the badge and the title's count on the other (the delay is printed, not asserted).
/// Carol's page goes offline while 1,000 messages arrive, 100 of them mentioning her, and comes back with exactly
/// those counts, from the server's read position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_on_one_device_clears_the_badge_on_the_other_and_counts_are_exact_after_being_offline()
 {
    let stage = Stage::start_with(|c| {
        c.jwt_secret = Some(JWT_SECRET.into());
        c.history_limit = 5_000;
        c.sends_per_sec = 100_000;
        c.send_burst = 100_000;
    })
    .await;
    let phone = open(&stage.driver, "reads-phone", &stage.out).await;
    let laptop = open(&stage.driver, "reads-laptop", &stage.out).await;
    let carol = open(&stage.driver, "reads-carol", &stage.out).await;
    let alice = person_token("alice", "u-alice", None, false);
    sign_in(&phone, stage.one.addr, ROOM, &alice).await;
    sign_in(&laptop, stage.two.addr, ROOM, &alice).await;
    sign_in_person(&carol, stage.one.addr, "carol").await;
    let mut bob = signed_client(&stage.two, "bob").await;
    bob.join(ROOM, "bob", None).await;
    // Everyone reads bob's first message where they are (each page at the bottom of the room, in view).
    bob.say(ROOM, "good morning").await;
    for page in [&phone, &laptop, &carol] {
        page.wait_message("bob", "good morning").await;
        open_room(page, "side").await;
    }

    // Three messages while alice looks at another room, one of them for her: both of her pages badge #e2e.
    bob.say(ROOM, "standup in 5").await;
    bob.say(ROOM, "@alice can you share the notes?").await;
    bob.say(ROOM, "thanks").await;
    for page in [&phone, &laptop] {
        wait_badge(page, ROOM, "3 · @1", "(3) Roomcast").await;
    }
    let said: String = laptop
        .js(
            "return document.querySelector(`.room-link[href='/r/${arguments[0]}'] .badge .sr-only`).textContent;",
            json!(ROOM),
        )
        .await;
    assert_eq!(
        said, "3 unread, 1 mentioning you",
        "what a screen reader says"
    );
    laptop.screenshot("badge").await;

    // Alice reads them on her phone: the laptop's badge and title clear.
    let _: bool = laptop
        .js(
            &format!(
                "window.clearedAt = null;
                 new MutationObserver(() => {{
                     if (window.clearedAt === null && ({BADGE})(arguments[0]) === '') window.clearedAt = Date.now();
                 }}).observe(document.body, {{ subtree: true, childList: true, characterData: true }});
                 return true;"
            ),
            json!(ROOM),
        )
        .await;
    let clicked: f64 = phone
        .js(
            "const at = Date.now(); document.querySelector(`.room-link[href='/r/${arguments[0]}']`).click(); return at;",
            json!(ROOM),
        )
        .await;
    phone.wait_message("bob", "thanks").await;
    wait_badge(&phone, ROOM, "", "Roomcast").await;
    wait_badge(&laptop, ROOM, "", "Roomcast").await;
    let cleared: f64 = laptop.js("return window.clearedAt;", Value::Null).await;
    println!(
        "read on the phone (replica 1), the laptop's badge (replica 2) cleared {} ms after the click",
        cleared - clicked
    );
    laptop.screenshot("badge-cleared").await;

    // Carol reads the room up to here and moves on; then her page goes offline, and 1,000 messages arrive
    // meanwhile, 100 of them mentioning her.
    wait_badge(&carol, ROOM, "3", "(3) Roomcast").await;
    carol.click(&format!(".room-link[href='/r/{ROOM}']")).await;
    wait_badge(&carol, ROOM, "", "Roomcast").await;
    open_room(&carol, "side").await;
    network(&carol, false).await;
    carol
        .wait_until(
            "carol's page to notice it is offline",
            "return document.querySelector('.status')?.dataset.state === 'offline';",
            Value::Null,
        )
        .await;
    for _ in 0..10 {
        bob.say_batch(ROOM, "status update", 90).await;
        bob.say_batch(ROOM, "@carol please check this", 10).await;
    }
    network(&carol, true).await;
    wait_badge(&carol, ROOM, "1000 · @100", "(1000) Roomcast").await;
    // Alice's phone has the room on screen, so it reads them as they come: her laptop stays clear.
    wait_badge(&laptop, ROOM, "", "Roomcast").await;
    carol.screenshot("offline-counts").await;
    for page in [phone, laptop, carol] {
        no_errors(&page).await;
        page.close().await;
    }
}

/// Read receipts: the moderator (alice) turns them on from the room's moderation tools; carol reads alice's message
/// on another replica, and alice's page says "Seen by carol" under it (never naming alice herself); when bob's page
/// reads further, the line under the newest message names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_appear_on_the_authors_page() {
    let stage = Stage::start_with(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    let alice = open(&stage.driver, "receipts-alice", &stage.out).await;
    let carol = open(&stage.driver, "receipts-carol", &stage.out).await;
    let bob = open(&stage.driver, "receipts-bob", &stage.out).await;
    sign_in(
        &alice,
        stage.one.addr,
        ROOM,
        &person_token("alice", "u-alice", None, true),
    )
    .await;
    sign_in_person(&carol, stage.two.addr, "carol").await;
    sign_in_person(&bob, stage.two.addr, "bob").await;
    alice
        .wait_for(
            "the receipts switch in the moderation tools",
            ".mod-panel .receipts select",
        )
        .await;
    alice.choose(".mod-panel .receipts select", "true").await;
    announced(&[&alice, &carol, &bob], "alice turned on read receipts").await;
    alice.send("the release is out").await;
    alice.send("notes are in the wiki").await;
    for page in [&carol, &bob] {
        page.wait_message("alice", "notes are in the wiki").await;
    }
    let seen = "return [...document.querySelectorAll('.timeline .seen')].map(s => [s.previousElementSibling?.querySelector('.text')?.textContent, s.textContent]);";
    alice
        .wait_until(
            "\"Seen by\" carol and bob under alice's newest message",
            &format!(
                "const lines = (() => {{ {seen} }})();
                 return lines.length === 1 && lines[0][0] === 'notes are in the wiki'
                     && ['Seen by carol, bob', 'Seen by bob, carol'].includes(lines[0][1]);"
            ),
            Value::Null,
        )
        .await;
    let own: Vec<(Option<String>, String)> = alice.js(seen, Value::Null).await;
    assert!(
        own.iter().all(|(_, line)| !line.contains("alice")),
        "alice is never named on her own page: {own:?}"
    );
    alice.screenshot("receipts").await;
    for page in [alice, carol, bob] {
        no_errors(&page).await;
        page.close().await;
    }
}

/// Search in the browser against a real PostgreSQL: an edited word is found in its new text and the old one is not;
/// a deleted message is not found; a word inside a Japanese sentence is found and marked; a room outside the token's
/// `rooms` never shows; "More results" pages back; and a result in a room the page has not joined opens that room
/// (joined for it) with the message brought into view, 60 messages back, highlighted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_current_text_only_in_the_rooms_allowed_and_opens_a_result() {
    let pg = testkit::Postgres::start().await;
    let url = pg.url();
    let stage = Stage::start_with(|c| {
        c.jwt_secret = Some(JWT_SECRET.into());
        c.database_url = Some(url.clone());
        c.archive_sweep_secs = 1;
        c.api_keys = vec![SEARCH_KEY.into()];
        c.sends_per_sec = 100_000;
        c.send_burst = 100_000;
    })
    .await;
    let mut bob = signed_client(&stage.two, "bob").await;
    for room in [ROOM, "ops", "hr"] {
        bob.join(room, "bob", None).await;
    }
    let edited = bob.say(ROOM, "we deploy on friday").await;
    bob.send(&shared::ClientMsg::Edit {
        room: ROOM.into(),
        id: edited,
        text: "we deploy on monday".into(),
        cid: "edit-1".into(),
    })
    .await;
    let gone = bob.say(ROOM, "the secret password is hunter2").await;
    bob.send(&shared::ClientMsg::Delete {
        room: ROOM.into(),
        id: gone,
        cid: "delete-1".into(),
    })
    .await;
    let tokyo = bob.say("ops", "私は東京に住んでいます").await;
    for i in 0..60 {
        bob.say("ops", &format!("ops filler {i}")).await;
    }
    bob.say("hr", "deploy the salary sheet").await;
    for i in 0..25 {
        bob.say(ROOM, &format!("deploy step {i}")).await;
    }
    // The archive has it all once the API finds the last message and no longer the deleted one.
    let api = |q: &'static str| {
        let addr = stage.one.addr;
        async move {
            let (status, _, body) = testkit::http_request(
                addr,
                "GET",
                &format!("/api/search?q={q}&limit=50"),
                &[("Authorization", &format!("Bearer {SEARCH_KEY}"))],
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let found: Value = serde_json::from_str(&body).unwrap();
            found["results"].as_array().unwrap().len()
        }
    };
    testkit::eventually(
        "the archive to have every message in its current state",
        || async {
            (api("step%2024").await == 1 && api("hunter2").await == 0 && api("monday").await == 1)
                .then_some(())
        },
    )
    .await;

    let page = open(&stage.driver, "search", &stage.out).await;
    let token = person_token("alice", "u-alice", Some(&[ROOM, "ops"]), false);
    sign_in(&page, stage.one.addr, ROOM, &token).await;
    let search = |query: &'static str| {
        let page = &page;
        async move {
            let input = page
                .client
                .find(Locator::Css("#search-input"))
                .await
                .unwrap();
            input.clear().await.unwrap();
            input.send_keys(&format!("{query}{ENTER}")).await.unwrap();
            page.wait_until(
                &format!("the search for {query:?} answered"),
                "const s = document.querySelector('.search [role=status]');
                 return !!s && document.querySelector('#search-title')?.textContent === 'Results for “' + arguments[0] + '”'
                     && s.textContent !== 'Searching…';",
                json!(query),
            )
            .await;
            page.js::<Vec<(String, String, Vec<String>)>>(
                "return [...document.querySelectorAll('.results .result')].map(r => [
                     r.querySelector('.result-room').textContent, r.querySelector('.text').textContent,
                     [...r.querySelectorAll('mark')].map(m => m.textContent)]);",
                Value::Null,
            )
            .await
        }
    };
    let monday = search("monday").await;
    assert_eq!(
        monday,
        [(
            "#e2e".into(),
            "we deploy on monday".into(),
            vec!["monday".into()]
        )],
        "the edited text is found"
    );
    assert!(
        search("friday").await.is_empty(),
        "the text before the edit is not"
    );
    assert!(
        search("hunter2").await.is_empty(),
        "a deleted message is not found"
    );
    let status: String = page
        .js(
            "return document.querySelector('.search [role=status]').textContent;",
            Value::Null,
        )
        .await;
    assert_eq!(status, "No messages match “hunter2”.");

    // "deploy": newest first, 20 at a time; never the hr room, which the token does not allow.
    let first = search("deploy").await;
    assert_eq!(first.len(), 20);
    assert_eq!(first[0].1, "deploy step 24");
    assert!(
        first
            .iter()
            .all(|(_, _, marks)| marks.iter().any(|m| m.eq_ignore_ascii_case("deploy")))
    );
    page.screenshot("search").await;
    page.click(".search .timeline > .button").await;
    page.wait_until(
        "the second page of results",
        "return document.querySelectorAll('.results .result').length === 26
            && document.querySelector('.search .timeline > .button').hidden;",
        Value::Null,
    )
    .await;
    let all: Vec<(String, String)> = page
        .js(
            "return [...document.querySelectorAll('.results .result')].map(r => [r.querySelector('.result-room').textContent, r.querySelector('.text').textContent]);",
            Value::Null,
        )
        .await;
    assert!(
        all.iter().all(|(room, _)| room == "#e2e"),
        "only the rooms allowed: {all:?}"
    );
    assert_eq!(all.last().unwrap().1, "we deploy on monday");
    // Esc closes the results, back to the room.
    page.client
        .find(Locator::Css("#search-input"))
        .await
        .unwrap()
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    page.wait_until(
        "Esc to close the results and show the room again",
        "return !document.querySelector('.search') && !!document.querySelector('#composer-input');",
        Value::Null,
    )
    .await;

    // A word inside a Japanese sentence; its result opens #ops (not joined) at the message, 60 messages back.
    let japanese = search("東京").await;
    assert_eq!(
        japanese,
        [(
            "#ops".into(),
            "私は東京に住んでいます".into(),
            vec!["東京".into()]
        )]
    );
    page.click(".results .result").await;
    page.wait_until(
        "#ops open with the message in view and highlighted",
        "const m = document.querySelector('.msg.highlight');
         if (location.pathname !== '/r/ops' || !m || m.dataset.id !== arguments[0]) return false;
         const r = m.getBoundingClientRect(), t = document.querySelector('.timeline').getBoundingClientRect();
         return r.top >= t.top && r.bottom <= t.bottom;",
        json!(tokyo.to_string()),
    )
    .await;
    assert!(
        page.js::<bool>(
            "return !!document.querySelector(`.room-link[href='/r/ops']`);",
            Value::Null
        )
        .await,
        "ops joined and listed"
    );
    no_errors(&page).await;
    page.close().await;
}

/// The HTTP API key of the search test's replicas.
const SEARCH_KEY: &str = "browser-search-test-key";

/// A revoked session in the browser: alice is signed in on replica one when her sessions are revoked through the HTTP
/// API of replica two. Her page is closed with 4003 and says so (offline: "your session was revoked: sign in
/// again"), forgets its token and does not reconnect with it; carol's page, another person's, stays connected and
/// chats on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_signs_the_page_out() {
    const KEY: &str = "revocation-key-0123";
    const TOKEN: &str = "return localStorage.getItem('roomcast.token');";
    let stage = Stage::start_with(|c| {
        c.jwt_secret = Some(JWT_SECRET.into());
        c.api_keys = vec![KEY.into()];
    })
    .await;
    let alice = open(&stage.driver, "alice", &stage.out).await;
    let carol = open(&stage.driver, "carol", &stage.out).await;
    let alices = person_token("alice", "u-alice", None, false);
    sign_in(&alice, stage.one.addr, ROOM, &alices).await;
    sign_in_person(&carol, stage.two.addr, "carol").await;
    let kept: Option<String> = alice.js(TOKEN, Value::Null).await;
    assert_eq!(
        kept.as_deref(),
        Some(alices.as_str()),
        "the page keeps its token"
    );

    let (status, _, body) = testkit::http_request(
        stage.two.addr,
        "POST",
        "/api/sessions/revoke",
        &[("Authorization", &format!("Bearer {KEY}"))],
        Some(&json!({ "sub": "u-alice" }).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    alice
        .wait_until(
            "the page to say its session was revoked",
            "const s = document.querySelector('.status');
             return s?.dataset.state === 'offline' && s.textContent.includes('your session was revoked');",
            Value::Null,
        )
        .await;
    let kept: Option<String> = alice.js(TOKEN, Value::Null).await;
    assert_eq!(kept, None, "the revoked token is forgotten");

    // Another person's page is untouched; by the time carol's message is back, alice's page is still signed out.
    carol.send("still here").await;
    carol.wait_message("carol", "still here").await;
    let state: String = alice
        .js(
            "return document.querySelector('.status').dataset.state;",
            Value::Null,
        )
        .await;
    assert_eq!(state, "offline", "the page does not reconnect by itself");
    no_errors(&alice).await;
    no_errors(&carol).await;
}
