//! Startup, readiness and liveness probes of one running container, as the kubelet's prober
//! runs them: httpGet (host 127.0.0.1 unless given, port by number or named containerPort,
//! HTTPS without certificate verification, 200-399 is success), tcpSocket, exec (`podman exec`);
//! gRPC probes are approximated by a TCP connect. Thresholds, periods, initial delays and
//! timeouts follow the probe spec and its API defaults.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::podman::Podman;

/// What the probes of one container run have found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// startup probe passed (or there is none)
    pub started: bool,
    /// readiness probe passing (or there is none)
    pub ready: bool,
    /// liveness (or startup) probe failed failureThreshold times: the container must restart
    pub failed: bool,
}

impl ProbeState {
    pub fn initial(c: &Container) -> Self {
        Self {
            started: c.startup_probe.is_none(),
            ready: c.readiness_probe.is_none(),
            failed: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("probe has no handler")]
    NoHandler,
    #[error("named port {0} is not a containerPort of the container")]
    NamedPort(String),
    #[error("{0}")]
    Failed(String),
}

struct Timing {
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success: u32,
    failure: u32,
}

fn timing(p: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, d: i32| Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0));
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success: u32::try_from(p.success_threshold.unwrap_or(1).max(1)).unwrap_or(1),
        failure: u32::try_from(p.failure_threshold.unwrap_or(3).max(1)).unwrap_or(3),
    }
}

fn port_of(c: &Container, port: &IntOrString) -> Result<u16, Error> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| Error::Failed(format!("invalid port {n}"))),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| Error::NamedPort(s.clone()))
        }
    }
}

/// Runs one probe once: Ok(()) on success.
pub async fn probe_once(
    podman: &Podman,
    container_id: &str,
    c: &Container,
    p: &Probe,
    timeout: Duration,
) -> Result<(), Error> {
    if let Some(h) = &p.http_get {
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = port_of(c, &h.port)?;
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        let https = h
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return tokio::time::timeout(timeout, http_get(&host, port, &path, https, &headers))
            .await
            .map_err(|_| Error::Failed(format!("timeout after {timeout:?}")))?;
    }
    if let Some(t) = &p.tcp_socket {
        let host = t
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = port_of(c, &t.port)?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Failed(format!("dial tcp {host}:{port}: {e}"))),
            Err(_) => Err(Error::Failed(format!("dial tcp {host}:{port}: timeout"))),
        };
    }
    if let Some(g) = &p.grpc {
        let port = u16::try_from(g.port).map_err(|_| Error::Failed("invalid port".into()))?;
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Failed(format!("grpc (tcp) 127.0.0.1:{port} unreachable"))),
        };
    }
    if let Some(e) = &p.exec {
        let argv = e.command.clone().unwrap_or_default();
        return match podman.exec(container_id, &argv, timeout).await {
            Ok((0, _)) => Ok(()),
            Ok((code, out)) => Err(Error::Failed(format!("exit {code}: {}", out.trim()))),
            Err(err) => Err(Error::Failed(err.to_string())),
        };
    }
    Err(Error::NoHandler)
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    https: bool,
    headers: &[(String, String)],
) -> Result<(), Error> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::Failed(format!("dial {host}:{port}: {e}")))?;
    let code = if https {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(insecure_tls()?));
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Failed(format!("server name {host}: {e}")))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Failed(format!("tls: {e}")))?;
        request(tls, host, port, path, headers).await?
    } else {
        request(tcp, host, port, path, headers).await?
    };
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "HTTP probe failed with statuscode: {code}"
        )))
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, Error> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| Error::Failed(format!("write: {e}")))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .await
        .map_err(|e| Error::Failed(format!("read: {e}")))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Failed(format!("bad HTTP response {line:?}")))
}

/// TLS without certificate verification, as the kubelet's HTTPS probes (InsecureSkipVerify).
fn insecure_tls() -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Failed(format!("tls config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth())
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Counts consecutive results against the thresholds: Some(new verdict) when it flips.
struct Counter {
    success: u32,
    failure: u32,
    ok_run: u32,
    fail_run: u32,
}

impl Counter {
    fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.ok_run += 1;
            self.fail_run = 0;
            (self.ok_run == self.success).then_some(true)
        } else {
            self.fail_run += 1;
            self.ok_run = 0;
            (self.fail_run == self.failure).then_some(false)
        }
    }
}

/// One probe's loop: calls `on` with every verdict change; stops when it returns true.
#[allow(clippy::too_many_arguments)]
async fn probe_loop(
    podman: &Podman,
    id: &str,
    c: &Container,
    probe: Probe,
    kind: &'static str,
    started_at: tokio::time::Instant,
    stop: &CancellationToken,
    on: impl Fn(bool) -> bool,
) {
    let t = timing(&probe);
    let mut counter = Counter {
        success: t.success,
        failure: t.failure,
        ok_run: 0,
        fail_run: 0,
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep_until(started_at + t.initial_delay) => {}
    }
    let mut tick = tokio::time::interval(t.period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = probe_once(podman, id, c, &probe, t.timeout).await;
        if let Err(error) = &r {
            debug!(container = %c.name, probe = kind, %error, "probe failed");
        }
        if let Some(verdict) = counter.record(r.is_ok()) {
            info!(container = %c.name, probe = kind, verdict, "probe result changed");
            if on(verdict) {
                return;
            }
        }
    }
}

/// Runs the container's probes until `stop`, publishing into `tx`. `notify` wakes the pod
/// worker on every change.
pub async fn run(
    podman: Podman,
    container_id: String,
    c: Container,
    tx: watch::Sender<ProbeState>,
    notify: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let started_at = tokio::time::Instant::now();
    let set = |f: &dyn Fn(&mut ProbeState)| {
        if tx.send_if_modified(|s| {
            let old = *s;
            f(s);
            old != *s
        }) {
            notify.notify_one();
        }
    };
    if let Some(p) = c.startup_probe.clone() {
        let passed = std::sync::atomic::AtomicBool::new(false);
        probe_loop(
            &podman,
            &container_id,
            &c,
            p,
            "startup",
            started_at,
            &stop,
            |ok| {
                if ok {
                    passed.store(true, std::sync::atomic::Ordering::Relaxed);
                    set(&|s| s.started = true);
                } else {
                    set(&|s| s.failed = true);
                }
                true
            },
        )
        .await;
        if !passed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
    let readiness = async {
        if let Some(p) = c.readiness_probe.clone() {
            probe_loop(
                &podman,
                &container_id,
                &c,
                p,
                "readiness",
                started_at,
                &stop,
                |ok| {
                    set(&|s| s.ready = ok);
                    false
                },
            )
            .await;
        }
    };
    let liveness = async {
        if let Some(p) = c.liveness_probe.clone() {
            probe_loop(
                &podman,
                &container_id,
                &c,
                p,
                "liveness",
                started_at,
                &stop,
                |ok| {
                    if !ok {
                        set(&|s| s.failed = true);
                    }
                    !ok
                },
            )
            .await;
        }
    };
    tokio::join!(readiness, liveness);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_consecutive_results() {
        let mut c = Counter {
            success: 2,
            failure: 3,
            ok_run: 0,
            fail_run: 0,
        };
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
    }

    #[test]
    fn named_ports_resolve_from_container_ports() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "admin", "containerPort": 8080}]}))
        .unwrap();
        assert_eq!(port_of(&c, &IntOrString::String("admin".into())).unwrap(), 8080);
        assert_eq!(port_of(&c, &IntOrString::Int(81)).unwrap(), 81);
        assert!(port_of(&c, &IntOrString::String("nope".into())).is_err());
    }
}
