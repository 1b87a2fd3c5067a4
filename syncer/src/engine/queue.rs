//! A fair work queue: client-go workqueue semantics (a key is queued at most once, never
//! processed by two workers at once, and re-queued once if it changed while being processed)
//! with **round-robin across namespaces**, so one namespace with thousands of queued keys cannot
//! starve another with one: each `next()` takes the head of the next namespace in the ring.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the engine reconciles: the virtual object's namespace ("" when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

#[derive(Default)]
struct State {
    /// Pending keys per namespace, in arrival order.
    pending: HashMap<String, VecDeque<Key>>,
    /// Namespaces with pending keys, in service order.
    ring: VecDeque<String>,
    /// Keys waiting in `pending`, with the time they were first queued.
    queued: HashMap<Key, Instant>,
    /// Keys a worker holds right now.
    processing: HashSet<Key>,
    /// Keys that were added while being processed: queued again when done.
    dirty: HashSet<Key>,
    /// Consecutive failures per key, for backoff.
    failures: HashMap<Key, u32>,
    /// Keys to queue later: the earliest time asked for each key, and the same ordered by time.
    /// One timer task serves them all (a task per request kept ~1 KB per reconcile alive for
    /// the whole delay: a token refresh is due after ~48 min).
    delayed: HashMap<Key, tokio::time::Instant>,
    due: BTreeSet<(tokio::time::Instant, Key)>,
    timer_started: bool,
    closed: bool,
}

/// A cloneable handle to one queue.
#[derive(Clone, Default)]
pub struct FairQueue {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
    /// Wakes the timer task: an earlier due time, or the queue closed.
    timer: Arc<Notify>,
}

impl FairQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `key` now (no-op if already queued; deferred if a worker holds it).
    pub fn add(&self, key: Key) {
        let mut s = self.lock();
        if s.closed || s.queued.contains_key(&key) {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone(), Instant::now());
        let ns = key.namespace.clone();
        let q = s.pending.entry(ns.clone()).or_default();
        q.push_back(key);
        if q.len() == 1 {
            s.ring.push_back(ns);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Queues `key` after `delay`. A key waits for one time only, the earliest asked for (the
    /// reconcile it triggers asks again if it needs to).
    pub fn add_after(&self, key: Key, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = tokio::time::Instant::now() + delay;
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if let Some(&earlier) = s.delayed.get(&key) {
            if earlier <= at {
                return;
            }
            s.due.remove(&(earlier, key.clone()));
        }
        s.delayed.insert(key.clone(), at);
        let first = s.due.first().is_none_or(|(t, _)| at < *t);
        s.due.insert((at, key));
        let start = !std::mem::replace(&mut s.timer_started, true);
        drop(s);
        if start {
            tokio::spawn(self.clone().run_timer());
        } else if first {
            self.timer.notify_one();
        }
    }

    /// Keys waiting for a later time (for tests and metrics).
    pub fn delayed_len(&self) -> usize {
        self.lock().delayed.len()
    }

    /// Queues delayed keys when they are due, until the queue closes.
    async fn run_timer(self) {
        loop {
            let next = {
                let s = self.lock();
                if s.closed {
                    return;
                }
                s.due.first().map(|(t, _)| *t)
            };
            match next {
                None => self.timer.notified().await,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.timer.notified() => continue,
                    }
                }
            }
            let now = tokio::time::Instant::now();
            let mut ready = Vec::new();
            {
                let mut s = self.lock();
                while let Some((at, _)) = s.due.first()
                    && *at <= now
                {
                    if let Some((_, key)) = s.due.pop_first() {
                        s.delayed.remove(&key);
                        ready.push(key);
                    }
                }
            }
            for key in ready {
                self.add(key);
            }
        }
    }

    /// Waits for the next key; `None` once the queue is closed. The caller must call
    /// [`FairQueue::done`] with the key. Returns how long the key waited in the queue.
    pub async fn next(&self) -> Option<(Key, Duration)> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                if let Some(taken) = take_next(&mut s) {
                    let more = !s.ring.is_empty();
                    drop(s);
                    if more {
                        // Another worker may be waiting: pass the wake-up on.
                        self.ready.notify_one();
                    }
                    return Some(taken);
                }
            }
            notified.await;
        }
    }

    /// Releases `key` after processing; re-queues it if it changed meanwhile.
    pub fn done(&self, key: &Key) {
        let mut s = self.lock();
        s.processing.remove(key);
        let again = s.dirty.remove(key);
        drop(s);
        if again {
            self.add(key.clone());
        }
    }

    /// Records a failure of `key` and returns the backoff before its next try:
    /// 500 ms doubling up to 5 minutes.
    pub fn backoff(&self, key: &Key) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = (*n - 1).min(10);
        Duration::from_millis(500u64.saturating_mul(1 << exp)).min(Duration::from_secs(300))
    }

    /// Forgets the failure history of `key` (after a success).
    pub fn forget(&self, key: &Key) {
        self.lock().failures.remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nothing queued, nothing being processed (keys waiting for a delay do not count).
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.queued.is_empty() && s.processing.is_empty() && s.dirty.is_empty()
    }

    /// Stops handing out keys; waiting workers get `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
        self.timer.notify_one();
    }
}

fn take_next(s: &mut State) -> Option<(Key, Duration)> {
    let ns = s.ring.pop_front()?;
    let q = s.pending.get_mut(&ns)?;
    let key = q.pop_front()?;
    if q.is_empty() {
        s.pending.remove(&ns);
    } else {
        s.ring.push_back(ns);
    }
    let waited = s.queued.remove(&key).map(|t| t.elapsed()).unwrap_or_default();
    s.processing.insert(key.clone());
    Some((key, waited))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, name: &str) -> Key {
        Key::new(ns, name)
    }

    #[tokio::test]
    async fn namespaces_are_served_round_robin() {
        let q = FairQueue::new();
        for i in 0..100 {
            q.add(k("greedy", &format!("p{i}")));
        }
        q.add(k("small", "a"));
        q.add(k("small", "b"));
        let mut order = Vec::new();
        for _ in 0..4 {
            let (key, _) = q.next().await.expect("open");
            order.push(key.clone());
            q.done(&key);
        }
        assert_eq!(
            order,
            [
                k("greedy", "p0"),
                k("small", "a"),
                k("greedy", "p1"),
                k("small", "b")
            ]
        );
    }

    #[tokio::test]
    async fn keys_are_deduplicated_and_requeued_when_dirty() {
        let q = FairQueue::new();
        q.add(k("ns", "a"));
        q.add(k("ns", "a"));
        assert_eq!(q.len(), 1);
        let (key, _) = q.next().await.expect("open");
        // Changed while processing: not handed out twice at once, but queued again after done.
        q.add(key.clone());
        assert_eq!(q.len(), 0);
        q.done(&key);
        assert_eq!(q.len(), 1);
        let (again, _) = q.next().await.expect("open");
        assert_eq!(again, key);
    }

    #[tokio::test]
    async fn backoff_grows_and_resets() {
        let q = FairQueue::new();
        let key = k("ns", "a");
        assert_eq!(q.backoff(&key), Duration::from_millis(500));
        assert_eq!(q.backoff(&key), Duration::from_secs(1));
        assert_eq!(q.backoff(&key), Duration::from_secs(2));
        for _ in 0..20 {
            q.backoff(&key);
        }
        assert_eq!(q.backoff(&key), Duration::from_secs(300));
        q.forget(&key);
        assert_eq!(q.backoff(&key), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_delayed_key_waits_once_for_the_earliest_time_asked() {
        let q = FairQueue::new();
        let k = Key::new("ns", "a");
        q.add_after(k.clone(), Duration::from_secs(3600));
        q.add_after(k.clone(), Duration::from_millis(20));
        q.add_after(k.clone(), Duration::from_secs(600));
        assert_eq!(
            q.delayed_len(),
            1,
            "one timer entry per key, not one task per call"
        );
        let (got, _) = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("the earliest time wins")
            .expect("open");
        assert_eq!(got, k);
        q.done(&k);
        assert_eq!(q.delayed_len(), 0);
        // Many keys, many times: still one entry each.
        for i in 0..100 {
            for _ in 0..5 {
                q.add_after(Key::new("ns", format!("k{i}")), Duration::from_secs(3600));
            }
        }
        assert_eq!(q.delayed_len(), 100);
        q.close();
    }

    #[tokio::test]
    async fn close_wakes_waiting_workers() {
        let q = FairQueue::new();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert!(waiter.await.expect("join").is_none());
    }
}
