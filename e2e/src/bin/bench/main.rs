//! `make bench`: measures vnest against the same host, side by side in one run, on the local
//! control planes (kwok nodes). See docs/performance.md for what each figure means.
//!
//! 1. Pod startup (kube-burner style: N pods across Deployments of ≤100 replicas), first seen →
//!    Ready by a watch, directly in a host namespace vs in the virtual cluster; p50/p90/p99 and
//!    the ratio. The syncer-added latency of the same burst (virtual seen → host seen).
//! 2. Syncer-added latency at a fixed creation rate (default 20 pods/s), both directions.
//! 3. Host API cost: the syncer's requests counted by the HOST API server (audit log) and by
//!    the syncer itself, per pod lifecycle and per idle minute.
//! 4. Syncer RSS (idle: after its quiet minute and 25 s after its start; loaded, after delete,
//!    peak) and CPU seconds.
//! 5. Restart: SIGKILL with N pods synced; time to caught up; host writes meanwhile.
//! 6. Fairness: a greedy namespace's burst vs a small namespace's pods one by one.
//! 7. Services burst (ClusterIP equality, recreates) and DNS answer latency.
//! 8. The kubelet endpoint's streams: `kubectl logs` of a 64 MiB log and a 64 MiB port-forward
//!    upload through vnest vs directly against the host pod (MiB/s, ratio), and the added time
//!    to first byte of a small log (8 MiB with `--quick`).
//! 9. Restart at scale (`restart10k`, last): `--restart-pods` pods (10 000) Running through
//!    vnest, then three SIGKILLs and starts of the syncer; resync time, host writes, CPU, RSS.
//!
//! Writes `.e2e/bench/latest.json`, and `report.md` + PNG charts into
//! `.e2e/bench/results/<time>-<N>pods/`; prints a summary. A full run (every scenario, not
//! `--quick`, not `--no-docs`) also rewrites the generated section of `docs/performance.md`
//! and its charts `docs/performance-*.png`.

#![recursion_limit = "256"]

mod chart;
mod kubelet;
mod probe;
mod report;
mod restart;
mod scenarios;
mod table;
mod timeline;
mod track;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chart::Series;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use vnest_e2e::{Result, TestNs, World, http_get_text, wait_until, wait_until_every};

use probe::{AuditLog, SyncerProc, diff, syncer_host_requests, writes};
use scenarios::{Path, SmallNs};
use track::{Tracker, by_name, by_virtual_name, deltas_ms, host_selector, round1, round2, stats};

struct Args {
    pods: usize,
    services: usize,
    rate: f64,
    rate_pods: usize,
    greedy: usize,
    small: usize,
    restart_pods: usize,
    idle: Duration,
    kube_burner: bool,
    only: Vec<String>,
    quick: bool,
    no_docs: bool,
}

/// The syncer's age at its first sample (right after its start): two of its memory looks
/// (10 s each) and a margin.
const IDLE_SETTLE: Duration = Duration::from_secs(25);

/// Longest wait for a freshly started syncer to give its code pages back (it does after a
/// quiet minute: ~75 s after its start), and how long after that its idle RSS is sampled (the
/// idle work, watch bookmarks and probes, faults some code back in).
const QUIET_RELEASE_TIMEOUT: Duration = Duration::from_secs(180);
const QUIET_SAMPLE_AFTER: Duration = Duration::from_secs(30);

/// Scenario groups `--only` can pick.
const SCENARIOS: [&str; 6] = ["startup", "rate", "fairness", "services", "kubelet", "restart10k"];

/// SIGKILLs of the restart-at-scale scenario.
const RESTART_ROUNDS: usize = 3;

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }

    /// Why this run leaves `docs/performance.md` alone, if it does: the page shows full runs.
    fn skips_docs(&self) -> Option<&'static str> {
        if self.no_docs {
            Some("--no-docs")
        } else if self.quick {
            Some("a --quick run")
        } else if SCENARIOS.iter().any(|s| !self.runs(s)) {
            Some("not every scenario ran (--only)")
        } else {
            None
        }
    }
}

/// One path's fairness figures: the small namespace alone and beside the bursts.
fn fairness_figures(alone: &SmallNs, loaded: &SmallNs) -> serde_json::Map<String, Value> {
    let host = (stats(&alone.to_host_ms), stats(&loaded.to_host_ms));
    let run = (stats(&alone.to_running_ms), stats(&loaded.to_running_ms));
    match json!({"rounds": loaded.rounds, "dropped": loaded.dropped,
           "small_to_host_ms_alone": host.0, "small_to_host_ms_loaded": host.1,
           "small_to_running_ms_alone": run.0, "small_to_running_ms_loaded": run.1,
           "small_to_host_running_ms_alone": stats(&alone.to_host_running_ms),
           "small_to_host_running_ms_loaded": stats(&loaded.to_host_running_ms),
           "to_host_p99_ratio": round2(host.1["p99"] / host.0["p99"]),
           "to_running_p99_ratio": round2(run.1["p99"] / run.0["p99"]),
           "timeline_alone": alone.timeline, "timeline_loaded": loaded.timeline})
    {
        Value::Object(figures) => figures,
        _ => serde_json::Map::new(),
    }
}

/// The fairness baseline (the small namespace alone) takes this many samples per loaded one:
/// they are cheap (~60 ms each), and with only as many as the loaded run's 50 its p99 was the
/// maximum, so one slow sample decided the ratio.
const ALONE_SAMPLES_PER_LOADED: usize = 4;

const USAGE: &str = "usage: bench [--pods N] [--restart-pods N] [--quick] [--rate PODS_PER_S] [--only startup,rate,fairness,services,kubelet,restart10k] [--kube-burner] [--no-docs]";

fn args() -> Result<Args> {
    let mut a = Args {
        pods: 1000,
        services: 200,
        rate: 20.0,
        rate_pods: 1000,
        greedy: 1000,
        small: 50,
        restart_pods: restart::GOAL_PODS as usize,
        idle: Duration::from_secs(60),
        kube_burner: false,
        only: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        quick: false,
        no_docs: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> Result<f64> {
        v.and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a number; {USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--pods" => a.pods = number(it.next(), "--pods")? as usize,
            "--rate" => a.rate = number(it.next(), "--rate")?,
            "--services" => a.services = number(it.next(), "--services")? as usize,
            "--restart-pods" => a.restart_pods = number(it.next(), "--restart-pods")? as usize,
            "--kube-burner" => a.kube_burner = true,
            "--no-docs" => a.no_docs = true,
            "--only" => {
                let list = it.next().unwrap_or_default();
                a.only = list.split(',').map(str::to_owned).collect();
                if let Some(bad) = a.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    anyhow::bail!(
                        "unknown scenario {bad:?}: pick from {}; {USAGE}",
                        SCENARIOS.join(",")
                    );
                }
            }
            "--quick" => {
                a.quick = true;
                a.pods = 50;
                a.services = 20;
                a.rate_pods = 100;
                a.greedy = 100;
                a.small = 5;
                a.restart_pods = a.restart_pods.min(100);
                a.idle = Duration::from_secs(15);
            }
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    anyhow::ensure!(a.pods > 0 && a.rate > 0.0, "{USAGE}");
    a.rate_pods = a.rate_pods.min(a.pods.max(100));
    Ok(a)
}

/// The syncer's RSS once idle: it gives its code pages back after a quiet minute
/// (`vnest_syncer_memory_releases_total{what="code"}`), then runs what an idle syncer runs for
/// [`QUIET_SAMPLE_AFTER`]. None (and said) when no release came within
/// [`QUIET_RELEASE_TIMEOUT`]. Its `/metrics` is read every 2 s: the scrapes are work of the
/// syncer's too.
async fn quiet_sample(w: &World, syncer: &SyncerProc) -> Result<Option<probe::ProcSample>> {
    step("0/8 idle syncer: waiting for its quiet minute (code pages given back)");
    let released = wait_until_every(
        "the syncer's code release",
        QUIET_RELEASE_TIMEOUT,
        Duration::from_secs(2),
        || async {
            let releases = probe::syncer_counter(w, "vnest_syncer_memory_releases_total").await?;
            Ok((releases.get("code").copied().unwrap_or(0.0) >= 1.0).then_some(()))
        },
    )
    .await;
    if let Err(e) = released {
        eprintln!("[bench]   {e:#}: idle RSS not sampled");
        return Ok(None);
    }
    tokio::time::sleep(QUIET_SAMPLE_AFTER).await;
    let sample = syncer.sample()?;
    eprintln!(
        "[bench]   idle RSS {} KiB, {} s after the code release",
        sample.rss_kib,
        QUIET_SAMPLE_AFTER.as_secs()
    );
    Ok(Some(sample))
}

fn step(what: &str) {
    eprintln!("[bench] == {what}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let w = World::connect().await?;
    let n = a.pods;
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    let syncer = SyncerProc::new(&w)?;
    let binary = syncer.executable()?;
    eprintln!(
        "[bench] {n} pods, direct on the host vs through vnest ({cores} cores); scenarios: {}; syncer: {}",
        a.only.join(","),
        binary.display()
    );
    // The first sample is of a syncer that has settled after its start: its caches loaded and
    // its first heap trim done (syncer/src/memory.rs looks every 10 s), not of one still
    // loading; the idle one comes after its quiet minute. The make target has just restarted it.
    let settled = IDLE_SETTLE.saturating_sub(syncer.age()?);
    if !settled.is_zero() {
        eprintln!(
            "[bench] letting the freshly started syncer settle {:.0} s before its first sample",
            settled.as_secs_f64()
        );
        tokio::time::sleep(settled).await;
    }
    let started = syncer.sample()?;
    let idle = quiet_sample(&w, &syncer).await?;
    // The run's CPU is counted from here: the quiet wait's idle minutes are not the run's.
    let first = syncer.sample()?;
    // Host watches the syncer re-opens over the whole run (a watch ends at its server-side
    // timeout or on an error); the idle minute alone is too short to see a 30-60 min timeout.
    let run_audit = AuditLog::new(&w)?;
    let (run_mark, run_start) = (run_audit.mark()?, Instant::now());
    let mut result = serde_json::Map::new();
    result.insert("pods".into(), json!(n));
    result.insert("cores".into(), json!(cores));
    result.insert("syncer_binary".into(), json!(binary.display().to_string()));
    result.insert("syncer_rss_idle_kib".into(), json!(idle.map(|s| s.rss_kib)));
    result.insert("syncer_rss_started_kib".into(), json!(started.rss_kib));
    let mut startup_series = (Vec::new(), Vec::new());
    let mut timeline_series = Vec::new();
    if a.runs("startup") {
        let (fragment, direct, vnest, steps) = startup_cost_restart(&w, &a, &syncer, first).await?;
        timeline_series = steps;
        result.extend(fragment);
        startup_series = (direct, vnest);
    }
    let mut rate_series = (Vec::new(), Vec::new());
    if a.runs("rate") {
        step(&format!(
            "2/8 syncer-added latency: {} pods at {} pods/s",
            a.rate_pods, a.rate
        ));
        let hist = |name: &'static str| probe::syncer_histogram(&w, name, "pods");
        let (prep_before, lag_before) = (
            hist("vnest_syncer_sync_prepare_seconds").await?,
            hist("vnest_syncer_sync_lag_seconds").await?,
        );
        let rate = scenarios::fixed_rate(&w, a.rate_pods, a.rate, &AuditLog::new(&w)?.user).await?;
        let of_what = format!("{} bare pods at {} pods/s", rate.pods, rate.rate_per_s);
        if let Some(md) = timeline::markdown(&rate.timeline, &of_what) {
            eprintln!("[bench]   {md}");
        }
        let direct = scenarios::fixed_rate_direct(&w, a.rate_pods, a.rate).await?;
        let (prep_after, lag_after) = (
            hist("vnest_syncer_sync_prepare_seconds").await?,
            hist("vnest_syncer_sync_lag_seconds").await?,
        );
        let q = |b: &[(f64, f64)], a: &[(f64, f64)], p| round2(probe::histogram_quantile_ms(b, a, p));
        let (down, up) = (stats(&rate.down_ms), stats(&rate.up_ms));
        result.insert("sync_lag_p50_ms".into(), json!(down["p50"]));
        result.insert("sync_lag_p99_ms".into(), json!(down["p99"]));
        result.insert(
            "fixed_rate".into(),
            json!({"pods": rate.pods, "pods_per_s": rate.rate_per_s, "sync_lag_ms": down, "status_lag_ms": up,
                   "timeline": rate.timeline,
                   "direct_create_to_seen_ms": stats(&direct.down_ms),
                   "direct_create_to_running_ms": stats(&direct.up_ms),
                   "syncer_histograms": {
                       "prepare_p50_ms": q(&prep_before, &prep_after, 0.5),
                       "prepare_p99_ms": q(&prep_before, &prep_after, 0.99),
                       "to_created_p50_ms": q(&lag_before, &lag_after, 0.5),
                       "to_created_p99_ms": q(&lag_before, &lag_after, 0.99)}}),
        );
        rate_series = (rate.down_ms, rate.up_ms);
    }
    if a.runs("fairness") {
        step(&format!(
            "6/8 fairness: {} small pods one by one alone, then {} beside bursts of {} (as many as it takes)",
            a.small * ALONE_SAMPLES_PER_LOADED,
            a.small,
            a.greedy
        ));
        let host_user = AuditLog::new(&w)?.user;
        let alone_n = a.small * ALONE_SAMPLES_PER_LOADED;
        let mut fairness = serde_json::Map::new();
        for path in [Path::Vnest, Path::Direct] {
            if path == Path::Direct {
                eprintln!("[bench]   the same directly on the host (the baseline without vnest)");
            }
            let alone = scenarios::fairness_run(&w, path, 0, alone_n, &host_user).await?;
            let loaded = scenarios::fairness_run(&w, path, a.greedy, a.small, &host_user).await?;
            let figures = fairness_figures(&alone, &loaded);
            match path {
                Path::Vnest => fairness.extend(figures),
                Path::Direct => {
                    fairness.insert("direct".into(), figures.into());
                }
            }
        }
        fairness.insert("greedy_pods".into(), a.greedy.into());
        fairness.insert("small_pods".into(), a.small.into());
        fairness.insert("alone_pods".into(), alone_n.into());
        result.insert("fairness".into(), fairness.into());
    }
    if a.runs("services") {
        step(&format!("7/8 {} Services and DNS", a.services));
        let services_json = services(&w, a.services).await?;
        result.insert(
            "dns_answer_p50_ms".into(),
            services_json["dns_answer_ms"]["p50"].clone(),
        );
        result.insert(
            "dns_answer_p99_ms".into(),
            services_json["dns_answer_ms"]["p99"].clone(),
        );
        result.insert("networking".into(), services_json);
    }
    if a.runs("kubelet") {
        let sizes = kubelet::Sizes::new(a.quick);
        step(&format!(
            "8/8 kubelet endpoint: {} MiB kubectl logs and port-forward, time to first byte, vnest vs direct",
            sizes.mib()
        ));
        result.insert("kubelet".into(), kubelet::run(&w, sizes).await?);
    }
    if a.kube_burner {
        step("kube-burner podLatency on both sides (cross-check)");
        result.insert("kube_burner".into(), kube_burner(&w, n).await?);
    }
    let watches = run_audit.watches_ended_since(run_mark)?;
    let distinct = watches.iter().collect::<std::collections::HashSet<_>>().len();
    // The restart scenario's SIGKILL ends every watch once: those ends are not re-opens.
    let starts = usize::from(result.contains_key("restart_resync_s"));
    let reopens = watches.len().saturating_sub(distinct * starts);
    let minutes = run_start.elapsed().as_secs_f64() / 60.0;
    eprintln!(
        "[bench] host watches re-opened during the run: {reopens} in {minutes:.1} min ({} watch ends, {distinct} watches)",
        watches.len()
    );
    result.insert(
        "host_rewatches_per_min_run".into(),
        json!({"per_min": round2(reopens as f64 / minutes.max(1.0 / 60.0)), "reopens": reopens,
               "minutes": round1(minutes), "watches": distinct}),
    );
    let end = syncer.sample()?;
    let peak = result
        .get("syncer_rss_peak_kib")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .max(end.hwm_kib);
    result.insert("syncer_rss_peak_kib".into(), json!(peak));
    // CPU: the process that ran the scenarios after the restart (if any) from its start, plus
    // what the first process used before the restart.
    let before_restart = result.get("syncer_cpu_s_before_restart").and_then(Value::as_f64);
    let cpu = match before_restart {
        Some(b) => b + end.cpu_s,
        None => end.cpu_s - first.cpu_s,
    };
    result.insert("syncer_cpu_s".into(), json!(round2(cpu)));
    // Last: its restarts end every watch and start new processes, so the run's watch, CPU and
    // peak figures above are taken before it.
    if a.runs("restart10k") {
        step(&format!(
            "9/9 restart at scale: {} pods through vnest, {RESTART_ROUNDS} SIGKILLs of the syncer",
            a.restart_pods
        ));
        let scale = restart::run(&w, &syncer, a.restart_pods, RESTART_ROUNDS).await?;
        for key in ["resync_s_median", "resync_s_max", "host_writes_max"] {
            result.insert(format!("restart_scale_{key}"), scale[key].clone());
        }
        result.insert("restart_scale".into(), scale);
    }

    // ---- report ----
    let result = Value::Object(result);
    let base = format!("{}/../.e2e/bench", env!("CARGO_MANIFEST_DIR"));
    let stamp = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = format!("{base}/results/{stamp}-{n}pods");
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_string_pretty(&result)?;
    std::fs::write(format!("{base}/latest.json"), &text)?;
    std::fs::write(format!("{dir}/result.json"), &text)?;
    // (file name, what it shows) of each chart drawn.
    let mut charts: Vec<(&str, String)> = Vec::new();
    if !startup_series.0.is_empty() {
        let title = format!("Pod startup (first seen -> Ready), {n} pods");
        chart::write_cdf_png(
            std::path::Path::new(&format!("{dir}/startup.png")),
            &title,
            &[
                Series {
                    label: "direct on the host",
                    values_ms: &startup_series.0,
                },
                Series {
                    label: "through vnest",
                    values_ms: &startup_series.1,
                },
            ],
        )?;
        charts.push(("startup.png", title));
    }
    let steps = timeline::chart_series(&timeline_series);
    if steps.iter().any(|(_, v)| !v.is_empty()) {
        let title = format!("Where a pod's time goes through vnest, {n}-pod burst (each step's share)");
        let series: Vec<Series<'_>> = steps
            .iter()
            .map(|(label, v)| Series { label, values_ms: v })
            .collect();
        chart::write_cdf_png(
            std::path::Path::new(&format!("{dir}/timeline.png")),
            &title,
            &series,
        )?;
        charts.push(("timeline.png", title));
    }
    if !rate_series.0.is_empty() {
        let title = format!("Syncer-added latency at {} pods/s", a.rate);
        chart::write_cdf_png(
            std::path::Path::new(&format!("{dir}/sync-lag.png")),
            &title,
            &[
                Series {
                    label: "virtual -> host create",
                    values_ms: &rate_series.0,
                },
                Series {
                    label: "host -> virtual Running",
                    values_ms: &rate_series.1,
                },
            ],
        )?;
        charts.push(("sync-lag.png", title));
    }
    let machine = describe_machine(cores);
    let mut md = report::markdown_table(
        &format!("vnest bench, {n} pods"),
        &machine,
        &report::rows(&result),
    );
    for t in report::timeline_sections(&result) {
        md.push('\n');
        md.push_str(&t);
    }
    std::fs::write(format!("{dir}/report.md"), &md)?;
    std::fs::write(format!("{base}/latest.md"), &md)?;
    for (f, _) in &charts {
        std::fs::copy(format!("{dir}/{f}"), format!("{base}/latest-{f}"))?;
    }
    println!("{text}");
    println!("{md}");
    let file_names: Vec<&str> = charts.iter().map(|(f, _)| *f).collect();
    eprintln!(
        "[bench] wrote {base}/latest.json, latest.md and {dir}/ (report.md {})",
        file_names.join(" ")
    );
    match a.skips_docs() {
        Some(why) => eprintln!("[bench] docs/performance.md left as it is: {why}"),
        None => {
            let run = report::Run {
                when: k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%d %H:%M UTC")
                    .to_string(),
                machine,
                scenarios: a.only.join(","),
                charts: Vec::new(),
            };
            let page = write_docs(&result, run, &dir, &charts)?;
            eprintln!("[bench] rewrote the generated section of {page}");
        }
    }
    Ok(())
}

/// `docs/performance.md`: its generated section from this run, and its charts copied beside it
/// as `performance-<chart>.png`. Returns the page's path.
fn write_docs(result: &Value, mut run: report::Run, dir: &str, charts: &[(&str, String)]) -> Result<String> {
    let docs = format!("{}/../docs", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&docs)?;
    for (file, title) in charts {
        let name = format!("performance-{file}");
        std::fs::copy(format!("{dir}/{file}"), format!("{docs}/{name}"))?;
        run.charts.push((title.clone(), name));
    }
    let page = format!("{docs}/performance.md");
    let current = match std::fs::read_to_string(&page) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("cannot read {page}: {e}"),
    };
    let section = report::performance_section(result, &run);
    std::fs::write(&page, report::splice(current.as_deref(), &section))?;
    Ok(page)
}

/// "2 cores, 24 GiB, x86_64" (memory from /proc/meminfo, left out when unreadable).
fn describe_machine(cores: usize) -> String {
    let gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((kib / 1024.0 / 1024.0).round())
    });
    match gib {
        Some(gib) => format!("{cores} cores, {gib} GiB, {}", std::env::consts::ARCH),
        None => format!("{cores} cores, {}", std::env::consts::ARCH),
    }
}

/// The startup scenario's JSON fragment, the direct and vnest startup series (ms) and the
/// per-pod timeline's steps (label, ms per pod).
type StartupOutcome = (
    serde_json::Map<String, Value>,
    Vec<f64>,
    Vec<f64>,
    Vec<(&'static str, Vec<f64>)>,
);

/// Scenarios 1, 3, 4, 5 on one set of N pods: startup direct vs vnest, host cost of create,
/// idle and delete, memory, restart with N pods synced. Returns the JSON fragment and the two
/// startup latency series.
async fn startup_cost_restart(
    w: &World,
    a: &Args,
    syncer: &SyncerProc,
    first: probe::ProcSample,
) -> Result<StartupOutcome> {
    let n = a.pods;
    let audit = AuditLog::new(w)?;
    let world_cpu = probe::WorldCpu::new(w, syncer)?;
    step(&format!("1/8 startup of {n} pods directly on the host"));
    let hns = TestNs::new(&w.host, "bench-direct").await?;
    let direct_t = Tracker::start(Api::namespaced(w.host.clone(), &hns.name), "app=bench", by_name).await?;
    let t = Instant::now();
    let world_before = world_cpu.sample();
    let direct = scenarios::deployments_ready(&w.host, &hns.name, n, &direct_t).await?;
    let direct_cpu = probe::world_cpu_per_pod(&world_before, &world_cpu.sample(), n);
    let direct_s = t.elapsed().as_secs_f64();
    drop(direct_t);
    // Namespace deletion (one deletecollection) rather than one GC delete per pod at the
    // controller manager's 20 QPS: minutes less at 10k pods, the same for both sides.
    let hname = hns.name.clone();
    hns.delete().await?;
    scenarios::wait_no_pods(&w.host, &hname, "app=bench").await?;

    step(&format!("1/8 startup of {n} pods through vnest"));
    let vns = TestNs::new(&w.virt, "bench-vnest").await?;
    let cpu_create = syncer.sample()?;
    let audit_create = audit.mark()?;
    let recorder = timeline::Recorder::start(w, &audit.user)?;
    let syncer_before = syncer_host_requests(w).await?;
    let diag_before = BurstDiagnostics::read(w).await?;
    let virt_t = Tracker::start(Api::namespaced(w.virt.clone(), &vns.name), "app=bench", by_name).await?;
    let host_t = Tracker::start(
        Api::namespaced(w.host.clone(), &w.host_ns),
        &host_selector(&vns.name),
        by_virtual_name,
    )
    .await?;
    let t = Instant::now();
    let world_before = world_cpu.sample();
    let vnest = scenarios::deployments_ready(&w.virt, &vns.name, n, &virt_t).await?;
    let vnest_cpu = probe::world_cpu_per_pod(&world_before, &world_cpu.sample(), n);
    eprintln!(
        "[bench]   CPU per pod in the bursts (ms) and machine busy (%): direct {direct_cpu}, vnest {vnest_cpu}"
    );
    let vnest_s = t.elapsed().as_secs_f64();
    let (v, h) = (virt_t.snapshot(), host_t.snapshot());
    let burst_down = deltas_ms(&v.created, &h.created);
    let burst_up = deltas_ms(&h.ready, &v.ready);
    drop((virt_t, host_t));
    let audit_create_reqs = audit.count_since(audit_create)?;
    let (timeline, timeline_series) = match recorder {
        Ok(r) => {
            let pods = r.finish(w, &vns.name, &v.ready).await?;
            let series = timeline::step_series(&pods);
            (timeline::summary(&pods), series)
        }
        Err(why) => (json!({"skipped": why}), Vec::new()),
    };
    if let Some(md) = timeline::markdown(&timeline, &format!("the {n}-pod burst")) {
        eprintln!("[bench]   {md}");
    }
    let syncer_create_reqs = diff(&syncer_host_requests(w).await?, &syncer_before);
    let loaded = syncer.sample()?;
    let diagnostics = BurstDiagnostics::read(w).await?.since(&diag_before);
    eprintln!("[bench]   syncer during the burst: {diagnostics}");

    step(&format!(
        "3/8 idle for {} s with {n} pods synced",
        a.idle.as_secs()
    ));
    let audit_idle = audit.mark()?;
    let syncer_idle_before = syncer_host_requests(w).await?;
    let cpu_idle_before = syncer.sample()?.cpu_s;
    tokio::time::sleep(a.idle).await;
    let per_min = |total: f64| total * 60.0 / a.idle.as_secs_f64();
    // Watches only: a watch the server ends (its request timeout) and the client re-opens is
    // not polling; it is reported apart.
    let not_watch = |m: &std::collections::BTreeMap<String, f64>| -> (f64, f64) {
        let watch: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("watch "))
            .map(|(_, v)| v)
            .sum();
        (m.values().sum::<f64>() - watch + 0.0, watch + 0.0)
    };
    let (idle_audit, _) = not_watch(&audit.count_since(audit_idle)?);
    let (idle_syncer, idle_rewatches) =
        not_watch(&diff(&syncer_host_requests(w).await?, &syncer_idle_before));
    let synced = syncer.sample()?;
    let idle_cpu_s = synced.cpu_s - cpu_idle_before;

    step(&format!(
        "5/8 SIGKILL and restart of the syncer with {n} pods synced"
    ));
    let before_kill = syncer.sample()?;
    let restart = scenarios::restart(w, &audit, syncer).await?;
    let after_restart = syncer.sample()?;
    eprintln!(
        "[bench]   caught up in {:.2} s (syncer's own figure; {:.2} s from kill incl. the start script), host writes: audit {} / syncer {}",
        restart.resync_s, restart.wall_s, restart.audit_writes, restart.syncer_writes
    );

    step(&format!("1/8 deleting the {n} pods through vnest"));
    let audit_delete = audit.mark()?;
    let cpu_delete = syncer.sample()?;
    let syncer_before_delete = syncer_host_requests(w).await?;
    let vname = vns.name.clone();
    vns.delete().await?;
    scenarios::wait_no_pods(&w.host, &w.host_ns, &host_selector(&vname)).await?;
    let audit_delete_reqs = audit.count_since(audit_delete)?;
    let syncer_delete_reqs = diff(&syncer_host_requests(w).await?, &syncer_before_delete);
    let after_delete = syncer.sample()?;
    let cpu_per_pod = probe::cpu_ms_per_pod(&[(cpu_create, loaded), (cpu_delete, after_delete)], n);
    eprintln!("[bench]   syncer CPU per pod lifecycle (create + delete): {cpu_per_pod:.2?} ms");

    let writes_per_pod = (writes(&audit_create_reqs) + writes(&audit_delete_reqs)) / n as f64;
    let syncer_writes_per_pod = (writes(&syncer_create_reqs) + writes(&syncer_delete_reqs)) / n as f64;
    let (ds, vs) = (stats(&direct), stats(&vnest));
    let fragment = json!({
        "startup_ms_direct": ds, "startup_ms_vnest": vs,
        "startup_p99_ms_direct": ds["p99"], "startup_p99_ms_vnest": vs["p99"],
        "startup_p99_ratio": round2(vs["p99"] / ds["p99"]),
        "startup_p50_added_ms": round1(vs["p50"] - ds["p50"]),
        "startup_all_ready_s": {"direct": round1(direct_s), "vnest": round1(vnest_s)},
        "burst_sync_lag_ms": stats(&burst_down), "burst_status_lag_ms": stats(&burst_up),
        "burst_syncer": diagnostics,
        "burst_cpu_per_pod": {"direct": direct_cpu, "vnest": vnest_cpu},
        "timeline": timeline,
        "host_requests_create_audit": audit_create_reqs, "host_requests_delete_audit": audit_delete_reqs,
        "host_requests_create_syncer": syncer_create_reqs, "host_requests_delete_syncer": syncer_delete_reqs,
        "host_writes_per_pod": round2(writes_per_pod),
        "host_writes_per_pod_syncer_metrics": round2(syncer_writes_per_pod),
        "idle_host_requests_per_min": round1(per_min(idle_audit)).abs(),
        "idle_host_requests_per_min_syncer_metrics": round1(per_min(idle_syncer)).abs(),
        "idle_host_rewatches_per_min": round1(per_min(idle_rewatches)).abs(),
        "syncer_rss_loaded_kib": loaded.rss_kib,
        "syncer_rss_synced_kib": synced.rss_kib,
        "syncer_rss_after_delete_kib": after_delete.rss_kib,
        "syncer_rss_peak_kib": before_kill.hwm_kib,
        "syncer_rss_after_restart_kib": after_restart.rss_kib,
        "syncer_cpu_s_before_restart": round2(before_kill.cpu_s - first.cpu_s),
        "syncer_cpu_idle_s_per_min": round2(per_min(idle_cpu_s)),
        "syncer_cpu_ms_per_pod": cpu_per_pod.map(round2),
        "restart_resync_s": round2(restart.resync_s), "restart_wall_s": round2(restart.wall_s),
        "restart_host_writes": restart.audit_writes.abs(),
        "restart_host_writes_syncer_metrics": restart.syncer_writes.abs(),
        "restart_host_requests_audit": restart.audit_requests,
    });
    let Value::Object(map) = fragment else {
        anyhow::bail!("fragment is an object");
    };
    Ok((map, direct, vnest, timeline_series))
}

/// kube-burner's own podLatency on both sides (hack/kube-burner.sh builds it from the module
/// proxy once, cached).
async fn kube_burner(w: &World, n: usize) -> Result<Value> {
    let repo = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let script = format!("{repo}/hack/kube-burner.sh");
    let out_dir = format!("{repo}/.e2e/bench/kube-burner");
    let mut out = serde_json::Map::new();
    for (side, kubeconfig) in [("direct", "HOST_KUBECONFIG"), ("vnest", "VIRTUAL_KUBECONFIG")] {
        let ns = format!("kb-bench-{side}");
        let o = tokio::process::Command::new(&script)
            .args([
                "run",
                w.env.get(kubeconfig)?,
                &ns,
                &n.to_string(),
                &format!("{out_dir}/{side}"),
            ])
            .stderr(std::process::Stdio::inherit())
            .output()
            .await?;
        anyhow::ensure!(o.status.success(), "{script} run {side} failed");
        let text = String::from_utf8_lossy(&o.stdout);
        let last = text.lines().last().unwrap_or_default();
        out.insert(side.into(), serde_json::from_str(last)?);
    }
    Ok(Value::Object(out))
}

/// A burst of Services through vnest: ClusterIP equality, recreates; then DNS answer latency
/// for their names, served from the syncer's cache.
async fn services(w: &World, n_services: usize) -> Result<Value> {
    let sns = TestNs::new(&w.virt, "bench-svc").await?;
    let recreates_before = vnest_e2e::sum_metric(
        &http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?,
        "vnest_syncer_service_recreates_total",
        &[],
    );
    let vsvc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(w.virt.clone(), &sns.name);
    let t_svc = Instant::now();
    for i in 0..n_services {
        let svc = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}))?;
        vsvc.create(&PostParams::default(), &svc).await?;
    }
    let hsvc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(w.host.clone(), &w.host_ns);
    let ssel = format!("vnest.dev/namespace={}", sns.name);
    let host_services = wait_until("all host Services", Duration::from_secs(600), || async {
        let l = hsvc.list(&ListParams::default().labels(&ssel)).await?.items;
        Ok((l.len() >= n_services).then_some(l))
    })
    .await?;
    let services_s = t_svc.elapsed().as_secs_f64();
    let virtual_ips: HashMap<String, String> = vsvc
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name?, s.spec?.cluster_ip?)))
        .collect();
    let equal = host_services
        .iter()
        .filter(|h| {
            let vname = h
                .annotations()
                .get("vnest.dev/object-name")
                .cloned()
                .unwrap_or_default();
            h.spec.as_ref().and_then(|s| s.cluster_ip.as_ref()) == virtual_ips.get(&vname)
        })
        .count();
    let recreates = vnest_e2e::sum_metric(
        &http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?,
        "vnest_syncer_service_recreates_total",
        &[],
    ) - recreates_before;
    let dns_server: std::net::SocketAddr = w.env.get("SYNCER_DNS_ADDR")?.parse()?;
    let mut dns_ms = Vec::new();
    for i in 0..n_services {
        let (ips, rtt) =
            vnest_e2e::dns_a(dns_server, &format!("svc-{i}.{}.svc.cluster.local.", sns.name)).await?;
        anyhow::ensure!(!ips.is_empty(), "no DNS answer for svc-{i}");
        dns_ms.push(rtt.as_secs_f64() * 1000.0);
    }
    sns.delete().await?;
    let services_json = json!({
        "services": n_services, "services_all_synced_s": (services_s * 10.0).round() / 10.0,
        "services_same_cluster_ip": equal, "services_recreated": recreates,
        "dns_answer_ms": stats(&dns_ms),
    });
    Ok(services_json)
}

/// Where the syncer's time went during a burst: reconciles by kind and result, and the pod
/// queue's wait and reconcile time (from its /metrics), to tell a slow API server from a queue
/// backlog or retries.
struct BurstDiagnostics {
    reconciles: std::collections::BTreeMap<String, f64>,
    store_loads: std::collections::BTreeMap<String, f64>,
    watch_errors: std::collections::BTreeMap<String, f64>,
    api_requests: std::collections::BTreeMap<String, f64>,
    queue_wait: Vec<(f64, f64)>,
    reconcile: Vec<(f64, f64)>,
}

impl BurstDiagnostics {
    async fn read(w: &World) -> Result<Self> {
        Ok(Self {
            reconciles: probe::syncer_counter(w, "vnest_syncer_reconciles_total").await?,
            store_loads: probe::syncer_counter(w, "vnest_syncer_store_loads_total").await?,
            watch_errors: probe::syncer_counter(w, "vnest_syncer_watch_errors_total").await?,
            api_requests: probe::syncer_counter(w, "vnest_syncer_api_requests_total").await?,
            queue_wait: probe::syncer_histogram(w, "vnest_syncer_queue_wait_seconds", "pods").await?,
            reconcile: probe::syncer_histogram(w, "vnest_syncer_reconcile_duration_seconds", "pods").await?,
        })
    }

    /// The figures of the window since `before`, as JSON.
    fn since(&self, before: &Self) -> Value {
        let q = |after: &[(f64, f64)], before: &[(f64, f64)]| {
            json!({
                "p50": round1(probe::histogram_quantile_ms(before, after, 0.5)),
                "p99": round1(probe::histogram_quantile_ms(before, after, 0.99)),
            })
        };
        // Requests that did not succeed, by "cluster code resource verb" (the exposition's
        // label order).
        let failed: std::collections::BTreeMap<String, f64> = diff(&self.api_requests, &before.api_requests)
            .into_iter()
            .filter(|(k, _)| k.split(' ').nth(1).is_some_and(|code| !code.starts_with('2')))
            .collect();
        json!({
            "reconciles": diff(&self.reconciles, &before.reconciles),
            "store_reloads": diff(&self.store_loads, &before.store_loads),
            "watch_errors": diff(&self.watch_errors, &before.watch_errors),
            "requests_not_2xx": failed,
            "pod_queue_wait_ms": q(&self.queue_wait, &before.queue_wait),
            "pod_reconcile_ms": q(&self.reconcile, &before.reconcile),
        })
    }
}
