//! Executes host actions: create (POST), patch (merge or strategic), delete (UID precondition).
//! Every write names our field manager; NotFound on delete counts as done.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::SyncError;
use super::plan::{HostAction, HostPatch, PatchKind};
use crate::error::Cluster;

/// The field manager of every write the syncer makes.
pub const FIELD_MANAGER: &str = "vnest-syncer";

/// How long a create is remembered while the watch cache catches up with it.
const EXPECT_FOR: Duration = Duration::from_secs(30);
/// Size at which expired entries are dropped (amortised O(1) per record).
const PRUNE_AT: usize = 1024;

/// Creates this process made that the watch caches may not show yet (client-go's
/// "expectations"): a reconcile that runs before the cache catches up must not POST again.
#[derive(Default)]
pub struct RecentCreates {
    names: Mutex<HashMap<String, Instant>>,
}

impl RecentCreates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Whether `name` was recorded within the last 30 s (and the cache may lag). O(1): a
    /// burst of 10k creates must not scan the map on every reconcile.
    pub fn pending(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|t| t.elapsed() < EXPECT_FOR)
    }
    pub fn record(&self, name: &str) {
        let mut m = self.lock();
        if m.len() >= PRUNE_AT {
            m.retain(|_, t| t.elapsed() < EXPECT_FOR);
        }
        m.insert(name.to_owned(), Instant::now());
    }
    /// The cache shows it now (or it is gone): stop expecting.
    pub fn observed(&self, name: &str) {
        self.lock().remove(name);
    }
}

/// What a host write did, for follow-up steps (e.g. the created object's UID).
pub enum Applied<K> {
    Nothing,
    Created(K),
    Patched(K),
    Deleted,
}

pub async fn execute<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    action: HostAction<K>,
    is_ours: impl Fn(&K) -> bool,
) -> Result<Applied<K>, SyncError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    match action {
        HostAction::Noop => Ok(Applied::Nothing),
        HostAction::Create(obj) => create(api, kind, name, &obj, is_ours).await.map(Applied::Created),
        HostAction::Patch(p) => patch(api, Cluster::Host, kind, name, &p)
            .await
            .map(Applied::Patched),
        HostAction::Delete {
            uid, grace_seconds, ..
        } => delete(api, Cluster::Host, kind, name, &uid, grace_seconds)
            .await
            .map(|()| Applied::Deleted),
    }
}

/// POSTs `obj`. When the name is taken, one GET tells whether the object there is ours (the
/// watch cache is lagging: a quiet conflict and requeue) or foreign (left untouched, reported).
pub async fn create<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    obj: &K,
    is_ours: impl Fn(&K) -> bool,
) -> Result<K, SyncError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&pp, obj).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
            let existing = api
                .get_opt(name)
                .await
                .map_err(|e| SyncError::from_kube(e, Cluster::Host, "get", kind, name))?;
            match existing {
                Some(o) if !is_ours(&o) => Err(SyncError::Foreign {
                    kind,
                    host_name: name.to_owned(),
                }),
                _ => Err(SyncError::Conflict {
                    cluster: Cluster::Host,
                    kind,
                    name: name.to_owned(),
                }),
            }
        }
        Err(e) => Err(SyncError::from_kube(e, Cluster::Host, "create", kind, name)),
    }
}

pub async fn patch<K>(
    api: &Api<K>,
    cluster: Cluster,
    kind: &'static str,
    name: &str,
    p: &HostPatch,
) -> Result<K, SyncError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let body = match p.kind {
        PatchKind::Merge => Patch::Merge(&p.body),
        PatchKind::Strategic => Patch::Strategic(&p.body),
    };
    api.patch(name, &pp, &body)
        .await
        .map_err(|e| SyncError::from_kube(e, cluster, "patch", kind, name))
}

pub async fn delete<K>(
    api: &Api<K>,
    cluster: Cluster,
    kind: &'static str,
    name: &str,
    uid: &str,
    grace_seconds: Option<i64>,
) -> Result<(), SyncError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        grace_period_seconds: grace_seconds.and_then(|g| u32::try_from(g).ok()),
        ..DeleteParams::background()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(SyncError::from_kube(e, cluster, "delete", kind, name)),
    }
}
