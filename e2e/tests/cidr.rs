//! Host Service CIDR detection (`vnest detect-service-cidr`) against the real host API server,
//! with the syncer's own credentials (a namespaced Role only). The truth is `SERVICE_CIDR`, the
//! `--service-cluster-ip-range` that `hack/up.sh` gave the host kube-apiserver.
//!
//! Request counts are checked twice: by the library's own counters and, independently, in the
//! host's audit log (each client here sends its own User-Agent, and a final "marker" request
//! proves every earlier request of the test has been written).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;
use vnest::cidr::{self, ANNOTATION_SERVICE_CIDR, PROBE_NAME_PREFIX};
use vnest_e2e::{Env, Result, wait_until};

/// The tests of this file run one at a time: one of them creates a real probe Service, which
/// the others' "no probe Service is left" checks must not see.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A client with the syncer's host credentials and a unique User-Agent (to find its requests
/// in the audit log).
async fn syncer_client(env: &Env, agent: &str) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(env.path("SYNCER_HOST_KUBECONFIG")?)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config
        .headers
        .push((http::header::USER_AGENT, http::HeaderValue::from_str(agent)?));
    Ok(Client::try_from(config)?)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::rng().random_range(0..0xff_ffffu32))
}

/// (verb, requestURI) of the audit events made with User-Agent `agent`.
fn audited(env: &Env, agent: &str) -> Result<Vec<(String, String)>> {
    let log = std::fs::read_to_string(env.path("HOST_AUDIT_LOG")?)?;
    let mut events = Vec::new();
    for line in log.lines().filter(|l| l.contains(agent)) {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["userAgent"] == agent && event["stage"] == "ResponseComplete" {
            let field = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
            events.push((field("verb"), field("requestURI")));
        }
    }
    Ok(events)
}

/// Makes a request with User-Agent `marker` and waits until the audit log shows it: by then
/// every request that completed before it has been written too (one ordered audit queue).
async fn flush_audit(env: &Env, api_ns: &str) -> Result<()> {
    let marker = unique("vnest-e2e-cidr-marker");
    let client = syncer_client(env, &marker).await?;
    Api::<Service>::namespaced(client, api_ns)
        .list(&ListParams::default().limit(1))
        .await?;
    wait_until("the audit marker", Duration::from_secs(60), || async {
        Ok((!audited(env, &marker)?.is_empty()).then_some(()))
    })
    .await
}

async fn leftover_probes(api: &Api<Service>) -> Result<Vec<String>> {
    let list = api.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n.starts_with(PROBE_NAME_PREFIX))
        .collect())
}

#[tokio::test]
async fn detects_the_host_service_cidr_with_namespaced_permissions() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::load()?;
    let ns = env.get("HOST_NAMESPACE")?;
    let expected = env.get("SERVICE_CIDR")?;
    let admin: Api<Service> = Api::namespaced(env.host_admin().await?, ns);
    let agent = unique("vnest-e2e-cidr-detect");

    let detection = cidr::detect(syncer_client(&env, &agent).await?, ns).await?;

    assert_eq!(detection.to_string(), expected);
    assert!(!detection.from_cache);
    // One dry-run create for the anchor, then a 5-step binary search over /0../30.
    assert_eq!((detection.probes, detection.requests), (5, 6));
    assert_eq!(leftover_probes(&admin).await?, Vec::<String>::new());

    flush_audit(&env, ns).await?;
    let events = audited(&env, &agent)?;
    assert_eq!(events.len(), 6, "{events:#?}");
    for (verb, uri) in &events {
        assert_eq!(verb, "create", "{events:#?}");
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        assert_eq!(path, format!("/api/v1/namespaces/{ns}/services"));
        assert!(
            query.split('&').any(|p| p == "dryRun=All"),
            "every request is a dry-run create: {uri}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn single_probes_read_the_real_api_server_answers() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::load()?;
    let ns = env.get("HOST_NAMESPACE")?;
    let net: cidr::IpCidr = env.get("SERVICE_CIDR")?.parse()?;
    let api: Api<Service> = Api::namespaced(syncer_client(&env, &unique("vnest-e2e-cidr-probe")).await?, ns);
    let last = net.last();
    let after = match last {
        IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    };
    let first_usable = match net.first() {
        IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) + 1)),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) + 1)),
    };
    // An IP in use by a Service (the vcluster's own) is inside, too: dry-run does not collide.
    let in_use: IpAddr = Api::<Service>::namespaced(env.host_admin().await?, ns)
        .get("vnest")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default()
        .parse()?;
    for (ip, inside) in [
        (first_usable, true),
        (in_use, true),
        (net.first(), false),  // the network address is reserved
        (last, net.is_ipv6()), // IPv4 broadcast address: reserved
        (after, false),
        ("4.4.4.4".parse()?, false),
    ] {
        assert_eq!(cidr::probe_inside(&api, ip).await?, inside, "probe {ip} of {net}");
    }
    // The host is single-stack IPv4: an IPv6 probe is a typed error, not "outside".
    let v6 = cidr::probe_inside(&api, "fd00::1".parse()?).await;
    assert!(
        matches!(v6, Err(cidr::CidrError::FamilyNotConfigured { .. })),
        "{v6:?}"
    );
    Ok(())
}

#[tokio::test]
async fn detect_cached_writes_the_annotation_and_then_reads_only_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::load()?;
    let ns = env.get("HOST_NAMESPACE")?;
    let expected = env.get("SERVICE_CIDR")?;
    let admin: Api<Service> = Api::namespaced(env.host_admin().await?, ns);

    // A throwaway stand-in for the vcluster's Service.
    let name = unique("vnest-e2e-cidr-cache");
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"vnest.dev/e2e": "true"}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "https", "port": 443}]}
    }))?;
    admin.create(&PostParams::default(), &service).await?;
    let result = cached_round_trip(&env, ns, expected, &admin, &name).await;
    admin.delete(&name, &DeleteParams::default()).await?;
    result
}

async fn cached_round_trip(
    env: &Env,
    ns: &str,
    expected: &str,
    admin: &Api<Service>,
    name: &str,
) -> Result<()> {
    let annotation = |s: Service| {
        s.metadata
            .annotations
            .and_then(|a| a.get(ANNOTATION_SERVICE_CIDR).cloned())
    };

    // First call: detects (GET + 6) and writes the annotation (PATCH), as "vnest-syncer".
    let first =
        cidr::detect_cached(syncer_client(env, &unique("vnest-e2e-cidr-c1")).await?, ns, name).await?;
    assert_eq!(first.to_string(), expected);
    assert!(!first.from_cache);
    assert_eq!((first.probes, first.requests), (5, 8));
    let written = admin.get(name).await?;
    let managers: Vec<_> = written
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.iter().any(|m| m == "vnest-syncer"), "{managers:?}");
    assert_eq!(annotation(written).as_deref(), Some(expected));

    // Second call: the annotation only. Its client's requests are counted in the audit log.
    let agent = unique("vnest-e2e-cidr-c2");
    let second = cidr::detect_cached(syncer_client(env, &agent).await?, ns, name).await?;
    assert_eq!(
        second,
        cidr::Detection {
            from_cache: true,
            probes: 0,
            requests: 1,
            ..first
        }
    );
    flush_audit(env, ns).await?;
    let events = audited(env, &agent)?;
    assert_eq!(
        events,
        [(
            "get".to_owned(),
            format!("/api/v1/namespaces/{ns}/services/{name}")
        )],
        "the cached call makes one GET and nothing else"
    );

    // A corrupt cache is replaced, not trusted.
    let garbage = serde_json::json!({"metadata": {"annotations": {ANNOTATION_SERVICE_CIDR: "10.0.0.1/99"}}});
    admin
        .patch(name, &PatchParams::default(), &Patch::Merge(&garbage))
        .await?;
    let third =
        cidr::detect_cached(syncer_client(env, &unique("vnest-e2e-cidr-c3")).await?, ns, name).await?;
    assert!(!third.from_cache);
    assert_eq!(third.to_string(), expected);
    assert_eq!(annotation(admin.get(name).await?).as_deref(), Some(expected));

    // No cache Service: still detects, caches nothing.
    let missing = unique("vnest-e2e-cidr-missing");
    let fourth = cidr::detect_cached(
        syncer_client(env, &unique("vnest-e2e-cidr-c4")).await?,
        ns,
        &missing,
    )
    .await?;
    assert_eq!(
        (fourth.to_string().as_str(), fourth.from_cache),
        (expected, false)
    );
    assert!(admin.get_opt(&missing).await?.is_none());

    assert_eq!(leftover_probes(admin).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn the_real_service_fallback_deletes_what_it_creates() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::load()?;
    let ns = env.get("HOST_NAMESPACE")?;
    let net: cidr::IpCidr = env.get("SERVICE_CIDR")?.parse()?;
    let agent = unique("vnest-e2e-cidr-real");
    let api: Api<Service> = Api::namespaced(syncer_client(&env, &agent).await?, ns);

    let anchors = cidr::real_service_anchors(&api).await?;

    assert_eq!(anchors.len(), 1, "{anchors:?}");
    assert!(
        net.contains(anchors[0]) && anchors[0] != net.first(),
        "{anchors:?}"
    );
    assert_eq!(leftover_probes(&api).await?, Vec::<String>::new());
    flush_audit(&env, ns).await?;
    let verbs: Vec<String> = audited(&env, &agent)?.into_iter().map(|(verb, _)| verb).collect();
    assert_eq!(verbs, ["create", "delete", "list"]);
    Ok(())
}

#[tokio::test]
async fn the_cli_entry_prints_and_writes_the_cidr() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::load()?;
    let ns = env.get("HOST_NAMESPACE")?;
    let dir = std::env::temp_dir().join(unique("vnest-e2e-cidr-cli"));
    let output = dir.join("service-cidr");
    cidr::run_detect(cidr::DetectArgs {
        host_kubeconfig: Some(env.path("SYNCER_HOST_KUBECONFIG")?),
        namespace: Some(ns.to_owned()),
        // No such Service: detects without caching, so the world's own Service stays untouched.
        service_name: unique("vnest-e2e-cidr-none"),
        output: Some(output.clone()),
        log_filter: "info".into(),
    })
    .await?;
    assert_eq!(
        std::fs::read_to_string(&output)?,
        format!("{}\n", env.get("SERVICE_CIDR")?)
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
