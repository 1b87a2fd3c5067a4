//! Pure translation of PersistentVolumeClaims: the host spec of a virtual claim, the virtual
//! status from the host claim, and the virtual PersistentVolume that stands for the host
//! volume. No client, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec, TypedLocalObjectReference,
    TypedObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::engine::error::TranslateError;
use crate::markers;
use crate::naming;

/// Annotations the host's PV binder, scheduler and resizer set on a claim (and that the syncer
/// sets on the virtual claim when it binds it): never copied either way, never removed.
pub const HOST_OWNED_ANNOTATIONS: &[&str] = &[
    ANNOTATION_BIND_COMPLETED,
    ANNOTATION_BOUND_BY_CONTROLLER,
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "volume.kubernetes.io/storage-resizer",
    "pv.kubernetes.io/migrated-to",
];

/// Set on a claim once its binding is complete (the PV binder's annotation).
pub const ANNOTATION_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on a claim or volume whose binding a controller made.
pub const ANNOTATION_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Who provisioned a volume.
pub const ANNOTATION_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The CSI driver name of the virtual volumes (a stub: nothing in the virtual cluster mounts
/// volumes; the host pod mounts the host claim).
pub const VIRTUAL_VOLUME_DRIVER: &str = "host.vnest.dev";

/// Name of the virtual PersistentVolume that stands for the host volume of the virtual claim
/// with uid `claim_uid` (as a dynamic provisioner names them; nothing of the host in it).
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// Whether virtual volume `pv` is one the syncer made.
pub fn is_our_volume(pv: &PersistentVolume) -> bool {
    pv.labels()
        .get(markers::LABEL_VIRTUAL_VOLUME)
        .is_some_and(|v| v == markers::VIRTUAL_VOLUME_VALUE)
}

/// The claim (namespace, name, uid) virtual volume `pv` is bound to.
pub fn claim_of(pv: &PersistentVolume) -> Option<(String, String, Option<String>)> {
    let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some((r.namespace.clone()?, r.name.clone()?, r.uid.clone()))
}

/// The host spec of virtual claim `v` (pure). Kept: access modes, resources, storage class,
/// volume mode, volume attributes class, selector. Translated: a data source naming a claim of
/// the same namespace. Refused (nothing is created; the tenant reads why): any other data
/// source (the syncer does not copy VolumeSnapshots or populators' objects), a cross-namespace
/// `dataSourceRef`, and a `volumeName` naming a volume the syncer did not make for this claim.
pub fn host_spec(
    vcluster: &str,
    v: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaimSpec, TranslateError> {
    let ns = v.namespace().unwrap_or_default();
    let mut spec = v.spec.clone().unwrap_or_default();
    if let Some(name) = spec.volume_name.take().filter(|n| !n.is_empty()) {
        let ours = v.uid().map(|u| volume_name(&u));
        if ours.as_deref() != Some(name.as_str()) {
            return Err(TranslateError::Refused(format!(
                "spec.volumeName {name:?} names a PersistentVolume of the virtual cluster; vnest \
                 binds claims to host volumes itself: create the claim without volumeName"
            )));
        }
    }
    if let Some(source) = spec.data_source.as_mut() {
        translate_local_source(vcluster, &ns, source, "spec.dataSource")?;
    }
    if let Some(source) = spec.data_source_ref.as_mut() {
        translate_source_ref(vcluster, &ns, source)?;
    }
    Ok(spec)
}

fn is_claim_kind(api_group: Option<&str>, kind: &str) -> bool {
    api_group.is_none_or(str::is_empty) && kind == "PersistentVolumeClaim"
}

fn unsupported_source(field: &str, api_group: Option<&str>, kind: &str, name: &str) -> TranslateError {
    let group = api_group
        .filter(|g| !g.is_empty())
        .map(|g| format!("{g}/"))
        .unwrap_or_default();
    TranslateError::Refused(format!(
        "{field} names {group}{kind} {name:?}: only a PersistentVolumeClaim of the same namespace \
         can be a data source through vnest (VolumeSnapshots and volume populators are not \
         synced to the host yet); nothing was created on the host"
    ))
}

fn translate_local_source(
    vcluster: &str,
    ns: &str,
    source: &mut TypedLocalObjectReference,
    field: &str,
) -> Result<(), TranslateError> {
    if !is_claim_kind(source.api_group.as_deref(), &source.kind) {
        return Err(unsupported_source(
            field,
            source.api_group.as_deref(),
            &source.kind,
            &source.name,
        ));
    }
    source.name = naming::host_name(vcluster, ns, &source.name);
    Ok(())
}

fn translate_source_ref(
    vcluster: &str,
    ns: &str,
    source: &mut TypedObjectReference,
) -> Result<(), TranslateError> {
    let field = "spec.dataSourceRef";
    if !is_claim_kind(source.api_group.as_deref(), &source.kind) {
        return Err(unsupported_source(
            field,
            source.api_group.as_deref(),
            &source.kind,
            &source.name,
        ));
    }
    if source
        .namespace
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return Err(TranslateError::Refused(format!(
            "{field} names a claim in another namespace: cross-namespace data sources are not supported by vnest"
        )));
    }
    source.namespace = None;
    source.name = naming::host_name(vcluster, ns, &source.name);
    Ok(())
}

/// The storage request of a claim spec.
pub fn storage_request(spec: Option<&PersistentVolumeClaimSpec>) -> Option<&Quantity> {
    spec?.resources.as_ref()?.requests.as_ref()?.get("storage")
}

/// A quantity in base units (bytes for storage), or None when it does not parse.
pub fn quantity_value(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // An exponent ("1e3", "1E3") is a suffix of its own.
    let (number, factor) = if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        (number, 10f64.powi(exp.parse::<i32>().ok()?))
    } else {
        let factor = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            _ => return None,
        };
        (number, factor)
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// The merge patch that grows the host claim's storage request to the virtual one, if the
/// virtual request is larger (a resize; the API servers refuse shrinking, and a host request
/// larger than the tenant's is left alone).
pub fn resize_patch(v: &PersistentVolumeClaim, h: &PersistentVolumeClaim) -> Option<Value> {
    let want = storage_request(v.spec.as_ref())?;
    let have = storage_request(h.spec.as_ref());
    let grows = match have {
        None => true,
        Some(have) => quantity_value(want)? > quantity_value(have)?,
    };
    grows.then(|| json!({"spec": {"resources": {"requests": {"storage": want}}}}))
}

/// The status fields of a claim the syncer owns on the virtual side, as JSON (every field the
/// host has; absent ones absent, so a removal shows as a difference).
pub fn status_fields(status: Option<&PersistentVolumeClaimStatus>) -> Value {
    let Some(s) = status else { return json!({}) };
    let s = PersistentVolumeClaimStatus {
        access_modes: s.access_modes.clone(),
        allocated_resource_statuses: s.allocated_resource_statuses.clone(),
        allocated_resources: s.allocated_resources.clone(),
        capacity: s.capacity.clone(),
        conditions: s.conditions.clone(),
        current_volume_attributes_class_name: s.current_volume_attributes_class_name.clone(),
        modify_volume_status: s.modify_volume_status.clone(),
        phase: s.phase.clone(),
    };
    serde_json::to_value(s).unwrap_or_else(|_| json!({}))
}

/// The phase of a claim ("Pending" when none is set yet).
pub fn phase(c: &PersistentVolumeClaim) -> &str {
    c.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The virtual volume for virtual claim `v` bound on the host as `h`: what the host claim's
/// status tells (capacity, access modes) and its spec (class, volume mode); a CSI stub source
/// ([`VIRTUAL_VOLUME_DRIVER`], the claim's uid as handle) that reveals nothing of the host;
/// claimRef to `v`; our marker label.
pub fn virtual_volume(v: &PersistentVolumeClaim, h: &PersistentVolumeClaim) -> Option<PersistentVolume> {
    let uid = v.uid()?;
    let hs = h.spec.as_ref();
    let status = h.status.as_ref();
    let capacity = status
        .and_then(|s| s.capacity.clone())
        .or_else(|| storage_request(hs).map(|q| BTreeMap::from([("storage".to_owned(), q.clone())])));
    let access_modes = status
        .and_then(|s| s.access_modes.clone())
        .or_else(|| hs.and_then(|s| s.access_modes.clone()));
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(&uid)),
            labels: Some(BTreeMap::from([(
                markers::LABEL_VIRTUAL_VOLUME.to_owned(),
                markers::VIRTUAL_VOLUME_VALUE.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([
                (ANNOTATION_BOUND_BY_CONTROLLER.to_owned(), "yes".to_owned()),
                (
                    ANNOTATION_PROVISIONED_BY.to_owned(),
                    VIRTUAL_VOLUME_DRIVER.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity,
            access_modes,
            storage_class_name: hs.and_then(|s| s.storage_class_name.clone()),
            volume_mode: hs.and_then(|s| s.volume_mode.clone()),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            csi: Some(CSIPersistentVolumeSource {
                driver: VIRTUAL_VOLUME_DRIVER.into(),
                volume_handle: uid.clone(),
                ..CSIPersistentVolumeSource::default()
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: v.namespace(),
                name: Some(v.name_any()),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    })
}

/// The fields of a virtual volume kept in step with the host claim after its creation (a
/// resize changes the capacity).
pub fn volume_fields(pv: &PersistentVolume) -> Value {
    json!({"spec": {"capacity": pv.spec.as_ref().and_then(|s| s.capacity.clone())}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(spec: Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "u-1"},
            "spec": spec,
        }))
        .expect("a claim")
    }

    fn hn(name: &str) -> String {
        naming::host_name("vc", "shop", name)
    }

    #[test]
    fn host_spec_keeps_translates_or_refuses() {
        let base = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        let with = |extra: Value| {
            let mut s = base.clone();
            for (k, v) in extra.as_object().expect("an object") {
                s[k] = v.clone();
            }
            s
        };
        let ok_cases = [
            ("plain claim", with(json!({})), with(json!({}))),
            (
                "class, mode, attributes class kept",
                with(
                    json!({"storageClassName": "fast", "volumeMode": "Block", "volumeAttributesClassName": "gold"}),
                ),
                with(
                    json!({"storageClassName": "fast", "volumeMode": "Block", "volumeAttributesClassName": "gold"}),
                ),
            ),
            (
                "a claim as data source is renamed (both fields)",
                with(
                    json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": "src"},
                            "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src", "namespace": "shop"}}),
                ),
                with(
                    json!({"dataSource": {"kind": "PersistentVolumeClaim", "name": hn("src")},
                            "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": hn("src")}}),
                ),
            ),
            (
                "our own volume name (after binding) is dropped",
                with(json!({"volumeName": "pvc-u-1"})),
                with(json!({})),
            ),
        ];
        for (name, spec, want) in ok_cases {
            let got = host_spec("vc", &claim(spec)).map(|s| serde_json::to_value(s).expect("serializes"));
            assert_eq!(got, Ok(want), "{name}");
        }
        let refused = [
            (
                "a snapshot",
                with(
                    json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}}),
                ),
                "spec.dataSource names snapshot.storage.k8s.io/VolumeSnapshot \"snap\"",
            ),
            (
                "a populator",
                with(json!({"dataSourceRef": {"apiGroup": "example.com", "kind": "Sample", "name": "s"}})),
                "spec.dataSourceRef names example.com/Sample",
            ),
            (
                "a claim in another namespace",
                with(
                    json!({"dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "src", "namespace": "other"}}),
                ),
                "cross-namespace",
            ),
            (
                "someone else's volume",
                with(json!({"volumeName": "my-pv"})),
                "spec.volumeName \"my-pv\"",
            ),
        ];
        for (name, spec, needle) in refused {
            match host_spec("vc", &claim(spec)) {
                Err(TranslateError::Refused(m)) => assert!(m.contains(needle), "{name}: {m}"),
                other => panic!("{name}: refused expected, got {other:?}"),
            }
        }
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        let q = |s: &str| quantity_value(&Quantity(s.into()));
        let cases = [
            ("1Gi", Some(1073741824.0)),
            ("1G", Some(1e9)),
            ("1.5Gi", Some(1.5 * 1073741824.0)),
            ("500Mi", Some(500.0 * 1048576.0)),
            ("1024", Some(1024.0)),
            ("1e3", Some(1000.0)),
            ("100m", Some(0.1)),
            ("1Zi", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(q(s), want, "{s}");
        }
        assert!(q("2Gi") > q("2G"));
    }

    #[test]
    fn resize_only_grows() {
        let c = |s: &str| claim(json!({"resources": {"requests": {"storage": s}}}));
        let cases = [
            ("1Gi", "1Gi", None),
            (
                "2Gi",
                "1Gi",
                Some(json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})),
            ),
            ("1024Mi", "1Gi", None),
            ("1Gi", "2Gi", None),
        ];
        for (v, h, want) in cases {
            assert_eq!(resize_patch(&c(v), &c(h)), want, "{v} over {h}");
        }
    }

    #[test]
    fn virtual_volume_reveals_nothing_of_the_host() {
        let v =
            claim(json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}));
        let h: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": hn("data"), "namespace": "host", "uid": "h-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local", "volumeMode": "Filesystem",
                     "volumeName": "host-pool-3", "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce", "ReadOnlyMany"], "capacity": {"storage": "5Gi"}}
        }))
        .expect("a claim");
        let pv = virtual_volume(&v, &h).expect("a volume");
        let body = serde_json::to_value(&pv).expect("serializes");
        assert_eq!(body["metadata"]["name"], "pvc-u-1");
        assert_eq!(body["metadata"]["labels"][markers::LABEL_VIRTUAL_VOLUME], "true");
        assert_eq!(
            body["spec"]["capacity"]["storage"], "5Gi",
            "what the host bound, not what was asked"
        );
        assert_eq!(
            body["spec"]["accessModes"],
            json!(["ReadWriteOnce", "ReadOnlyMany"])
        );
        assert_eq!(body["spec"]["storageClassName"], "local");
        assert_eq!(body["spec"]["volumeMode"], "Filesystem");
        assert_eq!(
            body["spec"]["csi"],
            json!({"driver": "host.vnest.dev", "volumeHandle": "u-1"})
        );
        assert_eq!(
            body["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data", "uid": "u-1"})
        );
        let text = body.to_string();
        for secret in ["host-pool-3", "h-1", &hn("data"), "\"host\""] {
            assert!(!text.contains(secret), "{secret} leaks: {text}");
        }
        assert!(is_our_volume(&pv));
        assert_eq!(
            claim_of(&pv),
            Some(("shop".into(), "data".into(), Some("u-1".into())))
        );
    }
}
