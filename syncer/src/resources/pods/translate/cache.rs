//! What the cache of host pods keeps of a host pod.

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodSpec};

use crate::markers::{ANNOTATION_TOKEN_REFRESH_AT, TOKEN_ANNOTATION_PREFIX};

/// What the cache of HOST pods keeps (memory: a host pod is mostly fields nobody reads back).
/// Readers use the metadata, `status`, `spec.nodeName`, container names and images,
/// tolerations, scheduling gates, `activeDeadlineSeconds`, volumes and ephemeral container
/// names. Dropped: container env/command/args/probes/mounts/resources, affinity, DNS config,
/// host aliases, security contexts, and the VALUES of token annotations (their keys stay, so a
/// metadata diff never sees them missing; the server keeps the values).
pub fn trim_cached_host_pod(pod: &mut Pod) {
    swap_uncached(pod, &mut Uncached::default());
}

/// The parts of a host pod its cache does not keep ([`trim_cached_host_pod`]), held outside
/// the pod: [`swap_uncached`] takes them out, and the same call with the same holder puts
/// them back. A watch event's pod is packed that way without copying it first (a copy of a
/// whole pod for each host pod event, to drop half of it, was allocator work in a burst).
#[derive(Default)]
pub struct Uncached {
    token_values: Vec<String>,
    containers: Vec<Container>,
    ephemeral_containers: Vec<EphemeralContainer>,
    spec: Option<Box<PodSpec>>,
}

/// Swaps the fields named after each `$field` between `$a` and `$b`.
macro_rules! swap_fields {
    ($a:expr, $b:expr, [$($field:ident),* $(,)?]) => {
        $(std::mem::swap(&mut $a.$field, &mut $b.$field);)*
    };
}

/// Swaps what the cache of host pods does not keep between `pod` and `held`: with an empty
/// `held`, the pod is left trimmed and `held` holds what was dropped; a second call with that
/// `held` gives the pod back whole.
pub fn swap_uncached(pod: &mut Pod, held: &mut Uncached) {
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        let token_values = annotations
            .iter_mut()
            .filter(|(key, _)| {
                key.starts_with(TOKEN_ANNOTATION_PREFIX) && *key != ANNOTATION_TOKEN_REFRESH_AT
            })
            .map(|(_, value)| value);
        for (i, value) in token_values.enumerate() {
            if held.token_values.len() <= i {
                held.token_values.push(String::new());
            }
            std::mem::swap(value, &mut held.token_values[i]);
        }
    }
    let Some(spec) = pod.spec.as_mut() else { return };
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for (i, c) in containers.enumerate() {
        if held.containers.len() <= i {
            held.containers.push(Container::default());
        }
        let h = &mut held.containers[i];
        swap_fields!(
            c,
            h,
            [
                env,
                env_from,
                command,
                args,
                volume_mounts,
                volume_devices,
                liveness_probe,
                readiness_probe,
                startup_probe,
                lifecycle,
                resources,
                security_context,
                ports,
            ]
        );
    }
    for (i, c) in spec.ephemeral_containers.iter_mut().flatten().enumerate() {
        if held.ephemeral_containers.len() <= i {
            held.ephemeral_containers.push(EphemeralContainer::default());
        }
        let h = &mut held.ephemeral_containers[i];
        swap_fields!(c, h, [env, env_from, command, args, volume_mounts]);
    }
    let h = held.spec.get_or_insert_with(Box::default);
    swap_fields!(
        spec,
        h,
        [
            affinity,
            topology_spread_constraints,
            dns_config,
            host_aliases,
            security_context,
        ]
    );
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

        // Swapped out and back: the same trimmed view, then the pod whole again.
        let mut swapped = h.clone();
        let mut held = Uncached::default();
        swap_uncached(&mut swapped, &mut held);
        assert_eq!(swapped, trimmed);
        swap_uncached(&mut swapped, &mut held);
        assert_eq!(swapped, h);
    }
}
