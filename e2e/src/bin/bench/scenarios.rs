//! The measured scenarios. Each returns plain numbers; `main` assembles the report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use vnest_e2e::{Result, TestNs, World, wait_until};

use crate::timeline;
use crate::track::{Tracker, by_name, by_virtual_name, deltas_ms, host_selector, ms};

/// Generous: 10k pods through two API servers on two cores take minutes.
pub const LONG: Duration = Duration::from_secs(1800);
/// Replicas per Deployment (kube-burner style: N pods in total across Deployments).
const PER_DEPLOYMENT: usize = 100;

fn deployment(name: &str, replicas: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench", "d": name}},
                 "template": {"metadata": {"labels": {"app": "bench", "d": name}},
                              "spec": {"containers": [{"name": "main", "image": "nginx"}]}}}
    }))?)
}

pub fn bare_pod(name: &str, app: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "image": "nginx"}]}
    }))?)
}

/// Creates `n` pods as Deployments of up to 100 replicas in `ns` and waits until `tracker`
/// has seen them all Ready. Returns per-pod startup latencies (first seen → Ready, ms).
pub async fn deployments_ready(client: &Client, ns: &str, n: usize, tracker: &Tracker) -> Result<Vec<f64>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let replicas = left.min(PER_DEPLOYMENT);
        api.create(
            &PostParams::default(),
            &deployment(&format!("bench-{i}"), replicas)?,
        )
        .await?;
        left -= replicas;
        i += 1;
    }
    wait_ready_count(tracker, ns, n).await?;
    let seen = tracker.snapshot();
    Ok(deltas_ms(&seen.created, &seen.ready))
}

/// Creates bare pods `<prefix>-0..n` labelled `app=<app>` with `in_flight` creates at most
/// in flight.
pub async fn create_bare_pods(
    api: Api<Pod>,
    prefix: &'static str,
    app: &'static str,
    n: usize,
    in_flight: usize,
) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (api, pod) = (api.clone(), bare_pod(&format!("{prefix}-{i}"), app)?);
        set.spawn(async move {
            let r = api.create(&PostParams::default(), &pod).await.map(|_| ());
            drop(permit);
            r
        });
        // Reap what finished (a failed create stops the run early).
        while let Some(r) = set.try_join_next() {
            r??;
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Waits until `tracker` has seen `n` pods Ready, with progress every 10 s.
pub async fn wait_ready_count(tracker: &Tracker, ns: &str, n: usize) -> Result<()> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    wait_until(&format!("{n} pods Ready in {ns}"), LONG, || {
        let ready = tracker.ready_count();
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[bench]   {ns}: {ready}/{n} Ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        async move { Ok((ready >= n).then_some(())) }
    })
    .await
}

/// Waits until no pod matching `selector` is left in `ns` of `client`.
pub async fn wait_no_pods(client: &Client, ns: &str, selector: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("pods {selector} gone from {ns}"), LONG, || async {
        let l = api.list(&ListParams::default().labels(selector).limit(1)).await?;
        Ok(l.items.is_empty().then_some(()))
    })
    .await
}

/// Syncer-added latency at a fixed creation rate.
pub struct FixedRate {
    pub rate_per_s: f64,
    pub pods: usize,
    /// Virtual pod first seen → host pod first seen (ms).
    pub down_ms: Vec<f64>,
    /// Host pod first Running → virtual pod first Running (ms).
    pub up_ms: Vec<f64>,
    /// Through vnest only: the per-pod timeline's summary (`timeline::summary`), or why it was
    /// not recorded.
    pub timeline: serde_json::Value,
}

/// Creates `pods` bare pods in a fresh virtual namespace at `rate` pods/s (each create on its
/// own task, so a slow answer never delays the schedule) and times both directions.
/// The per-pod timeline (both API servers' audit logs) is recorded as in the startup burst;
/// `host_user` is the syncer's user on the host.
pub async fn fixed_rate(w: &World, pods: usize, rate: f64, host_user: &str) -> Result<FixedRate> {
    let ns = TestNs::new(&w.virt, "bench-rate").await?;
    let vt = Tracker::start(Api::namespaced(w.virt.clone(), &ns.name), "app=rate", by_name).await?;
    let ht = Tracker::start(
        Api::namespaced(w.host.clone(), &w.host_ns),
        &host_selector(&ns.name),
        by_virtual_name,
    )
    .await?;
    let recorder = timeline::Recorder::start(w, host_user)?;
    paced_creates(Api::namespaced(w.virt.clone(), &ns.name), pods, rate).await?;
    wait_running(&vt, pods).await?;
    wait_ready(&vt, pods).await?;
    let (v, h) = (vt.snapshot(), ht.snapshot());
    let timeline = match recorder {
        Ok(r) => timeline::summary(&r.finish(w, &ns.name, &v.ready).await?),
        Err(why) => json!({"skipped": why}),
    };
    let out = FixedRate {
        rate_per_s: rate,
        pods,
        down_ms: deltas_ms(&v.created, &h.created),
        up_ms: deltas_ms(&h.running, &v.running),
        timeline,
    };
    let name = ns.name.clone();
    ns.delete().await?;
    wait_no_pods(&w.host, &w.host_ns, &host_selector(&name)).await?;
    Ok(out)
}

/// Creates bare pods `rate-0..pods` labelled `app=rate` at `rate` pods/s, each on its own task
/// so a slow answer never delays the schedule. Returns when each create call was made.
async fn paced_creates(api: Api<Pod>, pods: usize, rate: f64) -> Result<HashMap<String, Instant>> {
    let called = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let t0 = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..pods {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let name = format!("rate-{i}");
        let (api, pod, called) = (api.clone(), bare_pod(&name, "rate")?, called.clone());
        tasks.spawn(async move {
            called
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name, Instant::now());
            api.create(&PostParams::default(), &pod).await.map(|_| ())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let called = called
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(called)
}

async fn wait_running(tracker: &Tracker, pods: usize) -> Result<()> {
    wait_until(&format!("{pods} rate pods Running"), LONG, || {
        let n = tracker.running_count();
        async move { Ok((n >= pods).then_some(())) }
    })
    .await
}

/// Waits for the client to see every pod Ready too: the timeline's last milestone (kwok makes
/// a pod Ready with Running, so this is a moment at most).
async fn wait_ready(tracker: &Tracker, pods: usize) -> Result<()> {
    wait_until(&format!("{pods} rate pods Ready"), LONG, || {
        let n = tracker.ready_count();
        async move { Ok((n >= pods).then_some(())) }
    })
    .await
}

/// The same schedule directly on the host, as the baseline the fixed-rate figures stand on:
/// `down_ms` = create call → pod first seen by the watch, `up_ms` = create call → Running.
pub async fn fixed_rate_direct(w: &World, pods: usize, rate: f64) -> Result<FixedRate> {
    let ns = TestNs::new(&w.host, "bench-rate-direct").await?;
    let t = Tracker::start(Api::namespaced(w.host.clone(), &ns.name), "app=rate", by_name).await?;
    let called = paced_creates(Api::namespaced(w.host.clone(), &ns.name), pods, rate).await?;
    wait_running(&t, pods).await?;
    let seen = t.snapshot();
    let name = ns.name.clone();
    ns.delete().await?;
    wait_no_pods(&w.host, &name, "app=rate").await?;
    Ok(FixedRate {
        rate_per_s: rate,
        pods,
        down_ms: deltas_ms(&called, &seen.created),
        up_ms: deltas_ms(&called, &seen.running),
        timeline: serde_json::Value::Null,
    })
}

/// The small namespace's latencies in one fairness run.
#[derive(Default)]
pub struct SmallNs {
    /// Create call → host pod first seen (ms).
    pub to_host_ms: Vec<f64>,
    /// Create call → virtual pod first Running (ms).
    pub to_running_ms: Vec<f64>,
    /// Create call → host pod first Running (ms): the host's share of `to_running_ms` (its
    /// scheduler and kwok serve every namespace's pods in one queue).
    pub to_host_running_ms: Vec<f64>,
    /// Bursts it took to collect the samples (0: none, the namespace was alone).
    pub rounds: usize,
    /// Small pods whose sample was dropped because the burst ended before they ran.
    pub dropped: usize,
    /// The counted pods' per-pod timeline (`timeline::summary`), or why it was skipped.
    pub timeline: serde_json::Value,
    /// The counted pods' names.
    names: Vec<String>,
}

/// Rounds of bursts at most, however few samples they gave (a burst and its deletion take
/// ~1 min with 1000 pods here).
const MAX_ROUNDS: usize = 12;
/// The same for the baseline directly on the host: its bursts run ~35 s and give two samples
/// each (the host serves the burst's pods first), and a baseline that is 100× off the target
/// needs no more than a dozen of them.
const MAX_ROUNDS_DIRECT: usize = 6;

/// Where the fairness scenario creates its pods: through vnest, or directly in host namespaces
/// (the same scenario on the host API server alone: the baseline of what one namespace's burst
/// does to another's pods without vnest, on the same machine).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Vnest,
    Direct,
}

impl Path {
    fn client(self, w: &World) -> &Client {
        match self {
            Path::Vnest => &w.virt,
            Path::Direct => &w.host,
        }
    }

    /// Waits until namespace `ns`'s pods labelled `app` are gone from the host.
    async fn wait_gone(self, w: &World, ns: &str, app: &str) -> Result<()> {
        match self {
            Path::Vnest => wait_no_pods(&w.host, &w.host_ns, &host_selector(ns)).await,
            Path::Direct => wait_no_pods(&w.host, ns, &format!("app={app}")).await,
        }
    }
}

/// The small namespace creates pods one by one (each after the previous one runs) until it has
/// `samples` of them; alone when `greedy` is 0. Otherwise another namespace creates `greedy`
/// pods at once (64 creates in flight), and only the small pods that ran **while the burst was
/// still going** (some greedy pod not Running yet) count; when a burst is over, its namespace
/// is deleted and the next round starts a new one, until there are `samples` (or
/// [`MAX_ROUNDS`] rounds; [`MAX_ROUNDS_DIRECT`] on the host). Through vnest the counted pods also get their per-pod timeline.
pub async fn fairness_run(
    w: &World,
    path: Path,
    greedy: usize,
    samples: usize,
    host_user: &str,
) -> Result<SmallNs> {
    let client = path.client(w);
    let small_ns = TestNs::new(client, "bench-small").await?;
    let recorder = match path {
        Path::Vnest => timeline::Recorder::start(w, host_user)?,
        Path::Direct => Err("directly on the host: no syncer steps".to_string()),
    };
    let vt = Tracker::start(
        Api::namespaced(client.clone(), &small_ns.name),
        "app=small",
        by_name,
    )
    .await?;
    let ht = match path {
        Path::Vnest => Some(
            Tracker::start(
                Api::namespaced(w.host.clone(), &w.host_ns),
                &host_selector(&small_ns.name),
                by_virtual_name,
            )
            .await?,
        ),
        Path::Direct => None,
    };
    let ht = ht.as_ref().unwrap_or(&vt);
    let api: Api<Pod> = Api::namespaced(client.clone(), &small_ns.name);
    let mut out = SmallNs::default();
    let mut next = 0;
    if greedy == 0 {
        while out.to_host_ms.len() < samples {
            let sample = small_pod(&api, &vt, ht, next).await?;
            next += 1;
            out.add(sample);
        }
    }
    let max_rounds = match path {
        Path::Vnest => MAX_ROUNDS,
        Path::Direct => MAX_ROUNDS_DIRECT,
    };
    while greedy > 0 && out.to_host_ms.len() < samples && out.rounds < max_rounds {
        out.rounds += 1;
        let burst = Burst::start(w, path, greedy).await?;
        while !burst.over() && out.to_host_ms.len() < samples {
            let sample = small_pod(&api, &vt, ht, next).await?;
            next += 1;
            if burst.over() {
                out.dropped += 1;
                continue;
            }
            out.add(sample);
        }
        eprintln!(
            "[bench]   fairness round {}: {} samples so far ({} dropped: the burst ended first)",
            out.rounds,
            out.to_host_ms.len(),
            out.dropped
        );
        burst.finish(w).await?;
    }
    let v = vt.snapshot();
    let ready: HashMap<String, Instant> = out
        .names
        .iter()
        .filter_map(|n| Some((n.clone(), *v.ready.get(n)?)))
        .collect();
    out.timeline = match recorder {
        Ok(r) => timeline::summary(&r.finish(w, &small_ns.name, &ready).await?),
        Err(why) => json!({"skipped": why}),
    };
    let s = small_ns.name.clone();
    small_ns.delete().await?;
    path.wait_gone(w, &s, "small").await?;
    Ok(out)
}

impl SmallNs {
    fn add(&mut self, s: Sample) {
        self.names.push(s.name);
        self.to_host_ms.extend(s.to_host);
        self.to_running_ms.extend(s.to_running);
        self.to_host_running_ms.extend(s.to_host_running);
    }
}

/// One small pod's times from its create call (ms).
struct Sample {
    name: String,
    to_host: Option<f64>,
    to_running: Option<f64>,
    to_host_running: Option<f64>,
}

/// Creates small pod `small-<i>` and waits until `vt` sees it run; `ht` watches the host pods
/// (`vt` itself when the pods are created on the host).
async fn small_pod(api: &Api<Pod>, vt: &Tracker, ht: &Tracker, i: usize) -> Result<Sample> {
    let name = format!("small-{i}");
    let t = Instant::now();
    api.create(&PostParams::default(), &bare_pod(&name, "small")?)
        .await?;
    wait_until(&format!("{name} Running"), LONG, || {
        let done = vt.snapshot().running.contains_key(&name);
        async move { Ok(done.then_some(())) }
    })
    .await?;
    let (v, h) = (vt.snapshot(), ht.snapshot());
    let since = |at: Option<&Instant>| at.map(|at| ms(at.saturating_duration_since(t)));
    Ok(Sample {
        to_host: since(h.created.get(&name)),
        to_running: since(v.running.get(&name)),
        to_host_running: since(h.running.get(&name)),
        name,
    })
}

/// One namespace's burst of pods created at once, watched until every one of them runs.
struct Burst {
    ns: TestNs,
    path: Path,
    pods: usize,
    tracker: Tracker,
    creating: tokio::task::JoinHandle<Result<()>>,
}

impl Burst {
    /// Starts creating `pods` pods (64 creates in flight) in a new namespace; returns once a
    /// tenth of them exist.
    async fn start(w: &World, path: Path, pods: usize) -> Result<Self> {
        let ns = TestNs::new(path.client(w), "bench-greedy").await?;
        let api: Api<Pod> = Api::namespaced(path.client(w).clone(), &ns.name);
        let tracker = Tracker::start(api.clone(), "app=greedy", by_name).await?;
        let creating = tokio::spawn(create_bare_pods(api, "greedy", "greedy", pods, 64));
        let want = (pods / 10).max(1);
        wait_until("the greedy burst under way", LONG, || {
            let seen = tracker.snapshot().created.len();
            async move { Ok((seen >= want).then_some(())) }
        })
        .await?;
        Ok(Self {
            ns,
            path,
            pods,
            tracker,
            creating,
        })
    }

    /// Every pod of the burst runs.
    fn over(&self) -> bool {
        self.tracker.running_count() >= self.pods
    }

    /// Waits for the creates and every pod Running, then deletes the namespace and waits until
    /// its host pods are gone.
    async fn finish(self, w: &World) -> Result<()> {
        self.creating.await??;
        let pods = self.pods;
        wait_until("the greedy burst Running", LONG, || {
            let n = self.tracker.running_count();
            async move { Ok((n >= pods).then_some(())) }
        })
        .await?;
        let name = self.ns.name.clone();
        self.ns.delete().await?;
        self.path.wait_gone(w, &name, "greedy").await
    }
}

/// The syncer killed (SIGKILL) and started again with the world unchanged.
pub struct Restart {
    /// The syncer's own figure: process start → every watch listed and every queue drained.
    pub resync_s: f64,
    /// Kill → caught up, as seen from outside (includes the start script's token issue).
    pub wall_s: f64,
    /// Host writes during the resync: by the host's audit log and by the syncer's metrics.
    pub audit_writes: f64,
    pub syncer_writes: f64,
    pub audit_requests: BTreeMap<String, f64>,
}

/// Restarts the binary that ran before (not whatever `hack/syncer.sh` would pick): a bench run
/// without `VNEST_OVERRIDE` in its environment measured its restart, and everything after it,
/// on the debug build.
pub async fn restart(
    w: &World,
    audit: &crate::probe::AuditLog,
    syncer: &crate::probe::SyncerProc,
) -> Result<Restart> {
    let repo = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let script = format!("{repo}/hack/syncer.sh");
    let binary = syncer.executable()?;
    let mark = audit.mark()?;
    let t0 = Instant::now();
    let status = std::process::Command::new(&script)
        .args(["stop", "KILL"])
        .status()?;
    anyhow::ensure!(status.success(), "{script} stop KILL failed");
    let status = std::process::Command::new(&script)
        .arg("start")
        .env("VNEST_OVERRIDE", &binary)
        .status()?;
    anyhow::ensure!(status.success(), "{script} start failed");
    let now = syncer.executable()?;
    anyhow::ensure!(
        now == binary,
        "the restarted syncer runs {} instead of {}",
        now.display(),
        binary.display()
    );
    let resync_s = wait_until("the restarted syncer caught up", LONG, || async {
        let v = w
            .metric("vnest_syncer_initial_sync_seconds", &[])
            .await
            .unwrap_or(0.0);
        Ok((v > 0.0).then_some(v))
    })
    .await?;
    let wall_s = t0.elapsed().as_secs_f64();
    let audit_requests = audit.count_since(mark)?;
    let syncer = crate::probe::syncer_host_requests(w).await?;
    Ok(Restart {
        resync_s,
        wall_s,
        audit_writes: crate::probe::writes(&audit_requests),
        syncer_writes: crate::probe::writes(&syncer),
        audit_requests,
    })
}
