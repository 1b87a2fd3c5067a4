//! The virtual control plane of one more vcluster for a test of its own, started by
//! `hack/extra-vcluster.sh` beside the running world (its tools, its host cluster): one "k3s
//! server" over SQLite, or several over one PostgreSQL. Stopped when dropped; its logs stay
//! under the world's state dir (`make test` keeps that when a test fails).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{Env, Result};

pub struct ExtraVcluster {
    pub dir: PathBuf,
    /// `hack/extra-vcluster.sh`'s env file: `VC_KUBECONFIG_<n>`, `VC_DATA_DIR_<n>`,
    /// `VC_API_PORT_<n>`, `VC_DATASTORE_ENDPOINT`, `VC_LOG_DIR`.
    pub env: Env,
    state_dir: PathBuf,
    servers: u8,
    datastore: &'static str,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/extra-vcluster.sh")
}

impl ExtraVcluster {
    /// Starts `servers` API servers over `datastore` (`sqlite` for one, `postgres`).
    pub async fn up(world: &Env, prefix: &str, servers: u8, datastore: &'static str) -> Result<Self> {
        let state_dir = world.path("STATE_DIR")?;
        // Under the world's log dir: `make test` keeps that one when a test fails.
        let dir = world
            .path("LOG_DIR")?
            .join(format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff));
        std::fs::create_dir_all(&dir)?;
        let mut me = Self {
            dir,
            env: Env::parse(""),
            state_dir,
            servers,
            datastore,
        };
        me.run(&["up"]).await?;
        me.env = Env::parse(&std::fs::read_to_string(me.dir.join("env"))?);
        Ok(me)
    }

    /// SIGKILLs one part (`postgres`, `vc-<n>-apiserver`, ...).
    pub async fn kill(&self, part: &str) -> Result<()> {
        self.run(&["kill", part]).await
    }

    /// Starts a killed part again, as `up` did.
    pub async fn start(&self, part: &str) -> Result<()> {
        self.run(&["start", part]).await
    }

    async fn run(&self, args: &[&str]) -> Result<()> {
        let out = tokio::process::Command::new(script())
            .args(args)
            .arg(&self.dir)
            .env("STATE_DIR", &self.state_dir)
            .env("SERVERS", self.servers.to_string())
            .env("DATASTORE", self.datastore)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "hack/extra-vcluster.sh {} {} failed:\n{}",
            args.join(" "),
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for ExtraVcluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("down")
            .arg(&self.dir)
            .env("STATE_DIR", &self.state_dir)
            .env("KEEP_LOGS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
