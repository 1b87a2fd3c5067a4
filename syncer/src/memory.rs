//! Giving memory back after bursts (glibc, Linux).
//!
//! A burst of pods allocates and frees far more than the caches finally keep; glibc keeps the
//! freed pages (one arena per thread, fragmented), so RSS stays at the burst's peak. Two knobs,
//! measured in docs/performance.md: at most two arenas, and `malloc_trim` once a burst is
//! over. On other C libraries both are no-ops.
//!
//! The rest of an idle syncer's RSS was its own code: ~11 of 16 MiB, pages of the program file
//! that starting, loading the caches and the last burst ran (the kernel maps 64 KiB around each
//! page it faults in). Once the syncer has been quiet for a while they are given back
//! ([`release_code_pages`], `MADV_PAGEOUT`): clean pages, read again from the file when that code
//! runs next; an idle syncer runs ~1 MiB of it.

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

/// Gives back the resident pages of this program's read-only mappings (code and constants),
/// so that only what runs from now on is read in again. Returns the bytes advised (0 where not
/// supported: another OS, a kernel before 5.4, no /proc).
pub fn release_code_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        let (Ok(maps), Ok(exe)) = (
            std::fs::read_to_string("/proc/self/maps"),
            std::fs::read_link("/proc/self/exe"),
        ) else {
            return 0;
        };
        let Some(exe) = exe.to_str() else { return 0 };
        let mut advised = 0;
        for (start, end) in read_only_mappings(&maps, exe) {
            #[allow(unsafe_code, reason = "a documented madvise call on our own file mappings")]
            // SAFETY: [start, end) is a whole read-only, file-backed mapping of this process
            // (from /proc/self/maps); MADV_PAGEOUT only reclaims its pages, which are read again
            // from the file on the next access. No memory is unmapped or changed.
            let answer =
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
            if answer == 0 {
                advised += end - start;
            }
        }
        advised
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The address ranges of `exe`'s mappings without write access in a `/proc/self/maps` text
/// (its code, constants and relocated read-only data; never its writable data).
fn read_only_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            // offset, device, inode, then the path (which may contain spaces)
            let path = line.splitn(6, char::is_whitespace).nth(5).map(str::trim)?;
            if path != exe || perms.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
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

/// What to give back at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// Free heap pages: a burst is over, or work goes on without a pause.
    Heap,
    /// Free heap pages and the code's pages ([`release_code_pages`]): quiet for a minute.
    HeapAndCode,
}

/// Whether to trim now: work happened since the last trim and none in the last look (the
/// burst is over), or work has gone on for `MAX_BUSY_LOOKS` looks without a pause. The first
/// quiet look after start trims too (loading the caches is a burst of its own). Code pages go
/// back once the syncer has been quiet for `QUIET_LOOKS_FOR_CODE` looks after some work (a
/// burst that follows closely finds its code still in place), and at most once in
/// `CODE_LOOKS_APART` looks: pods trickling in one by one would otherwise read the same code in
/// again for each.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    /// None before the first trim.
    at_last_trim: Option<u64>,
    at_last_look: u64,
    busy_looks: u32,
    /// Looks in a row without work.
    quiet_looks: u32,
    /// The last time the code was given back; None before that.
    last_code: Option<CodeRelease>,
}

/// When the code was last given back: the work count then, and the looks since.
#[derive(Debug, Clone, Copy)]
struct CodeRelease {
    work_done: u64,
    looks_since: u32,
}

impl TrimPolicy {
    /// Up to this many busy looks in a row without a trim.
    const MAX_BUSY_LOOKS: u32 = 6;
    /// A quiet minute at one look every 10 s.
    const QUIET_LOOKS_FOR_CODE: u32 = 6;
    /// Five minutes.
    const CODE_LOOKS_APART: u32 = 30;

    pub fn look(&mut self, work_done: u64) -> Option<Trim> {
        let quiet = work_done == self.at_last_look;
        self.at_last_look = work_done;
        self.quiet_looks = if quiet {
            self.quiet_looks.saturating_add(1)
        } else {
            0
        };
        if let Some(last) = &mut self.last_code {
            last.looks_since = last.looks_since.saturating_add(1);
        }
        let code_due = self.quiet_looks >= Self::QUIET_LOOKS_FOR_CODE
            && self
                .last_code
                .is_none_or(|last| last.work_done != work_done && last.looks_since >= Self::CODE_LOOKS_APART);
        if code_due {
            self.last_code = Some(CodeRelease {
                work_done,
                looks_since: 0,
            });
            self.at_last_trim = Some(work_done);
            self.busy_looks = 0;
            return Some(Trim::HeapAndCode);
        }
        if self.at_last_trim == Some(work_done) {
            self.busy_looks = 0;
            return None;
        }
        self.busy_looks += 1;
        if quiet || self.busy_looks > Self::MAX_BUSY_LOOKS {
            self.at_last_trim = Some(work_done);
            self.busy_looks = 0;
            return Some(Trim::Heap);
        }
        None
    }
}

/// Trims after each burst of reconciles until `cancel`.
pub async fn release_after_bursts(metrics: Metrics, cancel: CancellationToken) {
    let mut policy = TrimPolicy::default();
    // The first look comes one period after start, not at once: nothing has loaded yet.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + LOOK_EVERY, LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics
            .heap_allocated_bytes
            .set(i64::try_from(heap_allocated()).unwrap_or(i64::MAX));
        if let Some(trim) = policy.look(metrics.reconciles_total()) {
            let started = std::time::Instant::now();
            let released = release_free_memory();
            metrics.memory_releases.with_label_values(&["heap"]).inc();
            let code_bytes = match trim {
                Trim::HeapAndCode => {
                    metrics.memory_releases.with_label_values(&["code"]).inc();
                    release_code_pages()
                }
                Trim::Heap => 0,
            };
            tracing::debug!(
                released,
                code_bytes,
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
    fn trims_once_after_a_burst_and_gives_the_code_back_after_a_quiet_minute() {
        let mut p = TrimPolicy::default();
        assert_eq!(p.look(0), Some(Trim::Heap), "the first quiet look after start");
        assert_eq!(p.look(50), None, "busy: the caches load");
        assert_eq!(p.look(50), Some(Trim::Heap), "quiet after work: trim the heap");
        for _ in 0..4 {
            assert_eq!(p.look(50), None, "idle: no second trim");
        }
        assert_eq!(
            p.look(50),
            Some(Trim::HeapAndCode),
            "a quiet minute: the code goes back"
        );
        for _ in 0..100 {
            assert_eq!(p.look(50), None, "idle: nothing more to give back");
        }
    }

    #[test]
    fn code_goes_back_at_most_once_in_five_minutes() {
        let mut p = TrimPolicy::default();
        // A pod every 8 looks: a quiet minute (6 looks) after each.
        let mut code_looks = Vec::new();
        for i in 0..=90u64 {
            let work = i.div_ceil(8) * 10;
            if p.look(work) == Some(Trim::HeapAndCode) {
                code_looks.push(i);
            }
        }
        assert!(code_looks.len() >= 2, "{code_looks:?}");
        assert!(
            code_looks.windows(2).all(|w| w[1] - w[0] >= 30),
            "at most once in 30 looks: {code_looks:?}"
        );
        // A pod every other look never leaves a quiet minute: the code stays.
        let mut busy = TrimPolicy::default();
        assert!((1..=100u64).all(|i| busy.look(i.div_ceil(2) * 10) != Some(Trim::HeapAndCode)));
        // Long steady work trims the heap only: its code is in use.
        let mut steady = TrimPolicy::default();
        let trims: Vec<_> = (1..=100u64).filter_map(|i| steady.look(i * 10)).collect();
        assert!(
            !trims.is_empty() && trims.iter().all(|t| *t == Trim::Heap),
            "{trims:?}"
        );
    }

    #[test]
    fn the_read_only_mappings_of_the_program_are_found_in_proc_maps() {
        let maps = "\
560659c34000-560659eb7000 r--p 00000000 fe:00 8388653                    /opt/vnest syncer
560659eb7000-56065a8de000 r-xp 00282000 fe:00 8388653                    /opt/vnest syncer
56065a93a000-56065a93e000 rw-p 00d03000 fe:00 8388653                    /opt/vnest syncer
56065a93e000-56065a940000 rw-p 00000000 00:00 0 
7f0000000000-7f0000100000 r-xp 00000000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(
            read_only_mappings(maps, "/opt/vnest syncer"),
            vec![
                (0x5606_59c3_4000, 0x5606_59eb_7000),
                (0x5606_59eb_7000, 0x5606_5a8d_e000)
            ],
            "code and constants; never the writable data, a library or an anonymous mapping"
        );
        assert!(
            read_only_mappings(maps, "/opt/vnest").is_empty(),
            "the whole path must match"
        );
    }

    /// Resident KiB of this program's read-only mappings, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn resident_code_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if ours {
                    kib += rss.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap();
                }
            } else if line.split_whitespace().next().is_some_and(|f| f.contains('-')) {
                ours = !read_only_mappings(line, exe).is_empty();
            }
        }
        kib
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn giving_back_code_pages_lowers_the_resident_code_and_it_still_runs() {
        let before = resident_code_kib();
        let advised = release_code_pages();
        let after = resident_code_kib();
        assert!(advised > 0, "MADV_PAGEOUT needs Linux 5.4");
        assert!(after < before, "resident code {before} -> {after} KiB");
        // Code read in again runs as before.
        let mut p = TrimPolicy::default();
        assert_eq!(p.look(0), Some(Trim::Heap));
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
        let trims = (1..=20u64).filter(|i| p.look(i * 10).is_some()).count();
        assert_eq!(trims, 2, "every {} busy looks", TrimPolicy::MAX_BUSY_LOOKS + 1);
    }
}
