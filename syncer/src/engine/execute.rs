//! The one executor of planned writes, for every kind and both clusters.
//!
//! A kind's plan is pure: from what the caches observed it returns [`Action`]s, plain data
//! (target, verb, JSON body) that table tests compare without a client. The [`Executor`] sends
//! them, counts host writes, remembers what the caches may not show yet (creates and accepted
//! DELETEs: one request each, not one per watch event until the cache catches up), and turns
//! API answers into [`SyncError`]s with the same rules everywhere:
//! - create: AlreadyExists on the host is a quiet conflict when the object there is ours (the
//!   cache lags) and [`SyncError::Foreign`] when it is not (left untouched); on the virtual side
//!   it is a conflict (someone made it first: look again);
//! - delete: UID precondition, NotFound counts as done;
//! - bind: an already bound pod (409) is done;
//! - a write pinned to a uid the object no longer has (422 on `metadata.uid`) is a conflict.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::SyncError;
use super::ownership;
use super::recent::{self, DELETE_EXPECT_FOR, RecentWrites};
use super::{Shared, TranslateCtx};
use crate::error::Cluster;
use crate::markers;

/// How a patch body is interpreted by the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// Kubernetes strategic merge patch (lists merged by their patch merge key).
    Strategic,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostPatch {
    pub kind: PatchKind,
    pub body: Value,
}

/// The field manager of every write the syncer makes.
pub const FIELD_MANAGER: &str = "vnest-syncer";

/// The object a write goes to.
#[derive(Clone, PartialEq)]
pub struct Target {
    pub cluster: Cluster,
    /// Kind name in errors, logs and markers ("Pod").
    pub kind: &'static str,
    resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}/{}",
            self.cluster,
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }
}

impl Target {
    /// Object `name` of type `K` in `namespace` (None: cluster-scoped) on `cluster`.
    pub fn of<K: Resource<DynamicType = ()>>(cluster: Cluster, namespace: Option<&str>, name: &str) -> Self {
        Self {
            cluster,
            kind: kind_name::<K>(),
            resource: ApiResource::erase::<K>(&()),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// Our copy `name` of type `K` in the host namespace.
    pub fn host<K: Resource<DynamicType = ()>>(tc: &TranslateCtx, name: &str) -> Self {
        Self::of::<K>(Cluster::Host, Some(&tc.host_namespace), name)
    }

    /// Cluster, kind, namespace and name in one string (a key of the executor's memories).
    fn identity(&self) -> String {
        identity(
            self.cluster,
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            &self.name,
        )
    }

    /// Virtual object `namespace/name` of type `K` (`namespace` empty: cluster-scoped).
    pub fn virtual_object<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        let ns = (!namespace.is_empty()).then_some(namespace);
        Self::of::<K>(Cluster::Virtual, ns, name)
    }
}

/// What [`Target::identity`] gives, without building the target.
fn identity(cluster: Cluster, kind: &str, namespace: &str, name: &str) -> String {
    format!("{}/{kind}/{namespace}/{name}", cluster.as_str())
}

/// `K::KIND` as a `&'static str` (k8s-openapi kinds are constants).
fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// How a create tells our object from a foreign one holding the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// A copy of a virtual object: every marker must agree (see [`markers::is_managed`]).
    CopyOf(&'static str),
    /// Carries this vcluster's managed-by label (objects not named after a virtual one).
    ManagedBy,
}

/// One API request a plan asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// POST `body` (never apply: an object that exists under our name and is not ours must make
    /// the create fail, not be taken over).
    Create { body: Value, ownership: Ownership },
    /// Patch the object (or one of its subresources: `status`, `ephemeralcontainers`).
    Patch {
        subresource: Option<&'static str>,
        patch: HostPatch,
    },
    /// Server-side apply of `body` with our field manager, forced.
    Apply { body: Value },
    /// DELETE with the object's uid as precondition; sent once per (uid, grace) while the cache
    /// may still show the object.
    Delete { uid: String, grace_seconds: Option<i64> },
    /// Bind the (virtual) pod to `node`; an already bound pod is done.
    Bind { uid: Option<String>, node: String },
    /// POST `body` to a subresource of the object (a ServiceAccount's `token`); the answer is
    /// the result (the issued token).
    CreateSubresource { subresource: &'static str, body: Value },
}

impl Write {
    /// Bounded name for metrics and logs.
    pub fn op(&self) -> &'static str {
        match self {
            Write::Create { .. } => "create",
            Write::Patch {
                subresource: Some("ephemeralcontainers"),
                ..
            } => "ephemeral",
            Write::Patch { .. } => "patch",
            Write::Apply { .. } => "apply",
            Write::Delete { .. } => "delete",
            Write::Bind { .. } => "bind",
            Write::CreateSubresource { .. } => "create",
        }
    }

    /// A merge or strategic patch of the object itself.
    pub fn patch(kind: PatchKind, body: Value) -> Self {
        Write::Patch {
            subresource: None,
            patch: HostPatch { kind, body },
        }
    }

    /// A merge patch of the object's status.
    pub fn status(body: Value) -> Self {
        Write::Patch {
            subresource: Some("status"),
            patch: HostPatch {
                kind: PatchKind::Merge,
                body,
            },
        }
    }
}

/// A write to `target`, why, and which host-writes counter it adds to.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub target: Target,
    pub write: Write,
    /// Why (logged at info for every write).
    pub reason: &'static str,
    /// `what` label of `vnest_syncer_host_writes_total` ("pods", "tokens"); host writes only.
    pub counted_as: &'static str,
    /// A patch not sent again identically until the cache shows its result
    /// ([`Action::awaiting_echo`]).
    pub awaits_echo: bool,
}

impl Action {
    pub fn new(target: Target, write: Write, reason: &'static str) -> Self {
        Self {
            target,
            write,
            reason,
            counted_as: "",
            awaits_echo: false,
        }
    }

    /// The same patch, not sent again identically while the watch cache does not show the
    /// version it produced (see [`recent::Echoes`]); the reconciler tells the executor what it
    /// sees ([`Executor::seen_virtual`]). For patches a reconcile plans from its target's
    /// cached state (a status copied back), where an older cached version plans the same patch
    /// again.
    pub fn awaiting_echo(mut self) -> Self {
        self.awaits_echo = true;
        self
    }

    /// The same action counted under `what` in the host-writes metric.
    pub fn counted_as(mut self, what: &'static str) -> Self {
        self.counted_as = what;
        self
    }

    /// POST `object` (serialized with its apiVersion and kind).
    pub fn create<K: Resource<DynamicType = ()> + Serialize>(
        target: Target,
        object: &K,
        ownership: Ownership,
        reason: &'static str,
    ) -> Self {
        let body = serde_json::to_value(object).unwrap_or(Value::Null);
        Self::new(target, Write::Create { body, ownership }, reason)
    }

    /// A UID-guarded delete of the object `meta` describes (None while it is already going,
    /// or has no uid: deleting again would only cost a request).
    pub fn delete(
        target: Target,
        meta: &ObjectMeta,
        grace_seconds: Option<i64>,
        reason: &'static str,
    ) -> Option<Self> {
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        let uid = meta.uid.clone()?;
        Some(Self::new(target, Write::Delete { uid, grace_seconds }, reason))
    }
}

/// What a write returned.
#[derive(Debug)]
pub enum Done {
    /// The JSON the API server answered a create with (the created object, the issued token),
    /// parsed only when asked for ([`Done::object`]).
    Object(String),
    /// Sent (patch, apply, delete, bind: their answers are not read, so they are not parsed)
    /// or skipped because the same write is still pending.
    Sent,
    Skipped,
    /// Not sent: the same patch was sent and the cache does not show its result yet; the
    /// reconcile looks again after this long if no watch event wakes it first.
    AwaitingEcho(std::time::Duration),
}

impl Done {
    /// The answered object as `K` (None for answers without one).
    pub fn object<K: DeserializeOwned>(&self) -> Option<K> {
        match self {
            Done::Object(json) => serde_json::from_str(json).ok(),
            Done::Sent | Done::Skipped | Done::AwaitingEcho(_) => None,
        }
    }
}

/// Sends actions for one kind; its memory of recent writes lives as long as the kind.
pub struct Executor {
    shared: Arc<Shared>,
    /// Host creates (by name) the host cache may not show yet.
    created: RecentWrites,
    /// Accepted DELETEs (by cluster, uid and grace) the caches may still show.
    deleted: RecentWrites,
    /// Patches the API server refused as invalid (422), by target and body: the same patch
    /// would be refused again (an immutable field does not become mutable), so it is not sent
    /// again; a changed plan (the tenant edits the object) makes a new patch that is.
    refused: RecentWrites,
    /// Virtual pods (by namespace, name and uid) this process bound, or found bound: a pod's
    /// node never changes once set, so a reconcile whose cache does not show the binding yet
    /// does not send it again (under a burst the virtual watch lags by seconds: measured, 300
    /// of 1000 pods were bound twice, each answered 409 by a loaded API server).
    bound: RecentWrites,
    /// Patches awaiting their echo ([`Action::awaiting_echo`]), by target.
    echoes: recent::Echoes,
}

/// How long a patch refused as invalid is not sent again.
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

impl Executor {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            created: RecentWrites::default(),
            deleted: RecentWrites::remembering_for(DELETE_EXPECT_FOR),
            refused: RecentWrites::remembering_for(REFUSED_FOR),
            bound: RecentWrites::remembering_for(DELETE_EXPECT_FOR),
            echoes: recent::Echoes::default(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether a host create of `name` was sent and the cache may not show it yet.
    pub fn create_pending(&self, name: &str) -> bool {
        self.created.pending(name)
    }

    /// How long ago this process bound (or found bound) the virtual pod `namespace/name` of
    /// `uid`; None when it did not, or long ago.
    pub fn bound_ago(&self, namespace: &str, name: &str, uid: &str) -> Option<std::time::Duration> {
        self.bound.age(&binding_identity(namespace, name, uid))
    }

    /// The cache shows the host object `name` now: stop expecting its create.
    pub fn observed(&self, name: &str) {
        self.created.observed(name);
    }

    /// The cache shows the virtual `K` `namespace/name` at `version` (a reconcile read it): a
    /// patch awaiting its echo that produced this version is no longer awaited.
    pub fn seen_virtual<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) {
        let target = identity(Cluster::Virtual, kind_name::<K>(), namespace, name);
        self.echoes.seen(&target, version);
    }

    fn client(&self, cluster: Cluster) -> kube::Client {
        match cluster {
            Cluster::Host => self.shared.host.clone(),
            Cluster::Virtual => self.shared.virt.clone(),
        }
    }

    fn api(&self, target: &Target) -> Api<DynamicObject> {
        let client = self.client(target.cluster);
        match &target.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &target.resource),
            None => Api::all_with(client, &target.resource),
        }
    }

    /// Sends `request` (built for `target`'s collection; `what` names it, as kube's own
    /// methods do) and returns the answer's JSON unparsed: a write's answer is a whole object,
    /// and building it (kube's `Api` parses it into a `DynamicObject`, a `serde_json::Value`
    /// tree) for an answer nobody reads was a good part of the syncer's allocations in a burst.
    async fn request(
        &self,
        target: &Target,
        what: &'static str,
        request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<String, kube::Error> {
        let mut request = request.map_err(kube::Error::BuildRequest)?;
        request.extensions_mut().insert(what);
        self.client(target.cluster).request_text(request).await
    }

    /// Sends `action`.
    pub async fn run(&self, action: &Action) -> Result<Done, SyncError> {
        let t = &action.target;
        // The fence of the HA mode: a replica that lost (or never won) the lease writes nothing,
        // not even a reconcile that started while it led.
        if !self.shared.leadership.leads() {
            return Err(SyncError::NotLeading {
                kind: t.kind,
                name: t.name.clone(),
            });
        }
        let op = action.write.op();
        if let Write::Delete { uid, grace_seconds } = &action.write
            && self.deleted.pending(&delete_key(t.cluster, uid, *grace_seconds))
        {
            return Ok(Done::Skipped);
        }
        let bind = bind_key(action);
        if let Some(key) = &bind
            && self.bound.pending(key)
        {
            tracing::debug!(kind = t.kind, name = %t.name, "bound already; the cache does not show it yet");
            return Ok(Done::Skipped);
        }
        let refusal = patch_key(action);
        if let Some(key) = &refusal
            && self.refused.pending(key)
        {
            tracing::debug!(kind = t.kind, name = %t.name, "not sending again a patch the API server refused as invalid");
            return Ok(Done::Skipped);
        }
        // The refusal key names the target and the body: the same patch is the same key.
        let echo = refusal
            .as_ref()
            .filter(|_| action.awaits_echo)
            .map(|patch| (t.identity(), patch.clone()));
        if let Some((target, patch)) = &echo
            && let Some(left) = self.echoes.awaited(target, patch)
        {
            tracing::debug!(kind = t.kind, name = %t.name, "the same patch was sent; the cache does not show it yet");
            return Ok(Done::AwaitingEcho(left));
        }
        // Info for what changes the host or removes a tenant object; the virtual side's
        // routine writes (status, binds, event copies, tokens) are debug: thousands per burst.
        macro_rules! log_write {
            ($level:ident) => {
                tracing::$level!(
                    cluster = t.cluster.as_str(),
                    kind = t.kind,
                    ns = t.namespace.as_deref().unwrap_or(""),
                    name = %t.name,
                    op,
                    reason = action.reason,
                    "writing"
                )
            };
        }
        if t.cluster == Cluster::Host || matches!(action.write, Write::Delete { .. }) {
            log_write!(info);
        } else {
            log_write!(debug);
        }
        let done = match self.send(action).await {
            Ok(done) => done,
            Err(error) => {
                if let (Some(key), SyncError::Rejected { code: 422, .. }) = (&refusal, &error) {
                    self.refused.record(key);
                }
                return Err(error);
            }
        };
        if let Some(key) = &bind {
            // Sent, or refused because it was bound already: either way it is bound.
            self.bound.record(key);
        }
        let done = match (echo, done) {
            (Some((target, patch)), Done::Object(answer)) => {
                self.echoes.sent(&target, patch, resource_version_of(&answer));
                Done::Sent
            }
            (_, done) => done,
        };
        match &action.write {
            Write::Create { .. } if t.cluster == Cluster::Host => {
                self.created.record(&t.name);
                // Its reconcile looks again once the create is no longer expected.
                recent::note_create();
            }
            Write::Delete { uid, grace_seconds } => {
                self.deleted.record(&delete_key(t.cluster, uid, *grace_seconds));
            }
            _ => {}
        }
        if t.cluster == Cluster::Host && !action.counted_as.is_empty() {
            self.shared
                .metrics
                .host_writes
                .with_label_values(&[action.counted_as, op])
                .inc();
        }
        Ok(done)
    }

    /// Sends every action in order; stops at the first error.
    pub async fn run_all(&self, actions: &[Action]) -> Result<(), SyncError> {
        for a in actions {
            self.run(a).await?;
        }
        Ok(())
    }

    async fn send(&self, action: &Action) -> Result<Done, SyncError> {
        let t = &action.target;
        let api = self.api(t);
        let request = kube::core::Request::new(api.resource_url());
        let fail = |verb: &'static str| move |e| SyncError::from_kube(e, t.cluster, verb, t.kind, &t.name);
        match &action.write {
            Write::Create { body, ownership } => self.create(&api, &request, t, body, *ownership).await,
            Write::Patch { subresource, patch } => {
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let body = match patch.kind {
                    PatchKind::Merge => Patch::Merge(&patch.body),
                    PatchKind::Strategic => Patch::Strategic(&patch.body),
                };
                let answer = match subresource {
                    None => self.request(t, "patch", request.patch(&t.name, &pp, &body)).await,
                    Some(sub) => {
                        let built = request.patch_subresource(sub, &t.name, &pp, &body);
                        self.request(t, "patch_subresource", built).await
                    }
                };
                let verb = match subresource {
                    Some("status") => "update status of",
                    Some("ephemeralcontainers") => "add ephemeral containers to",
                    _ => "patch",
                };
                // The answer's version is what an awaited echo looks like.
                answer
                    .map(|a| {
                        if action.awaits_echo {
                            Done::Object(a)
                        } else {
                            Done::Sent
                        }
                    })
                    .map_err(|e| uid_conflict(e, t).unwrap_or_else(|e| fail(verb)(e)))
            }
            Write::Apply { body } => {
                let ssa = PatchParams::apply(FIELD_MANAGER).force();
                self.request(t, "patch", request.patch(&t.name, &ssa, &Patch::Apply(body)))
                    .await
                    .map(|_| Done::Sent)
                    .map_err(fail("apply"))
            }
            Write::Delete { uid, grace_seconds } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    grace_period_seconds: grace_seconds.and_then(|g| u32::try_from(g).ok()),
                    ..DeleteParams::background()
                };
                match self.request(t, "delete", request.delete(&t.name, &dp)).await {
                    Ok(_) => Ok(Done::Sent),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(Done::Sent),
                    Err(e) => Err(fail("delete")(e)),
                }
            }
            Write::CreateSubresource { subresource, body } => {
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                let verb = if *subresource == "token" {
                    "request a token for"
                } else {
                    "create"
                };
                let built = serde_json::to_vec(body)
                    .map_err(kube::core::request::Error::SerializeBody)
                    .and_then(|body| request.create_subresource(subresource, &t.name, &pp, body));
                self.request(t, "create_subresource", built)
                    .await
                    .map(Done::Object)
                    .map_err(fail(verb))
            }
            Write::Bind { uid, node } => {
                let binding = serde_json::json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": t.name, "namespace": t.namespace, "uid": uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                let built = serde_json::to_vec(&binding)
                    .map_err(kube::core::request::Error::SerializeBody)
                    .and_then(|body| request.create_subresource("binding", &t.name, &pp, body));
                match self.request(t, "create_subresource", built).await {
                    Ok(_) => Ok(Done::Sent),
                    // Already bound: the cache had not shown our own earlier bind yet (only
                    // the syncer binds virtual pods; a pod created with a nodeName is never
                    // bound). Go on rather than around the queue.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        tracing::debug!(ns = ?t.namespace, name = %t.name, node, "already bound");
                        Ok(Done::Skipped)
                    }
                    Err(e) => Err(fail("bind")(e)),
                }
            }
        }
    }

    /// POSTs `body` (serialized as it is: no `DynamicObject` in between). When the name is
    /// taken on the host, one GET tells whether the object there is ours (the watch cache is
    /// lagging: a quiet conflict and requeue) or foreign (left untouched, reported).
    async fn create(
        &self,
        api: &Api<DynamicObject>,
        request: &kube::core::Request,
        t: &Target,
        body: &Value,
        ownership: Ownership,
    ) -> Result<Done, SyncError> {
        let json = serde_json::to_vec(body).map_err(|e| SyncError::Cache {
            kind: t.kind,
            name: t.name.clone(),
            message: format!("planned object does not serialize: {e}"),
        })?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.request(t, "create", request.create(&pp, json)).await {
            Ok(created) => Ok(Done::Object(created)),
            Err(kube::Error::Api(s))
                if s.code == 409 && s.reason == "AlreadyExists" && t.cluster == Cluster::Host =>
            {
                let existing = api
                    .get_opt(&t.name)
                    .await
                    .map_err(|e| SyncError::from_kube(e, t.cluster, "get", t.kind, &t.name))?;
                match existing {
                    Some(o) if !self.is_ours(ownership, &o.metadata) => Err(SyncError::Foreign {
                        kind: t.kind,
                        host_name: t.name.clone(),
                    }),
                    _ => Err(SyncError::Conflict {
                        cluster: t.cluster,
                        kind: t.kind,
                        name: t.name.clone(),
                    }),
                }
            }
            Err(e) => Err(SyncError::from_kube(e, t.cluster, "create", t.kind, &t.name)),
        }
    }

    fn is_ours(&self, ownership: Ownership, meta: &ObjectMeta) -> bool {
        let Some(tc) = self.shared.translate.borrow().clone() else {
            return false;
        };
        match ownership {
            Ownership::CopyOf(kind) => ownership::is_ours(&tc, kind, meta),
            Ownership::ManagedBy => {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(markers::LABEL_MANAGED_BY))
                    == Some(&tc.vcluster)
            }
        }
    }
}

/// The identity of a binding: the pod's namespace, name and uid (one incarnation of the pod is
/// bound once); None for other writes and for a binding without a uid.
fn bind_key(action: &Action) -> Option<String> {
    let Write::Bind { uid: Some(uid), .. } = &action.write else {
        return None;
    };
    let t = &action.target;
    Some(binding_identity(
        t.namespace.as_deref().unwrap_or(""),
        &t.name,
        uid,
    ))
}

fn binding_identity(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}/{name}/{uid}")
}

/// The identity of a patch (target and body) for the memories of refused patches and of
/// patches awaiting their echo; None for other writes.
fn patch_key(action: &Action) -> Option<String> {
    let Write::Patch { subresource, patch } = &action.write else {
        return None;
    };
    let body = serde_json::to_string(&patch.body).unwrap_or_default();
    Some(format!(
        "{}/{}/{}",
        action.target.identity(),
        subresource.unwrap_or(""),
        crate::naming::short_hash(&[&body])
    ))
}

/// `metadata.resourceVersion` of an answered object, parsing nothing else into memory.
fn resource_version_of(answer: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    serde_json::from_str::<Answer>(answer)
        .ok()
        .and_then(|a| a.metadata.resource_version)
}

fn delete_key(cluster: Cluster, uid: &str, grace: Option<i64>) -> String {
    format!("{}/{uid}/{grace:?}", cluster.as_str())
}

/// A write pinned to a uid the object of that name no longer has (the API server refuses a uid
/// change: 422 on `metadata.uid`) is a conflict: the object was replaced; look again once the
/// cache shows the new one.
fn uid_conflict(e: kube::Error, t: &Target) -> Result<SyncError, kube::Error> {
    match &e {
        kube::Error::Api(s)
            if s.code == 422
                && s.details
                    .as_ref()
                    .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid")) =>
        {
            Ok(SyncError::Conflict {
                cluster: t.cluster,
                kind: t.kind,
                name: t.name.clone(),
            })
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

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
    fn a_write_refused_for_its_uid_is_a_conflict() {
        let t = Target::virtual_object::<Pod>("ns", "web-0");
        let conflict = uid_conflict(invalid("metadata.uid"), &t).expect("a conflict");
        assert_eq!(conflict.category(), "conflict");
        let other = uid_conflict(invalid("status.podIP"), &t).expect_err("not a conflict");
        assert_eq!(
            SyncError::from_kube(other, Cluster::Virtual, "update status of", "Pod", "web-0").category(),
            "rejected"
        );
    }

    #[test]
    fn a_refused_patch_is_known_by_its_target_and_body() {
        let tc = TranslateCtx::test();
        let patch = |name: &str, body: Value| {
            Action::new(
                Target::host::<Pod>(&tc, name),
                Write::patch(PatchKind::Merge, body),
                "x",
            )
        };
        let a = patch_key(&patch("p", serde_json::json!({"spec": {"x": 1}})));
        assert!(a.is_some());
        assert_eq!(a, patch_key(&patch("p", serde_json::json!({"spec": {"x": 1}}))));
        assert_ne!(
            a,
            patch_key(&patch("p", serde_json::json!({"spec": {"x": 2}}))),
            "a new plan is sent"
        );
        assert_ne!(a, patch_key(&patch("q", serde_json::json!({"spec": {"x": 1}}))));
        let delete = Action::new(
            Target::host::<Pod>(&tc, "p"),
            Write::Delete {
                uid: "u".into(),
                grace_seconds: None,
            },
            "x",
        );
        assert_eq!(patch_key(&delete), None, "only patches are remembered as refused");
    }

    #[test]
    fn a_binding_is_known_by_the_pods_incarnation() {
        let bind = |name: &str, uid: Option<&str>, node: &str| {
            Action::new(
                Target::virtual_object::<Pod>("ns", name),
                Write::Bind {
                    uid: uid.map(str::to_string),
                    node: node.into(),
                },
                "x",
            )
        };
        let a = bind_key(&bind("p", Some("u1"), "n1"));
        assert_eq!(a.as_deref(), Some("ns/p/u1"));
        assert_eq!(
            a,
            bind_key(&bind("p", Some("u1"), "n2")),
            "bound once, whatever the node"
        );
        assert_ne!(
            a,
            bind_key(&bind("p", Some("u2"), "n1")),
            "a new pod of the same name"
        );
        assert_eq!(bind_key(&bind("p", None, "n1")), None);
        let patch = Action::new(
            Target::virtual_object::<Pod>("ns", "p"),
            Write::patch(PatchKind::Merge, serde_json::json!({})),
            "x",
        );
        assert_eq!(bind_key(&patch), None);
    }

    #[test]
    fn ops_name_the_write() {
        assert_eq!(Write::status(Value::Null).op(), "patch");
        assert_eq!(
            Write::Patch {
                subresource: Some("ephemeralcontainers"),
                patch: HostPatch {
                    kind: PatchKind::Strategic,
                    body: Value::Null
                }
            }
            .op(),
            "ephemeral"
        );
        assert_eq!(
            Write::Delete {
                uid: "u".into(),
                grace_seconds: None
            }
            .op(),
            "delete"
        );
    }

    #[test]
    fn targets_carry_the_kind_and_scope() {
        let tc = TranslateCtx::test();
        let t = Target::host::<Pod>(&tc, "web-x");
        assert_eq!(
            (t.cluster, t.kind, t.namespace.as_deref()),
            (Cluster::Host, "Pod", Some("host"))
        );
        let n = Target::virtual_object::<k8s_openapi::api::core::v1::Node>("", "n1");
        assert_eq!((n.kind, n.namespace.as_deref()), ("Node", None));
        assert_eq!(format!("{n:?}"), "virtual Node /n1");
    }

    #[test]
    fn an_object_already_going_is_not_deleted_again() {
        let tc = TranslateCtx::test();
        let mut meta = ObjectMeta {
            uid: Some("u-1".into()),
            ..ObjectMeta::default()
        };
        let a = Action::delete(Target::host::<Pod>(&tc, "p"), &meta, Some(0), "gone").expect("a delete");
        assert_eq!(
            a.write,
            Write::Delete {
                uid: "u-1".into(),
                grace_seconds: Some(0)
            }
        );
        meta.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(Action::delete(Target::host::<Pod>(&tc, "p"), &meta, Some(0), "gone").is_none());
    }
}
