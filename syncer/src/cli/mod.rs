//! The `vnest` CLI: create, connect to, list and delete vclusters on a host cluster, with
//! kube-rs only (no kubectl), and render/schema for what it would apply.
//!
//! - [`config`]: the one typed configuration (`-f`, `--set`), its schema and checks.
//! - [`kustomize`] + [`embedded`]: the kustomize subset over the embedded `manifests/`.
//! - [`render`]: config -> host objects.
//! - [`ops`]: the commands against the host API (server-side apply, port-forward, waits).
//!
//! Errors are typed ([`CliError`]); the binary prints them as one line and exits non-zero.

pub mod config;
pub mod embedded;
pub mod kustomize;
pub mod ops;
pub mod render;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::duration::parse_duration;

/// How to reach the host cluster (kubectl's defaults: `$KUBECONFIG`, `~/.kube/config`).
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Kubeconfig of the host cluster [default: $KUBECONFIG, ~/.kube/config, in-cluster].
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Context of that kubeconfig [default: its current context].
    #[arg(long, global = true)]
    pub context: Option<String>,
}

/// What a vcluster is made of: `-f`, `--set`, `--overlay`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Host namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Optional parts: `isolated`, `real-nodes`, `host-storageclasses`, `real-volumes`
    /// (repeatable; `default` adds nothing).
    #[arg(long, value_name = "OVERLAY")]
    pub overlay: Vec<String>,
    /// A configuration key (dotted path, see `vnest schema`), e.g. `--set sync.networkpolicies=true`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A configuration file (YAML or JSON; `--set` and the flags override it).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn resolve(&self, name: Option<String>) -> Result<config::VclusterConfig, CliError> {
        let file = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| config::ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        Ok(config::ConfigInputs {
            file,
            sets: self.set.clone(),
            name,
            namespace: self.namespace.clone(),
            overlays: self.overlay.clone(),
        }
        .resolve()?)
    }
}

/// `vnest create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the vcluster (a DNS label).
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Apply and wait for the vcluster pod to be Ready, but do not connect.
    #[arg(long)]
    pub no_connect: bool,
    /// Longest wait for the vcluster to come up.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub connect: ConnectOutput,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Where `connect` puts the kubeconfig.
#[derive(Debug, Clone, Args)]
pub struct ConnectOutput {
    /// Print the kubeconfig on stdout instead of writing a file.
    #[arg(long)]
    pub print: bool,
    /// Server URL to put in the kubeconfig instead of a local port-forward.
    #[arg(long)]
    pub server: Option<String>,
    /// Kubeconfig file to write or merge the context into [default: ./kubeconfig-NAME.yaml].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig_out: Option<PathBuf>,
}

/// `vnest connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Name of the vcluster.
    pub name: String,
    /// Host namespace.
    #[arg(short = 'n', long)]
    pub namespace: String,
    #[command(flatten)]
    pub output: ConnectOutput,
    /// Longest wait for the export Secret and the virtual API server.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `vnest list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Host namespace [default: the kubeconfig context's namespace].
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `vnest delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Name of the vcluster.
    pub name: String,
    /// Host namespace.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// Go on after an object cannot be deleted or a kind cannot be listed; report them at the end.
    #[arg(long)]
    pub keep_going: bool,
    /// Longest wait for every object of the vcluster to be gone.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `vnest render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Name of the vcluster.
    pub name: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the kustomize overlay equivalent to the configuration (kustomization.yaml, then
    /// name.yaml) instead of the objects; knobs without a component are not in it.
    #[arg(long)]
    pub kustomization: bool,
    /// Render a directory of the embedded manifests instead (e.g. `overlays/isolated`).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["name", "kustomization"])]
    pub embedded: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("rendering the manifests: {0}")]
    Render(#[from] kustomize::KustomizeError),
    #[error("no access: {message}")]
    Forbidden { message: String },
    #[error("vcluster {name:?} already exists in namespace {namespace:?}")]
    Exists { name: String, namespace: String },
    #[error("vcluster {name:?} not found in namespace {namespace:?}; vclusters there: {existing}")]
    NotFound {
        name: String,
        namespace: String,
        existing: String,
    },
    #[error("timed out after {after:?} waiting for {what}{detail}")]
    Timeout {
        what: String,
        after: Duration,
        detail: String,
    },
    #[error("{verb} {what}: {source}")]
    Kube {
        verb: &'static str,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the external datastore needs Secret {secret:?} in namespace {namespace:?} (keys `endpoint` and `token`) before the vcluster starts; create it, e.g.\n  kubectl -n {namespace} create secret generic {secret} --from-literal=endpoint='postgres://USER:PASSWORD@HOST:5432/DB' --from-literal=token=\"$(head -c 32 /dev/urandom | base64)\""
    )]
    NoDatastoreSecret { secret: String, namespace: String },
    #[error("host cluster access: {0}")]
    Client(String),
    #[error("{what}: {reason}")]
    Other { what: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// A kube error, with 403 turned into [`CliError::Forbidden`] (one clear line).
    pub fn kube(verb: &'static str, what: impl Into<String>, source: kube::Error) -> Self {
        let what = what.into();
        if let kube::Error::Api(ref status) = source
            && status.code == 403
        {
            return CliError::Forbidden {
                message: format!("cannot {verb} {what}: {}", status.message),
            };
        }
        CliError::Kube { verb, what, source }
    }
}

/// `vnest schema`: the configuration's JSON schema.
pub fn print_schema() {
    print!("{}", config::schema_text());
}

/// `vnest render`: prints the objects (or the overlay) for a configuration.
pub fn run_render(args: &RenderArgs) -> Result<(), CliError> {
    if let Some(dir) = &args.embedded {
        print!("{}", render::to_yaml(&render::render_embedded(dir)?));
        return Ok(());
    }
    let config = args.config.resolve(args.name.clone())?;
    if args.kustomization {
        for (file, text) in render::overlay_files(&config) {
            println!("# {file}\n{text}---");
        }
        return Ok(());
    }
    print!("{}", render::to_yaml(&render::render(&config)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_is_one_clear_line() {
        let e = CliError::kube(
            "list",
            "statefulsets in namespace \"x\"",
            kube::Error::Api(
                kube::core::Status::failure(
                    "statefulsets.apps is forbidden: User \"u\" cannot list",
                    "Forbidden",
                )
                .with_code(403)
                .boxed(),
            ),
        );
        let text = e.to_string();
        assert!(text.starts_with("no access: cannot list statefulsets"), "{text}");
        assert!(!text.contains('\n'));
    }
}
