//! Pure translation of PersistentVolumeClaims: the host spec of a virtual claim, the virtual
//! status from the host claim, and the virtual PersistentVolume that stands for the host
//! volume. No client, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec, TypedLocalObjectReference,
    TypedObjectReference,
};
use k8s_openapi::api::storage::v1::StorageClass;
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

/// API group and kind of a VolumeSnapshot (a data source translated like a claim: the host
/// snapshot of the same namespace/name has the translated name).
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
pub const SNAPSHOT_KIND: &str = "VolumeSnapshot";

/// The `--storage-class-map` table: a virtual StorageClass name → the host class it stands
/// for. Claims naming a virtual name get the host name on the host; the tenant sees its own
/// name everywhere (the virtual volume, the copied host classes). Names not in the table are
/// the same on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassMap {
    /// (virtual, host), in the order given.
    pairs: Vec<(String, String)>,
}

/// A `--storage-class-map` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --storage-class-map entry {entry:?}: {why} (expected VIRTUAL=HOST[,VIRTUAL=HOST...], e.g. fast=premium-ssd)"
)]
pub struct ClassMapError {
    entry: String,
    why: &'static str,
}

fn valid_class_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl std::str::FromStr for ClassMap {
    type Err = ClassMapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |why| ClassMapError {
                entry: entry.to_owned(),
                why,
            };
            let (v, h) = entry.split_once('=').ok_or_else(|| err("no '='"))?;
            let (v, h) = (v.trim(), h.trim());
            if !valid_class_name(v) || !valid_class_name(h) {
                return Err(err(
                    "a StorageClass name is lowercase letters, digits, '-' and '.'",
                ));
            }
            if pairs.iter().any(|(pv, _)| pv == v) {
                return Err(err("the virtual name is mapped twice"));
            }
            pairs.push((v.to_owned(), h.to_owned()));
        }
        Ok(Self { pairs })
    }
}

impl ClassMap {
    /// The host class of virtual class `name`.
    pub fn to_host<'a>(&'a self, name: &'a str) -> &'a str {
        self.pairs
            .iter()
            .find(|(v, _)| v == name)
            .map_or(name, |(_, h)| h.as_str())
    }

    /// The name the tenant knows host class `name` by: the first virtual name mapped to it,
    /// else its own name (unless that name is itself mapped to another host class: then the
    /// host class has no virtual name of its own, None).
    pub fn to_virtual<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some((v, _)) = self.pairs.iter().find(|(_, h)| h == name) {
            return Some(v);
        }
        (self.to_host(name) == name).then_some(name)
    }
}

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

/// The host spec of virtual claim `v` (pure). Kept: access modes, resources, volume mode,
/// volume attributes class, selector. Mapped: the storage class (through `classes`).
/// Translated: a data source naming a claim or a VolumeSnapshot of the same namespace (the
/// host object of that name). Refused (nothing is created; the tenant reads why): any other
/// data source (populators' objects), a cross-namespace `dataSourceRef`, and a `volumeName`
/// naming a volume the syncer did not make for this claim.
pub fn host_spec(
    vcluster: &str,
    classes: &ClassMap,
    v: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaimSpec, TranslateError> {
    let ns = v.namespace().unwrap_or_default();
    let mut spec = v.spec.clone().unwrap_or_default();
    if let Some(class) = spec.storage_class_name.as_mut() {
        *class = classes.to_host(class).to_owned();
    }
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

/// Whether a data source of this group and kind is one vnest translates: a claim, or a
/// VolumeSnapshot (both named after the virtual object on the host).
fn is_translated_kind(api_group: Option<&str>, kind: &str) -> bool {
    match api_group.filter(|g| !g.is_empty()) {
        None => kind == "PersistentVolumeClaim",
        Some(group) => group == SNAPSHOT_GROUP && kind == SNAPSHOT_KIND,
    }
}

fn unsupported_source(field: &str, api_group: Option<&str>, kind: &str, name: &str) -> TranslateError {
    let group = api_group
        .filter(|g| !g.is_empty())
        .map(|g| format!("{g}/"))
        .unwrap_or_default();
    TranslateError::Refused(format!(
        "{field} names {group}{kind} {name:?}: only a PersistentVolumeClaim or a VolumeSnapshot \
         of the same namespace can be a data source through vnest (volume populators are not \
         synced to the host yet); nothing was created on the host"
    ))
}

fn translate_local_source(
    vcluster: &str,
    ns: &str,
    source: &mut TypedLocalObjectReference,
    field: &str,
) -> Result<(), TranslateError> {
    if !is_translated_kind(source.api_group.as_deref(), &source.kind) {
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
    if !is_translated_kind(source.api_group.as_deref(), &source.kind) {
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
            "{field} names an object in another namespace: cross-namespace data sources are not supported by vnest"
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

/// The reclaim policy of the host volume behind host claim `h` as far as the namespaced Role
/// can tell: a claim that the host class's provisioner provisioned (the binder's
/// `storage-provisioner` annotation names it) got the class's `reclaimPolicy` (default
/// `Delete`); otherwise (a pre-created volume, or the host class unknown) None.
pub fn provisioned_reclaim_policy(h: &PersistentVolumeClaim, class: Option<&StorageClass>) -> Option<String> {
    let class = class?;
    let annotations = h.annotations();
    let provisioned_by = annotations
        .get("volume.kubernetes.io/storage-provisioner")
        .or_else(|| annotations.get("volume.beta.kubernetes.io/storage-provisioner"))?;
    (provisioned_by == &class.provisioner && class.provisioner != NO_PROVISIONER)
        .then(|| class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()))
}

/// The provisioner name of classes whose volumes are pre-created (nobody provisions them).
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The virtual volume for virtual claim `v` bound on the host as `h`: what the host claim's
/// status tells (capacity, access modes) and its spec (volume mode); the class the tenant
/// named (or the tenant's name of the host class, through `classes`); reclaim policy
/// `reclaim` (the host volume's when known, else `Delete`: the tenant's volume goes with its
/// claim either way); a CSI stub source ([`VIRTUAL_VOLUME_DRIVER`], the claim's uid as
/// handle) that reveals nothing of the host; claimRef to `v`; our marker label.
pub fn virtual_volume(
    v: &PersistentVolumeClaim,
    h: &PersistentVolumeClaim,
    classes: &ClassMap,
    reclaim: Option<&str>,
) -> Option<PersistentVolume> {
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
            storage_class_name: virtual_class_of(v, h, classes),
            volume_mode: hs.and_then(|s| s.volume_mode.clone()),
            persistent_volume_reclaim_policy: Some(reclaim.unwrap_or("Delete").into()),
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

/// The virtual volume for virtual claim `v` bound on the host as `h` to host volume `hpv`
/// (`--pv-sync=real`): the host volume's spec as it is (source, capacity, access modes, node
/// affinity, reclaim policy, mount options, volume mode) under the virtual name
/// [`volume_name`], the class by the tenant's name, claimRef to `v`, our marker label.
pub fn real_volume(
    v: &PersistentVolumeClaim,
    h: &PersistentVolumeClaim,
    hpv: &PersistentVolume,
    classes: &ClassMap,
) -> Option<PersistentVolume> {
    let uid = v.uid()?;
    let mut spec = hpv.spec.clone().unwrap_or_default();
    spec.storage_class_name = virtual_class_of(v, h, classes);
    spec.claim_ref = Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: v.namespace(),
        name: Some(v.name_any()),
        uid: Some(uid.clone()),
        ..ObjectReference::default()
    });
    let mut annotations = BTreeMap::from([(ANNOTATION_BOUND_BY_CONTROLLER.to_owned(), "yes".to_owned())]);
    if let Some(by) = hpv.annotations().get(ANNOTATION_PROVISIONED_BY) {
        annotations.insert(ANNOTATION_PROVISIONED_BY.to_owned(), by.clone());
    }
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(&uid)),
            labels: Some(BTreeMap::from([(
                markers::LABEL_VIRTUAL_VOLUME.to_owned(),
                markers::VIRTUAL_VOLUME_VALUE.to_owned(),
            )])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The class of the virtual volume of `v`: the one the tenant named, else the tenant's name
/// of the class the host gave the host claim (its default class).
fn virtual_class_of(
    v: &PersistentVolumeClaim,
    h: &PersistentVolumeClaim,
    classes: &ClassMap,
) -> Option<String> {
    let named = v
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .filter(|c| !c.is_empty());
    named.or_else(|| {
        let host = h.spec.as_ref()?.storage_class_name.as_deref()?;
        classes.to_virtual(host).map(str::to_owned)
    })
}

/// The fields of a virtual volume kept in step with the host after its creation (a resize
/// changes the capacity; the reclaim policy once the host class is known).
pub fn volume_fields(pv: &PersistentVolume) -> Value {
    let spec = pv.spec.as_ref();
    json!({"spec": {
        "capacity": spec.and_then(|s| s.capacity.clone()),
        "persistentVolumeReclaimPolicy": spec.and_then(|s| s.persistent_volume_reclaim_policy.clone()),
    }})
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
                "a snapshot as data source is renamed (both fields)",
                with(
                    json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"},
                           "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}}),
                ),
                with(
                    json!({"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": hn("snap")},
                           "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": hn("snap")}}),
                ),
            ),
            (
                "our own volume name (after binding) is dropped",
                with(json!({"volumeName": "pvc-u-1"})),
                with(json!({})),
            ),
        ];
        for (name, spec, want) in ok_cases {
            let got = host_spec("vc", &ClassMap::default(), &claim(spec))
                .map(|s| serde_json::to_value(s).expect("serializes"));
            assert_eq!(got, Ok(want), "{name}");
        }
        let refused = [
            (
                "a VolumeSnapshot of another API group",
                with(
                    json!({"dataSource": {"apiGroup": "example.com", "kind": "VolumeSnapshot", "name": "snap"}}),
                ),
                "spec.dataSource names example.com/VolumeSnapshot \"snap\"",
            ),
            (
                "a core object that is not a claim",
                with(json!({"dataSource": {"kind": "ConfigMap", "name": "c"}})),
                "spec.dataSource names ConfigMap \"c\"",
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
            match host_spec("vc", &ClassMap::default(), &claim(spec)) {
                Err(TranslateError::Refused(m)) => assert!(m.contains(needle), "{name}: {m}"),
                other => panic!("{name}: refused expected, got {other:?}"),
            }
        }
    }

    #[test]
    fn class_maps_parse_and_map_both_ways() {
        let m: ClassMap = "fast=premium, std=local,cheap=local".parse().expect("a map");
        let cases = [
            ("fast", "premium"),
            ("std", "local"),
            ("cheap", "local"),
            ("local", "local"),
            ("other", "other"),
        ];
        for (v, h) in cases {
            assert_eq!(m.to_host(v), h, "{v}");
        }
        let back = [
            ("premium", Some("fast")),
            ("local", Some("std")),
            ("other", Some("other")),
            // "fast" on the host: the tenant's "fast" is premium, so no virtual name is left.
            ("fast", None),
        ];
        for (h, v) in back {
            assert_eq!(m.to_virtual(h), v, "{h}");
        }
        assert_eq!("".parse::<ClassMap>(), Ok(ClassMap::default()));
        let bad = [
            ("fast", "no '='"),
            ("fast=", "lowercase"),
            ("Fast=premium", "lowercase"),
            ("a=b,a=c", "mapped twice"),
        ];
        for (s, needle) in bad {
            let err = s.parse::<ClassMap>().expect_err(s).to_string();
            assert!(err.contains(needle) && err.contains("VIRTUAL=HOST"), "{s}: {err}");
        }
    }

    #[test]
    fn reclaim_policy_is_known_only_for_provisioned_volumes() {
        let class = |provisioner: &str, policy: Option<&str>| -> StorageClass {
            serde_json::from_value(json!({"metadata": {"name": "c"}, "provisioner": provisioner,
                                          "reclaimPolicy": policy}))
            .expect("a class")
        };
        let host = |annotation: Option<&str>| -> PersistentVolumeClaim {
            let mut h = claim(json!({}));
            if let Some(a) = annotation {
                h.annotations_mut()
                    .insert("volume.kubernetes.io/storage-provisioner".into(), a.into());
            }
            h
        };
        let dynamic = class("vnest.dev/hostpath", Some("Retain"));
        let cases = [
            (
                "provisioned by the class's provisioner",
                host(Some("vnest.dev/hostpath")),
                Some(&dynamic),
                Some("Retain"),
            ),
            (
                "class without a policy: Delete",
                host(Some("p")),
                Some(&class("p", None)),
                Some("Delete"),
            ),
            ("pre-created volume", host(None), Some(&dynamic), None),
            ("another provisioner", host(Some("other")), Some(&dynamic), None),
            ("class unknown", host(Some("vnest.dev/hostpath")), None, None),
        ];
        for (name, h, c, want) in cases {
            assert_eq!(provisioned_reclaim_policy(&h, c).as_deref(), want, "{name}");
        }
        let none = class(NO_PROVISIONER, Some("Retain"));
        assert_eq!(
            provisioned_reclaim_policy(&host(Some(NO_PROVISIONER)), Some(&none)),
            None
        );
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
        let pv = virtual_volume(&v, &h, &ClassMap::default(), None).expect("a volume");
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
