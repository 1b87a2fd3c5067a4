//! The TLS listener: one task per connection (HTTP/1.1 with upgrades), each request routed,
//! authorized and forwarded; counted by path kind and result.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use super::KubeletError;
use super::auth::{self, Authorizer, Caller, Outcome};
use super::forward::{Body, Forwarder, full};
use super::route::{self, Route, RouteError};
use super::tls::ClientCa;
use crate::metrics::Metrics;

/// Longest time a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity a connection's certificate gives (checked once per connection).
#[derive(Clone)]
enum ConnIdentity {
    None,
    Untrusted,
    Certificate { user: String, groups: Vec<String> },
}

fn identify(chain: Option<&[CertificateDer<'_>]>, client_ca: &ClientCa) -> ConnIdentity {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return ConnIdentity::None;
    };
    if !client_ca.verify(chain) {
        return ConnIdentity::Untrusted;
    }
    match chain.first().and_then(|leaf| auth::subject_of(leaf)) {
        Some((user, groups)) => ConnIdentity::Certificate { user, groups },
        None => ConnIdentity::Untrusted,
    }
}

/// The request handler (shared by every connection).
pub struct Handler {
    pub forwarder: Forwarder,
    pub authorizer: Authorizer,
    pub metrics: Metrics,
}

impl Handler {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnIdentity) -> Response<Body> {
        let parsed = route::parse(req.method(), req.uri().path(), req.uri().query());
        let kind = match &parsed {
            Ok(route) => route.kind(),
            Err(_) => "unknown",
        };
        let (ns, name) = parsed
            .as_ref()
            .ok()
            .and_then(Route::pod)
            .map_or((String::new(), String::new()), |p| {
                (p.namespace.clone(), p.name.clone())
            });
        let span = tracing::debug_span!("kubelet", path = kind, v.ns = %ns, v.name = %name, user = tracing::field::Empty);
        let (resp, result) = self.serve(req, conn, parsed, kind).instrument(span.clone()).await;
        self.metrics
            .kubelet_requests
            .with_label_values(&[kind, result])
            .inc();
        span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), result, "kubelet request"));
        resp
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        conn: ConnIdentity,
        parsed: Result<Route, RouteError>,
        kind: &'static str,
    ) -> (Response<Body>, &'static str) {
        let caller = match conn {
            ConnIdentity::Untrusted => Caller::UntrustedCertificate,
            ConnIdentity::Certificate { user, groups } => Caller::Certificate { user, groups },
            ConnIdentity::None => match req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::bearer)
            {
                Some(token) => Caller::Bearer(token),
                None => Caller::Anonymous,
            },
        };
        match self.authorizer.authorize(caller, Route::verb(req.method())).await {
            Ok(Outcome::Allowed(user)) => {
                tracing::Span::current().record("user", user.as_str());
            }
            Ok(Outcome::Unauthorized) => {
                return (full(StatusCode::UNAUTHORIZED, "Unauthorized\n"), "unauthorized");
            }
            Ok(Outcome::Forbidden(user)) => {
                let msg = format!(
                    "Forbidden (user={user}, verb={}, resource=nodes, subresource=proxy)\n",
                    Route::verb(req.method())
                );
                return (full(StatusCode::FORBIDDEN, msg), "forbidden");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot authorize a kubelet request");
                return (
                    full(StatusCode::SERVICE_UNAVAILABLE, "authorization unavailable\n"),
                    "error",
                );
            }
        }
        let route = match parsed {
            Ok(r) => r,
            Err(RouteError::NotFound) => {
                return (full(StatusCode::NOT_FOUND, "404 page not found\n"), "not_found");
            }
            Err(RouteError::MethodNotAllowed) => {
                return (
                    full(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
                    "method_not_allowed",
                );
            }
        };
        let gauge = || self.metrics.kubelet_streams_open.with_label_values(&[kind]);
        let host_pod = match route.pod() {
            None => None,
            Some(pod) => match self.forwarder.resolve(pod, route.container()) {
                Some(h) => Some(h),
                None => {
                    let msg = format!(
                        "pod {}/{} (or its container) not found\n",
                        pod.namespace, pod.name
                    );
                    return (full(StatusCode::NOT_FOUND, msg), "not_found");
                }
            },
        };
        let forwarded = match (route, host_pod) {
            (Route::Healthz, _) => return (full(StatusCode::OK, "ok"), "ok"),
            (Route::Pods, _) => return (self.forwarder.pods(), "ok"),
            (Route::Node { read, host_query }, _) => {
                return match self.forwarder.node_read(read, &host_query).await {
                    Ok(resp) if resp.status() == StatusCode::FORBIDDEN => (resp, "host_forbidden"),
                    Ok(resp) if resp.status().is_success() => (resp, "ok"),
                    Ok(resp) if resp.status().is_client_error() => (resp, "host_client_error"),
                    Ok(resp) => (resp, "host_server_error"),
                    Err(error) => {
                        tracing::warn!(%error, "reading node stats from the host failed");
                        (
                            full(StatusCode::BAD_GATEWAY, "the host API server did not answer\n"),
                            "error",
                        )
                    }
                };
            }
            (
                Route::Run {
                    container, command, ..
                },
                Some(h),
            ) => {
                return match self.forwarder.run(&h, &container, command, gauge()).await {
                    Ok(resp) => {
                        let result = match resp.status() {
                            StatusCode::OK => "ok",
                            // The command ran and failed (the kubelet's answer for it).
                            StatusCode::INTERNAL_SERVER_ERROR => "command_failed",
                            s if s.is_client_error() => "host_client_error",
                            _ => "host_server_error",
                        };
                        (resp, result)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "running a command in a host pod failed");
                        (
                            full(StatusCode::BAD_GATEWAY, "the host API server did not answer\n"),
                            "error",
                        )
                    }
                };
            }
            (Route::ContainerLogs { host_query, .. }, Some(h)) => {
                self.forwarder.logs(&h, &host_query, gauge()).await
            }
            (
                Route::Upgrade {
                    stream, host_query, ..
                },
                Some(h),
            ) => {
                self.forwarder
                    .upgrade(req, &h, stream, &host_query, gauge())
                    .await
            }
            (_, None) => return (full(StatusCode::NOT_FOUND, "404 page not found\n"), "not_found"),
        };
        match forwarded {
            Ok(resp) => {
                let result = match resp.status() {
                    s if s.is_success() || s == StatusCode::SWITCHING_PROTOCOLS => "ok",
                    s if s.is_client_error() => "host_client_error",
                    _ => "host_server_error",
                };
                (resp, result)
            }
            Err(error) => {
                tracing::warn!(%error, "forwarding a kubelet request to the host failed");
                (
                    full(StatusCode::BAD_GATEWAY, "the host API server did not answer\n"),
                    "error",
                )
            }
        }
    }
}

/// Binds the listener (errors name the address).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, KubeletError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| KubeletError::Bind { addr, source })
}

/// Accepts connections until `cancel`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    client_ca: Arc<ClientCa>,
    handler: Arc<Handler>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accepting a kubelet connection failed");
                    continue;
                }
            },
        };
        // Small writes (response headers, then the first log bytes; stream frames) go out at
        // once: with Nagle's algorithm each waited for the peer's delayed ACK (~40 ms).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "TCP_NODELAY not set on a kubelet connection");
        }
        let (acceptor, client_ca, handler, cancel) = (
            acceptor.clone(),
            client_ca.clone(),
            handler.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(super::io::read_buffered(tcp)))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "kubelet TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "kubelet TLS handshake timed out");
                        return;
                    }
                };
            let conn = identify(tls.get_ref().1.peer_certificates(), &client_ca);
            let service = hyper::service::service_fn(move |req| {
                let (handler, conn) = (handler.clone(), conn.clone());
                async move { Ok::<_, Infallible>(handler.handle(req, conn).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                done = connection.as_mut() => if let Err(error) = done {
                    tracing::debug!(%peer, %error, "kubelet connection ended with an error");
                },
                () = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                }
            }
        });
    }
}
