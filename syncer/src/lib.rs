//! vnest: virtual Kubernetes clusters that live inside one namespace of a host cluster.
//!
//! A vcluster is one pod: a stock k3s server (the *virtual* API server, SQLite datastore) and
//! this crate's syncer. Tenants talk to the virtual API server; the syncer copies the few
//! low-level objects that must really run (pods and what they mount, services, endpoints, ...)
//! into the single *host* namespace under collision-free names, and copies status, events and
//! node facts back.
//!
//! Module map (I/O at the edges, pure rules in the middle):
//! - [`config`]: command-line flags (each with a `VNEST_*` env twin) -> validated [`config::SyncerConfig`].
//! - [`telemetry`]: tracing subscriber (plain or JSON logs).
//! - [`clients`]: typed [`clients::HostClient`] / [`clients::VirtualClient`] with request
//!   metrics and client-side rate limits (QPS/burst, requests in flight) as tower layers.
//! - [`fair_share`]: that budget shared round-robin between virtual namespaces (pure schedule,
//!   the request's namespace carried by a task-local set around each reconcile).
//! - [`seat_limit`]: how many requests a client keeps in flight: fixed, or following the
//!   server's latency (the host's, so a burst cannot fill its datastore's queue).
//! - [`metrics`]: one [`metrics::Metrics`] struct owning its Prometheus registry (no globals).
//! - [`health`]: readiness derived from live watches on both clusters (no polling).
//! - [`admin`]: the `/livez`, `/readyz`, `/metrics` HTTP server.
//! - [`naming`]: pure virtual -> host name translation (deterministic, injective, <= 63 chars).
//! - [`markers`]: our label/annotation keys and "is this host object ours?".
//! - [`engine`]: the generic two-way sync engine: the registry of kinds, fair queues, watches,
//!   pure plans and the one executor of writes.
//! - [`resources`]: one folder or file per synced kind (pure translation and plan, a
//!   `register` that declares it) and the table of kinds.
//! - [`kubelet`]: the kubelet endpoint of the virtual nodes (logs, exec, attach, port-forward
//!   through the host's pod subresources; TLS, client CA and TokenReview/SAR auth, allowlist).
//! - [`dns`]: the cluster DNS served from the watch caches (pure catalog, hickory server).
//! - [`cidr`]: `detect-service-cidr`, the host's service CIDR with namespaced permissions.
//! - [`leader`]: leader election between HA replicas (a host Lease, kube-lease-manager); only
//!   the leader's workers run and its executor writes.
//! - [`memory`]: glibc arenas and `malloc_trim` after bursts.
//! - [`splice`]: two connections spliced byte for byte (exec/attach/port-forward), neither
//!   direction's error cutting what the other still carries.
//! - [`app`]: wiring and supervision: start everything, stop everything on SIGTERM.
//! - [`error`]: the crate's typed errors.
//! - [`cli`]: the `vnest` CLI (create, connect, list, delete, render, schema): one typed
//!   configuration, the embedded manifests rendered by a small kustomize subset, kube-rs.

pub mod admin;
pub mod app;
pub mod cidr;
pub mod cli;
pub mod clients;
pub mod config;
pub mod dns;
pub mod duration;
pub mod engine;
pub mod error;
pub mod fair_share;
pub mod health;
pub mod ipnet;
pub mod kubelet;
pub mod leader;
pub mod markers;
pub mod memory;
pub mod metrics;
pub mod naming;
pub mod resources;
pub mod seat_limit;
pub mod splice;
pub mod telemetry;
