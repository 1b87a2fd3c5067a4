//! What the Service kind declares to the engine: both Service watches, the vcluster's own host
//! Endpoints (backing the virtual `default/kubernetes`), the virtual Endpoints of
//! `default/kubernetes`, and a task that re-checks the special Services whenever the
//! translation context (vcluster and DNS Service IPs) changes.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::{Resource, ResourceExt};

use super::sync::ServiceSync;
use crate::engine::execute::Executor;
use crate::engine::ownership;
use crate::engine::queue::Key;
use crate::engine::registry::{Registry, Watch, wire_pair};
use crate::engine::watch::Change;
use crate::resources::shared::virtual_services;

/// Declares the Service kind. `service_name` is the vcluster's host Service.
pub fn register(reg: &mut Registry, service_name: String, workers: usize) {
    let (v_services, h_services) = (virtual_services(), Watch::<Service>::host_owned("services"));
    // Its own metric label: the watch of copied Endpoints is "endpoints".
    let h_vc_endpoints = Watch::<Endpoints>::host_named("vcluster-endpoints", service_name.clone());
    let v_endpoints = crate::engine::standard::virtual_watch::<crate::resources::endpoints::EndpointsKind>();
    let queue = reg.queue("services");
    wire_pair(reg, &v_services, &h_services, &queue, |o| {
        ownership::host_key("Service", o.meta())
    });
    let kube_key = || Key::new("default", "kubernetes");
    let q = queue.clone();
    reg.on(&h_vc_endpoints, move |_| q.add(kube_key()));
    let q = queue.clone();
    reg.on(&v_endpoints, move |c| {
        let ours = match c {
            Change::Applied(o) | Change::Deleted(o) => {
                o.namespace().as_deref() == Some("default") && o.name_any() == "kubernetes"
            }
            Change::Relisted(_) => true,
        };
        if ours {
            q.add(kube_key());
        }
    });
    // The special Services follow the translation context (vcluster and DNS Service IPs).
    let (q, mut ctx) = (queue, reg.shared().translate.clone());
    reg.task("special services", async move {
        loop {
            q.add(Key::new("default", "kubernetes"));
            q.add(Key::new("kube-system", "kube-dns"));
            if ctx.changed().await.is_err() {
                return Ok(());
            }
        }
    });

    let sync = ServiceSync {
        executor: Executor::new(reg.shared().clone()),
        virtual_services: reg.store(&v_services),
        host_services: reg.store(&h_services),
        host_endpoints: reg.store(&h_vc_endpoints),
        virtual_endpoints: reg.store(&v_endpoints),
        service_name,
        ip_refused_since: Default::default(),
    };
    reg.workers(Arc::new(sync), workers);
}
