//! Pure: a container's environment and its `$(VAR)` expansion, as the kubelet computes them
//! (`pkg/kubelet/kubelet_pods.go` makeEnvironmentVariables, `third_party/forked/golang/expansion`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// Kubelet `$(VAR)` expansion: `$(NAME)` becomes the value of NAME when `lookup` knows it and
/// stays verbatim otherwise; `$$` becomes `$`; any other `$` (and an unterminated `$(`) is kept.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push(b'$');
                    i += 2;
                }
                b'(' => match bytes[i + 2..].iter().position(|&b| b == b')') {
                    Some(len) => {
                        let name = &input[i + 2..i + 2 + len];
                        match lookup(name) {
                            Some(v) => out.extend_from_slice(v.as_bytes()),
                            None => out.extend_from_slice(format!("$({name})").as_bytes()),
                        }
                        i += len + 3;
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        i += 2;
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    i += 2;
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Splits happen only at ASCII bytes, so the bytes are the input's UTF-8 rearranged whole.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// What env resolution may read besides the pod: keys of ConfigMaps and Secrets (already
/// fetched) and where the API server is reachable.
#[derive(Debug, Default, Clone)]
pub struct EnvSources {
    /// (configmap name, key) -> value
    pub config_maps: BTreeMap<(String, String), String>,
    /// (secret name, key) -> value (decoded)
    pub secrets: BTreeMap<(String, String), String>,
    /// configmap/secret names that exist (for envFrom and optional refs)
    pub config_map_data: BTreeMap<String, BTreeMap<String, String>>,
    pub secret_data: BTreeMap<String, BTreeMap<String, String>>,
    pub api_host: String,
    pub api_port: u16,
    pub host_ip: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("env {var}: configmap {name} key {key} not found")]
    ConfigMapKey { var: String, name: String, key: String },
    #[error("env {var}: secret {name} key {key} not found")]
    SecretKey { var: String, name: String, key: String },
    #[error("env {var}: unsupported fieldPath {path}")]
    FieldPath { var: String, path: String },
    #[error("envFrom: {kind} {name} not found")]
    EnvFrom { kind: &'static str, name: String },
}

/// A pod field by downward-API path (`metadata.name`, `metadata.labels['x']`, `status.podIP`...).
pub fn field_ref(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some(key) = bracket_key(path, "metadata.labels") {
        return Some(md.labels.as_ref()?.get(key)?.clone());
    }
    if let Some(key) = bracket_key(path, "metadata.annotations") {
        return Some(md.annotations.as_ref()?.get(key)?.clone());
    }
    match path {
        "metadata.name" => md.name.clone(),
        "metadata.namespace" => md.namespace.clone(),
        "metadata.uid" => md.uid.clone(),
        "metadata.labels" => Some(format_map(md.labels.as_ref())),
        "metadata.annotations" => Some(format_map(md.annotations.as_ref())),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        // Every pod of the runner's node is in the host's network namespace.
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => Some(host_ip.to_owned()),
        _ => None,
    }
}

fn bracket_key<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
    rest.strip_suffix("']")
}

/// The downward API's `key="value"` lines, sorted by key.
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// Best-effort resourceFieldRef: the container's limit (or request) divided by the divisor,
/// rounded up, as the kubelet does. Missing limits resolve to "0" (the kubelet would use the
/// node's allocatable).
pub fn resource_field(container: &Container, resource: &str, divisor: Option<&str>) -> String {
    let res = container.resources.as_ref();
    let pick = |which: &str| -> Option<String> {
        let (kind, name) = resource.split_once('.')?;
        let map = match kind {
            "limits" => res?.limits.as_ref(),
            "requests" => res?.requests.as_ref(),
            _ => None,
        }?;
        let _ = which;
        map.get(name).map(|q| q.0.clone())
    };
    let raw = pick(resource).unwrap_or_else(|| "0".into());
    let (Some(v), Some(d)) = (parse_quantity(&raw), parse_quantity(divisor.unwrap_or("1"))) else {
        return raw;
    };
    if d <= 0.0 {
        return raw;
    }
    format!("{}", (v / d).ceil() as i64)
}

/// Parses a Kubernetes quantity (`500m`, `2Gi`, `1k`, `3`) into a float.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    q.parse().ok()
}

/// The container's environment in kubelet order: envFrom, then env (each value expanded with
/// what is defined so far), then the API server variables the kubelet injects.
/// Returns ordered (name, value) pairs; a later definition of a name replaces the earlier one.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    src: &EnvSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(slot) = env.iter_mut().find(|(n, _)| *n == k) {
            slot.1 = v;
        } else {
            env.push((k, v));
        }
    };
    // The kubelet puts the master service variables first (here: the host API server; the
    // Service IP is not routable on this machine).
    let port = src.api_port.to_string();
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", src.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT", port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.clone()),
        ("KUBERNETES_PORT", format!("tcp://{}:{port}", src.api_host)),
        (
            "KUBERNETES_PORT_443_TCP",
            format!("tcp://{}:{port}", src.api_host),
        ),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp".into()),
        ("KUBERNETES_PORT_443_TCP_PORT", port.clone()),
        ("KUBERNETES_PORT_443_TCP_ADDR", src.api_host.clone()),
    ] {
        set(&mut env, k.into(), v);
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match src.config_map_data.get(&r.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v.clone())),
                None if r.optional == Some(true) => {}
                None => {
                    return Err(EnvError::EnvFrom {
                        kind: "configmap",
                        name: r.name.clone(),
                    });
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            match src.secret_data.get(&r.name) {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v.clone())),
                None if r.optional == Some(true) => {}
                None => {
                    return Err(EnvError::EnvFrom {
                        kind: "secret",
                        name: r.name.clone(),
                    });
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(v) = resolve_one(pod, container, src, var, &env)? {
            set(&mut env, var.name.clone(), v);
        }
    }
    Ok(env)
}

fn resolve_one(
    pod: &Pod,
    container: &Container,
    src: &EnvSources,
    var: &EnvVar,
    defined: &[(String, String)],
) -> Result<Option<String>, EnvError> {
    let lookup = |n: &str| defined.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or(""), lookup)));
    };
    if let Some(f) = &from.field_ref {
        return field_ref(pod, &f.field_path, &src.host_ip)
            .map(Some)
            .ok_or_else(|| EnvError::FieldPath {
                var: var.name.clone(),
                path: f.field_path.clone(),
            });
    }
    if let Some(r) = &from.resource_field_ref {
        let c = r
            .container_name
            .as_deref()
            .and_then(|n| pod.spec.as_ref()?.containers.iter().find(|c| c.name == n))
            .unwrap_or(container);
        return Ok(Some(resource_field(
            c,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
        )));
    }
    if let Some(r) = &from.config_map_key_ref {
        return match src.config_maps.get(&(r.name.clone(), r.key.clone())) {
            Some(v) => Ok(Some(v.clone())),
            None if r.optional == Some(true) => Ok(None),
            None => Err(EnvError::ConfigMapKey {
                var: var.name.clone(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        return match src.secrets.get(&(r.name.clone(), r.key.clone())) {
            Some(v) => Ok(Some(v.clone())),
            None if r.optional == Some(true) => Ok(None),
            None => Err(EnvError::SecretKey {
                var: var.name.clone(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    Ok(None)
}

/// The ConfigMaps and Secrets a container's env reads: (configmaps, secrets).
pub fn env_refs(container: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(f) = &var.value_from {
            if let Some(r) = &f.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &f.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// The command line of a container: (entrypoint override, args), each `$(VAR)`-expanded with
/// the container's final environment.
pub fn command_line(container: &Container, env: &[(String, String)]) -> (Option<Vec<String>>, Vec<String>) {
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let command = container
        .command
        .as_ref()
        .map(|c| c.iter().map(|s| expand(s, lookup)).collect());
    let args = container
        .args
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    (command, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(n: &str) -> Option<String> {
        match n {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let cases = [
            ("$(A)", "alpha"),
            ("x$(A)y", "xalphay"),
            ("$(EMPTY)-", "-"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("$$$$", "$$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$x", "$x"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("$()", "$()"),
            ("\"$(cat /data/service-cidr)\"", "\"$(cat /data/service-cidr)\""),
            (
                "--tls-san=\"vnest.$POD_NAMESPACE\"",
                "--tls-san=\"vnest.$POD_NAMESPACE\"",
            ),
            ("é$(A)ü", "éalphaü"),
            ("$é", "$é"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup), want, "input {input:?}");
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "x", "b": "y"}, "annotations": {"note": "hi"}},
            "spec": {"nodeName": "n0", "serviceAccountName": "sa",
                     "containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                        "env": [
                           {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                           {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                           {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                           {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                           {"name": "COMBINED", "value": "$(NAME).$(NS).$(LATER)"},
                           {"name": "LATER", "value": "l"},
                           {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                           {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                           {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                           {"name": "SEC", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                           {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "missing", "optional": true}}}
                        ]}]}
        }))
        .unwrap()
    }

    fn sources() -> EnvSources {
        EnvSources {
            config_maps: [(("cm".into(), "k".into()), "cmv".into())].into(),
            secrets: [(("s".into(), "k".into()), "secret".into())].into(),
            api_host: "127.0.0.1".into(),
            api_port: 6443,
            host_ip: "127.0.0.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_values_field_refs_and_references() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let env: BTreeMap<_, _> = resolve(&p, c, &sources()).unwrap().into_iter().collect();
        assert_eq!(env["NAME"], "p");
        assert_eq!(env["NS"], "ns");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["NOTE"], "hi");
        assert_eq!(env["NODE"], "n0");
        assert_eq!(env["IP"], "127.0.0.1");
        // Only variables defined before are expanded, like the kubelet.
        assert_eq!(env["COMBINED"], "p.ns.$(LATER)");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["CPU"], "250");
        assert_eq!(env["CM"], "cmv");
        assert_eq!(env["SEC"], "secret");
        assert!(!env.contains_key("OPT"));
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "6443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "6443");
    }

    #[test]
    fn a_missing_required_key_is_an_error() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut src = sources();
        src.secrets.clear();
        assert_eq!(
            resolve(&p, c, &src).unwrap_err(),
            EnvError::SecretKey {
                var: "SEC".into(),
                name: "s".into(),
                key: "k".into()
            }
        );
    }

    #[test]
    fn command_and_args_expand_with_the_final_env() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i",
            "command": ["/bin/sh", "-c"],
            "args": ["echo $(GREETING) $$(GREETING) $(cat /x) $HOME"]
        }))
        .unwrap();
        let env = vec![("GREETING".to_owned(), "hello".to_owned())];
        let (cmd, args) = command_line(&c, &env);
        assert_eq!(cmd.unwrap(), ["/bin/sh", "-c"]);
        assert_eq!(args, ["echo hello $(GREETING) $(cat /x) $HOME"]);
    }

    #[test]
    fn labels_format_like_the_downward_api() {
        let p = pod();
        assert_eq!(
            field_ref(&p, "metadata.labels", "h").unwrap(),
            "app=\"x\"\nb=\"y\""
        );
        assert_eq!(field_ref(&p, "metadata.labels['nope']", "h"), None);
    }

    /// The vcluster StatefulSet's k3s container: its shell substitution must reach the shell.
    #[test]
    fn the_vcluster_statefulset_args_stay_verbatim() {
        let sts: k8s_openapi::api::apps::v1::StatefulSet =
            serde_yaml::from_str(include_str!("../../../manifests/base/statefulset.yaml")).unwrap();
        let template = sts.spec.unwrap().template;
        let pod = Pod {
            metadata: serde_json::from_value(serde_json::json!({"name": "vnest-0", "namespace": "team-a"}))
                .unwrap(),
            spec: template.spec,
            status: None,
        };
        let spec = pod.spec.as_ref().unwrap();
        let k3s = spec.containers.iter().find(|c| c.name == "k3s").unwrap();
        let env = resolve(&pod, k3s, &sources()).unwrap();
        assert!(env.contains(&("POD_NAMESPACE".to_owned(), "team-a".to_owned())));
        let (cmd, args) = command_line(k3s, &env);
        let cmd = cmd.unwrap();
        assert_eq!(cmd[..2], ["/bin/sh", "-c"]);
        // The shell line reaches the shell verbatim: `$(cat ...)` is not a kubelet reference.
        assert!(
            cmd[2].contains("--service-cidr=\"$(cat /data/service-cidr)\""),
            "{cmd:?}"
        );
        assert_eq!(args, k3s.args.clone().unwrap());
        let syncer = spec.containers.iter().find(|c| c.name == "syncer").unwrap();
        let env: BTreeMap<_, _> = resolve(&pod, syncer, &sources()).unwrap().into_iter().collect();
        assert_eq!(env["VNEST_HOST_NAMESPACE"], "team-a");
    }
}
