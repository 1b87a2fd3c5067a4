//! Virtual Nodes: when a host pod of this vcluster is scheduled on node N, the virtual cluster
//! gets a Node N; once nothing of ours runs there it is removed.
//!
//! - `fake` mode (default; the namespaced Role is enough): name, Ready condition, capacity,
//!   and addresses pointing at the vcluster's kubelet endpoint.
//! - `real` mode (needs the optional read-only ClusterRole on nodes): labels, capacity,
//!   conditions and node info copied from the host node; addresses still point at the kubelet
//!   endpoint, so `kubectl logs/exec` go through the vcluster and never to the host kubelet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
    ObjectReference, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use crate::engine::Shared;
use crate::engine::apply::{self, FIELD_MANAGER};
use crate::engine::error::SyncError;
use crate::engine::plan;
use crate::engine::queue::Key;
use crate::engine::worker::{Outcome, Reconciler};
use crate::error::Cluster;
use crate::markers::LABEL_VIRTUAL_NODE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeMode {
    Fake,
    Real,
}

/// Flags of the Node kind (the virtual nodes and their kubelet endpoint).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Virtual nodes: `fake` (namespaced Role suffices) or `real` (copies host node facts;
    /// needs the optional read-only ClusterRole on nodes).
    #[arg(long, env = "VNEST_NODE_SYNC", value_enum, default_value = "fake")]
    pub node_sync: NodeMode,

    /// Port the virtual nodes advertise for their kubelet endpoint.
    #[arg(long, env = "VNEST_KUBELET_PORT", default_value = "10250")]
    pub kubelet_port: u16,

    /// Address the virtual nodes advertise for their kubelet [default: the vcluster Service IP].
    #[arg(long, env = "VNEST_KUBELET_ADDRESS")]
    pub kubelet_address: Option<String>,
}

/// Which nodes pods of this vcluster use, from both pod watches.
/// A pod placed on a node: (is it a host pod, namespace, name).
type Placed = (bool, String, String);
type Placements = HashMap<String, HashSet<Placed>>;

#[derive(Default)]
pub struct NodeUsage {
    state: Mutex<Placements>, // node -> pods of ours placed there
}

impl NodeUsage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Placements> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records where `pod` runs (None when deleted or not scheduled). Returns affected nodes.
    pub fn set(&self, is_host: bool, pod: &Pod, node: Option<&str>) -> Vec<String> {
        let id = (is_host, pod.namespace().unwrap_or_default(), pod.name_any());
        let mut s = self.lock();
        let mut touched = Vec::new();
        s.retain(|n, pods| {
            if Some(n.as_str()) != node && pods.remove(&id) {
                touched.push(n.clone());
            }
            !pods.is_empty()
        });
        if let Some(node) = node
            && s.entry(node.to_owned()).or_default().insert(id)
        {
            touched.push(node.to_owned());
        }
        touched
    }

    /// Replaces one side's view after a relist with `placements` (node, namespace, name) of
    /// that side's scheduled pods. Returns every node before or after.
    pub fn rebuild(
        &self,
        is_host: bool,
        placements: impl IntoIterator<Item = (String, String, String)>,
    ) -> Vec<String> {
        let mut s = self.lock();
        let mut touched: HashSet<String> = s.keys().cloned().collect();
        for set in s.values_mut() {
            set.retain(|(h, _, _)| *h != is_host);
        }
        for (node, namespace, name) in placements {
            touched.insert(node.clone());
            s.entry(node).or_default().insert((is_host, namespace, name));
        }
        s.retain(|_, pods| !pods.is_empty());
        touched.into_iter().collect()
    }

    pub fn in_use(&self, node: &str) -> bool {
        self.lock().get(node).is_some_and(|p| !p.is_empty())
    }
}

/// Where the virtual nodes say their kubelet is.
#[derive(Debug, Clone)]
pub struct KubeletEndpoint {
    pub address: String,
    pub port: i32,
}

/// The virtual Node for host node `name` (fake mode, or real mode with the host node).
pub fn virtual_node(
    name: &str,
    host: Option<&Node>,
    kubelet: &KubeletEndpoint,
    version: &str,
    now: Timestamp,
) -> Node {
    let mut labels: BTreeMap<String, String> =
        host.and_then(|h| h.metadata.labels.clone()).unwrap_or_default();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());
    labels
        .entry("kubernetes.io/arch".into())
        .or_insert_with(|| "amd64".into());
    labels.insert(
        LABEL_VIRTUAL_NODE.into(),
        if host.is_some() { "real" } else { "fake" }.into(),
    );
    let q = |s: &str| Quantity(s.into());
    let fake_capacity: BTreeMap<String, Quantity> = [
        ("cpu", "16"),
        ("memory", "32Gi"),
        ("ephemeral-storage", "100Gi"),
        ("pods", "110"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), q(v)))
    .collect();
    let host_status = host.and_then(|h| h.status.clone());
    let condition = |type_: &str, status: &str, reason: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(format!("vnest: {reason}")),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    let conditions = host_status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_else(|| {
            vec![
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ]
        });
    let node_info = host_status
        .as_ref()
        .and_then(|s| s.node_info.clone())
        .unwrap_or(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: String::new(),
            container_runtime_version: "vnest://virtual".into(),
            kernel_version: "vnest".into(),
            kube_proxy_version: String::new(),
            kubelet_version: version.into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: "vnest virtual node".into(),
            system_uuid: String::new(),
            swap: None,
        });
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            annotations: Some([("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(Default::default()),
        status: Some(NodeStatus {
            capacity: Some(
                host_status
                    .as_ref()
                    .and_then(|s| s.capacity.clone())
                    .unwrap_or_else(|| fake_capacity.clone()),
            ),
            allocatable: Some(
                host_status
                    .as_ref()
                    .and_then(|s| s.allocatable.clone())
                    .unwrap_or(fake_capacity),
            ),
            conditions: Some(conditions),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: kubelet.address.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: kubelet.port }),
            }),
            node_info: Some(node_info),
            ..NodeStatus::default()
        }),
    }
}

/// The fields of a virtual node we keep in step (compared to avoid no-op writes). Heartbeat
/// times are left out: a fake node's heartbeat is not refreshed (the virtual cluster runs no
/// node-lifecycle controller).
fn owned_status(n: &Node) -> Value {
    let s = n.status.clone().unwrap_or_default();
    let conditions: Vec<Value> = s
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|c| serde_json::json!({"type": c.type_, "status": c.status}))
        .collect();
    serde_json::json!({
        "capacity": s.capacity, "allocatable": s.allocatable, "addresses": s.addresses,
        "daemonEndpoints": s.daemon_endpoints, "conditions": conditions,
        "labels": n.metadata.labels,
    })
}

pub struct NodeSync {
    pub shared: Arc<Shared>,
    pub usage: Arc<NodeUsage>,
    pub virtual_nodes: Store<Node>,
    /// Host nodes (real mode only).
    pub host_nodes: Option<Store<Node>>,
    pub kubelet: KubeletEndpoint,
    pub version: String,
}

impl Reconciler for NodeSync {
    fn name(&self) -> &'static str {
        "nodes"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let name = &key.name;
        let api: Api<Node> = Api::all(self.shared.virt.clone());
        let current = self.virtual_nodes.get(&ObjectRef::new(name));
        let ours = current
            .as_ref()
            .is_some_and(|n| n.labels().contains_key(LABEL_VIRTUAL_NODE));
        if !self.usage.in_use(name) {
            if let Some(n) = current.filter(|_| ours)
                && n.metadata.deletion_timestamp.is_none()
            {
                tracing::info!(node = %name, "deleting virtual node (nothing of ours runs there)");
                apply::delete(
                    &api,
                    Cluster::Virtual,
                    "Node",
                    name,
                    &n.uid().unwrap_or_default(),
                    None,
                )
                .await?;
            }
            return Ok(Outcome::done());
        }
        let host = match &self.host_nodes {
            Some(store) => match store.get(&ObjectRef::new(name)) {
                Some(h) => Some(h),
                None => return Ok(Outcome::done()), // not listed yet; its watch event re-queues
            },
            None => None,
        };
        // No explicit kubelet address: the vcluster Service, which fronts the syncer's port.
        let kubelet = if self.kubelet.address.is_empty() {
            KubeletEndpoint {
                address: self.shared.translate_ctx()?.kube_service_ip,
                port: self.kubelet.port,
            }
        } else {
            self.kubelet.clone()
        };
        let desired = virtual_node(name, host.as_deref(), &kubelet, &self.version, Timestamp::now());
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match current {
            None => {
                tracing::info!(node = %name, "creating virtual node");
                let created = apply::create(&api, "Node", name, &desired, |n: &Node| {
                    n.labels().contains_key(LABEL_VIRTUAL_NODE)
                })
                .await;
                match created {
                    Ok(_) => {}
                    // A node of that name that is not ours (e.g. made by the tenant): leave it.
                    Err(SyncError::Foreign { .. }) => return Ok(Outcome::done()),
                    Err(e) => return Err(e),
                }
                // Status is a subresource: set it explicitly.
                let body = serde_json::json!({"status": desired.status});
                api.patch_status(name, &pp, &Patch::Merge(&body))
                    .await
                    .map_err(|e| SyncError::from_kube(e, Cluster::Virtual, "set status of", "Node", name))?;
            }
            Some(cur) if !ours => {
                tracing::debug!(node = %name, "a virtual node of that name exists and is not ours; leaving it");
                let _ = cur;
            }
            Some(cur) => {
                if owned_status(&cur) != owned_status(&desired) {
                    let labels_patch = plan::merge_diff(
                        &serde_json::to_value(&cur.metadata.labels).unwrap_or(Value::Null),
                        &serde_json::to_value(&desired.metadata.labels).unwrap_or(Value::Null),
                    );
                    if let Some(labels) = labels_patch {
                        api.patch(
                            name,
                            &pp,
                            &Patch::Merge(&serde_json::json!({"metadata": {"labels": labels}})),
                        )
                        .await
                        .map_err(|e| SyncError::from_kube(e, Cluster::Virtual, "patch", "Node", name))?;
                    }
                    let body = serde_json::json!({"status": desired.status});
                    api.patch_status(name, &pp, &Patch::Merge(&body))
                        .await
                        .map_err(|e| {
                            SyncError::from_kube(e, Cluster::Virtual, "set status of", "Node", name)
                        })?;
                }
            }
        }
        Ok(Outcome::done())
    }

    fn tenant_object(&self, _key: &Key) -> Option<ObjectReference> {
        None
    }
}

/// Declares the Node kind: virtual Nodes follow where our pods run (the pod kind keeps
/// [`NodeUsage`] and wakes the nodes); in real mode the host Nodes are watched too.
pub fn register(
    reg: &mut crate::engine::registry::Registry,
    mode: NodeMode,
    kubelet: KubeletEndpoint,
    version: String,
    workers: usize,
) {
    use crate::engine::registry::{Watch, enqueue_all};
    use crate::engine::watch::Change;
    let v_nodes = Watch::<Node>::virtual_all("nodes");
    let queue = reg.queue("nodes");
    let node_key = |n: &Node| Some(Key::new("", n.name_any()));
    let q = queue.clone();
    reg.on(&v_nodes, move |c| match c {
        Change::Applied(n) | Change::Deleted(n) => q.add(Key::new("", n.name_any())),
        Change::Relisted(store) => enqueue_all(&q, store, node_key),
    });
    let host_nodes = (mode == NodeMode::Real).then(|| {
        let h_nodes = Watch::<Node>::host_cluster("nodes");
        let q = queue;
        reg.on(&h_nodes, move |c| match c {
            Change::Applied(n) => q.add(Key::new("", n.name_any())),
            Change::Deleted(_) => {}
            Change::Relisted(store) => enqueue_all(&q, store, node_key),
        });
        reg.store(&h_nodes)
    });
    let sync = NodeSync {
        shared: reg.shared().clone(),
        usage: reg.index::<NodeUsage>(),
        virtual_nodes: reg.store(&v_nodes),
        host_nodes,
        kubelet,
        version,
    };
    reg.workers(Arc::new(sync), workers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": ns}})).expect("pod")
    }

    #[test]
    fn usage_tracks_both_sides() {
        let u = NodeUsage::default();
        assert_eq!(u.set(false, &pod("a", "p"), Some("n1")), vec!["n1".to_string()]);
        u.set(true, &pod("host", "p-a-x"), Some("n1"));
        assert!(u.in_use("n1"));
        u.set(false, &pod("a", "p"), None);
        assert!(u.in_use("n1"), "the host pod still runs there");
        let touched = u.set(true, &pod("host", "p-a-x"), Some("n2"));
        assert!(touched.contains(&"n1".to_string()) && touched.contains(&"n2".to_string()));
        assert!(!u.in_use("n1"));
        assert!(u.in_use("n2"));
    }

    #[test]
    fn a_rebuild_replaces_one_side_and_reports_every_node_before_or_after() {
        let u = NodeUsage::default();
        u.set(false, &pod("a", "p"), Some("n1"));
        u.set(true, &pod("host", "p-a-x"), Some("n1"));
        u.set(true, &pod("host", "q-a-x"), Some("n3"));
        let place = |node: &str, name: &str| (node.to_owned(), "host".to_owned(), name.to_owned());
        let mut touched = u.rebuild(true, [place("n2", "p-a-x")]);
        touched.sort();
        assert_eq!(touched, ["n1", "n2", "n3"]);
        assert!(u.in_use("n1"), "the virtual side is untouched");
        assert!(u.in_use("n2"));
        assert!(!u.in_use("n3"), "gone from the relisted side");
    }

    #[test]
    fn fake_node_points_at_the_kubelet_endpoint() {
        let k = KubeletEndpoint {
            address: "10.96.0.10".into(),
            port: 10250,
        };
        let n = virtual_node("kwok-node-1", None, &k, "v1.35.4", Timestamp::UNIX_EPOCH);
        let s = n.status.expect("status");
        let addresses = s.addresses.expect("addresses");
        assert_eq!(addresses[0].address, "10.96.0.10");
        assert_eq!(
            s.daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10250)
        );
        let ready = s
            .conditions
            .expect("conditions")
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .expect("ready");
        assert_eq!(ready.status, "True");
        assert_eq!(
            n.metadata
                .labels
                .expect("labels")
                .get(LABEL_VIRTUAL_NODE)
                .map(String::as_str),
            Some("fake")
        );
        // A resync of an unchanged node compares equal despite a new heartbeat time.
        let again = virtual_node("kwok-node-1", None, &k, "v1.35.4", Timestamp::now());
        let first = virtual_node("kwok-node-1", None, &k, "v1.35.4", Timestamp::UNIX_EPOCH);
        assert_eq!(owned_status(&first), owned_status(&again));
    }
}
