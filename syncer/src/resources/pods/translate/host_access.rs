//! The host-access policy: pods that would escape the namespace sandbox on the host.

use k8s_openapi::api::core::v1::PodSpec;

use super::env::ContainerLike;
use crate::engine::error::TranslateError;
use crate::resources::pods::settings::HostAccessPolicy;

/// Every field of `spec` that escapes the namespace sandbox on the host, as a field path
/// (containers named by name, ports by containerPort).
pub(super) fn host_access_offenders(spec: &PodSpec) -> Vec<String> {
    let mut offenders = Vec::new();
    for (set, field) in [
        (spec.host_network, "spec.hostNetwork"),
        (spec.host_pid, "spec.hostPID"),
        (spec.host_ipc, "spec.hostIPC"),
    ] {
        if set == Some(true) {
            offenders.push(field.to_owned());
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            offenders.push(format!("spec.volumes[{}].hostPath", volume.name));
        }
    }
    let lists: [(&str, Vec<&dyn ContainerLike>); 3] = [
        (
            "containers",
            spec.containers.iter().map(|c| c as &dyn ContainerLike).collect(),
        ),
        (
            "initContainers",
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c as &dyn ContainerLike)
                .collect(),
        ),
        (
            "ephemeralContainers",
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c as &dyn ContainerLike)
                .collect(),
        ),
    ];
    for (list, containers) in lists {
        for container in containers {
            offenders.extend(container_offenders(list, container));
        }
    }
    offenders
}

/// Offending fields of one container of list `list` (`containers`, `initContainers`, ...).
pub(super) fn container_offenders(list: &str, container: &dyn ContainerLike) -> Vec<String> {
    let prefix = format!("spec.{list}[{}]", container.name());
    let mut offenders = Vec::new();
    if container.security_context().and_then(|sc| sc.privileged) == Some(true) {
        offenders.push(format!("{prefix}.securityContext.privileged"));
    }
    for port in container.ports() {
        if port.host_port.is_some_and(|p| p != 0) {
            offenders.push(format!("{prefix}.ports[{}].hostPort", port.container_port));
        }
    }
    offenders
}

pub(super) fn check_host_access(
    policy: HostAccessPolicy,
    offenders: &[String],
) -> Result<(), TranslateError> {
    if policy == HostAccessPolicy::Allow || offenders.is_empty() {
        return Ok(());
    }
    Err(TranslateError::Refused(format!(
        "refused by the vcluster's host-access policy (deny): {}; ask the platform team to run the \
         syncer with --host-access=allow",
        offenders.join(", ")
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::super::testutil::*;
    use super::*;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn escaping_pod() -> Pod {
        vpod_spec(json!({
            "hostNetwork": true,
            "hostPID": true,
            "hostIPC": true,
            "volumes": [{"name": "data", "hostPath": {"path": "/var/data"}}, {"name": "ok", "emptyDir": {}}],
            "containers": [
                {"name": "app", "image": "nginx:1", "securityContext": {"privileged": true},
                 "ports": [{"containerPort": 80}, {"containerPort": 8080, "hostPort": 8080}]},
                {"name": "calm", "image": "nginx:1", "securityContext": {"privileged": false}},
            ],
            "initContainers": [{"name": "init", "image": "busybox", "securityContext": {"privileged": true}}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}],
        }))
    }

    #[test]
    fn deny_lists_every_offender() {
        let err = try_translate(&escaping_pod(), HostAccessPolicy::Deny).unwrap_err();
        assert_eq!(
            err,
            TranslateError::Refused(
                "refused by the vcluster's host-access policy (deny): spec.hostNetwork, spec.hostPID, \
                 spec.hostIPC, spec.volumes[data].hostPath, spec.containers[app].securityContext.privileged, \
                 spec.containers[app].ports[8080].hostPort, spec.initContainers[init].securityContext.privileged, \
                 spec.ephemeralContainers[debug].securityContext.privileged; ask the platform team to run \
                 the syncer with --host-access=allow"
                    .to_owned()
            )
        );
    }

    #[rstest]
    #[case::host_network(json!({"hostNetwork": true}), "spec.hostNetwork")]
    #[case::host_path(json!({"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}), "spec.volumes[v].hostPath")]
    #[case::host_port(
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 53, "hostPort": 53}]}]}),
        "spec.containers[c].ports[53].hostPort"
    )]
    fn deny_refuses_each_escape(#[case] spec: Value, #[case] field: &str) {
        let err = try_translate(&vpod_spec(spec), HostAccessPolicy::Deny).unwrap_err();
        assert!(
            matches!(&err, TranslateError::Refused(m) if m.contains(field)),
            "{err:?}"
        );
    }

    #[test]
    fn allow_copies_escapes_unchanged_and_deny_passes_clean_pods() {
        let h = try_translate(&escaping_pod(), HostAccessPolicy::Allow).unwrap();
        let spec = serde_json::to_value(h.spec.unwrap()).unwrap();
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["hostIPC"], true);
        assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/var/data");
        assert_eq!(spec["containers"][0]["securityContext"]["privileged"], true);
        assert_eq!(spec["containers"][0]["ports"][1]["hostPort"], 8080);
        assert!(try_translate(&vpod("ns", "clean"), HostAccessPolicy::Deny).is_ok());
    }
}
