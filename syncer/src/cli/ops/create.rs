//! `vnest create`: server-side apply of the rendered objects, then the wait for the pod.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::cli::config::VclusterConfig;
use crate::cli::{CliError, CreateArgs, render};

use super::*;

/// Server-side applies `objs` (field manager `vnest-cli`).
async fn apply(client: &Client, namespace: &str, objs: &[Value]) -> Result<(), CliError> {
    let mut apis = Apis::new(client.clone());
    let spinner = Spinner::start(format!("applying {} objects", objs.len()));
    for (i, o) in objs.iter().enumerate() {
        spinner.set(format!("applying {} ({}/{})", describe(o), i + 1, objs.len()));
        let (api, _) = apis.api(&gvk_of(o), namespace).await?;
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Err(e) = api
            .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(o))
            .await
        {
            spinner.fail();
            return Err(CliError::kube("apply", describe(o), e));
        }
    }
    spinner.done(format!(
        "applied {} objects (server-side, field manager {FIELD_MANAGER})",
        objs.len()
    ));
    Ok(())
}

async fn ensure_namespace(client: &Client, namespace: &str) -> Result<(), CliError> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))
                .expect("a valid Namespace");
            api.create(&PostParams::default(), &ns)
                .await
                .map_err(|e| CliError::kube("create", format!("namespace {namespace:?}"), e))?;
            eprintln!("✓ created namespace {namespace:?}");
            Ok(())
        }
        // May not read namespaces: fine when it exists (the applies will say if not).
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(e) => Err(CliError::kube("get", format!("namespace {namespace:?}"), e)),
    }
}

async fn wait_pod_ready(
    client: &Client,
    name: &str,
    namespace: &str,
    timeout: Duration,
) -> Result<(), CliError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = format!("{name}-0");
    let what = format!("pod {pod} Ready");
    let spinner = Spinner::start(format!("waiting for {what}"));
    let r = wait_for(&spinner, &what, timeout, || async {
        let p = pods
            .get_opt(&pod)
            .await
            .map_err(|e| CliError::kube("get", format!("pod {pod:?}"), e))?;
        let Some(p) = p else {
            return Ok(Err("not created yet".to_owned()));
        };
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(if ready {
            Ok(())
        } else {
            Err(format!(
                "phase {}",
                status.phase.unwrap_or_else(|| "unknown".to_owned())
            ))
        })
    })
    .await;
    match r {
        Ok(()) => {
            spinner.done(format!("pod {pod} is Ready"));
            Ok(())
        }
        Err(e) => {
            spinner.fail();
            Err(e)
        }
    }
}

pub async fn create(args: &CreateArgs) -> Result<(), CliError> {
    let config = args.config.resolve(Some(args.name.clone()))?;
    let objs = render::render(&config)?;
    let (client, _) = host_client(&args.host).await?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &config.namespace);
    match sts.get_opt(&config.name).await {
        Ok(Some(_)) => {
            return Err(CliError::Exists {
                name: config.name.clone(),
                namespace: config.namespace.clone(),
            });
        }
        Ok(None) => {}
        Err(e) => {
            return Err(CliError::kube(
                "get",
                format!(
                    "StatefulSet {:?} in namespace {:?}",
                    config.name, config.namespace
                ),
                e,
            ));
        }
    }
    if config.overlay.external_datastore || config.overlay.ha {
        check_datastore_secret(&client, &config).await?;
    }
    ensure_namespace(&client, &config.namespace).await?;
    apply(&client, &config.namespace, &objs).await?;
    wait_pod_ready(&client, &config.name, &config.namespace, args.timeout).await?;
    if args.no_connect {
        eprintln!(
            "vcluster {:?} created in namespace {:?}; connect with: vnest connect {} -n {}",
            config.name, config.namespace, config.name, config.namespace
        );
        return Ok(());
    }
    connect_with(&client, &config, &args.connect, args.timeout).await
}

/// The datastore Secret must exist before k3s starts (the pods would wait on it with no word):
/// refuse early, saying how to make it. Its keys are not read (the values are secret).
async fn check_datastore_secret(client: &Client, config: &VclusterConfig) -> Result<(), CliError> {
    let secret = format!("{}-datastore", config.name);
    let api: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    match api.get_metadata_opt(&secret).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(CliError::NoDatastoreSecret {
            secret,
            namespace: config.namespace.clone(),
        }),
        // A namespace that does not exist yet has no Secret either.
        Err(kube::Error::Api(status)) if status.code == 404 => Err(CliError::NoDatastoreSecret {
            secret,
            namespace: config.namespace.clone(),
        }),
        Err(e) => Err(CliError::kube(
            "get",
            format!("Secret {secret:?} in namespace {:?}", config.namespace),
            e,
        )),
    }
}
