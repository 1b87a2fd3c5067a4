//! Scenario 8: the kubelet endpoint's streams through vnest vs directly against the host, in
//! the same run on the same pod (the virtual pod through the virtual API server and the syncer;
//! its host pod through the host API server):
//!
//! - `kubectl logs` of a big log (kwok serves container `huge` from `KWOK_HUGE_LOG`, which this
//!   scenario writes first: kwok opens the file per request), MiB/s each and the ratio;
//! - a `kubectl port-forward` upload of the same size to a sink on kwok's port-forward target
//!   (`PORT_FORWARD_TARGET`), MiB/s each and the ratio;
//! - the time to the first byte of a small log request (p50 of many), vnest minus direct.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::AsyncBufReadExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{LogParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use vnest_e2e::{Result, TestNs, World, wait_until};

use crate::track::{round1, round2, stats};

/// Bytes of `kubectl logs` output per line of the huge log (newline included).
pub const LINE: usize = 128;
/// A CRI log line's prefix, as a kubelet keeps container logs.
const CRI_PREFIX: &str = "2026-01-01T00:00:02.000000000Z stdout F ";
const WAIT: Duration = Duration::from_secs(120);

/// What the scenario moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// `kubectl logs` output and port-forward upload, bytes.
    pub bytes: usize,
    /// Timed repetitions of each transfer per side (the median counts).
    pub runs: usize,
    /// Small log requests per side for the time to first byte.
    pub ttfb_requests: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        Self {
            bytes: if quick { 8 << 20 } else { 64 << 20 },
            runs: 3,
            ttfb_requests: 20,
        }
    }

    pub fn mib(&self) -> usize {
        self.bytes >> 20
    }
}

/// Line `i` of the huge log as kwok reads it: CRI prefix, then text that `kubectl logs` prints
/// as exactly [`LINE`] bytes.
pub fn cri_line(i: usize) -> String {
    let text = format!("huge log line {i:09} ");
    format!("{CRI_PREFIX}{text:x<width$}\n", width = LINE - 1)
}

/// Lines of the huge log for `bytes` of `kubectl logs` output (rounded down to whole lines).
pub fn lines_for(bytes: usize) -> usize {
    bytes / LINE
}

/// MiB/s of `bytes` moved in `elapsed`.
pub fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / f64::from(1 << 20) / elapsed.as_secs_f64().max(1e-9)
}

/// The middle value (the upper one of an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The local port of `kubectl port-forward`'s "Forwarding from 127.0.0.1:NNNNN -> 8080" line.
pub fn forwarded_port(line: &str) -> Option<u16> {
    line.strip_prefix("Forwarding from 127.0.0.1:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The scenario's JSON: `logs`, `port_forward` (MiB/s direct and vnest, the ratio) and
/// `logs_ttfb_ms` (direct, vnest, added p50).
pub async fn run(w: &World, sizes: Sizes) -> Result<Value> {
    write_huge_log(w, sizes.bytes).await?;
    let ns = TestNs::new(&w.virt, "bench-kubelet").await?;
    let pods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "streams"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}, {"name": "huge", "image": "busybox"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let host_pods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let host_name = w.host_name(&ns.name, "streams");
    let sides = [
        Side {
            name: "direct",
            kubeconfig: w.env.get("HOST_KUBECONFIG")?.to_owned(),
            namespace: w.host_ns.clone(),
            pod: host_name,
            api: host_pods,
        },
        Side {
            name: "vnest",
            kubeconfig: w.env.get("VIRTUAL_KUBECONFIG")?.to_owned(),
            namespace: ns.name.clone(),
            pod: "streams".into(),
            api: pods,
        },
    ];
    // Both pods Running and their logs answering (the virtual node appears with the pod).
    for s in &sides {
        wait_until(&format!("{} logs answering", s.name), WAIT, || async {
            Ok(first_byte(s).await.ok())
        })
        .await?;
    }
    let kubectl = w.env.path("KUBECTL")?;

    // Logs: alternate the sides, median of the runs.
    let mut logs = [Vec::new(), Vec::new()];
    for _ in 0..sizes.runs {
        for (i, s) in sides.iter().enumerate() {
            logs[i].push(kubectl_logs_rate(&kubectl, s, sizes.bytes).await?);
        }
    }
    // Port-forward: one kubectl port-forward per side, a sink on kwok's target.
    let sink = sink_server(w.env.get("PORT_FORWARD_TARGET")?).await?;
    let mut forward = [Vec::new(), Vec::new()];
    for (i, s) in sides.iter().enumerate() {
        let (mut child, port) = port_forward(&kubectl, s).await?;
        upload(port, 8).await?; // warm-up: the stream pair exists before the timed runs
        for _ in 0..sizes.runs {
            forward[i].push(mib_per_s(sizes.bytes, upload(port, sizes.bytes).await?));
        }
        child.kill().await?;
    }
    sink.abort();
    // Time to first byte of a small log: alternate the sides.
    let mut ttfb = [Vec::new(), Vec::new()];
    for _ in 0..sizes.ttfb_requests {
        for (i, s) in sides.iter().enumerate() {
            ttfb[i].push(first_byte(s).await?.as_secs_f64() * 1000.0);
        }
    }
    let _ = tokio::fs::remove_file(w.env.path("KWOK_HUGE_LOG")?).await;
    ns.delete().await?;
    Ok(summary(sizes, &logs, &forward, &ttfb))
}

/// The JSON of the measured series (each `[direct, vnest]`).
pub fn summary(
    sizes: Sizes,
    logs: &[Vec<f64>; 2],
    forward: &[Vec<f64>; 2],
    ttfb_ms: &[Vec<f64>; 2],
) -> Value {
    let pair = |v: &[Vec<f64>; 2]| {
        let (d, n) = (median(&v[0]), median(&v[1]));
        json!({"direct_mib_s": round1(d), "vnest_mib_s": round1(n), "ratio": round2(n / d),
               "runs": sizes.runs})
    };
    let (d, n) = (stats(&ttfb_ms[0]), stats(&ttfb_ms[1]));
    json!({
        "mib": sizes.mib(),
        "logs": pair(logs),
        "port_forward": pair(forward),
        "logs_ttfb_ms": {"direct": d, "vnest": n, "added_p50": round1(n["p50"] - d["p50"])},
    })
}

struct Side {
    name: &'static str,
    kubeconfig: String,
    namespace: String,
    pod: String,
    api: Api<Pod>,
}

/// The huge log for `bytes` of output, written where kwok reads container `huge`'s log.
async fn write_huge_log(w: &World, bytes: usize) -> Result<()> {
    let path = w.env.path("KWOK_HUGE_LOG")?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(&path).await?);
    for i in 0..lines_for(bytes) {
        out.write_all(cri_line(i).as_bytes()).await?;
    }
    out.flush().await?;
    Ok(())
}

/// `kubectl logs` of container `huge`: MiB/s from the start of kubectl to its last byte.
async fn kubectl_logs_rate(kubectl: &std::path::Path, s: &Side, bytes: usize) -> Result<f64> {
    let t = Instant::now();
    let mut child = tokio::process::Command::new(kubectl)
        .args([
            "--kubeconfig",
            &s.kubeconfig,
            "-n",
            &s.namespace,
            "logs",
            &s.pod,
            "-c",
            "huge",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let elapsed = t.elapsed();
    let status = child.wait().await?;
    let want = lines_for(bytes) * LINE;
    anyhow::ensure!(
        status.success() && got == want,
        "kubectl logs {} ({}): {got} bytes of {want}, {status}",
        s.pod,
        s.name
    );
    Ok(mib_per_s(got, elapsed))
}

/// Time from the request to the first byte of container `main`'s (small) log.
async fn first_byte(s: &Side) -> Result<Duration> {
    let t = Instant::now();
    let lp = LogParams {
        container: Some("main".into()),
        ..LogParams::default()
    };
    let mut stream = std::pin::pin!(s.api.log_stream(&s.pod, &lp).await?);
    let first = stream.fill_buf().await?;
    anyhow::ensure!(!first.is_empty(), "empty log from {} ({})", s.pod, s.name);
    Ok(t.elapsed())
}

/// A sink on kwok's port-forward target: per connection an 8-byte big-endian length, that many
/// bytes, then one byte back.
async fn sink_server(addr: &str) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(len) = conn.read_u64().await else { return };
                let mut left = len;
                let mut buf = vec![0u8; 1 << 20];
                while left > 0 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left = left.saturating_sub(n as u64),
                    }
                }
                let _ = conn.write_all(b"k").await;
            });
        }
    }))
}

/// `kubectl port-forward pod/<pod> :8080`, and its local port.
async fn port_forward(kubectl: &std::path::Path, s: &Side) -> Result<(tokio::process::Child, u16)> {
    let pod = format!("pod/{}", s.pod);
    let mut child = tokio::process::Command::new(kubectl)
        .args([
            "--kubeconfig",
            &s.kubeconfig,
            "-n",
            &s.namespace,
            "port-forward",
            &pod,
            ":8080",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = forwarded_port(&line) {
                return Ok::<_, anyhow::Error>(port);
            }
        }
        anyhow::bail!("kubectl port-forward ({}) ended without forwarding", s.name)
    })
    .await??;
    // kubectl keeps printing "Handling connection" lines: drain them so it never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, port))
}

/// Sends `bytes` through the forwarded port to the sink; time from connect to the sink's answer.
async fn upload(port: u16, bytes: usize) -> Result<Duration> {
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i as u8).wrapping_mul(31)).collect();
    let t = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_u64(bytes as u64).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n]).await?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    tokio::time::timeout(WAIT, conn.read_exact(&mut ack)).await??;
    Ok(t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_print_as_whole_fixed_lines() {
        for i in [0, 7, 123_456_789] {
            let l = cri_line(i);
            let text = l.strip_prefix(CRI_PREFIX).unwrap();
            assert_eq!(text.len(), LINE, "{l:?}");
            assert!(text.ends_with("x\n") && !text[..LINE - 1].contains('\n'));
            assert!(text.starts_with(&format!("huge log line {i:09} ")));
        }
        assert_eq!(lines_for(64 << 20) * LINE, 64 << 20);
        assert_eq!(lines_for(8 << 20) * LINE, 8 << 20);
        assert_eq!(lines_for(LINE * 3 + 5), 3);
    }

    #[test]
    fn sizes_quick_and_full() {
        assert_eq!(Sizes::new(false).mib(), 64);
        assert_eq!(Sizes::new(true).mib(), 8);
    }

    #[test]
    fn rates_and_medians() {
        assert_eq!(mib_per_s(64 << 20, Duration::from_secs(2)), 32.0);
        assert_eq!(mib_per_s(1 << 19, Duration::from_millis(250)), 2.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn port_forward_line() {
        assert_eq!(
            forwarded_port("Forwarding from 127.0.0.1:40123 -> 8080"),
            Some(40123)
        );
        assert_eq!(forwarded_port("Forwarding from [::1]:40123 -> 8080"), None);
        assert_eq!(forwarded_port("Handling connection for 40123"), None);
    }

    #[test]
    fn summary_has_medians_ratios_and_added_ttfb() {
        let s = summary(
            Sizes::new(false),
            &[vec![100.0, 120.0, 80.0], vec![90.0, 60.0, 99.0]],
            &[vec![200.0], vec![150.0]],
            &[vec![2.0, 3.0, 4.0], vec![4.0, 5.5, 6.0]],
        );
        assert_eq!(s["mib"], 64);
        assert_eq!(s["logs"]["direct_mib_s"], 100.0);
        assert_eq!(s["logs"]["vnest_mib_s"], 90.0);
        assert_eq!(s["logs"]["ratio"], 0.9);
        assert_eq!(s["port_forward"]["ratio"], 0.75);
        assert_eq!(s["logs_ttfb_ms"]["direct"]["p50"], 3.0);
        assert_eq!(s["logs_ttfb_ms"]["added_p50"], 2.5);
    }
}
