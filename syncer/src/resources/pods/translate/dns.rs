//! DNS: the vcluster's nameserver and search path for cluster-first pods, the default
//! hostname, and the `/etc/hosts` entry for the virtual API server.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption, PodSpec};

use super::PodInputs;

/// Maximum length of a DNS label (hostnames).
const MAX_LABEL_LEN: usize = 63;
/// `ndots` option of synced pods' DNS config (the kubelet's value for cluster-first pods).
const DNS_NDOTS: &str = "5";

/// DNS: cluster-first pods (`ClusterFirst` or unset without hostNetwork, or
/// `ClusterFirstWithHostNet`) get policy `None` with the vcluster's nameserver and the virtual
/// search path (virtual dnsConfig nameservers and searches appended, deduplicated; options are
/// exactly `ndots: 5`). `Default`, `None` and `ClusterFirst` with hostNetwork are untouched.
pub(super) fn translate_dns(input: &PodInputs, namespace: &str, spec: &mut PodSpec) {
    let host_network = spec.host_network == Some(true);
    let cluster_first = match spec.dns_policy.as_deref() {
        None | Some("ClusterFirst") => !host_network,
        Some("ClusterFirstWithHostNet") => true,
        Some(_) => false,
    };
    if !cluster_first {
        return;
    }
    let domain = &input.settings.cluster_domain;
    let virtual_config = spec.dns_config.take().unwrap_or_default();
    let nameservers = dedup_chain(
        vec![input.ctx.dns_nameserver.clone()],
        virtual_config.nameservers.unwrap_or_default(),
    );
    let searches = dedup_chain(
        vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ],
        virtual_config.searches.unwrap_or_default(),
    );
    spec.dns_policy = Some("None".to_owned());
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(nameservers),
        searches: Some(searches),
        options: Some(vec![PodDNSConfigOption {
            name: Some("ndots".to_owned()),
            value: Some(DNS_NDOTS.to_owned()),
        }]),
    });
}

/// `first` followed by the entries of `then` not seen yet (first occurrence wins).
fn dedup_chain(first: Vec<String>, then: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    first
        .into_iter()
        .chain(then)
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// The container hostname of a pod that sets none: the virtual pod name (not the long host
/// name), cut to 63 characters, `.` -> `-`, trailing `-` trimmed.
pub(super) fn default_hostname(pod_name: &str) -> String {
    let cut: String = pod_name
        .chars()
        .take(MAX_LABEL_LEN)
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    cut.trim_end_matches('-').to_owned()
}

/// `/etc/hosts` entry for the virtual API server's names (also for pods not using our DNS).
pub(super) fn kubernetes_host_alias(input: &PodInputs) -> HostAlias {
    HostAlias {
        ip: input.ctx.kube_service_ip.clone(),
        hostnames: Some(vec![
            format!("kubernetes.default.svc.{}", input.settings.cluster_domain),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes".to_owned(),
        ]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::super::testutil::*;
    use crate::resources::pods::settings::HostAccessPolicy;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::cluster_first(Some("ClusterFirst"), false, true)]
    #[case::unset(None, false, true)]
    #[case::with_host_net(Some("ClusterFirstWithHostNet"), true, true)]
    #[case::with_host_net_flag_off(Some("ClusterFirstWithHostNet"), false, true)]
    #[case::default(Some("Default"), false, false)]
    #[case::none(Some("None"), false, false)]
    #[case::cluster_first_host_network(Some("ClusterFirst"), true, false)]
    #[case::unset_host_network(None, true, false)]
    fn dns_policies(#[case] policy: Option<&str>, #[case] host_network: bool, #[case] translated: bool) {
        let v = vpod_spec(json!({"dnsPolicy": policy, "hostNetwork": host_network}));
        let h = try_translate(&v, HostAccessPolicy::Allow).unwrap().spec.unwrap();
        if translated {
            assert_eq!(h.dns_policy.as_deref(), Some("None"));
            let config = serde_json::to_value(h.dns_config.unwrap()).unwrap();
            assert_eq!(
                config,
                json!({
                    "nameservers": [DNS_IP],
                    "searches": [format!("{NS}.svc.cluster.local"), "svc.cluster.local", "cluster.local"],
                    "options": [{"name": "ndots", "value": "5"}],
                })
            );
        } else {
            assert_eq!(h.dns_policy.as_deref(), policy);
            assert_eq!(h.dns_config, None);
        }
    }

    #[test]
    fn dns_config_appends_virtual_entries_deduplicated() {
        let v = vpod_spec(json!({"dnsConfig": {
            "nameservers": ["1.1.1.1", DNS_IP],
            "searches": ["svc.cluster.local", "example.com"],
            "options": [{"name": "edns0"}],
        }}));
        let spec = hspec(&v);
        assert_eq!(spec["dnsConfig"]["nameservers"], json!([DNS_IP, "1.1.1.1"]));
        assert_eq!(
            spec["dnsConfig"]["searches"],
            json!([
                format!("{NS}.svc.cluster.local"),
                "svc.cluster.local",
                "cluster.local",
                "example.com"
            ])
        );
        assert_eq!(
            spec["dnsConfig"]["options"],
            json!([{"name": "ndots", "value": "5"}])
        );

        // Untouched policies keep their virtual dnsConfig.
        let v = vpod_spec(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]}}));
        assert_eq!(hspec(&v)["dnsConfig"], json!({"nameservers": ["1.1.1.1"]}));
    }

    #[rstest]
    #[case::dotted("web.v1.example", None, "web-v1-example")]
    #[case::plain("web-0", None, "web-0")]
    #[case::empty_is_unset("web-0", Some(""), "web-0")]
    #[case::explicit("web-0", Some("custom"), "custom")]
    #[case::long_cut_then_trimmed(&format!("{}.b", "a".repeat(62)), None, &"a".repeat(62))]
    #[case::long(&"a".repeat(100), None, &"a".repeat(63))]
    fn hostname_defaults_to_the_virtual_name(
        #[case] name: &str,
        #[case] hostname: Option<&str>,
        #[case] want: &str,
    ) {
        let v = vpod_with(
            json!({"metadata": {"name": name}, "spec": {"hostname": hostname, "subdomain": "web"}}),
        );
        let spec = translate(&v).spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some(want));
        assert_eq!(spec.subdomain, None);
    }
}
