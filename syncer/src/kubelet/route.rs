//! Pure: a kubelet request line (method, path, query) -> a typed [`Route`], or why not. Only the
//! paths of the allowlist below exist; everything else is [`RouteError::NotFound`]. Names are
//! checked to be DNS names before they go anywhere near a lookup, and the query forwarded to the
//! host is rebuilt from an allowlist of parameters (logs) or has its `container` forced (exec,
//! attach), so a caller cannot widen what the host request reaches.

use http::Method;

/// A virtual pod named in a kubelet path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The pod UID of the `/exec/{ns}/{pod}/{uid}/{container}` form (checked against the pod).
    pub uid: Option<String>,
}

/// Which streaming subresource an upgrade goes to on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Exec,
    Attach,
    PortForward,
}

impl Stream {
    /// The host pod subresource.
    pub fn subresource(self) -> &'static str {
        match self {
            Stream::Exec => "exec",
            Stream::Attach => "attach",
            Stream::PortForward => "portforward",
        }
    }
}

/// The node-level reads that need the host's node proxy (`nodes/proxy` on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRead {
    /// `/stats/summary` (JSON).
    StatsSummary,
    /// `/metrics/resource` (Prometheus text).
    MetricsResource,
}

impl NodeRead {
    /// The kubelet path, also the host node proxy's path below `/api/v1/nodes/{node}/proxy`.
    pub fn path(self) -> &'static str {
        match self {
            NodeRead::StatsSummary => "/stats/summary",
            NodeRead::MetricsResource => "/metrics/resource",
        }
    }
}

/// An allowed kubelet request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    /// `/stats/summary` or `/metrics/resource` of the host nodes our pods run on, translated;
    /// `host_query` is ready for the host node proxy.
    Node {
        read: NodeRead,
        host_query: String,
    },
    /// This vcluster's pods under their virtual names.
    Pods,
    /// `/containerLogs/{ns}/{pod}/{container}`; `host_query` is ready for the host's `pods/log`.
    ContainerLogs {
        pod: PodRef,
        container: String,
        host_query: String,
    },
    /// `/exec|attach/{ns}/{pod}[/{uid}]/{container}` and `/portForward/{ns}/{pod}[/{uid}]`;
    /// `host_query` is ready for the host's `pods/exec|attach|portforward`.
    Upgrade {
        stream: Stream,
        pod: PodRef,
        container: Option<String>,
        host_query: String,
    },
    /// `/run/{ns}/{pod}[/{uid}]/{container}` (POST, `cmd`): a non-streaming exec; `command` is
    /// `cmd` decoded and split at spaces, as the kubelet splits it.
    Run {
        pod: PodRef,
        container: String,
        command: Vec<String>,
    },
}

impl Route {
    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Node {
                read: NodeRead::StatsSummary,
                ..
            } => "statsSummary",
            Route::Node {
                read: NodeRead::MetricsResource,
                ..
            } => "metricsResource",
            Route::Run { .. } => "run",
            Route::Pods => "pods",
            Route::ContainerLogs { .. } => "containerLogs",
            Route::Upgrade { stream, .. } => match stream {
                Stream::Exec => "exec",
                Stream::Attach => "attach",
                Stream::PortForward => "portForward",
            },
        }
    }

    /// The pod the route reaches, if any.
    pub fn pod(&self) -> Option<&PodRef> {
        match self {
            Route::Healthz | Route::Pods | Route::Node { .. } => None,
            Route::ContainerLogs { pod, .. } | Route::Upgrade { pod, .. } | Route::Run { pod, .. } => {
                Some(pod)
            }
        }
    }

    /// The container the route reaches, if any.
    pub fn container(&self) -> Option<&str> {
        match self {
            Route::Healthz | Route::Pods | Route::Node { .. } => None,
            Route::ContainerLogs { container, .. } | Route::Run { container, .. } => Some(container),
            Route::Upgrade { container, .. } => container.as_deref(),
        }
    }

    /// The verb a SubjectAccessReview on `nodes/proxy` checks (as the kubelet maps methods).
    pub fn verb(method: &Method) -> &'static str {
        match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        }
    }
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

/// Query parameters of the kubelet's containerLogs that the host's `pods/log` takes as they are.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "previous",
    "limitBytes",
];

/// Parses one request line.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let get_only = |route: Route| {
        if *method == Method::GET || *method == Method::HEAD {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    };
    let upgrade_method = || {
        if *method == Method::GET || *method == Method::POST {
            Ok(())
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    };
    match segments.as_slice() {
        ["healthz"] => get_only(Route::Healthz),
        ["stats", "summary"] | ["stats", "summary", ""] => get_only(Route::Node {
            read: NodeRead::StatsSummary,
            host_query: summary_query(query),
        }),
        ["metrics", "resource"] | ["metrics", "resource", ""] => get_only(Route::Node {
            read: NodeRead::MetricsResource,
            host_query: String::new(),
        }),
        ["run", ns, pod, rest @ ..] => {
            let (uid, container) = match rest {
                [container] => (None, container),
                [uid, container] => (Some(*uid), container),
                _ => return Err(RouteError::NotFound),
            };
            let pod = pod_ref(ns, pod, uid)?;
            let container = name(container)?;
            if *method != Method::POST {
                return Err(RouteError::MethodNotAllowed);
            }
            Ok(Route::Run {
                pod,
                container,
                command: run_command(query),
            })
        }
        ["pods"] | ["pods", ""] => get_only(Route::Pods),
        ["containerLogs", ns, pod, container] => {
            let pod = pod_ref(ns, pod, None)?;
            let container = name(container)?;
            get_only(Route::ContainerLogs {
                host_query: log_query(&container, query),
                pod,
                container,
            })
        }
        [kind @ ("exec" | "attach"), ns, pod, rest @ ..] => {
            let (uid, container) = match rest {
                [container] => (None, container),
                [uid, container] => (Some(*uid), container),
                _ => return Err(RouteError::NotFound),
            };
            let pod = pod_ref(ns, pod, uid)?;
            let container = name(container)?;
            upgrade_method()?;
            let stream = if *kind == "exec" {
                Stream::Exec
            } else {
                Stream::Attach
            };
            Ok(Route::Upgrade {
                stream,
                host_query: stream_query(Some(&container), query),
                pod,
                container: Some(container),
            })
        }
        ["portForward", ns, pod, rest @ ..] => {
            let uid = match rest {
                [] => None,
                [uid] => Some(*uid),
                _ => return Err(RouteError::NotFound),
            };
            let pod = pod_ref(ns, pod, uid)?;
            upgrade_method()?;
            Ok(Route::Upgrade {
                stream: Stream::PortForward,
                host_query: stream_query(None, query),
                pod,
                container: None,
            })
        }
        _ => Err(RouteError::NotFound),
    }
}

fn pod_ref(ns: &str, pod: &str, uid: Option<&str>) -> Result<PodRef, RouteError> {
    Ok(PodRef {
        namespace: name(ns)?,
        name: name(pod)?,
        uid: uid.map(name).transpose()?,
    })
}

/// A DNS-1123 subdomain-ish name (lowercase alphanumerics, `-` and `.`, at most 253
/// characters): namespaces, pod names, container names and UIDs all fit. Anything else cannot
/// name an object, so it is a 404 without a lookup.
fn name(s: &str) -> Result<String, RouteError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(RouteError::NotFound)
    }
}

fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The host `pods/log` query: the allowlisted parameters as sent (still encoded), then the
/// container.
pub fn log_query(container: &str, query: Option<&str>) -> String {
    let mut out: Vec<String> = pairs(query)
        .filter(|(k, _)| LOG_PARAMS.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push(format!("container={container}"));
    out.join("&")
}

/// The host `/stats/summary` query: only `only_cpu_and_memory` (what metrics-server asks).
fn summary_query(query: Option<&str>) -> String {
    pairs(query)
        .filter(|(k, _)| *k == "only_cpu_and_memory")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `/run`'s command: the last `cmd` parameter, decoded, split at single spaces with the empty
/// parts dropped (the kubelet splits at spaces; an empty part is never a useful argument).
pub fn run_command(query: Option<&str>) -> Vec<String> {
    let cmd = pairs(query)
        .filter(|(k, _)| *k == "cmd")
        .last()
        .map(|(_, v)| decode_query_value(v))
        .unwrap_or_default();
    cmd.split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Pure: a query value decoded as a form value (`+` is a space, `%XX` a byte; a malformed
/// escape stays as it is; invalid UTF-8 is replaced).
pub fn decode_query_value(v: &str) -> String {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex);
                let lo = bytes.get(i + 2).copied().and_then(hex);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kubelet's names of the stream options (`input=1`...) and the API's (`stdin=1`...).
const STREAM_PARAMS: &[(&str, &str)] = &[
    ("input", "stdin"),
    ("output", "stdout"),
    ("error", "stderr"),
    ("stdin", "stdin"),
    ("stdout", "stdout"),
    ("stderr", "stderr"),
    ("tty", "tty"),
    ("command", "command"),
    ("ports", "ports"),
];

/// The host `pods/exec|attach|portforward` query: the caller's command, streams, tty and
/// ports under the API's names, and the container of the path; any other parameter is dropped.
pub fn stream_query(container: Option<&str>, query: Option<&str>) -> String {
    let mut out: Vec<String> = pairs(query)
        .filter_map(|(k, v)| {
            let (_, api) = STREAM_PARAMS.iter().find(|(kubelet, _)| *kubelet == k)?;
            Some(if v.is_empty() {
                (*api).to_owned()
            } else {
                format!("{api}={v}")
            })
        })
        .collect();
    if let Some(c) = container {
        out.push(format!("container={c}"));
    }
    out.join("&")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, uid: Option<&str>) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.map(Into::into),
        }
    }

    #[test]
    fn allowed_paths_parse_to_routes() {
        let cases: Vec<(Method, &str, Option<&str>, Route)> = vec![
            (Method::GET, "/healthz", None, Route::Healthz),
            (Method::GET, "/pods", None, Route::Pods),
            (Method::GET, "/pods/", None, Route::Pods),
            (
                Method::GET,
                "/containerLogs/team-a/web-1/main",
                Some("follow=true&tailLines=5&sinceTime=2026-01-01T00%3A00%3A00Z&evil=1&container=other"),
                Route::ContainerLogs {
                    pod: pod("team-a", "web-1", None),
                    container: "main".into(),
                    host_query: "follow=true&tailLines=5&sinceTime=2026-01-01T00%3A00%3A00Z&container=main"
                        .into(),
                },
            ),
            (
                Method::POST,
                "/exec/team-a/web-1/main",
                Some(
                    "command=sh&command=-c&command=echo%20hi&input=1&output=1&error=1&container=sneaky&evil=1",
                ),
                Route::Upgrade {
                    stream: Stream::Exec,
                    pod: pod("team-a", "web-1", None),
                    container: Some("main".into()),
                    host_query:
                        "command=sh&command=-c&command=echo%20hi&stdin=1&stdout=1&stderr=1&container=main"
                            .into(),
                },
            ),
            (
                Method::GET,
                "/attach/team-a/web-1/0f2c-11/main",
                Some("output=1&tty"),
                Route::Upgrade {
                    stream: Stream::Attach,
                    pod: pod("team-a", "web-1", Some("0f2c-11")),
                    container: Some("main".into()),
                    host_query: "stdout=1&tty&container=main".into(),
                },
            ),
            (
                Method::GET,
                "/stats/summary",
                Some("only_cpu_and_memory=true&evil=1"),
                Route::Node {
                    read: NodeRead::StatsSummary,
                    host_query: "only_cpu_and_memory=true".into(),
                },
            ),
            (
                Method::GET,
                "/metrics/resource",
                Some("x=y"),
                Route::Node {
                    read: NodeRead::MetricsResource,
                    host_query: String::new(),
                },
            ),
            (
                Method::POST,
                "/run/team-a/web-1/main",
                Some("cmd=sh+-c%20echo%2Bhi&container=other"),
                Route::Run {
                    pod: pod("team-a", "web-1", None),
                    container: "main".into(),
                    command: vec!["sh".into(), "-c".into(), "echo+hi".into()],
                },
            ),
            (
                Method::POST,
                "/run/team-a/web-1/u-1/main",
                None,
                Route::Run {
                    pod: pod("team-a", "web-1", Some("u-1")),
                    container: "main".into(),
                    command: vec![],
                },
            ),
            (
                Method::POST,
                "/portForward/team-a/web-1",
                None,
                Route::Upgrade {
                    stream: Stream::PortForward,
                    pod: pod("team-a", "web-1", None),
                    container: None,
                    host_query: String::new(),
                },
            ),
            (
                Method::GET,
                "/portForward/team-a/web-1/u-1",
                Some("ports=8080"),
                Route::Upgrade {
                    stream: Stream::PortForward,
                    pod: pod("team-a", "web-1", Some("u-1")),
                    container: None,
                    host_query: "ports=8080".into(),
                },
            ),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(parse(&method, path, query), Ok(want), "{method} {path}");
        }
    }

    #[test]
    fn everything_else_is_not_found_or_not_allowed() {
        let not_found = [
            "/",
            "",
            "/metrics",
            "/metrics/cadvisor",
            "/logs/",
            "/configz",
            "/debug/pprof/",
            "/runningpods/",
            "/run/team-a/web-1",
            "/run/team-a/web-1/u/main/more",
            "/stats",
            "/stats/summary/more",
            "/containerLogs/team-a/web-1",
            "/containerLogs/team-a/web-1/main/extra",
            "/containerLogs/../web-1/main",
            "/containerLogs/team-a/..%2Fkube-system/main",
            "/containerLogs/Team-A/web-1/main",
            "/containerLogs/team-a/web-1/-main",
            "/containerLogs//web-1/main",
            "/exec/team-a/web-1",
            "/exec/team-a/web-1/u/main/more",
            "/portForward/team-a",
            "/portForward/team-a/web-1/u/more",
            "/healthz/ping",
        ];
        for path in not_found {
            assert_eq!(
                parse(&Method::GET, path, None),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            parse(&Method::GET, "/run/a/b/c", Some("cmd=ls")),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            parse(&Method::POST, "/stats/summary", None),
            Err(RouteError::MethodNotAllowed)
        );
        let long = format!("/containerLogs/a/{}/c", "p".repeat(254));
        assert_eq!(parse(&Method::GET, &long, None), Err(RouteError::NotFound));
        assert_eq!(
            parse(&Method::POST, "/containerLogs/a/b/c", None),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            parse(&Method::DELETE, "/exec/a/b/c", None),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            parse(&Method::PUT, "/pods", None),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn kinds_and_verbs_are_bounded() {
        let r = parse(&Method::GET, "/exec/a/b/c", Some("command=ls")).unwrap();
        assert_eq!((r.kind(), r.container()), ("exec", Some("c")));
        assert_eq!(r.pod().map(|p| p.name.as_str()), Some("b"));
        assert_eq!(Route::verb(&Method::GET), "get");
        assert_eq!(Route::verb(&Method::POST), "create");
        assert_eq!(Route::verb(&Method::HEAD), "get");
    }

    #[test]
    fn query_values_decode_like_form_values() {
        for (raw, want) in [
            ("echo%20hi", "echo hi"),
            ("a+b", "a b"),
            ("100%25", "100%"),
            ("bad%zzescape%2", "bad%zzescape%2"),
            ("%C3%A9t%C3%A9", "été"),
            ("%FF", "\u{FFFD}"),
        ] {
            assert_eq!(decode_query_value(raw), want, "{raw}");
        }
        assert_eq!(run_command(Some("cmd=a&cmd=ls%20%20-l")), ["ls", "-l"]);
        assert!(run_command(None).is_empty());
    }

    #[test]
    fn log_query_keeps_only_log_parameters() {
        assert_eq!(log_query("c", None), "container=c");
        assert_eq!(
            log_query(
                "c",
                Some("timestamps=1&previous=true&limitBytes=10&sinceSeconds=5&x=y")
            ),
            "timestamps=1&previous=true&limitBytes=10&sinceSeconds=5&container=c"
        );
    }
}
