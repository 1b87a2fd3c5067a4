//! Secrets: copied to the host only while a virtual pod uses them (volumes, env, envFrom,
//! projected, imagePullSecrets) or with `--sync-all-secrets`. ServiceAccount-token Secrets
//! become Opaque on the host (the host API would validate them as its own). Values are never
//! logged: nothing here formats an object.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::pods::refs::{RefIndex, RefKind};
use crate::engine::standard::CopiedKind;

/// Flags of the Secret kind.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
    /// Copy every virtual Secret to the host, not only those pods use.
    #[arg(long, env = "VNEST_SYNC_ALL_SECRETS")]
    pub sync_all_secrets: bool,
}

pub struct Secrets {
    pub refs: Arc<RefIndex>,
    pub sync_all: bool,
}

/// Secret types the host would treat specially; they are stored as Opaque on the host.
const HOST_OPAQUE_TYPES: &[&str] = &[
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
];

pub fn host_type(virtual_type: Option<&str>) -> Option<String> {
    match virtual_type {
        Some(t) if HOST_OPAQUE_TYPES.contains(&t) => Some("Opaque".into()),
        other => other.map(str::to_owned),
    }
}

impl CopiedKind for Secrets {
    type K = Secret;
    const KIND: &'static str = "Secret";
    const NAME: &'static str = "secrets";

    fn owned_fields(obj: &Secret) -> Value {
        json!({ "data": obj.data.clone().unwrap_or_default() })
    }

    fn host_object(&self, _tc: &crate::engine::TranslateCtx, meta: ObjectMeta, v: &Secret) -> Secret {
        Secret {
            metadata: meta,
            data: v.data.clone(),
            string_data: None,
            type_: host_type(v.type_.as_deref()),
            immutable: v.immutable,
        }
    }

    fn wanted(&self, v: &Secret) -> bool {
        self.sync_all
            || self
                .refs
                .is_used(RefKind::Secret, &v.namespace().unwrap_or_default(), &v.name_any())
    }
}

/// Declares the Secret kind (copied while a pod uses it, or all with `sync_all`).
pub fn register(reg: &mut crate::engine::registry::Registry, sync_all: bool, workers: usize) {
    let refs = reg.index::<RefIndex>();
    crate::engine::standard::register(reg, Secrets { refs, sync_all }, workers);
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_types_become_opaque() {
        assert_eq!(
            super::host_type(Some("kubernetes.io/service-account-token")).as_deref(),
            Some("Opaque")
        );
        assert_eq!(
            super::host_type(Some("kubernetes.io/tls")).as_deref(),
            Some("kubernetes.io/tls")
        );
        assert_eq!(super::host_type(None), None);
    }
}
