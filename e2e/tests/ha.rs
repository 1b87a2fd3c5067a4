//! High availability: three syncer replicas with leader election (`--leader-elect`, a host
//! Lease) over two virtual API servers that share one PostgreSQL through kine
//! (`hack/extra-vcluster.sh`), in a host namespace of their own where `manifests/overlays/ha`
//! was applied with `kubectl apply -k`. Its three pods run on kwok nodes; local processes stand
//! in for their containers (as in the process world), and a TCP proxy stands in for the vcluster
//! Service in front of the API servers and of the syncers' kubelet endpoints.
//!
//! Under load (a Deployment scaling 0 <-> 200), one after the other:
//! - SIGKILL the leader syncer (`VNEST_HA_KILLS` times, default 3): another replica leads, and
//!   afterwards the host holds exactly one pod per virtual pod: nothing lost, duplicated or
//!   orphaned, and no surviving host pod was recreated. The gaps are printed (p50/max).
//! - SIGTERM the leader: it releases the Lease and a standby takes it before the old lease
//!   would have expired (read off the Lease's own timestamps).
//! - SIGKILL one virtual API server: the tenant's requests through the Service go on against
//!   the other; the longest outage the tenant saw is printed; nothing is lost.
//! - Stop PostgreSQL for `VNEST_HA_PG_OUTAGE` (default 20 s): everything recovers on its own.
//! - Restart every syncer replica (an upgrade of the binary): 0 host writes, no pod recreated.
//!
//! The lease is the shipped 15 s with renewals every 5 s (`VNEST_HA_LEASE` changes the
//! duration; the renewal grace stays two thirds of it). No replica may exit on its own anywhere
//! in the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use vnest::markers;
use vnest_e2e::extra_vcluster::ExtraVcluster;
use vnest_e2e::service_proxy::ServiceProxy;
use vnest_e2e::{Env, Result, TestNs, World, http_get, http_get_text, sum_metric, wait_until};

const VC: &str = "vnest";
const WAIT: Duration = Duration::from_secs(180);
const LOAD: i32 = 200;

fn step(what: &str) {
    eprintln!("[ha] == {what}");
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn seconds_env(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .unwrap_or(default)
}

/// One syncer replica: the process standing in for the syncer container of pod `vnest-<i>`.
struct Replica {
    pod: String,
    data_dir: PathBuf,
    host_kubeconfig: PathBuf,
    admin: u16,
    kubelet: u16,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Replica {
    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

struct Ha {
    w: World,
    cp: ExtraVcluster,
    ns: TestNs,
    replicas: Vec<Replica>,
    api: ServiceProxy,
    kubelet: ServiceProxy,
    tenant: Client,
    lease_s: u64,
    grace_s: u64,
}

impl Ha {
    async fn up() -> Result<Self> {
        let w = World::connect().await?;
        step("the HA control plane: PostgreSQL + 2 virtual API servers (hack/extra-vcluster.sh up)");
        let cp = ExtraVcluster::up(&w.env, "ha", 2, "postgres").await?;
        let (dir, vc_env) = (cp.dir.clone(), cp.env.clone());

        step("kubectl apply -k manifests/overlays/ha into a host namespace of its own");
        let ns = TestNs::new(&w.host, "ha").await?;
        let secrets: Api<Secret> = Api::namespaced(w.host.clone(), &ns.name);
        secrets
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": format!("{VC}-datastore")},
                            "stringData": {"endpoint": vc_env.get("VC_DATASTORE_ENDPOINT")?, "token": "e2e-token"}}))?,
            )
            .await?;
        let overlay = dir.join("overlay");
        std::fs::create_dir_all(&overlay)?;
        let base = repo().join("manifests/overlays/ha").canonicalize()?;
        // The user's overlay on top of overlays/ha: its namespace, and (local world only) the
        // data volume as an emptyDir: the host's pool of volumes is for the storage tests.
        std::fs::write(
            overlay.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nresources:\n- {base}\n\
                 patches:\n- target: {{kind: StatefulSet, name: {VC}}}\n  patch: |-\n    - op: remove\n      path: /spec/volumeClaimTemplates\n    \
                 - op: add\n      path: /spec/template/spec/volumes/-\n      value: {{name: data, emptyDir: {{}}}}\n",
                ns = ns.name,
                base = relative(&overlay, &base)?,
            ),
        )?;
        let out = w
            .env
            .kubectl(
                "HOST_KUBECONFIG",
                &["apply", "-k", &overlay.display().to_string()],
            )
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply -k of the ha overlay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pods: Api<Pod> = Api::namespaced(w.host.clone(), &ns.name);
        let mut uids = Vec::new();
        for i in 0..3 {
            let name = format!("{VC}-{i}");
            let pod = wait_until(&format!("host pod {name} Running"), WAIT, || async {
                Ok(pods
                    .get_opt(&name)
                    .await?
                    .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
            })
            .await?;
            uids.push(pod.uid().unwrap_or_default());
        }

        // Each replica's ServiceAccount token, bound to its pod (as the kubelet projects it).
        let ca = host_ca(&w.env)?;
        let mut replicas = Vec::new();
        for (i, uid) in uids.iter().enumerate() {
            let pod = format!("{VC}-{i}");
            let out = w
                .env
                .kubectl(
                    "HOST_KUBECONFIG",
                    &[
                        "-n",
                        &ns.name,
                        "create",
                        "token",
                        VC,
                        "--duration",
                        "2h",
                        "--bound-object-kind",
                        "Pod",
                        "--bound-object-name",
                        &pod,
                        "--bound-object-uid",
                        uid,
                    ],
                )
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let token = dir.join(format!("{pod}.token"));
            std::fs::write(&token, &out.stdout)?;
            let host_kubeconfig = dir.join(format!("{pod}.host.kubeconfig"));
            std::fs::write(
                &host_kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                     users:\n- name: sa\n  user:\n    tokenFile: {token}\ncontexts:\n- name: c\n  context: {{cluster: host, user: sa, namespace: {ns}}}\ncurrent-context: c\n",
                    server = w.env.get("HOST_API_URL")?,
                    ca = ca.display(),
                    token = token.display(),
                    ns = ns.name,
                ),
            )?;
            // Replicas 0 and 2 sit beside API server 1, replica 1 beside API server 2.
            let server = if i == 1 { 2 } else { 1 };
            replicas.push(Replica {
                pod: pod.clone(),
                data_dir: vc_env.path(&format!("VC_DATA_DIR_{server}"))?,
                host_kubeconfig,
                admin: free_port()?,
                kubelet: free_port()?,
                log: PathBuf::from(vc_env.get("VC_LOG_DIR")?).join(format!("syncer-{pod}.log")),
                child: None,
            });
        }
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let api = ServiceProxy::start(vec![
            addr(vc_env.get("VC_API_PORT_1")?.parse()?),
            addr(vc_env.get("VC_API_PORT_2")?.parse()?),
        ])
        .await?;
        let kubelet = ServiceProxy::start(replicas.iter().map(|r| addr(r.kubelet)).collect()).await?;
        let tenant = client_via(&vc_env.path("VC_KUBECONFIG_1")?, api.addr).await?;
        let mut ha = Self {
            w,
            cp,
            ns,
            replicas,
            api,
            kubelet,
            tenant,
            lease_s: seconds_env("VNEST_HA_LEASE", 15),
            grace_s: 0,
        };
        ha.grace_s = (ha.lease_s * 2 / 3).max(1);
        step("three syncer replicas with --leader-elect");
        for i in 0..3 {
            ha.start(i).await?;
        }
        Ok(ha)
    }

    async fn start(&mut self, i: usize) -> Result<()> {
        let kubelet_proxy_port = self.kubelet.addr.port().to_string();
        let r = &mut self.replicas[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)?;
        let child = tokio::process::Command::new(self.w.env.path("VNEST_BIN")?)
            .args(["syncer", "--name", VC, "--host-namespace", &self.ns.name])
            .arg("--host-kubeconfig")
            .arg(&r.host_kubeconfig)
            .arg("--data-dir")
            .arg(&r.data_dir)
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{}", r.admin),
                "--dns-addr",
                "127.0.0.1:0",
            ])
            .args(["--kubelet-listen-addr", &format!("127.0.0.1:{}", r.kubelet)])
            .args([
                "--kubelet-address",
                "127.0.0.1",
                "--kubelet-port",
                &kubelet_proxy_port,
            ])
            .args([
                "--leader-elect",
                "--leader-elect-lease-duration",
                &format!("{}s", self.lease_s),
            ])
            .args(["--leader-elect-renew-grace", &format!("{}s", self.grace_s)])
            .env("VNEST_POD_NAME", &r.pod)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        r.child = Some(child);
        let ready = r.admin_url("/readyz");
        wait_until(&format!("syncer {} ready", r.pod), WAIT, || async {
            Ok(matches!(http_get(&ready).await, Ok((200, _))).then_some(()))
        })
        .await
    }

    /// Sends `signal` (KILL or TERM) to replica `i` and waits for it to exit.
    async fn stop(&mut self, i: usize, signal: &str) -> Result<()> {
        let Some(mut child) = self.replicas[i].child.take() else {
            return Ok(());
        };
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("replica {i} has exited already"))?;
        let status = tokio::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
        Ok(())
    }

    /// Fails when a replica the test did not stop has exited (a step-down or a crash: the
    /// kubelet would restart it, but nothing here should make one exit).
    fn check_alive(&mut self) -> Result<()> {
        for r in &mut self.replicas {
            if let Some(child) = r.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                anyhow::bail!(
                    "syncer {} exited on its own ({status}); see {}",
                    r.pod,
                    r.log.display()
                );
            }
        }
        Ok(())
    }

    /// The role line of replica `i`'s /readyz ("leader", "standby"), `None` when it is down.
    async fn role(&self, i: usize) -> Option<String> {
        self.replicas[i].child.as_ref()?;
        let (_, body) = http_get(&self.replicas[i].admin_url("/readyz")).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("[+] role: "))
            .map(|r| r.split_whitespace().next().unwrap_or_default().to_owned())
    }

    /// Waits until exactly one running replica leads; returns it.
    async fn leader(&self) -> Result<usize> {
        wait_until("exactly one leader among the replicas", WAIT, || async {
            let mut leaders = Vec::new();
            for i in 0..self.replicas.len() {
                if self.role(i).await.as_deref() == Some("leader") {
                    leaders.push(i);
                }
            }
            Ok((leaders.len() == 1).then(|| leaders[0]))
        })
        .await
    }

    async fn lease(&self) -> Result<Lease> {
        Ok(Api::<Lease>::namespaced(self.w.host.clone(), &self.ns.name)
            .get(&format!("{VC}-syncer"))
            .await?)
    }

    /// Host pods of this vcluster by name, with their uids.
    async fn host_pods(&self) -> Result<BTreeMap<String, String>> {
        let lp = ListParams::default().labels(&format!("{}={VC}", markers::LABEL_MANAGED_BY));
        Ok(Api::<Pod>::namespaced(self.w.host.clone(), &self.ns.name)
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
            .collect())
    }

    /// Virtual pods of namespace `ns` (Running ones, and all).
    async fn virtual_pods(&self, ns: &str) -> Result<(usize, BTreeSet<String>)> {
        let pods = Api::<Pod>::namespaced(self.tenant.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items;
        let running = pods
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((running, pods.iter().map(ResourceExt::name_any).collect()))
    }

    /// Waits until the tenant's `replicas` pods in `ns` all run and the host holds exactly one
    /// pod per virtual pod (every virtual pod's host name, nothing else).
    async fn converged(&self, ns: &str, replicas: usize) -> Result<BTreeMap<String, String>> {
        self.converged_within(ns, replicas, WAIT).await
    }

    async fn converged_within(
        &self,
        ns: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        wait_until(
            &format!("{replicas} pods Running, one host pod each, nothing else"),
            timeout,
            || async {
                let (running, names) = self.virtual_pods(ns).await?;
                if running != replicas || names.len() != replicas {
                    return Ok(None);
                }
                let host = self.host_pods().await?;
                let expected: BTreeSet<String> = names
                    .iter()
                    .map(|n| vnest::naming::host_name(VC, ns, n))
                    .collect();
                let actual: BTreeSet<String> = host.keys().cloned().collect();
                Ok((expected == actual).then_some(host))
            },
        )
        .await
    }

    async fn scale(&self, ns: &str, replicas: i32) -> Result<()> {
        Api::<Deployment>::namespaced(self.tenant.clone(), ns)
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await?;
        Ok(())
    }

    /// Host writes replica `i`'s process has counted (0 when it is down), for `op` (all: "").
    async fn writes_of(&self, i: usize, op: &str) -> Result<f64> {
        Ok(self.writes_by(i, &[op]).await?[0])
    }

    /// [`Self::writes_of`] for each of `ops`, read from one scrape (so they add up).
    async fn writes_by(&self, i: usize, ops: &[&str]) -> Result<Vec<f64>> {
        if self.replicas[i].child.is_none() {
            return Ok(vec![0.0; ops.len()]);
        }
        let text = http_get_text(&self.replicas[i].admin_url("/metrics")).await?;
        Ok(ops
            .iter()
            .map(|op| {
                let labels: &[(&str, &str)] = if op.is_empty() { &[] } else { &[("op", op)] };
                sum_metric(&text, "vnest_syncer_host_writes_total", labels)
            })
            .collect())
    }

    /// Waits until replica `i` has caught up since it began to lead; returns how long that took
    /// (`initial_sync_seconds`).
    async fn caught_up(&self, i: usize) -> Result<f64> {
        let metrics = self.replicas[i].admin_url("/metrics");
        wait_until("the new leader caught up", WAIT, || async {
            let text = http_get_text(&metrics).await?;
            let s = sum_metric(&text, "vnest_syncer_initial_sync_seconds", &[]);
            Ok((s > 0.0).then_some(s))
        })
        .await
    }

    /// Restarts every replica, one after the other (a rolling upgrade), and returns the host
    /// writes of `op` all processes made meanwhile, counted until the new leader caught up.
    async fn rolling_restart(&mut self, op: &str) -> Result<f64> {
        let mut written = 0.0;
        let mut base = Vec::new();
        for i in 0..self.replicas.len() {
            base.push(self.writes_of(i, op).await?);
        }
        for i in 0..self.replicas.len() {
            // What this process wrote since the step began goes with it: count it first.
            for (j, b) in base.iter_mut().enumerate() {
                let now = self.writes_of(j, op).await?;
                written += now - *b;
                *b = now;
            }
            self.stop(i, "TERM").await?;
            self.start(i).await?;
            base[i] = self.writes_of(i, op).await?;
            written += base[i];
        }
        let leader = self.leader().await?;
        self.caught_up(leader).await?;
        for (j, b) in base.iter().enumerate() {
            written += self.writes_of(j, op).await? - b;
        }
        Ok(written)
    }
}

fn relative(from: &Path, to: &Path) -> Result<String> {
    let from = from.canonicalize()?;
    let common = from
        .ancestors()
        .find(|a| to.starts_with(a))
        .ok_or_else(|| anyhow::anyhow!("no common ancestor"))?;
    let ups = from.strip_prefix(common)?.components().count();
    let rest = to.strip_prefix(common)?;
    Ok(format!("{}{}", "../".repeat(ups), rest.display()))
}

/// The host CA file the world's syncer kubeconfig names.
fn host_ca(env: &Env) -> Result<PathBuf> {
    let text = std::fs::read_to_string(env.path("SYNCER_HOST_KUBECONFIG")?)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("no certificate-authority in the syncer's host kubeconfig"))
}

/// A client with `kubeconfig`'s credentials that connects through `addr` (the Service).
async fn client_via(kubeconfig: &Path, addr: SocketAddr) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.cluster_url = format!("https://{addr}").parse()?;
    config.read_timeout = Some(Duration::from_secs(10));
    Ok(Client::try_from(config)?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test]
async fn an_ha_vcluster_fails_over_without_losing_anything() -> Result<()> {
    let mut ha = Ha::up().await?;
    let first = ha.leader().await?;
    eprintln!("[ha] leader: {}", ha.replicas[first].pod);

    // The tenant's workload, through the Service.
    let ns = "load";
    Api::<Namespace>::all(ha.tenant.clone())
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": ns}}))?)
        .await?;
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(ha.tenant.clone(), ns);
    wait_until("ServiceAccount default in the tenant namespace", WAIT, || async {
        Ok(sa.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    Api::<Deployment>::namespaced(ha.tenant.clone(), ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}))?,
        )
        .await?;

    // --- SIGKILL the leader while the Deployment scales -------------------------------------
    let kills = seconds_env("VNEST_HA_KILLS", 3);
    let mut gaps = Vec::new();
    let mut target = 0;
    for k in 0..kills {
        target = if target == 0 { LOAD } else { 0 };
        step(&format!(
            "kill {}/{kills}: SIGKILL the leader while scaling to {target}",
            k + 1
        ));
        let before = ha.host_pods().await?;
        ha.scale(ns, target).await?;
        // Mid-flight: the host has moved at least a tenth of the way.
        wait_until("the scale under way on the host", WAIT, || async {
            let now = ha.host_pods().await?.len() as i32;
            Ok(((now - before.len() as i32).abs() >= LOAD / 10).then_some(()))
        })
        .await?;
        let leader = ha.leader().await?;
        let old_holder = ha.lease().await?.spec.and_then(|s| s.holder_identity);
        let snapshot = ha.host_pods().await?;
        let killed_at = Instant::now();
        ha.stop(leader, "KILL").await?;
        let next = ha.leader().await?;
        let gap = killed_at.elapsed().as_secs_f64();
        gaps.push(gap);
        // Its caches were warm: the catch-up after taking over is its own figure.
        let caught_up = ha.caught_up(next).await?;
        eprintln!(
            "[ha] {} took over {gap:.2}s after the SIGKILL and caught up {caught_up:.2}s after that",
            ha.replicas[next].pod
        );
        assert_ne!(next, leader);
        let new_holder = ha.lease().await?.spec.and_then(|s| s.holder_identity);
        assert_ne!(new_holder, old_holder, "the Lease names the new leader");
        // The kubelet restarts the killed container: it comes back as a standby.
        ha.start(leader).await?;
        let after = ha.converged(ns, target as usize).await?;
        for (name, uid) in &after {
            if let Some(old) = snapshot.get(name) {
                assert_eq!(old, uid, "host pod {name} was recreated across the failover");
            }
        }
        assert_eq!(ha.leader().await?, next, "the restarted replica stands by");
        ha.check_alive()?;
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "[ha] leader failover after SIGKILL (lease {}s, {} kills): p50 {:.2}s, max {:.2}s, all {:?}",
        ha.lease_s,
        gaps.len(),
        percentile(&sorted, 0.5),
        sorted.last().copied().unwrap_or(f64::NAN),
        gaps.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>()
    );
    if target == 0 {
        ha.scale(ns, LOAD).await?;
        ha.converged(ns, LOAD as usize).await?;
    }

    // --- SIGTERM: the leader releases the Lease, a standby takes it at once -----------------
    step("SIGTERM the leader: the Lease is released and taken before it would have expired");
    let leader = ha.leader().await?;
    let before = ha.lease().await?.spec.unwrap_or_default();
    let renewed = before
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .ok_or_else(|| anyhow::anyhow!("the leader's Lease has no renewTime"))?;
    let stopped_at = Instant::now();
    ha.stop(leader, "TERM").await?;
    let next = ha.leader().await?;
    eprintln!(
        "[ha] graceful handover: {} leads {:.2}s after the SIGTERM",
        ha.replicas[next].pod,
        stopped_at.elapsed().as_secs_f64()
    );
    let after = ha.lease().await?.spec.unwrap_or_default();
    let acquired = after
        .acquire_time
        .as_ref()
        .map(|t| t.0)
        .ok_or_else(|| anyhow::anyhow!("the new leader's Lease has no acquireTime"))?;
    let expiry = renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
        before.lease_duration_seconds.unwrap_or_default(),
    )))?;
    assert!(
        acquired < expiry,
        "the standby took the lease at {acquired}, not before the released lease's expiry {expiry}: the release was not seen"
    );
    assert_ne!(after.holder_identity, before.holder_identity);
    ha.start(leader).await?;

    // --- SIGKILL a virtual API server: the tenant goes on through the Service ---------------
    step("SIGKILL virtual API server 1 while the tenant works through the Service");
    let cms: Api<ConfigMap> = Api::namespaced(ha.tenant.clone(), ns);
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "before-kill"}, "data": {"k": "v"}}))?,
    )
    .await?;
    let probe = {
        let cms = cms.clone();
        let stop = tokio_util_like::Flag::default();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !flag.is_set() {
                let at = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(2), cms.get("before-kill"))
                    .await
                    .is_ok_and(|r| r.is_ok());
                samples.push((at, ok));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        });
        (stop, task)
    };
    let killed_at = Instant::now();
    ha.cp.kill("vc-1-apiserver").await?;
    // The tenant is served by API server 2 while server 1 is down.
    let during = cms.clone();
    wait_until("the tenant served while API server 1 is down", WAIT, || async {
        Ok(during
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": "during-kill"}, "data": {"k": "v"}}))?,
            )
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    // The kubelet restarts the k3s container.
    ha.cp.start("vc-1-apiserver").await?;
    probe.0.set();
    let samples = probe.1.await?;
    let mut longest = Duration::ZERO;
    let mut down_since: Option<Instant> = None;
    for (at, ok) in &samples {
        match (ok, down_since) {
            (false, None) => down_since = Some(*at),
            (true, Some(since)) => {
                longest = longest.max(at.duration_since(since));
                down_since = None;
            }
            _ => {}
        }
    }
    let failed = samples.iter().filter(|(_, ok)| !ok).count();
    eprintln!(
        "[ha] virtual API server kill: the tenant saw {failed} of {} reads fail, longest outage {:.2}s (server 1 down {:.1}s)",
        samples.len(),
        longest.as_secs_f64(),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        samples.iter().any(|(at, ok)| *ok && *at > killed_at),
        "the tenant's reads never succeeded after the kill"
    );
    for name in ["before-kill", "during-kill"] {
        assert!(cms.get_opt(name).await?.is_some(), "ConfigMap {name} was lost");
    }
    ha.scale(ns, LOAD / 2).await?;
    ha.converged(ns, (LOAD / 2) as usize).await?;
    ha.check_alive()?;

    // --- PostgreSQL down ---------------------------------------------------------------------
    let outage = Duration::from_secs(seconds_env("VNEST_HA_PG_OUTAGE", 20));
    step(&format!("stop PostgreSQL for {}s", outage.as_secs()));
    let snapshot = ha.host_pods().await?;
    // Acknowledged right before the stop, so it must be there after it: a datastore that loses
    // acknowledged writes leaves the API servers' watch caches ahead of it for good (see
    // hack/extra-vcluster.sh), and nothing above it can recover from that.
    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "before-outage"}, "data": {"k": "v"}}))?,
    )
    .await?;
    ha.cp.kill("postgres").await?;
    // The fault's length is the scenario itself, not a wait for a condition.
    tokio::time::sleep(outage).await;
    ha.cp.start("postgres").await?;
    wait_until("the tenant's scale accepted after the outage", WAIT, || async {
        Ok(ha.scale(ns, LOAD).await.ok())
    })
    .await?;
    assert!(
        cms.get_opt("before-outage").await?.is_some(),
        "PostgreSQL lost a write it had acknowledged before it was stopped"
    );
    // The virtual API servers, controller-managers and syncers all reconnect with backoff
    // after the datastore's outage: give the catch-up more time than a failover.
    let after = ha.converged_within(ns, LOAD as usize, 2 * WAIT).await?;
    for (name, uid) in &snapshot {
        assert_eq!(
            after.get(name),
            Some(uid),
            "host pod {name} lost or recreated across the datastore outage"
        );
    }
    ha.check_alive()?;

    // --- an upgrade: every replica restarted, one after the other -----------------------------
    step("restart every replica (an upgrade of the syncer binary): 0 host writes, no pod recreated");
    let snapshot = ha.host_pods().await?;
    let writes = ha.rolling_restart("").await?;
    assert_eq!(writes, 0.0, "the upgrade wrote to the host");
    assert_eq!(
        ha.host_pods().await?,
        snapshot,
        "the upgrade changed the host pods"
    );
    eprintln!(
        "[ha] upgrade: 0 host writes, {} host pods untouched",
        snapshot.len()
    );

    // --- an upgrade that changes the translation: patches, never recreates ------------------
    step("an upgrade that adds a marker: the host pods are patched, none is recreated");
    // The old version's host pods, as if it had not written the marker yet: strip it while
    // every replica is down, then start the "new version".
    for i in 0..ha.replicas.len() {
        ha.stop(i, "TERM").await?;
    }
    let marker = markers::ANNOTATION_SERVICE_ACCOUNT;
    let out =
        ha.w.env
            .kubectl(
                "HOST_KUBECONFIG",
                &[
                    "-n",
                    &ha.ns.name,
                    "annotate",
                    "pods",
                    "-l",
                    &format!("{}={VC}", markers::LABEL_MANAGED_BY),
                    &format!("{marker}-"),
                ],
            )
            .await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for i in 0..ha.replicas.len() {
        ha.start(i).await?;
    }
    let host_pods: Api<Pod> = Api::namespaced(ha.w.host.clone(), &ha.ns.name);
    let lp = ListParams::default().labels(&format!("{}={VC}", markers::LABEL_MANAGED_BY));
    wait_until("every host pod carries the marker again", WAIT, || async {
        let pods = host_pods.list(&lp).await?.items;
        Ok(pods
            .iter()
            .all(|p| p.annotations().contains_key(marker))
            .then_some(()))
    })
    .await?;
    // A patch shows on the host before the syncer has counted its answer: wait for the counts
    // (one scrape per replica for both, so that they add up), then require them exact.
    let (patches, others) = wait_until("the syncers counted the marker's patches", WAIT, || async {
        let (mut patches, mut all) = (0.0, 0.0);
        for i in 0..ha.replicas.len() {
            let w = ha.writes_by(i, &["patch", ""]).await?;
            patches += w[0];
            all += w[1];
        }
        Ok((patches as usize >= snapshot.len()).then_some((patches, all - patches)))
    })
    .await?;
    assert_eq!(
        ha.host_pods().await?,
        snapshot,
        "a host pod was recreated for a new marker"
    );
    assert_eq!(others, 0.0, "creates or deletes for a new marker");
    assert_eq!(patches as usize, snapshot.len(), "one patch per host pod");
    eprintln!(
        "[ha] translation change: {patches} patches for {} host pods, 0 creates, 0 deletes",
        snapshot.len()
    );

    ha.scale(ns, 0).await?;
    ha.converged(ns, 0).await?;
    ha.check_alive()?;
    let ns_name = ha.ns.name.clone();
    drop(ha.api);
    drop(ha.kubelet);
    for r in &mut ha.replicas {
        if let Some(mut c) = r.child.take() {
            let _ = c.kill().await;
        }
    }
    ha.ns.delete().await?;
    eprintln!("[ha] done; host namespace {ns_name} deleted");
    Ok(())
}

/// A stop flag shared between the test and its probe task.
mod tokio_util_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Default)]
    pub struct Flag(Arc<AtomicBool>);

    impl Flag {
        pub fn set(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}
