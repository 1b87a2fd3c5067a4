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
use super::plan::{HostPatch, PatchKind};
use crate::error::Cluster;

/// The field manager of every write the syncer makes.
pub const FIELD_MANAGER: &str = "vnest-syncer";

/// How long a create is remembered while the watch cache catches up with it.
const EXPECT_FOR: Duration = Duration::from_secs(30);
/// How long an accepted DELETE is remembered. Resending the same UID-guarded DELETE never does
/// anything the first did not, so it is kept until a cache that lags far behind (a watch that
/// expired and relists 10k pods under load: measured, over 30 s) has caught up.
pub const DELETE_EXPECT_FOR: Duration = Duration::from_secs(600);
/// Size at which expired entries are first dropped.
const PRUNE_AT: usize = 1024;

/// Creates (or deletes) this process made that the watch caches may not show yet (client-go's
/// "expectations"): a reconcile that runs before the cache catches up must not send them again.
pub struct RecentWrites {
    state: Mutex<Recent>,
    /// How long an entry is trusted over the cache.
    ttl: Duration,
}

struct Recent {
    names: HashMap<String, Instant>,
    /// The next prune waits until the map reached this size (twice what the last one kept):
    /// amortised O(1) per record even when thousands of entries are still live.
    prune_at: usize,
}

impl Default for RecentWrites {
    fn default() -> Self {
        Self::remembering_for(EXPECT_FOR)
    }
}

impl RecentWrites {
    pub fn remembering_for(ttl: Duration) -> Self {
        Self {
            state: Mutex::new(Recent {
                names: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
            ttl,
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Whether `name` was recorded within the time-to-live (and the cache may lag). O(1): a
    /// burst of 10k creates must not scan the map on every reconcile.
    pub fn pending(&self, name: &str) -> bool {
        self.lock()
            .names
            .get(name)
            .is_some_and(|t| t.elapsed() < self.ttl)
    }
    pub fn record(&self, name: &str) {
        let mut r = self.lock();
        if r.names.len() >= r.prune_at {
            let ttl = self.ttl;
            r.names.retain(|_, t| t.elapsed() < ttl);
            r.prune_at = (r.names.len() * 2).max(PRUNE_AT);
        }
        r.names.insert(name.to_owned(), Instant::now());
    }
    /// The cache shows it now (or it is gone): stop expecting.
    pub fn observed(&self, name: &str) {
        self.lock().names.remove(name);
    }
    /// Entries held (expired ones included until the next prune).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().names.len()
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

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn a_recorded_name_is_pending_until_observed_or_expired() {
        let r = RecentWrites::remembering_for(Duration::from_secs(600));
        r.record("a");
        assert!(r.pending("a"));
        assert!(!r.pending("b"));
        r.observed("a");
        assert!(!r.pending("a"));
        let short = RecentWrites::remembering_for(Duration::ZERO);
        short.record("a");
        assert!(!short.pending("a"), "expired at once");
    }

    #[test]
    fn thousands_of_live_entries_are_kept_and_expired_ones_pruned() {
        // Live entries survive every prune (a 10k-pod deletion keeps its DELETEs remembered).
        let live = RecentWrites::remembering_for(Duration::from_secs(600));
        for i in 0..5000 {
            live.record(&format!("pod-{i}"));
        }
        assert_eq!(live.len(), 5000);
        assert!(live.pending("pod-0") && live.pending("pod-4999"));
        // Expired entries are dropped once the map reaches the prune size.
        let expired = RecentWrites::remembering_for(Duration::ZERO);
        for i in 0..5000 {
            expired.record(&format!("pod-{i}"));
        }
        assert!(expired.len() <= PRUNE_AT, "{} entries held", expired.len());
    }
}
