//! The admin HTTP server: `/livez` (the process is serving), `/readyz` (both clusters reachable
//! through healthy watches; 503 with the reasons otherwise; the last line is the replica's role,
//! leader or standby, which does not change readiness: a standby serves DNS and the kubelet
//! endpoint) and `/metrics` (Prometheus text).
//! Handlers only read in-memory state: a probe never causes an API request.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Readiness;
use crate::leader::Leadership;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    metrics: Metrics,
    leadership: Leadership,
}

pub fn router(readiness: Arc<Readiness>, metrics: Metrics, leadership: Leadership) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            readiness,
            metrics,
            leadership,
        })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    let mut ready = true;
    for s in state.readiness.states() {
        match s.problem {
            None => body.push_str(&format!("[+] {} ok\n", s.cluster)),
            Some(reason) => {
                ready = false;
                body.push_str(&format!("[-] {} not ready: {reason}\n", s.cluster));
            }
        }
    }
    body.push_str(&format!("[+] {}\n", state.leadership.role().describe()));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    match state.metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Binds the admin address now (so a taken port fails start-up at once) and returns the
/// serving future, which ends gracefully when `cancel` fires.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move { cancel.cancelled().await });
    Ok((local, async move { serve.await }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Cluster;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn call(router: Router, path: &str) -> (StatusCode, String) {
        let res = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn readyz_reports_each_cluster_and_metrics_render() {
        let metrics = Metrics::new().expect("metrics");
        let readiness = Readiness::new(metrics.clone());
        let (role, leadership) = Leadership::elected();
        let app = router(readiness.clone(), metrics.clone(), leadership);

        assert_eq!(call(app.clone(), "/livez").await.0, StatusCode::OK);
        let (code, body) = call(app.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("[-] host not ready: connecting"), "{body}");

        readiness.set(Cluster::Host, None);
        readiness.set(Cluster::Virtual, None);
        let (code, body) = call(app.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(
            body.contains("[+] host ok") && body.contains("[+] virtual ok"),
            "{body}"
        );
        assert!(
            body.contains("role: standby (no leader yet)"),
            "a standby is ready: {body}"
        );
        role.send_replace(crate::leader::Role::Leader);
        let (code, body) = call(app.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert!(body.ends_with("[+] role: leader\n"), "{body}");

        let (code, body) = call(app, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("vnest_syncer_cluster_ready"), "{body}");
    }
}
