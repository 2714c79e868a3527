//! A WebDriver kit for tests in a real headless Chromium: a private chromedriver, browser sessions with fresh
//! profiles, scripts run in the page, waits for conditions, and screenshots. Nothing in it knows Roomcast's pages;
//! the tests add their own actions on top.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::ClientBuilder;
use fantoccini::wd::Capabilities;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{PATIENCE, free_port};

/// How tests find elements in [`Page::client`], so they need no WebDriver dependency of their own.
pub use fantoccini::Locator;

/// How often a condition on a page is checked again. Polling, not synchronisation: every wait is for a condition.
pub const POLL: Duration = Duration::from_millis(50);

/// WebDriver's key code for Enter.
pub const ENTER: &str = "\u{e007}";
/// The WebDriver key code of Tab.
pub const TAB: &str = "\u{e004}";

/// The workspace root, where `dist/` and `test-output/` live by default.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit crate lives in the workspace")
        .to_path_buf()
}

/// Where screenshots go (`ROOMCAST_TEST_OUTPUT`, else `<workspace>/test-output`).
pub fn output_dir() -> PathBuf {
    let out = std::env::var_os("ROOMCAST_TEST_OUTPUT")
        .map_or_else(|| workspace().join("test-output"), PathBuf::from);
    std::fs::create_dir_all(&out)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
    out
}

/// A chromedriver on a private loopback port. On drop it is asked to shut down, which quits every browser it
/// started (also when a failing test never closed its sessions), then killed, and the browser profiles are removed.
#[derive(Debug)]
pub struct Chromedriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    profiles: PathBuf,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it accepts connections.
    pub async fn start() -> Self {
        let binary = localrun::find_program("chromedriver", &[]).unwrap_or_else(|| {
            panic!("chromedriver not found: apt-get install chromium chromium-driver")
        });
        let chromium = localrun::find_program("chromium", &[]).unwrap_or_else(|| {
            panic!("chromium not found: apt-get install chromium chromium-driver")
        });
        let port = free_port();
        let profiles =
            std::env::temp_dir().join(format!("roomcast-chromium-{}-{port}", std::process::id()));
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut driver = Self {
            child,
            port,
            chromium,
            profiles,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start ({status})");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(POLL).await;
        }
        driver
    }

    /// `http://127.0.0.1:<port>`, for WebDriver clients.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A fresh, empty browser profile directory, so each session has its own localStorage.
    fn new_profile(&self, name: &str) -> PathBuf {
        let dir = self.profiles.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }

    /// Asks chromedriver to quit its sessions and exit (`GET /shutdown`), and waits a bounded time for it.
    fn shut_down(&mut self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(PATIENCE));
        let request = format!(
            "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let _ = stream.read_to_end(&mut Vec::new());
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if !self.shut_down() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// One browser session (a headless Chromium window) and what the test reads from and does to its page.
#[derive(Debug)]
pub struct Page {
    /// The page's name in failure messages and screenshot file names.
    pub name: &'static str,
    /// The WebDriver session, for what the kit does not wrap (finding elements, typing, windows).
    pub client: fantoccini::Client,
    out: PathBuf,
    /// chromedriver's port, for the commands fantoccini does not wrap (see [`Page::cdp`]).
    driver_port: u16,
    /// A script whose result a failed wait shows, to say what the page was showing (see [`Page::explained_by`]).
    explain: Option<String>,
}

impl Page {
    /// Opens a fresh Chromium with an empty profile; screenshots go to `out`.
    pub async fn open(driver: &Chromedriver, name: &'static str, out: &Path) -> Self {
        Self::open_with_prefs(driver, name, out, json!({})).await
    }

    /// [`Page::open`] with Chromium preferences set in the profile (what a person would have allowed).
    pub async fn open_with_prefs(
        driver: &Chromedriver,
        name: &'static str,
        out: &Path,
        prefs: Value,
    ) -> Self {
        let profile = driver.new_profile(name);
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": driver.chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": prefs,
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("page {name}: no Chromium session from chromedriver: {e}"));
        Self {
            name,
            client,
            out: out.to_path_buf(),
            driver_port: driver.port,
            explain: None,
        }
    }

    /// Sets the script (a function body) whose result a failed wait shows next to its screenshot, e.g. the app's
    /// status and what it lists. Without one, a failed wait shows the page's address and visible text.
    pub fn explained_by(mut self, script: impl Into<String>) -> Self {
        self.explain = Some(script.into());
        self
    }

    /// Loads `url` in the page.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("page {}: cannot load {url}: {e}", self.name));
    }

    /// Runs a script (a function body; `arguments[0]` is `arg`) and decodes what it returns.
    pub async fn js<T: DeserializeOwned>(&self, script: &str, arg: Value) -> T {
        let value = self
            .client
            .execute(script, vec![arg])
            .await
            .unwrap_or_else(|e| panic!("page {}: script failed: {e}\n{script}", self.name));
        serde_json::from_value(value.clone()).unwrap_or_else(|e| {
            panic!(
                "page {}: script returned {value} ({e})\n{script}",
                self.name
            )
        })
    }

    /// Waits until the script returns true, checking again every [`POLL`]; after `3 * PATIENCE` it saves a
    /// screenshot and fails, saying what it waited for and what the page shows.
    pub async fn wait_until(&self, what: &str, script: &str, arg: Value) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            if self.js::<bool>(script, arg.clone()).await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let shot = self.screenshot("failure").await;
                panic!(
                    "page {}: gave up waiting for: {what}\n{}\nscreenshot: {}",
                    self.name,
                    self.explanation().await,
                    shot.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the page shows, for a failure message: the result of its [`Page::explained_by`] script, else its
    /// address and visible text.
    async fn explanation(&self) -> String {
        let script = self.explain.as_deref().unwrap_or(
            "return 'address: ' + location.href + '\\ntext: ' + (document.body ? document.body.innerText : '');",
        );
        match self.client.execute(script, vec![]).await {
            Ok(Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(e) => format!("(the page could not say: {e})"),
        }
    }

    /// Waits until an element matching `selector` is on the page.
    pub async fn wait_for(&self, what: &str, selector: &str) {
        self.wait_until(
            what,
            "return document.querySelector(arguments[0]) !== null;",
            json!(selector),
        )
        .await;
    }

    /// Clicks the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("page {}: nothing matches {selector}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("page {}: cannot click {selector}: {e}", self.name));
    }

    /// Picks `value` in the `<select>` matching `selector`, as a person does (the page hears `change`).
    pub async fn choose(&self, selector: &str, value: &str) {
        let chosen: bool = self
            .js(
                "const [selector, value] = arguments[0];
                 const s = document.querySelector(selector);
                 if (!s) return false;
                 s.value = value; s.dispatchEvent(new Event('change')); return s.value === value;",
                json!([selector, value]),
            )
            .await;
        assert!(
            chosen,
            "page {}: {selector} has no option {value}",
            self.name
        );
    }

    /// Moves the mouse over the element matching `selector` (what shows a hover menu).
    pub async fn hover(&self, selector: &str) {
        use fantoccini::actions::{InputSource, MouseActions, PointerAction};
        let element = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("page {}: nothing matches {selector}: {e}", self.name));
        let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
            element,
            duration: None,
            x: 0.0,
            y: 0.0,
        });
        self.client
            .perform_actions(hover)
            .await
            .unwrap_or_else(|e| panic!("page {}: cannot hover {selector}: {e}", self.name));
    }

    /// Runs a Chrome DevTools Protocol command in the page (chromedriver's `goog/cdp/execute`), e.g.
    /// `Accessibility.getFullAXTree`, and returns its result. Plain HTTP/1.1 to chromedriver: fantoccini has no
    /// wrapper for it.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let session = self
            .client
            .session_id()
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("page {}: no WebDriver session", self.name));
        let body = json!({ "cmd": cmd, "params": params }).to_string();
        let request = format!(
            "POST /session/{session}/goog/cdp/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            port = self.driver_port,
        );
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.driver_port))
            .await
            .unwrap_or_else(|e| panic!("page {}: cannot reach chromedriver: {e}", self.name));
        stream.write_all(request.as_bytes()).await.unwrap();
        // chromedriver may keep the connection open: read the head, then exactly the body it announces.
        let mut response = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let body_at = loop {
            if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "page {}: chromedriver closed before answering {cmd}",
                self.name
            );
            response.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&response[..body_at]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("page {}: no Content-Length in {head}", self.name));
        while response.len() < body_at + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "page {}: chromedriver cut its answer to {cmd}",
                self.name
            );
            response.extend_from_slice(&chunk[..n]);
        }
        let json = String::from_utf8_lossy(&response[body_at..body_at + length]).into_owned();
        let mut answer: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("page {}: {cmd} answered {json} ({e})", self.name));
        assert!(
            head.starts_with("http/1.1 200"),
            "page {}: {cmd} failed: {head}\n{answer}",
            self.name
        );
        answer["value"].take()
    }

    /// Saves a PNG of the page as `browser-page-<name>[-<suffix>].png` in the output directory.
    pub async fn screenshot(&self, suffix: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("page {}: screenshot failed: {e}", self.name));
        let mut file = format!("browser-page-{}", self.name.to_lowercase());
        if !suffix.is_empty() {
            file = format!("{file}-{suffix}");
        }
        let path = self.out.join(format!("{file}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("screenshot: {}", path.display());
        path
    }

    /// Ends the browser session, which quits its Chromium.
    pub async fn close(self) {
        let name = self.name;
        self.client
            .close()
            .await
            .unwrap_or_else(|e| panic!("page {name}: closing the session failed: {e}"));
    }
}
