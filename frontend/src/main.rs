//! Browser entry point: install the panic hook and mount the app.

#[cfg(target_arch = "wasm32")]
fn main() {
    // A panic stops the app: say so in the console without formatting its message (console_error_panic_hook's
    // formatting and stack capture cost the page a kilobyte; the browser's own trace follows anyway).
    std::panic::set_hook(Box::new(|_| {
        web_sys::console::error_1(
            &"Roomcast stopped: an internal error (a Rust panic). Reload the page.".into(),
        );
    }));
    leptos::mount::mount_to_body(frontend::App);
}

/// Natively there is no page to mount: the crate builds only so `cargo test` can run its pure modules' tests.
#[cfg(not(target_arch = "wasm32"))]
fn main() {}
