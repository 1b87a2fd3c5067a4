//! The small kustomize subset `manifests/` uses, on JSON values, with no kubectl:
//! `resources` (files and directories), `components`, `namespace`, `images` (newName/newTag),
//! `patches` (inline JSON 6902 with a kind/name target) and `replacements` (a ConfigMap-style
//! source field; targets selected by kind and name; field paths with `[key]`, `[k=v]` and list
//! indices; options `delimiter`/`index` and `create`). Anything else in a kustomization is
//! refused by name, so the subset cannot silently drift from kustomize: a unit test renders
//! every overlay both ways (see `e2e/tests/manifests.rs`).
//!
//! Order, as kustomize: a kustomization accumulates its resources, then runs each component
//! (its resources, its components, its transformers over everything accumulated so far), then
//! its own transformers: patches, namespace, images, replacements. Resources annotated
//! `config.kubernetes.io/local-config: "true"` are dropped from the final output.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A read-only tree of files: path (relative, `/`-separated) -> text.
pub type Files = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KustomizeError {
    #[error("{path}: no such file in the manifests")]
    Missing { path: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: kustomize field {field:?} is not supported by vnest's renderer")]
    Unsupported { path: String, field: String },
    #[error("{path}: patch {op} {pointer}: {reason}")]
    Patch {
        path: String,
        op: String,
        pointer: String,
        reason: String,
    },
    #[error("{path}: replacement: {reason}")]
    Replacement { path: String, reason: String },
}

const LOCAL_CONFIG: &str = "config.kubernetes.io/local-config";

/// Kinds without a namespace (those the manifests can contain).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];

pub fn is_cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED.contains(&kind)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    namespace: Option<String>,
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    patches: Vec<PatchEntry>,
    #[serde(default)]
    replacements: Vec<Replacement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchEntry {
    target: Selector,
    patch: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    kind: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Replacement {
    source: Source,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Source {
    kind: String,
    name: String,
    field_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Target {
    select: Selector,
    field_paths: Vec<String>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    delimiter: Option<String>,
    #[serde(default)]
    index: i64,
    #[serde(default)]
    create: bool,
}

/// Builds the kustomization in directory `dir` of `files`: the objects `kubectl kustomize`
/// would print (as JSON values, in no particular order).
pub fn build(files: &Files, dir: &str) -> Result<Vec<Value>, KustomizeError> {
    let mut objs = Vec::new();
    accumulate(files, dir, &mut objs)?;
    objs.retain(|o| {
        o.pointer(&format!(
            "/metadata/annotations/{}",
            LOCAL_CONFIG.replace('/', "~1")
        ))
        .and_then(Value::as_str)
            != Some("true")
    });
    Ok(objs)
}

fn read<'a>(files: &'a Files, path: &str) -> Result<&'a str, KustomizeError> {
    files
        .get(path)
        .map(String::as_str)
        .ok_or_else(|| KustomizeError::Missing {
            path: path.to_owned(),
        })
}

fn load_kustomization(files: &Files, dir: &str) -> Result<(String, Kustomization), KustomizeError> {
    let path = join(dir, "kustomization.yaml");
    let text = read(files, &path)?;
    let raw: Value = serde_yaml::from_str(text).map_err(|e| KustomizeError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let known = [
        "apiVersion",
        "kind",
        "resources",
        "components",
        "namespace",
        "images",
        "patches",
        "replacements",
    ];
    if let Some(field) = raw
        .as_object()
        .and_then(|m| m.keys().find(|k| !known.contains(&k.as_str())))
    {
        return Err(KustomizeError::Unsupported {
            path,
            field: field.clone(),
        });
    }
    let k = serde_json::from_value(raw).map_err(|e| KustomizeError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok((path, k))
}

/// Adds the objects of kustomization `dir` (resources, components, own transformers) to `objs`.
fn accumulate(files: &Files, dir: &str, objs: &mut Vec<Value>) -> Result<(), KustomizeError> {
    let (path, k) = load_kustomization(files, dir)?;
    let mut own = Vec::new();
    for r in &k.resources {
        let p = join(dir, r);
        if files.contains_key(&join(&p, "kustomization.yaml")) {
            accumulate(files, &p, &mut own)?;
        } else {
            own.extend(parse_documents(&p, read(files, &p)?)?);
        }
    }
    objs.extend(own);
    for c in &k.components {
        accumulate(files, &join(dir, c), objs)?;
    }
    transform(&path, &k, objs)
}

/// The objects in a multi-document YAML text (empty documents skipped).
pub fn parse_documents(path: &str, text: &str) -> Result<Vec<Value>, KustomizeError> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| KustomizeError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn transform(path: &str, k: &Kustomization, objs: &mut [Value]) -> Result<(), KustomizeError> {
    for p in &k.patches {
        apply_patch(path, p, objs)?;
    }
    if let Some(ns) = &k.namespace {
        set_namespace(ns, objs);
    }
    for image in &k.images {
        set_image(image, objs);
    }
    for r in &k.replacements {
        replace(path, r, objs)?;
    }
    Ok(())
}

/// Joins a relative path onto a directory, resolving `.` and `..`.
pub fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for p in rel.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn kind_of(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn selected(sel: &Selector, o: &Value) -> bool {
    sel.kind.as_deref().is_none_or(|k| k == kind_of(o)) && sel.name.as_deref().is_none_or(|n| n == name_of(o))
}

// --- namespace ----------------------------------------------------------------------------------

fn set_namespace(ns: &str, objs: &mut [Value]) {
    // ServiceAccounts in the build, by name (a binding's subject naming one gets its namespace).
    let accounts: Vec<String> = objs
        .iter()
        .filter(|o| kind_of(o) == "ServiceAccount")
        .map(|o| name_of(o).to_owned())
        .collect();
    for o in objs.iter_mut() {
        let kind = kind_of(o).to_owned();
        if !is_cluster_scoped(&kind)
            && let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), Value::String(ns.to_owned()));
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            let subjects = o.get_mut("subjects").and_then(Value::as_array_mut);
            for s in subjects.into_iter().flatten() {
                let name = s
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let is_sa = s.get("kind").and_then(Value::as_str) == Some("ServiceAccount");
                let unset = s
                    .get("namespace")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty);
                if (is_sa && unset && accounts.contains(&name)) || name == "default" {
                    s["namespace"] = Value::String(ns.to_owned());
                }
            }
        }
    }
}

// --- images -------------------------------------------------------------------------------------

/// The repository part of an image reference (without tag or digest).
fn image_repo(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn set_image(image: &Image, objs: &mut [Value]) {
    for o in objs.iter_mut() {
        for list in ["containers", "initContainers"] {
            let Some(cs) = o
                .pointer_mut(&format!("/spec/template/spec/{list}"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            for c in cs {
                let Some(current) = c.get("image").and_then(Value::as_str) else {
                    continue;
                };
                if image_repo(current) != image.name {
                    continue;
                }
                let tag = current[image_repo(current).len()..].to_owned();
                let repo = image.new_name.clone().unwrap_or_else(|| image.name.clone());
                let tag = image.new_tag.as_ref().map_or(tag, |t| format!(":{t}"));
                c["image"] = Value::String(format!("{repo}{tag}"));
            }
        }
    }
}

// --- JSON 6902 patches --------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Op {
    op: String,
    path: String,
    value: Option<Value>,
}

fn apply_patch(path: &str, p: &PatchEntry, objs: &mut [Value]) -> Result<(), KustomizeError> {
    let ops: Vec<Op> = serde_yaml::from_str(&p.patch).map_err(|e| KustomizeError::Parse {
        path: path.to_owned(),
        reason: format!("only JSON 6902 patches (a list of ops) are supported: {e}"),
    })?;
    for o in objs.iter_mut().filter(|o| selected(&p.target, o)) {
        for op in &ops {
            json_patch_op(o, op).map_err(|reason| KustomizeError::Patch {
                path: path.to_owned(),
                op: op.op.clone(),
                pointer: op.path.clone(),
                reason,
            })?;
        }
    }
    Ok(())
}

fn json_patch_op(doc: &mut Value, op: &Op) -> Result<(), String> {
    let (parent, last) = op
        .path
        .rsplit_once('/')
        .ok_or_else(|| "a JSON pointer starts with /".to_owned())?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("{parent} does not exist"))?;
    let value = || op.value.clone().ok_or_else(|| "no value".to_owned());
    match (op.op.as_str(), target) {
        ("add", Value::Array(a)) if last == "-" => a.push(value()?),
        ("add", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("{last} is no index"))?;
            if i > a.len() {
                return Err(format!("index {i} is past the end"));
            }
            a.insert(i, value()?);
        }
        ("add" | "replace", Value::Object(m)) => {
            if op.op == "replace" && !m.contains_key(&last) {
                return Err(format!("{last} does not exist"));
            }
            m.insert(last, value()?);
        }
        ("replace", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("{last} is no index"))?;
            *a.get_mut(i).ok_or_else(|| format!("no element {i}"))? = value()?;
        }
        ("remove", Value::Object(m)) => {
            m.remove(&last).ok_or_else(|| format!("{last} does not exist"))?;
        }
        ("remove", Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("{last} is no index"))?;
            if i >= a.len() {
                return Err(format!("no element {i}"));
            }
            a.remove(i);
        }
        (other, _) => return Err(format!("op {other:?} on this node is not supported")),
    }
    Ok(())
}

// --- replacements -------------------------------------------------------------------------------

/// One step of a replacement field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A map key (`name`, or `[vnest.dev/vcluster]` for keys with dots).
    Key(String),
    /// The list element whose field `.0` equals `.1` (`[name=syncer]`).
    Match(String, String),
    /// A list index (`0`).
    Index(usize),
}

/// Splits `a.b.[c.d].[k=v].0` into steps (dots inside brackets do not split).
fn parse_field_path(fp: &str) -> Vec<Step> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for ch in fp.chars() {
        match ch {
            '[' => {
                depth += 1;
                cur.push(ch);
            }
            ']' => {
                depth -= 1;
                cur.push(ch);
            }
            '.' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| {
            if let Some(inner) = p.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
                match inner.split_once('=') {
                    Some((k, v)) => Step::Match(k.to_owned(), v.to_owned()),
                    None => Step::Key(inner.to_owned()),
                }
            } else if let Ok(i) = p.parse::<usize>() {
                Step::Index(i)
            } else {
                Step::Key(p)
            }
        })
        .collect()
}

fn lookup<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(v, |node, step| match step {
        Step::Key(k) => node.get(k),
        Step::Index(i) => node.get(*i),
        Step::Match(k, val) => node
            .as_array()?
            .iter()
            .find(|e| e.get(k).and_then(Value::as_str) == Some(val)),
    })
}

/// The node at `steps`, created as maps when `create` (the last step may always be new when
/// `create`; without it every step must exist, as kustomize requires).
fn lookup_mut<'a>(v: &'a mut Value, steps: &[Step], create: bool) -> Option<&'a mut Value> {
    let mut node = v;
    for step in steps {
        node = match step {
            Step::Key(k) => {
                let m = node.as_object_mut()?;
                if !m.contains_key(k) {
                    if !create {
                        return None;
                    }
                    m.insert(k.clone(), Value::Object(Map::new()));
                }
                m.get_mut(k)?
            }
            Step::Index(i) => node.get_mut(*i)?,
            Step::Match(k, val) => node
                .as_array_mut()?
                .iter_mut()
                .find(|e| e.get(k).and_then(Value::as_str) == Some(val.as_str()))?,
        };
    }
    Some(node)
}

/// The delimiter option: replaces element `index` of the target value split by `delimiter`
/// (past the end: appended; negative: prepended), as kustomize does.
fn splice(current: &str, delimiter: &str, index: i64, value: &str) -> String {
    let mut parts: Vec<String> = current.split(delimiter).map(str::to_owned).collect();
    match usize::try_from(index) {
        Ok(i) if i < parts.len() => parts[i] = value.to_owned(),
        Ok(_) => parts.push(value.to_owned()),
        Err(_) => parts.insert(0, value.to_owned()),
    }
    parts.join(delimiter)
}

fn replace(path: &str, r: &Replacement, objs: &mut [Value]) -> Result<(), KustomizeError> {
    let err = |reason: String| KustomizeError::Replacement {
        path: path.to_owned(),
        reason,
    };
    let source = objs
        .iter()
        .find(|o| kind_of(o) == r.source.kind && name_of(o) == r.source.name)
        .ok_or_else(|| err(format!("no source {}/{}", r.source.kind, r.source.name)))?;
    let value = lookup(source, &parse_field_path(&r.source.field_path))
        .cloned()
        .ok_or_else(|| {
            err(format!(
                "source {}/{} has no field {}",
                r.source.kind, r.source.name, r.source.field_path
            ))
        })?;
    for t in &r.targets {
        for o in objs.iter_mut().filter(|o| selected(&t.select, o)) {
            let (kind, name) = (kind_of(o).to_owned(), name_of(o).to_owned());
            for fp in &t.field_paths {
                let node = lookup_mut(o, &parse_field_path(fp), t.options.create)
                    .ok_or_else(|| err(format!("unable to find field {fp:?} in {kind}/{name}")))?;
                *node = match (&t.options.delimiter, node.as_str(), value.as_str()) {
                    (Some(d), Some(current), Some(v)) => {
                        Value::String(splice(current, d, t.options.index, v))
                    }
                    (Some(_), None, _) if t.options.create => value.clone(),
                    (Some(_), _, _) => {
                        return Err(err(format!("{fp:?} in {kind}/{name}: delimiter needs strings")));
                    }
                    (None, _, _) => value.clone(),
                };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_paths_split_outside_brackets() {
        assert_eq!(
            parse_field_path("spec.containers.[name=k3s].env.[name=VNEST_NAME].value"),
            vec![
                Step::Key("spec".into()),
                Step::Key("containers".into()),
                Step::Match("name".into(), "k3s".into()),
                Step::Key("env".into()),
                Step::Match("name".into(), "VNEST_NAME".into()),
                Step::Key("value".into()),
            ]
        );
        assert_eq!(
            parse_field_path("metadata.labels.[vnest.dev/vcluster]"),
            vec![
                Step::Key("metadata".into()),
                Step::Key("labels".into()),
                Step::Key("vnest.dev/vcluster".into()),
            ]
        );
        assert_eq!(parse_field_path("a.0.b")[1], Step::Index(0));
    }

    #[test]
    fn splice_follows_kustomize() {
        assert_eq!(splice("vnest-workload", "-", 0, "team-a"), "team-a-workload");
        assert_eq!(
            splice("vnest-node-reader.vnest", ".", 1, "ns"),
            "vnest-node-reader.ns"
        );
        assert_eq!(
            splice("vnest", ".", 1, "ns"),
            "vnest.ns",
            "past the end: appended"
        );
        assert_eq!(splice("b", "-", -1, "a"), "a-b");
    }

    #[test]
    fn paths_join_and_normalise() {
        assert_eq!(join("overlays/default", "../../base"), "base");
        assert_eq!(join("components/name", "./x.yaml"), "components/name/x.yaml");
    }

    #[test]
    fn image_repos() {
        assert_eq!(image_repo("rancher/k3s"), "rancher/k3s");
        assert_eq!(image_repo("rancher/k3s:v1"), "rancher/k3s");
        assert_eq!(image_repo("reg:5000/a/b:v1"), "reg:5000/a/b");
        assert_eq!(image_repo("reg:5000/a/b"), "reg:5000/a/b");
    }

    fn files(entries: &[(&str, &str)]) -> Files {
        entries
            .iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let f = files(&[("k/kustomization.yaml", "namePrefix: x-\n")]);
        let err = build(&f, "k").expect_err("refused").to_string();
        assert!(err.contains("\"namePrefix\" is not supported"), "{err}");
    }

    #[test]
    fn a_replacement_on_a_missing_field_fails_like_kustomize() {
        let f = files(&[
            (
                "k/kustomization.yaml",
                "resources: [a.yaml]\nreplacements:\n- source: {kind: ConfigMap, name: n, fieldPath: data.name}\n  targets:\n  - select: {kind: Service}\n    fieldPaths: [spec.selector.app]\n",
            ),
            (
                "k/a.yaml",
                "kind: ConfigMap\nmetadata: {name: n}\ndata: {name: x}\n---\nkind: Service\nmetadata: {name: s}\nspec: {}\n",
            ),
        ]);
        let err = build(&f, "k").expect_err("missing field").to_string();
        assert!(
            err.contains("unable to find field \"spec.selector.app\" in Service/s"),
            "{err}"
        );
    }

    #[test]
    fn patches_namespace_images_and_local_config() {
        let f = files(&[
            (
                "k/kustomization.yaml",
                "namespace: ns\nresources: [a.yaml]\nimages: [{name: img, newTag: v2}]\npatches:\n- target: {kind: StatefulSet, name: s}\n  patch: |-\n    - op: add\n      path: /spec/template/spec/containers/0/args/-\n      value: --x\n",
            ),
            (
                "k/a.yaml",
                "kind: StatefulSet\nmetadata: {name: s}\nspec: {template: {spec: {containers: [{name: c, image: img, args: [--a]}]}}}\n---\nkind: ConfigMap\nmetadata: {name: local, annotations: {config.kubernetes.io/local-config: \"true\"}}\n---\nkind: ClusterRole\nmetadata: {name: cr}\n",
            ),
        ]);
        let objs = build(&f, "k").unwrap();
        assert_eq!(objs.len(), 2, "local-config dropped: {objs:?}");
        assert_eq!(
            objs[0]["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "c", "image": "img:v2", "args": ["--a", "--x"]})
        );
        assert_eq!(objs[0]["metadata"]["namespace"], "ns");
        assert!(objs[1]["metadata"].get("namespace").is_none(), "cluster-scoped");
    }

    #[test]
    fn embedded_overlays_build() {
        let files = super::super::render::embedded_files();
        for dir in [
            "overlays/default",
            "overlays/isolated",
            "overlays/shared-a",
            "overlays/shared-b",
        ] {
            let objs = build(&files, dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
            assert!(objs.iter().any(|o| kind_of(o) == "StatefulSet"), "{dir}");
        }
    }
}
