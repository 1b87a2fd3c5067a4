//! vnest-runner: a test-only "kubelet" for ONE host node of the local test world. It registers
//! the node (tainted, so only pods that tolerate it land there), keeps it alive with a Lease and
//! status heartbeats, and runs the pods bound to it as podman containers (host network).
//!
//! - `node.rs`    Node registration, Lease (10 s) and Ready heartbeat (40 s)
//! - `pods.rs`    the pod watch and one worker per pod: containers, restarts, status, deletion
//! - `podman.rs`  the only place that spawns podman
//! - `volumes.rs` emptyDir / PVC (hostPath PV) / hostPath / configMap / secret / downwardAPI /
//!   projected (TokenRequest tokens refreshed at 80 % of their lifetime)
//! - `env.rs`     pure: env resolution and `$(VAR)` expansion
//! - `probes.rs`  startup / readiness / liveness probes
//! - `status.rs`  pure: pod phase, conditions, container statuses; restart backoff
//! - `kwok.rs`    per pod, kwok `PortForward` and `Logs` objects (`--kwok-rules`, default on): when
//!   the node's kubelet endpoint is kwok's server, it answers host port-forward and logs with them
//!
//! Deviations from a kubelet (test world only): every pod is effectively hostNetwork
//! (podIP = hostIP = --node-ip); KUBERNETES_SERVICE_HOST/PORT point at the host API server
//! given by --api-host/--api-port, because Service IPs are not routable here; no kubelet API
//! of its own (the local world runs hack/node-kubelet for this node, with `--kwok-rules=false`;
//! otherwise kwok's server with the rules of `kwok.rs`); images are never pulled; resource limits
//! are not enforced.

mod env;
mod kwok;
mod node;
mod podman;
mod pods;
mod probes;
mod status;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "vnest-runner",
    about = "Test-only kubelet: runs the pods of one host node with podman"
)]
struct Args {
    /// kubeconfig of the host cluster (default: KUBECONFIG / in-cluster inference)
    #[arg(long, env = "VNEST_RUNNER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// the Node this runner registers and serves
    #[arg(long, env = "VNEST_RUNNER_NODE_NAME", default_value = "vnest-runner-0")]
    node_name: String,
    /// the node's InternalIP, also every pod's IP (pods share the host network)
    #[arg(long, env = "VNEST_RUNNER_NODE_IP", default_value = "127.0.0.1")]
    node_ip: String,
    /// the address its pods report (podIP = hostIP: they share the host network) [default: --node-ip].
    /// Endpoints refuse loopback addresses, so the local world gives this machine's own address
    /// (as --node-ip too)
    #[arg(long, env = "VNEST_RUNNER_POD_IP")]
    pod_ip: Option<String>,
    /// KUBERNETES_SERVICE_HOST given to containers (the host API server; Service IPs are not routable here)
    #[arg(long, env = "VNEST_RUNNER_API_HOST", default_value = "127.0.0.1")]
    api_host: String,
    /// KUBERNETES_SERVICE_PORT given to containers
    #[arg(long, env = "VNEST_RUNNER_API_PORT")]
    api_port: u16,
    /// port advertised as the node's kubelet endpoint at --node-ip (the runner serves none:
    /// hack/node-kubelet or kwok's server; 0 = none)
    #[arg(long, env = "VNEST_RUNNER_KUBELET_PORT", default_value_t = 0)]
    kubelet_port: u16,
    /// write a kwok `PortForward` and `Logs` per pod (for a node whose kubelet endpoint is kwok's
    /// server); false when --kubelet-port is a real kubelet API of this node (hack/node-kubelet)
    #[arg(long, env = "VNEST_RUNNER_KWOK_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    kwok_rules: bool,
    /// per-pod directories (emptyDir, configMap/secret/projected files)
    #[arg(long, env = "VNEST_RUNNER_STATE_DIR")]
    state_dir: PathBuf,
    /// container logs: <log-dir>/<namespace>_<pod>_<container>.log (CRI format, appended across restarts)
    #[arg(long, env = "VNEST_RUNNER_LOG_DIR")]
    log_dir: PathBuf,
    /// podman binary
    #[arg(long, env = "VNEST_RUNNER_PODMAN", default_value = "podman")]
    podman: PathBuf,
    /// OCI runtime given to podman (crun fails on this kernel's hybrid cgroups)
    #[arg(long, env = "VNEST_RUNNER_OCI_RUNTIME", default_value = "/usr/sbin/runc")]
    oci_runtime: PathBuf,
    /// cap of the restart backoff (kubelet: 5m); a test-only knob, e.g. 2s
    #[arg(long, env = "VNEST_RUNNER_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    max_backoff: Duration,
    /// `--ulimit nofile=N:N` for every container (at most the shell's hard limit)
    #[arg(long, env = "VNEST_RUNNER_ULIMIT_NOFILE", default_value_t = 1024)]
    ulimit_nofile: u64,
    /// `--ulimit nproc=N:N` for every container
    #[arg(long, env = "VNEST_RUNNER_ULIMIT_NPROC", default_value_t = 1024)]
    ulimit_nproc: u64,
    /// log format: plain or json
    #[arg(long, env = "VNEST_RUNNER_LOG_FORMAT", default_value = "plain")]
    log_format: String,
}

/// `300`, `300s`, `5m`, `1h`, `500ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 10s, 5m, 500ms"))?;
    if v < 0.0 {
        return Err(format!("negative duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        kubeconfig,
        node_name,
        node_ip,
        pod_ip,
        api_host,
        api_port,
        kubelet_port,
        kwok_rules,
        state_dir,
        log_dir,
        podman,
        oci_runtime,
        max_backoff,
        ulimit_nofile,
        ulimit_nproc,
        log_format,
    } = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }

    let client = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(cfg)?
        }
        None => kube::Client::try_default().await?,
    };
    std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let state_dir = std::fs::canonicalize(&state_dir)?;
    let log_dir = std::fs::canonicalize(&log_dir)?;
    let podman = podman::Podman {
        binary: podman,
        runtime: oci_runtime,
        ulimit_nofile,
        ulimit_nproc,
    };
    // Fail early and clearly when podman cannot run at all.
    podman
        .ps(&[])
        .await
        .context("podman is not usable (install: apt-get install -y podman runc)")?;

    let agent = node::NodeAgent {
        client: client.clone(),
        name: node_name.clone(),
        ip: node_ip.clone(),
        kubelet_port,
    };
    agent.register().await.context("registering the node")?;

    let stop = CancellationToken::new();
    let ctx = Arc::new(pods::Ctx {
        recorder: pods::Ctx::recorder(&client, &node_name),
        client,
        podman,
        node: node_name.clone(),
        ip: pod_ip.unwrap_or_else(|| node_ip.clone()),
        node_ip,
        kwok_rules,
        api_host,
        api_port,
        state_dir,
        log_dir,
        max_backoff,
    });
    let mut node_task = tokio::spawn(agent.run(stop.clone()));
    let mut pods_task = tokio::spawn(pods::run(ctx, stop.clone()));
    info!(node = %node_name, "runner started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let early = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = sigterm.recv() => false,
        _ = &mut node_task => true,
        _ = &mut pods_task => true,
    };
    stop.cancel();
    if early {
        error!("a runner task ended early");
        anyhow::bail!("a runner task ended early");
    }
    // Containers keep running: the next runner adopts them.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = pods_task.await;
        let _ = node_task.await;
    })
    .await;
    info!("runner stopped (containers left running for the next runner to adopt)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
        let a = Args::try_parse_from([
            "r",
            "--api-port",
            "6443",
            "--state-dir",
            "/s",
            "--log-dir",
            "/l",
            "--max-backoff",
            "2s",
        ])
        .unwrap();
        assert_eq!(a.max_backoff, Duration::from_secs(2));
        assert!(a.kwok_rules, "kwok rules by default");
        let a = Args::try_parse_from([
            "r",
            "--api-port",
            "6443",
            "--state-dir",
            "/s",
            "--log-dir",
            "/l",
            "--kwok-rules=false",
        ])
        .unwrap();
        assert!(!a.kwok_rules);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("x").is_err());
    }
}
