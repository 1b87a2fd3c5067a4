//! The only place that spawns podman. Every call is `podman --runtime <runc> --cgroup-manager
//! cgroupfs ...` (crun fails on this kernel's hybrid cgroups) and returns a typed error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

/// Labels the runner puts on every container it starts: enough to re-derive its state after a
/// restart of the runner.
pub mod labels {
    pub const NODE: &str = "dev.vnest.runner.node";
    pub const POD_UID: &str = "dev.vnest.runner.pod-uid";
    pub const POD_NAMESPACE: &str = "dev.vnest.runner.pod-namespace";
    pub const POD_NAME: &str = "dev.vnest.runner.pod-name";
    pub const CONTAINER: &str = "dev.vnest.runner.container";
    pub const RESTART: &str = "dev.vnest.runner.restart-count";
    /// "init" or "regular"
    pub const KIND: &str = "dev.vnest.runner.container-kind";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot spawn podman {verb}: {source}")]
    Spawn {
        verb: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("podman {verb} {target} failed (exit {code:?}): {stderr}")]
    Failed {
        verb: &'static str,
        target: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("podman {verb}: unreadable output: {source}")]
    Parse {
        verb: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("podman {verb} {target} timed out after {after:?}")]
    Timeout {
        verb: &'static str,
        target: String,
        after: Duration,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One container as `podman ps -a --format json` reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PsEntry {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(rename = "ImageID", default)]
    pub image_id: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// "created", "running", "exited", "stopping", ...
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub exit_code: i32,
    /// Unix seconds (0 when never)
    #[serde(default)]
    pub started_at: i64,
    #[serde(default)]
    pub exited_at: i64,
    #[serde(default)]
    pub created: i64,
}

impl PsEntry {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
    pub fn running(&self) -> bool {
        self.state == "running"
    }
    /// exited (podman reports "stopped" for a moment after some exits)
    pub fn exited(&self) -> bool {
        self.state == "exited" || self.state == "stopped"
    }
    pub fn restart_count(&self) -> u32 {
        self.label(labels::RESTART)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// Everything `podman run -d` is given for one container.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub args: Vec<String>,
    pub mounts: Vec<Mount>,
    /// "uid" or "uid:gid"
    pub user: Option<String>,
    pub group_add: Vec<i64>,
    pub read_only: bool,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub workdir: Option<String>,
    pub log_path: PathBuf,
    pub tty: bool,
    pub stdin: bool,
}

#[derive(Debug, Clone)]
pub struct Podman {
    pub binary: PathBuf,
    pub runtime: PathBuf,
    /// `--ulimit nofile=N:N` and `nproc=N:N`
    pub ulimit_nofile: u64,
    pub ulimit_nproc: u64,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--runtime")
            .arg(&self.runtime)
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn output(
        &self,
        verb: &'static str,
        target: &str,
        mut c: Command,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c.spawn().map_err(|source| Error::Spawn { verb, source })?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                verb,
                target: target.to_owned(),
                after: timeout,
            })?
            .map_err(|source| Error::Spawn { verb, source })?;
        if !out.status.success() {
            return Err(Error::Failed {
                verb,
                target: target.to_owned(),
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// Is `image` present locally (never pulls)? Returns its ID.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        let mut c = self.cmd();
        c.args(["image", "inspect", "--format", "{{.Id}}", image]);
        match self
            .output("image inspect", image, c, Duration::from_secs(30))
            .await
        {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out).trim().to_owned())),
            Err(Error::Failed { code: Some(125), .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All containers (any state) carrying every `label=value` filter.
    pub async fn ps(&self, filters: &[(&str, &str)]) -> Result<Vec<PsEntry>> {
        let mut c = self.cmd();
        c.args(["ps", "-a", "--format", "json"]);
        for (k, v) in filters {
            c.arg("--filter").arg(format!("label={k}={v}"));
        }
        let out = self.output("ps", "-a", c, Duration::from_secs(30)).await?;
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&out).map_err(|source| Error::Parse { verb: "ps", source })
    }

    /// `podman run -d`: returns the container ID.
    pub async fn run(&self, spec: &RunSpec) -> Result<String> {
        let mut c = self.cmd();
        c.args(["run", "-d", "--pull", "never", "--network", "host"]);
        c.arg("--name").arg(&spec.name);
        c.arg("--ulimit")
            .arg(format!("nofile={0}:{0}", self.ulimit_nofile))
            .arg("--ulimit")
            .arg(format!("nproc={0}:{0}", self.ulimit_nproc));
        c.args(["--log-driver", "k8s-file", "--log-opt"])
            .arg(format!("path={}", spec.log_path.display()));
        for (k, v) in &spec.labels {
            c.arg("--label").arg(format!("{k}={v}"));
        }
        for (k, v) in &spec.env {
            c.arg("--env").arg(format!("{k}={v}"));
        }
        for m in &spec.mounts {
            let ro = if m.read_only { ":ro" } else { "" };
            c.arg("--volume")
                .arg(format!("{}:{}{ro}", m.host.display(), m.container));
        }
        if let Some(u) = &spec.user {
            c.arg("--user").arg(u);
        }
        for g in &spec.group_add {
            c.arg("--group-add").arg(g.to_string());
        }
        if spec.read_only {
            c.arg("--read-only");
        }
        if spec.privileged {
            c.arg("--privileged");
        }
        if spec.no_new_privileges {
            c.args(["--security-opt", "no-new-privileges"]);
        }
        for cap in &spec.cap_add {
            c.arg("--cap-add").arg(cap);
        }
        for cap in &spec.cap_drop {
            c.arg("--cap-drop").arg(cap);
        }
        if let Some(w) = &spec.workdir {
            c.arg("--workdir").arg(w);
        }
        if spec.tty {
            c.arg("--tty");
        }
        if spec.stdin {
            c.arg("--interactive");
        }
        if let Some(ep) = &spec.entrypoint {
            // JSON form: each element one argv entry, no shell splitting.
            c.arg("--entrypoint")
                .arg(serde_json::Value::from(ep.clone()).to_string());
        }
        c.arg(&spec.image).args(&spec.args);
        let out = self
            .output("run", &spec.name, c, Duration::from_secs(120))
            .await?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// `podman stop -t <grace>`: SIGTERM (or the image's stop signal), SIGKILL after `grace`.
    pub async fn stop(&self, id: &str, grace: u64) -> Result<()> {
        let mut c = self.cmd();
        c.args(["stop", "--ignore", "-t"]).arg(grace.to_string()).arg(id);
        self.output("stop", id, c, Duration::from_secs(grace + 60))
            .await
            .map(drop)
    }

    /// `podman rm -f` (no error when it is already gone).
    pub async fn rm(&self, id: &str) -> Result<()> {
        let mut c = self.cmd();
        c.args(["rm", "-f", "--ignore", "-t", "0", id]);
        self.output("rm", id, c, Duration::from_secs(60)).await.map(drop)
    }

    /// `podman events` for container deaths, as JSON lines on the child's stdout.
    pub fn died_events(&self) -> Result<tokio::process::Child> {
        let mut c = self.cmd();
        c.args(["events", "--filter", "event=died", "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c.spawn().map_err(|source| Error::Spawn {
            verb: "events",
            source,
        })
    }

    /// `podman exec`: the exit code (within `timeout`) and the combined output.
    pub async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<(i32, String)> {
        let mut c = self.cmd();
        c.arg("exec").arg(id).args(argv);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = c
            .spawn()
            .map_err(|source| Error::Spawn { verb: "exec", source })?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                verb: "exec",
                target: id.to_owned(),
                after: timeout,
            })?
            .map_err(|source| Error::Spawn { verb: "exec", source })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }
}
