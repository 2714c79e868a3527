//! The compiled frontend as browsers fetch it: precompressed files chosen by `Accept-Encoding`, hashed assets
//! cached for a year, `index.html` (and the room URLs it answers) always revalidated.

use crate::harness::{Replica, config};

async fn fetch(replica: &Replica, path: &str, encoding: Option<&str>) -> (u16, String, String) {
    let headers: Vec<(&str, &str)> = encoding
        .map(|e| vec![("Accept-Encoding", e)])
        .unwrap_or_default();
    testkit::http_request(replica.addr, "GET", path, &headers, None).await
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn assets_are_served_precompressed_and_cached_by_hash() {
    let dir = std::env::temp_dir().join(format!("roomcast-assets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = "frontend-0123456789abcdef_bg.wasm";
    std::fs::write(dir.join("index.html"), "<!doctype html>index").unwrap();
    std::fs::write(dir.join(wasm), "raw wasm").unwrap();
    std::fs::write(dir.join(format!("{wasm}.br")), "brotli bytes").unwrap();
    std::fs::write(dir.join(format!("{wasm}.gz")), "gzip bytes").unwrap();
    let mut c = config(None);
    c.static_dir = dir.clone();
    let replica = Replica::start_with(c).await;

    let path = format!("/{wasm}");
    let (status, head, body) = fetch(&replica, &path, Some("gzip, deflate, br")).await;
    assert_eq!((status, body.as_str()), (200, "brotli bytes"));
    assert_eq!(header(&head, "content-encoding"), Some("br"));
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let (_, head, body) = fetch(&replica, &path, Some("gzip")).await;
    assert_eq!(
        (header(&head, "content-encoding"), body.as_str()),
        (Some("gzip"), "gzip bytes")
    );
    let (_, head, body) = fetch(&replica, &path, None).await;
    assert_eq!(
        (header(&head, "content-encoding"), body.as_str()),
        (None, "raw wasm")
    );

    for page in [
        "/",
        "/index.html",
        "/r/general",
        "/gone-0123456789abcdef.js",
    ] {
        let (status, head, body) = fetch(&replica, page, Some("br")).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "<!doctype html>index"),
            "{page}"
        );
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
