//! Fair sharing of one client's request budget between virtual namespaces.
//!
//! Every API request of a client passes its [`FairShare`]: a token bucket (`qps`, `burst`) and
//! a limit on the requests sent and not answered yet (its seats: fixed, or following the
//! server's latency, [`crate::seat_limit`]). A request that finds both free
//! while nobody waits goes at once. Otherwise it waits in the queue of its **flow**: the virtual
//! namespace whose reconcile sent it (set by [`within`]), or the syncer's own flow `""` (watches,
//! cluster-scoped kinds, background tasks). Flows with waiting requests are served round-robin,
//! one request each, as tokens and seats come free. A namespace's burst therefore queues
//! behind itself: another namespace's create waits for at most one request of each other
//! waiting flow, not for every request the burst has queued.
//!
//! Round-robin alone does not help a request that finds every seat taken by one namespace's
//! burst: it waits for one of the burst's requests to be answered, and under a burst the API
//! server answers slowly (a small namespace's host create waited 0.37 s at p99 here). So while
//! another namespace is active (it was granted a request in the last [`KEEP_FOR`]), no flow
//! takes the last free seat ([`Schedule::cap_for`]): a flow that holds all seats but one
//! waits, and the other namespace's next request goes at once. A lone burst keeps every seat
//! (keeping one from it cost its slowest pods up to twice their time when the host's adaptive
//! limit was down to a few seats); the syncer's own flow does not count as another namespace.
//!
//! The decisions are pure ([`Schedule`], no clock of its own, no I/O); [`FairShare`] adds the
//! clock, the wake-ups, and one dispatch task that runs only while requests wait.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::seat_limit::SeatLimit;

/// How long a namespace counts as active after its last request was granted: while one is,
/// no other flow takes the last free seat.
pub const KEEP_FOR: Duration = Duration::from_secs(10);

tokio::task_local! {
    static FLOW: Flow;
}

/// Whose request this is: a virtual namespace, or `""` for the syncer's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flow(Arc<str>);

impl Flow {
    pub fn new(namespace: &str) -> Self {
        Self(namespace.into())
    }

    /// The flow of the task polling now (`""` outside [`within`]).
    pub fn current() -> Self {
        FLOW.try_with(Clone::clone).unwrap_or_default()
    }
}

/// `fut`, with its API requests counted to the flow of `namespace`.
pub fn within<F: Future>(namespace: &str, fut: F) -> tokio::task::futures::TaskLocalFuture<Flow, F> {
    FLOW.scope(Flow::new(namespace), fut)
}

/// A waiting request as the schedule sees it.
pub trait Waiter {
    /// The request was dropped while it waited: skip it, it needs no token.
    fn gone(&self) -> bool;
}

impl<T> Waiter for oneshot::Sender<T> {
    fn gone(&self) -> bool {
        self.is_closed()
    }
}

/// What the dispatcher waits for before it can grant again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nobody waits.
    Idle,
    /// A token is due at this time.
    TokenAt(Instant),
    /// Every seat is taken: a request must finish first.
    Seat,
}

/// The pure core: the bucket, the seats, and the waiting requests by flow.
pub struct Schedule<W> {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    seats: SeatLimit,
    in_flight: usize,
    /// Requests in flight per flow (flows with none are left out).
    held: HashMap<Flow, usize>,
    /// When each namespace's flow was last granted a request (the syncer's own flow left out).
    active: HashMap<Flow, Instant>,
    queues: HashMap<Flow, VecDeque<W>>,
    /// Flows with waiting requests, in service order.
    ring: VecDeque<Flow>,
}

impl<W: Waiter> Schedule<W> {
    /// A full bucket, and `seats` for the requests in flight.
    pub fn new(qps: f64, burst: u32, seats: SeatLimit, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            tokens: burst,
            last: now,
            seats,
            in_flight: 0,
            held: HashMap::new(),
            active: HashMap::new(),
            queues: HashMap::new(),
            ring: VecDeque::new(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Most seats `flow` may hold: all but one while another namespace is active (when there
    /// are two or more), so that its next request finds a seat free; otherwise all.
    pub fn cap_for(&self, flow: &Flow) -> usize {
        let seats = self.seats.get();
        let others = self
            .active
            .iter()
            .any(|(f, at)| f != flow && self.last.saturating_duration_since(*at) < KEEP_FOR);
        if seats >= 2 && others { seats - 1 } else { seats }
    }

    fn at_cap(&self, flow: &Flow) -> bool {
        self.held.get(flow).copied().unwrap_or(0) >= self.cap_for(flow)
    }

    /// Whether a token and a seat are free for a request of `flow` now.
    fn free(&mut self, flow: &Flow, now: Instant) -> Result<(), Next> {
        self.refill(now);
        if self.in_flight >= self.seats.get() || self.at_cap(flow) {
            Err(Next::Seat)
        } else if self.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
            Err(Next::TokenAt(now + wait))
        } else {
            Ok(())
        }
    }

    fn take(&mut self, flow: Flow) {
        self.tokens -= 1.0;
        self.in_flight += 1;
        if !flow.0.is_empty() {
            let now = self.last;
            if self.active.insert(flow.clone(), now).is_none() {
                self.active
                    .retain(|_, at| now.saturating_duration_since(*at) < KEEP_FOR);
            }
        }
        *self.held.entry(flow).or_default() += 1;
    }

    /// A request of `flow` is over (answered, dropped, or returned before it went).
    fn release(&mut self, flow: &Flow) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(held) = self.held.get_mut(flow) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(flow);
            }
        }
    }

    /// A request of `flow` arrives: true when it may go now (a token and a seat are free for
    /// it, and no waiting request could take them: it overtakes only flows held at their cap;
    /// both are taken). Otherwise the caller [`Schedule::wait`]s.
    pub fn try_now(&mut self, flow: &Flow, now: Instant) -> bool {
        if self.queues.contains_key(flow) || self.free(flow, now).is_err() {
            return false;
        }
        if self.ring.iter().any(|waiting| !self.at_cap(waiting)) {
            return false;
        }
        self.take(flow.clone());
        true
    }

    /// Queues `waiter` behind its flow's earlier requests.
    pub fn wait(&mut self, flow: Flow, waiter: W) {
        let queue = self.queues.entry(flow.clone()).or_default();
        queue.push_back(waiter);
        if queue.len() == 1 {
            self.ring.push_back(flow);
        }
    }

    /// Grants what the budget allows now, one request per flow in turn (skipping flows held
    /// at their cap); returns the granted waiters (each holds a token and a seat, with its
    /// flow) and what to wait for before granting again.
    pub fn grant(&mut self, now: Instant) -> (Vec<(W, Flow)>, Next) {
        self.refill(now);
        let mut granted = Vec::new();
        loop {
            let Some(flow) = self.next_flow() else {
                let next = if self.ring.is_empty() {
                    Next::Idle
                } else {
                    Next::Seat
                };
                return (granted, next);
            };
            if let Err(next) = self.free(&flow, now) {
                return (granted, next);
            }
            let Some(waiter) = self.pop_head(&flow) else {
                continue;
            };
            if waiter.gone() {
                continue;
            }
            self.take(flow.clone());
            granted.push((waiter, flow));
        }
    }

    /// The first flow in the ring below its cap, moved to the front (the ones it passed keep
    /// their order behind it).
    fn next_flow(&mut self) -> Option<Flow> {
        let at = self.ring.iter().position(|flow| !self.at_cap(flow))?;
        let flow = self.ring.remove(at)?;
        self.ring.push_front(flow.clone());
        Some(flow)
    }

    /// The head of `flow`, at the front of the ring (it moves to the back if it has more).
    fn pop_head(&mut self, flow: &Flow) -> Option<W> {
        self.ring.pop_front();
        let queue = self.queues.get_mut(flow)?;
        let waiter = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(flow);
        } else {
            self.ring.push_back(flow.clone());
        }
        waiter
    }

    /// A request of `flow` is answered (or dropped) at `now`: its seat is free again, and,
    /// when it was timed (granted at `granted`), its latency tells an adaptive limit how busy
    /// the server is.
    pub fn finished(&mut self, flow: &Flow, granted: Option<Instant>, now: Instant) {
        if let Some(granted) = granted {
            self.seats.answered(granted, self.in_flight, now);
        }
        self.release(flow);
    }

    /// A granted request that never went (dropped before it was told): its seat and token back.
    pub fn returned(&mut self, flow: &Flow) {
        self.release(flow);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// Seats now.
    pub fn seats(&self) -> usize {
        self.seats.get()
    }

    pub fn is_waiting(&self) -> bool {
        !self.ring.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

struct Shared {
    schedule: Mutex<State>,
    /// Shows the seats after every answer (an adaptive limit moves); None: nobody looks.
    seats_gauge: Option<prometheus::IntGauge>,
    /// Wakes the dispatcher: a seat came free, or a request of another flow came to wait.
    wake: Notify,
}

struct State {
    schedule: Schedule<oneshot::Sender<Seat>>,
    dispatching: bool,
}

/// One client's request budget, shared fairly between flows.
#[derive(Clone)]
pub struct FairShare {
    shared: Arc<Shared>,
}

/// A granted request's seat; dropping it (the request answered, failed or dropped) frees it.
pub struct Seat {
    shared: Option<Arc<Shared>>,
    flow: Flow,
    /// When it was granted, if its answer's latency counts ([`Seat::untimed`]: not).
    granted: Option<Instant>,
}

impl Seat {
    /// Its latency says nothing about how busy the server is (a read the API server answers
    /// from its watch cache): it does not move an adaptive limit.
    pub fn untimed(&mut self) {
        self.granted = None;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            let waiting = {
                let mut s = lock(&shared);
                s.schedule.finished(&self.flow, self.granted, Instant::now());
                show_seats(shared.seats_gauge.as_ref(), s.schedule.seats());
                s.schedule.is_waiting()
            };
            if waiting {
                shared.wake.notify_one();
            }
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared
        .schedule
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets the seats gauge, if there is one.
fn show_seats(gauge: Option<&prometheus::IntGauge>, seats: usize) {
    if let Some(gauge) = gauge {
        gauge.set(i64::try_from(seats).unwrap_or(i64::MAX));
    }
}

impl FairShare {
    /// `qps` sustained, `burst` at once, `seats` for the unanswered ones; `seats_gauge` (if
    /// any) shows the seats as they move.
    pub fn new(qps: f64, burst: u32, seats: SeatLimit, seats_gauge: Option<prometheus::IntGauge>) -> Self {
        show_seats(seats_gauge.as_ref(), seats.get());
        Self {
            shared: Arc::new(Shared {
                schedule: Mutex::new(State {
                    schedule: Schedule::new(qps, burst, seats, Instant::now()),
                    dispatching: false,
                }),
                seats_gauge,
                wake: Notify::new(),
            }),
        }
    }

    /// Waits for the turn of a request of `flow`; returns its seat and how long it waited
    /// (None: it went at once).
    pub async fn acquire(&self, flow: Flow) -> (Seat, Option<Duration>) {
        let since = Instant::now();
        let rx = {
            let mut s = lock(&self.shared);
            if s.schedule.try_now(&flow, since) {
                return (self.seat(flow), None);
            }
            let (tx, rx) = oneshot::channel();
            s.schedule.wait(flow.clone(), tx);
            if std::mem::replace(&mut s.dispatching, true) {
                // It may wait for a seat that this flow does not need (the others are at
                // their cap), or for a token: let it look again.
                self.shared.wake.notify_one();
            } else {
                tokio::spawn(self.clone().dispatch());
            }
            rx
        };
        // The sender is only dropped unsent when this receiver is gone: a closed channel here
        // cannot happen; go without a seat rather than fail the request if it ever does.
        let seat = rx.await.unwrap_or(Seat {
            shared: None,
            flow,
            granted: None,
        });
        (seat, Some(since.elapsed()))
    }

    fn seat(&self, flow: Flow) -> Seat {
        Seat {
            shared: Some(self.shared.clone()),
            flow,
            granted: Some(Instant::now()),
        }
    }

    /// Grants as tokens and seats come free, until nobody waits.
    async fn dispatch(self) {
        loop {
            let (granted, next) = {
                let mut s = lock(&self.shared);
                let (granted, next) = s.schedule.grant(Instant::now());
                if next == Next::Idle {
                    s.dispatching = false;
                }
                (granted, next)
            };
            for (waiter, flow) in granted {
                if let Err(mut seat) = waiter.send(self.seat(flow)) {
                    // Dropped between the grant and now: the token and the seat go back.
                    seat.shared = None;
                    lock(&self.shared).schedule.returned(&seat.flow);
                }
            }
            match next {
                Next::Idle => return,
                Next::TokenAt(at) => tokio::time::sleep_until(at.into()).await,
                Next::Seat => self.shared.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct W(&'static str, usize, bool);

    impl Waiter for W {
        fn gone(&self) -> bool {
            self.2
        }
    }

    fn w(flow: &'static str, i: usize) -> W {
        W(flow, i, false)
    }

    fn names(granted: &[(W, Flow)]) -> Vec<(&'static str, usize)> {
        granted
            .iter()
            .map(|(g, flow)| {
                assert_eq!(*flow, Flow::new(g.0), "granted with its own flow");
                (g.0, g.1)
            })
            .collect()
    }

    fn a() -> Flow {
        Flow::new("a")
    }

    #[test]
    fn a_lone_flow_gets_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(10.0, 3, SeatLimit::fixed(0), t0);
        for _ in 0..3 {
            assert!(s.try_now(&a(), t0), "the burst goes at once");
        }
        assert!(!s.try_now(&a(), t0), "the bucket is empty");
        for i in 0..5 {
            s.wait(Flow::new("a"), w("a", i));
        }
        let (granted, next) = s.grant(t0);
        assert!(granted.is_empty());
        assert_eq!(next, Next::TokenAt(t0 + Duration::from_millis(100)));
        let (granted, next) = s.grant(t0 + Duration::from_millis(250));
        assert_eq!(names(&granted), [("a", 0), ("a", 1)], "one token per 100 ms");
        assert!(matches!(next, Next::TokenAt(_)));
        let (granted, next) = s.grant(t0 + Duration::from_secs(10));
        assert_eq!(names(&granted), [("a", 2), ("a", 3), ("a", 4)]);
        assert_eq!(next, Next::Idle);
    }

    #[test]
    fn a_burst_queued_in_one_flow_does_not_delay_another_flow() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(100.0, 1, SeatLimit::fixed(0), t0);
        assert!(s.try_now(&Flow::new("greedy"), t0));
        for i in 0..200 {
            s.wait(Flow::new("greedy"), w("greedy", i));
        }
        s.wait(Flow::new("small"), w("small", 0));
        let mut order = Vec::new();
        let mut now = t0;
        while s.is_waiting() && order.len() < 4 {
            now += Duration::from_millis(10);
            let (granted, _) = s.grant(now);
            order.extend(names(&granted));
        }
        assert_eq!(
            order[..3],
            [("greedy", 0), ("small", 0), ("greedy", 1)],
            "the small namespace's request is the second served, not the 201st"
        );
    }

    #[test]
    fn flows_take_turns_one_request_each() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(1.0, 1, SeatLimit::fixed(0), t0);
        assert!(s.try_now(&a(), t0));
        for i in 0..3 {
            s.wait(Flow::new("a"), w("a", i));
        }
        s.wait(Flow::new("b"), w("b", 0));
        s.wait(Flow::default(), w("", 0));
        let mut order = Vec::new();
        for second in 1..=5 {
            let (granted, _) = s.grant(t0 + Duration::from_secs(second));
            order.extend(names(&granted));
        }
        assert_eq!(
            order,
            [("a", 0), ("b", 0), ("", 0), ("a", 1), ("a", 2)],
            "one token a second, handed round the waiting flows"
        );
    }

    #[test]
    fn seats_limit_requests_in_flight() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(1000.0, 100, SeatLimit::fixed(2), t0);
        let (x, y) = (Flow::new("x"), Flow::new("y"));
        assert!(s.try_now(&x, t0));
        assert!(s.try_now(&y, t0));
        assert!(!s.try_now(&Flow::new("z"), t0), "both seats taken");
        s.wait(a(), w("a", 0));
        s.wait(Flow::new("b"), w("b", 0));
        let (granted, next) = s.grant(t0);
        assert!(granted.is_empty());
        assert_eq!(next, Next::Seat);
        s.finished(&x, None, t0);
        let (granted, next) = s.grant(t0);
        assert_eq!(names(&granted), [("a", 0)]);
        assert_eq!(next, Next::Seat);
        assert_eq!(s.in_flight(), 2);
        s.finished(&y, None, t0);
        s.finished(&a(), None, t0);
        let (granted, next) = s.grant(t0);
        assert_eq!(names(&granted), [("b", 0)]);
        assert_eq!(next, Next::Idle);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn while_another_namespace_is_active_no_flow_takes_the_last_seat() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(1000.0, 100, SeatLimit::fixed(4), t0);
        let (burst, small) = (Flow::new("burst"), Flow::new("small"));
        assert!(
            s.try_now(&small, t0),
            "the small namespace was active a moment ago"
        );
        s.finished(&small, None, t0);
        assert_eq!(s.cap_for(&burst), 3);
        for _ in 0..3 {
            assert!(s.try_now(&burst, t0));
        }
        assert!(!s.try_now(&burst, t0), "the last seat is kept");
        for i in 0..10 {
            s.wait(burst.clone(), w("burst", i));
        }
        assert_eq!(s.grant(t0).1, Next::Seat, "the burst waits for one of its own");
        assert!(
            s.try_now(&small, t0),
            "the small namespace's next request passes the burst's queue at once"
        );
        assert_eq!(s.in_flight(), 4);
        assert!(!s.try_now(&Flow::new("third"), t0), "every seat taken");
        s.finished(&small, None, t0);
        assert!(s.grant(t0).0.is_empty(), "the freed seat stays kept");
        s.finished(&burst, None, t0);
        let (granted, next) = s.grant(t0);
        assert_eq!(names(&granted), [("burst", 0)]);
        assert_eq!(next, Next::Seat);
        // The small namespace has gone quiet: the burst gets every seat again.
        let quiet = t0 + KEEP_FOR;
        let (granted, next) = s.grant(quiet);
        assert_eq!(names(&granted), [("burst", 1)]);
        assert_eq!((next, s.in_flight()), (Next::Seat, 4));
    }

    #[test]
    fn a_lone_burst_and_the_syncers_own_requests_take_every_seat() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(1000.0, 100, SeatLimit::fixed(4), t0);
        let burst = Flow::new("burst");
        assert!(s.try_now(&Flow::default(), t0), "the syncer's own flow");
        for _ in 0..3 {
            assert!(s.try_now(&burst, t0));
        }
        assert_eq!(
            s.in_flight(),
            4,
            "the syncer's own requests keep no seat from a namespace"
        );
        s.finished(&Flow::default(), None, t0);
        assert!(s.try_now(&burst, t0), "alone, the burst takes the last seat");
    }

    #[test]
    fn the_turn_passes_flows_at_their_cap() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(1000.0, 100, SeatLimit::fixed(3), t0);
        let c = Flow::new("c");
        assert!(s.try_now(&a(), t0));
        assert!(s.try_now(&a(), t0));
        assert!(s.try_now(&c, t0));
        for i in 0..3 {
            s.wait(a(), w("a", i));
        }
        s.wait(Flow::new("b"), w("b", 0));
        s.finished(&c, None, t0);
        let (granted, next) = s.grant(t0);
        assert_eq!(
            names(&granted),
            [("b", 0)],
            "a holds two of three seats: b goes first"
        );
        assert_eq!(next, Next::Seat);
        s.finished(&a(), None, t0);
        let (granted, _) = s.grant(t0);
        assert_eq!(names(&granted), [("a", 0)]);
        s.finished(&Flow::new("b"), None, t0);
        s.finished(&a(), None, t0);
        let (granted, next) = s.grant(t0);
        assert_eq!(names(&granted), [("a", 1)], "a at its cap again: one of two");
        assert_eq!(next, Next::Seat);
    }

    #[test]
    fn nobody_overtakes_a_waiting_request_and_dropped_ones_cost_nothing() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(10.0, 1, SeatLimit::fixed(0), t0);
        let b = Flow::new("b");
        assert!(s.try_now(&b, t0));
        s.wait(a(), W("a", 0, true));
        s.wait(a(), w("a", 1));
        let later = t0 + Duration::from_millis(100);
        assert!(
            !s.try_now(&b, later),
            "a token is free, but a request waits for it"
        );
        let (granted, next) = s.grant(later);
        assert_eq!(names(&granted), [("a", 1)], "the dropped request took no token");
        assert_eq!(next, Next::Idle);
        s.returned(&a());
        assert!(s.try_now(&b, later), "a returned grant gives its token back");
    }

    #[test]
    fn an_adaptive_limit_holds_requests_back_once_the_server_slows_down() {
        let t0 = Instant::now();
        let mut s = Schedule::<W>::new(
            1e6,
            1_000_000,
            SeatLimit::adaptive(crate::seat_limit::ADAPTIVE_MIN, 0, t0),
            t0,
        );
        let mut sent = 0;
        while s.try_now(&a(), t0) {
            sent += 1;
        }
        assert_eq!(
            sent, 32,
            "an adaptive limit starts at 32 seats, all of them a lone flow's"
        );
        let b = Flow::new("b");
        s.finished(&a(), Some(t0), t0 + Duration::from_millis(4));
        let slow = t0 + Duration::from_secs(1);
        s.finished(&a(), Some(t0), slow);
        assert_eq!(
            s.seats(),
            24,
            "an answer 250 times slower than the quiet one cuts"
        );
        for _ in 0..6 {
            // Sent before the cut: they do not cut again.
            s.finished(&a(), Some(t0), slow);
        }
        assert_eq!((s.in_flight(), s.seats()), (24, 24));
        assert!(!s.try_now(&b, slow), "every one of the fewer seats is taken");
        s.finished(&a(), None, slow);
        assert_eq!(s.seats(), 24, "an untimed answer does not move the limit");
        assert!(s.try_now(&b, slow));
    }

    #[tokio::test]
    async fn requests_learn_their_flow_from_the_task() {
        assert_eq!(Flow::current(), Flow::default());
        let inside = within("team-a", async { Flow::current() }).await;
        assert_eq!(inside, Flow::new("team-a"));
    }

    #[tokio::test]
    async fn the_share_grants_waiters_in_turn_and_frees_seats_on_drop() {
        let share = FairShare::new(1000.0, 1000, SeatLimit::fixed(1), None);
        let (first, waited) = share.acquire(Flow::new("a")).await;
        assert!(waited.is_none(), "a free seat: no wait");
        let second = {
            let share = share.clone();
            tokio::spawn(async move { share.acquire(Flow::new("b")).await })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the only seat is taken");
        drop(first);
        let (_seat, waited) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("granted once the seat is free")
            .expect("join");
        assert!(waited.is_some());
    }

    #[tokio::test]
    async fn a_flow_holding_all_seats_but_one_waits_while_another_is_active() {
        let share = FairShare::new(1000.0, 1000, SeatLimit::fixed(2), None);
        drop(share.acquire(Flow::new("b")).await);
        let (first, waited) = share.acquire(a()).await;
        assert!(waited.is_none());
        let second = {
            let share = share.clone();
            tokio::spawn(async move { share.acquire(a()).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "a holds its cap: b was active a moment ago"
        );
        let (_other, waited) = share.acquire(Flow::new("b")).await;
        assert!(waited.is_none(), "the kept seat: no wait");
        drop(first);
        let (_seat, waited) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("granted once a's own seat is free")
            .expect("join");
        assert!(waited.is_some());
    }
}
