//! The Service reconciler: one key = one virtual Service. It reads the caches, asks the pure
//! [`plan`](super::plan) what to write and sends it through the [`Executor`]; it only finishes
//! the two steps that depend on an API answer (see [`FollowUp`]):
//!
//! - a host create refused because the virtual ClusterIP is taken on the host: the time of the
//!   first refusal is remembered per host name and the create planned again with how long the
//!   host has been refusing it (the same IP again after a second during [`IP_RETRY_GRACE`], then
//!   a create that lets the host pick, in the same reconcile);
//! - a host copy with another ClusterIP than the virtual Service: the virtual Service is deleted
//!   and created again with the host's IP (counted in `vnest_syncer_service_recreates_total`);
//!   its new uid, known only from the create's answer, then goes into the host copy's marker.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, ObjectReference, Service};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::plan::{self, FollowUp, IP_RETRY_GRACE, Seen, ServicePlan};
use super::translate;
use crate::engine::TranslateCtx;
use crate::engine::error::SyncError;
use crate::engine::execute::{Done, Executor};
use crate::engine::plan::Plan;
use crate::engine::queue::Key;
use crate::engine::worker::{Outcome, Reconciler};
use crate::naming;

pub struct ServiceSync {
    /// Sends every write (and remembers host creates the cache may not show yet).
    pub executor: Executor,
    pub virtual_services: Store<Service>,
    pub host_services: Store<Service>,
    /// Endpoints of the vcluster's own host Service (for the virtual default/kubernetes).
    pub host_endpoints: Store<Endpoints>,
    pub virtual_endpoints: Store<Endpoints>,
    /// The vcluster's host Service name.
    pub service_name: String,
    /// When the host first refused a Service's ClusterIP, by host name (until a create works).
    pub ip_refused_since: Mutex<HashMap<String, Instant>>,
}

impl ServiceSync {
    fn refusals(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.ip_refused_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the host has been refusing the ClusterIP of `host_name` (this refusal included).
    fn refused_for(&self, host_name: &str) -> Duration {
        self.refusals()
            .entry(host_name.to_owned())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    /// Sends the actions of `plan` in order; the answer of the last one.
    async fn run(&self, plan: &Plan) -> Result<Done, SyncError> {
        let mut last = Done::Skipped;
        for a in &plan.actions {
            last = self.executor.run(a).await?;
        }
        Ok(last)
    }

    /// Runs `sp` and its follow-up for virtual Service `v` and host copy `host_name`.
    async fn execute(
        &self,
        tc: &TranslateCtx,
        v: Option<&Service>,
        host_name: &str,
        sp: &ServicePlan,
    ) -> Result<Outcome, SyncError> {
        match sp.then {
            FollowUp::Nothing => {
                self.run(&sp.plan).await?;
            }
            FollowUp::Created { .. } => {
                let created = self.run(&sp.plan).await?;
                self.refusals().remove(host_name);
                let recreate = v
                    .zip(created.object::<Service>())
                    .and_then(|(v, created)| plan::after_create(v, &created));
                if let Some(recreate) = recreate {
                    self.recreate(tc, host_name, &recreate.plan).await?;
                }
            }
            FollowUp::Recreated => self.recreate(tc, host_name, &sp.plan).await?,
        }
        Ok(Outcome {
            requeue_after: sp.plan.requeue_after,
        })
    }

    /// Runs a recreate of the virtual Service ([`plan::plan_recreate`]), then points host copy
    /// `host_name` at the uid the new virtual Service got.
    async fn recreate(&self, tc: &TranslateCtx, host_name: &str, recreate: &Plan) -> Result<(), SyncError> {
        tracing::warn!(host.name = %host_name, "ClusterIP taken on the host: recreating the virtual Service with the host's IP");
        self.executor.shared().metrics.service_recreates.inc();
        let created = self.run(recreate).await?;
        let Some(uid) = created.object::<Service>().and_then(|s| s.uid()) else {
            // Cannot happen with a real API server; the host copy's stale uid marker then makes
            // the next reconcile replace it.
            return Err(SyncError::Cache {
                kind: plan::KIND,
                name: host_name.to_owned(),
                message: "the recreated virtual Service came back without a uid".into(),
            });
        };
        self.executor
            .run(&plan::marker_patch(tc, host_name, &uid))
            .await?;
        Ok(())
    }

    /// The special Services: never copied, kept pointing at the vcluster.
    async fn reconcile_special(&self, tc: &TranslateCtx, key: &Key) -> Result<Outcome, SyncError> {
        let current = self
            .virtual_services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let plan = if key.namespace == "kube-system" {
            plan::plan_kube_dns(tc, current.as_deref())?
        } else {
            let host_eps = self
                .host_endpoints
                .get(&ObjectRef::new(&self.service_name).within(&self.executor.shared().host_namespace));
            let current_eps = self
                .virtual_endpoints
                .get(&ObjectRef::new("kubernetes").within("default"));
            plan::plan_kubernetes(
                tc,
                current.as_deref(),
                host_eps.as_deref(),
                current_eps.as_deref(),
            )?
        };
        self.executor.run_all(&plan.actions).await?;
        Ok(Outcome {
            requeue_after: plan.requeue_after,
        })
    }
}

impl Reconciler for ServiceSync {
    fn name(&self) -> &'static str {
        "services"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.executor.shared().translate_ctx()?;
        if translate::is_special(&key.namespace, &key.name) {
            return self.reconcile_special(&tc, key).await;
        }
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self
            .virtual_services
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        let h = self
            .host_services
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace));
        if h.is_some() {
            self.executor.observed(&host_name);
        }
        let mut seen = Seen {
            virtual_service: v.as_deref(),
            host_service: h.as_deref(),
            host_name: &host_name,
            create_pending: self.executor.create_pending(&host_name),
            ip_refused_for: None,
        };
        let sp = plan::plan_service(&tc, seen)?;
        match self.execute(&tc, v.as_deref(), &host_name, &sp).await {
            Err(SyncError::Rejected { message, .. })
                if sp.then == (FollowUp::Created { asked_ip: true })
                    && translate::is_ip_conflict(&message) =>
            {
                let waited = self.refused_for(&host_name);
                if waited < IP_RETRY_GRACE {
                    tracing::debug!(host.name = %host_name, %message, "ClusterIP not free on the host yet; retrying");
                } else {
                    tracing::info!(host.name = %host_name, %message, "virtual ClusterIP unavailable on the host; letting the host choose");
                }
                seen.ip_refused_for = Some(waited);
                let sp = plan::plan_service(&tc, seen)?;
                self.execute(&tc, v.as_deref(), &host_name, &sp).await
            }
            other => other,
        }
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        self.virtual_services
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|v| v.object_ref(&()))
    }
}
