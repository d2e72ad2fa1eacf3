//! The lock stage against the bed's registries: the TCE fixtures' references resolve through
//! mirrors to the digests of synthetic images pushed under the same names, each tag with one
//! manifest request; bad input fails fast with the file, the reference and the cause.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use pretty_assertions::assert_eq;

use packsmith::carvel::imgpkg::ImagesLock;
use packsmith::lock::{self, LockConfig, LockError, ResolveOptions, Written};
use packsmith::registry::{Credentials, ErrorClass, Mirror, Registry, RegistryOptions};

use crate::support::images::{self, ImageKind};
use crate::support::{self, Bed, bed};

const PREFIX: &str = "e2e-lock";

/// An image pushed locally: (registry host as written, repository, tag, kind).
type Pushed = (&'static str, &'static str, &'static str, ImageKind);

/// The fixture packages, and what their (post-override) references are pushed as locally.
/// Kinds vary so the multi-platform ones prove a tag resolves to its index digest, as kbld's
/// does.
const PACKAGES: &[(&str, &[Pushed])] = &[
    (
        "cert-manager/1.9.1",
        &[
            (
                "quay.io",
                "jetstack/cert-manager-cainjector",
                "v1.9.1",
                ImageKind::DockerV2,
            ),
            (
                "quay.io",
                "jetstack/cert-manager-controller",
                "v1.9.1",
                ImageKind::Oci,
            ),
            (
                "quay.io",
                "jetstack/cert-manager-webhook",
                "v1.9.1",
                ImageKind::MultiArch,
            ),
        ],
    ),
    (
        "contour/1.22.3",
        &[
            (
                "docker.io",
                "envoyproxy/envoy",
                "v1.23.3",
                ImageKind::DockerManifestList,
            ),
            (
                "ghcr.io",
                "projectcontour/contour",
                "v1.22.3",
                ImageKind::MultiArch,
            ),
        ],
    ),
    (
        // kbld-config.yml overrides the upstream image to bitnami/external-dns:0.12.2.
        "external-dns/0.12.2",
        &[(
            "docker.io",
            "bitnami/external-dns",
            "0.12.2",
            ImageKind::DockerV2,
        )],
    ),
    (
        "local-path-storage/0.0.22",
        &[
            (
                "docker.io",
                "library/busybox",
                "latest",
                ImageKind::MultiArch,
            ),
            (
                "projects.registry.vmware.com",
                "tce/local-path-provisioner",
                "v0.0.22",
                ImageKind::DockerV2,
            ),
        ],
    ),
];

fn trial<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce(&'static Bed) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("lock::{name}"), move || {
        support::block_on(async move { body(bed()).await })
    })
}

pub fn trials() -> Vec<Trial> {
    let mut trials = Vec::new();
    for (index, (package, _)) in PACKAGES.iter().enumerate() {
        let name = package
            .split('/')
            .next()
            .unwrap_or(package)
            .replace('-', "_");
        trials.push(Trial::test(
            format!("lock::list_equals_fixture_ids_{name}"),
            move || list_equals_fixture_ids(package).map_err(|e| format!("{e:#}").into()),
        ));
        trials.push(trial(
            &format!("full_lock_through_mirrors_{name}"),
            move |bed| full_lock_through_mirrors(bed, index),
        ));
    }
    trials.push(trial(
        "basic_auth_and_ca_from_docker_config",
        basic_auth_and_ca_from_docker_config,
    ));
    trials.push(trial(
        "unknown_tag_and_repository",
        unknown_tag_and_repository,
    ));
    trials.push(trial(
        "unauthorized_without_or_with_wrong_credentials",
        unauthorized,
    ));
    trials.push(trial(
        "registry_down_retries_then_fails",
        registry_down_retries_then_fails,
    ));
    trials.push(trial(
        "malformed_reference_fails_before_any_request",
        malformed_reference,
    ));
    trials.push(trial(
        "yaml_bomb_and_huge_document_fail_fast",
        yaml_bomb_and_huge_document,
    ));
    trials.push(trial(
        "cli_reports_file_reference_and_cause",
        cli_reports_failure,
    ));
    trials.push(trial(
        "tag_and_platform_selection_overrides",
        tag_and_platform_selection,
    ));
    trials.push(trial(
        "locked_reuses_the_lock_and_contacts_no_registry",
        locked_contacts_no_registry,
    ));
    trials.push(trial(
        "bearer_token_once_per_repository",
        bearer_token_once_per_repository,
    ));
    trials.push(Trial::test("lock::manifests_from_stdin", || {
        manifests_from_stdin().map_err(|e| format!("{e:#}").into())
    }));
    trials
}

fn fixture_bundle(package: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/tce")
        .join(package)
        .join("bundle")
}

fn fixture_lock(package: &str) -> anyhow::Result<ImagesLock> {
    let path = fixture_bundle(package).join(".imgpkg/images.yml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(ImagesLock::from_yaml(&text)?)
}

fn packsmith(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()
        .context("running packsmith")
}

/// `--list` is a compatibility contract: exactly the fixture's `kbld.carvel.dev/id`s.
fn list_equals_fixture_ids(package: &str) -> anyhow::Result<()> {
    let bundle = fixture_bundle(package);
    let out = packsmith(&["lock", "--list", "-f", &bundle.display().to_string()])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids: Vec<String> = fixture_lock(package)?
        .images
        .iter()
        .map(|i| i.original_reference().to_owned())
        .collect();
    ids.sort();
    let expected: String = ids.iter().map(|id| format!("{id}\n")).collect();
    assert_eq!(String::from_utf8(out.stdout)?, expected, "{package}");
    Ok(())
}

/// A unique repository prefix per test, so parallel tests never see each other's images.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{PREFIX}/{test}-{nanos:x}")
}

/// Mirrors every public host of the fixtures to `prefix/<host>` on the plain registry.
fn mirrors(bed: &Bed, prefix: &str) -> Vec<Mirror> {
    [
        "quay.io",
        "ghcr.io",
        "docker.io",
        "projects.registry.vmware.com",
    ]
    .iter()
    .map(|host| Mirror {
        from: (*host).to_owned(),
        to: format!("{}/{prefix}/{host}", bed.registry),
        insecure: true,
    })
    .collect()
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

async fn full_lock_through_mirrors(bed: &Bed, index: usize) -> anyhow::Result<()> {
    let (package, images) = PACKAGES[index];
    let prefix = unique_prefix(&package.replace('/', "-"));
    let plain = images::Registry::plain(bed);
    let mut pushed = BTreeSet::new();
    for (host, repository, tag, kind) in images {
        let digest = images::push_image(
            &plain,
            &format!("{prefix}/{host}/{repository}"),
            tag,
            *kind,
            package,
        )
        .await?;
        let canonical_host = if *host == "docker.io" {
            "index.docker.io"
        } else {
            host
        };
        pushed.insert(format!("{canonical_host}/{repository}@{digest}"));
    }

    // A fresh lock: the tree without its recorded images.yml, which would otherwise be
    // reused as preresolved overrides (as kbld does) and nothing would be looked up.
    let work = tempfile::tempdir()?;
    let tree = work.path().join("bundle");
    copy_tree(&fixture_bundle(package), &tree)?;
    std::fs::remove_file(tree.join(".imgpkg/images.yml"))?;
    let output = tree.join(".imgpkg/images.yml");

    let registry = Registry::new(RegistryOptions {
        mirrors: mirrors(bed, &prefix),
        ..RegistryOptions::default()
    })?;
    let locked = lock::run(
        std::slice::from_ref(&tree),
        &LockConfig::default(),
        &registry,
        &ResolveOptions::default(),
        Some(&output),
    )
    .await?;

    let written = ImagesLock::from_yaml(&std::fs::read_to_string(&output)?)?;
    let recorded = fixture_lock(package)?;
    let ids = |lock: &ImagesLock| -> BTreeSet<String> {
        lock.images
            .iter()
            .map(|i| i.original_reference().to_owned())
            .collect()
    };
    assert_eq!(ids(&written), ids(&recorded), "{package}: ids");
    let got: BTreeSet<String> = written.images.iter().map(|i| i.image.clone()).collect();
    assert_eq!(
        got, pushed,
        "{package}: images are the local digests under the public names"
    );
    // Same repositories as the lock kbld wrote, only the digests differ.
    let repository = |image: &str| image.split('@').next().unwrap_or("").to_owned();
    let repos = |lock: &ImagesLock| -> BTreeSet<String> {
        lock.images.iter().map(|i| repository(&i.image)).collect()
    };
    assert_eq!(repos(&written), repos(&recorded), "{package}: repositories");

    let requests = locked.resolution.requests;
    assert_eq!(
        requests.manifest_heads,
        images.len(),
        "{package}: one HEAD per reference"
    );
    assert_eq!(requests.manifest_gets, 0, "{package}: no GET");
    assert_eq!(
        requests.pings, 1,
        "{package}: one /v2/ ping for the one registry"
    );
    assert_eq!(locked.written, Some(Written::Changed));

    // Warm: the lock is in the tree now and answers for every reference.
    let again = lock::run(
        std::slice::from_ref(&tree),
        &LockConfig::default(),
        &registry,
        &ResolveOptions::default(),
        Some(&output),
    )
    .await?;
    assert_eq!(
        again.resolution.requests.total(),
        0,
        "{package}: warm re-lock"
    );
    assert_eq!(
        again.written,
        Some(Written::Unchanged),
        "{package}: warm re-lock"
    );
    Ok(())
}

fn manifest_tree(manifests: &[(&str, &str)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, text) in manifests {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

fn plain_mirror(bed: &Bed, prefix: &str) -> anyhow::Result<Registry> {
    Ok(Registry::new(RegistryOptions {
        mirrors: vec![Mirror {
            from: "quay.io".to_owned(),
            to: format!("{}/{prefix}", bed.registry),
            insecure: true,
        }],
        ..RegistryOptions::default()
    })?)
}

async fn lock_dir(
    dir: &Path,
    registry: &Registry,
    options: &ResolveOptions,
) -> Result<lock::Locked, LockError> {
    lock::run(
        &[dir.to_owned()],
        &LockConfig::default(),
        registry,
        options,
        None,
    )
    .await
}

async fn basic_auth_and_ca_from_docker_config(bed: &Bed) -> anyhow::Result<()> {
    let prefix = unique_prefix("tls");
    let tls = images::Registry::tls(bed);
    let digest =
        images::push_image(&tls, &format!("{prefix}/app"), "1.0", ImageKind::Oci, "tls").await?;
    let config = serde_json::json!({"auths": {bed.registry_tls.clone(): {
        "username": bed.registry_user, "password": bed.registry_password,
    }}});
    let credentials =
        Credentials::from_docker_config_json(config.to_string().as_bytes(), "test config.json")?;
    let registry = Registry::new(RegistryOptions {
        mirrors: vec![Mirror {
            from: "quay.io".to_owned(),
            to: format!("{}/{prefix}", bed.registry_tls),
            insecure: false,
        }],
        ca_pems: vec![std::fs::read(&bed.registry_tls_ca)?],
        credentials,
        ..RegistryOptions::default()
    })?;
    let dir = manifest_tree(&[("m.yml", "image: quay.io/app:1.0\n")])?;
    let locked = lock_dir(dir.path(), &registry, &ResolveOptions::default()).await?;
    assert_eq!(
        locked.resolution.images["quay.io/app:1.0"].image,
        format!("quay.io/app@{digest}")
    );
    // Basic credentials go out with the HEAD itself once the ping has shown the challenge.
    assert_eq!(locked.resolution.requests.total(), 2);
    Ok(())
}

async fn unknown_tag_and_repository(bed: &Bed) -> anyhow::Result<()> {
    let prefix = unique_prefix("missing");
    let plain = images::Registry::plain(bed);
    images::push_image(
        &plain,
        &format!("{prefix}/exists"),
        "1",
        ImageKind::DockerV2,
        "x",
    )
    .await?;
    let dir = manifest_tree(&[
        ("a.yml", "image: quay.io/exists:2\n"),
        ("b.yml", "image: quay.io/never-pushed:1\n"),
    ])?;
    let registry = plain_mirror(bed, &prefix)?;
    let error = lock_dir(dir.path(), &registry, &ResolveOptions::default())
        .await
        .expect_err("both references are missing");
    let LockError::Many(errors) = &error else {
        anyhow::bail!("expected two failures, got {error}");
    };
    assert_eq!(errors.len(), 2, "{error}");
    for (failure, (file, reference, code)) in errors.iter().zip([
        // docker-registry's storage knows no repository until it is pushed, so both are
        // MANIFEST_UNKNOWN there (a registry with NAME_UNKNOWN gets a sharper message).
        ("a.yml", "quay.io/exists:2", "MANIFEST_UNKNOWN"),
        ("b.yml", "quay.io/never-pushed:1", "MANIFEST_UNKNOWN"),
    ]) {
        let text = failure.to_string();
        ensure!(
            text.contains(file) && text.contains(reference) && text.contains(code),
            "{text}"
        );
        ensure!(
            matches!(failure, LockError::Resolve { cause, .. } if cause.class() == ErrorClass::NotFound)
        );
    }
    Ok(())
}

async fn unauthorized(bed: &Bed) -> anyhow::Result<()> {
    let ca = std::fs::read(&bed.registry_tls_ca)?;
    let dir = manifest_tree(&[("m.yml", "image: quay.io/app:1.0\n")])?;
    for (credentials, hint) in [
        (Credentials::default(), "no credentials are configured"),
        (
            Credentials::basic(&bed.registry_tls, &bed.registry_user, "wrong-password"),
            "credentials were refused",
        ),
    ] {
        let registry = Registry::new(RegistryOptions {
            mirrors: vec![Mirror {
                from: "quay.io".to_owned(),
                to: bed.registry_tls.clone(),
                insecure: false,
            }],
            ca_pems: vec![ca.clone()],
            credentials,
            ..RegistryOptions::default()
        })?;
        let error = lock_dir(dir.path(), &registry, &ResolveOptions::default())
            .await
            .expect_err("401");
        let text = error.to_string();
        ensure!(
            text.contains("401") && text.contains(hint) && text.contains("m.yml"),
            "{text}"
        );
        ensure!(
            matches!(&error, LockError::Resolve { cause, .. } if cause.is_auth()),
            "{text}"
        );
        ensure!(!error.is_retryable());
    }
    Ok(())
}

async fn registry_down_retries_then_fails(_bed: &Bed) -> anyhow::Result<()> {
    // A port nothing listens on: the registry is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let registry = Registry::new(RegistryOptions {
        mirrors: vec![Mirror {
            from: "quay.io".to_owned(),
            to: format!("127.0.0.1:{port}"),
            insecure: true,
        }],
        ..RegistryOptions::default()
    })?;
    let dir = manifest_tree(&[("deploy.yml", "spec:\n  image: quay.io/app:1.0\n")])?;
    let options = ResolveOptions {
        retries: 3,
        backoff: Duration::from_millis(50),
        ..ResolveOptions::default()
    };
    let started = Instant::now();
    let error = lock_dir(dir.path(), &registry, &options)
        .await
        .expect_err("down");
    let elapsed = started.elapsed();
    let text = error.to_string();
    for hint in ["deploy.yml", "quay.io/app:1.0", "gave up after 4 attempts"] {
        ensure!(text.contains(hint), "{hint}: {text}");
    }
    ensure!(
        format!("{:?}", error)
            .to_lowercase()
            .contains("connection refused")
            || text.to_lowercase().contains("connect"),
        "{text}"
    );
    ensure!(error.is_retryable(), "{text}");
    // 50 + 100 + 200 ms of backoff prove the retries happened (no upper bound: timing
    // targets live in benchmarks, and a loaded CI machine must not fail this).
    ensure!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    Ok(())
}

async fn malformed_reference(bed: &Bed) -> anyhow::Result<()> {
    let registry = plain_mirror(bed, "unused")?;
    let dir = manifest_tree(&[(
        "m.yml",
        "a:\n  image: quay.io/Has-Upper:1\nb:\n  image: \"quay.io/x:bad tag\"\n",
    )])?;
    let error = lock_dir(dir.path(), &registry, &ResolveOptions::default())
        .await
        .expect_err("malformed");
    let text = error.to_string();
    for hint in [
        "quay.io/Has-Upper:1",
        "quay.io/x:bad tag",
        "m.yml (document 1)",
        "2 images",
    ] {
        ensure!(text.contains(hint), "{hint}: {text}");
    }
    Ok(())
}

async fn yaml_bomb_and_huge_document(_bed: &Bed) -> anyhow::Result<()> {
    let mut bomb = String::from(
        "a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n",
    );
    for level in 1..=12 {
        let p = level - 1;
        bomb.push_str(&format!(
            "a{level}: &a{level} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("image: quay.io/app:1\n");
    let dir = manifest_tree(&[("bomb.yml", &bomb)])?;
    // A completed expansion would succeed; the error is the budget at work.
    let error = lock::discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
        .expect_err("alias expansion is bounded");
    ensure!(
        matches!(error, LockError::Yaml { .. }) && error.to_string().contains("bomb.yml"),
        "{error}"
    );

    let huge = tempfile::tempdir()?;
    let path = huge.path().join("huge.yml");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        file.write_all(b"image: quay.io/app:1\ndata: \"")?;
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..100 {
            file.write_all(&chunk)?;
        }
        file.write_all(b"\"\n")?;
    }
    // TooLarge is decided from the file's size, before any of it is read.
    let error = lock::discover_rendered(&[huge.path().to_owned()], &LockConfig::default(), &[])
        .expect_err("100 MB is over the limit");
    ensure!(
        matches!(error, LockError::TooLarge { .. }) && error.to_string().contains("huge.yml"),
        "{error}"
    );
    Ok(())
}

/// Through the binary: exit status 1, and stderr names the file, the reference, the cause.
async fn cli_reports_failure(bed: &Bed) -> anyhow::Result<()> {
    let prefix = unique_prefix("cli");
    let dir = manifest_tree(&[(
        "deployment.yaml",
        "spec:\n  image: quay.io/never/pushed:3\n",
    )])?;
    let out = packsmith(&[
        "lock",
        "-f",
        &dir.path().display().to_string(),
        "--registry-mirror",
        &format!("quay.io={}/{prefix}", bed.registry),
        "--registry-insecure-host",
        &bed.registry,
        "--registry-config",
        "/dev/null/none.json",
    ])?;
    // An unreadable credentials file is itself an error worth reporting.
    ensure!(!out.status.success());
    let out = packsmith(&[
        "lock",
        "-f",
        &dir.path().display().to_string(),
        "--registry-mirror",
        &format!("quay.io={}/{prefix}", bed.registry),
        "--registry-insecure-host",
        &bed.registry,
    ])?;
    ensure!(out.status.code() == Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for hint in [
        "deployment.yaml",
        "quay.io/never/pushed:3",
        "404",
        "does not exist",
    ] {
        ensure!(stderr.contains(hint), "{hint}: {stderr}");
    }
    ensure!(
        stderr.matches("404").count() == 1,
        "the cause once: {stderr}"
    );
    Ok(())
}

/// kbld's `tagSelection` (highest tag within the constraints, prereleases left out) and
/// `platformSelection` (the arm64 image of an index, not the index).
async fn tag_and_platform_selection(bed: &Bed) -> anyhow::Result<()> {
    let prefix = unique_prefix("select");
    let plain = images::Registry::plain(bed);
    let mut digests = std::collections::BTreeMap::new();
    for tag in ["1.0.0", "v1.2.0", "2.0.0", "1.3.0-rc.1", "latest"] {
        let digest = images::push_image(
            &plain,
            &format!("{prefix}/app"),
            tag,
            ImageKind::DockerV2,
            tag,
        )
        .await?;
        digests.insert(tag, digest);
    }
    let multi = images::fixture(&format!("{prefix}/multi"), "1.0", ImageKind::MultiArch, "m")?;
    images::push_fixture(&plain, &format!("{prefix}/multi"), "1.0", &multi).await?;
    let arm64 = multi.platform_digest("arm64")?;
    ensure!(arm64 != multi.digest(), "the index and its image differ");

    let dir = manifest_tree(&[
        (
            "m.yml",
            "a:\n  image: app\nb:\n  image: multi\nc:\n  image: multi-by-digest\n",
        ),
        (
            "z-kbld.yml",
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: app\n  \
             newImage: quay.io/app\n  tagSelection:\n    semver:\n      constraints: \
             \">=1.0.0 <2.0.0\"\n- image: multi\n  newImage: quay.io/multi:1.0\n  \
             platformSelection:\n    os: linux\n    architecture: arm64\n",
        ),
        (
            "z-kbld-digest.yml",
            &format!(
                "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: \
                 multi-by-digest\n  newImage: quay.io/multi@{}\n  platformSelection:\n    \
                 os: linux\n    architecture: arm64\n",
                multi.digest()
            ),
        ),
    ])?;
    let registry = plain_mirror(bed, &prefix)?;
    let locked = lock_dir(dir.path(), &registry, &ResolveOptions::default()).await?;
    let app = &locked.resolution.images["app"];
    assert_eq!(app.image, format!("quay.io/app@{}", digests["v1.2.0"]));
    let origins = app
        .annotations
        .get(packsmith::carvel::imgpkg::KBLD_ORIGINS_ANNOTATION)
        .context("origins")?;
    ensure!(
        origins.contains("tag: v1.2.0") && origins.contains("url: quay.io/app:v1.2.0"),
        "{origins}"
    );
    assert_eq!(
        locked.resolution.images["multi"].image,
        format!("quay.io/multi@{arm64}")
    );
    assert_eq!(
        locked.resolution.images["multi-by-digest"].image,
        format!("quay.io/multi@{arm64}")
    );
    assert_eq!(locked.resolution.selections, 3);
    // kbld's origins: the resolved tag (none for a digest reference), then the platform
    // taken out of the index, named by the index's digest.
    let origins_of = |id: &str| -> anyhow::Result<String> {
        Ok(locked.resolution.images[id]
            .annotations
            .get(packsmith::carvel::imgpkg::KBLD_ORIGINS_ANNOTATION)
            .context("origins")?
            .clone())
    };
    let platform_origin = format!(
        "- platformSelected:\n    architecture: arm64\n    index: quay.io/multi@{}\n    os: \
         linux\n",
        multi.digest()
    );
    assert_eq!(
        origins_of("multi")?,
        format!("- resolved:\n    tag: \"1.0\"\n    url: quay.io/multi:1.0\n{platform_origin}")
    );
    assert_eq!(origins_of("multi-by-digest")?, platform_origin);

    // kbld's --platform: every reference, digest references included, resolves to the
    // platform's image; an override's own platformSelection wins over the flag.
    let amd64 = multi.platform_digest("amd64")?;
    let dir = manifest_tree(&[
        (
            "m.yml",
            &format!(
                "a:\n  image: quay.io/multi:1.0\nb:\n  image: quay.io/multi@{}\nc:\n  image: \
                 pinned\n",
                multi.digest()
            ),
        ),
        (
            "z-kbld.yml",
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: pinned\n  \
             newImage: quay.io/multi:1.0\n  platformSelection:\n    os: linux\n    architecture: \
             amd64\n",
        ),
    ])?;
    let options = ResolveOptions {
        platform: Some("linux/arm64".parse().map_err(anyhow::Error::msg)?),
        ..ResolveOptions::default()
    };
    let locked = lock_dir(dir.path(), &registry, &options).await?;
    let images = &locked.resolution.images;
    assert_eq!(
        images["quay.io/multi:1.0"].image,
        format!("quay.io/multi@{arm64}")
    );
    assert_eq!(
        images[&format!("quay.io/multi@{}", multi.digest())].image,
        format!("quay.io/multi@{arm64}")
    );
    assert_eq!(images["pinned"].image, format!("quay.io/multi@{amd64}"));
    // The CLI flag reaches the same resolution.
    let tree = dir.path().display().to_string();
    let mirror = format!("quay.io={}/{prefix}", bed.registry);
    let out = packsmith(&[
        "lock",
        "-f",
        &tree,
        "--platform",
        "linux/arm64",
        "--registry-mirror",
        &mirror,
        "--registry-insecure-host",
        &bed.registry,
    ])?;
    ensure!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout)?;
    ensure!(
        printed.matches(arm64.as_str()).count() == 2 && printed.contains(amd64.as_str()),
        "{printed}"
    );

    // Constraints nothing satisfies name the repository and the constraints.
    let dir = manifest_tree(&[(
        "m.yml",
        "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: app\n  newImage: \
         quay.io/app\n  tagSelection:\n    semver:\n      constraints: \">=3.0.0\"\n---\nimage: \
         app\n",
    )])?;
    let error = lock_dir(dir.path(), &registry, &ResolveOptions::default())
        .await
        .expect_err("no tag is >=3.0.0")
        .to_string();
    ensure!(
        error.contains("m.yml") && error.contains(">=3.0.0") && error.contains("quay.io/app"),
        "{error}"
    );
    Ok(())
}

/// `--locked`: the lock answers for every reference, so the registry (here: none, as the
/// mirror flag is left out and quay.io is unreachable) is never asked; a reference the lock
/// lacks, or a lock that would change, fails without writing anything.
async fn locked_contacts_no_registry(bed: &Bed) -> anyhow::Result<()> {
    let prefix = unique_prefix("locked");
    let plain = images::Registry::plain(bed);
    images::push_image(&plain, &format!("{prefix}/app"), "1.0", ImageKind::Oci, "l").await?;
    let dir = manifest_tree(&[("m.yml", "image: quay.io/app:1.0\n")])?;
    let tree = dir.path().display().to_string();
    let lock_file = dir.path().join(".imgpkg/images.yml");
    let lock_path = lock_file.display().to_string();
    let mirror = format!("quay.io={}/{prefix}", bed.registry);
    let out = packsmith(&[
        "lock",
        "-f",
        &tree,
        "--imgpkg-lock-output",
        &lock_path,
        "--registry-mirror",
        &mirror,
        "--registry-insecure-host",
        &bed.registry,
    ])?;
    ensure!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(&lock_file)?;

    let locked = |extra: &[&str]| {
        let mut args = vec!["lock", "-f", &tree, "--locked"];
        args.extend_from_slice(extra);
        packsmith(&args)
    };
    let out = locked(&["--imgpkg-lock-output", &lock_path])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    ensure!(stderr.contains("0 manifest requests"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock_file)?, written);

    // The lock may also live outside the tree: --locked reads the output file as input.
    let elsewhere = tempfile::tempdir()?;
    let outside = elsewhere.path().join("images.yml");
    std::fs::rename(&lock_file, &outside)?;
    let out = locked(&["--imgpkg-lock-output", &outside.display().to_string()])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&outside, &lock_file)?;

    // A reference the lock does not have.
    std::fs::write(dir.path().join("n.yml"), "image: quay.io/app:2.0\n")?;
    let out = locked(&["--imgpkg-lock-output", &lock_path])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{stderr}");
    ensure!(
        stderr.contains("quay.io/app:2.0")
            && stderr.contains("n.yml")
            && stderr.contains("--locked"),
        "{stderr}"
    );
    std::fs::remove_file(dir.path().join("n.yml"))?;

    // An entry no manifest uses any more would be dropped: that changes the lock.
    std::fs::write(
        dir.path().join("m.yml"),
        format!("image: quay.io/app@sha256:{}\n", "c".repeat(64)),
    )?;
    let out = locked(&["--imgpkg-lock-output", &lock_path])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{stderr}");
    ensure!(stderr.contains("would change"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&lock_file)?, written);
    Ok(())
}

/// `packsmith lock FLAGS -f -` with `input` on standard input.
fn lock_stdin(flags: &[&str], input: &[u8]) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .arg("lock")
        .args(flags)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(input)?;
    Ok(child.wait_with_output()?)
}

/// `-f -` reads manifests from standard input, as `kbld -f -`.
fn manifests_from_stdin() -> anyhow::Result<()> {
    let out = lock_stdin(
        &["--list"],
        b"image: b:2\n---\nkind: List\nitems:\n- image: a:1\n",
    )?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "a:1\nb:2\n");

    // Standard input has no file to rewrite.
    let out = lock_stdin(
        &["--in-place"],
        format!("image: r.io/a@sha256:{}\n", "f".repeat(64)).as_bytes(),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{stderr}");
    ensure!(stderr.contains("cannot be rewritten in place"), "{stderr}");
    Ok(())
}

/// A registry that wants bearer tokens, as Docker Hub, GHCR and Harbor do: docker-registry
/// can only delegate to an external token server that signs JWTs, so this is a small fake
/// speaking the protocol: `/v2/` answers 401 with a Bearer challenge, `/token` issues a
/// token per repository scope for the right basic credentials, and manifests answer only to
/// their repository's token.
struct TokenRegistry {
    host: String,
    pings: std::sync::atomic::AtomicUsize,
    tokens: std::sync::atomic::AtomicUsize,
    heads: std::sync::atomic::AtomicUsize,
}

const TOKEN_USER: &str = "robot";
const TOKEN_PASSWORD: &str = "s3cret";

impl TokenRegistry {
    async fn start() -> anyhow::Result<std::sync::Arc<Self>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let registry = std::sync::Arc::new(TokenRegistry {
            host: listener.local_addr()?.to_string(),
            pings: Default::default(),
            tokens: Default::default(),
            heads: Default::default(),
        });
        let server = std::sync::Arc::clone(&registry);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = std::sync::Arc::clone(&server);
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        Ok(registry)
    }

    fn digest(repository: &str, tag: &str) -> String {
        images::sha256_digest(format!("{repository}:{tag}").as_bytes())
    }

    /// HTTP/1.1 with keep-alive: requests without bodies, answers with Content-Length.
    async fn serve(&self, stream: tokio::net::TcpStream) {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
        let mut stream = BufReader::new(stream);
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                match stream.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push(line.trim_end().to_owned()),
                }
            }
            let Some((method, target)) = head.first().and_then(|l| {
                let mut parts = l.split(' ');
                Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
            }) else {
                return;
            };
            let authorization = head
                .iter()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                })
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default();
            let (status, headers, body) = self.answer(&method, &target, &authorization);
            let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
            for header in headers {
                response.push_str(&header);
                response.push_str("\r\n");
            }
            response.push_str("\r\n");
            if method != "HEAD" {
                response.push_str(&body);
            }
            if stream
                .get_mut()
                .write_all(response.as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    fn answer(
        &self,
        method: &str,
        target: &str,
        authorization: &str,
    ) -> (&'static str, Vec<String>, String) {
        use std::sync::atomic::Ordering::Relaxed;
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"fake\"",
            self.host
        );
        if target == "/v2/" {
            self.pings.fetch_add(1, Relaxed);
            return ("401 Unauthorized", vec![challenge], "{}".to_owned());
        }
        if let Some(query) = target.strip_prefix("/token?") {
            self.tokens.fetch_add(1, Relaxed);
            let basic = format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{TOKEN_USER}:{TOKEN_PASSWORD}"),
                )
            );
            let scope = query
                .split('&')
                .find_map(|p| p.strip_prefix("scope="))
                .map(|s| s.replace("%3A", ":").replace("%2F", "/"))
                .unwrap_or_default();
            if authorization != basic || !query.contains("service=fake") {
                return ("401 Unauthorized", Vec::new(), "{}".to_owned());
            }
            return (
                "200 OK",
                Vec::new(),
                format!("{{\"token\": \"token for {scope}\"}}"),
            );
        }
        if let Some(rest) = target.strip_prefix("/v2/")
            && let Some((repository, tag)) = rest.split_once("/manifests/")
            && method == "HEAD"
        {
            self.heads.fetch_add(1, Relaxed);
            if authorization != format!("Bearer token for repository:{repository}:pull") {
                return ("401 Unauthorized", vec![challenge], String::new());
            }
            return (
                "200 OK",
                vec![
                    format!("Docker-Content-Digest: {}", Self::digest(repository, tag)),
                    "Content-Type: application/vnd.oci.image.manifest.v1+json".to_owned(),
                ],
                String::new(),
            );
        }
        ("404 Not Found", Vec::new(), String::new())
    }
}

async fn bearer_token_once_per_repository(_bed: &Bed) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let fake = TokenRegistry::start().await?;
    let dir = manifest_tree(&[(
        "m.yml",
        "a:\n  image: quay.io/org/app:1\nb:\n  image: quay.io/org/app:2\nc:\n  image: \
         quay.io/org/db:1\n",
    )])?;
    let options = |credentials| RegistryOptions {
        mirrors: vec![Mirror {
            from: "quay.io".to_owned(),
            to: fake.host.clone(),
            insecure: true,
        }],
        credentials,
        ..RegistryOptions::default()
    };
    let config = serde_json::json!({"auths": {fake.host.clone(): {
        "username": TOKEN_USER, "password": TOKEN_PASSWORD,
    }}});
    let credentials =
        Credentials::from_docker_config_json(config.to_string().as_bytes(), "test config.json")?;
    let registry = Registry::new(options(credentials))?;
    let locked = lock_dir(dir.path(), &registry, &ResolveOptions::default()).await?;
    for (id, repository, tag) in [
        ("quay.io/org/app:1", "org/app", "1"),
        ("quay.io/org/app:2", "org/app", "2"),
        ("quay.io/org/db:1", "org/db", "1"),
    ] {
        assert_eq!(
            locked.resolution.images[id].image,
            format!(
                "quay.io/{repository}@{}",
                TokenRegistry::digest(repository, tag)
            )
        );
    }
    // One ping for the host, one token per repository, one HEAD per tag.
    assert_eq!(
        (
            fake.pings.load(Relaxed),
            fake.tokens.load(Relaxed),
            fake.heads.load(Relaxed)
        ),
        (1, 2, 3)
    );
    assert_eq!(locked.resolution.requests.total(), 6);

    // Without credentials the token endpoint refuses: an authentication error, not retried.
    let registry = Registry::new(options(Credentials::default()))?;
    let error = lock_dir(dir.path(), &registry, &ResolveOptions::default())
        .await
        .expect_err("the token endpoint wants credentials");
    ensure!(error.is_auth(), "{error}");
    ensure!(error.to_string().contains("token"), "{error}");
    Ok(())
}
