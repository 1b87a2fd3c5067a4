//! The list-then-watch stream of a kind the API server keeps no watch cache for (host Events).
//!
//! Such a watch gets no bookmarks, so its resourceVersion stays at the last event of the
//! watched namespace however long ago that was, and kube's watcher resumes from there after
//! every end. To resume, the datastore reads every revision of the whole cluster since then
//! (etcd and kine alike); kine (k3s's datastore) also drops a watch whose catch-up read takes so
//! long that more than 100 batches of other changes queue behind it. Measured on the bench's
//! host while another namespace made ~120 000 revisions in half a minute: each resume of the
//! host Events watch read for ~2 s ("Slow SQL" in kine's log), was dropped, ended cleanly and
//! was resumed at once from the same point, 18 times in 35 s.
//!
//! This stream is kube's list-then-watch (same events, same errors, so the caller's backoff
//! and relist handling apply unchanged), except for what follows a clean end that came early
//! (before half of the watch's server-side timeout: the server or its datastore dropped it).
//! Then it lists again, which costs one read of the namespace's objects of the kind and gives
//! a current resourceVersion, instead of resuming from the stale one
//! ([`Ends`]). A watch that ran its course is resumed as kube does. A list is one whole
//! consistent LIST (`--initial-list` auto or list; the API server reads the namespace's objects
//! from the datastore in one range and sends one body), or what the config asks for: one watch
//! that sends the current objects first (`sendInitialEvents`; the API server reads them from
//! the datastore, then watches from there), or consistent LIST pages (the resourceVersion they
//! give is the point). Measured with 10 000 host Events (9.5 MB), CPU of the host API server
//! and kine per list: whole 0.41-0.51 and 0.22-0.25 s, streamed 0.91-1.15 and 0.29-0.33 s,
//! 500-object pages 0.91 and 1.53 s. A LIST also cannot be cut short the way a streamed list
//! is: the datastore's watch under it may end it with an error before its last object
//! ([`expired_delete_revision`]).
//!
//! The same machine loads the caches of kinds the API server does keep a watch cache for
//! ([`cached`]): there a list is one whole LIST served from that cache (consistent, no
//! pages), split into items while it streams in ([`super::list_split`]) so that the syncer
//! never holds the whole body, and every clean end is resumed. Measured with 10 000 host pods
//! (78 MB): the host API server spent 1.8-3.2 CPU-s on such a LIST against 3.2-3.8 on the same
//! objects streamed as watch events (`sendInitialEvents`, one event and one flush per object),
//! and 500-object pages read kine again for each page (5.4 + 5.5 CPU-s).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{AsyncBufRead, AsyncBufReadExt, Stream, StreamExt};
use kube::Resource;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;

use super::list_split::ListSplitter;
use super::streak::{Streak, doubling};

/// kube's default server-side timeout of a watch, used when the config sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(290);
/// Objects per list page.
const PAGE: u32 = 500;
/// The annotation of the bookmark that ends a streamed list's objects.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What follows a watch that ended cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEnd {
    /// Watch again from the last resourceVersion seen.
    Resume,
    /// List again (after this pause) for a current resourceVersion.
    Relist(Duration),
}

/// Decides what follows each clean end: a watch that lasted at least half its timeout is
/// resumed; one that ended earlier is followed by a list, at once the first time and after a
/// pause that doubles (1 s up to 60 s) while early ends come within
/// [`super::streak::CALM`] of each other, so a server that drops every watch at once is not listed in a
/// tight loop. A watch that failed (a connection error) is resumed: kube's backoff handles
/// those, and a list would not help.
#[derive(Debug, Default)]
pub struct Ends {
    early: Streak,
    /// A kind with a watch cache: its watches get bookmarks, so their resourceVersion stays
    /// current and every end is resumed (as kube's watcher does).
    resume_always: bool,
}

impl Ends {
    /// A watch with server-side `timeout` ended cleanly at `now` after `lasted`; `failed`: it
    /// yielded a connection error before it ended.
    pub fn ended(&mut self, lasted: Duration, timeout: Duration, failed: bool, now: Instant) -> AfterEnd {
        if failed || self.resume_always || lasted >= timeout / 2 {
            return AfterEnd::Resume;
        }
        AfterEnd::Relist(match self.early.next(now) {
            0 => Duration::ZERO,
            n => doubling(n - 1),
        })
    }
}

type Watch<K> = BoxStream<'static, kube::Result<WatchEvent<K>>>;
type Body = std::pin::Pin<Box<dyn AsyncBufRead + Send>>;

/// How a list is read (also how the events kind reads its copies back after a start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// LIST pages (`limit`, `continue`).
    Pages,
    /// One watch that sends the current objects first (`sendInitialEvents`).
    Streamed,
    /// One whole LIST from the watch cache, split into items as it arrives.
    Whole,
}

enum State<K> {
    /// List from the start (after a pause).
    List(Duration),
    /// A list's objects to hand out, then its next page or the watch.
    Page {
        objects: VecDeque<K>,
        next: Option<String>,
        version: String,
    },
    /// A whole LIST arriving: its body, what was split off it so far, the items parsed and
    /// not handed out yet.
    Whole {
        body: Body,
        splitter: Box<ListSplitter>,
        ready: VecDeque<K>,
    },
    /// Watch from `version`.
    Open(String),
    Watching {
        version: String,
        stream: Watch<K>,
        opened: Instant,
        failed: bool,
        /// Still sending the current objects (a streamed list), before its end bookmark.
        initial: bool,
    },
}

struct Machine<K: Resource + Clone + 'static> {
    api: Api<K>,
    config: watcher::Config,
    load: Load,
    timeout: Duration,
    ends: Ends,
    state: State<K>,
}

/// The list-then-watch stream of `api` with `config`'s selectors and timeout, for a kind
/// without a watch cache: a list is one whole LIST (`whole`; after one broke off, and
/// otherwise, pages or streamed as `config` says), and a watch that ended early is followed by
/// a list.
pub fn stream<K>(
    api: Api<K>,
    config: watcher::Config,
    whole: bool,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let load = Load::choose(whole, streams(&config));
    machine(api, config, load, Ends::default())
}

/// The list-then-watch stream of a kind with a watch cache: each list is one whole LIST from
/// that cache, read item by item; every clean end is resumed.
pub fn cached<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let ends = Ends {
        resume_always: true,
        ..Ends::default()
    };
    machine(api, config, Load::Whole, ends)
}

fn machine<K>(
    api: Api<K>,
    config: watcher::Config,
    load: Load,
    ends: Ends,
) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let timeout = config
        .timeout
        .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(u64::from(s)));
    let machine = Machine {
        api,
        config,
        load,
        timeout,
        ends,
        state: State::List(Duration::ZERO),
    };
    futures::stream::unfold(machine, |mut m| async move {
        loop {
            if let Some(item) = m.step().await {
                return Some((item, m));
            }
        }
    })
}

impl<K> Machine<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn watch_params(&self, initial: bool) -> WatchParams {
        WatchParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            timeout: Some(u32::try_from(self.timeout.as_secs()).unwrap_or(u32::MAX)),
            bookmarks: true,
            send_initial_events: initial,
        }
    }

    fn list_params(&self, continue_token: Option<String>) -> ListParams {
        ListParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            limit: Some(self.config.page_size.unwrap_or(PAGE)),
            continue_token,
            ..ListParams::default()
        }
    }

    /// One step: Some(item) to hand out, None to step again.
    async fn step(&mut self) -> Option<watcher::Result<Event<K>>> {
        match std::mem::replace(&mut self.state, State::List(Duration::ZERO)) {
            State::List(pause) => {
                tokio::time::sleep(pause).await;
                // On an error the state stays List: the caller's backoff paces the retries.
                if self.load == Load::Whole {
                    return match self.whole_list().await {
                        Ok(body) => {
                            self.state = State::Whole {
                                body,
                                splitter: Box::default(),
                                ready: VecDeque::new(),
                            };
                            Some(Ok(Event::Init))
                        }
                        Err(e) => Some(Err(watcher::Error::InitialListFailed(e))),
                    };
                }
                if self.load == Load::Streamed {
                    return match self.api.watch(&self.watch_params(true), "0").await {
                        Ok(stream) => {
                            self.state = State::Watching {
                                version: String::new(),
                                stream: stream.boxed(),
                                opened: Instant::now(),
                                failed: false,
                                initial: true,
                            };
                            Some(Ok(Event::Init))
                        }
                        Err(e) => Some(Err(watcher::Error::WatchStartFailed(e))),
                    };
                }
                match self.api.list(&self.list_params(None)).await {
                    Ok(list) => {
                        self.state = page(list);
                        Some(Ok(Event::Init))
                    }
                    Err(e) => Some(Err(watcher::Error::InitialListFailed(e))),
                }
            }
            State::Page {
                mut objects,
                next,
                version,
            } => {
                if let Some(object) = objects.pop_front() {
                    self.state = State::Page {
                        objects,
                        next,
                        version,
                    };
                    return Some(Ok(Event::InitApply(object)));
                }
                let Some(token) = next else {
                    if version.is_empty() {
                        return Some(Err(watcher::Error::NoResourceVersion));
                    }
                    self.state = State::Open(version);
                    return Some(Ok(Event::InitDone));
                };
                match self.api.list(&self.list_params(Some(token))).await {
                    Ok(list) => {
                        self.state = page(list);
                        None
                    }
                    // The list starts over (a continue token may have expired).
                    Err(e) => Some(Err(watcher::Error::InitialListFailed(e))),
                }
            }
            State::Whole {
                body,
                splitter,
                ready,
            } => self.whole_step(body, splitter, ready).await,
            State::Open(version) => match self.api.watch(&self.watch_params(false), &version).await {
                Ok(stream) => {
                    self.state = State::Watching {
                        version,
                        stream: stream.boxed(),
                        opened: Instant::now(),
                        failed: false,
                        initial: false,
                    };
                    None
                }
                Err(e) => {
                    // Gone (410): its resourceVersion is compacted away; list again.
                    if !matches!(&e, kube::Error::Api(status) if status.code == 410) {
                        self.state = State::Open(version);
                    }
                    Some(Err(watcher::Error::WatchStartFailed(e)))
                }
            },
            State::Watching {
                version,
                mut stream,
                opened,
                failed,
                initial,
            } => {
                let next = stream.next().await;
                let watch = Current {
                    stream,
                    opened,
                    failed,
                    initial,
                };
                self.watching(version, next, watch)
            }
        }
    }

    /// Sends the whole LIST (no `limit`; consistent: no `resourceVersion`, which API servers
    /// ≥ 1.31 serve from the watch cache once it is current, older ones and kinds without a
    /// watch cache from the datastore, as the paginated lists were) and returns its body
    /// unread.
    /// (The future holds no borrow of the machine, whose streams are `Send` but not `Sync`.)
    fn whole_list(&self) -> impl std::future::Future<Output = kube::Result<Body>> + Send + 'static {
        let params = ListParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            ..ListParams::default()
        };
        let request = kube::core::Request::new(self.api.resource_url()).list(&params);
        let client = kube::Client::from(self.api.clone());
        async move {
            let request = request.map_err(kube::Error::BuildRequest)?;
            let body: Body = Box::pin(client.request_stream(request).await?);
            Ok(body)
        }
    }

    /// The next object of a whole LIST: one parsed already, or the next chunk of the body split
    /// and parsed; at its end, `InitDone` and the watch from the list's resourceVersion.
    async fn whole_step(
        &mut self,
        mut body: Body,
        mut splitter: Box<ListSplitter>,
        mut ready: VecDeque<K>,
    ) -> Option<watcher::Result<Event<K>>> {
        if let Some(object) = ready.pop_front() {
            self.state = State::Whole {
                body,
                splitter,
                ready,
            };
            return Some(Ok(Event::InitApply(object)));
        }
        // On an error the state stays List: the list starts over (a body that broke off: the
        // way the config says, see `broken_whole_list`).
        let chunk = match body.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => return self.broken_whole_list(kube::Error::ReadEvents(e)),
        };
        if chunk.is_empty() {
            let version = match splitter.finish() {
                Ok(meta) => meta.resource_version.unwrap_or_default(),
                Err(e) => {
                    return self.broken_whole_list(kube::Error::ReadEvents(std::io::Error::other(e)));
                }
            };
            if version.is_empty() {
                return Some(Err(watcher::Error::NoResourceVersion));
            }
            self.state = State::Open(version);
            return Some(Ok(Event::InitDone));
        }
        let read = chunk.len();
        let parsed = splitter.feed(chunk, |item| {
            ready.push_back(serde_json::from_slice::<K>(item)?);
            Ok::<(), serde_json::Error>(())
        });
        body.consume_unpin(read);
        if let Err(e) = parsed {
            return Some(Err(watcher::Error::InitialListFailed(kube::Error::SerdeError(e))));
        }
        self.state = State::Whole {
            body,
            splitter,
            ready,
        };
        None
    }

    /// A whole LIST whose body broke off (the API server ends a LIST that outlasts its request
    /// timeout, 60 s by default, mid-body; or the connection failed): lists from now on the
    /// way the config says (streamed or pages), so a list too big to send in time cannot fail
    /// the same way forever.
    fn broken_whole_list(&mut self, error: kube::Error) -> Option<watcher::Result<Event<K>>> {
        self.load = configured_load(&self.config);
        tracing::warn!(%error, next = ?self.load, "a whole LIST broke off; listing the way the config says from now on");
        Some(Err(watcher::Error::InitialListFailed(error)))
    }

    /// What the watch gave (`next`): an event to hand out, or the state after its end.
    fn watching(
        &mut self,
        version: String,
        next: Option<kube::Result<WatchEvent<K>>>,
        watch: Current<K>,
    ) -> Option<watcher::Result<Event<K>>> {
        let Current {
            stream,
            opened,
            failed,
            initial,
        } = watch;
        let keep = move |version: String, failed: bool, initial: bool| State::Watching {
            version,
            stream,
            opened,
            failed,
            initial,
        };
        match next {
            Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                let Some(v) = o.meta().resource_version.clone().filter(|v| !v.is_empty()) else {
                    return Some(Err(watcher::Error::NoResourceVersion));
                };
                self.state = keep(v, failed, initial);
                Some(Ok(if initial {
                    Event::InitApply(o)
                } else {
                    Event::Apply(o)
                }))
            }
            Some(Ok(WatchEvent::Deleted(o))) => {
                let Some(v) = o.meta().resource_version.clone().filter(|v| !v.is_empty()) else {
                    return Some(Err(watcher::Error::NoResourceVersion));
                };
                self.state = keep(v, failed, initial);
                Some(Ok(Event::Delete(o)))
            }
            Some(Ok(WatchEvent::Bookmark(b))) => {
                let ends_initial = initial && b.metadata.annotations.contains_key(INITIAL_EVENTS_END);
                self.state = keep(b.metadata.resource_version, failed, initial && !ends_initial);
                ends_initial.then_some(Ok(Event::InitDone))
            }
            Some(Ok(WatchEvent::Error(status))) => {
                if !initial && let Some(past) = expired_delete_revision(&status.message) {
                    // Watching on after it costs one request; the LIST the error would have
                    // led to read the namespace's every Event, once per expiring one.
                    tracing::info!(revision = %past, "an expired object's delete came without its previous value; watching on after it");
                    self.state = State::Open(past);
                    return None;
                }
                if status.code != 410 {
                    self.state = keep(version, failed, initial);
                }
                // 410 (Gone): the state is already List.
                Some(Err(watcher::Error::WatchError(status)))
            }
            Some(Err(e)) => {
                self.state = keep(version, true, initial);
                Some(Err(watcher::Error::WatchFailed(e)))
            }
            None => {
                let now = Instant::now();
                self.state = match self.ends.ended(now - opened, self.timeout, failed, now) {
                    // A streamed list that ended before its end bookmark starts over.
                    AfterEnd::Resume if initial => State::List(Duration::ZERO),
                    AfterEnd::Resume => State::Open(version),
                    AfterEnd::Relist(pause) => {
                        tracing::debug!(
                            lasted_s = (now - opened).as_secs_f64(),
                            pause_s = pause.as_secs_f64(),
                            "the watch ended early; listing again for a current resourceVersion"
                        );
                        State::List(pause)
                    }
                };
                None
            }
        }
    }
}

/// The revision of a delete the datastore sent without the deleted object, when `message` (a
/// watch's ERROR status) says so; None for any other error. kine (k3s's datastore) deletes an
/// expired Event (its TTL, one hour by default) that way, and the API server ends every watch
/// of Events that reaches it with this error (`etcd event received with PrevKv=nil
/// (key=..., modRevision=N, type=DELETE)`): measured, an hour after a 1000-pod burst the host
/// Events watch failed every 2–6 s and listed the namespace's Events each time, and a restart
/// took 17 s instead of 1. Watching on from revision N skips only that delete: of an Event
/// that expired, which nothing here needs to see. Resuming from before N cannot work: seen
/// against kine v0.17.5 while 10 000 Events expired, a watch resumed from there got the same
/// error 1 195 times in two minutes, while whole LISTs in those minutes answered every time.
fn expired_delete_revision(message: &str) -> Option<String> {
    if !message.contains("PrevKv=nil") || !message.contains("type=DELETE") {
        return None;
    }
    let digits: String = message
        .split("modRevision=")
        .nth(1)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

impl Load {
    /// One whole LIST when `whole`, else a streamed list where the server `streams`, else pages.
    pub fn choose(whole: bool, streams: bool) -> Self {
        match (whole, streams) {
            (true, _) => Load::Whole,
            (false, true) => Load::Streamed,
            (false, false) => Load::Pages,
        }
    }
}

/// Whether `config` asks for streamed lists.
fn streams(config: &watcher::Config) -> bool {
    config.initial_list_strategy == watcher::InitialListStrategy::StreamingList
}

/// How `config` says to list (a stream without whole lists, or after one broke off): streamed
/// where it streams, else pages.
fn configured_load(config: &watcher::Config) -> Load {
    Load::choose(false, streams(config))
}

/// The watch being read, as [`State::Watching`] holds it (but its resourceVersion).
struct Current<K> {
    stream: Watch<K>,
    opened: Instant,
    failed: bool,
    initial: bool,
}

/// The state after a list page arrived.
fn page<K: Clone>(list: kube::api::ObjectList<K>) -> State<K> {
    State::Page {
        next: list.metadata.continue_.filter(|t| !t.is_empty()),
        version: list.metadata.resource_version.unwrap_or_default(),
        objects: list.items.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(290);

    #[test]
    fn a_watch_that_ran_its_course_is_resumed() {
        let mut ends = Ends::default();
        let now = Instant::now();
        assert_eq!(ends.ended(TIMEOUT, TIMEOUT, false, now), AfterEnd::Resume);
        assert_eq!(ends.ended(TIMEOUT / 2, TIMEOUT, false, now), AfterEnd::Resume);
    }

    #[test]
    fn an_early_end_lists_again_at_once_then_after_a_growing_pause() {
        let mut ends = Ends::default();
        let t0 = Instant::now();
        let early = Duration::from_secs(2);
        let pauses: Vec<AfterEnd> = (0..9)
            .map(|i| ends.ended(early, TIMEOUT, false, t0 + Duration::from_secs(3 * i)))
            .collect();
        let secs = |s: u64| AfterEnd::Relist(Duration::from_secs(s));
        assert_eq!(
            pauses,
            [
                secs(0),
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(60),
                secs(60)
            ]
        );
        let calm = t0 + Duration::from_secs(3 * 8) + crate::engine::streak::CALM;
        assert_eq!(
            ends.ended(early, TIMEOUT, false, calm),
            secs(0),
            "after a calm spell the first early end lists at once again"
        );
    }

    #[test]
    fn whole_lists_come_first_then_streams_then_pages() {
        assert_eq!(Load::choose(true, true), Load::Whole);
        assert_eq!(Load::choose(true, false), Load::Whole);
        assert_eq!(Load::choose(false, true), Load::Streamed);
        assert_eq!(Load::choose(false, false), Load::Pages);
    }

    #[test]
    fn a_broken_whole_list_gives_way_to_the_configured_load() {
        let config = watcher::Config::default();
        assert_eq!(configured_load(&config), Load::Pages);
        assert_eq!(configured_load(&config.streaming_lists()), Load::Streamed);
    }

    #[test]
    fn a_cached_kind_resumes_every_end() {
        let mut ends = Ends {
            resume_always: true,
            ..Ends::default()
        };
        assert_eq!(
            ends.ended(Duration::from_millis(5), TIMEOUT, false, Instant::now()),
            AfterEnd::Resume
        );
    }

    #[test]
    fn a_delete_without_its_previous_value_is_watched_past() {
        let kine = "Internal error occurred: etcd event received with PrevKv=nil \
            (key=\"/registry/events/vnest-demo/web-1.18ef035ba2045229\", modRevision=133345, type=DELETE)";
        assert_eq!(expired_delete_revision(kine).as_deref(), Some("133345"));
        let put = "etcd event received with PrevKv=nil (key=\"/registry/pods/a/b\", modRevision=7, type=PUT)";
        assert_eq!(expired_delete_revision(put), None, "only deletes are skipped");
        assert_eq!(expired_delete_revision("too old resource version: 5 (9)"), None);
        assert_eq!(
            expired_delete_revision("PrevKv=nil type=DELETE modRevision=x"),
            None
        );
    }

    #[test]
    fn a_watch_that_failed_is_resumed_however_short() {
        let mut ends = Ends::default();
        let now = Instant::now();
        assert_eq!(
            ends.ended(Duration::from_millis(5), TIMEOUT, true, now),
            AfterEnd::Resume
        );
        assert_eq!(
            ends.ended(Duration::from_millis(5), TIMEOUT, false, now),
            AfterEnd::Relist(Duration::ZERO),
            "failures do not count as early ends"
        );
    }
}
