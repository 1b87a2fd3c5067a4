//! Pure: a pod's status as the kubelet would report it, from what the runner observed of its
//! containers (`pkg/kubelet/kubelet_pods.go` getPhase / generateAPIPodStatus,
//! `pkg/kubelet/status/generate.go`). No clock: `now` is a parameter.

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::podman::PsEntry;
use crate::probes::ProbeState;

/// What the runner knows about one container of the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// `podman://<id>` of the current (newest) podman container, if any
    pub container_id: Option<String>,
    pub state: State,
    /// The previous run, when the current one is a restart (or is waiting to restart).
    pub last_state: Option<State>,
    pub restart_count: u32,
    /// readiness probe result (true when there is no readiness probe and it runs)
    pub ready: bool,
    /// startup probe passed (true when there is none and it runs)
    pub started: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: Option<Time>,
        finished_at: Option<Time>,
        container_id: Option<String>,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }
    fn to_api(&self) -> ContainerState {
        match self {
            State::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            State::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            },
            State::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    reason: Some(reason.clone()),
                    started_at: started_at.clone(),
                    finished_at: finished_at.clone(),
                    container_id: container_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }
    pub fn succeeded(&self) -> bool {
        matches!(self, State::Terminated { exit_code: 0, .. })
    }
}

/// The reason the kubelet gives a terminated container.
pub fn terminated_reason(exit_code: i32) -> &'static str {
    if exit_code == 0 { "Completed" } else { "Error" }
}

fn api_status(o: &Observed) -> ContainerStatus {
    ContainerStatus {
        name: o.name.clone(),
        image: o.image.clone(),
        image_id: o.image_id.clone(),
        container_id: o.container_id.clone(),
        ready: o.ready && matches!(o.state, State::Running { .. }),
        started: Some(o.started && matches!(o.state, State::Running { .. })),
        restart_count: i32::try_from(o.restart_count).unwrap_or(i32::MAX),
        state: Some(o.state.to_api()),
        last_state: Some(o.last_state.as_ref().map(State::to_api).unwrap_or_default()),
        ..Default::default()
    }
}

/// What the pod worker knows about a container besides its podman runs.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// a state imposed by the pod (e.g. PodInitializing while init containers run)
    pub force: Option<State>,
    /// probe results of the newest run (None: no probes started for it)
    pub probe: Option<ProbeState>,
    /// the newest run exited and waits for its backoff to restart
    pub restart_pending: bool,
    /// why it cannot start: (reason, message)
    pub blocked: Option<(String, String)>,
    /// `<name>_<namespace>(<uid>)` for messages
    pub pod: String,
}

fn ts(secs: i64) -> Option<Time> {
    (secs > 0)
        .then(|| Timestamp::from_second(secs).ok().map(Time))
        .flatten()
}

fn terminated(e: &PsEntry) -> State {
    State::Terminated {
        exit_code: e.exit_code,
        reason: terminated_reason(e.exit_code).into(),
        started_at: ts(e.started_at),
        finished_at: ts(e.exited_at),
        container_id: Some(format!("podman://{}", e.id)),
    }
}

/// A container's status from its podman runs (oldest first) and what the worker knows.
pub fn observe(c: &Container, runs: &[&PsEntry], facts: Facts, now: &Time) -> Observed {
    let newest = runs.last().copied();
    let waiting = |(reason, message): (String, String)| State::Waiting {
        reason,
        message: Some(message),
    };
    let (state, last_state) = match (facts.force, newest) {
        (Some(s), _) => (s, None),
        (None, None) => (
            facts
                .blocked
                .map_or_else(|| State::waiting("ContainerCreating", None), waiting),
            None,
        ),
        (None, Some(e)) => {
            let previous = runs.len().checked_sub(2).map(|i| terminated(runs[i]));
            if e.running() {
                (
                    State::Running {
                        started_at: ts(e.started_at).unwrap_or_else(|| now.clone()),
                    },
                    previous,
                )
            } else if e.exited() {
                match (facts.restart_pending, facts.blocked) {
                    (true, Some(b)) => (waiting(b), Some(terminated(e))),
                    (true, None) => (
                        State::Waiting {
                            reason: "CrashLoopBackOff".into(),
                            message: Some(format!(
                                "back-off restarting failed container={} pod={}",
                                c.name, facts.pod
                            )),
                        },
                        Some(terminated(e)),
                    ),
                    (false, _) => (terminated(e), previous),
                }
            } else {
                (State::waiting("ContainerCreating", None), previous)
            }
        }
    };
    let ps = facts.probe.unwrap_or_else(|| ProbeState::initial(c));
    Observed {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: newest.map(|e| e.image_id.clone()).unwrap_or_default(),
        container_id: newest.map(|e| format!("podman://{}", e.id)),
        state,
        last_state,
        restart_count: newest.map(PsEntry::restart_count).unwrap_or(0),
        ready: ps.ready && !ps.failed,
        started: ps.started,
    }
}

/// The pod phase, as kubelet's getPhase computes it.
pub fn phase(restart_policy: &str, init: &[Observed], regular: &[Observed]) -> &'static str {
    let init_done = init.iter().all(|o| {
        o.state.succeeded()
            || (o.last_state.as_ref().is_some_and(State::succeeded)
                && !matches!(o.state, State::Running { .. }))
    });
    if !init_done {
        // A failed init container with restartPolicy Never fails the pod.
        if restart_policy == "Never"
            && init
                .iter()
                .any(|o| matches!(o.state, State::Terminated { exit_code, .. } if exit_code != 0))
        {
            return "Failed";
        }
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for o in regular {
        match &o.state {
            State::Running { .. } => running += 1,
            State::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } if o.last_state.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        };
    }
    "Pending"
}

/// One condition, keeping the previous transition time when its status did not change.
fn condition(
    prev: &PodStatus,
    type_: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = prev.conditions.iter().flatten().find(|c| c.type_ == type_);
    let transition = match old {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        last_transition_time: transition,
        last_probe_time: None,
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// The status the runner reports for `pod`. `prev` is the pod's current status (for transition
/// times, startTime and the scheduler's PodScheduled condition).
pub fn compute(pod: &Pod, init: &[Observed], regular: &[Observed], ip: &str, now: &Time) -> PodStatus {
    let prev = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let restart_policy = spec.and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let phase = phase(restart_policy, init, regular);

    let incomplete_init: Vec<&str> = init
        .iter()
        .filter(|o| !o.state.succeeded() && !o.last_state.as_ref().is_some_and(State::succeeded))
        .map(|o| o.name.as_str())
        .collect();
    let initialized = incomplete_init.is_empty() || phase == "Running" || phase == "Succeeded";
    let unready: Vec<&str> = regular
        .iter()
        .filter(|o| !(o.ready && matches!(o.state, State::Running { .. })))
        .map(|o| o.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && phase == "Running";
    let gates_ok = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|g| {
            prev.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
    let any_started = init.iter().chain(regular).any(|o| o.container_id.is_some());

    let unready_msg = format!("containers with unready status: [{}]", unready.join(" "));
    let mut conditions = vec![
        condition(
            &prev,
            "PodReadyToStartContainers",
            any_started || phase != "Pending",
            None,
            None,
            now,
        ),
        condition(
            &prev,
            "Initialized",
            initialized,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete_init.join(" ")
            )),
            now,
        ),
        condition(
            &prev,
            "Ready",
            containers_ready && gates_ok,
            Some(if containers_ready {
                "ReadinessGatesNotReady".into()
            } else {
                "ContainersNotReady".into()
            }),
            Some(unready_msg.clone()),
            now,
        ),
        condition(
            &prev,
            "ContainersReady",
            containers_ready,
            Some("ContainersNotReady".into()),
            Some(unready_msg),
            now,
        ),
    ];
    // The scheduler's condition is kept as it is (the runner only adds it when missing).
    match prev
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
    {
        Some(c) => conditions.push(c.clone()),
        None => conditions.push(condition(&prev, "PodScheduled", true, None, None, now)),
    }

    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(ip.to_owned()),
        host_ips: Some(vec![HostIP { ip: ip.to_owned() }]),
        pod_ip: Some(ip.to_owned()),
        pod_ips: Some(vec![PodIP { ip: ip.to_owned() }]),
        start_time: prev.start_time.clone().or_else(|| Some(now.clone())),
        init_container_statuses: if init.is_empty() {
            None
        } else {
            Some(init.iter().map(api_status).collect())
        },
        container_statuses: Some(regular.iter().map(api_status).collect()),
        ..Default::default()
    }
}

/// The merge patch that moves `current` to `desired`, or None when every field the runner owns
/// already has the desired value (no no-op writes).
pub fn patch_for(current: Option<&PodStatus>, desired: &PodStatus) -> Option<serde_json::Value> {
    let want = serde_json::to_value(desired).ok()?;
    let have = current
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_default();
    let want_obj = want.as_object()?;
    let changed = want_obj.iter().any(|(k, v)| have.get(k) != Some(v));
    changed.then(|| serde_json::json!({ "status": want }))
}

/// Kubelet-like restart backoff: the first restart is immediate, then 10 s doubling up to `max`;
/// it resets once a container ran for 2 × `max` without failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub initial: std::time::Duration,
    pub max: std::time::Duration,
    /// delay before the next restart (None: the next restart is immediate)
    next: Option<std::time::Duration>,
}

impl Backoff {
    pub fn new(initial: std::time::Duration, max: std::time::Duration) -> Self {
        Self {
            initial,
            max,
            next: None,
        }
    }

    /// A container exited after running `ran_for`: how long to wait before restarting it.
    pub fn on_exit(&mut self, ran_for: std::time::Duration) -> std::time::Duration {
        if ran_for >= self.max * 2 {
            self.next = None;
        }
        let delay = self.next.unwrap_or_default();
        let following = match self.next {
            None => self.initial,
            Some(d) => (d * 2).min(self.max),
        };
        self.next = Some(following.min(self.max));
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use std::time::Duration;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn obs(name: &str, state: State, ready: bool) -> Observed {
        Observed {
            name: name.into(),
            image: "img".into(),
            image_id: "sha".into(),
            container_id: Some(format!("podman://{name}")),
            state,
            last_state: None,
            restart_count: 0,
            ready,
            started: true,
        }
    }

    fn running(name: &str, ready: bool) -> Observed {
        obs(name, State::Running { started_at: t(100) }, ready)
    }

    fn exited(name: &str, code: i32) -> Observed {
        obs(
            name,
            State::Terminated {
                exit_code: code,
                reason: terminated_reason(code).into(),
                started_at: Some(t(1)),
                finished_at: Some(t(2)),
                container_id: None,
            },
            false,
        )
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "img"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    fn run(id: &str, state: &str, code: i32, restart: u32) -> PsEntry {
        serde_json::from_value(serde_json::json!({
            "Id": id, "ImageID": "sha", "State": state, "ExitCode": code,
            "StartedAt": 100 + i64::from(restart) * 10, "ExitedAt": if state == "exited" { 105 + i64::from(restart) * 10 } else { 0 },
            "Labels": {"dev.vnest.runner.restart-count": restart.to_string()}
        }))
        .unwrap()
    }

    fn container(readiness: bool) -> Container {
        let mut c = serde_json::json!({"name": "c", "image": "img"});
        if readiness {
            c["readinessProbe"] = serde_json::json!({"tcpSocket": {"port": 1}});
        }
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn observed_states_from_podman_runs() {
        let now = t(1000);
        let c = container(true);
        // never ran, blocked: the reason shows
        let blocked = Facts {
            blocked: Some(("ErrImageNeverPull".into(), "no image".into())),
            ..Facts::default()
        };
        let o = observe(&c, &[], blocked.clone(), &now);
        assert_eq!(
            o.state,
            State::Waiting {
                reason: "ErrImageNeverPull".into(),
                message: Some("no image".into())
            }
        );
        assert_eq!((o.container_id, o.restart_count, o.ready), (None, 0, false));
        // running second run: previous run is lastState; not ready before the readiness probe passes
        let (a, b) = (run("a", "exited", 137, 0), run("b", "running", 0, 1));
        let o = observe(&c, &[&a, &b], Facts::default(), &now);
        assert_eq!(o.state, State::Running { started_at: t(110) });
        assert!(matches!(
            o.last_state,
            Some(State::Terminated { exit_code: 137, .. })
        ));
        assert_eq!(
            (o.restart_count, o.ready, o.container_id.as_deref()),
            (1, false, Some("podman://b"))
        );
        let ready = Facts {
            probe: Some(ProbeState {
                started: true,
                ready: true,
                failed: false,
            }),
            ..Facts::default()
        };
        assert!(observe(&c, &[&a, &b], ready, &now).ready);
        // exited and waiting for its backoff: CrashLoopBackOff with the exit as lastState
        let pending = Facts {
            restart_pending: true,
            pod: "p_ns(u)".into(),
            ..Facts::default()
        };
        let o = observe(&c, &[&a], pending, &now);
        assert_eq!(
            o.state,
            State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some("back-off restarting failed container=c pod=p_ns(u)".into())
            }
        );
        assert!(
            matches!(o.last_state, Some(State::Terminated { exit_code: 137, ref reason, .. }) if reason == "Error")
        );
        // exited for good (restartPolicy Never), even while a volume source is still syncing
        let o = observe(&c, &[&run("z", "exited", 0, 0)], blocked, &now);
        assert!(
            matches!(o.state, State::Terminated { exit_code: 0, ref reason, .. } if reason == "Completed")
        );
        // no readiness probe: ready as soon as it runs
        assert!(observe(&container(false), &[&b], Facts::default(), &now).ready);
    }

    #[test]
    fn phases_follow_get_phase() {
        let waiting = obs("a", State::waiting("ContainerCreating", None), false);
        assert_eq!(phase("Always", &[], std::slice::from_ref(&waiting)), "Pending");
        assert_eq!(phase("Always", &[], &[running("a", false)]), "Running");
        assert_eq!(
            phase("Always", &[exited("i", 0)], &[running("a", true)]),
            "Running"
        );
        assert_eq!(
            phase(
                "Always",
                &[obs("i", State::Running { started_at: t(1) }, false)],
                std::slice::from_ref(&waiting)
            ),
            "Pending"
        );
        assert_eq!(
            phase("Never", &[exited("i", 1)], std::slice::from_ref(&waiting)),
            "Failed"
        );
        assert_eq!(phase("Always", &[], &[exited("a", 1)]), "Running");
        assert_eq!(phase("Never", &[], &[exited("a", 0)]), "Succeeded");
        assert_eq!(phase("Never", &[], &[exited("a", 0), exited("b", 2)]), "Failed");
        assert_eq!(phase("OnFailure", &[], &[exited("a", 2)]), "Running");
        // CrashLoopBackOff (waiting after a run) counts as stopped, not waiting.
        let mut crash = obs("a", State::waiting("CrashLoopBackOff", None), false);
        crash.last_state = Some(exited("a", 1).state);
        assert_eq!(phase("Always", &[], &[crash]), "Running");
    }

    #[test]
    fn ready_conditions_track_readiness_and_keep_transition_times() {
        let p = pod();
        let s1 = compute(
            &p,
            &[exited("init", 0)],
            &[running("a", false)],
            "127.0.0.1",
            &t(100),
        );
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s1, "Initialized").status, "True");
        assert_eq!(cond(&s1, "Ready").status, "False");
        assert_eq!(cond(&s1, "Ready").reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            cond(&s1, "ContainersReady").message.as_deref(),
            Some("containers with unready status: [a]")
        );
        // the scheduler's condition is kept verbatim
        assert_eq!(
            cond(&s1, "PodScheduled").last_transition_time,
            Some(t(1767225600))
        );
        assert_eq!(s1.pod_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s1.start_time, Some(t(100)));

        let mut p2 = p.clone();
        p2.status = Some(s1.clone());
        let s2 = compute(
            &p2,
            &[exited("init", 0)],
            &[running("a", true)],
            "127.0.0.1",
            &t(200),
        );
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(t(200)));
        assert_eq!(cond(&s2, "Initialized").last_transition_time, Some(t(100)));
        assert_eq!(s2.start_time, Some(t(100)));
        let cs = &s2.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("podman://a"));
    }

    #[test]
    fn incomplete_init_containers_are_named() {
        let p = pod();
        let init = [obs("init", State::Running { started_at: t(1) }, false)];
        let s = compute(
            &p,
            &init,
            &[obs("a", State::waiting("PodInitializing", None), false)],
            "127.0.0.1",
            &t(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
    }

    #[test]
    fn an_unchanged_status_needs_no_patch() {
        let mut p = pod();
        let s = compute(&p, &[], &[running("a", true)], "127.0.0.1", &t(100));
        assert!(patch_for(p.status.as_ref(), &s).is_some());
        p.status = Some(s);
        let again = compute(&p, &[], &[running("a", true)], "127.0.0.1", &t(300));
        assert_eq!(patch_for(p.status.as_ref(), &again), None);
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.on_exit(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        // a long healthy run resets it
        assert_eq!(b.on_exit(Duration::from_secs(600)), Duration::ZERO);
        assert_eq!(b.on_exit(short), Duration::from_secs(10));
        // a test-only small cap
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(
            [b.on_exit(short), b.on_exit(short), b.on_exit(short)].map(|d| d.as_secs()),
            [0, 2, 2]
        );
    }
}
