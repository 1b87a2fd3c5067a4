//! One folder (or file) per synced kind, each with a pure translation and one `register` that
//! declares its watches, triggers and reconciler to the engine's
//! [`Registry`](crate::engine::registry::Registry). [`start`] is the table of kinds: one row
//! each, with the flag that enables it.

pub mod configmaps;
pub mod endpoints;
pub mod events;
pub mod networkpolicies;
pub mod nodes;
pub mod pods;
pub mod secrets;
pub mod services;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::runtime::reflector::Store;

use crate::engine::Shared;
use crate::engine::registry::{Registry, RegistryError, Tasks, Watch, WatchOptions};
use crate::markers;
use nodes::KubeletEndpoint;

/// Options of the kinds (from the command line).
#[derive(Debug, Clone)]
pub struct KindOptions {
    pub vcluster: String,
    pub pods: pods::PodSettings,
    pub configmaps: configmaps::ConfigMapArgs,
    pub secrets: secrets::SecretArgs,
    /// Node mode and kubelet endpoint (a `None` address: the vcluster Service IP).
    pub nodes: nodes::NodeArgs,
    pub virtual_version: String,
    /// The vcluster's host Service (its ClusterIP/endpoints back the virtual default/kubernetes).
    pub service_name: String,
    pub networkpolicies: networkpolicies::NetworkPolicyArgs,
    /// Whether watches stream their initial objects (`--initial-list`) on each cluster.
    pub host_streams: bool,
    pub virtual_streams: bool,
}

/// The caches the DNS server answers from, and the pod caches the kubelet endpoint reads.
pub struct Stores {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub virtual_pods: Store<pods::CachedPod>,
    pub host_pods: Store<pods::CachedPod>,
}

/// One row of the table of kinds.
struct Kind {
    name: &'static str,
    enabled: fn(&KindOptions) -> bool,
    /// Declares the kind; its reconciles in flight derive from `--workers`.
    register: fn(&mut Registry, &KindOptions, usize),
}

fn always(_: &KindOptions) -> bool {
    true
}

/// The table of kinds.
const KINDS: &[Kind] = &[
    Kind {
        name: "pods",
        enabled: always,
        register: |r, o, w| pods::register(r, o.pods.clone(), w),
    },
    Kind {
        name: "configmaps",
        enabled: always,
        register: |r, o, w| configmaps::register(r, o.configmaps.sync_all_configmaps, w.div_ceil(2)),
    },
    Kind {
        name: "secrets",
        enabled: always,
        register: |r, o, w| secrets::register(r, o.secrets.sync_all_secrets, w.div_ceil(2)),
    },
    Kind {
        name: "nodes",
        enabled: always,
        register: |r, o, _| {
            let kubelet = KubeletEndpoint {
                address: o.nodes.kubelet_address.clone().unwrap_or_default(),
                port: i32::from(o.nodes.kubelet_port),
            };
            nodes::register(r, o.nodes.node_sync, kubelet, o.virtual_version.clone(), 2);
        },
    },
    // A restart re-checks every cached host event (cheap, but thousands at 10k pods).
    Kind {
        name: "events",
        enabled: always,
        register: |r, o, w| events::register(r, o.vcluster.clone(), o.virtual_streams, w.div_ceil(4)),
    },
    Kind {
        name: "services",
        enabled: always,
        register: |r, o, w| services::register(r, o.service_name.clone(), w.div_ceil(2)),
    },
    Kind {
        name: "endpoints",
        enabled: always,
        register: |r, _, _| endpoints::register(r, 2),
    },
    Kind {
        name: "networkpolicies",
        enabled: |o| o.networkpolicies.sync_networkpolicies,
        register: |r, _, _| networkpolicies::register(r, 2),
    },
];

/// Declares every enabled kind to `reg`.
pub fn register_all(reg: &mut Registry, opts: &KindOptions) {
    let workers = reg.default_workers();
    for kind in KINDS.iter().filter(|k| (k.enabled)(opts)) {
        tracing::debug!(kind = kind.name, "registering");
        (kind.register)(reg, opts, workers);
    }
}

/// Starts every enabled kind (its tasks join `tasks`). Returns the caches DNS and the kubelet
/// endpoint answer from.
pub fn start(shared: Arc<Shared>, opts: KindOptions, tasks: &mut Tasks) -> Result<Stores, RegistryError> {
    let mut reg = Registry::new(
        shared,
        WatchOptions {
            owned_selector: markers::selector(&opts.vcluster),
            host_streams: opts.host_streams,
            virtual_streams: opts.virtual_streams,
        },
    );
    register_all(&mut reg, &opts);
    let dns = Stores {
        services: reg.store(&Watch::<Service>::virtual_all("services")),
        endpoints: reg.store(&Watch::<Endpoints>::virtual_all("endpoints")),
        virtual_pods: reg.store(&pods::register::virtual_pods()),
        host_pods: reg.store(&pods::register::host_pods()),
    };
    reg.start(tasks)?;
    Ok(dns)
}
