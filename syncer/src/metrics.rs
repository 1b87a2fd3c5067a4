//! Prometheus metrics. One [`Metrics`] value owns its registry and every family; it is passed
//! around explicitly (no globals). Labels are bounded: never object names.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for the syncer's own share of the sync lag (sub-millisecond to a minute: on a
/// saturated box a 10k-pod bench put every sample above the old 5 s top, which reads as "5 s").
const FINE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Request latency buckets (seconds), from a cache-hot loopback call to a slow list, and up to a
/// minute for the sync lag and reconciles of a saturated box.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
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
    /// Time the client-side rate limit made requests wait (a token or a seat), by cluster.
    pub rate_limit_wait: HistogramVec,
    /// Objects in each watch cache, by cluster and kind.
    pub store_objects: IntGaugeVec,
    /// Watch errors (each followed by a backoff and a re-watch), by cluster and kind.
    pub watch_errors: IntCounterVec,
    pub store_loads: IntCounterVec,
    /// Keys waiting in each kind's queue.
    pub queue_depth: IntGaugeVec,
    /// Requests a client whose seats follow the latency may have in flight now, by cluster.
    pub client_seats: IntGaugeVec,
    /// Time keys waited in the queue before a worker took them, by kind.
    pub queue_wait: HistogramVec,
    /// Reconciles by kind and result (`ok` or an error category).
    pub reconciles: IntCounterVec,
    /// Reconcile latency by kind.
    pub reconcile_duration: HistogramVec,
    /// Host writes by kind and operation (create, patch, delete).
    pub host_writes: IntCounterVec,
    /// Sync lag: first sight of a new virtual object until its host copy exists, by kind.
    pub sync_lag: HistogramVec,
    /// The syncer's own share of `sync_lag`: first sight until the host create is sent (the
    /// rest is the host API server's create), by kind.
    pub sync_prepare: HistogramVec,
    /// Virtual Services recreated because the host could not give them their ClusterIP.
    pub service_recreates: prometheus::IntCounter,
    /// Seconds from start until every watch had listed and every queue had drained once
    /// (0 until then).
    pub initial_sync_seconds: prometheus::Gauge,
    /// Bytes the allocator has handed out and not got back (glibc; 0 elsewhere), sampled every
    /// 10 s: the live heap, next to RSS.
    pub heap_allocated_bytes: prometheus::IntGauge,
    /// Times the syncer gave memory back to the kernel, by what (`heap`: free heap pages after
    /// a burst; `code`: its own code pages after a quiet minute, syncer/src/memory.rs).
    pub memory_releases: IntCounterVec,
    /// Kubelet endpoint requests by path kind and result.
    pub kubelet_requests: IntCounterVec,
    /// Kubelet streams (logs, exec, attach, port-forward) open now, by path kind.
    pub kubelet_streams_open: IntGaugeVec,
    /// 1 while this replica leads (always 1 without leader election), else 0.
    pub leader: prometheus::IntGauge,
    /// Times this replica became the leader.
    pub leader_transitions: prometheus::IntCounter,
}

impl Metrics {
    /// Reconciles of every kind and result so far.
    pub fn reconciles_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.reconciles
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

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
                "Time requests waited for the client-side rate limit (a token or a seat, shared round-robin by virtual namespace)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster"],
        )?;
        let store_objects = IntGaugeVec::new(
            Opts::new("store_objects", "Objects in the syncer's watch caches"),
            &["cluster", "kind"],
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new("watch_errors_total", "Watch failures (each retried with backoff)"),
            &["cluster", "kind"],
        )?;
        let store_loads = IntCounterVec::new(
            Opts::new(
                "store_loads_total",
                "Full (re)loads of a watch cache; more than one per kind means a watch fell too far behind (410 Gone) or failed",
            ),
            &["cluster", "kind"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new("queue_depth", "Keys waiting to be reconciled"),
            &["kind"],
        )?;
        let client_seats = IntGaugeVec::new(
            Opts::new(
                "client_seats",
                "Requests the client may have in flight now, where they follow the server's latency",
            ),
            &["cluster"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new("queue_wait_seconds", "Time keys waited in the queue")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "reconciles_total",
                "Reconciles by kind and result (ok or error category)",
            ),
            &["kind", "result"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Reconcile latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let host_writes = IntCounterVec::new(
            Opts::new(
                "host_writes_total",
                "Writes to the host API server by kind and operation",
            ),
            &["kind", "op"],
        )?;
        let sync_lag = HistogramVec::new(
            HistogramOpts::new(
                "sync_lag_seconds",
                "First sight of a virtual object until its host copy exists",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let sync_prepare = HistogramVec::new(
            HistogramOpts::new(
                "sync_prepare_seconds",
                "First sight of a virtual object until its host create is sent (the syncer's own share of sync_lag)",
            )
            .buckets(FINE_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let service_recreates = prometheus::IntCounter::new(
            "service_recreates_total",
            "Virtual Services recreated with the host's ClusterIP (the virtual IP was taken on the host)",
        )?;
        registry.register(Box::new(service_recreates.clone()))?;
        let initial_sync_seconds = prometheus::Gauge::new(
            "initial_sync_seconds",
            "Seconds from start until every watch had listed and every queue had drained once (0 until then)",
        )?;
        registry.register(Box::new(initial_sync_seconds.clone()))?;
        let heap_allocated_bytes = prometheus::IntGauge::new(
            "heap_allocated_bytes",
            "Bytes allocated and not freed (glibc mallinfo2; sampled every 10 s)",
        )?;
        registry.register(Box::new(heap_allocated_bytes.clone()))?;
        let memory_releases = IntCounterVec::new(
            Opts::new(
                "memory_releases_total",
                "Times the syncer gave memory back to the kernel: heap (free heap pages, after a burst) or code (its own code pages, after a quiet minute)",
            ),
            &["what"],
        )?;
        registry.register(Box::new(memory_releases.clone()))?;
        let kubelet_requests = IntCounterVec::new(
            Opts::new(
                "kubelet_requests_total",
                "Kubelet endpoint requests by path kind (containerLogs, exec, ...) and result (ok, unauthorized, forbidden, not_found, ...)",
            ),
            &["path", "result"],
        )?;
        let kubelet_streams_open = IntGaugeVec::new(
            Opts::new(
                "kubelet_streams_open",
                "Kubelet streams (logs, exec, attach, port-forward) open now",
            ),
            &["path"],
        )?;
        registry.register(Box::new(kubelet_requests.clone()))?;
        let leader = prometheus::IntGauge::new(
            "leader",
            "1 while this replica holds the leader lease (always 1 without --leader-elect), else 0",
        )?;
        let leader_transitions =
            prometheus::IntCounter::new("leader_transitions_total", "Times this replica became the leader")?;
        leader.set(1);
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leader_transitions.clone()))?;
        for c in [&store_objects, &queue_depth, &client_seats, &kubelet_streams_open] {
            registry.register(Box::new(c.clone()))?;
        }
        for c in [&watch_errors, &store_loads, &reconciles, &host_writes] {
            registry.register(Box::new(c.clone()))?;
        }
        for h in [&queue_wait, &reconcile_duration, &sync_lag, &sync_prepare] {
            registry.register(Box::new(h.clone()))?;
        }
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
            store_objects,
            watch_errors,
            store_loads,
            queue_depth,
            client_seats,
            queue_wait,
            reconciles,
            reconcile_duration,
            host_writes,
            sync_lag,
            sync_prepare,
            service_recreates,
            initial_sync_seconds,
            heap_allocated_bytes,
            memory_releases,
            kubelet_requests,
            kubelet_streams_open,
            leader,
            leader_transitions,
        })
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
