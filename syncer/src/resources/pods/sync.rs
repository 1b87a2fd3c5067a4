//! The pod reconciler: one key = one virtual pod. It reads both pods (and the token Secret, the
//! namespace's labels and Services, the pod's ConfigMaps and Secrets) from the watch caches,
//! asks [`super::plan::decide`] for the next step, and has the engine's executor make the
//! writes; tokens issued on the way and the created host pod go back into the decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

use super::CachedPod;
use super::plan::{self, PodView, Step};
use super::settings::PodSettings;
use super::tokens::{self, IssuedTokens};
use super::translate;
use crate::engine::Shared;
use crate::engine::error::SyncError;
use crate::engine::execute::{Done, Executor, Write};
use crate::engine::queue::Key;
use crate::engine::worker::{Outcome, Reconciler};
use crate::naming;

/// The refresh annotation of token Secrets, also read here by the e2e tests; its home is
/// [`crate::markers`].
pub use crate::markers::ANNOTATION_TOKEN_REFRESH_AT;

/// Decisions per reconcile at most (issue tokens, create, write the token Secret, ...).
const MAX_STEPS: usize = 4;

pub struct PodSync {
    pub executor: Executor,
    /// The pod kind's settings (from the command line).
    pub settings: PodSettings,
    pub virtual_pods: Store<CachedPod>,
    pub host_pods: Store<CachedPod>,
    pub host_secrets: Store<Secret>,
    pub virtual_namespaces: Store<Namespace>,
    pub virtual_configmaps: Store<ConfigMap>,
    pub virtual_secrets: Store<Secret>,
    pub virtual_services: Store<Service>,
    /// When each new virtual pod was first seen, for the sync-lag metric.
    pub first_seen: Mutex<HashMap<Key, Instant>>,
}

impl PodSync {
    fn shared(&self) -> &Arc<Shared> {
        self.executor.shared()
    }

    /// Records the first sight of a virtual pod that has no host copy yet.
    pub fn seen(&self, key: &Key) {
        let mut m = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(key.clone()).or_insert_with(Instant::now);
    }

    /// The host create is about to be sent: the syncer's own share of the sync lag ends here.
    fn prepared(&self, key: &Key) {
        let first = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied();
        if let Some(t) = first {
            self.shared()
                .metrics
                .sync_prepare
                .with_label_values(&["pods"])
                .observe(t.elapsed().as_secs_f64());
        }
    }

    fn created(&self, key: &Key) {
        let first = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
        if let Some(t) = first {
            self.shared()
                .metrics
                .sync_lag
                .with_label_values(&["pods"])
                .observe(t.elapsed().as_secs_f64());
        }
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.virtual_namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// The ConfigMaps/Secrets `v` requires that its namespace does not have.
    fn missing_references(&self, ns: &str, v: &Pod) -> Vec<String> {
        let required = translate::required_references(v);
        let mut missing: Vec<String> = required
            .configmaps
            .iter()
            .filter(|n| {
                self.virtual_configmaps
                    .get(&ObjectRef::new(n).within(ns))
                    .is_none()
            })
            .map(|n| format!("ConfigMap {n:?}"))
            .collect();
        missing.extend(
            required
                .secrets
                .iter()
                .filter(|n| self.virtual_secrets.get(&ObjectRef::new(n).within(ns)).is_none())
                .map(|n| format!("Secret {n:?}")),
        );
        missing
    }

    /// The virtual Services of `ns` (service-link variables of a pod created there).
    fn services(&self, ns: &str) -> Vec<Service> {
        self.virtual_services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
            .map(|s| s.as_ref().clone())
            .collect()
    }

    /// The host pod in the cache when it is newer (another resourceVersion) than `seen`.
    fn newer_host_pod(
        &self,
        host_ns: &str,
        host_name: &str,
        seen: Option<&Pod>,
    ) -> Result<Option<Pod>, SyncError> {
        let Some(cached) = self.host_pods.get(&ObjectRef::new(host_name).within(host_ns)) else {
            return Ok(None);
        };
        let seen_version = seen.and_then(|p| p.metadata.resource_version.as_deref());
        if cached.metadata.resource_version.as_deref() == seen_version {
            return Ok(None);
        }
        cached.read().map(Some)
    }

    /// Sends the TokenRequests and collects the tokens.
    async fn issue(
        &self,
        ns: &str,
        requests: Vec<(String, crate::engine::execute::Action)>,
    ) -> Result<IssuedTokens, SyncError> {
        let mut answers = Vec::with_capacity(requests.len());
        for (key, action) in requests {
            let done = self.executor.run(&action).await?;
            answers.push((key, done.object::<TokenRequest>()));
        }
        tokens::issued(answers, ns, Timestamp::now())
    }
}

impl Reconciler for PodSync {
    fn name(&self) -> &'static str {
        "pods"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.shared().translate_ctx()?;
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self
            .virtual_pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|c| c.read())
            .transpose()?;
        if let Some(v) = &v {
            self.executor.seen_virtual::<Pod>(
                &key.namespace,
                &key.name,
                v.metadata.resource_version.as_deref(),
            );
        }
        let mut h = self
            .host_pods
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace))
            .map(|c| c.read())
            .transpose()?;
        if h.is_some() {
            self.executor.observed(&host_name);
        }
        let secret_name = naming::token_secret_name(&tc.vcluster, &key.namespace, &key.name);
        let token_secret = self
            .host_secrets
            .get(&ObjectRef::new(&secret_name).within(&tc.host_namespace));
        if token_secret.is_some() {
            self.executor.observed(&secret_name);
        }
        let namespace_labels = self.namespace_labels(&key.namespace);
        let creating = v.is_some() && h.is_none();
        // Only a create reads the Services (environment) and the references.
        let services = if creating {
            self.services(&key.namespace)
        } else {
            Vec::new()
        };
        let missing = match (&v, creating) {
            (Some(v), true) => self.missing_references(&key.namespace, v),
            _ => Vec::new(),
        };
        let mut issued: Option<IssuedTokens> = None;
        let mut echo_wait: Option<Duration> = None;
        for _ in 0..MAX_STEPS {
            let view = PodView {
                key,
                host_name: &host_name,
                virtual_pod: v.as_ref(),
                host_pod: h.as_ref(),
                create_pending: self.executor.create_pending(&host_name),
                token_secret: token_secret.as_deref(),
                token_secret_pending: self.executor.create_pending(&secret_name),
                namespace_labels: &namespace_labels,
                services: &services,
                missing: &missing,
                tokens: issued.as_ref(),
                bound_ago: v
                    .as_ref()
                    .and_then(|v| v.metadata.uid.as_deref())
                    .and_then(|uid| self.executor.bound_ago(&key.namespace, &key.name, uid)),
                now: Timestamp::now(),
            };
            match plan::decide(&tc, &self.settings, &view)? {
                Step::IssueTokens(requests) => {
                    issued = Some(self.issue(&key.namespace, requests).await?);
                }
                Step::Write { plan, then_again } => {
                    let mut moved_on = false;
                    for (i, action) in plan.actions.iter().enumerate() {
                        if plan::look_again_before(&plan.actions, i)
                            && let Some(newer) =
                                self.newer_host_pod(&tc.host_namespace, &host_name, h.as_ref())?
                        {
                            // Decide again on it: the binding is remembered, the status is
                            // the newer one.
                            h = Some(newer);
                            moved_on = true;
                            break;
                        }
                        let creates_pod = action.target.kind == "Pod"
                            && action.target.cluster == crate::error::Cluster::Host
                            && matches!(action.write, Write::Create { .. });
                        if creates_pod {
                            self.prepared(key);
                        }
                        let done = self.executor.run(action).await?;
                        if let Done::AwaitingEcho(left) = done {
                            // Its echo wakes this key; if it never comes, look again then.
                            echo_wait = Some(echo_wait.map_or(left, |w: Duration| w.min(left)));
                        }
                        if creates_pod {
                            self.created(key);
                            h = done.object::<Pod>();
                        }
                    }
                    if moved_on {
                        continue;
                    }
                    if !then_again {
                        let requeue_after = match (plan.requeue_after, echo_wait) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        return Ok(Outcome { requeue_after });
                    }
                }
            }
        }
        tracing::warn!(v.ns = %key.namespace, v.name = %key.name, "pod decision did not settle; looking again");
        Ok(Outcome::requeue(crate::engine::plan::RECHECK))
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        self.virtual_pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|v| v.object_ref(&()))
    }
}
