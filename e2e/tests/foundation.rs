//! The local world itself: host cluster with kwok nodes, the virtual control plane, the syncer's
//! identity and its admin endpoints. Runs against the control planes `hack/up.sh` started.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use vnest_e2e::{Env, Result, TestNs, http_get, wait_until};

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "nginx"}]}
            }
        }
    }))?)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn host_has_three_ready_kwok_nodes() -> Result<()> {
    let env = Env::load()?;
    let nodes: Api<Node> = Api::all(env.host_admin().await?);
    let ready = wait_until("3 Ready nodes", Duration::from_secs(60), || async {
        let list = nodes.list(&ListParams::default().labels("type=kwok")).await?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        Ok((ready.len() == 3).then_some(ready))
    })
    .await?;
    assert_eq!(ready, ["kwok-node-0", "kwok-node-1", "kwok-node-2"]);
    // In container mode one more node runs the vcluster pod's containers: Ready, and tainted so
    // that no tenant pod is ever placed there.
    if env.get("VNEST_RUNTIME")? == "containers" {
        let runner = nodes.get(env.get("RUNNER_NODE")?).await?;
        let spec = runner.spec.unwrap_or_default();
        let taints = spec.taints.unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == "vnest.dev/runner" && t.effect == "NoSchedule"),
            "{taints:?}"
        );
        let conditions = runner.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "{conditions:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn host_deployment_runs_pods_with_distinct_ips_and_simulated_logs_and_exec() -> Result<()> {
    let env = Env::load()?;
    let host = env.host_admin().await?;
    let ns = TestNs::new(&host, "e2e-host").await?;
    let deployments: Api<Deployment> = Api::namespaced(host.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &deployment("web", 3)?)
        .await?;

    let pods: Api<Pod> = Api::namespaced(host.clone(), &ns.name);
    let running = wait_until("3 Running pods with IPs", Duration::from_secs(30), || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| {
                let s = p.status.as_ref();
                s.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && s.and_then(|s| s.pod_ip.as_ref()).is_some()
            })
            .collect();
        Ok((running.len() == 3).then_some(running))
    })
    .await?;
    let ips: BTreeSet<String> = running
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 3, "pod IPs must be distinct: {ips:?}");
    let cidr_prefix = env
        .get("POD_CIDR")?
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    assert!(
        ips.iter().all(|ip| ip.starts_with(&cidr_prefix)),
        "{ips:?} not in {cidr_prefix}.x.x"
    );
    assert!(
        running
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
    );

    let pod = running[0].metadata.name.clone().unwrap_or_default();
    let logs = env
        .kubectl("HOST_KUBECONFIG", &["-n", &ns.name, "logs", &pod])
        .await?;
    assert!(
        logs.status.success(),
        "kubectl logs failed: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        stdout(&logs).contains("vnest simulated container log line 1"),
        "{}",
        stdout(&logs)
    );

    let exec = env
        .kubectl(
            "HOST_KUBECONFIG",
            &["-n", &ns.name, "exec", &pod, "--", "echo", "hello-from-exec"],
        )
        .await?;
    assert!(
        exec.status.success(),
        "kubectl exec failed: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(stdout(&exec), "hello-from-exec");
    ns.delete().await
}

#[tokio::test]
async fn virtual_deployment_creates_replicaset_and_pods_that_stay_virtual() -> Result<()> {
    let env = Env::load()?;
    let virt = env.virtual_admin().await?;
    let ns = TestNs::new(&virt, "e2e-virt").await?;
    Api::<Deployment>::namespaced(virt.clone(), &ns.name)
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await?;
    let rs: Api<ReplicaSet> = Api::namespaced(virt.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(virt.clone(), &ns.name);
    wait_until(
        "a ReplicaSet and 2 pods in the virtual cluster",
        Duration::from_secs(30),
        || async {
            let sets = rs.list(&ListParams::default()).await?.items.len();
            let pods = pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .len();
            Ok((sets == 1 && pods == 2).then_some(()))
        },
    )
    .await?;

    // High-level objects never reach the host namespace.
    let host = env.host_admin().await?;
    let host_ns = env.get("HOST_NAMESPACE")?;
    assert!(
        Api::<Deployment>::namespaced(host.clone(), host_ns)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert!(
        Api::<ReplicaSet>::namespaced(host, host_ns)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    ns.delete().await
}

#[tokio::test]
async fn both_api_servers_report_v1_35() -> Result<()> {
    let env = Env::load()?;
    for client in [env.host_admin().await?, env.virtual_admin().await?] {
        let version = client.apiserver_version().await?;
        assert_eq!((version.major.as_str(), version.minor.as_str()), ("1", "35"));
        assert!(
            version.git_version.starts_with("v1.35."),
            "{}",
            version.git_version
        );
    }
    Ok(())
}

async fn can_i(
    client: &Client,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[tokio::test]
async fn syncer_identity_has_only_namespaced_permissions() -> Result<()> {
    let env = Env::load()?;
    let syncer = env.syncer_host().await?;
    let ns = env.get("HOST_NAMESPACE")?;
    for (verb, resource, namespace, allowed) in [
        ("create", ("", "pods"), Some(ns), true),
        ("delete", ("", "secrets"), Some(ns), true),
        ("watch", ("apps", "statefulsets"), Some(ns), true),
        ("list", ("", "nodes"), None, false),
        ("list", ("", "pods"), None, false),
        ("create", ("", "pods"), Some("default"), false),
        ("get", ("", "secrets"), Some("kube-system"), false),
        ("update", ("apps", "statefulsets"), Some(ns), false),
        (
            "create",
            ("rbac.authorization.k8s.io", "clusterroles"),
            None,
            false,
        ),
    ] {
        assert_eq!(
            can_i(&syncer, verb, resource, namespace).await?,
            allowed,
            "can the syncer {verb} {resource:?} in {namespace:?}?"
        );
    }
    // The same, as a user would check it with kubectl.
    let no = env
        .kubectl("SYNCER_HOST_KUBECONFIG", &["auth", "can-i", "list", "nodes"])
        .await?;
    assert_eq!(stdout(&no), "no");
    let yes = env
        .kubectl(
            "SYNCER_HOST_KUBECONFIG",
            &["auth", "can-i", "create", "pods", "-n", ns],
        )
        .await?;
    assert_eq!(stdout(&yes), "yes");
    Ok(())
}

#[tokio::test]
async fn running_syncer_is_ready_and_exports_metrics() -> Result<()> {
    let env = Env::load()?;
    let admin = env.get("SYNCER_ADMIN_URL")?;
    let ready = http_get(&format!("{admin}/readyz")).await?;
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(
        ready.1.contains("[+] host ok") && ready.1.contains("[+] virtual ok"),
        "{}",
        ready.1
    );
    let metrics = http_get(env.get("SYNCER_METRICS_URL")?).await?;
    assert_eq!(metrics.0, 200);
    for needle in [
        "vnest_syncer_api_requests_total{cluster=\"host\"",
        "vnest_syncer_api_requests_total{cluster=\"virtual\"",
        "vnest_syncer_cluster_ready{cluster=\"host\"} 1",
    ] {
        assert!(
            metrics.1.contains(needle),
            "metrics lack {needle}:\n{}",
            metrics.1
        );
    }
    Ok(())
}

/// A second syncer process: not ready while the virtual kubeconfig is missing (and says why),
/// ready once pointed at the real one, and gone within the shutdown timeout after SIGTERM.
#[tokio::test]
async fn syncer_reports_why_it_is_not_ready_and_stops_cleanly_on_sigterm() -> Result<()> {
    let env = Env::load()?;
    for (virtual_kubeconfig, expect_ready) in [
        ("/nonexistent/admin.kubeconfig".to_owned(), false),
        (env.get("VIRTUAL_KUBECONFIG")?.to_owned(), true),
    ] {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = tokio::process::Command::new(env.path("VNEST_BIN")?)
            .args(["syncer", "--name", env.get("VCLUSTER_NAME")?])
            .args(["--host-namespace", env.get("HOST_NAMESPACE")?])
            .args(["--host-kubeconfig", env.get("SYNCER_HOST_KUBECONFIG")?])
            .args(["--virtual-kubeconfig", &virtual_kubeconfig])
            .args([
                "--data-dir",
                env.get("VIRTUAL_DATA_DIR")?,
                "--kubelet-listen-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{port}"),
                "--shutdown-timeout",
                "3s",
            ])
            // A Service that does not exist keeps this second syncer from ever writing (its
            // translation context stays unset) while the real one serves the other tests; its
            // DNS listens on a free loopback port.
            .args([
                "--service-name",
                "e2e-no-such-service",
                "--dns-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}/readyz");
        let (code, body) = wait_until(
            "the syncer's final readiness",
            Duration::from_secs(30),
            || async {
                let (code, body) = match http_get(&url).await {
                    Ok(r) => r,
                    Err(_) => return Ok(None), // not listening yet
                };
                let settled = if expect_ready {
                    code == 200
                } else {
                    body.contains("waiting for kubeconfig")
                };
                Ok(settled.then_some((code, body)))
            },
        )
        .await?;
        if expect_ready {
            assert_eq!(code, 200, "{body}");
        } else {
            assert_eq!(code, 503, "{body}");
            assert!(body.contains("/nonexistent/admin.kubeconfig"), "{body}");
        }

        let pid = child.id().ok_or_else(|| anyhow::anyhow!("syncer exited early"))?;
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("syncer still running 10 s after SIGTERM"))??;
        assert!(status.success(), "syncer exited with {status} after SIGTERM");
    }
    Ok(())
}

/// Container mode: host `kubectl logs` and `kubectl port-forward` of the vcluster pod reach its
/// containers (hack/node-kubelet, the kubelet API of the runner's node, serves them from the
/// containers' log files and ports): the init container's log names the service CIDR, and the
/// syncer's port `admin` answers /readyz through the forward.
#[tokio::test]
async fn host_logs_and_port_forward_reach_the_vcluster_pods_containers() -> Result<()> {
    let env = Env::load()?;
    if env.get("VNEST_RUNTIME")? != "containers" {
        eprintln!("process mode: the vcluster pod's containers are local processes");
        return Ok(());
    }
    let ns = env.get("HOST_NAMESPACE")?;
    let pod = format!("{}-0", env.get("VCLUSTER_NAME")?);
    let out = env
        .kubectl(
            "HOST_KUBECONFIG",
            &["-n", ns, "logs", &pod, "-c", "detect-service-cidr"],
        )
        .await?;
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && logs.contains(env.get("SERVICE_CIDR")?),
        "{logs}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut forward = tokio::process::Command::new(env.path("KUBECTL")?)
        .arg("--kubeconfig")
        .arg(env.path("HOST_KUBECONFIG")?)
        .args([
            "-n",
            ns,
            "port-forward",
            &format!("pod/{pod}"),
            &format!("{port}:admin"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let body = wait_until(
        "the syncer's /readyz through a host port-forward",
        Duration::from_secs(30),
        || async {
            // Reads until the answer is complete: kwok's forward does not pass the server's
            // close on, so reading to EOF would wait for the idle timeout.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return Ok(None);
            };
            conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: syncer\r\nConnection: close\r\n\r\n")
                .await?;
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 4096];
                while !String::from_utf8_lossy(&got).contains("virtual ok") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            let text = String::from_utf8_lossy(&got).into_owned();
            Ok((read.is_ok() && text.starts_with("HTTP/1.1 200")).then_some(text))
        },
    )
    .await?;
    let _ = forward.kill().await;
    assert!(body.contains("virtual ok"), "{body}");
    Ok(())
}

/// A host Event named `name` in `namespace` about a made-up pod there.
fn host_event(namespace: &str, name: &str) -> Result<k8s_openapi::api::core::v1::Event> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "somebody", "namespace": namespace, "apiVersion": "v1"},
        "reason": "Tested",
        "message": name,
        "type": "Normal",
    }))?)
}

/// What the stream gave, by name: (listed, applied, deleted, lists started).
#[derive(Default, Debug)]
struct Seen {
    listed: Vec<String>,
    applied: Vec<String>,
    deleted: Vec<String>,
    lists: usize,
    list_done: usize,
}

/// Reads `stream` until `done(seen)` holds (30 s at most).
async fn read_until<S, K>(stream: &mut S, seen: &mut Seen, done: impl Fn(&Seen) -> bool) -> Result<()>
where
    S: futures::Stream<Item = kube::runtime::watcher::Result<kube::runtime::watcher::Event<K>>> + Unpin,
    K: kube::Resource,
{
    use futures::StreamExt;
    use kube::ResourceExt;
    use kube::runtime::watcher::Event as W;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("the stream gave no more before the deadline: {seen:?}"))?;
        match item.ok_or_else(|| anyhow::anyhow!("the stream ended"))?? {
            W::Init => seen.lists += 1,
            W::InitApply(e) => seen.listed.push(e.name_any()),
            W::InitDone => seen.list_done += 1,
            W::Apply(e) => seen.applied.push(e.name_any()),
            W::Delete(e) => seen.deleted.push(e.name_any()),
        }
    }
    Ok(())
}

/// The stream every cache of a kind with a watch cache loads from (`unbookmarked::cached`:
/// one whole LIST from the watch cache, split into items as it arrives), against the host API
/// server: 200 ConfigMaps of 4 KiB (a list of ~1 MB, so items span the body's chunks) are
/// listed whole and only those the selector picks, then creates and deletes are followed
/// across many ends of its watch (1 s server-side timeouts), each once, with one list.
#[tokio::test]
async fn a_cached_kind_loads_by_one_whole_list_then_follows_every_change_across_watch_ends() -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let env = Env::load()?;
    let host = env.host_admin().await?;
    let ns = TestNs::new(&host, "e2e-wholelist").await?;
    let api: Api<ConfigMap> = Api::namespaced(host.clone(), &ns.name);
    let configmap = |name: &str, picked: bool| -> Result<ConfigMap> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"picked": picked.to_string()}},
            // Quotes, brackets and escapes inside strings must not end an item.
            "data": {"body": format!("{name} \"]}}{{[ \\ {}", "x".repeat(4096))},
        }))?)
    };
    let mut want: Vec<String> = (0..200).map(|i| format!("cm-{i:03}")).collect();
    for name in &want {
        api.create(&PostParams::default(), &configmap(name, true)?)
            .await?;
    }
    api.create(&PostParams::default(), &configmap("not-picked", false)?)
        .await?;
    let config = kube::runtime::watcher::Config::default()
        .timeout(1)
        .labels("picked=true");
    let mut stream = Box::pin(vnest::engine::unbookmarked::cached(api.clone(), config));
    let mut seen = Seen::default();
    read_until(&mut stream, &mut seen, |s| s.list_done == 1).await?;
    seen.listed.sort();
    want.sort();
    assert_eq!(seen.listed, want, "every picked ConfigMap, whole, once");

    let started = std::time::Instant::now();
    let mut created = Vec::new();
    while started.elapsed() < Duration::from_millis(3500) {
        let name = format!("during-{}", created.len());
        api.create(&PostParams::default(), &configmap(&name, true)?)
            .await?;
        created.push(name.clone());
        read_until(&mut stream, &mut seen, |s| s.applied.contains(&name)).await?;
    }
    api.delete("cm-000", &Default::default()).await?;
    read_until(&mut stream, &mut seen, |s| !s.deleted.is_empty()).await?;
    assert_eq!(seen.applied, created, "every change once, in order");
    assert_eq!(seen.deleted, ["cm-000"]);
    assert_eq!(seen.lists, 1, "each watch end was resumed, never listed again");
    assert!(created.len() >= 3, "{created:?}");
    ns.delete().await?;
    Ok(())
}

/// The stream of the syncer's host Events watch (`vnest::engine::unbookmarked`: the host API
/// server keeps no watch cache for Events, so it lists again after a watch that ended early),
/// against the host API server, with one whole LIST (the default), LIST pages and a streamed
/// list: it lists what exists, then follows creates and deletes across many ends of its watch
/// (1 s server-side timeouts, each resumed where it stopped), none lost, none repeated, and
/// lists only once.
#[tokio::test]
async fn the_host_events_stream_lists_once_then_follows_every_change_across_watch_ends() -> Result<()> {
    let env = Env::load()?;
    let host = env.host_admin().await?;
    let paged = kube::runtime::watcher::Config::default().timeout(1);
    for (config, whole) in [
        (paged.clone(), true),
        (paged.clone(), false),
        (paged.streaming_lists(), false),
    ] {
        let ns = TestNs::new(&host, "e2e-evstream").await?;
        follow_events(&host, &ns.name, config, whole).await?;
        ns.delete().await?;
    }
    Ok(())
}

async fn follow_events(
    host: &Client,
    ns: &str,
    config: kube::runtime::watcher::Config,
    whole: bool,
) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(host.clone(), ns);
    api.create(&PostParams::default(), &host_event(ns, "before")?)
        .await?;
    let mode = if whole {
        "whole LIST".to_owned()
    } else {
        format!("{:?}", config.initial_list_strategy)
    };
    let mut stream = Box::pin(vnest::engine::unbookmarked::stream(api.clone(), config, whole));
    let mut seen = Seen::default();
    read_until(&mut stream, &mut seen, |s| !s.listed.is_empty()).await?;

    // Changes one at a time for 3.5 s: the 1 s watches end (and are resumed) in between.
    let started = std::time::Instant::now();
    let mut created = Vec::new();
    while started.elapsed() < Duration::from_millis(3500) {
        let name = format!("during-{}", created.len());
        api.create(&PostParams::default(), &host_event(ns, &name)?)
            .await?;
        created.push(name.clone());
        read_until(&mut stream, &mut seen, |s| s.applied.contains(&name)).await?;
    }
    api.delete("before", &Default::default()).await?;
    read_until(&mut stream, &mut seen, |s| !s.deleted.is_empty()).await?;

    assert_eq!(seen.listed, ["before"], "{mode}");
    assert_eq!(seen.applied, created, "{mode}: every change once, in order");
    assert_eq!(seen.deleted, ["before"], "{mode}");
    assert_eq!(
        seen.lists, 1,
        "{mode}: each watch ran its course: resumed, never listed again"
    );
    assert!(created.len() >= 3, "{mode}: {created:?}");
    Ok(())
}
