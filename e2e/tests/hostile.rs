//! Hostile inputs against the real bed: each case asserts the refusal and its reason, and that
//! every file outside the target survives as it was.
//!
//! - a git repository whose chained symlinks (each one lexically inside the checkout) make a
//!   `newRootPath` resolve into the directory being synced, next to the checkout;
//! - a pathological `includePaths` pattern (the old matcher overflowed its stack on it);
//! - an absolute `contents[].path` in a vendir.yml;
//! - `packsmith pull -o .` and `-o ..` from a directory full of files;
//! - bundles with honest digests whose layer is a gzip bomb, or 300 empty directories;
//! - a lying registry (served by this file): a blob that never ends, a blob with other bytes
//!   than its digest, a manifest of 8 MiB, a tag list of ever more pages larger than asked.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;

use crate::support::bed;
use crate::tests::git::{make_repo, make_repo_with_links};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "sync_new_root_through_chained_symlinks_is_refused",
            new_root_symlinks,
        ),
        trial("sync_pathological_pattern_is_refused", pathological_pattern),
        trial(
            "sync_absolute_contents_path_is_refused",
            absolute_contents_path,
        ),
        trial(
            "pull_refuses_the_working_directory",
            pull_into_working_directory,
        ),
        trial("pull_stops_a_gzip_bomb_at_max_bytes", pull_gzip_bomb),
        trial("pull_caps_directories", pull_many_directories),
        trial("pull_streams_the_layer_to_disk", pull_streams_the_layer),
        trial(
            "lying_registry_answers_stop_at_their_caps",
            lying_registry_answers,
        ),
    ]
}

fn trial(name: &str, body: fn() -> anyhow::Result<()>) -> Trial {
    Trial::test(format!("hostile::{name}"), move || {
        body().map_err(|e| format!("{e:#}").into())
    })
}

fn packsmith(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .current_dir(dir)
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .context("running packsmith")
}

/// Every entry under `root` (relative path → file content, or `/` for a directory), links
/// not followed.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry?;
        let rel = entry
            .path()
            .strip_prefix(root)?
            .to_string_lossy()
            .into_owned();
        let value = if entry.file_type().is_dir() {
            "/".to_owned()
        } else if entry.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(entry.path())?.display())
        } else {
            std::fs::read_to_string(entry.path())?
        };
        out.insert(rel, value);
    }
    Ok(out)
}

/// Runs `packsmith sync` on `vendir` in a fresh directory that also holds `victim/secret`;
/// returns the directory and the command's output.
fn sync(vendir: &str) -> anyhow::Result<(tempfile::TempDir, Output)> {
    let work = tempfile::tempdir()?;
    std::fs::create_dir_all(work.path().join("victim"))?;
    std::fs::write(work.path().join("victim/secret"), "another tenant's\n")?;
    std::fs::write(work.path().join("vendir.yml"), vendir)?;
    let out = packsmith(work.path(), &["sync"])?;
    Ok((work, out))
}

fn ensure_refused(out: &Output, needle: &str) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "succeeded; stderr: {stderr}");
    ensure!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    Ok(())
}

fn ensure_victim_intact(work: &Path) -> anyhow::Result<()> {
    let secret = std::fs::read_to_string(work.join("victim/secret"))
        .context("victim/secret next to the synced directory is gone")?;
    ensure!(
        secret == "another tenant's\n",
        "victim/secret changed: {secret:?}"
    );
    Ok(())
}

fn git_vendir(repo: &str, extra: &str) -> String {
    format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: synced\n  \
         contents:\n  - path: .\n    git:\n      url: {}/{repo}.git\n      ref: v1.0.0\n{extra}",
        bed().git_url
    )
}

/// Each link is lexically inside the checkout; together they climb out of it. The checkout is
/// `<work>/.packsmith-sync-*/0-0/out`, so `l1` resolves to `<work>`, and `l1/victim` is the
/// victim. Before the fix, the new root was renamed into the bundle from there.
fn new_root_symlinks() -> anyhow::Result<()> {
    make_repo_with_links(
        "e2e-hostile-links",
        &[("README.md", "hi\n")],
        &[("d/e/f/l2", "../../.."), ("l1", "d/e/f/l2/../../..")],
        "v1.0.0",
    )?;
    let (work, out) = sync(&git_vendir(
        "e2e-hostile-links",
        "    newRootPath: l1/victim\n",
    ))?;
    ensure_refused(&out, "passes through the symlink \"l1\"")?;
    ensure_victim_intact(work.path())?;
    ensure!(!work.path().join("synced").exists(), "a target was written");
    Ok(())
}

fn pathological_pattern() -> anyhow::Result<()> {
    make_repo(
        "e2e-hostile-pattern",
        &[("config/a.yaml", "a: 1\n")],
        "v1.0.0",
    )?;
    // Nested 200 deep: a stack overflow (the process aborted) for the old matcher.
    let nested = format!("{}a{}", "{a,".repeat(200), "}".repeat(200));
    let (work, out) = sync(&git_vendir(
        "e2e-hostile-pattern",
        &format!("    includePaths:\n    - '{nested}'\n"),
    ))?;
    ensure_refused(&out, "nests `{…}` deeper than 16 levels")?;
    ensure_victim_intact(work.path())?;

    // 2^40 expansions for the old matcher; matched at once now (and it keeps nothing).
    let (work, out) = sync(&git_vendir(
        "e2e-hostile-pattern",
        &format!("    includePaths:\n    - '{}'\n", "{a,b}".repeat(40)),
    ))?;
    ensure_refused(&out, "no file left after includePaths")?;
    ensure_victim_intact(work.path())?;
    Ok(())
}

fn absolute_contents_path() -> anyhow::Result<()> {
    let (work, _) = sync("")?;
    let victim = work.path().join("victim");
    let vendir = format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: synced\n  \
         contents:\n  - path: {}\n    inline:\n      paths:\n        a.txt: a\n",
        victim.display()
    );
    std::fs::write(work.path().join("vendir.yml"), vendir)?;
    let out = packsmith(work.path(), &["sync"])?;
    ensure_refused(&out, "is absolute")?;
    ensure_victim_intact(work.path())?;
    Ok(())
}

/// Pushes `tree` to the plain registry as `e2e-hostile/<name>:1`; returns the reference.
fn push(tree: &Path, name: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(tree.join(".imgpkg"))?;
    std::fs::write(
        tree.join(".imgpkg/images.yml"),
        "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n",
    )?;
    let reference = format!("{}/e2e-hostile/{name}:1", bed().registry);
    let dir = tree.to_string_lossy().into_owned();
    let out = packsmith(
        tree,
        &[
            "push",
            "-b",
            &reference,
            "-f",
            &dir,
            "--registry-insecure-host",
            &bed().registry,
        ],
    )?;
    ensure!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(reference)
}

fn pull(cwd: &Path, reference: &str, output: &str, extra: &[&str]) -> anyhow::Result<Output> {
    let mut args = vec![
        "pull",
        "-b",
        reference,
        "-o",
        output,
        "--registry-insecure-host",
        &bed().registry,
    ];
    args.extend(extra);
    packsmith(cwd, &args)
}

fn pull_into_working_directory() -> anyhow::Result<()> {
    let tree = tempfile::tempdir()?;
    std::fs::create_dir_all(tree.path().join("config"))?;
    std::fs::write(tree.path().join("config/a.yml"), "a: 1\n")?;
    let reference = push(tree.path(), "small")?;

    let home = tempfile::tempdir()?;
    let cwd = home.path().join("project");
    std::fs::create_dir_all(cwd.join("src"))?;
    std::fs::write(cwd.join("Makefile"), "all:\n")?;
    std::fs::write(cwd.join("src/main.rs"), "fn main() {}\n")?;
    let before = snapshot(home.path())?;
    for output in [".", "..", "./", &cwd.to_string_lossy()] {
        let out = pull(&cwd, &reference, output, &[])?;
        ensure_refused(&out, "refusing to pull into")?;
        ensure!(
            snapshot(home.path())? == before,
            "-o {output} changed files"
        );
    }
    // A new directory is fine, and leaves its siblings alone.
    let out = pull(&cwd, &reference, "pulled", &[])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(cwd.join("pulled/config/a.yml").is_file());
    ensure!(std::fs::read_to_string(cwd.join("Makefile"))? == "all:\n");
    Ok(())
}

/// Pulls `reference` over an output holding `keep`, expecting a refusal naming `flag`; the
/// output and the directory around it must be as they were.
fn ensure_pull_capped(reference: &str, extra: &[&str], flag: &str) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    std::fs::create_dir_all(work.path().join("out"))?;
    std::fs::write(work.path().join("out/keep"), "mine\n")?;
    let before = snapshot(work.path())?;
    let out = pull(work.path(), reference, "out", extra)?;
    ensure_refused(&out, flag)?;
    ensure!(
        snapshot(work.path())? == before,
        "a refused pull left changes (staging, partial output)"
    );
    Ok(())
}

fn pull_gzip_bomb() -> anyhow::Result<()> {
    let tree = tempfile::tempdir()?;
    std::fs::create_dir_all(tree.path().join("config"))?;
    // 16 MiB of zeros: tens of KiB in the layer, honest digests.
    std::fs::write(tree.path().join("config/zeros"), vec![0u8; 16 << 20])?;
    let reference = push(tree.path(), "bomb")?;
    ensure_pull_capped(&reference, &["--max-bytes", "1048576"], "--max-bytes")
}

fn pull_many_directories() -> anyhow::Result<()> {
    let tree = tempfile::tempdir()?;
    for i in 0..300 {
        std::fs::create_dir_all(tree.path().join(format!("config/d{i}")))?;
    }
    std::fs::write(tree.path().join("config/a.yml"), "a: 1\n")?;
    let reference = push(tree.path(), "dirs")?;
    ensure_pull_capped(&reference, &["--max-dirs", "100"], "--max-dirs")
}

/// A layer is streamed to disk, never held whole in memory: the pull of a 64 MiB layer that
/// does not compress peaks well under 64 MiB (measured by the kernel, through Python's
/// `getrusage` of its only child, as the test process runs many).
fn pull_streams_the_layer() -> anyhow::Result<()> {
    const SIZE: usize = 64 << 20;
    let tree = tempfile::tempdir()?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..SIZE / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    std::fs::write(tree.path().join("noise.bin"), &noise)?;
    let reference = push(tree.path(), "large")?;

    let work = tempfile::tempdir()?;
    let measure = "import resource, subprocess, sys\n\
                   done = subprocess.run(sys.argv[1:])\n\
                   print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                   sys.exit(done.returncode)";
    let out = Command::new("python3")
        .args(["-c", measure, env!("CARGO_BIN_EXE_packsmith")])
        .args(["pull", "-b", &reference, "-o", "out"])
        .args(["--registry-insecure-host", &bed().registry])
        .current_dir(work.path())
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .context("running packsmith pull under python3")?;
    ensure!(
        out.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The last line: packsmith's own report comes before it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let peak_kib: u64 = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("no peak in {stdout:?}"))?;
    ensure!(
        std::fs::read(work.path().join("out/noise.bin"))? == noise,
        "the pulled file differs"
    );
    ensure!(
        peak_kib < (SIZE as u64 / 1024) * 5 / 8,
        "the pull of a {} MiB layer peaked at {} MiB: the layer was held in memory",
        SIZE >> 20,
        peak_kib >> 10
    );
    Ok(())
}

/// A registry that lies, on 127.0.0.1: `/v2/` is honest; `REPO/manifests/1` is a bundle
/// manifest (or, for `huge`, 8 MiB of JSON that never closes) whose layer descriptor is
/// honest about [`DECLARED_LAYER`]; the layer's blob is then served as an endless stream
/// without a length (`endless`) or as other bytes of the declared length (`liar`). `longname`
/// is honest: its layer is a 4 KiB gzip of a tar whose one member has a 4 MiB GNU long name,
/// which a tar reader would buffer whole.
/// Returns `host:port`.
fn lying_registry() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                // The client hanging up mid-stream is the expected end of most answers.
                let _ = answer(stream);
            });
        }
    });
    Ok(address)
}

const DECLARED_LAYER: &[u8] = b"the layer the manifest describes";

fn long_name_layer() -> &'static [u8] {
    static LAYER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LAYER.get_or_init(|| {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name = format!("{}/f", "d".repeat(4 << 20));
        tar.append_data(&mut header, name, &b"x"[..])
            .expect("a tar in memory");
        let tar = tar.into_inner().expect("a tar in memory");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &tar).expect("gzip in memory");
        gz.finish().expect("gzip in memory")
    })
}
const CONFIG: &[u8] = br#"{"config":{"Labels":{"dev.carvel.imgpkg.bundle":"true"}},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn answer(stream: std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? <= 2 {
            break;
        }
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_owned();
    let mut out = std::io::BufWriter::new(stream);
    let mut reply = |status: &str, body: &[u8]| -> std::io::Result<()> {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)?;
        out.flush()
    };
    let repo = path.split('/').nth(2).unwrap_or_default();
    let layer_bytes = if repo == "longname" {
        long_name_layer()
    } else {
        DECLARED_LAYER
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": CONFIG.len(),
            "digest": digest(CONFIG),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": layer_bytes.len(),
            "digest": digest(layer_bytes),
        }],
    })
    .to_string();
    let layer = format!("/blobs/{}", digest(layer_bytes));
    let config = format!("/blobs/{}", digest(CONFIG));
    match path.as_str() {
        "/v2/" => reply("200 OK", b"{}"),
        "/v2/manytags/tags/list" => {
            // `n` ignored, and each page other tags than the last (`last` ignored too, but
            // not so that it shows): 150,000 a page, 1.7 MB, under the page's byte cap.
            static PAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let page = PAGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tags: Vec<String> = (0..150_000).map(|i| format!("{page}.{i}.0")).collect();
            reply(
                "200 OK",
                serde_json::json!({ "tags": tags }).to_string().as_bytes(),
            )
        }
        "/v2/endless/manifests/1" | "/v2/liar/manifests/1" | "/v2/longname/manifests/1" => {
            reply("200 OK", manifest.as_bytes())
        }
        p if p == format!("/v2/longname{layer}") => reply("200 OK", layer_bytes),
        p if p.ends_with(&config) => reply("200 OK", CONFIG),
        p if p == format!("/v2/liar{layer}") => reply("200 OK", &vec![b'x'; DECLARED_LAYER.len()]),
        p if p == format!("/v2/endless{layer}") || p == "/v2/huge/manifests/1" => {
            // No length: the body ends when the connection does, which the client must not
            // wait for. 1 GiB at most, so a broken client cannot fill the bed's disk either.
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.distribution.\
                 manifest.v2+json\r\nConnection: close\r\n\r\n{{\"a\":\""
            )?;
            let chunk = vec![b'a'; 64 << 10];
            for _ in 0..(1 << 14) {
                out.write_all(&chunk)?;
            }
            out.flush()
        }
        _ => reply("404 Not Found", br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#),
    }
}

/// Every lie ends as a refusal that says what was wrong, the output as it was, no scratch
/// file left behind, and no more memory than a chunk: the pull of an endless blob is refused
/// at the size its manifest declared, not at the end of the stream.
fn lying_registry_answers() -> anyhow::Result<()> {
    let registry = lying_registry()?;
    for (repo, needle) in [
        ("endless", "larger than 32 bytes"),
        ("liar", "digest"),
        ("huge", "larger than 4194304 bytes"),
        (
            "longname",
            "headers (PAX records, GNU long name or link) take more than 1048576",
        ),
    ] {
        let work = tempfile::tempdir()?;
        std::fs::create_dir_all(work.path().join("out"))?;
        std::fs::write(work.path().join("out/keep"), "mine\n")?;
        let before = snapshot(work.path())?;
        let reference = format!("{registry}/{repo}:1");
        let out = packsmith(
            work.path(),
            &[
                "pull",
                "-b",
                &reference,
                "-o",
                "out",
                "--registry-insecure-host",
                &registry,
            ],
        )?;
        ensure_refused(&out, needle).with_context(|| format!("pull of {repo}"))?;
        ensure!(
            snapshot(work.path())? == before,
            "the pull of {repo} changed the working directory"
        );

        // The image source streams layers to disk the same way.
        let vendir = format!(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: synced\n  \
             contents:\n  - path: .\n    image:\n      url: {reference}\n"
        );
        std::fs::write(work.path().join("vendir.yml"), &vendir)?;
        let out = packsmith(
            work.path(),
            &["sync", "--registry-insecure-host", &registry],
        )?;
        ensure_refused(&out, needle).with_context(|| format!("image sync of {repo}"))?;
        ensure!(
            !work.path().join("synced").exists(),
            "the sync of {repo} left a directory"
        );
    }

    // A tag list that never ends, in pages far larger than asked for: refused at the tags
    // all the pages asked for could hold (it was up to 100 pages of whatever came).
    let work = tempfile::tempdir()?;
    let vendir = format!(
        "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: synced\n  \
         contents:\n  - path: .\n    image:\n      url: {registry}/manytags\n      \
         tagSelection:\n        semver:\n          constraints: \">=0.0.0\"\n"
    );
    std::fs::write(work.path().join("vendir.yml"), &vendir)?;
    let out = packsmith(
        work.path(),
        &["sync", "--registry-insecure-host", &registry],
    )?;
    ensure_refused(&out, "lists more than 100000 tags").context("tag selection of manytags")?;
    Ok(())
}
