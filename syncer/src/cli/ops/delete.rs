//! `vnest delete`: delete the owner objects, then wait until nothing of the vcluster remains
//! (the kinds the Role can list, their dependents, and what `create` applies).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DeleteParams, DynamicObject, ListParams, PropagationPolicy};
use kube::core::ApiResource;
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::cli::config::VclusterConfig;
use crate::cli::{CliError, DeleteArgs, render};
use crate::markers;

use super::*;

/// `(group, resource)` pairs the embedded Role may list, without subresources.
pub fn role_listable() -> Vec<(String, String)> {
    let files = render::embedded_files();
    let text = files
        .get("base/rbac.yaml")
        .map(String::as_str)
        .unwrap_or_default();
    let objs = crate::cli::kustomize::parse_documents("base/rbac.yaml", text).unwrap_or_default();
    let mut out = BTreeSet::new();
    for role in objs.iter().filter(|o| o["kind"] == "Role") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !verbs.contains(&"list") {
                continue;
            }
            for g in rule["apiGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                for r in rule["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !r.contains('/') {
                        out.insert((g.to_owned(), r.to_owned()));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Is this host object part of vcluster `name` (its label, the syncer's marker, or owned by one
/// of `owners`)?
fn belongs(o: &DynamicObject, name: &str, namespace: &str, owners: &BTreeSet<String>) -> bool {
    let labels = o.labels();
    let ns_ok = |o: &DynamicObject| {
        o.namespace().is_some() || labels.get(LABEL_VCLUSTER_NAMESPACE).map(String::as_str) == Some(namespace)
    };
    (labels.get(LABEL_VCLUSTER).map(String::as_str) == Some(name) && ns_ok(o))
        || labels.get(markers::LABEL_MANAGED_BY) == Some(&crate::naming::safe_label_value(name))
        || o.owner_references().iter().any(|r| owners.contains(&r.uid))
}

/// The syncer settings of the components that make cluster-scoped objects (`real-nodes`,
/// `host-storageclasses`, `real-volumes`: a ClusterRole and its binding each).
const CLUSTER_SCOPED_SETTINGS: &[(&str, &str)] = &[
    ("VNEST_NODE_SYNC", "real"),
    ("VNEST_SYNC_STORAGECLASSES", "true"),
    ("VNEST_PV_SYNC", "real"),
];

/// Whether the vcluster was made with a component that makes cluster-scoped objects.
fn uses_cluster_scoped(sts: &StatefulSet) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "syncer"))
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter().any(|e| {
                CLUSTER_SCOPED_SETTINGS
                    .iter()
                    .any(|(name, value)| e.name == *name && e.value.as_deref() == Some(value))
            })
        })
}

/// Kinds the host's controllers make for a vcluster's objects and remove after them (garbage
/// collection of dependents) that the syncer's Role does not cover: EndpointSlices of its
/// Services, the StatefulSet's revisions and data claim. `delete` waits for them too.
const DEPENDENT_KINDS: [(&str, &str); 3] = [
    ("discovery.k8s.io", "endpointslices"),
    ("apps", "controllerrevisions"),
    ("", "persistentvolumeclaims"),
];

/// Every kind `delete` checks: the Role's listable resources, the dependents the host makes
/// for them, and the kinds `create` applies (cluster-scoped kinds only when `cluster_scoped`: a
/// namespace admin may not list them, and only the components of [`CLUSTER_SCOPED_SETTINGS`]
/// make any).
async fn kinds_to_check(
    client: &Client,
    cluster_scoped: bool,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, CliError> {
    let mut found: BTreeMap<String, (ApiResource, ApiCapabilities)> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let dependents = DEPENDENT_KINDS
        .iter()
        .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()));
    for (g, r) in role_listable().into_iter().chain(dependents) {
        groups.entry(g).or_default().push(r);
    }
    for (g, resources) in groups {
        let group = match kube::discovery::group(client, &g).await {
            Ok(group) => group,
            Err(_) => continue, // an API group this cluster does not serve
        };
        for (ar, caps) in group.recommended_resources() {
            if resources.contains(&ar.plural) {
                found.insert(format!("{}/{}", ar.group, ar.plural), (ar, caps));
            }
        }
    }
    // The kinds of every overlay (every optional part on).
    let all = VclusterConfig {
        name: "x".into(),
        namespace: "x".into(),
        overlay: crate::cli::config::OverlayConfig {
            isolated: true,
            real_nodes: true,
            host_storage_classes: true,
            real_volumes: true,
            external_datastore: true,
            ha: true,
        },
        ..VclusterConfig::default()
    };
    let mut apis = Apis::new(client.clone());
    for o in render::render(&all)? {
        let (ar, caps) = apis.resolve(&gvk_of(&o)).await?;
        found.insert(format!("{}/{}", ar.group, ar.plural), (ar, caps));
    }
    Ok(found
        .into_values()
        .filter(|(_, caps)| cluster_scoped || caps.scope == Scope::Namespaced)
        .collect())
}

/// The objects of vcluster `name` still on the host (`kind/name`), and kinds that could not be
/// listed.
async fn leftovers(
    client: &Client,
    kinds: &[(ApiResource, ApiCapabilities)],
    name: &str,
    namespace: &str,
    owners: &BTreeSet<String>,
) -> (Vec<(ApiResource, DynamicObject)>, Vec<String>) {
    let mut left = Vec::new();
    let mut unlisted = Vec::new();
    for (ar, caps) in kinds {
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, ar),
            Scope::Cluster => Api::all_with(client.clone(), ar),
        };
        let lp = match caps.scope {
            // Cluster-wide lists only of our labelled kinds (no need to read every node).
            Scope::Cluster => ListParams::default().labels(&format!("{LABEL_VCLUSTER}={name}")),
            Scope::Namespaced => ListParams::default(),
        };
        match api.list(&lp).await {
            Ok(list) => left.extend(
                list.items
                    .into_iter()
                    .filter(|o| belongs(o, name, namespace, owners))
                    .map(|o| (ar.clone(), o)),
            ),
            Err(e) => unlisted.push(format!("{}: {e}", ar.plural)),
        }
    }
    (left, unlisted)
}

pub async fn delete(args: &DeleteArgs) -> Result<(), CliError> {
    let (client, _) = host_client(&args.host).await?;
    let (name, ns) = (&args.name, &args.namespace);
    let sts = find_vcluster(&client, name, ns).await?;
    let kinds = kinds_to_check(&client, uses_cluster_scoped(&sts)).await?;
    let mut owners: BTreeSet<String> = sts.uid().into_iter().collect();
    let mut failures = Vec::new();

    let spinner = Spinner::start(format!("deleting StatefulSet {name} (foreground)"));
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            spinner.fail();
            return Err(CliError::kube("delete", format!("StatefulSet {name:?}"), e));
        }
    }
    // Everything else `create` made, and whatever else carries the vcluster's marks.
    let (left, unlisted) = leftovers(&client, &kinds, name, ns, &owners).await;
    if !unlisted.is_empty() && !args.keep_going {
        spinner.fail();
        return Err(CliError::Other {
            what: "listing the vcluster's objects".to_owned(),
            reason: format!(
                "{} (use --keep-going to delete what can be listed)",
                unlisted.join("; ")
            ),
        });
    }
    failures.extend(unlisted);
    for (ar, o) in &left {
        owners.extend(o.uid());
        // Objects with an owner go with it (garbage collector), objects being deleted (the
        // StatefulSet, in the foreground) are left alone; the others are deleted here.
        if !o.owner_references().is_empty() || o.metadata.deletion_timestamp.is_some() || o.uid() == sts.uid()
        {
            continue;
        }
        let api: Api<DynamicObject> = match o.namespace() {
            Some(n) => Api::namespaced_with(client.clone(), &n, ar),
            None => Api::all_with(client.clone(), ar),
        };
        spinner.set(format!("deleting {}/{}", ar.kind, o.name_any()));
        match api.delete(&o.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) if args.keep_going => failures.push(format!("{}/{}: {e}", ar.kind, o.name_any())),
            Err(e) => {
                spinner.fail();
                return Err(CliError::kube(
                    "delete",
                    format!("{}/{}", ar.kind, o.name_any()),
                    e,
                ));
            }
        }
    }
    spinner.set("waiting until no object of the vcluster remains");
    let what = format!("every host object of vcluster {name:?} to be gone");
    let gone = wait_for(&spinner, &what, args.timeout, || async {
        let (left, _) = leftovers(&client, &kinds, name, ns, &owners).await;
        Ok(if left.is_empty() {
            Ok(())
        } else {
            let mut names: Vec<String> = left
                .iter()
                .map(|(ar, o)| format!("{}/{}", ar.kind, o.name_any()))
                .collect();
            names.sort();
            Err(format!("{} left: {}", names.len(), names.join(", ")))
        })
    })
    .await;
    match gone {
        Ok(()) => spinner.done(format!(
            "vcluster {name:?} deleted from namespace {ns:?}: no object of it remains"
        )),
        Err(e) => {
            spinner.fail();
            return Err(e);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Other {
            what: "deleted, with problems".to_owned(),
            reason: failures.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("a valid object")
    }

    #[test]
    fn what_belongs_to_a_vcluster() {
        let owners: BTreeSet<String> = ["sts-uid".to_owned()].into();
        let yes = [
            serde_json::json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"vnest.dev/vcluster": "demo"}}}),
            serde_json::json!({"metadata": {"name": "b", "namespace": "ns", "labels": {"vnest.dev/managed-by": "demo"}}}),
            serde_json::json!({"metadata": {"name": "c", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "demo", "uid": "sts-uid"}]}}),
            serde_json::json!({"metadata": {"name": "d", "labels": {"vnest.dev/vcluster": "demo", "vnest.dev/vcluster-namespace": "ns"}}}),
        ];
        for o in yes {
            assert!(belongs(&dynamic(o.clone()), "demo", "ns", &owners), "{o}");
        }
        let no = [
            serde_json::json!({"metadata": {"name": "e", "namespace": "ns", "labels": {"vnest.dev/vcluster": "other"}}}),
            serde_json::json!({"metadata": {"name": "f", "namespace": "ns", "labels": {"vnest.dev/managed-by": "demo2"}}}),
            // The same vcluster name in another namespace (cluster-scoped objects).
            serde_json::json!({"metadata": {"name": "g", "labels": {"vnest.dev/vcluster": "demo", "vnest.dev/vcluster-namespace": "ns2"}}}),
            serde_json::json!({"metadata": {"name": "h", "namespace": "ns"}}),
        ];
        for o in no {
            assert!(!belongs(&dynamic(o.clone()), "demo", "ns", &owners), "{o}");
        }
    }

    #[test]
    fn the_role_lets_us_list_the_synced_kinds() {
        let l = role_listable();
        for want in [
            ("", "pods"),
            ("", "secrets"),
            ("policy", "poddisruptionbudgets"),
            ("apps", "statefulsets"),
        ] {
            assert!(
                l.contains(&(want.0.to_owned(), want.1.to_owned())),
                "{want:?} in {l:?}"
            );
        }
        assert!(!l.iter().any(|(_, r)| r.contains('/')));
    }
}
