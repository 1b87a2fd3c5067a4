//! One folder (or file) per synced kind, each with a pure translation and one `register` that
//! declares its watches, triggers and reconciler to the engine's
//! [`Registry`](crate::engine::registry::Registry). [`start`] is the table of kinds: one row
//! each, with the flag that enables it.

pub mod configmaps;
pub mod endpoints;
pub mod events;
pub mod kubeconfig;
pub mod networkpolicies;
pub mod nodes;
pub mod poddisruptionbudgets;
pub mod pods;
pub mod pvcs;
pub mod secrets;
pub mod selectors;
pub mod services;
pub mod shared;
pub mod storageclasses;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::runtime::reflector::Store;

use crate::engine::Shared;
use crate::engine::registry::{Registry, RegistryError, Tasks, WatchOptions};
use crate::engine::unbookmarked::Load;
use crate::markers;
use nodes::KubeletEndpoint;

/// The kinds' flags: one clap group per kind, declared by the kind, flattened here once (so
/// the syncer's flags get a new kind's group from this one field).
#[derive(Debug, clap::Args)]
pub struct KindArgs {
    #[command(flatten)]
    pub pods: pods::PodArgs,
    #[command(flatten)]
    pub configmaps: configmaps::ConfigMapArgs,
    #[command(flatten)]
    pub secrets: secrets::SecretArgs,
    #[command(flatten)]
    pub nodes: nodes::NodeArgs,
    #[command(flatten)]
    pub networkpolicies: networkpolicies::NetworkPolicyArgs,
    #[command(flatten)]
    pub poddisruptionbudgets: poddisruptionbudgets::PodDisruptionBudgetArgs,
    #[command(flatten)]
    pub persistentvolumeclaims: pvcs::PersistentVolumeClaimArgs,
    #[command(flatten)]
    pub storageclasses: storageclasses::StorageClassArgs,
    #[command(flatten)]
    pub kubeconfig: kubeconfig::KubeconfigArgs,
}

/// The kinds' settings, validated once from [`KindArgs`].
#[derive(Debug, Clone)]
pub struct KindSettings {
    pub pods: pods::PodSettings,
    pub configmaps: configmaps::ConfigMapArgs,
    pub secrets: secrets::SecretArgs,
    /// Node mode and kubelet endpoint (a `None` address: the vcluster Service IP).
    pub nodes: nodes::NodeArgs,
    pub networkpolicies: networkpolicies::NetworkPolicyArgs,
    pub poddisruptionbudgets: poddisruptionbudgets::PodDisruptionBudgetArgs,
    pub persistentvolumeclaims: pvcs::PersistentVolumeClaimArgs,
    pub storageclasses: storageclasses::StorageClassArgs,
    pub kubeconfig: kubeconfig::KubeconfigArgs,
}

impl KindArgs {
    /// The settings of vcluster `vcluster`, whose DNS domain is `cluster_domain`.
    pub fn into_settings(self, vcluster: &str, cluster_domain: &str) -> KindSettings {
        let Self {
            pods,
            configmaps,
            secrets,
            nodes,
            networkpolicies,
            poddisruptionbudgets,
            persistentvolumeclaims,
            storageclasses,
            kubeconfig,
        } = self;
        KindSettings {
            pods: pods.into_settings(vcluster, cluster_domain),
            configmaps,
            secrets,
            nodes,
            networkpolicies,
            poddisruptionbudgets,
            persistentvolumeclaims,
            storageclasses,
            kubeconfig,
        }
    }
}

/// What the kinds are started with: their settings and facts found at startup.
#[derive(Debug, Clone)]
pub struct KindOptions {
    pub vcluster: String,
    pub kinds: KindSettings,
    pub virtual_version: String,
    /// The vcluster's host Service (its ClusterIP/endpoints back the virtual default/kubernetes).
    pub service_name: String,
    /// Whether watches load by whole LISTs (`--initial-list`).
    pub whole_lists: bool,
    /// Whether watches stream their initial objects (`--initial-list`) on each cluster.
    pub host_streams: bool,
    pub virtual_streams: bool,
    /// The host namespace and the k3s data dir (the kubeconfig export reads its credentials).
    pub host_namespace: String,
    pub data_dir: std::path::PathBuf,
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
    /// Whether the kind may lack its host permission (a Role not updated yet): its caches then
    /// hold back only its own workers, never the other kinds' (see `Registry::begin_kind`).
    optional: bool,
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
        optional: false,
        register: |r, o, w| pods::register(r, o.kinds.pods.clone(), w),
    },
    Kind {
        name: "configmaps",
        enabled: always,
        optional: false,
        register: |r, o, w| configmaps::register(r, o.kinds.configmaps.sync_all_configmaps, w.div_ceil(2)),
    },
    Kind {
        name: "secrets",
        enabled: always,
        optional: false,
        register: |r, o, w| secrets::register(r, o.kinds.secrets.sync_all_secrets, w.div_ceil(2)),
    },
    Kind {
        name: "nodes",
        enabled: always,
        optional: false,
        register: |r, o, _| {
            let kubelet = KubeletEndpoint {
                address: o.kinds.nodes.kubelet_address.clone().unwrap_or_default(),
                port: i32::from(o.kinds.nodes.kubelet_port),
            };
            nodes::register(r, o.kinds.nodes.node_sync, kubelet, o.virtual_version.clone(), 2);
        },
    },
    // A restart re-checks every cached host event (cheap, but thousands at 10k pods).
    Kind {
        name: "events",
        enabled: always,
        optional: false,
        register: |r, o, w| {
            let read_back = Load::choose(o.whole_lists, o.virtual_streams);
            events::register(r, o.vcluster.clone(), read_back, w.div_ceil(4))
        },
    },
    Kind {
        name: "services",
        enabled: always,
        optional: false,
        register: |r, o, w| services::register(r, o.service_name.clone(), w.div_ceil(2)),
    },
    Kind {
        name: "endpoints",
        enabled: always,
        optional: false,
        register: |r, _, _| endpoints::register(r, 2),
    },
    Kind {
        name: "networkpolicies",
        enabled: |o| o.kinds.networkpolicies.sync_networkpolicies,
        optional: true,
        register: |r, o, _| networkpolicies::register(r, &o.kinds.networkpolicies, 2),
    },
    Kind {
        name: "poddisruptionbudgets",
        enabled: |o| o.kinds.poddisruptionbudgets.sync_poddisruptionbudgets,
        optional: true,
        register: |r, _, _| poddisruptionbudgets::register(r, 2),
    },
    Kind {
        name: "storageclasses",
        enabled: |o| o.kinds.storageclasses.sync_storageclasses,
        optional: true,
        register: |r, o, _| {
            let claims = &o.kinds.persistentvolumeclaims;
            let map = claims.storage_class_map.clone();
            storageclasses::register(r, map, claims.sync_persistentvolumeclaims, 1);
        },
    },
    Kind {
        name: "persistentvolumeclaims",
        enabled: |o| o.kinds.persistentvolumeclaims.sync_persistentvolumeclaims,
        optional: true,
        register: |r, o, w| {
            let claims = &o.kinds.persistentvolumeclaims;
            let host_classes = o.kinds.storageclasses.sync_storageclasses;
            let (map, pv_sync) = (claims.storage_class_map.clone(), claims.pv_sync);
            pvcs::register(r, map, host_classes, pv_sync, w.div_ceil(4));
        },
    },
    Kind {
        name: "kubeconfig",
        enabled: |o| o.kinds.kubeconfig.export_kubeconfig,
        optional: false,
        register: |r, o, _| {
            let export = kubeconfig::Export::from_args(
                &o.kinds.kubeconfig,
                &o.vcluster,
                &o.service_name,
                &o.host_namespace,
            );
            kubeconfig::register(r, export, kubeconfig::CredentialFiles::in_data_dir(&o.data_dir));
        },
    },
];

/// Declares every enabled kind to `reg`.
pub fn register_all(reg: &mut Registry, opts: &KindOptions) {
    let workers = reg.default_workers();
    for kind in KINDS.iter().filter(|k| (k.enabled)(opts)) {
        tracing::debug!(kind = kind.name, "registering");
        reg.begin_kind(kind.optional);
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
            whole_lists: opts.whole_lists,
            host_streams: opts.host_streams,
            virtual_streams: opts.virtual_streams,
        },
    );
    register_all(&mut reg, &opts);
    reg.begin_kind(false); // what the DNS server and the kubelet endpoint read is required
    let dns = Stores {
        services: reg.store(&shared::virtual_services()),
        endpoints: reg.store(&crate::engine::standard::virtual_watch::<endpoints::EndpointsKind>()),
        virtual_pods: reg.store(&pods::register::virtual_pods()),
        host_pods: reg.store(&pods::register::host_pods()),
    };
    reg.start(tasks)?;
    Ok(dns)
}
