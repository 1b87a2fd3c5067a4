//! When the syncer has caught up after a start: every watch has listed once and every queue
//! has drained once after that. Exposed as `vnest_syncer_initial_sync_seconds` and one log line,
//! so a restart's resync time is measurable (and alertable) without reading logs.
//!
//! Keys parked with a delay (backoff, token renewal, a pod waiting for a missing ConfigMap)
//! are not pending work: they would keep a syncer with one broken tenant object "syncing"
//! forever.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::queue::FairQueue;
use crate::metrics::Metrics;

/// How often the (in-process, API-free) check runs until the first catch-up.
const CHECK_EVERY: Duration = Duration::from_millis(20);

pub struct InitialSync {
    started: Instant,
    watches: AtomicUsize,
    listed: AtomicUsize,
    queues: Mutex<Vec<FairQueue>>,
}

impl InitialSync {
    /// Starts the clock now (call it first thing at startup).
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            watches: AtomicUsize::new(0),
            listed: AtomicUsize::new(0),
            queues: Mutex::new(Vec::new()),
        })
    }

    /// A watch that must list before the syncer counts as caught up.
    pub fn watch_started(&self) {
        self.watches.fetch_add(1, Ordering::SeqCst);
    }

    /// Its first complete list (call once per watch).
    pub fn watch_listed(&self) {
        self.listed.fetch_add(1, Ordering::SeqCst);
    }

    /// A queue that must drain before the syncer counts as caught up.
    pub fn track(&self, queue: &FairQueue) {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(queue.clone());
    }

    /// Whether every watch has listed and every queue is idle right now.
    pub fn caught_up(&self) -> bool {
        let watches = self.watches.load(Ordering::SeqCst);
        watches > 0
            && self.listed.load(Ordering::SeqCst) >= watches
            && self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .all(FairQueue::is_idle)
    }

    /// When the clock started (at process start).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the first catch-up (with the translation context known: before it, keys are
    /// parked, not synced), then publishes how long it took since `since` (the start, or for a
    /// replica of an HA vcluster the moment it began to lead: its takeover's catch-up).
    pub async fn report(
        self: Arc<Self>,
        since: Instant,
        metrics: Metrics,
        ctx: tokio::sync::watch::Receiver<Option<super::TranslateCtx>>,
        cancel: CancellationToken,
    ) {
        loop {
            if ctx.borrow().is_some() && self.caught_up() {
                let took = since.elapsed();
                metrics.initial_sync_seconds.set(took.as_secs_f64());
                tracing::info!(
                    seconds = took.as_secs_f64(),
                    watches = self.watches.load(Ordering::SeqCst),
                    "initial sync complete: every watch listed and every queue drained"
                );
                return;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::queue::Key;

    #[tokio::test]
    async fn caught_up_needs_every_watch_listed_and_every_queue_idle() {
        let s = InitialSync::new();
        assert!(!s.caught_up(), "nothing registered yet");
        let q = FairQueue::new();
        s.track(&q);
        s.watch_started();
        s.watch_started();
        s.watch_listed();
        assert!(!s.caught_up(), "one watch has not listed");
        s.watch_listed();
        q.add(Key::new("ns", "a"));
        assert!(!s.caught_up(), "a key is queued");
        let (key, _) = q.next().await.expect("key");
        assert!(!s.caught_up(), "a key is being processed");
        q.done(&key);
        assert!(s.caught_up());
        // A delayed key is not pending work.
        q.add_after(Key::new("ns", "b"), Duration::from_secs(3600));
        assert!(s.caught_up());
    }
}
