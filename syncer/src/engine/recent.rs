//! What this process wrote that the watch caches may not show yet (client-go's
//! "expectations"): the executor's memory of creates and accepted DELETEs, and the look again
//! after a create that makes sure an expectation that ran out is checked.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a create is remembered while the watch cache catches up with it.
const EXPECT_FOR: Duration = Duration::from_secs(30);

/// When a reconcile that sent a host create looks again: just after the create stops being
/// expected. A host object the cache shows by then makes it a no-op; one it never showed is
/// created again. Measured once under a 10k-pod burst: the host answered a create 201 after
/// 33 s, and no watch, GET or scheduler ever saw that pod; without this look its key was never
/// queued again (nothing else touched it), and the tenant's object waited forever.
const AFTER_CREATE: Duration = EXPECT_FOR.saturating_add(Duration::from_secs(5));

tokio::task_local! {
    /// Set when the reconcile running in this task sent a host create ([`noting_creates`]).
    static CREATED: Cell<bool>;
}

/// Runs one reconcile, noting whether it sent a host create ([`note_create`]).
pub async fn noting_creates<F: Future>(fut: F) -> (F::Output, bool) {
    CREATED
        .scope(Cell::new(false), async {
            let out = fut.await;
            (out, CREATED.with(Cell::get))
        })
        .await
}

/// The executor sent a host create for the reconcile in this task (no-op outside one).
pub fn note_create() {
    let _ = CREATED.try_with(|c| c.set(true));
}

/// When the key looks again: when it asked, or by [`AFTER_CREATE`] if it sent a host create.
pub fn look_again_after(created: bool, asked: Option<Duration>) -> Option<Duration> {
    match (created, asked) {
        (true, Some(after)) => Some(after.min(AFTER_CREATE)),
        (true, None) => Some(AFTER_CREATE),
        (false, after) => after,
    }
}
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
    /// The next prune waits until the map reached this size ([`prune_when_grown`]).
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
    /// How long ago `name` was recorded, if within the time-to-live.
    pub fn age(&self, name: &str) -> Option<Duration> {
        self.lock()
            .names
            .get(name)
            .map(Instant::elapsed)
            .filter(|age| *age < self.ttl)
    }
    pub fn record(&self, name: &str) {
        let ttl = self.ttl;
        let mut r = self.lock();
        let Recent { names, prune_at } = &mut *r;
        prune_when_grown(names, prune_at, |t| t.elapsed() < ttl);
        names.insert(name.to_owned(), Instant::now());
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

/// Drops the entries `alive` rejects once `map` has grown to `prune_at`, and sets the next prune
/// at twice what was kept (at least [`PRUNE_AT`]): amortised O(1) per insert even when
/// thousands of entries are still live.
fn prune_when_grown<V>(map: &mut HashMap<String, V>, prune_at: &mut usize, alive: impl Fn(&V) -> bool) {
    if map.len() >= *prune_at {
        map.retain(|_, v| alive(v));
        *prune_at = (map.len() * 2).max(PRUNE_AT);
    }
}

/// How long a patch whose echo is awaited ([`Echoes`]) is not sent again identically while the
/// cache does not show the version it produced. Under a 1000-pod burst the virtual watch
/// delivered the pods' own changes 2 s late.
pub const ECHO_WAIT: Duration = Duration::from_secs(10);

/// Patches this process sent whose result (the object version the API server answered with)
/// the watch cache may not show yet, one per target. A reconcile woken by an older event of
/// the same object decides on that older version and plans the same patch again: measured,
/// 0.8 virtual pod status patches per pod in a 1000-pod burst changed nothing (the API server
/// answered them without a new version, and the watch showed one status change per pod).
/// Such a patch is not sent again until the cache shows the version the first one produced
/// ([`Echoes::seen`]) or [`ECHO_WAIT`] passed; a different patch to the same target is sent.
#[derive(Default)]
pub struct Echoes {
    state: Mutex<EchoState>,
}

struct EchoState {
    sent: HashMap<String, SentPatch>,
    /// As [`Recent::prune_at`].
    prune_at: usize,
}

impl Default for EchoState {
    fn default() -> Self {
        Self {
            sent: HashMap::new(),
            prune_at: PRUNE_AT,
        }
    }
}

struct SentPatch {
    /// The patch's identity (target and body).
    patch: String,
    produced: Option<String>,
    at: Instant,
}

impl Echoes {
    fn lock(&self) -> std::sync::MutexGuard<'_, EchoState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How much longer `patch` (its identity: target and body) to `target` waits for the echo
    /// of the same patch sent earlier; None: send it.
    pub fn awaited(&self, target: &str, patch: &str) -> Option<Duration> {
        let state = self.lock();
        let sent = state.sent.get(target).filter(|s| s.patch == patch)?;
        ECHO_WAIT
            .checked_sub(sent.at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// `patch` to `target` was answered with version `produced`.
    pub fn sent(&self, target: &str, patch: String, produced: Option<String>) {
        let mut state = self.lock();
        let EchoState { sent, prune_at } = &mut *state;
        prune_when_grown(sent, prune_at, |s| s.at.elapsed() < ECHO_WAIT);
        let at = Instant::now();
        sent.insert(target.to_owned(), SentPatch { patch, produced, at });
    }

    /// The cache shows `target` at `version`: once that is the version a patch produced, the
    /// patch is no longer awaited (the same patch planned on it changes something again).
    pub fn seen(&self, target: &str, version: Option<&str>) {
        let mut state = self.lock();
        if let Some(s) = state.sent.get(target)
            && s.produced.is_some()
            && s.produced.as_deref() == version
        {
            state.sent.remove(target);
        }
    }
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    #[test]
    fn a_reconcile_that_created_looks_again_once_the_create_is_no_longer_expected() {
        assert!(AFTER_CREATE > EXPECT_FOR);
        assert_eq!(look_again_after(true, None), Some(AFTER_CREATE));
        let token_refresh = Duration::from_secs(2880);
        assert_eq!(look_again_after(true, Some(token_refresh)), Some(AFTER_CREATE));
        assert_eq!(
            look_again_after(true, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1)),
            "a sooner look stays"
        );
        assert_eq!(look_again_after(false, None), None);
        assert_eq!(look_again_after(false, Some(token_refresh)), Some(token_refresh));
    }

    #[tokio::test]
    async fn a_create_is_noted_for_its_own_reconcile_only() {
        let ((), created) = noting_creates(async { note_create() }).await;
        assert!(created);
        let ((), created) = noting_creates(async {}).await;
        assert!(!created, "a reconcile that sent no create");
        note_create(); // outside any reconcile: nothing to note, no panic
        let (inner, outer) = noting_creates(async {
            // Another reconcile's task does not leak into this one.
            tokio::spawn(noting_creates(async { note_create() }))
                .await
                .map(|((), c)| c)
        })
        .await;
        assert!(matches!(inner, Ok(true)));
        assert!(!outer);
    }

    #[test]
    fn a_patch_waits_for_its_echo_until_the_cache_shows_the_version_it_produced() {
        let e = Echoes::default();
        assert_eq!(e.awaited("pod/a", "p7"), None, "never sent");
        e.sent("pod/a", "p7".into(), Some("12".into()));
        assert!(e.awaited("pod/a", "p7").is_some_and(|left| left <= ECHO_WAIT));
        assert_eq!(e.awaited("pod/a", "p8"), None, "another patch is sent");
        assert_eq!(e.awaited("pod/b", "p7"), None, "another target");
        e.seen("pod/a", Some("11"));
        assert!(e.awaited("pod/a", "p7").is_some(), "an older version is no echo");
        e.seen("pod/a", Some("12"));
        assert_eq!(
            e.awaited("pod/a", "p7"),
            None,
            "the echo arrived: the same patch changes something again"
        );
    }

    #[test]
    fn a_patch_answered_without_a_version_waits_only_out_its_time() {
        let e = Echoes::default();
        e.sent("pod/a", "p7".into(), None);
        e.seen("pod/a", None);
        assert!(e.awaited("pod/a", "p7").is_some());
    }

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
