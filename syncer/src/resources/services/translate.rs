//! Pure Service translation. The host copy asks for the SAME ClusterIP the virtual API server
//! allocated (both use the host's service CIDR), so in the common case both sides agree without
//! recreating anything. NodePorts, healthCheckNodePort and LoadBalancer status are the host's
//! and flow back. The host selector only ever matches host pods of the same vcluster and virtual
//! namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::engine::TranslateCtx;
use crate::engine::standard::create_meta;
use crate::{markers, naming};

/// Virtual Services that are never copied: the syncer keeps them pointing at the vcluster
/// (`default/kubernetes`) and at its DNS server (`kube-system/kube-dns`).
pub fn is_special(namespace: &str, name: &str) -> bool {
    (namespace == "default" && name == "kubernetes") || (namespace == "kube-system" && name == "kube-dns")
}

/// The host selector: the tenant's (label keys as on host pods) plus our vcluster and
/// namespace markers. An empty or missing selector stays missing (manual Endpoints).
pub fn host_selector(
    vcluster: &str,
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    let selector = selector.filter(|s| !s.is_empty())?;
    let mut out = markers::to_host_labels(vcluster, selector);
    out.insert(
        markers::LABEL_MANAGED_BY.into(),
        naming::safe_label_value(vcluster),
    );
    out.insert(
        markers::LABEL_NAMESPACE.into(),
        naming::safe_label_value(namespace),
    );
    Some(out)
}

fn real_ip(ip: Option<&String>) -> Option<String> {
    ip.filter(|ip| !ip.is_empty() && ip.as_str() != "None").cloned()
}

/// The virtual Service's ClusterIP, when it has a real one (not headless, not ExternalName).
pub fn cluster_ip(svc: &Service) -> Option<String> {
    real_ip(svc.spec.as_ref().and_then(|s| s.cluster_ip.as_ref()))
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Ports for the host: the virtual ports with node ports left to the host (matched by port
/// number and protocol, the host's already-allocated node port is kept).
/// Ports of the host copy. Rule: a node port the host has already allocated stays; otherwise
/// the host is asked for the virtual side's node port (`ask_virtual`), so both sides end up
/// equal without changing anything the API server calls immutable.
fn host_ports(v: &[ServicePort], h: Option<&[ServicePort]>, ask_virtual: bool) -> Vec<ServicePort> {
    v.iter()
        .map(|p| {
            let host_node_port = h.and_then(|hs| {
                hs.iter()
                    .find(|hp| hp.port == p.port && hp.protocol == p.protocol)
                    .and_then(|hp| hp.node_port)
            });
            ServicePort {
                node_port: host_node_port.or(if ask_virtual { p.node_port } else { None }),
                ..p.clone()
            }
        })
        .collect()
}

/// Whether a Service of this spec keeps node ports / a health-check node port on the host.
fn has_node_ports(s: &ServiceSpec) -> bool {
    matches!(s.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
}

/// The host copy's `healthCheckNodePort`: the host's once allocated (immutable), else the
/// virtual side's (asked for, like the ClusterIP) when `ask_virtual`.
fn host_health_check_port(vs: &ServiceSpec, hs: Option<&ServiceSpec>, ask_virtual: bool) -> Option<i32> {
    let local =
        vs.type_.as_deref() == Some("LoadBalancer") && vs.external_traffic_policy.as_deref() == Some("Local");
    if !local {
        return None;
    }
    hs.and_then(|h| h.health_check_node_port).or(if ask_virtual {
        vs.health_check_node_port
    } else {
        None
    })
}

/// The spec fields we own on the host, for a virtual Service and (if any) the current host one.
fn owned_spec(tc: &TranslateCtx, v: &Service, h: Option<&Service>, ask_virtual: bool) -> ServiceSpec {
    let ns = v.namespace().unwrap_or_default();
    let vs = v.spec.clone().unwrap_or_default();
    let hs = h.and_then(|h| h.spec.as_ref());
    let ask_virtual = ask_virtual && has_node_ports(&vs);
    ServiceSpec {
        type_: vs.type_.clone(),
        ports: vs
            .ports
            .as_deref()
            .map(|p| host_ports(p, hs.and_then(|s| s.ports.as_deref()), ask_virtual)),
        health_check_node_port: host_health_check_port(&vs, hs, ask_virtual),
        selector: host_selector(&tc.vcluster, &ns, vs.selector.as_ref()),
        session_affinity: vs.session_affinity.clone(),
        session_affinity_config: vs.session_affinity_config.clone(),
        external_name: vs.external_name.clone(),
        external_traffic_policy: vs.external_traffic_policy.clone(),
        internal_traffic_policy: vs.internal_traffic_policy.clone(),
        publish_not_ready_addresses: vs.publish_not_ready_addresses,
        load_balancer_source_ranges: vs.load_balancer_source_ranges.clone(),
        load_balancer_class: vs.load_balancer_class.clone(),
        allocate_load_balancer_node_ports: vs.allocate_load_balancer_node_ports,
        traffic_distribution: vs.traffic_distribution.clone(),
        ..ServiceSpec::default()
    }
}

/// The host Service to create. `request_ip`: ask the host for the virtual ClusterIP (the
/// normal case); false after the host refused it (it is taken on the host).
pub fn host_service(tc: &TranslateCtx, v: &Service, request_ip: bool) -> Service {
    let ns = v.namespace().unwrap_or_default();
    let host_name = naming::host_name(&tc.vcluster, &ns, &v.name_any());
    let vs = v.spec.clone().unwrap_or_default();
    let mut spec = owned_spec(tc, v, None, request_ip);
    if is_headless(v) {
        spec.cluster_ip = Some("None".into());
    } else if request_ip && let Some(ip) = cluster_ip(v) {
        spec.cluster_ip = Some(ip);
        spec.cluster_ips = vs.cluster_ips.clone();
        spec.ip_families = vs.ip_families.clone();
        spec.ip_family_policy = vs.ip_family_policy.clone();
    }
    Service {
        metadata: create_meta(tc, "Service", &v.metadata, host_name),
        spec: Some(spec),
        status: None,
    }
}

/// Merge patch of the host spec when a field we own differs (ports keep the host's node ports).
pub fn update_spec_patch(tc: &TranslateCtx, v: &Service, h: &Service) -> Option<Value> {
    let desired = serde_json::to_value(owned_spec(tc, v, Some(h), true)).ok()?;
    let current = {
        let hs = h.spec.clone().unwrap_or_default();
        let projected = ServiceSpec {
            type_: hs.type_,
            ports: hs.ports,
            selector: hs.selector,
            session_affinity: hs.session_affinity,
            session_affinity_config: hs.session_affinity_config,
            external_name: hs.external_name,
            external_traffic_policy: hs.external_traffic_policy,
            internal_traffic_policy: hs.internal_traffic_policy,
            publish_not_ready_addresses: hs.publish_not_ready_addresses,
            load_balancer_source_ranges: hs.load_balancer_source_ranges,
            load_balancer_class: hs.load_balancer_class,
            allocate_load_balancer_node_ports: hs.allocate_load_balancer_node_ports,
            traffic_distribution: hs.traffic_distribution,
            health_check_node_port: hs.health_check_node_port,
            ..ServiceSpec::default()
        };
        serde_json::to_value(projected).ok()?
    };
    // Fields the API server defaults (e.g. sessionAffinity None, trafficPolicy Cluster) are
    // compared only when the virtual side says something about them.
    let desired = strip_nulls(desired);
    let mut patch = Value::Object(Default::default());
    let (Value::Object(d), Value::Object(c)) = (&desired, &current) else {
        return None;
    };
    for (k, dv) in d {
        let same = match (k.as_str(), c.get(k)) {
            ("ports", Some(cv)) => ports_equal(dv, cv),
            (_, Some(cv)) => cv == dv,
            (_, None) => false,
        };
        if !same {
            patch[k] = dv.clone();
        }
    }
    // A selector removed on the virtual side is removed on the host.
    if !d.contains_key("selector") && c.get("selector").is_some_and(|s| !s.is_null()) {
        patch["selector"] = Value::Null;
    }
    (patch.as_object().is_some_and(|m| !m.is_empty())).then(|| json!({"spec": patch}))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// Ports compare by what the tenant controls (the host fills in nodePort and defaults
/// targetPort/protocol).
fn ports_equal(desired: &Value, current: &Value) -> bool {
    let norm = |v: &Value| -> Vec<Value> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        json!({
                            "name": p.get("name").cloned().unwrap_or(Value::Null),
                            "port": p.get("port").cloned().unwrap_or(Value::Null),
                            "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP")),
                            "targetPort": p.get("targetPort").cloned().unwrap_or_else(|| p.get("port").cloned().unwrap_or(Value::Null)),
                            "appProtocol": p.get("appProtocol").cloned().unwrap_or(Value::Null),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    norm(desired) == norm(current)
}

/// Merge patch for the VIRTUAL spec: the host's node ports and health-check node port.
pub fn virtual_spec_patch(v: &Service, h: &Service) -> Option<Value> {
    let vs = v.spec.clone().unwrap_or_default();
    let hs = h.spec.clone().unwrap_or_default();
    let mut changed = false;
    let ports: Vec<ServicePort> = vs
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let host = host_node_port(&hs, &p);
            if host.is_some() && host != p.node_port {
                changed = true;
                ServicePort { node_port: host, ..p }
            } else {
                p
            }
        })
        .collect();
    let mut patch = serde_json::Map::new();
    if changed {
        patch.insert("ports".into(), serde_json::to_value(&ports).ok()?);
    }
    // healthCheckNodePort is immutable once allocated: a difference is an
    // [`allocation_mismatch`] (the virtual Service is recreated), never a patch.
    (!patch.is_empty()).then(|| json!({"spec": patch}))
}

/// The LoadBalancer status to copy back, when it differs.
pub fn virtual_status_patch(v: &Service, h: &Service) -> Option<Value> {
    let hs = h
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.clone())
        .unwrap_or_default();
    let vs = v
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.clone())
        .unwrap_or_default();
    (hs != vs).then(|| json!({"status": {"loadBalancer": hs}}))
}

/// Both sides have a real ClusterIP and they differ (the host could not give the virtual IP).
pub fn ip_mismatch(v: &Service, h: &Service) -> Option<String> {
    match (cluster_ip(v), cluster_ip(h)) {
        (Some(a), Some(b)) if a != b => Some(b),
        _ => None,
    }
}

/// Whether the host copy `h` holds an allocation the virtual Service `v` cannot be patched to
/// (immutable fields): another ClusterIP, or another healthCheckNodePort. Only a recreate of
/// the virtual Service with the host's values makes them equal.
pub fn allocation_mismatch(v: &Service, h: &Service) -> bool {
    let hc = |s: &Service| s.spec.as_ref().and_then(|s| s.health_check_node_port);
    let health_differs = matches!((hc(v), hc(h)), (Some(a), Some(b)) if a != b);
    ip_mismatch(v, h).is_some() || health_differs
}

/// The virtual Service recreated with the host's ClusterIP (metadata kept, server fields
/// cleared), for the rare case the host could not allocate the virtual IP.
pub fn recreated_virtual(v: &Service, h: &Service) -> Service {
    let mut out = v.clone();
    out.metadata.uid = None;
    out.metadata.resource_version = None;
    out.metadata.creation_timestamp = None;
    out.metadata.managed_fields = None;
    out.metadata.generation = None;
    out.status = None;
    if let Some(spec) = out.spec.as_mut() {
        let hs = h.spec.clone().unwrap_or_default();
        spec.cluster_ip = hs.cluster_ip.clone();
        spec.cluster_ips = hs.cluster_ips.clone();
        spec.ip_families = hs.ip_families.clone();
        spec.health_check_node_port = hs.health_check_node_port.or(spec.health_check_node_port);
        if let Some(ports) = spec.ports.as_mut() {
            for p in ports {
                p.node_port = host_node_port(&hs, p).or(p.node_port);
            }
        }
    }
    out
}

/// Whether an error from the host says the requested ClusterIP is unavailable there.
pub fn is_ip_conflict(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    let ip = (m.contains("clusterip") || m.contains("cluster ip") || m.contains("spec.clusterips"))
        && (m.contains("already allocated")
            || m.contains("not in the valid range")
            || m.contains("not within"));
    // A node port or health-check node port the virtual side allocated that the host has
    // given to another Service (or that is outside the host's node port range).
    let port = (m.contains("nodeport") || m.contains("healthchecknodeport"))
        && (m.contains("already allocated")
            || m.contains("not in the valid range")
            || m.contains("not within"));
    ip || port
}

/// The node port the host gave virtual port `p` (same port number and protocol), if any.
fn host_node_port(hs: &ServiceSpec, p: &ServicePort) -> Option<i32> {
    hs.ports
        .iter()
        .flatten()
        .find(|hp| hp.port == p.port && hp.protocol == p.protocol)
        .and_then(|hp| hp.node_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc() -> TranslateCtx {
        TranslateCtx::test()
    }

    fn svc(v: Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30001}]}
        }))
    }

    #[test]
    fn host_copy_requests_the_virtual_ip_and_scopes_the_selector() {
        let h = host_service(&tc(), &web(), true);
        let spec = h.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.5.5"));
        let sel = spec.selector.unwrap();
        assert_eq!(sel.get("app").map(String::as_str), Some("web"));
        assert_eq!(sel.get(markers::LABEL_MANAGED_BY).map(String::as_str), Some("vc"));
        assert_eq!(
            sel.get(markers::LABEL_NAMESPACE).map(String::as_str),
            Some("shop")
        );
        assert_eq!(
            spec.ports.unwrap()[0].node_port,
            Some(30001),
            "the host is asked for the virtual node port, like the ClusterIP"
        );
        assert_eq!(h.metadata.name, Some(naming::host_name("vc", "shop", "web")));
        let fallback = host_service(&tc(), &web(), false).spec.unwrap();
        assert_eq!(fallback.cluster_ip, None);
        assert_eq!(
            fallback.ports.unwrap()[0].node_port,
            None,
            "fallback: the host picks"
        );
    }

    fn local_lb() -> Service {
        let mut v = web();
        let spec = v.spec.as_mut().unwrap();
        spec.type_ = Some("LoadBalancer".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(31500);
        v
    }

    #[test]
    fn node_ports_and_the_health_check_port_are_equal_on_both_sides_without_immutable_patches() {
        let v = local_lb();
        let h = host_service(&tc(), &v, true);
        let hs = h.spec.clone().unwrap();
        assert_eq!(
            hs.health_check_node_port,
            Some(31500),
            "asked for, like the ClusterIP"
        );
        assert_eq!(hs.ports.unwrap()[0].node_port, Some(30001));
        // The host gave what was asked: nothing to patch either way, nothing to recreate.
        assert_eq!(update_spec_patch(&tc(), &v, &h), None);
        assert_eq!(virtual_spec_patch(&v, &h), None);
        assert!(!allocation_mismatch(&v, &h));
        // The host holds another health-check port (a fallback create): never a patch of the
        // immutable field; the virtual Service is recreated with the host's values.
        let mut other = h.clone();
        other.spec.as_mut().unwrap().health_check_node_port = Some(32000);
        other.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(32001);
        assert_eq!(
            virtual_spec_patch(&v, &other).unwrap()["spec"].get("healthCheckNodePort"),
            None
        );
        assert!(allocation_mismatch(&v, &other));
        let r = recreated_virtual(&v, &other).spec.unwrap();
        assert_eq!(
            (r.health_check_node_port, r.ports.unwrap()[0].node_port),
            (Some(32000), Some(32001))
        );
        // Cluster traffic policy: no health-check port is asked for.
        let mut cluster = v.clone();
        cluster.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        cluster.spec.as_mut().unwrap().health_check_node_port = None;
        assert_eq!(
            host_service(&tc(), &cluster, true)
                .spec
                .unwrap()
                .health_check_node_port,
            None
        );
        // A ClusterIP Service never asks for node ports.
        let mut plain = web();
        plain.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert_eq!(
            host_service(&tc(), &plain, true).spec.unwrap().ports.unwrap()[0].node_port,
            None
        );
    }

    #[test]
    fn headless_and_selectorless() {
        let v = svc(json!({"metadata": {"name": "db", "namespace": "n", "uid": "u"},
                           "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
        let spec = host_service(&tc(), &v, true).spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector, None);
        // A tenant selector can never match pods of another namespace or vcluster.
        assert_eq!(host_selector("vc", "n", Some(&BTreeMap::new())), None);
    }

    #[test]
    fn resync_is_a_noop_and_changes_are_patched() {
        let v = web();
        let mut h = host_service(&tc(), &v, true);
        // The host allocated a node port and defaulted fields.
        let spec = h.spec.as_mut().unwrap();
        spec.ports.as_mut().unwrap()[0].node_port = Some(31234);
        spec.session_affinity = Some("None".into());
        spec.external_traffic_policy = Some("Cluster".into());
        assert_eq!(update_spec_patch(&tc(), &v, &h), None);
        // Host node port flows back to the virtual Service.
        let back = virtual_spec_patch(&v, &h).unwrap();
        assert_eq!(back["spec"]["ports"][0]["nodePort"], 31234);
        // A port change on the virtual side is patched, keeping the host node port.
        let mut v2 = v.clone();
        v2.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090),
        );
        let p = update_spec_patch(&tc(), &v2, &h).unwrap();
        assert_eq!(p["spec"]["ports"][0]["targetPort"], 9090);
        assert_eq!(p["spec"]["ports"][0]["nodePort"], 31234);
        // Selector removed on the virtual side -> removed on the host.
        let mut v3 = v.clone();
        v3.spec.as_mut().unwrap().selector = None;
        assert_eq!(
            update_spec_patch(&tc(), &v3, &h).unwrap()["spec"]["selector"],
            Value::Null
        );
    }

    #[test]
    fn ip_conflicts_are_recognised() {
        assert!(is_ip_conflict(
            "Service \"x\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.1\"}: failed to allocate IP 10.96.0.1: provided IP is already allocated"
        ));
        assert!(!is_ip_conflict("spec.ports[0].port: Invalid value: 0"));
        assert!(is_ip_conflict(
            "Service \"x\" is invalid: spec.ports[0].nodePort: Invalid value: 30001: provided port is already allocated"
        ));
        assert!(is_ip_conflict(
            "spec.healthCheckNodePort: Invalid value: 31500: provided port is already allocated"
        ));
        let v = web();
        let mut h = host_service(&tc(), &v, false);
        h.spec.as_mut().unwrap().cluster_ip = Some("10.96.9.9".into());
        assert_eq!(ip_mismatch(&v, &h).as_deref(), Some("10.96.9.9"));
        let r = recreated_virtual(&v, &h);
        assert_eq!(r.spec.unwrap().cluster_ip.as_deref(), Some("10.96.9.9"));
        assert_eq!(r.metadata.uid, None);
    }
}
