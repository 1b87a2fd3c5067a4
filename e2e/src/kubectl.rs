//! kubectl as a tenant runs it: the e2e world's kubectl against one kubeconfig, in one
//! namespace, every run under a deadline (a stream that never ends fails the test, it does not
//! hang it).

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::Result;

/// kubectl with `--kubeconfig kubeconfig -n ns`; each run ends within `wait`.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub ns: String,
    pub wait: Duration,
}

impl Kubectl {
    /// The command, not started (killed when dropped).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", &self.ns])
            .args(args)
            .kill_on_drop(true);
        c
    }

    /// Runs with no stdin; its output whatever the exit code.
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(tokio::time::timeout(self.wait, self.command(args).stdin(Stdio::null()).output()).await??)
    }

    /// Runs and requires success; its stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs with a terminal as its stdin (`script`): kubectl asks for a TTY (`exec -t`) only
    /// when its stdin is one. Arguments go through `script -c`'s shell: quote them for it.
    pub async fn in_terminal(&self, args: &str) -> Result<Output> {
        let line = format!(
            "{} --kubeconfig {} -n {} {args}",
            self.bin.display(),
            self.kubeconfig.display(),
            self.ns
        );
        Ok(tokio::time::timeout(
            self.wait,
            tokio::process::Command::new("script")
                .args(["-qec", &line, "/dev/null"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await??)
    }

    /// Runs with `input` on stdin, closed at its end; the whole run within `wait`.
    pub async fn with_stdin(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            stdin.write_all(&input).await?;
            stdin.shutdown().await
        });
        let wait = self.wait;
        let out = tokio::time::timeout(wait, child.wait_with_output())
            .await
            .map_err(|_| {
                anyhow::anyhow!("kubectl {args:?} did not end within {wait:?} (stdin's end not passed on?)")
            })??;
        writer.await??;
        Ok(out)
    }
}
