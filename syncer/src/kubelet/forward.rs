//! I/O of the kubelet endpoint: find the host pod of a virtual pod (from the caches), stream
//! its logs from the host's `pods/log`, and splice exec/attach/port-forward upgrades with the
//! host's `pods/exec|attach|portforward`, byte for byte, whatever protocol the two ends speak.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use super::route::{NodeRead, PodRef, Stream};
use super::stats::{self, PodIndex, VirtualPod};
use crate::resources::pods::CachedPod;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A whole body.
pub fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        http_body_util::Full::new(text.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// One open stream in the `streams open` gauge while it lives.
pub struct StreamGuard(IntGauge);

impl StreamGuard {
    pub fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A response body that holds a [`StreamGuard`] until it is dropped (done or disconnected).
struct Guarded {
    inner: Body,
    _guard: StreamGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The host pod a virtual pod runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPod {
    pub namespace: String,
    pub name: String,
    /// The virtual pod it is the copy of (host names in refusals are rewritten to these).
    pub virtual_namespace: String,
    pub virtual_name: String,
}

/// Pure: a host refusal's text as the tenant may read it: the host pod's name becomes the
/// virtual pod's, the host namespace the virtual one, other host names of ours are mapped back
/// or redacted (see [`crate::engine::events::tenant_text`]).
pub fn refusal_text(bytes: &[u8], pod: &HostPod, vcluster: &str, host_namespace: &str) -> String {
    let text = String::from_utf8_lossy(bytes);
    let names = crate::engine::events::HostNames {
        vcluster,
        host_namespace,
        virtual_namespace: &pod.virtual_namespace,
        known: vec![(pod.name.as_str(), pod.virtual_name.as_str())],
    };
    crate::engine::events::tenant_text(&text, &names)
}

/// Pure: whether `pod` has a container (or init or ephemeral container) named `name`.
pub fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec.init_containers.iter().flatten().any(|c| c.name == name)
        || spec.ephemeral_containers.iter().flatten().any(|c| c.name == name)
}

/// Everything the forwarding needs.
#[derive(Clone)]
pub struct Forwarder {
    pub host: Client,
    pub vcluster: String,
    pub host_namespace: String,
    pub virtual_pods: Store<CachedPod>,
    pub host_pods: Store<CachedPod>,
    pub cancel: CancellationToken,
    /// When the host last refused its node proxy (`nodes/proxy`): node reads are answered 403
    /// without asking again for [`NODE_PROXY_REFUSAL_TTL`].
    pub node_proxy_refused: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How long a host refusal of its node proxy is believed (a scraper asking every few seconds
/// costs the host one request per this period; a granted permission shows within it).
pub const NODE_PROXY_REFUSAL_TTL: std::time::Duration = std::time::Duration::from_secs(20);

/// The most of a host node read (summary or metrics of one node) that is read.
const NODE_READ_MAX: usize = 32 << 20;

/// The most of `/run`'s output (stdout, then stderr) that is kept; the rest is dropped.
const RUN_OUTPUT_MAX: usize = 16 << 20;

/// Why a node read or a `/run` did not give an answer from the host.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{verb} {what} on the host: {source}")]
    Host {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what} from the host: {source}")]
    Body {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{what} from the host is not JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The node proxy refusal, as the tenant reads it.
pub const NODE_PROXY_FORBIDDEN: &str = "node stats and resource metrics of a vcluster need the host's nodes/proxy \
    permission (get), which this vcluster is not granted: apply the optional component \
    manifests/components/node-stats on the host\n";

impl Forwarder {
    /// The host pod of a virtual pod of this vcluster, or `None` (the caller answers 404): the
    /// virtual pod must exist (with that UID and container, when given), and its host copy must
    /// be in our cache of host pods (which holds only pods marked as this vcluster's).
    pub fn resolve(&self, pod: &PodRef, container: Option<&str>) -> Option<HostPod> {
        let cached = self
            .virtual_pods
            .get(&ObjectRef::new(&pod.name).within(&pod.namespace))?;
        let v = cached.unpack().ok()?;
        if let Some(uid) = &pod.uid
            && v.metadata.uid.as_deref() != Some(uid.as_str())
        {
            return None;
        }
        if let Some(c) = container
            && !has_container(&v, c)
        {
            return None;
        }
        let name = crate::naming::host_name(&self.vcluster, &pod.namespace, &pod.name);
        let host = self
            .host_pods
            .get(&ObjectRef::new(&name).within(&self.host_namespace))?;
        // The host copy must be of this virtual pod (not of an older pod of the same name).
        let source = host
            .full_metadata()
            .ok()
            .and_then(|m| crate::markers::source_of(&m))?;
        let same = source.name == pod.name
            && source.namespace.as_deref() == Some(pod.namespace.as_str())
            && (source.uid.is_empty() || v.metadata.uid.as_deref() == Some(source.uid.as_str()));
        same.then(|| HostPod {
            namespace: self.host_namespace.clone(),
            name,
            virtual_namespace: pod.namespace.clone(),
            virtual_name: pod.name.clone(),
        })
    }

    /// `/pods`: this vcluster's virtual pods that run on the host, as a PodList.
    pub fn pods(&self) -> Response<Body> {
        let items: Vec<Pod> = self
            .virtual_pods
            .state()
            .iter()
            .filter_map(|p| p.unpack().ok())
            .filter(|p| {
                let (ns, name) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref());
                ns.zip(name).is_some_and(|(ns, name)| {
                    let host = crate::naming::host_name(&self.vcluster, ns, name);
                    self.host_pods
                        .get(&ObjectRef::new(&host).within(&self.host_namespace))
                        .is_some()
                })
            })
            .collect();
        let list = serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
        let mut resp = full(StatusCode::OK, list.to_string());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// Pure over the caches: our host pods (with the virtual pod each runs) and the host nodes
    /// they run on.
    fn pod_index(&self) -> (PodIndex, Vec<String>) {
        let mut index = PodIndex {
            host_namespace: self.host_namespace.clone(),
            pods: std::collections::HashMap::new(),
        };
        let mut nodes = std::collections::BTreeSet::new();
        for host in self.host_pods.state() {
            let Ok(h) = host.unpack() else { continue };
            let (Some(name), Some(node)) = (
                h.metadata.name.clone(),
                h.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            let Some(source) = crate::markers::source_of(&h.metadata) else {
                continue;
            };
            let Some(vns) = source.namespace.clone() else {
                continue;
            };
            // Copied or hand-edited markers on some other pod do not count.
            if h.metadata.namespace.as_deref() != Some(self.host_namespace.as_str())
                || name != crate::naming::host_name(&self.vcluster, &vns, &source.name)
            {
                continue;
            }
            let Some(v) = self
                .virtual_pods
                .get(&ObjectRef::new(&source.name).within(&vns))
                .and_then(|c| c.unpack().ok())
            else {
                continue;
            };
            let uid = v.metadata.uid.clone().unwrap_or_default();
            if !source.uid.is_empty() && source.uid != uid {
                continue;
            }
            let claims = v
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|vol| {
                    let claim = vol.persistent_volume_claim.as_ref()?;
                    Some((vol.name.clone(), claim.claim_name.clone()))
                })
                .collect();
            nodes.insert(node);
            index.pods.insert(
                name,
                VirtualPod {
                    namespace: vns,
                    name: source.name.clone(),
                    uid,
                    claims,
                },
            );
        }
        (index, nodes.into_iter().collect())
    }

    fn node_proxy_recently_refused(&self) -> bool {
        self.node_proxy_refused
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| at.elapsed() < NODE_PROXY_REFUSAL_TTL)
    }

    /// `/stats/summary` or `/metrics/resource`: read from the host node proxy of every host
    /// node our pods run on (one request each, only when asked), translated ([`stats`]). A host
    /// refusal (403) is answered 403 saying which permission is missing, and remembered for
    /// [`NODE_PROXY_REFUSAL_TTL`].
    pub async fn node_read(&self, read: NodeRead, host_query: &str) -> Result<Response<Body>, ForwardError> {
        if self.node_proxy_recently_refused() {
            return Ok(full(StatusCode::FORBIDDEN, NODE_PROXY_FORBIDDEN));
        }
        let (index, nodes) = self.pod_index();
        let mut bodies = Vec::with_capacity(nodes.len());
        let mut failed = None;
        for node in &nodes {
            let query = if host_query.is_empty() {
                String::new()
            } else {
                format!("?{host_query}")
            };
            let uri = format!("/api/v1/nodes/{node}/proxy{}{query}", read.path());
            let what = format!("{} of node {node}", read.path());
            let req =
                Request::get(uri)
                    .body(kube::client::Body::empty())
                    .map_err(|e| ForwardError::Host {
                        verb: "get",
                        what: what.clone(),
                        source: kube::Error::HttpError(e),
                    })?;
            let resp = self.host.send(req).await.map_err(|source| ForwardError::Host {
                verb: "get",
                what: what.clone(),
                source,
            })?;
            let status = resp.status();
            if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                if let Ok(mut at) = self.node_proxy_refused.lock() {
                    *at = Some(std::time::Instant::now());
                }
                tracing::info!(%node, status = status.as_u16(), "the host refused its node proxy");
                return Ok(full(StatusCode::FORBIDDEN, NODE_PROXY_FORBIDDEN));
            }
            let bytes = read_at_most(resp.into_body(), NODE_READ_MAX)
                .await
                .map_err(|source| ForwardError::Body {
                    what: what.clone(),
                    source,
                })?;
            if !status.is_success() {
                // A node that does not answer (gone, no kubelet): the others still count.
                tracing::debug!(%node, status = status.as_u16(), "a host node read failed");
                failed = Some(status);
                continue;
            }
            bodies.push((what, bytes));
        }
        if let (true, Some(status)) = (bodies.is_empty(), failed) {
            // No node answered: say so with the host's status (its text may name host objects).
            let msg = format!("{} of the host nodes: the host answered {status}\n", read.path());
            return Ok(full(status, msg));
        }
        let (text, content_type) = match read {
            NodeRead::StatsSummary => {
                let docs = bodies
                    .into_iter()
                    .map(|(what, b)| {
                        serde_json::from_slice::<serde_json::Value>(&b)
                            .map_err(|source| ForwardError::Json { what, source })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (stats::summary(&docs, &index).to_string(), "application/json")
            }
            NodeRead::MetricsResource => {
                let texts: Vec<String> = bodies
                    .iter()
                    .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                    .collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                (
                    stats::resource_metrics(&refs, &index, nodes.len() == 1),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
        };
        let mut resp = full(StatusCode::OK, text);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        Ok(resp)
    }

    /// `/run`: the command run in the host pod's container by a host exec (no stdin, no TTY);
    /// its output (stdout, then stderr, as the kubelet joins them) once it has ended: 200 when
    /// it succeeded, 500 with the output and the reason otherwise (as the kubelet answers).
    pub async fn run(
        &self,
        pod: &HostPod,
        container: &str,
        command: Vec<String>,
        gauge: IntGauge,
    ) -> Result<Response<Body>, ForwardError> {
        let _guard = StreamGuard::new(gauge);
        if command.is_empty() {
            return Ok(full(StatusCode::BAD_REQUEST, "missing the command (cmd)\n"));
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(self.host.clone(), &pod.namespace);
        let params = kube::api::AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut process = match api.exec(&pod.name, command, &params).await {
            Ok(p) => AbortOnDrop(p),
            Err(kube::Error::Api(status)) => {
                let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
                let text = refusal_text(
                    status.message.as_bytes(),
                    pod,
                    &self.vcluster,
                    &self.host_namespace,
                );
                return Ok(full(code, format!("{text}\n")));
            }
            Err(source) => {
                return Err(ForwardError::Host {
                    verb: "exec",
                    what: "a command".into(),
                    source,
                });
            }
        };
        let status = process.0.take_status();
        let (stdout, stderr) = (process.0.stdout(), process.0.stderr());
        let ended = async {
            let (mut out, err) = tokio::join!(read_at_most_from(stdout), read_at_most_from(stderr));
            out.extend_from_slice(&err);
            out.truncate(RUN_OUTPUT_MAX);
            let status = match status {
                Some(s) => s.await,
                None => None,
            };
            (out, status)
        };
        let (mut out, status) = tokio::select! {
            () = self.cancel.cancelled() => {
                return Ok(full(StatusCode::SERVICE_UNAVAILABLE, "the kubelet endpoint is shutting down\n"));
            }
            done = ended => done,
        };
        drop(process);
        let failed = status
            .as_ref()
            .and_then(|s| s.status.as_deref())
            .is_some_and(|s| s != "Success");
        if failed {
            let reason = status
                .and_then(|s| s.message)
                .unwrap_or_else(|| "command failed".to_owned());
            out.extend_from_slice(format!("{reason}\n").as_bytes());
            return Ok(full(StatusCode::INTERNAL_SERVER_ERROR, out));
        }
        Ok(full(StatusCode::OK, out))
    }

    /// Streams the host pod's log (`host_query` from the route) back as it comes.
    pub async fn logs(
        &self,
        pod: &HostPod,
        host_query: &str,
        gauge: IntGauge,
    ) -> Result<Response<Body>, kube::Error> {
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}/log?{host_query}",
            pod.namespace, pod.name
        );
        let req = Request::get(uri)
            .body(kube::client::Body::empty())
            .map_err(kube::Error::HttpError)?;
        let resp = self.host.send(req).await?;
        if !resp.status().is_success() {
            return Ok(self.refusal(pod, resp).await);
        }
        let (parts, body) = resp.into_parts();
        let body: Body = Guarded {
            inner: super::io::Coalesced::new(body)
                .map_err(|e| -> BoxError { Box::new(e) })
                .boxed_unsync(),
            _guard: StreamGuard::new(gauge),
        }
        .boxed_unsync();
        let mut out = Response::new(body);
        *out.status_mut() = parts.status;
        copy_headers(&parts.headers, out.headers_mut(), &[header::CONTENT_TYPE]);
        Ok(out)
    }

    /// A host answer that is not the stream (a refusal, a pod that is not running): passed back
    /// with its status and content type, its text rewritten so that it names the virtual pod
    /// and never a host object (the same rule as tenant Events); at most 64 KiB of it.
    async fn refusal(&self, pod: &HostPod, resp: Response<kube::client::Body>) -> Response<Body> {
        const MAX: usize = 64 * 1024;
        let (parts, mut body) = resp.into_parts();
        let mut bytes = Vec::new();
        while bytes.len() < MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        bytes.truncate(MAX);
        let text = refusal_text(&bytes, pod, &self.vcluster, &self.host_namespace);
        let mut out = full(parts.status, text);
        copy_headers(&parts.headers, out.headers_mut(), &[header::CONTENT_TYPE]);
        out
    }

    /// Sends the same upgrade request to the host's subresource; on `101` answers `101` with the
    /// host's protocol headers and splices the two upgraded connections in a task.
    pub async fn upgrade(
        &self,
        mut req: Request<hyper::body::Incoming>,
        pod: &HostPod,
        stream: Stream,
        host_query: &str,
        gauge: IntGauge,
    ) -> Result<Response<Body>, kube::Error> {
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}/{}?{host_query}",
            pod.namespace,
            pod.name,
            stream.subresource()
        );
        let mut host_req = Request::builder()
            .method(req.method().clone())
            .uri(uri)
            .body(kube::client::Body::empty())
            .map_err(kube::Error::HttpError)?;
        copy_headers(req.headers(), host_req.headers_mut(), &upgrade_headers());
        let client_upgrade = hyper::upgrade::on(&mut req);
        let resp = self.host.send(host_req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.refusal(pod, resp).await);
        }
        let mut out = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        copy_headers(resp.headers(), out.headers_mut(), &upgrade_headers());
        let host_upgrade = hyper::upgrade::on(resp);
        let cancel = self.cancel.clone();
        let guard = StreamGuard::new(gauge);
        let span = tracing::Span::current();
        tokio::spawn(async move {
            let _guard = guard;
            let (client, host) = match tokio::try_join!(client_upgrade, host_upgrade) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(parent: &span, %error, "upgrade did not complete");
                    return;
                }
            };
            let spliced =
                crate::splice::splice(TokioIo::new(client), TokioIo::new(host), crate::splice::BUFFER);
            tokio::select! {
                () = cancel.cancelled() => tracing::debug!(parent: &span, "stream closed by shutdown"),
                s = spliced => tracing::debug!(
                    parent: &span,
                    up = s.up,
                    down = s.down,
                    up_error = s.up_error.map(|e| e.to_string()),
                    down_error = s.down_error.map(|e| e.to_string()),
                    up_ended_first = s.up_ended_first,
                    "stream closed"
                ),
            }
            // Both upgraded connections are dropped (closed) here, whichever side went first.
        });
        Ok(out)
    }
}

/// The headers an upgrade carries both ways (SPDY and WebSocket).
fn upgrade_headers() -> Vec<HeaderName> {
    vec![
        header::CONNECTION,
        header::UPGRADE,
        HeaderName::from_static("x-stream-protocol-version"),
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ]
}

/// A host exec that ends with its owner: the client of `/run` went away (its request future is
/// dropped), the endpoint shuts down, or the command ended (kube's exec runs in a task of its
/// own, which would otherwise keep the host connection and the command going).
struct AbortOnDrop(kube::api::AttachedProcess);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a stream of `/run`'s output to its end, keeping the first [`RUN_OUTPUT_MAX`] bytes (the
/// rest is read and dropped, so the exec is never stuck on a full pipe; an error ends it: what
/// was read counts).
async fn read_at_most_from<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let Some(mut r) = r else { return out };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let keep = n.min(RUN_OUTPUT_MAX.saturating_sub(out.len()));
                out.extend_from_slice(buf.get(..keep).unwrap_or_default());
            }
        }
    }
}

/// Reads a body up to `max` bytes (the rest is not read).
async fn read_at_most(mut body: kube::client::Body, max: usize) -> Result<Vec<u8>, BoxError> {
    let mut bytes = Vec::new();
    while bytes.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(Box::new(e)),
            None => break,
        }
    }
    bytes.truncate(max);
    Ok(bytes)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Shared by the server's connections.
pub type SharedForwarder = Arc<Forwarder>;

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    #[test]
    fn a_host_refusal_names_the_virtual_pod_never_a_host_object() {
        let host = crate::naming::host_name("vc", "team-a", "web-0");
        let pod = HostPod {
            namespace: "host-ns".into(),
            name: host.clone(),
            virtual_namespace: "team-a".into(),
            virtual_name: "web-0".into(),
        };
        let other = crate::naming::host_name("other-vc", "db", "db-0");
        let message = format!(
            r#"{{"kind":"Status","message":"previous terminated container \"main\" in pod \"{host}\" not found in namespace host-ns, see {other}"}}"#
        );
        let text = refusal_text(message.as_bytes(), &pod, "vc", "host-ns");
        assert!(text.contains(r#"in pod \"web-0\""#), "{text}");
        assert!(text.contains("namespace team-a"), "{text}");
        assert!(
            !text.contains(&host) && !text.contains(&other) && !text.contains("host-ns"),
            "{text}"
        );
    }

    #[test]
    fn containers_of_every_kind_count() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "main"}],
                "initContainers": [{"name": "init"}],
                "ephemeralContainers": [{"name": "debugger"}]
            }
        }))
        .unwrap();
        for c in ["main", "init", "debugger"] {
            assert!(has_container(&pod, c), "{c}");
        }
        assert!(!has_container(&pod, "other"));
        assert!(!has_container(&Pod::default(), "main"));
    }

    #[test]
    fn stream_guards_count_open_streams() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let a = StreamGuard::new(gauge.clone());
        let b = StreamGuard::new(gauge.clone());
        assert_eq!(gauge.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
