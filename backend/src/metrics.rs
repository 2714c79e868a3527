//! Prometheus metrics, rendered as text at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of `roomcast_fanout_delay_seconds`: from a message's store to its fan-out on this replica.
const DELAY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets of `roomcast_search_seconds`: a search, from request to answer.
const SEARCH_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide recorder once (replicas started in one test process share it) and returns its handle.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("roomcast_fanout_delay_seconds".into()),
                    DELAY_BUCKETS,
                )
                .expect("static, non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("roomcast_search_seconds".into()),
                    SEARCH_BUCKETS,
                )
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
