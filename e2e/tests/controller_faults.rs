//! Faults that touch what every other trial shares, so they run alone:
//! - the controller killed (SIGKILL) in the middle of a push, then started again: nothing was
//!   published for the half-pushed bundle, and the new process converges to Ready with a
//!   Package whose bundle the registry serves. The controller runs as the real binary
//!   (`packsmith controller`), so the kill is a real one; the plain registry is frozen
//!   (SIGSTOP) to hold the push in flight.
//! - kapp-controller's packaging API missing from the cluster (its CRDs deleted): the bundle
//!   is still pushed and on status, Ready=False `PackagingAPIMissing` (not Stalled), and the
//!   Package is applied at the next interval once the API is back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::Api;
use libtest_mimic::Trial;
use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};
use packsmith::carvel::Package;

use crate::support::{apply_yaml, bed, namespace};
use crate::tests::controller::{bundle_image, has, inline_source, metric, wait_for};

pub fn serial_trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "controller_faults::killed_mid_push_converges_after_restart",
            || crate::support::block_on(killed_mid_push_converges_after_restart()),
        ),
        Trial::test(
            "controller_faults::packaging_api_missing_then_installed",
            || crate::support::block_on(packaging_api_missing_then_installed()),
        ),
    ]
}

/// A `packsmith controller` process; killed when dropped.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn start(ns: &str, cache: &Path, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args([
                "controller",
                &format!("--namespace={ns}"),
                "--metrics-addr=127.0.0.1:0",
                "--health-addr=127.0.0.1:0",
                &format!("--cache-dir={}", cache.display()),
                &format!("--kubeconfig={}", bed().kubeconfig.display()),
            ])
            .env("PACKSMITH_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting packsmith controller")?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The metrics address the process logged at start.
    async fn metrics_addr(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(addr) = self
                .log()
                .lines()
                .filter(|l| l.contains("packsmith controller started"))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("metrics="))
                        .map(str::to_owned)
                })
            {
                return Ok(addr);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the controller did not log its start within 60s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resumes the registry even when the test fails half-way.
struct Frozen(bool);

impl Frozen {
    fn freeze() -> anyhow::Result<Self> {
        bed().registry_ctl("pause", "plain")?;
        Ok(Self(true))
    }

    fn thaw(mut self) -> anyhow::Result<()> {
        self.0 = false;
        bed().registry_ctl("resume", "plain")
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.0 {
            let _ = bed().registry_ctl("resume", "plain");
        }
    }
}

async fn killed_mid_push_converges_after_restart() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-kill").await?;
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let mut first = Process::start(&ns, &cache, &work.path().join("first.log"))?;
    let metrics_addr = first.metrics_addr().await?;

    let frozen = Frozen::freeze()?;
    let repository = format!("{}/ctl/{ns}/killed", bed().registry);
    apply_yaml(
        &client,
        &ns,
        &inline_source("killed", &ns, &repository, "    insecure: true\n"),
    )
    .await?;

    // Sync and lock are done (inline content, no images: no registry request), the push is
    // not: the registry is frozen, so the process is inside the push.
    let lock = "packsmith_stage_duration_seconds_count{kind=\"PackageSource\",stage=\"lock\"}";
    let push = "packsmith_stage_duration_seconds_count{kind=\"PackageSource\",stage=\"push\"}";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await?
            .text()
            .await?;
        if metric(&text, lock) >= 1.0 {
            anyhow::ensure!(
                metric(&text, push) == 0.0,
                "the push finished against a frozen registry:\n{text}"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the controller did not reach the push within 90s:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill()?;
    frozen.thaw()?;

    // Nothing was published for a bundle the registry never confirmed.
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    anyhow::ensure!(
        packages
            .get_opt("killed.ctl.example.com.0.1.0")
            .await?
            .is_none(),
        "a Package was applied before its bundle was pushed"
    );
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let half = sources.get("killed").await?;
    anyhow::ensure!(
        half.status
            .as_ref()
            .is_none_or(|s| s.bundle.is_none() && s.package.is_none()),
        "status records an artifact from the killed run: {:?}",
        half.status
    );

    // A new process (same cache directory, as a restarted Pod with a persistent volume would
    // have) converges.
    let second = Process::start(&ns, &cache, &work.path().join("second.log"))?;
    let ready = wait_for(&sources, "killed", Duration::from_secs(120), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await
    .map_err(|e| e.context(format!("second controller log:\n{}", second.log())))?;
    let image = bundle_image(&ready);
    let package = packages.get("killed.ctl.example.com.0.1.0").await?;
    let fetched = package
        .spec
        .template
        .spec
        .fetch
        .iter()
        .find_map(|f| f.imgpkg_bundle.as_ref().map(|b| b.image.clone()))
        .unwrap_or_default();
    anyhow::ensure!(
        fetched == image,
        "Package fetches {fetched}, status says {image}"
    );

    // The registry serves that digest: the Package points at a complete bundle.
    let digest = image
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let url = format!(
        "http://{}/v2/ctl/{ns}/killed/manifests/{digest}",
        bed().registry
    );
    let response = reqwest::Client::new()
        .head(&url)
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "HEAD {url}: {}",
        response.status()
    );
    drop(second);
    Ok(())
}

/// Reinstalls the packaging CRDs even when the test fails half-way.
struct Uninstalled(bool);

impl Drop for Uninstalled {
    fn drop(&mut self) {
        if self.0 {
            // On its own thread: this may run inside the test's runtime.
            let _ = std::thread::spawn(|| crate::support::block_on(crate::tests::crds::install()))
                .join();
        }
    }
}

async fn packaging_api_missing_then_installed() -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-noapi").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let gone = Uninstalled(true);
    for name in [
        "packages.data.packaging.carvel.dev",
        "packagemetadatas.data.packaging.carvel.dev",
    ] {
        crds.delete(name, &Default::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while crds
        .get_opt("packages.data.packaging.carvel.dev")
        .await?
        .is_some()
        || crds
            .get_opt("packagemetadatas.data.packaging.carvel.dev")
            .await?
            .is_some()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the packaging CRDs are not gone after 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let controller = crate::tests::controller::Running::start(&ns).await?;
    let repository = format!("{}/ctl/{ns}/noapi", bed().registry);
    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "noapi",
            &ns,
            &repository,
            "    insecure: true\n  interval: 2s\n",
        ),
    )
    .await?;
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let missing = wait_for(
        &sources,
        "noapi",
        Duration::from_secs(90),
        "PackagingAPIMissing",
        |o| has(o, types::READY, "False", reasons::PACKAGING_API_MISSING),
    )
    .await?;
    let status = missing.status.clone().unwrap_or_default();
    anyhow::ensure!(
        has(&missing, types::BUNDLE_PUSHED, "True", reasons::SUCCEEDED)
            && has(
                &missing,
                types::PACKAGE_PUBLISHED,
                "False",
                reasons::PACKAGING_API_MISSING
            )
            && status.bundle.is_some()
            && !status.conditions.iter().any(|c| c.type_ == types::STALLED),
        "{}",
        crate::tests::controller::describe(&missing)
    );
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    anyhow::ensure!(message.contains("kapp-controller"), "{message}");

    // kapp-controller installed: the next interval applies the Package, nothing else changed.
    crate::tests::crds::install().await?;
    let mut gone = gone;
    gone.0 = false;
    let ready = wait_for(&sources, "noapi", Duration::from_secs(90), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    anyhow::ensure!(bundle_image(&ready) == bundle_image(&missing));
    let packages: Api<Package> = Api::namespaced(client.clone(), &ns);
    packages.get("noapi.ctl.example.com.0.1.0").await?;
    controller.stop().await
}
