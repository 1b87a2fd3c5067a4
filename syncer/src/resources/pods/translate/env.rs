//! Containers: env and envFrom references renamed, fieldRefs rewritten, the `KUBERNETES_*`
//! and service-link variables prepended.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, EphemeralContainer, PodSpec, SecurityContext,
};

use super::metadata::rewrite_field_ref;
use super::volumes::Renamer;

/// Port of the vcluster's API Service (KUBERNETES_SERVICE_PORT of synced pods).
const KUBE_SERVICE_PORT: &str = "443";

/// Container and EphemeralContainer: the parts the translation touches.
pub(super) trait ContainerLike {
    fn name(&self) -> &str;
    fn env(&self) -> (Option<&Vec<EnvVar>>, Option<&Vec<EnvFromSource>>);
    fn env_mut(&mut self) -> (&mut Option<Vec<EnvVar>>, &mut Option<Vec<EnvFromSource>>);
    fn security_context(&self) -> Option<&SecurityContext>;
    fn ports(&self) -> &[ContainerPort];
}

macro_rules! impl_container_like {
    ($ty:ty) => {
        impl ContainerLike for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn env(&self) -> (Option<&Vec<EnvVar>>, Option<&Vec<EnvFromSource>>) {
                (self.env.as_ref(), self.env_from.as_ref())
            }
            fn env_mut(&mut self) -> (&mut Option<Vec<EnvVar>>, &mut Option<Vec<EnvFromSource>>) {
                (&mut self.env, &mut self.env_from)
            }
            fn security_context(&self) -> Option<&SecurityContext> {
                self.security_context.as_ref()
            }
            fn ports(&self) -> &[ContainerPort] {
                self.ports.as_deref().unwrap_or_default()
            }
        }
    };
}

impl_container_like!(Container);
impl_container_like!(EphemeralContainer);

/// Every container of a spec (containers, initContainers, ephemeralContainers).
pub(super) fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &dyn ContainerLike> {
    let regular = spec.containers.iter().map(|c| c as &dyn ContainerLike);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c as &dyn ContainerLike);
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c as &dyn ContainerLike);
    regular.chain(init).chain(ephemeral)
}

/// Env and envFrom of one container: references renamed, fieldRefs rewritten, the
/// `KUBERNETES_*` variables prepended.
pub(super) fn translate_container(
    names: &Renamer<'_>,
    kube_env: &[EnvVar],
    container: &mut dyn ContainerLike,
) {
    let (env, env_from) = container.env_mut();
    for var in env.iter_mut().flatten() {
        let Some(from) = var.value_from.as_mut() else {
            continue;
        };
        if let Some(cm) = from.config_map_key_ref.as_mut() {
            names.rename(&mut cm.name);
        }
        if let Some(secret) = from.secret_key_ref.as_mut() {
            names.rename(&mut secret.name);
        }
        rewrite_field_ref(names.vcluster, from.field_ref.as_mut());
    }
    for source in env_from.iter_mut().flatten() {
        if let Some(cm) = source.config_map_ref.as_mut() {
            names.rename(&mut cm.name);
        }
        if let Some(secret) = source.secret_ref.as_mut() {
            names.rename(&mut secret.name);
        }
    }
    prepend_env(env, kube_env);
}

/// The variables the kubelet would set for the `default/kubernetes` Service, pointing at the
/// vcluster's API Service, sorted by name.
pub(super) fn kubernetes_env(ip: &str) -> Vec<EnvVar> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let url = format!("tcp://{host}:{KUBE_SERVICE_PORT}");
    let mut vars: Vec<EnvVar> = [
        ("KUBERNETES_SERVICE_HOST", ip),
        ("KUBERNETES_SERVICE_PORT", KUBE_SERVICE_PORT),
        ("KUBERNETES_SERVICE_PORT_HTTPS", KUBE_SERVICE_PORT),
        ("KUBERNETES_PORT", url.as_str()),
        ("KUBERNETES_PORT_443_TCP", url.as_str()),
        ("KUBERNETES_PORT_443_TCP_ADDR", ip),
        ("KUBERNETES_PORT_443_TCP_PORT", KUBE_SERVICE_PORT),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    })
    .collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    vars
}

/// The kubelet's service-link variables for `services` (those with a real ClusterIP; the
/// virtual `kubernetes` Service is covered by the KUBERNETES_* variables), merged with `base`
/// and sorted by name; `base` wins on a name clash.
pub(super) fn with_service_links(
    base: Vec<EnvVar>,
    services: &[k8s_openapi::api::core::v1::Service],
) -> Vec<EnvVar> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let ip = match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() && ip != "None" => ip,
            _ => continue,
        };
        if name == "kubernetes" && svc.metadata.namespace.as_deref() == Some("default") {
            continue;
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(name);
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        vars.insert(format!("{prefix}_SERVICE_HOST"), ip.to_owned());
        vars.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                vars.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                    p.port.to_string(),
                );
            }
            let key = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            let url = format!("{}://{host}:{}", proto.to_ascii_lowercase(), p.port);
            vars.insert(key.clone(), url);
            vars.insert(format!("{key}_PROTO"), proto.to_ascii_lowercase());
            vars.insert(format!("{key}_PORT"), p.port.to_string());
            vars.insert(format!("{key}_ADDR"), ip.to_owned());
        }
        let proto = first.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        vars.insert(
            format!("{prefix}_PORT"),
            format!("{proto}://{host}:{}", first.port),
        );
    }
    for v in &base {
        vars.remove(&v.name);
    }
    let mut all = base;
    all.extend(vars.into_iter().map(|(name, value)| EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }));
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// A Service or port name as an environment variable name: upper case, '-' -> '_'.
fn env_name(s: &str) -> String {
    s.to_ascii_uppercase().replace('-', "_")
}

/// Prepends the `generated` variables (already sorted) the container does not define itself,
/// so its own variables may reference them.
fn prepend_env(env: &mut Option<Vec<EnvVar>>, generated: &[EnvVar]) {
    let own = env.take().unwrap_or_default();
    let defined: BTreeSet<&str> = own.iter().map(|v| v.name.as_str()).collect();
    let mut merged: Vec<EnvVar> = generated
        .iter()
        .filter(|v| !defined.contains(v.name.as_str()))
        .cloned()
        .collect();
    merged.extend(own);
    *env = (!merged.is_empty()).then_some(merged);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testutil::*;
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn service_links_follow_the_kubelet_naming() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-db", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
        }))
        .unwrap();
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hl", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
        }))
        .unwrap();
        let env = with_service_links(kubernetes_env("10.96.0.1"), &[svc, headless]);
        let get = |k: &str| env.iter().find(|v| v.name == k).and_then(|v| v.value.clone());
        assert_eq!(get("MY_DB_SERVICE_HOST").as_deref(), Some("10.96.3.4"));
        assert_eq!(get("MY_DB_SERVICE_PORT").as_deref(), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_PG").as_deref(), Some("5432"));
        assert_eq!(get("MY_DB_PORT").as_deref(), Some("tcp://10.96.3.4:5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR").as_deref(), Some("10.96.3.4"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_PROTO").as_deref(), Some("tcp"));
        assert_eq!(get("KUBERNETES_SERVICE_HOST").as_deref(), Some("10.96.0.1"));
        assert!(get("HL_SERVICE_HOST").is_none(), "headless Services get no links");
        let mut names: Vec<&str> = env.iter().map(|v| v.name.as_str()).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted);
        names.dedup();
        assert_eq!(names.len(), env.len(), "no duplicates");
    }

    #[test]
    fn kubernetes_env_is_prepended_sorted_and_skipped_when_defined() {
        let v = vpod_spec(json!({
            "containers": [
                {"name": "app", "image": "nginx:1", "env": [
                    {"name": "USER_VAR", "value": "$(KUBERNETES_SERVICE_HOST)"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"},
                ]},
                {"name": "bare", "image": "nginx:1"},
            ],
            "initContainers": [{"name": "init", "image": "busybox"}],
        }));
        let spec = hspec(&v);
        let names = |c: &Value| -> Vec<String> {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let generated = [
            "KUBERNETES_PORT",
            "KUBERNETES_PORT_443_TCP",
            "KUBERNETES_PORT_443_TCP_ADDR",
            "KUBERNETES_PORT_443_TCP_PORT",
            "KUBERNETES_PORT_443_TCP_PROTO",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "KUBERNETES_SERVICE_PORT_HTTPS",
        ];
        let mut sorted = generated.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, generated);

        let app = names(&spec["containers"][0]);
        let mut want: Vec<String> = generated
            .iter()
            .filter(|n| **n != "KUBERNETES_SERVICE_PORT")
            .map(|n| (*n).to_owned())
            .collect();
        want.extend(["USER_VAR".to_owned(), "KUBERNETES_SERVICE_PORT".to_owned()]);
        assert_eq!(app, want);
        assert_eq!(spec["containers"][0]["env"][8]["value"], "6443");
        assert_eq!(names(&spec["containers"][1]), generated);
        assert_eq!(names(&spec["initContainers"][0]), generated);

        let env: BTreeMap<String, String> = spec["containers"][1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], KUBE_IP);
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], format!("tcp://{KUBE_IP}:443"));
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], format!("tcp://{KUBE_IP}:443"));
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], KUBE_IP);
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PORT"], "443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_PROTO"], "tcp");
        assert_eq!(spec["enableServiceLinks"], false);
    }

    #[test]
    fn kubernetes_env_brackets_ipv6() {
        let env = kubernetes_env("fd00::1");
        let port = env.iter().find(|e| e.name == "KUBERNETES_PORT").unwrap();
        assert_eq!(port.value.as_deref(), Some("tcp://[fd00::1]:443"));
    }
}
