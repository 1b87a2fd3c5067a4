//! The pod reconciler: one key = one virtual pod. It reads both pods (and the token Secret)
//! from the watch caches and makes at most the writes that are missing:
//! create the host pod and its token Secret; keep mutable fields, the token and the virtual
//! pod's node binding and status in step; delete in both directions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Binding, ConfigMap, Namespace, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::CachedPod;
use super::settings::{PodSettings, TokenStorage};
use super::translate::{self, PodInputs};
use crate::engine::apply::{self, FIELD_MANAGER, RecentWrites};
use crate::engine::error::SyncError;
use crate::engine::plan::{self, HostPatch, PatchKind};
use crate::engine::queue::Key;
use crate::engine::standard::is_ours;
use crate::engine::worker::{Outcome, Reconciler};
use crate::engine::{Shared, TranslateCtx};
use crate::error::Cluster;
use crate::markers::TOKEN_SECRET_KIND;
use crate::{markers, naming};

/// The refresh annotation of token Secrets, also read here by the e2e tests; its home is
/// [`crate::markers`].
pub use crate::markers::ANNOTATION_TOKEN_REFRESH_AT;

pub struct PodSync {
    pub shared: Arc<Shared>,
    /// The pod kind's settings (from the command line).
    pub settings: PodSettings,
    pub virtual_pods: Store<CachedPod>,
    pub host_pods: Store<CachedPod>,
    pub host_secrets: Store<Secret>,
    pub virtual_namespaces: Store<Namespace>,
    pub virtual_configmaps: Store<ConfigMap>,
    pub virtual_secrets: Store<Secret>,
    pub virtual_services: Store<k8s_openapi::api::core::v1::Service>,
    /// When each new virtual pod was first seen, for the sync-lag metric.
    pub first_seen: Mutex<HashMap<Key, Instant>>,
    /// Host pods and token Secrets created but maybe not in the caches yet.
    pub recent: RecentWrites,
    /// Virtual pods (by uid) this process deleted but the cache may still show: one DELETE
    /// per pod, not one per watch event until the cache catches up.
    pub recent_virtual_deletes: RecentWrites,
    /// The same for host pods (a namespace deletion made ~0.7 % of host deletes twice).
    pub recent_host_deletes: RecentWrites,
}

impl PodSync {
    fn host_pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.shared.host.clone(), &self.shared.host_namespace)
    }
    fn host_secrets_api(&self) -> Api<Secret> {
        Api::namespaced(self.shared.host.clone(), &self.shared.host_namespace)
    }
    fn virtual_pods_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.shared.virt.clone(), ns)
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
            self.shared
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
            self.shared
                .metrics
                .sync_lag
                .with_label_values(&["pods"])
                .observe(t.elapsed().as_secs_f64());
        }
    }

    fn count_write(&self, what: &str, op: &str) {
        self.shared
            .metrics
            .host_writes
            .with_label_values(&[what, op])
            .inc();
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.virtual_namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Deletes a host pod (UID-guarded) unless this process just did with the same grace and
    /// the cache has not caught up yet.
    async fn delete_host_once(
        &self,
        host_name: &str,
        uid: &str,
        grace: Option<i64>,
    ) -> Result<(), SyncError> {
        let once = format!("{uid}/{grace:?}");
        if self.recent_host_deletes.pending(&once) {
            return Ok(());
        }
        apply::delete(&self.host_pods_api(), Cluster::Host, "Pod", host_name, uid, grace).await?;
        self.count_write("pods", "delete");
        self.recent_host_deletes.record(&once);
        Ok(())
    }

    async fn delete_virtual(&self, v: &Pod, grace: Option<i64>, why: &str) -> Result<(), SyncError> {
        let (ns, name, uid) = (
            v.namespace().unwrap_or_default(),
            v.name_any(),
            v.uid().unwrap_or_default(),
        );
        let once = format!("{uid}/{grace:?}");
        if self.recent_virtual_deletes.pending(&once) {
            return Ok(());
        }
        tracing::info!(v.ns = %ns, v.name = %name, grace, why, "deleting virtual pod");
        apply::delete(
            &self.virtual_pods_api(&ns),
            Cluster::Virtual,
            "Pod",
            &name,
            &uid,
            grace,
        )
        .await?;
        self.recent_virtual_deletes.record(&once);
        Ok(())
    }

    async fn create(
        &self,
        key: &Key,
        tc: &TranslateCtx,
        v: &Pod,
        host_name: &str,
    ) -> Result<Outcome, SyncError> {
        let labels = self.namespace_labels(&key.namespace);
        let services: Vec<k8s_openapi::api::core::v1::Service> = self
            .virtual_services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
            .map(|s| s.as_ref().clone())
            .collect();
        let mut desired = translate::host_pod(
            &PodInputs {
                ctx: tc,
                settings: &self.settings,
                namespace_labels: &labels,
                services: &services,
            },
            v,
        )?;
        self.check_references(&key.namespace, v)?;
        // Ask for the tokens first: a pod whose ServiceAccount is missing fails here, before
        // anything exists on the host (nothing half-done).
        let mut tokens = self.request_tokens(v).await?;
        if self.settings.token_storage == TokenStorage::Annotation
            && let Some(t) = tokens.take()
        {
            // Carried by the pod itself: no second host object, no second write.
            desired
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(t.annotations());
        }
        tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, "creating host pod");
        self.prepared(key);
        let created = apply::create(&self.host_pods_api(), "Pod", host_name, &desired, |o: &Pod| {
            is_ours(tc, "Pod", o.meta())
        })
        .await?;
        self.recent.record(host_name);
        self.count_write("pods", "create");
        self.created(key);
        if let Some(tokens) = tokens {
            self.write_token_secret(tc, key, v, &created, None, tokens)
                .await?;
        }
        Ok(Outcome::done())
    }

    /// Refuses (for now) a pod whose required ConfigMaps/Secrets do not exist in its virtual
    /// namespace: like the kubelet, the tenant is told which one is missing; when it appears
    /// the pod is re-queued and created.
    fn check_references(&self, ns: &str, v: &Pod) -> Result<(), SyncError> {
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
        if missing.is_empty() {
            return Ok(());
        }
        Err(SyncError::Translate(
            crate::engine::error::TranslateError::Missing(format!(
                "waiting for {} in namespace {ns:?}: the pod starts once it exists",
                missing.join(", ")
            )),
        ))
    }

    /// Requests every projected ServiceAccount token of `v` from the virtual API server, bound
    /// to the virtual pod. Returns None when the pod mounts no token.
    async fn request_tokens(&self, v: &Pod) -> Result<Option<IssuedTokens>, SyncError> {
        let specs = translate::token_requests(v);
        if specs.is_empty() {
            return Ok(None);
        }
        let ns = v.namespace().unwrap_or_default();
        let sa = v
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.shared.virt.clone(), &ns);
        let mut data = BTreeMap::new();
        let mut refresh_at: Option<Timestamp> = None;
        for spec in specs {
            let request = TokenRequest {
                metadata: ObjectMeta::default(),
                spec: TokenRequestSpec {
                    audiences: spec.audience.clone().into_iter().collect(),
                    expiration_seconds: Some(spec.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: v.metadata.name.clone(),
                        uid: v.metadata.uid.clone(),
                    }),
                },
                status: None,
            };
            let issued: TokenRequest = api
                .create_subresource("token", &sa, &PostParams::default(), &request)
                .await
                .map_err(|e| {
                    SyncError::from_kube(e, Cluster::Virtual, "request a token for", "ServiceAccount", &sa)
                })?;
            let status = issued
                .status
                .ok_or_else(|| token_error(&ns, &sa, "no token in the answer"))?;
            let now = Timestamp::now();
            let expires = status.expiration_timestamp.0;
            let lifetime = expires.duration_since(now).as_secs_f64().max(0.0);
            let due = now.checked_add(jiff_secs(lifetime * 0.8)).unwrap_or(expires);
            refresh_at = Some(refresh_at.map_or(due, |r| r.min(due)));
            data.insert(spec.key, status.token);
        }
        Ok(Some(IssuedTokens {
            data,
            refresh_at: refresh_at.unwrap_or_else(Timestamp::now),
        }))
    }

    /// Creates (or renews) the Secret that holds the pod's tokens, owned by the host pod so it
    /// goes with it.
    async fn write_token_secret(
        &self,
        tc: &TranslateCtx,
        key: &Key,
        v: &Pod,
        host_pod: &Pod,
        existing: Option<&Secret>,
        tokens: IssuedTokens,
    ) -> Result<(), SyncError> {
        let name = naming::token_secret_name(&tc.vcluster, &key.namespace, &key.name);
        let refresh = tokens.refresh_at.to_string();
        match existing {
            None => {
                let mut meta = ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(tc.host_namespace.clone()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: host_pod.name_any(),
                        uid: host_pod.uid().unwrap_or_default(),
                        controller: Some(false),
                        block_owner_deletion: None,
                    }]),
                    annotations: Some([(ANNOTATION_TOKEN_REFRESH_AT.to_owned(), refresh)].into()),
                    ..ObjectMeta::default()
                };
                if let Some(source) = plan::source_from_virtual(&v.metadata) {
                    markers::mark(&mut meta, &tc.vcluster, TOKEN_SECRET_KIND, &source);
                }
                let secret = Secret {
                    metadata: meta,
                    data: Some(tokens.secret_data()),
                    type_: Some("Opaque".into()),
                    ..Secret::default()
                };
                let vc = tc.vcluster.clone();
                apply::create(
                    &self.host_secrets_api(),
                    "Secret",
                    &name,
                    &secret,
                    |o: &Secret| o.labels().get(markers::LABEL_MANAGED_BY) == Some(&vc),
                )
                .await?;
                self.recent.record(&name);
                self.count_write("tokens", "create");
            }
            Some(s) => {
                let data: BTreeMap<String, Value> = tokens
                    .secret_data()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
                    .collect();
                let body = serde_json::json!({
                    "metadata": {
                        "resourceVersion": s.resource_version(),
                        "annotations": {ANNOTATION_TOKEN_REFRESH_AT: refresh},
                    },
                    "data": data,
                });
                apply::patch(
                    &self.host_secrets_api(),
                    Cluster::Host,
                    "Secret",
                    &name,
                    &HostPatch {
                        kind: PatchKind::Merge,
                        body,
                    },
                )
                .await?;
                self.count_write("tokens", "patch");
            }
        }
        tracing::debug!(v.ns = %key.namespace, v.name = %key.name, "token secret written");
        Ok(())
    }

    /// Keeps the token Secret present and fresh; returns when to look again.
    async fn ensure_tokens(
        &self,
        tc: &TranslateCtx,
        key: &Key,
        v: &Pod,
        h: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        if translate::token_requests(v).is_empty() {
            return Ok(None);
        }
        if translate::uses_annotation_tokens(h) {
            return self.refresh_token_annotations(key, v, h).await;
        }
        let name = naming::token_secret_name(&tc.vcluster, &key.namespace, &key.name);
        let existing = self
            .host_secrets
            .get(&ObjectRef::new(&name).within(&tc.host_namespace));
        if existing.is_some() {
            self.recent.observed(&name);
        } else if self.recent.pending(&name) {
            return Ok(Some(Duration::from_secs(1))); // just created; the cache lags
        }
        let now = Timestamp::now();
        if let Some(s) = &existing {
            let owned_by_this_pod = s
                .owner_references()
                .iter()
                .any(|o| Some(o.uid.as_str()) == h.uid().as_deref());
            if owned_by_this_pod {
                match refresh_due(&s.metadata, now) {
                    Some(wait) if !wait.is_zero() => return Ok(Some(wait)),
                    _ => {}
                }
            }
        }
        let tokens = self
            .request_tokens(v)
            .await?
            .ok_or_else(|| token_error(&key.namespace, "", "no tokens"))?;
        let wait = duration_until(tokens.refresh_at, now);
        self.write_token_secret(tc, key, v, h, existing.as_deref(), tokens)
            .await?;
        Ok(Some(wait))
    }

    /// Renews the tokens a host pod carries in its annotations when they are due (one pod
    /// patch); returns when to look again.
    async fn refresh_token_annotations(
        &self,
        key: &Key,
        v: &Pod,
        h: &Pod,
    ) -> Result<Option<Duration>, SyncError> {
        let now = Timestamp::now();
        if let Some(wait) = refresh_due(&h.metadata, now).filter(|w| !w.is_zero()) {
            return Ok(Some(wait));
        }
        let tokens = self
            .request_tokens(v)
            .await?
            .ok_or_else(|| token_error(&key.namespace, "", "no tokens"))?;
        let wait = duration_until(tokens.refresh_at, now);
        let body = serde_json::json!({
            "metadata": {"resourceVersion": h.resource_version(), "annotations": tokens.annotations()},
        });
        let host_name = h.name_any();
        apply::patch(
            &self.host_pods_api(),
            Cluster::Host,
            "Pod",
            &host_name,
            &HostPatch {
                kind: PatchKind::Merge,
                body,
            },
        )
        .await?;
        self.count_write("tokens", "patch");
        tracing::debug!(v.ns = %key.namespace, v.name = %key.name, "token annotations renewed");
        Ok(Some(wait))
    }

    async fn bind(&self, v: &Pod, node: &str) -> Result<(), SyncError> {
        let (ns, name) = (v.namespace().unwrap_or_default(), v.name_any());
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: v.uid(),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..ObjectReference::default()
            },
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let bound: Result<Value, _> = self
            .virtual_pods_api(&ns)
            .create_subresource("binding", &name, &pp, &binding)
            .await;
        match bound {
            Ok(_) => tracing::debug!(v.ns = %ns, v.name = %name, node, "bound virtual pod"),
            // Already bound: the cache had not shown our own earlier bind yet (only the syncer
            // binds virtual pods; a pod created with a nodeName is never bound). Go on to the
            // status rather than around the queue (measured at 3000 pods: 9–78 such 409s).
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(v.ns = %ns, v.name = %name, node, "virtual pod already bound");
            }
            Err(e) => return Err(SyncError::from_kube(e, Cluster::Virtual, "bind", "Pod", &name)),
        }
        Ok(())
    }

    /// Copies the host status onto the virtual pod (nothing when equal).
    ///
    /// The patch is pinned to the pod's uid, not to its resourceVersion. Only the syncer writes
    /// a virtual pod's status (there is no virtual kubelet), one reconcile per key at a time,
    /// from the newest host pod the cache has, so a write never goes backwards; a diff against
    /// a virtual pod the cache shows a little late can at worst leave a field that the next
    /// reconcile (woken by this very write's watch event) removes. Measured at 3000 pods: with
    /// a resourceVersion precondition 2–10 % of status patches failed with 409 and went round
    /// the queue again. The uid keeps a pod that was deleted and recreated under the same name
    /// (a StatefulSet's) from getting its predecessor's status: the API server refuses a uid
    /// change (422, "metadata.uid ... field is immutable"), taken here as a conflict.
    async fn copy_status(&self, v: &Pod, h: &Pod) -> Result<(), SyncError> {
        let Some(status) = translate::virtual_status(v, h) else {
            return Ok(());
        };
        if v.status.as_ref() == Some(&status) {
            // Already current (every pod of a resync): no JSON is built to find that out.
            return Ok(());
        }
        let (ns, name) = (v.namespace().unwrap_or_default(), v.name_any());
        let from = serde_json::to_value(&v.status).unwrap_or(Value::Null);
        let to = serde_json::to_value(&status).unwrap_or(Value::Null);
        let Some(diff) = plan::merge_diff(&from, &to) else {
            return Ok(());
        };
        let body = serde_json::json!({"metadata": {"uid": v.uid()}, "status": diff});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.virtual_pods_api(&ns)
            .patch_status(&name, &pp, &Patch::Merge(&body))
            .await
            .map_err(|e| status_patch_error(e, &name))?;
        Ok(())
    }
}

/// A status patch pinned to a uid that the pod of that name no longer has is a conflict (the
/// pod was replaced): looked at again once the cache shows the new pod.
fn status_patch_error(e: kube::Error, name: &str) -> SyncError {
    match &e {
        kube::Error::Api(s)
            if s.code == 422
                && s.details
                    .as_ref()
                    .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid")) =>
        {
            SyncError::Conflict {
                cluster: Cluster::Virtual,
                kind: "Pod",
                name: name.to_owned(),
            }
        }
        _ => SyncError::from_kube(e, Cluster::Virtual, "update status of", "Pod", name),
    }
}

/// Tokens by [`translate::token_key`], and when to renew them.
struct IssuedTokens {
    data: BTreeMap<String, String>,
    refresh_at: Timestamp,
}

impl IssuedTokens {
    /// The host pod annotations carrying these tokens ([`TokenStorage::Annotation`]).
    fn annotations(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .data
            .iter()
            .map(|(key, token)| (translate::token_annotation(key), token.clone()))
            .collect();
        out.insert(
            ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
            self.refresh_at.to_string(),
        );
        out
    }

    fn secret_data(&self) -> BTreeMap<String, ByteString> {
        self.data
            .iter()
            .map(|(key, token)| (key.clone(), ByteString(token.clone().into_bytes())))
            .collect()
    }
}

fn token_error(ns: &str, sa: &str, why: &str) -> SyncError {
    SyncError::Translate(crate::engine::error::TranslateError::Refused(format!(
        "cannot get a token for ServiceAccount {ns}/{sa}: {why}"
    )))
}

fn jiff_secs(secs: f64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs_f64(secs.max(0.0))
}

fn duration_until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// How long until the tokens of the object (token Secret or host pod) must be renewed (zero
/// when due; None when unknown).
pub fn refresh_due(meta: &ObjectMeta, now: Timestamp) -> Option<Duration> {
    let at: Timestamp = meta
        .annotations
        .as_ref()?
        .get(ANNOTATION_TOKEN_REFRESH_AT)?
        .parse()
        .ok()?;
    Some(duration_until(at, now))
}

impl Reconciler for PodSync {
    fn name(&self) -> &'static str {
        "pods"
    }

    async fn reconcile(&self, key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.shared.translate_ctx()?;
        let host_name = naming::host_name(&tc.vcluster, &key.namespace, &key.name);
        let v = self
            .virtual_pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|c| c.read())
            .transpose()?;
        let h = self
            .host_pods
            .get(&ObjectRef::new(&host_name).within(&tc.host_namespace))
            .map(|c| c.read())
            .transpose()?;
        if let Some(h) = &h
            && !is_ours(&tc, "Pod", h.meta())
        {
            return Err(SyncError::Foreign {
                kind: "Pod",
                host_name,
            });
        }
        if h.is_some() {
            self.recent.observed(&host_name);
        }
        match (v.as_ref(), h.as_ref()) {
            (None, None) => Ok(Outcome::done()),
            (None, Some(h)) => {
                // The virtual pod is gone: delete the host copy (GC takes its token Secret).
                let p: plan::Plan<Pod> = plan::delete_host(h.meta(), "virtual pod deleted");
                if let plan::HostAction::Delete { uid, .. } = p.host {
                    tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, "deleting host pod (virtual pod gone)");
                    self.delete_host_once(&host_name, &uid, None).await?;
                }
                Ok(Outcome::done())
            }
            (Some(v), Some(h)) if markers::source_of(h.meta()).map(|s| s.uid) != v.uid() => {
                // A host copy of an older virtual pod with the same name.
                if h.meta().deletion_timestamp.is_none()
                    && let Some(uid) = h.uid()
                {
                    self.delete_host_once(&host_name, &uid, Some(0)).await?;
                }
                Ok(Outcome::requeue(Duration::from_secs(1)))
            }
            (Some(_), None) if self.recent.pending(&host_name) => {
                // Created a moment ago; the cache has not caught up yet.
                Ok(Outcome::requeue(Duration::from_secs(1)))
            }
            (Some(v), None) => {
                if v.meta().deletion_timestamp.is_some() {
                    // Nothing runs it any more and no kubelet will confirm: finish the delete.
                    self.delete_virtual(v, Some(0), "host pod is gone").await?;
                    return Ok(Outcome::done());
                }
                if v.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some() {
                    // It ran and its host pod vanished (deleted out-of-band, node lost): like a
                    // pod on a lost node, it is deleted so its controller replaces it.
                    self.delete_virtual(v, Some(0), "host pod was deleted").await?;
                    return Ok(Outcome::done());
                }
                self.create(key, &tc, v, &host_name).await
            }
            (Some(v), Some(h)) => self.sync_existing(key, &tc, v, h, &host_name).await,
        }
    }

    fn tenant_object(&self, key: &Key) -> Option<ObjectReference> {
        self.virtual_pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .map(|v| v.object_ref(&()))
    }
}

impl PodSync {
    async fn sync_existing(
        &self,
        key: &Key,
        tc: &TranslateCtx,
        v: &Pod,
        h: &Pod,
        host_name: &str,
    ) -> Result<Outcome, SyncError> {
        let host_api = self.host_pods_api();
        if v.meta().deletion_timestamp.is_some() {
            if h.meta().deletion_timestamp.is_none()
                && let Some(uid) = h.uid()
            {
                let grace = v.meta().deletion_grace_period_seconds;
                tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, grace, "deleting host pod (virtual pod deleted)");
                self.delete_host_once(host_name, &uid, grace).await?;
            }
            // Keep status flowing while it terminates; the key is re-queued by the host events.
            self.copy_status(v, h).await?;
            return Ok(Outcome::done());
        }
        if h.meta().deletion_timestamp.is_some() {
            // Evicted or deleted on the host: the virtual pod follows, with its own grace period.
            let grace = v.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
            self.copy_status(v, h).await?;
            self.delete_virtual(v, grace, "host pod is terminating").await?;
            return Ok(Outcome::done());
        }
        let mut outcome = Outcome::done();
        outcome.requeue_after = self.ensure_tokens(tc, key, v, h).await?;

        let labels = self.namespace_labels(&key.namespace);
        let inputs = PodInputs {
            ctx: tc,
            settings: &self.settings,
            namespace_labels: &labels,
            // Environment variables are fixed at create: updates never need the Services.
            services: &[],
        };
        if let Some(body) = translate::update_patch(&inputs, v, h) {
            tracing::info!(v.ns = %key.namespace, v.name = %key.name, host.name = %host_name, "patching host pod");
            apply::patch(
                &host_api,
                Cluster::Host,
                "Pod",
                host_name,
                &HostPatch {
                    kind: PatchKind::Strategic,
                    body,
                },
            )
            .await?;
            self.count_write("pods", "patch");
        }
        if let Some(body) = translate::ephemeral_containers_patch(&inputs, v, h)? {
            tracing::info!(v.ns = %key.namespace, v.name = %key.name, "adding ephemeral containers to the host pod");
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            host_api
                .patch_subresource("ephemeralcontainers", host_name, &pp, &Patch::Strategic(&body))
                .await
                .map_err(|e| {
                    SyncError::from_kube(e, Cluster::Host, "add ephemeral containers to", "Pod", host_name)
                })?;
            self.count_write("pods", "ephemeral");
        }
        if let Some(node) = translate::binding_needed(v, h) {
            self.bind(v, &node).await?;
            // The status follows at once rather than one watch round-trip later.
            self.copy_status(v, h).await?;
            return Ok(outcome);
        }
        self.copy_status(v, h).await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 422 Invalid as the API server sends it, with one cause on `field`.
    fn invalid(field: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
            "reason": "Invalid",
            "message": format!("Pod \"web-0\" is invalid: {field}: Invalid value: \"a\": field is immutable"),
            "details": {"name": "web-0", "kind": "Pod", "causes": [
                {"reason": "FieldValueInvalid", "message": "Invalid value: \"a\": field is immutable", "field": field}
            ]}
        }))
        .expect("a Status");
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn a_status_patch_refused_for_its_uid_is_a_conflict() {
        assert_eq!(
            status_patch_error(invalid("metadata.uid"), "web-0").category(),
            "conflict"
        );
        assert_eq!(
            status_patch_error(invalid("status.podIP"), "web-0").category(),
            "rejected"
        );
    }

    #[test]
    fn refresh_due_reads_the_annotation() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let mut s = ObjectMeta::default();
        assert_eq!(refresh_due(&s, now), None);
        s.annotations = Some(
            [(
                ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
                "2026-01-01T00:10:00Z".to_owned(),
            )]
            .into(),
        );
        assert_eq!(refresh_due(&s, now), Some(Duration::from_secs(600)));
        let later: Timestamp = "2026-01-01T01:00:00Z".parse().expect("time");
        assert_eq!(refresh_due(&s, later), Some(Duration::ZERO));
    }
}
