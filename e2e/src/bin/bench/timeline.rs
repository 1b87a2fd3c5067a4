//! Where a pod's startup time goes: a per-pod timeline of the burst through vnest, joined from
//! both API servers' audit logs (microsecond timestamps on one machine clock) and the bench's
//! own watch (when the client saw `Ready`). No extra API request is made for it.
//!
//! Milestones of one pod, in causal order:
//! virtual create done (the ReplicaSet controller's create) → the syncer's TokenRequest
//! received → done → host create received → done → host bound (scheduler) → host status
//! written by kwok (Running) → virtual binding done (the syncer) → the virtual status write that
//! carried `Ready` → `Ready` seen by the client's watch.
//!
//! The virtual API server's audit policy (`hack/lib/virtual.sh`) records pod creates with their
//! response (a `generateName`'d pod is named only there), TokenRequests with their request (it
//! names the pod the token is bound to; the token itself is in the response, not recorded),
//! and bindings and status writes by name; the host's (`hack/up.sh`) records the syncer's
//! creates and everyone's bindings and status writes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use vnest_e2e::{Result, World};

use crate::probe::{end_of, read_since};
use crate::track::{by_virtual_name, host_selector};
use crate::track::{epoch_ms, round1, stats};

/// Milliseconds since the Unix epoch (microsecond resolution).
type Ms = f64;

/// One step of the timeline: a label and the pair of milestones it spans.
struct Step {
    label: &'static str,
    from: fn(&Marks) -> Option<Ms>,
    to: fn(&Marks) -> Option<Ms>,
}

/// The steps reported, in the order a pod goes through them. The first seven and the last two
/// are the critical path; "host bound → virtual bound" runs beside the host's start. The total
/// starts when the virtual create was answered (for a Deployment's pods the ReplicaSet
/// controller's create, the same on the direct side); the first step is that create's own time.
const STEPS: [Step; 11] = [
    Step {
        label: VIRTUAL_CREATE,
        from: |m| m.v_create_received,
        to: |m| m.v_created,
    },
    Step {
        label: "virtual create → syncer's TokenRequest (watch delivery, queue, translation)",
        from: |m| m.v_created,
        to: |m| m.token_received,
    },
    Step {
        label: "TokenRequest (virtual API server)",
        from: |m| m.token_received,
        to: |m| m.token_done,
    },
    Step {
        label: "token → host create received (syncer, host client)",
        from: |m| m.token_done,
        to: |m| m.host_create_received,
    },
    Step {
        label: "host create (host API server)",
        from: |m| m.host_create_received,
        to: |m| m.host_create_done,
    },
    Step {
        label: "host create → bound (host scheduler)",
        from: |m| m.host_create_done,
        to: |m| m.host_bound,
    },
    Step {
        label: "host bound → Running written (kwok)",
        from: |m| m.host_bound,
        to: |m| m.host_running,
    },
    Step {
        label: "host bound → virtual bound (syncer; beside the host's start)",
        from: |m| m.host_bound,
        to: |m| m.virtual_bound,
    },
    Step {
        label: "host Running → virtual Ready written (watch, syncer, virtual API server)",
        from: |m| m.host_running,
        to: |m| m.ready_written,
    },
    Step {
        label: "virtual Ready written → seen by the client's watch",
        from: |m| m.ready_written,
        to: |m| m.ready_seen,
    },
    Step {
        label: "total: virtual create → Ready seen",
        from: |m| m.v_created,
        to: |m| m.ready_seen,
    },
];

/// The label of the virtual API server's own time for the pod's create.
const VIRTUAL_CREATE: &str = "virtual create (virtual API server)";

/// What the audit logs and the watch say about one virtual pod (epoch milliseconds).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Marks {
    v_create_received: Option<Ms>,
    v_created: Option<Ms>,
    token_received: Option<Ms>,
    token_done: Option<Ms>,
    host_create_received: Option<Ms>,
    host_create_done: Option<Ms>,
    host_bound: Option<Ms>,
    host_running: Option<Ms>,
    virtual_bound: Option<Ms>,
    /// Every status write of the syncer to the virtual pod, in log order.
    virtual_status: Vec<Ms>,
    ready_written: Option<Ms>,
    ready_seen: Option<Ms>,
}

/// The inputs of one burst's timeline.
pub struct Inputs<'a> {
    /// Audit log lines of the virtual API server written during the burst.
    pub virtual_audit: &'a str,
    /// Audit log lines of the host API server written during the burst.
    pub host_audit: &'a str,
    /// The virtual namespace of the burst and the host namespace.
    pub virtual_ns: &'a str,
    pub host_ns: &'a str,
    /// The syncer's user on the host (its creates are told from the direct side's by it). On
    /// the virtual side only the syncer asks for bound tokens, binds pods and writes their
    /// status: there is no scheduler or kubelet there.
    pub syncer_host_user: &'a str,
    /// Host pod name → virtual pod name.
    pub host_to_virtual: &'a HashMap<String, String>,
    /// Virtual pod name → when the client's watch saw it `Ready` (epoch ms).
    pub ready_seen: &'a HashMap<String, Ms>,
}

/// One audit event, as much as the timeline needs.
struct Event<'a> {
    verb: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
    namespace: &'a str,
    name: Option<String>,
    user: &'a str,
    received: Ms,
    done: Ms,
    ok: bool,
}

fn audit_ms(v: &Value) -> Option<Ms> {
    let t: Timestamp = v.as_str()?.parse().ok()?;
    Some(t.as_microsecond() as f64 / 1000.0)
}

fn parse_event(v: &Value) -> Option<Event<'_>> {
    if v["stage"] != "ResponseComplete" {
        return None;
    }
    let o = &v["objectRef"];
    let name = o["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| v["responseObject"]["metadata"]["name"].as_str())
        .map(str::to_string);
    let code = v["responseStatus"]["code"].as_u64().unwrap_or(0);
    Some(Event {
        verb: v["verb"].as_str()?,
        resource: o["resource"].as_str()?,
        subresource: o["subresource"].as_str(),
        namespace: o["namespace"].as_str().unwrap_or_default(),
        name,
        user: v["user"]["username"].as_str().unwrap_or_default(),
        received: audit_ms(&v["requestReceivedTimestamp"])?,
        done: audit_ms(&v["stageTimestamp"])?,
        ok: (200..300).contains(&code),
    })
}

fn first(slot: &mut Option<Ms>, at: Ms) {
    if slot.is_none() {
        *slot = Some(at);
    }
}

/// Joins the audit logs and the watch into one `Marks` per virtual pod that was seen `Ready`.
pub fn join(input: &Inputs<'_>) -> BTreeMap<String, Marks> {
    let mut pods: BTreeMap<String, Marks> = input
        .ready_seen
        .iter()
        .map(|(name, at)| {
            let marks = Marks {
                ready_seen: Some(*at),
                ..Marks::default()
            };
            (name.clone(), marks)
        })
        .collect();
    for line in input.virtual_audit.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // a line being written right now
        };
        let Some(e) = parse_event(&v) else { continue };
        if !e.ok || e.namespace != input.virtual_ns || e.verb != "create" && e.verb != "patch" {
            continue;
        }
        match (e.resource, e.subresource) {
            ("pods", None) if e.verb == "create" => {
                if let Some(m) = e.name.and_then(|n| pods.get_mut(&n)) {
                    first(&mut m.v_create_received, e.received);
                    first(&mut m.v_created, e.done);
                }
            }
            ("serviceaccounts", Some("token")) => {
                let bound = &v["requestObject"]["spec"]["boundObjectRef"];
                if bound["kind"] != "Pod" {
                    continue;
                }
                if let Some(m) = bound["name"].as_str().and_then(|n| pods.get_mut(n)) {
                    first(&mut m.token_received, e.received);
                    first(&mut m.token_done, e.done);
                }
            }
            ("pods", Some("binding")) => {
                if let Some(m) = e.name.and_then(|n| pods.get_mut(&n)) {
                    first(&mut m.virtual_bound, e.done);
                }
            }
            ("pods", Some("status")) => {
                if let Some(m) = e.name.and_then(|n| pods.get_mut(&n)) {
                    m.virtual_status.push(e.done);
                }
            }
            _ => {}
        }
    }
    for line in input.host_audit.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(e) = parse_event(&v) else { continue };
        if !e.ok || e.namespace != input.host_ns {
            continue;
        }
        let Some(m) = e
            .name
            .as_ref()
            .and_then(|n| input.host_to_virtual.get(n))
            .and_then(|n| pods.get_mut(n))
        else {
            continue;
        };
        match (e.verb, e.resource, e.subresource) {
            ("create", "pods", None) if e.user == input.syncer_host_user => {
                first(&mut m.host_create_received, e.received);
                first(&mut m.host_create_done, e.done);
            }
            ("create", "pods", Some("binding")) => first(&mut m.host_bound, e.done),
            ("patch" | "update", "pods", Some("status")) if e.user != input.syncer_host_user => {
                first(&mut m.host_running, e.done)
            }
            _ => {}
        }
    }
    for m in pods.values_mut() {
        // The write that carried Ready: the last status write before the client saw it.
        m.ready_written = m
            .virtual_status
            .iter()
            .copied()
            .filter(|w| m.ready_seen.is_some_and(|seen| *w <= seen))
            .reduce(f64::max);
    }
    pods
}

/// Each step's share per pod (ms), in `STEPS` order; a pod missing either milestone of a step
/// is left out of that step only.
pub fn step_series(pods: &BTreeMap<String, Marks>) -> Vec<(&'static str, Vec<f64>)> {
    STEPS
        .iter()
        .map(|s| {
            let values = pods
                .values()
                .filter_map(|m| Some((s.to)(m)? - (s.from)(m)?))
                .collect();
            (s.label, values)
        })
        .collect()
}

/// The JSON fragment: each step's p50/p90/p99/max/n, the number of pods joined, and the
/// virtual status writes per pod (how many requests the virtual side's status cost).
pub fn summary(pods: &BTreeMap<String, Marks>) -> Value {
    let steps: Vec<Value> = step_series(pods)
        .into_iter()
        .map(|(label, v)| json!({"step": label, "ms": stats(&v)}))
        .collect();
    let writes: usize = pods.values().map(|m| m.virtual_status.len()).sum();
    let complete = pods
        .values()
        .filter(|m| STEPS.iter().all(|s| (s.from)(m).is_some() && (s.to)(m).is_some()))
        .count();
    json!({
        "pods": pods.len(),
        "pods_with_every_milestone": complete,
        "virtual_status_writes_per_pod": round1(writes as f64 / pods.len().max(1) as f64),
        "steps": steps,
    })
}

/// The steps drawn in the timeline chart: every step from the answered virtual create on but
/// the total and the one beside the critical path (eight lines, one colour each).
pub fn chart_series(series: &[(&'static str, Vec<f64>)]) -> Vec<(&'static str, Vec<f64>)> {
    series
        .iter()
        .filter(|(label, _)| {
            !label.starts_with("total") && !label.contains("beside") && *label != VIRTUAL_CREATE
        })
        .cloned()
        .collect()
}

/// The timeline as a Markdown table: each step's p50 / p99 (ms) and how many pods it covers.
/// `of_what` names the pods: "the 1000-pod burst", "1000 bare pods at 20 pods/s".
pub fn markdown(summary: &Value, of_what: &str) -> Option<String> {
    let steps = summary["steps"].as_array()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per-pod timeline of {of_what} through vnest ({} pods joined, {} with every milestone; \
         {} virtual status writes per pod), from both API servers' audit logs:\n",
        summary["pods"], summary["pods_with_every_milestone"], summary["virtual_status_writes_per_pod"]
    );
    out.push_str("| step | p50 ms | p99 ms | pods |\n| --- | ---: | ---: | ---: |\n");
    for s in steps {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s["step"].as_str().unwrap_or("?"),
            s["ms"]["p50"],
            s["ms"]["p99"],
            s["ms"]["n"]
        );
    }
    Some(out)
}

/// Two timelines of the same pods' kind side by side, each step's p50 / p99 alone and loaded
/// and the p99 ratio: where a small namespace's pod loses its time under another's burst.
pub fn compare_markdown(alone: &Value, loaded: &Value, of_what: &str) -> Option<String> {
    let (a, l) = (alone["steps"].as_array()?, loaded["steps"].as_array()?);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per-pod timeline of {of_what}, alone ({} pods joined) and beside the bursts ({} pods \
         joined), from both API servers' audit logs:\n",
        alone["pods"], loaded["pods"]
    );
    out.push_str(
        "| step | alone p50 / p99 ms | loaded p50 / p99 ms | p99 loaded ÷ alone |\n\
         | --- | ---: | ---: | ---: |\n",
    );
    for (sa, sl) in a.iter().zip(l) {
        let ratio = match (sl["ms"]["p99"].as_f64(), sa["ms"]["p99"].as_f64()) {
            (Some(l), Some(a)) if a > 0.0 => format!("{:.1}", l / a),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} / {} | {ratio} |",
            sa["step"].as_str().unwrap_or("?"),
            sa["ms"]["p50"],
            sa["ms"]["p99"],
            sl["ms"]["p50"],
            sl["ms"]["p99"],
        );
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Reading the logs

/// The two audit logs' ends before a burst; `finish` reads what they gained.
pub struct Recorder {
    virtual_log: PathBuf,
    host_log: PathBuf,
    virtual_from: u64,
    host_from: u64,
    host_user: String,
}

impl Recorder {
    /// `None` (and why) when the virtual API server keeps no audit log: the container world's
    /// k3s stand-in, where `make bench` does not run.
    pub fn start(w: &World, host_user: &str) -> Result<std::result::Result<Self, String>> {
        let Some(virtual_log) = w.env.get("VIRTUAL_AUDIT_LOG").ok().filter(|p| !p.is_empty()) else {
            return Ok(Err(
                "the virtual API server keeps no audit log in this world (VIRTUAL_AUDIT_LOG)".into(),
            ));
        };
        let (virtual_log, host_log) = (
            PathBuf::from(virtual_log),
            PathBuf::from(w.env.get("HOST_AUDIT_LOG")?),
        );
        Ok(Ok(Self {
            virtual_from: end_of(&virtual_log)?,
            host_from: end_of(&host_log)?,
            virtual_log,
            host_log,
            host_user: host_user.to_string(),
        }))
    }

    /// Joins what the logs gained with the client's `Ready` sightings of virtual namespace
    /// `virtual_ns`'s pods. One list of the host pods (the bench's, not the syncer's) maps host
    /// names back to virtual ones.
    pub async fn finish(
        self,
        w: &World,
        virtual_ns: &str,
        ready: &HashMap<String, Instant>,
    ) -> Result<BTreeMap<String, Marks>> {
        let hosts: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
        let host_to_virtual = hosts
            .list(&ListParams::default().labels(&host_selector(virtual_ns)))
            .await?
            .items
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, by_virtual_name(p)?)))
            .collect();
        let ready_seen = ready.iter().map(|(k, at)| (k.clone(), epoch_ms(*at))).collect();
        let (virtual_audit, host_audit) = (
            read_since(&self.virtual_log, self.virtual_from)?,
            read_since(&self.host_log, self.host_from)?,
        );
        Ok(join(&Inputs {
            virtual_audit: &virtual_audit,
            host_audit: &host_audit,
            virtual_ns,
            host_ns: &w.host_ns,
            syncer_host_user: &self.host_user,
            host_to_virtual: &host_to_virtual,
            ready_seen: &ready_seen,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        verb: &str,
        res: &str,
        sub: Option<&str>,
        ns: &str,
        name: &str,
        user: &str,
        at: (u32, u32),
    ) -> String {
        let t = |ms: u32| format!("2026-12-06T12:00:00.{:06}Z", ms * 1000);
        let mut obj = json!({"resource": res, "namespace": ns, "name": name});
        if let Some(s) = sub {
            obj["subresource"] = json!(s);
        }
        json!({"stage": "ResponseComplete", "verb": verb, "objectRef": obj, "user": {"username": user},
               "requestReceivedTimestamp": t(at.0), "stageTimestamp": t(at.1),
               "responseStatus": {"code": 201}})
        .to_string()
    }

    #[test]
    fn milestones_are_joined_across_both_logs() {
        let epoch = 1_796_558_400_000.0; // 2026-12-06T12:00:00Z in ms
        let mut create =
            serde_json::from_str::<Value>(&line("create", "pods", None, "v", "", "rs", (1, 10))).unwrap();
        create["responseObject"] = json!({"metadata": {"name": "p"}});
        let mut token = serde_json::from_str::<Value>(&line(
            "create",
            "serviceaccounts",
            Some("token"),
            "v",
            "default",
            "syncer",
            (20, 23),
        ))
        .unwrap();
        token["requestObject"] = json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "p"}}});
        let virt = [
            create.to_string(),
            token.to_string(),
            line("create", "pods", Some("binding"), "v", "p", "syncer", (60, 62)),
            line("patch", "pods", Some("status"), "v", "p", "syncer", (64, 66)),
            line("patch", "pods", Some("status"), "v", "p", "syncer", (90, 95)),
            // another namespace's pod of the same name: not ours
            line("create", "pods", Some("binding"), "other", "p", "syncer", (1, 2)),
        ]
        .join("\n");
        let host = [
            line("create", "pods", None, "h", "p-v-x", "hsyncer", (30, 40)),
            line("create", "pods", Some("binding"), "h", "p-v-x", "sched", (41, 45)),
            line("patch", "pods", Some("status"), "h", "p-v-x", "kwok", (50, 70)),
            line("patch", "pods", Some("status"), "h", "p-v-x", "kwok", (80, 85)),
        ]
        .join("\n");
        let host_to_virtual = HashMap::from([("p-v-x".to_string(), "p".to_string())]);
        let ready_seen = HashMap::from([("p".to_string(), epoch + 99.0)]);
        let pods = join(&Inputs {
            virtual_audit: &virt,
            host_audit: &host,
            virtual_ns: "v",
            host_ns: "h",
            syncer_host_user: "hsyncer",
            host_to_virtual: &host_to_virtual,
            ready_seen: &ready_seen,
        });
        let m = &pods["p"];
        assert_eq!(m.v_created, Some(epoch + 10.0));
        assert_eq!(
            (m.token_received, m.token_done),
            (Some(epoch + 20.0), Some(epoch + 23.0))
        );
        assert_eq!(m.host_create_received, Some(epoch + 30.0));
        assert_eq!(m.host_bound, Some(epoch + 45.0));
        assert_eq!(
            m.host_running,
            Some(epoch + 70.0),
            "the first status write by kwok"
        );
        assert_eq!(m.virtual_bound, Some(epoch + 62.0), "only namespace v's binding");
        assert_eq!(
            m.ready_written,
            Some(epoch + 95.0),
            "the last status write before Ready was seen"
        );
        let series = step_series(&pods);
        let total = series.last().unwrap();
        assert_eq!(total.1, vec![89.0]);
        assert_eq!(series[0].1, vec![9.0], "the virtual create's own time");
        assert_eq!(series[2].1, vec![3.0], "the TokenRequest's own time");
        assert_eq!(chart_series(&series).len(), 8, "one colour per line");
        let s = summary(&pods);
        assert_eq!(s["pods_with_every_milestone"], 1);
        assert_eq!(s["virtual_status_writes_per_pod"], 2.0);
    }

    #[test]
    fn a_comparison_gives_each_steps_p99_ratio() {
        let summary = |p99: f64| {
            json!({"pods": 2, "steps": [{"step": "a", "ms": {"p50": 1.0, "p99": p99}},
                                        {"step": "b", "ms": {"p50": null, "p99": null}}]})
        };
        let md = compare_markdown(&summary(4.0), &summary(10.0), "small pods").unwrap();
        assert!(md.contains("| a | 1.0 / 4.0 | 1.0 / 10.0 | 2.5 |"), "{md}");
        assert!(md.contains("| b | null / null | null / null | — |"), "{md}");
        assert_eq!(compare_markdown(&json!({}), &summary(1.0), "x"), None);
    }

    #[test]
    fn a_pod_missing_a_milestone_drops_out_of_that_step_only() {
        let ready_seen = HashMap::from([("p".to_string(), 5.0)]);
        let pods = join(&Inputs {
            virtual_audit: "not json\n",
            host_audit: "",
            virtual_ns: "v",
            host_ns: "h",
            syncer_host_user: "s",
            host_to_virtual: &HashMap::new(),
            ready_seen: &ready_seen,
        });
        assert_eq!(pods.len(), 1);
        assert!(step_series(&pods).iter().all(|(_, v)| v.is_empty()));
        assert_eq!(summary(&pods)["pods_with_every_milestone"], 0);
    }
}
