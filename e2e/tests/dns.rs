//! DNS served by the syncer: real queries over UDP and TCP to the syncer's listener (loopback),
//! answered from its caches of the virtual cluster.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vnest_e2e::{Result, TestNs, World, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn query(name: &str, qtype: RecordType) -> Result<Vec<u8>> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name)?, qtype));
    Ok(m.to_vec()?)
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        & 0xffff) as u16
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(&query(name, qtype)?, server).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await??;
    Ok(Message::from_vec(&buf[..n])?)
}

async fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Result<Message> {
    let mut s = tokio::net::TcpStream::connect(server).await?;
    let q = query(name, qtype)?;
    s.write_all(&(q.len() as u16).to_be_bytes()).await?;
    s.write_all(&q).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_syncer_answers_cluster_names_from_its_caches() -> Result<()> {
    let w = World::connect().await?;
    let server: SocketAddr = w.env.get("SYNCER_DNS_ADDR")?.parse()?;
    let ns = TestNs::new(&w.virt, "dns").await?;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))?;
    let created = Api::<Service>::namespaced(w.virt.clone(), &ns.name)
        .create(&PostParams::default(), &svc)
        .await?;
    let ip: IpAddr = created
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default()
        .parse()?;
    let fqdn = format!("web.{}.svc.cluster.local.", ns.name);

    let answer = wait_until("an A record for the new Service", WAIT, || async {
        let m = udp(server, &fqdn, RecordType::A).await?;
        Ok((a_records(&m) == [ip]).then_some(m))
    })
    .await?;
    assert!(answer.metadata.authoritative);
    assert_eq!(
        a_records(&tcp(server, &fqdn, RecordType::A).await?),
        [ip],
        "TCP must answer too"
    );
    // SRV for the named port.
    let srv = udp(
        server,
        &format!("_http._tcp.web.{}.svc.cluster.local.", ns.name),
        RecordType::SRV,
    )
    .await?;
    assert!(
        srv.answers
            .iter()
            .any(|r| matches!(&r.data, RData::SRV(s) if s.port == 80)),
        "{:?}",
        srv.answers
    );
    // Unknown names in the cluster domain: NXDOMAIN.
    let missing = udp(
        server,
        &format!("nope.{}.svc.cluster.local.", ns.name),
        RecordType::A,
    )
    .await?;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    // kubernetes.default points at the vcluster Service; kube-dns at the DNS Service.
    let host_svc = Api::<Service>::namespaced(w.host.clone(), &w.host_ns)
        .get(&w.vcluster)
        .await?;
    let host_ip: IpAddr = host_svc
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default()
        .parse()?;
    wait_until(
        "kubernetes.default resolving to the vcluster Service",
        WAIT,
        || async {
            let m = udp(server, "kubernetes.default.svc.cluster.local.", RecordType::A).await?;
            Ok((a_records(&m) == [host_ip]).then_some(()))
        },
    )
    .await?;
    let dns_svc = Api::<Service>::namespaced(w.host.clone(), &w.host_ns)
        .get(&format!("{}-dns", w.vcluster))
        .await?;
    let dns_ip: IpAddr = dns_svc
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default()
        .parse()?;
    let kube_dns = wait_until("the virtual kube-system/kube-dns Service", WAIT, || async {
        Ok(Api::<Service>::namespaced(w.virt.clone(), "kube-system")
            .get_opt("kube-dns")
            .await?)
    })
    .await?;
    assert_eq!(
        kube_dns
            .spec
            .and_then(|s| s.cluster_ip)
            .map(|s| s.parse::<IpAddr>().ok()),
        Some(Some(dns_ip))
    );
    // Synced pods use that nameserver with the virtual search path.
    let vpods: Api<Pod> = Api::namespaced(w.virt.clone(), &ns.name);
    vpods
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "client"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))?,
        )
        .await?;
    let hpods: Api<Pod> = Api::namespaced(w.host.clone(), &w.host_ns);
    let hname = w.host_name(&ns.name, "client");
    let hp = wait_until("the host pod", WAIT, || async {
        Ok(hpods.get_opt(&hname).await?)
    })
    .await?;
    // Service links of the virtual Services of its namespace, like a kubelet would set them.
    let env = hp
        .spec
        .as_ref()
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    let link = env
        .iter()
        .find(|v| v.name == "WEB_SERVICE_HOST")
        .and_then(|v| v.value.clone());
    assert_eq!(
        link,
        Some(ip.to_string()),
        "service-link variables missing: {env:?}"
    );
    let dns = hp.spec.and_then(|s| s.dns_config).unwrap_or_default();
    assert_eq!(dns.nameservers.unwrap_or_default(), [dns_ip.to_string()]);
    ns.delete().await
}
