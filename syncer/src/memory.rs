//! Giving memory back after bursts (glibc).
//!
//! A burst of pods allocates and frees far more than the caches finally keep; glibc keeps the
//! freed pages (one arena per thread, fragmented), so RSS stays at the burst's peak. Two knobs,
//! measured in docs/performance.md: at most two arenas, and `malloc_trim` once a burst is
//! over. On other C libraries both are no-ops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the reconcile count is looked at (a local read; no API request).
const LOOK_EVERY: Duration = Duration::from_secs(10);

/// At most two malloc arenas (glibc's default is 8 per core). Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "glibc's documented tuning call; no pointers involved")]
    // SAFETY: mallopt only sets an allocator parameter; it takes two ints and touches no memory
    // of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed pages to the OS; true when some were.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code, reason = "glibc's documented call; no pointers involved")]
    // SAFETY: malloc_trim walks glibc's own arenas under their locks and only releases free
    // pages; it is safe to call from any thread at any time.
    unsafe {
        return libc::malloc_trim(0) == 1;
    }
    #[allow(unreachable_code)]
    false
}

/// Bytes allocated and not freed (0 where unknown).
pub fn heap_allocated() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(
        unsafe_code,
        reason = "glibc's documented statistics call; no pointers involved"
    )]
    // SAFETY: mallinfo2 returns a struct by value, read under glibc's arena locks.
    unsafe {
        let info = libc::mallinfo2();
        return (info.uordblks + info.hblkhd) as u64;
    }
    #[allow(unreachable_code)]
    0
}

/// Whether to trim now: work happened since the last trim and none in the last look (the
/// burst is over), or work has gone on for `MAX_BUSY_LOOKS` looks without a pause. The first
/// quiet look after start trims too (loading the caches is a burst of its own).
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// None before the first trim.
    at_last_trim: Option<u64>,
    at_last_look: u64,
    busy_looks: u32,
}

impl TrimPolicy {
    /// Up to this many busy looks in a row without a trim.
    const MAX_BUSY_LOOKS: u32 = 6;

    pub fn look(&mut self, work_done: u64) -> bool {
        let quiet = work_done == self.at_last_look;
        self.at_last_look = work_done;
        if self.at_last_trim == Some(work_done) {
            self.busy_looks = 0;
            return false;
        }
        self.busy_looks += 1;
        if quiet || self.busy_looks > Self::MAX_BUSY_LOOKS {
            self.at_last_trim = Some(work_done);
            self.busy_looks = 0;
            return true;
        }
        false
    }
}

/// Trims after each burst of reconciles until `cancel`.
pub async fn release_after_bursts(metrics: Metrics, cancel: CancellationToken) {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics
            .heap_allocated_bytes
            .set(i64::try_from(heap_allocated()).unwrap_or(i64::MAX));
        if policy.look(metrics.reconciles_total()) {
            let started = std::time::Instant::now();
            let released = release_free_memory();
            tracing::debug!(
                released,
                took_ms = started.elapsed().as_millis() as u64,
                "returned free memory"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_burst_and_never_when_idle() {
        let mut p = TrimPolicy::default();
        assert!(p.look(0), "the first quiet look after start (the caches loaded)");
        assert!(!p.look(0), "nothing happened since");
        assert!(!p.look(100), "busy: the burst goes on");
        assert!(p.look(100), "quiet after work: trim");
        assert!(!p.look(100), "idle: no second trim");
        assert!(!p.look(100));
    }

    #[test]
    fn the_heap_figure_counts_what_is_allocated() {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert_eq!(heap_allocated(), 0);
            return;
        }
        // 64 MiB (zeroed: mapped, never touched); other tests running meanwhile free far less.
        let before = heap_allocated();
        let block = vec![0u8; 64 << 20];
        let during = heap_allocated();
        assert!(during >= before + (32 << 20), "{before} -> {during}");
        drop(block);
    }

    #[test]
    fn trims_during_long_steady_work_too() {
        let mut p = TrimPolicy::default();
        let trims = (1..=20u64).filter(|i| p.look(i * 10)).count();
        assert_eq!(trims, 2, "every {} busy looks", TrimPolicy::MAX_BUSY_LOOKS + 1);
    }
}
