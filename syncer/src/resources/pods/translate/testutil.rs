//! Builders shared by the pod translation tests: a [`TranslateCtx`] of a demo vcluster, virtual
//! pods overlaid with JSON, and host pods as the API server stores them.

#![allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::{PodInputs, host_pod, update_patch};
use crate::engine::TranslateCtx;
use crate::engine::error::TranslateError;
use crate::naming;
use crate::resources::pods::settings::{HostAccessPolicy, PodSettings, TokenStorage};

pub(super) const VC: &str = "demo";
pub(super) const NS: &str = "team-a";
pub(super) const HOST_NS: &str = "vc-demo";
pub(super) const KUBE_IP: &str = "10.96.0.10";
pub(super) const DNS_IP: &str = "10.96.0.53";
pub(super) const WORKLOAD_SA: &str = "vc-workload-demo";

/// The translation context of the demo vcluster.
pub(super) fn ctx() -> TranslateCtx {
    TranslateCtx {
        vcluster: VC.to_owned(),
        host_namespace: HOST_NS.to_owned(),
        owner: OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Service".to_owned(),
            name: "demo".to_owned(),
            uid: "anchor-uid".to_owned(),
            controller: None,
            block_owner_deletion: None,
        },
        kube_service_ip: KUBE_IP.to_owned(),
        dns_nameserver: DNS_IP.to_owned(),
    }
}

/// The demo vcluster's pod settings under host-access policy `host_access` (tokens in a Secret).
pub(super) fn settings_with(host_access: HostAccessPolicy) -> PodSettings {
    PodSettings {
        workload_service_account: WORKLOAD_SA.to_owned(),
        cluster_domain: "cluster.local".to_owned(),
        host_access,
        token_storage: TokenStorage::Secret,
    }
}

pub(super) fn ns_labels() -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name", NS), ("team", "a/b")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Host name of a tenant object of the test namespace.
pub(super) fn hn(name: &str) -> String {
    naming::host_name(VC, NS, name)
}

/// Merges `patch` into `base` (objects key by key, anything else replaced).
pub(super) fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// Virtual pod `NS/web-0` with one container `app`, overlaid with `overlay`.
pub(super) fn vpod_with(overlay: Value) -> Pod {
    let mut base = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-0",
            "namespace": NS,
            "uid": "uid-1",
            "resourceVersion": "7",
            "labels": {"app": "web"},
            "annotations": {"note": "x"},
        },
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
    });
    merge(&mut base, overlay);
    serde_json::from_value(base).unwrap()
}

pub(super) fn vpod_spec(spec: Value) -> Pod {
    vpod_with(json!({ "spec": spec }))
}

pub(super) fn vpod(ns: &str, name: &str) -> Pod {
    vpod_with(json!({"metadata": {"namespace": ns, "name": name}}))
}

pub(super) fn try_translate(vpod: &Pod, policy: HostAccessPolicy) -> Result<Pod, TranslateError> {
    let (ctx, settings) = (ctx(), settings_with(policy));
    let labels = ns_labels();
    host_pod(
        &PodInputs {
            ctx: &ctx,
            settings: &settings,
            namespace_labels: &labels,
            services: &[],
        },
        vpod,
    )
}

pub(super) fn translate(vpod: &Pod) -> Pod {
    try_translate(vpod, HostAccessPolicy::Deny).unwrap()
}

/// The host spec as JSON (convenient to index).
pub(super) fn hspec(vpod: &Pod) -> Value {
    serde_json::to_value(translate(vpod).spec.unwrap()).unwrap()
}

pub(super) fn patch_for(vpod: &Pod, hpod: &Pod) -> Option<Value> {
    patch_for_labels(vpod, hpod, &ns_labels())
}

pub(super) fn patch_for_labels(vpod: &Pod, hpod: &Pod, labels: &BTreeMap<String, String>) -> Option<Value> {
    let (ctx, settings) = (ctx(), settings_with(HostAccessPolicy::Deny));
    update_patch(
        &PodInputs {
            ctx: &ctx,
            settings: &settings,
            namespace_labels: labels,
            services: &[],
        },
        vpod,
        hpod,
    )
}

/// `hpod` as the host API server would return it: server-set fields, defaults and
/// additions by host controllers.
pub(super) fn as_stored(mut hpod: Pod) -> Pod {
    let mut value = serde_json::to_value(&hpod).unwrap();
    merge(
        &mut value,
        json!({
            "metadata": {
                "uid": "host-uid",
                "resourceVersion": "42",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"istio.io/rev": "1"},
                "annotations": {"host.example/injected": "yes"},
            },
            "status": {"phase": "Running", "qosClass": "BestEffort"},
        }),
    );
    hpod = serde_json::from_value(value).unwrap();
    let spec = hpod.spec.as_mut().unwrap();
    spec.node_name = Some("node-1".to_owned());
    spec.tolerations.get_or_insert_with(Vec::new).push(Toleration {
        key: Some("node.kubernetes.io/not-ready".to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some("NoExecute".to_owned()),
        toleration_seconds: Some(300),
        value: None,
    });
    hpod
}

/// A pod referencing objects in every supported position.
pub(super) fn referencing_pod() -> Pod {
    let env = json!([
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "a"}}},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "b"}}},
    ]);
    let env_from = json!([
        {"configMapRef": {"name": "cm-from"}},
        {"secretRef": {"name": "sec-from"}, "prefix": "S_"},
    ]);
    vpod_spec(json!({
        "containers": [{"name": "app", "image": "nginx:1", "env": env, "envFrom": env_from}],
        "initContainers": [{"name": "init", "image": "busybox",
            "env": [{"name": "I", "valueFrom": {"secretKeyRef": {"name": "sec-init", "key": "i"}}}],
            "envFrom": [{"configMapRef": {"name": "cm-init"}}]}],
        "ephemeralContainers": [{"name": "debug", "image": "busybox",
            "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "cm-eph", "key": "e"}}}],
            "envFrom": [{"secretRef": {"name": "sec-eph"}}]}],
        "imagePullSecrets": [{"name": "pull"}],
        "volumes": [
            {"name": "cm", "configMap": {"name": "cm-vol"}},
            {"name": "sec", "secret": {"secretName": "sec-vol"}},
            {"name": "pvc", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "proj", "projected": {"sources": [
                {"configMap": {"name": "cm-proj"}},
                {"secret": {"name": "sec-proj"}},
            ]}},
            {"name": "csi", "csi": {"driver": "x", "nodePublishSecretRef": {"name": "sec-csi"}}},
            {"name": "azure", "azureFile": {"secretName": "sec-azure", "shareName": "s"}},
            {"name": "ceph", "cephfs": {"monitors": ["m"], "secretRef": {"name": "sec-ceph"}}},
            {"name": "rbd", "rbd": {"monitors": ["m"], "image": "i", "secretRef": {"name": "sec-rbd"}}},
            {"name": "iscsi", "iscsi": {"targetPortal": "p", "iqn": "q", "lun": 0, "secretRef": {"name": "sec-iscsi"}}},
            {"name": "flex", "flexVolume": {"driver": "d", "secretRef": {"name": "sec-flex"}}},
            {"name": "cinder", "cinder": {"volumeID": "v", "secretRef": {"name": "sec-cinder"}}},
            {"name": "scaleio", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {"name": "sec-scaleio"}}},
            {"name": "sos", "storageos": {"secretRef": {"name": "sec-sos"}}},
            {"name": "gluster", "glusterfs": {"endpoints": "gluster-ep", "path": "p"}},
        ],
    }))
}

pub(super) fn sa_volume(name: &str, token: Value) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": token},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

pub(super) fn sa_pod() -> Pod {
    vpod_spec(json!({
        "serviceAccountName": "builder",
        "serviceAccount": "builder",
        "automountServiceAccountToken": true,
        "volumes": [
            sa_volume("kube-api-access-x7k2p", json!({"expirationSeconds": 3607, "path": "token"})),
            {"name": "empty", "emptyDir": {}},
            {"name": "vault", "projected": {"sources": [
                {"secret": {"name": "other"}},
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault-token"}},
                {"serviceAccountToken": {"path": "plain", "audience": ""}},
            ]}},
        ],
    }))
}
