//! Pure: the host kubelet's `/stats/summary` (JSON) and `/metrics/resource` (Prometheus text),
//! read through the host node proxy, as a tenant may see them: this vcluster's pods under their
//! virtual names (namespace, name, UID; a volume's PVC under the claim name the virtual pod
//! uses), every other pod dropped. The virtual nodes share one kubelet address, so the endpoint
//! cannot tell which node was asked: it answers for every host node our pods run on, and keeps
//! node-level figures only when that is one node.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// A virtual pod as the tenant knows it, for one host pod of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Volume name -> the PersistentVolumeClaim it names in the virtual pod's spec.
    pub claims: BTreeMap<String, String>,
}

/// Our host pods (in the host namespace), by host name, with the virtual pod each runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIndex {
    pub host_namespace: String,
    pub pods: HashMap<String, VirtualPod>,
}

impl PodIndex {
    fn get(&self, namespace: &str, name: &str) -> Option<&VirtualPod> {
        (namespace == self.host_namespace)
            .then(|| self.pods.get(name))
            .flatten()
    }
}

/// The summaries of the host nodes (one JSON document each) as one summary: our pods only,
/// translated, each once (by virtual UID); the node part of the only node, or an empty one
/// named "" when there are several (or none).
pub fn summary(nodes: &[Value], index: &PodIndex) -> Value {
    let mut seen = HashSet::new();
    let mut pods = Vec::new();
    for node in nodes {
        for pod in node.get("pods").and_then(Value::as_array).into_iter().flatten() {
            let Some(pod) = translate_summary_pod(pod, index) else {
                continue;
            };
            let uid = pod
                .pointer("/podRef/uid")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if seen.insert(uid) {
                pods.push(pod);
            }
        }
    }
    let node = match nodes {
        [one] => one.get("node").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let node = if node.is_null() {
        serde_json::json!({"nodeName": ""})
    } else {
        node
    };
    serde_json::json!({"node": node, "pods": pods})
}

/// One pod entry of a summary, translated, or `None` if it is not one of ours.
fn translate_summary_pod(pod: &Value, index: &PodIndex) -> Option<Value> {
    let host_ns = pod.pointer("/podRef/namespace")?.as_str()?;
    let host_name = pod.pointer("/podRef/name")?.as_str()?;
    let v = index.get(host_ns, host_name)?;
    let mut pod = pod.clone();
    let obj = pod.as_object_mut()?;
    obj.insert(
        "podRef".into(),
        serde_json::json!({"name": v.name, "namespace": v.namespace, "uid": v.uid}),
    );
    if let Some(volumes) = obj.get_mut("volume").and_then(Value::as_array_mut) {
        for vol in volumes.iter_mut().filter_map(Value::as_object_mut) {
            if !vol.contains_key("pvcRef") {
                continue;
            }
            let claim = vol
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| v.claims.get(n));
            match claim {
                Some(claim) => {
                    vol.insert(
                        "pvcRef".into(),
                        serde_json::json!({"name": claim, "namespace": v.namespace}),
                    );
                }
                None => {
                    vol.remove("pvcRef");
                }
            }
        }
    }
    Some(pod)
}

/// The resource metrics of the host nodes (Prometheus text each) as one text: samples with a
/// `pod` label only for our pods, relabelled (`namespace`, `pod`); samples without one (the
/// node's own) only when `keep_node_series`; each family's `# HELP`/`# TYPE` once, every
/// sample once.
pub fn resource_metrics(nodes: &[&str], index: &PodIndex, keep_node_series: bool) -> String {
    // family name -> (header lines, sample lines), in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    fn entry<'m>(
        order: &mut Vec<String>,
        families: &'m mut HashMap<String, (Vec<String>, Vec<String>)>,
        family: &str,
    ) -> &'m mut (Vec<String>, Vec<String>) {
        if !families.contains_key(family) {
            order.push(family.to_owned());
        }
        families.entry(family.to_owned()).or_default()
    }
    for text in nodes {
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if let (Some(kw @ ("HELP" | "TYPE")), Some(name)) = (words.next(), words.next()) {
                    current = name.to_owned();
                    let headers = &mut entry(&mut order, &mut families, &current).0;
                    if !headers.iter().any(|h| h.split_whitespace().nth(1) == Some(kw)) {
                        headers.push(trimmed.to_owned());
                    }
                }
                continue;
            }
            let Some(sample) = parse_sample(trimmed) else {
                continue;
            };
            let Some(out) = translate_sample(&sample, index, keep_node_series) else {
                continue;
            };
            if !seen.insert(out.clone()) {
                continue;
            }
            let family = if !current.is_empty() && sample.name.starts_with(current.as_str()) {
                current.clone()
            } else {
                sample.name.to_owned()
            };
            entry(&mut order, &mut families, &family).1.push(out);
        }
    }
    let mut out = String::new();
    for name in order {
        let Some((headers, samples)) = families.get(&name) else {
            continue;
        };
        if samples.is_empty() {
            continue;
        }
        for line in headers.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A sample line: `name{label="value",...} rest` (`rest`: the value and an optional timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    rest: &'a str,
}

/// Parses a sample line of the text format; `None` for a malformed one (dropped).
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut tail) = line.split_at(end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(after) = tail.strip_prefix('{') {
        let mut s = after;
        loop {
            s = s.trim_start_matches([' ', ',']);
            if let Some(rest) = s.strip_prefix('}') {
                tail = rest;
                break;
            }
            let eq = s.find('=')?;
            let key = s.get(..eq)?.trim();
            s = s.get(eq + 1..)?.trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let close = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            s = s.get(close + 1..)?;
        }
    }
    let rest = tail.trim();
    (!rest.is_empty()).then_some(Sample { name, labels, rest })
}

fn translate_sample(sample: &Sample<'_>, index: &PodIndex, keep_node_series: bool) -> Option<String> {
    let label = |k: &str| {
        sample
            .labels
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut labels = sample.labels.clone();
    if let Some(pod) = label("pod") {
        let v = index.get(label("namespace").unwrap_or(""), pod)?.clone();
        for (key, value) in &mut labels {
            match *key {
                "pod" => *value = v.name.clone(),
                "namespace" => *value = v.namespace.clone(),
                _ => {}
            }
        }
    } else if !keep_node_series {
        return None;
    }
    let mut out = sample.name.to_owned();
    if !labels.is_empty() {
        let parts: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        out.push('{');
        out.push_str(&parts.join(","));
        out.push('}');
    }
    out.push(' ');
    out.push_str(sample.rest);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> PodIndex {
        let mut pods = HashMap::new();
        pods.insert(
            "web-0-x-team-a-x-vc".to_owned(),
            VirtualPod {
                namespace: "team-a".into(),
                name: "web-0".into(),
                uid: "v-uid".into(),
                claims: BTreeMap::from([("data".to_owned(), "data-web-0".to_owned())]),
            },
        );
        PodIndex {
            host_namespace: "host-ns".into(),
            pods,
        }
    }

    #[test]
    fn a_summary_keeps_our_pods_under_virtual_names_and_drops_the_rest() {
        let node = json!({
            "node": {"nodeName": "n1", "cpu": {"usageNanoCores": 5}},
            "pods": [
                {"podRef": {"name": "web-0-x-team-a-x-vc", "namespace": "host-ns", "uid": "h-uid"},
                 "cpu": {"usageNanoCores": 1},
                 "volume": [{"name": "data", "pvcRef": {"name": "host-claim", "namespace": "host-ns"}},
                            {"name": "tmp"},
                            {"name": "other", "pvcRef": {"name": "x", "namespace": "host-ns"}}]},
                {"podRef": {"name": "web-0-x-team-a-x-vc", "namespace": "elsewhere", "uid": "e"}},
                {"podRef": {"name": "db-0", "namespace": "host-ns", "uid": "d"}},
                {"podRef": {"name": 3}}
            ]
        });
        let out = summary(std::slice::from_ref(&node), &index());
        assert_eq!(out["node"]["nodeName"], "n1");
        let pods = out["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1, "{out}");
        assert_eq!(
            pods[0]["podRef"],
            json!({"name": "web-0", "namespace": "team-a", "uid": "v-uid"})
        );
        assert_eq!(pods[0]["cpu"]["usageNanoCores"], 1);
        assert_eq!(
            pods[0]["volume"],
            json!([{"name": "data", "pvcRef": {"name": "data-web-0", "namespace": "team-a"}},
                   {"name": "tmp"}, {"name": "other"}])
        );
        let text = out.to_string();
        assert!(!text.contains("host-ns") && !text.contains("db-0") && !text.contains("h-uid"));

        // Two nodes: the pod once, no node figures (the node asked is not known).
        let two = summary(&[node.clone(), node], &index());
        assert_eq!(two["pods"].as_array().unwrap().len(), 1);
        assert_eq!(two["node"], json!({"nodeName": ""}));
        assert_eq!(
            summary(&[], &index()),
            json!({"node": {"nodeName": ""}, "pods": []})
        );
    }

    const NODE_TEXT: &str = r#"# HELP container_cpu_usage_seconds_total [ALPHA] Cumulative cpu time
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="main",namespace="host-ns",pod="web-0-x-team-a-x-vc"} 12.5 1700000000000
container_cpu_usage_seconds_total{container="main",namespace="host-ns",pod="db-0"} 3
container_cpu_usage_seconds_total{container="c",namespace="other",pod="web-0-x-team-a-x-vc"} 3
# HELP node_cpu_usage_seconds_total [ALPHA] Cumulative cpu time consumed by the node
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 99 1700000000000
# HELP pod_memory_working_set_bytes [ALPHA] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="host-ns",pod="db-0"} 1
garbage{unterminated="x 1
"#;

    #[test]
    fn resource_metrics_keep_our_pods_relabelled_and_node_series_of_one_node() {
        let one = resource_metrics(&[NODE_TEXT], &index(), true);
        assert_eq!(
            one,
            "# HELP container_cpu_usage_seconds_total [ALPHA] Cumulative cpu time\n\
             # TYPE container_cpu_usage_seconds_total counter\n\
             container_cpu_usage_seconds_total{container=\"main\",namespace=\"team-a\",pod=\"web-0\"} 12.5 1700000000000\n\
             # HELP node_cpu_usage_seconds_total [ALPHA] Cumulative cpu time consumed by the node\n\
             # TYPE node_cpu_usage_seconds_total counter\n\
             node_cpu_usage_seconds_total 99 1700000000000\n"
        );
        // Two nodes (here the same text twice): each sample once, no node series.
        let two = resource_metrics(&[NODE_TEXT, NODE_TEXT], &index(), false);
        assert_eq!(two.matches("# TYPE").count(), 1, "{two}");
        assert_eq!(two.matches("pod=\"web-0\"").count(), 1, "{two}");
        assert!(!two.contains("node_cpu") && !two.contains("db-0") && !two.contains("host-ns"));
    }

    #[test]
    fn sample_lines_parse_with_escapes() {
        let s = parse_sample(r#"m{a="x\"y",b = "1\\2\n" ,} 5"#).unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(
            s.labels,
            vec![("a", "x\"y".to_owned()), ("b", "1\\2\n".to_owned())]
        );
        assert_eq!(s.rest, "5");
        assert_eq!(parse_sample("up 1").unwrap().labels, vec![]);
        for bad in ["m{a=\"x\"", "m{a} 1", "{a=\"b\"} 1", "m{a=\"b\"}", "m"] {
            assert_eq!(parse_sample(bad), None, "{bad}");
        }
        let relabelled = translate_sample(&parse_sample(r#"m{q="a\"b"} 1"#).unwrap(), &index(), true);
        assert_eq!(relabelled.as_deref(), Some(r#"m{q="a\"b"} 1"#));
    }
}
