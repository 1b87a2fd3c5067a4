//! Shared helpers for vnest's end-to-end tests and benchmarks. Everything here talks to the
//! REAL local control planes that `hack/up.sh` starts (`make up`, or `make test` which starts
//! its own): nothing is mocked.
//!
//! - [`Env`]: the `.e2e/env` file `hack/up.sh` writes (paths, URLs, names).
//! - [`TestNs`]: a namespace with a random suffix per test, deleted on drop.
//! - [`wait_until`]: wait for a condition with a deadline (never a bare sleep).
//! - [`kubectl`]: run the kubectl built from the same Kubernetes module.

pub mod extra_vcluster;
pub mod kubectl;
pub mod service_proxy;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;

pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// The environment of a running local world, read from the env file of `hack/up.sh`.
#[derive(Debug, Clone)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Reads `$VNEST_E2E_ENV`, or `<repo>/.e2e/env`. Fails with the command to run when missing.
    pub fn load() -> Result<Self> {
        let path = std::env::var_os("VNEST_E2E_ENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.e2e/env"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {} ({e}): these tests need the local control planes. Run `make test` \
                 (starts and stops its own), or `make up` first and keep it running.",
                path.display()
            )
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses `KEY=VALUE` lines (values optionally in double quotes; `#` comments).
    pub fn parse(text: &str) -> Self {
        let vars = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        Self { vars }
    }

    pub fn get(&self, key: &str) -> Result<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("{key} is missing from the e2e env file; re-run `make up`"))
    }

    pub fn path(&self, key: &str) -> Result<PathBuf> {
        self.get(key).map(PathBuf::from)
    }

    pub async fn host_admin(&self) -> Result<Client> {
        client_from(&self.path("HOST_KUBECONFIG")?).await
    }

    pub async fn virtual_admin(&self) -> Result<Client> {
        client_from(&self.path("VIRTUAL_KUBECONFIG")?).await
    }

    /// The host client with the syncer's own (ServiceAccount) credentials.
    pub async fn syncer_host(&self) -> Result<Client> {
        client_from(&self.path("SYNCER_HOST_KUBECONFIG")?).await
    }

    /// Runs kubectl (v1.35, from the tool cache) against the kubeconfig named by `which`
    /// (`HOST_KUBECONFIG`, `VIRTUAL_KUBECONFIG` or `SYNCER_HOST_KUBECONFIG`).
    pub async fn kubectl(&self, which: &str, args: &[&str]) -> Result<Output> {
        kubectl(&self.path("KUBECTL")?, &self.path(which)?, args).await
    }
}

pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs `kubectl --kubeconfig <kubeconfig> <args>` and returns its output (any exit status).
pub async fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let out = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", kubectl.display()))?;
    Ok(out)
}

/// Calls `probe` until it returns `Some`, failing after `timeout` with `what` in the message.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    wait_until_every(what, timeout, Duration::from_millis(100), probe).await
}

/// [`wait_until`], probing every `every` (a probe that must not load what it watches).
pub async fn wait_until_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let why = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A namespace with a random suffix, ready for pods (its `default` ServiceAccount exists).
/// Labelled `vnest.dev/e2e=true`. Tests call [`TestNs::delete`] at the end; a failed test leaves
/// it behind for inspection (`make test` removes the whole world afterwards).
pub struct TestNs {
    pub name: String,
    client: Client,
}

impl TestNs {
    pub async fn new(client: &Client, prefix: &str) -> Result<Self> {
        let suffix: u32 = rand::rng().random_range(0..0xff_ffff);
        let name = format!("{prefix}-{suffix:06x}");
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"vnest.dev/e2e": "true"}}
        }))?;
        api.create(&PostParams::default(), &ns).await?;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_until("ServiceAccount default", Duration::from_secs(60), || async {
            Ok(sa.get_opt("default").await?.map(|_| ()))
        })
        .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// Deletes the namespace (in the background; does not wait for its contents to go).
    pub async fn delete(self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client);
        api.delete(&self.name, &DeleteParams::background()).await?;
        Ok(())
    }
}

/// A host ValidatingAdmissionPolicy (and its binding) that refuses to create pods labelled
/// with a given key in the host namespace: a refusal by the host API server the tenant cannot
/// see. Delete it with [`HostPodPolicy::delete`].
pub struct HostPodPolicy {
    name: String,
    client: Client,
}

type Vap = k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
type VapBinding = k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;

impl HostPodPolicy {
    /// Installs policy `name` refusing host pods labelled `label` with the CEL message
    /// `message_expression`, and waits until it is in force (it takes effect asynchronously:
    /// a dry-run probe pod is created until it is refused).
    pub async fn refuse_labelled(
        w: &World,
        name: &str,
        label: &str,
        message_expression: &str,
    ) -> Result<Self> {
        let policy: Vap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
                     "validations": [{"expression": format!("!has(object.metadata.labels) || !('{label}' in object.metadata.labels)"),
                                      "messageExpression": message_expression}]}
        }))?;
        Api::<Vap>::all(w.host.clone())
            .create(&PostParams::default(), &policy)
            .await?;
        let binding: VapBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": w.host_ns}}}}
        }))?;
        Api::<VapBinding>::all(w.host.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        let hpods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
        let probe: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("probe-{name}"), "labels": {label: "1"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))?;
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        wait_until("the host policy in force", Duration::from_secs(60), || async {
            Ok(hpods.create(&dry, &probe).await.is_err().then_some(()))
        })
        .await?;
        Ok(Self {
            name: name.to_owned(),
            client: w.host.clone(),
        })
    }

    /// Removes the binding and the policy.
    pub async fn delete(self) -> Result<()> {
        Api::<VapBinding>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Api::<Vap>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// Everything a sync test needs: the env, admin clients for both sides, the host namespace.
pub struct World {
    pub env: Env,
    pub host: Client,
    pub virt: Client,
    pub host_ns: String,
    pub vcluster: String,
}

impl World {
    pub async fn connect() -> Result<Self> {
        let env = Env::load()?;
        Ok(Self {
            host: env.host_admin().await?,
            virt: env.virtual_admin().await?,
            host_ns: env.get("HOST_NAMESPACE")?.to_owned(),
            vcluster: env.get("VCLUSTER_NAME")?.to_owned(),
            env,
        })
    }

    /// The host name of virtual object `namespace/name`.
    pub fn host_name(&self, namespace: &str, name: &str) -> String {
        vnest::naming::host_name(&self.vcluster, namespace, name)
    }

    /// Runs `hack/syncer.sh <args>` on this world's syncer (`restart`, `stop KILL`, ...). Only
    /// for tests in a test binary of their own: cargo runs test binaries one at a time.
    pub async fn syncer_script(&self, args: &[&str]) -> Result<()> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/syncer.sh");
        let out = tokio::process::Command::new(script)
            .args(args)
            .env("STATE_DIR", self.env.get("STATE_DIR")?)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "hack/syncer.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Reads one counter of the syncer's /metrics (sum over series matching every `labels` pair).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = http_get_text(self.env.get("SYNCER_METRICS_URL")?).await?;
        Ok(sum_metric(&text, name, labels))
    }
}

/// Sums the samples of metric `name` whose labels include every `labels` pair.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Minimal HTTP/1.1 GET over TCP for the syncer's plain-HTTP admin server.
pub async fn http_get_text(url: &str) -> Result<String> {
    http_get(url).await.map(|(_, body)| body)
}

/// GET returning (status code, body).
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("not an http URL: {url}"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad HTTP response: {buf}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The ready addresses of an Endpoints object (none when it is missing), collected as `C`
/// (a `Vec` keeps order, a `BTreeSet` compares as a set).
pub fn endpoint_ips<C: FromIterator<String>>(e: Option<k8s_openapi::api::core::v1::Endpoints>) -> C {
    e.and_then(|e| e.subsets)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect()
}

/// One DNS A query over UDP to `server`: the addresses answered and the round-trip time.
pub async fn dns_a(server: std::net::SocketAddr, name: &str) -> Result<(Vec<std::net::IpAddr>, Duration)> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::new(rand::rng().random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let started = std::time::Instant::now();
    sock.send_to(&m.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await??;
    let rtt = started.elapsed();
    let answer = Message::from_vec(&buf[..n])?;
    let ips = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    Ok((ips, rtt))
}

/// The status of a TokenReview of `token` by the API server behind `client`, as JSON.
pub async fn review_token_raw(client: &Client, token: &str) -> Result<serde_json::Value> {
    let api: Api<k8s_openapi::api::authentication::v1::TokenReview> = Api::all(client.clone());
    let review = serde_json::from_value(serde_json::json!({"spec": {"token": token}}))?;
    let r = api.create(&kube::api::PostParams::default(), &review).await?;
    Ok(serde_json::to_value(r.status)?)
}

/// Like [`review_token_raw`], failing unless the token is authenticated.
pub async fn review_token(client: &Client, token: &str) -> Result<serde_json::Value> {
    let review = review_token_raw(client, token).await?;
    anyhow::ensure!(
        review["authenticated"] == true,
        "token not authenticated: {review}"
    );
    Ok(review)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_files_as_written_by_up() {
        let env = Env::parse("# header\nA=/x/y\n\nPORTS=\"1 2 3\"\nB = c\n");
        assert_eq!(env.get("A").unwrap(), "/x/y");
        assert_eq!(env.get("PORTS").unwrap(), "1 2 3");
        assert_eq!(env.get("B").unwrap(), "c");
        assert!(env.get("C").unwrap_err().to_string().contains("make up"));
    }
}
