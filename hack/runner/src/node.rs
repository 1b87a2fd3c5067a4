//! The runner's Node: registration (label + NoSchedule taint so tenant pods never land here),
//! a Ready status, and the kubelet's two heartbeats: the node Lease in `kube-node-lease`
//! (renewed every 10 s) and the Ready condition's heartbeat in the node status (every 40 s).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

pub const RUNNER_LABEL: &str = "vnest.dev/runner";
const FIELD_MANAGER: &str = "vnest-runner";
const LEASE_DURATION_SECONDS: i32 = 40;
const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_HEARTBEAT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {what}: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
}

pub struct NodeAgent {
    pub client: Client,
    pub name: String,
    pub ip: String,
    /// The port advertised as this node's kubelet endpoint (0: none). The runner serves no
    /// kubelet API itself; the local world points it at hack/node-kubelet, which serves it for
    /// these pods with podman (or at kwok's server and its per-pod rules: `kwok.rs`).
    pub kubelet_port: u16,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// cpu and memory of this machine, for capacity/allocatable.
fn machine_capacity() -> (String, String) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(4 * 1024 * 1024);
    (cpus.to_string(), format!("{mem_kib}Ki"))
}

impl NodeAgent {
    /// The node status; conditions keep `current`'s transition times when their status holds.
    fn status(&self, current: Option<&Node>) -> serde_json::Value {
        let (cpu, memory) = machine_capacity();
        let resources =
            serde_json::json!({"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"});
        let t = now();
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            let since = current
                .and_then(|n| {
                    n.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == type_)
                        .cloned()
                })
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time)
                .unwrap_or_else(|| t.clone());
            serde_json::json!({"type": type_, "status": status, "reason": reason, "message": message,
                               "lastHeartbeatTime": t, "lastTransitionTime": since})
        };
        serde_json::json!({
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": self.ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "runner has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "runner has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "runner has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "vnest-runner is posting ready status (podman)"),
            ],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "vnest-runner",
                         "containerRuntimeVersion": "podman://4", "kubeletVersion": "v1.35.4", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"},
            "phase": "Running",
        })
    }

    /// Creates or updates the Node (labels, taint) and sets a Ready status.
    #[instrument(skip_all, fields(node = %self.name))]
    pub async fn register(&self) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": {
                RUNNER_LABEL: "true",
                "kubernetes.io/hostname": self.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"}},
            "spec": {"taints": [{"key": RUNNER_LABEL, "value": "true", "effect": "NoSchedule"}]}
        }))
        .map_err(|e| Error::Api {
            verb: "build",
            what: "node".into(),
            source: kube::Error::SerdeError(e),
        })?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let applied = nodes
            .patch(&self.name, &pp, &Patch::Apply(&node))
            .await
            .map_err(|source| Error::Api {
                verb: "apply",
                what: format!("node {}", self.name),
                source,
            })?;
        self.patch_status(Some(&applied)).await?;
        info!("node registered and Ready");
        Ok(())
    }

    async fn patch_status(&self, current: Option<&Node>) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": self.status(current)})),
            )
            .await
            .map_err(|source| Error::Api {
                verb: "patch status",
                what: format!("node {}", self.name),
                source,
            })?;
        Ok(())
    }

    async fn renew_lease(&self, node_uid: &str) -> Result<(), Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node_uid}]},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                     "renewTime": MicroTime(Timestamp::now())}
        }))
        .map_err(|e| Error::Api {
            verb: "build",
            what: "lease".into(),
            source: kube::Error::SerdeError(e),
        })?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        leases
            .patch(&self.name, &pp, &Patch::Apply(&lease))
            .await
            .map_err(|source| Error::Api {
                verb: "apply",
                what: format!("lease {}", self.name),
                source,
            })?;
        Ok(())
    }

    /// Keeps the node alive until `stop`: lease every 10 s, status heartbeat every 40 s.
    /// Failures are retried on the next tick (the node lifecycle controller tolerates 40 s).
    pub async fn run(self, stop: CancellationToken) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut lease_tick = tokio::time::interval(LEASE_RENEW);
        let mut status_tick = tokio::time::interval(STATUS_HEARTBEAT);
        status_tick.tick().await; // register() just wrote it
        let mut uid = String::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lease_tick.tick() => {
                    if uid.is_empty() {
                        match nodes.get(&self.name).await {
                            Ok(n) => uid = n.metadata.uid.unwrap_or_default(),
                            Err(error) => { warn!(%error, "cannot read own node"); continue; }
                        }
                    }
                    match self.renew_lease(&uid).await {
                        Ok(()) => debug!("lease renewed"),
                        Err(error) => warn!(%error, "lease renewal failed"),
                    }
                }
                _ = status_tick.tick() => {
                    // Re-registering also restores the node if someone deleted it.
                    let r = match nodes.get_opt(&self.name).await {
                        Ok(Some(n)) => self.patch_status(Some(&n)).await,
                        Ok(None) => { uid.clear(); self.register().await }
                        Err(source) => Err(Error::Api { verb: "get", what: format!("node {}", self.name), source }),
                    };
                    if let Err(error) = r { warn!(%error, "node status heartbeat failed"); }
                }
            }
        }
    }
}
