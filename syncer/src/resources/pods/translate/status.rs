//! Host -> virtual: the status copied back and the node binding.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition, PodStatus};

/// The status to write to the virtual pod from the host pod, or `None` when the virtual status
/// already equals it (compared as JSON) or the host pod has no status yet.
///
/// Copied from the host: phase, conditions, hostIP(s), podIP(s), startTime, message, reason,
/// nominatedNodeName, and the container / initContainer / ephemeralContainer statuses of the
/// container names that exist in the virtual spec (host-injected containers are dropped).
/// Conditions: every host condition, then the virtual conditions of types the host pod does not
/// have (readiness-gate conditions set by virtual controllers survive). Everything else
/// (notably `qosClass`, immutable on the virtual side, and `observedGeneration`, which counts
/// virtual generations) keeps its virtual value. Empty strings and lists are normalised to
/// absent, as the API server stores them, so a resync compares equal.
pub fn virtual_status(vpod: &Pod, hpod: &Pod) -> Option<PodStatus> {
    let host = hpod.status.as_ref()?;
    let current = vpod.status.clone().unwrap_or_default();
    let vspec = vpod.spec.as_ref();
    let regular: BTreeSet<&str> = vspec
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let init: BTreeSet<&str> = vspec
        .and_then(|s| s.init_containers.as_ref())
        .map(|list| list.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let ephemeral: BTreeSet<&str> = vspec
        .and_then(|s| s.ephemeral_containers.as_ref())
        .map(|list| list.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let filter = |statuses: &Option<Vec<ContainerStatus>>, names: &BTreeSet<&str>| {
        non_empty_vec(
            statuses
                .iter()
                .flatten()
                .filter(|s| names.contains(s.name.as_str()))
                .cloned()
                .collect(),
        )
    };

    let mut status = current.clone();
    status.phase = non_empty_string(&host.phase);
    status.conditions = merge_conditions(vpod, host.conditions.as_deref(), current.conditions.as_deref());
    status.host_ip = non_empty_string(&host.host_ip);
    status.host_ips = host.host_ips.clone().and_then(non_empty_vec);
    status.pod_ip = non_empty_string(&host.pod_ip);
    status.pod_ips = host.pod_ips.clone().and_then(non_empty_vec);
    status.start_time = host.start_time.clone();
    status.container_statuses = filter(&host.container_statuses, &regular);
    status.init_container_statuses = filter(&host.init_container_statuses, &init);
    status.ephemeral_container_statuses = filter(&host.ephemeral_container_statuses, &ephemeral);
    status.message = non_empty_string(&host.message);
    status.reason = non_empty_string(&host.reason);
    status.nominated_node_name = non_empty_string(&host.nominated_node_name);

    // Equal structs serialize equally: the JSON comparison (which also finds equal a
    // timestamp that differs below the second it is written with) only runs when they differ.
    let same = status == current || serde_json::to_value(&status).ok() == serde_json::to_value(&current).ok();
    (!same).then_some(status)
}

/// Pod condition types the kubelet (or the host control plane, e.g. `DisruptionTarget`) sets:
/// they flow host -> virtual. Every other type, and every type listed in the virtual pod's
/// `spec.readinessGates`, is the tenant's (its controllers set it in the virtual cluster): it
/// flows virtual -> host and is never overwritten on the virtual side.
pub const KUBELET_CONDITIONS: &[&str] = &[
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "DisruptionTarget",
    "PodResizePending",
    "PodResizeInProgress",
];

/// Whether condition `type_` of virtual pod `vpod` is the tenant's (see [`KUBELET_CONDITIONS`]).
pub fn tenant_owned_condition(vpod: &Pod, type_: &str) -> bool {
    let gated = vpod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == type_));
    gated || !KUBELET_CONDITIONS.contains(&type_)
}

/// The virtual pod's conditions: the host's, except that a tenant-owned type the virtual pod
/// has keeps the virtual value; types only the virtual pod has are kept.
fn merge_conditions(
    vpod: &Pod,
    host: Option<&[PodCondition]>,
    virtual_: Option<&[PodCondition]>,
) -> Option<Vec<PodCondition>> {
    let host = host.unwrap_or_default();
    let virtual_ = virtual_.unwrap_or_default();
    let of_virtual = |t: &str| virtual_.iter().find(|c| c.type_ == t);
    let host_types: BTreeSet<&str> = host.iter().map(|c| c.type_.as_str()).collect();
    let merged: Vec<PodCondition> = host
        .iter()
        .map(|h| match of_virtual(&h.type_) {
            Some(v) if tenant_owned_condition(vpod, &h.type_) => v,
            _ => h,
        })
        .chain(virtual_.iter().filter(|c| !host_types.contains(c.type_.as_str())))
        .cloned()
        .collect();
    non_empty_vec(merged)
}

/// The tenant-owned conditions of `vpod` that the host pod lacks or has with another status,
/// reason or message, as a strategic merge patch of the host pod's status (conditions merge
/// by type): None when the host is current.
pub fn host_conditions_patch(vpod: &Pod, hpod: &Pod) -> Option<serde_json::Value> {
    let host = hpod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let changed: Vec<&PodCondition> = vpod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| tenant_owned_condition(vpod, &c.type_))
        .filter(|c| {
            !host.iter().any(|h| {
                h.type_ == c.type_ && h.status == c.status && h.reason == c.reason && h.message == c.message
            })
        })
        .collect();
    (!changed.is_empty()).then(|| serde_json::json!({"status": {"conditions": changed}}))
}

fn non_empty_vec<T>(list: Vec<T>) -> Option<Vec<T>> {
    (!list.is_empty()).then_some(list)
}

fn non_empty_string(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

/// Whether the host pod runs on a node the virtual pod is not bound to yet: `Some(node)` when
/// the host `spec.nodeName` is set and the virtual one is not.
pub fn binding_needed(vpod: &Pod, hpod: &Pod) -> Option<String> {
    let host_node = hpod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())?;
    let virtual_bound = vpod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    (!virtual_bound).then_some(host_node)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn status_pods() -> (Pod, Pod) {
        let v = vpod_with(json!({
            "spec": {
                "containers": [{"name": "app", "image": "nginx:1"}],
                "initContainers": [{"name": "init", "image": "busybox"}],
            },
            "status": {"phase": "Pending", "qosClass": "Burstable",
                "conditions": [{"type": "example.com/gate", "status": "True"}]},
        }));
        let mut h = as_stored(translate(&v));
        let container = |name: &str| {
            json!({"name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                   "state": {"running": {"startedAt": "2024-01-01T00:00:05Z"}}})
        };
        h.status = Some(
            serde_json::from_value(json!({
                "phase": "Running",
                "qosClass": "BestEffort",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "hostIP": "192.168.0.5",
                "hostIPs": [{"ip": "192.168.0.5"}],
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}],
                "startTime": "2024-01-01T00:00:01Z",
                "nominatedNodeName": "",
                "observedGeneration": 5,
                "containerStatuses": [container("app"), container("istio-proxy")],
                "initContainerStatuses": [container("init"), container("istio-init")],
                "ephemeralContainerStatuses": [container("debug")],
            }))
            .unwrap(),
        );
        (v, h)
    }

    #[test]
    fn virtual_status_copies_filters_and_keeps_qos() {
        let (v, h) = status_pods();
        let status = serde_json::to_value(virtual_status(&v, &h).unwrap()).unwrap();
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["qosClass"], "Burstable");
        assert_eq!(status["hostIP"], "192.168.0.5");
        assert_eq!(status["hostIPs"], json!([{"ip": "192.168.0.5"}]));
        assert_eq!(status["podIP"], "10.244.1.7");
        assert_eq!(status["podIPs"], json!([{"ip": "10.244.1.7"}]));
        assert_eq!(status["startTime"], "2024-01-01T00:00:01Z");
        assert!(status.get("nominatedNodeName").is_none());
        assert!(
            status.get("observedGeneration").is_none(),
            "host generation is not ours"
        );
        let names = |key: &str| -> Vec<String> {
            status[key]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|c| c["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(names("containerStatuses"), vec!["app"]);
        assert_eq!(names("initContainerStatuses"), vec!["init"]);
        assert!(status.get("ephemeralContainerStatuses").is_none());
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["Ready", "PodScheduled", "example.com/gate"]);
    }

    /// (condition type, status, reason) of `conditions`.
    fn conds(conditions: Option<&Vec<PodCondition>>) -> Vec<(String, String, Option<String>)> {
        conditions
            .into_iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    #[test]
    fn tenant_owned_conditions_flow_down_and_kubelet_ones_flow_up() {
        let cond = |t: &str, s: &str, r: Option<&str>| (t.to_owned(), s.to_owned(), r.map(str::to_owned));
        // The gate is listed in readinessGates; "custom" is a type the kubelet never sets.
        let v = vpod_with(json!({
            "spec": {"containers": [{"name": "app", "image": "nginx:1"}],
                     "readinessGates": [{"conditionType": "Ready"}, {"conditionType": "example.com/gate"}]},
            "status": {"conditions": [
                {"type": "example.com/gate", "status": "False", "reason": "Tenant"},
                {"type": "ContainersReady", "status": "False"},
                {"type": "custom", "status": "True", "reason": "Mine"}]},
        }));
        assert!(tenant_owned_condition(&v, "example.com/gate"));
        assert!(tenant_owned_condition(&v, "custom"));
        assert!(!tenant_owned_condition(&v, "ContainersReady"));
        let mut h = as_stored(translate(&v));
        h.status = Some(
            serde_json::from_value(json!({"phase": "Running", "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "example.com/gate", "status": "True"}]}))
            .unwrap(),
        );
        // Virtual side: the kubelet's ContainersReady from the host, the tenant's gate kept.
        let status = virtual_status(&v, &h).unwrap();
        assert_eq!(
            conds(status.conditions.as_ref()),
            vec![
                cond("ContainersReady", "True", None),
                cond("example.com/gate", "False", Some("Tenant")),
                cond("custom", "True", Some("Mine")),
            ]
        );
        // Host side: the tenant-owned conditions that differ, merged by type.
        let patch = host_conditions_patch(&v, &h).unwrap();
        let sent: Vec<&str> = patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(sent, vec!["example.com/gate", "custom"]);
        // Once the host has them: nothing more either way.
        let mut h2 = h.clone();
        h2.status.as_mut().unwrap().conditions = status.conditions.clone();
        assert_eq!(host_conditions_patch(&v, &h2), None);
        let mut v2 = v.clone();
        v2.status = Some(status);
        assert_eq!(virtual_status(&v2, &h2), None);
    }

    #[test]
    fn virtual_status_is_none_when_equal_or_host_has_none() {
        let (mut v, mut h) = status_pods();
        v.status = virtual_status(&v, &h);
        assert!(v.status.is_some());
        // Round-trip through JSON like the API server would.
        let v: Pod = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
        assert_eq!(virtual_status(&v, &h), None);
        h.status = None;
        assert_eq!(virtual_status(&v, &h), None);
    }

    #[test]
    fn virtual_status_follows_host_changes() {
        let (mut v, mut h) = status_pods();
        v.status = virtual_status(&v, &h);
        h.status.as_mut().unwrap().phase = Some("Succeeded".to_owned());
        let status = virtual_status(&v, &h).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(status.qos_class.as_deref(), Some("Burstable"));
    }

    #[rstest]
    #[case::host_bound_virtual_not(Some("node-1"), None, Some("node-1"))]
    #[case::virtual_empty_string(Some("node-1"), Some(""), Some("node-1"))]
    #[case::both_bound(Some("node-1"), Some("node-1"), None)]
    #[case::both_bound_differently(Some("node-1"), Some("node-2"), None)]
    #[case::host_unbound(None, None, None)]
    #[case::host_empty(Some(""), None, None)]
    fn binding_needed_cases(
        #[case] host: Option<&str>,
        #[case] virtual_: Option<&str>,
        #[case] want: Option<&str>,
    ) {
        let v = vpod_spec(json!({"nodeName": virtual_}));
        let h = vpod_spec(json!({"nodeName": host}));
        assert_eq!(binding_needed(&v, &h).as_deref(), want);
    }
}
