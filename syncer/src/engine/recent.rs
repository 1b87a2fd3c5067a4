//! What this process wrote that the watch caches may not show yet (client-go's
//! "expectations"): the executor's memory of creates and accepted DELETEs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a create is remembered while the watch cache catches up with it.
pub const EXPECT_FOR: Duration = Duration::from_secs(30);
/// How long an accepted DELETE is remembered. Resending the same UID-guarded DELETE never does
/// anything the first did not, so it is kept until a cache that lags far behind (a watch that
/// expired and relists 10k pods under load: measured, over 30 s) has caught up.
pub const DELETE_EXPECT_FOR: Duration = Duration::from_secs(600);
/// Size at which expired entries are first dropped.
const PRUNE_AT: usize = 1024;

/// Creates (or deletes) this process made that the watch caches may not show yet (client-go's
/// "expectations"): a reconcile that runs before the cache catches up must not send them again.
pub struct RecentWrites {
    state: Mutex<Recent>,
    /// How long an entry is trusted over the cache.
    ttl: Duration,
}

struct Recent {
    names: HashMap<String, Instant>,
    /// The next prune waits until the map reached this size (twice what the last one kept):
    /// amortised O(1) per record even when thousands of entries are still live.
    prune_at: usize,
}

impl Default for RecentWrites {
    fn default() -> Self {
        Self::remembering_for(EXPECT_FOR)
    }
}

impl RecentWrites {
    pub fn remembering_for(ttl: Duration) -> Self {
        Self {
            state: Mutex::new(Recent {
                names: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
            ttl,
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    /// Whether `name` was recorded within the time-to-live (and the cache may lag). O(1): a
    /// burst of 10k creates must not scan the map on every reconcile.
    pub fn pending(&self, name: &str) -> bool {
        self.lock()
            .names
            .get(name)
            .is_some_and(|t| t.elapsed() < self.ttl)
    }
    pub fn record(&self, name: &str) {
        let mut r = self.lock();
        if r.names.len() >= r.prune_at {
            let ttl = self.ttl;
            r.names.retain(|_, t| t.elapsed() < ttl);
            r.prune_at = (r.names.len() * 2).max(PRUNE_AT);
        }
        r.names.insert(name.to_owned(), Instant::now());
    }
    /// The cache shows it now (or it is gone): stop expecting.
    pub fn observed(&self, name: &str) {
        self.lock().names.remove(name);
    }
    /// Entries held (expired ones included until the next prune).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().names.len()
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn a_recorded_name_is_pending_until_observed_or_expired() {
        let r = RecentWrites::remembering_for(Duration::from_secs(600));
        r.record("a");
        assert!(r.pending("a"));
        assert!(!r.pending("b"));
        r.observed("a");
        assert!(!r.pending("a"));
        let short = RecentWrites::remembering_for(Duration::ZERO);
        short.record("a");
        assert!(!short.pending("a"), "expired at once");
    }

    #[test]
    fn thousands_of_live_entries_are_kept_and_expired_ones_pruned() {
        // Live entries survive every prune (a 10k-pod deletion keeps its DELETEs remembered).
        let live = RecentWrites::remembering_for(Duration::from_secs(600));
        for i in 0..5000 {
            live.record(&format!("pod-{i}"));
        }
        assert_eq!(live.len(), 5000);
        assert!(live.pending("pod-0") && live.pending("pod-4999"));
        // Expired entries are dropped once the map reaches the prune size.
        let expired = RecentWrites::remembering_for(Duration::ZERO);
        for i in 0..5000 {
            expired.record(&format!("pod-{i}"));
        }
        assert!(expired.len() <= PRUNE_AT, "{} entries held", expired.len());
    }
}
