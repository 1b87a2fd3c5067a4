//! Wiring and supervision: builds the clients, starts the admin server and the long-lived tasks,
//! and stops everything on SIGTERM/SIGINT. A critical task that ends on its own makes the process
//! exit non-zero: the syncer never runs half-alive.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Api;
use kube::core::PartialObjectMeta;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clients::{HostClient, VirtualClient};
use crate::config::{OwnerKind, SyncerConfig};
use crate::engine::events::Events;
use crate::engine::{Shared, TranslateCtx};
use crate::error::Cluster;
use crate::health::{self, Readiness};
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::resources::{self, KindOptions};
use crate::{admin, clients};

/// Runs the syncer until a termination signal (Ok) or a fatal failure (Err).
pub async fn run(config: SyncerConfig) -> anyhow::Result<()> {
    let initial_sync = crate::engine::progress::InitialSync::new();
    let metrics = Metrics::new().context("creating metrics")?;
    let readiness = Readiness::new(metrics.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signals(cancel.clone()));

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let (role_tx, leadership) = match &config.election {
        Some(_) => {
            let (tx, leadership) = Leadership::elected();
            (Some(tx), leadership)
        }
        None => (None, Leadership::alone()),
    };

    let (admin_addr, serve) = admin::bind(
        config.admin_addr,
        admin::router(readiness.clone(), metrics.clone(), leadership.clone()),
        cancel.clone(),
    )
    .await?;
    tracing::info!(addr = %admin_addr, "admin server listening (/livez /readyz /metrics)");
    tasks.spawn(async move { ("admin server", serve.await.map_err(anyhow::Error::from)) });

    tracing::info!(
        vcluster = %config.name,
        host_namespace = %config.host_namespace,
        owner = %format!("{}/{}", config.owner.kind.kind(), config.owner.name),
        "starting syncer"
    );
    let (host, host_streams_client) = HostClient::with_streams(&config.host, config.host_rate, &metrics)
        .await
        .context("connecting to the host cluster")?;
    if let (Some(settings), Some(role_tx)) = (config.election.clone(), role_tx) {
        let done = spawn_election(&config, settings, role_tx, &metrics, &cancel)?;
        tasks.spawn(async move {
            let result = done
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the leader election thread ended")));
            ("leader election", result)
        });
    }
    let Some(virt) = wait_for_virtual_client(&config, &metrics, &readiness, &cancel).await? else {
        return Ok(()); // cancelled while waiting
    };

    let (anchor_tx, anchor_rx) = watch::channel(None);
    {
        let (client, ns, owner) = (
            host.0.clone(),
            config.host_namespace.clone(),
            config.owner.clone(),
        );
        let (readiness, cancel) = (readiness.clone(), cancel.clone());
        tasks.spawn(async move {
            match owner.kind {
                OwnerKind::StatefulSet => {
                    let api: Api<PartialObjectMeta<StatefulSet>> = Api::namespaced(client, &ns);
                    health::watch_host_anchor(api, owner, readiness, anchor_tx, cancel).await;
                }
                OwnerKind::Deployment => {
                    let api: Api<PartialObjectMeta<Deployment>> = Api::namespaced(client, &ns);
                    health::watch_host_anchor(api, owner, readiness, anchor_tx, cancel).await;
                }
                OwnerKind::Service => {
                    let api: Api<PartialObjectMeta<Service>> = Api::namespaced(client, &ns);
                    health::watch_host_anchor(api, owner, readiness, anchor_tx, cancel).await;
                }
            }
            ("host anchor watch", Ok(()))
        });
    }
    {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(virt.0.clone());
        let (readiness, cancel) = (readiness.clone(), cancel.clone());
        tasks.spawn(async move {
            health::watch_virtual(api, readiness, cancel).await;
            ("virtual namespace watch", Ok(()))
        });
    }

    // The translation context needs the anchor (ownerReference) and the vcluster Service's IP.
    let (ctx_tx, ctx_rx) = watch::channel(None);
    {
        let api: Api<Service> = Api::namespaced(host.0.clone(), &config.host_namespace);
        let (config, cancel) = (config.clone(), cancel.clone());
        tasks.spawn(async move {
            publish_translate_ctx(api, config, anchor_rx, ctx_tx, cancel).await;
            ("translation context", Ok(()))
        });
    }
    let (virtual_version, virtual_streams) = match virt.0.apiserver_version().await {
        Ok(v) => (v.git_version, config.sync.initial_list.streams(&v.minor)),
        Err(error) => {
            tracing::warn!(%error, "cannot read the virtual API server version; nodes report 'unknown'");
            ("unknown".into(), config.sync.initial_list.streams(""))
        }
    };
    let host_streams = match host.0.apiserver_version().await {
        Ok(v) => config.sync.initial_list.streams(&v.minor),
        Err(error) => {
            tracing::warn!(%error, "cannot read the host API server version; caches load by LIST");
            config.sync.initial_list.streams("")
        }
    };
    let whole_lists = config.sync.initial_list.whole_lists();
    tracing::info!(
        whole_lists,
        host_streams,
        virtual_streams,
        "how caches load (whole LISTs from the watch caches; streamed or paged where none)"
    );
    let translate_rx = ctx_rx.clone();
    let shared = Arc::new(Shared {
        host: host.0.clone(),
        virt: virt.0.clone(),
        host_namespace: config.host_namespace.clone(),
        translate: ctx_rx,
        metrics: metrics.clone(),
        events: Events::new(virt.0.clone()).hiding_host_names(&config.name, &config.host_namespace),
        cancel: cancel.clone(),
        workers: config.sync.workers,
        initial_sync: initial_sync.clone(),
        leadership: leadership.clone(),
    });
    {
        let (metrics, ctx, cancel) = (metrics.clone(), shared.translate.clone(), cancel.clone());
        let elected = config.election.is_some();
        tasks.spawn(async move {
            // A standby never catches up (its workers wait): it reports once it leads, timed from
            // then (with an election the figure is the takeover's catch-up).
            tokio::select! {
                () = leadership.leading() => {
                    let since = if elected { std::time::Instant::now() } else { initial_sync.started() };
                    initial_sync.report(since, metrics, ctx, cancel.clone()).await;
                }
                () = cancel.cancelled() => {}
            }
            // Every task lives until shutdown (an early exit means a failure to the supervisor).
            cancel.cancelled().await;
            ("initial sync report", Ok(()))
        });
    }
    {
        let (metrics, cancel) = (metrics.clone(), cancel.clone());
        tasks.spawn(async move {
            crate::memory::release_after_bursts(metrics, cancel).await;
            ("memory release", Ok(()))
        });
    }
    let dns_stores = resources::start(
        shared,
        KindOptions {
            vcluster: config.name.clone(),
            kinds: config.kinds.clone(),
            host_namespace: config.host_namespace.clone(),
            data_dir: config.data_dir.clone(),
            virtual_version,
            service_name: config.sync.service_name.clone(),
            whole_lists,
            host_streams,
            virtual_streams,
        },
        &mut tasks,
    )
    .context("declaring the synced kinds")?;

    {
        let deps = crate::kubelet::KubeletDeps {
            host: host_streams_client,
            virt: virt.0.clone(),
            vcluster: config.name.clone(),
            host_namespace: config.host_namespace.clone(),
            virtual_pods: dns_stores.virtual_pods.clone(),
            host_pods: dns_stores.host_pods.clone(),
            translate: translate_rx,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        };
        let settings = config.kubelet.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let result = crate::kubelet::run(settings, deps)
                .await
                .map_err(anyhow::Error::from);
            // Serving ends only at shutdown; wait for it so the supervisor sees no early exit.
            if result.is_ok() {
                cancel.cancelled().await;
            }
            ("kubelet endpoint", result)
        });
    }
    serve_dns(&config, dns_stores, &cancel, &mut tasks).await?;
    supervise(tasks, cancel, config.shutdown_timeout).await
}

/// Runs the leader election on a thread and runtime of its own with a host client of its own:
/// renewing the lease must not wait for a worker thread or a connection that a burst of
/// reconciles keeps busy (a late renewal makes the leader step down).
fn spawn_election(
    config: &SyncerConfig,
    settings: leader::ElectionSettings,
    role_tx: watch::Sender<leader::Role>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (access, ns) = (config.host.clone(), config.host_namespace.clone());
    let (metrics, cancel) = (metrics.clone(), cancel.clone());
    std::thread::Builder::new()
        .name("leader-election".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let client = HostClient::for_election(&access, &metrics)
                            .await
                            .context("connecting to the host cluster for the leader election")?;
                        leader::run(client, ns, settings, role_tx, metrics, cancel)
                            .await
                            .map_err(anyhow::Error::from)
                    })
                });
            let _ = done_tx.send(result);
        })
        .context("starting the leader election thread")?;
    Ok(done_rx)
}

/// Starts the DNS server over the Service and Endpoints caches.
async fn serve_dns(
    config: &SyncerConfig,
    dns_stores: resources::Stores,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<(&'static str, anyhow::Result<()>)>,
) -> anyhow::Result<()> {
    let source = Arc::new(crate::dns::source::StoreSource {
        services: dns_stores.services,
        endpoints: dns_stores.endpoints,
    });
    let dns_config = crate::dns::DnsConfig {
        listen: config.dns.listen,
        cluster_domain: config.dns.cluster_domain.clone(),
        upstreams: config.dns.upstreams.clone(),
        ttl: crate::dns::DEFAULT_TTL,
    };
    let stop = cancel.clone();
    let (dns_addr, serve_dns) = crate::dns::bind(dns_config, source, async move { stop.cancelled().await })
        .await
        .context("starting the DNS server")?;
    tracing::info!(addr = %dns_addr, domain = %config.dns.cluster_domain, "DNS server listening (UDP and TCP)");
    tasks.spawn(async move { ("dns server", serve_dns.await.map_err(anyhow::Error::from)) });

    Ok(())
}

/// Publishes the translation context whenever the anchor or the vcluster Service changes;
/// `None` while either is unknown (reconciles then wait instead of writing half-marked objects).
async fn publish_translate_ctx(
    api: Api<Service>,
    config: SyncerConfig,
    mut anchor: watch::Receiver<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    ctx: watch::Sender<Option<TranslateCtx>>,
    cancel: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    // The vcluster Service (API + kubelet) and its DNS Service, each watched by name.
    let watch_one = |name: &str| {
        let fields = format!("metadata.name={name}");
        watcher::watcher(api.clone(), crate::engine::watch::config().fields(&fields)).default_backoff()
    };
    let main = watch_one(&config.sync.service_name);
    let dns = watch_one(&config.dns.service_name);
    futures::pin_mut!(main, dns);
    let ip_of = |svc: &Service| {
        svc.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
    };
    let apply = |slot: &mut Option<String>, event: Event<Service>| match event {
        Event::Apply(s) | Event::InitApply(s) => *slot = ip_of(&s),
        Event::Delete(_) | Event::Init => *slot = None,
        Event::InitDone => {}
    };
    let (mut service_ip, mut dns_ip): (Option<String>, Option<String>) = (None, None);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = anchor.changed() => if changed.is_err() { return },
            next = main.next() => match next {
                None => return,
                Some(Ok(e)) => apply(&mut service_ip, e),
                Some(Err(error)) => {
                    tracing::warn!(%error, service = %config.sync.service_name, "watching the vcluster Service failed; retrying");
                    continue;
                }
            },
            next = dns.next() => match next {
                None => return,
                Some(Ok(e)) => apply(&mut dns_ip, e),
                Some(Err(error)) => {
                    tracing::warn!(%error, service = %config.dns.service_name, "watching the DNS Service failed; retrying");
                    continue;
                }
            },
        }
        let owner = anchor.borrow().clone();
        let next = match (owner, &service_ip) {
            (Some(owner), Some(ip)) => Some(TranslateCtx {
                vcluster: config.name.clone(),
                host_namespace: config.host_namespace.clone(),
                owner,
                kube_service_ip: ip.clone(),
                dns_nameserver: config
                    .dns
                    .nameserver
                    .map(|a| a.to_string())
                    .or_else(|| dns_ip.clone())
                    .unwrap_or_else(|| ip.clone()),
            }),
            _ => None,
        };
        ctx.send_if_modified(|cur| {
            let changed = *cur != next;
            if changed {
                match &next {
                    Some(c) => tracing::info!(service_ip = %c.kube_service_ip, dns_ip = %c.dns_nameserver, owner_uid = %c.owner.uid, "translation context ready"),
                    None => tracing::info!("translation context not ready (owner or Service missing)"),
                }
                cur.clone_from(&next);
            }
            changed
        });
    }
}

/// k3s writes its admin kubeconfig only once it has started, and the syncer usually starts
/// first: wait for the file (reporting why on /readyz), then build the client.
async fn wait_for_virtual_client(
    config: &SyncerConfig,
    metrics: &Metrics,
    readiness: &Arc<Readiness>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<VirtualClient>> {
    let path: &Path = &config.virtual_kubeconfig;
    let mut logged = false;
    while !path.exists() {
        if !logged {
            tracing::info!(path = %path.display(), "waiting for the virtual cluster's kubeconfig");
            logged = true;
        }
        readiness.set(
            Cluster::Virtual,
            Some(format!("waiting for kubeconfig {}", path.display())),
        );
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    let client = clients::VirtualClient::new(path, config.virtual_rate, metrics)
        .await
        .context("connecting to the virtual cluster")?;
    Ok(Some(client))
}

/// Waits for cancellation or for a critical task to end early; then gives every task up to
/// `timeout` to finish before returning.
async fn supervise(
    mut tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    cancel: CancellationToken,
    timeout: Duration,
) -> anyhow::Result<()> {
    let early = tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        done = tasks.join_next() => done,
    };
    let failure = match early {
        // A task that ends because shutdown began is not a failure.
        _ if cancel.is_cancelled() => None,
        None => None,
        Some(Ok((name, Ok(())))) => Some(anyhow::anyhow!("{name} stopped unexpectedly")),
        Some(Ok((name, Err(error)))) => Some(error.context(format!("{name} failed"))),
        Some(Err(join)) => Some(anyhow::anyhow!("a task panicked: {join}")),
    };
    if let Some(error) = &failure {
        tracing::error!(error = %format!("{error:#}"), "critical task ended; shutting down");
    } else {
        tracing::info!("shutting down");
    }
    cancel.cancel();
    let drained = tokio::time::timeout(timeout, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            timeout_s = timeout.as_secs_f64(),
            "tasks did not stop in time; exiting anyway"
        );
        tasks.abort_all();
    }
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// First SIGTERM/SIGINT cancels gracefully; a second one exits at once.
async fn cancel_on_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; SIGTERM will kill the process without cleanup");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            tracing::info!("termination signal received");
            cancel.cancel();
        } else {
            tracing::warn!("second termination signal: exiting now");
            std::process::exit(130);
        }
    }
}
