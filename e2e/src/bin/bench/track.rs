//! Watch-based timing: when each pod was first seen, first Running and first Ready, as
//! observed by a watch (never by polling), plus percentile helpers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use vnest_e2e::Result;

/// Pods tracked where they were created (virtual pods, direct host pods) are keyed by name.
pub fn by_name(p: &Pod) -> Option<String> {
    Some(p.name_any())
}

/// Host pods are keyed by the name of the virtual pod they copy.
pub fn by_virtual_name(p: &Pod) -> Option<String> {
    p.annotations().get("vnest.dev/object-name").cloned()
}

pub fn host_selector(vns: &str) -> String {
    format!("vnest.dev/namespace={vns}")
}

/// Per pod key: first sight, first `Running` phase, first `Ready=True` condition.
#[derive(Default, Clone)]
pub struct Seen {
    pub created: HashMap<String, Instant>,
    pub running: HashMap<String, Instant>,
    pub ready: HashMap<String, Instant>,
}

/// A running watch; stops when dropped.
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    /// Starts watching pods of `api` matching `selector`, keyed by `key(pod)`; returns once the
    /// watch has listed (so nothing created afterwards can be missed).
    pub async fn start(api: Api<Pod>, selector: &str, key: fn(&Pod) -> Option<String>) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().labels(selector);
        let task = tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let stream = watcher::watcher(api, config);
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let pod = match ev {
                    Ok(Event::Apply(p) | Event::InitApply(p)) => p,
                    Ok(Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let Some(k) = key(&pod) else { continue };
                let now = Instant::now();
                let status = pod.status.as_ref();
                let running = status.and_then(|st| st.phase.as_deref()) == Some("Running");
                let ready = status
                    .and_then(|st| st.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let mut g = s.lock().unwrap_or_else(PoisonError::into_inner);
                g.created.entry(k.clone()).or_insert(now);
                if running {
                    g.running.entry(k.clone()).or_insert(now);
                }
                if ready {
                    g.ready.entry(k).or_insert(now);
                }
            }
        });
        listed_rx
            .await
            .map_err(|_| anyhow::anyhow!("pod watch ended before listing"))?;
        Ok(Self { seen, task })
    }

    pub fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn ready_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready
            .len()
    }

    pub fn running_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
            .len()
    }
}

/// Milliseconds from `from[k]` to `to[k]` for every key in both.
pub fn deltas_ms(from: &HashMap<String, Instant>, to: &HashMap<String, Instant>) -> Vec<f64> {
    from.iter()
        .filter_map(|(k, a)| to.get(k).map(|b| ms(b.saturating_duration_since(*a))))
        .collect()
}

/// Milliseconds since the Unix epoch of a moment taken with `Instant` (to line the watch's
/// times up with the API servers' audit logs, which share this machine's clock).
pub fn epoch_ms(at: Instant) -> f64 {
    let since = Instant::now().saturating_duration_since(at);
    let wall = std::time::SystemTime::now()
        .checked_sub(since)
        .unwrap_or(std::time::UNIX_EPOCH);
    ms(wall.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
}

pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of a sorted slice (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50/p90/p99/max (ms, one decimal) and the count.
pub fn stats(values: &[f64]) -> BTreeMap<&'static str, f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mut out: BTreeMap<&'static str, f64> = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)]
        .into_iter()
        .map(|(k, p)| (k, round1(percentile(&v, p))))
        .collect();
    out.insert("n", v.len() as f64);
    out
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["n"], 3.0);
    }
}
