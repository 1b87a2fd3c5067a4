//! The bench's Markdown: the results table (`report.md`, `latest.md`) from the run's result
//! JSON (`latest.json`).

use std::fmt::Write as _;

use serde_json::Value;

/// One line of the Markdown table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `None`: no target to judge against ("—").
    pub met: Option<bool>,
}

/// A Markdown section: `### title`, a `Machine:` line, then [`table`].
pub fn markdown_table(title: &str, machine: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", one_line(title));
    if !machine.trim().is_empty() {
        let _ = writeln!(out, "Machine: {}\n", one_line(machine));
    }
    out.push_str(&table(rows));
    out
}

/// A table of (Metric, Value, Target, Verdict). Verdict: `None` "—", `Some(true)` "✅ met",
/// `Some(false)` "❌ missed". `|` and newlines in cells are escaped.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| Metric | Value | Target | Verdict |\n");
    out.push_str("| --- | ---: | ---: | --- |\n");
    for r in rows {
        let verdict = match r.met {
            None => "—",
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&r.metric),
            cell(&r.value),
            cell(&r.target),
            verdict
        );
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(s: &str) -> String {
    let s = one_line(s).replace('|', "\\|");
    if s.is_empty() { "—".to_string() } else { s }
}

/// The Markdown rows: every figure the issue names, next to its target.
pub fn rows(r: &Value) -> Vec<Row> {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let row = |metric: &str, value: String, target: &str, met: Option<bool>| Row {
        metric: metric.to_owned(),
        value,
        target: target.to_owned(),
        met,
    };
    let le = |v: &Value, t: f64| (!v.is_null()).then(|| num(v) <= t);
    vec![
        row(
            "startup p50 / p90 / p99 direct (ms)",
            format!(
                "{} / {} / {}",
                r["startup_ms_direct"]["p50"], r["startup_ms_direct"]["p90"], r["startup_ms_direct"]["p99"]
            ),
            "",
            None,
        ),
        row(
            "startup p50 / p90 / p99 vnest (ms)",
            format!(
                "{} / {} / {}",
                r["startup_ms_vnest"]["p50"], r["startup_ms_vnest"]["p90"], r["startup_ms_vnest"]["p99"]
            ),
            "",
            None,
        ),
        row(
            "startup p99 ratio vnest ÷ direct",
            r["startup_p99_ratio"].to_string(),
            "≤ 1.15",
            le(&r["startup_p99_ratio"], 1.15),
        ),
        row(
            &format!(
                "syncer-added latency p50 at {} pods/s (ms)",
                r["fixed_rate"]["pods_per_s"]
            ),
            r["sync_lag_p50_ms"].to_string(),
            "≤ 2",
            le(&r["sync_lag_p50_ms"], 2.0),
        ),
        row(
            &format!(
                "syncer-added latency p99 at {} pods/s (ms)",
                r["fixed_rate"]["pods_per_s"]
            ),
            r["sync_lag_p99_ms"].to_string(),
            "≤ 20",
            le(&r["sync_lag_p99_ms"], 20.0),
        ),
        row(
            "of which the syncer's own share (first sight → host create sent) p50 / p99 (ms)",
            format!(
                "{} / {}",
                r["fixed_rate"]["syncer_histograms"]["prepare_p50_ms"],
                r["fixed_rate"]["syncer_histograms"]["prepare_p99_ms"]
            ),
            "≤ 2 / ≤ 20",
            (!r["fixed_rate"].is_null()).then(|| {
                num(&r["fixed_rate"]["syncer_histograms"]["prepare_p50_ms"]) <= 2.0
                    && num(&r["fixed_rate"]["syncer_histograms"]["prepare_p99_ms"]) <= 20.0
            }),
        ),
        row(
            "same rate directly on the host: create call → seen / → Running p50 / p99 (ms)",
            format!(
                "{} / {}; {} / {}",
                r["fixed_rate"]["direct_create_to_seen_ms"]["p50"],
                r["fixed_rate"]["direct_create_to_seen_ms"]["p99"],
                r["fixed_rate"]["direct_create_to_running_ms"]["p50"],
                r["fixed_rate"]["direct_create_to_running_ms"]["p99"]
            ),
            "",
            None,
        ),
        row(
            "status back (host Running → virtual Running) p50 / p99 (ms)",
            format!(
                "{} / {}",
                r["fixed_rate"]["status_lag_ms"]["p50"], r["fixed_rate"]["status_lag_ms"]["p99"]
            ),
            "",
            None,
        ),
        row(
            "host writes per pod lifecycle (audit log; syncer metrics)",
            format!(
                "{} ({})",
                r["host_writes_per_pod"], r["host_writes_per_pod_syncer_metrics"]
            ),
            "≤ 2",
            le(&r["host_writes_per_pod"], 2.0),
        ),
        row(
            "host requests per idle minute besides watches (audit log; syncer; watches re-opened)",
            format!(
                "{} ({}; {})",
                r["idle_host_requests_per_min"],
                r["idle_host_requests_per_min_syncer_metrics"],
                r["idle_host_rewatches_per_min"]
            ),
            "0",
            le(&r["idle_host_requests_per_min"], 0.0),
        ),
        row(
            "syncer RSS idle (KiB)",
            r["syncer_rss_idle_kib"].to_string(),
            "≤ 15360",
            le(&r["syncer_rss_idle_kib"], 15360.0),
        ),
        row(
            &format!(
                "syncer RSS with {} pods synced, after the idle minute / right after the burst (KiB)",
                r["pods"]
            ),
            format!("{} / {}", r["syncer_rss_synced_kib"], r["syncer_rss_loaded_kib"]),
            "≤ 102400 at 10k",
            le(&r["syncer_rss_synced_kib"], 102_400.0),
        ),
        row(
            "syncer RSS peak / after delete (KiB)",
            format!(
                "{} / {}",
                r["syncer_rss_peak_kib"], r["syncer_rss_after_delete_kib"]
            ),
            "",
            None,
        ),
        row(
            "syncer CPU for the run (s); idle (s/min)",
            format!("{}; {}", r["syncer_cpu_s"], r["syncer_cpu_idle_s_per_min"]),
            "",
            None,
        ),
        row(
            "restart: start → fully resynced (s)",
            r["restart_resync_s"].to_string(),
            "≤ 5 at 10k",
            le(&r["restart_resync_s"], 5.0),
        ),
        row(
            "restart: host writes (audit log; syncer)",
            format!(
                "{} ({})",
                r["restart_host_writes"], r["restart_host_writes_syncer_metrics"]
            ),
            "0",
            le(&r["restart_host_writes"], 0.0),
        ),
        row(
            "fairness: small ns create → host p99 loaded ÷ alone",
            format!(
                "{} ({} vs {} ms)",
                r["fairness"]["to_host_p99_ratio"],
                r["fairness"]["small_to_host_ms_loaded"]["p99"],
                r["fairness"]["small_to_host_ms_alone"]["p99"]
            ),
            "≤ 2",
            le(&r["fairness"]["to_host_p99_ratio"], 2.0),
        ),
        row(
            "fairness: small ns create → Running p99 loaded ÷ alone",
            format!(
                "{} ({} vs {} ms)",
                r["fairness"]["to_running_p99_ratio"],
                r["fairness"]["small_to_running_ms_loaded"]["p99"],
                r["fairness"]["small_to_running_ms_alone"]["p99"]
            ),
            "≤ 2",
            le(&r["fairness"]["to_running_p99_ratio"], 2.0),
        ),
        row(
            "Services: same ClusterIP / recreated / all synced (s)",
            format!(
                "{} / {} / {}",
                r["networking"]["services_same_cluster_ip"],
                r["networking"]["services_recreated"],
                r["networking"]["services_all_synced_s"]
            ),
            "",
            None,
        ),
        row(
            "DNS answer p50 / p99 (ms)",
            format!("{} / {}", r["dns_answer_p50_ms"], r["dns_answer_p99_ms"]),
            "",
            None,
        ),
        row(
            "kube-burner podLatency Ready p99 direct / vnest (ms)",
            match &r["kube_burner"] {
                Value::Null => "not run (--kube-burner)".into(),
                kb => format!(
                    "{} / {}",
                    kb["direct"]["ready_p99_ms"], kb["vnest"]["ready_p99_ms"]
                ),
            },
            "",
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_table_has_header_and_verdicts() {
        let rows = vec![
            Row {
                metric: "pod startup p50 ratio".into(),
                value: "1.08x".into(),
                target: "<= 1.2x".into(),
                met: Some(true),
            },
            Row {
                metric: "syncer-added p99".into(),
                value: "812 ms".into(),
                target: "< 500 ms".into(),
                met: Some(false),
            },
            Row {
                metric: "a|b".into(),
                value: "3".into(),
                target: String::new(),
                met: None,
            },
        ];
        let md = markdown_table("Pod startup", "2 vCPU, 8 GiB", &rows);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "### Pod startup");
        assert!(md.contains("Machine: 2 vCPU, 8 GiB\n"));
        let header = lines
            .iter()
            .position(|l| *l == "| Metric | Value | Target | Verdict |")
            .unwrap();
        assert_eq!(lines[header + 1], "| --- | ---: | ---: | --- |");
        assert_eq!(
            lines[header + 2],
            "| pod startup p50 ratio | 1.08x | <= 1.2x | ✅ met |"
        );
        assert_eq!(
            lines[header + 3],
            "| syncer-added p99 | 812 ms | < 500 ms | ❌ missed |"
        );
        assert_eq!(lines[header + 4], "| a\\|b | 3 | — | — |");
        assert_eq!(lines.len(), header + 5);
    }
}
