//! The pod decision, pure: from what the caches and the clock show about one virtual pod (and
//! the tokens issued so far in this reconcile) to the next step — issue tokens, or the writes
//! to make on both clusters and when to look again. The engine's lifecycle rules (foreign
//! object, orphan, stale uid, create still pending) run first; everything after is here, so
//! every branch is a table test (see the bottom of this file).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::settings::{PodSettings, TokenStorage};
use super::tokens::{self, IssuedTokens};
use super::translate::{self, PodInputs};
use crate::engine::TranslateCtx;
use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Ownership, Target, Write};
use crate::engine::plan::{self, Lifecycle, Observed, Pair, PatchKind, Plan};
use crate::engine::queue::Key;

/// The lifecycle knobs of pods: a host copy of an older pod of the same name is deleted at
/// once (grace 0), since nothing of it may keep running under the new pod's name.
pub const LIFECYCLE: Lifecycle = Lifecycle {
    kind: "Pod",
    stale_grace: Some(0),
    quiet_foreign_when_unwanted: false,
};

/// What the caches and the clock show about one virtual pod.
pub struct PodView<'a> {
    pub key: &'a Key,
    pub host_name: &'a str,
    pub virtual_pod: Option<&'a Pod>,
    pub host_pod: Option<&'a Pod>,
    /// Our create of the host pod was sent and the cache does not show it yet.
    pub create_pending: bool,
    /// The pod's token Secret (secret storage), and whether our create of it is still pending.
    pub token_secret: Option<&'a Secret>,
    pub token_secret_pending: bool,
    /// Labels of the pod's virtual namespace (copied onto the host pod).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The virtual Services of the pod's namespace (service-link variables, at create only).
    pub services: &'a [Service],
    /// The ConfigMaps/Secrets the pod requires that do not exist ("ConfigMap \"x\"").
    pub missing: &'a [String],
    /// Tokens issued in this reconcile (None: none yet).
    pub tokens: Option<&'a IssuedTokens>,
    /// How long ago this process bound the virtual pod (None: it did not, or long ago).
    pub bound_ago: Option<Duration>,
    pub now: Timestamp,
}

/// How long after its binding a pod's Pending status is held back. The host pod is Pending
/// between its scheduling and its kubelet's first status (ContainerCreating, then Running
/// ~20 ms later under kwok): writing each costs a virtual status write and its watch echo,
/// while the binding itself has already shown the tenant the node and `PodScheduled`. Within
/// this window only a status that leaves Pending is written at once; a reconcile at its end
/// writes whatever Pending status the host shows then.
pub const PENDING_STATUS_HOLD: Duration = Duration::from_secs(1);

/// The next step of a pod reconcile.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Issue these TokenRequests (key, action) first, then decide again with the tokens.
    IssueTokens(Vec<(String, Action)>),
    /// Make these writes. `then_again`: decide once more with the created host pod (its token
    /// Secret must name it as owner).
    Write { plan: Plan, then_again: bool },
}

impl Step {
    fn done(plan: Plan) -> Self {
        Step::Write {
            plan,
            then_again: false,
        }
    }
}

/// Decides the next step for `view` (after the engine's lifecycle rules).
pub fn decide(tc: &TranslateCtx, pod_settings: &PodSettings, view: &PodView<'_>) -> Result<Step, SyncError> {
    let seen = Observed {
        pair: Pair {
            virtual_meta: view.virtual_pod.map(|p| &p.metadata),
            host_meta: view.host_pod.map(|p| &p.metadata),
        },
        host_name: view.host_name,
        create_pending: view.create_pending,
        wanted: true,
    };
    if let Some(p) = plan::lifecycle::<Pod>(LIFECYCLE, tc, seen)? {
        return Ok(Step::done(p.counted_as("pods")));
    }
    let Some(v) = view.virtual_pod else {
        return Ok(Step::done(Plan::noop()));
    };
    match view.host_pod {
        None => without_host_pod(tc, pod_settings, view, v),
        Some(h) => with_host_pod(tc, pod_settings, view, v, h),
    }
}

fn virtual_target(v: &Pod) -> Target {
    Target::virtual_object::<Pod>(&v.namespace().unwrap_or_default(), &v.name_any())
}

/// A uid-guarded delete of the virtual pod (sent even while it terminates: with a grace of 0
/// it finishes a delete no kubelet will confirm; the executor sends it once).
fn delete_virtual(v: &Pod, grace: Option<i64>, reason: &'static str) -> Option<Action> {
    let uid = v.metadata.uid.clone()?;
    let write = Write::Delete {
        uid,
        grace_seconds: grace,
    };
    Some(Action::new(virtual_target(v), write, reason))
}

/// A virtual pod without a host pod: finish its delete, delete it when its host pod vanished
/// after it ran, or create the host pod.
fn without_host_pod(
    tc: &TranslateCtx,
    s: &PodSettings,
    view: &PodView<'_>,
    v: &Pod,
) -> Result<Step, SyncError> {
    if v.metadata.deletion_timestamp.is_some() {
        // Nothing runs it any more and no kubelet will confirm: finish the delete.
        return Ok(Step::done(Plan::noop().then_maybe(delete_virtual(
            v,
            Some(0),
            "host pod is gone",
        ))));
    }
    if v.status.as_ref().and_then(|s| s.start_time.as_ref()).is_some() {
        // It ran and its host pod vanished (deleted out-of-band, node lost): like a pod on a
        // lost node, it is deleted so its controller replaces it.
        return Ok(Step::done(Plan::noop().then_maybe(delete_virtual(
            v,
            Some(0),
            "host pod was deleted",
        ))));
    }
    let inputs = PodInputs {
        ctx: tc,
        settings: s,
        namespace_labels: view.namespace_labels,
        services: view.services,
    };
    let mut desired = translate::host_pod(&inputs, v)?;
    if !view.missing.is_empty() {
        // Like the kubelet, the tenant is told which one is missing; when it appears the pod
        // is queued again and created.
        return Err(SyncError::Translate(TranslateError::Missing(format!(
            "waiting for {} in namespace {:?}: the pod starts once it exists",
            view.missing.join(", "),
            view.key.namespace
        ))));
    }
    // Tokens first: a pod whose ServiceAccount is missing fails there, before anything exists
    // on the host (nothing half-done).
    let requests = tokens::requests(v);
    if !requests.is_empty() && view.tokens.is_none() {
        return Ok(Step::IssueTokens(requests));
    }
    let then_again = match view.tokens {
        Some(t) if s.token_storage == TokenStorage::Annotation => {
            // Carried by the pod itself: no second host object, no second write.
            desired
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(t.annotations());
            false
        }
        Some(_) => true, // the token Secret follows, owned by the created pod
        None => false,
    };
    let create = Action::create(
        Target::host::<Pod>(tc, view.host_name),
        &desired,
        Ownership::CopyOf("Pod"),
        "virtual pod created",
    )
    .counted_as("pods");
    Ok(Step::Write {
        plan: Plan::one(create),
        then_again,
    })
}

/// Both pods exist and belong together: deletes both ways, tokens, mutable fields, ephemeral
/// containers, the virtual binding and status.
fn with_host_pod(
    tc: &TranslateCtx,
    s: &PodSettings,
    view: &PodView<'_>,
    v: &Pod,
    h: &Pod,
) -> Result<Step, SyncError> {
    let host = || Target::host::<Pod>(tc, view.host_name);
    let status = status_patch(v, h);
    if v.metadata.deletion_timestamp.is_some() {
        // Deleted on the virtual side: the host pod follows with the tenant's grace period;
        // status keeps flowing while it terminates (the host events queue the key again).
        let grace = v.metadata.deletion_grace_period_seconds;
        let delete =
            Action::delete(host(), &h.metadata, grace, "virtual pod deleted").map(|a| a.counted_as("pods"));
        return Ok(Step::done(Plan::noop().then_maybe(delete).then_maybe(status)));
    }
    if h.metadata.deletion_timestamp.is_some() {
        // Evicted or deleted on the host: the virtual pod follows, with its own grace period.
        let grace = v.spec.as_ref().and_then(|s| s.termination_grace_period_seconds);
        let delete = delete_virtual(v, grace, "host pod is terminating");
        return Ok(Step::done(Plan::noop().then_maybe(status).then_maybe(delete)));
    }
    let mut plan = Plan::noop();
    match token_step(tc, view, v, h) {
        TokenStep::Issue(requests) => return Ok(Step::IssueTokens(requests)),
        TokenStep::Write(action, after) => {
            plan = plan.then(*action);
            plan.requeue_after = Some(after);
        }
        TokenStep::Wait(after) => plan.requeue_after = after,
    }
    let inputs = PodInputs {
        ctx: tc,
        settings: s,
        namespace_labels: view.namespace_labels,
        // Environment variables are fixed at create: updates never need the Services.
        services: &[],
    };
    if let Some(body) = translate::update_patch(&inputs, v, h) {
        plan = plan.then(
            Action::new(
                host(),
                Write::patch(PatchKind::Strategic, body),
                "virtual pod changed",
            )
            .counted_as("pods"),
        );
    }
    if let Some(body) = translate::ephemeral_containers_patch(&inputs, v, h)? {
        let write = Write::Patch {
            subresource: Some("ephemeralcontainers"),
            patch: plan::HostPatch {
                kind: PatchKind::Strategic,
                body,
            },
        };
        plan = plan.then(Action::new(host(), write, "ephemeral containers added").counted_as("pods"));
    }
    if let Some(body) = translate::host_conditions_patch(v, h) {
        // Readiness gates and other conditions the tenant's controllers own.
        let write = Write::Patch {
            subresource: Some("status"),
            patch: plan::HostPatch {
                kind: PatchKind::Strategic,
                body,
            },
        };
        plan =
            plan.then(Action::new(host(), write, "tenant-owned pod conditions changed").counted_as("pods"));
    }
    if let Some(body) = plan::virtual_metadata_patch(&v.metadata, &h.metadata) {
        plan = plan.then(Action::new(
            virtual_target(v),
            Write::patch(PatchKind::Merge, body),
            "host-added labels/annotations flow back",
        ));
    }
    let mut bound_ago = view.bound_ago;
    if let Some(node) = translate::binding_needed(v, h) {
        // The status follows in the same reconcile rather than one watch round-trip later.
        let bind = Write::Bind {
            uid: v.metadata.uid.clone(),
            node,
        };
        plan = plan.then(Action::new(virtual_target(v), bind, "host pod scheduled"));
        // Sent now, or skipped because this process sent it earlier (the cache lags).
        bound_ago = bound_ago.or(Some(Duration::ZERO));
    }
    if status.is_some()
        && let Some(left) = pending_status_held(h, bound_ago)
    {
        plan.requeue_after = Some(plan.requeue_after.map_or(left, |after| after.min(left)));
        return Ok(Step::done(plan));
    }
    Ok(Step::done(plan.then_maybe(status)))
}

/// How much longer a status change of `h` waits ([`PENDING_STATUS_HOLD`]): while the host pod
/// is still Pending shortly after this process bound the virtual pod.
fn pending_status_held(h: &Pod, bound_ago: Option<Duration>) -> Option<Duration> {
    let pending = h.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
    let left = PENDING_STATUS_HOLD.checked_sub(bound_ago?)?;
    (pending && !left.is_zero()).then_some(left)
}

/// Whether the reconciler should look at the host pod again before action `i` of `actions`:
/// action `i` copies the host status onto the virtual pod and everything before it in the plan
/// was a binding. A binding takes a round trip, during which the host pod often moves on
/// (scheduled → Running); the status decided before it would then be written, and the newer
/// one a reconcile later: one virtual write and one round trip more on the way to Ready. Only
/// after bindings is deciding again safe: the executor remembers a binding it sent (sending it
/// again is skipped), while other writes already sent would be decided again on the cached
/// objects that do not show them yet.
pub fn look_again_before(actions: &[Action], i: usize) -> bool {
    let is_virtual_status = |a: &Action| {
        a.target.cluster == crate::error::Cluster::Virtual
            && matches!(
                a.write,
                Write::Patch {
                    subresource: Some("status"),
                    ..
                }
            )
    };
    i > 0
        && actions.get(i).is_some_and(is_virtual_status)
        && actions[..i].iter().all(|a| matches!(a.write, Write::Bind { .. }))
}

/// What a running pod's tokens need now.
enum TokenStep {
    /// Issue tokens first.
    Issue(Vec<(String, Action)>),
    /// Write the issued tokens; look again when they are due.
    Write(Box<Action>, Duration),
    /// Nothing to write; look again then (None: the pod has no tokens).
    Wait(Option<Duration>),
}

/// Keeps the tokens of a running pod present and fresh (where the host pod reads them: its own
/// annotations, or its token Secret).
fn token_step(tc: &TranslateCtx, view: &PodView<'_>, v: &Pod, h: &Pod) -> TokenStep {
    if translate::token_requests(v).is_empty() {
        return TokenStep::Wait(None);
    }
    // The TokenRequests (JSON bodies) are built only when they are sent: a pod in step with
    // fresh tokens costs a look at its volumes.
    let issue_or_write = |write: &dyn Fn(&IssuedTokens) -> Action| match view.tokens {
        None => TokenStep::Issue(tokens::requests(v)),
        Some(t) => TokenStep::Write(Box::new(write(t)), t.due_in(view.now)),
    };
    if translate::uses_annotation_tokens(h) {
        return match tokens::refresh_due(&h.metadata, view.now).filter(|w| !w.is_zero()) {
            Some(wait) if view.tokens.is_none() => TokenStep::Wait(Some(wait)),
            _ => issue_or_write(&|t| tokens::annotations_patch(tc, h, t)),
        };
    }
    let existing = view.token_secret;
    if existing.is_none() && view.token_secret_pending {
        return TokenStep::Wait(Some(plan::RECHECK)); // just created; the cache lags
    }
    if let Some(secret) = existing
        && view.tokens.is_none()
    {
        let owned_by_this_pod = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(o.uid.as_str()) == h.metadata.uid.as_deref());
        if owned_by_this_pod
            && let Some(wait) = tokens::refresh_due(&secret.metadata, view.now).filter(|w| !w.is_zero())
        {
            return TokenStep::Wait(Some(wait));
        }
    }
    issue_or_write(&|t| tokens::secret_write(tc, v, h, existing, t))
}

/// The host status copied onto the virtual pod (None when equal).
///
/// The patch is pinned to the pod's uid, not to its resourceVersion. Only the syncer writes
/// a virtual pod's status (there is no virtual kubelet), one reconcile per key at a time,
/// from the newest host pod the cache has, so a write never goes backwards; a diff against
/// a virtual pod the cache shows a little late can at worst leave a field that the next
/// reconcile (woken by this very write's watch event) removes. Measured at 3000 pods: with
/// a resourceVersion precondition 2–10 % of status patches failed with 409 and went round
/// the queue again. The uid keeps a pod that was deleted and recreated under the same name
/// (a StatefulSet's) from getting its predecessor's status: the API server refuses a uid
/// change, which the executor takes as a conflict.
fn status_patch(v: &Pod, h: &Pod) -> Option<Action> {
    let status = translate::virtual_status(v, h)?;
    if v.status.as_ref() == Some(&status) {
        // Already current (every pod of a resync): no JSON is built to find that out.
        return None;
    }
    let from = serde_json::to_value(&v.status).unwrap_or(serde_json::Value::Null);
    let to = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
    let diff = plan::merge_diff(&from, &to)?;
    let body = serde_json::json!({"metadata": {"uid": v.metadata.uid}, "status": diff});
    Some(Action::new(virtual_target(v), Write::status(body), "host status changed").awaiting_echo())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::error::Cluster;
    use crate::markers::{ANNOTATION_TOKEN_REFRESH_AT, TOKEN_ANNOTATION_PREFIX};

    const NS: &str = "team-a";

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    /// Virtual pod `name` (uid `<name>-uid`) overlaid with `extra`.
    fn vpod(name: &str, extra: serde_json::Value) -> Pod {
        let mut pod = json!({
            "metadata": {"name": name, "namespace": NS, "uid": format!("{name}-uid"), "resourceVersion": "10",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}], "serviceAccountName": "default"},
        });
        merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap()
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    /// A projected ServiceAccount token volume.
    fn with_token() -> serde_json::Value {
        json!({"spec": {"volumes": [{"name": "kube-api-access", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}]}})
    }

    /// The host pod of `v` as the API server stores it (uid `h-<name>`), overlaid with `extra`.
    fn hpod(tc: &TranslateCtx, v: &Pod, extra: serde_json::Value) -> Pod {
        hpod_with(tc, &PodSettings::test(), v, extra)
    }

    fn hpod_with(tc: &TranslateCtx, settings: &PodSettings, v: &Pod, extra: serde_json::Value) -> Pod {
        let labels = BTreeMap::new();
        let inputs = PodInputs {
            ctx: tc,
            settings,
            namespace_labels: &labels,
            services: &[],
        };
        let mut pod = serde_json::to_value(translate::host_pod(&inputs, v).unwrap()).unwrap();
        merge(
            &mut pod,
            json!({"metadata": {"uid": format!("h-{}", v.metadata.name.as_deref().unwrap()), "resourceVersion": "7"}}),
        );
        merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap()
    }

    struct Case<'a> {
        tc: TranslateCtx,
        settings: PodSettings,
        v: Option<&'a Pod>,
        h: Option<&'a Pod>,
        create_pending: bool,
        secret: Option<&'a Secret>,
        secret_pending: bool,
        missing: &'a [String],
        tokens: Option<&'a IssuedTokens>,
        bound_ago: Option<Duration>,
    }

    impl<'a> Case<'a> {
        fn new(v: Option<&'a Pod>, h: Option<&'a Pod>) -> Self {
            Self {
                tc: TranslateCtx::test(),
                settings: PodSettings::test(),
                v,
                h,
                create_pending: false,
                secret: None,
                secret_pending: false,
                missing: &[],
                tokens: None,
                bound_ago: None,
            }
        }
        fn decide(&self) -> Result<Step, SyncError> {
            let key = Key::new(NS, "web");
            let host_name = crate::naming::host_name(&self.tc.vcluster, NS, "web");
            let labels = BTreeMap::new();
            let view = PodView {
                key: &key,
                host_name: &host_name,
                virtual_pod: self.v,
                host_pod: self.h,
                create_pending: self.create_pending,
                token_secret: self.secret,
                token_secret_pending: self.secret_pending,
                namespace_labels: &labels,
                services: &[],
                missing: self.missing,
                tokens: self.tokens,
                bound_ago: self.bound_ago,
                now: now(),
            };
            decide(&self.tc, &self.settings, &view)
        }
        /// The writes of a decision that must be writes (panics on IssueTokens).
        fn writes(&self) -> (Plan, bool) {
            match self.decide().unwrap() {
                Step::Write { plan, then_again } => (plan, then_again),
                other => panic!("expected writes, got {other:?}"),
            }
        }
    }

    /// (cluster, op, reason) of each action.
    fn summary(plan: &Plan) -> Vec<(Cluster, &'static str, &'static str)> {
        plan.actions
            .iter()
            .map(|a| (a.target.cluster, a.write.op(), a.reason))
            .collect()
    }

    fn tokens_issued() -> IssuedTokens {
        IssuedTokens {
            data: [("kube-api-access.0".to_owned(), "tok".to_owned())].into(),
            refresh_at: "2026-01-01T00:48:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_new_pod_without_tokens_is_created_on_the_host() {
        let v = vpod("web", json!({}));
        let (plan, again) = Case::new(Some(&v), None).writes();
        assert_eq!(summary(&plan), [(Cluster::Host, "create", "virtual pod created")]);
        assert!(!again);
        let a = &plan.actions[0];
        assert_eq!(a.counted_as, "pods");
        assert_eq!(a.target.name, crate::naming::host_name("vc", NS, "web"));
        let Write::Create { body, ownership } = &a.write else {
            panic!()
        };
        assert_eq!(*ownership, Ownership::CopyOf("Pod"));
        assert_eq!(body["kind"], "Pod", "sent with its kind");
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn a_pod_waits_for_what_it_mounts_with_a_message_naming_it() {
        let v = vpod("web", json!({}));
        let missing = ["ConfigMap \"cfg\"".to_owned()];
        let case = Case {
            missing: &missing,
            ..Case::new(Some(&v), None)
        };
        let err = case.decide().unwrap_err();
        assert_eq!(err.category(), "missing");
        assert!(err.to_string().contains("ConfigMap \"cfg\""), "{err}");
    }

    #[test]
    fn tokens_are_issued_before_anything_exists_on_the_host() {
        let v = vpod("web", with_token());
        let Step::IssueTokens(requests) = Case::new(Some(&v), None).decide().unwrap() else {
            panic!("tokens first")
        };
        assert_eq!(requests.len(), 1);
        let (key, a) = &requests[0];
        assert_eq!(key, "kube-api-access.0");
        assert_eq!(
            (a.target.cluster, a.target.kind, a.target.name.as_str()),
            (Cluster::Virtual, "ServiceAccount", "default")
        );
        let Write::CreateSubresource { subresource, body } = &a.write else {
            panic!()
        };
        assert_eq!(*subresource, "token");
        assert_eq!(body["spec"]["boundObjectRef"]["uid"], "web-uid");
        assert_eq!(body["spec"]["expirationSeconds"], 3600);
    }

    #[test]
    fn issued_tokens_ride_on_the_host_pod_with_annotation_storage() {
        let v = vpod("web", with_token());
        let t = tokens_issued();
        let case = Case {
            tokens: Some(&t),
            ..Case::new(Some(&v), None)
        };
        let (plan, again) = case.writes();
        assert_eq!(plan.ops(), ["create"]);
        assert!(!again, "no second host object");
        let Write::Create { body, .. } = &plan.actions[0].write else {
            panic!()
        };
        let annotations = body["metadata"]["annotations"].as_object().unwrap();
        assert!(annotations.keys().any(|k| k.starts_with(TOKEN_ANNOTATION_PREFIX)));
        assert_eq!(annotations[ANNOTATION_TOKEN_REFRESH_AT], "2026-01-01T00:48:00Z");
    }

    #[test]
    fn with_secret_storage_the_token_secret_follows_owned_by_the_created_pod() {
        let v = vpod("web", with_token());
        let t = tokens_issued();
        let tc = TranslateCtx::test();
        let settings = PodSettings {
            token_storage: TokenStorage::Secret,
            ..PodSettings::test()
        };
        let case = Case {
            settings: settings.clone(),
            tokens: Some(&t),
            ..Case::new(Some(&v), None)
        };
        let (plan, again) = case.writes();
        assert_eq!(plan.ops(), ["create"]);
        assert!(again, "decide again with the created pod");
        // Then, with the created pod: the Secret, owned by it, with the same tokens.
        let h = hpod_with(&tc, &settings, &v, json!({}));
        let case = Case {
            settings,
            tokens: Some(&t),
            ..Case::new(Some(&v), Some(&h))
        };
        let (plan, _) = case.writes();
        assert_eq!(summary(&plan)[0], (Cluster::Host, "create", "the pod's tokens"));
        let a = &plan.actions[0];
        assert_eq!((a.target.kind, a.counted_as), ("Secret", "tokens"));
        let Write::Create { body, ownership } = &a.write else {
            panic!()
        };
        assert_eq!(*ownership, Ownership::ManagedBy);
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "h-web");
        assert_eq!(body["data"]["kube-api-access.0"], "dG9r", "base64 of the token");
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(48 * 60)));
    }

    #[test]
    fn the_engine_lifecycle_runs_first() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({}));
        let h = hpod(&tc, &v, json!({}));
        // Orphan: the virtual pod is gone.
        let (plan, _) = Case::new(None, Some(&h)).writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Host, "delete", "virtual object deleted")]
        );
        assert_eq!(plan.actions[0].counted_as, "pods");
        // Stale: a host pod of an older pod of the same name goes at once.
        let newer = vpod("web", json!({"metadata": {"uid": "web-uid-2"}}));
        let (plan, _) = Case::new(Some(&newer), Some(&h)).writes();
        assert_eq!(
            plan.actions[0].write,
            Write::Delete {
                uid: "h-web".into(),
                grace_seconds: Some(0)
            }
        );
        assert_eq!(plan.requeue_after, Some(crate::engine::plan::RECHECK));
        // Our create is on its way.
        let case = Case {
            create_pending: true,
            ..Case::new(Some(&v), None)
        };
        assert_eq!(case.writes().0, Plan::wait(crate::engine::plan::RECHECK));
        // Foreign: a host pod of that name that is not ours.
        let mut foreign = h.clone();
        foreign.metadata.labels = None;
        assert_eq!(
            Case::new(Some(&v), Some(&foreign))
                .decide()
                .unwrap_err()
                .category(),
            "foreign"
        );
    }

    #[test]
    fn a_pod_whose_host_pod_is_gone_is_deleted_when_it_ran_or_was_deleting() {
        let running = vpod("web", json!({"status": {"startTime": "2026-01-01T00:00:00Z"}}));
        let (plan, _) = Case::new(Some(&running), None).writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Virtual, "delete", "host pod was deleted")]
        );
        assert_eq!(
            plan.actions[0].write,
            Write::Delete {
                uid: "web-uid".into(),
                grace_seconds: Some(0)
            }
        );
        let deleting = vpod(
            "web",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let (plan, _) = Case::new(Some(&deleting), None).writes();
        assert_eq!(summary(&plan), [(Cluster::Virtual, "delete", "host pod is gone")]);
    }

    #[test]
    fn deletes_follow_both_ways_with_each_sides_grace() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({"spec": {"terminationGracePeriodSeconds": 45}}));
        let mut deleting = v.clone();
        deleting.metadata.deletion_timestamp = Some(time("2026-01-01T00:00:00Z"));
        deleting.metadata.deletion_grace_period_seconds = Some(30);
        let h = hpod(&tc, &v, json!({}));
        let (plan, _) = Case::new(Some(&deleting), Some(&h)).writes();
        assert_eq!(summary(&plan), [(Cluster::Host, "delete", "virtual pod deleted")]);
        assert_eq!(
            plan.actions[0].write,
            Write::Delete {
                uid: "h-web".into(),
                grace_seconds: Some(30)
            }
        );
        // Evicted on the host: the virtual pod follows with its own grace, status first.
        let evicted = hpod(
            &tc,
            &v,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}}),
        );
        let (plan, _) = Case::new(Some(&v), Some(&evicted)).writes();
        assert_eq!(
            summary(&plan),
            [
                (Cluster::Virtual, "patch", "host status changed"),
                (Cluster::Virtual, "delete", "host pod is terminating")
            ]
        );
        assert_eq!(
            plan.actions[1].write,
            Write::Delete {
                uid: "web-uid".into(),
                grace_seconds: Some(45)
            }
        );
    }

    #[test]
    fn a_scheduled_host_pod_binds_the_virtual_pod_and_copies_its_status_at_once() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({}));
        let h = hpod(
            &tc,
            &v,
            json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.244.0.9"}}),
        );
        let (plan, _) = Case::new(Some(&v), Some(&h)).writes();
        assert_eq!(
            summary(&plan),
            [
                (Cluster::Virtual, "bind", "host pod scheduled"),
                (Cluster::Virtual, "patch", "host status changed")
            ]
        );
        assert_eq!(
            plan.actions[0].write,
            Write::Bind {
                uid: Some("web-uid".into()),
                node: "n1".into()
            }
        );
        let Write::Patch { subresource, patch } = &plan.actions[1].write else {
            panic!()
        };
        assert_eq!(*subresource, Some("status"));
        assert_eq!(patch.body["metadata"]["uid"], "web-uid", "pinned to the uid");
        assert_eq!(patch.body["status"]["podIP"], "10.244.0.9");
        assert!(
            look_again_before(&plan.actions, 1),
            "the host pod may have moved on during the binding"
        );
        assert!(!look_again_before(&plan.actions, 0));
    }

    #[test]
    fn the_host_pod_is_looked_at_again_only_after_bindings() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({}));
        let h = hpod(
            &tc,
            &v,
            json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}),
        );
        let (mut plan, _) = Case::new(Some(&v), Some(&h)).writes();
        let status = plan.actions[1].clone();
        // A status without a binding before it: nothing was sent meanwhile.
        assert!(!look_again_before(std::slice::from_ref(&status), 0));
        // Another write before the binding: deciding again would send it a second time.
        let metadata = Action::new(
            status.target.clone(),
            Write::patch(PatchKind::Merge, json!({"metadata": {"labels": {"a": "b"}}})),
            "host-added labels/annotations flow back",
        );
        plan.actions.insert(0, metadata);
        assert!(!look_again_before(&plan.actions, 2));
        // Past the end, or not a status write.
        assert!(!look_again_before(&plan.actions, 3));
        assert!(!look_again_before(&plan.actions, 1));
    }

    #[test]
    fn a_pending_status_waits_a_moment_after_the_binding_and_a_running_one_does_not() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({}));
        let scheduled = |phase: &str| {
            hpod(
                &tc,
                &v,
                json!({"spec": {"nodeName": "n1"}, "status": {"phase": phase, "hostIP": "192.168.0.5"}}),
            )
        };
        let pending = scheduled("Pending");
        // Bound now: only the binding; a look when the hold ends.
        let (plan, _) = Case::new(Some(&v), Some(&pending)).writes();
        assert_eq!(summary(&plan), [(Cluster::Virtual, "bind", "host pod scheduled")]);
        assert_eq!(plan.requeue_after, Some(PENDING_STATUS_HOLD));
        // The binding's echo 300 ms later: still nothing, the look stays where it was.
        let bound = vpod("web", json!({"spec": {"nodeName": "n1"}}));
        let mut case = Case::new(Some(&bound), Some(&pending));
        case.bound_ago = Some(Duration::from_millis(300));
        let (plan, _) = case.writes();
        assert!(plan.actions.is_empty(), "{:?}", summary(&plan));
        assert_eq!(plan.requeue_after, Some(Duration::from_millis(700)));
        // A cache that does not show the binding yet: the binding is sent no sooner, the hold
        // still counts from the first.
        let mut case = Case::new(Some(&v), Some(&pending));
        case.bound_ago = Some(Duration::from_millis(300));
        assert_eq!(case.writes().0.requeue_after, Some(Duration::from_millis(700)));
        // The hold is over: the Pending status is written.
        case = Case::new(Some(&bound), Some(&pending));
        case.bound_ago = Some(PENDING_STATUS_HOLD);
        let (plan, _) = case.writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Virtual, "patch", "host status changed")]
        );
        // Not bound by this process (a restart, another leader): written at once.
        let (plan, _) = Case::new(Some(&bound), Some(&pending)).writes();
        assert_eq!(summary(&plan).len(), 1);
        // Running within the hold: written at once, with the binding.
        let running = scheduled("Running");
        let (plan, _) = Case::new(Some(&v), Some(&running)).writes();
        assert_eq!(summary(&plan).len(), 2);
        assert_eq!(plan.requeue_after, None);
        let mut case = Case::new(Some(&bound), Some(&running));
        case.bound_ago = Some(Duration::from_millis(300));
        let (plan, _) = case.writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Virtual, "patch", "host status changed")]
        );
        // An unscheduled host pod's status (Unschedulable) is not held: nothing was bound.
        let unscheduled = hpod(
            &tc,
            &v,
            json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}}),
        );
        let (plan, _) = Case::new(Some(&v), Some(&unscheduled)).writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Virtual, "patch", "host status changed")]
        );
    }

    #[test]
    fn a_pod_in_step_costs_nothing() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({"spec": {"nodeName": "n1"}}));
        let h = hpod(
            &tc,
            &v,
            json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}),
        );
        let mut v = v;
        v.status = translate::virtual_status(&v, &h);
        let (plan, again) = Case::new(Some(&v), Some(&h)).writes();
        assert_eq!(plan, Plan::noop(), "a resync writes nothing");
        assert!(!again);
    }

    #[test]
    fn tenant_changes_patch_the_host_pod() {
        let tc = TranslateCtx::test();
        let v = vpod("web", json!({}));
        let h = hpod(&tc, &v, json!({}));
        let changed = vpod("web", json!({"metadata": {"labels": {"tier": "front"}}}));
        let (plan, _) = Case::new(Some(&changed), Some(&h)).writes();
        assert_eq!(summary(&plan), [(Cluster::Host, "patch", "virtual pod changed")]);
        let Write::Patch { patch, .. } = &plan.actions[0].write else {
            panic!()
        };
        assert_eq!(patch.kind, PatchKind::Strategic);
    }

    #[test]
    fn annotation_tokens_are_renewed_when_due_and_not_before() {
        let tc = TranslateCtx::test();
        let v = vpod("web", with_token());
        let due_later = hpod(
            &tc,
            &v,
            json!({"metadata": {"annotations": {ANNOTATION_TOKEN_REFRESH_AT: "2026-01-01T00:10:00Z"}}}),
        );
        assert!(translate::uses_annotation_tokens(&due_later));
        let (plan, _) = Case::new(Some(&v), Some(&due_later)).writes();
        assert_eq!(plan.actions, []);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(600)));

        let due = hpod(
            &tc,
            &v,
            json!({"metadata": {"annotations": {ANNOTATION_TOKEN_REFRESH_AT: "2025-12-31T23:00:00Z"}}}),
        );
        assert!(matches!(
            Case::new(Some(&v), Some(&due)).decide().unwrap(),
            Step::IssueTokens(_)
        ));
        let t = tokens_issued();
        let case = Case {
            tokens: Some(&t),
            ..Case::new(Some(&v), Some(&due))
        };
        let (plan, _) = case.writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Host, "patch", "renewing the pod's tokens")]
        );
        assert_eq!(plan.actions[0].counted_as, "tokens");
        let Write::Patch { patch, .. } = &plan.actions[0].write else {
            panic!()
        };
        assert_eq!(
            patch.body["metadata"]["resourceVersion"], "7",
            "pinned to the version read"
        );
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(48 * 60)));
    }

    #[test]
    fn a_token_secret_is_waited_for_renewed_or_written() {
        let tc = TranslateCtx::test();
        let settings = PodSettings {
            token_storage: TokenStorage::Secret,
            ..PodSettings::test()
        };
        let v = vpod("web", with_token());
        let h = hpod_with(&tc, &settings, &v, json!({}));
        assert!(!translate::uses_annotation_tokens(&h));
        // Created a moment ago, not in the cache yet: look again shortly, write nothing.
        let case = Case {
            settings: settings.clone(),
            secret_pending: true,
            ..Case::new(Some(&v), Some(&h))
        };
        assert_eq!(case.writes().0, Plan::wait(crate::engine::plan::RECHECK));
        // Owned by this pod and not due: wait until due.
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s", "resourceVersion": "3",
                         "annotations": {ANNOTATION_TOKEN_REFRESH_AT: "2026-01-01T00:05:00Z"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "h-web"}]}
        }))
        .unwrap();
        let case = Case {
            settings: settings.clone(),
            secret: Some(&secret),
            ..Case::new(Some(&v), Some(&h))
        };
        assert_eq!(case.writes().0.requeue_after, Some(Duration::from_secs(300)));
        // Owned by another (older) pod: renewed now, as a patch of the existing Secret.
        let mut foreign_owner = secret.clone();
        foreign_owner.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let t = tokens_issued();
        let case = Case {
            settings,
            secret: Some(&foreign_owner),
            tokens: Some(&t),
            ..Case::new(Some(&v), Some(&h))
        };
        let (plan, _) = case.writes();
        assert_eq!(
            summary(&plan),
            [(Cluster::Host, "patch", "renewing the pod's tokens")]
        );
        let Write::Patch { patch, .. } = &plan.actions[0].write else {
            panic!()
        };
        assert_eq!(patch.body["metadata"]["resourceVersion"], "3");
    }
}
