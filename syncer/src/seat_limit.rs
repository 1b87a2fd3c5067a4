//! How many requests a client keeps in flight: a fixed number, or one that follows the API
//! server's latency.
//!
//! An API server in front of a single-writer datastore (kine over SQLite, the host of a small
//! cluster) answers a write in milliseconds when it is quiet; under a burst every write queues
//! in the datastore behind every other one, and a write of a namespace that sent one request
//! waits behind the hundreds the burst has in flight there, out of reach of the syncer's fair
//! queue ([`crate::fair_share`]). The adaptive limit keeps the syncer's own share of that queue
//! short: while the server answers near its quiet latency the limit grows by one seat per
//! limit's worth of answers (TCP's congestion avoidance), or by one for each answer within twice
//! the quiet latency (a server that is quiet again gets the burst back within a few dozen
//! answers); an answer slower than twice the quiet latency plus 50 ms cuts the limit by a
//! quarter, at most once per round trip (only a request granted after the last cut can cut
//! again: the ones in flight then were sent under the old limit). The requests it holds back
//! wait in the fair queue, where a small namespace's request passes the burst's.
//!
//! The quiet latency is the lowest latency of the last one to two windows of [`WINDOW`], so it
//! follows a server that got slower for good (a moved host, a bigger datastore) within a
//! minute. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// Length of one window of the quiet-latency minimum (two are kept).
pub const WINDOW: Duration = Duration::from_secs(30);
/// Fewest seats the adaptive limit goes down to unless told otherwise (`--host-min-in-flight`).
pub const ADAPTIVE_MIN: usize = 4;
/// Seats an adaptive limit starts with (and most it grows to without a configured maximum).
const ADAPTIVE_START: f64 = 32.0;
const ADAPTIVE_MAX: f64 = 1024.0;
/// An answer this much slower than the quiet latency, over twice it, counts as queueing: a
/// write that waits behind a few others in a healthy datastore (tens of milliseconds) does
/// not; one that waits behind hundreds (a burst: ~1.5 s here) does.
const SLACK: Duration = Duration::from_millis(50);
/// What a cut keeps of the limit.
const CUT: f64 = 0.75;

#[derive(Debug, Clone)]
pub enum SeatLimit {
    /// At most this many (`usize::MAX`: no limit).
    Fixed(usize),
    Adaptive(Adaptive),
}

#[derive(Debug, Clone)]
pub struct Adaptive {
    limit: f64,
    min: f64,
    max: f64,
    /// Lowest latency seen in the current window, and in the one before.
    floor_now: Option<Duration>,
    floor_before: Option<Duration>,
    window_start: Instant,
    /// When the last cut happened: answers to requests granted before it do not cut again.
    last_cut: Option<Instant>,
}

impl SeatLimit {
    /// `max` seats (0: no limit).
    pub fn fixed(max: usize) -> Self {
        Self::Fixed(if max == 0 { usize::MAX } else { max })
    }

    /// Following the latency, between `min` (at least 1) and `max` (0: no maximum of its own);
    /// a `max` of `min` or fewer leaves nothing to follow: fixed at `max`.
    pub fn adaptive(min: usize, max: usize, now: Instant) -> Self {
        let min = min.max(1);
        if (1..=min).contains(&max) {
            return Self::Fixed(max);
        }
        let max = if max == 0 {
            ADAPTIVE_MAX.max(min as f64)
        } else {
            max as f64
        };
        Self::Adaptive(Adaptive {
            limit: ADAPTIVE_START.max(min as f64).min(max),
            min: min as f64,
            max,
            floor_now: None,
            floor_before: None,
            window_start: now,
            last_cut: None,
        })
    }

    /// Seats now.
    pub fn get(&self) -> usize {
        match self {
            Self::Fixed(n) => *n,
            Self::Adaptive(a) => a.limit as usize,
        }
    }

    /// A request granted at `granted` was answered at `now`, with `in_flight` requests
    /// (itself included) in flight just before.
    pub fn answered(&mut self, granted: Instant, in_flight: usize, now: Instant) {
        if let Self::Adaptive(a) = self {
            a.answered(granted, in_flight, now);
        }
    }
}

impl Adaptive {
    fn answered(&mut self, granted: Instant, in_flight: usize, now: Instant) {
        let latency = now.saturating_duration_since(granted);
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            self.floor_before = self.floor_now.take();
            self.window_start = now;
        }
        self.floor_now = Some(self.floor_now.map_or(latency, |f| f.min(latency)));
        let floor = match (self.floor_now, self.floor_before) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        if latency > floor.saturating_mul(2).saturating_add(SLACK) {
            if self.last_cut.is_none_or(|cut| granted > cut) {
                self.limit = (self.limit * CUT).max(self.min);
                self.last_cut = Some(now);
            }
        } else if in_flight as f64 >= self.limit - 1.0 {
            // Growing only when the seats were in use: an idle client learns nothing. An answer
            // as quick as a quiet server's earns a seat; a slower one that still did not queue
            // earns one per limit's worth of answers.
            let step = if latency <= floor.saturating_mul(2) {
                1.0
            } else {
                1.0 / self.limit
            };
            self.limit = (self.limit + step).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One answer of `latency` for a request granted just now, with every seat in use.
    fn answer(s: &mut SeatLimit, now: &mut Instant, latency: Duration) {
        let granted = *now;
        *now += latency;
        let in_flight = s.get();
        s.answered(granted, in_flight, *now);
    }

    #[test]
    fn a_maximum_below_the_adaptive_minimum_is_kept() {
        let mut now = Instant::now();
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 2, now);
        answer(&mut s, &mut now, ms(4));
        answer(&mut s, &mut now, ms(4));
        assert_eq!(s.get(), 2);
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 8, now);
        assert_eq!(s.get(), 8, "starts at the maximum when it is below 32");
        answer(&mut s, &mut now, ms(4));
        answer(&mut s, &mut now, ms(900));
        assert_eq!(s.get(), 6);
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let s = SeatLimit::fixed(0);
        assert_eq!(s.get(), usize::MAX);
        let mut s = SeatLimit::fixed(8);
        let mut now = Instant::now();
        answer(&mut s, &mut now, Duration::from_secs(5));
        assert_eq!(s.get(), 8);
    }

    #[test]
    fn a_server_that_starts_queueing_gets_fewer_requests_down_to_the_minimum() {
        let mut now = Instant::now();
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 0, now);
        assert_eq!(s.get(), 32);
        for _ in 0..50 {
            answer(&mut s, &mut now, ms(4));
        }
        let quiet = s.get();
        assert!(
            quiet >= 32,
            "quiet answers with every seat used do not cut: {quiet}"
        );
        let mut limits = Vec::new();
        for _ in 0..40 {
            answer(&mut s, &mut now, ms(300));
            limits.push(s.get());
        }
        assert!(limits.windows(2).all(|w| w[1] <= w[0]), "{limits:?}");
        assert_eq!(s.get(), ADAPTIVE_MIN, "{limits:?}");
    }

    #[test]
    fn a_configured_minimum_is_where_cuts_stop() {
        let mut now = Instant::now();
        let mut s = SeatLimit::adaptive(12, 0, now);
        answer(&mut s, &mut now, ms(4));
        for _ in 0..40 {
            answer(&mut s, &mut now, ms(300));
        }
        assert_eq!(s.get(), 12);
        let s = SeatLimit::adaptive(64, 0, now);
        assert_eq!(s.get(), 64, "starts at the minimum when it is above 32");
        let s = SeatLimit::adaptive(16, 16, now);
        assert_eq!(s.get(), 16, "a maximum at the minimum is fixed");
        assert!(matches!(s, SeatLimit::Fixed(16)));
    }

    #[test]
    fn answers_to_requests_sent_before_a_cut_do_not_cut_again() {
        let t0 = Instant::now();
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 0, t0);
        s.answered(t0, 32, t0 + ms(4));
        // 32 requests granted together, all slow: one cut, not 32.
        let granted = t0 + ms(10);
        for i in 0..32 {
            s.answered(granted, 32, granted + ms(500 + i));
        }
        assert_eq!(s.get(), 24);
        // A request granted after the cut and slow again cuts again.
        s.answered(granted + ms(600), 24, granted + ms(1100));
        assert_eq!(s.get(), 18);
    }

    #[test]
    fn a_quiet_server_earns_the_seats_back_one_per_round() {
        let mut now = Instant::now();
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 64, now);
        answer(&mut s, &mut now, ms(4));
        for _ in 0..20 {
            answer(&mut s, &mut now, ms(400));
        }
        assert_eq!(s.get(), ADAPTIVE_MIN);
        for _ in 0..30 {
            answer(&mut s, &mut now, ms(5));
        }
        assert_eq!(s.get(), 34, "one seat per answer as quick as a quiet server's");
        let mut slower = SeatLimit::adaptive(ADAPTIVE_MIN, 64, now);
        answer(&mut slower, &mut now, ms(4));
        for _ in 0..20 {
            answer(&mut slower, &mut now, ms(400));
        }
        // 40 s of answers at ten times the quiet latency (the quiet one is still in the window).
        for _ in 0..1000 {
            answer(&mut slower, &mut now, ms(40));
        }
        let back = slower.get();
        assert!(
            (32..64).contains(&back),
            "one seat per round when not quick: {back}"
        );
        for _ in 0..100_000 {
            answer(&mut s, &mut now, ms(5));
        }
        assert_eq!(s.get(), 64, "never above the configured maximum");
    }

    #[test]
    fn an_idle_client_does_not_grow_and_a_slow_server_becomes_the_new_quiet() {
        let t0 = Instant::now();
        let mut s = SeatLimit::adaptive(ADAPTIVE_MIN, 0, t0);
        for i in 0..1000 {
            let at = t0 + ms(10 * i);
            s.answered(at, 1, at + ms(4));
        }
        assert_eq!(s.get(), 32, "one request at a time says nothing about more seats");
        // The server is 100 ms now, steadily: after two windows that is its quiet latency,
        // and answers near it stop cutting.
        let mut now = t0 + Duration::from_secs(20);
        for _ in 0..2 {
            now += WINDOW;
            s.answered(now, 4, now + ms(100));
        }
        assert!(s.get() < 32, "cut while 100 ms was new");
        now += WINDOW;
        let before = s.get();
        for _ in 0..100 {
            answer(&mut s, &mut now, ms(110));
        }
        assert!(s.get() >= before, "{} < {before}", s.get());
    }
}
