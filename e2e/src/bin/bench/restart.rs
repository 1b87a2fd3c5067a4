//! Restart at scale (issue 17 item 5: "restart with 10,000 pods ≤ 5 s to fully resynced, with 0
//! host writes"): `--restart-pods` bare pods (default 10 000) brought to Running through vnest
//! in a virtual namespace of their own, the syncer idle, then SIGKILL and start of the same
//! binary, round after round ([`scenarios::restart`]); each round's resync time, host writes
//! (audit log and the syncer's metrics), the new process's CPU and RSS when it caught up. Then
//! the namespace is deleted and the scenario waits until none of its host pods is left.

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::{Value, json};
use vnest_e2e::{Result, TestNs, World};

use crate::probe::{AuditLog, SyncerProc};
use crate::scenarios::{self, LONG};
use crate::table::Row;
use crate::track::{Tracker, by_name, host_selector, round1, round2};

/// The figure: a restart with this many pods is what the target speaks of.
pub const GOAL_PODS: u64 = 10_000;
/// The target: start → fully resynced, seconds.
const GOAL_S: f64 = 5.0;
/// Bare pod creates in flight from the bench (the fairness burst's figure).
const IN_FLIGHT: usize = 64;
/// How long the syncer's work counters must stand still to call it idle.
const QUIET: Duration = Duration::from_secs(3);

/// One restart: what [`scenarios::restart`] measured, and the new process when it caught up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub resync_s: f64,
    pub wall_s: f64,
    pub audit_writes: f64,
    pub syncer_writes: f64,
    /// CPU seconds of the restarted process, start → caught up (sampled right after).
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// The machine's 1-minute load average when the round began (the box is shared).
    pub load1: f64,
}

/// Runs the scenario: `pods` Running, the syncer idle, `rounds` restarts, the namespace
/// deleted. The JSON goes under `restart_scale` of `latest.json`.
pub async fn run(w: &World, syncer: &SyncerProc, pods: usize, rounds: usize) -> Result<Value> {
    if pods == 0 {
        return Ok(json!({"skipped": "--restart-pods 0"}));
    }
    let audit = AuditLog::new(w)?;
    let ns = TestNs::new(&w.virt, "bench-restart").await?;
    let api = Api::namespaced(w.virt.clone(), &ns.name);
    let tracker = Tracker::start(api.clone(), "app=restart", by_name).await?;
    let t = Instant::now();
    let mut creating = tokio::spawn(scenarios::create_bare_pods(
        api, "restart", "restart", pods, IN_FLIGHT,
    ));
    {
        let ready = scenarios::wait_ready_count(&tracker, &ns.name, pods);
        tokio::pin!(ready);
        // A create that fails ends the wait at once.
        tokio::select! {
            created = &mut creating => {
                created??;
                ready.await?;
            }
            all_ready = &mut ready => {
                all_ready?;
                creating.await??;
            }
        }
    }
    let ready_s = t.elapsed().as_secs_f64();
    drop(tracker);
    eprintln!(
        "[bench]   {pods} pods Ready through vnest in {ready_s:.1} s; waiting for the syncer to be idle"
    );
    wait_syncer_idle(w).await?;
    let mut done = Vec::with_capacity(rounds);
    for i in 1..=rounds {
        let load1 = load_average();
        let r = scenarios::restart(w, &audit, syncer).await?;
        let after = syncer.sample()?;
        let round = Round {
            resync_s: r.resync_s,
            wall_s: r.wall_s,
            audit_writes: r.audit_writes,
            syncer_writes: r.syncer_writes,
            cpu_s: after.cpu_s,
            rss_kib: after.rss_kib,
            load1,
        };
        eprintln!(
            "[bench]   restart {i}/{rounds} with {pods} pods: caught up in {:.2} s ({:.2} s from kill), host writes audit {} / syncer {}, CPU {:.2} s, RSS {} KiB, load {load1:.1}",
            round.resync_s, round.wall_s, round.audit_writes, round.syncer_writes, round.cpu_s, round.rss_kib
        );
        done.push(round);
        // The next kill finds a syncer whose first post-start work is over.
        wait_syncer_idle(w).await?;
    }
    let t = Instant::now();
    let name = ns.name.clone();
    ns.delete().await?;
    scenarios::wait_no_pods(&w.host, &w.host_ns, &host_selector(&name)).await?;
    let delete_s = t.elapsed().as_secs_f64();
    Ok(summary(pods, &done, ready_s, delete_s))
}

/// The scenario's JSON: every round, and the median and max the report judges.
pub fn summary(pods: usize, rounds: &[Round], ready_s: f64, delete_s: f64) -> Value {
    let of = |f: fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
    let resync = of(|r| r.resync_s);
    let cpu = of(|r| r.cpu_s);
    let writes = of(|r| r.audit_writes.max(r.syncer_writes));
    json!({
        "pods": pods,
        "rounds": rounds.iter().map(|r| json!({
            "resync_s": round2(r.resync_s), "wall_s": round2(r.wall_s),
            "host_writes_audit": r.audit_writes.abs(), "host_writes_syncer": r.syncer_writes.abs(),
            "cpu_s": round2(r.cpu_s), "rss_kib": r.rss_kib, "load1": round2(r.load1),
        })).collect::<Vec<_>>(),
        "resync_s_median": median(&resync).map(round2),
        "resync_s_max": max(&resync).map(round2),
        "host_writes_max": max(&writes).map(f64::abs),
        "cpu_s_median": median(&cpu).map(round2),
        "rss_kib_max": rounds.iter().map(|r| r.rss_kib).max(),
        "all_ready_s": round1(ready_s),
        "delete_s": round1(delete_s),
    })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

/// The report's rows of the scenario: resync median / max against the target (judged on the
/// max: every restart must make it), host writes (0), CPU and RSS. Judged only with the goal's
/// pod count or more; a smaller run says so.
pub fn rows(r: &Value) -> Vec<Row> {
    let s = &r["restart_scale"];
    let pods = s["pods"].as_u64();
    let label = |what: &str| match pods {
        Some(n) if n < GOAL_PODS => {
            format!("restart with {n} pods (--restart-pods; the goal speaks of {GOAL_PODS}): {what}")
        }
        Some(n) => format!("restart with {n} pods: {what}"),
        None => format!("restart at scale: {what}"),
    };
    let row = |metric: String, value: String, target: &str, met: Option<bool>| Row {
        metric,
        value,
        target: target.to_owned(),
        met,
    };
    if let Some(why) = s["skipped"].as_str() {
        return vec![row(
            label("start → fully resynced"),
            format!("skipped ({why})"),
            "≤ 5 at 10k",
            None,
        )];
    }
    let at_goal = pods.is_some_and(|n| n >= GOAL_PODS);
    let judged = |v: &Value, ok: fn(f64) -> bool| v.as_f64().filter(|_| at_goal).map(ok);
    let n_rounds = s["rounds"].as_array().map_or(0, Vec::len);
    vec![
        row(
            label(&format!(
                "start → fully resynced, median / max of {n_rounds} SIGKILLs (s)"
            )),
            format!("{} / {}", s["resync_s_median"], s["resync_s_max"]),
            "≤ 5 at 10k",
            judged(&s["resync_s_max"], |v| v <= GOAL_S),
        ),
        row(
            label("host writes per restart, max (audit log or syncer metrics)"),
            s["host_writes_max"].to_string(),
            "0",
            s["host_writes_max"].as_f64().map(|v| v <= 0.0),
        ),
        row(
            label("syncer CPU per restart, median (s); RSS after, max (KiB)"),
            format!("{}; {}", s["cpu_s_median"], s["rss_kib_max"]),
            "",
            None,
        ),
    ]
}

/// The 1-minute load average (NaN when unreadable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits until the syncer has nothing queued and finished no reconcile for [`QUIET`] (its
/// /metrics, no API request).
async fn wait_syncer_idle(w: &World) -> Result<()> {
    let deadline = Instant::now() + LONG;
    let mut last: Option<(f64, Instant)> = None;
    loop {
        let depth = w.metric("vnest_syncer_queue_depth", &[]).await?;
        let reconciles = w.metric("vnest_syncer_reconciles_total", &[]).await?;
        last = match last {
            Some((n, since)) if n == reconciles && depth == 0.0 => {
                if since.elapsed() >= QUIET {
                    return Ok(());
                }
                Some((n, since))
            }
            _ => Some((reconciles, Instant::now())),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "the syncer did not go idle in {LONG:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::table;

    fn round(resync_s: f64, writes: f64) -> Round {
        Round {
            resync_s,
            wall_s: resync_s + 0.5,
            audit_writes: writes,
            syncer_writes: 0.0,
            cpu_s: 2.5,
            rss_kib: 70_000,
            load1: 4.0,
        }
    }

    #[test]
    fn summary_has_median_and_max_of_the_rounds() {
        let s = summary(
            10_000,
            &[round(4.8, 0.0), round(3.6, 0.0), round(6.7, 0.0)],
            612.34,
            80.0,
        );
        assert_eq!(s["resync_s_median"], 4.8);
        assert_eq!(s["resync_s_max"], 6.7);
        assert_eq!(s["host_writes_max"], 0.0);
        assert_eq!(s["cpu_s_median"], 2.5);
        assert_eq!(s["rss_kib_max"], 70_000);
        assert_eq!(s["all_ready_s"], 612.3);
        assert_eq!(s["rounds"].as_array().map(Vec::len), Some(3));
        assert_eq!(s["rounds"][2]["wall_s"], 7.2);
        assert_eq!(median(&[1.0, 4.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert!(summary(10, &[], 1.0, 1.0)["resync_s_max"].is_null());
    }

    fn table_of(s: Value) -> String {
        table(&rows(&json!({ "restart_scale": s })))
    }

    #[test]
    fn rows_judge_the_worst_restart_at_the_goals_scale() {
        let md = table_of(summary(
            10_000,
            &[round(4.1, 0.0), round(4.5, 0.0), round(5.2, 0.0)],
            1.0,
            1.0,
        ));
        for line in [
            "| restart with 10000 pods: start → fully resynced, median / max of 3 SIGKILLs (s) | 4.5 / 5.2 | ≤ 5 at 10k | ❌ missed |",
            "| restart with 10000 pods: host writes per restart, max (audit log or syncer metrics) | 0.0 | 0 | ✅ met |",
            "| restart with 10000 pods: syncer CPU per restart, median (s); RSS after, max (KiB) | 2.5; 70000 | — | — |",
        ] {
            assert!(md.contains(line), "missing {line:?} in\n{md}");
        }
        let md = table_of(summary(10_000, &[round(3.0, 2.0)], 1.0, 1.0));
        assert!(md.contains("| 3.0 / 3.0 | ≤ 5 at 10k | ✅ met |"), "{md}");
        assert!(md.contains("| 2.0 | 0 | ❌ missed |"), "{md}");
    }

    #[test]
    fn a_smaller_run_is_not_judged_and_a_skipped_one_says_so() {
        let md = table_of(summary(100, &[round(0.3, 0.0)], 1.0, 1.0));
        assert!(md.contains(
            "| restart with 100 pods (--restart-pods; the goal speaks of 10000): start → fully resynced, median / max of 1 SIGKILLs (s) | 0.3 / 0.3 | ≤ 5 at 10k | — |"
        ), "{md}");
        assert!(
            md.contains("| 0.0 | 0 | ✅ met |"),
            "host writes are judged at any scale: {md}"
        );
        let md = table_of(json!({"skipped": "--restart-pods 0"}));
        assert_eq!(
            md.lines().nth(2),
            Some(
                "| restart at scale: start → fully resynced | skipped (--restart-pods 0) | ≤ 5 at 10k | — |"
            )
        );
        assert_eq!(
            rows(&json!({})).len(),
            3,
            "a run without the scenario: rows without figures"
        );
    }
}
