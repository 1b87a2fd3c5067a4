//! `vnest connect`: the exported kubeconfig, rewritten for a port-forward to the virtual API
//! server (or a given server), written or merged, and the forward itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::net::TcpListener;

use crate::cli::config::VclusterConfig;
use crate::cli::{CliError, ConnectArgs, ConnectOutput};

use super::*;

/// Listens on 127.0.0.1:<random> and forwards every connection to `pod`:`port` through the
/// host API (one port-forward per connection). Runs until the task is dropped.
pub async fn start_port_forward(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), CliError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pod.to_owned();
    let task = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                break;
            };
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                match pods.portforward(&pod, &[port]).await {
                    Ok(mut pf) => {
                        if let Some(upstream) = pf.take_stream(port) {
                            crate::splice::splice(conn, upstream, crate::splice::BUFFER).await;
                        }
                        let _ = pf.join().await;
                    }
                    Err(e) => eprintln!("port-forward to pod {pod}:{port} failed: {e}"),
                }
            });
        }
    });
    Ok((addr, task))
}

/// The context (and cluster and user) name `connect` writes.
pub fn context_name(name: &str, namespace: &str) -> String {
    format!("vnest_{name}_{namespace}")
}

/// The exported kubeconfig, renamed to [`context_name`] and pointed at `server`.
pub fn rewrite_kubeconfig(text: &str, context: &str, server: &str) -> Result<Kubeconfig, CliError> {
    let mut kc = Kubeconfig::from_yaml(text).map_err(|e| CliError::Other {
        what: "the exported kubeconfig".to_owned(),
        reason: e.to_string(),
    })?;
    kc.clusters.truncate(1);
    kc.auth_infos.truncate(1);
    kc.contexts.truncate(1);
    let (Some(cluster), Some(user), Some(ctx)) = (
        kc.clusters.first_mut(),
        kc.auth_infos.first_mut(),
        kc.contexts.first_mut(),
    ) else {
        return Err(CliError::Other {
            what: "the exported kubeconfig".to_owned(),
            reason: "it has no cluster, user or context".to_owned(),
        });
    };
    cluster.name = context.to_owned();
    if let Some(c) = cluster.cluster.as_mut() {
        c.server = Some(server.to_owned());
    }
    user.name = context.to_owned();
    ctx.name = context.to_owned();
    if let Some(c) = ctx.context.as_mut() {
        c.cluster = context.to_owned();
        c.user = Some(context.to_owned());
    }
    kc.current_context = Some(context.to_owned());
    Ok(kc)
}

/// `new` merged into `existing`: entries of the same name replaced, current context = new's.
pub fn merge_kubeconfig(mut existing: Kubeconfig, new: Kubeconfig) -> Kubeconfig {
    for c in new.clusters {
        existing.clusters.retain(|e| e.name != c.name);
        existing.clusters.push(c);
    }
    for u in new.auth_infos {
        existing.auth_infos.retain(|e| e.name != u.name);
        existing.auth_infos.push(u);
    }
    for c in new.contexts {
        existing.contexts.retain(|e| e.name != c.name);
        existing.contexts.push(c);
    }
    existing.current_context = new.current_context;
    existing
}

fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub async fn connect(args: &ConnectArgs) -> Result<(), CliError> {
    let (client, _) = host_client(&args.host).await?;
    let sts = find_vcluster(&client, &args.name, &args.namespace).await?;
    let export_name = exported_secret_name(&sts, &args.name);
    let config = VclusterConfig {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        export: crate::cli::config::ExportConfig {
            secret_name: Some(export_name),
            ..Default::default()
        },
        ..VclusterConfig::default()
    };
    connect_with(&client, &config, &args.output, args.timeout).await
}

/// The export Secret's name from the syncer's env (`VNEST_EXPORT_SECRET_NAME`), else `vc-<name>`.
fn exported_secret_name(sts: &StatefulSet, name: &str) -> String {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "syncer"))
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "VNEST_EXPORT_SECRET_NAME"))
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| format!("vc-{name}"))
}

pub(super) async fn connect_with(
    client: &Client,
    config: &VclusterConfig,
    out: &ConnectOutput,
    timeout: Duration,
) -> Result<(), CliError> {
    let (name, ns) = (&config.name, &config.namespace);
    let secret_name = config
        .export
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("vc-{name}"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let what = format!("Secret {secret_name} (the exported kubeconfig)");
    let spinner = Spinner::start(format!("waiting for {what}"));
    let text = wait_for(&spinner, &what, timeout, || async {
        let s = secrets
            .get_opt(&secret_name)
            .await
            .map_err(|e| CliError::kube("get", format!("Secret {secret_name:?} in namespace {ns:?}"), e))?;
        Ok(
            match s.and_then(|s| s.data).and_then(|d| d.get("config").cloned()) {
                Some(bytes) => Ok(String::from_utf8_lossy(&bytes.0).into_owned()),
                None => Err("not written yet by the syncer".to_owned()),
            },
        )
    })
    .await;
    let text = match text {
        Ok(t) => {
            spinner.done(format!("read {what}"));
            t
        }
        Err(e) => {
            spinner.fail();
            return Err(e);
        }
    };
    let context = context_name(name, ns);
    let (server, forward) = match &out.server {
        Some(s) => (s.clone(), None),
        None => {
            let pod_name = format!("{name}-0");
            let pod = Api::<Pod>::namespaced(client.clone(), ns)
                .get(&pod_name)
                .await
                .map_err(|e| CliError::kube("get", format!("pod {pod_name:?} in namespace {ns:?}"), e))?;
            let port = api_port_of(&pod);
            let (addr, task) = start_port_forward(client, ns, &pod_name, port).await?;
            (format!("https://127.0.0.1:{}", addr.port()), Some((task, port)))
        }
    };
    let kc = rewrite_kubeconfig(&text, &context, &server)?;
    // The virtual API server answers through it.
    let spinner = Spinner::start(format!("waiting for the virtual API server at {server}"));
    let probe_kc = kc.clone();
    let version = wait_for(&spinner, "the virtual API server", timeout, || {
        let kc = probe_kc.clone();
        async move {
            let cfg = match kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await {
                Ok(c) => c,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let c = match Client::try_from(cfg) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e.to_string())),
            };
            Ok(match c.apiserver_version().await {
                Ok(v) => Ok(v.git_version),
                Err(e) => Err(e.to_string()),
            })
        }
    })
    .await;
    match version {
        Ok(v) => spinner.done(format!("virtual API server {v} answers at {server}")),
        Err(e) => {
            spinner.fail();
            return Err(e);
        }
    }
    let yaml = serde_yaml::to_string(&kc).map_err(|e| CliError::Other {
        what: "writing the kubeconfig".to_owned(),
        reason: e.to_string(),
    })?;
    if out.print {
        print!("{yaml}");
    } else {
        let path = out
            .kubeconfig_out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("kubeconfig-{name}.yaml")));
        let merged = match std::fs::read_to_string(&path) {
            Ok(existing) if !existing.trim().is_empty() => {
                let existing = Kubeconfig::from_yaml(&existing).map_err(|e| CliError::Other {
                    what: format!("merging into {}", path.display()),
                    reason: e.to_string(),
                })?;
                merge_kubeconfig(existing, kc)
            }
            _ => kc,
        };
        let text = serde_yaml::to_string(&merged).map_err(|e| CliError::Other {
            what: "writing the kubeconfig".to_owned(),
            reason: e.to_string(),
        })?;
        write_private(&path, &text)?;
        let abs = std::fs::canonicalize(&path).unwrap_or(path);
        eprintln!("✓ context {context:?} written to {}", abs.display());
        println!("export KUBECONFIG={}", abs.display());
    }
    if let Some((task, port)) = forward {
        eprintln!("forwarding {server} -> pod {name}-0:{port} ({API_PORT_NAME}); press Ctrl-C to stop");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = task => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORTED: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: vnest\n  cluster:\n    server: https://vnest.ns:443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: vnest\n  context:\n    cluster: vnest\n    user: vnest\ncurrent-context: vnest\nusers:\n- name: vnest\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

    #[test]
    fn kubeconfigs_are_renamed_pointed_and_merged() {
        let kc = rewrite_kubeconfig(EXPORTED, "vnest_vnest_ns", "https://127.0.0.1:1234").unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("vnest_vnest_ns"));
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:1234")
        );
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(
            (ctx.cluster.as_str(), ctx.user.as_deref()),
            ("vnest_vnest_ns", Some("vnest_vnest_ns"))
        );
        let other = rewrite_kubeconfig(EXPORTED, "vnest_b_ns", "https://127.0.0.1:1").unwrap();
        let merged = merge_kubeconfig(other, kc.clone());
        assert_eq!(merged.contexts.len(), 2);
        assert_eq!(merged.current_context.as_deref(), Some("vnest_vnest_ns"));
        let again = merge_kubeconfig(merged, kc);
        assert_eq!(again.contexts.len(), 2, "same name replaced, not duplicated");
    }
}
