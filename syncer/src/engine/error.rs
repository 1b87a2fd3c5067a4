//! Errors of a reconcile, classified by what the engine does about them.

use std::time::Duration;

use crate::error::Cluster;

/// A translation the tenant can fix: shown to them as a Warning Event on their object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}")]
    Refused(String),
    #[error("waiting for {0}")]
    NotReady(String),
    /// Something the tenant must create first (e.g. a Secret the pod mounts).
    #[error("{0}")]
    Missing(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// 409 from an optimistic write: someone else changed the object; look again soon.
    #[error("conflict writing {kind} {name} on the {cluster} cluster")]
    Conflict {
        cluster: Cluster,
        kind: &'static str,
        name: String,
    },
    /// The name we need on the host is held by an object that is not ours.
    #[error(
        "host object {kind} {host_name} already exists and is not managed by this vcluster; it is left untouched"
    )]
    Foreign { kind: &'static str, host_name: String },
    /// The API server refused the write (Invalid, Forbidden, ...): a tenant-visible failure.
    #[error("the {cluster} API server refused to {verb} {kind} {name}: {message}")]
    Rejected {
        cluster: Cluster,
        verb: &'static str,
        kind: &'static str,
        name: String,
        code: u16,
        message: String,
    },
    /// Network trouble, 5xx, 429, timeouts: retried with backoff.
    #[error("{verb} {kind} {name} on the {cluster} cluster failed: {source}")]
    Transient {
        cluster: Cluster,
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Translate(#[from] TranslateError),
    /// A packed cache entry did not parse back (a bug, never the tenant's doing): retried.
    #[error("cached {kind} {name} could not be read back: {message}")]
    Cache {
        kind: &'static str,
        name: String,
        message: String,
    },
    /// This replica does not hold the leader lease (HA): it writes nothing.
    #[error("not writing {kind} {name}: this syncer replica is not the leader")]
    NotLeading { kind: &'static str, name: String },
}

impl SyncError {
    /// Bounded label for metrics and the Event reason suffix.
    pub fn category(&self) -> &'static str {
        match self {
            SyncError::Conflict { .. } => "conflict",
            SyncError::Foreign { .. } => "foreign",
            SyncError::Rejected { .. } => "rejected",
            SyncError::Transient { .. } => "transient",
            SyncError::Cache { .. } => "cache",
            SyncError::NotLeading { .. } => "not_leading",
            SyncError::Translate(TranslateError::Refused(_)) => "refused",
            SyncError::Translate(TranslateError::NotReady(_)) => "waiting",
            SyncError::Translate(TranslateError::Missing(_)) => "missing",
        }
    }

    /// The host object name the error is about, if it is about one (to rewrite it out of what
    /// the tenant reads).
    pub fn host_name(&self) -> Option<&str> {
        match self {
            SyncError::Conflict { cluster, name, .. }
            | SyncError::Rejected { cluster, name, .. }
            | SyncError::Transient { cluster, name, .. }
                if *cluster == Cluster::Host =>
            {
                Some(name)
            }
            SyncError::Foreign { host_name, .. } => Some(host_name),
            _ => None,
        }
    }

    /// Whether the tenant should see it as a Warning Event.
    pub fn tenant_visible(&self) -> bool {
        matches!(
            self,
            SyncError::Foreign { .. }
                | SyncError::Rejected { .. }
                | SyncError::Translate(TranslateError::Refused(_) | TranslateError::Missing(_))
        )
    }

    /// A fixed requeue instead of exponential backoff (conflicts and waits are not failures).
    pub fn fixed_requeue(&self) -> Option<Duration> {
        match self {
            SyncError::Conflict { .. } => Some(super::RECHECK),
            SyncError::Translate(TranslateError::NotReady(_)) | SyncError::NotLeading { .. } => {
                Some(Duration::from_secs(2))
            }
            _ => None,
        }
    }

    /// Classifies a kube error of a write.
    pub fn from_kube(
        error: kube::Error,
        cluster: Cluster,
        verb: &'static str,
        kind: &'static str,
        name: &str,
    ) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 409 => SyncError::Conflict {
                cluster,
                kind,
                name: name.to_owned(),
            },
            kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 429 => {
                SyncError::Rejected {
                    cluster,
                    verb,
                    kind,
                    name: name.to_owned(),
                    code: status.code,
                    message: status.message.clone(),
                }
            }
            _ => SyncError::Transient {
                cluster,
                verb,
                kind,
                name: name.to_owned(),
                source: error,
            },
        }
    }
}
