//! Tenant-visible failures become Warning Events on the tenant's (virtual) object, so
//! `kubectl describe` says why. Messages never contain object data (Secret values!), nor host
//! names: [`tenant_text`] rewrites every host name of ours it can map back to its virtual name,
//! the host namespace to the virtual one, and redacts the rest of the host names shaped like
//! ours (other vclusters', or cut ones).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::error::SyncError;
use crate::naming;

/// The longest Event note the API accepts is 1 KiB; longer messages are cut at a char boundary.
const MAX_NOTE: usize = 1024;

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    /// vcluster and host namespace, for [`tenant_text`] (None: unit tests).
    host: Option<(String, String)>,
}

/// What a text shown to a tenant about an object of virtual namespace `virtual_namespace` may
/// name, and what it must not.
#[derive(Debug, Clone, Default)]
pub struct HostNames<'a> {
    pub vcluster: &'a str,
    pub host_namespace: &'a str,
    pub virtual_namespace: &'a str,
    /// Host names known to stand for a virtual name (the object's own, first).
    pub known: Vec<(&'a str, &'a str)>,
}

/// Placeholder for a host name that cannot be mapped back to a virtual one.
pub const REDACTED: &str = "<host object>";

/// `text` as a tenant may read it (pure): each word of DNS-label characters that is a known
/// host name, the host namespace, or the host name of an object of the virtual namespace
/// ([`naming::virtual_name_in`]) becomes the virtual name (namespace); any other word shaped
/// like a host name of ours ([`naming::looks_like_host_name`]) becomes [`REDACTED`].
pub fn tenant_text(text: &str, names: &HostNames<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let is_word_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        if let Some((_, v)) = names.known.iter().find(|(h, _)| *h == word.as_str()) {
            out.push_str(v);
        } else if !names.host_namespace.is_empty() && word == names.host_namespace {
            out.push_str(names.virtual_namespace);
        } else if let Some(v) = naming::virtual_name_in(names.vcluster, names.virtual_namespace, word) {
            out.push_str(&v);
        } else if naming::looks_like_host_name(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

impl Events {
    pub fn new(virtual_client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "vnest-syncer".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(virtual_client, reporter),
            host: None,
        }
    }

    /// The same, rewriting host names out of every Warning ([`tenant_text`]).
    pub fn hiding_host_names(mut self, vcluster: &str, host_namespace: &str) -> Self {
        self.host = Some((vcluster.to_owned(), host_namespace.to_owned()));
        self
    }

    /// Publishes a Warning for `error` on `object`; a failure to publish is logged, not raised.
    pub async fn warn(&self, object: &ObjectReference, action: &'static str, error: &SyncError) {
        let reason = match error.category() {
            "foreign" => "HostNameTaken",
            "rejected" => "HostRejected",
            "refused" => "SyncRefused",
            "missing" => "MissingReference",
            _ => "SyncError",
        };
        let text = error.to_string();
        let note = match &self.host {
            Some((vcluster, host_namespace)) => {
                let virtual_name = object.name.as_deref().unwrap_or_default();
                let known = error
                    .host_name()
                    .map(|h| vec![(h, virtual_name)])
                    .unwrap_or_default();
                tenant_text(
                    &text,
                    &HostNames {
                        vcluster,
                        host_namespace,
                        virtual_namespace: object.namespace.as_deref().unwrap_or_default(),
                        known,
                    },
                )
            }
            None => text,
        };
        self.publish(object, EventType::Warning, reason, action, &note)
            .await;
    }

    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, MAX_NOTE)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::warn!(%error, object = ?object.name, "could not publish event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_text_never_names_host_objects() {
        let pod = naming::host_name("vc", "team", "web-0");
        let cm = naming::host_name("vc", "team", "settings");
        let dotted = naming::host_name("vc", "team", "a.b");
        let other_vc = naming::host_name("other", "team", "db");
        let names = HostNames {
            vcluster: "vc",
            host_namespace: "host-ns",
            virtual_namespace: "team",
            known: vec![(dotted.as_str(), "a.b")],
        };
        let cases = [
            (
                format!("the host API server refused to create Pod {pod}: Pod \"{pod}\" is invalid"),
                "the host API server refused to create Pod web-0: Pod \"web-0\" is invalid".to_owned(),
            ),
            (
                format!("configmap \"{cm}\" not found in host-ns/{pod}"),
                "configmap \"settings\" not found in team/web-0".to_owned(),
            ),
            (
                format!("pod {dotted} uses {other_vc}."),
                format!("pod a.b uses {REDACTED}."),
            ),
            (
                "0/1 nodes are available: 1 node(s) had untolerated taint".to_owned(),
                "0/1 nodes are available: 1 node(s) had untolerated taint".to_owned(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(tenant_text(&text, &names), want);
        }
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
