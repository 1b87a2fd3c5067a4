//! "Is this host object ours?" and "which virtual object is it a copy of?", for every kind:
//! the markers read together (see [`crate::markers`]), pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::TranslateCtx;
use super::queue::Key;
use crate::{markers, naming};

/// The key of the virtual object a host object of `kind` was made from.
pub fn host_key(kind: &str, meta: &ObjectMeta) -> Option<Key> {
    let kind_ok = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(markers::ANNOTATION_OBJECT_KIND))
        .is_none_or(|k| k == kind);
    let source = markers::source_of(meta)?;
    kind_ok.then(|| Key::new(source.namespace.unwrap_or_default(), source.name))
}

/// Whether a host object found under our name really is our copy of `key`.
pub fn is_ours(tc: &TranslateCtx, kind: &str, meta: &ObjectMeta) -> bool {
    markers::is_managed(meta, &tc.vcluster, kind, &tc.host_namespace, |s| {
        naming::host_name(&tc.vcluster, s.namespace.as_deref().unwrap_or_default(), &s.name)
    })
}
