//! `packsmith release` end to end: a git upstream whose manifests reference a public image
//! name, resolved through a mirror to the bed's registry, synced, locked, pushed and rendered
//! into a Package; the pushed bundle pulls back to the same tree.

use std::process::Command;

use anyhow::Context as _;

use libtest_mimic::Trial;

use super::repo::pushed_image;
use crate::support::bed;
use crate::support::images::{ImageKind, Registry, push_image};
use crate::tests::git::{git, make_repo};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("release::git_upstream_to_package", || {
            crate::support::block_on(git_upstream_to_package())
        }),
        Trial::test("release::all_packages_of_a_tree", || {
            crate::support::block_on(all_packages_of_a_tree())
        }),
        Trial::test("release::sync_lock_push_all_step_by_step", || {
            crate::support::block_on(sync_lock_push_all_step_by_step())
        }),
        Trial::test("release::published_versions_are_immutable", || {
            crate::support::block_on(published_versions_are_immutable())
        }),
    ]
}

fn packsmith(args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "packsmith {} failed ({}):\n{stdout}{stderr}",
        args.join(" "),
        out.status
    );
    Ok((stdout, stderr))
}

async fn git_upstream_to_package() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    // The image the manifests name lives in the bed's registry under the same repository.
    let digest = push_image(
        &Registry::plain(bed()),
        "example/release-demo",
        "v1.2.3",
        ImageKind::MultiArch,
        "release",
    )
    .await?;
    make_repo(
        "release-demo",
        &[
            (
                "deploy/deployment.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: demo\nspec:\n  template:\n    spec:\n      containers:\n      - name: demo\n        image: quay.io/example/release-demo:v1.2.3\n",
            ),
            ("README.md", "not part of the package\n"),
        ],
        "v1.2.3",
    )?;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    std::fs::create_dir_all(dir.join("config"))?;
    std::fs::write(
        dir.join("config/values.yaml"),
        "#@data/values\n---\n#! Namespace to install into.\nnamespace: demo\n",
    )?;
    std::fs::write(
        dir.join("packagesource.yaml"),
        format!(
            r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: demo
spec:
  package:
    refName: demo.packages.example.com
    versionFrom:
      directory: config/upstream
      constraints: ">=1.0.0"
    metadata:
      displayName: Demo
  contents:
  - path: config/upstream
    contents:
    - path: .
      git:
        url: {git}/release-demo.git
        ref: v1.2.3
      includePaths:
      - deploy/**/*
  images:
    mirrors:
    - from: quay.io
      to: {reg}
      insecure: true
  bundle:
    repository: {reg}/packages/release-demo
    insecure: true
"#,
            git = bed().git_url
        ),
    )?;
    let dir_s = dir.to_str().expect("utf-8 path");
    let (stdout, _) = packsmith(&["release", dir_s])?;
    let image = pushed_image(&stdout)?;
    anyhow::ensure!(
        image.starts_with(&format!("{reg}/packages/release-demo@sha256:")),
        "{image}"
    );

    // The lock pins the public name to the digest the mirror served.
    let lock = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock.contains(&format!("image: quay.io/example/release-demo@{digest}"))
            && lock.contains("kbld.carvel.dev/id: quay.io/example/release-demo:v1.2.3"),
        "unexpected lock:\n{lock}"
    );
    // vendir's lock records what was fetched.
    let vendir_lock = std::fs::read_to_string(dir.join("vendir.lock.yml"))?;
    anyhow::ensure!(vendir_lock.contains("- v1.2.3"), "{vendir_lock}");

    let package_file = dir.join("carvel-artifacts/packages/demo.packages.example.com/1.2.3.yml");
    let package = packsmith::carvel::Package::from_yaml(&std::fs::read_to_string(&package_file)?)?;
    anyhow::ensure!(package.metadata.name.as_deref() == Some("demo.packages.example.com.1.2.3"));
    let fetch = package.spec.template.spec.fetch[0]
        .imgpkg_bundle
        .as_ref()
        .map(|b| b.image.clone());
    anyhow::ensure!(
        fetch.as_deref() == Some(image.as_str()),
        "Package fetches {fetch:?}, pushed {image}"
    );
    let schema = package
        .spec
        .values_schema
        .and_then(|v| v.open_api_v3)
        .unwrap_or_default();
    anyhow::ensure!(
        schema["properties"]["namespace"]["default"] == "demo",
        "values schema: {schema}"
    );
    anyhow::ensure!(
        dir.join("carvel-artifacts/packages/demo.packages.example.com/metadata.yml")
            .is_file()
    );

    // The bundle holds the package, not its description.
    let out = tmp.path().join("pulled");
    packsmith(&[
        "pull",
        "-b",
        &image,
        "-o",
        out.to_str().expect("utf-8"),
        "--registry-insecure-host",
        &reg,
    ])?;
    anyhow::ensure!(
        out.join("config/upstream/deploy/deployment.yaml").is_file(),
        "deployment missing from the bundle"
    );
    anyhow::ensure!(
        !out.join("config/upstream/README.md").exists(),
        "includePaths ignored"
    );
    anyhow::ensure!(std::fs::read_to_string(out.join(".imgpkg/images.yml"))? == lock);
    for absent in ["packagesource.yaml", "carvel-artifacts", "vendir.lock.yml"] {
        anyhow::ensure!(!out.join(absent).exists(), "{absent} was bundled");
    }

    // Same inputs, same digest: GitOps sees no churn.
    let (again, _) = packsmith(&["release", dir_s])?;
    let lock_again = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock_again == lock,
        "re-release changed the lock:\n{lock}\n---- now:\n{lock_again}"
    );
    anyhow::ensure!(
        again.contains(&format!("Pushed '{image}'")),
        "re-release moved the digest:\n{again}"
    );
    Ok(())
}

fn packsmith_fails(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()?;
    anyhow::ensure!(
        !out.status.success(),
        "packsmith {} succeeded",
        args.join(" ")
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The digest `repo:tag` has in the bed's plain registry, or None.
pub async fn tag_digest(repo: &str, tag: &str) -> anyhow::Result<Option<String>> {
    let registry = packsmith::registry::Registry::new(packsmith::registry::RegistryOptions {
        insecure_hosts: vec![bed().registry.clone()],
        ..Default::default()
    })?;
    let reference =
        packsmith::registry::parse_reference(&format!("{}/{repo}:{tag}", bed().registry))?;
    Ok(registry
        .distribution()
        .manifest_digest_at(&reference, tag)
        .await?)
}

/// What an older packsmith (another compressor) would have pushed for the same files: the
/// bundle at `repo:tag` with its layer recompressed, same config (same diff_id), under the
/// same tag. Returns the new manifest digest.
async fn recompress(repo: &str, tag: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let reg = Registry::plain(bed());
    let client = reg.client();
    let tagged = reg.reference(repo, tag)?;
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let (bytes, _) = client
        .pull_manifest_raw(&tagged, &reg.auth, &[docker_v2])
        .await
        .context("pulling the manifest")?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes)?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no layer in {manifest}"))?
        .to_owned();
    let mut compressed = Vec::new();
    client
        .pull_blob(&tagged, layer.as_str(), &mut compressed)
        .await?;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(compressed.as_slice()).read_to_end(&mut tar)?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&tar)?;
    let recompressed = encoder.finish()?;
    anyhow::ensure!(recompressed != compressed, "the same compression");
    let digest = packsmith::registry::sha256_digest(&recompressed);
    client
        .push_blob(&tagged, recompressed.clone(), &digest)
        .await
        .context("pushing the layer")?;
    manifest["layers"][0]["digest"] = serde_json::json!(digest);
    manifest["layers"][0]["size"] = serde_json::json!(recompressed.len());
    let data = serde_json::to_vec(&manifest)?;
    let manifest_digest = packsmith::registry::sha256_digest(&data);
    client
        .push_manifest_raw(&tagged, data, docker_v2.parse()?)
        .await
        .context("pushing the manifest")?;
    Ok(manifest_digest)
}

/// `spec.publish.versionPolicy` through `packsmith release`, with the registry's tags as the
/// record: other content under a published version becomes its next revision (the version's
/// tag stays), unchanged content publishes nothing new — also when only the compression
/// differs —, Refuse stops with the way out, Overwrite moves the tag.
async fn published_versions_are_immutable() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let repo = format!("packages/immutable-{nanos:x}");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("pkg");
    std::fs::create_dir_all(&dir)?;
    let dir_s = dir.to_str().expect("utf-8 path").to_owned();
    let write = |content: &str, policy: &str| {
        std::fs::write(
            dir.join("packagesource.yaml"),
            format!(
                r#"apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: immutable
spec:
  package:
    refName: immutable.packages.example.com
    version: 1.0.0
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          cm.yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app}}\ndata: {{v: '{content}'}}\n"
  images: {{lock: false}}
  bundle:
    repository: {reg}/{repo}
    insecure: true
  publish:
    versionPolicy: {policy}
"#
            ),
        )
    };
    let release = || packsmith(&["release", &dir_s]);

    // 1.0.0 as first published.
    write("a", "Revision")?;
    let first = pushed_image(&release()?.0)?;
    let d1 = first
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    anyhow::ensure!(tag_digest(&repo, "1.0.0").await? == Some(d1.clone()));

    // The same files compressed otherwise (an older packsmith): nothing new is published.
    let d1_other = recompress(&repo, "1.0.0").await?;
    let (out, _) = release()?;
    anyhow::ensure!(
        pushed_image(&out)? == format!("{reg}/{repo}@{d1_other}"),
        "the compressed-otherwise bundle is what 1.0.0 is: {out}"
    );
    anyhow::ensure!(
        out.contains("immutable.packages.example.com 1.0.0 "),
        "{out}"
    );
    anyhow::ensure!(tag_digest(&repo, "1.0.0_packsmith.2").await?.is_none());

    // Other files: revision 2, and the version's tag stays where it was.
    write("b", "Revision")?;
    let (out, err) = release()?;
    let second = pushed_image(&out)?;
    let d2 = second
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    anyhow::ensure!(out.contains("1.0.0+packsmith.2"), "{out}");
    anyhow::ensure!(err.contains(&format!("{reg}/{repo}@{d1_other}")), "{err}");
    anyhow::ensure!(tag_digest(&repo, "1.0.0").await? == Some(d1_other.clone()));
    anyhow::ensure!(tag_digest(&repo, "1.0.0_packsmith.2").await? == Some(d2.clone()));
    let package =
        dir.join("carvel-artifacts/packages/immutable.packages.example.com/1.0.0+packsmith.2.yml");
    let package = packsmith::carvel::Package::from_yaml(&std::fs::read_to_string(&package)?)?;
    anyhow::ensure!(
        package.metadata.name.as_deref()
            == Some("immutable.packages.example.com.1.0.0+packsmith.2")
            && package.spec.version == "1.0.0+packsmith.2"
    );

    // The same files again: revision 2 again, no revision 3.
    let (out, _) = release()?;
    anyhow::ensure!(pushed_image(&out)? == second, "{out}");
    anyhow::ensure!(tag_digest(&repo, "1.0.0_packsmith.3").await?.is_none());

    // Refuse: nothing pushed, and the message says what to do.
    write("c", "Refuse")?;
    let err = packsmith_fails(&["release", &dir_s])?;
    for hint in [
        "VersionImmutable",
        "1.0.0",
        "bump spec.package.version",
        "Overwrite",
    ] {
        anyhow::ensure!(err.contains(hint), "{hint}: {err}");
    }
    anyhow::ensure!(tag_digest(&repo, "1.0.0_packsmith.3").await?.is_none());
    anyhow::ensure!(tag_digest(&repo, "1.0.0").await? == Some(d1_other.clone()));

    // Overwrite: the version's tag moves, as before this policy existed.
    write("c", "Overwrite")?;
    let third = pushed_image(&release()?.0)?;
    let d3 = third
        .rsplit_once('@')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    anyhow::ensure!(tag_digest(&repo, "1.0.0").await? == Some(d3));
    Ok(())
}

/// `release --all ROOT`: a tree of two PackageSource directories, one broken one and a TCE
/// layout package. The good ones are published, the summary names the broken one and the
/// exit code is 1; with `--changed-since`, only the package a commit touched runs.
async fn all_packages_of_a_tree() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let id = crate::support::unique_id()?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("packages");
    let source = |name: &str, content: &str| -> anyhow::Result<()> {
        let dir = root.join("apps").join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("packagesource.yaml"),
            format!(
                "apiVersion: packsmith.dev/v1alpha1\nkind: PackageSource\nmetadata: {{name: {name}}}\n\
                 spec:\n  package: {{refName: {name}.all.example.com, version: 1.0.0}}\n  contents:\n  \
                 - path: config/app\n    contents:\n    - path: .\n{content}  bundle:\n    \
                 repository: {reg}/e2e-all-{id}/{name}\n    insecure: true\n"
            ),
        )?;
        Ok(())
    };
    let inline =
        |text: &str| format!("      inline:\n        paths:\n          app.yaml: \"{text}\"\n");
    source("alpha", &inline("kind: ConfigMap"))?;
    source("beta", &inline("kind: Secret"))?;
    source(
        "broken",
        &format!(
            "      git:\n        url: {}/does-not-exist-{id}.git\n        ref: v1\n",
            bed().git_url
        ),
    )?;
    // TCE: NAME/VERSION/bundle/vendir.yml, NAME/VERSION/package.yaml, NAME/metadata.yaml.
    let tce = root.join("tce/hello");
    std::fs::create_dir_all(tce.join("1.0.0/bundle"))?;
    std::fs::write(
        tce.join("1.0.0/bundle/vendir.yml"),
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: config/upstream\n  \
         contents:\n  - path: .\n    inline:\n      paths:\n        hello.yaml: \"kind: ConfigMap\"\n",
    )?;
    std::fs::write(
        tce.join("1.0.0/package.yaml"),
        "apiVersion: data.packaging.carvel.dev/v1alpha1\nkind: Package\nmetadata:\n  \
         name: hello.community.tanzu.vmware.com.1.0.0\nspec:\n  refName: hello.community.tanzu.vmware.com\n  \
         version: 1.0.0\n  licenses: [\"Apache 2.0\"]\n  template:\n    spec:\n      fetch:\n      \
         - imgpkgBundle: {image: projects.registry.vmware.com/tce/hello@sha256:00}\n",
    )?;
    std::fs::write(
        tce.join("metadata.yaml"),
        "apiVersion: data.packaging.carvel.dev/v1alpha1\nkind: PackageMetadata\nmetadata:\n  \
         name: hello.community.tanzu.vmware.com\nspec:\n  displayName: hello\n  shortDescription: Hello\n",
    )?;
    let prefix = format!("{reg}/e2e-all-{id}/tce");
    let root_s = root.to_str().expect("utf-8");
    let args = [
        "release",
        "--all",
        root_s,
        "--jobs",
        "2",
        "--repository-prefix",
        &prefix,
        "--registry-insecure-host",
        &reg,
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.code() == Some(1),
        "one broken package fails the run ({}):\n{stdout}{stderr}",
        out.status
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for (name, version) in [
        ("apps/alpha", "1.0.0"),
        ("apps/beta", "1.0.0"),
        ("tce/hello/1.0.0", "1.0.0"),
    ] {
        let cells = row(name);
        anyhow::ensure!(
            cells.get(1) == Some(&version) && cells.get(2) == Some(&"ok"),
            "{name}: {cells:?}\n{stdout}"
        );
    }
    let broken = row("apps/broken");
    anyhow::ensure!(
        broken.get(2) == Some(&"FAILED") && stdout.contains("sync stage failed"),
        "{stdout}"
    );
    anyhow::ensure!(
        stdout.contains("4 packages: 3 ok, 1 failed") && stderr.contains("apps/broken: "),
        "{stdout}{stderr}"
    );
    // The TCE package went where TCE's Makefile pushed it: PREFIX/NAME:VERSION.
    let tag = tag_digest(&format!("e2e-all-{id}/tce/hello"), "1.0.0").await?;
    anyhow::ensure!(tag.is_some(), "tce/hello:1.0.0 was not pushed");
    anyhow::ensure!(
        tce.join("1.0.0/carvel-artifacts/packages/hello.community.tanzu.vmware.com/1.0.0.yml")
            .is_file()
            && root
                .join("apps/alpha/carvel-artifacts/packages/alpha.all.example.com/1.0.0.yml")
                .is_file()
    );

    // Only what a commit touched runs.
    std::fs::remove_dir_all(root.join("apps/broken"))?;
    git(&root, &["init", "-q"])?;
    git(&root, &["add", "-A"])?;
    git(&root, &["commit", "-q", "-m", "packages"])?;
    let text = std::fs::read_to_string(root.join("apps/beta/packagesource.yaml"))?;
    std::fs::write(
        root.join("apps/beta/packagesource.yaml"),
        text.replace("version: 1.0.0", "version: 1.0.1"),
    )?;
    git(&root, &["commit", "-q", "-am", "beta 1.0.1"])?;
    let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .args(["--changed-since", "HEAD~1"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success()
            && stderr.contains("1 of 3 packages changed since HEAD~1")
            && stdout.contains("1 packages: 1 ok, 0 failed")
            && row_of(&stdout, "apps/beta").get(1) == Some(&"1.0.1".to_owned()),
        "{stdout}{stderr}"
    );
    Ok(())
}

fn row_of(stdout: &str, name: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.starts_with(name))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The seed Makefile's steps over a tree, one command each: `sync --all` writes each
/// package's contents and vendir lock, `lock --all` each ImagesLock (through the spec's
/// mirror), `push --all` each bundle under its version — the digest `release` gives the same
/// package.
async fn sync_lock_push_all_step_by_step() -> anyhow::Result<()> {
    let reg = bed().registry.clone();
    let id = crate::support::unique_id()?;
    let digest = push_image(
        &Registry::plain(bed()),
        &format!("e2e-all-{id}/mirror/example/step"),
        "v1",
        ImageKind::DockerV2,
        "step",
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("tree");
    let dir = root.join("step");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("packagesource.yaml"),
        format!(
            "apiVersion: packsmith.dev/v1alpha1\nkind: PackageSource\nmetadata: {{name: step}}\n\
             spec:\n  package: {{refName: step.all.example.com, version: 2.0.0}}\n  contents:\n  \
             - path: config/app\n    contents:\n    - path: .\n      inline:\n        paths:\n          \
             app.yaml: \"kind: Pod\\nimage: quay.io/example/step:v1\\n\"\n  images:\n    mirrors:\n    \
             - {{from: quay.io, to: {reg}/e2e-all-{id}/mirror, insecure: true}}\n  bundle:\n    \
             repository: {reg}/e2e-all-{id}/step\n    insecure: true\n"
        ),
    )?;
    let root_s = root.to_str().expect("utf-8");
    let run = |args: &[&str]| -> anyhow::Result<String> {
        let (stdout, _) = packsmith(args)?;
        anyhow::ensure!(stdout.contains("1 packages: 1 ok, 0 failed"), "{stdout}");
        Ok(stdout)
    };
    run(&["sync", "--all", root_s])?;
    anyhow::ensure!(
        dir.join("config/app/app.yaml").is_file() && dir.join("vendir.lock.yml").is_file()
    );
    run(&["lock", "--all", root_s])?;
    let lock = std::fs::read_to_string(dir.join(".imgpkg/images.yml"))?;
    anyhow::ensure!(
        lock.contains(&format!("image: quay.io/example/step@{digest}")),
        "{lock}"
    );
    let pushed = run(&["push", "--all", root_s])?;
    let tag = tag_digest(&format!("e2e-all-{id}/step"), "2.0.0")
        .await?
        .context("step:2.0.0 was not pushed")?;
    anyhow::ensure!(pushed.contains(&tag), "{pushed}");
    // The same tree released in one step is the same bundle.
    let (released, _) = packsmith(&["release", dir.to_str().expect("utf-8")])?;
    anyhow::ensure!(
        pushed_image(&released)?.ends_with(&tag),
        "release and the three steps disagree:\n{released}\n{pushed}"
    );
    Ok(())
}
