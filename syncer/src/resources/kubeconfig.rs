//! Kubeconfig export: the syncer keeps a Secret (`vc-<vcluster>` by default) in the host
//! namespace holding an admin kubeconfig of the virtual cluster whose server is the vcluster
//! Service as seen from inside the host cluster (`https://<service>.<namespace>:443`), with the
//! credentials also as separate keys (`certificate-authority`, `client-certificate`,
//! `client-key`), as vcluster users know it. It is owned by the vcluster's anchor (deleted
//! with it), rewritten when the certificates in the data dir change, and recreated when
//! deleted out of band.
//!
//! The credentials are the k3s data dir's (`server/tls/server-ca.crt`, `client-admin.crt`,
//! `client-admin.key`): whoever may read Secrets in the host namespace administers the
//! virtual cluster, as with vcluster. Nothing here logs their content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use crate::engine::TranslateCtx;
use crate::engine::error::{SyncError, TranslateError};
use crate::engine::execute::{Action, Executor, Ownership, Target, Write};
use crate::engine::plan::{PatchKind, Plan};
use crate::engine::queue::Key;
use crate::engine::registry::Registry;
use crate::engine::standard;
use crate::engine::watch::Change;
use crate::engine::worker::{Outcome, Reconciler};
use crate::markers;
use crate::resources::secrets::Secrets;

/// `object-kind` marker of the export Secret (it is no copy of a virtual object).
pub const KIND: &str = "KubeconfigExport";

/// How often the data dir's certificate files are looked at (a local `stat`, no API request).
const CHECK_FILES_EVERY: Duration = Duration::from_secs(30);

/// Flags of the kubeconfig export.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeconfigArgs {
    /// Keep a Secret with the virtual cluster's admin kubeconfig in the host namespace.
    #[arg(
        long,
        env = "VNEST_EXPORT_KUBECONFIG",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub export_kubeconfig: bool,

    /// Name of that Secret [default: vc-<name>].
    #[arg(long, env = "VNEST_EXPORT_SECRET_NAME", value_parser = crate::naming::parse_dns_label)]
    pub export_secret_name: Option<String>,

    /// Server URL written into the exported kubeconfig [default:
    /// https://<service>.<host namespace>:443, the vcluster Service inside the host cluster].
    #[arg(long, env = "VNEST_EXPORT_SERVER")]
    pub export_server: Option<String>,

    /// Context (and cluster and user) name in the exported kubeconfig [default: <name>].
    #[arg(long, env = "VNEST_EXPORT_CONTEXT")]
    pub export_context: Option<String>,
}

/// The three credentials, as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub certificate_authority: String,
    pub client_certificate: String,
    pub client_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }") // never the key
    }
}

/// Where the export goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub secret_name: String,
    pub server: String,
    pub context: String,
}

impl Export {
    /// The export of vcluster `vcluster` whose host Service is `service` in `host_namespace`.
    pub fn from_args(args: &KubeconfigArgs, vcluster: &str, service: &str, host_namespace: &str) -> Self {
        Self {
            secret_name: args
                .export_secret_name
                .clone()
                .unwrap_or_else(|| format!("vc-{vcluster}")),
            server: args
                .export_server
                .clone()
                .unwrap_or_else(|| format!("https://{service}.{host_namespace}:443")),
            context: args.export_context.clone().unwrap_or_else(|| vcluster.to_owned()),
        }
    }
}

/// The kubeconfig text (certificates embedded, base64 as kubeconfigs carry them).
pub fn kubeconfig(export: &Export, c: &Credentials) -> String {
    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let name = &export.context;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        server = export.server,
        ca = encode(c.certificate_authority.as_bytes()),
        cert = encode(c.client_certificate.as_bytes()),
        key = encode(c.client_key.as_bytes()),
    )
}

/// The Secret's data.
fn secret_data(export: &Export, c: &Credentials) -> BTreeMap<String, ByteString> {
    [
        ("config", kubeconfig(export, c)),
        ("certificate-authority", c.certificate_authority.clone()),
        ("client-certificate", c.client_certificate.clone()),
        ("client-key", c.client_key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect()
}

/// The export Secret as it should be: ours (managed-by label, kind marker), owned by the
/// vcluster's anchor.
pub fn desired_secret(tc: &TranslateCtx, export: &Export, c: &Credentials) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(export.secret_name.clone()),
            namespace: Some(tc.host_namespace.clone()),
            labels: Some(
                [(
                    markers::LABEL_MANAGED_BY.to_owned(),
                    crate::naming::safe_label_value(&tc.vcluster),
                )]
                .into(),
            ),
            annotations: Some([(markers::ANNOTATION_OBJECT_KIND.to_owned(), KIND.to_owned())].into()),
            owner_references: Some(vec![tc.owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(secret_data(export, c)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Whether `s` is our export Secret (a foreign Secret of that name is never touched).
fn is_ours(tc: &TranslateCtx, s: &Secret) -> bool {
    let labels = s.metadata.labels.as_ref();
    let annotations = s.metadata.annotations.as_ref();
    labels.and_then(|l| l.get(markers::LABEL_MANAGED_BY))
        == Some(&crate::naming::safe_label_value(&tc.vcluster))
        && annotations
            .and_then(|a| a.get(markers::ANNOTATION_OBJECT_KIND))
            .map(String::as_str)
            == Some(KIND)
}

/// The plan: create the Secret, patch its data when the credentials or the export changed,
/// or nothing.
pub fn plan(
    tc: &TranslateCtx,
    export: &Export,
    credentials: &Credentials,
    current: Option<&Secret>,
    create_pending: bool,
) -> Result<Plan, SyncError> {
    let target = Target::host::<Secret>(tc, &export.secret_name);
    let desired = desired_secret(tc, export, credentials);
    let Some(current) = current else {
        if create_pending {
            return Ok(Plan::wait(crate::engine::RECHECK));
        }
        return Ok(Plan::one(
            Action::create(target, &desired, Ownership::ManagedBy, "kubeconfig export")
                .counted_as("kubeconfig"),
        ));
    };
    if !is_ours(tc, current) {
        return Err(SyncError::Foreign {
            kind: "Secret",
            host_name: export.secret_name.clone(),
        });
    }
    if current.data == desired.data {
        return Ok(Plan::noop());
    }
    let data: BTreeMap<String, Value> = desired
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    let body = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "data": data,
    });
    Ok(Plan::one(
        Action::new(
            target,
            Write::patch(PatchKind::Merge, body),
            "kubeconfig credentials changed",
        )
        .counted_as("kubeconfig"),
    ))
}

/// The data dir's certificate files.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    pub certificate_authority: PathBuf,
    pub client_certificate: PathBuf,
    pub client_key: PathBuf,
}

impl CredentialFiles {
    /// The k3s data dir layout.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let tls = data_dir.join("server/tls");
        Self {
            certificate_authority: tls.join("server-ca.crt"),
            client_certificate: tls.join("client-admin.crt"),
            client_key: tls.join("client-admin.key"),
        }
    }

    fn read(&self) -> Result<Credentials, SyncError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                SyncError::Translate(TranslateError::NotReady(format!(
                    "the virtual cluster's credentials in {}: {e}",
                    p.display()
                )))
            })
        };
        Ok(Credentials {
            certificate_authority: read(&self.certificate_authority)?,
            client_certificate: read(&self.client_certificate)?,
            client_key: read(&self.client_key)?,
        })
    }

    /// When the files last changed (None: one is missing).
    fn modified(&self) -> Option<[SystemTime; 3]> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some([
            m(&self.certificate_authority)?,
            m(&self.client_certificate)?,
            m(&self.client_key)?,
        ])
    }
}

/// The one-key reconciler of the export.
pub struct KubeconfigExport {
    executor: Executor,
    export: Export,
    files: CredentialFiles,
    host_secrets: Store<Secret>,
}

/// The key of the export (one object).
fn export_key() -> Key {
    Key::new("", "kubeconfig")
}

impl Reconciler for KubeconfigExport {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }

    async fn reconcile(&self, _key: &Key) -> Result<Outcome, SyncError> {
        let tc = self.executor.shared().translate_ctx()?;
        let credentials = self.files.read()?;
        let current = self
            .host_secrets
            .get(&ObjectRef::new(&self.export.secret_name).within(&tc.host_namespace));
        if current.is_some() {
            self.executor.observed(&self.export.secret_name);
        }
        let pending = self.executor.create_pending(&self.export.secret_name);
        let plan = plan(&tc, &self.export, &credentials, current.as_deref(), pending)?;
        self.executor.run_all(&plan.actions).await?;
        Ok(Outcome {
            requeue_after: plan.requeue_after,
        })
    }

    fn tenant_object(&self, _key: &Key) -> Option<ObjectReference> {
        None // an operator's object: its problems are logged
    }
}

/// Declares the export: the host Secrets cache (ours, label-selected) wakes it when its Secret
/// changes or goes; a local check of the certificate files wakes it when they change.
pub fn register(reg: &mut Registry, export: Export, files: CredentialFiles) {
    let host_secrets_watch = standard::host_watch::<Secrets>();
    let queue = reg.queue("kubeconfig");
    let q = queue.clone();
    let name = export.secret_name.clone();
    reg.on(&host_secrets_watch, move |c| match c {
        Change::Applied(s) | Change::Deleted(s) => {
            if s.metadata.name.as_deref() == Some(name.as_str()) {
                q.add(export_key());
            }
        }
        Change::Relisted(_) => q.add(export_key()),
    });
    let (q, watched, cancel) = (queue, files.clone(), reg.shared().cancel.clone());
    reg.task("kubeconfig files", async move {
        let mut last = watched.modified();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(CHECK_FILES_EVERY) => {}
            }
            let now = watched.modified();
            if now != last {
                last = now;
                q.add(export_key());
            }
        }
    });
    let sync = KubeconfigExport {
        executor: Executor::new(reg.shared().clone()),
        export,
        files,
        host_secrets: reg.store(&host_secrets_watch),
    };
    reg.workers(Arc::new(sync), 1);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            certificate_authority: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
            client_certificate: "CERT".into(),
            client_key: "KEY".into(),
        }
    }

    fn export() -> Export {
        let args = KubeconfigArgs {
            export_kubeconfig: true,
            export_secret_name: None,
            export_server: None,
            export_context: None,
        };
        Export::from_args(&args, "vc", "vc", "team-a")
    }

    #[test]
    fn defaults_follow_the_vcluster_name_and_service() {
        let e = export();
        assert_eq!(e.secret_name, "vc-vc");
        assert_eq!(e.server, "https://vc.team-a:443");
        assert_eq!(e.context, "vc");
    }

    #[test]
    fn the_kubeconfig_names_the_server_and_embeds_the_credentials() {
        let text = kubeconfig(&export(), &creds());
        let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://vc.team-a:443"
        );
        assert_eq!(parsed["current-context"], "vc");
        assert_eq!(parsed["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(
            format!("{:?}", creds()),
            "Credentials { .. }",
            "debug output never shows the key"
        );
    }

    #[test]
    fn the_export_is_created_then_kept_and_patched_when_credentials_change() {
        let tc = TranslateCtx::test();
        let (e, c) = (export(), creds());
        let create = plan(&tc, &e, &c, None, false).unwrap();
        assert_eq!(create.ops(), ["create"]);
        let Write::Create { body, .. } = &create.actions[0].write else {
            panic!()
        };
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "owner-uid");
        assert_eq!(create.actions[0].counted_as, "kubeconfig");
        assert_eq!(
            plan(&tc, &e, &c, None, true).unwrap(),
            Plan::wait(crate::engine::RECHECK)
        );

        let mut current = desired_secret(&tc, &e, &c);
        current.metadata.resource_version = Some("5".into());
        assert_eq!(
            plan(&tc, &e, &c, Some(&current), false).unwrap(),
            Plan::noop(),
            "a resync writes nothing"
        );

        let rotated = Credentials {
            client_certificate: "CERT2".into(),
            ..creds()
        };
        let patch = plan(&tc, &e, &rotated, Some(&current), false).unwrap();
        assert_eq!(patch.ops(), ["patch"]);
        let Write::Patch { patch, .. } = &patch.actions[0].write else {
            panic!()
        };
        assert_eq!(patch.body["metadata"]["resourceVersion"], "5");
        assert_eq!(patch.body["data"]["client-certificate"], "Q0VSVDI=");
    }

    #[test]
    fn a_foreign_secret_of_that_name_is_left_alone() {
        let tc = TranslateCtx::test();
        let mut foreign = desired_secret(&tc, &export(), &creds());
        foreign.metadata.labels = None;
        let err = plan(&tc, &export(), &creds(), Some(&foreign), false).unwrap_err();
        assert_eq!(err.category(), "foreign");
    }
}
