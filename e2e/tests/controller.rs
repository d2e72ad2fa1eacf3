//! `packsmith controller` end to end: the controller runs in-process (its own runtime,
//! scoped to the trial's namespace) against the bed's apiserver, git upstream and registries.
//!
//! - a git upstream becomes a Ready PackageSource, a Package fetching the pushed bundle by
//!   digest, and a pullable bundle; steady-state reconciles write nothing; `requestedAt` is
//!   echoed with one status write; a new upstream commit becomes a new digest; deletion
//!   removes what was published;
//! - failures land on the right condition: a missing git ref is a retryable FetchFailed, a
//!   401 from the registry is Stalled/AuthenticationFailed; a suspended source is left alone;
//!   `deletionPolicy: Orphan` keeps the Package.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};
use packsmith::carvel::{Package, PackageMetadata};
use packsmith::controller::{Controller, FINALIZER, Options};

use crate::support::images::{ImageKind, Registry, push_image};
use crate::support::{apply_yaml, bed, namespace};
use crate::tests::git::{git, make_repo};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "controller::publishes_follows_upstream_and_cleans_up",
            || crate::support::block_on(publishes_follows_upstream_and_cleans_up()),
        ),
        Trial::test("controller::failures_suspend_and_orphan", || {
            crate::support::block_on(failures_suspend_and_orphan())
        }),
        Trial::test("controller::cache_cap_evicts_idle_work_dirs", || {
            crate::support::block_on(cache_cap_evicts_idle_work_dirs())
        }),
        Trial::test("controller::auto_bumps_on_a_new_matching_tag", || {
            crate::support::block_on(auto_bumps_on_a_new_matching_tag())
        }),
        Trial::test("controller::checksum_mismatch_stalls_until_fixed", || {
            crate::support::block_on(checksum_mismatch_stalls_until_fixed())
        }),
        Trial::test(
            "controller::disk_budget_stalls_only_the_object_over_it",
            || crate::support::block_on(disk_budget_stalls_only_the_object_over_it()),
        ),
        Trial::test("controller::what_a_new_source_costs_the_api_server", || {
            crate::support::block_on(what_a_new_source_costs_the_api_server())
        }),
        Trial::test(
            "controller::changed_content_becomes_the_next_revision",
            || crate::support::block_on(changed_content_becomes_the_next_revision()),
        ),
    ]
}

/// The write budget of a new source (docs/controller.md, "What a new source costs the API
/// server"): three object writes — the Package, the PackageMetadata, one status apply — and
/// one `Published` event. A reconcile still running after 2 s also reports `Reconciling` (one
/// more status write): allowed only when that reconcile took so long. Measured on a second
/// source: a fresh bed's API server takes 2 s to create its first PackageMetadata (its own
/// `apiserver_request_duration_seconds`, and so with `kubectl create`), which makes the first
/// source's reconcile slow.
async fn what_a_new_source_costs_the_api_server() -> anyhow::Result<()> {
    const WRITES: &str = "packsmith_api_writes_total{kind=\"PackageSource\"";
    const DURATION: &str = "packsmith_reconcile_duration_seconds_sum{kind=\"PackageSource\"}";
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-cost").await?;
    let controller = Running::start(&ns).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let published = || async {
        anyhow::Ok(
            events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("Published"))
                .count(),
        )
    };
    let mut before = String::new();
    for (i, name) in ["warm", "cost"].into_iter().enumerate() {
        before = controller
            .wait_for_metrics(Duration::from_secs(10), |t| {
                metric(t, &format!("{WRITES},resource=\"events\"")) == i as f64
            })
            .await?;
        let repository = format!("{}/ctl/{ns}/{name}", bed().registry);
        apply_yaml(
            &client,
            &ns,
            &inline_source(name, &ns, &repository, "    insecure: true\n"),
        )
        .await?;
        wait_for(&api, name, Duration::from_secs(60), "Ready", |o| {
            has(o, types::READY, "True", reasons::SUCCEEDED)
        })
        .await?;
    }
    let after = controller
        .wait_for_metrics(Duration::from_secs(10), |t| {
            metric(t, &format!("{WRITES},resource=\"events\"")) == 2.0
        })
        .await?;
    let delta = |prefix: &str| metric(&after, prefix) - metric(&before, prefix);
    let by = |resource: &str| delta(&format!("{WRITES},resource=\"{resource}\""));
    let reconciles = delta(SUCCESSES);
    let slow = delta(DURATION) > 2.0 * reconciles;
    let status = by("packagesources/status");
    anyhow::ensure!(
        reconciles == 1.0
            && by("packages") == 1.0
            && by("packagemetadatas") == 1.0
            && (status == 1.0 || (slow && status == 2.0))
            && by("events") == 1.0
            && delta(WRITES) == 3.0 + status,
        "the second source's writes ({reconciles} reconciles, {:.2}s): packages {}, \
         packagemetadatas {}, status {status}, events {}, in all {}",
        delta(DURATION),
        by("packages"),
        by("packagemetadatas"),
        by("events"),
        delta(WRITES)
    );
    anyhow::ensure!(
        published().await? == 2,
        "{} Published events",
        published().await?
    );
    controller.stop().await
}

/// `versionPolicy: Revision` (the default) in the controller: new content under a published
/// version is released as `0.1.0+packsmith.2` — its own tag, its own release record (a
/// ConfigMap name without the `+`), both in history —, the version's tag stays, and Ready
/// says what changed. Released through records (`publish.enabled: false`): the bed's
/// stand-in Package CRD cannot hold a `+` in a name, kapp-controller's API can.
async fn changed_content_becomes_the_next_revision() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-rev").await?;
    let controller = Running::start(&ns).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/ctl/{ns}/rev", bed().registry);
    let yaml = inline_source(
        "rev",
        &ns,
        &repository,
        "    insecure: true\n  publish: {enabled: false}\n",
    );
    apply_yaml(&client, &ns, &yaml).await?;
    let first = wait_for(&api, "rev", Duration::from_secs(60), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    let first_image = bundle_image(&first);
    // A quick first reconcile writes its status once: no Reconciling step before the result.
    let metrics = controller.metrics().await?;
    anyhow::ensure!(
        metric(&metrics, STATUS_WRITES) == 1.0,
        "status writes on the way to Ready: {}",
        metric(&metrics, STATUS_WRITES)
    );

    let changed = yaml.replace("kind: ConfigMap\\n", "kind: ConfigMap\\ndata: {v: b}\\n");
    anyhow::ensure!(changed != yaml, "the content changed");
    apply_yaml(&client, &ns, &changed).await?;
    let revised = wait_for(&api, "rev", Duration::from_secs(60), "revision 2", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.package.as_ref())
            .is_some_and(|p| p.version == "0.1.0+packsmith.2")
            && has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    let ready = condition(&revised, types::READY).context("Ready")?;
    anyhow::ensure!(
        ready
            .message
            .contains(&format!("changed since {first_image}")),
        "{}",
        ready.message
    );
    let status = revised.status.as_ref().context("status")?;
    let versions: Vec<&str> = status.history.iter().map(|h| h.version.as_str()).collect();
    anyhow::ensure!(versions == ["0.1.0+packsmith.2", "0.1.0"], "{versions:?}");
    let package = status.package.as_ref().context("package")?;
    anyhow::ensure!(
        package.name == "rev.ctl.example.com.0.1.0+packsmith.2"
            && package.config_map.as_deref() == Some("rev.ctl.example.com.0.1.0.packsmith.2"),
        "{package:?}"
    );
    let records: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in [
        "rev.ctl.example.com.0.1.0",
        "rev.ctl.example.com.0.1.0.packsmith.2",
    ] {
        anyhow::ensure!(records.get_opt(name).await?.is_some(), "record {name}");
    }
    // The registry is the record of what each version is.
    let path = format!("ctl/{ns}/rev");
    let first_digest = first_image.rsplit_once('@').map(|(_, d)| d.to_owned());
    anyhow::ensure!(
        super::release::tag_digest(&path, "0.1.0").await? == first_digest,
        "the version's tag stayed"
    );
    anyhow::ensure!(
        super::release::tag_digest(&path, "0.1.0_packsmith.2").await?
            == bundle_image(&revised)
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned()),
        "the revision has its tag"
    );
    controller.stop().await
}

/// `--max-object-disk` 100 KiB: two 30 KiB downloads fit alone but not together with their
/// cached copies (Stalled/DiskBudgetExceeded after the sync, nothing pushed, the work
/// directory removed); one 150 KiB download is stopped at the budget while it arrives; a
/// small source beside them stays Ready; the spec narrowed to one download is Ready again.
async fn disk_budget_stalls_only_the_object_over_it() -> anyhow::Result<()> {
    const BUDGET: u64 = 100 * 1024;
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-disk").await?;
    let reg = bed().registry.clone();
    let dir = bed().www_dir.join(&ns);
    std::fs::create_dir_all(&dir)?;
    for (name, kib) in [("a", 30), ("b", 30), ("huge", 150)] {
        let line = format!("# {name} {}\n", "x".repeat(60));
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            line.repeat(kib * 1024 / line.len()),
        )?;
    }
    let http = |name: &str| {
        format!(
            "    - path: {name}.yaml\n      http: {{url: \"{}/{ns}/{name}.yaml\"}}\n",
            bed().http_url
        )
    };
    let source = |name: &str, files: &[&str]| {
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
spec:
  package: {{refName: {name}.ctl.example.com, version: 1.0.0}}
  contents:
  - path: config
    contents:
{}  bundle: {{repository: "{reg}/ctl/{ns}/{name}", insecure: true}}
"#,
            files.iter().map(|f| http(f)).collect::<String>()
        )
    };
    let controller = Running::start_with(&ns, |o| o.max_object_disk = Some(BUDGET)).await?;
    let work = |name: &str| controller.cache_dir().join(&ns).join(name);
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let ready = |o: &PackageSource| has(o, types::READY, "True", reasons::SUCCEEDED);
    let over = |o: &PackageSource| has(o, types::STALLED, "True", reasons::DISK_BUDGET_EXCEEDED);

    let small = inline_source(
        "small",
        &ns,
        &format!("{reg}/ctl/{ns}/small"),
        "    insecure: true\n",
    );
    apply_yaml(&client, &ns, &small).await?;
    apply_yaml(&client, &ns, &source("big", &["a", "b"])).await?;
    apply_yaml(&client, &ns, &source("huge", &["huge"])).await?;
    for name in ["big", "huge"] {
        let stalled = wait_for(
            &api,
            name,
            Duration::from_secs(90),
            "DiskBudgetExceeded",
            over,
        )
        .await?;
        let message = condition(&stalled, types::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        anyhow::ensure!(
            message.contains("--max-object-disk")
                && message.contains("100.0 KiB")
                && stalled.status.as_ref().is_some_and(|s| s.bundle.is_none()),
            "{name}: {}",
            describe(&stalled)
        );
        anyhow::ensure!(
            !work(name).exists(),
            "{name}: the work directory over its budget was kept"
        );
    }
    wait_for(&api, "small", Duration::from_secs(90), "Ready", ready).await?;
    anyhow::ensure!(
        work("small").is_dir(),
        "the small source lost its work directory"
    );

    // A narrower spec is a new generation: synced cold, within the budget, Ready.
    apply_yaml(&client, &ns, &source("big", &["a"])).await?;
    wait_for(&api, "big", Duration::from_secs(90), "Ready", |o| {
        ready(o) && condition(o, types::STALLED).is_none()
    })
    .await?;
    controller.stop().await
}

/// An http content whose sha256 does not match is Stalled/ChecksumMismatch (retrying cannot
/// help) naming the URL and both digests, nothing is pushed; the corrected spec is Ready.
async fn checksum_mismatch_stalls_until_fixed() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-sum").await?;
    let reg = bed().registry.clone();
    let body = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {ns}}}\n");
    let dir = bed().www_dir.join(&ns);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cm.yaml"), &body)?;
    let actual: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let wrong = "0".repeat(64);
    let url = format!("{}/{ns}/cm.yaml", bed().http_url);
    let source = |sha: &str| {
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: sum
spec:
  package: {{refName: sum.ctl.example.com, version: 1.0.0}}
  contents:
  - path: config
    contents:
    - path: .
      http: {{url: "{url}", sha256: "{sha}"}}
  bundle: {{repository: "{reg}/ctl/{ns}/sum", insecure: true}}
"#
        )
    };
    let controller = Running::start(&ns).await?;
    apply_yaml(&client, &ns, &source(&wrong)).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let stalled = wait_for(
        &api,
        "sum",
        Duration::from_secs(90),
        "Stalled/ChecksumMismatch",
        |o| has(o, types::STALLED, "True", reasons::CHECKSUM_MISMATCH),
    )
    .await?;
    let message = condition(&stalled, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        has(
            &stalled,
            types::CONTENT_SYNCED,
            "False",
            reasons::CHECKSUM_MISMATCH
        ) && stalled.status.as_ref().is_some_and(|s| s.bundle.is_none())
            && message.contains(&url)
            && message.contains(&actual),
        "{}",
        describe(&stalled)
    );
    apply_yaml(&client, &ns, &source(&actual)).await?;
    wait_for(&api, "sum", Duration::from_secs(90), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED) && condition(o, types::STALLED).is_none()
    })
    .await?;
    controller.stop().await
}

/// Adds a commit tagged `tag` to `main` of the bed's `<name>.git`.
fn tag_upstream(name: &str, tag: &str) -> anyhow::Result<()> {
    commit_upstream(name, "deploy/version.txt", tag)?;
    let bare = bed().git_dir.join(format!("{name}.git"));
    git(&bare, &["tag", tag, "main"])?;
    Ok(())
}

/// `versionFrom` + a git `refSelection.semver`: a new upstream tag inside the constraints
/// becomes a new Package version at the next interval; the older version stays published; a
/// tag outside the constraints changes nothing.
async fn auto_bumps_on_a_new_matching_tag() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-bump").await?;
    let reg = bed().registry.clone();
    let repo = format!("ctl-bump-{ns}");
    make_repo(&repo, &[("deploy/cm.yaml", "kind: ConfigMap\n")], "v1.0.0")?;
    let controller = Running::start(&ns).await?;
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: bump
spec:
  package:
    refName: bump.ctl.example.com
    versionFrom: {{directory: config/upstream}}
  contents:
  - path: config/upstream
    contents:
    - path: .
      git:
        url: "{git}/{repo}.git"
        refSelection: {{semver: {{constraints: ">=1.0.0 <2.0.0"}}}}
  bundle: {{repository: "{reg}/ctl/{ns}/bump", insecure: true}}
  interval: 2s
"#,
            git = bed().git_url
        ),
    )
    .await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let version_is = |v: &'static str| {
        move |o: &PackageSource| {
            has(o, types::READY, "True", reasons::SUCCEEDED)
                && o.status
                    .as_ref()
                    .and_then(|s| s.package.as_ref())
                    .map(|p| p.version.as_str())
                    == Some(v)
        }
    };
    wait_for(
        &api,
        "bump",
        Duration::from_secs(90),
        "1.0.0",
        version_is("1.0.0"),
    )
    .await?;

    // Outside the constraints first, then inside: only the matching one is released.
    tag_upstream(&repo, "v2.0.0")?;
    tag_upstream(&repo, "v1.1.0")?;
    let bumped = wait_for(
        &api,
        "bump",
        Duration::from_secs(90),
        "1.1.0",
        version_is("1.1.0"),
    )
    .await?;
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    for (name, present) in [
        ("bump.ctl.example.com.1.0.0", true),
        ("bump.ctl.example.com.1.1.0", true),
        ("bump.ctl.example.com.2.0.0", false),
    ] {
        anyhow::ensure!(
            packages.get_opt(name).await?.is_some() == present,
            "Package {name} present should be {present}"
        );
    }
    let history: Vec<String> = bumped
        .status
        .as_ref()
        .map(|s| s.history.iter().map(|h| h.version.clone()).collect())
        .unwrap_or_default();
    anyhow::ensure!(history == ["1.1.0", "1.0.0"], "history {history:?}");
    controller.stop().await
}

/// With `--cache-max-size` below what two sources need, reconciling the second evicts the
/// first's work directory (idle, least recently used); the first still reconciles (cold)
/// when asked to.
async fn cache_cap_evicts_idle_work_dirs() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-cap").await?;
    let reg = bed().registry.clone();
    let controller = Running::start_with(&ns, |o| o.cache_max_size = Some(1)).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let work = |name: &str| controller.cache_dir().join(&ns).join(name);
    let ready = |o: &PackageSource| has(o, types::READY, "True", reasons::SUCCEEDED);
    let source = |name: &str| {
        inline_source(
            name,
            &ns,
            &format!("{reg}/ctl/{ns}/{name}"),
            "    insecure: true\n",
        )
    };
    apply_yaml(&client, &ns, &source("first")).await?;
    wait_for(&api, "first", Duration::from_secs(90), "Ready", ready).await?;
    anyhow::ensure!(work("first").is_dir(), "no work directory for first");
    apply_yaml(&client, &ns, &source("second")).await?;
    wait_for(&api, "second", Duration::from_secs(90), "Ready", ready).await?;
    anyhow::ensure!(
        !work("first").exists() && work("second").is_dir(),
        "over the cap, the idle first work directory was kept"
    );
    // A directory is evicted only while idle: let the no-op reconciles that follow a first
    // publication (the watch of the Package it created) end before asking for `first`, or
    // `second` may be busy, and kept, at the moment `first` is used again.
    let quiet = Instant::now() + Duration::from_secs(20);
    let mut idle_samples = 0;
    while idle_samples < 5 {
        let in_flight = metric(
            &controller.metrics().await?,
            "packsmith_reconcile_in_flight{kind=\"PackageSource\"",
        );
        idle_samples = if in_flight == 0.0 {
            idle_samples + 1
        } else {
            0
        };
        anyhow::ensure!(
            Instant::now() < quiet,
            "{in_flight} reconciles still in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Evicted is not broken: a requested reconcile syncs it again from scratch.
    api.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
            "packsmith.dev/requestedAt": "evicted"}}})),
    )
    .await?;
    wait_for(
        &api,
        "first",
        Duration::from_secs(90),
        "the request handled",
        |o| {
            ready(o)
                && o.status
                    .as_ref()
                    .and_then(|s| s.last_handled_reconcile_at.as_deref())
                    == Some("evicted")
        },
    )
    .await?;
    anyhow::ensure!(
        work("first").is_dir() && !work("second").exists(),
        "after first's reconcile: first {}, second {}",
        if work("first").is_dir() {
            "kept"
        } else {
            "gone"
        },
        if work("second").exists() {
            "kept"
        } else {
            "gone"
        }
    );
    controller.stop().await
}

/// A controller on its own multi-threaded runtime, watching one namespace.
pub struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    metrics: SocketAddr,
    health: SocketAddr,
    webhook: Option<SocketAddr>,
    _cache: tempfile::TempDir,
}

impl Running {
    pub async fn start(namespace: &str) -> anyhow::Result<Self> {
        Self::start_with(namespace, |_| {}).await
    }

    /// [`start`](Self::start) with `customize` applied to the options.
    pub async fn start_with(
        namespace: &str,
        customize: impl FnOnce(&mut Options),
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let cache = tempfile::tempdir()?;
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut options = Options {
            namespace: Some(namespace.to_owned()),
            concurrency: 2,
            cache_dir: cache.path().to_owned(),
            metrics_addr: "127.0.0.1:0".to_owned(),
            health_addr: "127.0.0.1:0".to_owned(),
            handle_signals: false,
            ..Options::default()
        };
        customize(&mut options);
        let done = runtime.spawn(async move {
            let client = bed().client().await?;
            let controller = Controller::bind(client, options).await?;
            let _ = addr_tx.send((
                controller.metrics_addr(),
                controller.health_addr(),
                controller.webhook_addr(),
            ));
            controller
                .run(async move {
                    let _ = stopped.await;
                })
                .await?;
            anyhow::Ok(())
        });
        let (metrics, health, webhook) = match addr_rx.await {
            Ok(addrs) => addrs,
            Err(_) => {
                let err = match done.await {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the controller stopped at once"),
                    Err(e) => anyhow::anyhow!("the controller task failed: {e}"),
                };
                runtime.shutdown_background();
                return Err(err.context("starting the controller"));
            }
        };
        Ok(Self {
            runtime: Some(runtime),
            stop: Some(stop),
            done: Some(done),
            metrics,
            health,
            webhook,
            _cache: cache,
        })
    }

    async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let response = reqwest::get(format!("http://{addr}{path}")).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The controller's `--cache-dir`.
    /// Where Receivers are served (`Options::webhook_addr` set).
    pub fn webhook(&self) -> Option<SocketAddr> {
        self.webhook
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        self._cache.path()
    }

    /// The status code of `/readyz`.
    pub async fn readyz(&self) -> anyhow::Result<u16> {
        Ok(self.get(self.health, "/readyz").await?.0)
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.get(self.metrics, "/metrics").await?.1)
    }

    /// The metrics text once `pred` holds for it.
    pub async fn wait_for_metrics(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics().await?;
            if pred(&text) {
                return Ok(text);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "metrics not as expected within {timeout:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the controller ends by itself (no stop sent), with its result.
    pub async fn finished(mut self) -> anyhow::Result<()> {
        let result = match self.done.take() {
            Some(done) => done
                .await
                .map_err(|e| anyhow::anyhow!("controller task: {e}"))?,
            None => Ok(()),
        };
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        result
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.done.take() {
            Some(done) => tokio::time::timeout(Duration::from_secs(60), done)
                .await
                .map_err(|_| anyhow::anyhow!("the controller did not stop within 60s"))?
                .map_err(|e| anyhow::anyhow!("controller task: {e}"))?,
            None => Ok(()),
        };
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        result
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Sum of the samples whose line starts with `prefix` (name plus the start of its labels).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const STATUS_WRITES: &str =
    "packsmith_api_writes_total{kind=\"PackageSource\",resource=\"packagesources/status\"";
const PACKAGE_WRITES: &str =
    "packsmith_api_writes_total{kind=\"PackageSource\",resource=\"packages\"";
pub const SUCCESSES: &str = "packsmith_reconcile_total{kind=\"PackageSource\",result=\"success\"";

pub fn condition<'a>(obj: &'a PackageSource, type_: &str) -> Option<&'a Condition> {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

pub fn has(obj: &PackageSource, type_: &str, status: &str, reason: &str) -> bool {
    condition(obj, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// Whether no controller has reported on `obj`: its status is what the API server defaults it
/// to (`observedGeneration: -1`, Flux's convention) and nothing else.
pub fn never_reconciled(obj: &PackageSource) -> bool {
    obj.status.as_ref()
        == Some(&packsmith::api::PackageSourceStatus {
            observed_generation: Some(-1),
            ..Default::default()
        })
}

pub fn describe(obj: &PackageSource) -> String {
    serde_json::to_string_pretty(&obj.status).unwrap_or_default()
}

/// Polls `name` until `pred` holds.
pub async fn wait_for(
    api: &Api<PackageSource>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&PackageSource) -> bool,
) -> anyhow::Result<PackageSource> {
    let deadline = Instant::now() + timeout;
    loop {
        let obj = api.get(name).await?;
        if pred(&obj) {
            return Ok(obj);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{name}: not {what} within {timeout:?}; status:\n{}",
                describe(&obj)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn request_reconcile(
    api: &Api<PackageSource>,
    name: &str,
    value: &str,
) -> anyhow::Result<()> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {packsmith::api::REQUESTED_AT_ANNOTATION: value}}
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub fn bundle_image(obj: &PackageSource) -> String {
    obj.status
        .as_ref()
        .and_then(|s| s.bundle.as_ref())
        .map(|b| b.image.clone())
        .unwrap_or_default()
}

pub fn fetched_image(p: &Package) -> Option<String> {
    p.spec
        .template
        .spec
        .fetch
        .iter()
        .find_map(|f| f.imgpkg_bundle.as_ref().map(|b| b.image.clone()))
}

/// Adds a commit to `main` of the bed's `<name>.git`.
fn commit_upstream(name: &str, path: &str, content: &str) -> anyhow::Result<String> {
    let bare = bed().git_dir.join(format!("{name}.git"));
    let work = tempfile::tempdir()?;
    let bare_s = bare.to_str().expect("utf-8 path");
    git(work.path(), &["clone", "-q", bare_s, "."])?;
    let file = work.path().join(path);
    std::fs::create_dir_all(file.parent().expect("file has a parent"))?;
    std::fs::write(file, content)?;
    git(work.path(), &["add", "-A"])?;
    git(work.path(), &["commit", "-q", "-m", "upstream change"])?;
    git(work.path(), &["push", "-q", "origin", "main"])?;
    git(work.path(), &["rev-parse", "HEAD"])
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  template:\n    spec:\n      containers:\n      - name: demo\n        image: quay.io/example/ctl-demo:v1.0.0\n";

async fn publishes_follows_upstream_and_cleans_up() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-main").await?;
    let reg = bed().registry.clone();
    push_image(
        &Registry::plain(bed()),
        "example/ctl-demo",
        "v1.0.0",
        ImageKind::MultiArch,
        "controller",
    )
    .await?;
    let repo = format!("ctl-{ns}");
    make_repo(&repo, &[("deploy/deployment.yaml", DEPLOYMENT)], "v1.0.0")?;
    let controller = Running::start(&ns).await?;

    let source_yaml = format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: demo
spec:
  package:
    refName: demo.ctl.example.com
    version: 1.0.0
    metadata:
      displayName: Demo
  contents:
  - path: config/upstream
    contents:
    - path: .
      git:
        url: {git}/{repo}.git
        ref: origin/main
  images:
    mirrors:
    - from: quay.io
      to: {reg}
      insecure: true
  bundle:
    repository: {reg}/ctl/{ns}/demo
    insecure: true
  publish:
    retain: 2
    # The upstream moves under one version. Overwrite: the bed's stand-in Package CRD cannot
    # hold a revision's `+` in a name (kapp-controller's API can; release::published_versions_
    # are_immutable and the unit tests cover revisions).
    versionPolicy: Overwrite
  interval: 3s
"#,
        git = bed().git_url
    );
    apply_yaml(&client, &ns, &source_yaml).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let ready = wait_for(&api, "demo", Duration::from_secs(120), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;

    // Status: kstatus conditions, the artifact, the Package.
    let status = ready.status.clone().unwrap_or_default();
    let image = bundle_image(&ready);
    anyhow::ensure!(
        image.starts_with(&format!("{reg}/ctl/{ns}/demo@sha256:")),
        "{image}"
    );
    let short = status
        .bundle
        .as_ref()
        .map(|b| b.short_digest.clone())
        .unwrap_or_default();
    anyhow::ensure!(short.len() == 12 && image.contains(&short), "{short}");
    let ready_cond = condition(&ready, types::READY)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no Ready condition"))?;
    anyhow::ensure!(
        ready_cond.message.contains("1.0.0") && ready_cond.message.contains(&image),
        "Ready message: {}",
        ready_cond.message
    );
    anyhow::ensure!(status.observed_generation == ready.metadata.generation);
    for absent in [types::RECONCILING, types::STALLED] {
        anyhow::ensure!(
            condition(&ready, absent).is_none(),
            "{absent} left: {}",
            describe(&ready)
        );
    }
    for stage in [
        types::CONTENT_SYNCED,
        types::IMAGES_LOCKED,
        types::BUNDLE_PUSHED,
        types::PACKAGE_PUBLISHED,
    ] {
        anyhow::ensure!(
            has(&ready, stage, "True", reasons::SUCCEEDED),
            "{stage}: {}",
            describe(&ready)
        );
    }
    anyhow::ensure!(
        status.images.as_ref().is_some_and(
            |i| i.count == 1 && i.locked[0].starts_with("quay.io/example/ctl-demo@sha256:")
        ),
        "images: {:?}",
        status.images
    );
    anyhow::ensure!(
        status.contents.len() == 1,
        "contents: {:?}",
        status.contents
    );
    anyhow::ensure!(ready.finalizers().iter().any(|f| f == FINALIZER));

    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    let metadata: Api<PackageMetadata> = Api::namespaced(client.clone(), &ns);
    let package = packages.get("demo.ctl.example.com.1.0.0").await?;
    anyhow::ensure!(
        fetched_image(&package).as_deref() == Some(image.as_str()),
        "Package fetches {:?}, status says {image}",
        fetched_image(&package)
    );
    let labels = package.labels();
    anyhow::ensure!(
        labels.get("packsmith.dev/source-name").map(String::as_str) == Some("demo")
            && labels.get("packsmith.dev/source-namespace") == Some(&ns)
            && labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str)
                == Some("packsmith"),
        "labels: {labels:?}"
    );
    metadata.get("demo.ctl.example.com").await?;

    // The bundle is pullable and holds the synced upstream.
    let registry = packsmith::registry::Registry::new(packsmith::registry::RegistryOptions {
        insecure_hosts: vec![reg.clone()],
        ..Default::default()
    })?;
    let pulled = tempfile::tempdir()?;
    packsmith::bundle::pull(
        &registry,
        &packsmith::bundle::Location::parse(&image)?,
        &pulled.path().join("out"),
    )
    .await?;
    anyhow::ensure!(
        pulled
            .path()
            .join("out/config/upstream/deploy/deployment.yaml")
            .is_file(),
        "the pulled bundle lacks the upstream's deployment"
    );

    // Steady state: reconciles at the 3s interval find nothing new and write nothing.
    let before = controller.metrics().await?;
    let (writes0, packages0, successes0) = (
        metric(&before, STATUS_WRITES),
        metric(&before, PACKAGE_WRITES),
        metric(&before, SUCCESSES),
    );
    let rv0 = ready.resource_version();
    let package_rv0 = package.resource_version();
    // Three interval reconciles, however long a loaded machine takes for them.
    let window = Instant::now();
    let deadline = window + Duration::from_secs(90);
    let after = loop {
        let now = controller.metrics().await?;
        if metric(&now, SUCCESSES) - successes0 >= 3.0 {
            break now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} reconciles in {:?} at a 3s interval",
            metric(&now, SUCCESSES) - successes0,
            window.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let window = window.elapsed();
    let steady_reconciles = metric(&after, SUCCESSES) - successes0;
    let steady_writes =
        metric(&after, STATUS_WRITES) - writes0 + metric(&after, PACKAGE_WRITES) - packages0;
    let took = |t: &str| {
        metric(
            t,
            "packsmith_reconcile_duration_seconds_sum{kind=\"PackageSource\"}",
        )
    };
    eprintln!(
        "controller steady state: {steady_reconciles} reconciles in {window:.1?}, {steady_writes} \
         API writes, {:.3}s per reconcile",
        (took(&after) - took(&before)) / steady_reconciles.max(1.0)
    );
    anyhow::ensure!(
        steady_writes == 0.0,
        "{steady_writes} writes in steady state"
    );
    anyhow::ensure!(
        api.get("demo").await?.resource_version() == rv0,
        "the PackageSource changed in steady state"
    );
    anyhow::ensure!(
        packages
            .get("demo.ctl.example.com.1.0.0")
            .await?
            .resource_version()
            == package_rv0,
        "the Package changed in steady state"
    );

    // requestedAt with no upstream change: handled with exactly one status write (the echo),
    // no condition transition, no Package write.
    request_reconcile(&api, "demo", "2026-01-01T00:00:00Z").await?;
    let handled = wait_for(&api, "demo", Duration::from_secs(60), "handled", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some("2026-01-01T00:00:00Z")
    })
    .await?;
    let now = controller.metrics().await?;
    anyhow::ensure!(
        metric(&now, STATUS_WRITES) - writes0 == 1.0 && metric(&now, PACKAGE_WRITES) == packages0,
        "a requestedAt without change wrote {} status and {} Package updates",
        metric(&now, STATUS_WRITES) - writes0,
        metric(&now, PACKAGE_WRITES) - packages0
    );
    anyhow::ensure!(
        condition(&handled, types::READY).map(|c| &c.last_transition_time)
            == Some(&ready_cond.last_transition_time)
    );
    anyhow::ensure!(bundle_image(&handled) == image);

    // A new upstream commit, asked for now: a new digest on status and on the Package.
    commit_upstream(
        &repo,
        "deploy/extra.yaml",
        "kind: ConfigMap\napiVersion: v1\nmetadata: {name: extra}\n",
    )?;
    request_reconcile(&api, "demo", "2026-01-01T00:01:00Z").await?;
    let moved = wait_for(
        &api,
        "demo",
        Duration::from_secs(60),
        "at a new digest",
        |o| {
            bundle_image(o) != image
                && has(o, types::READY, "True", reasons::SUCCEEDED)
                && o.status
                    .as_ref()
                    .and_then(|s| s.last_handled_reconcile_at.as_deref())
                    == Some("2026-01-01T00:01:00Z")
        },
    )
    .await?;
    let new_image = bundle_image(&moved);
    let package = packages.get("demo.ctl.example.com.1.0.0").await?;
    anyhow::ensure!(fetched_image(&package).as_deref() == Some(new_image.as_str()));
    let history = moved.status.clone().unwrap_or_default().history;
    anyhow::ensure!(
        history.len() == 1 && history[0].image == new_image,
        "history: {history:?}"
    );

    // A Published event was recorded.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let published = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("Published"));
    anyhow::ensure!(published, "no Published event");

    // Probes and metrics.
    let (code, _) = controller.get(controller.health, "/healthz").await?;
    anyhow::ensure!(code == 200, "/healthz {code}");
    let (code, _) = controller.get(controller.health, "/readyz").await?;
    anyhow::ensure!(code == 200, "/readyz {code}");
    let text = controller.metrics().await?;
    anyhow::ensure!(
        text.contains("packsmith_reconcile_duration_seconds_count{kind=\"PackageSource\"}")
            && text.contains("stage=\"pipeline\""),
        "metrics:\n{text}"
    );
    for stage in ["sync", "lock", "push", "render", "publish"] {
        let count = metric(
            &text,
            &format!(
                "packsmith_stage_duration_seconds_count{{kind=\"PackageSource\",stage=\"{stage}\"}}"
            ),
        );
        anyhow::ensure!(count >= 1.0, "no {stage} duration recorded:\n{text}");
    }
    // At least the tag/blob HEADs and uploads of the pushes above.
    let requests = metric(
        &text,
        "packsmith_registry_requests_total{kind=\"PackageSource\"}",
    );
    anyhow::ensure!(requests >= 4.0, "registry requests {requests}:\n{text}");

    // Deletion removes what the source published.
    api.delete("demo", &DeleteParams::default()).await?;
    wait_gone(&api, "demo", Duration::from_secs(60)).await?;
    anyhow::ensure!(
        packages
            .get_opt("demo.ctl.example.com.1.0.0")
            .await?
            .is_none(),
        "the Package outlived its source"
    );
    anyhow::ensure!(
        metadata.get_opt("demo.ctl.example.com").await?.is_none(),
        "the PackageMetadata outlived its source"
    );
    controller.stop().await
}

pub fn inline_source(name: &str, ns: &str, repository: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: {name}
  namespace: {ns}
spec:
  package:
    refName: {name}.ctl.example.com
    version: 0.1.0
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          app.yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"
  bundle:
    repository: {repository}
{extra_spec}"#
    )
}

async fn failures_suspend_and_orphan() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-fail").await?;
    let reg = bed().registry.clone();
    let repo = format!("ctl-{ns}");
    make_repo(&repo, &[("deploy/cm.yaml", "kind: ConfigMap\n")], "v1.0.0")?;
    let controller = Running::start(&ns).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);

    // A git ref that does not exist (yet): retryable, so not Stalled, and retried with backoff.
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: badref
spec:
  package: {{refName: badref.ctl.example.com, version: 1.0.0}}
  contents:
  - path: config/upstream
    contents:
    - path: .
      git: {{url: "{git}/{repo}.git", ref: v9.9.9}}
  bundle: {{repository: "{reg}/ctl/{ns}/badref", insecure: true}}
"#,
            git = bed().git_url
        ),
    )
    .await?;

    // A registry that answers 401: Stalled, and not retried.
    let ca = std::fs::read(&bed().registry_tls_ca)?;
    let docker_config = serde_json::json!({"auths": {bed().registry_tls.clone(): {
        "username": bed().registry_user, "password": "wrong-password"}}});
    let secrets_yaml = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: push-creds}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{docker_config}'
---
apiVersion: v1
kind: Secret
metadata: {{name: registry-ca}}
stringData:
  ca.crt: |
{ca}
"#,
        ca = String::from_utf8(ca)?
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    apply_yaml(&client, &ns, &secrets_yaml).await?;
    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "unauthorized",
            &ns,
            &format!("{}/ctl/{ns}/unauthorized", bed().registry_tls),
            "    secretRef: {name: push-creds}\n    caSecretRef: {name: registry-ca}\n",
        ),
    )
    .await?;

    // Suspended from the start, published with deletionPolicy Orphan once resumed.
    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "orphan",
            &ns,
            &format!("{reg}/ctl/{ns}/orphan"),
            "    insecure: true\n  publish: {deletionPolicy: Orphan}\n  suspend: true\n",
        ),
    )
    .await?;

    // A bundle Secret that does not exist (yet): retryable, on the push stage.
    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "nosecret",
            &ns,
            &format!("{reg}/ctl/{ns}/nosecret"),
            "    insecure: true\n    secretRef: {name: not-created-yet}\n",
        ),
    )
    .await?;

    let stalled = wait_for(
        &api,
        "unauthorized",
        Duration::from_secs(90),
        "Stalled",
        |o| has(o, types::STALLED, "True", reasons::AUTHENTICATION_FAILED),
    )
    .await?;
    anyhow::ensure!(
        has(
            &stalled,
            types::READY,
            "False",
            reasons::AUTHENTICATION_FAILED
        ) && has(
            &stalled,
            types::BUNDLE_PUSHED,
            "False",
            reasons::AUTHENTICATION_FAILED
        ) && has(&stalled, types::CONTENT_SYNCED, "True", reasons::SUCCEEDED)
            && has(
                &stalled,
                types::PACKAGE_PUBLISHED,
                "False",
                reasons::DEPENDENCY_NOT_READY
            )
            && condition(&stalled, types::RECONCILING).is_none(),
        "{}",
        describe(&stalled)
    );
    let message = condition(&stalled, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        !message.contains("wrong-password"),
        "the message leaks the password: {message}"
    );

    let failing = wait_for(
        &api,
        "badref",
        Duration::from_secs(90),
        "FetchFailed",
        |o| has(o, types::READY, "False", reasons::FETCH_FAILED),
    )
    .await?;
    anyhow::ensure!(
        has(
            &failing,
            types::CONTENT_SYNCED,
            "False",
            reasons::FETCH_FAILED
        ) && has(
            &failing,
            types::IMAGES_LOCKED,
            "False",
            reasons::DEPENDENCY_NOT_READY
        ) && condition(&failing, types::STALLED).is_none()
            && condition(&failing, types::RECONCILING).is_none(),
        "{}",
        describe(&failing)
    );
    let message = condition(&failing, types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(
        message.contains("v9.9.9"),
        "the message does not name the ref: {message}"
    );

    let missing = wait_for(
        &api,
        "nosecret",
        Duration::from_secs(90),
        "ReferenceNotFound",
        |o| has(o, types::READY, "False", reasons::REFERENCE_NOT_FOUND),
    )
    .await?;
    anyhow::ensure!(
        has(
            &missing,
            types::BUNDLE_PUSHED,
            "False",
            reasons::REFERENCE_NOT_FOUND
        ) && condition(&missing, types::STALLED).is_none()
            && condition(&missing, types::READY)
                .is_some_and(|c| c.message.contains("not-created-yet")),
        "{}",
        describe(&missing)
    );

    // Retried with backoff (750 ms, 1.5 s, 3 s …) while the stalled one is not retried: its
    // count stays put while the failing one is retried again (no clock in the assertion).
    const RETRIES: &str = "packsmith_reconcile_total{kind=\"PackageSource\",result=\"failure\",reason=\"FetchFailed\"}";
    const STALLS: &str = "packsmith_reconcile_total{kind=\"PackageSource\",result=\"stalled\",reason=\"AuthenticationFailed\"}";
    let text = controller.metrics().await?;
    let (stalls, retries) = (metric(&text, STALLS), metric(&text, RETRIES));
    anyhow::ensure!(stalls >= 1.0, "no stalled reconcile counted:\n{text}");
    let text = controller
        .wait_for_metrics(Duration::from_secs(90), |text| {
            metric(text, RETRIES) >= (retries + 1.0).max(3.0)
        })
        .await
        .context("FetchFailed is not retried with backoff")?;
    anyhow::ensure!(
        metric(&text, STALLS) == stalls,
        "the stalled source was reconciled again ({} times, {stalls} before) with nothing changed",
        metric(&text, STALLS)
    );

    // A Warning event names the reason, once.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    anyhow::ensure!(
        warnings
            .iter()
            .any(|e| e.reason.as_deref() == Some(reasons::AUTHENTICATION_FAILED)),
        "no AuthenticationFailed warning: {warnings:?}"
    );

    // Fixing the Secret un-stalls it: no change to the PackageSource needed.
    let fixed = serde_json::json!({"auths": {bed().registry_tls.clone(): {
        "username": bed().registry_user, "password": bed().registry_password}}});
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: push-creds}}\ntype: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{fixed}'\n"
        ),
    )
    .await?;
    let ready = wait_for(
        &api,
        "unauthorized",
        Duration::from_secs(90),
        "Ready after the Secret was fixed",
        |o| has(o, types::READY, "True", reasons::SUCCEEDED),
    )
    .await?;
    anyhow::ensure!(
        condition(&ready, types::STALLED).is_none(),
        "{}",
        describe(&ready)
    );

    // The suspended source was left alone: no status, no finalizer, no Package.
    let orphan = api.get("orphan").await?;
    anyhow::ensure!(
        never_reconciled(&orphan) && orphan.finalizers().is_empty(),
        "a suspended source was touched: {:?} {:?}",
        orphan.status,
        orphan.finalizers()
    );
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    anyhow::ensure!(
        packages
            .get_opt("orphan.ctl.example.com.0.1.0")
            .await?
            .is_none()
    );

    // Resumed: published; deleted with deletionPolicy Orphan: the Package stays.
    api.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
    )
    .await?;
    wait_for(&api, "orphan", Duration::from_secs(90), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    api.delete("orphan", &DeleteParams::default()).await?;
    wait_gone(&api, "orphan", Duration::from_secs(60)).await?;
    anyhow::ensure!(
        packages
            .get_opt("orphan.ctl.example.com.0.1.0")
            .await?
            .is_some(),
        "deletionPolicy Orphan deleted the Package"
    );

    // The missing tag appears upstream: the retrying source recovers by itself.
    tag_upstream(&repo, "v9.9.9")?;
    wait_for(
        &api,
        "badref",
        Duration::from_secs(120),
        "Ready once the tag exists",
        |o| has(o, types::READY, "True", reasons::SUCCEEDED),
    )
    .await?;

    for name in ["badref", "unauthorized", "nosecret"] {
        api.delete(name, &DeleteParams::default()).await?;
        wait_gone(&api, name, Duration::from_secs(60)).await?;
    }
    controller.stop().await
}
