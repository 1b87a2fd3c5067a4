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
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Executor, Ownership, Target, Write};
use crate::engine::plan::{self, PatchKind, Plan};
use crate::engine::queue::Key;
use crate::engine::worker::{Outcome, Reconciler};
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

    /// Records where `pod` runs (None when deleted or not scheduled). Returns the nodes whose
    /// use changed: the first pod of ours placed there, or the last one gone. A node's plan reads
    /// nothing else of its pods, so the other placements wake no node reconcile (a 1000-pod
    /// burst on one node is one, not two per pod).
    pub fn set(&self, is_host: bool, pod: &Pod, node: Option<&str>) -> Vec<String> {
        let id = (is_host, pod.namespace().unwrap_or_default(), pod.name_any());
        let mut s = self.lock();
        let mut touched = Vec::new();
        s.retain(|n, pods| {
            if Some(n.as_str()) != node && pods.remove(&id) && pods.is_empty() {
                touched.push(n.clone());
            }
            !pods.is_empty()
        });
        if let Some(node) = node {
            let pods = s.entry(node.to_owned()).or_default();
            if pods.insert(id) && pods.len() == 1 {
                touched.push(node.to_owned());
            }
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

/// Whether the syncer made virtual node `n` (and may therefore change or delete it).
fn is_ours(n: &Node) -> bool {
    n.labels().contains_key(LABEL_VIRTUAL_NODE)
}

/// The host node a virtual node is made from, as the caches show it.
#[derive(Debug, Clone, Copy)]
pub enum HostNode<'a> {
    /// Fake mode: host nodes are not read.
    Fake,
    /// Real mode, and the host node is not listed yet (its watch event queues the node again).
    NotListed,
    /// Real mode: the host node.
    Real(&'a Node),
}

/// What a node reconcile observed.
#[derive(Debug, Clone, Copy)]
pub struct NodeObserved<'a> {
    pub name: &'a str,
    /// Whether pods of ours run there ([`NodeUsage::in_use`]).
    pub in_use: bool,
    /// The virtual Node of that name, if any.
    pub current: Option<&'a Node>,
    pub host: HostNode<'a>,
    /// Where the virtual nodes say their kubelet is; `None` while no address is configured and
    /// the vcluster Service (whose IP it then is) is not known yet.
    pub kubelet: Option<&'a KubeletEndpoint>,
    pub version: &'a str,
    pub now: Timestamp,
}

/// The pure plan for one virtual node:
/// - nothing of ours runs there: delete the node if we made it (a tenant's node is left alone);
/// - in use and missing: create it, then set its status (a subresource);
/// - in use and ours: patch its labels and status when what we keep in step differs;
/// - in use and not ours: leave it alone.
pub fn plan_node(seen: &NodeObserved<'_>) -> Result<Plan, SyncError> {
    let target = || Target::virtual_object::<Node>("", seen.name);
    let ours = seen.current.filter(|n| is_ours(n));
    if !seen.in_use {
        return Ok(Plan::noop().then_maybe(
            ours.and_then(|n| Action::delete(target(), &n.metadata, None, "nothing of ours runs there")),
        ));
    }
    let host = match seen.host {
        HostNode::Fake => None,
        HostNode::NotListed => return Ok(Plan::noop()),
        HostNode::Real(h) => Some(h),
    };
    let Some(kubelet) = seen.kubelet else {
        return Err(SyncError::Translate(TranslateError::NotReady(
            "the vcluster's owner object and Service on the host".into(),
        )));
    };
    let desired = virtual_node(seen.name, host, kubelet, seen.version, seen.now);
    // Status is a subresource: set it explicitly.
    let status = || Write::status(serde_json::json!({"status": desired.status}));
    let Some(current) = seen.current else {
        // Ownership is only consulted on the host: on the virtual side a taken name is a
        // conflict, and the next pass sees from the cache whose node it is.
        return Ok(Plan::one(Action::create(
            target(),
            &desired,
            Ownership::ManagedBy,
            "pods of ours run on the node",
        ))
        .then(Action::new(target(), status(), "new virtual node")));
    };
    if ours.is_none() {
        tracing::debug!(node = %seen.name, "a virtual node of that name exists and is not ours; leaving it");
        return Ok(Plan::noop());
    }
    if owned_status(current) == owned_status(&desired) {
        return Ok(Plan::noop());
    }
    let labels_patch = plan::merge_diff(
        &serde_json::to_value(&current.metadata.labels).unwrap_or(Value::Null),
        &serde_json::to_value(&desired.metadata.labels).unwrap_or(Value::Null),
    );
    Ok(Plan::noop()
        .then_maybe(labels_patch.map(|labels| {
            Action::new(
                target(),
                Write::patch(
                    PatchKind::Merge,
                    serde_json::json!({"metadata": {"labels": labels}}),
                ),
                "node labels changed",
            )
        }))
        .then(Action::new(target(), status(), "node status changed")))
}

pub struct NodeSync {
    pub executor: Executor,
    pub usage: Arc<NodeUsage>,
    pub virtual_nodes: Store<Node>,
    /// Host nodes (real mode only).
    pub host_nodes: Option<Store<Node>>,
    pub kubelet: KubeletEndpoint,
    pub version: String,
}

impl NodeSync {
    /// The kubelet endpoint the nodes advertise. No explicit address: the vcluster Service,
    /// which fronts the syncer's port (`None` while it is not known).
    fn kubelet_endpoint(&self) -> Option<KubeletEndpoint> {
        if !self.kubelet.address.is_empty() {
            return Some(self.kubelet.clone());
        }
        let tc = self.executor.shared().translate_ctx().ok()?;
        Some(KubeletEndpoint {
            address: tc.kube_service_ip,
            port: self.kubelet.port,
        })
    }
}

impl Reconciler for NodeSync {
    fn name(&self) -> &'static str {
        "nodes"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let name = &key.name;
        let current = self.virtual_nodes.get(&ObjectRef::new(name));
        let host = self
            .host_nodes
            .as_ref()
            .map(|store| store.get(&ObjectRef::new(name)));
        let kubelet = self.kubelet_endpoint();
        let plan = plan_node(&NodeObserved {
            name,
            in_use: self.usage.in_use(name),
            current: current.as_deref(),
            host: match &host {
                None => HostNode::Fake,
                Some(None) => HostNode::NotListed,
                Some(Some(h)) => HostNode::Real(h),
            },
            kubelet: kubelet.as_ref(),
            version: &self.version,
            now: Timestamp::now(),
        })?;
        self.executor.run_all(&plan.actions).await?;
        Ok(Outcome {
            requeue_after: plan.requeue_after,
        })
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
        executor: Executor::new(reg.shared().clone()),
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
        assert!(
            u.set(true, &pod("host", "p-a-x"), Some("n1")).is_empty(),
            "n1 was in use already: no node reconcile"
        );
        assert!(u.in_use("n1"));
        assert!(u.set(false, &pod("a", "p"), None).is_empty());
        assert!(u.in_use("n1"), "the host pod still runs there");
        let mut touched = u.set(true, &pod("host", "p-a-x"), Some("n2"));
        touched.sort();
        assert_eq!(touched, ["n1", "n2"], "n1 lost its last pod, n2 got its first");
        assert!(!u.in_use("n1"));
        assert!(u.in_use("n2"));
        assert!(
            u.set(true, &pod("host", "p-a-x"), Some("n2")).is_empty(),
            "no change"
        );
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

    const VERSION: &str = "v1.35.4";

    fn endpoint() -> KubeletEndpoint {
        KubeletEndpoint {
            address: "10.96.0.10".into(),
            port: 10250,
        }
    }

    /// A node as the virtual cache shows it.
    fn with_uid(mut n: Node) -> Node {
        n.metadata.uid = Some(format!("uid-{}", n.name_any()));
        n
    }

    /// Our fake node `name`, as we made it.
    fn ours(name: &str) -> Node {
        with_uid(virtual_node(
            name,
            None,
            &endpoint(),
            VERSION,
            Timestamp::UNIX_EPOCH,
        ))
    }

    /// A node the tenant made (no label of ours).
    fn tenants(name: &str) -> Node {
        with_uid(serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("node"))
    }

    fn terminating(mut n: Node) -> Node {
        n.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        n
    }

    /// Host node `name` in zone `zone` with `cpu` CPUs.
    fn host_node(name: &str, zone: &str, cpu: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": "host-uid", "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"capacity": {"cpu": cpu}, "allocatable": {"cpu": cpu},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("node")
    }

    /// What the caches show for node "n1".
    struct Seen {
        in_use: bool,
        current: Option<Node>,
        /// None: fake mode; Some(None): real mode, host node not listed yet.
        host: Option<Option<Node>>,
        kubelet: Option<KubeletEndpoint>,
    }

    impl Seen {
        fn used(current: Option<Node>) -> Self {
            Self {
                in_use: true,
                current,
                host: None,
                kubelet: Some(endpoint()),
            }
        }
        fn unused(current: Option<Node>) -> Self {
            Self {
                in_use: false,
                ..Self::used(current)
            }
        }
        fn real(self, host: Option<Node>) -> Self {
            Self {
                host: Some(host),
                ..self
            }
        }
        fn plan(&self) -> Result<Plan, &'static str> {
            plan_node(&NodeObserved {
                name: "n1",
                in_use: self.in_use,
                current: self.current.as_ref(),
                host: match &self.host {
                    None => HostNode::Fake,
                    Some(None) => HostNode::NotListed,
                    Some(Some(h)) => HostNode::Real(h),
                },
                kubelet: self.kubelet.as_ref(),
                version: VERSION,
                // Heartbeats are not compared: a later pass sees the same node.
                now: Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(3600),
            })
            .map_err(|e| e.category())
        }
    }

    #[test]
    fn node_plans() {
        let zone_b = {
            let h = host_node("n1", "b", "4");
            with_uid(virtual_node(
                "n1",
                Some(&h),
                &endpoint(),
                VERSION,
                Timestamp::UNIX_EPOCH,
            ))
        };
        let cases = [
            (
                "create a fake node",
                Seen::used(None),
                Ok(vec!["create", "patch"]),
            ),
            (
                "create a real node from the host node",
                Seen::used(None).real(Some(host_node("n1", "a", "4"))),
                Ok(vec!["create", "patch"]),
            ),
            (
                "resync of a node in step",
                Seen::used(Some(ours("n1"))),
                Ok(vec![]),
            ),
            (
                "resync of a real node in step",
                Seen::used(Some(zone_b.clone())).real(Some(host_node("n1", "b", "4"))),
                Ok(vec![]),
            ),
            (
                "host capacity changed: status only",
                Seen::used(Some(zone_b.clone())).real(Some(host_node("n1", "b", "8"))),
                Ok(vec!["patch"]),
            ),
            (
                "host labels changed: labels, then status",
                Seen::used(Some(zone_b)).real(Some(host_node("n1", "c", "4"))),
                Ok(vec!["patch", "patch"]),
            ),
            (
                "real mode, host node not listed yet: its watch event queues it again",
                Seen::used(None).real(None),
                Ok(vec![]),
            ),
            (
                "a tenant's node is left alone",
                Seen::used(Some(tenants("n1"))),
                Ok(vec![]),
            ),
            (
                "delete when unused",
                Seen::unused(Some(ours("n1"))),
                Ok(vec!["delete"]),
            ),
            (
                "an unused node that is not ours is not deleted",
                Seen::unused(Some(tenants("n1"))),
                Ok(vec![]),
            ),
            (
                "no second delete while it goes",
                Seen::unused(Some(terminating(ours("n1")))),
                Ok(vec![]),
            ),
            ("unused and gone", Seen::unused(None), Ok(vec![])),
            (
                "the kubelet address is not known yet: wait",
                Seen {
                    kubelet: None,
                    ..Seen::used(None)
                },
                Err("waiting"),
            ),
            (
                "deleting needs no kubelet address",
                Seen {
                    kubelet: None,
                    ..Seen::unused(Some(ours("n1")))
                },
                Ok(vec!["delete"]),
            ),
        ];
        for (name, seen, want) in cases {
            let got = seen.plan().map(|p| {
                assert_eq!(p.requeue_after, None, "{name}: nodes never requeue");
                p.ops()
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_new_node_is_created_then_given_its_status() {
        let plan = Seen::used(None)
            .real(Some(host_node("n1", "a", "4")))
            .plan()
            .expect("a plan");
        let [create, status] = &plan.actions[..] else {
            panic!("two actions: {:?}", plan.ops())
        };
        assert_eq!(create.target, Target::virtual_object::<Node>("", "n1"));
        let Write::Create { body, .. } = &create.write else {
            panic!("a create first")
        };
        assert_eq!(body["kind"], "Node");
        assert_eq!(body["metadata"]["labels"][LABEL_VIRTUAL_NODE], "real");
        assert_eq!(body["metadata"]["labels"]["topology.kubernetes.io/zone"], "a");
        let Write::Patch {
            subresource: Some("status"),
            patch,
        } = &status.write
        else {
            panic!("then the status subresource")
        };
        assert_eq!(patch.kind, PatchKind::Merge);
        assert_eq!(patch.body["status"]["capacity"]["cpu"], "4");
        assert_eq!(patch.body["status"]["addresses"][0]["address"], "10.96.0.10");
    }

    #[test]
    fn changed_labels_are_patched_on_the_node_and_the_rest_on_its_status() {
        let before = host_node("n1", "b", "4");
        let current = with_uid(virtual_node(
            "n1",
            Some(&before),
            &endpoint(),
            VERSION,
            Timestamp::UNIX_EPOCH,
        ));
        let plan = Seen::used(Some(current))
            .real(Some(host_node("n1", "c", "8")))
            .plan()
            .expect("a plan");
        let patches: Vec<_> = plan
            .actions
            .iter()
            .map(|a| match &a.write {
                Write::Patch { subresource, patch } => (*subresource, patch.body.clone()),
                other => panic!("only patches: {other:?}"),
            })
            .collect();
        assert_eq!(
            patches[0],
            (
                None,
                serde_json::json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "c"}}})
            )
        );
        assert_eq!(patches[1].0, Some("status"));
        assert_eq!(patches[1].1["status"]["capacity"]["cpu"], "8");
    }

    #[test]
    fn an_unused_node_is_deleted_with_its_uid() {
        let plan = Seen::unused(Some(ours("n1"))).plan().expect("a plan");
        assert_eq!(
            plan.actions[0].write,
            Write::Delete {
                uid: "uid-n1".into(),
                grace_seconds: None
            }
        );
        assert_eq!(plan.actions[0].target, Target::virtual_object::<Node>("", "n1"));
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
