//! Leader election between the syncer replicas of one vcluster (the HA mode): a
//! `coordination.k8s.io/v1` Lease in the host namespace, acquired, renewed and released through
//! the `kube-lease-manager` crate. Every replica keeps its watches and caches warm, serves DNS
//! and the kubelet endpoint; only the holder runs the workers and the kinds' tasks, and the
//! executor refuses every write while this replica does not hold the lease.
//!
//! - Without `--leader-elect` the replica leads from the start and no Lease exists (a single
//!   replica makes no renewal writes).
//! - A standby sleeps until the holder's lease expires (the crate) and is also woken by a watch
//!   of the Lease, so a holder that releases on shutdown is replaced at once, not after the
//!   lease duration.
//! - The holder steps down (the process exits non-zero, as a kubelet restart makes it a standby)
//!   when another identity holds the Lease, or when 2 s before its lease ends neither the Lease
//!   watch nor one GET shows a renewal (the API server cannot be reached): it stops before a
//!   standby may take over.
//!
//! Pure decisions (what an observed Lease means for this replica) are separate from the I/O
//! loop and have table tests.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Flags of the HA mode, flattened into the syncer's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// Elect one leader among the syncer replicas of this vcluster with a Lease in the host
    /// namespace (HA). Off: this syncer leads alone and writes no Lease.
    #[arg(long, env = "VNEST_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Name of the Lease (default `<vcluster name>-syncer`).
    #[arg(long, env = "VNEST_LEADER_ELECT_LEASE_NAME", value_parser = crate::naming::parse_dns_label)]
    pub leader_elect_lease_name: Option<String>,

    /// This replica's identity in the Lease (default: the pod name from VNEST_POD_NAME, else the
    /// hostname, plus a random suffix so that a restarted process never inherits a lease).
    #[arg(long, env = "VNEST_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,

    /// How long a lease is valid after its last renewal; a standby takes over at most this long
    /// after the leader dies (a leader that shuts down releases it at once).
    #[arg(long, env = "VNEST_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = crate::duration::parse_duration)]
    pub leader_elect_lease_duration: Duration,

    /// The leader renews this long before its lease expires (by default every 5 s, leaving 10 s
    /// for a late renewal on a busy node).
    #[arg(long, env = "VNEST_LEADER_ELECT_RENEW_GRACE", default_value = "10s", value_parser = crate::duration::parse_duration)]
    pub leader_elect_renew_grace: Duration,
}

/// Settings of the election when it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionSettings {
    pub lease_name: String,
    pub identity: String,
    /// Whole seconds (the Lease field's unit), at least 2.
    pub duration_s: u64,
    /// Whole seconds, at least 1 and below `duration_s`.
    pub grace_s: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElectionConfigError {
    #[error(
        "--leader-elect-renew-grace ({grace_s}s) must be at least 1s and shorter than --leader-elect-lease-duration ({duration_s}s), which must be at least 2s"
    )]
    Timing { duration_s: u64, grace_s: u64 },
}

impl ElectionArgs {
    /// `None` when the election is off.
    pub fn into_settings(self, vcluster: &str) -> Result<Option<ElectionSettings>, ElectionConfigError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let duration_s = self.leader_elect_lease_duration.as_secs();
        let grace_s = self.leader_elect_renew_grace.as_secs();
        if duration_s < 2 || grace_s < 1 || grace_s >= duration_s {
            return Err(ElectionConfigError::Timing { duration_s, grace_s });
        }
        let identity = match self.leader_elect_identity {
            Some(id) if !id.trim().is_empty() => id,
            _ => default_identity(),
        };
        Ok(Some(ElectionSettings {
            lease_name: self
                .leader_elect_lease_name
                .unwrap_or_else(|| format!("{vcluster}-syncer")),
            identity,
            duration_s,
            grace_s,
        }))
    }
}

/// `<pod name or hostname>_<8 random hex digits>`.
fn default_identity() -> String {
    let base = std::env::var("VNEST_POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vnest-syncer".into());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// What this replica is, as /readyz and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No election: the only replica.
    Alone,
    Leader,
    /// Waiting; `holder` is the current leader's identity when one is known.
    Standby {
        holder: Option<String>,
    },
}

impl Role {
    pub fn leads(&self) -> bool {
        matches!(self, Role::Alone | Role::Leader)
    }

    /// One line for /readyz.
    pub fn describe(&self) -> String {
        match self {
            Role::Alone => "role: leader (no election, single replica)".into(),
            Role::Leader => "role: leader".into(),
            Role::Standby { holder: Some(h) } => format!("role: standby (leader: {h})"),
            Role::Standby { holder: None } => "role: standby (no leader yet)".into(),
        }
    }
}

/// A replica's view of its role: cheap to clone, read by the executor before every write and
/// awaited by the workers before they start.
#[derive(Debug, Clone)]
pub struct Leadership {
    role: watch::Receiver<Role>,
}

impl Leadership {
    /// A replica without election: it leads from the start.
    pub fn alone() -> Self {
        Self {
            role: watch::channel(Role::Alone).1,
        }
    }

    /// A replica that waits for the election (`run` publishes into the sender).
    pub fn elected() -> (watch::Sender<Role>, Self) {
        let (tx, role) = watch::channel(Role::Standby { holder: None });
        (tx, Self { role })
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn leads(&self) -> bool {
        self.role.borrow().leads()
    }

    /// Resolves once this replica leads (at once without election); never if it never does.
    pub async fn leading(&self) {
        let mut rx = self.role.clone();
        if rx.wait_for(Role::leads).await.is_err() {
            // The election ended (shutdown): nothing will ever lead here.
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("lost the leader lease {lease} to {holder}; exiting so that this replica restarts as a standby")]
    Lost { lease: String, holder: String },
    #[error(
        "could not renew the leader lease {lease} for {seconds:.1}s (the host API server is unreachable); stepping down before it expires"
    )]
    RenewalsUnseen { lease: String, seconds: f64 },
}

/// What an observed Lease says, for this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: Option<String>,
    /// When the holder's lease ends (renew time + duration), if the Lease says.
    expires: Option<SystemTime>,
}

fn observe(lease: &Lease) -> Observed {
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    let expires = spec.and_then(|s| {
        let renew: SystemTime = s.renew_time.as_ref()?.0.into();
        let secs = u64::try_from(s.lease_duration_seconds?).ok()?;
        renew.checked_add(Duration::from_secs(secs))
    });
    Observed { holder, expires }
}

/// What the loop does about an observed Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Our own renewal: our lease now runs until `until`.
    Renewed { until: Option<SystemTime> },
    /// Someone else holds it while we believe we lead.
    Lost { holder: String },
    /// The lease is free and we don't lead: try to take it now, not at the old expiry.
    TryNow,
    /// Someone else leads; nothing to do.
    Follow { holder: Option<String> },
}

fn judge(observed: &Observed, me: &str, leading: bool) -> Verdict {
    match (&observed.holder, leading) {
        (Some(h), true) if h == me => Verdict::Renewed {
            until: observed.expires,
        },
        (Some(h), true) => Verdict::Lost { holder: h.clone() },
        (None, false) => Verdict::TryNow,
        (Some(h), false) if h == me => Verdict::Follow { holder: None },
        (holder, _) => Verdict::Follow {
            holder: holder.clone(),
        },
    }
}

/// How long before its lease ends the leader checks (one GET) whether a renewal it has not seen
/// through the watch got through, and stops if not.
const STEP_DOWN_MARGIN: Duration = Duration::from_secs(2);
/// The longest that check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed attempt before the next one.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Runs the election until shutdown (Ok, the lease released) or until this replica must stop
/// leading (Err). Publishes the role into `role`.
pub async fn run(
    client: kube::Client,
    namespace: String,
    settings: ElectionSettings,
    role: watch::Sender<Role>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Result<(), ElectionError> {
    let Some(manager) = build_manager(&client, &namespace, &settings, &cancel).await else {
        return Ok(()); // cancelled while the host API server could not be reached
    };
    tracing::info!(lease = %settings.lease_name, identity = %settings.identity, duration_s = settings.duration_s, "standing for leader");
    metrics.leader.set(0);

    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let fields = format!("metadata.name={}", settings.lease_name);
    let lease_events =
        watcher::watcher(api.clone(), crate::engine::watch::config().fields(&fields)).default_backoff();
    futures::pin_mut!(lease_events);

    let mut leading = false;
    // While leading: when our lease ends unless a renewal is seen.
    let mut valid_until = SystemTime::now();
    let mut attempt = Box::pin(attempt_after(&manager, Duration::ZERO, false));
    loop {
        let step_down_at = step_down_instant(leading, valid_until);
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                drop(attempt);
                if leading {
                    match tokio::time::timeout(Duration::from_secs(2), manager.release()).await {
                        Ok(Ok(())) => tracing::info!(lease = %settings.lease_name, "released the leader lease"),
                        Ok(Err(error)) => tracing::warn!(%error, lease = %settings.lease_name, "could not release the leader lease; it expires on its own"),
                        Err(_) => tracing::warn!(lease = %settings.lease_name, "releasing the leader lease timed out; it expires on its own"),
                    }
                }
                return Ok(());
            }
            () = sleep_until_system(step_down_at), if leading => {
                // The watch may deliver late on a busy machine: ask the API server itself.
                let checked = tokio::time::timeout(CHECK_TIMEOUT, api.get(&settings.lease_name)).await;
                let verdict = match checked {
                    Ok(Ok(lease)) => Some(judge(&observe(&lease), &settings.identity, true)),
                    _ => None,
                };
                match verdict {
                    Some(Verdict::Renewed { until: Some(until) })
                        if until > SystemTime::now() + STEP_DOWN_MARGIN =>
                    {
                        valid_until = valid_until.max(until);
                        continue;
                    }
                    Some(Verdict::Lost { holder }) => {
                        step_down(&role, &metrics, Some(holder.clone()));
                        return Err(ElectionError::Lost { lease: settings.lease_name.clone(), holder });
                    }
                    _ => {
                        step_down(&role, &metrics, None);
                        let seconds = settings.duration_s as f64 - STEP_DOWN_MARGIN.as_secs_f64();
                        return Err(ElectionError::RenewalsUnseen { lease: settings.lease_name.clone(), seconds });
                    }
                }
            }
            event = lease_events.next() => {
                let lease = match event {
                    Some(Ok(Event::Apply(l) | Event::InitApply(l))) => l,
                    Some(Ok(Event::Delete(_))) => Lease::default(),
                    Some(Ok(Event::Init | Event::InitDone)) => continue,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "watching the leader lease failed; retrying");
                        continue;
                    }
                    None => continue,
                };
                match judge(&observe(&lease), &settings.identity, leading) {
                    Verdict::Renewed { until } => {
                        if let Some(until) = until {
                            valid_until = valid_until.max(until);
                        }
                    }
                    Verdict::Lost { holder } => {
                        step_down(&role, &metrics, Some(holder.clone()));
                        return Err(ElectionError::Lost { lease: settings.lease_name.clone(), holder });
                    }
                    Verdict::TryNow => {
                        tracing::info!(lease = %settings.lease_name, "the leader lease is free; trying to take it");
                        attempt = Box::pin(attempt_after(&manager, Duration::ZERO, true));
                    }
                    Verdict::Follow { holder } => {
                        role.send_if_modified(|r| {
                            let next = Role::Standby { holder: holder.clone() };
                            let changed = *r != next;
                            *r = next;
                            changed
                        });
                    }
                }
            }
            result = &mut attempt => {
                match result {
                    Ok(true) if !leading => {
                        leading = true;
                        valid_until = SystemTime::now() + Duration::from_secs(settings.duration_s);
                        metrics.leader.set(1);
                        metrics.leader_transitions.inc();
                        tracing::info!(lease = %settings.lease_name, identity = %settings.identity, "became the leader; starting the workers");
                        role.send_replace(Role::Leader);
                    }
                    Ok(true) => {}
                    Ok(false) if leading => {
                        step_down(&role, &metrics, None);
                        return Err(ElectionError::Lost { lease: settings.lease_name.clone(), holder: "another replica".into() });
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, lease = %settings.lease_name, leading, "leader lease request failed; retrying");
                        attempt = Box::pin(attempt_after(&manager, RETRY_AFTER, false));
                        continue;
                    }
                }
                attempt = Box::pin(attempt_after(&manager, Duration::ZERO, false));
            }
        }
    }
}

/// Stops leading at once: the executor refuses writes from here on, while the process shuts
/// down (in-flight reconciles included).
fn step_down(role: &watch::Sender<Role>, metrics: &Metrics, holder: Option<String>) {
    metrics.leader.set(0);
    role.send_replace(Role::Standby { holder });
}

/// One round of the crate's loop (acquire, renew, or wait for the holder's expiry), after
/// `delay`; with `resync` it first re-reads the Lease (a standby woken by the watch).
async fn attempt_after(
    manager: &LeaseManager,
    delay: Duration,
    resync: bool,
) -> Result<bool, kube_lease_manager::LeaseManagerError> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if resync {
        // For a replica that does not hold the lease, `release` patches nothing and re-reads
        // the Lease, so the next round sees it free instead of sleeping to the old expiry.
        manager.release().await?;
    }
    manager.changed().await
}

fn step_down_instant(leading: bool, valid_until: SystemTime) -> SystemTime {
    if leading {
        valid_until.checked_sub(STEP_DOWN_MARGIN).unwrap_or(valid_until)
    } else {
        valid_until
    }
}

async fn sleep_until_system(at: SystemTime) {
    let wait = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait).await;
}

/// Builds the manager (creating the Lease if it is missing), retrying while the host API server
/// cannot be reached; `None` when cancelled first.
async fn build_manager(
    client: &kube::Client,
    namespace: &str,
    settings: &ElectionSettings,
    cancel: &CancellationToken,
) -> Option<LeaseManager> {
    let mut delay = Duration::from_millis(200);
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration_s)
            .with_grace(settings.grace_s)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await;
        match built {
            Ok(manager) => return Some(manager),
            Err(error) => {
                tracing::warn!(%error, lease = %settings.lease_name, "cannot read or create the leader lease; retrying");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renew: Option<SystemTime>, duration: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renew
                    .map(|t| MicroTime(k8s_openapi::jiff::Timestamp::try_from(t).expect("in range"))),
                lease_duration_seconds: duration,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn args(extra: &[&str]) -> ElectionArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            e: ElectionArgs,
        }
        let mut full = vec!["x"];
        full.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(full)
            .map(|p| p.e)
            .expect("parses")
    }

    #[test]
    fn off_by_default_and_named_after_the_vcluster_when_on() {
        assert_eq!(args(&[]).into_settings("vc"), Ok(None));
        let s = args(&["--leader-elect", "--leader-elect-identity", "pod-1"])
            .into_settings("vc")
            .expect("valid")
            .expect("on");
        assert_eq!(s.lease_name, "vc-syncer");
        assert_eq!(s.identity, "pod-1");
        assert_eq!((s.duration_s, s.grace_s), (15, 10));
    }

    #[test]
    fn default_identities_differ_between_processes_of_one_pod() {
        let a = args(&["--leader-elect"])
            .into_settings("vc")
            .expect("valid")
            .expect("on");
        let b = args(&["--leader-elect"])
            .into_settings("vc")
            .expect("valid")
            .expect("on");
        assert_ne!(
            a.identity, b.identity,
            "a restarted process must not inherit the lease"
        );
    }

    #[test]
    fn a_grace_not_below_the_duration_is_refused() {
        let bad = args(&[
            "--leader-elect",
            "--leader-elect-lease-duration",
            "5s",
            "--leader-elect-renew-grace",
            "5s",
        ]);
        assert_eq!(
            bad.into_settings("vc"),
            Err(ElectionConfigError::Timing {
                duration_s: 5,
                grace_s: 5
            })
        );
        let short = args(&[
            "--leader-elect",
            "--leader-elect-lease-duration",
            "1s",
            "--leader-elect-renew-grace",
            "0s",
        ]);
        assert!(short.into_settings("vc").is_err());
    }

    #[test]
    fn observing_a_lease_reads_holder_and_expiry() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let o = observe(&lease(Some("a"), Some(t), Some(15)));
        assert_eq!(o.holder.as_deref(), Some("a"));
        assert_eq!(o.expires, Some(t + Duration::from_secs(15)));
        let released = observe(&lease(Some(""), None, None));
        assert_eq!(
            released,
            Observed {
                holder: None,
                expires: None
            }
        );
        assert_eq!(
            observe(&Lease::default()),
            Observed {
                holder: None,
                expires: None
            }
        );
    }

    #[test]
    fn verdicts() {
        let until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(50));
        let held = |h: &str| Observed {
            holder: Some(h.into()),
            expires: until,
        };
        let free = Observed {
            holder: None,
            expires: None,
        };
        assert_eq!(judge(&held("me"), "me", true), Verdict::Renewed { until });
        assert_eq!(
            judge(&held("other"), "me", true),
            Verdict::Lost {
                holder: "other".into()
            }
        );
        assert_eq!(judge(&free, "me", false), Verdict::TryNow);
        assert_eq!(
            judge(&held("other"), "me", false),
            Verdict::Follow {
                holder: Some("other".into())
            }
        );
        // Our own acquisition seen before the crate reports it: nothing to do yet.
        assert_eq!(judge(&held("me"), "me", false), Verdict::Follow { holder: None });
        // A leader that sees the lease released (by force, out of band) keeps renewing: the
        // crate re-acquires it or reports the loss.
        assert_eq!(judge(&free, "me", true), Verdict::Follow { holder: None });
    }

    #[test]
    fn roles_describe_themselves_and_only_standbys_wait() {
        assert!(Role::Alone.leads() && Role::Leader.leads());
        assert!(!Role::Standby { holder: None }.leads());
        assert_eq!(
            Role::Standby {
                holder: Some("vnest-1_ab".into())
            }
            .describe(),
            "role: standby (leader: vnest-1_ab)"
        );
    }

    #[tokio::test]
    async fn leading_resolves_at_once_alone_and_when_elected() {
        Leadership::alone().leading().await;
        let (tx, l) = Leadership::elected();
        assert!(!l.leads());
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.leading().await }
        });
        tx.send_replace(Role::Leader);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("resolves")
            .expect("no panic");
        assert!(l.leads());
    }
}
