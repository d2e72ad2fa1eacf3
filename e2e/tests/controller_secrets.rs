//! The controller re-reconciles a PackageSource when a Secret or ConfigMap it references is
//! created or changes — no `requestedAt` annotation, and long before the backoff or interval
//! would have retried it:
//!
//! - a `bundle.secretRef` naming a Secret that does not exist is ReferenceNotFound; creating
//!   the Secret makes the source Ready;
//! - an inline `pathsFrom.configMapRef` naming a missing ConfigMap likewise; changing the
//!   ConfigMap's data then produces a new bundle digest.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};

use crate::support::{apply_yaml, bed, namespace};
use crate::tests::controller::{Running, bundle_image, has, inline_source, wait_for};

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "controller_secrets::referenced_objects_retrigger",
        || crate::support::block_on(referenced_objects_retrigger()),
    )]
}

/// Retries after a failure come at 0.75, 2.25, 5.25, 11.25 then 23.25 s: waiting this long
/// after the first failure leaves a gap of more than 10 s in which only a watch event can
/// start a reconcile.
const QUIET: Duration = Duration::from_secs(12);
/// How soon after the Secret/ConfigMap change the source must be Ready.
const PROMPT: Duration = Duration::from_secs(9);

async fn referenced_objects_retrigger() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-refs").await?;
    let reg = bed().registry.clone();
    let controller = Running::start(&ns).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);

    // The CA exists; the push credentials do not, yet.
    let ca = std::fs::read_to_string(&bed().registry_tls_ca)?;
    let indented = ca
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: registry-ca}}\nstringData:\n  ca.crt: |\n{indented}\n"
        ),
    )
    .await?;
    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "pushcreds",
            &ns,
            &format!("{}/ctl/{ns}/pushcreds", bed().registry_tls),
            "    secretRef: {name: push-creds}\n    caSecretRef: {name: registry-ca}\n  interval: 1h\n",
        ),
    )
    .await?;
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: values
spec:
  package: {{refName: values.ctl.example.com, version: 0.1.0}}
  contents:
  - path: config/values
    contents:
    - path: .
      inline:
        pathsFrom:
        - configMapRef: {{name: app-values}}
  bundle: {{repository: "{reg}/ctl/{ns}/values", insecure: true}}
  # New values under one version: Overwrite, as the bed cannot name revisions (see
  # controller::publishes_follows_upstream_and_cleans_up).
  publish: {{versionPolicy: Overwrite}}
  interval: 1h
"#
        ),
    )
    .await?;

    let not_found = |o: &PackageSource| has(o, types::READY, "False", reasons::REFERENCE_NOT_FOUND);
    wait_for(
        &api,
        "pushcreds",
        Duration::from_secs(60),
        "ReferenceNotFound",
        not_found,
    )
    .await?;
    wait_for(
        &api,
        "values",
        Duration::from_secs(60),
        "ReferenceNotFound",
        not_found,
    )
    .await?;
    tokio::time::sleep(QUIET).await;

    let docker_config = serde_json::json!({"auths": {bed().registry_tls.clone(): {
        "username": bed().registry_user, "password": bed().registry_password}}});
    let created = Instant::now();
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: push-creds}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{docker_config}'\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-values}}\ndata:\n  values.yaml: \"replicas: 1\\n\"\n"
        ),
    )
    .await?;
    let ready = |o: &PackageSource| has(o, types::READY, "True", reasons::SUCCEEDED);
    wait_for(
        &api,
        "pushcreds",
        PROMPT,
        "Ready after its Secret was created",
        ready,
    )
    .await?;
    let values = wait_for(
        &api,
        "values",
        PROMPT,
        "Ready after its ConfigMap was created",
        ready,
    )
    .await?;
    let took = created.elapsed();

    // A change of the ConfigMap's data is a new bundle.
    let first = bundle_image(&values);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps
        .patch(
            "app-values",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"values.yaml": "replicas: 3\n"}})),
        )
        .await?;
    wait_for(
        &api,
        "values",
        PROMPT,
        "republished after its ConfigMap changed",
        |o| ready(o) && bundle_image(o) != first && !bundle_image(o).is_empty(),
    )
    .await?;
    eprintln!("controller_secrets: Ready {took:?} after the Secret and ConfigMap were created");
    controller.stop().await
}
