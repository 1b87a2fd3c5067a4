//! The kubeconfig export: the syncer keeps Secret `vc-<vcluster>` in the host namespace with a
//! working admin kubeconfig of the virtual cluster, owned by the vcluster's anchor, and puts it
//! back when it is deleted out of band.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use vnest_e2e::{Result, World, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// The `config` key of the export Secret, with its server pointed at `server` (the export names
/// the vcluster Service inside the host cluster, which a test on this machine cannot resolve).
fn kubeconfig_at(secret: &Secret, server: &str) -> Result<kube::config::Kubeconfig> {
    let data = secret.data.clone().unwrap_or_default();
    let text = String::from_utf8(
        data.get("config")
            .ok_or_else(|| anyhow::anyhow!("no config key"))?
            .0
            .clone(),
    )?;
    let mut kc = kube::config::Kubeconfig::from_yaml(&text)?;
    for cluster in &mut kc.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(server.to_owned());
        }
    }
    Ok(kc)
}

#[tokio::test]
async fn the_exported_kubeconfig_works_is_owned_and_comes_back() -> Result<()> {
    let w = World::connect().await?;
    let secrets: Api<Secret> = Api::namespaced(w.host.clone(), &w.host_ns);
    let name = format!("vc-{}", w.vcluster);
    let secret = wait_until("the export Secret", WAIT, || async {
        Ok(secrets.get_opt(&name).await?)
    })
    .await?;

    let data = secret.data.clone().unwrap_or_default();
    for key in [
        "config",
        "certificate-authority",
        "client-certificate",
        "client-key",
    ] {
        assert!(
            data.contains_key(key),
            "key {key} in {:?}",
            data.keys().collect::<Vec<_>>()
        );
    }
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "owned by the vcluster's anchor: {owners:?}");
    assert_eq!(owners[0].kind, "StatefulSet");
    let text = String::from_utf8(data["config"].0.clone())?;
    assert!(
        text.contains(&format!("https://{}.{}:443", w.vcluster, w.host_ns)),
        "server is the vcluster Service inside the host cluster: {text}"
    );

    // It works: with the server pointed at the local virtual API server, it lists namespaces.
    let local = kube::config::Kubeconfig::read_from(w.env.path("VIRTUAL_KUBECONFIG")?)?;
    let server = local
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| anyhow::anyhow!("no server in VIRTUAL_KUBECONFIG"))?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig_at(&secret, &server)?, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let namespaces = Api::<Namespace>::all(client).list(&ListParams::default()).await?;
    assert!(
        namespaces
            .items
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("kube-system"))
    );

    // Deleted out of band: it comes back (a new object with the same content).
    secrets.delete(&name, &DeleteParams::default()).await?;
    let old_uid = secret.metadata.uid.clone();
    let back = wait_until("the export Secret recreated", WAIT, || async {
        Ok(secrets
            .get_opt(&name)
            .await?
            .filter(|s| s.metadata.uid != old_uid && s.metadata.deletion_timestamp.is_none()))
    })
    .await?;
    assert_eq!(back.data, secret.data);
    Ok(())
}
