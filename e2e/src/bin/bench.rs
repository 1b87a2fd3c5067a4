//! `make bench`: measures vnest against the same host, side by side in one run.
//!
//! - pod startup latency (create → Running, seen by a watch) directly in a host namespace vs in
//!   the virtual cluster, p50/p90/p99 and the ratio;
//! - syncer-added latency: virtual pod first seen → host pod first seen (watches on both sides);
//! - host API cost: the syncer's requests by verb/resource for the whole create+delete cycle
//!   (from its own metrics) and per pod; idle requests per minute;
//! - syncer memory: VmRSS / VmHWM.
//!
//! Writes `.e2e/bench/latest.json` and prints a summary.
//! Usage: bench [--pods N] [--quick]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use vnest_e2e::{Result, TestNs, World, http_get_text, wait_until};

struct Args {
    pods: usize,
    services: usize,
}

fn args() -> Result<Args> {
    let mut pods = 100;
    let mut services = 200;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pods" => {
                pods = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--pods needs a number"))?
            }
            "--services" => {
                services = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--services needs a number"))?
            }
            "--quick" => {
                pods = 20;
                services = 20;
            }
            other => anyhow::bail!("unknown argument {other:?}; usage: bench [--pods N] [--quick]"),
        }
    }
    Ok(Args { pods, services })
}

fn deployment(replicas: usize) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"containers": [{"name": "main", "image": "nginx"}]}}}
    }))?)
}

/// Per pod: when it was first seen and when it was first seen Running (by a watch).
#[derive(Default, Clone)]
struct Seen {
    created: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
}

/// Watches pods matching `lp` in `api` and records first sight / first Running, keyed by
/// `key(pod)`.
fn track(api: Api<Pod>, selector: String, key: fn(&Pod) -> Option<String>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let stream = watcher::watcher(api, watcher::Config::default().labels(&selector));
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(Event::Apply(p) | Event::InitApply(p)) => p,
                _ => continue,
            };
            let Some(k) = key(&pod) else { continue };
            let now = Instant::now();
            let mut g = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.created.entry(k.clone()).or_insert(now);
            if pod.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Running") {
                g.running.entry(k).or_insert(now);
            }
        }
    });
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn stats(mut v: Vec<f64>) -> BTreeMap<&'static str, f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)]
        .into_iter()
        .map(|(k, p)| (k, (percentile(&v, p) * 10.0).round() / 10.0))
        .collect()
}

/// Startup latencies (ms) of `n` pods of a Deployment created at `t0`.
fn startup_ms(seen: &Seen, t0: Instant) -> Vec<f64> {
    seen.running
        .values()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
        .collect()
}

async fn run_deployment(client: &Client, ns: &str, n: usize, seen: &Arc<Mutex<Seen>>) -> Result<Vec<f64>> {
    let t0 = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment(n)?)
        .await?;
    wait_until(
        &format!("{n} pods Running in {ns}"),
        Duration::from_secs(600),
        || async {
            let g = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok((g.running.len() >= n).then_some(()))
        },
    )
    .await?;
    let g = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(startup_ms(&g, t0))
}

async fn host_requests(w: &World) -> Result<BTreeMap<String, f64>> {
    let text = http_get_text(w.env.get("SYNCER_METRICS_URL")?).await?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("vnest_syncer_api_requests_total{cluster=\"host\""))
    {
        let label = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(format!("{} {}", label("verb"), label("resource")))
            .or_default() += value;
    }
    Ok(out)
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn rss_kib(w: &World) -> Result<(u64, u64)> {
    let pid = std::fs::read_to_string(format!("{}/pids/syncer.pid", w.env.get("STATE_DIR")?))?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let w = World::connect().await?;
    let n = a.pods;
    eprintln!(
        "[bench] {n} pods, direct on the host vs through vnest ({} cores)",
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    let (rss_idle, _) = rss_kib(&w)?;

    // 1. Directly on the host.
    let hns = TestNs::new(&w.host, "bench-direct").await?;
    let direct_seen = track(
        Api::namespaced(w.host.clone(), &hns.name),
        "app=bench".into(),
        |p| Some(p.name_any()),
    );
    let direct = run_deployment(&w.host, &hns.name, n, &direct_seen).await?;
    eprintln!("[bench] direct: {} pods Running", direct.len());

    // 2. Through vnest: virtual watch + host watch (host pods keyed by their virtual name).
    let vns = TestNs::new(&w.virt, "bench-vnest").await?;
    let before = host_requests(&w).await?;
    let virt_seen = track(
        Api::namespaced(w.virt.clone(), &vns.name),
        "app=bench".into(),
        |p| Some(p.name_any()),
    );
    let host_seen = track(
        Api::namespaced(w.host.clone(), &w.host_ns),
        format!("vnest.dev/namespace={}", vns.name),
        |p| p.annotations().get("vnest.dev/object-name").cloned(),
    );
    let vnest = run_deployment(&w.virt, &vns.name, n, &virt_seen).await?;
    eprintln!("[bench] vnest: {} pods Running", vnest.len());
    let after_create = host_requests(&w).await?;
    let (rss_loaded, _) = rss_kib(&w)?;

    // Syncer-added latency: virtual first seen -> host first seen; host Running -> virtual Running.
    let (v, h) = (
        virt_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        host_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    );
    let lag_down: Vec<f64> = v
        .created
        .iter()
        .filter_map(|(k, tv)| {
            h.created
                .get(k)
                .map(|th| th.saturating_duration_since(*tv).as_secs_f64() * 1000.0)
        })
        .collect();
    let lag_up: Vec<f64> = h
        .running
        .iter()
        .filter_map(|(k, th)| {
            v.running
                .get(k)
                .map(|tv| tv.saturating_duration_since(*th).as_secs_f64() * 1000.0)
        })
        .collect();

    // Idle: one minute with N pods synced.
    let idle_window = Duration::from_secs(if n <= 20 { 15 } else { 60 });
    let idle_before = host_requests(&w).await?;
    tokio::time::sleep(idle_window).await;
    let idle_after = host_requests(&w).await?;
    let idle_total: f64 = diff(&idle_after, &idle_before).values().sum();
    let idle_per_min = idle_total * 60.0 / idle_window.as_secs_f64();

    // Delete through vnest and wait for the host to be empty.
    let before_delete = host_requests(&w).await?;
    Api::<Deployment>::namespaced(w.virt.clone(), &vns.name)
        .delete("bench", &DeleteParams::foreground())
        .await?;
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let sel = format!("vnest.dev/namespace={}", vns.name);
    wait_until("host pods gone", Duration::from_secs(600), || async {
        Ok(hpods
            .list(&ListParams::default().labels(&sel))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    let after_delete = host_requests(&w).await?;
    let (rss_after, rss_peak) = rss_kib(&w)?;

    // 3. Services: a burst of N Services through vnest, ClusterIP equality and recreates; then
    // DNS answer latency for their names, served from the syncer's cache.
    let n_services = a.services;
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
        "dns_answer_ms": stats(dns_ms.clone()),
    });
    eprintln!("[bench] services: {services_json}");

    let create_reqs = diff(&after_create, &before);
    let delete_reqs = diff(&after_delete, &before_delete);
    let writes = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| {
                ["create", "patch", "update", "delete"]
                    .iter()
                    .any(|v| k.starts_with(v))
            })
            .map(|(_, v)| v)
            .sum()
    };
    let total_writes = writes(&create_reqs) + writes(&delete_reqs);
    let (ds, vs) = (stats(direct), stats(vnest));
    let result = json!({
        "pods": n,
        "startup_ms_direct": ds, "startup_ms_vnest": vs,
        "startup_p99_ms_direct": ds["p99"], "startup_p99_ms_vnest": vs["p99"],
        "startup_p99_ratio": (vs["p99"] / ds["p99"] * 100.0).round() / 100.0,
        "sync_lag_ms": stats(lag_down.clone()),
        "sync_lag_p50_ms": stats(lag_down.clone())["p50"], "sync_lag_p99_ms": stats(lag_down)["p99"],
        "status_lag_ms": stats(lag_up),
        "host_requests_create": create_reqs, "host_requests_delete": delete_reqs,
        "host_writes_per_pod": ((total_writes / n as f64) * 100.0).round() / 100.0,
        "idle_host_requests_per_min": ((idle_per_min * 10.0).round() / 10.0).max(0.0),
        "syncer_rss_idle_kib": rss_idle, "syncer_rss_loaded_kib": rss_loaded,
        "syncer_rss_after_delete_kib": rss_after, "syncer_rss_peak_kib": rss_peak,
        "networking": services_json,
        "dns_answer_p50_ms": stats(dns_ms.clone())["p50"], "dns_answer_p99_ms": stats(dns_ms)["p99"],
    });
    let dir = format!("{}/../.e2e/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_string_pretty(&result)?;
    std::fs::write(format!("{dir}/latest.json"), &text)?;
    println!("{text}");
    eprintln!("[bench] wrote {dir}/latest.json");
    hns.delete().await?;
    vns.delete().await?;
    Ok(())
}
