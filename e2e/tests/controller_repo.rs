//! PackageRepositorySource end to end, on the in-process controller (see `controller.rs`):
//! three labelled PackageSources (and one not labelled) become a Ready repository whose
//! bundle pulls back to exactly their packages, and a PackageRepository fetching it by digest;
//! steady state pushes and writes nothing; labelling the fourth source re-runs the repository
//! (the PackageSource watch); a selector matching nothing is DependencyNotReady.

use std::time::{Duration, Instant};

use anyhow::ensure;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::PackageRepositorySource;
use packsmith::api::conditions::{reasons, types};
use packsmith::carvel::package::PackageDocument;
use packsmith::carvel::{Package, PackageRepository};
use packsmith::publish::repository::read_packages;

use crate::support::{apply_yaml, bed, namespace};
use crate::tests::controller::{Running, metric};
use crate::tests::repo::packsmith;

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "controller_repo::aggregates_selected_sources_into_a_repository",
        || crate::support::block_on(aggregates_selected_sources_into_a_repository()),
    )]
}

const REPO_STATUS_WRITES: &str = "packsmith_api_writes_total{kind=\"PackageRepositorySource\",resource=\"packagerepositorysources/status\"";
const SOURCE_WRITES: &str = "packsmith_api_writes_total{kind=\"PackageSource\"";
const SOURCE_SUCCESSES: &str =
    "packsmith_reconcile_total{kind=\"PackageSource\",result=\"success\"";
const REPO_PUSHES: &str =
    "packsmith_stage_duration_seconds_count{kind=\"PackageRepositorySource\",stage=\"push\"";

fn labelled_source(name: &str, ns: &str, reg: &str, labels: &str) -> String {
    labelled_source_with(name, ns, reg, labels, "")
}

fn labelled_source_with(name: &str, ns: &str, reg: &str, labels: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  package:
    refName: {name}.repo.ctl.example.com
    version: 0.1.0
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          app.yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"
  bundle:
    repository: {reg}/ctl/{ns}/{name}
    insecure: true
  interval: 1h
{extra}"#
    )
}

/// The repository bundle `main`'s status records now.
async fn bundle_image(api: &Api<PackageRepositorySource>) -> anyhow::Result<Option<String>> {
    Ok(api
        .get("main")
        .await?
        .status
        .and_then(|s| s.bundle)
        .map(|b| b.image))
}

fn ready(obj: &PackageRepositorySource) -> Option<(String, String, String)> {
    obj.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

async fn wait_repo(
    api: &Api<PackageRepositorySource>,
    name: &str,
    what: &str,
    pred: impl Fn(&PackageRepositorySource) -> bool,
) -> anyhow::Result<PackageRepositorySource> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let obj = api.get(name).await?;
        if pred(&obj) {
            return Ok(obj);
        }
        ensure!(
            Instant::now() < deadline,
            "{name}: not {what} within 120s; status:\n{}",
            serde_json::to_string_pretty(&obj.status).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_until<F, Fut>(what: &str, check: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    while !check().await? {
        ensure!(Instant::now() < deadline, "not {what} within 90s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

fn is_ready_with(obj: &PackageRepositorySource, count: u32) -> bool {
    ready(obj).is_some_and(|(s, r, _)| s == "True" && r == reasons::SUCCEEDED)
        && obj.status.as_ref().map(|s| s.package_count) == Some(count)
}

async fn aggregates_selected_sources_into_a_repository() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-repo").await?;
    let reg = bed().registry.clone();
    let controller = Running::start(&ns).await?;

    // alpha and bravo are released through the repository only; charlie asks to be applied
    // in-cluster as well.
    // bravo looks again every 2 s: a recorded release must not be rewritten (nor the
    // repository re-pushed) when nothing upstream changed.
    let mut yaml = String::new();
    yaml.push_str(&labelled_source("alpha", &ns, &reg, "repo: main"));
    yaml.push_str("---\n");
    yaml.push_str(
        &labelled_source("bravo", &ns, &reg, "repo: main").replace("interval: 1h", "interval: 2s"),
    );
    yaml.push_str("---\n");
    yaml.push_str(&labelled_source_with(
        "charlie",
        &ns,
        &reg,
        "repo: main",
        "  publish: {enabled: true}\n",
    ));
    yaml.push_str("---\n");
    yaml.push_str(&labelled_source("delta", &ns, &reg, "other: x"));
    yaml.push_str(&format!(
        r#"---
apiVersion: packsmith.dev/v1alpha1
kind: PackageRepositorySource
metadata:
  name: main
spec:
  selector:
    matchLabels: {{repo: main}}
  bundle:
    repository: {reg}/ctl/{ns}/repository
    insecure: true
  interval: 2s
---
apiVersion: packsmith.dev/v1alpha1
kind: PackageRepositorySource
metadata:
  name: empty
spec:
  selector:
    matchExpressions:
    - {{key: repo, operator: In, values: [nowhere]}}
  bundle:
    repository: {reg}/ctl/{ns}/empty
    insecure: true
  packageRepository: {{create: false}}
"#
    ));
    apply_yaml(&client, &ns, &yaml).await?;
    let api: Api<PackageRepositorySource> = Api::namespaced(client.clone(), &ns);

    let started = Instant::now();
    let main = wait_repo(&api, "main", "Ready with 3 packages", |o| {
        is_ready_with(o, 3)
    })
    .await?;
    let took = started.elapsed();
    let status = main.status.clone().unwrap_or_default();
    let expected: Vec<String> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|n| format!("{n}.repo.ctl.example.com.0.1.0"))
        .collect();
    ensure!(
        status.packages == expected,
        "packages {:?}",
        status.packages
    );
    let bundle = status
        .bundle
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no status.bundle"))?;
    ensure!(
        bundle
            .image
            .starts_with(&format!("{reg}/ctl/{ns}/repository@sha256:"))
            && bundle.image.contains(&bundle.short_digest)
            && bundle.tags.iter().any(|t| t == "latest"),
        "{bundle:?}"
    );
    ensure!(status.observed_generation == main.metadata.generation);
    for (type_, present) in [
        (types::RECONCILING, false),
        (types::STALLED, false),
        (types::REPOSITORY_PUBLISHED, true),
    ] {
        ensure!(
            status.conditions.iter().any(|c| c.type_ == type_) == present,
            "{type_} present should be {present}: {:?}",
            status.conditions
        );
    }

    // The bundle pulls back to exactly those packages (not delta's).
    let tmp = tempfile::tempdir()?;
    let pulled = tmp.path().join("pulled");
    packsmith(&[
        "pull",
        "-b",
        &bundle.image,
        "-o",
        pulled.to_str().expect("utf-8 path"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let mut in_bundle: Vec<String> = read_packages(&pulled)?
        .into_iter()
        .filter_map(|d| match d {
            PackageDocument::Package(p) => Some(format!("{}.{}", p.spec.ref_name, p.spec.version)),
            PackageDocument::Metadata(_) => None,
        })
        .collect();
    in_bundle.sort();
    ensure!(in_bundle == expected, "bundle holds {in_bundle:?}");

    // The PackageRepository fetches the bundle by digest and says who owns it.
    // (Compared with the status as it is now: a source that published in-cluster before the
    // repository was seen, and then moved, may have re-run the repository since.)
    let repos: Api<PackageRepository> = Api::namespaced(client.clone(), &ns);
    wait_until(
        "the PackageRepository fetching the bundle on status",
        || async {
            let fetched = repos
                .get("main")
                .await?
                .spec
                .fetch
                .imgpkg_bundle
                .map(|b| b.image);
            let current = bundle_image(&api).await?;
            Ok(fetched.is_some() && fetched == current)
        },
    )
    .await?;
    let pkgr = repos.get("main").await?;
    ensure!(
        pkgr.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("packsmith")
    );

    // Selected sources do not fight kapp-controller: no Package of theirs in the cluster
    // (the PackageRepository creates them), their releases are recorded in ConfigMaps; the
    // one that asked (charlie) and the one not selected (delta) are applied in-cluster.
    let sources: Api<packsmith::api::PackageSource> = Api::namespaced(client.clone(), &ns);
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let in_cluster = |name: &'static str| {
        let packages = packages.clone();
        async move {
            let lp = ListParams::default().labels(&format!(
                "packsmith.dev/source-name={name},packsmith.dev/source-namespace={}",
                packages.namespace().unwrap_or_default()
            ));
            anyhow::Ok(!packages.list(&lp).await?.items.is_empty())
        }
    };
    // Recorded on status too: a move removes the Packages before it writes status, and the
    // status write is what re-runs the repository (which must be done before the steady window).
    let recorded = |name: &'static str| {
        let sources = sources.clone();
        async move {
            let source = sources.get(name).await?;
            anyhow::Ok(
                source
                    .status
                    .as_ref()
                    .and_then(|s| s.package.as_ref())
                    .is_some_and(|p| p.namespace.is_none() && p.config_map.is_some()),
            )
        }
    };
    wait_until(
        "alpha, bravo released through the repository only",
        || async {
            Ok(!in_cluster("alpha").await?
                && !in_cluster("bravo").await?
                && recorded("alpha").await?
                && recorded("bravo").await?)
        },
    )
    .await?;
    ensure!(
        in_cluster("charlie").await?,
        "charlie asked to be applied in-cluster"
    );
    // delta is not selected: applied in-cluster once it is Ready (nothing waits for it yet).
    wait_until("delta applied in-cluster", || async {
        in_cluster("delta").await
    })
    .await?;
    for name in ["alpha", "bravo"] {
        let source = sources.get(name).await?;
        let package = source
            .status
            .as_ref()
            .and_then(|s| s.package.clone())
            .unwrap_or_default();
        let record = format!("{name}.repo.ctl.example.com.0.1.0");
        ensure!(
            package.namespace.is_none() && package.config_map.as_deref() == Some(record.as_str()),
            "{name}: {package:?}"
        );
        let cm = config_maps.get(&record).await?;
        ensure!(
            cm.data
                .as_ref()
                .is_some_and(|d| d.contains_key("package.yml")),
            "{name}: {cm:?}"
        );
        let published = source
            .status
            .as_ref()
            .and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == types::PACKAGE_PUBLISHED)
            })
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            published.contains("selected by PackageRepositorySource main"),
            "{name}: {published}"
        );
    }

    // Nothing matched: DependencyNotReady, naming the selector.
    let empty = wait_repo(&api, "empty", "DependencyNotReady", |o| {
        ready(o).is_some_and(|(s, r, _)| s == "False" && r == reasons::DEPENDENCY_NOT_READY)
    })
    .await?;
    let (_, _, message) = ready(&empty).unwrap_or_default();
    ensure!(message.contains("repo in (nowhere)"), "{message}");
    ensure!(repos.get_opt("empty").await?.is_none());

    // Steady state over several 2 s intervals: no push, no status write. The window opens
    // once 3 s pass without a write, so a last write of the moves above that a loaded
    // machine delays is not taken for churn; churn never lets it open.
    let writes_so_far = |text: &str| {
        metric(text, REPO_STATUS_WRITES) + metric(text, REPO_PUSHES) + metric(text, SOURCE_WRITES)
    };
    let quiet_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let first = writes_so_far(&controller.metrics().await?);
        tokio::time::sleep(Duration::from_secs(3)).await;
        if writes_so_far(&controller.metrics().await?) == first {
            break;
        }
        ensure!(
            Instant::now() < quiet_deadline,
            "the controller kept writing for 60 s after every source was Ready:\n{}",
            controller.metrics().await?
        );
    }
    let before = controller.metrics().await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = controller.metrics().await?;
    let (writes, pushes, source_writes, source_runs) = (
        metric(&after, REPO_STATUS_WRITES) - metric(&before, REPO_STATUS_WRITES),
        metric(&after, REPO_PUSHES) - metric(&before, REPO_PUSHES),
        metric(&after, SOURCE_WRITES) - metric(&before, SOURCE_WRITES),
        metric(&after, SOURCE_SUCCESSES) - metric(&before, SOURCE_SUCCESSES),
    );
    ensure!(
        source_runs >= 1.0,
        "bravo (interval 2s) did not reconcile in the steady window:\n{after}"
    );
    ensure!(
        source_writes == 0.0,
        "steady state: the PackageSources wrote {source_writes} times in {source_runs} reconciles:\n{after}"
    );
    ensure!(
        metric(&after, REPO_PUSHES) >= 1.0 && metric(&after, REPO_STATUS_WRITES) >= 1.0,
        "the metrics do not count the repository's push and status writes:\n{after}"
    );
    ensure!(
        writes == 0.0 && pushes == 0.0,
        "steady state wrote {writes} statuses and pushed {pushes} times"
    );
    // Moving a release from the cluster into a record keeps it byte-for-byte (its releasedAt
    // included), so the repository bundle is the one first pushed.
    let settled = bundle_image(&api).await?;
    ensure!(
        settled.as_deref() == Some(bundle.image.as_str()),
        "the repository digest moved from {} to {settled:?} though no package changed",
        bundle.image
    );

    // Labelling the fourth source re-runs the repository through the PackageSource watch,
    // and moves delta's Package out of the cluster into the repository.
    sources
        .patch(
            "delta",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"repo": "main"}}})),
        )
        .await?;
    let grown = wait_repo(&api, "main", "Ready with 4 packages", |o| {
        is_ready_with(o, 4)
    })
    .await?;
    let image = grown
        .status
        .as_ref()
        .and_then(|s| s.bundle.as_ref())
        .map(|b| b.image.clone())
        .unwrap_or_default();
    ensure!(image != bundle.image, "the digest did not change");
    let refetched = repos.get("main").await?;
    ensure!(
        refetched
            .spec
            .fetch
            .imgpkg_bundle
            .as_ref()
            .map(|b| b.image.as_str())
            == Some(image.as_str())
    );
    wait_until("delta released through the repository only", || async {
        Ok(!in_cluster("delta").await? && recorded("delta").await?)
    })
    .await?;
    // delta's Package was in the cluster when the repository took it in; its record is the
    // same Package, so the repository re-run its move triggers pushes nothing new.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let moved = bundle_image(&api).await?;
    ensure!(
        moved.as_deref() == Some(image.as_str()),
        "moving delta's release into a record changed the repository digest: {image} -> {moved:?}"
    );
    ensure!(
        config_maps
            .get_opt("delta.repo.ctl.example.com.0.1.0")
            .await?
            .is_some()
    );

    // Deleting a source takes its release records with it.
    sources.delete("alpha", &Default::default()).await?;
    wait_until("alpha's release record deleted with it", || async {
        Ok(config_maps
            .get_opt("alpha.repo.ctl.example.com.0.1.0")
            .await?
            .is_none())
    })
    .await?;
    // Deleting the repository source deletes its PackageRepository (finalizer), and the
    // sources it selected go back to publishing in-cluster.
    api.delete("main", &Default::default()).await?;
    wait_until("the PackageRepository deleted with its source", || async {
        Ok(repos.get_opt("main").await?.is_none() && api.get_opt("main").await?.is_none())
    })
    .await?;
    wait_until("bravo applied in-cluster again", || async {
        in_cluster("bravo").await
    })
    .await?;
    ensure!(
        config_maps
            .get_opt("bravo.repo.ctl.example.com.0.1.0")
            .await?
            .is_none(),
        "bravo's release record outlived the move"
    );
    eprintln!(
        "controller_repo: 3 sources -> Ready repository in {:.1}s; steady state 0 writes/0 pushes over 7s",
        took.as_secs_f64()
    );
    controller.stop().await
}
