//! The CLI's commands against the host API: server-side apply of the rendered objects,
//! waits with spinners, the port-forward to the virtual API server, list and delete.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use tokio::net::TcpListener;

use super::config::VclusterConfig;
use super::{CliError, ConnectArgs, ConnectOutput, CreateArgs, DeleteArgs, HostArgs, ListArgs, render};
use crate::markers;

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

// --- list ---------------------------------------------------------------------------------------

/// One row of `vnest list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub namespace: String,
    pub ready: String,
    pub k3s_version: String,
    pub synced_pods: usize,
    pub age: String,
}

/// `5s`, `3m`, `4h`, `2d` as kubectl prints ages.
pub fn format_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The tag of an image reference (`latest` when none).
pub fn image_tag(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => no_digest[i + 1..].to_owned(),
        _ => "latest".to_owned(),
    }
}

pub fn format_table(rows: &[Row]) -> String {
    let header = ["NAME", "NAMESPACE", "READY", "K3S VERSION", "SYNCED PODS", "AGE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.namespace.clone(),
                r.ready.clone(),
                r.k3s_version.clone(),
                r.synced_pods.to_string(),
                r.age.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<&str>| {
        let mut s = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub async fn list(args: &ListArgs) -> Result<(), CliError> {
    let (client, default_ns) = host_client(&args.host).await?;
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.clone().unwrap_or(default_ns))
    };
    let rows = rows(&client, namespace.as_deref()).await?;
    if rows.is_empty() {
        match namespace {
            Some(ns) => eprintln!("no vclusters in namespace {ns:?}"),
            None => eprintln!("no vclusters in any namespace"),
        }
        return Ok(());
    }
    print!("{}", format_table(&rows));
    Ok(())
}

/// The rows of `vnest list` for one namespace or all.
pub async fn rows(client: &Client, namespace: Option<&str>) -> Result<Vec<Row>, CliError> {
    let api: Api<StatefulSet> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let where_ = namespace.map_or("any namespace".to_owned(), |ns| format!("namespace {ns:?}"));
    let list = api
        .list(&ListParams::default().labels(LABEL_VCLUSTER))
        .await
        .map_err(|e| CliError::kube("list", format!("vclusters (StatefulSets) in {where_}"), e))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows = Vec::new();
    for sts in list.items {
        let name = sts.name_any();
        let ns = sts.namespace().unwrap_or_default();
        let spec_replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        let k3s_version = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == "k3s"))
            .and_then(|c| c.image.as_deref())
            .map_or_else(|| "?".to_owned(), image_tag);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let synced_pods = pods
            .list_metadata(&ListParams::default().labels(&markers::selector(&name)))
            .await
            .map_err(|e| CliError::kube("list", format!("pods in namespace {ns:?}"), e))?
            .items
            .len();
        let age = sts.metadata.creation_timestamp.as_ref().map_or_else(
            || "?".to_owned(),
            |t| format_age(now.as_second() - t.0.as_second()),
        );
        rows.push(Row {
            name,
            namespace: ns,
            ready: format!("{ready}/{spec_replicas}"),
            k3s_version,
            synced_pods,
            age,
        });
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

// --- create -------------------------------------------------------------------------------------

/// Server-side applies `objs` (field manager `vnest-cli`).
async fn apply(client: &Client, namespace: &str, objs: &[Value]) -> Result<(), CliError> {
    let mut apis = Apis::new(client.clone());
    let spinner = Spinner::start(format!("applying {} objects", objs.len()));
    for (i, o) in objs.iter().enumerate() {
        spinner.set(format!("applying {} ({}/{})", describe(o), i + 1, objs.len()));
        let (api, _) = apis.api(&gvk_of(o), namespace).await?;
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Err(e) = api
            .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(o))
            .await
        {
            spinner.fail();
            return Err(CliError::kube("apply", describe(o), e));
        }
    }
    spinner.done(format!(
        "applied {} objects (server-side, field manager {FIELD_MANAGER})",
        objs.len()
    ));
    Ok(())
}

async fn ensure_namespace(client: &Client, namespace: &str) -> Result<(), CliError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))
                .expect("a valid Namespace");
            api.create(&PostParams::default(), &ns)
                .await
                .map_err(|e| CliError::kube("create", format!("namespace {namespace:?}"), e))?;
            eprintln!("✓ created namespace {namespace:?}");
            Ok(())
        }
        // May not read namespaces: fine when it exists (the applies will say if not).
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(e) => Err(CliError::kube("get", format!("namespace {namespace:?}"), e)),
    }
}

async fn wait_pod_ready(
    client: &Client,
    name: &str,
    namespace: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = format!("{name}-0");
    let what = format!("pod {pod} Ready");
    let spinner = Spinner::start(format!("waiting for {what}"));
    let r = wait_for(&spinner, &what, timeout, || async {
        let p = pods
            .get_opt(&pod)
            .await
            .map_err(|e| CliError::kube("get", format!("pod {pod:?}"), e))?;
        let Some(p) = p else {
            return Ok(Err("not created yet".to_owned()));
        };
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(if ready {
            Ok(())
        } else {
            Err(format!(
                "phase {}",
                status.phase.unwrap_or_else(|| "unknown".to_owned())
            ))
        })
    })
    .await;
    match r {
        Ok(()) => {
            spinner.done(format!("pod {pod} is Ready"));
            Ok(())
        }
        Err(e) => {
            spinner.fail();
            Err(e)
        }
    }
}

pub async fn create(args: &CreateArgs) -> Result<(), CliError> {
    let config = args.config.resolve(Some(args.name.clone()))?;
    let objs = render::render(&config)?;
    let (client, _) = host_client(&args.host).await?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &config.namespace);
    match sts.get_opt(&config.name).await {
        Ok(Some(_)) => {
            return Err(CliError::Exists {
                name: config.name.clone(),
                namespace: config.namespace.clone(),
            });
        }
        Ok(None) => {}
        Err(e) => {
            return Err(CliError::kube(
                "get",
                format!(
                    "StatefulSet {:?} in namespace {:?}",
                    config.name, config.namespace
                ),
                e,
            ));
        }
    }
    if config.overlay.external_datastore || config.overlay.ha {
        check_datastore_secret(&client, &config).await?;
    }
    ensure_namespace(&client, &config.namespace).await?;
    apply(&client, &config.namespace, &objs).await?;
    wait_pod_ready(&client, &config.name, &config.namespace, args.timeout).await?;
    if args.no_connect {
        eprintln!(
            "vcluster {:?} created in namespace {:?}; connect with: vnest connect {} -n {}",
            config.name, config.namespace, config.name, config.namespace
        );
        return Ok(());
    }
    connect_with(&client, &config, &args.connect, args.timeout).await
}

/// The datastore Secret must exist before k3s starts (the pods would wait on it with no word):
/// refuse early, saying how to make it. Its keys are not read (the values are secret).
async fn check_datastore_secret(client: &Client, config: &VclusterConfig) -> Result<(), CliError> {
    let secret = format!("{}-datastore", config.name);
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    match api.get_metadata_opt(&secret).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(CliError::NoDatastoreSecret {
            secret,
            namespace: config.namespace.clone(),
        }),
        // A namespace that does not exist yet has no Secret either.
        Err(kube::Error::Api(status)) if status.code == 404 => Err(CliError::NoDatastoreSecret {
            secret,
            namespace: config.namespace.clone(),
        }),
        Err(e) => Err(CliError::kube(
            "get",
            format!("Secret {secret:?} in namespace {:?}", config.namespace),
            e,
        )),
    }
}

// --- connect ------------------------------------------------------------------------------------

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
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            let (pods, pod) = (pods.clone(), pod.clone());
            tokio::spawn(async move {
                match pods.portforward(&pod, &[port]).await {
                    Ok(mut pf) => {
                        if let Some(mut upstream) = pf.take_stream(port) {
                            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                            drop(upstream);
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
        export: super::config::ExportConfig {
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

async fn connect_with(
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

// --- delete -------------------------------------------------------------------------------------

/// `(group, resource)` pairs the embedded Role may list, without subresources.
pub fn role_listable() -> Vec<(String, String)> {
    let files = render::embedded_files();
    let text = files
        .get("base/rbac.yaml")
        .map(String::as_str)
        .unwrap_or_default();
    let objs = super::kustomize::parse_documents("base/rbac.yaml", text).unwrap_or_default();
    let mut out = BTreeSet::new();
    for role in objs.iter().filter(|o| o["kind"] == "Role") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !verbs.contains(&"list") {
                continue;
            }
            for g in rule["apiGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                for r in rule["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !r.contains('/') {
                        out.insert((g.to_owned(), r.to_owned()));
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Is this host object part of vcluster `name` (its label, the syncer's marker, or owned by one
/// of `owners`)?
fn belongs(o: &DynamicObject, name: &str, namespace: &str, owners: &BTreeSet<String>) -> bool {
    let labels = o.labels();
    let ns_ok = |o: &DynamicObject| {
        o.namespace().is_some() || labels.get(LABEL_VCLUSTER_NAMESPACE).map(String::as_str) == Some(namespace)
    };
    (labels.get(LABEL_VCLUSTER).map(String::as_str) == Some(name) && ns_ok(o))
        || labels.get(markers::LABEL_MANAGED_BY) == Some(&crate::naming::safe_label_value(name))
        || o.owner_references().iter().any(|r| owners.contains(&r.uid))
}

/// The syncer settings of the components that make cluster-scoped objects (`real-nodes`,
/// `host-storageclasses`, `real-volumes`: a ClusterRole and its binding each).
const CLUSTER_SCOPED_SETTINGS: &[(&str, &str)] = &[
    ("VNEST_NODE_SYNC", "real"),
    ("VNEST_SYNC_STORAGECLASSES", "true"),
    ("VNEST_PV_SYNC", "real"),
];

/// Whether the vcluster was made with a component that makes cluster-scoped objects.
fn uses_cluster_scoped(sts: &StatefulSet) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "syncer"))
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| {
            env.iter().any(|e| {
                CLUSTER_SCOPED_SETTINGS
                    .iter()
                    .any(|(name, value)| e.name == *name && e.value.as_deref() == Some(value))
            })
        })
}

/// Kinds the host's controllers make for a vcluster's objects and remove after them (garbage
/// collection of dependents) that the syncer's Role does not cover: EndpointSlices of its
/// Services, the StatefulSet's revisions and data claim. `delete` waits for them too.
const DEPENDENT_KINDS: [(&str, &str); 3] = [
    ("discovery.k8s.io", "endpointslices"),
    ("apps", "controllerrevisions"),
    ("", "persistentvolumeclaims"),
];

/// Every kind `delete` checks: the Role's listable resources, the dependents the host makes
/// for them, and the kinds `create` applies (cluster-scoped kinds only when `cluster_scoped`: a
/// namespace admin may not list them, and only the components of [`CLUSTER_SCOPED_SETTINGS`]
/// make any).
async fn kinds_to_check(
    client: &Client,
    cluster_scoped: bool,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, CliError> {
    let mut found: BTreeMap<String, (ApiResource, ApiCapabilities)> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let dependents = DEPENDENT_KINDS
        .iter()
        .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()));
    for (g, r) in role_listable().into_iter().chain(dependents) {
        groups.entry(g).or_default().push(r);
    }
    for (g, resources) in groups {
        let group = match kube::discovery::group(client, &g).await {
            Ok(group) => group,
            Err(_) => continue, // an API group this cluster does not serve
        };
        for (ar, caps) in group.recommended_resources() {
            if resources.contains(&ar.plural) {
                found.insert(format!("{}/{}", ar.group, ar.plural), (ar, caps));
            }
        }
    }
    // The kinds of every overlay (every optional part on).
    let all = VclusterConfig {
        name: "x".into(),
        namespace: "x".into(),
        overlay: super::config::OverlayConfig {
            isolated: true,
            real_nodes: true,
            host_storage_classes: true,
            real_volumes: true,
            external_datastore: true,
            ha: true,
        },
        ..VclusterConfig::default()
    };
    let mut apis = Apis::new(client.clone());
    for o in render::render(&all)? {
        let (ar, caps) = apis.resolve(&gvk_of(&o)).await?;
        found.insert(format!("{}/{}", ar.group, ar.plural), (ar, caps));
    }
    Ok(found
        .into_values()
        .filter(|(_, caps)| cluster_scoped || caps.scope == Scope::Namespaced)
        .collect())
}

/// The objects of vcluster `name` still on the host (`kind/name`), and kinds that could not be
/// listed.
async fn leftovers(
    client: &Client,
    kinds: &[(ApiResource, ApiCapabilities)],
    name: &str,
    namespace: &str,
    owners: &BTreeSet<String>,
) -> (Vec<(ApiResource, DynamicObject)>, Vec<String>) {
    let mut left = Vec::new();
    let mut unlisted = Vec::new();
    for (ar, caps) in kinds {
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, ar),
            Scope::Cluster => Api::all_with(client.clone(), ar),
        };
        let lp = match caps.scope {
            // Cluster-wide lists only of our labelled kinds (no need to read every node).
            Scope::Cluster => ListParams::default().labels(&format!("{LABEL_VCLUSTER}={name}")),
            Scope::Namespaced => ListParams::default(),
        };
        match api.list(&lp).await {
            Ok(list) => left.extend(
                list.items
                    .into_iter()
                    .filter(|o| belongs(o, name, namespace, owners))
                    .map(|o| (ar.clone(), o)),
            ),
            Err(e) => unlisted.push(format!("{}: {e}", ar.plural)),
        }
    }
    (left, unlisted)
}

pub async fn delete(args: &DeleteArgs) -> Result<(), CliError> {
    let (client, _) = host_client(&args.host).await?;
    let (name, ns) = (&args.name, &args.namespace);
    let sts = find_vcluster(&client, name, ns).await?;
    let kinds = kinds_to_check(&client, uses_cluster_scoped(&sts)).await?;
    let mut owners: BTreeSet<String> = sts.uid().into_iter().collect();
    let mut failures = Vec::new();

    let spinner = Spinner::start(format!("deleting StatefulSet {name} (foreground)"));
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            spinner.fail();
            return Err(CliError::kube("delete", format!("StatefulSet {name:?}"), e));
        }
    }
    // Everything else `create` made, and whatever else carries the vcluster's marks.
    let (left, unlisted) = leftovers(&client, &kinds, name, ns, &owners).await;
    if !unlisted.is_empty() && !args.keep_going {
        spinner.fail();
        return Err(CliError::Other {
            what: "listing the vcluster's objects".to_owned(),
            reason: format!(
                "{} (use --keep-going to delete what can be listed)",
                unlisted.join("; ")
            ),
        });
    }
    failures.extend(unlisted);
    for (ar, o) in &left {
        owners.extend(o.uid());
        // Objects with an owner go with it (garbage collector), objects being deleted (the
        // StatefulSet, in the foreground) are left alone; the others are deleted here.
        if !o.owner_references().is_empty() || o.metadata.deletion_timestamp.is_some() || o.uid() == sts.uid()
        {
            continue;
        }
        let api: Api<DynamicObject> = match o.namespace() {
            Some(n) => Api::namespaced_with(client.clone(), &n, ar),
            None => Api::all_with(client.clone(), ar),
        };
        spinner.set(format!("deleting {}/{}", ar.kind, o.name_any()));
        match api.delete(&o.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) if args.keep_going => failures.push(format!("{}/{}: {e}", ar.kind, o.name_any())),
            Err(e) => {
                spinner.fail();
                return Err(CliError::kube(
                    "delete",
                    format!("{}/{}", ar.kind, o.name_any()),
                    e,
                ));
            }
        }
    }
    spinner.set("waiting until no object of the vcluster remains");
    let what = format!("every host object of vcluster {name:?} to be gone");
    let gone = wait_for(&spinner, &what, args.timeout, || async {
        let (left, _) = leftovers(&client, &kinds, name, ns, &owners).await;
        Ok(if left.is_empty() {
            Ok(())
        } else {
            let mut names: Vec<String> = left
                .iter()
                .map(|(ar, o)| format!("{}/{}", ar.kind, o.name_any()))
                .collect();
            names.sort();
            Err(format!("{} left: {}", names.len(), names.join(", ")))
        })
    })
    .await;
    match gone {
        Ok(()) => spinner.done(format!(
            "vcluster {name:?} deleted from namespace {ns:?}: no object of it remains"
        )),
        Err(e) => {
            spinner.fail();
            return Err(e);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Other {
            what: "deleted, with problems".to_owned(),
            reason: failures.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("a valid object")
    }

    #[test]
    fn what_belongs_to_a_vcluster() {
        let owners: BTreeSet<String> = ["sts-uid".to_owned()].into();
        let yes = [
            serde_json::json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"vnest.dev/vcluster": "demo"}}}),
            serde_json::json!({"metadata": {"name": "b", "namespace": "ns", "labels": {"vnest.dev/managed-by": "demo"}}}),
            serde_json::json!({"metadata": {"name": "c", "namespace": "ns", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "demo", "uid": "sts-uid"}]}}),
            serde_json::json!({"metadata": {"name": "d", "labels": {"vnest.dev/vcluster": "demo", "vnest.dev/vcluster-namespace": "ns"}}}),
        ];
        for o in yes {
            assert!(belongs(&dynamic(o.clone()), "demo", "ns", &owners), "{o}");
        }
        let no = [
            serde_json::json!({"metadata": {"name": "e", "namespace": "ns", "labels": {"vnest.dev/vcluster": "other"}}}),
            serde_json::json!({"metadata": {"name": "f", "namespace": "ns", "labels": {"vnest.dev/managed-by": "demo2"}}}),
            // The same vcluster name in another namespace (cluster-scoped objects).
            serde_json::json!({"metadata": {"name": "g", "labels": {"vnest.dev/vcluster": "demo", "vnest.dev/vcluster-namespace": "ns2"}}}),
            serde_json::json!({"metadata": {"name": "h", "namespace": "ns"}}),
        ];
        for o in no {
            assert!(!belongs(&dynamic(o.clone()), "demo", "ns", &owners), "{o}");
        }
    }

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

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(119), "119s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(format_age(3 * 86_400), "3d");
        assert_eq!(format_age(-3), "0s");
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("rancher/k3s:v1.35.4-k3s1"), "v1.35.4-k3s1");
        assert_eq!(image_tag("reg:5000/k3s"), "latest");
        assert_eq!(image_tag("k3s:v1@sha256:abc"), "v1");
    }

    #[test]
    fn table_columns_line_up() {
        let t = format_table(&[Row {
            name: "a".into(),
            namespace: "team-a".into(),
            ready: "1/1".into(),
            k3s_version: "v1.35.4-k3s1".into(),
            synced_pods: 3,
            age: "5m".into(),
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   NAMESPACE   READY   K3S VERSION    SYNCED PODS   AGE"
        );
        assert_eq!(
            lines[1],
            "a      team-a      1/1     v1.35.4-k3s1   3             5m"
        );
    }

    #[test]
    fn the_role_lets_us_list_the_synced_kinds() {
        let l = role_listable();
        for want in [
            ("", "pods"),
            ("", "secrets"),
            ("policy", "poddisruptionbudgets"),
            ("apps", "statefulsets"),
        ] {
            assert!(
                l.contains(&(want.0.to_owned(), want.1.to_owned())),
                "{want:?} in {l:?}"
            );
        }
        assert!(!l.iter().any(|(_, r)| r.contains('/')));
    }

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
