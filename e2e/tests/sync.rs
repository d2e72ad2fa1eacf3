//! The sync stage against the bed's real upstreams: git smart HTTP, static files with ETags,
//! and the fake GitHub releases API.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Trial;
use packsmith::carvel::vendir::{Config, LockConfig};
use packsmith::sync::{Limits, MemorySecrets, Secret, SyncError, SyncOptions, sync};

use crate::support::bed;
use crate::tests::git::git;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "sync::git_refs_semver_and_locked",
            git_refs_semver_and_locked,
        ),
        trial("sync::tce_fixtures_reproduce", tce_fixtures_reproduce),
        trial(
            "sync::http_archives_and_etag_cache",
            http_archives_and_etag_cache,
        ),
        trial("sync::github_release_assets", github_release_assets),
        trial(
            "sync::inline_directory_and_filters",
            inline_directory_and_filters,
        ),
        trial(
            "sync::bad_inputs_leave_targets_untouched",
            bad_inputs_leave_targets_untouched,
        ),
        trial("sync::cli_is_a_vendir_drop_in", cli_is_a_vendir_drop_in),
        trial("sync::cli_is_warm_by_default", cli_is_warm_by_default),
        trial("sync::helm_repository_charts", helm_repository_charts),
        trial("sync::helm_oci_chart", helm_oci_chart),
        trial("sync::image_and_bundle_sources", image_and_bundle_sources),
        trial(
            "sync::warm_path_leaves_directories_alone",
            warm_path_leaves_directories_alone,
        ),
        trial("sync::github_release_warm_path", github_release_warm_path),
        trial("sync::imgpkg_bundle_recursive", imgpkg_bundle_recursive),
    ]
}

/// Trials that switch the bed's auth on, which would break concurrent anonymous trials.
pub fn serial_trials() -> Vec<Trial> {
    vec![trial("sync::credentials", credentials)]
}

fn trial(name: &'static str, f: fn() -> anyhow::Result<()>) -> Trial {
    Trial::test(name, move || f().map_err(|e| format!("{e:#}").into()))
}

/// An upstream repository built commit by commit: each step writes files, commits with
/// `message` and applies `tags`; returns the sha of every commit.
/// One commit of an upstream: (files written, commit message, tags).
type Step<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

fn make_upstream(name: &str, steps: &[Step<'_>]) -> anyhow::Result<(String, Vec<String>)> {
    let bare = bed().git_dir.join(format!("{name}.git"));
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q", "."])?;
    let mut shas = Vec::new();
    for (files, message, tags) in steps {
        for (path, content) in *files {
            let p = work.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent"))?;
            std::fs::write(&p, content)?;
            if path.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        git(work.path(), &["add", "-A"])?;
        git(work.path(), &["commit", "-q", "-m", message])?;
        for tag in *tags {
            git(work.path(), &["tag", "-a", "-m", tag, tag])?;
        }
        shas.push(git(work.path(), &["rev-parse", "HEAD"])?);
    }
    let bare_str = bare.to_str().expect("utf-8");
    let _ = std::fs::remove_dir_all(&bare);
    git(&bed().git_dir, &["init", "-q", "--bare", bare_str])?;
    git(work.path(), &["push", "-q", bare_str, "main", "--tags"])?;
    Ok((format!("{}/{name}.git", bed().git_url), shas))
}

fn config(yaml: &str) -> anyhow::Result<Config> {
    Ok(Config::from_yaml(yaml)?)
}

async fn run(
    config: &Config,
    root: &Path,
    options: &SyncOptions<'_>,
) -> Result<LockConfig, SyncError> {
    sync(config, root, options).await
}

fn run_blocking(
    config: &Config,
    root: &Path,
    options: &SyncOptions<'_>,
) -> Result<LockConfig, SyncError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(config, root, options))
}

/// Every file under `root` (relative path → content); symlinks as `-> target`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type().expect("type");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).expect("link");
                out.insert(rel, format!("-> {}", target.display()));
            } else {
                out.insert(
                    rel,
                    std::fs::read_to_string(&path).unwrap_or_else(|_| "<binary>".into()),
                );
            }
        }
    }
    out
}

fn keys(tree: &BTreeMap<String, String>) -> Vec<&str> {
    tree.keys().map(String::as_str).collect()
}

fn git_refs_semver_and_locked() -> anyhow::Result<()> {
    let (url, shas) = make_upstream(
        "sync-refs",
        &[
            (
                &[
                    ("config/app.yaml", "v: 1\n"),
                    ("LICENSE", "Apache-2.0\n"),
                    ("README.md", "r\n"),
                ],
                "first",
                &["v1.0.0"],
            ),
            (
                &[("config/app.yaml", "v: 2\n"), ("bin/run.sh", "#!/bin/sh\n")],
                "second: more\n\ndetails",
                &["v1.2.0", "v2.0.0-rc.1"],
            ),
            (&[("config/app.yaml", "v: 3\n")], "third", &[]),
        ],
    )?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions::new(&secrets);
    let dir = tempfile::tempdir()?;
    let cases: Vec<(String, &str, usize, Vec<&str>, &str)> = vec![
        ("ref: v1.0.0".into(), "v: 1\n", 0, vec!["v1.0.0"], "first"),
        ("ref: origin/main".into(), "v: 3\n", 2, vec![], "third"),
        ("ref: main".into(), "v: 3\n", 2, vec![], "third"),
        (
            format!("ref: {}", shas[1]),
            "v: 2\n",
            1,
            vec!["v1.2.0", "v2.0.0-rc.1"],
            "second: more...",
        ),
        (
            format!("ref: {}", &shas[0][..10]),
            "v: 1\n",
            0,
            vec!["v1.0.0"],
            "first",
        ),
        (
            "refSelection: {semver: {constraints: \"<2.0.0\"}}".into(),
            "v: 2\n",
            1,
            vec!["v1.2.0", "v2.0.0-rc.1"],
            "second: more...",
        ),
        (
            "refSelection: {semver: {constraints: \">=1.0.0\", prereleases: {}}}".into(),
            "v: 2\n",
            1,
            vec!["v1.2.0", "v2.0.0-rc.1"],
            "second: more...",
        ),
    ];
    for (reference, app, sha_index, tags, title) in cases {
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
             contents:\n  - path: app\n    git:\n      url: {url}\n      {reference}\n    \
             includePaths: [\"config/**/*\", \"bin/*\"]\n"
        ))?;
        let lock = run_blocking(&cfg, dir.path(), &options)?;
        let git = lock.directories[0].contents[0]
            .git
            .as_ref()
            .expect("git lock");
        anyhow::ensure!(
            git.sha == shas[sha_index],
            "{reference}: sha {} != {}",
            git.sha,
            shas[sha_index]
        );
        anyhow::ensure!(git.tags == tags, "{reference}: tags {:?}", git.tags);
        anyhow::ensure!(
            git.commit_title == title,
            "{reference}: title {:?}",
            git.commit_title
        );
        let files = tree(&dir.path().join("vendor/app"));
        anyhow::ensure!(
            files.get("config/app.yaml").map(String::as_str) == Some(app),
            "{reference}: {files:?}"
        );
        anyhow::ensure!(
            files.contains_key("LICENSE"),
            "legal paths are kept: {files:?}"
        );
        anyhow::ensure!(
            !files.contains_key("README.md") && !files.keys().any(|k| k.starts_with(".git")),
            "{files:?}"
        );
        if sha_index > 0 {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("vendor/app/bin/run.sh"))?
                .permissions()
                .mode();
            anyhow::ensure!(mode & 0o111 != 0, "executable bit lost: {mode:o}");
        }
    }

    // --locked pins the sha of the lock even after the branch moved on.
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
         contents:\n  - path: app\n    git: {{url: {url}, ref: v1.0.0}}\n"
    ))?;
    let lock = run_blocking(&cfg, dir.path(), &options)?;
    let mut locked = lock.clone();
    locked.directories[0].contents[0]
        .git
        .as_mut()
        .expect("git")
        .sha = shas[1].clone();
    let options = SyncOptions {
        locked: Some(&locked),
        ..SyncOptions::new(&secrets)
    };
    let relock = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(
        relock.directories[0].contents[0]
            .git
            .as_ref()
            .expect("git")
            .sha
            == shas[1]
    );
    anyhow::ensure!(tree(&dir.path().join("vendor/app"))["config/app.yaml"] == "v: 2\n");
    Ok(())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce")
}

/// The four TCE packages' vendir.yml, with their upstreams rebuilt locally from the fixture's
/// own files (plus decoys the filters must drop), reproduce the fixture's config/upstream.
fn tce_fixtures_reproduce() -> anyhow::Result<()> {
    let read = |p: &str| std::fs::read_to_string(fixtures().join(p));
    let external = "external-dns/0.12.2/bundle/config/upstream";
    let mut ext_files: Vec<(String, String)> = std::fs::read_dir(fixtures().join(external))?
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (
                format!("kustomize/{name}"),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    ext_files.push((
        "kustomize/kustomization.yaml".into(),
        "resources: []\n".into(),
    ));
    ext_files.push(("main.go".into(), "package main\n".into()));
    let contour = read("contour/1.22.3/bundle/config/upstream/contour.yaml")?;
    let lps = read(
        "local-path-storage/0.0.22/bundle/config/upstream/local-path-storage.yaml/local-path-storage.yaml",
    )?;
    let cert_manager = read("cert-manager/1.9.1/bundle/config/upstream/cert-manager.yaml")?;

    let ext_refs: Vec<(&str, &str)> = ext_files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (ext_url, _) = make_upstream(
        "tce-external-dns",
        &[(&ext_refs, "Merge pull request #2913\n\nbody", &["v0.12.2"])],
    )?;
    let (contour_url, _) = make_upstream(
        "tce-contour",
        &[(
            &[
                ("examples/render/contour.yaml", &contour),
                ("examples/render/contour-gateway.yaml", "x: 1\n"),
                ("README.md", "c\n"),
            ],
            "Update Contour Docker image to v1.22.3.\n\nSigned-off-by: x",
            &["v1.22.3"],
        )],
    )?;
    let (lps_url, _) = make_upstream(
        "tce-local-path-storage",
        &[(
            &[
                ("deploy/local-path-storage.yaml", &lps),
                ("deploy/example-config.yaml", "y\n"),
                ("LICENSE", "Apache\n"),
            ],
            "Update README.md\n\nmore",
            &["v0.0.22"],
        )],
    )?;
    // cert-manager: a GitHub release whose asset is served by the bed's file server.
    let www = bed().www_dir.join("tce/cert-manager/v1.9.1");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("cert-manager.yaml"), &cert_manager)?;
    std::fs::write(www.join("cert-manager.crds.yaml"), "crds\n")?;
    let releases = bed().github_dir.join("jetstack/cert-manager/releases");
    std::fs::create_dir_all(&releases)?;
    let asset = |name: &str| serde_json::json!({"name": name, "browser_download_url": format!("{}/tce/cert-manager/v1.9.1/{name}", bed().http_url)});
    std::fs::write(
        releases.join("v1.9.1.json"),
        serde_json::to_vec(
            &serde_json::json!({"id": 72867571, "url": "https://api.github.com/repos/cert-manager/cert-manager/releases/72867571", "assets": [asset("cert-manager.yaml"), asset("cert-manager.crds.yaml")]}),
        )?,
    )?;

    let secrets = MemorySecrets::default();
    let options = SyncOptions::new(&secrets);
    for (package, from, to) in [
        (
            "external-dns/0.12.2",
            "https://github.com/kubernetes-sigs/external-dns",
            ext_url.as_str(),
        ),
        (
            "contour/1.22.3",
            "https://github.com/projectcontour/contour",
            contour_url.as_str(),
        ),
        (
            "local-path-storage/0.0.22",
            "https://github.com/rancher/local-path-provisioner",
            lps_url.as_str(),
        ),
        (
            "cert-manager/1.9.1",
            "slug: jetstack/cert-manager",
            &*format!(
                "slug: jetstack/cert-manager\n      apiURL: {}",
                bed().github_api_url
            ),
        ),
    ] {
        let bundle = fixtures().join(package).join("bundle");
        let yaml = std::fs::read_to_string(bundle.join("vendir.yml"))?.replace(from, to);
        let cfg = config(&yaml)?;
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&cfg, dir.path(), &options)
            .map_err(|e| anyhow::anyhow!("{package}: {e}"))?;
        let got = tree(&dir.path().join("config/upstream"));
        let want = tree(&bundle.join("config/upstream"));
        anyhow::ensure!(
            got == want,
            "{package}: tree {:?} != fixture {:?}",
            keys(&got),
            keys(&want)
        );
        // The lock has the fixture's shape: same paths, same source, same tags and title.
        let fixture_lock =
            LockConfig::from_yaml(&std::fs::read_to_string(bundle.join("vendir.lock.yml"))?)?;
        let (g, f) = (
            &lock.directories[0].contents[0],
            &fixture_lock.directories[0].contents[0],
        );
        anyhow::ensure!(
            g.path == f.path && lock.directories[0].path == fixture_lock.directories[0].path,
            "{package}: paths"
        );
        if let (Some(g), Some(f)) = (&g.git, &f.git) {
            anyhow::ensure!(
                g.tags == f.tags,
                "{package}: tags {:?} != {:?}",
                g.tags,
                f.tags
            );
            anyhow::ensure!(
                f.commit_title.ends_with("...") == g.commit_title.ends_with("..."),
                "{package}: title {:?} vs {:?}",
                g.commit_title,
                f.commit_title
            );
        } else {
            anyhow::ensure!(
                g.github_release == f.github_release,
                "{package}: {:?} != {:?}",
                g.github_release,
                f.github_release
            );
        }
    }
    Ok(())
}

fn targz(entries: &[(&str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, *data)?;
    }
    Ok(builder.into_inner()?.finish()?)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn upstream_log_count(needle: &str) -> usize {
    std::fs::read_to_string(bed().state_dir.join("logs/upstream.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn http_archives_and_etag_cache() -> anyhow::Result<()> {
    let www = bed().www_dir.join("sync-http");
    std::fs::create_dir_all(&www)?;
    let tgz = targz(&[("pkg/config/a.yaml", b"a: 1\n"), ("pkg/LICENSE", b"MIT\n")])?;
    std::fs::write(www.join("pkg.tgz"), &tgz)?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("z/b.yaml", zip::write::SimpleFileOptions::default())?;
    zip.write_all(b"b: 2\n")?;
    std::fs::write(www.join("pkg.zip"), zip.finish()?.into_inner())?;
    std::fs::write(www.join("plain.yaml"), "c: 3\n")?;
    let base = format!("{}/sync-http", bed().http_url);
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: out\n  contents:\n  \
         - path: tgz\n    http: {{url: {base}/pkg.tgz, sha256: {}}}\n    newRootPath: pkg\n  \
         - path: zip\n    http: {{url: {base}/pkg.zip}}\n  \
         - path: plain\n    http: {{url: {base}/plain.yaml}}\n  \
         - path: raw\n    http: {{url: {base}/pkg.tgz, disableUnpack: true}}\n",
        sha256_hex(&tgz)
    ))?;
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..SyncOptions::new(&secrets)
    };
    let lock = run_blocking(&cfg, dir.path(), &options)?;
    let files = tree(&dir.path().join("out"));
    anyhow::ensure!(
        keys(&files)
            == [
                "plain/plain.yaml",
                "raw/pkg.tgz",
                "tgz/LICENSE",
                "tgz/config/a.yaml",
                "zip/z/b.yaml"
            ],
        "{files:?}"
    );
    anyhow::ensure!(
        lock.directories[0]
            .contents
            .iter()
            .all(|c| c.http.is_some())
    );

    // Warm: nothing is downloaded again (the pinned sha256 needs no request at all, the other
    // URL is answered by a 304), and the tree is the same.
    let downloads = || upstream_log_count("GET /files/sync-http/pkg.tgz HTTP/1.1\" 200");
    let not_modified = || upstream_log_count("GET /files/sync-http/pkg.tgz HTTP/1.1\" 304");
    let (before, before_304) = (downloads(), not_modified());
    run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(
        downloads() == before && not_modified() > before_304,
        "expected no download of pkg.tgz and a 304: {before} -> {}, {before_304} -> {}",
        downloads(),
        not_modified()
    );
    anyhow::ensure!(tree(&dir.path().join("out")) == files);
    Ok(())
}

fn write_release(owner_repo: &str, tag: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let dir = bed().github_dir.join(owner_repo).join("releases");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("{tag}.json")), serde_json::to_vec(&body)?)?;
    Ok(())
}

fn github_release_assets() -> anyhow::Result<()> {
    let www = bed().www_dir.join("sync-gh");
    std::fs::create_dir_all(&www)?;
    let tgz = targz(&[("manifests/app.yaml", b"app\n")])?;
    std::fs::write(www.join("app.tgz"), &tgz)?;
    std::fs::write(www.join("app.yaml"), "app: yaml\n")?;
    let asset = |name: &str| serde_json::json!({"name": name, "browser_download_url": format!("{}/sync-gh/{name}", bed().http_url)});
    let notes = format!(
        "Checksums:\n{}  app.tgz\n{}  app.yaml\n",
        sha256_hex(&tgz),
        sha256_hex(b"app: yaml\n")
    );
    for (tag, time) in [
        ("v1.0.0", "2024-01-01T00:00:00Z"),
        ("v1.1.0", "2024-02-01T00:00:00Z"),
        ("v2.0.0-beta.1", "2024-03-01T00:00:00Z"),
    ] {
        write_release(
            "sync-org/app",
            tag,
            serde_json::json!({
                "created_at": time, "prerelease": tag.contains("beta"), "body": notes,
                "assets": [asset("app.tgz"), asset("app.yaml")],
            }),
        )?;
    }
    write_release(
        "sync-org/bad",
        "v1.0.0",
        serde_json::json!({
            "body": format!("{}  app.yaml\n", "0".repeat(64)), "assets": [asset("app.yaml")],
        }),
    )?;
    let api = &bed().github_api_url;
    let secrets = MemorySecrets::default();
    let options = SyncOptions::new(&secrets);
    for (selector, extra, want_tag, want_files) in [
        ("tag: v1.0.0", "", "v1.0.0", vec!["app.tgz", "app.yaml"]),
        ("latest: true", "", "v1.1.0", vec!["app.tgz", "app.yaml"]),
        (
            "tagSelection: {semver: {constraints: \">=1.0.0\"}}",
            "",
            "v1.1.0",
            vec!["app.tgz", "app.yaml"],
        ),
        (
            "tagSelection: {semver: {constraints: \">=1.0.0\", prereleases: {identifiers: [beta]}}}",
            "",
            "v2.0.0-beta.1",
            vec!["app.tgz", "app.yaml"],
        ),
        (
            "tag: v1.0.0",
            "assetNames: [\"*.tgz\"]\n      unpackArchive: {path: app.tgz}",
            "v1.0.0",
            vec!["manifests/app.yaml"],
        ),
        (
            "tag: v1.0.0",
            "assetNames: [app.yaml]",
            "v1.0.0",
            vec!["app.yaml"],
        ),
    ] {
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: gh\n  contents:\n  \
             - path: .\n    githubRelease:\n      slug: sync-org/app\n      apiURL: {api}\n      {selector}\n      {extra}\n"
        ))?;
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&cfg, dir.path(), &options)
            .map_err(|e| anyhow::anyhow!("{selector}: {e}"))?;
        let release = lock.directories[0].contents[0]
            .github_release
            .as_ref()
            .expect("lock");
        anyhow::ensure!(release.tag == want_tag, "{selector}: tag {}", release.tag);
        anyhow::ensure!(
            release
                .url
                .starts_with(&format!("{api}/repos/sync-org/app/releases/"))
                || release.url.contains("/releases/"),
            "{}",
            release.url
        );
        let files = tree(&dir.path().join("gh"));
        anyhow::ensure!(keys(&files) == want_files, "{selector} {extra}: {files:?}");
    }

    // Checksums published in the notes are enforced.
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: gh\n  contents:\n  \
         - path: .\n    githubRelease: {{slug: sync-org/bad, apiURL: \"{api}\", tag: v1.0.0}}\n"
    ))?;
    let dir = tempfile::tempdir()?;
    let err = run_blocking(&cfg, dir.path(), &options)
        .expect_err("checksum")
        .to_string();
    anyhow::ensure!(err.contains("checksum mismatch for app.yaml"), "{err}");
    Ok(())
}

fn inline_directory_and_filters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("local");
    std::fs::create_dir_all(local.join("sub"))?;
    std::fs::write(local.join("sub/keep.yaml"), "k\n")?;
    std::fs::write(local.join("sub/drop.txt"), "d\n")?;
    std::fs::write(local.join("NOTICE"), "n\n")?;
    // ignorePaths: a file edited in place survives the sync.
    std::fs::create_dir_all(dir.path().join("vendor/inline"))?;
    std::fs::write(dir.path().join("vendor/inline/values.yaml"), "mine\n")?;
    let cfg = config(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
         permissions: 0750\n  contents:\n  - path: inline\n    inline:\n      paths:\n        \
         a/b.yaml: \"b\\n\"\n        values.yaml: \"theirs\\n\"\n      pathsFrom:\n      - secretRef: {name: s, directoryPath: from-secret}\n      \
         - configMapRef: {name: cm}\n    ignorePaths: [values.yaml]\n  \
         - path: local\n    directory: {path: local}\n    includePaths: [\"**/*.yaml\"]\n    newRootPath: sub\n",
    )?;
    let secrets = MemorySecrets {
        secrets: [(
            "s".to_owned(),
            Secret {
                data: [("token".to_owned(), b"t0k".to_vec())].into(),
            },
        )]
        .into(),
        config_maps: [(
            "cm".to_owned(),
            [("c.txt".to_owned(), "c\n".to_owned())].into(),
        )]
        .into(),
    };
    run_blocking(&cfg, dir.path(), &SyncOptions::new(&secrets))?;
    let files = tree(&dir.path().join("vendor"));
    let want: BTreeMap<String, String> = [
        ("inline/a/b.yaml", "b\n"),
        ("inline/values.yaml", "mine\n"),
        ("inline/from-secret/token", "t0k"),
        ("inline/c.txt", "c\n"),
        ("local/keep.yaml", "k\n"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    anyhow::ensure!(files == want, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("vendor"))?
        .permissions()
        .mode()
        & 0o777;
    anyhow::ensure!(mode == 0o750, "directory permissions {mode:o}");
    Ok(())
}

/// Snapshot of a target directory before a failing sync, to prove it is untouched after.
fn assert_untouched(
    root: &Path,
    before: &BTreeMap<String, String>,
    case: &str,
) -> anyhow::Result<()> {
    let after = tree(root);
    anyhow::ensure!(
        &after == before,
        "{case}: target changed: {:?} -> {:?}",
        keys(before),
        keys(&after)
    );
    let leftovers: Vec<_> = std::fs::read_dir(root)?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".packsmith-sync")
        })
        .collect();
    anyhow::ensure!(leftovers.is_empty(), "{case}: work dir left behind");
    Ok(())
}

fn bad_inputs_leave_targets_untouched() -> anyhow::Result<()> {
    use tar::EntryType as T;
    let www = bed().www_dir.join("sync-bad");
    std::fs::create_dir_all(&www)?;
    let gz = |raw: Vec<u8>| -> anyhow::Result<Vec<u8>> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&raw)?;
        Ok(enc.finish()?)
    };
    std::fs::write(
        www.join("slip.tgz"),
        gz(raw_tar(&[("../../evil", T::Regular, b"x", "")]))?,
    )?;
    std::fs::write(
        www.join("link.tgz"),
        gz(raw_tar(&[("l", T::Symlink, b"", "/etc/passwd")]))?,
    )?;
    std::fs::write(
        www.join("hard.tgz"),
        gz(raw_tar(&[("h", T::Link, b"", "../../etc/passwd")]))?,
    )?;
    std::fs::write(www.join("big.tgz"), targz(&[("a", &vec![0u8; 200_000])])?)?;
    std::fs::write(www.join("ok.yaml"), "ok\n")?;
    let (git_url, _) = make_upstream("sync-bad", &[(&[("a.yaml", "a\n")], "one", &["v1.0.0"])])?;
    let base = format!("{}/sync-bad", bed().http_url);
    let small = Limits {
        max_bytes: 100_000,
        ..Limits::default()
    };

    let cases: Vec<(&str, String, Limits, &str)> = vec![
        (
            "404",
            format!("http: {{url: {base}/missing.tgz}}"),
            Limits::default(),
            "HTTP 404",
        ),
        (
            "checksum",
            format!("http: {{url: {base}/ok.yaml, sha256: {}}}", "1".repeat(64)),
            Limits::default(),
            "checksum mismatch",
        ),
        (
            "tar-slip",
            format!("http: {{url: {base}/slip.tgz}}"),
            Limits::default(),
            "'..' leaves the target",
        ),
        (
            "symlink escape",
            format!("http: {{url: {base}/link.tgz}}"),
            Limits::default(),
            "leaves the target directory",
        ),
        (
            "hard link out",
            format!("http: {{url: {base}/hard.tgz}}"),
            Limits::default(),
            "hard link",
        ),
        (
            "oversize",
            format!("http: {{url: {base}/big.tgz}}"),
            small,
            "limit of 100000 bytes",
        ),
        (
            "unknown ref",
            format!("git: {{url: {git_url}, ref: v9.9.9}}"),
            Limits::default(),
            "ref \"v9.9.9\" not found on the remote (some of its branches and tags: v1.0.0, main)",
        ),
        (
            "no match",
            format!(
                "git: {{url: {git_url}, refSelection: {{semver: {{constraints: \">=2.0.0\"}}}}}}"
            ),
            Limits::default(),
            "no version among",
        ),
        (
            "missing repo",
            format!("git: {{url: {}/nope.git, ref: main}}", bed().git_url),
            Limits::default(),
            "git:",
        ),
        (
            "filters leave nothing",
            format!("http: {{url: {base}/ok.yaml}}\n    includePaths: [nothing]"),
            Limits::default(),
            "no file left",
        ),
        (
            "missing secret",
            format!("http: {{url: {base}/ok.yaml, secretRef: {{name: nope}}}}"),
            Limits::default(),
            "secret \"nope\": not found",
        ),
        (
            "not supported",
            "imgpkgBundle: {image: \"127.0.0.1:1/x:1\", dangerousSkipTLSVerify: true}".to_owned(),
            Limits::default(),
            "dangerousSkipTLSVerify",
        ),
    ];
    let secrets = MemorySecrets::default();
    for (case, source, limits, expected) in cases {
        let dir = tempfile::tempdir()?;
        // Two directories: the good one must not be replaced either when the bad one fails.
        std::fs::create_dir_all(dir.path().join("good"))?;
        std::fs::write(dir.path().join("good/old.txt"), "old\n")?;
        std::fs::create_dir_all(dir.path().join("bad/c"))?;
        std::fs::write(dir.path().join("bad/c/old.txt"), "old\n")?;
        let before = tree(dir.path());
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: good\n  contents:\n  \
             - path: .\n    http: {{url: {base}/ok.yaml}}\n- path: bad\n  contents:\n  - path: c\n    {source}\n"
        ))?;
        let options = SyncOptions {
            limits,
            ..SyncOptions::new(&secrets)
        };
        let err = run_blocking(&cfg, dir.path(), &options).expect_err(case);
        let text = err.to_string();
        anyhow::ensure!(
            text.contains(expected),
            "{case}: {text:?} lacks {expected:?}"
        );
        anyhow::ensure!(
            text.contains("directory \"bad\", contents \"c\""),
            "{case}: {text}"
        );
        assert_untouched(dir.path(), &before, case)?;
    }
    Ok(())
}

/// A tar with raw names (the tar crate refuses to build hostile ones).
fn raw_tar(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn cli_is_a_vendir_drop_in() -> anyhow::Result<()> {
    let (url, shas) = make_upstream(
        "sync-cli",
        &[(
            &[("deploy/app.yaml", "x\n"), ("LICENSE", "L\n")],
            "cli",
            &["v0.1.0"],
        )],
    )?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("vendir.yml"),
        format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: config/upstream\n  contents:\n  \
             - path: .\n    git: {{url: {url}, ref: v0.1.0}}\n    newRootPath: deploy\n"
        ),
    )?;
    let packsmith = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args(args)
            .arg("--chdir")
            .arg(dir.path())
            .output()?)
    };
    let out = packsmith(&["sync"])?;
    anyhow::ensure!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock_path = dir.path().join("vendir.lock.yml");
    let lock = std::fs::read_to_string(&lock_path)?;
    let want = format!(
        "apiVersion: vendir.k14s.io/v1alpha1\ndirectories:\n- contents:\n  - git:\n      commitTitle: cli\n      \
         sha: {}\n      tags:\n      - v0.1.0\n    path: .\n  path: config/upstream\nkind: LockConfig\n",
        shas[0]
    );
    anyhow::ensure!(lock == want, "lock:\n{lock}\nwant:\n{want}");
    anyhow::ensure!(keys(&tree(&dir.path().join("config/upstream"))) == ["app.yaml"]);

    // Unchanged: the lock is not rewritten.
    let mtime = std::fs::metadata(&lock_path)?.modified()?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = packsmith(&["sync", "--locked"])?;
    anyhow::ensure!(
        out.status.success(),
        "sync --locked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        std::fs::metadata(&lock_path)?.modified()? == mtime,
        "lock rewritten"
    );

    // A failure exits 1 with the directory, contents and upstream in the message.
    std::fs::write(
        dir.path().join("vendir.yml"),
        std::fs::read_to_string(dir.path().join("vendir.yml"))?.replace("v0.1.0", "v0.2.0"),
    )?;
    let out = packsmith(&["sync"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.code() == Some(1), "exit {:?}", out.status.code());
    anyhow::ensure!(
        stderr.contains("config/upstream")
            && stderr.contains("v0.2.0")
            && stderr.contains("sync-cli.git"),
        "{stderr}"
    );
    Ok(())
}

/// The CLI keeps a cache without being asked ($XDG_CACHE_HOME/packsmith/sync): a second
/// sync of an unchanged upstream leaves the files as they are (same inodes); `--no-cache`
/// fetches and rewrites; `--cache-max-size` trims the least recently used entries.
fn cli_is_warm_by_default() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;

    let (url, _) = make_upstream(
        "sync-warm-default",
        &[(&[("deploy/app.yaml", "x\n")], "warm", &["v0.1.0"])],
    )?;
    let dir = tempfile::tempdir()?;
    let xdg = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("vendir.yml"),
        format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
             contents:\n  - path: .\n    git: {{url: {url}, ref: v0.1.0}}\n"
        ),
    )?;
    let packsmith = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let out = Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args(args)
            .arg("--chdir")
            .arg(dir.path())
            .env("XDG_CACHE_HOME", xdg.path())
            .env_remove("PACKSMITH_CACHE_DIR")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    };
    let file = dir.path().join("vendor/deploy/app.yaml");
    let inode = || -> anyhow::Result<u64> { Ok(std::fs::metadata(&file)?.ino()) };

    packsmith(&["sync"])?;
    let cache = xdg.path().join("packsmith/sync");
    anyhow::ensure!(
        cache.join("git").is_dir(),
        "no cache at {}",
        cache.display()
    );
    let first = inode()?;
    packsmith(&["sync"])?;
    anyhow::ensure!(
        inode()? == first,
        "a second sync of an unchanged upstream rewrote the files"
    );

    packsmith(&["sync", "--no-cache"])?;
    anyhow::ensure!(inode()? != first, "--no-cache should fetch and rewrite");

    let out = packsmith(&["sync", "--cache-max-size", "1"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        stderr.contains("least recently used")
            && !cache
                .join("git")
                .read_dir()?
                .any(|e| e.map(|e| e.path().is_dir()).unwrap_or(false)),
        "the cache over its size was not trimmed: {stderr}"
    );
    Ok(())
}

/// Auth on the bed: a token-protected git repo, file and GitHub API; wrong credentials fail
/// clearly and never appear in the message.
fn credentials() -> anyhow::Result<()> {
    let (_, shas) = make_upstream(
        "private-sync",
        &[(&[("a.yaml", "secret stuff\n")], "private", &["v1.0.0"])],
    )?;
    let url = format!("{}/private-sync.git", bed().git_url);
    let www = bed().www_dir.join("private");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("p.yaml"), "p\n")?;
    write_release(
        "sync-org/private",
        "v1.0.0",
        serde_json::json!({
            "assets": [{"name": "p.yaml", "url": format!("{}/private/p.yaml", bed().http_url), "browser_download_url": format!("{}/private/p.yaml", bed().http_url)}],
        }),
    )?;
    let token_file = bed().state_dir.join("auth/token");
    std::fs::create_dir_all(token_file.parent().expect("parent"))?;
    std::fs::write(&token_file, "s3cr3t-t0ken")?;
    let result = (|| -> anyhow::Result<()> {
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: v\n  contents:\n  \
             - path: git\n    git: {{url: {url}, ref: v1.0.0, secretRef: {{name: git}}}}\n  \
             - path: gh\n    githubRelease: {{slug: sync-org/private, tag: v1.0.0, apiURL: \"{}\", secretRef: {{name: gh}}}}\n",
            bed().github_api_url
        ))?;
        let with = |password: &str| MemorySecrets {
            secrets: [
                (
                    "git".to_owned(),
                    Secret {
                        data: [
                            ("username".to_owned(), b"git".to_vec()),
                            ("password".to_owned(), password.as_bytes().to_vec()),
                        ]
                        .into(),
                    },
                ),
                (
                    "gh".to_owned(),
                    Secret {
                        data: [("token".to_owned(), password.as_bytes().to_vec())].into(),
                    },
                ),
            ]
            .into(),
            config_maps: BTreeMap::new(),
        };
        let good = with("s3cr3t-t0ken");
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&cfg, dir.path(), &SyncOptions::new(&good))?;
        anyhow::ensure!(
            lock.directories[0].contents[0]
                .git
                .as_ref()
                .expect("git")
                .sha
                == shas[0]
        );
        anyhow::ensure!(keys(&tree(&dir.path().join("v"))) == ["gh/p.yaml", "git/a.yaml"]);

        let bad = with("wrong-password-value");
        let before = tree(dir.path());
        let err = run_blocking(&cfg, dir.path(), &SyncOptions::new(&bad))
            .expect_err("bad credentials")
            .to_string();
        anyhow::ensure!(
            !err.contains("wrong-password-value"),
            "credential leaked: {err}"
        );
        anyhow::ensure!(
            err.contains("401") || err.to_lowercase().contains("auth"),
            "{err}"
        );
        assert_untouched(dir.path(), &before, "bad credentials")?;

        // No secret at all: the API refuses, and says so.
        let none = MemorySecrets::default();
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: v\n  contents:\n  \
             - path: gh\n    githubRelease: {{slug: sync-org/private, tag: v1.0.0, apiURL: \"{}\"}}\n",
            bed().github_api_url
        ))?;
        let err = run_blocking(&cfg, dir.path(), &SyncOptions::new(&none))
            .expect_err("anonymous")
            .to_string();
        anyhow::ensure!(
            err.contains("HTTP 401") && err.contains("authentication failed"),
            "{err}"
        );
        Ok(())
    })();
    std::fs::remove_file(&token_file)?;
    result
}

/// A packaged chart: `NAME/Chart.yaml`, values and a template, as `helm package` lays it out.
fn chart_tgz(name: &str, version: &str, app_version: &str) -> anyhow::Result<Vec<u8>> {
    let chart = format!(
        "apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{app_version}\"\n"
    );
    let values = format!("replicas: 1\nversion: {version}\n");
    targz(&[
        (&format!("{name}/Chart.yaml"), chart.as_bytes()),
        (&format!("{name}/values.yaml"), values.as_bytes()),
        (
            &format!("{name}/templates/cm.yaml"),
            b"kind: ConfigMap\n".as_slice(),
        ),
    ])
}

fn helm_config(url: &str, name: &str, version: &str) -> anyhow::Result<Config> {
    config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: charts\n  contents:\n  \
         - path: app\n    helmChart:\n      name: {name}\n      version: \"{version}\"\n      \
         repository: {{url: \"{url}\"}}\n"
    ))
}

/// A Helm repository on the bed's file server: relative and absolute chart URLs, version
/// selection as helm does it, digests checked, and clear errors for what is missing.
fn helm_repository_charts() -> anyhow::Result<()> {
    let www = bed().www_dir.join("sync-helm");
    std::fs::create_dir_all(www.join("archive"))?;
    let mut entries = Vec::new();
    for version in ["1.0.0", "1.2.0", "2.0.0-rc.1"] {
        let tgz = chart_tgz("app", version, &format!("v{version}-app"))?;
        std::fs::write(www.join(format!("archive/app-{version}.tgz")), &tgz)?;
        // One absolute URL, the others relative to the index.
        let url = if version == "1.2.0" {
            format!("{}/sync-helm/archive/app-{version}.tgz", bed().http_url)
        } else {
            format!("archive/app-{version}.tgz")
        };
        entries.push(format!(
            "  - version: {version}\n    appVersion: v{version}-app\n    urls: [\"{url}\"]\n    \
             digest: {}\n",
            sha256_hex(&tgz)
        ));
    }
    let broken = chart_tgz("broken", "1.0.0", "x")?;
    std::fs::write(www.join("archive/broken-1.0.0.tgz"), &broken)?;
    std::fs::write(
        www.join("index.yaml"),
        format!(
            "apiVersion: v1\nentries:\n  app:\n{}  broken:\n  - version: 1.0.0\n    \
             urls: [archive/broken-1.0.0.tgz]\n    digest: {}\ngenerated: \"2024-01-01T00:00:00Z\"\n",
            entries.concat(),
            "0".repeat(64)
        ),
    )?;
    let repo = format!("{}/sync-helm", bed().http_url);
    let secrets = MemorySecrets::default();
    let options = SyncOptions::new(&secrets);
    for (version, want, app) in [
        ("1.0.0", "1.0.0", "v1.0.0-app"),
        ("~1.2", "1.2.0", "v1.2.0-app"),
        ("", "1.2.0", "v1.2.0-app"),
        (">=2.0.0-rc.0", "2.0.0-rc.1", "v2.0.0-rc.1-app"),
    ] {
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&helm_config(&repo, "app", version)?, dir.path(), &options)
            .map_err(|e| anyhow::anyhow!("version {version:?}: {e}"))?;
        let chart = lock.directories[0].contents[0]
            .helm_chart
            .as_ref()
            .expect("helm lock");
        anyhow::ensure!(
            chart.version == want && chart.app_version == app,
            "version {version:?}: locked {chart:?}"
        );
        let files = tree(&dir.path().join("charts/app"));
        anyhow::ensure!(
            keys(&files) == ["Chart.yaml", "templates/cm.yaml", "values.yaml"],
            "the chart's top directory is stripped: {files:?}"
        );
        anyhow::ensure!(files["values.yaml"].contains(want), "{files:?}");
    }
    for (name, version, expected) in [
        ("broken", "1.0.0", "checksum mismatch"),
        (
            "app",
            "9.9.9",
            "no version among 3 candidates matches \"9.9.9\"",
        ),
        ("nope", "1.0.0", "chart \"nope\" is not in"),
    ] {
        let dir = tempfile::tempdir()?;
        let err = run_blocking(&helm_config(&repo, name, version)?, dir.path(), &options)
            .expect_err(expected)
            .to_string();
        anyhow::ensure!(
            err.contains(expected) && err.contains("helmChart") && err.contains("sync-helm"),
            "{name} {version}: {err}"
        );
        anyhow::ensure!(
            !dir.path().join("charts").exists(),
            "{name}: target created"
        );
    }
    Ok(())
}

/// The bed's plain registry, as the sync stage reaches it.
fn plain_registry() -> anyhow::Result<packsmith::registry::Registry> {
    Ok(packsmith::registry::Registry::new(
        packsmith::registry::RegistryOptions {
            insecure_hosts: vec![bed().registry.clone()],
            ..Default::default()
        },
    )?)
}

/// A chart pushed as an OCI artifact (helm's media types) and synced from `oci://`.
fn helm_oci_chart() -> anyhow::Result<()> {
    use crate::support::images::{Registry, sha256_digest};
    let reg = Registry::plain(bed());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tgz = chart_tgz("app", "1.0.0+build.1", "1.0")?;
    let config_blob = br#"{"name":"app","version":"1.0.0+build.1"}"#.to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                   "digest": sha256_digest(&config_blob), "size": config_blob.len()},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "digest": sha256_digest(&tgz), "size": tgz.len()}],
    }))?;
    let tagged = reg.reference("sync-helm/charts/app", "1.0.0_build.1")?;
    runtime.block_on(async {
        let client = reg.client();
        client
            .push_blob(&tagged, tgz.clone(), &sha256_digest(&tgz))
            .await?;
        client
            .push_blob(&tagged, config_blob.clone(), &sha256_digest(&config_blob))
            .await?;
        client
            .push_manifest_raw(
                &tagged,
                manifest.clone(),
                "application/vnd.oci.image.manifest.v1+json".parse()?,
            )
            .await?;
        anyhow::Ok(())
    })?;
    let registry = plain_registry()?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        registry: Some(&registry),
        ..SyncOptions::new(&secrets)
    };
    let url = format!("oci://{}/sync-helm/charts", bed().registry);
    for version in ["1.0.0+build.1", ">=1.0.0"] {
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&helm_config(&url, "app", version)?, dir.path(), &options)
            .map_err(|e| anyhow::anyhow!("{version}: {e}"))?;
        let chart = lock.directories[0].contents[0]
            .helm_chart
            .as_ref()
            .expect("helm lock");
        anyhow::ensure!(
            chart.version == "1.0.0+build.1" && chart.app_version == "1.0",
            "{chart:?}"
        );
        anyhow::ensure!(
            keys(&tree(&dir.path().join("charts/app")))
                == ["Chart.yaml", "templates/cm.yaml", "values.yaml"]
        );
    }
    Ok(())
}

/// `image` (layers as files) and `imgpkgBundle` (the bundle, `.imgpkg` included) from the bed's
/// registries, tag selection, and a dockerconfigjson secretRef for the authenticated one.
fn image_and_bundle_sources() -> anyhow::Result<()> {
    use crate::support::images::{ImageKind, LAYER_FILE, Registry, push_image};
    let plain = Registry::plain(bed());
    let tls = Registry::tls(bed());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (v1, v11, private) = runtime.block_on(async {
        let v1 = push_image(&plain, "sync-image/app", "v1.0.0", ImageKind::Oci, "one").await?;
        let v11 = push_image(
            &plain,
            "sync-image/app",
            "v1.1.0",
            ImageKind::DockerV2,
            "two",
        )
        .await?;
        let private = push_image(&tls, "sync-image/private", "1.0", ImageKind::Oci, "p").await?;
        anyhow::Ok((v1, v11, private))
    })?;

    // A bundle, pushed with the library as `packsmith push` would.
    let src = tempfile::tempdir()?;
    std::fs::create_dir_all(src.path().join(".imgpkg"))?;
    std::fs::create_dir_all(src.path().join("config"))?;
    std::fs::write(
        src.path().join(".imgpkg/images.yml"),
        "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages: []\n",
    )?;
    std::fs::write(src.path().join("config/app.yaml"), "app: 1\n")?;
    let registry = plain_registry()?;
    let bundle_ref = format!("{}/sync-bundle/app:1.0.0", bed().registry);
    let pushed = runtime.block_on(async {
        let built = packsmith::bundle::build(
            &[src.path().to_owned()],
            &packsmith::bundle::BuildOptions::default(),
        )?;
        let target = packsmith::bundle::Location::parse(&bundle_ref)?;
        anyhow::Ok(
            packsmith::bundle::push(
                &registry,
                &built,
                &target,
                &["1.0.0".to_owned()],
                &packsmith::bundle::PushOptions::default(),
            )
            .await?,
        )
    })?;

    let host = &bed().registry;
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: v\n  contents:\n  \
         - path: pinned\n    image: {{url: \"{host}/sync-image/app:v1.0.0\"}}\n  \
         - path: selected\n    image:\n      url: \"{host}/sync-image/app\"\n      \
         tagSelection: {{semver: {{constraints: \">=1.0.0\"}}}}\n  \
         - path: bundle\n    imgpkgBundle: {{image: \"{bundle_ref}\"}}\n"
    ))?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        registry: Some(&registry),
        ..SyncOptions::new(&secrets)
    };
    let dir = tempfile::tempdir()?;
    let lock = run_blocking(&cfg, dir.path(), &options)?;
    let contents = &lock.directories[0].contents;
    let image = |i: usize| contents[i].image.clone().expect("image lock");
    anyhow::ensure!(
        image(0).url == format!("{host}/sync-image/app@{v1}") && image(0).tag == "v1.0.0",
        "{:?}",
        image(0)
    );
    anyhow::ensure!(
        image(1).url == format!("{host}/sync-image/app@{v11}") && image(1).tag == "v1.1.0",
        "{:?}",
        image(1)
    );
    let bundle = contents[2].imgpkg_bundle.clone().expect("bundle lock");
    anyhow::ensure!(
        bundle.image == pushed.image && bundle.tag == "1.0.0",
        "{bundle:?} vs {}",
        pushed.image
    );
    let files = tree(&dir.path().join("v"));
    anyhow::ensure!(
        keys(&files)
            == [
                "bundle/.imgpkg/images.yml",
                "bundle/config/app.yaml",
                &format!("pinned/{LAYER_FILE}"),
                &format!("selected/{LAYER_FILE}"),
            ],
        "{files:?}"
    );
    anyhow::ensure!(files[&format!("selected/{LAYER_FILE}")].contains("seed: two"));

    // The authenticated registry: credentials from a dockerconfigjson Secret, merged over
    // defaults that have none; wrong ones fail as an authentication problem, never printed.
    let tls_registry = packsmith::registry::Registry::new(packsmith::registry::RegistryOptions {
        ca_pems: vec![std::fs::read(&bed().registry_tls_ca)?],
        ..Default::default()
    })?;
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: p\n  contents:\n  \
         - path: .\n    image: {{url: \"{}/sync-image/private:1.0\", secretRef: {{name: regcred}}}}\n",
        bed().registry_tls
    ))?;
    let with = |password: &str| {
        let json = serde_json::json!({"auths": {bed().registry_tls.clone(): {
            "username": bed().registry_user, "password": password}}});
        MemorySecrets {
            secrets: [(
                "regcred".to_owned(),
                Secret {
                    data: [(
                        ".dockerconfigjson".to_owned(),
                        json.to_string().into_bytes(),
                    )]
                    .into(),
                },
            )]
            .into(),
            config_maps: BTreeMap::new(),
        }
    };
    let good = with(&bed().registry_password);
    let options = SyncOptions {
        registry: Some(&tls_registry),
        ..SyncOptions::new(&good)
    };
    let dir = tempfile::tempdir()?;
    let lock = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(
        lock.directories[0].contents[0]
            .image
            .as_ref()
            .is_some_and(|i| i.url.ends_with(&private)),
        "{lock:?}"
    );
    let bad = with("not-the-password-1234");
    let options = SyncOptions {
        registry: Some(&tls_registry),
        ..SyncOptions::new(&bad)
    };
    let err = run_blocking(&cfg, tempfile::tempdir()?.path(), &options)
        .expect_err("bad credentials")
        .to_string();
    anyhow::ensure!(
        err.contains("authentication failed") && !err.contains("not-the-password-1234"),
        "{err}"
    );
    Ok(())
}

/// (inode, mtime) of every file below `root`.
fn stamps(root: &Path) -> anyhow::Result<BTreeMap<String, (u64, i64, i64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for rel in tree(root).into_keys() {
        let meta = std::fs::symlink_metadata(root.join(&rel))?;
        out.insert(rel, (meta.ino(), meta.mtime(), meta.mtime_nsec()));
    }
    Ok(out)
}

/// With a cache, an unchanged upstream and an untouched directory, a second sync leaves every
/// file as it is (same inodes and mtimes) and returns the same lock; an edited file or a new
/// upstream commit makes the next sync rewrite the directory.
fn warm_path_leaves_directories_alone() -> anyhow::Result<()> {
    let steps: [Step<'_>; 1] = [(
        &[("config/a.yaml", "a: 1\n"), ("config/b.yaml", "b: 1\n")],
        "one",
        &["v1.0.0"],
    )];
    let (url, _) = make_upstream("sync-warm", &steps)?;
    let www = bed().www_dir.join("sync-warm");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("files.tgz"), targz(&[("x.yaml", b"x: 1\n")])?)?;
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: git\n  contents:\n  \
         - path: .\n    git: {{url: {url}, ref: main}}\n- path: http\n  contents:\n  \
         - path: files\n    http: {{url: {}/sync-warm/files.tgz}}\n  - path: inline\n    \
         inline: {{paths: {{c.yaml: \"c\"}}}}\n",
        bed().http_url
    ))?;
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..SyncOptions::new(&secrets)
    };
    let first = run_blocking(&cfg, dir.path(), &options)?;
    let before = stamps(dir.path())?;
    anyhow::ensure!(before.len() == 4, "{before:?}");

    let second = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(second == first, "lock changed: {second:?}");
    let after = stamps(dir.path())?;
    anyhow::ensure!(after == before, "files rewritten: {before:?} -> {after:?}");

    // An edited file is restored, and only its directory is rewritten.
    std::fs::write(dir.path().join("git/config/a.yaml"), "edited\n")?;
    let third = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(third == first);
    anyhow::ensure!(std::fs::read_to_string(dir.path().join("git/config/a.yaml"))? == "a: 1\n");
    let now = stamps(dir.path())?;
    anyhow::ensure!(
        now["http/files/x.yaml"] == before["http/files/x.yaml"]
            && now["git/config/b.yaml"] != before["git/config/b.yaml"],
        "{now:?}"
    );

    // A new upstream commit is fetched even though nothing local changed.
    let more: [Step<'_>; 2] = [steps[0], (&[("config/a.yaml", "a: 2\n")], "two", &[])];
    make_upstream("sync-warm", &more)?;
    let fourth = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(
        fourth.directories[0] != first.directories[0],
        "new commit not locked"
    );
    anyhow::ensure!(std::fs::read_to_string(dir.path().join("git/config/a.yaml"))? == "a: 2\n");
    Ok(())
}

/// A re-sync of an unchanged githubRelease asks the API once per release (answered by a 304)
/// and downloads no asset; an asset replaced under the same tag is downloaded again.
fn github_release_warm_path() -> anyhow::Result<()> {
    let www = bed().www_dir.join("sync-gh-warm");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("app.yaml"), "app: 1\n")?;
    std::fs::write(www.join("crds.yaml"), "crds: 1\n")?;
    let asset = |name: &str| {
        serde_json::json!({"name": name,
            "browser_download_url": format!("{}/sync-gh-warm/{name}", bed().http_url)})
    };
    for (tag, time) in [
        ("v1.0.0", "2024-01-01T00:00:00Z"),
        ("v1.1.0", "2024-02-01T00:00:00Z"),
    ] {
        write_release(
            "sync-org/warm",
            tag,
            serde_json::json!({"created_at": time, "assets": [asset("app.yaml"), asset("crds.yaml")]}),
        )?;
    }
    let api = &bed().github_api_url;
    let cfg = config(&format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: tag\n  contents:\n  \
         - path: .\n    githubRelease: {{slug: sync-org/warm, apiURL: \"{api}\", tag: v1.0.0}}\n\
         - path: latest\n  contents:\n  \
         - path: .\n    githubRelease: {{slug: sync-org/warm, apiURL: \"{api}\", latest: true}}\n\
         - path: selected\n  contents:\n  \
         - path: .\n    githubRelease:\n      slug: sync-org/warm\n      apiURL: \"{api}\"\n      \
         assetNames: [app.yaml]\n      tagSelection: {{semver: {{constraints: \">=1.0.0\"}}}}\n"
    ))?;
    let dir = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..SyncOptions::new(&secrets)
    };
    let asset_hits = |name: &str| upstream_log_count(&format!("GET /files/sync-gh-warm/{name} "));
    let api_304 = || {
        upstream_log_count(
            "GET /github/api/repos/sync-org/warm/releases/tags/v1.0.0 HTTP/1.1\" 304",
        )
    };
    let first = run_blocking(&cfg, dir.path(), &options)?;
    let files = tree(dir.path());
    anyhow::ensure!(
        keys(&files)
            == [
                "latest/app.yaml",
                "latest/crds.yaml",
                "selected/app.yaml",
                "tag/app.yaml",
                "tag/crds.yaml"
            ],
        "{files:?}"
    );
    let before = stamps(dir.path())?;
    let (app, crds, not_modified) = (asset_hits("app.yaml"), asset_hits("crds.yaml"), api_304());
    anyhow::ensure!(
        app >= 3 && crds >= 2,
        "first sync fetched app.yaml {app}, crds.yaml {crds} times"
    );

    let second = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(second == first, "lock changed: {second:?}");
    anyhow::ensure!(
        asset_hits("app.yaml") == app && asset_hits("crds.yaml") == crds,
        "assets requested again: app.yaml {app} -> {}, crds.yaml {crds} -> {}",
        asset_hits("app.yaml"),
        asset_hits("crds.yaml")
    );
    anyhow::ensure!(
        api_304() > not_modified,
        "the release request was not conditional"
    );
    anyhow::ensure!(stamps(dir.path())? == before, "files rewritten");

    // Replaced under the same tags (GitHub gives the new asset another id, size, updated_at
    // and digest): downloaded again, the untouched asset's directory content unchanged.
    std::fs::write(www.join("app.yaml"), "app: 2, replaced\n")?;
    let third = run_blocking(&cfg, dir.path(), &options)?;
    anyhow::ensure!(third == first, "same releases, same lock: {third:?}");
    anyhow::ensure!(
        asset_hits("app.yaml") >= app + 3,
        "replaced asset not downloaded again: {app} -> {}",
        asset_hits("app.yaml")
    );
    for rel in ["tag/app.yaml", "latest/app.yaml", "selected/app.yaml"] {
        let content = std::fs::read_to_string(dir.path().join(rel))?;
        anyhow::ensure!(content == "app: 2, replaced\n", "{rel}: {content:?}");
    }
    Ok(())
}

/// Pushes a bundle of `files` (relative path, content) to the bed's plain registry; returns
/// its `REPO@DIGEST`.
fn push_bundle(
    runtime: &tokio::runtime::Runtime,
    registry: &packsmith::registry::Registry,
    repo_tag: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<String> {
    let src = tempfile::tempdir()?;
    for (rel, content) in files {
        let path = src.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent"))?;
        std::fs::write(path, content)?;
    }
    let target = format!("{}/{repo_tag}", bed().registry);
    let tag = repo_tag
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    runtime.block_on(async {
        let built = packsmith::bundle::build(
            &[src.path().to_owned()],
            &packsmith::bundle::BuildOptions::default(),
        )?;
        let pushed = packsmith::bundle::push(
            registry,
            &built,
            &packsmith::bundle::Location::parse(&target)?,
            &[tag.to_owned()],
            &packsmith::bundle::PushOptions::default(),
        )
        .await?;
        anyhow::Ok(pushed.image)
    })
}

/// `imgpkgBundle.recursive`: bundles listed in the bundle's images.yml (and theirs) land in
/// `.imgpkg/bundles/sha256-<hex>/`, plain images listed beside them do not; without it only
/// the top bundle is written.
fn imgpkg_bundle_recursive() -> anyhow::Result<()> {
    use crate::support::images::{ImageKind, Registry, push_image};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let registry = plain_registry()?;
    let host = &bed().registry;
    let plain_digest = runtime.block_on(push_image(
        &Registry::plain(bed()),
        "sync-nested/plain",
        "1.0",
        ImageKind::Oci,
        "nested",
    ))?;
    let plain = format!("{host}/sync-nested/plain@{plain_digest}");
    let images = |refs: &[&str]| {
        let mut yaml =
            "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n".to_owned();
        for r in refs {
            yaml.push_str(&format!("- image: {r}\n"));
        }
        yaml
    };
    let leaf = push_bundle(
        &runtime,
        &registry,
        "sync-nested/leaf:1.0.0",
        &[
            (".imgpkg/images.yml", &images(&[&plain])),
            ("config/leaf.yaml", "leaf: 1\n"),
        ],
    )?;
    let middle = push_bundle(
        &runtime,
        &registry,
        "sync-nested/middle:1.0.0",
        &[
            (".imgpkg/images.yml", &images(&[&leaf, &plain])),
            ("config/middle.yaml", "middle: 1\n"),
        ],
    )?;
    let top = push_bundle(
        &runtime,
        &registry,
        "sync-nested/top:1.0.0",
        &[
            (".imgpkg/images.yml", &images(&[&middle, &plain])),
            ("config/top.yaml", "top: 1\n"),
        ],
    )?;
    let dir_of = |image: &str| {
        format!(
            "b/.imgpkg/bundles/sha256-{}",
            image
                .rsplit_once("@sha256:")
                .map(|(_, h)| h)
                .unwrap_or_default()
        )
    };
    let secrets = MemorySecrets::default();
    let options = SyncOptions {
        registry: Some(&registry),
        ..SyncOptions::new(&secrets)
    };
    for recursive in [true, false] {
        let cfg = config(&format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: v\n  contents:\n  \
             - path: b\n    imgpkgBundle: {{image: \"{host}/sync-nested/top:1.0.0\", recursive: {recursive}}}\n"
        ))?;
        let dir = tempfile::tempdir()?;
        let lock = run_blocking(&cfg, dir.path(), &options)
            .map_err(|e| anyhow::anyhow!("recursive {recursive}: {e}"))?;
        let bundle = lock.directories[0].contents[0]
            .imgpkg_bundle
            .clone()
            .expect("bundle lock");
        anyhow::ensure!(bundle.image == top, "{bundle:?} vs {top}");
        let files = tree(&dir.path().join("v"));
        let mut want = vec![
            "b/.imgpkg/images.yml".to_owned(),
            "b/config/top.yaml".to_owned(),
        ];
        if recursive {
            for (image, file) in [(&middle, "config/middle.yaml"), (&leaf, "config/leaf.yaml")] {
                want.push(format!("{}/.imgpkg/images.yml", dir_of(image)));
                want.push(format!("{}/{file}", dir_of(image)));
            }
        }
        want.sort();
        anyhow::ensure!(keys(&files) == want, "recursive {recursive}: {files:?}");
        if recursive {
            anyhow::ensure!(files[&format!("{}/config/leaf.yaml", dir_of(&leaf))] == "leaf: 1\n");
        }
    }
    Ok(())
}
