//! ServiceAccount tokens of synced pods, as plans: the TokenRequests to send to the virtual API
//! server, the tokens they answered and when to renew them (like the kubelet: at 80 % of their
//! lifetime), and the host writes that carry them (the host pod's annotations, or a token
//! Secret owned by the host pod). Pure: the clock is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde_json::Value;

use super::translate;
use crate::engine::TranslateCtx;
use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Ownership, Target, Write};
use crate::engine::plan::{self, PatchKind};
use crate::markers::{self, ANNOTATION_TOKEN_REFRESH_AT, TOKEN_SECRET_KIND};
use crate::naming;

/// Tokens by [`translate::token_key`], and when to renew them.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedTokens {
    pub data: BTreeMap<String, String>,
    pub refresh_at: Timestamp,
}

/// The TokenRequests for every projected token of `v`, bound to the virtual pod, each with the
/// key its answer goes under. Empty when the pod mounts no token.
pub fn requests(v: &Pod) -> Vec<(String, Action)> {
    let ns = v.namespace().unwrap_or_default();
    let sa = v
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    translate::token_requests(v)
        .into_iter()
        .map(|spec| {
            let request = TokenRequest {
                metadata: ObjectMeta::default(),
                spec: TokenRequestSpec {
                    audiences: spec.audience.clone().into_iter().collect(),
                    expiration_seconds: Some(spec.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: v.metadata.name.clone(),
                        uid: v.metadata.uid.clone(),
                    }),
                },
                status: None,
            };
            let write = Write::CreateSubresource {
                subresource: "token",
                body: serde_json::to_value(&request).unwrap_or(Value::Null),
            };
            let target = Target::virtual_object::<ServiceAccount>(&ns, &sa);
            (
                spec.key,
                Action::new(target, write, "the pod mounts a ServiceAccount token"),
            )
        })
        .collect()
}

/// The tokens from the answers to [`requests`] (key, answered TokenRequest), issued at `now`.
pub fn issued(
    answers: Vec<(String, Option<TokenRequest>)>,
    ns: &str,
    now: Timestamp,
) -> Result<IssuedTokens, SyncError> {
    let mut data = BTreeMap::new();
    let mut refresh_at: Option<Timestamp> = None;
    for (key, answer) in answers {
        let status = answer
            .and_then(|a| a.status)
            .ok_or_else(|| token_error(ns, "no token in the answer"))?;
        let expires = status.expiration_timestamp.0;
        let lifetime = expires.duration_since(now).as_secs_f64().max(0.0);
        let due = now
            .checked_add(SignedDuration::from_secs_f64(lifetime * 0.8))
            .unwrap_or(expires);
        refresh_at = Some(refresh_at.map_or(due, |r| r.min(due)));
        data.insert(key, status.token);
    }
    Ok(IssuedTokens {
        data,
        refresh_at: refresh_at.unwrap_or(now),
    })
}

fn token_error(ns: &str, why: &str) -> SyncError {
    SyncError::Translate(TranslateError::Refused(format!(
        "cannot get a token for a ServiceAccount of namespace {ns}: {why}"
    )))
}

impl IssuedTokens {
    /// The host pod annotations carrying these tokens (annotation storage).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .data
            .iter()
            .map(|(key, token)| (translate::token_annotation(key), token.clone()))
            .collect();
        out.insert(
            ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
            self.refresh_at.to_string(),
        );
        out
    }

    fn secret_data(&self) -> BTreeMap<String, ByteString> {
        self.data
            .iter()
            .map(|(key, token)| (key.clone(), ByteString(token.clone().into_bytes())))
            .collect()
    }

    /// How long from `now` until these tokens are due.
    pub fn due_in(&self, now: Timestamp) -> Duration {
        duration_until(self.refresh_at, now)
    }
}

fn duration_until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// How long until the tokens of the object (token Secret or host pod) must be renewed (zero
/// when due; None when unknown).
pub fn refresh_due(meta: &ObjectMeta, now: Timestamp) -> Option<Duration> {
    let at: Timestamp = meta
        .annotations
        .as_ref()?
        .get(ANNOTATION_TOKEN_REFRESH_AT)?
        .parse()
        .ok()?;
    Some(duration_until(at, now))
}

/// Renewed tokens written into the host pod's annotations (one pod patch, pinned to the
/// version it was computed from).
pub fn annotations_patch(tc: &TranslateCtx, h: &Pod, tokens: &IssuedTokens) -> Action {
    let body = serde_json::json!({
        "metadata": {"resourceVersion": h.resource_version(), "annotations": tokens.annotations()},
    });
    Action::new(
        Target::host::<Pod>(tc, &h.name_any()),
        Write::patch(PatchKind::Merge, body),
        "renewing the pod's tokens",
    )
    .counted_as("tokens")
}

/// The token Secret of virtual pod `v` (secret storage): created owned by host pod `h`, or its
/// data and refresh time patched when it exists.
pub fn secret_write(
    tc: &TranslateCtx,
    v: &Pod,
    h: &Pod,
    existing: Option<&Secret>,
    tokens: &IssuedTokens,
) -> Action {
    let ns = v.namespace().unwrap_or_default();
    let name = naming::token_secret_name(&tc.vcluster, &ns, &v.name_any());
    let refresh = tokens.refresh_at.to_string();
    let target = Target::host::<Secret>(tc, &name);
    match existing {
        None => {
            let mut meta = ObjectMeta {
                name: Some(name),
                namespace: Some(tc.host_namespace.clone()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: h.name_any(),
                    uid: h.uid().unwrap_or_default(),
                    controller: Some(false),
                    block_owner_deletion: None,
                }]),
                annotations: Some([(ANNOTATION_TOKEN_REFRESH_AT.to_owned(), refresh)].into()),
                ..ObjectMeta::default()
            };
            if let Some(source) = plan::source_from_virtual(&v.metadata) {
                markers::mark(&mut meta, &tc.vcluster, TOKEN_SECRET_KIND, &source);
            }
            let secret = Secret {
                metadata: meta,
                data: Some(tokens.secret_data()),
                type_: Some("Opaque".into()),
                ..Secret::default()
            };
            Action::create(target, &secret, Ownership::ManagedBy, "the pod's tokens").counted_as("tokens")
        }
        Some(s) => {
            let data: BTreeMap<String, Value> = tokens
                .secret_data()
                .into_iter()
                .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
                .collect();
            let body = serde_json::json!({
                "metadata": {
                    "resourceVersion": s.resource_version(),
                    "annotations": {ANNOTATION_TOKEN_REFRESH_AT: refresh},
                },
                "data": data,
            });
            Action::new(
                target,
                Write::patch(PatchKind::Merge, body),
                "renewing the pod's tokens",
            )
            .counted_as("tokens")
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::TokenRequestStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn refresh_due_reads_the_annotation() {
        let now = at("2026-01-01T00:00:00Z");
        let mut s = ObjectMeta::default();
        assert_eq!(refresh_due(&s, now), None);
        s.annotations = Some(
            [(
                ANNOTATION_TOKEN_REFRESH_AT.to_owned(),
                "2026-01-01T00:10:00Z".to_owned(),
            )]
            .into(),
        );
        assert_eq!(refresh_due(&s, now), Some(Duration::from_secs(600)));
        assert_eq!(refresh_due(&s, at("2026-01-01T01:00:00Z")), Some(Duration::ZERO));
    }

    #[test]
    fn tokens_are_renewed_at_80_percent_of_the_shortest_lifetime() {
        let now = at("2026-01-01T00:00:00Z");
        let answer = |token: &str, expires: &str| {
            Some(TokenRequest {
                status: Some(TokenRequestStatus {
                    token: token.into(),
                    expiration_timestamp: Time(at(expires)),
                }),
                ..TokenRequest::default()
            })
        };
        let tokens = issued(
            vec![
                ("a.0".into(), answer("t-a", "2026-01-01T01:00:00Z")),
                ("b.1".into(), answer("t-b", "2026-01-01T00:10:00Z")),
            ],
            "ns",
            now,
        )
        .expect("issued");
        assert_eq!(tokens.data["a.0"], "t-a");
        assert_eq!(tokens.refresh_at, at("2026-01-01T00:08:00Z"));
        assert_eq!(tokens.due_in(now), Duration::from_secs(480));
        let refused = issued(vec![("a.0".into(), None)], "ns", now).expect_err("no token");
        assert_eq!(refused.category(), "refused");
    }
}
