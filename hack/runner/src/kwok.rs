//! With `--kwok-rules` (the default; hack/up.sh turns it off, as hack/node-kubelet serves the
//! node's kubelet API there) the node advertises kwok's server as its kubelet endpoint, so the
//! host's `pods/portforward` and `pods/log` of its pods are answered by kwok's rules.
//! For each pod it runs, the runner keeps two namespaced kwok objects named after the pod
//! (kwok prefers a namespaced rule of the pod's name over every cluster-wide rule):
//!
//! - `PortForward`: one forward per declared containerPort to `<node-ip>:<that port>` (every
//!   pod here shares the host network, so a container listens on its containerPort there);
//! - `Logs`: one rule per container, its CRI log file under --log-dir, followed.
//!
//! Both are owned by the pod (ownerReference), so the garbage collector removes them with it.
//! They need kwok's `PortForward` and `Logs` CRDs (hack/up.sh installs them and enables them
//! in kwok's configuration); without them the runner says so once and goes on.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

pub const GROUP: &str = "kwok.x-k8s.io";
pub const VERSION: &str = "v1alpha1";

/// The field manager of the runner's applies.
const MANAGER: &str = "vnest-runner";

fn api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// The pod's log file of container `container` (the runner's naming, see `--log-dir`).
pub fn log_path(log_dir: &Path, namespace: &str, pod: &str, container: &str) -> std::path::PathBuf {
    log_dir.join(format!("{namespace}_{pod}_{container}.log"))
}

fn owner(pod: &Pod) -> Value {
    json!([{
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod.metadata.name.clone().unwrap_or_default(),
        "uid": pod.metadata.uid.clone().unwrap_or_default(),
    }])
}

fn meta(pod: &Pod, kind: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {
            "name": pod.metadata.name.clone().unwrap_or_default(),
            "namespace": pod.metadata.namespace.clone().unwrap_or_default(),
            "labels": {"app.kubernetes.io/managed-by": MANAGER},
            "ownerReferences": owner(pod),
        },
    })
}

/// The kwok `PortForward` of `pod`: each declared containerPort (TCP) of every container,
/// forwarded to the same port of `node_ip`. None when the pod declares no port.
pub fn port_forward(pod: &Pod, node_ip: &str) -> Option<Value> {
    let ports: BTreeSet<i32> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| p.container_port)
        .collect();
    if ports.is_empty() {
        return None;
    }
    let forwards: Vec<Value> = ports
        .iter()
        .map(|p| json!({"ports": [p], "target": {"port": p, "address": node_ip}}))
        .collect();
    let mut obj = meta(pod, "PortForward");
    obj["spec"] = json!({ "forwards": forwards });
    Some(obj)
}

/// The kwok `Logs` of `pod`: every container (init containers too) reads its log file,
/// following it (`kubectl logs -f` streams what the container writes).
pub fn logs(pod: &Pod, log_dir: &Path) -> Option<Value> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let rules: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
        .map(|c| {
            json!({
                "containers": [c.name],
                "logsFile": log_path(log_dir, ns, name, &c.name),
                "follow": true,
            })
        })
        .collect();
    if rules.is_empty() {
        return None;
    }
    let mut obj = meta(pod, "Logs");
    obj["spec"] = json!({ "logs": rules });
    Some(obj)
}

/// What went wrong applying the kwok objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host does not serve the kind (kwok's CRDs are not installed).
    #[error("the host does not serve {GROUP}/{VERSION} {0} (install kwok's CRDs and enable them in kwok)")]
    NotServed(&'static str),
    #[error("apply {kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Applies (server-side) the pod's `PortForward` and `Logs`.
pub async fn ensure(client: &Client, pod: &Pod, node_ip: &str, log_dir: &Path) -> Result<(), Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let pp = PatchParams::apply(MANAGER).force();
    for (kind, plural, obj) in [
        ("PortForward", "portforwards", port_forward(pod, node_ip)),
        ("Logs", "logs", logs(pod, log_dir)),
    ] {
        let Some(obj) = obj else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(kind, plural));
        match api.patch(name, &pp, &Patch::Apply(&obj)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(Error::NotServed(kind)),
            Err(source) => {
                return Err(Error::Api {
                    kind,
                    name: format!("{ns}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "vnest-0", "namespace": "demo", "uid": "u-1"},
            "spec": {
                "initContainers": [{"name": "init"}],
                "containers": [
                    {"name": "k3s", "ports": [{"name": "https", "containerPort": 40001}]},
                    {"name": "syncer", "ports": [
                        {"name": "admin", "containerPort": 40002, "protocol": "TCP"},
                        {"name": "dns", "containerPort": 40003, "protocol": "UDP"},
                        {"name": "dns-tcp", "containerPort": 40003, "protocol": "TCP"}]}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn port_forward_has_a_rule_per_tcp_container_port_owned_by_the_pod() {
        let pf = port_forward(&pod(), "127.0.0.1").unwrap();
        assert_eq!(pf["kind"], "PortForward");
        assert_eq!(pf["metadata"]["name"], "vnest-0");
        assert_eq!(pf["metadata"]["namespace"], "demo");
        assert_eq!(
            pf["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "vnest-0", "uid": "u-1"}])
        );
        assert_eq!(
            pf["spec"]["forwards"],
            json!([
                {"ports": [40001], "target": {"port": 40001, "address": "127.0.0.1"}},
                {"ports": [40002], "target": {"port": 40002, "address": "127.0.0.1"}},
                {"ports": [40003], "target": {"port": 40003, "address": "127.0.0.1"}},
            ])
        );
        let mut bare = pod();
        for c in &mut bare.spec.as_mut().unwrap().containers {
            c.ports = None;
        }
        assert!(port_forward(&bare, "127.0.0.1").is_none());
    }

    #[test]
    fn logs_follow_each_containers_file() {
        let l = logs(&pod(), Path::new("/logs")).unwrap();
        assert_eq!(l["kind"], "Logs");
        assert_eq!(
            l["spec"]["logs"],
            json!([
                {"containers": ["init"], "logsFile": "/logs/demo_vnest-0_init.log", "follow": true},
                {"containers": ["k3s"], "logsFile": "/logs/demo_vnest-0_k3s.log", "follow": true},
                {"containers": ["syncer"], "logsFile": "/logs/demo_vnest-0_syncer.log", "follow": true},
            ])
        );
    }
}
