//! Two tenants on one cluster: what one team's sources can and cannot do to another's.
//!
//! Each tenant namespace gets its own in-process controller (scoped to it, so parallel trials
//! never reconcile each other's objects); the ownership rules are per object, so they hold
//! the same for one shared controller.
//!
//! - B's source naming A's `refName.version` with `publish.namespace: A` is refused
//!   (`PublishNamespaceNotAllowed`) until the operator lists A; then it is an
//!   `OwnershipConflict` naming A's source, A's Package keeps A's bundle and A stays Ready;
//!   deleting B's source leaves A's Package in place;
//! - a second source in A with the same `refName.version` conflicts the same way;
//! - a Package an earlier release labelled as a source's (no owner annotation) is adopted;
//! - `inline.pathsFrom.secretRef` needs the Secret's opt-in label;
//! - a published Package that is deleted or edited, or its PackageMetadata deleted, is
//!   restored within seconds (the controller watches them), though the interval is an hour;
//! - so is a PackageRepositorySource's PackageRepository, and a release record (the ConfigMap
//!   a source selected by a repository records its release in);
//! - under `--deny-local-upstreams`, upstreams at loopback are refused (`UpstreamDenied`),
//!   by address literal and by a name that resolves there, for git, HTTP and the bundle's
//!   registry; a policy that does not match changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource as _, ResourceExt};
use libtest_mimic::Trial;
use packsmith::api::conditions::{reasons, types};
use packsmith::api::{PackageRepositorySource, PackageSource};
use packsmith::carvel::{Package, PackageRepository};

use super::controller::{Running, describe, fetched_image, has, metric, wait_for};
use crate::support::{self, apply_yaml, bed, namespace};

const OWNER: &str = "packsmith.dev/owner";
const WAIT: Duration = Duration::from_secs(60);

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "tenancy::another_namespace_cannot_take_or_remove_a_package",
            || support::block_on(cross_namespace()),
        ),
        Trial::test(
            "tenancy::labels_only_packages_are_adopted_and_inline_secrets_opt_in",
            || support::block_on(adoption_and_inline_secrets()),
        ),
        Trial::test("tenancy::deleted_or_edited_packages_are_restored", || {
            support::block_on(drift())
        }),
        Trial::test(
            "tenancy::deleted_or_edited_package_repositories_are_restored",
            || support::block_on(repository_drift()),
        ),
        Trial::test(
            "tenancy::deleted_or_edited_release_records_are_restored",
            || support::block_on(record_drift()),
        ),
        Trial::test("tenancy::upstreams_at_denied_addresses_are_refused", || {
            support::block_on(egress())
        }),
        Trial::test(
            "tenancy::objects_forged_in_another_namespace_run_nobody",
            || support::block_on(forged_owners()),
        ),
    ]
}

/// A PackageSource of inline content publishing `ref_name` 1.0.0; `extra` is appended to spec.
fn source(name: &str, ns: &str, ref_name: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
  namespace: {ns}
spec:
  package: {{refName: {ref_name}, version: 1.0.0}}
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          app.yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"
  bundle: {{repository: "{reg}/tenancy/{ns}/{name}", insecure: true}}
  interval: 2s
{extra}"#,
        reg = bed().registry
    )
}

fn ready(o: &PackageSource) -> bool {
    has(o, types::READY, "True", reasons::SUCCEEDED)
}

async fn cross_namespace() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let team_a = namespace(&client, "tenant-a").await?;
    let team_b = namespace(&client, "tenant-b").await?;
    let ref_name = "shared.tenancy.example.com";
    let package_name = format!("{ref_name}.1.0.0");
    let _a = Running::start(&team_a).await?;
    let mut b = Running::start(&team_b).await?;
    let sources_a: Api<PackageSource> = Api::namespaced(client.clone(), &team_a);
    let sources_b: Api<PackageSource> = Api::namespaced(client.clone(), &team_b);
    let packages_a: Api<Package> = Api::namespaced(client.clone(), &team_a);

    apply_yaml(&client, &team_a, &source("app", &team_a, ref_name, "")).await?;
    let a = wait_for(&sources_a, "app", WAIT, "Ready", ready).await?;
    let a_bundle = super::controller::bundle_image(&a);
    let package = packages_a.get(&package_name).await?;
    ensure!(
        package
            .annotations()
            .get(OWNER)
            .is_some_and(|o| o.starts_with(&format!("PackageSource/{team_a}/app/"))),
        "A's Package carries A's owner annotation: {:?}",
        package.annotations()
    );

    // B aims at A's namespace: refused until the operator lists it.
    let into_a = format!("  publish: {{namespace: {team_a}}}\n");
    apply_yaml(&client, &team_b, &source("app", &team_b, ref_name, &into_a)).await?;
    let refused = wait_for(&sources_b, "app", WAIT, "refused", |o| {
        has(
            o,
            types::READY,
            "False",
            reasons::PUBLISH_NAMESPACE_NOT_ALLOWED,
        ) && has(
            o,
            types::STALLED,
            "True",
            reasons::PUBLISH_NAMESPACE_NOT_ALLOWED,
        )
    })
    .await?;
    ensure!(
        describe(&refused).contains("--allowed-publish-namespaces"),
        "the message names the flag: {}",
        describe(&refused)
    );

    // Listed: now it is A's Package that stops B, by name, and nothing of A's changes.
    drop(b);
    let allowed = team_a.clone();
    b = Running::start_with(&team_b, move |o| {
        o.allowed_publish_namespaces = vec![allowed];
    })
    .await?;
    let conflict = wait_for(&sources_b, "app", WAIT, "OwnershipConflict", |o| {
        has(o, types::READY, "False", reasons::OWNERSHIP_CONFLICT)
    })
    .await?;
    ensure!(
        describe(&conflict).contains(&format!("PackageSource {team_a}/app")),
        "the conflict names the owner: {}",
        describe(&conflict)
    );
    ensure!(
        !has(
            &conflict,
            types::STALLED,
            "True",
            reasons::OWNERSHIP_CONFLICT
        ),
        "an ownership conflict is retried, not Stalled"
    );
    let package = packages_a.get(&package_name).await?;
    ensure!(
        fetched_image(&package).as_deref() == Some(a_bundle.as_str()),
        "A's Package now fetches {:?}, not A's bundle {a_bundle}",
        fetched_image(&package)
    );
    ensure!(ready(&sources_a.get("app").await?), "A stays Ready");

    // B goes away: its finalizer must not take A's Package with it.
    sources_b.delete("app", &DeleteParams::default()).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while sources_b.get_opt("app").await?.is_some() {
        ensure!(
            std::time::Instant::now() < deadline,
            "B's source was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(b);
    let package = packages_a
        .get_opt(&package_name)
        .await?
        .context("deleting B's source deleted A's Package")?;
    ensure!(fetched_image(&package).as_deref() == Some(a_bundle.as_str()));

    // Same namespace, same refName.version, another source: the same rule.
    apply_yaml(&client, &team_a, &source("copycat", &team_a, ref_name, "")).await?;
    wait_for(&sources_a, "copycat", WAIT, "OwnershipConflict", |o| {
        has(o, types::READY, "False", reasons::OWNERSHIP_CONFLICT)
    })
    .await?;
    let package = packages_a.get(&package_name).await?;
    ensure!(fetched_image(&package).as_deref() == Some(a_bundle.as_str()));
    ensure!(ready(&sources_a.get("app").await?), "A stays Ready");
    Ok(())
}

async fn adoption_and_inline_secrets() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "tenant-adopt").await?;
    let _controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);

    // What an earlier packsmith left: labels naming the source, no owner annotation.
    let ref_name = "legacy.tenancy.example.com";
    let mut legacy = Package::new(ref_name, "1.0.0", Default::default());
    legacy.meta_mut().namespace = Some(ns.clone());
    legacy.meta_mut().labels = Some(BTreeMap::from([
        ("packsmith.dev/source-name".to_owned(), "legacy".to_owned()),
        ("packsmith.dev/source-namespace".to_owned(), ns.clone()),
    ]));
    packages.create(&PostParams::default(), &legacy).await?;
    apply_yaml(&client, &ns, &source("legacy", &ns, ref_name, "")).await?;
    let obj = wait_for(&sources, "legacy", WAIT, "Ready", ready).await?;
    let adopted = packages.get(&format!("{ref_name}.1.0.0")).await?;
    ensure!(
        adopted
            .annotations()
            .get(OWNER)
            .is_some_and(|o| o.contains("/legacy/")),
        "the labelled Package was adopted: {:?}",
        adopted.annotations()
    );
    ensure!(
        fetched_image(&adopted).as_deref() == Some(super::controller::bundle_image(&obj).as_str())
    );

    // A Secret copied into a bundle needs its owner's consent.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "values", "namespace": ns},
        "stringData": {"values.yaml": "password: hunter2\n"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let inline = "  contents:\n  - path: config/values\n    contents:\n    - path: .\n      \
                  inline: {pathsFrom: [{secretRef: {name: values}}]}\n";
    let yaml = source("inline", &ns, "inline.tenancy.example.com", "").replace(
        "  contents:\n  - path: config/app",
        &format!("{inline}  - path: config/app"),
    );
    apply_yaml(&client, &ns, &yaml).await?;
    let refused = wait_for(&sources, "inline", WAIT, "refused", |o| {
        has(o, types::READY, "False", reasons::INLINE_SECRET_NOT_ALLOWED)
            && has(
                o,
                types::STALLED,
                "True",
                reasons::INLINE_SECRET_NOT_ALLOWED,
            )
    })
    .await?;
    ensure!(
        describe(&refused).contains("packsmith.dev/inline-allowed"),
        "the message names the label: {}",
        describe(&refused)
    );
    // Labelling the Secret is the fix, and un-stalls the source by itself.
    secrets
        .patch(
            "values",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"packsmith.dev/inline-allowed": "true"}}
            })),
        )
        .await?;
    wait_for(&sources, "inline", WAIT, "Ready", ready).await?;
    Ok(())
}

/// Polls until `check` holds on Package `name` (absent counts as not holding).
async fn wait_package(
    api: &Api<Package>,
    name: &str,
    what: &str,
    check: impl Fn(&Package) -> bool,
) -> anyhow::Result<Package> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(p) = api.get_opt(name).await?
            && check(&p)
        {
            return Ok(p);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "Package {name}: not {what} within 20s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drift() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "tenant-drift").await?;
    let _controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    let metadata: Api<packsmith::carvel::PackageMetadata> = Api::namespaced(client.clone(), &ns);
    let ref_name = "drift.tenancy.example.com";
    let name = format!("{ref_name}.1.0.0");
    // An hour between reconciles: only the watch can bring anything back in time.
    let yaml = source("drift", &ns, ref_name, "").replace("interval: 2s", "interval: 1h");
    apply_yaml(&client, &ns, &yaml).await?;
    let obj = wait_for(&sources, "drift", WAIT, "Ready", ready).await?;
    let bundle = super::controller::bundle_image(&obj);
    let original = packages.get(&name).await?;

    packages.delete(&name, &DeleteParams::default()).await?;
    wait_package(&packages, &name, "restored after deletion", |p| {
        p.uid() != original.uid() && fetched_image(p).as_deref() == Some(bundle.as_str())
    })
    .await?;

    // Pointing the Package at another bundle is a change to a field packsmith applies.
    let mut tampered = packages.get(&name).await?;
    for fetch in &mut tampered.spec.template.spec.fetch {
        if let Some(b) = fetch.imgpkg_bundle.as_mut() {
            b.image = format!(
                "{}/attacker/bundle@sha256:{}",
                bed().registry,
                "0".repeat(64)
            );
        }
    }
    packages
        .replace(&name, &PostParams::default(), &tampered)
        .await?;
    wait_package(&packages, &name, "restored after an edit", |p| {
        fetched_image(p).as_deref() == Some(bundle.as_str())
    })
    .await?;

    metadata.delete(ref_name, &DeleteParams::default()).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metadata.get_opt(ref_name).await?.is_none() {
        ensure!(
            std::time::Instant::now() < deadline,
            "PackageMetadata {ref_name} was not restored within 20s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        ready(&sources.get("drift").await?),
        "the source stays Ready"
    );
    Ok(())
}

/// A source labelled `repo: main` (so the repository below selects it: its release is
/// recorded in a ConfigMap, not applied) and a PackageRepositorySource `main` selecting it,
/// both looking again only every hour.
fn selected_source_and_repository(ns: &str, ref_name: &str) -> String {
    let source = source("app", ns, ref_name, "")
        .replace("interval: 2s", "interval: 1h")
        .replace(
            &format!("  namespace: {ns}\n"),
            &format!("  namespace: {ns}\n  labels: {{repo: main}}\n"),
        );
    format!(
        r#"{source}---
apiVersion: packsmith.dev/v1alpha1
kind: PackageRepositorySource
metadata:
  name: main
  namespace: {ns}
spec:
  selector:
    matchLabels: {{repo: main}}
  bundle: {{repository: "{reg}/tenancy/{ns}/repository", insecure: true}}
  interval: 1h
"#,
        reg = bed().registry
    )
}

fn repository_ready(o: &PackageRepositorySource) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == types::READY && c.status == "True" && c.reason == reasons::SUCCEEDED
        }) && s.package_count == 1
    })
}

fn repository_image(o: &PackageRepositorySource) -> Option<String> {
    o.status
        .as_ref()
        .and_then(|s| s.bundle.as_ref())
        .map(|b| b.image.clone())
}

/// Polls until `check` holds on `name` (absent counts as not holding), 20 s at most: the
/// interval is an hour, so only a watch brings it back in time.
async fn restored<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    check: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = api.get_opt(name).await?;
        if let Some(found) = &found
            && check(found)
        {
            return Ok(found.clone());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{name}: not {what} within 20s; now: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The controller's own writes cause watch events too: after the last restore, they must die
/// down (at most the one reconcile that finds everything in place), not loop.
async fn settles(controller: &Running, kind: &str, resource: &str) -> anyhow::Result<()> {
    let writes = format!("packsmith_api_writes_total{{kind=\"{kind}\",resource=\"{resource}\"");
    let runs = format!("packsmith_reconcile_total{{kind=\"{kind}\"");
    let before = controller.metrics().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = controller.metrics().await?;
    let (wrote, ran) = (
        metric(&after, &writes) - metric(&before, &writes),
        metric(&after, &runs) - metric(&before, &runs),
    );
    ensure!(
        wrote == 0.0 && ran <= 2.0,
        "{kind}: {wrote} writes of {resource} and {ran} reconciles in 3s after the restore:\n{after}"
    );
    Ok(())
}

async fn repository_drift() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "tenant-drift-pkgr").await?;
    let controller = Running::start(&ns).await?;
    let sources: Api<PackageRepositorySource> = Api::namespaced(client.clone(), &ns);
    let repos: Api<PackageRepository> = Api::namespaced(client.clone(), &ns);
    let yaml = selected_source_and_repository(&ns, "pkgr.drift.tenancy.example.com");
    apply_yaml(&client, &ns, &yaml).await?;

    // Ready, and the PackageRepository fetches the bundle on status (a source that moved
    // from the cluster into a record may re-run the repository once more: wait for both).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (image, original) = loop {
        let obj = sources.get("main").await?;
        let image = repository_image(&obj);
        if repository_ready(&obj)
            && let Some(pkgr) = repos.get_opt("main").await?
            && pkgr.spec.fetch.imgpkg_bundle.as_ref().map(|b| &b.image) == image.as_ref()
            && let Some(image) = image
        {
            break (image, pkgr);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "PackageRepositorySource main: not Ready with its PackageRepository within 120s: {}",
            serde_json::to_string_pretty(&obj.status).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let fetches_image = |r: &PackageRepository| {
        r.spec
            .fetch
            .imgpkg_bundle
            .as_ref()
            .map(|b| b.image.as_str())
            == Some(image.as_str())
    };

    repos.delete("main", &DeleteParams::default()).await?;
    let recreated = restored(&repos, "main", "restored after deletion", |r| {
        r.uid() != original.uid() && fetches_image(r)
    })
    .await?;
    ensure!(
        recreated
            .annotations()
            .get(OWNER)
            .is_some_and(|o| o.starts_with(&format!("PackageRepositorySource/{ns}/main/"))),
        "the restored PackageRepository carries its owner: {:?}",
        recreated.annotations()
    );

    // Pointing it at another bundle is a change to a field packsmith applies.
    let mut tampered = repos.get("main").await?;
    if let Some(b) = tampered.spec.fetch.imgpkg_bundle.as_mut() {
        b.image = format!(
            "{}/attacker/repository@sha256:{}",
            bed().registry,
            "0".repeat(64)
        );
    }
    repos
        .replace("main", &PostParams::default(), &tampered)
        .await?;
    restored(&repos, "main", "restored after an edit", fetches_image).await?;
    settles(
        &controller,
        "PackageRepositorySource",
        "packagerepositories",
    )
    .await?;

    let obj = sources.get("main").await?;
    ensure!(
        repository_ready(&obj) && repository_image(&obj).as_deref() == Some(image.as_str()),
        "the repository stays Ready on the same bundle: {}",
        serde_json::to_string_pretty(&obj.status).unwrap_or_default()
    );
    Ok(())
}

async fn record_drift() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "tenant-drift-record").await?;
    let controller = Running::start(&ns).await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ref_name = "record.drift.tenancy.example.com";
    let record = format!("{ref_name}.1.0.0");
    apply_yaml(&client, &ns, &selected_source_and_repository(&ns, ref_name)).await?;
    let obj = wait_for(&sources, "app", Duration::from_secs(120), "recorded", |o| {
        ready(o)
            && o.status
                .as_ref()
                .and_then(|s| s.package.as_ref())
                .is_some_and(|p| p.config_map.as_deref() == Some(record.as_str()))
    })
    .await?;
    let bundle = super::controller::bundle_image(&obj);
    let original = config_maps.get(&record).await?;
    // The record as it should be: this source's, holding a Package that fetches its bundle.
    let holds_release = |cm: &ConfigMap| {
        cm.annotations()
            .get(OWNER)
            .is_some_and(|o| o.starts_with(&format!("PackageSource/{ns}/app/")))
            && cm
                .data
                .as_ref()
                .and_then(|d| d.get("package.yml"))
                .and_then(|y| Package::from_yaml(y).ok())
                .is_some_and(|p| fetched_image(&p).as_deref() == Some(bundle.as_str()))
            && cm
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("metadata.yml"))
    };
    ensure!(holds_release(&original), "the record: {original:?}");

    config_maps
        .delete(&record, &DeleteParams::default())
        .await?;
    restored(&config_maps, &record, "restored after deletion", |cm| {
        cm.uid() != original.uid() && holds_release(cm)
    })
    .await?;

    // The recorded Package pointed at another bundle, and its metadata emptied.
    let mut tampered = config_maps.get(&record).await?;
    let data = tampered.data.get_or_insert_with(Default::default);
    let package = data.get("package.yml").cloned().unwrap_or_default();
    data.insert(
        "package.yml".to_owned(),
        package.replace(
            &bundle,
            &format!(
                "{}/attacker/bundle@sha256:{}",
                bed().registry,
                "0".repeat(64)
            ),
        ),
    );
    data.insert("metadata.yml".to_owned(), String::new());
    config_maps
        .replace(&record, &PostParams::default(), &tampered)
        .await?;
    restored(&config_maps, &record, "restored after an edit", |cm| {
        holds_release(cm)
            && cm
                .data
                .as_ref()
                .and_then(|d| d.get("metadata.yml"))
                .is_some_and(|m| !m.is_empty())
    })
    .await?;

    // Only the metadata edited: the Package alone is not the whole record.
    let mut tampered = config_maps.get(&record).await?;
    let written = tampered.data.clone().unwrap_or_default();
    tampered
        .data
        .get_or_insert_with(Default::default)
        .insert("metadata.yml".to_owned(), String::new());
    config_maps
        .replace(&record, &PostParams::default(), &tampered)
        .await?;
    restored(
        &config_maps,
        &record,
        "restored after a metadata edit",
        |cm| cm.data.as_ref() == Some(&written),
    )
    .await?;
    settles(&controller, "PackageSource", "configmaps").await?;
    ensure!(ready(&sources.get("app").await?), "the source stays Ready");
    Ok(())
}

/// A PackageSource whose one content is `content` (YAML under `contents[0].contents[0]`).
fn upstream_source(name: &str, ns: &str, content: &str) -> String {
    format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
  namespace: {ns}
spec:
  package: {{refName: {name}.egress.example.com, version: 1.0.0}}
  contents:
  - path: config
    contents:
    - path: .
      {content}
  bundle: {{repository: "{reg}/tenancy/{ns}/{name}", insecure: true}}
  interval: 1h
"#,
        reg = bed().registry
    )
}

/// One controller for the whole cluster, as operators run it: team B copies the labels and
/// the owner annotation (UID included) of team A's Package onto a Package and a release record
/// in its own namespace, then edits and deletes them. A's source must not run: otherwise any
/// team could keep every other team's sources busy. Deleting A's own Package does run it
/// (the drift watches are live). The controller's label selector keeps it to this trial's
/// objects while other trials run beside it.
async fn forged_owners() -> anyhow::Result<()> {
    const KEY: &str = "sharding.packsmith.dev/key";
    let client = bed().client().await?;
    let team_a = namespace(&client, "tenant-forged-a").await?;
    let team_b = namespace(&client, "tenant-forged-b").await?;
    let shard = team_a.clone();
    let controller = Running::start_with(&team_a, |o| {
        o.namespace = None;
        o.label_selector = Some(format!("{KEY} in ({shard})"));
    })
    .await?;
    let ref_name = "forged.tenancy.example.com";
    let package_name = format!("{ref_name}.1.0.0");
    let yaml = source("app", &team_a, ref_name, "")
        .replace("interval: 2s", "interval: 1h")
        .replacen(
            "  name: app\n",
            &format!("  name: app\n  labels: {{{KEY}: {team_a}}}\n"),
            1,
        );
    apply_yaml(&client, &team_a, &yaml).await?;
    let sources_a: Api<PackageSource> = Api::namespaced(client.clone(), &team_a);
    wait_for(&sources_a, "app", WAIT, "Ready", ready).await?;
    let packages_a: Api<Package> = Api::namespaced(client.clone(), &team_a);
    let original = packages_a.get(&package_name).await?;
    ensure!(
        original.labels().get(KEY) == Some(&team_a) && original.annotations().contains_key(OWNER),
        "A's Package: {:?} {:?}",
        original.labels(),
        original.annotations()
    );
    let successes = || async {
        anyhow::Ok(metric(
            &controller.metrics().await?,
            super::controller::SUCCESSES,
        ))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = successes().await?;

    // B's copies: every label and annotation of A's Package.
    let forged_meta = |name: &str, extra_labels: &[(&str, &str)]| {
        let mut labels = original.labels().clone();
        labels.extend(
            extra_labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(team_b.clone()),
            labels: Some(labels),
            annotations: Some(original.annotations().clone()),
            ..Default::default()
        }
    };
    let packages_b: Api<Package> = Api::namespaced(client.clone(), &team_b);
    let mut package = Package {
        metadata: forged_meta(&package_name, &[]),
        ..original.clone()
    };
    packages_b.create(&PostParams::default(), &package).await?;
    package = packages_b.get(&package_name).await?;
    package.spec.release_notes = "edited by team B".to_owned();
    packages_b
        .replace(&package_name, &PostParams::default(), &package)
        .await?;
    packages_b
        .delete(&package_name, &DeleteParams::default())
        .await?;
    let records_b: Api<ConfigMap> = Api::namespaced(client.clone(), &team_b);
    let mut record = ConfigMap {
        metadata: forged_meta(&package_name, &[("packsmith.dev/release", "true")]),
        data: Some(BTreeMap::from([("package.yml".to_owned(), "x".to_owned())])),
        ..Default::default()
    };
    records_b.create(&PostParams::default(), &record).await?;
    for i in 0..3 {
        record = records_b.get(&package_name).await?;
        record
            .data
            .get_or_insert_with(Default::default)
            .insert("package.yml".to_owned(), format!("edit {i}"));
        records_b
            .replace(&package_name, &PostParams::default(), &record)
            .await?;
    }
    records_b
        .delete(&package_name, &DeleteParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = successes().await?;
    ensure!(
        after == before,
        "team B's objects ran team A's source {} times",
        after - before
    );

    // A's own Package deleted: A runs and restores it.
    packages_a
        .delete(&package_name, &DeleteParams::default())
        .await?;
    restored(&packages_a, &package_name, "restored", |p| {
        p.uid() != original.uid()
    })
    .await?;
    ensure!(successes().await? > before, "the drift watch never ran A");
    controller.stop().await
}

async fn egress() -> anyhow::Result<()> {
    use packsmith::registry::Egress;
    let client = bed().client().await?;
    let ns = namespace(&client, "egress").await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let running = Running::start_with(&ns, |o| {
        o.egress = Egress {
            deny_local: true,
            deny: Vec::new(),
        };
    })
    .await?;

    // The bed's port on a name that resolves to loopback: the resolver must refuse it.
    let port = bed()
        .http_url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let cases = [
        (
            "git-literal",
            format!("git: {{url: \"{}/absent.git\", ref: v1}}", bed().git_url),
            "127.0.0.1 resolves to 127.0.0.1 (loopback)",
        ),
        (
            "http-name",
            format!("http: {{url: \"http://localhost:{port}/absent.yaml\"}}"),
            "localhost resolves to",
        ),
    ];
    for (name, content, _) in &cases {
        apply_yaml(&client, &ns, &upstream_source(name, &ns, content)).await?;
    }
    for (name, _, needle) in &cases {
        let refused = wait_for(&sources, name, WAIT, "UpstreamDenied", |o| {
            has(o, types::READY, "False", reasons::UPSTREAM_DENIED)
                && has(o, types::STALLED, "True", reasons::UPSTREAM_DENIED)
        })
        .await?;
        let message = describe(&refused);
        ensure!(
            message.contains(needle) && message.contains("--deny-local-upstreams"),
            "{name}: the message names the address and the flag: {message}"
        );
    }
    // Content with no upstream still cannot reach the bundle's registry on loopback: the
    // push stage says so with the same reason, Stalled (no retry reaches it either).
    let inline = "inline: {paths: {a.yaml: \"a: 1\\n\"}}";
    apply_yaml(&client, &ns, &upstream_source("inline", &ns, inline)).await?;
    let refused = wait_for(&sources, "inline", WAIT, "UpstreamDenied on push", |o| {
        has(o, types::BUNDLE_PUSHED, "False", reasons::UPSTREAM_DENIED)
            && has(o, types::STALLED, "True", reasons::UPSTREAM_DENIED)
    })
    .await?;
    ensure!(
        describe(&refused).contains("--deny-local-upstreams"),
        "the push names the flag: {}",
        describe(&refused)
    );
    drop(running);

    // A policy that matches nothing here (TEST-NET-1) is active, and changes nothing.
    let _running = Running::start_with(&ns, |o| {
        o.egress = Egress {
            deny_local: false,
            deny: Egress::parse_cidrs(&["192.0.2.0/24".to_owned()]).unwrap_or_default(),
        };
    })
    .await?;
    sources
        .patch(
            "inline",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"interval": "2s"}})),
        )
        .await?;
    wait_for(&sources, "inline", WAIT, "Ready", ready).await?;
    Ok(())
}
