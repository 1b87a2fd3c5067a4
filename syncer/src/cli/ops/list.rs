//! `vnest list`: the vclusters of one namespace or all, as a table.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::cli::{CliError, ListArgs};
use crate::markers;

use super::*;

/// One row of `vnest list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub namespace: String,
    pub ready: String,
    pub k3s_version: String,
    pub synced_pods: usize,
    pub age: String,
}

/// `5s`, `3m`, `4h`, `2d` as kubectl prints ages.
pub fn format_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The tag of an image reference (`latest` when none).
pub fn image_tag(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => no_digest[i + 1..].to_owned(),
        _ => "latest".to_owned(),
    }
}

pub fn format_table(rows: &[Row]) -> String {
    let header = ["NAME", "NAMESPACE", "READY", "K3S VERSION", "SYNCED PODS", "AGE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.namespace.clone(),
                r.ready.clone(),
                r.k3s_version.clone(),
                r.synced_pods.to_string(),
                r.age.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<&str>| {
        let mut s = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub async fn list(args: &ListArgs) -> Result<(), CliError> {
    let (client, default_ns) = host_client(&args.host).await?;
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.clone().unwrap_or(default_ns))
    };
    let rows = rows(&client, namespace.as_deref()).await?;
    if rows.is_empty() {
        match namespace {
            Some(ns) => eprintln!("no vclusters in namespace {ns:?}"),
            None => eprintln!("no vclusters in any namespace"),
        }
        return Ok(());
    }
    print!("{}", format_table(&rows));
    Ok(())
}

/// The rows of `vnest list` for one namespace or all.
pub async fn rows(client: &Client, namespace: Option<&str>) -> Result<Vec<Row>, CliError> {
    let api: Api<StatefulSet> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let where_ = namespace.map_or("any namespace".to_owned(), |ns| format!("namespace {ns:?}"));
    let list = api
        .list(&ListParams::default().labels(LABEL_VCLUSTER))
        .await
        .map_err(|e| CliError::kube("list", format!("vclusters (StatefulSets) in {where_}"), e))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows = Vec::new();
    for sts in list.items {
        let name = sts.name_any();
        let ns = sts.namespace().unwrap_or_default();
        let spec_replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        let k3s_version = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == "k3s"))
            .and_then(|c| c.image.as_deref())
            .map_or_else(|| "?".to_owned(), image_tag);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let synced_pods = pods
            .list_metadata(&ListParams::default().labels(&markers::selector(&name)))
            .await
            .map_err(|e| CliError::kube("list", format!("pods in namespace {ns:?}"), e))?
            .items
            .len();
        let age = sts.metadata.creation_timestamp.as_ref().map_or_else(
            || "?".to_owned(),
            |t| format_age(now.as_second() - t.0.as_second()),
        );
        rows.push(Row {
            name,
            namespace: ns,
            ready: format!("{ready}/{spec_replicas}"),
            k3s_version,
            synced_pods,
            age,
        });
    }
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(format_age(5), "5s");
        assert_eq!(format_age(119), "119s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(format_age(3 * 86_400), "3d");
        assert_eq!(format_age(-3), "0s");
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("rancher/k3s:v1.35.4-k3s1"), "v1.35.4-k3s1");
        assert_eq!(image_tag("reg:5000/k3s"), "latest");
        assert_eq!(image_tag("k3s:v1@sha256:abc"), "v1");
    }

    #[test]
    fn table_columns_line_up() {
        let t = format_table(&[Row {
            name: "a".into(),
            namespace: "team-a".into(),
            ready: "1/1".into(),
            k3s_version: "v1.35.4-k3s1".into(),
            synced_pods: 3,
            age: "5m".into(),
        }]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   NAMESPACE   READY   K3S VERSION    SYNCED PODS   AGE"
        );
        assert_eq!(
            lines[1],
            "a      team-a      1/1     v1.35.4-k3s1   3             5m"
        );
    }
}
