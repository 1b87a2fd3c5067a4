//! Watches several kinds read, declared once (the registry gives every declaration of the same
//! watch one cache; a second spelling with another metric label would go unnoticed).

use k8s_openapi::api::core::v1::Service;

use crate::engine::registry::Watch;

/// Every virtual Service (the Service kind's, read by pods for service links, by Endpoints and
/// by the DNS server).
pub fn virtual_services() -> Watch<Service> {
    Watch::virtual_all("services")
}
