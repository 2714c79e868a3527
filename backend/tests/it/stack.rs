//! The deployed topology on this machine: real nginx running the repository's own `deploy/nginx.conf` in front of
//! two `roomcast` processes and Redis — what `docker compose up` and `cargo xtask stack` run. Clients land on both
//! replicas through nginx (round robin, no sticky sessions); a replica stopped with SIGTERM under traffic drains
//! (spreading its closes over `--drain-secs`), its clients resume through nginx on the other, and nothing acked is
//! lost or doubled.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use testkit::Nginx;
use testkit::traffic::through_one_address;

use crate::harness::{Redis, node_behind, replica_process};

fn nginx_conf() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_balances_without_sticky_sessions_and_a_draining_replica_loses_nothing() {
    let redis = Redis::start().await;
    // A drain of 3 s: its clients leave over that window, not all in the same instant.
    let mut a = replica_process(&redis.url(), "stack-a", &["--drain-secs", "3"]).await;
    let b = replica_process(&redis.url(), "stack-b", &[]).await;
    let nginx = Nginx::start(nginx_conf(), &[a.addr, b.addr]).await;
    let url = nginx.ws_url();

    let mut nodes = HashSet::new();
    for _ in 0..4 {
        nodes.insert(node_behind(&url).await);
    }
    assert_eq!(
        nodes,
        HashSet::from(["stack-a".to_owned(), "stack-b".to_owned()]),
        "round robin reaches both replicas"
    );
    let (status, body) = testkit::http_get(nginx.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");

    // Everyone goes through nginx; replica A is stopped as `docker stop` would, mid-traffic.
    let drain = async {
        assert!(
            a.terminate(Duration::from_secs(10)).await,
            "replica A drained and exited by itself"
        );
    };
    let outcome = through_one_address("nginx-sigterm", "stack", &url, drain).await;
    outcome.assert_exact();
    let moved = outcome.reconnects();
    assert!(moved > 0, "clients on replica A reconnected through nginx");
    assert_eq!(
        node_behind(&url).await,
        "stack-b",
        "nginx skips the stopped replica"
    );
    drop(b);
}
