//! ConfigMaps: copied to the host only while a virtual pod uses them (or with
//! `--sync-all-configmaps`); data and binaryData follow the virtual side.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::pods::refs::{RefIndex, RefKind};
use crate::engine::standard::CopiedKind;

/// Flags of the ConfigMap kind.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigMapArgs {
    /// Copy every virtual ConfigMap to the host, not only those pods use.
    #[arg(long, env = "VNEST_SYNC_ALL_CONFIGMAPS")]
    pub sync_all_configmaps: bool,
}

pub struct ConfigMaps {
    pub refs: Arc<RefIndex>,
    pub sync_all: bool,
}

impl CopiedKind for ConfigMaps {
    type K = ConfigMap;
    const KIND: &'static str = "ConfigMap";
    const NAME: &'static str = "configmaps";

    fn owned_fields(obj: &ConfigMap) -> Value {
        json!({
            "data": obj.data.clone().unwrap_or_default(),
            "binaryData": obj.binary_data.clone().unwrap_or_default(),
        })
    }

    fn host_object(&self, _tc: &crate::engine::TranslateCtx, meta: ObjectMeta, v: &ConfigMap) -> ConfigMap {
        ConfigMap {
            metadata: meta,
            data: v.data.clone(),
            binary_data: v.binary_data.clone(),
            immutable: v.immutable,
        }
    }

    fn wanted(&self, v: &ConfigMap) -> bool {
        self.sync_all
            || self.refs.is_used(
                RefKind::ConfigMap,
                &v.namespace().unwrap_or_default(),
                &v.name_any(),
            )
    }
}

/// Declares the ConfigMap kind (copied while a pod uses it, or all with `sync_all`).
pub fn register(reg: &mut crate::engine::registry::Registry, sync_all: bool, workers: usize) {
    let refs = reg.index::<RefIndex>();
    crate::engine::standard::register(reg, ConfigMaps { refs, sync_all }, workers);
}
