//! Typed errors of the library. Each variant names what failed and keeps its source, so a log
//! line or Event reads as a sentence; `category()` gives a bounded label for metrics/Events.

use std::path::PathBuf;

/// Which API server a request went to. Used in errors, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cluster {
    Host,
    Virtual,
}

impl Cluster {
    pub fn as_str(self) -> &'static str {
        match self {
            Cluster::Host => "host",
            Cluster::Virtual => "virtual",
        }
    }
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the {cluster} kubeconfig {path}: {source}")]
    Kubeconfig {
        cluster: Cluster,
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading the in-cluster config for the {cluster} cluster: {source}")]
    InCluster {
        cluster: Cluster,
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("building the {cluster} client: {source}")]
    Client {
        cluster: Cluster,
        #[source]
        source: kube::Error,
    },
    #[error("the {cluster} API server did not answer within {waited_s} s: {source}")]
    Unreachable {
        cluster: Cluster,
        waited_s: u64,
        #[source]
        source: kube::Error,
    },
    #[error("binding the admin server on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    /// A short, bounded name for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kubeconfig { .. } | Error::InCluster { .. } => "config",
            Error::Client { .. } => "client",
            Error::Unreachable { .. } => "unreachable",
            Error::Bind { .. } => "bind",
            Error::Metrics(_) => "metrics",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
