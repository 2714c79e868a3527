//! What operators see: `/metrics` after real traffic, and the Grafana dashboard in `deploy/` only querying metrics a
//! replica exports (a renamed metric would leave a panel silently empty).

use std::collections::BTreeSet;

use crate::harness::{Redis, Replica, http_get};

/// Every `roomcast_*` metric name the replica's code can export.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let code = std::fs::read_to_string(&path).unwrap();
                for kind in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    for part in code.split(kind).skip(1) {
                        names.insert(part.split('"').next().unwrap().to_owned());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(dashboard).expect("valid JSON");
    let exported = exported();
    let mut used = BTreeSet::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for part in expr.split("roomcast_").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let name = format!("roomcast_{name}");
                let base = name.strip_suffix("_bucket").unwrap_or(&name).to_owned();
                assert!(
                    exported.contains(&base),
                    "the dashboard queries {name}, which no replica exports"
                );
                used.insert(base);
            }
        }
    }
    let unused: Vec<_> = exported.difference(&used).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");
}

#[tokio::test]
async fn metrics_show_traffic_and_the_fanout_delay() {
    let redis = Redis::start().await;
    let replica = Replica::start(Some(&redis.url())).await;
    let mut alice = replica.client().await;
    alice.join("ops", "alice", None).await;
    alice.say("ops", "hello").await;
    alice.message_in("ops").await;
    let (status, body) = http_get(replica.addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "roomcast_messages_published_total",
        "roomcast_frames_fanned_out_total",
        "roomcast_fanout_delay_seconds_bucket{le=\"0.0005\"}",
        "roomcast_fanout_delay_seconds_count",
        "roomcast_connections",
        "roomcast_bus_up",
    ] {
        assert!(body.contains(line), "/metrics lacks {line}:\n{body}");
    }
}
