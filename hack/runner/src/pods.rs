//! The pods bound to the runner's node: one watch (`spec.nodeName=<node>`) feeds one worker
//! task per pod UID, like the kubelet's pod workers. A worker runs the pod's init containers
//! in order, then its containers, keeps them running (restart policy, backoff, liveness),
//! reports status, and tears everything down on deletion. All state is re-derived from podman
//! labels + the API, so a restarted runner adopts running containers instead of duplicating them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, instrument, warn};

use crate::env::{self, EnvSources};
use crate::kwok;
use crate::podman::{self, Podman, PsEntry, RunSpec, labels};
use crate::probes::{self, ProbeState};
use crate::status::{self, Backoff, Observed, State};
use crate::volumes::{self, ObjData, Prepared, Sources};

/// How often a worker looks at its containers in podman anyway (exits arrive as podman events,
/// probe verdicts and object changes as notifications).
const PODMAN_RESYNC: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("podman: {0}")]
    Podman(#[from] podman::Error),
    #[error("{verb} pod {pod}: {source}")]
    Api {
        verb: &'static str,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("token for {sa}: {why}")]
    Token { sa: String, why: String },
}

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    pub podman: Podman,
    pub node: String,
    /// The address its pods report (podIP = hostIP).
    pub ip: String,
    /// The node's own address (kwok's forwards of its pods' ports go there: pods listen on the
    /// node's loopback in the local world).
    pub node_ip: String,
    /// Whether to write the per-pod kwok `PortForward` and `Logs` (`--kwok-rules`): off when
    /// the node's kubelet endpoint is a real kubelet API (hack/node-kubelet), not kwok's.
    pub kwok_rules: bool,
    pub api_host: String,
    pub api_port: u16,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub max_backoff: Duration,
    pub recorder: Recorder,
}

impl Ctx {
    pub fn recorder(client: &Client, node: &str) -> Recorder {
        Recorder::new(
            client.clone(),
            Reporter {
                controller: "vnest-runner".into(),
                instance: Some(node.into()),
            },
        )
    }
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

struct WorkerHandle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    task: tokio::task::JoinHandle<()>,
    /// wakes the worker (a container of the pod died)
    notify: Arc<Notify>,
}

/// Follows `podman events` (container deaths) and sends the pod UID of each: exits are seen
/// at once instead of at the next podman resync. Restarts the event stream when it ends.
async fn container_deaths(podman: Podman, tx: tokio::sync::mpsc::Sender<String>, stop: CancellationToken) {
    use tokio::io::AsyncBufReadExt;
    loop {
        match podman.died_events() {
            Ok(mut child) => {
                if let Some(out) = child.stdout.take() {
                    let mut lines = tokio::io::BufReader::new(out).lines();
                    loop {
                        let line = tokio::select! {
                            _ = stop.cancelled() => return,
                            l = lines.next_line() => l,
                        };
                        let Ok(Some(line)) = line else { break };
                        let uid = serde_json::from_str::<serde_json::Value>(&line)
                            .ok()
                            .and_then(|v| v["Attributes"][labels::POD_UID].as_str().map(str::to_owned));
                        if let Some(uid) = uid
                            && tx.send(uid).await.is_err()
                        {
                            return;
                        }
                    }
                }
                let _ = child.kill().await;
                debug!("podman events ended; restarting it");
            }
            Err(error) => warn!(%error, "cannot follow podman events (exits are seen at the next resync)"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Watches the node's pods until `stop` and runs a worker per pod.
pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let (died_tx, mut died) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(container_deaths(ctx.podman.clone(), died_tx, stop.clone()));
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            Some(uid) = died.recv() => {
                if let Some(w) = workers.get(&uid) {
                    w.notify.notify_one();
                }
                continue;
            }
            ev = stream.next() => ev,
        };
        workers.retain(|_, w| !w.task.is_finished());
        match ev {
            None => break,
            Some(Err(error)) => warn!(%error, "pod watch failed; retrying"),
            Some(Ok(Event::Init)) => listed.clear(),
            Some(Ok(Event::InitApply(p) | Event::Apply(p))) => {
                let Some(uid) = p.metadata.uid.clone() else {
                    continue;
                };
                listed.insert(uid.clone());
                let p = Arc::new(p);
                match workers.get(&uid) {
                    Some(w) => {
                        w.tx.send_replace(Some(p));
                    }
                    None => {
                        let (tx, rx) = watch::channel(Some(p.clone()));
                        let notify = Arc::new(Notify::new());
                        let span = tracing::info_span!("pod", pod = %pod_key(&p), uid = %uid);
                        let task = tokio::spawn(
                            Worker::new(ctx.clone(), p, rx, notify.clone(), stop.clone())
                                .run()
                                .instrument(span),
                        );
                        workers.insert(uid, WorkerHandle { tx, task, notify });
                    }
                }
            }
            Some(Ok(Event::Delete(p))) => {
                if let Some(w) = p.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    w.tx.send_replace(None);
                }
            }
            Some(Ok(Event::InitDone)) => {
                for (uid, w) in &workers {
                    if !listed.contains(uid) {
                        w.tx.send_replace(None);
                    }
                }
                let known: BTreeSet<String> = workers.keys().cloned().collect();
                if let Err(error) = sweep_orphans(&ctx, &known).await {
                    warn!(%error, "orphan sweep failed");
                }
            }
        }
    }
    // Containers keep running: a restarted runner adopts them.
    for (_, w) in workers {
        let _ = w.task.await;
    }
}

/// Removes containers (and pod directories) of pods that no longer exist on this node.
async fn sweep_orphans(ctx: &Ctx, known: &BTreeSet<String>) -> Result<(), Error> {
    let all = ctx.podman.ps(&[(labels::NODE, &ctx.node)]).await?;
    let mut gone = BTreeSet::new();
    for c in &all {
        let Some(uid) = c.label(labels::POD_UID) else {
            continue;
        };
        if !known.contains(uid) {
            info!(pod.uid = uid, container = %c.names.join(","), "removing container of a pod that is gone");
            ctx.podman.rm(&c.id).await?;
            gone.insert(uid.to_owned());
        }
    }
    if let Ok(dirs) = std::fs::read_dir(ctx.state_dir.join("pods")) {
        for d in dirs.flatten() {
            let uid = d.file_name().to_string_lossy().into_owned();
            if !known.contains(&uid) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    Ok(())
}

/// What the worker tracks for one container name.
#[derive(Default)]
struct Slot {
    backoff: Option<Backoff>,
    /// podman ID of the exited run the backoff was computed for, and when it may restart
    restart_after: Option<(String, tokio::time::Instant)>,
    /// probes of the current run: (container ID, state, stop)
    probes: Option<(String, watch::Receiver<ProbeState>, CancellationToken)>,
    /// why the container cannot start (reason, message)
    blocked: Option<(String, String)>,
}

struct RefWatch {
    rx: watch::Receiver<Option<Option<ObjData>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Token {
    value: String,
    refresh_at: SystemTime,
}

struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    rx: watch::Receiver<Option<Arc<Pod>>>,
    stop: CancellationToken,
    notify: Arc<Notify>,
    prepared: Option<Prepared>,
    config_maps: BTreeMap<String, RefWatch>,
    secrets: BTreeMap<String, RefWatch>,
    tokens: BTreeMap<(String, String), Token>,
    slots: HashMap<String, Slot>,
    /// pod-level problem (volumes): every container waits with it
    pod_blocked: Option<(String, String)>,
    events_sent: BTreeSet<(String, String)>,
    adopted: bool,
    /// The pod's kwok PortForward and Logs are applied (or cannot be: said once).
    kwok_rules: bool,
}

enum Next {
    Continue,
    Done,
}

fn obj_data_cm(cm: &ConfigMap) -> ObjData {
    let mut d: ObjData = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    d.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    d
}

fn obj_data_secret(s: &Secret) -> ObjData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Watches one named object (kubelet's watch-based ConfigMap/Secret manager).
fn watch_ref<K>(
    client: &Client,
    ns: &str,
    name: &str,
    extract: fn(&K) -> ObjData,
    notify: Arc<Notify>,
) -> RefWatch
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let (tx, rx) = watch::channel(None);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut seen = false;
        while let Some(ev) = stream.next().await {
            let new = match ev {
                Ok(Event::Init) => {
                    seen = false;
                    continue;
                }
                Ok(Event::InitApply(o) | Event::Apply(o)) => {
                    seen = true;
                    Some(Some(extract(&o)))
                }
                Ok(Event::InitDone) if !seen => Some(None),
                Ok(Event::InitDone) => continue,
                Ok(Event::Delete(_)) => Some(None),
                Err(error) => {
                    debug!(%error, object = %name, "object watch failed; retrying");
                    continue;
                }
            };
            if tx.send_if_modified(|cur| {
                let changed = *cur != new;
                *cur = new.clone();
                changed
            }) {
                notify.notify_one();
            }
        }
    });
    RefWatch { rx, task }
}

impl Worker {
    fn new(
        ctx: Arc<Ctx>,
        pod: Arc<Pod>,
        rx: watch::Receiver<Option<Arc<Pod>>>,
        notify: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            ctx,
            pod,
            rx,
            stop,
            notify,
            prepared: None,
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
            tokens: BTreeMap::new(),
            slots: HashMap::new(),
            pod_blocked: None,
            events_sent: BTreeSet::new(),
            adopted: false,
            kwok_rules: false,
        }
    }

    fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }
    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), self.ns())
    }

    async fn run(mut self) {
        loop {
            match self.sync().await {
                Ok(Next::Done) => return,
                Ok(Next::Continue) => {}
                Err(error) => warn!(%error, "pod sync failed; retrying"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    self.stop_probes();
                    return;
                }
                changed = self.rx.changed() => {
                    let current = if changed.is_ok() { self.rx.borrow_and_update().clone() } else { None };
                    match current {
                        // an event older than the status this worker just wrote is skipped
                        Some(p) if is_older(&p, &self.pod) => {}
                        Some(p) => self.pod = p,
                        None => {
                            self.teardown(0).await;
                            return;
                        }
                    }
                }
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(PODMAN_RESYNC) => {}
            }
        }
    }

    fn stop_probes(&mut self) {
        for s in self.slots.values_mut() {
            if let Some((_, _, stop)) = s.probes.take() {
                stop.cancel();
            }
        }
    }

    async fn ps(&self) -> Result<Vec<PsEntry>, Error> {
        Ok(self.ctx.podman.ps(&[(labels::POD_UID, self.uid())]).await?)
    }

    /// Stops every container (SIGTERM, SIGKILL after `grace`), removes them and the pod's dirs.
    async fn teardown(&mut self, grace: u64) {
        self.stop_probes();
        let entries = match self.ps().await {
            Ok(e) => e,
            Err(error) => {
                warn!(%error, "cannot list the pod's containers for teardown");
                Vec::new()
            }
        };
        let stops = entries
            .iter()
            .filter(|e| e.running())
            .map(|e| self.ctx.podman.stop(&e.id, grace));
        for r in futures::future::join_all(stops).await {
            if let Err(error) = r {
                warn!(%error, "stopping a container failed");
            }
        }
        for e in &entries {
            if let Err(error) = self.ctx.podman.rm(&e.id).await {
                warn!(%error, "removing a container failed");
            }
        }
        self.config_maps.clear();
        self.secrets.clear();
        let dir = volumes::pod_dir(&self.ctx.state_dir, self.uid());
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(%error, dir = %dir.display(), "removing the pod directory failed");
        }
        info!(containers = entries.len(), "pod torn down");
    }

    async fn event(&mut self, type_: EventType, reason: &str, key: &str, note: String) {
        if !self.events_sent.insert((reason.to_owned(), key.to_owned())) {
            return;
        }
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.ctx.recorder.publish(&ev, &self.pod.object_ref(&())).await {
            warn!(%error, reason, "cannot publish event");
        }
    }

    /// One pass: deletion, inputs (watches, volumes, tokens), containers, status.
    #[instrument(skip_all)]
    async fn sync(&mut self) -> Result<Next, Error> {
        if self.pod.metadata.deletion_timestamp.is_some() {
            let grace = self
                .pod
                .metadata
                .deletion_grace_period_seconds
                .or(self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30);
            info!(grace, "pod is being deleted: stopping its containers");
            self.teardown(u64::try_from(grace).unwrap_or(0)).await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid().to_owned()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            return match self.pods_api().delete(self.name(), &dp).await {
                Ok(_) => Ok(Next::Done),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Next::Done),
                Err(source) => Err(Error::Api {
                    verb: "delete",
                    pod: pod_key(&self.pod),
                    source,
                }),
            };
        }
        let phase = self.pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(Next::Continue);
        }
        self.ensure_ref_watches();
        self.ensure_kwok_rules().await;
        self.prepare_inputs().await;
        let entries = self.ps().await?;
        let (init, regular) = self.drive_containers(&entries).await?;
        self.report(&init, &regular).await?;
        Ok(Next::Continue)
    }

    /// The pod's kwok PortForward and Logs (host port-forward and logs of this pod), once.
    async fn ensure_kwok_rules(&mut self) {
        if self.kwok_rules || !self.ctx.kwok_rules {
            return;
        }
        match kwok::ensure(&self.ctx.client, &self.pod, &self.ctx.node_ip, &self.ctx.log_dir).await {
            Ok(()) => {
                debug!("kwok PortForward and Logs applied");
                self.kwok_rules = true;
            }
            Err(error @ kwok::Error::NotServed(_)) => {
                warn!(%error, "host port-forward and logs of this pod are not served");
                self.kwok_rules = true;
            }
            Err(error) => warn!(%error, "cannot apply the pod's kwok rules; retrying"),
        }
    }

    fn ensure_ref_watches(&mut self) {
        let (mut cms, mut secrets) = volumes::volume_refs(&self.pod);
        for c in all_containers(&self.pod) {
            let (c_cms, c_secrets) = env::env_refs(c);
            cms.extend(c_cms);
            secrets.extend(c_secrets);
        }
        let ns = self.ns().to_owned();
        for name in cms {
            if !self.config_maps.contains_key(&name) {
                let w =
                    watch_ref::<ConfigMap>(&self.ctx.client, &ns, &name, obj_data_cm, self.notify.clone());
                self.config_maps.insert(name, w);
            }
        }
        for name in secrets {
            if !self.secrets.contains_key(&name) {
                let w =
                    watch_ref::<Secret>(&self.ctx.client, &ns, &name, obj_data_secret, self.notify.clone());
                self.secrets.insert(name, w);
            }
        }
    }

    fn sources(&self) -> Sources {
        let known = |m: &BTreeMap<String, RefWatch>| -> BTreeMap<String, Option<ObjData>> {
            m.iter()
                .filter_map(|(k, w)| w.rx.borrow().clone().map(|v| (k.clone(), v)))
                .collect()
        };
        Sources {
            config_maps: known(&self.config_maps),
            secrets: known(&self.secrets),
            tokens: self
                .tokens
                .iter()
                .map(|(k, t)| (k.clone(), t.value.clone()))
                .collect(),
        }
    }

    /// Volumes (directories, tokens, files). Problems become `pod_blocked` + one event.
    async fn prepare_inputs(&mut self) {
        let result = self.try_prepare_inputs().await;
        match result {
            Ok(()) => self.pod_blocked = None,
            Err((msg, not_yet_known)) => {
                debug!(error = %msg, "volumes not ready");
                self.pod_blocked = Some(("ContainerCreating".into(), msg.clone()));
                // a source that is only not synced yet is no failure
                if !not_yet_known {
                    self.event(
                        EventType::Warning,
                        "FailedMount",
                        &msg,
                        format!("MountVolume failed: {msg}"),
                    )
                    .await;
                }
            }
        }
    }

    async fn try_prepare_inputs(&mut self) -> Result<(), (String, bool)> {
        if self.prepared.is_none() {
            let p = volumes::prepare(&self.ctx.client, &self.ctx.state_dir, &self.pod)
                .await
                .map_err(|e| (e.to_string(), false))?;
            self.prepared = Some(p);
        }
        let now = SystemTime::now();
        for (vol, path, audience, seconds) in volumes::token_requests(&self.pod) {
            let due = self
                .tokens
                .get(&(vol.clone(), path.clone()))
                .is_none_or(|t| now >= t.refresh_at);
            if due {
                let token = self
                    .request_token(audience, seconds)
                    .await
                    .map_err(|e| (e.to_string(), false))?;
                info!(volume = %vol, refresh_in_s = token.refresh_at.duration_since(now).unwrap_or_default().as_secs(), "service account token issued");
                self.tokens.insert((vol, path), token);
            }
        }
        let src = self.sources();
        let prepared = self
            .prepared
            .as_ref()
            .ok_or(("volumes not prepared".to_owned(), true))?;
        let changed = volumes::refresh_files(&self.pod, prepared, &src, &self.ctx.ip)
            .map_err(|e| (e.to_string(), matches!(e, volumes::Error::NotYetKnown { .. })))?;
        if changed {
            debug!("volume files written");
        }
        Ok(())
    }

    async fn request_token(&self, audience: Option<String>, seconds: i64) -> Result<Token, Error> {
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.ctx.client.clone(), self.ns());
        let req: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": audience.into_iter().collect::<Vec<_>>(), "expirationSeconds": seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name(), "uid": self.uid()}}
        }))
        .map_err(|e| Error::Token { sa: sa.clone(), why: e.to_string() })?;
        let issued = SystemTime::now();
        let resp: TokenRequest = api
            .create_subresource("token", &sa, &PostParams::default(), &req)
            .await
            .map_err(|e| Error::Token {
                sa: sa.clone(),
                why: e.to_string(),
            })?;
        let status = resp.status.ok_or_else(|| Error::Token {
            sa: sa.clone(),
            why: "no status".into(),
        })?;
        let exp_secs = u64::try_from(status.expiration_timestamp.0.as_second()).unwrap_or(0);
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(exp_secs);
        Ok(Token {
            value: status.token,
            refresh_at: volumes::token_refresh_at(issued, expires),
        })
    }

    /// Starts/restarts containers as needed; returns what was observed (init, regular).
    async fn drive_containers(
        &mut self,
        entries: &[PsEntry],
    ) -> Result<(Vec<Observed>, Vec<Observed>), Error> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
        let by_name = |name: &str| -> Vec<&PsEntry> {
            let mut v: Vec<&PsEntry> = entries
                .iter()
                .filter(|e| e.label(labels::CONTAINER) == Some(name))
                .collect();
            v.sort_by_key(|e| (e.restart_count(), e.created));
            v
        };
        if !self.adopted {
            self.adopted = true;
            let running = entries.iter().filter(|e| e.running()).count();
            if !entries.is_empty() {
                info!(
                    containers = entries.len(),
                    running, "adopting existing containers"
                );
            }
        }
        let regular_exists = spec.containers.iter().any(|c| !by_name(&c.name).is_empty());

        // Init containers: in order, each to completion.
        let mut init_obs = Vec::new();
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            let runs = by_name(&c.name);
            let newest = runs.last().copied();
            let ok = newest.is_some_and(|e| e.exited() && e.exit_code == 0)
                || (regular_exists && newest.is_none_or(|e| !e.running()));
            if ok || !init_done {
                let waiting = if init_done {
                    None
                } else {
                    Some(State::waiting("PodInitializing", None))
                };
                init_obs.push(self.observe(c, &runs, waiting));
                continue;
            }
            init_done = false;
            // a failed init container is retried unless restartPolicy is Never
            let restart = policy != "Never" && newest.is_some_and(|e| e.exit_code != 0);
            self.drive_one(c, "init", &runs, restart).await?;
            let runs_after = self.ps().await?;
            let runs_after: Vec<&PsEntry> = {
                let mut v: Vec<&PsEntry> = runs_after
                    .iter()
                    .filter(|e| e.label(labels::CONTAINER) == Some(c.name.as_str()))
                    .collect();
                v.sort_by_key(|e| (e.restart_count(), e.created));
                v
            };
            init_obs.push(self.observe(c, &runs_after, None));
        }
        let mut regular_obs = Vec::new();
        if !init_done {
            for c in &spec.containers {
                regular_obs.push(self.observe(
                    c,
                    &by_name(&c.name),
                    Some(State::waiting("PodInitializing", None)),
                ));
            }
            return Ok((init_obs, regular_obs));
        }
        let mut changed = false;
        for c in &spec.containers {
            let runs = by_name(&c.name);
            let restart = match policy.as_str() {
                "Always" => true,
                "OnFailure" => runs.last().is_some_and(|e| e.exit_code != 0),
                _ => false,
            };
            changed |= self.drive_one(c, "regular", &runs, restart).await?;
        }
        let entries = if changed {
            self.ps().await?
        } else {
            entries.to_vec()
        };
        for c in &spec.containers {
            let mut runs: Vec<&PsEntry> = entries
                .iter()
                .filter(|e| e.label(labels::CONTAINER) == Some(c.name.as_str()))
                .collect();
            runs.sort_by_key(|e| (e.restart_count(), e.created));
            regular_obs.push(self.observe(c, &runs, None));
        }
        Ok((init_obs, regular_obs))
    }

    /// Keeps one container going: start it when it never ran, restart it (with backoff) when it
    /// exited and `restart` says so, kill it when its liveness probe failed. Ok(true) when
    /// something was started or stopped.
    async fn drive_one(
        &mut self,
        c: &Container,
        kind: &str,
        runs: &[&PsEntry],
        restart: bool,
    ) -> Result<bool, Error> {
        let newest = runs.last().copied();
        match newest {
            None => self.start(c, kind, 0).await,
            Some(e) if e.running() => {
                self.ensure_probes(c, e);
                let failed = self
                    .slots
                    .get(&c.name)
                    .and_then(|s| s.probes.as_ref())
                    .is_some_and(|(_, rx, _)| rx.borrow().failed);
                if failed {
                    let grace = self
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30);
                    info!(container = %c.name, "liveness probe failed: restarting the container");
                    self.event(
                        EventType::Normal,
                        "Killing",
                        &format!("{}-{}", c.name, e.id),
                        format!("Container {} failed liveness probe, will be restarted", c.name),
                    )
                    .await;
                    self.ctx
                        .podman
                        .stop(&e.id, u64::try_from(grace).unwrap_or(0))
                        .await?;
                    return Ok(true);
                }
                Ok(false)
            }
            Some(e) if e.exited() => {
                if let Some((_, _, stop)) = self.slots.get_mut(&c.name).and_then(|s| s.probes.take()) {
                    stop.cancel();
                }
                if !restart {
                    return Ok(false);
                }
                let max = self.ctx.max_backoff;
                let slot = self.slots.entry(c.name.clone()).or_default();
                let due = match &slot.restart_after {
                    Some((id, at)) if *id == e.id => *at,
                    _ => {
                        let ran = Duration::from_secs(
                            u64::try_from((e.exited_at - e.started_at).max(0)).unwrap_or(0),
                        );
                        let delay = slot
                            .backoff
                            .get_or_insert_with(|| Backoff::new(Duration::from_secs(10).min(max), max))
                            .on_exit(ran);
                        // counted from the exit, as the kubelet does (not from when it was seen)
                        let now_unix = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs();
                        let since_exit = Duration::from_secs(
                            now_unix.saturating_sub(u64::try_from(e.exited_at).unwrap_or(0)),
                        );
                        let at = tokio::time::Instant::now() + delay.saturating_sub(since_exit);
                        slot.restart_after = Some((e.id.clone(), at));
                        if !delay.is_zero() {
                            let notify = self.notify.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep_until(at).await;
                                notify.notify_one();
                            });
                        }
                        at
                    }
                };
                if tokio::time::Instant::now() < due {
                    return Ok(false);
                }
                let next = e.restart_count() + 1;
                info!(container = %c.name, exit_code = e.exit_code, restart_count = next, "restarting exited container");
                let started = self.start(c, kind, next).await?;
                if started {
                    // keep the previous run (lastState); older ones go
                    for old in runs.iter().filter(|o| o.restart_count() + 1 < next) {
                        self.ctx.podman.rm(&old.id).await?;
                    }
                }
                Ok(started)
            }
            // created/paused/stopping...: leave it to settle
            Some(_) => Ok(false),
        }
    }

    fn ensure_probes(&mut self, c: &Container, e: &PsEntry) {
        let slot = self.slots.entry(c.name.clone()).or_default();
        if slot.probes.as_ref().is_some_and(|(id, _, _)| *id == e.id) {
            return;
        }
        if let Some((_, _, stop)) = slot.probes.take() {
            stop.cancel();
        }
        let mut initial = ProbeState::initial(c);
        // An adopted container that the API already shows ready stays ready until a probe says otherwise.
        let cid = format!("podman://{}", e.id);
        let was = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|v| v.iter().find(|s| s.name == c.name));
        if let Some(was) = was
            && was.container_id.as_deref() == Some(cid.as_str())
        {
            initial.ready |= was.ready;
            initial.started |= was.started == Some(true);
        }
        let (tx, rx) = watch::channel(initial);
        let stop = self.stop.child_token();
        if c.readiness_probe.is_some() || c.liveness_probe.is_some() || c.startup_probe.is_some() {
            tokio::spawn(
                probes::run(
                    self.ctx.podman.clone(),
                    e.id.clone(),
                    c.clone(),
                    tx,
                    self.notify.clone(),
                    stop.clone(),
                )
                .instrument(tracing::info_span!("probes", container = %c.name)),
            );
        }
        slot.probes = Some((e.id.clone(), rx, stop));
    }

    fn env_sources(&self) -> EnvSources {
        let to_str = |d: &ObjData| -> BTreeMap<String, String> {
            d.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        };
        let mut src = EnvSources {
            api_host: self.ctx.api_host.clone(),
            api_port: self.ctx.api_port,
            host_ip: self.ctx.ip.clone(),
            ..Default::default()
        };
        for (name, w) in &self.config_maps {
            if let Some(Some(d)) = w.rx.borrow().as_ref() {
                let d = to_str(d);
                src.config_maps
                    .extend(d.iter().map(|(k, v)| ((name.clone(), k.clone()), v.clone())));
                src.config_map_data.insert(name.clone(), d);
            }
        }
        for (name, w) in &self.secrets {
            if let Some(Some(d)) = w.rx.borrow().as_ref() {
                let d = to_str(d);
                src.secrets
                    .extend(d.iter().map(|(k, v)| ((name.clone(), k.clone()), v.clone())));
                src.secret_data.insert(name.clone(), d);
            }
        }
        src
    }

    fn block(&mut self, c: &Container, reason: &str, message: String) {
        self.slots.entry(c.name.clone()).or_default().blocked = Some((reason.into(), message));
    }

    /// Starts run number `restart` of container `c`. Ok(false) when it cannot start yet
    /// (the reason is kept for the status).
    async fn start(&mut self, c: &Container, kind: &str, restart: u32) -> Result<bool, Error> {
        if self.pod_blocked.is_some() {
            return Ok(false);
        }
        let image = c.image.clone().unwrap_or_default();
        let Some(_image_id) = self.ctx.podman.image_id(&image).await? else {
            let msg = format!(
                "Container image \"{image}\" is not present with pull policy of Never (vnest-runner never pulls: build or load the image into local podman storage)"
            );
            self.block(c, "ErrImageNeverPull", msg.clone());
            self.event(EventType::Warning, "ErrImageNeverPull", &c.name, msg)
                .await;
            return Ok(false);
        };
        let env = match env::resolve(&self.pod, c, &self.env_sources()) {
            Ok(e) => e,
            Err(err) => {
                let msg = err.to_string();
                self.block(c, "CreateContainerConfigError", msg.clone());
                self.event(
                    EventType::Warning,
                    "Failed",
                    &format!("{}-{msg}", c.name),
                    format!("Error: {msg}"),
                )
                .await;
                return Ok(false);
            }
        };
        let prepared = self.prepared.clone().unwrap_or_default();
        let mounts = match volumes::mounts_for(c, &prepared, &env) {
            Ok(m) => m,
            Err(err) => {
                self.block(c, "CreateContainerConfigError", err.to_string());
                return Ok(false);
            }
        };
        let (entrypoint, args) = env::command_line(c, &env);
        let spec = self.pod.spec.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(psc.run_as_user);
        let gid = sc.run_as_group.or(psc.run_as_group);
        let user = match (uid, gid) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("0:{g}")),
            (None, None) => None,
        };
        let mut group_add: Vec<i64> = psc.supplemental_groups.clone().unwrap_or_default();
        group_add.extend(psc.fs_group);
        group_add.dedup();
        let caps = sc.capabilities.clone().unwrap_or_default();
        let uid8: String = self.uid().chars().take(8).collect();
        let name = format!("k8s_{}_{}_{}_{uid8}_{restart}", c.name, self.name(), self.ns());
        let labels = BTreeMap::from([
            (labels::NODE.to_owned(), self.ctx.node.clone()),
            (labels::POD_UID.to_owned(), self.uid().to_owned()),
            (labels::POD_NAMESPACE.to_owned(), self.ns().to_owned()),
            (labels::POD_NAME.to_owned(), self.name().to_owned()),
            (labels::CONTAINER.to_owned(), c.name.clone()),
            (labels::RESTART.to_owned(), restart.to_string()),
            (labels::KIND.to_owned(), kind.to_owned()),
        ]);
        let run = RunSpec {
            name: name.clone(),
            image,
            labels,
            env,
            entrypoint,
            args,
            mounts,
            user,
            group_add,
            read_only: sc.read_only_root_filesystem == Some(true),
            privileged: sc.privileged == Some(true),
            no_new_privileges: sc.allow_privilege_escalation == Some(false),
            cap_add: caps.add.unwrap_or_default(),
            cap_drop: caps.drop.unwrap_or_default(),
            workdir: c.working_dir.clone(),
            log_path: kwok::log_path(&self.ctx.log_dir, self.ns(), self.name(), &c.name),
            tty: c.tty == Some(true),
            stdin: c.stdin == Some(true),
        };
        // A leftover of a failed earlier attempt with the same name would block the run.
        if let Err(error) = self.ctx.podman.rm(&name).await {
            debug!(%error, "no leftover container to remove");
        }
        match self.ctx.podman.run(&run).await {
            Ok(id) => {
                info!(container = %c.name, restart, id = %&id[..id.len().min(12)], "container started");
                self.slots.entry(c.name.clone()).or_default().blocked = None;
                Ok(true)
            }
            Err(err) => {
                let msg = err.to_string();
                warn!(container = %c.name, error = %msg, "container failed to start");
                self.block(c, "CreateContainerError", msg.clone());
                self.event(EventType::Warning, "Failed", &format!("{}-start", c.name), msg)
                    .await;
                Ok(false)
            }
        }
    }

    /// The container's status from its podman runs (oldest first) and probe state.
    fn observe(&self, c: &Container, runs: &[&PsEntry], force: Option<State>) -> Observed {
        let slot = self.slots.get(&c.name);
        let newest = runs.last().copied();
        let facts = status::Facts {
            force,
            probe: slot
                .and_then(|s| s.probes.as_ref())
                .filter(|(id, _, _)| newest.is_some_and(|e| e.id == *id))
                .map(|(_, rx, _)| *rx.borrow()),
            restart_pending: slot
                .and_then(|s| s.restart_after.as_ref())
                .is_some_and(|(id, _)| newest.is_some_and(|e| e.id == *id)),
            blocked: self
                .pod_blocked
                .clone()
                .or_else(|| slot.and_then(|s| s.blocked.clone())),
            pod: format!("{}_{}({})", self.name(), self.ns(), self.uid()),
        };
        status::observe(c, runs, facts, &Time(Timestamp::now()))
    }

    /// Patches the pod status when it differs from what the API shows.
    async fn report(&mut self, init: &[Observed], regular: &[Observed]) -> Result<(), Error> {
        let desired = status::compute(&self.pod, init, regular, &self.ctx.ip, &Time(Timestamp::now()));
        let Some(mut patch) = status::patch_for(self.pod.status.as_ref(), &desired) else {
            return Ok(());
        };
        debug!(patch = %patch, "status differs");
        // the UID makes the patch fail on a different pod of the same name
        patch["metadata"] = serde_json::json!({"uid": self.uid()});
        let updated = self
            .pods_api()
            .patch_status(self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Api {
                verb: "patch status",
                pod: pod_key(&self.pod),
                source,
            })?;
        info!(
            phase = desired.phase.as_deref().unwrap_or(""),
            ready = desired
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "pod status updated"
        );
        self.pod = Arc::new(updated);
        Ok(())
    }
}

/// Whether `a` is an older version of the same pod than `b` (kine/etcd resource versions are
/// integers; anything else counts as not older).
fn is_older(a: &Pod, b: &Pod) -> bool {
    let rv = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    a.metadata.uid == b.metadata.uid && matches!((rv(a), rv(b)), (Some(x), Some(y)) if x < y)
}

fn all_containers(p: &Pod) -> impl Iterator<Item = &Container> {
    p.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
}
