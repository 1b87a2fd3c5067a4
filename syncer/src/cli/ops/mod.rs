//! The CLI's commands against the host API, one file each (`list`, `create`, `connect`,
//! `delete`); here what they share: progress spinners and waits, the host client and discovery,
//! finding a namespace's vclusters.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use super::{CliError, HostArgs};

/// The field manager of every write of the CLI.
pub const FIELD_MANAGER: &str = "vnest-cli";
/// The label every object of a vcluster carries (value: its name).
pub const LABEL_VCLUSTER: &str = "vnest.dev/vcluster";
/// The label cluster-scoped objects carry with the vcluster's namespace.
pub const LABEL_VCLUSTER_NAMESPACE: &str = "vnest.dev/vcluster-namespace";
/// The k3s API port in the vcluster pod when its spec names none (`https`).
pub const API_PORT: u16 = 6443;

/// The name of the vcluster pod's containerPort of the virtual API server.
pub const API_PORT_NAME: &str = "https";

/// The containerPort named [`API_PORT_NAME`] in `pod`'s spec (`ports.api` moves it), else
/// [`API_PORT`].
pub fn api_port_of(pod: &Pod) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(API_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(API_PORT)
}

// --- progress -----------------------------------------------------------------------------------

/// A spinner on stderr while something is awaited; a plain line when stderr is no terminal.
struct Spinner(ProgressBar);

impl Spinner {
    fn start(msg: impl Into<String>) -> Self {
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"));
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        Spinner(pb)
    }
    fn set(&self, msg: impl Into<String>) {
        self.0.set_message(msg.into());
    }
    fn done(self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.0.is_hidden() {
            eprintln!("✓ {msg}");
            self.0.finish_and_clear();
        } else {
            self.0
                .set_style(ProgressStyle::with_template("✓ {msg}").expect("a valid template"));
            self.0.finish_with_message(msg);
        }
    }
    fn fail(self) {
        self.0.abandon();
    }
}

/// Polls `probe` every 500 ms until it returns `Some`, or fails with a timeout naming `what`
/// (and the probe's last note).
async fn wait_for<T, F, Fut>(
    spinner: &Spinner,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, CliError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let note = match probe().await? {
            Ok(v) => return Ok(v),
            Err(note) => note,
        };
        spinner.set(format!("{what}: {note}"));
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Timeout {
                what: what.to_owned(),
                after: timeout,
                detail: if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// --- clients and discovery ----------------------------------------------------------------------

/// The host client from `--kubeconfig`/`--context` or kubectl's defaults.
pub async fn host_client(host: &HostArgs) -> Result<(Client, String), CliError> {
    let opts = KubeConfigOptions {
        context: host.context.clone(),
        ..KubeConfigOptions::default()
    };
    let client_err = |e: &dyn std::fmt::Display| CliError::Client(e.to_string());
    let config = match &host.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Client(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| client_err(&e))?
        }
        None if host.context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| client_err(&e))?,
        None => kube::Config::infer().await.map_err(|e| client_err(&e))?,
    };
    let default_ns = config.default_namespace.clone();
    let mut config = config;
    crate::clients::set_user_agent(&mut config, "cli");
    let client = Client::try_from(config).map_err(|e| CliError::Client(e.to_string()))?;
    Ok((client, default_ns))
}

/// The API of one object's kind (discovered once per kind).
struct Apis {
    client: Client,
    cache: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
}

impl Apis {
    fn new(client: Client) -> Self {
        Self {
            client,
            cache: HashMap::new(),
        }
    }

    async fn resolve(&mut self, gvk: &GroupVersionKind) -> Result<(ApiResource, ApiCapabilities), CliError> {
        if let Some(hit) = self.cache.get(gvk) {
            return Ok(hit.clone());
        }
        let found = kube::discovery::pinned_kind(&self.client, gvk)
            .await
            .map_err(|e| {
                CliError::kube(
                    "discover",
                    format!("{}/{} {}", gvk.group, gvk.version, gvk.kind),
                    e,
                )
            })?;
        self.cache.insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// The API for `gvk` in `namespace` (ignored for cluster-scoped kinds).
    async fn api(
        &mut self,
        gvk: &GroupVersionKind,
        namespace: &str,
    ) -> Result<(Api<DynamicObject>, bool), CliError> {
        let (ar, caps) = self.resolve(gvk).await?;
        Ok(match caps.scope {
            Scope::Namespaced => (Api::namespaced_with(self.client.clone(), namespace, &ar), true),
            Scope::Cluster => (Api::all_with(self.client.clone(), &ar), false),
        })
    }
}

fn gvk_of(o: &Value) -> GroupVersionKind {
    let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(
        group,
        version,
        o.get("kind").and_then(Value::as_str).unwrap_or_default(),
    )
}

fn describe(o: &Value) -> String {
    format!(
        "{}/{}",
        o.get("kind").and_then(Value::as_str).unwrap_or("?"),
        o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?")
    )
}

// --- the vclusters of a namespace ---------------------------------------------------------------

async fn vcluster_names(client: &Client, namespace: &str) -> Result<Vec<String>, CliError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(LABEL_VCLUSTER))
        .await
        .map_err(|e| {
            CliError::kube(
                "list",
                format!("vclusters (StatefulSets) in namespace {namespace:?}"),
                e,
            )
        })?;
    Ok(list.items.iter().map(|s| s.name_any()).collect())
}

/// The vcluster's StatefulSet, or NotFound naming the vclusters that exist there.
async fn find_vcluster(client: &Client, name: &str, namespace: &str) -> Result<StatefulSet, CliError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let found = api.get_opt(name).await.map_err(|e| {
        CliError::kube(
            "get",
            format!("StatefulSet {name:?} in namespace {namespace:?}"),
            e,
        )
    })?;
    match found {
        Some(s) if s.labels().contains_key(LABEL_VCLUSTER) => Ok(s),
        _ => {
            let existing = vcluster_names(client, namespace).await?;
            Err(CliError::NotFound {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                existing: if existing.is_empty() {
                    "none".to_owned()
                } else {
                    existing.join(", ")
                },
            })
        }
    }
}

mod connect;
mod create;
mod delete;
mod list;

pub use connect::*;
pub use create::*;
pub use delete::*;
pub use list::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_port_is_the_pods_port_named_https() {
        let pod = |ports: Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "x-0"}, "spec": {"containers": [
                    {"name": "k3s", "ports": ports},
                    {"name": "syncer", "ports": [{"name": "admin", "containerPort": 8080}]}
                ]}}),
            )
            .unwrap()
        };
        assert_eq!(
            api_port_of(&pod(
                serde_json::json!([{"name": "https", "containerPort": 16443}])
            )),
            16443
        );
        assert_eq!(api_port_of(&pod(serde_json::json!([]))), API_PORT);
    }
}
