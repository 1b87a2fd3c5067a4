//! What the cache of host pods keeps of a host pod.

use k8s_openapi::api::core::v1::Pod;

use crate::markers::{ANNOTATION_TOKEN_REFRESH_AT, TOKEN_ANNOTATION_PREFIX};

/// What the cache of HOST pods keeps (memory: a host pod is mostly fields nobody reads back).
/// Readers use the metadata, `status`, `spec.nodeName`, container names and images,
/// tolerations, scheduling gates, `activeDeadlineSeconds`, volumes and ephemeral container
/// names. Dropped: container env/command/args/probes/mounts/resources, affinity, DNS config,
/// host aliases, security contexts, and the VALUES of token annotations (their keys stay, so a
/// metadata diff never sees them missing; the server keeps the values).
pub fn trim_cached_host_pod(pod: &mut Pod) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        for (key, value) in annotations.iter_mut() {
            if key.starts_with(TOKEN_ANNOTATION_PREFIX) && key != ANNOTATION_TOKEN_REFRESH_AT {
                value.clear();
            }
        }
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.volume_mounts = None;
        c.volume_devices = None;
        c.liveness_probe = None;
        c.readiness_probe = None;
        c.startup_probe = None;
        c.lifecycle = None;
        c.resources = None;
        c.security_context = None;
        c.ports = None;
    }
    for c in spec.ephemeral_containers.iter_mut().flatten() {
        c.env = None;
        c.env_from = None;
        c.command = None;
        c.args = None;
        c.volume_mounts = None;
    }
    spec.affinity = None;
    spec.topology_spread_constraints = None;
    spec.dns_config = None;
    spec.host_aliases = None;
    spec.security_context = None;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testutil::*;
    use super::super::token_annotation;
    use super::*;

    #[test]
    fn a_trimmed_cached_host_pod_needs_no_patch_and_keeps_what_readers_use() {
        let v = sa_pod();
        let mut h = as_stored(translate(&v));
        h.metadata.annotations.get_or_insert_with(BTreeMap::new).extend([
            (
                token_annotation("kube-api-access-x7k2p.0"),
                "eyJ-secret".to_owned(),
            ),
            (
                ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
                "2026-01-01T00:00:00Z".to_owned(),
            ),
        ]);
        assert_eq!(patch_for(&v, &h), None);
        let mut trimmed = h.clone();
        trim_cached_host_pod(&mut trimmed);
        assert_eq!(
            patch_for(&v, &trimmed),
            None,
            "no patch from the trimmed view either"
        );
        let a = trimmed.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            a[&token_annotation("kube-api-access-x7k2p.0")],
            "",
            "token value dropped"
        );
        assert_eq!(a[ANNOTATION_TOKEN_REFRESH_AT], "2026-01-01T00:00:00Z");
        let spec = trimmed.spec.as_ref().unwrap();
        assert!(
            spec.containers
                .iter()
                .all(|c| c.env.is_none() && c.image.is_some())
        );
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.volumes, h.spec.as_ref().unwrap().volumes);
        assert_eq!(trimmed.status, h.status);
        assert!(serde_json::to_vec(&trimmed).unwrap().len() < serde_json::to_vec(&h).unwrap().len());
    }
}
