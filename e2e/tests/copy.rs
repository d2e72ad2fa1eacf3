//! `packsmith copy` between the bed's registries, as `imgpkg copy` moves packages: a bundle
//! locking an image, a multi-platform index and a nested bundle, copied from the anonymous
//! registry into the basic-auth TLS one, and through a tar into the token-auth one; what
//! arrives is checked digest by digest and pulled back. A re-run sends no blob; a tar cut
//! short is completed with `--resume`; a registry stopped half way (the bed's ctl.sh) is
//! completed by running the copy again; a repository bundle is narrowed to a version range;
//! cosign artifacts come along only when asked.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use packsmith::bundle::{self, BuildOptions, Location, PushOptions};
use packsmith::carvel::{BundleLock, ImageRef, ImagesLock};
use packsmith::registry::{Credentials, Registry, RegistryOptions, parse_reference};

use crate::support::images::{self, Fixture, ImageKind};
use crate::support::{self, Bed, bed};

fn trial<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce(&'static Bed) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("copy::{name}"), move || {
        support::block_on(async move { body(bed()).await })
    })
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "bundle_registry_to_registry_with_other_credentials",
            registry_to_registry,
        ),
        trial("bundle_through_a_tar_into_a_token_registry", through_a_tar),
        trial("tar_cut_short_is_completed_with_resume", tar_resume),
        trial(
            "repository_bundle_narrowed_to_a_version_constraint",
            version_constraint,
        ),
        trial("cosign_signatures_only_when_asked", cosign_signatures),
        trial("images_lock_and_image_sources", image_sources),
        trial("indexes_nested_too_deep_are_refused", nested_indexes),
        trial(
            "controller_relocates_locked_images_next_to_the_bundle",
            |_| relocate_in_the_controller(),
        ),
    ]
}

/// Trials that stop a registry of the bed: run alone.
pub fn serial_trials() -> Vec<Trial> {
    vec![trial(
        "registry_stopped_half_way_is_completed_by_a_rerun",
        registry_stopped_half_way,
    )]
}

/// What the source registry holds for one test: an outer bundle (tag v1) locking an image,
/// a multi-platform index and an inner bundle, which locks an image of its own.
struct Source {
    /// `host/e2e-copy/<id>`.
    base: String,
    outer: String,
    outer_digest: String,
    inner_digest: String,
    app: Fixture,
    multi: Fixture,
    inner_image: Fixture,
}

impl Source {
    /// Every manifest digest the copy must bring: bundles, images, the index and its
    /// platform manifests.
    fn manifests(&self) -> Vec<String> {
        let mut all = vec![
            self.outer_digest.clone(),
            self.inner_digest.clone(),
            self.app.digest().to_owned(),
            self.multi.digest().to_owned(),
            self.inner_image.digest().to_owned(),
        ];
        all.extend(self.multi.images.iter().map(|i| i.manifest.digest.clone()));
        all
    }

    /// Every image blob (bundles' blobs are checked by pulling).
    fn blobs(&self) -> Vec<String> {
        [&self.app, &self.multi, &self.inner_image]
            .into_iter()
            .flat_map(|f| f.blobs().map(|b| b.digest.clone()))
            .collect()
    }
}

fn plain(bed: &Bed) -> Registry {
    Registry::new(RegistryOptions {
        insecure_hosts: vec![bed.registry.clone()],
        ..RegistryOptions::default()
    })
    .expect("a registry client for the plain registry")
}

fn tls(bed: &Bed) -> Registry {
    let ca = std::fs::read(&bed.registry_tls_ca).expect("the bed's CA");
    Registry::new(RegistryOptions {
        ca_pems: vec![ca],
        credentials: Credentials::basic(
            &bed.registry_tls,
            &bed.registry_user,
            &bed.registry_password,
        ),
        ..RegistryOptions::default()
    })
    .expect("a registry client for the TLS registry")
}

/// A bundle of `lock` (and one file) pushed as `repo:tag`; its digest.
async fn push_bundle(
    registry: &Registry,
    repo: &str,
    tag: &str,
    lock: &ImagesLock,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join(".imgpkg"))?;
    std::fs::create_dir_all(dir.path().join("config"))?;
    std::fs::write(dir.path().join(".imgpkg/images.yml"), lock.to_kbld_yaml()?)?;
    std::fs::write(
        dir.path().join("config/app.yaml"),
        format!("kind: ConfigMap\nmetadata: {{name: {tag}}}\n"),
    )?;
    let built = bundle::build(&[dir.path().to_owned()], &BuildOptions::default())?;
    let pushed = bundle::push(
        registry,
        &built,
        &Location::parse(&format!("{repo}:{tag}"))?,
        &[tag.to_owned()],
        &PushOptions::default(),
    )
    .await?;
    Ok(pushed
        .image
        .rsplit_once('@')
        .context("digest")?
        .1
        .to_owned())
}

fn locked(base: &str, repo: &str, digest: &str, original: &str) -> ImageRef {
    ImageRef::kbld(format!("{base}/{repo}@{digest}"), original, &[])
}

async fn source(bed: &Bed, name: &str) -> anyhow::Result<Source> {
    let id = format!("e2e-copy/{name}-{}", support::unique_id()?);
    let base = format!("{}/{id}", bed.registry);
    let images = images::Registry::plain(bed);
    let app = images::fixture(&format!("{id}/app"), "1", ImageKind::DockerV2, name)?;
    let multi = images::fixture(&format!("{id}/multi"), "1", ImageKind::MultiArch, name)?;
    let inner_image = images::fixture(&format!("{id}/inner-img"), "1", ImageKind::Oci, name)?;
    images::push_fixture(&images, &format!("{id}/app"), "1", &app).await?;
    images::push_fixture(&images, &format!("{id}/multi"), "1", &multi).await?;
    images::push_fixture(&images, &format!("{id}/inner-img"), "1", &inner_image).await?;

    let registry = plain(bed);
    let mut inner_lock = ImagesLock::new();
    inner_lock.images.push(locked(
        &base,
        "inner-img",
        inner_image.digest(),
        "example.com/inner:1",
    ));
    let inner_digest = push_bundle(&registry, &format!("{base}/inner"), "1", &inner_lock).await?;
    let mut outer_lock = ImagesLock::new();
    outer_lock
        .images
        .push(locked(&base, "app", app.digest(), "example.com/app:1"));
    outer_lock.images.push(locked(
        &base,
        "multi",
        multi.digest(),
        "example.com/multi:1",
    ));
    outer_lock.images.push(locked(
        &base,
        "inner",
        &inner_digest,
        "example.com/inner-bundle:1",
    ));
    let outer_digest = push_bundle(&registry, &format!("{base}/outer"), "v1", &outer_lock).await?;
    Ok(Source {
        outer: format!("{base}/outer:v1"),
        base,
        outer_digest,
        inner_digest,
        app,
        multi,
        inner_image,
    })
}

/// `packsmith copy ARGS` with `DOCKER_CONFIG=config`, the plain registry spoken to over HTTP
/// and the TLS registry's CA trusted.
fn copy(bed: &Bed, config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let ca = bed.registry_tls_ca.to_str().context("utf-8 CA path")?;
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .arg("copy")
        .args(args)
        .args([
            "--registry-insecure-host",
            &bed.registry,
            "--registry-ca-cert-path",
            ca,
        ])
        .env("DOCKER_CONFIG", config)
        .env_remove("PACKSMITH_REGISTRY_USERNAME")
        .env_remove("PACKSMITH_REGISTRY_PASSWORD")
        .output()
        .context("running packsmith copy")
}

fn copy_ok(bed: &Bed, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = copy(bed, config, args)?;
    ensure!(
        out.status.success(),
        "packsmith copy {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The summary's count of `what` ("blobs sent", "already there", …).
fn count(stdout: &str, what: &str) -> anyhow::Result<usize> {
    let line = stdout
        .lines()
        .find(|l| l.contains("blobs sent"))
        .with_context(|| format!("no summary in {stdout}"))?;
    let before = line
        .split(what)
        .next()
        .filter(|b| b.len() < line.len())
        .with_context(|| format!("no {what:?} in {line:?}"))?;
    let number = before
        .trim_end()
        .rsplit([' ', ','])
        .next()
        .unwrap_or_default();
    number
        .parse()
        .with_context(|| format!("count before {what:?} in {line:?}"))
}

/// Everything of `source` is in `target` (a repository of `registry`), by digest; the bundle
/// carries its tag there; a pull finds the images next to it.
async fn check_copied(registry: &Registry, source: &Source, target: &str) -> anyhow::Result<()> {
    let repository = parse_reference(&format!("{target}:x"))?;
    let client = registry.distribution();
    for digest in source.manifests() {
        let found = client.manifest_digest_at(&repository, &digest).await?;
        ensure!(
            found.as_deref() == Some(digest.as_str()),
            "{target}@{digest} missing"
        );
    }
    for blob in source.blobs() {
        ensure!(
            client.blob_exists(&repository, &blob).await?,
            "blob {blob} missing in {target}"
        );
    }
    let tagged = client.manifest_digest_at(&repository, "v1").await?;
    assert_eq!(tagged.as_deref(), Some(source.outer_digest.as_str()));
    // Every image is tagged so registries that collect untagged manifests keep it.
    let tag = bundle::digest_tag(source.app.digest());
    let found = client.manifest_digest_at(&repository, &tag).await?;
    assert_eq!(found.as_deref(), Some(source.app.digest()));
    // imgpkg's image-locations image of each bundle, which `imgpkg pull` reads.
    for bundle in [&source.outer_digest, &source.inner_digest] {
        let tag = format!("{}.image-locations.imgpkg", bundle.replacen(':', "-", 1));
        ensure!(
            client
                .manifest_digest_at(&repository, &tag)
                .await?
                .is_some(),
            "{target}:{tag} missing"
        );
    }
    drop(client);

    let out = tempfile::tempdir()?;
    let pulled = bundle::pull(
        registry,
        &Location::parse(&format!("{target}:v1"))?,
        &out.path().join("b"),
    )
    .await?;
    ensure!(
        pulled.relocated,
        "the pull did not find the images: {pulled:?}"
    );
    let lock = ImagesLock::from_yaml(&std::fs::read_to_string(
        out.path().join("b/.imgpkg/images.yml"),
    )?)?;
    let mut names: Vec<String> = lock.images.iter().map(|i| i.image.clone()).collect();
    names.sort();
    let mut expected = vec![
        format!("{target}@{}", source.app.digest()),
        format!("{target}@{}", source.multi.digest()),
        format!("{target}@{}", source.inner_digest),
    ];
    expected.sort();
    assert_eq!(names, expected);
    Ok(())
}

async fn registry_to_registry(bed: &Bed) -> anyhow::Result<()> {
    let source = source(bed, "r2r").await?;
    let config = support::docker_config(
        &bed.registry_tls,
        &bed.registry_user,
        &bed.registry_password,
    )?;
    let target = format!(
        "{}/e2e-copy/r2r-{}",
        bed.registry_tls,
        support::unique_id()?
    );
    let lock_output = tempfile::NamedTempFile::new()?;
    let stdout = copy_ok(
        bed,
        config.path(),
        &[
            "-b",
            &source.outer,
            "--to-repo",
            &target,
            "--lock-output",
            lock_output.path().to_str().context("utf-8")?,
        ],
    )?;
    let blobs = source.blobs().len();
    ensure!(
        count(&stdout, "blobs sent")? >= blobs,
        "every image blob is sent: {stdout}"
    );
    check_copied(&tls(bed), &source, &target).await?;
    // The lock names the bundle where it now is, with its tag, as imgpkg writes it.
    let lock = BundleLock::from_yaml(&std::fs::read_to_string(lock_output.path())?)?;
    assert_eq!(
        (lock.bundle.image.as_str(), lock.bundle.tag.as_str()),
        (format!("{target}@{}", source.outer_digest).as_str(), "v1")
    );

    // Again: nothing is sent, nothing written, and the target is asked only whether each of
    // the five images and bundles is there (their sha256-<hex>.imgpkg tags) and where the
    // bundle's tag points — not about every blob and platform manifest below them.
    let again = copy_ok(
        bed,
        config.path(),
        &["-b", &source.outer, "--to-repo", &target],
    )?;
    assert_eq!(count(&again, "blobs sent")?, 0, "{again}");
    assert_eq!(count(&again, "manifests written")?, 0, "{again}");
    let requests = count(&again, "requests to the target")?;
    ensure!(
        requests <= 8,
        "a re-run asked the target {requests} times: {again}"
    );

    // Within one registry, blobs are mounted rather than sent.
    let empty = tempfile::tempdir()?;
    let same = format!(
        "{}/e2e-copy/mounted-{}",
        bed.registry,
        support::unique_id()?
    );
    let mounted = copy_ok(
        bed,
        empty.path(),
        &["-b", &source.outer, "--to-repo", &same],
    )?;
    ensure!(
        count(&mounted, "mounted")? >= blobs,
        "blobs in the same registry are mounted: {mounted}"
    );
    assert_eq!(count(&mounted, "blobs sent")?, 0, "{mounted}");
    check_copied(&plain(bed), &source, &same).await
}

/// The token registry when the bed has one, else the TLS one: a third set of credentials.
fn token_target(bed: &Bed, name: &str) -> anyhow::Result<(String, tempfile::TempDir, Registry)> {
    let id = support::unique_id()?;
    match &bed.token {
        Some(token) => {
            let config = support::docker_config(&token.host, &token.user, &token.password)?;
            let registry = Registry::new(RegistryOptions {
                insecure_hosts: vec![token.host.clone()],
                credentials: Credentials::basic(&token.host, &token.user, &token.password),
                ..RegistryOptions::default()
            })?;
            Ok((
                format!("{}/e2e-token/{name}-{id}", token.host),
                config,
                registry,
            ))
        }
        None => {
            let config = support::docker_config(
                &bed.registry_tls,
                &bed.registry_user,
                &bed.registry_password,
            )?;
            Ok((
                format!("{}/e2e-copy/{name}-{id}", bed.registry_tls),
                config,
                tls(bed),
            ))
        }
    }
}

async fn through_a_tar(bed: &Bed) -> anyhow::Result<()> {
    let source = source(bed, "tar").await?;
    let dir = tempfile::tempdir()?;
    let tar = dir.path().join("bundle.tar");
    let tar_s = tar.to_str().context("utf-8")?;
    let empty = tempfile::tempdir()?;
    copy_ok(bed, empty.path(), &["-b", &source.outer, "--to-tar", tar_s])?;
    // The same source gives the same tar, byte for byte.
    let again = dir.path().join("again.tar");
    copy_ok(
        bed,
        empty.path(),
        &[
            "-b",
            &source.outer,
            "--to-tar",
            again.to_str().context("utf-8")?,
        ],
    )?;
    ensure!(
        std::fs::read(&tar)? == std::fs::read(&again)?,
        "two tars of the same bundle differ"
    );

    let (target, config, registry) = token_target(bed, "from-tar")?;
    let mut args = vec!["--tar", tar_s, "--to-repo", &target];
    let insecure;
    if let Some(token) = &bed.token {
        insecure = token.host.clone();
        args.extend(["--registry-insecure-host", insecure.as_str()]);
    }
    let stdout = copy_ok(bed, config.path(), &args)?;
    ensure!(
        count(&stdout, "blobs sent")? >= source.blobs().len(),
        "{stdout}"
    );
    check_copied(&registry, &source, &target).await
}

async fn tar_resume(bed: &Bed) -> anyhow::Result<()> {
    let source = source(bed, "resume-tar").await?;
    let dir = tempfile::tempdir()?;
    let whole = dir.path().join("whole.tar");
    let empty = tempfile::tempdir()?;
    copy_ok(
        bed,
        empty.path(),
        &[
            "-b",
            &source.outer,
            "--to-tar",
            whole.to_str().context("utf-8")?,
        ],
    )?;
    let bytes = std::fs::read(&whole)?;
    // Cut off one byte into the last layer, as a copy killed half way leaves it: every
    // layer before it is whole, the last is not.
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut last = 0;
    for entry in archive.entries()? {
        last = entry?.raw_file_position();
    }
    let cut_at = usize::try_from(last)? + 1;
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..cut_at])?;
    let cut_s = cut.to_str().context("utf-8")?;
    let stdout = copy_ok(
        bed,
        empty.path(),
        &["-b", &source.outer, "--to-tar", cut_s, "--resume"],
    )?;
    ensure!(
        count(&stdout, "already there")? > 0,
        "--resume kept nothing of the cut tar: {stdout}"
    );
    assert_eq!(
        count(&stdout, "blobs sent")?,
        1,
        "only the cut layer is fetched: {stdout}"
    );
    ensure!(
        std::fs::read(&cut)? == bytes,
        "the resumed tar differs from an uninterrupted one"
    );
    // Without --resume the file is written anew.
    std::fs::write(&cut, &bytes[..cut_at])?;
    let stdout = copy_ok(bed, empty.path(), &["-b", &source.outer, "--to-tar", cut_s])?;
    assert_eq!(count(&stdout, "already there")?, 0, "{stdout}");
    ensure!(std::fs::read(&cut)? == bytes);
    Ok(())
}

/// A proxy in front of the plain registry that, when the copy starts its `stop_at + 1`-th
/// blob upload (so exactly `stop_at` are complete, with one upload at a time), stops the
/// registry with the bed's ctl.sh and drops the connection.
async fn stopping_proxy(bed: &'static Bed, stop_at: usize) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let uploads = Arc::new(AtomicUsize::new(0));
    let upstream = bed.registry.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let uploads = uploads.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let starts = text
                        .matches("POST /v2/")
                        .filter(|_| text.contains("/blobs/uploads/"))
                        .count();
                    if starts > 0 && uploads.fetch_add(starts, Ordering::SeqCst) + 1 > stop_at {
                        let _ =
                            tokio::task::spawn_blocking(|| bed.registry_ctl("stop", "plain")).await;
                        break;
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    Ok(address)
}

async fn registry_stopped_half_way(bed: &'static Bed) -> anyhow::Result<()> {
    // The source is in the TLS registry; the plain one is the target that goes down.
    let registry = tls(bed);
    let id = support::unique_id()?;
    let base = format!("{}/e2e-copy/stopped-{id}", bed.registry_tls);
    let images = images::Registry::tls(bed);
    let mut lock = ImagesLock::new();
    for (i, kind) in [ImageKind::DockerV2, ImageKind::Oci, ImageKind::MultiArch]
        .into_iter()
        .enumerate()
    {
        let repo = format!("e2e-copy/stopped-{id}/img{i}");
        let fixture = images::fixture(&repo, "1", kind, &id)?;
        images::push_fixture(&images, &repo, "1", &fixture).await?;
        lock.images
            .push(locked(&base, &format!("img{i}"), fixture.digest(), "x:1"));
    }
    push_bundle(&registry, &format!("{base}/bundle"), "v1", &lock).await?;
    let config = support::docker_config(
        &bed.registry_tls,
        &bed.registry_user,
        &bed.registry_password,
    )?;

    let proxy = stopping_proxy(bed, 3).await?;
    let path = format!("e2e-copy/stopped-{id}/target");
    let through = format!("{proxy}/{path}");
    let source_ref = format!("{base}/bundle:v1");
    let args = [
        "-b",
        source_ref.as_str(),
        "--to-repo",
        through.as_str(),
        "--concurrency",
        "1",
        "--registry-insecure-host",
        proxy.as_str(),
    ];
    // The CLI runs off this thread: the proxy's tasks run on this (current-thread) runtime.
    let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let config_dir = config.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        copy(bed, &config_dir, &args)
    })
    .await??;
    let restarted = bed.registry_ctl("start", "plain");
    ensure!(
        !out.status.success(),
        "the copy survived a stopped registry"
    );
    restarted?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&proxy),
        "the error names the registry: {stderr}"
    );
    // The bundle's tag was never written: nothing points at an incomplete copy.
    let target = parse_reference(&format!("{}/{path}:v1", bed.registry))?;
    let plain = plain(bed);
    let client = plain.distribution();
    ensure!(
        client.manifest_digest_at(&target, "v1").await?.is_none(),
        "the bundle was tagged before its images were there"
    );
    drop(client);

    // Run again: the three blobs that made it are not sent again.
    let direct = format!("{}/{path}", bed.registry);
    let stdout = copy_ok(
        bed,
        config.path(),
        &[
            "-b",
            &source_ref,
            "--to-repo",
            &direct,
            "--concurrency",
            "1",
        ],
    )?;
    assert_eq!(count(&stdout, "already there")?, 3, "{stdout}");
    let client = plain.distribution();
    ensure!(client.manifest_digest_at(&target, "v1").await?.is_some());
    Ok(())
}

async fn version_constraint(bed: &Bed) -> anyhow::Result<()> {
    let reg = bed.registry.clone();
    let tmp = tempfile::tempdir()?;
    let repo_dir = tmp.path().join("repo");
    let repo_s = repo_dir.to_str().context("utf-8")?;
    let id = support::unique_id()?;
    let mut bundles = Vec::new();
    for version in ["1.0.0", "1.1.0", "2.0.0"] {
        let dir = tmp.path().join(version);
        super::repo::inline_package(&dir, &format!("narrow{id}"), version, &reg)?;
        let out = super::repo::packsmith(&[
            "release",
            dir.to_str().context("utf-8")?,
            "--output-dir",
            repo_s,
        ])?;
        bundles.push(super::repo::pushed_image(&out)?);
    }
    let repository = format!("{reg}/e2e-copy/narrow-{id}/repo");
    let out = super::repo::packsmith(&[
        "repo",
        "release",
        "--packages",
        repo_s,
        "-b",
        &format!("{repository}:v1"),
        "--registry-insecure-host",
        &reg,
    ])?;
    let original = super::repo::pushed_image(&out)?;

    // `repo release --relocate-images`: every package bundle next to the repository bundle.
    let thick = format!("{reg}/e2e-copy/narrow-{id}/thick");
    super::repo::packsmith(&[
        "repo",
        "release",
        "--packages",
        repo_s,
        "-b",
        &format!("{thick}:v1"),
        "--relocate-images",
        "--registry-insecure-host",
        &reg,
    ])?;
    let registry = plain(bed);
    let client = registry.distribution();
    let thick_ref = parse_reference(&format!("{thick}:x"))?;
    for bundle in &bundles {
        let digest = bundle.rsplit_once('@').context("digest")?.1;
        ensure!(
            client
                .manifest_digest_at(&thick_ref, digest)
                .await?
                .is_some(),
            "{bundle} was not relocated next to the repository bundle"
        );
    }
    drop(client);

    let empty = tempfile::tempdir()?;
    let target = format!("{reg}/e2e-copy/narrow-{id}/copied");
    let lock_output = tmp.path().join("lock.yml");
    copy_ok(
        bed,
        empty.path(),
        &[
            "-b",
            &format!("{repository}:v1"),
            "--version-constraint",
            ">=1.1.0, <2",
            "--to-repo",
            &target,
            "--lock-output",
            lock_output.to_str().context("utf-8")?,
        ],
    )?;
    let lock = BundleLock::from_yaml(&std::fs::read_to_string(&lock_output)?)?;
    ensure!(
        lock.bundle.image != original.replace(&repository, &target),
        "a narrowed repository bundle has a new digest"
    );
    let out = tmp.path().join("pulled");
    bundle::pull(&registry, &Location::parse(&lock.bundle.image)?, &out).await?;
    let mut files: Vec<String> = walkdir::WalkDir::new(out.join("packages"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["1.1.0.yml", "metadata.yml"]);
    let pulled_lock =
        ImagesLock::from_yaml(&std::fs::read_to_string(out.join(".imgpkg/images.yml"))?)?;
    assert_eq!(pulled_lock.images.len(), 1, "{pulled_lock:?}");
    // Only the 1.1.0 package bundle was copied.
    let client = registry.distribution();
    let target_ref = parse_reference(&format!("{target}:x"))?;
    for (bundle, wanted) in bundles.iter().zip([false, true, false]) {
        let digest = bundle.rsplit_once('@').context("digest")?.1;
        let there = client
            .manifest_digest_at(&target_ref, digest)
            .await?
            .is_some();
        assert_eq!(there, wanted, "{bundle}");
    }
    Ok(())
}

async fn cosign_signatures(bed: &Bed) -> anyhow::Result<()> {
    let id = support::unique_id()?;
    let repo = format!("e2e-copy/cosign-{id}/app");
    let images = images::Registry::plain(bed);
    let app = images::fixture(&repo, "1", ImageKind::Oci, &id)?;
    images::push_fixture(&images, &repo, "1", &app).await?;
    // A stand-in for cosign's signature: an image under the tag cosign gives it.
    let sig_tag = format!("{}.sig", app.digest().replacen(':', "-", 1));
    let sig = images::fixture(&repo, &sig_tag, ImageKind::Oci, &format!("{id}-sig"))?;
    images::push_fixture(&images, &repo, &sig_tag, &sig).await?;

    let empty = tempfile::tempdir()?;
    let source = format!("{}/{repo}:1", bed.registry);
    let registry = plain(bed);
    for (flag, expected) in [(false, None), (true, Some(sig.digest()))] {
        let target = format!("{}/e2e-copy/cosign-{id}/to-{flag}", bed.registry);
        let mut args = vec!["-i", source.as_str(), "--to-repo", target.as_str()];
        if flag {
            args.push("--cosign-signatures");
        }
        copy_ok(bed, empty.path(), &args)?;
        let client = registry.distribution();
        let found = client
            .manifest_digest_at(&parse_reference(&format!("{target}:x"))?, &sig_tag)
            .await?;
        assert_eq!(found.as_deref(), expected, "--cosign-signatures={flag}");
    }
    Ok(())
}

/// `-i` copies an image and refuses a bundle (imgpkg: "use -b"); `--lock` with an
/// ImagesLock copies each image and writes the lock relocated, annotations kept.
/// A multi-platform index wrapped in further indexes, each listing the one inside: every
/// walk of a graph recurses through indexes, so a chain as deep as the manifest limit would
/// overflow the stack. Four levels copy; five are refused, naming the limit.
async fn nested_indexes(bed: &Bed) -> anyhow::Result<()> {
    let registry = images::Registry::plain(bed);
    let repo = format!("e2e-copy/nested-{}", support::unique_id()?);
    let inner = images::fixture(&repo, "inner", ImageKind::MultiArch, "nested")?;
    images::push_fixture(&registry, &repo, "inner", &inner).await?;
    let client = registry.client();
    let mut below = inner.top().clone();
    for level in 2..=5 {
        let data = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": below.media_type,
                "digest": below.digest,
                "size": below.data.len(),
            }],
        }))?;
        let wrapper = images::Manifest {
            media_type: oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
            digest: images::sha256_digest(&data),
            data,
        };
        let tag = format!("level{level}");
        images::push_manifest(&client, &registry.reference(&repo, &tag)?, &wrapper).await?;
        below = wrapper;
    }
    let empty = tempfile::tempdir()?;
    let source = |level: usize| format!("{}/{repo}:level{level}", bed.registry);
    let target = format!(
        "{}/e2e-copy/nested-target-{}",
        bed.registry,
        support::unique_id()?
    );
    copy_ok(bed, empty.path(), &["-i", &source(4), "--to-repo", &target])?;
    let out = copy(bed, empty.path(), &["-i", &source(5), "--to-repo", &target])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("image indexes nest more than 4 deep"),
        "{stderr}"
    );
    Ok(())
}

async fn image_sources(bed: &Bed) -> anyhow::Result<()> {
    let source = source(bed, "images").await?;
    let empty = tempfile::tempdir()?;
    let target = format!("{}/e2e-copy/images-{}", bed.registry, support::unique_id()?);
    let out = copy(
        bed,
        empty.path(),
        &["-i", &source.outer, "--to-repo", &target],
    )?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("-b"), "{stderr}");

    let dir = tempfile::tempdir()?;
    let mut lock = ImagesLock::new();
    lock.images.push(locked(
        &source.base,
        "app",
        source.app.digest(),
        "example.com/app:1",
    ));
    lock.images.push(locked(
        &source.base,
        "multi",
        source.multi.digest(),
        "example.com/multi:1",
    ));
    let lock_in = dir.path().join("images.yml");
    std::fs::write(&lock_in, lock.to_kbld_yaml()?)?;
    let lock_out = dir.path().join("out.yml");
    copy_ok(
        bed,
        empty.path(),
        &[
            "--lock",
            lock_in.to_str().context("utf-8")?,
            "--to-repo",
            &target,
            "--lock-output",
            lock_out.to_str().context("utf-8")?,
        ],
    )?;
    let relocated = ImagesLock::from_yaml(&std::fs::read_to_string(&lock_out)?)?;
    let pairs: Vec<(String, String)> = relocated
        .images
        .iter()
        .map(|i| (i.image.clone(), i.original_reference().to_owned()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (
                format!("{target}@{}", source.app.digest()),
                "example.com/app:1".to_owned()
            ),
            (
                format!("{target}@{}", source.multi.digest()),
                "example.com/multi:1".to_owned()
            ),
        ]
    );
    Ok(())
}

/// `spec.bundle.relocateImages` in the controller: the image the manifests name is copied
/// into the bundle's repository before the bundle is pushed; status says where it went; a
/// pull of the bundle names it there.
async fn relocate_in_the_controller() -> anyhow::Result<()> {
    use kube::api::Api;
    use packsmith::api::PackageSource;
    use packsmith::api::conditions::{reasons, types};

    let bed = bed();
    let client = bed.client().await?;
    let ns = support::namespace(&client, "copy-reloc").await?;
    let repo = format!("e2e-copy/reloc-{ns}/app");
    let images = images::Registry::plain(bed);
    let digest = images::push_image(&images, &repo, "1", ImageKind::MultiArch, &ns).await?;
    let bundle_repo = format!("{}/ctl/{ns}/relocated", bed.registry);
    let yaml = format!(
        r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: relocated
  namespace: {ns}
spec:
  package:
    refName: relocated.ctl.example.com
    version: 0.1.0
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          pod.yaml: "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers:\n  - name: app\n    image: {reg}/{repo}:1\n"
  bundle:
    repository: {bundle_repo}
    insecure: true
    relocateImages: true
"#,
        reg = bed.registry
    );
    let controller = super::controller::Running::start(&ns).await?;
    support::apply_yaml(&client, &ns, &yaml).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let ready = super::controller::wait_for(
        &api,
        "relocated",
        std::time::Duration::from_secs(90),
        "Ready",
        |o| super::controller::has(o, types::READY, "True", reasons::SUCCEEDED),
    )
    .await?;
    let bundle = ready
        .status
        .as_ref()
        .and_then(|s| s.bundle.clone())
        .context("status.bundle")?;
    let relocated = format!("{bundle_repo}@{digest}");
    assert_eq!(bundle.relocated_images, vec![relocated.clone()]);
    assert_eq!(bundle.relocated_count, Some(1));
    let registry = plain(bed);
    let client_reg = registry.distribution();
    let found = client_reg
        .manifest_digest_at(&parse_reference(&format!("{bundle_repo}:x"))?, &digest)
        .await?;
    assert_eq!(found.as_deref(), Some(digest.as_str()));
    drop(client_reg);
    let out = tempfile::tempdir()?;
    let pulled = bundle::pull(
        &registry,
        &Location::parse(&bundle.image)?,
        &out.path().join("b"),
    )
    .await?;
    ensure!(pulled.relocated, "{pulled:?}");
    let lock = std::fs::read_to_string(out.path().join("b/.imgpkg/images.yml"))?;
    ensure!(lock.contains(&relocated), "{lock}");
    controller.stop().await
}
