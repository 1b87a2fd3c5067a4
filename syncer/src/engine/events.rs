//! Tenant-visible failures become Warning Events on the tenant's (virtual) object, so
//! `kubectl describe` says why. Messages never contain object data (Secret values!).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::error::SyncError;

/// The longest Event note the API accepts is 1 KiB; longer messages are cut at a char boundary.
const MAX_NOTE: usize = 1024;

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(virtual_client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "vnest-syncer".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Self {
            recorder: Recorder::new(virtual_client, reporter),
        }
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
        self.publish(object, EventType::Warning, reason, action, &error.to_string())
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
    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
