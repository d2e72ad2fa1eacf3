//! Bundle push and pull against the bed's registries: a round trip gives the same tree, the
//! same tree gives the same digest and a re-push uploads nothing, what a pushed bundle looks
//! like to another client (crane's and imgpkg's view: one Docker layer, the bundle label, the
//! `sha256-<hex>.imgpkg` tag), and failures: missing input, symlinks, 401, a registry that
//! drops uploads midway or is down — never leaving a tag on an incomplete image.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use libtest_mimic::Trial;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use packsmith::bundle::{
    self, BuildOptions, BundleError, LayerCache, Location, PushOptions, Pushed,
};
use packsmith::carvel::{BundleLock, ImageRef, ImagesLock};
use packsmith::registry::{Credentials, ErrorClass, Registry, RegistryOptions};

use crate::support::images::{self, MANIFEST_MEDIA_TYPES};
use crate::support::{self, Bed, bed};

const PREFIX: &str = "e2e-bundle";
const IMAGES_YML: &str = "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n";

fn trial<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce(&'static Bed) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("bundle::{name}"), move || {
        support::block_on(async move { body(bed()).await })
    })
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "known_tags_are_not_asked_again",
            known_tags_are_not_asked_again,
        ),
        trial("round_trip_plain", |bed| {
            round_trip(plain(bed), plain_host(bed), "rt")
        }),
        trial("round_trip_tls_basic_auth", |bed| {
            round_trip(
                tls(bed, &bed.registry_password),
                bed.registry_tls.clone(),
                "rt",
            )
        }),
        trial(
            "same_tree_same_digest_and_repush_uploads_nothing",
            repush_uploads_nothing,
        ),
        trial("cli_push_lock_output_and_pull", cli_push_and_pull),
        trial(
            "cli_push_image_is_a_plain_image_with_labels",
            cli_push_plain_image,
        ),
        trial(
            "values_of_a_pushed_bundle_are_those_of_its_directory",
            values_of_a_pushed_bundle,
        ),
        trial(
            "describe_lists_files_locked_images_and_nested_bundles",
            describe_a_bundle,
        ),
        trial(
            "layer_cache_skips_archiving_and_rebuilds_for_a_new_repository",
            layer_cache,
        ),
        trial(
            "pull_of_a_relocated_bundle_names_its_images_in_the_bundle_repository",
            relocated_pull,
        ),
        trial("wrong_credentials_are_an_auth_error", wrong_credentials),
        trial(
            "missing_input_and_symlinks_fail_before_any_upload",
            bad_inputs,
        ),
        trial("upload_dropped_midway_is_retried", |bed| {
            dropped_upload(bed, 1)
        }),
        trial("upload_always_dropped_leaves_no_tag", |bed| {
            dropped_upload(bed, usize::MAX)
        }),
    ]
}

/// Trials that stop a registry.
pub fn serial_trials() -> Vec<Trial> {
    vec![trial(
        "registry_down_fails_after_bounded_retries",
        registry_down,
    )]
}

fn plain_host(bed: &Bed) -> String {
    bed.registry.clone()
}

fn plain(bed: &Bed) -> Registry {
    Registry::new(RegistryOptions {
        insecure_hosts: vec![bed.registry.clone()],
        ..RegistryOptions::default()
    })
    .expect("a registry client for the plain registry")
}

fn tls(bed: &Bed, password: &str) -> Registry {
    let ca = std::fs::read(&bed.registry_tls_ca).expect("the bed's CA");
    Registry::new(RegistryOptions {
        ca_pems: vec![ca],
        credentials: Credentials::basic(&bed.registry_tls, &bed.registry_user, password),
        ..RegistryOptions::default()
    })
    .expect("a registry client for the TLS registry")
}

/// A small package-shaped tree: nested directories, an empty one, an empty file, a file with
/// the owner's execute bit, a non-ASCII name and one too long for a plain tar header.
fn package_tree(seed: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let files: Vec<(String, String)> = vec![
        (".imgpkg/images.yml".into(), IMAGES_YML.into()),
        (
            ".imgpkg/bundle.yml".into(),
            "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: Bundle\nmetadata:\n  name: e2e\n".into(),
        ),
        (
            "config/upstream/deploy.yml".into(),
            format!("seed: {seed}\n"),
        ),
        (
            "config/values.yml".into(),
            "#@data/values\n---\nreplicas: 1\n".into(),
        ),
        ("config/empty".into(), String::new()),
        ("config/naïve.yml".into(), "a: b\n".into()),
        (
            format!("config/{}/long.yml", "x".repeat(120)),
            "long: true\n".into(),
        ),
        ("bin/hook.sh".into(), "#!/bin/sh\n".into()),
    ];
    for (path, content) in &files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent"))?;
        std::fs::write(&path, content)?;
    }
    std::fs::create_dir_all(root.join("config/empty-dir"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        root.join("bin/hook.sh"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    Ok(dir)
}

/// What a tree comparison looks at for each entry: (is a directory, owner bits, content).
type EntrySnapshot = (bool, u32, Vec<u8>);

/// Every entry under `root` by relative path.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<String, EntrySnapshot>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let owner = meta.permissions().mode() & 0o700;
            if meta.is_dir() {
                out.insert(rel, (true, owner, Vec::new()));
                stack.push(path);
            } else {
                out.insert(rel, (false, owner, std::fs::read(&path)?));
            }
        }
    }
    Ok(out)
}

async fn push_tree(
    registry: &Registry,
    dir: &Path,
    repo: &str,
    tag: &str,
) -> Result<Pushed, BundleError> {
    let built = bundle::build(&[dir.to_owned()], &BuildOptions::default())?;
    let location = Location::parse(&format!("{repo}:{tag}"))?;
    bundle::push(
        registry,
        &built,
        &location,
        &[tag.to_owned()],
        &fast_retries(),
    )
    .await
}

fn fast_retries() -> PushOptions<'static> {
    PushOptions {
        backoff: Duration::from_millis(50),
        ..PushOptions::default()
    }
}

/// Push, then pull by tag and by digest: the same tree comes back, and the registry holds
/// what imgpkg would read as a bundle.
async fn round_trip(registry: Registry, host: String, name: &str) -> anyhow::Result<()> {
    let tree = package_tree(name)?;
    let repo = format!("{host}/{PREFIX}/{name}");
    let pushed = push_tree(&registry, tree.path(), &repo, "1.0.0").await?;
    ensure!(
        pushed.image.starts_with(&format!("{repo}@sha256:")),
        "{pushed:?}"
    );
    let digest = pushed
        .image
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    assert_eq!(
        pushed.tags,
        vec!["1.0.0".to_owned(), bundle::digest_tag(&digest)]
    );

    let out = tempfile::tempdir()?;
    for reference in [format!("{repo}:1.0.0"), pushed.image.clone()] {
        let target = out.path().join("pulled");
        let pulled = bundle::pull(&registry, &Location::parse(&reference)?, &target).await?;
        assert_eq!(pulled.image, pushed.image);
        assert_eq!(
            snapshot(&target)?,
            snapshot(tree.path())?,
            "pulled from {reference}"
        );
    }

    // What the registry holds, read back by digest.
    let by_digest = format!("{repo}@{digest}").parse()?;
    let manifest = registry
        .distribution()
        .get_manifest(&by_digest, &digest, MANIFEST_MEDIA_TYPES)
        .await?;
    assert_eq!(images::sha256_digest(&manifest), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let digest_tagged = format!("{repo}:{}", bundle::digest_tag(&digest)).parse()?;
    assert_eq!(
        registry.distribution().digest(&digest_tagged).await?,
        digest
    );
    Ok(())
}

/// Two identical trees in different places, with different mtimes: one digest. The second
/// push finds every blob and both tags in place and writes nothing.
async fn repush_uploads_nothing(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain(bed);
    let repo = format!("{}/{PREFIX}/repush", bed.registry);
    let one = package_tree("repush")?;
    let first = push_tree(&registry, one.path(), &repo, "v1").await?;
    assert_eq!(
        first.uploaded.len(),
        2,
        "config and layer uploaded: {first:?}"
    );
    assert_eq!(first.written_tags.len(), 2);

    std::thread::sleep(Duration::from_millis(20));
    let two = package_tree("repush")?;
    let second = push_tree(&registry, two.path(), &repo, "v1").await?;
    assert_eq!(second.image, first.image);
    assert_eq!(second.uploaded, Vec::<String>::new());
    assert_eq!(second.written_tags, Vec::<String>::new());

    // One changed byte: a new digest, and only the layer and config are new.
    std::fs::write(two.path().join("config/values.yml"), "replicas: 2\n")?;
    let third = push_tree(&registry, two.path(), &repo, "v1").await?;
    ensure!(third.image != first.image, "a changed tree kept its digest");
    assert_eq!(third.uploaded.len(), 2);
    assert_eq!(
        third.written_tags.len(),
        2,
        "v1 moved, and a new digest tag"
    );
    Ok(())
}

/// A tree whose digests are in the layer cache builds without archiving, to the digest an
/// uncached build gives; pushing it where the layer is missing archives it again; pushing it
/// where everything is makes HEAD requests only.
async fn layer_cache(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain(bed);
    let tree = package_tree("layer-cache")?;
    let cache_dir = tempfile::tempdir()?;
    let cache = LayerCache::new(cache_dir.path());
    let inputs = [tree.path().to_owned()];
    let options = BuildOptions::default();
    // Files changed just before a build are not trusted to show the next change in their
    // timestamps, so nothing is recorded until the tree is a little older (2 s at most).
    let young = bundle::build_with_cache(&inputs, &options, Some(&cache))?;
    ensure!(!young.from_cache(), "an empty cache cannot hit");
    std::thread::sleep(Duration::from_millis(2100));
    bundle::build_with_cache(&inputs, &options, Some(&cache))?;
    let hit = bundle::build_with_cache(&inputs, &options, Some(&cache))?;
    ensure!(hit.from_cache(), "an unchanged tree should hit the cache");
    assert_eq!(hit.digest(), young.digest());
    assert_eq!(hit.manifest(), young.manifest());

    // A repository that has nothing: the layer is archived again for the upload.
    let repo = format!("{}/{PREFIX}/layer-cache", bed.registry);
    let location = Location::parse(&format!("{repo}:v1"))?;
    let tags = ["v1".to_owned()];
    let first = bundle::push(&registry, &hit, &location, &tags, &fast_retries()).await?;
    assert_eq!(first.uploaded.len(), 2, "{first:?}");
    let out = tempfile::tempdir()?;
    bundle::pull(&registry, &location, &out.path().join("b")).await?;
    assert_eq!(snapshot(&out.path().join("b"))?, snapshot(tree.path())?);

    let again = bundle::push(&registry, &hit, &location, &tags, &fast_retries()).await?;
    assert_eq!(again.uploaded, Vec::<String>::new());
    assert_eq!(again.written_tags, Vec::<String>::new());

    // A changed file misses, and the stale bundle refuses to upload a layer of other content.
    std::fs::write(
        tree.path().join("config/values.yml"),
        "replicas: 3
",
    )?;
    let changed = bundle::build_with_cache(&inputs, &options, Some(&cache))?;
    ensure!(!changed.from_cache() && changed.digest() != hit.digest());
    let elsewhere = Location::parse(&format!("{repo}-stale:v1"))?;
    let err = bundle::push(&registry, &hit, &elsewhere, &tags, &fast_retries())
        .await
        .expect_err("a layer that no longer matches its digest must not be pushed");
    ensure!(
        matches!(err, BundleError::TreeChanged { .. }),
        "expected TreeChanged, got {err}"
    );
    expect_no_tag(&registry, &format!("{repo}-stale"), "v1").await
}

/// imgpkg's pull of a relocated bundle: while the bundle's repository lacks one of its
/// images, images.yml comes back as pushed; once every image is there (as `imgpkg copy
/// --to-repo` leaves them), it names them in the bundle's repository, annotations kept.
async fn relocated_pull(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain(bed);
    let images = images::Registry::plain(bed);
    let source = format!("{PREFIX}/reloc-source");
    let target = format!("{PREFIX}/reloc-bundle");
    let app = images::fixture(&source, "app", images::ImageKind::DockerV2, "reloc-app")?;
    let sidecar = images::fixture(&source, "sidecar", images::ImageKind::Oci, "reloc-side")?;
    images::push_fixture(&images, &source, "app", &app).await?;
    images::push_fixture(&images, &source, "sidecar", &sidecar).await?;

    let mut lock = ImagesLock::new();
    for (name, fixture) in [("app", &app), ("sidecar", &sidecar)] {
        lock.images.push(ImageRef::kbld(
            format!("{}/{source}@{}", bed.registry, fixture.digest()),
            format!("example.com/{name}:1.0"),
            &[],
        ));
    }
    let lock_yaml = lock.to_kbld_yaml()?;
    let tree = package_tree("relocated")?;
    std::fs::write(tree.path().join(".imgpkg/images.yml"), &lock_yaml)?;
    let repo = format!("{}/{target}", bed.registry);
    push_tree(&registry, tree.path(), &repo, "v1").await?;
    let location = Location::parse(&format!("{repo}:v1"))?;
    let out = tempfile::tempdir()?;
    let pulled_lock = out.path().join("b/.imgpkg/images.yml");

    // Only one image copied next to the bundle: not relocated.
    images::push_fixture(&images, &target, "app-copy", &app).await?;
    let pulled = bundle::pull(&registry, &location, &out.path().join("b")).await?;
    ensure!(!pulled.relocated, "{pulled:?}");
    assert_eq!(std::fs::read_to_string(&pulled_lock)?, lock_yaml);

    // Both: every image is named in the bundle's repository.
    images::push_fixture(&images, &target, "sidecar-copy", &sidecar).await?;
    let pulled = bundle::pull(&registry, &location, &out.path().join("b")).await?;
    ensure!(pulled.relocated, "{pulled:?}");
    let rewritten = ImagesLock::from_yaml(&std::fs::read_to_string(&pulled_lock)?)?;
    let expected: Vec<(String, String)> = [("app", &app), ("sidecar", &sidecar)]
        .into_iter()
        .map(|(name, f)| {
            (
                format!("{repo}@{}", f.digest()),
                format!("example.com/{name}:1.0"),
            )
        })
        .collect();
    let actual: Vec<(String, String)> = rewritten
        .images
        .iter()
        .map(|i| (i.image.clone(), i.original_reference().to_owned()))
        .collect();
    assert_eq!(actual, expected);
    // The rest of the tree is as pushed.
    let mut pulled_tree = snapshot(&out.path().join("b"))?;
    let mut pushed_tree = snapshot(tree.path())?;
    pulled_tree.remove(".imgpkg/images.yml");
    pushed_tree.remove(".imgpkg/images.yml");
    assert_eq!(pulled_tree, pushed_tree);
    Ok(())
}

fn packsmith(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .context("running packsmith")
}

/// Runs the CLI against the bed's plain registry; its stdout, or an error with its stderr.
fn packsmith_ok(bed: &Bed, args: &[&str]) -> anyhow::Result<String> {
    let insecure = ["--registry-insecure-host", bed.registry.as_str()];
    let out = packsmith(&[args, &insecure[..]].concat())?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The digest reference of imgpkg's `Pushed '…'` line.
fn pushed_image(stdout: &str) -> anyhow::Result<String> {
    Ok(stdout
        .trim()
        .strip_prefix("Pushed '")
        .and_then(|s| s.strip_suffix('\''))
        .with_context(|| format!("imgpkg's `Pushed '…'` line, got {stdout:?}"))?
        .to_owned())
}

/// `packsmith describe REF`: the files, each locked image with the reference it was locked
/// from, and which of them are bundles themselves — in a table and as JSON.
async fn describe_a_bundle(bed: &Bed) -> anyhow::Result<()> {
    let run = |args: &[&str]| packsmith_ok(bed, args);
    let pushed = |out: String| pushed_image(&out);
    let inner = package_tree("describe-inner")?;
    let inner_image = pushed(run(&[
        "push",
        "-b",
        &format!("{}/{PREFIX}/describe-inner:1", bed.registry),
        "-f",
        &inner.path().to_string_lossy(),
    ])?)?;
    let plain = tempfile::tempdir()?;
    std::fs::write(plain.path().join("data.txt"), "d\n")?;
    let plain_image = pushed(run(&[
        "push",
        "-i",
        &format!("{}/{PREFIX}/describe-plain:1", bed.registry),
        "-f",
        &plain.path().to_string_lossy(),
    ])?)?;
    let outer = tempfile::tempdir()?;
    std::fs::create_dir_all(outer.path().join(".imgpkg"))?;
    std::fs::write(outer.path().join("config.yml"), "a: 1\n")?;
    std::fs::write(
        outer.path().join(".imgpkg/images.yml"),
        format!(
            "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n\
             - image: {inner_image}\n  annotations:\n    kbld.carvel.dev/id: inner:1\n\
             - image: {plain_image}\n"
        ),
    )?;
    let outer_image = pushed(run(&[
        "push",
        "-b",
        &format!("{}/{PREFIX}/describe-outer:1", bed.registry),
        "-f",
        &outer.path().to_string_lossy(),
    ])?)?;

    let json: serde_json::Value =
        serde_json::from_str(&run(&["describe", &outer_image, "-o", "json"])?)?;
    assert_eq!(json["bundle"], serde_json::json!(outer_image));
    let files: Vec<&str> = json["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(files, [".imgpkg/images.yml", "config.yml"]);
    assert_eq!(
        json["images"],
        serde_json::json!([
            {"image": inner_image, "original": "inner:1", "bundle": true},
            {"image": plain_image, "bundle": false},
        ])
    );
    let table = run(&["describe", &outer_image])?;
    ensure!(
        table.contains("IMAGE") && table.contains("LOCKED FROM") && table.contains("inner:1"),
        "{table}"
    );
    Ok(())
}

/// `packsmith values REF` (the seed's get-package-config) pulls the bundle and prints the
/// same default values and schema as `packsmith values DIR` on the directory pushed.
async fn values_of_a_pushed_bundle(bed: &Bed) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce/external-dns/0.12.2/bundle");
    let dir_arg = dir.to_string_lossy().into_owned();
    let reference = format!("{}/{PREFIX}/values:0.12.2", bed.registry);
    let run = |args: &[&str]| packsmith_ok(bed, args);
    let image = pushed_image(&run(&["push", "-b", &reference, "-f", &dir_arg])?)?;
    for extra in [&[][..], &["--schema"][..]] {
        let local = run(&[&["values", &dir_arg][..], extra].concat())?;
        let remote = run(&[&["values", &image][..], extra].concat())?;
        ensure!(!local.is_empty(), "no values printed for {dir_arg}");
        assert_eq!(remote, local, "values {extra:?}");
    }
    let values = run(&["values", &image])?;
    ensure!(
        values.contains("deployment:") && values.contains("aws: null"),
        "{values}"
    );
    Ok(())
}

/// imgpkg's `push -i`: the files as a generic image — no bundle label (so `pull -b` refuses
/// it, as imgpkg does), no `.imgpkg` allowed, no lock output; `-l` labels it.
async fn cli_push_plain_image(bed: &Bed) -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    std::fs::write(files.path().join("notes.txt"), "plain\n")?;
    let dir = files.path().to_string_lossy().into_owned();
    let reference = format!("{}/{PREFIX}/plain:0.1.0", bed.registry);
    let insecure = ["--registry-insecure-host", bed.registry.as_str()];
    let run = |args: &[&str]| packsmith(&[args, &insecure[..]].concat());

    let out = run(&["push", "-i", &reference, "-f", &dir, "-l", "team=payments"])?;
    ensure!(
        out.status.success(),
        "push -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = pushed_image(&String::from_utf8_lossy(&out.stdout))?;

    let work = tempfile::tempdir()?;
    let pulled = work.path().join("pulled").to_string_lossy().into_owned();
    let out = run(&["pull", "-b", &image, "-o", &pulled])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("not an imgpkg bundle"),
        "pull -b of a plain image should be refused: {stderr}"
    );

    let bundle_tree = package_tree("plain")?;
    let bundle_dir = bundle_tree.path().to_string_lossy().into_owned();
    let out = run(&["push", "-i", &reference, "-f", &bundle_dir])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("cannot be pushed with a .imgpkg directory"),
        "push -i of a bundle tree should be refused: {stderr}"
    );
    let lock = work.path().join("lock.yml").to_string_lossy().into_owned();
    let out = run(&["push", "-i", &reference, "-f", &dir, "--lock-output", &lock])?;
    ensure!(
        !out.status.success(),
        "push -i --lock-output should be refused"
    );
    Ok(())
}

/// The imgpkg drop-in: `push -b -f --lock-output` prints imgpkg's line and writes its lock;
/// `pull -b -o` restores the tree; a missing directory exits 1 naming it.
async fn cli_push_and_pull(bed: &Bed) -> anyhow::Result<()> {
    let tree = package_tree("cli")?;
    let work = tempfile::tempdir()?;
    let lock = work.path().join("bundle.lock.yml");
    let reference = format!("{}/{PREFIX}/cli:0.1.0", bed.registry);
    let dir = tree.path().to_string_lossy().into_owned();
    let lock_arg = lock.to_string_lossy().into_owned();
    let insecure = ["--registry-insecure-host", bed.registry.as_str()];
    let mut args = vec![
        "push",
        "-b",
        &reference,
        "-f",
        &dir,
        "--lock-output",
        &lock_arg,
    ];
    args.extend(insecure);
    let out = packsmith(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = stdout
        .trim()
        .strip_prefix("Pushed '")
        .and_then(|s| s.strip_suffix('\''))
        .with_context(|| format!("imgpkg's `Pushed '…'` line, got {stdout:?}"))?;
    assert_eq!(
        std::fs::read_to_string(&lock)?,
        BundleLock::new(image, "0.1.0").to_yaml()?
    );
    // Not a terminal: nothing but errors on stderr.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    let pulled = work.path().join("pulled");
    let pulled_arg = pulled.to_string_lossy().into_owned();
    let mut args = vec!["pull", "-b", image, "-o", &pulled_arg];
    args.extend(insecure);
    let out = packsmith(&args)?;
    ensure!(
        out.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&pulled)?, snapshot(tree.path())?);

    let missing = work.path().join("no-such-dir");
    let missing_arg = missing.to_string_lossy().into_owned();
    let mut args = vec!["push", "-b", &reference, "-f", &missing_arg];
    args.extend(insecure);
    let out = packsmith(&args)?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&missing_arg) && stderr.contains("No such file"),
        "the error should name the missing directory: {stderr}"
    );
    Ok(())
}

/// 401 from the TLS registry is an authentication error, not retried, and leaves no tag.
async fn wrong_credentials(bed: &Bed) -> anyhow::Result<()> {
    let tree = package_tree("auth")?;
    let repo = format!("{}/{PREFIX}/auth", bed.registry_tls);
    let err = push_tree(&tls(bed, "not-the-password"), tree.path(), &repo, "v1")
        .await
        .expect_err("a push with a wrong password must fail");
    ensure!(err.is_auth(), "expected an auth error, got {err}");
    // Classified as not retryable is what keeps push from retrying it.
    ensure!(!err.is_retryable(), "{err}");
    expect_no_tag(&tls(bed, &bed.registry_password), &repo, "v1").await
}

/// A missing input directory and a symlink in the tree are refused before any request.
async fn bad_inputs(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain(bed);
    let repo = format!("{}/{PREFIX}/bad-inputs", bed.registry);
    let missing = PathBuf::from("/nonexistent/packsmith-bundle");
    match push_tree(&registry, &missing, &repo, "v1").await {
        Err(BundleError::Io { path, source, .. })
            if path == missing && source.kind() == std::io::ErrorKind::NotFound => {}
        other => bail!("expected a not-found error naming the input, got {other:?}"),
    }

    let tree = package_tree("symlink")?;
    std::os::unix::fs::symlink("/etc/passwd", tree.path().join("config/passwd"))?;
    match push_tree(&registry, tree.path(), &repo, "v1").await {
        Err(BundleError::NotRegular {
            path,
            kind: "symbolic link",
        }) if path.ends_with("config/passwd") => {}
        other => bail!("expected the symlink to be refused, got {other:?}"),
    }
    expect_no_tag(&registry, &repo, "v1").await
}

async fn expect_no_tag(registry: &Registry, repo: &str, tag: &str) -> anyhow::Result<()> {
    let reference = format!("{repo}:{tag}").parse()?;
    match registry.distribution().digest(&reference).await {
        Err(e) if e.class() == ErrorClass::NotFound => Ok(()),
        other => bail!("{repo}:{tag} should not exist, HEAD gave {other:?}"),
    }
}

/// A proxy in front of the plain registry that cuts the first `failures` connections which
/// carry more than 64 KiB towards the registry (a blob upload), midway through.
async fn dropping_proxy(upstream: String, failures: usize) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let cut = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    sent += n;
                    if sent > 64 * 1024
                        && cut
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                                (c < failures).then_some(c + 1)
                            })
                            .is_ok()
                    {
                        break; // drop both halves: the upload dies mid-body
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

/// The registry drops the layer upload `failures` times: once is retried and the push
/// succeeds; always exhausts the retries and no tag is written.
async fn dropped_upload(bed: &Bed, failures: usize) -> anyhow::Result<()> {
    let proxy = dropping_proxy(bed.registry.clone(), failures).await?;
    let registry = Registry::new(RegistryOptions {
        insecure_hosts: vec![proxy.clone()],
        ..RegistryOptions::default()
    })?;
    let tree = package_tree(&format!("dropped-{failures}"))?;
    // Incompressible, so the layer is well over the proxy's threshold.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..1_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    std::fs::write(tree.path().join("config/blob.bin"), noise)?;
    let name = format!(
        "{PREFIX}/dropped-{}",
        if failures == 1 { "once" } else { "always" }
    );
    let result = push_tree(&registry, tree.path(), &format!("{proxy}/{name}"), "v1").await;
    let direct = format!("{}/{name}", bed.registry);
    if failures == 1 {
        let pushed = result.context("one dropped upload should be retried")?;
        let out = tempfile::tempdir()?;
        let location = Location::parse(&format!("{direct}:v1"))?;
        bundle::pull(&plain(bed), &location, &out.path().join("b")).await?;
        assert_eq!(snapshot(&out.path().join("b"))?, snapshot(tree.path())?);
        ensure!(pushed.uploaded.len() == 2, "{pushed:?}");
        ensure!(
            pushed.size > 1_000_000,
            "the layer must be big enough to be cut: {pushed:?}"
        );
        Ok(())
    } else {
        let err = result.expect_err("a registry that always drops uploads cannot be pushed to");
        ensure!(
            err.is_retryable(),
            "a dropped connection is retryable, got {err}"
        );
        expect_no_tag(&plain(bed), &direct, "v1").await
    }
}

/// A stopped registry: connection refused on every attempt, a bounded number of them, and
/// once it is back nothing of the failed push is there.
async fn registry_down(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain(bed);
    let repo = format!("{}/{PREFIX}/down", bed.registry);
    let tree = package_tree("down")?;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let progress = move |event: &bundle::PushEvent| {
        if matches!(event, bundle::PushEvent::Retrying { .. }) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    };
    let options = PushOptions {
        attempts: 3,
        backoff: Duration::from_millis(50),
        progress: Some(&progress),
        ..PushOptions::default()
    };
    let built = bundle::build(&[tree.path().to_owned()], &BuildOptions::default())?;
    let location = Location::parse(&format!("{repo}:v1"))?;

    bed.registry_ctl("stop", "plain")?;
    let result = bundle::push(&registry, &built, &location, &["v1".into()], &options).await;
    let restarted = bed.registry_ctl("start", "plain");
    let err = result.expect_err("a push to a stopped registry must fail");
    restarted?;
    ensure!(err.is_retryable(), "{err}");
    // The first step (tags and blobs HEADed side by side) tried 3 times: 2 retries.
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    expect_no_tag(&registry, &repo, "v1").await?;
    // And the same push works once the registry is back.
    let pushed = bundle::push(&registry, &built, &location, &["v1".into()], &options).await?;
    let reference = format!("{repo}:v1").parse()?;
    let digest = registry.distribution().digest(&reference).await?;
    assert_eq!(pushed.image, format!("{repo}@{digest}"));
    Ok(())
}

/// A tag the caller has just read (the revision decision) is not HEADed again by the push:
/// one request fewer, and the outcome is the same — also when the caller says the tag is
/// absent and the push has to write it.
async fn known_tags_are_not_asked_again(bed: &Bed) -> anyhow::Result<()> {
    let tree = package_tree("known-tags")?;
    let built = bundle::build(&[tree.path().to_owned()], &BuildOptions::default())?;
    let location = Location::parse(&format!("{}/{PREFIX}/known:v1", bed.registry))?;
    let tags = vec!["v1".to_owned()];
    let first = plain(bed);
    bundle::push(&first, &built, &location, &tags, &PushOptions::default()).await?;

    let asked = plain(bed);
    let again = bundle::push(&asked, &built, &location, &tags, &PushOptions::default()).await?;
    let told = plain(bed);
    let options = PushOptions {
        known_tags: vec![("v1".to_owned(), Some(built.digest().to_owned()))],
        ..PushOptions::default()
    };
    let known = bundle::push(&told, &built, &location, &tags, &options).await?;
    anyhow::ensure!(again.image == known.image && known.written_tags.is_empty());
    anyhow::ensure!(
        told.requests_made() + 1 == asked.requests_made(),
        "requests: told {}, asked {}",
        told.requests_made(),
        asked.requests_made()
    );

    // Told the tag is absent: the push writes it.
    let other = Location::parse(&format!("{}/{PREFIX}/known:v2", bed.registry))?;
    let options = PushOptions {
        known_tags: vec![("v2".to_owned(), None)],
        ..PushOptions::default()
    };
    let pushed = bundle::push(&plain(bed), &built, &other, &["v2".to_owned()], &options).await?;
    anyhow::ensure!(pushed.written_tags.contains(&"v2".to_owned()), "{pushed:?}");
    Ok(())
}
