//! ServiceAccount tokens: which tokens a pod needs, where the host pod reads them (its own
//! annotations or a token Secret), and the names of those keys.

use k8s_openapi::api::core::v1::{
    DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, SecretProjection,
    ServiceAccountTokenProjection, VolumeProjection,
};

use crate::markers::TOKEN_ANNOTATION_PREFIX;
use crate::naming;
use crate::resources::pods::settings::TokenStorage;

/// Lifetime of a projected token when the source sets none (the kubelet's default, 1h + 7s).
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// One projected ServiceAccount token the host pod needs (from the virtual pod's projected
/// volumes' serviceAccountToken sources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    /// Key in the token Secret ([`naming::token_secret_name`]): see [`token_key`].
    pub key: String,
    /// Audience of the source; `None` when unset (or empty): the API server's default audiences.
    pub audience: Option<String>,
    /// Requested lifetime: the source's `expirationSeconds`, else
    /// [`DEFAULT_TOKEN_EXPIRATION_SECONDS`] like the kubelet.
    pub expiration_seconds: i64,
}

/// Key in the token Secret of the token for source number `source_index` (0-based, counted over
/// ALL sources of the projected volume) of the projected volume `volume`:
/// `<volume>.<source_index>`, e.g. `kube-api-access-x7k2p.0`. Volume names are DNS labels
/// (no `.`) and unique within a pod, so keys are unique and valid Secret keys.
pub fn token_key(volume: &str, source_index: usize) -> String {
    format!("{volume}.{source_index}")
}

/// Host pod annotation holding the token of [`token_key`] `key` (with
/// [`TokenStorage::Annotation`]): `vnest.dev/token-<short_hash(key)>`, a valid annotation key
/// whatever the volume name's length.
pub fn token_annotation(key: &str) -> String {
    format!(
        "{TOKEN_ANNOTATION_PREFIX}{}",
        naming::short_hash(&[key, "sa-token"])
    )
}

/// Whether the host pod reads its tokens from its own annotations (it was created with
/// [`TokenStorage::Annotation`]); pods created with the other storage keep theirs for life.
pub fn uses_annotation_tokens(hpod: &Pod) -> bool {
    let field = format!("metadata.annotations['{TOKEN_ANNOTATION_PREFIX}");
    hpod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.downward_api.as_ref())
        .flat_map(|d| d.items.iter().flatten())
        .any(|i| {
            i.field_ref
                .as_ref()
                .is_some_and(|f| f.field_path.starts_with(&field))
        })
}

/// The projected ServiceAccount tokens the host pod needs, in volume order then source order.
pub fn token_requests(vpod: &Pod) -> Vec<TokenRequestSpec> {
    let volumes = vpod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    volumes
        .iter()
        .flat_map(|volume| {
            let sources = volume
                .projected
                .as_ref()
                .and_then(|p| p.sources.as_deref())
                .unwrap_or_default();
            sources.iter().enumerate().filter_map(|(index, source)| {
                let token = source.service_account_token.as_ref()?;
                Some(TokenRequestSpec {
                    key: token_key(&volume.name, index),
                    audience: token.audience.clone().filter(|a| !a.is_empty()),
                    expiration_seconds: token
                        .expiration_seconds
                        .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
                })
            })
        })
        .collect()
}

/// The projection replacing the `serviceAccountToken` source `token` (key [`token_key`]) of a
/// projected volume: with [`TokenStorage::Annotation`], a downward-API item reading the host
/// pod's annotation [`token_annotation`]; with [`TokenStorage::Secret`], item `key` of the token
/// Secret `token_secret`.
pub(super) fn project_token(
    storage: TokenStorage,
    token_secret: &str,
    key: String,
    token: ServiceAccountTokenProjection,
    source: &mut VolumeProjection,
) {
    match storage {
        TokenStorage::Annotation => {
            source.downward_api = Some(DownwardAPIProjection {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: token.path,
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{}']", token_annotation(&key)),
                    }),
                    mode: None,
                    resource_field_ref: None,
                }]),
            });
        }
        TokenStorage::Secret => {
            source.secret = Some(SecretProjection {
                name: token_secret.to_owned(),
                items: Some(vec![KeyToPath {
                    key,
                    path: token.path,
                    mode: None,
                }]),
                optional: None,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use std::collections::BTreeSet;

    use super::super::testutil::*;
    use super::super::{PodInputs, host_pod};
    use super::*;
    use crate::markers::ANNOTATION_SERVICE_ACCOUNT;
    use crate::naming::token_secret_name;
    use crate::resources::pods::settings::HostAccessPolicy;
    use serde_json::json;

    #[test]
    fn service_account_token_sources_become_annotations_of_the_host_pod() {
        let ctx = ctx();
        let mut settings = settings_with(HostAccessPolicy::Deny);
        settings.token_storage = TokenStorage::Annotation;
        let labels = ns_labels();
        let inputs = PodInputs {
            ctx: &ctx,
            settings: &settings,
            namespace_labels: &labels,
            services: &[],
        };
        let host = host_pod(&inputs, &sa_pod()).unwrap();
        let spec = serde_json::to_value(host.spec.as_ref().unwrap()).unwrap();
        let sources = &spec["volumes"][0]["projected"]["sources"];
        let key = token_annotation("kube-api-access-x7k2p.0");
        assert_eq!(
            sources[0],
            json!({"downwardAPI": {"items": [{"path": "token",
                "fieldRef": {"apiVersion": "v1", "fieldPath": format!("metadata.annotations['{key}']")}}]}})
        );
        assert!(sources[0].get("secret").is_none());
        let vault = &spec["volumes"][2]["projected"]["sources"];
        assert_eq!(
            vault[1]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            format!("metadata.annotations['{}']", token_annotation("vault.1"))
        );
        assert_ne!(token_annotation("vault.1"), token_annotation("vault.2"));
        assert!(uses_annotation_tokens(&host));
        assert!(!uses_annotation_tokens(&translate(&sa_pod())));
        // A valid annotation key (name part <= 63) whatever the volume name's length.
        let long = token_annotation(&format!("{}.12", "v".repeat(63)));
        assert!(long.len() - "vnest.dev/".len() <= 63, "{long}");
    }

    #[test]
    fn service_account_token_sources_become_the_token_secret() {
        let spec = hspec(&sa_pod());
        let secret = token_secret_name(VC, NS, "web-0");
        let sources = &spec["volumes"][0]["projected"]["sources"];
        assert_eq!(
            sources[0],
            json!({"secret": {"name": secret, "items": [{"key": "kube-api-access-x7k2p.0", "path": "token"}]}})
        );
        assert_eq!(sources[1]["configMap"]["name"], hn("kube-root-ca.crt"));
        assert_eq!(sources[1]["configMap"]["items"][0]["key"], "ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['vnest.dev/object-namespace']"
        );
        assert_eq!(spec["volumes"][0]["projected"]["defaultMode"], 420);
        let vault = &spec["volumes"][2]["projected"]["sources"];
        assert_eq!(vault[0]["secret"]["name"], hn("other"));
        assert_eq!(
            vault[1]["secret"]["items"][0],
            json!({"key": "vault.1", "path": "vault-token"})
        );
        assert_eq!(
            vault[2]["secret"]["items"][0],
            json!({"key": "vault.2", "path": "plain"})
        );
        assert!(vault[1].get("serviceAccountToken").is_none());

        assert_eq!(spec["serviceAccountName"], WORKLOAD_SA);
        assert!(spec.get("serviceAccount").is_none());
        assert_eq!(spec["automountServiceAccountToken"], false);
        let annotations = translate(&sa_pod()).metadata.annotations.unwrap();
        assert_eq!(annotations[ANNOTATION_SERVICE_ACCOUNT], "builder");
    }

    #[test]
    fn token_requests_list_every_token_source() {
        let requests = token_requests(&sa_pod());
        assert_eq!(
            requests,
            vec![
                TokenRequestSpec {
                    key: "kube-api-access-x7k2p.0".to_owned(),
                    audience: None,
                    expiration_seconds: 3607,
                },
                TokenRequestSpec {
                    key: "vault.1".to_owned(),
                    audience: Some("vault".to_owned()),
                    expiration_seconds: 600,
                },
                TokenRequestSpec {
                    key: "vault.2".to_owned(),
                    audience: None,
                    expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
                },
            ]
        );
        let keys: BTreeSet<&str> = requests.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys.len(), requests.len(), "keys are unique");
        assert!(token_requests(&vpod("ns", "plain")).is_empty());
    }

    #[test]
    fn two_kube_api_access_volumes_get_distinct_keys() {
        let v = vpod_spec(json!({"volumes": [
            sa_volume("a", json!({"path": "token"})),
            sa_volume("b", json!({"path": "token"})),
        ]}));
        let keys: Vec<String> = token_requests(&v).into_iter().map(|r| r.key).collect();
        assert_eq!(keys, vec!["a.0", "b.0"]);
        let spec = hspec(&v);
        assert_eq!(
            spec["volumes"][1]["projected"]["sources"][0]["secret"]["items"][0]["key"],
            "b.0"
        );
    }
}
