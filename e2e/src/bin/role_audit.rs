//! `role-audit`: checks the syncer's host Role against what the syncer actually called.
//!
//! Run after the e2e suite, once the syncer has stopped (a watch is written to the audit log
//! only when it ends). Reads the host API server's audit log (JSON lines, Metadata level for
//! ServiceAccounts) and the Role in `manifests/base/rbac.yaml`, and fails when
//! - the syncer was denied anything (HTTP 403): the Role lacks a permission it needs, or
//! - the Role grants a verb on a resource that the syncer never used: a permission nothing needs.
//!
//! A grant that is needed but that the suite cannot provoke is listed in `--expect-unused
//! GROUP/RESOURCE:VERB` with its reason next to it in hack/test.sh, so every exception is written
//! down and still checked (it fails when it does get used, and can then be removed). Likewise a
//! refusal the suite provokes on purpose (a permission that only an optional component grants)
//! is listed in `--expect-denied GROUP/RESOURCE:VERB`; it fails when it never happens.
//!
//! Only requests whose `userAgent` starts with one of `--user-agent` count (default: the
//! syncer's and the init container's, `vnest-syncer/` and `vnest-detect-service-cidr/`): tests
//! also act as that ServiceAccount, e.g. to show a user the refusal of a namespace it may not
//! read.
//!
//! Usage: role-audit --audit-log FILE --role manifests/base/rbac.yaml --user system:serviceaccount:NS:vnest
//!        [--user-agent PREFIX ...] [--expect-unused GROUP/RESOURCE:VERB ...]
//!        [--expect-denied GROUP/RESOURCE:VERB ...]

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One permission: API group ("" for core), resource (with "/subresource"), verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{group}/{}:{}", self.resource, self.verb)
    }
}

impl std::str::FromStr for Grant {
    type Err = anyhow::Error;
    /// `GROUP/RESOURCE[/SUB]:VERB`, with `core` for the core group.
    fn from_str(s: &str) -> Result<Self> {
        let (path, verb) = s.rsplit_once(':').context("expected GROUP/RESOURCE:VERB")?;
        let (group, resource) = path.split_once('/').context("expected GROUP/RESOURCE:VERB")?;
        let group = if group == "core" { "" } else { group };
        Ok(Grant {
            group: group.into(),
            resource: resource.into(),
            verb: verb.into(),
        })
    }
}

#[derive(Deserialize)]
struct PolicyRule {
    #[serde(default, rename = "apiGroups")]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
}

#[derive(Deserialize)]
struct RoleDoc {
    #[serde(default)]
    rules: Vec<PolicyRule>,
}

/// Every (group, resource, verb) the Roles in a multi-document YAML file grant.
fn role_grants(yaml: &str) -> Result<BTreeSet<Grant>> {
    let mut grants = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("Role") {
            continue;
        }
        let role: RoleDoc = serde_yaml::from_value(value)?;
        for rule in role.rules {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        if group == "*" || resource == "*" || verb == "*" {
                            bail!(
                                "the Role grants a wildcard ({group}/{resource}:{verb}): name what is needed"
                            );
                        }
                        grants.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(grants)
}

#[derive(Deserialize)]
struct AuditUser {
    username: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

#[derive(Deserialize, Default)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    user: AuditUser,
    verb: String,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default, rename = "userAgent")]
    user_agent: String,
}

/// What one user did: each permission used with its request count, and the requests denied.
#[derive(Debug, Default)]
struct Usage {
    used: BTreeMap<Grant, u64>,
    denied: BTreeMap<String, u64>,
    /// The permission each denied request needed (when the event names a resource).
    denied_grant: BTreeMap<String, Grant>,
}

/// Reads audit events (one JSON object per line) of `user`. Requests without a resource
/// (discovery, /version) need no Role and are skipped.
fn usage(lines: impl Iterator<Item = String>, user: &str, agents: &[String]) -> Result<Usage> {
    let mut usage = Usage::default();
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() || !line.contains(user) {
            continue;
        }
        let event: AuditEvent =
            serde_json::from_str(&line).with_context(|| format!("audit line {}", n + 1))?;
        if event.user.username != user || !agents.iter().any(|a| event.user_agent.starts_with(a.as_str())) {
            continue;
        }
        let code = event.response_status.unwrap_or_default().code;
        if code == 403 {
            let request = format!("{} {}", event.verb, event.request_uri);
            if let Some(obj) = event.object_ref.as_ref().filter(|o| !o.resource.is_empty()) {
                let resource = if obj.subresource.is_empty() {
                    obj.resource.clone()
                } else {
                    format!("{}/{}", obj.resource, obj.subresource)
                };
                usage.denied_grant.insert(
                    request.clone(),
                    Grant {
                        group: obj.api_group.clone(),
                        resource,
                        verb: event.verb.clone(),
                    },
                );
            }
            *usage.denied.entry(request).or_default() += 1;
            continue;
        }
        let Some(obj) = event.object_ref.filter(|o| !o.resource.is_empty()) else {
            continue;
        };
        let resource = if obj.subresource.is_empty() {
            obj.resource
        } else {
            format!("{}/{}", obj.resource, obj.subresource)
        };
        *usage
            .used
            .entry(Grant {
                group: obj.api_group,
                resource,
                verb: event.verb,
            })
            .or_default() += 1;
    }
    Ok(usage)
}

/// The verdict: what the Role grants that was never used (minus the written-down exceptions),
/// and exceptions that were used after all (stale).
///
/// `list` counts as used when `watch` on the same resource is: the syncer's watches stream their
/// initial list (WatchList) where the host supports it and fall back to a plain `list` where it
/// does not, so the two are one permission.
fn unused(
    grants: &BTreeSet<Grant>,
    usage: &Usage,
    expect_unused: &BTreeSet<Grant>,
) -> (Vec<Grant>, Vec<Grant>) {
    let used = |g: &Grant| {
        usage.used.contains_key(g)
            || (g.verb == "list"
                && usage.used.contains_key(&Grant {
                    verb: "watch".into(),
                    ..g.clone()
                }))
    };
    let never: Vec<Grant> = grants
        .iter()
        .filter(|g| !used(g) && !expect_unused.contains(g))
        .cloned()
        .collect();
    let stale: Vec<Grant> = expect_unused
        .iter()
        .filter(|g| usage.used.contains_key(g))
        .cloned()
        .collect();
    (never, stale)
}

struct Args {
    audit_log: String,
    role: String,
    user: String,
    agents: Vec<String>,
    expect_unused: BTreeSet<Grant>,
    expect_denied: BTreeSet<Grant>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let (mut audit_log, mut role, mut user) = (None, None, None);
    let mut expect_unused = BTreeSet::new();
    let mut expect_denied = BTreeSet::new();
    let mut agents = Vec::new();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--audit-log" => audit_log = Some(value()?),
            "--role" => role = Some(value()?),
            "--user" => user = Some(value()?),
            "--user-agent" => agents.push(value()?),
            "--expect-unused" => {
                expect_unused.insert(value()?.parse()?);
            }
            "--expect-denied" => {
                expect_denied.insert(value()?.parse()?);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        audit_log: audit_log.context("--audit-log is required")?,
        role: role.context("--role is required")?,
        user: user.context("--user is required")?,
        agents: if agents.is_empty() {
            vec!["vnest-syncer/".into(), "vnest-detect-service-cidr/".into()]
        } else {
            agents
        },
        expect_unused,
        expect_denied,
    })
}

fn run() -> Result<bool> {
    let args = parse_args()?;
    let grants = role_grants(&std::fs::read_to_string(&args.role).with_context(|| args.role.clone())?)?;
    let log = std::fs::read_to_string(&args.audit_log).with_context(|| args.audit_log.clone())?;
    let usage = usage(log.lines().map(str::to_owned), &args.user, &args.agents)?;
    if usage.used.is_empty() {
        bail!(
            "no request of {} in {}: wrong user or audit log",
            args.user,
            args.audit_log
        );
    }
    let (never, stale) = unused(&grants, &usage, &args.expect_unused);
    println!(
        "role-audit: {} of {} grants used by {}",
        grants.len() - never.len(),
        grants.len(),
        args.user
    );
    for (grant, count) in &usage.used {
        let mark = if grants.contains(grant) {
            ""
        } else {
            "  (not in the Role: granted elsewhere)"
        };
        println!("  used {grant} x{count}{mark}");
    }
    let mut ok = true;
    let mut denied_as_expected = BTreeSet::new();
    for (request, count) in &usage.denied {
        match usage.denied_grant.get(request) {
            Some(grant) if args.expect_denied.contains(grant) => {
                denied_as_expected.insert(grant.clone());
                println!("  denied as expected (--expect-denied): {request} x{count}");
            }
            _ => {
                ok = false;
                println!("DENIED (the Role lacks it): {request} x{count}");
            }
        }
    }
    for grant in args.expect_denied.difference(&denied_as_expected) {
        ok = false;
        println!("NEVER DENIED although listed with --expect-denied (remove the exception): {grant}");
    }
    for grant in &never {
        ok = false;
        println!("UNUSED (the Role grants it, the syncer never called it): {grant}");
    }
    for grant in &stale {
        ok = false;
        println!("USED although listed with --expect-unused (remove the exception): {grant}");
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("role-audit: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: vnest}
rules:
- apiGroups: [""]
  resources: [pods, pods/status]
  verbs: [get, patch]
---
kind: RoleBinding
metadata: {name: vnest}
"#;

    fn line(user: &str, verb: &str, resource: &str, sub: &str, code: u16) -> String {
        serde_json::json!({"user": {"username": user}, "verb": verb, "requestURI": format!("/api/v1/{resource}"),
            "userAgent": "vnest-syncer/0.1.0",
            "objectRef": {"resource": resource, "subresource": sub, "apiGroup": ""},
            "responseStatus": {"code": code}})
        .to_string()
    }

    fn agents() -> Vec<String> {
        vec!["vnest-syncer/".into()]
    }

    #[test]
    fn another_program_with_the_same_identity_does_not_count() {
        let me = "u";
        let other = line(me, "delete", "pods", "", 403).replace("vnest-syncer/0.1.0", "kubectl/v1.35");
        let usage = usage([other].into_iter(), me, &agents()).unwrap();
        assert!(usage.denied.is_empty() && usage.used.is_empty());
    }

    #[test]
    fn grants_are_expanded_per_resource_and_verb() {
        let grants = role_grants(ROLE).unwrap();
        assert_eq!(grants.len(), 4);
        assert!(grants.contains(&"core/pods/status:patch".parse().unwrap()));
    }

    #[test]
    fn wildcards_are_refused() {
        let role = "kind: Role\nrules:\n- apiGroups: ['']\n  resources: ['*']\n  verbs: [get]\n";
        assert!(role_grants(role).is_err());
    }

    #[test]
    fn unused_and_denied_are_found_for_the_user_only() {
        let me = "system:serviceaccount:ns:vnest";
        let lines = [
            line(me, "get", "pods", "", 200),
            line(me, "patch", "pods", "status", 200),
            line(me, "delete", "pods", "", 403),
            line("someone-else", "patch", "pods", "", 200),
        ];
        let usage = usage(lines.into_iter(), me, &agents()).unwrap();
        assert_eq!(usage.denied.len(), 1);
        let grants = role_grants(ROLE).unwrap();
        let (never, stale) = unused(&grants, &usage, &BTreeSet::new());
        let never: Vec<String> = never.iter().map(ToString::to_string).collect();
        assert_eq!(never, ["core/pods:patch", "core/pods/status:get"]);
        assert!(stale.is_empty());
    }

    #[test]
    fn a_watch_covers_its_list_fallback() {
        let me = "u";
        let usage = usage([line(me, "watch", "pods", "", 200)].into_iter(), me, &agents()).unwrap();
        let role = "kind: Role\nrules:\n- apiGroups: ['']\n  resources: [pods]\n  verbs: [list, watch]\n";
        let (never, _) = unused(&role_grants(role).unwrap(), &usage, &BTreeSet::new());
        assert!(never.is_empty(), "{never:?}");
    }

    #[test]
    fn an_exception_that_gets_used_is_stale() {
        let me = "u";
        let usage = usage([line(me, "get", "pods", "", 200)].into_iter(), me, &agents()).unwrap();
        let grants = role_grants(ROLE).unwrap();
        let expect: BTreeSet<Grant> = ["core/pods:get".parse().unwrap()].into();
        let (_, stale) = unused(&grants, &usage, &expect);
        assert_eq!(stale.len(), 1);
    }
}
