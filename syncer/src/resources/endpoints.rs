//! Endpoints of Services WITHOUT a selector (the tenant manages them by hand) are copied to the
//! host, with Pod targetRefs pointing at the host pods. Services with a selector get their
//! endpoints from each side's own controller (virtual pods carry the host pod IPs), so nothing
//! is copied for them.

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};

use super::services::translate::is_special;
use crate::engine::TranslateCtx;
use crate::engine::standard::CopiedKind;
use crate::naming;

pub struct EndpointsKind {
    pub virtual_services: Store<Service>,
}

/// A Pod targetRef rewritten to the host pod (other kinds pass through without uid/version).
fn target_ref(tc: &TranslateCtx, ns: &str, r: &ObjectReference) -> ObjectReference {
    match (r.kind.as_deref(), r.name.as_deref()) {
        (Some("Pod"), Some(name)) => ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(tc.host_namespace.clone()),
            name: Some(naming::host_name(
                &tc.vcluster,
                r.namespace.as_deref().unwrap_or(ns),
                name,
            )),
            ..ObjectReference::default()
        },
        _ => ObjectReference {
            uid: None,
            resource_version: None,
            ..r.clone()
        },
    }
}

/// The host subsets for virtual Endpoints `v` (pure).
pub fn host_subsets(tc: &TranslateCtx, v: &Endpoints) -> Vec<EndpointSubset> {
    let ns = v.namespace().unwrap_or_default();
    let addr = |a: &EndpointAddress| EndpointAddress {
        target_ref: a.target_ref.as_ref().map(|r| target_ref(tc, &ns, r)),
        ..a.clone()
    };
    v.subsets
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|s| EndpointSubset {
            addresses: s.addresses.as_ref().map(|a| a.iter().map(addr).collect()),
            not_ready_addresses: s
                .not_ready_addresses
                .as_ref()
                .map(|a| a.iter().map(addr).collect()),
            ports: s.ports,
        })
        .collect()
}

impl CopiedKind for EndpointsKind {
    type K = Endpoints;
    const KIND: &'static str = "Endpoints";
    const NAME: &'static str = "endpoints";

    fn owned_fields(obj: &Endpoints) -> Value {
        json!({ "subsets": obj.subsets.clone().unwrap_or_default() })
    }

    fn desired_fields(&self, tc: &TranslateCtx, v: &Endpoints) -> Value {
        json!({ "subsets": host_subsets(tc, v) })
    }

    fn host_object(&self, tc: &TranslateCtx, meta: ObjectMeta, v: &Endpoints) -> Endpoints {
        Endpoints {
            metadata: meta,
            subsets: Some(host_subsets(tc, v)),
        }
    }

    /// Only for a Service that exists and has no selector (never `default/kubernetes`).
    fn wanted(&self, v: &Endpoints) -> bool {
        let (ns, name) = (v.namespace().unwrap_or_default(), v.name_any());
        if is_special(&ns, &name) {
            return false;
        }
        self.virtual_services
            .get(&ObjectRef::new(&name).within(&ns))
            .is_some_and(|s| {
                s.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_none_or(|s| s.is_empty())
            })
    }

    /// The host's endpoints-to-slices mirroring must keep working on our copies.
    fn excluded_annotations() -> &'static [&'static str] {
        &["control-plane.alpha.kubernetes.io/leader"]
    }
}

/// Declares the Endpoints kind: manual Endpoints copied; a Service gaining or losing its
/// selector changes whether its Endpoints are copied.
pub fn register(reg: &mut crate::engine::registry::Registry, workers: usize) {
    use crate::engine::registry::key_of;
    use crate::engine::watch::Change;
    let v_services = crate::resources::shared::virtual_services();
    let q = reg.queue(<EndpointsKind as CopiedKind>::NAME);
    reg.on(&v_services, move |c| {
        if let Change::Applied(o) | Change::Deleted(o) = c {
            q.add(key_of(o));
        }
    });
    let virtual_services = reg.store(&v_services);
    crate::engine::standard::register(reg, EndpointsKind { virtual_services }, workers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_target_refs_point_at_host_pods() {
        let tc = TranslateCtx::test();
        let v: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "subsets": [{"addresses": [
                {"ip": "10.244.0.9", "targetRef": {"kind": "Pod", "name": "db-0", "namespace": "shop", "uid": "v-uid"}},
                {"ip": "192.0.2.1"}
            ], "ports": [{"port": 5432}]}]
        }))
        .unwrap();
        let s = host_subsets(&tc, &v);
        let a = s[0].addresses.as_ref().unwrap();
        let r = a[0].target_ref.as_ref().unwrap();
        assert_eq!(
            r.name.as_deref(),
            Some(naming::host_name("vc", "shop", "db-0").as_str())
        );
        assert_eq!(r.namespace.as_deref(), Some("host"));
        assert_eq!(r.uid, None);
        assert_eq!(a[1].target_ref, None);
    }
}
