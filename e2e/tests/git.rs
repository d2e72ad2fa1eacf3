//! The bed's git upstream: bare repositories served over smart HTTP and file://.

use std::path::Path;
use std::process::Command;

use libtest_mimic::Trial;

use crate::support::bed;

pub fn trials() -> Vec<Trial> {
    vec![Trial::test("git::clone_over_http_and_file", || {
        clone_over_http_and_file().map_err(|e| format!("{e:#}").into())
    })]
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
    let bare = bed().git_dir.join(format!("{name}.git"));
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q", "."])?;
    for (path, content) in files {
        let p = work.path().join(path);
        std::fs::create_dir_all(p.parent().expect("file has a parent"))?;
        std::fs::write(p, content)?;
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
