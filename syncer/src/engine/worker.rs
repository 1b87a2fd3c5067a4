//! Runs a reconciler over a [`FairQueue`] with N workers: per-key spans, reconcile metrics,
//! quiet requeue on conflicts, exponential backoff on failures, Warning Events for failures the
//! tenant can act on.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::error::SyncError;
use super::events::Events;
use super::queue::{FairQueue, Key};
use crate::metrics::Metrics;

/// What a successful reconcile asks for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub requeue_after: Option<Duration>,
}

impl Outcome {
    pub fn done() -> Self {
        Self::default()
    }
    pub fn requeue(after: Duration) -> Self {
        Self {
            requeue_after: Some(after),
        }
    }
}

pub trait Reconciler: Send + Sync + 'static {
    /// Bounded kind name for metrics and logs ("pods").
    fn name(&self) -> &'static str;
    /// Reconciles one key. Must be idempotent: it is never told why it runs.
    fn reconcile(&self, key: &Key) -> impl Future<Output = Result<Outcome, SyncError>> + Send;
    /// The tenant object a Warning about `key` belongs on (None: nobody to tell).
    fn tenant_object(&self, key: &Key) -> Option<ObjectReference>;
}

/// Runs `workers` workers until `cancel`; returns when they have all stopped.
pub async fn run<R: Reconciler>(
    reconciler: Arc<R>,
    queue: FairQueue,
    workers: usize,
    events: Events,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (r, q, e, m, c) = (
            reconciler.clone(),
            queue.clone(),
            events.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        set.spawn(async move { work(r, q, e, m, c).await });
    }
    cancel.cancelled().await;
    queue.close();
    while set.join_next().await.is_some() {}
}

async fn work<R: Reconciler>(r: Arc<R>, q: FairQueue, events: Events, m: Metrics, cancel: CancellationToken) {
    let kind = r.name();
    let depth = m.queue_depth.with_label_values(&[kind]);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = q.next() => next,
        };
        let Some((key, waited)) = next else { return };
        depth.set(i64::try_from(q.len()).unwrap_or(i64::MAX));
        m.queue_wait
            .with_label_values(&[kind])
            .observe(waited.as_secs_f64());
        let span = tracing::debug_span!("reconcile", kind, key = %key);
        let started = Instant::now();
        // Boxed: a reconcile's future holds whole objects and request futures (kilobytes); a
        // waiting worker then costs only its own small state, however many workers there are.
        let result = Box::pin(r.reconcile(&key).instrument(span)).await;
        m.reconcile_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(outcome) => {
                m.reconciles.with_label_values(&[kind, "ok"]).inc();
                q.forget(&key);
                if let Some(after) = outcome.requeue_after {
                    q.add_after(key.clone(), after);
                }
            }
            Err(error) => {
                let category = error.category();
                m.reconciles.with_label_values(&[kind, category]).inc();
                let delay = error.fixed_requeue().unwrap_or_else(|| q.backoff(&key));
                if error.tenant_visible() {
                    tracing::warn!(kind, key = %key, %error, retry_in_s = delay.as_secs_f64(), "sync refused");
                    if let Some(obj) = r.tenant_object(&key) {
                        events.warn(&obj, "Sync", &error).await;
                    }
                } else if category == "transient" {
                    tracing::warn!(kind, key = %key, %error, retry_in_s = delay.as_secs_f64(), "sync failed; will retry");
                } else {
                    tracing::debug!(kind, key = %key, %error, "requeued");
                }
                q.add_after(key.clone(), delay);
            }
        }
        q.done(&key);
    }
}
