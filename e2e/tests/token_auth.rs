//! Bearer-token auth against a real registry: the bed's docker-registry runs with `auth: token`
//! and trusts only JWTs from its token server (e2e/upstream/token_server.py), which hands them to
//! one user. `packsmith lock`, `push` and `pull` get through it with that user's docker
//! config.json, fetch one token per (repository, access) however many requests they make, and
//! fail with an authentication error that names the registry, without echoing the password,
//! when the credentials are wrong or missing.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use oci_client::secrets::RegistryAuth;
use pretty_assertions::assert_eq;

use crate::support::images::{self, ImageKind};
use crate::support::{self, Bed, TokenRegistry, bed};

fn trial<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce(&'static TokenRegistry) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Trial::test(format!("token_auth::{name}"), move || {
        support::block_on(async move { body(token_registry(bed())?).await })
    })
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial("lock_push_pull_with_docker_config", lock_push_pull),
        trial("wrong_password_is_a_clear_401", wrong_password),
        trial("no_credentials_is_a_clear_error", no_credentials),
        trial(
            "a_local_registry_needs_no_insecure_flag_and_the_controller_sends_it_no_credentials",
            local_registry_without_flags,
        ),
        trial(
            "docker_credential_helpers_are_asked_as_docker_asks_them",
            credential_helpers,
        ),
    ]
}

fn token_registry(bed: &Bed) -> anyhow::Result<&TokenRegistry> {
    bed.token.as_ref().context(
        "this bed has no token registry (PACKSMITH_E2E_REGISTRY_TOKEN): it was started by an \
         older e2e/scripts/up.sh; restart it",
    )
}

/// A repository prefix no other run has used: the token log and the registry's storage outlive
/// a run when the bed is reused, and a second push of the same content would upload nothing
/// (so fetch no push token).
fn unique_prefix(name: &str) -> anyhow::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    Ok(format!("e2e-token/{name}-{nanos:x}"))
}

/// Runs the CLI with `DOCKER_CONFIG=docker_config` (credentials found the default way) and no
/// PACKSMITH_REGISTRY_* variables from the caller's environment.
fn packsmith(docker_config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("PACKSMITH_REGISTRY_USERNAME")
        .env_remove("PACKSMITH_REGISTRY_PASSWORD")
        .output()
        .context("running packsmith")
}

fn succeeded(what: &str, out: &Output) -> anyhow::Result<(String, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    Ok((stdout, stderr))
}

fn failed(what: &str, out: &Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "{what} succeeded but should have failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    Ok(stderr)
}

/// Answers of the token server so far, as (status, scope) → count; a request for several
/// scopes counts once under each.
fn token_answers(token: &TokenRegistry) -> anyhow::Result<BTreeMap<(u16, String), usize>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        status: u16,
        scopes: Vec<String>,
    }
    let text = std::fs::read_to_string(&token.issued_log)
        .with_context(|| format!("reading {}", token.issued_log.display()))?;
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let answer: Answer =
            serde_json::from_str(line).with_context(|| format!("token log line {line:?}"))?;
        for scope in answer.scopes {
            *counts.entry((answer.status, scope)).or_default() += 1;
        }
    }
    Ok(counts)
}

/// What the token server answered between two snapshots, for scopes under `prefix` only
/// (other trials share the server).
fn answers_since(
    before: &BTreeMap<(u16, String), usize>,
    after: &BTreeMap<(u16, String), usize>,
    prefix: &str,
) -> BTreeMap<(u16, String), usize> {
    after
        .iter()
        .filter(|((_, scope), _)| scope.starts_with(&format!("repository:{prefix}/")))
        .filter_map(|(key, n)| {
            let new = n - before.get(key).copied().unwrap_or(0);
            (new > 0).then(|| (key.clone(), new))
        })
        .collect()
}

fn scope(prefix: &str, repository: &str, actions: &str) -> String {
    format!("repository:{prefix}/{repository}:{actions}")
}

/// Pushes the images a package tree refers to, with the token registry's own user.
async fn push_images(token: &TokenRegistry, prefix: &str) -> anyhow::Result<Vec<String>> {
    let registry = images::Registry {
        host: token.host.clone(),
        auth: RegistryAuth::Basic(token.user.clone(), token.password.clone()),
        tls_ca_pem: None,
    };
    let mut references = Vec::new();
    for (repository, tag, kind) in [
        ("app", "1.0", ImageKind::Oci),
        ("app", "1.1", ImageKind::DockerV2),
        ("db", "2.0", ImageKind::MultiArch),
    ] {
        let repository = format!("{prefix}/{repository}");
        let digest = images::push_image(&registry, &repository, tag, kind, "token-auth")
            .await
            .with_context(|| format!("pushing the fixture {repository}:{tag}"))?;
        references.push(format!("{}/{repository}@{digest}", token.host));
    }
    Ok(references)
}

/// A package tree referring to `host/prefix/{app:1.0,app:1.1,db:2.0}`.
fn package_tree(host: &str, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let tree = tempfile::tempdir()?;
    std::fs::create_dir_all(tree.path().join("config"))?;
    std::fs::create_dir_all(tree.path().join(".imgpkg"))?;
    std::fs::write(
        tree.path().join("config/deployment.yml"),
        format!(
            "app:\n  image: {host}/{prefix}/app:1.0\ncanary:\n  image: {host}/{prefix}/app:1.1\n\
             db:\n  image: {host}/{prefix}/db:2.0\n"
        ),
    )?;
    Ok(tree)
}

/// Every regular file under `root`, by relative path.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(
                    path.strip_prefix(root)?.to_path_buf(),
                    std::fs::read(&path)?,
                );
            }
        }
    }
    Ok(files)
}

async fn lock_push_pull(token: &'static TokenRegistry) -> anyhow::Result<()> {
    let prefix = unique_prefix("round-trip")?;
    let pushed = push_images(token, &prefix).await?;
    let config = support::docker_config(&token.host, &token.user, &token.password)?;
    let tree = package_tree(&token.host, &prefix)?;
    let work = tempfile::tempdir()?;
    let host = token.host.as_str();
    let insecure = ["--registry-insecure-host", host];
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // lock: three tags in two repositories; one ping, one pull token per repository.
    let images_yml = tree.path().join(".imgpkg/images.yml");
    let before = token_answers(token)?;
    let out = packsmith(
        config.path(),
        &[
            &["lock", "-f", &path(&tree.path().join("config"))],
            &["--imgpkg-lock-output", &path(&images_yml)][..],
            &insecure,
        ]
        .concat(),
    )?;
    let (_, stderr) = succeeded("packsmith lock", &out)?;
    assert_eq!(
        answers_since(&before, &token_answers(token)?, &prefix),
        BTreeMap::from([
            ((200, scope(&prefix, "app", "pull")), 1),
            ((200, scope(&prefix, "db", "pull")), 1),
        ]),
        "tokens fetched by lock"
    );
    ensure!(
        stderr.contains("3 manifest requests, 3 other requests"),
        "lock should report 3 HEADs, 1 ping and 2 token requests: {stderr}"
    );
    let lock_text = std::fs::read_to_string(&images_yml)?;
    for reference in &pushed {
        ensure!(
            lock_text.contains(&format!("image: {reference}")),
            "{reference} is not in the lock:\n{lock_text}"
        );
    }

    // push: one pull token (what is there already) and one push token for the bundle's
    // repository, however many blobs go up.
    let bundle = format!("{host}/{prefix}/bundle:0.1.0");
    let bundle_lock = work.path().join("bundle.lock.yml");
    let before = token_answers(token)?;
    let out = packsmith(
        config.path(),
        &[
            &["push", "-b", &bundle, "-f", &path(tree.path())],
            &["--lock-output", &path(&bundle_lock)][..],
            &insecure,
        ]
        .concat(),
    )?;
    let (stdout, _) = succeeded("packsmith push", &out)?;
    assert_eq!(
        answers_since(&before, &token_answers(token)?, &prefix),
        BTreeMap::from([
            ((200, scope(&prefix, "bundle", "pull")), 1),
            ((200, scope(&prefix, "bundle", "pull,push")), 1),
        ]),
        "tokens fetched by push"
    );
    let image = stdout
        .trim()
        .strip_prefix("Pushed '")
        .and_then(|s| s.strip_suffix('\''))
        .with_context(|| format!("push printed {stdout:?}"))?
        .to_owned();
    ensure!(
        image.starts_with(&format!("{host}/{prefix}/bundle@sha256:")),
        "{image}"
    );

    // pull by digest: one pull token, and the tree comes back as pushed.
    let output = work.path().join("pulled");
    let before = token_answers(token)?;
    let out = packsmith(
        config.path(),
        &[&["pull", "-b", &image, "-o", &path(&output)][..], &insecure].concat(),
    )?;
    succeeded("packsmith pull", &out)?;
    assert_eq!(
        answers_since(&before, &token_answers(token)?, &prefix),
        BTreeMap::from([((200, scope(&prefix, "bundle", "pull")), 1)]),
        "tokens fetched by pull"
    );
    assert_eq!(snapshot(&output)?, snapshot(tree.path())?);
    Ok(())
}

/// The parts every credential error must have: the registry, the status, what to check, and
/// never the password.
fn check_auth_error(
    what: &str,
    stderr: &str,
    host: &str,
    hint: &str,
    password: &str,
) -> anyhow::Result<()> {
    ensure!(
        stderr.contains(host),
        "{what}: the error should name the registry {host}: {stderr}"
    );
    ensure!(
        stderr.contains("401"),
        "{what}: the error should say 401: {stderr}"
    );
    ensure!(
        stderr.contains(hint),
        "{what}: the error should say {hint:?}: {stderr}"
    );
    ensure!(
        !stderr.contains(password),
        "{what}: the error shows the password: {stderr}"
    );
    Ok(())
}

async fn wrong_password(token: &'static TokenRegistry) -> anyhow::Result<()> {
    let prefix = unique_prefix("wrong-password")?;
    push_images(token, &prefix).await?;
    let wrong = "not-the-password-0c1b2a";
    let config = support::docker_config(&token.host, &token.user, wrong)?;
    let tree = package_tree(&token.host, &prefix)?;
    let work = tempfile::tempdir()?;
    let host = token.host.as_str();
    let insecure = ["--registry-insecure-host", host];
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let hint = "credentials were refused";

    let before = token_answers(token)?;
    let out = packsmith(
        config.path(),
        &[&["lock", "-f", &path(tree.path())][..], &insecure].concat(),
    )?;
    let stderr = failed("lock with a wrong password", &out)?;
    check_auth_error("lock", &stderr, host, hint, wrong)?;
    let refused = answers_since(&before, &token_answers(token)?, &prefix);
    ensure!(
        refused.keys().all(|(status, _)| *status == 401),
        "the token server granted something to a wrong password: {refused:?}"
    );
    // A refusal is remembered for the run: one refused login per repository (app has two
    // tags), not one per image.
    ensure!(
        refused.values().all(|n| *n == 1) && !refused.is_empty(),
        "refused logins per scope should be one each: {refused:?}"
    );

    let bundle = format!("{host}/{prefix}/bundle:0.1.0");
    std::fs::write(
        tree.path().join(".imgpkg/images.yml"),
        "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages: []\n",
    )?;
    let out = packsmith(
        config.path(),
        &[
            &["push", "-b", &bundle, "-f", &path(tree.path())][..],
            &insecure,
        ]
        .concat(),
    )?;
    let stderr = failed("push with a wrong password", &out)?;
    check_auth_error("push", &stderr, host, hint, wrong)?;

    let out = packsmith(
        config.path(),
        &[
            &["pull", "-b", &bundle, "-o", &path(&work.path().join("out"))][..],
            &insecure,
        ]
        .concat(),
    )?;
    let stderr = failed("pull with a wrong password", &out)?;
    check_auth_error("pull", &stderr, host, hint, wrong)?;
    Ok(())
}

async fn no_credentials(token: &'static TokenRegistry) -> anyhow::Result<()> {
    let prefix = unique_prefix("anonymous")?;
    push_images(token, &prefix).await?;
    // A config.json for some other registry only: nothing for this host.
    let config = support::docker_config("registry.example.com", "someone", "elsewhere")?;
    let tree = package_tree(&token.host, &prefix)?;
    let host = token.host.as_str();
    let insecure = ["--registry-insecure-host", host];
    let hint = "no credentials are configured for this host";

    let out = packsmith(
        config.path(),
        &[
            &["lock", "-f", &tree.path().to_string_lossy()][..],
            &insecure,
        ]
        .concat(),
    )?;
    let stderr = failed("lock without credentials", &out)?;
    check_auth_error("lock", &stderr, host, hint, "elsewhere")?;

    let work = tempfile::tempdir()?;
    let out = packsmith(
        config.path(),
        &[
            &["pull", "-b", &format!("{host}/{prefix}/app:1.0")][..],
            &["-o", &work.path().join("out").to_string_lossy()],
            &insecure,
        ]
        .concat(),
    )?;
    let stderr = failed("pull without credentials", &out)?;
    check_auth_error("pull", &stderr, host, hint, "elsewhere")?;
    Ok(())
}

/// go-containerregistry's local-registry convention: `127.0.0.1:PORT` and `localhost:PORT`
/// are tried over HTTPS, then spoken to over plain HTTP — no `--registry-insecure-host`. The
/// CLI sends its credentials there (as crane does); the controller's options withhold them,
/// so the same push is refused by the registry.
async fn local_registry_without_flags(token: &'static TokenRegistry) -> anyhow::Result<()> {
    use packsmith::bundle::{self, BuildOptions, Location, PushOptions};
    use packsmith::registry::{Credentials, ErrorClass, Registry, RegistryOptions};

    let prefix = unique_prefix("local")?;
    let config = support::docker_config(&token.host, &token.user, &token.password)?;
    let tree = package_tree(&token.host, &prefix)?;
    std::fs::write(
        tree.path().join(".imgpkg/images.yml"),
        "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n",
    )?;
    let work = tempfile::tempdir()?;
    let path = |p: &Path| p.to_string_lossy().into_owned();

    // The CLI: push to 127.0.0.1:PORT and pull back through localhost:PORT, no flags.
    let bundle_ref = format!("{}/{prefix}/bundle:0.1.0", token.host);
    let out = packsmith(
        config.path(),
        &["push", "-b", &bundle_ref, "-f", &path(tree.path())],
    )?;
    let (stdout, _) = succeeded("packsmith push without --registry-insecure-host", &out)?;
    let image = stdout
        .trim()
        .strip_prefix("Pushed '")
        .and_then(|s| s.strip_suffix('\''))
        .with_context(|| format!("push printed {stdout:?}"))?
        .to_owned();
    let port = token
        .host
        .rsplit_once(':')
        .map(|(_, port)| port)
        .context("the token registry's port")?;
    let via_localhost = image.replacen(&token.host, &format!("localhost:{port}"), 1);
    let localhost_config =
        support::docker_config(&format!("localhost:{port}"), &token.user, &token.password)?;
    let output = work.path().join("pulled");
    let out = packsmith(
        localhost_config.path(),
        &["pull", "-b", &via_localhost, "-o", &path(&output)],
    )?;
    succeeded("packsmith pull through localhost without flags", &out)?;
    assert_eq!(snapshot(&output)?, snapshot(tree.path())?);

    // The library with the controller's rule: the same credentials are withheld from a host
    // reached by the fallback, so the registry refuses; without the rule they go.
    let built = bundle::build(&[tree.path().to_path_buf()], &BuildOptions::default())?;
    let target = Location::parse(&format!("{}/{prefix}/controller:0.1.0", token.host))?;
    let registry = |withhold: bool| {
        Registry::new(RegistryOptions {
            credentials: Credentials::basic(&token.host, &token.user, &token.password),
            withhold_credentials_over_fallback: withhold,
            ..RegistryOptions::default()
        })
    };
    let refused = bundle::push(
        &registry(true)?,
        &built,
        &target,
        &["0.1.0".to_owned()],
        &PushOptions::default(),
    )
    .await
    .err()
    .context("the controller's rule should have withheld the credentials")?;
    ensure!(
        matches!(&refused, bundle::BundleError::Registry(e) if e.class() == ErrorClass::Auth),
        "expected an authentication error, got {refused}"
    );
    bundle::push(
        &registry(false)?,
        &built,
        &target,
        &["0.1.0".to_owned()],
        &PushOptions::default(),
    )
    .await
    .context("the CLI's rule sends the credentials")?;
    Ok(())
}

/// `credsStore` / `credHelpers` of the docker config: `docker-credential-<name> get` is run
/// with the server on stdin, as docker runs it; a helper for the host wins over the store; a
/// missing or failing helper is an error that names it; "credentials not found" is anonymous.
async fn credential_helpers(token: &'static TokenRegistry) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;

    let prefix = unique_prefix("helper")?;
    let tree = package_tree(&token.host, &prefix)?;
    std::fs::write(
        tree.path().join(".imgpkg/images.yml"),
        "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n",
    )?;
    let bin = tempfile::tempdir()?;
    let asked = bin.path().join("asked");
    // `good` knows the token registry; `empty` knows nothing; `broken` fails.
    let script = |name: &str, body: &str| -> anyhow::Result<()> {
        let path = bin.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    script(
        "good",
        &format!(
            "[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{host}\" ]; then\n\
             printf \'{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}\' \"$server\"\n\
             else echo \"credentials not found in native keychain\"; exit 1; fi",
            asked = asked.display(),
            host = token.host,
            user = token.user,
            password = token.password,
        ),
    )?;
    script(
        "empty",
        "echo \"credentials not found in native keychain\"; exit 1",
    )?;
    script("broken", "echo \"the keychain is locked\" >&2; exit 3")?;
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |config: serde_json::Value, reference: &str| -> anyhow::Result<Output> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("config.json"), config.to_string())?;
        Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args(["push", "-b", reference, "-f"])
            .arg(tree.path())
            .args(["--registry-insecure-host", &token.host])
            .env("DOCKER_CONFIG", dir.path())
            .env("PATH", &path)
            .env_remove("PACKSMITH_REGISTRY_USERNAME")
            .env_remove("PACKSMITH_REGISTRY_PASSWORD")
            .output()
            .context("running packsmith")
    };
    let reference = format!("{}/{prefix}/bundle:0.1.0", token.host);

    // credsStore: the store is asked for the host, once, and its answer logs in.
    let out = run(serde_json::json!({ "credsStore": "good" }), &reference)?;
    succeeded("push with credsStore", &out)?;
    assert_eq!(
        std::fs::read_to_string(&asked)?.lines().collect::<Vec<_>>(),
        vec![token.host.as_str()],
        "the helper is asked once, with the registry host"
    );

    // credHelpers wins over credsStore, and over the file's own entry.
    let out = run(
        serde_json::json!({
            "credsStore": "empty",
            "credHelpers": { token.host.clone(): "good" },
            "auths": { token.host.clone(): { "auth": "d3Jvbmc6d3Jvbmc=" } },
        }),
        &reference,
    )?;
    succeeded("push with credHelpers over credsStore and auths", &out)?;

    // "credentials not found": anonymous, so the registry's own 401.
    let out = run(serde_json::json!({ "credsStore": "empty" }), &reference)?;
    let stderr = failed("push with a store that knows nothing", &out)?;
    ensure!(
        stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"),
        "{stderr}"
    );

    // A failing or missing helper: an error naming it and what it said.
    let out = run(serde_json::json!({ "credsStore": "broken" }), &reference)?;
    let stderr = failed("push with a failing helper", &out)?;
    ensure!(
        stderr.contains("docker-credential-broken") && stderr.contains("the keychain is locked"),
        "{stderr}"
    );
    let out = run(
        serde_json::json!({ "credHelpers": { token.host.clone(): "absent" } }),
        &reference,
    )?;
    let stderr = failed("push with a missing helper", &out)?;
    ensure!(
        stderr.contains("docker-credential-absent is not on PATH"),
        "{stderr}"
    );
    Ok(())
}
