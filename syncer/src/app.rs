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
use crate::error::Cluster;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::{admin, clients};

/// Runs the syncer until a termination signal (Ok) or a fatal failure (Err).
pub async fn run(config: SyncerConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("creating metrics")?;
    let readiness = Readiness::new(metrics.clone());
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signals(cancel.clone()));

    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    let (admin_addr, serve) = admin::bind(
        config.admin_addr,
        admin::router(readiness.clone(), metrics.clone()),
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
    let host = HostClient::new(&config.host, config.host_rate, &metrics)
        .await
        .context("connecting to the host cluster")?;
    let Some(virt) = wait_for_virtual_client(&config, &metrics, &readiness, &cancel).await? else {
        return Ok(()); // cancelled while waiting
    };

    let (anchor_tx, _anchor_rx) = watch::channel(None);
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

    supervise(tasks, cancel, config.shutdown_timeout).await
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
        () = cancel.cancelled() => None,
        done = tasks.join_next() => done,
    };
    let failure = match early {
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
