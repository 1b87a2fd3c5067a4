//! The Service reconciler: one key = one virtual Service.
//!
//! - Create the host copy asking for the virtual ClusterIP; only if the host refuses that IP
//!   (taken on the host) let the host pick and recreate the virtual Service with the host's IP
//!   (counted in `vnest_syncer_service_recreates_total`).
//! - Keep owned spec fields in step; copy node ports, health-check node port and LoadBalancer
//!   status back; delete both ways.
//! - `default/kubernetes` is never copied: it is kept pointing at the vcluster's own host
//!   Service (ClusterIP and endpoints), which is how pods reach the virtual API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::translate;
use crate::engine::apply::{self, FIELD_MANAGER, RecentWrites};
use crate::engine::error::SyncError;
use crate::engine::plan::{self, HostPatch, PatchKind};
use crate::engine::queue::Key;
use crate::engine::standard::is_ours;
use crate::engine::worker::{Outcome, Reconciler};
use crate::engine::{Shared, TranslateCtx};
use crate::error::Cluster;
use crate::{markers, naming};

pub struct ServiceSync {
    pub shared: Arc<Shared>,
    pub virtual_services: Store<Service>,
    pub host_services: Store<Service>,
    /// Endpoints of the vcluster's own host Service (for the virtual default/kubernetes).
    pub host_endpoints: Store<Endpoints>,
    pub virtual_endpoints: Store<Endpoints>,
    /// The vcluster's host Service name.
    pub service_name: String,
    pub recent: RecentWrites,
    /// When the host first refused a Service's ClusterIP: a just-deleted host Service keeps its
    /// IP reserved for a moment (released asynchronously), so the same IP is asked for again
    /// during [`IP_RETRY_GRACE`] before the host may pick another one.
    pub ip_refused_since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How long a refused ClusterIP is retried before falling back to a recreate.
pub const IP_RETRY_GRACE: Duration = Duration::from_secs(15);

fn pp() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

impl ServiceSync {
    fn host_api(&self) -> Api<Service> {
        Api::namespaced(self.shared.host.clone(), &self.shared.host_namespace)
    }
    fn virtual_api(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.shared.virt.clone(), ns)
    }
    fn count(&self, op: &str) {
        self.shared
            .metrics
            .host_writes
            .with_label_values(&["services", op])
            .inc();
    }

    /// Deletes virtual Service `v` and creates it again with the host's ClusterIP; then points
    /// the host copy's markers at the new virtual UID.
    async fn recreate_virtual(
        &self,
        tc: &TranslateCtx,
        v: &Service,
        h: &Service,
        host_name: &str,
    ) -> Result<(), SyncError> {
        let (ns, name) = (v.namespace().unwrap_or_default(), v.name_any());
        tracing::warn!(v.ns = %ns, v.name = %name, host.name = %host_name, "ClusterIP taken on the host: recreating the virtual Service with the host's IP");
        self.shared.metrics.service_recreates.inc();
        let api = self.virtual_api(&ns);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: v.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(SyncError::from_kube(
                    e,
                    Cluster::Virtual,
                    "delete",
                    "Service",
                    &name,
                ));
            }
        }
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let created = api
            .create(&pp, &translate::recreated_virtual(v, h))
            .await
            .map_err(|e| SyncError::from_kube(e, Cluster::Virtual, "recreate", "Service", &name))?;
        let body = json!({"metadata": {"annotations": {markers::ANNOTATION_OBJECT_UID: created.uid()}}});
        apply::patch(
            &self.host_api(),
            Cluster::Host,
            "Service",
            host_name,
            &HostPatch {
                kind: PatchKind::Merge,
                body,
            },
        )
        .await?;
        self.count("patch");
        let _ = tc;
        Ok(())
    }

    async fn create(&self, tc: &TranslateCtx, v: &Service, host_name: &str) -> Result<Outcome, SyncError> {
        let api = self.host_api();
        let ours = |o: &Service| is_ours(tc, "Service", o.meta());
        tracing::info!(v.ns = ?v.namespace(), v.name = %v.name_any(), host.name = %host_name, "creating host service");
        let created = match apply::create(
            &api,
            "Service",
            host_name,
            &translate::host_service(tc, v, true),
            ours,
        )
        .await
        {
            Ok(c) => c,
            Err(SyncError::Rejected { message, .. }) if translate::is_ip_conflict(&message) => {
                let waited = {
                    let mut m = self
                        .ip_refused_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    m.entry(host_name.to_owned())
                        .or_insert_with(std::time::Instant::now)
                        .elapsed()
                };
                if waited < IP_RETRY_GRACE {
                    tracing::debug!(host.name = %host_name, %message, "ClusterIP not free on the host yet; retrying");
                    return Ok(Outcome::requeue(Duration::from_secs(1)));
                }
                tracing::info!(host.name = %host_name, %message, "virtual ClusterIP unavailable on the host; letting the host choose");
                apply::create(
                    &api,
                    "Service",
                    host_name,
                    &translate::host_service(tc, v, false),
                    ours,
                )
                .await?
            }
            Err(e) => return Err(e),
        };
        self.recent.record(host_name);
        self.count("create");
        self.ip_refused_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(host_name);
        if translate::ip_mismatch(v, &created).is_some() {
            self.recreate_virtual(tc, v, &created, host_name).await?;
        }
        Ok(Outcome::done())
    }

    /// Replaces a special virtual Service (one the syncer owns) with `desired`: the current
    /// one is deleted (UID precondition) and `desired` created. `false`: someone recreated it
    /// first (409), look again shortly.
    async fn replace_special(&self, current: Option<&Service>, desired: &Service) -> Result<bool, SyncError> {
        let (ns, name) = (desired.namespace().unwrap_or_default(), desired.name_any());
        let api = self.virtual_api(&ns);
        if let Some(uid) = current.and_then(|c| c.uid()) {
            apply::delete(&api, Cluster::Virtual, "Service", &name, &uid, None).await?;
        }
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&pp, desired).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(SyncError::from_kube(
                e,
                Cluster::Virtual,
                "create",
                "Service",
                &name,
            )),
        }
    }

    fn special_service(spec: Value) -> Result<Service, SyncError> {
        serde_json::from_value(spec)
            .map_err(|e| SyncError::Translate(crate::engine::error::TranslateError::Refused(e.to_string())))
    }

    /// Publishes virtual kube-system/kube-dns on the DNS Service's ClusterIP (the nameserver of
    /// synced pods), so tools that look for the cluster DNS find it.
    async fn reconcile_kube_dns(&self, tc: &TranslateCtx) -> Result<Outcome, SyncError> {
        if tc.dns_nameserver == tc.kube_service_ip {
            return Ok(Outcome::done()); // no separate DNS Service on the host: nothing to publish
        }
        let current = self
            .virtual_services
            .get(&ObjectRef::new("kube-dns").within("kube-system"));
        if current.as_ref().and_then(|s| translate::cluster_ip(s)).as_deref()
            == Some(tc.dns_nameserver.as_str())
        {
            return Ok(Outcome::done());
        }
        tracing::info!(ip = %tc.dns_nameserver, "publishing the virtual kube-system/kube-dns Service");
        let desired = Self::special_service(json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "vnest-dns", "kubernetes.io/cluster-service": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": tc.dns_nameserver, "clusterIPs": [tc.dns_nameserver],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 1053},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 1053}]}
        }))?;
        Ok(if self.replace_special(current.as_deref(), &desired).await? {
            Outcome::done()
        } else {
            Outcome::requeue(Duration::from_secs(1))
        })
    }

    /// Keeps virtual default/kubernetes on the vcluster Service's ClusterIP and endpoints.
    async fn reconcile_kubernetes(&self, tc: &TranslateCtx) -> Result<Outcome, SyncError> {
        let current = self
            .virtual_services
            .get(&ObjectRef::new("kubernetes").within("default"));
        let ip_ok = current.as_ref().and_then(|s| translate::cluster_ip(s)).as_deref()
            == Some(tc.kube_service_ip.as_str());
        if !ip_ok {
            tracing::info!(ip = %tc.kube_service_ip, "pointing the virtual default/kubernetes Service at the vcluster Service");
            let desired = Self::special_service(json!({
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": tc.kube_service_ip, "clusterIPs": [tc.kube_service_ip],
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                         "sessionAffinity": "None"}
            }))?;
            if !self.replace_special(current.as_deref(), &desired).await? {
                // The API server's own bootstrap controller may have recreated it first.
                return Ok(Outcome::requeue(Duration::from_secs(1)));
            }
        }
        // Endpoints: the ready addresses of the vcluster Service's https port on the host.
        let host_eps = self
            .host_endpoints
            .get(&ObjectRef::new(&self.service_name).within(&self.shared.host_namespace));
        let addresses: Vec<EndpointAddress> = host_eps
            .iter()
            .flat_map(|e| e.subsets.clone().unwrap_or_default())
            .filter(|s| {
                s.ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some("https"))
            })
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| EndpointAddress {
                ip: a.ip,
                ..EndpointAddress::default()
            })
            .collect();
        let subsets = if addresses.is_empty() {
            None
        } else {
            Some(vec![EndpointSubset {
                addresses: Some(addresses),
                not_ready_addresses: None,
                ports: Some(vec![EndpointPort {
                    name: Some("https".into()),
                    port: 6443,
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }]),
            }])
        };
        let eps_api: Api<Endpoints> = Api::namespaced(self.shared.virt.clone(), "default");
        let current_eps = self
            .virtual_endpoints
            .get(&ObjectRef::new("kubernetes").within("default"));
        let current_subsets = current_eps.as_ref().and_then(|e| e.subsets.clone());
        if current_eps.is_none() || current_subsets != subsets {
            let body = Endpoints {
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
            let ssa = PatchParams::apply(FIELD_MANAGER).force();
            eps_api
                .patch("kubernetes", &ssa, &Patch::Apply(&body))
                .await
                .map_err(|e| SyncError::from_kube(e, Cluster::Virtual, "apply", "Endpoints", "kubernetes"))?;
        }
        Ok(Outcome::done())
    }
}

impl Reconciler for ServiceSync {
    fn name(&self) -> &'static str {
        "services"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.shared.translate_ctx()?;
        if translate::is_special(&key.namespace, &key.name) {
            return if key.namespace == "kube-system" {
                self.reconcile_kube_dns(&tc).await
            } else {
                self.reconcile_kubernetes(&tc).await
            };
        }
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self
            .virtual_services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let h = self
            .host_services
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace));
        if let Some(h) = &h {
            if !is_ours(&tc, "Service", h.meta()) {
                return Err(SyncError::Foreign {
                    kind: "Service",
                    host_name,
                });
            }
            self.recent.observed(&host_name);
        }
        let host_api = self.host_api();
        match (v.as_deref(), h.as_deref()) {
            (None, None) => Ok(Outcome::done()),
            (None, Some(h)) => {
                if h.meta().deletion_timestamp.is_none()
                    && let Some(uid) = h.uid()
                {
                    tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, "deleting host service");
                    apply::delete(&host_api, Cluster::Host, "Service", &host_name, &uid, None).await?;
                    self.count("delete");
                }
                Ok(Outcome::done())
            }
            (Some(_), None) if self.recent.pending(&host_name) => {
                Ok(Outcome::requeue(Duration::from_secs(1)))
            }
            (Some(v), None) if v.meta().deletion_timestamp.is_none() => self.create(&tc, v, &host_name).await,
            (Some(_), None) => Ok(Outcome::done()),
            (Some(v), Some(h)) => {
                if markers::source_of(h.meta()).map(|s| s.uid) != v.uid() {
                    // A Service recreated under the same name: its host copy goes, a new one comes.
                    if h.meta().deletion_timestamp.is_none()
                        && let Some(uid) = h.uid()
                    {
                        apply::delete(&host_api, Cluster::Host, "Service", &host_name, &uid, None).await?;
                        self.count("delete");
                    }
                    return Ok(Outcome::requeue(Duration::from_secs(1)));
                }
                if translate::ip_mismatch(v, h).is_some() {
                    self.recreate_virtual(&tc, v, h, &host_name).await?;
                    return Ok(Outcome::done());
                }
                let (labels, annotations) = plan::desired_metadata(
                    &tc.vcluster,
                    "Service",
                    v.meta(),
                    h.meta(),
                    &Default::default(),
                    &Default::default(),
                    &[],
                );
                let meta = plan::metadata_patch(h.meta(), &labels, &annotations);
                let spec = translate::update_spec_patch(&tc, v, h);
                if meta.is_some() || spec.is_some() {
                    let mut body = spec.unwrap_or_else(|| json!({}));
                    let mut m = meta.unwrap_or_else(|| json!({}));
                    m["resourceVersion"] = Value::from(h.resource_version().unwrap_or_default());
                    body["metadata"] = m;
                    tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, "patching host service");
                    apply::patch(
                        &host_api,
                        Cluster::Host,
                        "Service",
                        &host_name,
                        &HostPatch {
                            kind: PatchKind::Merge,
                            body,
                        },
                    )
                    .await?;
                    self.count("patch");
                }
                let vapi = self.virtual_api(&key.namespace);
                if let Some(mut body) = translate::virtual_spec_patch(v, h) {
                    body["metadata"] = json!({"resourceVersion": v.resource_version()});
                    vapi.patch(&key.name, &pp(), &Patch::Merge(&body))
                        .await
                        .map_err(|e| {
                            SyncError::from_kube(e, Cluster::Virtual, "patch", "Service", &key.name)
                        })?;
                }
                if let Some(body) = translate::virtual_status_patch(v, h) {
                    vapi.patch_status(&key.name, &pp(), &Patch::Merge(&body))
                        .await
                        .map_err(|e| {
                            SyncError::from_kube(e, Cluster::Virtual, "patch status of", "Service", &key.name)
                        })?;
                }
                Ok(Outcome::done())
            }
        }
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        self.virtual_services
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|v| v.object_ref(&()))
    }
}
