//! Who may call the kubelet endpoint. The rules are pure ([`Caller`] -> [`Step`] -> ...); the
//! two reviews they may need (TokenReview, SubjectAccessReview on the virtual API) are the only
//! I/O, in [`Authorizer`].
//!
//! - A client certificate that chains to the virtual cluster's client CA names a user (CN) and
//!   groups (O). The virtual API server's own kubelet client identity (`system:kube-apiserver`
//!   here, `system:apiserver` in k3s) and `system:masters` are allowed outright; any other
//!   certificate user needs `nodes/proxy` like a token would.
//! - A bearer token must be accepted by a TokenReview on the virtual API; its user then needs
//!   `nodes/proxy` (verb by HTTP method: get, create, ...) by a SubjectAccessReview.
//! - No credential, a certificate of another CA, or a rejected token: 401. Authenticated but not
//!   authorized: 403.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

/// Certificate users that are the virtual API server itself.
pub const API_SERVER_USERS: &[&str] = &["system:kube-apiserver", "system:apiserver"];
/// The group every authorizer allows.
pub const MASTERS_GROUP: &str = "system:masters";

/// A bearer token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a request presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Neither a certificate nor a bearer token.
    Anonymous,
    /// A client certificate that does not chain to the virtual client CA (or cannot be parsed).
    UntrustedCertificate,
    /// A client certificate of the virtual client CA: its CN and O.
    Certificate {
        user: String,
        groups: Vec<String>,
    },
    Bearer(Token),
}

/// A user to authorize.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What to do next with a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Allow(String),
    Unauthorized,
    Forbidden(String),
    ReviewToken(Token),
    ReviewAccess(User),
}

/// The first step for a caller.
pub fn first_step(caller: Caller) -> Step {
    match caller {
        Caller::Anonymous | Caller::UntrustedCertificate => Step::Unauthorized,
        Caller::Certificate { user, groups } => {
            if API_SERVER_USERS.contains(&user.as_str()) || groups.iter().any(|g| g == MASTERS_GROUP) {
                Step::Allow(user)
            } else {
                Step::ReviewAccess(User {
                    name: user,
                    groups,
                    ..User::default()
                })
            }
        }
        Caller::Bearer(token) if token.0.is_empty() => Step::Unauthorized,
        Caller::Bearer(token) => Step::ReviewToken(token),
    }
}

/// After a TokenReview: the user to authorize, or 401.
pub fn after_token_review(status: Option<&TokenReviewStatus>) -> Step {
    let Some(status) = status.filter(|s| s.authenticated == Some(true)) else {
        return Step::Unauthorized;
    };
    let Some(info) = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_ref().map(|n| (u, n)))
    else {
        return Step::Unauthorized;
    };
    let (u, name) = info;
    Step::ReviewAccess(User {
        name: name.clone(),
        uid: u.uid.clone(),
        groups: u.groups.clone().unwrap_or_default(),
        extra: u.extra.clone().unwrap_or_default(),
    })
}

/// After a SubjectAccessReview.
pub fn after_access_review(user: User, status: Option<&SubjectAccessReviewStatus>) -> Step {
    if status.is_some_and(|s| s.allowed && s.denied != Some(true)) {
        Step::Allow(user.name)
    } else {
        Step::Forbidden(user.name)
    }
}

/// The SubjectAccessReview of `user` for `verb` on `nodes/proxy`.
pub fn access_review(user: &User, verb: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                resource: Some("nodes".into()),
                subresource: Some("proxy".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// The CN and O of a DER certificate (after it was verified).
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, groups))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(value: &str) -> Option<Token> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Token(token.trim().to_owned()))
}

/// How a caller ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed(String),
    Unauthorized,
    Forbidden(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview on the virtual API server failed: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview on the virtual API server failed: {0}")]
    AccessReview(#[source] kube::Error),
}

/// How long a TokenReview answer is reused (the virtual API server's token cache is similar).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most tokens remembered; the cache starts over when full.
const TOKEN_CACHE_MAX: usize = 256;

/// TokenReview answers by the SHA-256 of the token (the token itself is never kept).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (Instant, Step)>>,
}

impl TokenCache {
    fn key(token: &Token) -> [u8; 32] {
        Sha256::digest(token.0.as_bytes()).into()
    }

    /// The step a review of `token` gave less than [`TOKEN_CACHE_TTL`] before `now`.
    pub fn get(&self, token: &Token, now: Instant) -> Option<Step> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(&Self::key(token))
            .filter(|(at, _)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL)
            .map(|(_, step)| step.clone())
    }

    pub fn put(&self, token: &Token, now: Instant, step: Step) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(Self::key(token), (now, step));
    }
}

/// Runs the steps, asking the virtual API server when a step needs it.
#[derive(Clone)]
pub struct Authorizer {
    pub virt: Client,
    pub tokens: Arc<TokenCache>,
}

impl Authorizer {
    pub fn new(virt: Client) -> Self {
        Self {
            virt,
            tokens: Arc::default(),
        }
    }

    pub async fn authorize(&self, caller: Caller, verb: &str) -> Result<Outcome, AuthError> {
        let mut step = first_step(caller);
        loop {
            step = match step {
                Step::Allow(user) => return Ok(Outcome::Allowed(user)),
                Step::Unauthorized => return Ok(Outcome::Unauthorized),
                Step::Forbidden(user) => return Ok(Outcome::Forbidden(user)),
                Step::ReviewToken(token) => {
                    let now = Instant::now();
                    if let Some(step) = self.tokens.get(&token, now) {
                        step
                    } else {
                        let step = self.review_token(&token).await?;
                        self.tokens.put(&token, now, step.clone());
                        step
                    }
                }
                Step::ReviewAccess(user) => {
                    let api: Api<SubjectAccessReview> = Api::all(self.virt.clone());
                    let done = api
                        .create(&PostParams::default(), &access_review(&user, verb))
                        .await
                        .map_err(AuthError::AccessReview)?;
                    after_access_review(user, done.status.as_ref())
                }
            };
        }
    }

    async fn review_token(&self, token: &Token) -> Result<Step, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.0.clone()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.virt.clone());
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(AuthError::TokenReview)?;
        Ok(after_token_review(done.status.as_ref()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn cert(user: &str, groups: &[&str]) -> Caller {
        Caller::Certificate {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn first_steps() {
        assert_eq!(first_step(Caller::Anonymous), Step::Unauthorized);
        assert_eq!(first_step(Caller::UntrustedCertificate), Step::Unauthorized);
        assert_eq!(
            first_step(Caller::Bearer(Token(String::new()))),
            Step::Unauthorized
        );
        assert_eq!(
            first_step(cert("system:kube-apiserver", &[])),
            Step::Allow("system:kube-apiserver".into())
        );
        assert_eq!(
            first_step(cert("system:apiserver", &[])),
            Step::Allow("system:apiserver".into())
        );
        assert_eq!(
            first_step(cert("admin", &["system:masters"])),
            Step::Allow("admin".into())
        );
        assert_eq!(
            first_step(cert("alice", &["dev"])),
            Step::ReviewAccess(User {
                name: "alice".into(),
                groups: vec!["dev".into()],
                ..User::default()
            })
        );
        assert_eq!(
            first_step(Caller::Bearer(Token("t".into()))),
            Step::ReviewToken(Token("t".into()))
        );
    }

    #[test]
    fn token_reviews_and_access_reviews() {
        assert_eq!(after_token_review(None), Step::Unauthorized);
        let rejected = TokenReviewStatus {
            authenticated: Some(false),
            ..TokenReviewStatus::default()
        };
        assert_eq!(after_token_review(Some(&rejected)), Step::Unauthorized);
        let accepted = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:a:b".into()),
                uid: Some("u".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                extra: None,
            }),
            ..TokenReviewStatus::default()
        };
        let Step::ReviewAccess(user) = after_token_review(Some(&accepted)) else {
            panic!("an accepted token is reviewed for access");
        };
        assert_eq!(user.name, "system:serviceaccount:a:b");
        let sar = access_review(&user, "create");
        let attrs = sar.spec.resource_attributes.unwrap();
        assert_eq!(
            (
                attrs.verb.as_deref(),
                attrs.resource.as_deref(),
                attrs.subresource.as_deref()
            ),
            (Some("create"), Some("nodes"), Some("proxy"))
        );
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..SubjectAccessReviewStatus::default()
        };
        let denied = SubjectAccessReviewStatus::default();
        assert_eq!(
            after_access_review(user.clone(), Some(&allowed)),
            Step::Allow(user.name.clone())
        );
        assert_eq!(
            after_access_review(user.clone(), Some(&denied)),
            Step::Forbidden(user.name.clone())
        );
        assert_eq!(
            after_access_review(user.clone(), None),
            Step::Forbidden(user.name)
        );
    }

    #[test]
    fn token_reviews_are_remembered_briefly_by_hash() {
        let cache = TokenCache::default();
        let (t, now) = (Token("abc".into()), Instant::now());
        assert_eq!(cache.get(&t, now), None);
        cache.put(&t, now, Step::Unauthorized);
        assert_eq!(
            cache.get(&t, now + Duration::from_secs(1)),
            Some(Step::Unauthorized)
        );
        assert_eq!(cache.get(&t, now + TOKEN_CACHE_TTL), None);
        assert_eq!(cache.get(&Token("abd".into()), now), None);
        for i in 0..(TOKEN_CACHE_MAX * 2) {
            cache.put(&Token(i.to_string()), now, Step::Unauthorized);
        }
        assert!(cache.entries.lock().unwrap().len() <= TOKEN_CACHE_MAX);
    }

    #[test]
    fn bearer_headers_and_redaction() {
        assert_eq!(bearer("Bearer abc"), Some(Token("abc".into())));
        assert_eq!(bearer("bearer  abc "), Some(Token("abc".into())));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(format!("{:?}", Token("secret".into())), "Token(<redacted>)");
    }
}
