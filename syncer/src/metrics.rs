//! Prometheus metrics. One [`Metrics`] value owns its registry and every family; it is passed
//! around explicitly (no globals). Labels are bounded: never object names.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Request latency buckets (seconds), from a cache-hot loopback call to a slow list.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// API requests by cluster, verb, resource and HTTP status code (or `error`).
    pub api_requests: IntCounterVec,
    /// API request latency (time to response headers) by cluster and verb.
    pub api_request_duration: HistogramVec,
    /// 1 while the watch that proves a cluster reachable is healthy, else 0.
    pub cluster_ready: IntGaugeVec,
    /// Time the client-side rate limiter made requests wait, by cluster.
    pub rate_limit_wait: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("vnest_syncer".into()), None)?;
        let api_requests = IntCounterVec::new(
            Opts::new("api_requests_total", "Kubernetes API requests made by the syncer"),
            &["cluster", "verb", "resource", "code"],
        )?;
        let api_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "api_request_duration_seconds",
                "Kubernetes API request latency to response headers",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster", "verb"],
        )?;
        let cluster_ready = IntGaugeVec::new(
            Opts::new(
                "cluster_ready",
                "1 while the syncer's watch on this cluster is healthy",
            ),
            &["cluster"],
        )?;
        let rate_limit_wait = HistogramVec::new(
            HistogramOpts::new(
                "rate_limit_wait_seconds",
                "Time requests waited for the client-side rate limiter",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster"],
        )?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_request_duration.clone()))?;
        registry.register(Box::new(cluster_ready.clone()))?;
        registry.register(Box::new(rate_limit_wait.clone()))?;
        Ok(Self {
            registry,
            api_requests,
            api_request_duration,
            cluster_ready,
            rate_limit_wait,
        })
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
