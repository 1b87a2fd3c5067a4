//! A pod's volumes as host directories, bind-mounted into its containers.
//!
//! - `emptyDir`: `<state>/pods/<uid>/volumes/empty-dir/<name>` (removed with the pod)
//! - `persistentVolumeClaim`: the bound PV's `hostPath.path` / `local.path`
//! - `hostPath`: the path itself
//! - `configMap`, `secret`, `downwardAPI`, `projected` (ServiceAccount tokens by TokenRequest):
//!   files written under `<state>/pods/<uid>/volumes/<kind>/<name>`, each atomically (a temp
//!   file renamed in the same directory), rewritten when their source changes; mounted
//!   read-only as the kubelet does.
//!
//! [`files_of`] (which files a projected-style volume holds) is pure; the rest does the I/O.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, Volume};

use crate::env;
use crate::podman::Mount;

/// Keys -> bytes of a ConfigMap (data + binaryData) or Secret (data).
pub type ObjData = BTreeMap<String, Vec<u8>>;

/// What is known of the ConfigMaps and Secrets the pod reads: `None` = it does not exist;
/// a name missing from the map = not known yet.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<ObjData>>,
    pub secrets: BTreeMap<String, Option<ObjData>>,
    /// path inside the volume -> token, for projected serviceAccountToken sources
    pub tokens: BTreeMap<(String, String), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume {volume}: {kind} {name} not found")]
    Missing {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error("volume {volume}: waiting for {kind} {name}")]
    NotYetKnown {
        volume: String,
        kind: &'static str,
        name: String,
    },
    #[error("volume {volume}: key {key} not in {kind} {name}")]
    MissingKey {
        volume: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error(
        "volume {volume}: unsupported volume type (the runner supports emptyDir, hostPath, persistentVolumeClaim, configMap, secret, downwardAPI, projected)"
    )]
    Unsupported { volume: String },
    #[error("volume {volume}: unsupported downward API field {path}")]
    FieldPath { volume: String, path: String },
    #[error("volume {volume}: claim {claim}: {why}")]
    Claim {
        volume: String,
        claim: String,
        why: String,
    },
    #[error("volume {volume}: invalid path {path}")]
    BadPath { volume: String, path: String },
    #[error("volumeMount {mount}: no volume of that name")]
    NoSuchVolume { mount: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One file of a projected-style volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// a ServiceAccount token (owner and mode rules of the kubelet apply)
    pub token: bool,
}

/// The default file mode of configMap/secret/downwardAPI/projected volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// A relative path inside a volume: no absolute paths, no `..` (as API validation requires).
fn safe_rel(volume: &str, p: &str) -> Result<String> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|s| s == "..") {
        return Err(Error::BadPath {
            volume: volume.into(),
            path: p.into(),
        });
    }
    Ok(p.to_owned())
}

fn key_files(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: Option<&Option<ObjData>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: bool,
    default_mode: u32,
) -> Result<Vec<File>> {
    let data = match data {
        None => {
            return Err(Error::NotYetKnown {
                volume: volume.into(),
                kind,
                name: name.into(),
            });
        }
        Some(None) if optional => return Ok(Vec::new()),
        Some(None) => {
            return Err(Error::Missing {
                volume: volume.into(),
                kind,
                name: name.into(),
            });
        }
        Some(Some(d)) => d,
    };
    match items {
        Some(items) => items
            .iter()
            .filter_map(|it| match data.get(&it.key) {
                Some(v) => Some(safe_rel(volume, &it.path).map(|path| File {
                    path,
                    data: v.clone(),
                    mode: it.mode.map_or(default_mode, |m| m as u32),
                    token: false,
                })),
                None if optional => None,
                None => Some(Err(Error::MissingKey {
                    volume: volume.into(),
                    kind,
                    name: name.into(),
                    key: it.key.clone(),
                })),
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| {
                Ok(File {
                    path: safe_rel(volume, k)?,
                    data: v.clone(),
                    mode: default_mode,
                    token: false,
                })
            })
            .collect(),
    }
}

fn downward_files(
    pod: &Pod,
    volume: &str,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: u32,
    host_ip: &str,
) -> Result<Vec<File>> {
    items
        .iter()
        .map(|it| {
            let value = if let Some(f) = &it.field_ref {
                env::field_ref(pod, &f.field_path, host_ip).ok_or_else(|| Error::FieldPath {
                    volume: volume.into(),
                    path: f.field_path.clone(),
                })?
            } else if let Some(r) = &it.resource_field_ref {
                let c = pod.spec.as_ref().and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(&c.name) == r.container_name.as_ref())
                });
                match c {
                    Some(c) => env::resource_field(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str())),
                    None => String::from("0"),
                }
            } else {
                String::new()
            };
            Ok(File {
                path: safe_rel(volume, &it.path)?,
                data: value.into_bytes(),
                mode: it.mode.map_or(default_mode, |m| m as u32),
                token: false,
            })
        })
        .collect()
}

/// The files of a configMap / secret / downwardAPI / projected volume (None for other kinds).
pub fn files_of(pod: &Pod, v: &Volume, src: &Sources, host_ip: &str) -> Option<Result<Vec<File>>> {
    let name = v.name.as_str();
    if let Some(cm) = &v.config_map {
        let mode = cm.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
        return Some(key_files(
            name,
            "configmap",
            &cm.name,
            src.config_maps.get(&cm.name),
            cm.items.as_ref(),
            cm.optional == Some(true),
            mode,
        ));
    }
    if let Some(s) = &v.secret {
        let mode = s.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
        let sname = s.secret_name.clone().unwrap_or_default();
        return Some(key_files(
            name,
            "secret",
            &sname,
            src.secrets.get(&sname),
            s.items.as_ref(),
            s.optional == Some(true),
            mode,
        ));
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
        return Some(downward_files(
            pod,
            name,
            d.items.as_deref().unwrap_or_default(),
            mode,
            host_ip,
        ));
    }
    let p = v.projected.as_ref()?;
    Some(projected_files(pod, name, p, src, host_ip))
}

fn projected_files(
    pod: &Pod,
    name: &str,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    src: &Sources,
    host_ip: &str,
) -> Result<Vec<File>> {
    let mode = p.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
    let mut out = Vec::new();
    for s in p.sources.iter().flatten() {
        let files = if let Some(cm) = &s.config_map {
            key_files(
                name,
                "configmap",
                &cm.name,
                src.config_maps.get(&cm.name),
                cm.items.as_ref(),
                cm.optional == Some(true),
                mode,
            )
        } else if let Some(sec) = &s.secret {
            key_files(
                name,
                "secret",
                &sec.name,
                src.secrets.get(&sec.name),
                sec.items.as_ref(),
                sec.optional == Some(true),
                mode,
            )
        } else if let Some(d) = &s.downward_api {
            downward_files(pod, name, d.items.as_deref().unwrap_or_default(), mode, host_ip)
        } else if let Some(t) = &s.service_account_token {
            match src.tokens.get(&(name.to_owned(), t.path.clone())) {
                Some(tok) => Ok(vec![File {
                    path: safe_rel(name, &t.path)?,
                    data: tok.clone().into_bytes(),
                    mode,
                    token: true,
                }]),
                None => Err(Error::NotYetKnown {
                    volume: name.into(),
                    kind: "serviceaccount token",
                    name: t.path.clone(),
                }),
            }
        } else {
            Ok(Vec::new())
        };
        out.extend(files?);
    }
    Ok(out)
}

/// The ConfigMaps and Secrets the pod's volumes read: (configmaps, secrets).
pub fn volume_refs(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.push(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &s.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(sec) = &s.secret {
                secrets.push(sec.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// The projected ServiceAccount tokens the pod needs: (volume, path, audience, expirationSeconds).
pub fn token_requests(pod: &Pod) -> Vec<(String, String, Option<String>, i64)> {
    let mut out = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(t) = &s.service_account_token {
                out.push((
                    v.name.clone(),
                    t.path.clone(),
                    t.audience.clone().filter(|a| !a.is_empty()),
                    t.expiration_seconds.unwrap_or(3600),
                ));
            }
        }
    }
    out
}

/// When a token issued at `issued` and expiring at `expires` is due for renewal: at 80% of its
/// lifetime, and at least every 24 h (as the kubelet's token manager).
pub fn token_refresh_at(issued: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    let at = lifetime.mul_f64(0.8).min(Duration::from_secs(24 * 3600));
    issued + at
}

/// Per-pod directories of the runner.
pub fn pod_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}

fn kind_dir(v: &Volume) -> &'static str {
    if v.config_map.is_some() {
        "configmap"
    } else if v.secret.is_some() {
        "secret"
    } else if v.downward_api.is_some() {
        "downward-api"
    } else if v.projected.is_some() {
        "projected"
    } else {
        "empty-dir"
    }
}

/// Where each volume lives on the host: volume name -> (directory, read-only by nature).
pub type Prepared = BTreeMap<String, (PathBuf, bool)>;

/// The ownership the kubelet gives volume contents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owner {
    pub fs_group: Option<u32>,
    /// every container runs as this non-root uid (the kubelet then makes tokens 0600 and theirs)
    pub uniform_user: Option<u32>,
}

pub fn owner_of(pod: &Pod) -> Owner {
    let spec = pod.spec.as_ref();
    let psc: Option<&PodSecurityContext> = spec.and_then(|s| s.security_context.as_ref());
    let fs_group = psc.and_then(|p| p.fs_group).and_then(|g| u32::try_from(g).ok());
    let users: Vec<Option<i64>> = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(s.containers.iter()))
        .map(|c| {
            c.security_context
                .as_ref()
                .and_then(|sc| sc.run_as_user)
                .or(psc.and_then(|p| p.run_as_user))
        })
        .collect();
    let uniform_user = match users.first() {
        Some(Some(u)) if *u != 0 && users.iter().all(|x| *x == Some(*u)) => u32::try_from(*u).ok(),
        _ => None,
    };
    Owner {
        fs_group,
        uniform_user,
    }
}

/// Gives `dir` (recursively) to group `gid`, group-writable, setgid on directories, as the
/// kubelet's SetVolumeOwnership does; skipped when the root already has that group
/// (fsGroupChangePolicy OnRootMismatch behaviour).
fn set_volume_ownership(dir: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(io("stat", dir))?;
    if meta.gid() == gid && meta.mode() & 0o2000 != 0 {
        return Ok(());
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(io("stat", &p))?;
        if m.file_type().is_symlink() {
            continue;
        }
        std::os::unix::fs::chown(&p, None, Some(gid)).map_err(io("chown", &p))?;
        let mode = if m.is_dir() {
            m.mode() | 0o2070
        } else {
            m.mode() | 0o060
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("chmod", &p))?;
        if m.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io("read dir", &p))? {
                stack.push(e.map_err(io("read dir", &p))?.path());
            }
        }
    }
    Ok(())
}

/// Writes `files` into `dir`: each changed file atomically (temp + rename in its directory),
/// files no longer projected removed. Returns whether anything changed.
pub fn write_files(dir: &Path, files: &[File], owner: Owner) -> Result<bool> {
    std::fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
    let mut changed = false;
    let mut keep = std::collections::BTreeSet::new();
    for f in files {
        let path = dir.join(&f.path);
        keep.insert(path.clone());
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
        // Tokens of a pod whose containers all run as one non-root user without fsGroup
        // become 0600 and theirs (kubelet: projected token file permissions).
        let (uid, gid, mode) = match (f.token, owner.fs_group, owner.uniform_user) {
            (true, None, Some(u)) => (Some(u), None, 0o600),
            // kubelet SetVolumeOwnership on a read-only volume: group gets read (and exec
            // when the owner has it)
            (_, Some(g), _) => (
                None,
                Some(g),
                f.mode | 0o440 | if f.mode & 0o100 != 0 { 0o010 } else { 0 },
            ),
            _ => (None, None, f.mode),
        };
        let same = std::fs::read(&path).is_ok_and(|old| old == f.data)
            && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if same {
            continue;
        }
        let tmp = parent.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ));
        std::fs::write(&tmp, &f.data).map_err(io("write", &tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&tmp, uid, gid).map_err(io("chown", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        changed = true;
    }
    // Remove what is no longer projected (top level only; nested dirs are rare).
    for e in std::fs::read_dir(dir).map_err(io("read dir", dir))? {
        let p = e.map_err(io("read dir", dir))?.path();
        if p.is_file() && !keep.contains(&p) {
            std::fs::remove_file(&p).map_err(io("remove", &p))?;
            changed = true;
        }
    }
    if let Some(g) = owner.fs_group {
        std::os::unix::fs::chown(dir, None, Some(g)).map_err(io("chown", dir))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod", dir))?;
    Ok(changed)
}

/// Resolves a PVC to its PV's directory (hostPath or local).
pub async fn claim_path(client: &kube::Client, ns: &str, volume: &str, claim: &str) -> Result<PathBuf> {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let err = |why: String| Error::Claim {
        volume: volume.into(),
        claim: claim.into(),
        why,
    };
    let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(client.clone(), ns);
    let pvc = pvcs
        .get(claim)
        .await
        .map_err(|e| err(format!("get claim: {e}")))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("not bound yet".into()))?;
    let pvs: kube::Api<PersistentVolume> = kube::Api::all(client.clone());
    let pv = pvs
        .get(&pv_name)
        .await
        .map_err(|e| err(format!("get volume {pv_name}: {e}")))?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| PathBuf::from(h.path))
        .or(spec.local.map(|l| PathBuf::from(l.path)))
        .ok_or_else(|| err(format!("volume {pv_name} is neither hostPath nor local")))
}

/// Creates the pod's directory volumes (emptyDir, PVC, hostPath) and returns where every
/// volume lives. The file-backed volumes get their directory here; their files are written
/// by [`refresh_files`].
pub async fn prepare(client: &kube::Client, state_dir: &Path, pod: &Pod) -> Result<Prepared> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let owner = owner_of(pod);
    let mut out = Prepared::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let base = pod_dir(state_dir, uid)
            .join("volumes")
            .join(kind_dir(v))
            .join(&v.name);
        if v.empty_dir.is_some() {
            if !base.exists() {
                std::fs::create_dir_all(&base).map_err(io("mkdir", &base))?;
                std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777))
                    .map_err(io("chmod", &base))?;
            }
            if let Some(g) = owner.fs_group {
                set_volume_ownership(&base, g)?;
            }
            out.insert(v.name.clone(), (base, false));
        } else if let Some(c) = &v.persistent_volume_claim {
            let dir = claim_path(client, ns, &v.name, &c.claim_name).await?;
            std::fs::create_dir_all(&dir).map_err(io("mkdir", &dir))?;
            if let Some(g) = owner.fs_group {
                set_volume_ownership(&dir, g)?;
            }
            out.insert(v.name.clone(), (dir, c.read_only == Some(true)));
        } else if let Some(h) = &v.host_path {
            let dir = PathBuf::from(&h.path);
            if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                std::fs::create_dir_all(&dir).map_err(io("mkdir", &dir))?;
            }
            out.insert(v.name.clone(), (dir, false));
        } else if v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some()
        {
            out.insert(v.name.clone(), (base, true));
        } else {
            return Err(Error::Unsupported {
                volume: v.name.clone(),
            });
        }
    }
    Ok(out)
}

/// (Re)writes the files of every file-backed volume; Ok(true) when a file changed.
pub fn refresh_files(pod: &Pod, prepared: &Prepared, src: &Sources, host_ip: &str) -> Result<bool> {
    let owner = owner_of(pod);
    let mut changed = false;
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(files) = files_of(pod, v, src, host_ip) else {
            continue;
        };
        let files = files?;
        let Some((dir, _)) = prepared.get(&v.name) else {
            continue;
        };
        changed |= write_files(dir, &files, owner)?;
    }
    Ok(changed)
}

/// The bind mounts of one container (subPath honoured: created when missing, as the kubelet).
pub fn mounts_for(
    container: &Container,
    prepared: &Prepared,
    env: &[(String, String)],
) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let (dir, ro) = prepared.get(&m.name).ok_or_else(|| Error::NoSuchVolume {
            mount: m.name.clone(),
        })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => Some(env::expand(e, |n| {
                env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
            })),
            _ => None,
        };
        let host = match sub {
            Some(s) => {
                let rel = safe_rel(&m.name, &s)?;
                let p = dir.join(rel);
                if !p.exists() {
                    // Like the kubelet: the new subPath directory gets the mode and owner of
                    // the volume root, so an fsGroup can write to it.
                    use std::os::unix::fs::MetadataExt;
                    std::fs::create_dir_all(&p).map_err(io("mkdir", &p))?;
                    let root = std::fs::metadata(dir).map_err(io("stat", dir))?;
                    std::os::unix::fs::chown(&p, Some(root.uid()), Some(root.gid()))
                        .map_err(io("chown", &p))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(root.mode() & 0o7777))
                        .map_err(io("chmod", &p))?;
                }
                p
            }
            None => dir.clone(),
        };
        out.push(Mount {
            host,
            container: m.mount_path.clone(),
            read_only: *ro || m.read_only == Some(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                     "volumes": [
                        {"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
                        {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 256}},
                        {"name": "opt", "secret": {"secretName": "nope", "optional": true}}]}
        }))
        .unwrap()
    }

    fn vol<'a>(p: &'a Pod, name: &str) -> &'a Volume {
        p.spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap()
    }

    #[test]
    fn projected_service_account_volume() {
        let p = pod();
        let mut src = Sources::default();
        src.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some([("ca.crt".to_owned(), b"CA".to_vec())].into()),
        );
        // no token yet: not ready
        assert!(matches!(
            files_of(&p, vol(&p, "kube-api-access-x"), &src, "h"),
            Some(Err(Error::NotYetKnown { .. }))
        ));
        src.tokens
            .insert(("kube-api-access-x".into(), "token".into()), "jwt".into());
        let files = files_of(&p, vol(&p, "kube-api-access-x"), &src, "h")
            .unwrap()
            .unwrap();
        let names: Vec<(&str, &[u8], u32, bool)> = files
            .iter()
            .map(|f| (f.path.as_str(), f.data.as_slice(), f.mode, f.token))
            .collect();
        assert_eq!(
            names,
            [
                ("token", &b"jwt"[..], 0o644, true),
                ("ca.crt", b"CA", 0o644, false),
                ("namespace", b"ns", 0o644, false)
            ]
        );
        assert_eq!(
            token_requests(&p),
            [("kube-api-access-x".to_owned(), "token".to_owned(), None, 3607)]
        );
    }

    #[test]
    fn config_map_modes_and_optional_secrets() {
        let p = pod();
        let mut src = Sources::default();
        assert!(matches!(
            files_of(&p, vol(&p, "cfg"), &src, "h"),
            Some(Err(Error::NotYetKnown { .. }))
        ));
        src.config_maps.insert("cm".into(), None);
        assert!(matches!(
            files_of(&p, vol(&p, "cfg"), &src, "h"),
            Some(Err(Error::Missing { .. }))
        ));
        src.config_maps
            .insert("cm".into(), Some([("k".to_owned(), b"v".to_vec())].into()));
        let f = files_of(&p, vol(&p, "cfg"), &src, "h").unwrap().unwrap();
        assert_eq!(
            f,
            [File {
                path: "k".into(),
                data: b"v".to_vec(),
                mode: 0o400,
                token: false
            }]
        );
        src.secrets.insert("nope".into(), None);
        assert_eq!(files_of(&p, vol(&p, "opt"), &src, "h").unwrap().unwrap(), []);
    }

    #[test]
    fn tokens_refresh_at_eighty_percent_or_daily() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            token_refresh_at(t0, t0 + Duration::from_secs(3600)),
            t0 + Duration::from_secs(2880)
        );
        assert_eq!(
            token_refresh_at(t0, t0 + Duration::from_secs(365 * 86400)),
            t0 + Duration::from_secs(86400)
        );
    }

    #[test]
    fn writes_atomically_and_removes_stale_files() {
        let dir = std::env::temp_dir().join(format!("vnest-runner-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = |p: &str, d: &str| File {
            path: p.into(),
            data: d.as_bytes().to_vec(),
            mode: 0o640,
            token: false,
        };
        assert!(write_files(&dir, &[f("a", "1"), f("b", "2")], Owner::default()).unwrap());
        assert!(!write_files(&dir, &[f("a", "1"), f("b", "2")], Owner::default()).unwrap());
        assert!(write_files(&dir, &[f("a", "3")], Owner::default()).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!dir.join("b").exists());
        assert_eq!(
            std::fs::metadata(dir.join("a")).unwrap().permissions().mode() & 0o777,
            0o640
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
