//! What the bench reads besides the API: the syncer process (/proc), its /metrics, and the host
//! API server's audit log (the host's own count of the syncer's requests).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use vnest_e2e::{Result, World, http_get_text};

/// The running syncer process of the local world.
pub struct SyncerProc {
    pid_file: PathBuf,
    pub clock_ticks: f64,
}

/// Memory (KiB) and CPU (seconds, user+system) of the syncer right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_s: f64,
}

impl SyncerProc {
    pub fn new(w: &World) -> Result<Self> {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
        let clock_ticks = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0);
        Ok(Self {
            pid_file: PathBuf::from(format!("{}/pids/syncer.pid", w.env.get("STATE_DIR")?)),
            clock_ticks,
        })
    }

    pub fn pid(&self) -> Result<u32> {
        Ok(std::fs::read_to_string(&self.pid_file)?.trim().parse()?)
    }

    /// The binary the syncer runs: a restart must start this one again (`hack/syncer.sh start`
    /// alone starts the world's debug build).
    pub fn executable(&self) -> Result<PathBuf> {
        let pid = self.pid()?;
        Ok(std::fs::read_link(format!("/proc/{pid}/exe"))?)
    }

    /// How long the syncer process has been running (from /proc: its start in clock ticks
    /// after boot, against the system's uptime).
    pub fn age(&self) -> Result<std::time::Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // starttime is the 22nd field overall, the 20th after the command name's ")".
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let started_ticks: f64 = rest
            .split_whitespace()
            .nth(19)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no start time in /proc/{pid}/stat"))?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")?
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("unreadable /proc/uptime"))?;
        Ok(std::time::Duration::from_secs_f64(
            (uptime - started_ticks / self.clock_ticks).max(0.0),
        ))
    }

    pub fn sample(&self) -> Result<ProcSample> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(ProcSample {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            cpu_s: cpu_ticks_of_stat(&stat).unwrap_or(0.0) / self.clock_ticks,
        })
    }
}

/// The samples of counter `name` in a Prometheus text exposition: each one's labels (name,
/// value, in the exposition's order) and value.
fn samples<'t>(text: &'t str, name: &str) -> Vec<(Vec<(&'t str, &'t str)>, f64)> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
                .collect();
            Some((labels, value.parse().unwrap_or(0.0)))
        })
        .collect()
}

/// The syncer's own count of its host requests, by "verb resource".
pub async fn syncer_host_requests(w: &World) -> Result<BTreeMap<String, f64>> {
    let text = http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?;
    let mut out = BTreeMap::new();
    for (labels, value) in samples(&text, "vnest_syncer_api_requests_total") {
        let label = |k: &str| labels.iter().find(|(n, _)| *n == k).map_or("", |(_, v)| *v);
        if label("cluster") == "host" {
            *out.entry(format!("{} {}", label("verb"), label("resource")))
                .or_default() += value;
        }
    }
    Ok(out)
}

/// Every sample of counter `name` (full name, e.g. `vnest_syncer_reconciles_total`), keyed by
/// its label values joined with " " (e.g. "pods ok").
pub async fn syncer_counter(w: &World, name: &str) -> Result<BTreeMap<String, f64>> {
    let text = http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?;
    Ok(samples(&text, name)
        .into_iter()
        .map(|(labels, value)| {
            let key: Vec<&str> = labels.iter().map(|(_, v)| *v).collect();
            (key.join(" "), value)
        })
        .collect())
}

/// `after - before`, positive entries only.
pub fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

pub fn is_write(verb_resource: &str) -> bool {
    ["create ", "patch ", "update ", "delete ", "deletecollection "]
        .iter()
        .any(|v| verb_resource.starts_with(v))
}

pub fn writes(m: &BTreeMap<String, f64>) -> f64 {
    // `+ 0.0`: an empty f64 sum is -0.0.
    m.iter().filter(|(k, _)| is_write(k)).map(|(_, v)| v).sum::<f64>() + 0.0
}

/// The host API server's audit log (JSON lines, written synchronously: `--audit-log-mode
/// blocking`), filtered to one user.
pub struct AuditLog {
    path: PathBuf,
    pub user: String,
}

/// A position in the audit log: requests received after it are counted.
#[derive(Debug, Clone, Copy)]
pub struct AuditMark {
    offset: u64,
    at: Timestamp,
}

impl AuditLog {
    pub fn new(w: &World) -> Result<Self> {
        let ns = w.env.get("HOST_NAMESPACE")?;
        Ok(Self {
            path: PathBuf::from(w.env.get("HOST_AUDIT_LOG")?),
            user: format!("system:serviceaccount:{ns}:{}", w.vcluster),
        })
    }

    pub fn mark(&self) -> Result<AuditMark> {
        Ok(AuditMark {
            offset: end_of(&self.path)?,
            at: Timestamp::now(),
        })
    }

    /// The syncer's watches that ended since `mark` (the audit log records a watch when it
    /// ends), by [`watch_key`]: each is re-opened unless its process ended too.
    pub fn watches_ended_since(&self, mark: AuditMark) -> Result<Vec<String>> {
        Ok(self
            .syncer_events_since(mark)?
            .iter()
            .filter(|ev| {
                ev["verb"] == "watch"
                    && ev["stageTimestamp"]
                        .as_str()
                        .and_then(|t| t.parse::<Timestamp>().ok())
                        .is_some_and(|t| t >= mark.at)
            })
            .filter_map(watch_key)
            .collect())
    }

    /// The syncer's requests received since `mark`, by "verb resource[/subresource]".
    pub fn count_since(&self, mark: AuditMark) -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for ev in self.syncer_events_since(mark)? {
            let received: Option<Timestamp> = ev["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse().ok());
            if received.is_some_and(|t| t < mark.at) {
                continue; // a long request (watch) that started before the window
            }
            let resource = ev["objectRef"]["resource"].as_str().unwrap_or("-");
            let key = match ev["objectRef"]["subresource"].as_str() {
                Some(sub) => format!("{} {resource}/{sub}", ev["verb"].as_str().unwrap_or("?")),
                None => format!("{} {resource}", ev["verb"].as_str().unwrap_or("?")),
            };
            *out.entry(key).or_default() += 1.0;
        }
        Ok(out)
    }

    /// The syncer's completed requests recorded after `mark`'s offset (a line being written
    /// right now does not parse and is left out).
    fn syncer_events_since(&self, mark: AuditMark) -> Result<Vec<serde_json::Value>> {
        let text = read_since(&self.path, mark.offset)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|ev| ev["user"]["username"] == self.user.as_str() && ev["stage"] == "ResponseComplete")
            .collect())
    }
}

/// The end of a log file (its length), to read what is appended after it.
pub fn end_of(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// What a log file gained after `offset` (all of it when it was rotated meanwhile).
pub fn read_since(path: &Path, offset: u64) -> Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // A rotated log starts again at 0.
    file.seek(SeekFrom::Start(if len >= offset { offset } else { 0 }))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Which watch a watch request opens: its resource and selectors (its resourceVersion and
/// timeout left out), so that a re-open of the same watch has the same key.
pub fn watch_key(ev: &serde_json::Value) -> Option<String> {
    let uri = ev["requestURI"].as_str()?;
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut selectors: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.starts_with("labelSelector=") || kv.starts_with("fieldSelector="))
        .collect();
    selectors.sort_unstable();
    Some(format!("{path}?{}", selectors.join("&")))
}

/// Cumulative bucket counts `(le, count)` of histogram `name{kind=...}` from the syncer.
pub async fn syncer_histogram(w: &World, name: &str, kind: &str) -> Result<Vec<(f64, f64)>> {
    let text = http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?;
    let prefix = format!("{name}_bucket{{kind=\"{kind}\",le=\"");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, tail) = rest.split_once('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, tail.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Quantile `q` (0..1) in milliseconds of the observations made between two readings of a
/// histogram, interpolated linearly inside the bucket like Prometheus' histogram_quantile.
pub fn histogram_quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, c - b)
        })
        .collect();
    let Some(&(_, total)) = counts.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= rank {
            if le.is_infinite() {
                return prev.0 * 1000.0; // beyond the last bound: report the bound
            }
            let inside = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return (prev.0 + (le - prev.0) * inside) * 1000.0;
        }
        prev = (le, c);
    }
    f64::NAN
}

/// Syncer CPU per pod lifecycle (ms): the CPU used in the burst's windows (each a sample at its
/// start and one at its end: the create burst until every pod is Ready, the delete until every
/// host pod is gone), divided by the `pods` of the burst. `None` for no pods, or when a window
/// went backwards (the syncer restarted inside it: its counters began again).
pub fn cpu_ms_per_pod(windows: &[(ProcSample, ProcSample)], pods: usize) -> Option<f64> {
    if pods == 0 || windows.iter().any(|(start, end)| end.cpu_s < start.cpu_s) {
        return None;
    }
    let seconds: f64 = windows.iter().map(|(start, end)| end.cpu_s - start.cpu_s).sum();
    Some(seconds * 1000.0 / pods as f64)
}

/// CPU of every process of the local world (process mode: `$STATE_DIR/pids/<name>.pid`), and of
/// the whole machine, to say who used the CPU of a burst: the host's control plane, the virtual
/// one, the syncer. Empty in container mode (no pid files).
pub struct WorldCpu {
    pids: PathBuf,
    clock_ticks: f64,
}

/// CPU seconds used so far by each world process (by pid-file name), and the machine's busy and
/// total CPU seconds (/proc/stat, all cores).
#[derive(Debug, Clone, Default)]
pub struct WorldCpuSample {
    pub by_process: BTreeMap<String, f64>,
    pub machine_busy_s: f64,
    pub machine_total_s: f64,
}

impl WorldCpu {
    pub fn new(w: &World, syncer: &SyncerProc) -> Result<Self> {
        Ok(Self {
            pids: PathBuf::from(format!("{}/pids", w.env.get("STATE_DIR")?)),
            clock_ticks: syncer.clock_ticks,
        })
    }

    /// Processes whose pid file or /proc entry cannot be read are left out.
    pub fn sample(&self) -> WorldCpuSample {
        let mut by_process = BTreeMap::new();
        for entry in std::fs::read_dir(&self.pids).into_iter().flatten().flatten() {
            let path = entry.path();
            let (Some(name), Some("pid")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let Some(ticks) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok())
                .and_then(|stat| cpu_ticks_of_stat(&stat))
            else {
                continue;
            };
            by_process.insert(name.to_owned(), ticks / self.clock_ticks);
        }
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| machine_ticks(&s))
            .unwrap_or_default();
        WorldCpuSample {
            by_process,
            machine_busy_s: busy / self.clock_ticks,
            machine_total_s: total / self.clock_ticks,
        }
    }
}

/// utime + stime of a /proc/<pid>/stat line (the 14th and 15th fields; 12th and 13th after the
/// command name's ")").
fn cpu_ticks_of_stat(stat: &str) -> Option<f64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total ticks of all cores from the first line of /proc/stat (idle and iowait are not
/// busy).
fn machine_ticks(proc_stat: &str) -> Option<(f64, f64)> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0.0);
    Some((total - idle, total))
}

/// Which part of the world a process belongs to: `host` (its control plane and kwok, the fake
/// kubelets), `virtual` (the measured vcluster's control plane), `syncer`, or `other` (a
/// second vcluster, the provisioner).
fn world_part(process: &str) -> &'static str {
    if process == "syncer" {
        "syncer"
    } else if process == "kwok" || (process.starts_with("host-") && process != "host-provisioner") {
        "host"
    } else if process.starts_with("virtual-") {
        "virtual"
    } else {
        "other"
    }
}

/// CPU ms per pod of each part of the world between two samples, and how busy the machine was
/// (% of all its cores); null figures when nothing was sampled (container mode) or no pods.
pub fn world_cpu_per_pod(before: &WorldCpuSample, after: &WorldCpuSample, pods: usize) -> serde_json::Value {
    let mut parts: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, end) in &after.by_process {
        if let Some(start) = before.by_process.get(name)
            && end >= start
        {
            *parts.entry(world_part(name)).or_default() += end - start;
        }
    }
    let per_pod = |part: &str| {
        (pods > 0 && !parts.is_empty())
            .then(|| (parts.get(part).copied().unwrap_or(0.0) * 1000.0 / pods as f64 * 10.0).round() / 10.0)
    };
    let total = after.machine_total_s - before.machine_total_s;
    let busy_percent = (total > 0.0)
        .then(|| ((after.machine_busy_s - before.machine_busy_s) / total * 1000.0).round() / 10.0);
    serde_json::json!({
        "host_ms": per_pod("host"), "virtual_ms": per_pod("virtual"),
        "syncer_ms": per_pod("syncer"), "other_ms": per_pod("other"),
        "machine_busy_percent": busy_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_cpu_splits_the_processes_into_host_virtual_and_syncer() {
        let sample = |cpu: &[(&str, f64)], busy: f64, total: f64| WorldCpuSample {
            by_process: cpu.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
            machine_busy_s: busy,
            machine_total_s: total,
        };
        let before = sample(
            &[
                ("host-apiserver", 10.0),
                ("kwok", 1.0),
                ("virtual-apiserver", 5.0),
                ("syncer", 2.0),
                ("virtual2-apiserver", 3.0),
                ("host-provisioner", 0.5),
            ],
            100.0,
            400.0,
        );
        let after = sample(
            &[
                ("host-apiserver", 30.0),
                ("kwok", 6.0),
                ("virtual-apiserver", 25.0),
                ("syncer", 8.0),
                ("virtual2-apiserver", 4.0),
                ("host-provisioner", 0.5),
            ],
            175.0,
            500.0,
        );
        let split = world_cpu_per_pod(&before, &after, 1000);
        assert_eq!(split["host_ms"], 25.0);
        assert_eq!(split["virtual_ms"], 20.0);
        assert_eq!(split["syncer_ms"], 6.0);
        assert_eq!(split["other_ms"], 1.0);
        assert_eq!(split["machine_busy_percent"], 75.0);
        let empty = world_cpu_per_pod(&WorldCpuSample::default(), &WorldCpuSample::default(), 1000);
        assert!(empty["host_ms"].is_null() && empty["machine_busy_percent"].is_null());
    }

    #[test]
    fn proc_stat_lines_give_cpu_ticks() {
        let stat = "4242 (kube apiserver) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(cpu_ticks_of_stat(stat), Some(300.0));
        let machine = "cpu  100 5 50 800 20 1 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(machine_ticks(machine), Some((158.0, 978.0)));
    }

    #[test]
    fn samples_read_labels_and_values_of_one_counter() {
        let text = "# TYPE x counter\nvnest_x_total{cluster=\"host\",verb=\"get\"} 3\nvnest_x_total{cluster=\"virtual\",verb=\"list\"} 1.5\nvnest_y_total{a=\"b\"} 9\n";
        let s = samples(text, "vnest_x_total");
        assert_eq!(
            s,
            vec![
                (vec![("cluster", "host"), ("verb", "get")], 3.0),
                (vec![("cluster", "virtual"), ("verb", "list")], 1.5),
            ]
        );
    }

    #[test]
    fn a_reopened_watch_has_the_same_key() {
        let ev = |uri: &str| serde_json::json!({"requestURI": uri});
        let a = watch_key(&ev(
            "/api/v1/namespaces/h/pods?&watch=true&timeoutSeconds=2000&labelSelector=a%3Db&allowWatchBookmarks=true&resourceVersion=5",
        ));
        let b = watch_key(&ev(
            "/api/v1/namespaces/h/pods?&watch=true&timeoutSeconds=3000&labelSelector=a%3Db&resourceVersion=9",
        ));
        let c = watch_key(&ev(
            "/api/v1/namespaces/h/pods?watch=true&fieldSelector=metadata.name%3Dx",
        ));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a.as_deref(),
            Some("/api/v1/namespaces/h/pods?labelSelector=a%3Db")
        );
    }

    #[test]
    fn quantiles_come_from_the_window_only() {
        let before = [(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 10.0)];
        let after = [(0.001, 10.0), (0.002, 110.0), (f64::INFINITY, 110.0)];
        // 100 new observations, all in (1 ms, 2 ms]: the median is interpolated at 1.5 ms.
        let p50 = histogram_quantile_ms(&before, &after, 0.5);
        assert!((p50 - 1.5).abs() < 1e-9, "{p50}");
        assert!(histogram_quantile_ms(&after, &after, 0.5).is_nan());
        assert!(is_write("create pods") && !is_write("list pods"));
    }

    fn at(cpu_s: f64) -> ProcSample {
        ProcSample {
            cpu_s,
            ..ProcSample::default()
        }
    }

    #[test]
    fn cpu_per_pod_sums_the_burst_windows() {
        let windows = [(at(10.0), at(14.0)), (at(20.0), at(24.0))];
        assert_eq!(cpu_ms_per_pod(&windows, 1000), Some(8.0));
        assert_eq!(cpu_ms_per_pod(&windows, 0), None);
        // A restart inside a window: the second sample is of another process.
        assert_eq!(cpu_ms_per_pod(&[(at(30.0), at(1.0))], 10), None);
    }
}
