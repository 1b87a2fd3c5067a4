//! Typed clients for the two API servers. [`HostClient`] and [`VirtualClient`] are distinct
//! types so a host call can never be made with the virtual client by mistake. Both carry two
//! tower layers: a client-side request budget (QPS/burst and requests in flight) shared fairly
//! between virtual namespaces ([`crate::fair_share`]), and request metrics by {cluster, verb,
//! resource, code}, which is how "as few host requests as possible" is measured.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tower::{Layer, Service};

use crate::config::{ClusterAccess, RateLimit};
use crate::error::{Cluster, Error, Result};
use crate::fair_share::{FairShare, Flow};
use crate::metrics::Metrics;
use crate::seat_limit::SeatLimit;

/// Client for the host API server (namespaced permissions only).
#[derive(Clone)]
pub struct HostClient(pub Client);

/// Client for the virtual (k3s) API server.
#[derive(Clone)]
pub struct VirtualClient(pub Client);

impl HostClient {
    /// The host client, and a second one for the kubelet endpoint's streams (logs, exec,
    /// attach, port-forward) on connections of its own with `TCP_NODELAY`: kube's connector
    /// turns it off, and with Nagle's algorithm a small stream frame written behind another
    /// waited for the host's delayed ACK (~40 ms, twice per port-forward connection). The two
    /// share the rate limit and count their requests the same way.
    pub async fn with_streams(
        access: &ClusterAccess,
        rate: RateLimit,
        metrics: &Metrics,
    ) -> Result<(Self, Client)> {
        let config = load_config(Cluster::Host, access).await?;
        let limit = RateLimitLayer::new(Cluster::Host, rate, metrics.clone());
        let streams = build_nodelay(Cluster::Host, &config, &limit, metrics)?;
        let main = build_limited(Cluster::Host, config, &limit, metrics)?;
        Ok((Self(main), streams))
    }
}

impl HostClient {
    /// A host client of the leader election's own: its own connections and rate limit, so a
    /// lease renewal never waits behind a burst of the workers' requests (counted the same way).
    pub async fn for_election(access: &ClusterAccess, metrics: &Metrics) -> Result<Client> {
        let config = load_config(Cluster::Host, access).await?;
        let rate = RateLimit {
            qps: 5.0,
            burst: 10,
            max_in_flight: 0,
            adaptive: None,
        };
        build(Cluster::Host, config, rate, metrics)
    }
}

impl VirtualClient {
    pub async fn new(kubeconfig: &std::path::Path, rate: RateLimit, metrics: &Metrics) -> Result<Self> {
        let config = load_config(
            Cluster::Virtual,
            &ClusterAccess::Kubeconfig(kubeconfig.to_owned()),
        )
        .await?;
        build(Cluster::Virtual, config, rate, metrics).map(Self)
    }
}

/// Names the caller in the API servers' audit logs (`userAgent`): `vnest-<component>/<version>`,
/// so a platform team (and `make test`'s Role check) can tell the syncer from a person or a tool
/// using the same ServiceAccount.
pub fn set_user_agent(config: &mut Config, component: &str) {
    let agent = format!("vnest-{component}/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
}

/// How long a response may stay silent before its connection counts as dead (kube's own
/// watch idle timeout was 295 s). Watches are long ([`crate::engine::watch::config`]: 1–2 h)
/// but never that quiet: the API server's watch cache sends each a bookmark about once a
/// minute, and watches of kinds without a watch cache end on the server after 290 s
/// ([`crate::engine::watch::config_for`]). So a watch whose connection died without a FIN or
/// RST (a partition, a host that vanished) is caught within this time and resumes from its
/// last resourceVersion; any other request answers in far less. The kubelet endpoint's
/// streams use connections of their own without it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

async fn load_config(cluster: Cluster, access: &ClusterAccess) -> Result<Config> {
    let mut config = load_config_inner(cluster, access).await?;
    set_user_agent(&mut config, "syncer");
    config.read_timeout = Some(READ_TIMEOUT);
    Ok(config)
}

async fn load_config_inner(cluster: Cluster, access: &ClusterAccess) -> Result<Config> {
    match access {
        ClusterAccess::InCluster => {
            Config::incluster().map_err(|source| Error::InCluster { cluster, source })
        }
        ClusterAccess::Kubeconfig(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                cluster,
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    cluster,
                    path: path.clone(),
                    source,
                })
        }
    }
}

fn build(cluster: Cluster, config: Config, rate: RateLimit, metrics: &Metrics) -> Result<Client> {
    build_limited(
        cluster,
        config,
        &RateLimitLayer::new(cluster, rate, metrics.clone()),
        metrics,
    )
}

fn build_limited(
    cluster: Cluster,
    config: Config,
    limit: &RateLimitLayer,
    metrics: &Metrics,
) -> Result<Client> {
    let builder = ClientBuilder::try_from(config).map_err(|source| Error::Client { cluster, source })?;
    Ok(builder
        .with_layer(&MetricsLayer {
            cluster,
            metrics: metrics.clone(),
        })
        .with_layer(limit)
        .build())
}

/// A client like [`build_limited`]'s on connections with `TCP_NODELAY`, no read timeout and no
/// retries (kube's own stack minus its timeouts, retry, gzip, extra-header and tracing layers;
/// the syncer's kubeconfigs set no impersonation): for streams.
fn build_nodelay(
    cluster: Cluster,
    config: &Config,
    limit: &RateLimitLayer,
    metrics: &Metrics,
) -> Result<Client> {
    use kube::client::ConfigExt as _;
    let error = |source| Error::Client { cluster, source };
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    // Reads through a 64 KiB buffer under TLS (rustls reads 4 KiB at a time): the kubelet
    // endpoint's streams, crate::kubelet::io.
    let http = crate::kubelet::io::ReadBufferedConnector(http);
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(error)?;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .layer(config.extra_headers_layer().map_err(error)?)
        .option_layer(config.auth_layer().map_err(error)?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(ClientBuilder::new(service, config.default_namespace.clone())
        .with_layer(&MetricsLayer {
            cluster,
            metrics: metrics.clone(),
        })
        .with_layer(limit)
        .build())
}

// ---------------------------------------------------------------------------------------------
// Request classification (pure)

/// The Kubernetes verb and resource of a request, derived from method, path and query the way
/// the API server's request-info resolver does (simplified to what the syncer sends).
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // Skip the API prefix: /api/v1/... or /apis/<group>/<version>/...
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => return (non_resource_verb(method), "nonresource".into()),
    };
    // namespaces/<ns>/<resource>/... unless the path is about the namespace object itself.
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, has_name, subresource) = match rest.as_slice() {
        [] => return (non_resource_verb(method), "discovery".into()),
        [resource] => (resource.to_string(), false, None),
        [resource, _name] => (resource.to_string(), true, None),
        [resource, _name, sub, ..] => (resource.to_string(), true, Some(*sub)),
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource,
    };
    let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method, has_name) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

fn non_resource_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "get",
        Method::POST => "post",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics layer

#[derive(Clone)]
struct MetricsLayer {
    cluster: Cluster,
    metrics: Metrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            cluster: self.cluster,
            metrics: self.metrics.clone(),
        }
    }
}

struct MetricsService<S> {
    inner: S,
    cluster: Cluster,
    metrics: Metrics,
}

impl<S, B, RB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        let cluster = self.cluster.as_str();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            // From the first poll: the rate limit layer above polls this once the request's
            // turn has come, so the latency excludes the client-side wait.
            let started = Instant::now();
            let result = fut.await;
            let code = match &result {
                Ok(res) => res.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            metrics
                .api_requests
                .with_label_values(&[cluster, verb, resource.as_str(), code.as_str()])
                .inc();
            metrics
                .api_request_duration
                .with_label_values(&[cluster, verb])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limit layer: every request waits for its turn in the cluster's [`FairShare`] (a token
// bucket of `qps` up to `burst`, and a limit on unanswered requests: at most `max_in_flight`,
// or following the server's latency up to it, crate::seat_limit), served
// round-robin by the virtual namespace whose reconcile sent it. The wait happens in the response
// future, which kube's `Buffer` hands back to the calling task: there the task-local flow is
// known, and a waiting request holds up nobody else's (a wait in `poll_ready` held the Buffer's
// one worker, so every request queued behind it in arrival order). The inner future is lazy
// (kube's stack sends nothing until polled), so the request leaves only once granted.

#[derive(Clone)]
struct RateLimitLayer {
    cluster: Cluster,
    share: FairShare,
    metrics: Metrics,
}

impl RateLimitLayer {
    fn new(cluster: Cluster, rate: RateLimit, metrics: Metrics) -> Self {
        // Seats that follow the latency are shown as they move (`client_seats`).
        let gauge = rate
            .adaptive
            .is_some()
            .then(|| metrics.client_seats.with_label_values(&[cluster.as_str()]));
        Self {
            cluster,
            share: FairShare::new(rate.qps, rate.burst, seats(&rate), gauge),
            metrics,
        }
    }
}

/// The seats `rate` asks for.
fn seats(rate: &RateLimit) -> SeatLimit {
    match rate.adaptive {
        Some(min) => SeatLimit::adaptive(min, rate.max_in_flight, Instant::now()),
        None => SeatLimit::fixed(rate.max_in_flight),
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            cluster: self.cluster,
            share: self.share.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The longest a request keeps its seat (see [`crate::fair_share`]) while it waits for its
/// answer: far above any healthy request (milliseconds), well below the read timeout.
const SEAT_HOLD_MAX: Duration = Duration::from_secs(10);

struct RateLimitService<S> {
    inner: S,
    cluster: Cluster,
    share: FairShare,
    metrics: Metrics,
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Writes go to the datastore; reads are mostly answered from the API server's watch
        // cache, and watches answer at once: only a write's latency says how busy it is.
        let timed = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let sent = self.inner.call(req);
        let (share, metrics, cluster) = (self.share.clone(), self.metrics.clone(), self.cluster);
        Box::pin(async move {
            let (mut seat, waited) = share.acquire(Flow::current()).await;
            if !timed {
                seat.untimed();
            }
            if let Some(waited) = waited {
                metrics
                    .rate_limit_wait
                    .with_label_values(&[cluster.as_str()])
                    .observe(waited.as_secs_f64());
            }
            // A request holds its seat until answered, but not longer than SEAT_HOLD_MAX: one
            // that hangs (an API server waiting on its datastore, a connection that died) must
            // not keep the others out until the read timeout.
            let mut sent = Box::pin(sent);
            if let Ok(answer) = tokio::time::timeout(SEAT_HOLD_MAX, &mut sent).await {
                drop(seat);
                return answer;
            }
            drop(seat);
            sent.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests_like_the_api_server() {
        let cases: &[(Method, &str, Option<&str>, &str, &str)] = &[
            (Method::GET, "/api/v1/namespaces/ns/pods", None, "list", "pods"),
            (
                Method::GET,
                "/api/v1/namespaces/ns/pods",
                Some("watch=true&labelSelector=a"),
                "watch",
                "pods",
            ),
            (Method::GET, "/api/v1/namespaces/ns/pods/p", None, "get", "pods"),
            (
                Method::PATCH,
                "/api/v1/namespaces/ns/pods/p/status",
                Some("fieldManager=vnest"),
                "patch",
                "pods/status",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/ns/pods/p/binding",
                None,
                "create",
                "pods/binding",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/ns/secrets",
                None,
                "create",
                "secrets",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/secrets/s",
                None,
                "delete",
                "secrets",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ns/secrets",
                None,
                "deletecollection",
                "secrets",
            ),
            (Method::GET, "/api/v1/namespaces", None, "list", "namespaces"),
            (Method::GET, "/api/v1/namespaces/ns", None, "get", "namespaces"),
            (Method::GET, "/api/v1/nodes", Some("watch=1"), "watch", "nodes"),
            (
                Method::PUT,
                "/apis/apps/v1/namespaces/ns/statefulsets/s",
                None,
                "update",
                "statefulsets",
            ),
            (Method::GET, "/apis/apps/v1", None, "get", "discovery"),
            (Method::GET, "/version", None, "get", "nonresource"),
        ];
        for (method, path, query, verb, resource) in cases {
            assert_eq!(
                classify(method, path, *query),
                (*verb, resource.to_string()),
                "{method} {path}"
            );
        }
    }
}
