//! One watch per (cluster, kind): it keeps a reflector store and tells subscribers what
//! changed, so reconcilers read caches and never GET. Host watches are namespaced and label-
//! selected by the caller; `managedFields` are dropped before caching (memory), and the store
//! may hold a smaller form `C` of the watched `K` (a [`super::packed::Packed`] pod).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::progress::InitialSync;
use crate::error::Cluster;
use crate::metrics::Metrics;

/// Shortest and longest server-side timeout of a watch request, in seconds.
const WATCH_TIMEOUT_SECONDS: std::ops::Range<u32> = 3600..7200;

/// The watch configuration every watch starts from: a server-side timeout of one to two
/// hours, drawn per watch so that they do not all end at once. kube's default of 290 s
/// re-opened each of an idle syncer's 14 host watches every five minutes (2.9 re-opens a
/// minute); now the 13 with a watch cache behind them re-open about once in 90 minutes each.
/// Changes are not noticed later for it: a watch streams them as they happen. A connection
/// that dies silently (a partition, a load balancer that drops it) is caught by the clients'
/// read timeout ([`crate::clients::READ_TIMEOUT`]): the API server's watch cache sends every
/// watch a bookmark about once a minute, and the watch resumes from its last resourceVersion.
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(rand::random_range(WATCH_TIMEOUT_SECONDS))
}

/// [`config`] for kind `K`, except for kinds the API server keeps no watch cache for, whose
/// watches get no bookmarks and may stay silent: Events (`--watch-cache-sizes` leaves them
/// out by default). Those keep kube's 290 s, under the read timeout, so a quiet one ends
/// cleanly instead of failing (measured: with the long timeout the host Events watch failed
/// its read every 150 s).
pub fn config_for<K: kube::Resource<DynamicType = ()>>() -> watcher::Config {
    if K::plural(&()) == "events" {
        watcher::Config::default()
    } else {
        config()
    }
}

/// What a subscriber is told: the watched object `K` as it came (whole), the store of `C`.
pub enum Change<'a, K, C = K>
where
    C: Resource + Clone + 'static,
    C::DynamicType: Eq + Hash + Clone,
{
    /// Added or modified (the store already holds it).
    Applied(&'a K),
    /// Deleted (already gone from the store).
    Deleted(&'a K),
    /// The watch (re)listed: the store was replaced; every object may have changed and objects
    /// may have vanished without a Deleted.
    Relisted(&'a Store<C>),
}

pub type Subscriber<K, C = K> = Arc<dyn Fn(Change<'_, K, C>) + Send + Sync>;

/// The same watch event carrying the cached form (`convert` leaves the object as it came).
fn cached<K, C>(event: &mut Event<K>, convert: fn(&mut K) -> C) -> Event<C> {
    match event {
        Event::Apply(o) => Event::Apply(convert(o)),
        Event::Delete(o) => Event::Delete(convert(o)),
        Event::InitApply(o) => Event::InitApply(convert(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// How a watch lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// One whole LIST (from the watch cache where the kind has one), read item by item
    /// ([`super::unbookmarked`]).
    Whole,
    /// kube's watcher as `config` says (streamed, or LIST pages).
    Kube,
}

/// Starts a watch task feeding `writer` (whose reader the caller already holds, so that
/// subscribers can read both sides' stores) with `convert` of each object. `name` labels
/// metrics and logs (e.g. "pods").
#[allow(clippy::too_many_arguments)]
pub fn spawn<K, C>(
    api: Api<K>,
    (reader, mut writer): (Store<C>, Writer<C>),
    (config, load): (watcher::Config, Load),
    cluster: Cluster,
    name: &'static str,
    subscribers: Vec<Subscriber<K, C>>,
    convert: fn(&mut K) -> C,
    metrics: Metrics,
    initial_sync: Arc<InitialSync>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone,
    C: Resource + Clone + Send + Sync + 'static,
    C::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    let gauge = metrics.store_objects.with_label_values(&[cluster.as_str(), name]);
    let on_event = move |event: &mut Event<K>| {
        writer.apply_watcher_event(&cached(event, convert));
        match event {
            Event::Apply(obj) => {
                for s in &subscribers {
                    s(Change::Applied(obj));
                }
            }
            Event::Delete(obj) => {
                for s in &subscribers {
                    s(Change::Deleted(obj));
                }
            }
            Event::InitDone => {
                tracing::debug!(
                    cluster = cluster.as_str(),
                    kind = name,
                    objects = reader.len(),
                    "listed"
                );
                for s in &subscribers {
                    s(Change::Relisted(&reader));
                }
            }
            Event::Init | Event::InitApply(_) => {}
        }
        gauge.set(i64::try_from(reader.len()).unwrap_or(i64::MAX));
    };
    let gate = std::future::ready(());
    run_watch(
        move || match load {
            Load::Whole => super::unbookmarked::cached(api.clone(), config.clone()).boxed(),
            Load::Kube => watcher::watcher(api.clone(), config.clone()).boxed(),
        },
        cluster,
        name,
        gate,
        on_event,
        metrics,
        initial_sync,
        cancel,
    )
}

/// Starts a watch task that keeps no cache: `on_event` sees every event, the (re)list's
/// objects included (`Init`, `InitApply`…, `InitDone`). For kinds whose objects are needed only
/// until they are handled and that the API server keeps no watch cache for (host Events):
/// the stream lists again after a watch that ended early ([`super::unbookmarked`]). The watch
/// opens once `gate` is done (it counts for the initial sync from now).
#[allow(clippy::too_many_arguments)]
pub fn spawn_uncached<K>(
    api: Api<K>,
    (config, load): (watcher::Config, Load),
    cluster: Cluster,
    name: &'static str,
    gate: impl std::future::Future<Output = ()> + Send + 'static,
    mut on_event: impl FnMut(&Event<K>) + Send + 'static,
    metrics: Metrics,
    initial_sync: Arc<InitialSync>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone,
{
    let on_event = move |event: &mut Event<K>| on_event(event);
    run_watch(
        move || super::unbookmarked::stream(api.clone(), config.clone(), load == Load::Whole).boxed(),
        cluster,
        name,
        gate,
        on_event,
        metrics,
        initial_sync,
        cancel,
    )
}

/// The watch loop of every watch: backoff on errors, `managedFields` dropped, every event to
/// `on_event` (which owns it for the call: a cached watch packs parts of it in place), the
/// initial sync told after the first (re)list was handed over.
#[allow(clippy::too_many_arguments)]
fn run_watch<K>(
    open: impl Fn() -> BoxStream<'static, watcher::Result<Event<K>>> + Send + Sync + 'static,
    cluster: Cluster,
    name: &'static str,
    gate: impl std::future::Future<Output = ()> + Send + 'static,
    mut on_event: impl FnMut(&mut Event<K>) + Send + 'static,
    metrics: Metrics,
    initial_sync: Arc<InitialSync>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone,
{
    initial_sync.watch_started();
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = gate => {}
        }
        let mut listed_once = false;
        let opened = std::time::Instant::now();
        let loads = metrics.store_loads.with_label_values(&[cluster.as_str(), name]);
        let open = || {
            open()
                .default_backoff()
                .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
        };
        let mut stream = Box::pin(open());
        let mut relist = Relist::default();
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = stream.next() => event,
            };
            let mut event = match event {
                None => return,
                Some(Ok(event)) => event,
                Some(Err(error)) => {
                    metrics
                        .watch_errors
                        .with_label_values(&[cluster.as_str(), name])
                        .inc();
                    let refused = matches!(&error, watcher::Error::WatchError(status) if status.code != 410);
                    let Some(pause) = relist.after_error(refused, std::time::Instant::now()) else {
                        tracing::warn!(cluster = cluster.as_str(), kind = name, %error, "watch error; retrying with backoff");
                        continue;
                    };
                    // kube resumes a watch from its resourceVersion after any error but 410;
                    // an API server that fails every watch from there (kine: "PrevKv=nil" for
                    // the hour-old Events it expired) would never get past it. A new list does.
                    tracing::warn!(cluster = cluster.as_str(), kind = name, %error, pause_s = pause.as_secs(), "the watch fails again and again from the same point; listing again");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    stream = Box::pin(open());
                    continue;
                }
            };
            relist.delivered();
            on_event(&mut event);
            if matches!(event, Event::InitDone) {
                loads.inc();
                // After the handler queued the listed keys: the queues are not idle yet.
                if !std::mem::replace(&mut listed_once, true) {
                    // Which cache a slow start waited for.
                    tracing::info!(
                        cluster = cluster.as_str(),
                        kind = name,
                        seconds = opened.elapsed().as_secs_f64(),
                        "first list loaded"
                    );
                    initial_sync.watch_listed();
                }
            }
        }
    })
}

/// When a watch that the API server keeps refusing (an error event other than 410, answered
/// again on every resume from the same resourceVersion) is to be opened again from a new list,
/// and after what pause: after [`Self::REFUSALS`] refusals in a row, with a pause that doubles
/// for each relist within [`super::streak::CALM`] of the previous one (1 s up to 60 s):
/// kine refuses a watch over every Event it expires, so an hour after a burst of pods the host
/// Events watch is refused every few seconds for minutes, and each relist reads every Event of
/// the namespace. Connection failures neither count nor reset the count: kube's backoff
/// handles them, and a new list would not help.
#[derive(Debug, Default)]
struct Relist {
    refusals: u32,
    relists: super::streak::Streak,
}

impl Relist {
    const REFUSALS: u32 = 3;

    /// An error of the watch stream at `now`; `refused`: the API server answered with an error
    /// event (not 410). Some(pause): list again after it.
    fn after_error(&mut self, refused: bool, now: std::time::Instant) -> Option<Duration> {
        if !refused {
            return None;
        }
        self.refusals += 1;
        if self.refusals < Self::REFUSALS {
            return None;
        }
        self.refusals = 0;
        Some(super::streak::doubling(self.relists.next(now)))
    }

    /// An event arrived: the refusals were not in a row.
    fn delivered(&mut self) {
        self.refusals = 0;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Event, Pod};

    use super::*;

    /// Three refusals in a row at `at`; the pause they lead to.
    fn refused_thrice(r: &mut Relist, at: std::time::Instant) -> Option<Duration> {
        assert_eq!(r.after_error(true, at), None);
        assert_eq!(r.after_error(true, at), None);
        r.after_error(true, at)
    }

    #[test]
    fn a_watch_refused_again_and_again_is_listed_again_with_a_growing_pause() {
        let t0 = std::time::Instant::now();
        let s = Duration::from_secs;
        let mut r = Relist::default();
        assert_eq!(refused_thrice(&mut r, t0), Some(s(1)));
        // Events came after the new list, then the refusals again: still within the calm
        // period, so the pause doubles.
        r.delivered();
        assert_eq!(refused_thrice(&mut r, t0 + s(10)), Some(s(2)));
        assert_eq!(refused_thrice(&mut r, t0 + s(20)), Some(s(4)));
        let mut at = t0 + s(30);
        let mut last = None;
        for _ in 0..10 {
            at += s(30);
            last = refused_thrice(&mut r, at);
        }
        assert_eq!(last, Some(crate::engine::streak::PAUSE_MAX));
        // Quiet for the calm period: the pause starts over.
        assert_eq!(
            refused_thrice(&mut r, at + crate::engine::streak::CALM),
            Some(s(1))
        );
    }

    #[test]
    fn only_refusals_in_a_row_count_and_connection_failures_do_not() {
        let t0 = std::time::Instant::now();
        let mut r = Relist::default();
        for _ in 0..10 {
            assert_eq!(r.after_error(false, t0), None);
        }
        r.after_error(true, t0);
        r.after_error(true, t0);
        assert_eq!(r.after_error(false, t0), None, "does not count");
        r.delivered();
        assert_eq!(
            r.after_error(true, t0),
            None,
            "an event in between starts the count over"
        );
        assert_eq!(r.after_error(true, t0), None);
        assert_eq!(r.after_error(true, t0), Some(Duration::from_secs(1)));
    }

    #[test]
    fn watches_last_hours_except_those_without_bookmarks() {
        let timeouts: Vec<u32> = (0..50).filter_map(|_| config_for::<Pod>().timeout).collect();
        assert_eq!(timeouts.len(), 50);
        assert!(
            timeouts.iter().all(|t| WATCH_TIMEOUT_SECONDS.contains(t)),
            "{timeouts:?}"
        );
        assert!(
            timeouts.iter().any(|t| *t != timeouts[0]),
            "drawn per watch: {timeouts:?}"
        );
        // Events have no watch cache and so no bookmarks: the server must end a quiet watch
        // before the client's read timeout takes it for dead.
        let events = u64::from(config_for::<Event>().timeout.unwrap_or(290));
        assert!(events < crate::clients::READ_TIMEOUT.as_secs());
        assert!(u64::from(WATCH_TIMEOUT_SECONDS.start) > crate::clients::READ_TIMEOUT.as_secs());
    }
}
