//! The kubelet endpoint of the virtual nodes. The virtual API server reaches "the kubelet" of
//! a virtual node at the node's address and kubelet port (`--kubelet-address`,
//! `--kubelet-port`), which point here; `kubectl logs/exec/attach/port-forward/cp` arrive as
//! kubelet requests and are served from the host's pod subresources of the translated pod.
//!
//! - [`route`]: pure path parsing and the allowlist (`/containerLogs`, `/exec`, `/attach`,
//!   `/portForward`, `/run`, `/pods`, `/healthz`, `/stats/summary`, `/metrics/resource`;
//!   anything else 404).
//! - [`auth`]: who may call (client CA certificates; tokens by TokenReview + `nodes/proxy` SAR).
//! - [`tls`]: the serving certificate from the k3s server CA, and the client-CA check.
//! - [`forward`]: host pod lookup from the caches, log streaming, upgrade splicing, `/run` as a
//!   host exec, node reads through the host node proxy.
//! - [`io`]: bytes in fewer, larger pieces (coalesced log frames, buffered reads under TLS).
//! - [`stats`]: pure translation of node summaries and resource metrics to virtual names.
//! - [`server`]: the TLS listener, one task per connection, metrics per request.

pub mod auth;
pub mod forward;
pub mod io;
pub mod route;
pub mod server;
pub mod stats;
pub mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::Client;
use kube::runtime::reflector::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::TranslateCtx;
use crate::metrics::Metrics;
use crate::resources::pods::CachedPod;

/// Flags of the kubelet endpoint (the advertised address and port are `NodeArgs`'s
/// `--kubelet-address`/`--kubelet-port`).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeletArgs {
    /// Where the kubelet endpoint listens [default: 0.0.0.0:<--kubelet-port>].
    #[arg(long, env = "VNEST_KUBELET_LISTEN_ADDR")]
    pub kubelet_listen_addr: Option<SocketAddr>,

    /// CA certificate that signs the kubelet serving certificate (the virtual API server's
    /// `--kubelet-certificate-authority`) [default: <data-dir>/server/tls/server-ca.crt].
    #[arg(long, env = "VNEST_KUBELET_SERVING_CA_CERT")]
    pub kubelet_serving_ca_cert: Option<PathBuf>,

    /// Key of that CA [default: <data-dir>/server/tls/server-ca.key].
    #[arg(long, env = "VNEST_KUBELET_SERVING_CA_KEY")]
    pub kubelet_serving_ca_key: Option<PathBuf>,

    /// CA whose client certificates may call the kubelet endpoint (the virtual API server's
    /// kubelet client certificate is signed by it) [default: <data-dir>/server/tls/client-ca.crt].
    #[arg(long, env = "VNEST_KUBELET_CLIENT_CA")]
    pub kubelet_client_ca: Option<PathBuf>,

    /// Extra names (IPs or DNS names) for the serving certificate, comma-separated; it always
    /// holds 127.0.0.1, localhost, and the advertised kubelet address.
    #[arg(long, env = "VNEST_KUBELET_TLS_SAN", value_delimiter = ',')]
    pub kubelet_tls_san: Vec<String>,
}

/// The validated kubelet endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletSettings {
    pub listen: SocketAddr,
    pub serving_ca_cert: PathBuf,
    pub serving_ca_key: PathBuf,
    pub client_ca: PathBuf,
    /// Names of the serving certificate besides the advertised address.
    pub sans: Vec<String>,
    /// The advertised address; `None`: the vcluster Service IP (known once the Service is).
    pub address: Option<String>,
}

impl KubeletArgs {
    pub fn into_settings(self, data_dir: &Path, port: u16, address: Option<String>) -> KubeletSettings {
        let Self {
            kubelet_listen_addr,
            kubelet_serving_ca_cert,
            kubelet_serving_ca_key,
            kubelet_client_ca,
            kubelet_tls_san,
        } = self;
        let tls = data_dir.join("server/tls");
        let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        sans.extend(kubelet_tls_san.into_iter().filter(|s| !s.is_empty()));
        KubeletSettings {
            listen: kubelet_listen_addr.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
            serving_ca_cert: kubelet_serving_ca_cert.unwrap_or_else(|| tls.join("server-ca.crt")),
            serving_ca_key: kubelet_serving_ca_key.unwrap_or_else(|| tls.join("server-ca.key")),
            client_ca: kubelet_client_ca.unwrap_or_else(|| tls.join("client-ca.crt")),
            sans,
            address,
        }
    }
}

/// Pure: the serving certificate's names: the configured ones, the advertised address, and
/// `$POD_IP` when known; deduplicated, in order.
pub fn serving_names(
    settings: &KubeletSettings,
    advertised: Option<&str>,
    pod_ip: Option<&str>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for n in settings
        .sans
        .iter()
        .map(String::as_str)
        .chain(advertised)
        .chain(pod_ip)
        .filter(|n| !n.is_empty())
    {
        if !names.iter().any(|m| m == n) {
            names.push(n.to_owned());
        }
    }
    names
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no usable key or certificate (PKCS#8, SEC1 EC P-256/P-384 or PKCS#1 RSA PEM)")]
    Key { path: PathBuf },
    #[error("{what}: {source}")]
    Certificate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("TLS setup, {what}: {source}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("binding the kubelet endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoint needs from the rest of the syncer.
pub struct KubeletDeps {
    pub host: Client,
    pub virt: Client,
    pub vcluster: String,
    pub host_namespace: String,
    pub virtual_pods: Store<CachedPod>,
    pub host_pods: Store<CachedPod>,
    pub translate: watch::Receiver<Option<TranslateCtx>>,
    pub metrics: Metrics,
    pub cancel: CancellationToken,
}

/// Issues the serving certificate (waiting for the vcluster Service IP when no address was
/// given), binds and serves until cancelled.
pub async fn run(settings: KubeletSettings, deps: KubeletDeps) -> Result<(), KubeletError> {
    let KubeletDeps {
        host,
        virt,
        vcluster,
        host_namespace,
        virtual_pods,
        host_pods,
        mut translate,
        metrics,
        cancel,
    } = deps;
    let advertised = match &settings.address {
        Some(a) => a.clone(),
        None => loop {
            if let Some(ip) = translate.borrow().as_ref().map(|c| c.kube_service_ip.clone()) {
                break ip;
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = translate.changed() => if changed.is_err() { return Ok(()) },
            }
        },
    };
    let pod_ip = std::env::var("POD_IP").ok();
    let names = serving_names(&settings, Some(&advertised), pod_ip.as_deref());
    let (chain, key) = tls::serving_cert(&settings.serving_ca_cert, &settings.serving_ca_key, &names)?;
    let client_ca = tls::ClientCa::load(&settings.client_ca)?;
    let config = tls::server_config(chain, key, client_ca.clone())?;
    let listener = server::bind(settings.listen).await?;
    let addr = listener.local_addr().map_err(|source| KubeletError::Bind {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(%addr, names = %names.join(","), "kubelet endpoint listening (TLS)");
    let handler = Arc::new(server::Handler {
        forwarder: forward::Forwarder {
            host,
            vcluster,
            host_namespace,
            virtual_pods,
            host_pods,
            cancel: cancel.clone(),
            node_proxy_refused: Arc::default(),
        },
        authorizer: auth::Authorizer::new(virt),
        metrics,
    });
    server::serve(listener, config, client_ca, handler, cancel).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_k3s_data_dir() {
        let args = KubeletArgs {
            kubelet_listen_addr: None,
            kubelet_serving_ca_cert: None,
            kubelet_serving_ca_key: None,
            kubelet_client_ca: None,
            kubelet_tls_san: vec!["kubelet.example".into(), String::new()],
        };
        let s = args.into_settings(Path::new("/data"), 10250, None);
        assert_eq!(s.listen, "0.0.0.0:10250".parse().ok().unwrap_or(s.listen));
        assert_eq!(s.serving_ca_cert, PathBuf::from("/data/server/tls/server-ca.crt"));
        assert_eq!(s.serving_ca_key, PathBuf::from("/data/server/tls/server-ca.key"));
        assert_eq!(s.client_ca, PathBuf::from("/data/server/tls/client-ca.crt"));
        assert_eq!(
            serving_names(&s, Some("10.96.0.10"), Some("127.0.0.1")),
            ["127.0.0.1", "localhost", "kubelet.example", "10.96.0.10"]
        );
    }
}
