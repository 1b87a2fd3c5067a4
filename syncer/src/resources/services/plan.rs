//! Pure planning of the Service kind: from what the caches observed, the writes to make on both
//! clusters. No client, no clock: how long the host has refused a ClusterIP is an input.
//!
//! - Lifecycle (foreign name, orphan, stale uid, create still pending) is the engine's
//!   [`plan::lifecycle`]; then the host copy is created asking for the virtual ClusterIP, or
//!   patched (labels, annotations, owned spec), and node ports and LoadBalancer status flow back.
//! - Two steps depend on an answer of the API server and are finished by the reconciler
//!   ([`FollowUp`]): a create refused for its IP is planned again with how long the host has been
//!   refusing it ([`IP_RETRY_GRACE`]), and a virtual Service recreated with the host's ClusterIP
//!   gets its new uid written into the host copy's marker ([`marker_patch`]).
//! - `default/kubernetes` and `kube-system/kube-dns` are never copied: [`plan_kubernetes`] and
//!   [`plan_kube_dns`] keep them pointing at the vcluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::translate;
use crate::engine::TranslateCtx;
use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Ownership, Target, Write};
use crate::engine::plan::{self, Lifecycle, Observed, Pair, PatchKind, Plan, RECHECK};
use crate::markers;

/// Kind name in markers and messages.
pub const KIND: &str = "Service";
/// `what` label of the host-writes metric.
pub const COUNTED_AS: &str = "services";

/// How long a refused ClusterIP is asked for again before the host may pick another one: a
/// just-deleted host Service keeps its IP reserved for a moment (released asynchronously).
pub const IP_RETRY_GRACE: Duration = Duration::from_secs(15);

const RULES: Lifecycle = Lifecycle {
    kind: KIND,
    stale_grace: None,
    quiet_foreign_when_unwanted: false,
};

/// What the caches showed for one (not special) virtual Service.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub virtual_service: Option<&'a Service>,
    pub host_service: Option<&'a Service>,
    pub host_name: &'a str,
    /// Our create of `host_name` was sent and the host cache may not show it yet.
    pub create_pending: bool,
    /// `Some(for how long the host has refused it)`: this reconcile's create asking for the
    /// virtual ClusterIP was just refused with an IP conflict.
    pub ip_refused_for: Option<Duration>,
}

/// What the reconciler does with the answers of a plan's writes (a pure plan cannot know them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// Nothing: the plan is the whole reconcile.
    Nothing,
    /// The plan is the host create (`asked_ip`: asking for the virtual ClusterIP). Refused for
    /// its IP: plan again with [`Seen::ip_refused_for`]. Created with another IP than the
    /// virtual one: recreate the virtual Service ([`after_create`]).
    Created { asked_ip: bool },
    /// The plan recreates the virtual Service (delete, then create): point the host copy at the
    /// created object's uid ([`marker_patch`]).
    Recreated,
}

/// A Service plan and its [`FollowUp`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub plan: Plan,
    pub then: FollowUp,
}

impl ServicePlan {
    fn just(plan: Plan) -> Self {
        Self {
            plan,
            then: FollowUp::Nothing,
        }
    }
}

/// The plan for virtual Service `seen.virtual_service` and its host copy.
pub fn plan_service(tc: &TranslateCtx, seen: Seen<'_>) -> Result<ServicePlan, SyncError> {
    let (v, h) = (seen.virtual_service, seen.host_service);
    let observed = Observed {
        pair: Pair {
            virtual_meta: v.map(|o| o.meta()),
            host_meta: h.map(|o| o.meta()),
        },
        host_name: seen.host_name,
        create_pending: seen.create_pending,
        wanted: v.is_some(),
    };
    if let Some(p) = plan::lifecycle::<Service>(RULES, tc, observed)? {
        return Ok(ServicePlan::just(counted(p)));
    }
    let Some(v) = v else {
        return Ok(ServicePlan::just(Plan::noop()));
    };
    let host = || Target::host::<Service>(tc, seen.host_name);
    let Some(h) = h else {
        if v.meta().deletion_timestamp.is_some() {
            return Ok(ServicePlan::just(Plan::noop()));
        }
        let asked_ip = match seen.ip_refused_for {
            None => true,
            Some(waited) if waited < IP_RETRY_GRACE => return Ok(ServicePlan::just(Plan::wait(RECHECK))),
            Some(_) => false,
        };
        let reason = if asked_ip {
            "virtual Service needs a host copy"
        } else {
            "virtual ClusterIP unavailable on the host: the host picks one"
        };
        let create = Action::create(
            host(),
            &translate::host_service(tc, v, asked_ip),
            Ownership::CopyOf(KIND),
            reason,
        );
        return Ok(ServicePlan {
            plan: Plan::one(create.counted_as(COUNTED_AS)),
            then: FollowUp::Created { asked_ip },
        });
    };
    if translate::allocation_mismatch(v, h) {
        return Ok(plan_recreate(v, h));
    }

    let (labels, annotations) = plan::desired_metadata(
        &tc.vcluster,
        KIND,
        v.meta(),
        h.meta(),
        &Default::default(),
        &Default::default(),
        &[],
    );
    let meta = plan::metadata_patch(h.meta(), &labels, &annotations);
    let spec = translate::update_spec_patch(tc, v, h);
    let host_patch = (meta.is_some() || spec.is_some()).then(|| {
        let mut body = spec.unwrap_or_else(|| json!({}));
        let mut m = meta.unwrap_or_else(|| json!({}));
        m["resourceVersion"] = Value::from(h.resource_version().unwrap_or_default());
        body["metadata"] = m;
        Action::new(
            host(),
            Write::patch(PatchKind::Merge, body),
            "virtual Service changed",
        )
        .counted_as(COUNTED_AS)
    });
    let virt = || Target::virtual_object::<Service>(&v.namespace().unwrap_or_default(), &v.name_any());
    // One virtual patch (one resourceVersion): node ports and host-added metadata.
    let meta_back = plan::virtual_metadata_patch(v.meta(), h.meta());
    let spec_back = translate::virtual_spec_patch(v, h);
    let reason = if spec_back.is_some() {
        "host node ports flow back"
    } else {
        "host-added labels/annotations flow back"
    };
    let spec_back = match (spec_back, meta_back) {
        (None, None) => None,
        (spec, meta) => {
            let mut body = spec.unwrap_or_else(|| json!({}));
            body["metadata"] = meta
                .map(|m| m["metadata"].clone())
                .unwrap_or_else(|| json!({"resourceVersion": v.resource_version()}));
            Some(Action::new(virt(), Write::patch(PatchKind::Merge, body), reason))
        }
    };
    let status_back = translate::virtual_status_patch(v, h)
        .map(|body| Action::new(virt(), Write::status(body), "host LoadBalancer status flows back"));
    Ok(ServicePlan::just(
        Plan::noop()
            .then_maybe(host_patch)
            .then_maybe(spec_back)
            .then_maybe(status_back),
    ))
}

/// After the host copy `created` of `v` was created: the recreate of the virtual Service when
/// the host gave it another ClusterIP, else nothing.
pub fn after_create(v: &Service, created: &Service) -> Option<ServicePlan> {
    translate::allocation_mismatch(v, created).then(|| plan_recreate(v, created))
}

/// Deletes virtual Service `v` (uid precondition) and creates it again with the ClusterIP of its
/// host copy `h`; [`FollowUp::Recreated`] then points `h` at the new uid.
pub fn plan_recreate(v: &Service, h: &Service) -> ServicePlan {
    let target = || Target::virtual_object::<Service>(&v.namespace().unwrap_or_default(), &v.name_any());
    let plan = Plan::noop()
        .then_maybe(Action::delete(
            target(),
            v.meta(),
            None,
            "ClusterIP taken on the host: recreating with the host's IP",
        ))
        .then(Action::create(
            target(),
            &translate::recreated_virtual(v, h),
            Ownership::CopyOf(KIND),
            "ClusterIP taken on the host: recreated with the host's IP",
        ));
    ServicePlan {
        plan,
        then: FollowUp::Recreated,
    }
}

/// Points host copy `host_name` at the recreated virtual Service `new_uid`.
pub fn marker_patch(tc: &TranslateCtx, host_name: &str, new_uid: &str) -> Action {
    let body = json!({"metadata": {"annotations": {markers::ANNOTATION_OBJECT_UID: new_uid}}});
    Action::new(
        Target::host::<Service>(tc, host_name),
        Write::patch(PatchKind::Merge, body),
        "virtual Service recreated",
    )
    .counted_as(COUNTED_AS)
}

/// Lifecycle actions count as Service host writes.
fn counted(mut p: Plan) -> Plan {
    p.actions = p.actions.into_iter().map(|a| a.counted_as(COUNTED_AS)).collect();
    p
}

fn special_service(spec: Value) -> Result<Service, SyncError> {
    serde_json::from_value(spec).map_err(|e| SyncError::Translate(TranslateError::Refused(e.to_string())))
}

/// Replaces special virtual Service `current` (one the syncer owns) with `desired`: delete by
/// uid, then create. Someone creating it first makes the create a conflict: look again.
fn replace_special(current: Option<&Service>, desired: &Service, reason: &'static str) -> Plan {
    let target =
        || Target::virtual_object::<Service>(&desired.namespace().unwrap_or_default(), &desired.name_any());
    Plan::noop()
        .then_maybe(current.and_then(|c| Action::delete(target(), c.meta(), None, reason)))
        .then(Action::create(target(), desired, Ownership::CopyOf(KIND), reason))
}

/// Virtual kube-system/kube-dns on the DNS Service's ClusterIP (the nameserver of synced pods),
/// so tools that look for the cluster DNS find it. `current`: the virtual one, if any.
pub fn plan_kube_dns(tc: &TranslateCtx, current: Option<&Service>) -> Result<Plan, SyncError> {
    if tc.dns_nameserver == tc.kube_service_ip {
        return Ok(Plan::noop()); // no separate DNS Service on the host: nothing to publish
    }
    if current.and_then(translate::cluster_ip).as_deref() == Some(tc.dns_nameserver.as_str()) {
        return Ok(Plan::noop());
    }
    let desired = special_service(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "vnest-dns", "kubernetes.io/cluster-service": "true"}},
        "spec": {"type": "ClusterIP", "clusterIP": tc.dns_nameserver, "clusterIPs": [tc.dns_nameserver],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 1053},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 1053}]}
    }))?;
    Ok(replace_special(
        current,
        &desired,
        "publishing the virtual kube-system/kube-dns Service",
    ))
}

/// Virtual default/kubernetes on the vcluster Service's ClusterIP, and its Endpoints on the
/// ready https addresses of the vcluster's host Endpoints. `current`, `current_endpoints`: the
/// virtual ones, if any.
pub fn plan_kubernetes(
    tc: &TranslateCtx,
    current: Option<&Service>,
    host_endpoints: Option<&Endpoints>,
    current_endpoints: Option<&Endpoints>,
) -> Result<Plan, SyncError> {
    let mut out = Plan::noop();
    if current.and_then(translate::cluster_ip).as_deref() != Some(tc.kube_service_ip.as_str()) {
        let desired = special_service(json!({
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": tc.kube_service_ip, "clusterIPs": [tc.kube_service_ip],
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                     "sessionAffinity": "None"}
        }))?;
        // The API server's own bootstrap controller may recreate it first: a conflict, retried.
        out = replace_special(
            current,
            &desired,
            "pointing the virtual default/kubernetes Service at the vcluster Service",
        );
    }
    let subsets = kubernetes_subsets(host_endpoints);
    if current_endpoints.is_none() || current_endpoints.and_then(|e| e.subsets.clone()) != subsets {
        let desired = Endpoints {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                namespace: Some("default".into()),
                labels: Some(
                    [(
                        "endpointslice.kubernetes.io/skip-mirror".to_owned(),
                        "true".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            subsets,
        };
        let body = serde_json::to_value(&desired).map_err(|e| SyncError::Cache {
            kind: "Endpoints",
            name: "kubernetes".into(),
            message: format!("planned object does not serialize: {e}"),
        })?;
        out = out.then(Action::new(
            Target::virtual_object::<Endpoints>("default", "kubernetes"),
            Write::Apply { body },
            "the vcluster's endpoints changed",
        ));
    }
    Ok(out)
}

/// The subsets of virtual default/kubernetes: the ready addresses of the https port of the
/// vcluster's host Endpoints, on that port (the k3s container's port `https`: 6443 unless the
/// vcluster moved it; None when there are none).
fn kubernetes_subsets(host_endpoints: Option<&Endpoints>) -> Option<Vec<EndpointSubset>> {
    let https = |s: &EndpointSubset| {
        s.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("https"))
            .map(|p| p.port)
    };
    let port = host_endpoints
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .find_map(https)
        .unwrap_or(6443);
    let addresses: Vec<EndpointAddress> = host_endpoints
        .iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .filter(|s| https(s) == Some(port))
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| EndpointAddress {
            ip: a.ip.clone(),
            ..EndpointAddress::default()
        })
        .collect();
    (!addresses.is_empty()).then(|| {
        vec![EndpointSubset {
            addresses: Some(addresses),
            not_ready_addresses: None,
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port,
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use crate::engine::execute::Write;
    use crate::error::Cluster;
    use crate::naming;

    fn tc() -> TranslateCtx {
        TranslateCtx::test()
    }

    fn host_name() -> String {
        naming::host_name("vc", "shop", "web")
    }

    fn svc(v: Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    /// `s` changed by `f`.
    fn with(mut s: Service, f: impl FnOnce(&mut Service)) -> Service {
        f(&mut s);
        s
    }

    fn gone() -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ))
    }

    /// Virtual NodePort Service shop/web (uid v-1) on 10.96.5.5, node port 30001.
    fn web() -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "v-1", "resourceVersion": "7"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30001}]}
        }))
    }

    /// The host copy of `v` in step with it, as the host API server keeps it (uid h-1, the
    /// node port 30001 allocated, defaults filled in).
    fn host_of(v: &Service) -> Service {
        with(translate::host_service(&tc(), v, true), |h| {
            h.metadata.uid = Some("h-1".into());
            h.metadata.resource_version = Some("3".into());
            let spec = h.spec.as_mut().unwrap();
            spec.ports.as_mut().unwrap()[0].node_port = Some(30001);
            spec.session_affinity = Some("None".into());
            spec.external_traffic_policy = Some("Cluster".into());
        })
    }

    fn on_ip(ip: &str) -> impl FnOnce(&mut Service) + '_ {
        move |s| {
            let spec = s.spec.as_mut().unwrap();
            spec.cluster_ip = Some(ip.into());
            spec.cluster_ips = Some(vec![ip.into()]);
        }
    }

    /// "cluster Kind op[ subresource]" for each action.
    fn writes(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| {
                let sub = match &a.write {
                    Write::Patch {
                        subresource: Some(s), ..
                    } => format!(" {s}"),
                    _ => String::new(),
                };
                format!("{} {} {}{sub}", a.target.cluster, a.target.kind, a.write.op())
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        v: Option<Service>,
        h: Option<Service>,
        pending: bool,
        refused_secs: Option<u64>,
        writes: &'static [&'static str],
        requeue: Option<Duration>,
        then: FollowUp,
    }

    fn plan_of(c: &Case) -> Result<ServicePlan, SyncError> {
        let host_name = host_name();
        plan_service(
            &tc(),
            Seen {
                virtual_service: c.v.as_ref(),
                host_service: c.h.as_ref(),
                host_name: &host_name,
                create_pending: c.pending,
                ip_refused_for: c.refused_secs.map(Duration::from_secs),
            },
        )
    }

    fn cases() -> Vec<Case> {
        let v = web();
        let h = host_of(&v);
        let case = |name, v: Option<&Service>, h: Option<&Service>| Case {
            name,
            v: v.cloned(),
            h: h.cloned(),
            pending: false,
            refused_secs: None,
            writes: &[],
            requeue: None,
            then: FollowUp::Nothing,
        };
        vec![
            case("nothing on either side", None, None),
            Case {
                writes: &["host Service delete"],
                ..case("orphan host copy is deleted", None, Some(&h))
            },
            case(
                "orphan already terminating: no second delete",
                None,
                Some(&with(h.clone(), |h| h.metadata.deletion_timestamp = gone())),
            ),
            Case {
                writes: &["host Service delete"],
                requeue: Some(RECHECK),
                ..case(
                    "host copy of an older virtual Service (stale uid)",
                    Some(&with(v.clone(), |v| v.metadata.uid = Some("v-2".into()))),
                    Some(&h),
                )
            },
            Case {
                pending: true,
                requeue: Some(RECHECK),
                ..case("our create is still on its way", Some(&v), None)
            },
            Case {
                writes: &["host Service create"],
                then: FollowUp::Created { asked_ip: true },
                ..case("create asking for the virtual ClusterIP", Some(&v), None)
            },
            Case {
                refused_secs: Some(3),
                requeue: Some(RECHECK),
                ..case("IP refused within the grace: ask again soon", Some(&v), None)
            },
            Case {
                refused_secs: Some(IP_RETRY_GRACE.as_secs()),
                writes: &["host Service create"],
                then: FollowUp::Created { asked_ip: false },
                ..case("IP refused past the grace: the host picks", Some(&v), None)
            },
            case(
                "virtual Service terminating, no host copy",
                Some(&with(v.clone(), |v| v.metadata.deletion_timestamp = gone())),
                None,
            ),
            Case {
                writes: &["virtual Service delete", "virtual Service create"],
                then: FollowUp::Recreated,
                ..case(
                    "host copy on another ClusterIP: recreate the virtual Service",
                    Some(&v),
                    Some(&with(h.clone(), on_ip("10.96.9.9"))),
                )
            },
            case("resync of a Service in step", Some(&v), Some(&h)),
            Case {
                writes: &["host Service patch"],
                ..case(
                    "virtual label added",
                    Some(&with(v.clone(), |v| {
                        v.metadata.labels = Some([("tier".into(), "front".into())].into())
                    })),
                    Some(&h),
                )
            },
            Case {
                writes: &["host Service patch"],
                ..case(
                    "virtual port changed",
                    Some(&with(v.clone(), |v| {
                        v.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090),
                        )
                    })),
                    Some(&h),
                )
            },
            Case {
                writes: &["virtual Service patch"],
                ..case(
                    "host node port flows back",
                    Some(&v),
                    Some(&with(h.clone(), |h| {
                        h.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(31234)
                    })),
                )
            },
            Case {
                writes: &["virtual Service patch status"],
                ..case(
                    "LoadBalancer status flows back",
                    Some(&v),
                    Some(&with(h.clone(), |h| {
                        h.status = Some(
                            serde_json::from_value(
                                json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}),
                            )
                            .unwrap(),
                        )
                    })),
                )
            },
            Case {
                writes: &[
                    "host Service patch",
                    "virtual Service patch",
                    "virtual Service patch status",
                ],
                ..case(
                    "everything at once, host first",
                    Some(&with(v.clone(), |v| {
                        v.metadata.labels = Some([("tier".into(), "front".into())].into())
                    })),
                    Some(&with(h.clone(), |h| {
                        h.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(31234);
                        h.status = Some(
                            serde_json::from_value(
                                json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}),
                            )
                            .unwrap(),
                        );
                    })),
                )
            },
        ]
    }

    #[test]
    fn service_plans() {
        for c in cases() {
            let sp = plan_of(&c).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(writes(&sp.plan), c.writes, "{}", c.name);
            assert_eq!(sp.plan.requeue_after, c.requeue, "{}", c.name);
            assert_eq!(sp.then, c.then, "{}", c.name);
            for a in &sp.plan.actions {
                let counted = if a.target.cluster == Cluster::Host {
                    COUNTED_AS
                } else {
                    ""
                };
                assert_eq!(a.counted_as, counted, "{}: host writes count as services", c.name);
            }
        }
    }

    #[test]
    fn a_foreign_host_object_is_never_touched() {
        let v = web();
        let foreign = with(host_of(&v), |h| h.metadata.labels = None);
        for virtual_service in [Some(&v), None] {
            let host_name = host_name();
            let err = plan_service(
                &tc(),
                Seen {
                    virtual_service,
                    host_service: Some(&foreign),
                    host_name: &host_name,
                    create_pending: false,
                    ip_refused_for: None,
                },
            )
            .unwrap_err();
            assert_eq!(err.category(), "foreign");
        }
    }

    fn body(a: &Action) -> &Value {
        match &a.write {
            Write::Create { body, .. } | Write::Apply { body } => body,
            Write::Patch { patch, .. } => &patch.body,
            w => panic!("no body in {w:?}"),
        }
    }

    fn case(name: &str) -> ServicePlan {
        let c = cases().into_iter().find(|c| c.name == name).unwrap();
        plan_of(&c).unwrap()
    }

    #[test]
    fn the_create_asks_for_the_virtual_ip_until_the_grace_is_over() {
        let first = case("create asking for the virtual ClusterIP");
        assert_eq!(body(&first.plan.actions[0])["spec"]["clusterIP"], "10.96.5.5");
        assert_eq!(first.plan.actions[0].target.name, host_name());
        let fallback = case("IP refused past the grace: the host picks");
        assert_eq!(body(&fallback.plan.actions[0])["spec"].get("clusterIP"), None);
    }

    #[test]
    fn a_recreate_keeps_the_virtual_service_on_the_host_ip() {
        let sp = case("host copy on another ClusterIP: recreate the virtual Service");
        assert_eq!(
            sp.plan.actions[0].write,
            Write::Delete {
                uid: "v-1".into(),
                grace_seconds: None
            }
        );
        let created = body(&sp.plan.actions[1]);
        assert_eq!(created["spec"]["clusterIP"], "10.96.9.9");
        assert_eq!(created["metadata"].get("uid"), None);
        assert_eq!(created["metadata"]["name"], "web");

        // After a create: the host's answer decides.
        let v = web();
        assert_eq!(after_create(&v, &host_of(&v)), None, "same IP: nothing more");
        let moved = with(host_of(&v), on_ip("10.96.9.9"));
        assert_eq!(after_create(&v, &moved), Some(plan_recreate(&v, &moved)));

        let marker = marker_patch(&tc(), &host_name(), "v-2");
        assert_eq!(writes(&Plan::one(marker.clone())), ["host Service patch"]);
        assert_eq!(
            body(&marker)["metadata"]["annotations"][markers::ANNOTATION_OBJECT_UID],
            "v-2"
        );
        assert_eq!(marker.counted_as, COUNTED_AS);
    }

    #[test]
    fn patches_carry_the_resource_version_they_were_planned_on() {
        let host = case("virtual label added");
        let b = body(&host.plan.actions[0]);
        assert_eq!(b["metadata"]["labels"]["tier"], "front");
        assert_eq!(b["metadata"]["resourceVersion"], "3");
        assert_eq!(b.get("spec"), None);
        let spec = case("virtual port changed");
        assert_eq!(
            body(&spec.plan.actions[0])["spec"]["ports"][0]["targetPort"],
            9090
        );
        let back = case("host node port flows back");
        let b = body(&back.plan.actions[0]);
        assert_eq!(b["spec"]["ports"][0]["nodePort"], 31234);
        assert_eq!(b["metadata"]["resourceVersion"], "7");
        let status = case("LoadBalancer status flows back");
        assert_eq!(
            body(&status.plan.actions[0])["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.0.2.1"
        );
    }

    fn special(ns: &str, name: &str, ip: &str) -> Service {
        svc(json!({"metadata": {"name": name, "namespace": ns, "uid": "s-1"},
                   "spec": {"clusterIP": ip, "clusterIPs": [ip]}}))
    }

    #[test]
    fn kube_dns_is_published_on_the_dns_ip() {
        let tc = tc();
        let dns = |ip: &str| special("kube-system", "kube-dns", ip);
        let table: [(&str, TranslateCtx, Option<Service>, &[&str]); 4] = [
            ("missing: created", tc.clone(), None, &["virtual Service create"]),
            (
                "on another IP: replaced",
                tc.clone(),
                Some(dns("10.96.0.99")),
                &["virtual Service delete", "virtual Service create"],
            ),
            ("in step", tc.clone(), Some(dns(&tc.dns_nameserver)), &[]),
            (
                "the DNS IP is the kube Service IP: nothing to publish",
                TranslateCtx {
                    dns_nameserver: tc.kube_service_ip.clone(),
                    ..tc.clone()
                },
                None,
                &[],
            ),
        ];
        for (name, tc, current, expected) in table {
            let plan = plan_kube_dns(&tc, current.as_ref()).unwrap();
            assert_eq!(writes(&plan), expected, "{name}");
            assert_eq!(plan.requeue_after, None, "{name}");
            if let Some(create) = plan.actions.last() {
                assert_eq!(body(create)["spec"]["clusterIP"], tc.dns_nameserver, "{name}");
                assert_eq!(create.target.namespace.as_deref(), Some("kube-system"));
            }
        }
        let replaced = plan_kube_dns(&tc, Some(&dns("10.96.0.99"))).unwrap();
        assert_eq!(
            replaced.actions[0].write,
            Write::Delete {
                uid: "s-1".into(),
                grace_seconds: None
            }
        );
    }

    fn endpoints(v: Value) -> Endpoints {
        serde_json::from_value(v).unwrap()
    }

    /// (case, virtual Service, vcluster's host Endpoints, virtual Endpoints, expected writes)
    type KubernetesRow<'a> = (
        &'a str,
        Option<&'a Service>,
        Option<&'a Endpoints>,
        Option<&'a Endpoints>,
        &'a [&'a str],
    );

    #[test]
    fn default_kubernetes_points_at_the_vcluster() {
        let tc = tc();
        let kube = |ip: &str| special("default", "kubernetes", ip);
        let host_eps = endpoints(
            json!({"metadata": {"name": "vc", "namespace": "host"}, "subsets": [
                {"addresses": [{"ip": "10.0.0.5", "nodeName": "n1"}], "ports": [{"name": "https", "port": 16443}]},
                {"addresses": [{"ip": "10.0.0.6"}], "ports": [{"name": "metrics", "port": 9090}]}
            ]}),
        );
        let in_step = endpoints(
            json!({"metadata": {"name": "kubernetes", "namespace": "default"}, "subsets": in_step_subsets()}),
        );
        let empty = endpoints(json!({"metadata": {"name": "kubernetes", "namespace": "default"}}));
        let ok = kube(&tc.kube_service_ip);
        let wrong = kube("10.96.0.1");
        let table: [KubernetesRow<'_>; 6] = [
            ("in step", Some(&ok), Some(&host_eps), Some(&in_step), &[]),
            (
                "on the API server's own IP: replaced, endpoints in step",
                Some(&wrong),
                Some(&host_eps),
                Some(&in_step),
                &["virtual Service delete", "virtual Service create"],
            ),
            (
                "missing, endpoints missing",
                None,
                Some(&host_eps),
                None,
                &["virtual Service create", "virtual Endpoints apply"],
            ),
            (
                "endpoints changed",
                Some(&ok),
                Some(&host_eps),
                Some(&empty),
                &["virtual Endpoints apply"],
            ),
            (
                "no ready vcluster address: empty endpoints in step",
                Some(&ok),
                None,
                Some(&empty),
                &[],
            ),
            (
                "no ready vcluster address any more",
                Some(&ok),
                None,
                Some(&in_step),
                &["virtual Endpoints apply"],
            ),
        ];
        for (name, current, host, current_eps, expected) in table {
            let plan = plan_kubernetes(&tc, current, host, current_eps).unwrap();
            assert_eq!(writes(&plan), expected, "{name}");
            assert_eq!(plan.requeue_after, None, "{name}");
        }
        let plan = plan_kubernetes(&tc, Some(&ok), Some(&host_eps), Some(&empty)).unwrap();
        let b = body(&plan.actions[0]);
        assert_eq!(
            (b["apiVersion"].clone(), b["kind"].clone()),
            (json!("v1"), json!("Endpoints"))
        );
        assert_eq!(b["subsets"], in_step_subsets());
        assert_eq!(
            b["metadata"]["labels"]["endpointslice.kubernetes.io/skip-mirror"],
            "true"
        );
        let plan = plan_kubernetes(&tc, Some(&wrong), Some(&host_eps), Some(&in_step)).unwrap();
        assert_eq!(body(&plan.actions[1])["spec"]["clusterIP"], tc.kube_service_ip);
        assert_eq!(body(&plan.actions[1])["spec"]["ports"][0]["targetPort"], 6443);
    }

    /// On the host Endpoints' https port (the pod's containerPort `https`, moved by `ports.api`).
    fn in_step_subsets() -> Value {
        json!([{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}]}])
    }
}
