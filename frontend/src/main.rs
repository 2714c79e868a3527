//! Browser entry point: install the panic hook and mount the app.

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(frontend::App);
}

/// Natively there is no page to mount: the crate builds only so `cargo test` can run its pure modules' tests.
#[cfg(not(target_arch = "wasm32"))]
fn main() {}
