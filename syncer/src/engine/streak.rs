//! Retries that come in a streak: how many came before this one, each within [`CALM`] of the
//! previous, and the pause that doubles with them. Shared by the watches' relists after
//! refusals ([`super::watch`]) and after early ends ([`super::unbookmarked`]). Pure: the
//! caller passes the clock.

use std::time::{Duration, Instant};

/// A retry this long after the previous one starts a new streak.
pub const CALM: Duration = Duration::from_secs(300);
/// The longest pause.
pub const PAUSE_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Streak {
    before: u32,
    last: Option<Instant>,
}

impl Streak {
    /// A retry at `now`: how many retries of the streak came before it (0 for the first).
    pub fn next(&mut self, now: Instant) -> u32 {
        if self.last.is_some_and(|last| now.duration_since(last) >= CALM) {
            self.before = 0;
        }
        let before = self.before;
        self.before += 1;
        self.last = Some(now);
        before
    }
}

/// 1 s doubled `n` times, at most [`PAUSE_MAX`].
pub fn doubling(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(PAUSE_MAX)
}
