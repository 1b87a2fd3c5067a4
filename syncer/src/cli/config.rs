//! The ONE typed configuration of a vcluster as the CLI creates it: what a user may set, with
//! doc comments that become the descriptions of `vnest.schema.json` (`vnest schema`).
//!
//! A config comes from `-f vnest.yaml` (YAML or JSON) and `--set key=value` (dotted paths),
//! merged as JSON, checked key by key against the schema (an unknown key names the allowed
//! ones, a bad value the allowed values), then deserialized into [`VclusterConfig`] and
//! validated. Unset knobs (`None`) keep what the manifests say, so the default config renders
//! exactly what `kubectl kustomize` renders for the same overlay.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::naming::parse_dns_label;

/// A vcluster: where it lives, which optional parts it has, what its syncer copies, where its
/// kubeconfig is exported, and the resources and images of its two containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
#[schemars(title = "vnest vcluster configuration")]
pub struct VclusterConfig {
    /// Name of the vcluster (a DNS label of at most 52 characters): names, labels, selectors,
    /// the owner of every synced object and the API server's certificate names follow it.
    /// `vnest create NAME` sets it.
    pub name: String,
    /// Host namespace the vcluster lives in (a DNS label). `-n NAMESPACE` sets it.
    pub namespace: String,
    /// Optional parts (kustomize components) of the vcluster.
    pub overlay: OverlayConfig,
    /// What the syncer copies between the virtual cluster and the host namespace
    /// (unset: the syncer's default, or what the overlay sets).
    pub sync: SyncConfig,
    /// The admin kubeconfig the syncer keeps in a host Secret (`vnest connect` reads it).
    pub export: ExportConfig,
    /// Resources of the two containers (unset: the manifests' values).
    pub resources: ResourcesConfig,
    /// Container images (unset: the manifests' images).
    pub images: ImagesConfig,
    /// The data volume of the virtual cluster's datastore (SQLite).
    pub storage: StorageConfig,
    /// Which host nodes the vcluster pod may run on.
    pub scheduling: SchedulingConfig,
    /// The ports the vcluster pod's containers listen on (unset: the manifests' ports). The
    /// Services keep their ports: their targetPorts name the containers' ports.
    pub ports: PortsConfig,
    /// The k3s server container.
    pub k3s: K3sConfig,
    /// The syncer container.
    pub syncer: SyncerConfig,
}

/// Placement of the vcluster pod (the synced tenant pods are not affected).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SchedulingConfig {
    /// Node labels the vcluster pod's node must carry (the pod's `nodeSelector`), e.g.
    /// `{node-role.example.com/vclusters: "true"}`. With `--set`, everything after
    /// `scheduling.nodeSelector.` is the label key.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the vcluster pod tolerates (appended to the pod's `tolerations`), as in a pod
    /// spec. Set them with `-f`.
    pub tolerations: Vec<Toleration>,
}

/// A Kubernetes Toleration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key it matches; empty with operator `Exists`: every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default: key and value match) or `Exists` (the key matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    /// Taint value it matches (operator `Equal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Taint effect it matches; empty: every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// With effect `NoExecute`: how long the pod stays once the taint appears (unset: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// How a toleration matches a taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    /// Key and value equal.
    Equal,
    /// The key exists (any value).
    Exists,
}

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    /// New pods are not scheduled on the node.
    NoSchedule,
    /// The scheduler avoids the node.
    PreferNoSchedule,
    /// Running pods are evicted too.
    NoExecute,
}

/// Listening ports of the vcluster pod's containers (1-65535). Each sets the container's
/// flag or variable and its `containerPort`; the Services follow by port name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PortsConfig {
    /// The virtual API server (k3s `--https-listen-port`, containerPort `https`).
    /// Manifests: 6443.
    #[schemars(range(min = 1, max = 65535))]
    pub api: Option<u16>,
    /// The syncer's health and metrics endpoint (the port of `VNEST_ADMIN_ADDR`,
    /// containerPort `admin`). Manifests: 8080.
    #[schemars(range(min = 1, max = 65535))]
    pub admin: Option<u16>,
    /// The syncer's kubelet endpoint (`VNEST_KUBELET_LISTEN_ADDR` = `0.0.0.0:<port>`,
    /// containerPort `kubelet`). Manifests: 10250. The virtual nodes keep advertising the
    /// vcluster Service's kubelet port (10250); when they advertise another address
    /// (`VNEST_KUBELET_ADDRESS` in `syncer.env`), set `VNEST_KUBELET_PORT` there too.
    #[schemars(range(min = 1, max = 65535))]
    pub kubelet: Option<u16>,
    /// The syncer's DNS server, UDP and TCP (the port of `VNEST_DNS_ADDR`, containerPorts `dns`
    /// and `dns-tcp`). Manifests: 1053.
    #[schemars(range(min = 1, max = 65535))]
    pub dns: Option<u16>,
}

/// The k3s server container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct K3sConfig {
    /// Arguments appended to `k3s server`'s (e.g. `--bind-address=127.0.0.1`,
    /// `--kube-apiserver-arg=audit-log-maxage=7`). Set them with `-f`.
    pub extra_args: Vec<String>,
}

/// The syncer container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SyncerConfig {
    /// Extra environment variables of the syncer (name -> value), set last: they override
    /// every other key's variable (e.g. `VNEST_LOG: debug`; the flags and their variables are
    /// in docs/reference.md). With `--set`, everything after `syncer.env.` is the name.
    pub env: BTreeMap<String, String>,
}

/// Optional parts of the vcluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct OverlayConfig {
    /// A namespace fit for an untrusted tenant: ResourceQuota, LimitRange and a NetworkPolicy
    /// confining the tenant's pods in the host namespace, NetworkPolicy sync on, and Pod
    /// Security `baseline` enforced by the virtual API server (`manifests/components/isolated`).
    /// Needs rights to create ResourceQuotas, LimitRanges and NetworkPolicies.
    pub isolated: bool,
    /// Real host node facts in the virtual Nodes (`manifests/components/real-nodes`): a
    /// read-only ClusterRole on nodes, so it needs rights to create ClusterRoles and
    /// ClusterRoleBindings.
    pub real_nodes: bool,
    /// The host's StorageClasses copied into the virtual cluster
    /// (`manifests/components/host-storageclasses`): a read-only ClusterRole on
    /// StorageClasses, so it needs rights to create ClusterRoles and ClusterRoleBindings.
    pub host_storage_classes: bool,
    /// Virtual PersistentVolumes that copy the host's (source, node affinity, reclaim policy)
    /// instead of stubs (`manifests/components/real-volumes`): a read-only ClusterRole on
    /// PersistentVolumes, so it needs rights to create ClusterRoles and ClusterRoleBindings.
    pub real_volumes: bool,
    /// k3s keeps the virtual cluster's state in an external datastore (PostgreSQL, MySQL, etcd)
    /// instead of SQLite (`manifests/components/external-datastore`): the endpoint and k3s token
    /// come from the Secret `<name>-datastore` (keys `endpoint`, `token`), which must exist.
    pub external_datastore: bool,
    /// High availability (`manifests/overlays/ha`): 3 replicas spread over nodes, a
    /// PodDisruptionBudget, leader election between the syncers (a Lease in the namespace),
    /// and the external datastore (implies `externalDatastore`).
    pub ha: bool,
}

/// Pod sandbox policy for synced pods (`--host-access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostAccess {
    /// Refuse pods that would escape the namespace sandbox (hostNetwork, hostPath, ...).
    Deny,
    /// Pass them on to the host.
    Allow,
}

/// Where synced pods get their virtual ServiceAccount tokens (`--pod-token-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStorage {
    /// An annotation on the host pod.
    Annotation,
    /// A host Secret per pod.
    Secret,
}

/// Sync options: each sets one `VNEST_*` variable of the syncer container when given.
/// Pods, ConfigMaps, Secrets, Services, Endpoints and events are always synced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SyncConfig {
    /// Copy virtual NetworkPolicies to the host, confined to this vcluster's pods
    /// (`VNEST_SYNC_NETWORKPOLICIES`). Default: on with `overlay.isolated`, else off.
    pub networkpolicies: Option<bool>,
    /// Copy virtual PodDisruptionBudgets to the host (`VNEST_SYNC_PODDISRUPTIONBUDGETS`).
    /// Default: on.
    pub poddisruptionbudgets: Option<bool>,
    /// Copy virtual PersistentVolumeClaims to the host and bind them to virtual volumes
    /// (`VNEST_SYNC_PERSISTENTVOLUMECLAIMS`). Default: on.
    pub persistentvolumeclaims: Option<bool>,
    /// Copy every virtual ConfigMap, not only those pods use (`VNEST_SYNC_ALL_CONFIGMAPS`).
    /// Default: off.
    pub all_configmaps: Option<bool>,
    /// Copy every virtual Secret, not only those pods use (`VNEST_SYNC_ALL_SECRETS`).
    /// Default: off.
    pub all_secrets: Option<bool>,
    /// Pods that would escape the namespace sandbox: `deny` (default) or `allow`
    /// (`VNEST_HOST_ACCESS`).
    pub host_access: Option<HostAccess>,
    /// Where synced pods' ServiceAccount tokens are kept: `annotation` (default) or `secret`
    /// (`VNEST_POD_TOKEN_STORAGE`).
    pub pod_token_storage: Option<TokenStorage>,
}

/// The kubeconfig export Secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExportConfig {
    /// Keep the Secret at all (`VNEST_EXPORT_KUBECONFIG`). Default: on. `vnest connect` needs it.
    pub enabled: Option<bool>,
    /// Name of the Secret in the host namespace (`VNEST_EXPORT_SECRET_NAME`). Default:
    /// `vc-<name>`.
    pub secret_name: Option<String>,
    /// Server URL written into the kubeconfig (`VNEST_EXPORT_SERVER`). Default:
    /// `https://<name>.<namespace>:443`, the vcluster Service inside the host cluster.
    pub server: Option<String>,
    /// Context, cluster and user name in the kubeconfig (`VNEST_EXPORT_CONTEXT`). Default:
    /// `<name>`.
    pub context: Option<String>,
}

/// Requests and limits of one container (Kubernetes quantities, e.g. `200m`, `256Mi`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ContainerResources {
    /// Requests.
    pub requests: Quantities,
    /// Limits.
    pub limits: Quantities,
}

/// CPU and memory quantities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Quantities {
    /// CPU, e.g. `200m` or `1`.
    pub cpu: Option<String>,
    /// Memory, e.g. `256Mi` or `2Gi`.
    pub memory: Option<String>,
}

/// Resources of the two containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ResourcesConfig {
    /// The k3s container (virtual API server). Manifests: requests 200m/256Mi, limit 2Gi memory.
    pub k3s: ContainerResources,
    /// The syncer container. Manifests: requests 20m/32Mi, limit 256Mi memory.
    pub syncer: ContainerResources,
}

/// Container images.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ImagesConfig {
    /// The k3s server image (manifests: `rancher/k3s:v1.35.4-k3s1`).
    pub k3s: Option<String>,
    /// The vnest image of the syncer and the init container (manifests: `vnest/vnest:v0.1.0`).
    pub vnest: Option<String>,
}

/// The data volume claim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StorageConfig {
    /// Size of the claim (manifests: `5Gi`).
    pub size: Option<String>,
    /// StorageClass of the claim (manifests: the cluster's default class).
    pub storage_class_name: Option<String>,
}

/// Longest vcluster name: `<name>-headless`, `<name>-node-reader`, `data-<name>-0` stay
/// short, and the pod name `<name>-0` stays a label value.
pub const MAX_NAME_LEN: usize = 52;

/// Why a configuration was refused. Every message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown key {key:?}: allowed keys {under}: {allowed}")]
    UnknownKey {
        key: String,
        under: String,
        allowed: String,
    },
    #[error("bad value for {key:?}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("--set {arg:?}: expected key=value (e.g. --set sync.networkpolicies=true)")]
    BadSet { arg: String },
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{key} is required ({hint})")]
    Missing { key: &'static str, hint: &'static str },
}

/// The JSON schema of [`VclusterConfig`] (`vnest schema`, `vnest.schema.json`).
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(VclusterConfig)).expect("a schema is JSON")
}

/// The schema as the committed file holds it (pretty, trailing newline).
pub fn schema_text() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).expect("a schema is JSON");
    s.push('\n');
    s
}

/// The configuration keys as a Markdown table (key, type, description), generated from the
/// schema: `vnest schema --markdown`, kept in docs/reference.md by a test.
pub fn keys_table() -> String {
    fn walk(root: &Value, node: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
        let doc = |node: &Value| {
            node.get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        match shape(root, node) {
            Shape::Object(props) => {
                for (k, child) in props {
                    walk(root, &child, &join(path, &k), out);
                }
            }
            Shape::List(item) => {
                out.push((
                    path.to_owned(),
                    format!("list of {}", type_name(root, &item)),
                    doc(node),
                ));
                if let Shape::Object(props) = shape(root, &item) {
                    for (k, child) in props {
                        walk(root, &child, &format!("{path}[].{k}"), out);
                    }
                }
            }
            leaf => out.push((path.to_owned(), type_name_of(root, &leaf), doc(node))),
        }
    }
    let root = schema();
    let mut rows = Vec::new();
    walk(&root, &root, "", &mut rows);
    let mut s = String::from("| key | type | what |\n|---|---|---|\n");
    for (k, t, d) in rows {
        s.push_str(&format!("| `{k}` | {t} | {d} |\n"));
    }
    s
}

/// What one node of the schema accepts.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Object(Vec<(String, Value)>),
    /// A map of any keys to values of the node given (`additionalProperties`).
    Map(Value),
    /// A list of items of the node given.
    List(Value),
    Bool,
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    String,
    Enum(Vec<String>),
}

/// The type column of the keys table.
fn type_name_of(root: &Value, shape: &Shape) -> String {
    match shape {
        Shape::Object(_) => "object".to_owned(),
        Shape::Map(v) => format!("map of {}", type_name(root, v)),
        Shape::List(v) => format!("list of {}", type_name(root, v)),
        Shape::Bool => "boolean".to_owned(),
        Shape::Integer { .. } => "integer".to_owned(),
        Shape::String => "string".to_owned(),
        Shape::Enum(values) => values.join(" \\| "),
    }
}

fn type_name(root: &Value, node: &Value) -> String {
    type_name_of(root, &shape(root, node))
}

/// Resolves `$ref`, `anyOf [X, null]` and `type: [X, "null"]` to the shape of one node.
fn shape(root: &Value, node: &Value) -> Shape {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        if let Some(def) = root.get("$defs").and_then(|d| d.get(name)) {
            return shape(root, def);
        }
    }
    for alt in ["anyOf", "oneOf"] {
        if let Some(alts) = node.get(alt).and_then(Value::as_array) {
            // Option<T>: the non-null alternative; an enum of documented unit variants: the
            // constants.
            let consts: Vec<String> = alts
                .iter()
                .filter_map(|a| a.get("const").and_then(Value::as_str).map(str::to_owned))
                .collect();
            if !consts.is_empty() {
                return Shape::Enum(consts);
            }
            if let Some(non_null) = alts
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            {
                return shape(root, non_null);
            }
        }
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return Shape::Enum(
            values
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        );
    }
    if let Some(c) = node.get("const").and_then(Value::as_str) {
        return Shape::Enum(vec![c.to_owned()]);
    }
    let ty = match node.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ => "object",
    };
    let bound = |k: &str| node.get(k).and_then(Value::as_i64);
    match ty {
        "boolean" => Shape::Bool,
        "integer" | "number" => Shape::Integer {
            min: bound("minimum"),
            max: bound("maximum"),
        },
        "string" => Shape::String,
        "array" => Shape::List(node.get("items").cloned().unwrap_or(Value::Bool(true))),
        _ if node.get("properties").is_none()
            && node.get("additionalProperties").is_some_and(Value::is_object) =>
        {
            Shape::Map(node["additionalProperties"].clone())
        }
        _ => Shape::Object(
            node.get("properties")
                .and_then(Value::as_object)
                .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        ),
    }
}

fn under(path: &str) -> String {
    if path.is_empty() {
        "at the top level".to_owned()
    } else {
        format!("under {path:?}")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The schema node at dotted `key` and the key's path in the document (a map's key is the rest
/// of the dotted key, dots included), or the error naming the allowed keys where it goes wrong.
fn node_at(root: &Value, key: &str) -> Result<(Shape, Vec<String>), ConfigError> {
    let mut node = root.clone();
    let mut path = String::new();
    let mut parts: Vec<String> = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        let (part, tail) = rest.split_once('.').unwrap_or((rest, ""));
        match shape(root, &node) {
            Shape::Object(props) => {
                let Some((_, next)) = props.iter().find(|(k, _)| k == part) else {
                    return Err(ConfigError::UnknownKey {
                        key: key.to_owned(),
                        under: under(&path),
                        allowed: props
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                node = next.clone();
                path = join(&path, part);
                parts.push(part.to_owned());
                rest = tail;
            }
            Shape::Map(value) => {
                node = value;
                parts.push(rest.to_owned());
                path = join(&path, rest);
                rest = "";
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_owned(),
                    under: under(&path),
                    allowed: format!("none ({path:?} is a value, not a group)"),
                });
            }
        }
    }
    Ok((shape(root, &node), parts))
}

/// Whether `n` is within the schema's bounds, or why not.
fn in_bounds(n: i64, min: Option<i64>, max: Option<i64>) -> Result<(), String> {
    match (min, max) {
        (Some(lo), _) if n < lo => Err(format!("{n} is below the minimum {lo}")),
        (_, Some(hi)) if n > hi => Err(format!("{n} is above the maximum {hi}")),
        _ => Ok(()),
    }
}

/// Parses the text of `--set key=text` as the type the schema gives `key`: the value and the
/// key's path in the document.
fn typed_value(root: &Value, key: &str, text: &str) -> Result<(Value, Vec<String>), ConfigError> {
    let bad = |reason: String| ConfigError::BadValue {
        key: key.to_owned(),
        reason,
    };
    let (shape, parts) = node_at(root, key)?;
    let value = match shape {
        Shape::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad(format!(
                "{text:?} is not a boolean: allowed values: true, false"
            ))),
        },
        Shape::Integer { min, max } => text
            .parse::<i64>()
            .map_err(|_| bad(format!("{text:?} is not an integer")))
            .and_then(|n| in_bounds(n, min, max).map(|()| Value::from(n)).map_err(bad)),
        Shape::String => Ok(Value::String(text.to_owned())),
        Shape::Enum(allowed) if allowed.iter().any(|a| a == text) => Ok(Value::String(text.to_owned())),
        Shape::Enum(allowed) => Err(bad(format!(
            "{text:?} is not allowed: allowed values: {}",
            allowed.join(", ")
        ))),
        Shape::List(_) => Err(bad("it is a list: set it in a file (-f vnest.yaml)".to_owned())),
        Shape::Map(_) => Err(bad(format!("it is a map: set one entry, e.g. {key}.<name>=..."))),
        Shape::Object(props) => Err(bad(format!(
            "it is a group of keys ({}): set one of them, e.g. {key}.{}=...",
            props
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            props.first().map_or("", |(k, _)| k.as_str())
        ))),
    }?;
    Ok((value, parts))
}

/// Checks every key and scalar of `value` against the schema, naming the first bad one.
fn check(root: &Value, node: &Value, value: &Value, path: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadValue {
        key: path.to_owned(),
        reason,
    };
    if value.is_null() && !path.is_empty() {
        return Ok(()); // unset
    }
    match (shape(root, node), value) {
        (Shape::Object(props), Value::Object(map)) => {
            for (k, v) in map {
                let key = join(path, k);
                let Some((_, child)) = props.iter().find(|(p, _)| p == k) else {
                    return Err(ConfigError::UnknownKey {
                        key,
                        under: under(path),
                        allowed: props
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                check(root, child, v, &key)?;
            }
            Ok(())
        }
        (Shape::Object(_), other) => Err(bad(format!("expected a group of keys, got {other}"))),
        (Shape::Map(item), Value::Object(map)) => {
            for (k, v) in map {
                if v.is_null() {
                    return Err(ConfigError::BadValue {
                        key: join(path, k),
                        reason: "a map entry needs a value".to_owned(),
                    });
                }
                check(root, &item, v, &join(path, k))?;
            }
            Ok(())
        }
        (Shape::Map(_), other) => Err(bad(format!("expected a map, got {other}"))),
        (Shape::List(item), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                if v.is_null() {
                    return Err(ConfigError::BadValue {
                        key: format!("{path}[{i}]"),
                        reason: "a list item cannot be empty".to_owned(),
                    });
                }
                check(root, &item, v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Shape::List(_), other) => Err(bad(format!("expected a list, got {other}"))),
        (Shape::Bool, Value::Bool(_)) | (Shape::String, Value::String(_)) => Ok(()),
        (Shape::Integer { min, max }, Value::Number(n)) if n.is_i64() || n.is_u64() => {
            in_bounds(n.as_i64().unwrap_or(i64::MAX), min, max).map_err(bad)
        }
        (Shape::Enum(allowed), Value::String(s)) if allowed.contains(s) => Ok(()),
        (Shape::Enum(allowed), other) => Err(bad(format!(
            "{other} is not allowed: allowed values: {}",
            allowed.join(", ")
        ))),
        (Shape::Bool, other) => Err(bad(format!(
            "{other} is not a boolean: allowed values: true, false"
        ))),
        (Shape::Integer { .. }, other) => Err(bad(format!("{other} is not an integer"))),
        (Shape::String, other) => Err(bad(format!("{other} is not a string"))),
    }
}

/// Sets the value at `parts` (a path of keys) in `doc`, creating the groups on the way.
fn set_path(doc: &mut Value, parts: &[String], value: Value) {
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let map = node.as_object_mut().expect("made an object just above");
        if i + 1 == parts.len() {
            map.insert(part.clone(), value);
            return;
        }
        node = map
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

fn set_key(doc: &mut Value, dotted: &str, value: Value) {
    let parts: Vec<String> = dotted.split('.').map(str::to_owned).collect();
    set_path(doc, &parts, value);
}

/// Inputs of one configuration, lowest precedence first: the file, `--set`s, then the
/// command line's name/namespace/overlay.
#[derive(Debug, Clone, Default)]
pub struct ConfigInputs {
    /// Text of `-f FILE` (YAML or JSON) and its path for messages.
    pub file: Option<(String, String)>,
    /// `--set key=value` arguments, in order.
    pub sets: Vec<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// `--overlay` names (`default`, `isolated`, `real-nodes`, `host-storageclasses`,
    /// `real-volumes`, `external-datastore`, `ha`).
    pub overlays: Vec<String>,
}

/// The overlays `--overlay` accepts.
pub const OVERLAYS: &[&str] = &[
    "default",
    "isolated",
    "real-nodes",
    "host-storageclasses",
    "real-volumes",
    "external-datastore",
    "ha",
];

impl ConfigInputs {
    /// Merges, checks and validates: the config to render, or the first problem.
    pub fn resolve(&self) -> Result<VclusterConfig, ConfigError> {
        let root = schema();
        let mut doc = match &self.file {
            Some((path, text)) => {
                let v: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if v.is_null() { Value::Object(Map::new()) } else { v }
            }
            None => Value::Object(Map::new()),
        };
        check(&root, &root, &doc, "")?;
        for arg in &self.sets {
            let (key, text) = arg
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ConfigError::BadSet { arg: arg.clone() })?;
            let (value, parts) = typed_value(&root, key, text)?;
            set_path(&mut doc, &parts, value);
        }
        if let Some(name) = &self.name {
            set_key(&mut doc, "name", Value::String(name.clone()));
        }
        if let Some(ns) = &self.namespace {
            set_key(&mut doc, "namespace", Value::String(ns.clone()));
        }
        for overlay in &self.overlays {
            match overlay.as_str() {
                "default" => {}
                "isolated" => set_key(&mut doc, "overlay.isolated", Value::Bool(true)),
                "real-nodes" => set_key(&mut doc, "overlay.realNodes", Value::Bool(true)),
                "host-storageclasses" => set_key(&mut doc, "overlay.hostStorageClasses", Value::Bool(true)),
                "real-volumes" => set_key(&mut doc, "overlay.realVolumes", Value::Bool(true)),
                "external-datastore" => {
                    set_key(&mut doc, "overlay.externalDatastore", Value::Bool(true));
                }
                "ha" => set_key(&mut doc, "overlay.ha", Value::Bool(true)),
                other => {
                    return Err(ConfigError::BadValue {
                        key: "--overlay".to_owned(),
                        reason: format!(
                            "{other:?} is not an overlay: allowed values: {}",
                            OVERLAYS.join(", ")
                        ),
                    });
                }
            }
        }
        check(&root, &root, &doc, "")?;
        let config: VclusterConfig = serde_json::from_value(doc).map_err(|e| ConfigError::BadValue {
            key: "(config)".to_owned(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }
}

impl VclusterConfig {
    /// Rules the schema cannot state: DNS labels, the name's length, URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::Missing {
                key: "name",
                hint: "vnest create NAME, or `name:` in the file",
            });
        }
        if self.namespace.is_empty() {
            return Err(ConfigError::Missing {
                key: "namespace",
                hint: "-n NAMESPACE, or `namespace:` in the file",
            });
        }
        let label = |key: &str, v: &str| {
            parse_dns_label(v)
                .map(|_| ())
                .map_err(|reason| ConfigError::BadValue {
                    key: key.to_owned(),
                    reason,
                })
        };
        label("name", &self.name)?;
        if self.name.len() > MAX_NAME_LEN {
            return Err(ConfigError::BadValue {
                key: "name".to_owned(),
                reason: format!(
                    "{:?} has {} characters, at most {MAX_NAME_LEN} are allowed",
                    self.name,
                    self.name.len()
                ),
            });
        }
        label("namespace", &self.namespace)?;
        if let Some(s) = &self.export.secret_name {
            label("export.secretName", s)?;
        }
        if let Some(server) = &self.export.server
            && !server.starts_with("https://")
        {
            return Err(ConfigError::BadValue {
                key: "export.server".to_owned(),
                reason: format!("{server:?} is not an https:// URL"),
            });
        }
        for k in self.scheduling.node_selector.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(ConfigError::BadValue {
                    key: format!("scheduling.nodeSelector.{k}"),
                    reason: "a label key is not empty and has no spaces".to_owned(),
                });
            }
        }
        for (i, a) in self.k3s.extra_args.iter().enumerate() {
            if a.is_empty() {
                return Err(ConfigError::BadValue {
                    key: format!("k3s.extraArgs[{i}]"),
                    reason: "an argument is not empty".to_owned(),
                });
            }
        }
        for k in self.syncer.env.keys() {
            let valid = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ConfigError::BadValue {
                    key: format!("syncer.env.{k}"),
                    reason: format!("{k:?} is not an environment variable name (letters, digits, _)"),
                });
            }
        }
        for (key, v) in [
            ("images.k3s", &self.images.k3s),
            ("images.vnest", &self.images.vnest),
        ] {
            if v.as_deref()
                .is_some_and(|i| i.is_empty() || i.contains(char::is_whitespace))
            {
                return Err(ConfigError::BadValue {
                    key: key.to_owned(),
                    reason: "an image reference has no spaces and is not empty".to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(sets: &[&str]) -> ConfigInputs {
        ConfigInputs {
            sets: sets.iter().map(|s| (*s).to_owned()).collect(),
            name: Some("demo".into()),
            namespace: Some("team-a".into()),
            ..ConfigInputs::default()
        }
    }

    #[test]
    fn committed_schema_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vnest.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == schema_text(),
            "vnest.schema.json differs from the code: run `cargo run --bin vnest -- schema > vnest.schema.json`"
        );
    }

    #[test]
    fn the_keys_table_in_the_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let table = keys_table();
        assert!(table.contains("| `sync.networkpolicies` | boolean |"), "{table}");
        assert!(
            doc.contains(&table),
            "docs/reference.md lacks the current config keys table: paste `vnest schema --markdown`"
        );
    }

    #[test]
    fn sets_are_typed_and_merged_over_the_file() {
        let mut i = inputs(&[
            "sync.networkpolicies=true",
            "overlay.realNodes=true",
            "sync.hostAccess=allow",
            "resources.k3s.limits.memory=4Gi",
            "images.k3s=rancher/k3s:v1.35.4-k3s1",
        ]);
        i.file = Some((
            "vnest.yaml".into(),
            "sync: {networkpolicies: false, allSecrets: true}\nexport: {context: mine}\n".into(),
        ));
        let c = i.resolve().unwrap();
        assert_eq!(c.sync.networkpolicies, Some(true), "--set wins over the file");
        assert_eq!(c.sync.all_secrets, Some(true));
        assert!(c.overlay.real_nodes);
        assert_eq!(c.sync.host_access, Some(HostAccess::Allow));
        assert_eq!(c.resources.k3s.limits.memory.as_deref(), Some("4Gi"));
        assert_eq!(c.export.context.as_deref(), Some("mine"));
        assert_eq!((c.name.as_str(), c.namespace.as_str()), ("demo", "team-a"));
    }

    #[test]
    fn errors_name_the_key_and_what_is_allowed() {
        for (sets, file, needle) in [
            (
                vec!["sync.podz=true"],
                None,
                "unknown key \"sync.podz\": allowed keys under \"sync\": allConfigmaps, allSecrets, hostAccess, networkpolicies, persistentvolumeclaims, podTokenStorage, poddisruptionbudgets",
            ),
            (
                vec!["nope=1"],
                None,
                "unknown key \"nope\": allowed keys at the top level: export, images, k3s, name, namespace, overlay, ports, resources, scheduling, storage, sync, syncer",
            ),
            (
                vec!["sync.networkpolicies=yes"],
                None,
                "bad value for \"sync.networkpolicies\": \"yes\" is not a boolean: allowed values: true, false",
            ),
            (
                vec!["sync.hostAccess=maybe"],
                None,
                "\"maybe\" is not allowed: allowed values: deny, allow",
            ),
            (vec!["sync=true"], None, "it is a group of keys"),
            (vec!["sync.networkpolicies"], None, "expected key=value"),
            (vec!["name=Bad_Name"], None, "bad value for \"name\""),
            (
                vec![],
                Some("overlay: {isolatd: true}"),
                "unknown key \"overlay.isolatd\": allowed keys under \"overlay\": externalDatastore, ha, hostStorageClasses, isolated, realNodes, realVolumes",
            ),
            (vec![], Some("export: {enabled: 3}"), "3 is not a boolean"),
            (vec!["export.server=http://x"], None, "not an https:// URL"),
        ] {
            let mut i = inputs(&sets);
            if sets.iter().any(|s| s.starts_with("name=")) {
                i.name = None;
            }
            i.file = file.map(|f| ("f.yaml".to_owned(), f.to_owned()));
            let err = i.resolve().expect_err("refused").to_string();
            assert!(err.contains(needle), "{sets:?} {file:?}: {err}");
        }
        let mut i = inputs(&[]);
        i.overlays = vec!["isolatd".into()];
        let err = i.resolve().expect_err("bad overlay").to_string();
        assert!(
            err.contains("allowed values: default, isolated, real-nodes, host-storageclasses, real-volumes, external-datastore, ha"),
            "{err}"
        );
        let mut i = inputs(&[]);
        i.name = None;
        assert!(
            i.resolve()
                .expect_err("no name")
                .to_string()
                .contains("name is required")
        );
        let mut i = inputs(&[]);
        i.name = Some("a".repeat(53));
        assert!(i.resolve().expect_err("long").to_string().contains("at most 52"));
    }

    #[test]
    fn maps_lists_and_ports() {
        let mut i = inputs(&[
            "scheduling.nodeSelector.vnest.dev/runner=true",
            "syncer.env.VNEST_LOG=debug",
            "ports.api=16443",
        ]);
        i.file = Some((
            "vnest.yaml".into(),
            "scheduling:\n  nodeSelector: {zone: a}\n  tolerations:\n  - {key: vnest.dev/runner, operator: Exists, effect: NoSchedule}\n\
             k3s: {extraArgs: [--bind-address=127.0.0.1]}\nsyncer: {env: {VNEST_KUBELET_ADDRESS: 127.0.0.1}}\nports: {dns: 1054}\n"
                .into(),
        ));
        let c = i.resolve().unwrap();
        assert_eq!(
            c.scheduling.node_selector,
            BTreeMap::from([
                ("vnest.dev/runner".to_owned(), "true".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ]),
            "the rest of a --set key is the map key, dots included"
        );
        assert_eq!(
            c.scheduling.tolerations,
            vec![Toleration {
                key: Some("vnest.dev/runner".into()),
                operator: Some(TolerationOperator::Exists),
                effect: Some(TaintEffect::NoSchedule),
                ..Toleration::default()
            }]
        );
        assert_eq!(c.k3s.extra_args, vec!["--bind-address=127.0.0.1".to_owned()]);
        assert_eq!(c.syncer.env.get("VNEST_LOG").map(String::as_str), Some("debug"));
        assert_eq!(c.syncer.env.len(), 2);
        assert_eq!(
            (c.ports.api, c.ports.dns, c.ports.admin),
            (Some(16443), Some(1054), None)
        );

        for (sets, file, needle) in [
            (
                vec!["ports.api=0"],
                None,
                "bad value for \"ports.api\": 0 is below the minimum 1",
            ),
            (vec!["ports.dns=70000"], None, "70000 is above the maximum 65535"),
            (vec![], Some("ports: {admin: -1}"), "-1 is below the minimum 1"),
            (vec!["k3s.extraArgs=--x"], None, "it is a list: set it in a file"),
            (vec!["syncer.env=x"], None, "it is a map: set one entry"),
            (
                vec!["syncer.env.1BAD=x"],
                None,
                "is not an environment variable name",
            ),
            (
                vec![],
                Some("scheduling: {tolerations: [{key: a, operator: Maybe}]}"),
                "bad value for \"scheduling.tolerations[0].operator\": \"Maybe\" is not allowed: allowed values: Equal, Exists",
            ),
            (
                vec![],
                Some("scheduling: {tolerations: [{kee: a}]}"),
                "unknown key \"scheduling.tolerations[0].kee\"",
            ),
            (
                vec![],
                Some("scheduling: {nodeSelector: {a: 1}}"),
                "1 is not a string",
            ),
            (vec![], Some("k3s: {extraArgs: x}"), "expected a list"),
        ] {
            let mut i = inputs(&sets);
            i.file = file.map(|f| ("f.yaml".to_owned(), f.to_owned()));
            let err = i.resolve().expect_err("refused").to_string();
            assert!(err.contains(needle), "{sets:?} {file:?}: {err}");
        }
        let table = keys_table();
        for row in [
            "| `scheduling.nodeSelector` | map of string |",
            "| `scheduling.tolerations` | list of object |",
            "| `scheduling.tolerations[].operator` | Equal \\| Exists |",
            "| `ports.api` | integer |",
            "| `k3s.extraArgs` | list of string |",
            "| `syncer.env` | map of string |",
        ] {
            assert!(table.contains(row), "{row}: {table}");
        }
    }

    #[test]
    fn overlays_set_the_switches() {
        let mut i = inputs(&[]);
        i.overlays = vec![
            "isolated".into(),
            "real-nodes".into(),
            "host-storageclasses".into(),
            "real-volumes".into(),
        ];
        let c = i.resolve().unwrap();
        assert!(c.overlay.isolated && c.overlay.real_nodes);
        assert!(c.overlay.host_storage_classes && c.overlay.real_volumes);
    }
}
