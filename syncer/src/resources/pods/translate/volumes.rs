//! Volumes: references renamed, ServiceAccount token sources replaced, downward-API items
//! rewritten, ephemeral volumes turned into claims.

use k8s_openapi::api::core::v1::{
    LocalObjectReference, PersistentVolumeClaimVolumeSource, Volume, VolumeProjection,
};

use super::metadata::rewrite_field_ref;
use super::tokens::{project_token, token_key};
use crate::naming::{self, token_secret_name};
use crate::resources::pods::settings::TokenStorage;

/// Renames references to objects of one virtual namespace.
pub(super) struct Renamer<'a> {
    pub(super) vcluster: &'a str,
    pub(super) namespace: &'a str,
    pub(super) token_storage: TokenStorage,
}

impl Renamer<'_> {
    pub(super) fn name(&self, name: &str) -> String {
        naming::host_name(self.vcluster, self.namespace, name)
    }

    pub(super) fn rename(&self, name: &mut String) {
        *name = self.name(name);
    }

    pub(super) fn rename_ref(&self, reference: Option<&mut LocalObjectReference>) {
        if let Some(reference) = reference.filter(|r| !r.name.is_empty()) {
            self.rename(&mut reference.name);
        }
    }
}

/// Renames the object references of one volume, replaces ServiceAccount token projections by
/// the token Secret, rewrites downward-API items and turns ephemeral volumes into claims of the
/// PVC the virtual ephemeral-volume controller creates (`<pod>-<volume>`).
pub(super) fn translate_volume(names: &Renamer<'_>, pod_name: &str, volume: &mut Volume) {
    let vc = names.vcluster;
    if let Some(cm) = volume.config_map.as_mut() {
        names.rename(&mut cm.name);
    }
    if let Some(secret_name) = volume.secret.as_mut().and_then(|s| s.secret_name.as_mut()) {
        names.rename(secret_name);
    }
    if let Some(claim) = volume.persistent_volume_claim.as_mut() {
        names.rename(&mut claim.claim_name);
    }
    if let Some(downward) = volume.downward_api.as_mut() {
        for item in downward.items.iter_mut().flatten() {
            rewrite_field_ref(vc, item.field_ref.as_mut());
        }
    }
    if let Some(projected) = volume.projected.as_mut() {
        let token_secret = token_secret_name(vc, names.namespace, pod_name);
        for (index, source) in projected.sources.iter_mut().flatten().enumerate() {
            translate_projection(names, &token_secret, &volume.name, index, source);
        }
    }
    if volume.ephemeral.take().is_some() {
        volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: names.name(&format!("{pod_name}-{}", volume.name)),
            read_only: None,
        });
    }

    names.rename_ref(
        volume
            .csi
            .as_mut()
            .and_then(|v| v.node_publish_secret_ref.as_mut()),
    );
    if let Some(azure) = volume.azure_file.as_mut().filter(|v| !v.secret_name.is_empty()) {
        names.rename(&mut azure.secret_name);
    }
    names.rename_ref(volume.cephfs.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.rbd.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.iscsi.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.flex_volume.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.cinder.as_mut().and_then(|v| v.secret_ref.as_mut()));
    names.rename_ref(volume.scale_io.as_mut().map(|v| &mut v.secret_ref));
    names.rename_ref(volume.storageos.as_mut().and_then(|v| v.secret_ref.as_mut()));
    if let Some(gluster) = volume.glusterfs.as_mut().filter(|v| !v.endpoints.is_empty()) {
        names.rename(&mut gluster.endpoints);
    }
}

/// One source of a projected volume.
fn translate_projection(
    names: &Renamer<'_>,
    token_secret: &str,
    volume_name: &str,
    index: usize,
    source: &mut VolumeProjection,
) {
    if let Some(token) = source.service_account_token.take() {
        let key = token_key(volume_name, index);
        project_token(names.token_storage, token_secret, key, token, source);
        return;
    }
    if let Some(cm) = source.config_map.as_mut() {
        names.rename(&mut cm.name);
    }
    if let Some(secret) = source.secret.as_mut() {
        names.rename(&mut secret.name);
    }
    if let Some(downward) = source.downward_api.as_mut() {
        for item in downward.items.iter_mut().flatten() {
            rewrite_field_ref(names.vcluster, item.field_ref.as_mut());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::super::testutil::*;
    use serde_json::json;

    #[test]
    fn every_reference_is_renamed() {
        let spec = hspec(&referencing_pod());
        let c = &spec["containers"][0];
        // Generated env comes first (8 vars), then the container's own.
        assert_eq!(c["env"][8]["valueFrom"]["configMapKeyRef"]["name"], hn("cm-env"));
        assert_eq!(c["env"][9]["valueFrom"]["secretKeyRef"]["name"], hn("sec-env"));
        assert_eq!(c["env"][9]["valueFrom"]["secretKeyRef"]["key"], "b");
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], hn("cm-from"));
        assert_eq!(c["envFrom"][1]["secretRef"]["name"], hn("sec-from"));
        assert_eq!(c["envFrom"][1]["prefix"], "S_");
        let init = &spec["initContainers"][0];
        assert_eq!(
            init["env"][8]["valueFrom"]["secretKeyRef"]["name"],
            hn("sec-init")
        );
        assert_eq!(init["envFrom"][0]["configMapRef"]["name"], hn("cm-init"));
        assert_eq!(spec["imagePullSecrets"][0]["name"], hn("pull"));

        let v = &spec["volumes"];
        assert_eq!(v[0]["configMap"]["name"], hn("cm-vol"));
        assert_eq!(v[1]["secret"]["secretName"], hn("sec-vol"));
        assert_eq!(v[2]["persistentVolumeClaim"]["claimName"], hn("data"));
        assert_eq!(
            v[3]["projected"]["sources"][0]["configMap"]["name"],
            hn("cm-proj")
        );
        assert_eq!(v[3]["projected"]["sources"][1]["secret"]["name"], hn("sec-proj"));
        assert_eq!(v[4]["csi"]["nodePublishSecretRef"]["name"], hn("sec-csi"));
        assert_eq!(v[5]["azureFile"]["secretName"], hn("sec-azure"));
        assert_eq!(v[6]["cephfs"]["secretRef"]["name"], hn("sec-ceph"));
        assert_eq!(v[7]["rbd"]["secretRef"]["name"], hn("sec-rbd"));
        assert_eq!(v[8]["iscsi"]["secretRef"]["name"], hn("sec-iscsi"));
        assert_eq!(v[9]["flexVolume"]["secretRef"]["name"], hn("sec-flex"));
        assert_eq!(v[10]["cinder"]["secretRef"]["name"], hn("sec-cinder"));
        assert_eq!(v[11]["scaleIO"]["secretRef"]["name"], hn("sec-scaleio"));
        assert_eq!(v[12]["storageos"]["secretRef"]["name"], hn("sec-sos"));
        assert_eq!(v[13]["glusterfs"]["endpoints"], hn("gluster-ep"));
    }

    #[test]
    fn ephemeral_volumes_become_claims() {
        let v = vpod_spec(
            json!({"volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}}]}),
        );
        let volume = &hspec(&v)["volumes"][0];
        assert_eq!(
            volume,
            &json!({"name": "scratch", "persistentVolumeClaim": {"claimName": hn("web-0-scratch")}})
        );
    }
}
