//! The bed's git upstream: bare repositories served over smart HTTP, file:// and ssh, and the
//! git source's ssh transport and submodules against them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use libtest_mimic::Trial;
use packsmith::carvel::vendir::{Config, LockConfig};
use packsmith::sync::{MemorySecrets, Secret, SyncError, SyncOptions, sync};

use crate::support::bed;

pub fn trials() -> Vec<Trial> {
    fn trial(name: &'static str, f: fn() -> anyhow::Result<()>) -> Trial {
        Trial::test(name, move || f().map_err(|e| format!("{e:#}").into()))
    }
    vec![
        trial("git::clone_over_http_and_file", clone_over_http_and_file),
        trial("git::sync_over_ssh_with_a_key", sync_over_ssh_with_a_key),
        trial("git::sync_with_submodules", sync_with_submodules),
    ]
}

/// Runs the git CLI (test fixtures only: packsmith itself never needs git) in `dir`.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@packsmith.dev",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Creates `<git_dir>/<name>.git` with one commit holding `files`, tagged `tag`; returns the
/// commit sha. Later sync tests build their upstreams with this.
pub fn make_repo(name: &str, files: &[(&str, &str)], tag: &str) -> anyhow::Result<String> {
    make_repo_with_links(name, files, &[], tag)
}

/// [`make_repo`] with symlinks too: `(path, target)`, committed as git stores them.
pub fn make_repo_with_links(
    name: &str,
    files: &[(&str, &str)],
    links: &[(&str, &str)],
    tag: &str,
) -> anyhow::Result<String> {
    let bare = bed().git_dir.join(format!("{name}.git"));
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q", "."])?;
    for (path, content) in files {
        let p = work.path().join(path);
        std::fs::create_dir_all(p.parent().expect("file has a parent"))?;
        std::fs::write(p, content)?;
    }
    for (path, target) in links {
        let p = work.path().join(path);
        std::fs::create_dir_all(p.parent().expect("link has a parent"))?;
        std::os::unix::fs::symlink(target, p)?;
    }
    git(work.path(), &["add", "-A"])?;
    git(
        work.path(),
        &[
            "commit",
            "-q",
            "-m",
            &format!("{name}: release {tag}\n\nbody"),
        ],
    )?;
    git(work.path(), &["tag", tag])?;
    // Made anew, so a test passes again on a reused bed (PACKSMITH_E2E_ENV).
    let _ = std::fs::remove_dir_all(&bare);
    git(
        bed().git_dir.as_path(),
        &["init", "-q", "--bare", bare.to_str().expect("utf-8 path")],
    )?;
    git(
        work.path(),
        &[
            "push",
            "-q",
            bare.to_str().expect("utf-8 path"),
            "main",
            "--tags",
        ],
    )?;
    git(work.path(), &["rev-parse", "HEAD"])
}

fn clone_over_http_and_file() -> anyhow::Result<()> {
    let sha = make_repo(
        "e2e-clone",
        &[
            ("config/deployment.yaml", "image: nginx:1.25\n"),
            ("LICENSE", "Apache-2.0\n"),
        ],
        "v1.0.0",
    )?;
    let url = format!("{}/e2e-clone.git", bed().git_url);

    let refs = git(bed().git_dir.as_path(), &["ls-remote", &url])?;
    anyhow::ensure!(
        refs.lines()
            .any(|l| l == format!("{sha}\trefs/tags/v1.0.0")),
        "ls-remote over HTTP does not list the tag: {refs}"
    );

    let tmp = tempfile::tempdir()?;
    for (how, source) in [
        ("http", url.clone()),
        (
            "file",
            format!("file://{}", bed().git_dir.join("e2e-clone.git").display()),
        ),
    ] {
        let dest = tmp.path().join(how);
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--depth",
                "1",
                "--branch",
                "v1.0.0",
                &source,
                dest.to_str().expect("utf-8"),
            ],
        )?;
        let content = std::fs::read_to_string(dest.join("config/deployment.yaml"))?;
        anyhow::ensure!(
            content == "image: nginx:1.25\n",
            "{how}: unexpected content {content:?}"
        );
        anyhow::ensure!(
            git(&dest, &["rev-parse", "HEAD"])? == sha,
            "{how}: cloned the wrong commit"
        );
    }

    // An unknown repository is an error, not an empty clone.
    let missing = format!("{}/does-not-exist.git", bed().git_url);
    anyhow::ensure!(
        git(tmp.path(), &["ls-remote", &missing]).is_err(),
        "ls-remote of a missing repo succeeded"
    );
    Ok(())
}

fn sync_blocking(
    yaml: &str,
    root: &Path,
    secrets: &MemorySecrets,
) -> Result<LockConfig, SyncError> {
    let config = Config::from_yaml(yaml).expect("valid vendir.yml");
    let options = SyncOptions::new(secrets);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(sync(&config, root, &options))
}

/// Every file under `root` (relative path → content).
fn files(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(root)?
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read_to_string(entry.path())?);
        }
    }
    Ok(out)
}

fn ssh_secret(key: &[u8], known_hosts: &[u8]) -> MemorySecrets {
    MemorySecrets {
        secrets: [(
            "ssh".to_owned(),
            Secret {
                data: [
                    ("ssh-privatekey".to_owned(), key.to_vec()),
                    ("ssh-knownhosts".to_owned(), known_hosts.to_vec()),
                ]
                .into(),
            },
        )]
        .into(),
        config_maps: BTreeMap::new(),
    }
}

/// A fresh key pair of `kind` (ed25519, rsa): the private key and the public line (test
/// fixture: packsmith itself never runs ssh-keygen).
fn keygen(dir: &Path, kind: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let path = dir.join(kind);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", kind, "-f"])
        .arg(&path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub"))?;
    Ok((std::fs::read(&path)?, public.trim().to_owned()))
}

fn sync_over_ssh_with_a_key() -> anyhow::Result<()> {
    anyhow::ensure!(
        !bed().ssh_url.is_empty(),
        "the bed's env file has no PACKSMITH_E2E_SSH_URL (a bed from before sshd): restart it"
    );
    let sha = make_repo(
        "e2e-ssh",
        &[
            ("config/app.yaml", "over: ssh\n"),
            ("LICENSE", "Apache-2.0\n"),
        ],
        "v1.0.0",
    )?;
    let url = format!("{}/e2e-ssh.git", bed().ssh_url);
    let key = std::fs::read(&bed().ssh_key)?;
    let known_hosts = std::fs::read(&bed().ssh_known_hosts)?;
    let yaml = format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
         contents:\n  - path: app\n    git: {{url: \"{url}\", ref: v1.0.0, secretRef: {{name: ssh}}}}\n"
    );
    let root = tempfile::tempdir()?;
    let lock = sync_blocking(&yaml, root.path(), &ssh_secret(&key, &known_hosts))?;
    let git = lock.directories[0].contents[0]
        .git
        .as_ref()
        .expect("git lock");
    anyhow::ensure!(git.sha == sha, "locked {} instead of {sha}", git.sha);
    anyhow::ensure!(git.tags == ["v1.0.0"], "tags {:?}", git.tags);
    let synced = files(&root.path().join("vendor/app"))?;
    let want: BTreeMap<String, String> = [
        ("LICENSE".to_owned(), "Apache-2.0\n".to_owned()),
        ("config/app.yaml".to_owned(), "over: ssh\n".to_owned()),
    ]
    .into();
    anyhow::ensure!(synced == want, "synced {synced:?}");

    // The endpoint as errors name it (and as known_hosts does): [127.0.0.1]:PORT.
    let port = url
        .trim_start_matches("ssh://root@127.0.0.1:")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let endpoint = format!("[127.0.0.1]:{port}");
    let keys = tempfile::tempdir()?;
    let (wrong_key, wrong_public) = keygen(keys.path(), "ed25519")?;
    let before = files(root.path())?;
    let wrong_key_text = String::from_utf8_lossy(&wrong_key).into_owned();
    let key_body = wrong_key_text.lines().nth(1).unwrap_or_default().to_owned();

    // A key sshd does not accept: an auth error naming the host, never the key.
    let err = sync_blocking(&yaml, root.path(), &ssh_secret(&wrong_key, &known_hosts))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a rejected key synced"))?;
    let text = format!("{:#}", anyhow::Error::from(err));
    anyhow::ensure!(
        text.contains(&format!("authentication to root@{endpoint} failed")),
        "wrong key: {text}"
    );
    anyhow::ensure!(
        !text.contains(&key_body),
        "the error quotes the key: {text}"
    );
    anyhow::ensure!(
        files(root.path())? == before,
        "a failed sync changed the target"
    );

    // A known_hosts whose key for this host is another one: the host is not trusted.
    let mut parts = wrong_public.split_whitespace();
    let forged = format!(
        "{endpoint} {} {}\n",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let err = sync_blocking(&yaml, root.path(), &ssh_secret(&key, forged.as_bytes()))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a host with a forged known_hosts synced"))?;
    let text = format!("{:#}", anyhow::Error::from(err));
    anyhow::ensure!(
        text.contains(&format!("host key verification failed for {endpoint}")),
        "forged known_hosts: {text}"
    );
    anyhow::ensure!(
        files(root.path())? == before,
        "a failed sync changed the target"
    );

    // known_hosts for other hosts only: refused as unknown, not accepted.
    let other = format!("github.com {}\n", wrong_public);
    let err = sync_blocking(&yaml, root.path(), &ssh_secret(&key, other.as_bytes()))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a host missing from known_hosts synced"))?;
    let text = format!("{:#}", anyhow::Error::from(err));
    anyhow::ensure!(
        text.contains("host key verification failed") && text.contains("has no"),
        "unknown host: {text}"
    );
    anyhow::ensure!(
        files(root.path())? == before,
        "a failed sync changed the target"
    );

    // An RSA key (signed with SHA-2: OpenSSH has refused SHA-1 RSA signatures since 8.8).
    let (rsa_key, rsa_public) = keygen(keys.path(), "rsa")?;
    let authorized = bed().ssh_key.with_file_name("authorized_keys");
    let mut lines = std::fs::read_to_string(&authorized)?;
    lines.push_str(&format!("{rsa_public}\n"));
    std::fs::write(&authorized, lines)?;
    let rsa_root = tempfile::tempdir()?;
    let lock = sync_blocking(&yaml, rsa_root.path(), &ssh_secret(&rsa_key, &known_hosts))?;
    let git = lock.directories[0].contents[0]
        .git
        .as_ref()
        .expect("git lock");
    anyhow::ensure!(git.sha == sha, "rsa: locked {} instead of {sha}", git.sha);
    anyhow::ensure!(
        files(&rsa_root.path().join("vendor/app"))? == want,
        "rsa: wrong tree"
    );
    Ok(())
}

/// A superproject whose `lib/sub` is a submodule (relative URL `../<sub>.git`, as GitHub
/// projects often write it) at the sub repo's commit; returns (super sha, sub sha).
fn make_superproject(name: &str, sub: &str) -> anyhow::Result<(String, String)> {
    let sub_sha = make_repo(
        sub,
        &[
            ("sub.txt", "from the submodule\n"),
            ("secret.txt", "excluded\n"),
        ],
        "v0.1.0",
    )?;
    // The submodule's branch moves on: the gitlink's commit is no longer a tip, as with any
    // submodule pinned a while ago, so it is fetched by its id.
    let later = tempfile::tempdir()?;
    let sub_bare = bed().git_dir.join(format!("{sub}.git"));
    let sub_bare = sub_bare.to_str().expect("utf-8 path");
    git(later.path(), &["clone", "-q", sub_bare, "."])?;
    std::fs::write(later.path().join("sub.txt"), "later\n")?;
    git(later.path(), &["commit", "-q", "-am", "later"])?;
    git(later.path(), &["push", "-q", "origin", "main"])?;
    let bare = bed().git_dir.join(format!("{name}.git"));
    let _ = std::fs::remove_dir_all(&bare);
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q", "."])?;
    std::fs::write(work.path().join("README.md"), "super\n")?;
    std::fs::write(
        work.path().join(".gitmodules"),
        format!("[submodule \"sub\"]\n\tpath = lib/sub\n\turl = ../{sub}.git\n"),
    )?;
    git(work.path(), &["add", "README.md", ".gitmodules"])?;
    // The gitlink alone: what `git submodule add` records, without cloning anything.
    git(
        work.path(),
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{sub_sha},lib/sub"),
        ],
    )?;
    git(work.path(), &["commit", "-q", "-m", "with a submodule"])?;
    git(work.path(), &["tag", "v1.0.0"])?;
    let bare_str = bare.to_str().expect("utf-8 path");
    git(&bed().git_dir, &["init", "-q", "--bare", bare_str])?;
    git(work.path(), &["push", "-q", bare_str, "main", "--tags"])?;
    Ok((git(work.path(), &["rev-parse", "HEAD"])?, sub_sha))
}

fn sync_with_submodules() -> anyhow::Result<()> {
    let (super_sha, _) = make_superproject("e2e-super", "e2e-super-sub")?;
    let url = format!("{}/e2e-super.git", bed().git_url);
    let secrets = MemorySecrets::default();
    let yaml = |extra: &str| {
        format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
             contents:\n  - path: app\n    git: {{url: \"{url}\", ref: v1.0.0{extra}}}\n    \
             excludePaths: [lib/sub/secret.txt]\n"
        )
    };

    let root = tempfile::tempdir()?;
    let lock = sync_blocking(&yaml(""), root.path(), &secrets)?;
    let git_lock = lock.directories[0].contents[0]
        .git
        .as_ref()
        .expect("git lock");
    anyhow::ensure!(git_lock.sha == super_sha, "locked {}", git_lock.sha);
    let synced = files(&root.path().join("vendor/app"))?;
    let want: BTreeMap<String, String> = [
        (
            ".gitmodules".to_owned(),
            "[submodule \"sub\"]\n\tpath = lib/sub\n\turl = ../e2e-super-sub.git\n".to_owned(),
        ),
        ("README.md".to_owned(), "super\n".to_owned()),
        (
            "lib/sub/sub.txt".to_owned(),
            "from the submodule\n".to_owned(),
        ),
    ]
    .into();
    anyhow::ensure!(synced == want, "with submodules: {synced:?}");

    let root = tempfile::tempdir()?;
    sync_blocking(&yaml(", skipInitSubmodules: true"), root.path(), &secrets)?;
    let synced = files(&root.path().join("vendor/app"))?;
    anyhow::ensure!(
        synced.keys().map(String::as_str).collect::<Vec<_>>() == [".gitmodules", "README.md"],
        "skipInitSubmodules: {synced:?}"
    );

    // From a local path the relative submodule URL is a local path too: refused, as git
    // refuses file submodules (protocol.file.allow=user), and nothing is written.
    let local = bed().git_dir.join("e2e-super.git");
    let local = format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: vendor\n  \
         contents:\n  - path: app\n    git: {{url: \"{}\", ref: v1.0.0}}\n",
        local.display()
    );
    let root = tempfile::tempdir()?;
    let err = match sync_blocking(&local, root.path(), &secrets) {
        Ok(lock) => anyhow::bail!("a local submodule was fetched: {lock:?}"),
        Err(e) => format!("{e:#}"),
    };
    anyhow::ensure!(err.contains("local path"), "{err}");
    anyhow::ensure!(
        !root.path().join("vendor").exists(),
        "a refused sync wrote vendor/"
    );
    Ok(())
}
