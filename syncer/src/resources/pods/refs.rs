//! Which ConfigMaps and Secrets virtual pods use, kept current from the virtual pod watch.
//! "Used" decides whether a ConfigMap/Secret has a host copy; every change in use (first user
//! in, last user out) re-queues the affected ConfigMaps/Secrets (so creating a pod syncs what
//! it mounts, and deleting the last user removes the host copy).

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::translate::references;
use crate::engine::queue::Key;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

type Ref = (RefKind, String, String); // (kind, namespace, name)

#[derive(Default)]
struct State {
    /// What each pod (namespace, name) references, sorted (a boxed slice: a one-element
    /// B-tree set allocates a node of eleven; every pod references at least kube-root-ca.crt).
    by_pod: HashMap<(String, String), Box<[Ref]>>,
    /// Which pods reference each object.
    users: HashMap<Ref, BTreeSet<(String, String)>>,
}

#[derive(Default)]
pub struct RefIndex {
    state: Mutex<State>,
}

fn refs_of(pod: &Pod) -> BTreeSet<Ref> {
    let ns = pod.namespace().unwrap_or_default();
    let r = references(pod);
    r.configmaps
        .into_iter()
        .map(|n| (RefKind::ConfigMap, ns.clone(), n))
        .chain(r.secrets.into_iter().map(|n| (RefKind::Secret, ns.clone(), n)))
        .collect()
}

impl RefIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn is_used(&self, kind: RefKind, namespace: &str, name: &str) -> bool {
        self.lock()
            .users
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .is_some_and(|u| !u.is_empty())
    }

    /// The pods that reference an object (to re-check them when it appears).
    pub fn users(&self, kind: RefKind, namespace: &str, name: &str) -> Vec<Key> {
        self.lock()
            .users
            .get(&(kind, namespace.to_owned(), name.to_owned()))
            .map(|u| u.iter().map(|(ns, n)| Key::new(ns.clone(), n.clone())).collect())
            .unwrap_or_default()
    }

    /// Records `pod` (added or changed; a terminating pod still uses what it mounts).
    /// Returns the objects whose use changed: the ones it is the first user of or stopped being
    /// the last user of (a 1000-pod burst of one namespace re-checks its `kube-root-ca.crt`
    /// once, not once per pod).
    pub fn apply(&self, pod: &Pod) -> Vec<(RefKind, Key)> {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        self.replace(key, refs_of(pod))
    }

    /// Forgets a deleted pod. Returns the objects whose use changed.
    pub fn delete(&self, pod: &Pod) -> Vec<(RefKind, Key)> {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        self.replace(key, BTreeSet::new())
    }

    /// Rebuilds from a full list of pods (after a relist). Returns every object referenced
    /// before or after, so each can be re-checked.
    pub fn rebuild(&self, pods: impl IntoIterator<Item = impl Borrow<Pod>>) -> Vec<(RefKind, Key)> {
        let mut s = self.lock();
        let mut touched: BTreeSet<Ref> = s.users.keys().cloned().collect();
        s.by_pod.clear();
        s.users.clear();
        for pod in pods {
            let pod = pod.borrow();
            let refs = refs_of(pod);
            let key = (pod.namespace().unwrap_or_default(), pod.name_any());
            for r in &refs {
                s.users.entry(r.clone()).or_default().insert(key.clone());
                touched.insert(r.clone());
            }
            s.by_pod.insert(key, refs.into_iter().collect());
        }
        touched.into_iter().map(to_key).collect()
    }

    fn replace(&self, pod: (String, String), new: BTreeSet<Ref>) -> Vec<(RefKind, Key)> {
        let mut s = self.lock();
        let old: BTreeSet<Ref> = if new.is_empty() {
            s.by_pod.remove(&pod)
        } else {
            s.by_pod.insert(pod.clone(), new.iter().cloned().collect())
        }
        .map(|refs| refs.into_vec().into_iter().collect())
        .unwrap_or_default();
        let mut flipped = Vec::new();
        for r in old.difference(&new) {
            if let Some(u) = s.users.get_mut(r) {
                u.remove(&pod);
                if u.is_empty() {
                    s.users.remove(r);
                    flipped.push(to_key(r.clone()));
                }
            }
        }
        for r in new.difference(&old) {
            let users = s.users.entry(r.clone()).or_default();
            if users.is_empty() {
                flipped.push(to_key(r.clone()));
            }
            users.insert(pod.clone());
        }
        flipped
    }
}

fn to_key((kind, ns, name): Ref) -> (RefKind, Key) {
    (kind, Key::new(ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cm: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                     "volumes": [{"name": "v", "configMap": {"name": cm}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn counts_users_and_reports_changes() {
        let idx = RefIndex::default();
        let changed = idx.apply(&pod("a", "cfg"));
        assert_eq!(changed, vec![(RefKind::ConfigMap, Key::new("ns", "cfg"))]);
        assert!(
            idx.apply(&pod("b", "cfg")).is_empty(),
            "a second user changes no use"
        );
        assert!(idx.is_used(RefKind::ConfigMap, "ns", "cfg"));
        assert_eq!(
            idx.users(RefKind::ConfigMap, "ns", "cfg"),
            vec![Key::new("ns", "a"), Key::new("ns", "b")]
        );
        assert!(idx.delete(&pod("a", "cfg")).is_empty(), "b still uses it");
        assert!(idx.is_used(RefKind::ConfigMap, "ns", "cfg"));
        let changed = idx.delete(&pod("b", "cfg"));
        assert_eq!(changed, vec![(RefKind::ConfigMap, Key::new("ns", "cfg"))]);
        assert!(!idx.is_used(RefKind::ConfigMap, "ns", "cfg"));
        // A pod switching to another ConfigMap re-checks both.
        idx.apply(&pod("c", "one"));
        let changed = idx.apply(&pod("c", "two"));
        assert_eq!(changed.len(), 2);
        assert!(!idx.is_used(RefKind::ConfigMap, "ns", "one"));
        assert!(idx.is_used(RefKind::ConfigMap, "ns", "two"));
        let all = idx.rebuild([&pod("d", "three")]);
        assert!(all.contains(&(RefKind::ConfigMap, Key::new("ns", "two"))));
        assert!(idx.is_used(RefKind::ConfigMap, "ns", "three"));
        assert!(!idx.is_used(RefKind::ConfigMap, "ns", "two"));
    }
}
