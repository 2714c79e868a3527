//! HTTP routes: the WebSocket endpoint (with its Origin check), health, metrics, and the compiled frontend.

use std::path::Path;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower_http::services::{ServeDir, ServeFile};
use tracing::warn;

use crate::{AppState, session};

/// Builds the router of one replica.
pub fn app(state: AppState) -> Router {
    let router = Router::new()
        .route(shared::WS_PATH, get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::api::routes(&state));
    let dir = &state.config.static_dir;
    let index = dir.join("index.html");
    let router = if index.is_file() {
        // Files made at build time next to each asset (`.br`, `.gz`) are served to browsers that accept them.
        let files = ServeDir::new(dir)
            .precompressed_br()
            .precompressed_gzip()
            .fallback(
                ServeFile::new(index)
                    .precompressed_br()
                    .precompressed_gzip(),
            );
        router
            .fallback_service(files)
            .layer(axum::middleware::map_response(cache_policy))
    } else {
        warn!(dir = %dir.display(), "no index.html in the static dir; serving a notice instead (build it: cargo xtask dev)");
        router.fallback(not_built)
    };
    router.with_state(state)
}

async fn ws(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    upgrade: Result<session::Upgrade, session::NotWebSocket>,
) -> Response {
    if state.hub.shutdown.is_cancelled() {
        metrics::counter!("roomcast_admission_refused_total", "what" => "draining").increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is shutting down; connect to another\n",
        )
            .into_response();
    }
    if state.hub.cut_off() {
        metrics::counter!("roomcast_admission_refused_total", "what" => "cut_off").increment(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is cut off from Redis; connect to another\n",
        )
            .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if let Err(origin) = check_origin(&headers, &state.config.allowed_origins) {
        warn!(%origin, "WebSocket refused: origin not allowed");
        metrics::counter!("roomcast_origin_refused_total").increment(1);
        let body = format!(
            "origin {origin} may not open a WebSocket here; add it with --allowed-origins (ROOMCAST_ALLOWED_ORIGINS)\n"
        );
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    let grant = match &state.auth {
        None => None,
        Some(verifier) => {
            let checked = match verifier.check(uri.query(), &headers) {
                Ok(grant) => crate::auth::not_revoked(grant, state.hub.revocations()).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(grant) => Some(Box::new(grant)),
                Err(e) => {
                    warn!(error = %e, "WebSocket refused: token");
                    metrics::counter!("roomcast_auth_refused_total").increment(1);
                    return (
                        e.status(),
                        [(header::WWW_AUTHENTICATE, "Bearer")],
                        format!("{e}\n"),
                    )
                        .into_response();
                }
            }
        }
    };
    let conn = state.next_conn();
    let tracker = state.tracker.clone();
    let outlet = std::sync::Arc::new(crate::hub::Outlet::default());
    if let Err(wait) = state.hub.admission.connections.admit() {
        metrics::counter!("roomcast_admission_refused_total", "what" => "connect").increment(1);
        return upgrade.on_upgrade(session::config(), outlet, move |socket| {
            tracker.track_future(session::turn_away(socket, wait))
        });
    }
    let session_outlet = outlet.clone();
    upgrade.on_upgrade(session::config(), outlet, move |socket| {
        tracker.track_future(session::serve(
            socket,
            session_outlet,
            state.hub,
            conn,
            grant,
        ))
    })
}

/// Browsers always send Origin: it must be the page's own origin (same host as the request) or an allowed one.
/// Clients that send none (websocat, scripts) are not browsers and cannot be abused cross-site.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "<non-ASCII>".to_owned())?
        .to_ascii_lowercase();
    if allowed.contains(&origin) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(authority), Some(host)) if authority == host => Ok(()),
        _ => Err(origin),
    }
}

/// The archive's state for `/healthz` and `/readyz`: up, and how far behind (events and seconds).
fn archive_json(state: &AppState) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    match state.hub.bus.archive_status() {
        None => serde_json::Value::Null,
        Some(status) => {
            let error = status
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            #[allow(clippy::cast_precision_loss)]
            let lag_seconds = status.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            serde_json::json!({
                "up": status.up.load(Ordering::Relaxed),
                "lag_events": status.lag_events.load(Ordering::Relaxed),
                "lag_seconds": lag_seconds,
                "error": error,
            })
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "node": &*state.hub.node,
        "bus": state.hub.bus.kind(),
        "bus_up": state.hub.bus.is_up(),
        "archive": archive_json(&state),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

/// Readiness for load balancers: 503 while the bus is down or the replica is shutting down, so new clients go to
/// another replica. `/healthz` stays the liveness probe (the process answers). The archive's lag is shown, and does
/// not make a replica unready: while PostgreSQL is down, sends go on and wait in Redis.
async fn readyz(State(state): State<AppState>) -> Response {
    let (status, reason) = if state.hub.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.hub.bus.is_up() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus down")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = serde_json::json!({"status": reason, "node": &*state.hub.node, "archive": archive_json(&state)});
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// Caching of the static files: trunk names every asset with a content hash, so those never change and are
/// cached for a year; anything else (index.html above all, which names the current assets) is revalidated.
async fn cache_policy(uri: axum::http::Uri, mut response: Response) -> Response {
    if response.status().is_success() && !response.headers().contains_key(header::CACHE_CONTROL) {
        let html = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
        let value = if is_hashed_asset(uri.path()) && !html {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static(value),
        );
    }
    response
}

/// Whether a path names an asset trunk hashed: `name-<hash>[_bg].{wasm,js,css}`, the hash 8 to 16 hex digits.
fn is_hashed_asset(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or("");
    let Some((stem, ext)) = file.split_once('.') else {
        return false;
    };
    let stem = stem.strip_suffix("_bg").unwrap_or(stem);
    matches!(ext, "wasm" | "js" | "css")
        && stem.rsplit_once('-').is_some_and(|(name, hash)| {
            !name.is_empty()
                && (8..=16).contains(&hash.len())
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_built(State(state): State<AppState>) -> Response {
    let dir = Path::new(&state.config.static_dir).display().to_string();
    let page = format!(
        "<!doctype html><title>Roomcast</title><h1>Roomcast replica {node}</h1>\
         <p>The browser client is not built (no <code>index.html</code> in <code>{dir}</code>). \
         Build it with <code>cargo xtask dev</code> or <code>trunk build --release</code>.</p>\
         <p>The WebSocket endpoint <code>{ws}</code> works regardless.</p>",
        node = html_escape(&state.hub.node),
        dir = html_escape(&dir),
        ws = shared::WS_PATH,
    );
    (StatusCode::OK, Html(page)).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn only_trunk_hashed_assets_are_immutable() {
        assert!(is_hashed_asset("/frontend-1a2b3c4d5e6f7a8b_bg.wasm"));
        assert!(is_hashed_asset("/frontend-1a2b3c4d5e6f7a8b.js"));
        assert!(is_hashed_asset("/style-0123456789abcdef.css"));
        assert!(
            is_hashed_asset("/style-c5d686d2ff57d78.css"),
            "trunk drops leading zeros"
        );
        assert!(!is_hashed_asset("/notes-deadbeef.txt"));
        assert!(!is_hashed_asset("/"));
        assert!(!is_hashed_asset("/index.html"));
        assert!(!is_hashed_asset("/r/general"));
        assert!(!is_hashed_asset("/my-room-name"));
        assert!(!is_hashed_asset("/-0123456789abcdef.js"));
    }

    #[test]
    fn origin_rules() {
        let allowed = vec!["http://localhost:8080".to_owned()];
        assert!(check_origin(&headers(None, "x:1"), &[]).is_ok());
        assert!(
            check_origin(
                &headers(Some("http://127.0.0.1:3000"), "127.0.0.1:3000"),
                &[]
            )
            .is_ok()
        );
        assert!(check_origin(&headers(Some("https://Chat.Example"), "chat.example"), &[]).is_ok());
        assert!(
            check_origin(
                &headers(Some("http://localhost:8080"), "127.0.0.1:3000"),
                &allowed
            )
            .is_ok()
        );
        assert!(
            check_origin(
                &headers(Some("http://evil.example"), "127.0.0.1:3000"),
                &allowed
            )
            .is_err()
        );
        assert!(check_origin(&headers(Some("null"), "127.0.0.1:3000"), &allowed).is_err());
    }
}
