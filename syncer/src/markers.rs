//! Our marks on host objects, and the pure rules built on them.
//!
//! Every label and annotation key vnest writes lives in this module, under the `vnest.dev/`
//! domain. The rules:
//! - **Ownership**: a host object is ours iff [`is_managed`] says so: right host namespace,
//!   our `managed-by` label, our `object-*` annotations, and a name that is exactly the host
//!   name of the virtual object the annotations point at. An object that merely has "our"
//!   name (the host's own, or another vcluster's) is never ours, so it is never updated or
//!   deleted by us.
//! - **Reserved keys**: tenant label/annotation keys in our domain (`vnest.dev/...` or a
//!   subdomain such as `x.vnest.dev/...`) are never copied verbatim, so a tenant can neither
//!   forge our markers nor match our own selectors. Labels are renamed to
//!   `vnest.dev/label-<hash>` ([`host_label_key`]); annotations are dropped.
//! - **Merging**: the virtual side wins for the keys it sets; keys added on the host side (by
//!   host controllers or webhooks) survive; a key deleted on the virtual side is deleted on the
//!   host. To tell "deleted on the virtual side" from "added on the host side", the keys that
//!   came from the virtual object are recorded on the host object
//!   ([`ANNOTATION_MANAGED_ANNOTATIONS`], [`ANNOTATION_MANAGED_LABELS`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::naming::{safe_label_value, short_hash};

/// Our domain: the prefix part of every key we own (and of the keys we reserve).
pub const DOMAIN: &str = "vnest.dev";

/// Prefix of every key we write. Tenant keys with this prefix (or in a subdomain of
/// [`DOMAIN`]) are reserved: see [`is_reserved_key`].
pub const RESERVED_PREFIX: &str = "vnest.dev/";

/// Label on every host object we manage; value: the vcluster name (through
/// [`safe_label_value`]). Host watches select on it: see [`selector`].
pub const LABEL_MANAGED_BY: &str = "vnest.dev/managed-by";

/// Label with the virtual namespace of the source object (namespaced kinds only), so a host
/// selector can be scoped to one virtual namespace.
pub const LABEL_NAMESPACE: &str = "vnest.dev/namespace";

/// Prefix of the per-virtual-namespace-label keys: see [`namespace_label_key`].
pub const LABEL_NS_LABEL_PREFIX: &str = "vnest.dev/ns-";

/// Prefix of the host keys of tenant labels in our domain: see [`host_label_key`].
pub const LABEL_RESERVED_KEY_PREFIX: &str = "vnest.dev/label-";

/// Annotation with the name of the virtual source object.
pub const ANNOTATION_OBJECT_NAME: &str = "vnest.dev/object-name";

/// Annotation with the namespace of the virtual source object (absent for cluster-scoped kinds).
pub const ANNOTATION_OBJECT_NAMESPACE: &str = "vnest.dev/object-namespace";

/// Annotation with the UID of the virtual source object.
pub const ANNOTATION_OBJECT_UID: &str = "vnest.dev/object-uid";

/// Annotation with the kind of the virtual source object (e.g. `Pod`), so two kinds that share
/// a host name space (none today, but cheap to rule out) are never confused.
pub const ANNOTATION_OBJECT_KIND: &str = "vnest.dev/object-kind";

/// Annotation listing the annotation keys that came from the virtual object: sorted,
/// newline-separated; absent when there are none. Written by [`merge_annotations`].
pub const ANNOTATION_MANAGED_ANNOTATIONS: &str = "vnest.dev/managed-annotations";

/// Annotation listing the (host) label keys that came from the virtual object: sorted,
/// newline-separated; absent when there are none. Written by [`merge_labels`].
pub const ANNOTATION_MANAGED_LABELS: &str = "vnest.dev/managed-labels";

// Keys of single kinds (and of the Service CIDR detection).

/// Annotation on the host pod: the virtual labels in the kubelet's downward-API format
/// (sorted lines `key="<escaped value>"` joined by '\n'), target of `metadata.labels` fieldRefs.
pub const ANNOTATION_VIRTUAL_LABELS: &str = "vnest.dev/labels";

/// Annotation: the virtual ServiceAccount name (target of `spec.serviceAccountName` fieldRefs).
pub const ANNOTATION_SERVICE_ACCOUNT: &str = "vnest.dev/service-account-name";

/// Annotation on the host pod: JSON array of the virtual pod's ownerReferences (when any).
pub const ANNOTATION_OWNER_REFERENCES: &str = "vnest.dev/owner-references";

/// Prefix of the host pod annotations holding ServiceAccount tokens (see
/// `resources::pods::translate::token_annotation`).
pub const TOKEN_ANNOTATION_PREFIX: &str = "vnest.dev/token-";

/// When the token Secret's tokens must be renewed (RFC 3339), like the kubelet: at 80% of the
/// token's lifetime.
pub const ANNOTATION_TOKEN_REFRESH_AT: &str = "vnest.dev/token-refresh-at";

/// `object-kind` of the token Secrets: they belong to the pod kind, not to the Secret kind.
pub const TOKEN_SECRET_KIND: &str = "PodToken";

/// Label on every virtual Node the syncer made (and may therefore delete).
pub const LABEL_VIRTUAL_NODE: &str = "vnest.dev/node";

/// Label on every virtual PersistentVolume the syncer made for a bound claim (and may therefore
/// delete), with value [`VIRTUAL_VOLUME_VALUE`].
pub const LABEL_VIRTUAL_VOLUME: &str = "vnest.dev/volume";
pub const VIRTUAL_VOLUME_VALUE: &str = "true";

/// On a virtual StorageClass copied from the host (`--sync-storageclasses`), with value
/// [`HOST_STORAGE_CLASS_VALUE`]. Classes without it are the tenant's and never touched.
pub const LABEL_HOST_STORAGE_CLASS: &str = "vnest.dev/host-storageclass";
pub const HOST_STORAGE_CLASS_VALUE: &str = "true";

/// Annotation on a virtual copy of a host Event: `<host event uid> <fingerprint hash>`.
pub const ANNOTATION_HOST_EVENT: &str = "vnest.dev/host-event";

/// Annotation on the vcluster's host Service caching the detected CIDR(s), e.g. `10.96.0.0/12`.
/// Delete it to force a new detection (the host's range changed).
pub const ANNOTATION_SERVICE_CIDR: &str = "vnest.dev/service-cidr";

/// Annotation on a VIRTUAL object: the labels mirrored into it from its host copy (keys a host
/// controller added), as a JSON object `{key: value as mirrored}`; absent when there are none.
/// Written by [`mirror_back`]; what it lists is never copied down again.
pub const ANNOTATION_HOST_LABELS: &str = "vnest.dev/host-labels";

/// Like [`ANNOTATION_HOST_LABELS`], for annotations.
pub const ANNOTATION_HOST_ANNOTATIONS: &str = "vnest.dev/host-annotations";

/// Label on Service CIDR probe Services; its value is unique per detection run (used to find
/// leftovers of a create whose answer was lost).
pub const LABEL_PROBE_RUN: &str = "vnest.dev/cidr-probe-run";

/// The virtual object a host object was copied from, as recorded by [`mark`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Virtual namespace; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Virtual name.
    pub name: String,
    /// Virtual UID (empty if it was not recorded).
    pub uid: String,
}

/// Label selector string that selects the host objects of vcluster `vcluster`:
/// `vnest.dev/managed-by=<vcluster>`.
pub fn selector(vcluster: &str) -> String {
    format!("{LABEL_MANAGED_BY}={}", safe_label_value(vcluster))
}

/// True iff `key` (a label or annotation key) is reserved for vnest: its prefix (the part
/// before `/`) is [`DOMAIN`] or a subdomain of it. Keys without a prefix are never reserved.
pub fn is_reserved_key(key: &str) -> bool {
    in_domain(key, DOMAIN)
}

/// Kubernetes' own label domains. Host objects that are not vnest's select pods on such keys
/// (a StatefulSet's per-pod Service on `statefulset.kubernetes.io/pod-name`, a host
/// PodDisruptionBudget or NetworkPolicy on `app.kubernetes.io/name`, ...).
pub const KUBERNETES_DOMAINS: &[&str] = &["kubernetes.io", "k8s.io"];

/// True iff `key`'s prefix (the part before `/`) is `domain` or a subdomain of it.
fn in_domain(key: &str, domain: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let prefix = prefix.to_ascii_lowercase();
    prefix == domain || prefix.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.'))
}

/// True iff tenant label `key` is renamed on the host ([`host_label_key`]): a key of ours (a
/// tenant must not forge our markers) or of Kubernetes' own domains ([`KUBERNETES_DOMAINS`]:
/// host objects that are not vnest's must never select tenant pods by them). Selectors of the
/// objects we sync (Services, NetworkPolicies, PodDisruptionBudgets, affinity and topology
/// spread) go through the same rule, so the tenant's own selectors still match.
pub fn is_translated_label_key(key: &str) -> bool {
    is_reserved_key(key) || KUBERNETES_DOMAINS.iter().any(|d| in_domain(key, d))
}

/// Host label key carrying the virtual namespace's label `key` on pods of vcluster `vcluster`:
/// `vnest.dev/ns-<short_hash(vcluster, key)>` (a valid label key: the name part is 13
/// characters). Not reversible on its own: keep the virtual key when you need it back.
pub fn namespace_label_key(vcluster: &str, key: &str) -> String {
    format!("{LABEL_NS_LABEL_PREFIX}{}", short_hash(&[vcluster, key]))
}

/// Reads the virtual source recorded by [`mark`]; `None` unless the
/// [`ANNOTATION_OBJECT_NAME`] annotation is present and non-empty. An empty namespace
/// annotation reads as `None`; a missing UID reads as `""`.
pub fn source_of(meta: &ObjectMeta) -> Option<Source> {
    let annotations = meta.annotations.as_ref()?;
    let name = non_empty(annotations, ANNOTATION_OBJECT_NAME)?;
    Some(Source {
        namespace: non_empty(annotations, ANNOTATION_OBJECT_NAMESPACE).map(str::to_owned),
        name: name.to_owned(),
        uid: non_empty(annotations, ANNOTATION_OBJECT_UID)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// True iff the host object `meta` of kind `kind` is managed by vcluster `vcluster` running in
/// `host_namespace`, i.e. ALL of:
/// - it lives in `host_namespace`;
/// - its [`LABEL_MANAGED_BY`] label is `vcluster`;
/// - it records a source ([`source_of`] is `Some`);
/// - its [`ANNOTATION_OBJECT_KIND`] annotation, if present, is `kind`;
/// - its name is exactly `expected_host_name(&source)` (e.g. [`crate::naming::host_name`] of
///   the recorded source), so copied or hand-edited markers on some other object do not count.
///
/// A host object with our name but without our markers (the host's own, or another
/// vcluster's) is NOT managed: never touch it.
pub fn is_managed(
    meta: &ObjectMeta,
    vcluster: &str,
    kind: &str,
    host_namespace: &str,
    expected_host_name: impl Fn(&Source) -> String,
) -> bool {
    let in_namespace = meta.namespace.as_deref() == Some(host_namespace);
    let ours = label(meta, LABEL_MANAGED_BY) == Some(safe_label_value(vcluster).as_str());
    let kind_matches = annotation(meta, ANNOTATION_OBJECT_KIND).is_none_or(|k| k == kind);
    in_namespace
        && ours
        && kind_matches
        && source_of(meta)
            .is_some_and(|source| meta.name.as_deref() == Some(expected_host_name(&source).as_str()))
}

/// Marks the host object `meta` as vcluster `vcluster`'s copy of the virtual `kind` object
/// `source`: sets [`LABEL_MANAGED_BY`], [`LABEL_NAMESPACE`] (removed when `source.namespace` is
/// `None`) and the `object-*` annotations ([`ANNOTATION_OBJECT_NAMESPACE`] likewise removed
/// when `None`). Other labels and annotations are left alone.
pub fn mark(meta: &mut ObjectMeta, vcluster: &str, kind: &str, source: &Source) {
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(LABEL_MANAGED_BY.to_owned(), safe_label_value(vcluster));
    set_or_remove(
        labels,
        LABEL_NAMESPACE,
        source.namespace.as_deref().map(safe_label_value),
    );

    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(ANNOTATION_OBJECT_NAME.to_owned(), source.name.clone());
    set_or_remove(annotations, ANNOTATION_OBJECT_NAMESPACE, source.namespace.clone());
    annotations.insert(ANNOTATION_OBJECT_UID.to_owned(), source.uid.clone());
    annotations.insert(ANNOTATION_OBJECT_KIND.to_owned(), kind.to_owned());
}

/// Host key of the tenant label `key` of vcluster `vcluster`.
///
/// Rule: keys are kept verbatim, except those [`is_translated_label_key`] names (our domain and
/// Kubernetes' own): they become `vnest.dev/label-<short_hash(vcluster, key)>`, which cannot
/// equal any of our marker keys nor be selected by a host object that is not ours.
/// Translating back needs the virtual key: see [`to_virtual_labels`].
pub fn host_label_key(vcluster: &str, key: &str) -> String {
    if is_translated_label_key(key) {
        format!("{LABEL_RESERVED_KEY_PREFIX}{}", short_hash(&[vcluster, key]))
    } else {
        key.to_owned()
    }
}

/// The tenant labels `virtual_labels` as host labels: every key through [`host_label_key`],
/// values verbatim (they are already valid label values). Adds no markers: see [`mark`].
pub fn to_host_labels(vcluster: &str, virtual_labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    virtual_labels
        .iter()
        .map(|(key, value)| (host_label_key(vcluster, key), value.clone()))
        .collect()
}

/// The host labels `host_labels` as tenant labels (the inverse of [`to_host_labels`]).
///
/// Rule: keys outside our domain are kept verbatim. Keys in our domain are dropped (our
/// markers, [`namespace_label_key`] labels, anything else of ours), EXCEPT a
/// `vnest.dev/label-<hash>` key that is the [`host_label_key`] of a reserved key of
/// `virtual_hint` (the known virtual labels): it is mapped back to that key. Without a hint,
/// hashed reserved keys cannot be reversed and are dropped.
pub fn to_virtual_labels(
    vcluster: &str,
    host_labels: &BTreeMap<String, String>,
    virtual_hint: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let reverse: BTreeMap<String, &str> = virtual_hint
        .into_iter()
        .flat_map(BTreeMap::keys)
        .filter(|key| is_translated_label_key(key))
        .map(|key| (host_label_key(vcluster, key), key.as_str()))
        .collect();
    host_labels
        .iter()
        .filter_map(|(key, value)| {
            let virtual_key = if is_reserved_key(key) {
                (*reverse.get(key)?).to_owned()
            } else {
                key.clone()
            };
            Some((virtual_key, value.clone()))
        })
        .collect()
}

/// New host annotations from the virtual annotations `virtual_` and the current host
/// annotations `host`.
///
/// Rule: the result holds
/// - every virtual key that is neither in `excluded` nor reserved ([`is_reserved_key`]); these
///   keys are the new managed list, written (sorted, newline-separated) into
///   [`ANNOTATION_MANAGED_ANNOTATIONS`], which is omitted when the list is empty;
/// - every host key that is in `excluded`, or reserved (our own marks, except the managed list
///   itself, which is recomputed), or in neither the previous managed list (read from the
///   host's [`ANNOTATION_MANAGED_ANNOTATIONS`]) nor the new one (added on the host side).
///
/// So the virtual side wins for the keys it sets, host-side additions and excluded keys keep
/// their host values, and a key deleted on the virtual side disappears from the host.
pub fn merge_annotations(
    virtual_: &BTreeMap<String, String>,
    host: &BTreeMap<String, String>,
    excluded: &[&str],
) -> BTreeMap<String, String> {
    let desired: BTreeMap<String, String> = virtual_
        .iter()
        .filter(|(key, _)| !excluded.contains(&key.as_str()) && !is_reserved_key(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let previous = managed_list(host.get(ANNOTATION_MANAGED_ANNOTATIONS));
    let host_owned = |key: &str| {
        key != ANNOTATION_MANAGED_ANNOTATIONS && (excluded.contains(&key) || is_reserved_key(key))
    };
    let (mut merged, managed) = merge_managed(desired, host, &previous, host_owned);
    set_or_remove(
        &mut merged,
        ANNOTATION_MANAGED_ANNOTATIONS,
        format_managed_list(&managed),
    );
    merged
}

/// Result of [`merge_labels`]: the new host labels, and the host annotations with
/// [`ANNOTATION_MANAGED_LABELS`] updated (nothing else changed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MergedLabels {
    /// New host labels.
    pub labels: BTreeMap<String, String>,
    /// The input host annotations with the managed label list updated.
    pub annotations: BTreeMap<String, String>,
}

/// New host labels from the tenant labels `virtual_labels` and the current host labels, with
/// the managed list kept in the host annotations (labels cannot hold it).
///
/// Rule (as [`merge_annotations`], on host keys): the result holds
/// - [`to_host_labels`] of every virtual label whose key is not in `excluded` (reserved tenant
///   keys arrive hashed); their host keys are the new managed list, written into
///   [`ANNOTATION_MANAGED_LABELS`] of the returned annotations (removed when empty);
/// - every host label whose key is in `excluded`, or one of our markers ([`LABEL_MANAGED_BY`],
///   [`LABEL_NAMESPACE`], [`namespace_label_key`] labels), or in neither the previous managed
///   list (read from `host_annotations`) nor the new one (added on the host side).
///
/// Keys in `excluded` are compared verbatim on both sides. Call [`mark`] afterwards to
/// (re)set the markers. Order with [`merge_annotations`] does not matter: it keeps
/// [`ANNOTATION_MANAGED_LABELS`] as one of our own marks.
pub fn merge_labels(
    vcluster: &str,
    virtual_labels: &BTreeMap<String, String>,
    host_labels: &BTreeMap<String, String>,
    host_annotations: &BTreeMap<String, String>,
    excluded: &[&str],
) -> MergedLabels {
    let kept: BTreeMap<String, String> = virtual_labels
        .iter()
        .filter(|(key, _)| !excluded.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let desired = to_host_labels(vcluster, &kept);
    let previous = managed_list(host_annotations.get(ANNOTATION_MANAGED_LABELS));
    let host_owned = |key: &str| excluded.contains(&key) || is_marker_label_key(key);
    let (labels, managed) = merge_managed(desired, host_labels, &previous, host_owned);
    let mut annotations = host_annotations.clone();
    set_or_remove(
        &mut annotations,
        ANNOTATION_MANAGED_LABELS,
        format_managed_list(&managed),
    );
    MergedLabels { labels, annotations }
}

/// True iff `key` is one of the labels [`mark`] (or the pod syncer) sets.
fn is_marker_label_key(key: &str) -> bool {
    key == LABEL_MANAGED_BY || key == LABEL_NAMESPACE || key.starts_with(LABEL_NS_LABEL_PREFIX)
}

/// Core of both merges: host entries that are `host_owned` or unknown to both managed lists,
/// overlaid with `desired` (virtual wins). Returns the merge and the new managed key set.
fn merge_managed(
    desired: BTreeMap<String, String>,
    host: &BTreeMap<String, String>,
    previous: &BTreeSet<String>,
    host_owned: impl Fn(&str) -> bool,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let managed: BTreeSet<String> = desired.keys().cloned().collect();
    let mut merged: BTreeMap<String, String> = host
        .iter()
        .filter(|(key, _)| host_owned(key) || (!previous.contains(*key) && !managed.contains(*key)))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    merged.extend(desired);
    (merged, managed)
}

/// Parses a managed list annotation value (newline-separated keys; blank lines ignored).
fn managed_list(value: Option<&String>) -> BTreeSet<String> {
    value
        .map(|v| {
            v.lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Formats a managed list (sorted, newline-separated); `None` when empty.
fn format_managed_list(keys: &BTreeSet<String>) -> Option<String> {
    (!keys.is_empty()).then(|| keys.iter().cloned().collect::<Vec<_>>().join("\n"))
}

/// Inserts `key` = `value` when `Some`, removes `key` when `None`.
fn set_or_remove(map: &mut BTreeMap<String, String>, key: &str, value: Option<String>) {
    match value {
        Some(value) => {
            map.insert(key.to_owned(), value);
        }
        None => {
            map.remove(key);
        }
    }
}

/// The value of `key` in `map` when present and non-empty.
fn non_empty<'a>(map: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    map.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// The label `key` of `meta`, if any.
fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The annotation `key` of `meta`, if any.
fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The host-origin entries recorded in annotation `key` of a virtual object (empty when absent
/// or unreadable).
pub fn host_origin(
    virtual_annotations: Option<&BTreeMap<String, String>>,
    key: &str,
) -> BTreeMap<String, String> {
    virtual_annotations
        .and_then(|a| a.get(key))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// `virtual_` without the entries that came from the host and are still as mirrored (they
/// are the host's: never copied down, or a host removal would be undone).
pub fn without_host_origin(
    virtual_: &BTreeMap<String, String>,
    recorded: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    virtual_
        .iter()
        .filter(|(k, v)| recorded.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The entries of host map `host` a host controller added: not copied from the virtual object
/// (`managed`, the host's managed list) and not in our domain.
pub fn host_added(host: &BTreeMap<String, String>, managed: Option<&String>) -> BTreeMap<String, String> {
    let managed = managed_list(managed);
    host.iter()
        .filter(|(k, _)| !managed.contains(*k) && !is_reserved_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Host-added entries mirrored into a virtual map (labels or annotations). Rules, per key:
/// - the tenant's keys win: a key the virtual object has that is not recorded as mirrored, or
///   whose value the tenant changed since, is left alone (and is no longer the host's);
/// - a key the host added is set on the virtual side (and recorded with its value);
/// - a recorded key the host removed is removed on the virtual side (only if still as
///   mirrored); nothing else is ever removed.
///
/// Returns the desired virtual map and the new record.
pub fn mirror_back(
    virtual_: &BTreeMap<String, String>,
    recorded: &BTreeMap<String, String>,
    host_added: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut out = virtual_.clone();
    let mut record = BTreeMap::new();
    let mirrored = |k: &str| virtual_.get(k).is_some_and(|v| recorded.get(k) == Some(v));
    for (k, _) in recorded.iter().filter(|(k, _)| mirrored(k)) {
        if !host_added.contains_key(k) {
            out.remove(k);
        }
    }
    for (k, v) in host_added {
        if virtual_.contains_key(k) && !mirrored(k) {
            continue; // the tenant's
        }
        out.insert(k.clone(), v.clone());
        record.insert(k.clone(), v.clone());
    }
    (out, record)
}

#[cfg(test)]
mod mirror_tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn host_added_keys_are_mirrored_back_without_fights() {
        // (virtual, recorded, host-added) -> (desired virtual, record)
        let cases = [
            (
                "added",
                m(&[("app", "a")]),
                m(&[]),
                m(&[("team", "x")]),
                m(&[("app", "a"), ("team", "x")]),
                m(&[("team", "x")]),
            ),
            (
                "changed on the host",
                m(&[("team", "x")]),
                m(&[("team", "x")]),
                m(&[("team", "y")]),
                m(&[("team", "y")]),
                m(&[("team", "y")]),
            ),
            (
                "removed on the host",
                m(&[("app", "a"), ("team", "x")]),
                m(&[("team", "x")]),
                m(&[]),
                m(&[("app", "a")]),
                m(&[]),
            ),
            (
                "the tenant's own key wins",
                m(&[("team", "mine")]),
                m(&[]),
                m(&[("team", "x")]),
                m(&[("team", "mine")]),
                m(&[]),
            ),
            (
                "the tenant changed a mirrored key",
                m(&[("team", "mine")]),
                m(&[("team", "x")]),
                m(&[("team", "x")]),
                m(&[("team", "mine")]),
                m(&[]),
            ),
            (
                "the tenant's key is never removed",
                m(&[("app", "a")]),
                m(&[]),
                m(&[]),
                m(&[("app", "a")]),
                m(&[]),
            ),
        ];
        for (name, v, rec, added, want, want_rec) in cases {
            assert_eq!(mirror_back(&v, &rec, &added), (want, want_rec), "{name}");
        }
        // What is mirrored is not copied down again; what the tenant changed is.
        assert_eq!(
            without_host_origin(&m(&[("app", "a"), ("team", "x")]), &m(&[("team", "x")])),
            m(&[("app", "a")])
        );
        // Host-added: neither copied from the virtual side nor ours.
        let host = m(&[("app", "a"), ("team", "x"), (LABEL_MANAGED_BY, "vc")]);
        assert_eq!(host_added(&host, Some(&"app".to_owned())), m(&[("team", "x")]));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use crate::naming::host_name;
    use proptest::prelude::*;
    use rstest::rstest;

    const VC: &str = "demo";
    const HOST_NS: &str = "team-a";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn source() -> Source {
        Source {
            namespace: Some("default".to_owned()),
            name: "web-0".to_owned(),
            uid: "uid-1".to_owned(),
        }
    }

    fn expected(source: &Source) -> String {
        host_name(VC, source.namespace.as_deref().unwrap_or_default(), &source.name)
    }

    /// A host pod as we would create it.
    fn ours() -> ObjectMeta {
        let mut meta = ObjectMeta {
            name: Some(expected(&source())),
            namespace: Some(HOST_NS.to_owned()),
            ..ObjectMeta::default()
        };
        mark(&mut meta, VC, "Pod", &source());
        meta
    }

    #[test]
    fn selector_selects_managed_by() {
        assert_eq!(selector("demo"), "vnest.dev/managed-by=demo");
    }

    #[test]
    fn mark_sets_markers_and_source_round_trips() {
        let meta = ours();
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], VC);
        assert_eq!(labels[LABEL_NAMESPACE], "default");
        let annotations = meta.annotations.clone().unwrap();
        assert_eq!(annotations[ANNOTATION_OBJECT_KIND], "Pod");
        assert_eq!(source_of(&meta), Some(source()));
    }

    #[test]
    fn mark_for_cluster_scoped_source_removes_namespace_marks() {
        let mut meta = ours();
        let cluster_scoped = Source {
            namespace: None,
            ..source()
        };
        mark(&mut meta, VC, "PersistentVolume", &cluster_scoped);
        assert!(!meta.labels.clone().unwrap().contains_key(LABEL_NAMESPACE));
        assert!(
            !meta
                .annotations
                .clone()
                .unwrap()
                .contains_key(ANNOTATION_OBJECT_NAMESPACE)
        );
        assert_eq!(source_of(&meta), Some(cluster_scoped));
    }

    #[test]
    fn mark_keeps_other_labels_and_annotations() {
        let mut meta = ObjectMeta {
            labels: Some(map(&[("app", "web")])),
            annotations: Some(map(&[("note", "x")])),
            ..ObjectMeta::default()
        };
        mark(&mut meta, VC, "Pod", &source());
        assert_eq!(meta.labels.unwrap()["app"], "web");
        assert_eq!(meta.annotations.unwrap()["note"], "x");
    }

    #[rstest]
    #[case::no_annotations(None, None)]
    #[case::empty_name(Some(map(&[(ANNOTATION_OBJECT_NAME, "")])), None)]
    #[case::name_only(
        Some(map(&[(ANNOTATION_OBJECT_NAME, "a")])),
        Some(Source { namespace: None, name: "a".to_owned(), uid: String::new() })
    )]
    #[case::empty_namespace(
        Some(map(&[(ANNOTATION_OBJECT_NAME, "a"), (ANNOTATION_OBJECT_NAMESPACE, "")])),
        Some(Source { namespace: None, name: "a".to_owned(), uid: String::new() })
    )]
    #[case::full(
        Some(map(&[
            (ANNOTATION_OBJECT_NAME, "a"),
            (ANNOTATION_OBJECT_NAMESPACE, "ns"),
            (ANNOTATION_OBJECT_UID, "u"),
        ])),
        Some(Source { namespace: Some("ns".to_owned()), name: "a".to_owned(), uid: "u".to_owned() })
    )]
    fn source_of_reads_annotations(
        #[case] annotations: Option<BTreeMap<String, String>>,
        #[case] want: Option<Source>,
    ) {
        let meta = ObjectMeta {
            annotations,
            ..ObjectMeta::default()
        };
        assert_eq!(source_of(&meta), want);
    }

    #[rstest]
    #[case::ours(ours(), "Pod", true)]
    #[case::other_kind(ours(), "ConfigMap", false)]
    #[case::kind_annotation_absent(
        { let mut m = ours(); m.annotations.as_mut().unwrap().remove(ANNOTATION_OBJECT_KIND); m },
        "ConfigMap",
        true
    )]
    #[case::other_host_namespace(
        ObjectMeta { namespace: Some("elsewhere".to_owned()), ..ours() },
        "Pod",
        false
    )]
    #[case::no_namespace(ObjectMeta { namespace: None, ..ours() }, "Pod", false)]
    #[case::another_vclusters(
        { let mut m = ours(); mark(&mut m, "other", "Pod", &source()); m },
        "Pod",
        false
    )]
    #[case::unmarked_with_our_name(
        ObjectMeta { labels: None, annotations: None, ..ours() },
        "Pod",
        false
    )]
    #[case::label_but_no_source(ObjectMeta { annotations: None, ..ours() }, "Pod", false)]
    #[case::source_but_no_label(ObjectMeta { labels: None, ..ours() }, "Pod", false)]
    #[case::markers_copied_to_another_name(
        ObjectMeta { name: Some("copy".to_owned()), ..ours() },
        "Pod",
        false
    )]
    #[case::source_points_elsewhere(
        { let mut m = ours(); mark(&mut m, VC, "Pod", &Source { name: "web-1".to_owned(), ..source() }); m },
        "Pod",
        false
    )]
    fn is_managed_rules(#[case] meta: ObjectMeta, #[case] kind: &str, #[case] want: bool) {
        assert_eq!(is_managed(&meta, VC, kind, HOST_NS, expected), want);
    }

    #[rstest]
    #[case::plain("app", false)]
    #[case::other_domain("example.com/app", false)]
    #[case::ours("vnest.dev/managed-by", true)]
    #[case::ours_any_name("vnest.dev/whatever", true)]
    #[case::ours_uppercase("VNEST.dev/x", true)]
    #[case::subdomain("team.vnest.dev/x", true)]
    #[case::look_alike("notvnest.dev/x", false)]
    #[case::bare_domain_as_name("vnest.dev", false)]
    fn reserved_keys(#[case] key: &str, #[case] reserved: bool) {
        assert_eq!(is_reserved_key(key), reserved);
    }

    #[rstest]
    #[case::plain("app", false)]
    #[case::other_domain("example.com/app", false)]
    #[case::ours("vnest.dev/x", true)]
    #[case::kubernetes("kubernetes.io/os", true)]
    #[case::statefulset_pod_name("statefulset.kubernetes.io/pod-name", true)]
    #[case::pod_index("apps.kubernetes.io/pod-index", true)]
    #[case::recommended_app_label("app.kubernetes.io/name", true)]
    #[case::k8s_io("k8s.io/x", true)]
    #[case::k8s_io_subdomain("node.k8s.io/x", true)]
    #[case::uppercase("Statefulset.Kubernetes.io/pod-name", true)]
    #[case::look_alike("notkubernetes.io/x", false)]
    #[case::look_alike_k8s("myk8s.io/x", false)]
    #[case::domain_as_name("kubernetes.io", false)]
    fn translated_label_keys(#[case] key: &str, #[case] translated: bool) {
        assert_eq!(is_translated_label_key(key), translated);
        assert_eq!(host_label_key(VC, key) != key, translated);
    }

    #[test]
    fn kubernetes_keys_round_trip_with_hint() {
        let labels: BTreeMap<String, String> = [
            ("statefulset.kubernetes.io/pod-name", "web-0"),
            ("apps.kubernetes.io/pod-index", "0"),
            ("app", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let host = to_host_labels(VC, &labels);
        assert!(!host.contains_key("statefulset.kubernetes.io/pod-name"));
        assert_eq!(host.get("app").map(String::as_str), Some("web"));
        assert_eq!(to_virtual_labels(VC, &host, Some(&labels)), labels);
    }

    #[rstest]
    #[case::plain("app")]
    #[case::other_domain("example.com/app")]
    #[case::look_alike("notvnest.dev/x")]
    fn host_label_key_keeps_tenant_keys(#[case] key: &str) {
        assert_eq!(host_label_key(VC, key), key);
    }

    #[rstest]
    #[case::forged_marker(LABEL_MANAGED_BY)]
    #[case::forged_namespace(LABEL_NAMESPACE)]
    #[case::subdomain("team.vnest.dev/x")]
    fn host_label_key_hashes_reserved_keys(#[case] key: &str) {
        let host = host_label_key(VC, key);
        assert_eq!(
            host,
            format!("{LABEL_RESERVED_KEY_PREFIX}{}", short_hash(&[VC, key]))
        );
        assert!(!is_marker_label_key(&host));
        assert_ne!(host, host_label_key("other", key));
        let (_, name) = host.split_once('/').unwrap();
        assert!(name.len() <= 63);
    }

    #[test]
    fn namespace_label_key_is_a_short_key_in_our_domain() {
        let key = namespace_label_key(VC, "kubernetes.io/metadata.name");
        assert!(key.starts_with(LABEL_NS_LABEL_PREFIX));
        assert_eq!(key.split_once('/').unwrap().1.len(), 13);
        assert_ne!(key, namespace_label_key("other", "kubernetes.io/metadata.name"));
    }

    #[test]
    fn reserved_labels_round_trip_with_hint() {
        let virtual_labels = map(&[("app", "web"), (LABEL_MANAGED_BY, "forged")]);
        let mut host = to_host_labels(VC, &virtual_labels);
        assert_eq!(host["app"], "web");
        assert!(!host.contains_key(LABEL_MANAGED_BY));
        // Our marks on top, as the syncer writes them.
        host.insert(LABEL_MANAGED_BY.to_owned(), VC.to_owned());
        host.insert(LABEL_NAMESPACE.to_owned(), "default".to_owned());
        host.insert(namespace_label_key(VC, "team"), "a".to_owned());
        host.insert("host-added".to_owned(), "1".to_owned());

        let back = to_virtual_labels(VC, &host, Some(&virtual_labels));
        let mut want = virtual_labels.clone();
        want.insert("host-added".to_owned(), "1".to_owned());
        assert_eq!(back, want);
    }

    #[test]
    fn hashed_reserved_labels_are_dropped_without_hint() {
        let virtual_labels = map(&[("app", "web"), ("vnest.dev/x", "y")]);
        let host = to_host_labels(VC, &virtual_labels);
        assert_eq!(to_virtual_labels(VC, &host, None), map(&[("app", "web")]));
        // A hint from another vcluster does not match either.
        let other = to_host_labels("other", &virtual_labels);
        assert_eq!(
            to_virtual_labels(VC, &other, Some(&virtual_labels)),
            map(&[("app", "web")])
        );
    }

    const EXCLUDED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
    const MA: &str = ANNOTATION_MANAGED_ANNOTATIONS;

    #[rstest]
    #[case::first_sync(
        map(&[("a", "1")]),
        map(&[]),
        map(&[("a", "1"), (MA, "a")])
    )]
    #[case::virtual_add(
        map(&[("a", "1"), ("b", "2")]),
        map(&[("a", "1"), (MA, "a")]),
        map(&[("a", "1"), ("b", "2"), (MA, "a\nb")])
    )]
    #[case::virtual_change(
        map(&[("a", "2")]),
        map(&[("a", "1"), (MA, "a")]),
        map(&[("a", "2"), (MA, "a")])
    )]
    #[case::virtual_delete(
        map(&[("b", "2")]),
        map(&[("a", "1"), ("b", "2"), (MA, "a\nb")]),
        map(&[("b", "2"), (MA, "b")])
    )]
    #[case::virtual_delete_last_removes_list(
        map(&[]),
        map(&[("a", "1"), (MA, "a")]),
        map(&[])
    )]
    #[case::host_added_key_survives(
        map(&[("a", "1")]),
        map(&[("a", "1"), ("webhook/injected", "yes"), (MA, "a")]),
        map(&[("a", "1"), ("webhook/injected", "yes"), (MA, "a")])
    )]
    #[case::virtual_takes_over_host_key(
        map(&[("shared", "virtual")]),
        map(&[("shared", "host")]),
        map(&[("shared", "virtual"), (MA, "shared")])
    )]
    #[case::excluded_kept_from_host(
        map(&[(LAST_APPLIED, "virtual"), ("a", "1")]),
        map(&[(LAST_APPLIED, "host"), (MA, "a")]),
        map(&[(LAST_APPLIED, "host"), ("a", "1"), (MA, "a")])
    )]
    #[case::excluded_not_copied(
        map(&[(LAST_APPLIED, "virtual")]),
        map(&[]),
        map(&[])
    )]
    #[case::our_marks_kept(
        map(&[("a", "1")]),
        map(&[(ANNOTATION_OBJECT_NAME, "web-0"), (ANNOTATION_MANAGED_LABELS, "app")]),
        map(&[(ANNOTATION_OBJECT_NAME, "web-0"), (ANNOTATION_MANAGED_LABELS, "app"), ("a", "1"), (MA, "a")])
    )]
    #[case::tenant_cannot_forge_our_marks(
        map(&[(ANNOTATION_OBJECT_NAME, "forged"), (MA, "forged"), ("team.vnest.dev/x", "1")]),
        map(&[(ANNOTATION_OBJECT_NAME, "web-0")]),
        map(&[(ANNOTATION_OBJECT_NAME, "web-0")])
    )]
    fn merge_annotations_rules(
        #[case] virtual_: BTreeMap<String, String>,
        #[case] host: BTreeMap<String, String>,
        #[case] want: BTreeMap<String, String>,
    ) {
        assert_eq!(merge_annotations(&virtual_, &host, EXCLUDED), want);
    }

    const ML: &str = ANNOTATION_MANAGED_LABELS;

    #[rstest]
    #[case::first_sync(
        map(&[("app", "web")]),
        map(&[]),
        map(&[]),
        map(&[("app", "web")]),
        Some("app")
    )]
    #[case::virtual_add_change_delete(
        map(&[("app", "api"), ("tier", "back")]),
        map(&[("app", "web"), ("old", "x")]),
        map(&[(ML, "app\nold")]),
        map(&[("app", "api"), ("tier", "back")]),
        Some("app\ntier")
    )]
    #[case::delete_last_removes_list(
        map(&[]),
        map(&[("app", "web")]),
        map(&[(ML, "app")]),
        map(&[]),
        None
    )]
    #[case::host_added_and_markers_survive(
        map(&[("app", "web")]),
        map(&[("app", "web"), ("istio.io/rev", "1"), (LABEL_MANAGED_BY, VC), (LABEL_NAMESPACE, "default")]),
        map(&[(ML, "app")]),
        map(&[("app", "web"), ("istio.io/rev", "1"), (LABEL_MANAGED_BY, VC), (LABEL_NAMESPACE, "default")]),
        Some("app")
    )]
    #[case::excluded_kept_from_host(
        map(&[("pod-template-hash", "virtual"), ("app", "web")]),
        map(&[("pod-template-hash", "host")]),
        map(&[]),
        map(&[("pod-template-hash", "host"), ("app", "web")]),
        Some("app")
    )]
    fn merge_labels_rules(
        #[case] virtual_labels: BTreeMap<String, String>,
        #[case] host_labels: BTreeMap<String, String>,
        #[case] host_annotations: BTreeMap<String, String>,
        #[case] want_labels: BTreeMap<String, String>,
        #[case] want_list: Option<&str>,
    ) {
        let merged = merge_labels(
            VC,
            &virtual_labels,
            &host_labels,
            &host_annotations,
            &["pod-template-hash"],
        );
        assert_eq!(merged.labels, want_labels);
        assert_eq!(merged.annotations.get(ML).map(String::as_str), want_list);
    }

    #[test]
    fn merge_labels_hashes_reserved_keys_and_drops_them_on_virtual_delete() {
        let forged = map(&[(LABEL_MANAGED_BY, "forged")]);
        let hashed = host_label_key(VC, LABEL_MANAGED_BY);
        let host_labels = map(&[(LABEL_MANAGED_BY, VC)]);

        let first = merge_labels(VC, &forged, &host_labels, &BTreeMap::new(), &[]);
        assert_eq!(first.labels[LABEL_MANAGED_BY], VC);
        assert_eq!(first.labels[&hashed], "forged");
        assert_eq!(first.annotations[ML], hashed);

        let second = merge_labels(VC, &BTreeMap::new(), &first.labels, &first.annotations, &[]);
        assert_eq!(second.labels, host_labels);
        assert!(!second.annotations.contains_key(ML));
    }

    #[test]
    fn merges_compose_in_either_order() {
        let virtual_annotations = map(&[("note", "x")]);
        let virtual_labels = map(&[("app", "web")]);
        let host_annotations = map(&[(ML, "old")]);
        let host_labels = map(&[("old", "1")]);

        let annotations = merge_annotations(&virtual_annotations, &host_annotations, &[]);
        let a = merge_labels(VC, &virtual_labels, &host_labels, &annotations, &[]);

        let b = merge_labels(VC, &virtual_labels, &host_labels, &host_annotations, &[]);
        let b_annotations = merge_annotations(&virtual_annotations, &b.annotations, &[]);

        assert_eq!(a.labels, b.labels);
        assert_eq!(a.annotations, b_annotations);
        assert_eq!(a.labels, map(&[("app", "web")]));
    }

    fn label_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,8}",
            "[a-z]{1,5}\\.io/[a-z]{1,5}",
            "vnest\\.dev/[a-z-]{1,10}",
            "[a-z]{1,4}\\.vnest\\.dev/[a-z]{1,4}",
        ]
    }

    proptest! {
        #[test]
        fn labels_round_trip_with_hint(
            labels in prop::collection::btree_map(label_key(), "[a-z0-9]{0,5}", 0..8)
        ) {
            let host = to_host_labels(VC, &labels);
            prop_assert_eq!(to_virtual_labels(VC, &host, Some(&labels)), labels);
        }

        #[test]
        fn merge_is_idempotent_and_follows_virtual(
            virtual_ in prop::collection::btree_map(label_key(), "[a-z0-9]{0,5}", 0..6),
            host in prop::collection::btree_map(label_key(), "[a-z0-9]{0,5}", 0..6),
        ) {
            let once = merge_annotations(&virtual_, &host, &[]);
            prop_assert_eq!(&merge_annotations(&virtual_, &once, &[]), &once);
            for (key, value) in virtual_.iter().filter(|(k, _)| !is_reserved_key(k)) {
                prop_assert_eq!(once.get(key), Some(value));
            }
            let labels = merge_labels(VC, &virtual_, &host, &BTreeMap::new(), &[]);
            let again = merge_labels(VC, &virtual_, &labels.labels, &labels.annotations, &[]);
            prop_assert_eq!(again, labels);
        }
    }
}
