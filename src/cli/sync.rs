//! `packsmith sync`: a drop-in for `vendir sync` (reads vendir.yml, writes vendir.lock.yml).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;

use super::registry::RegistryArgs;
use crate::carvel::vendir::{Config, LockConfig};
use crate::sync::{Limits, MemorySecrets, Secret, SyncOptions};

#[derive(Args, Debug)]
pub(super) struct SyncArgs {
    /// Work in this directory (paths in vendir.yml are relative to it).
    #[arg(long, conflicts_with = "all")]
    chdir: Option<PathBuf>,
    /// With --all ROOT: each package's contents (its PackageSource's spec.contents, or TCE's
    /// vendir.yml) are synced into its directory.
    #[command(flatten)]
    all: super::all::AllArgs,
    /// vendir Config to read; Secret and ConfigMap documents in it (or in further -f files)
    /// answer secretRef and inline pathsFrom, as with vendir.
    #[arg(short, long, default_value = "vendir.yml")]
    file: Vec<PathBuf>,
    /// Lock file to write (and to read with --locked).
    #[arg(long, default_value = "vendir.lock.yml")]
    lock_file: PathBuf,
    /// Fetch exactly what the lock file records.
    #[arg(long)]
    locked: bool,
    /// Keep git objects and downloads here, so unchanged upstreams are not fetched again
    /// [default: $XDG_CACHE_HOME/packsmith/sync, else ~/.cache/packsmith/sync].
    #[arg(long, env = "PACKSMITH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Fetch everything afresh and keep nothing between runs.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// Most bytes the cache keeps: the least recently used repositories and downloads are
    /// removed after a sync that leaves it larger.
    #[arg(long, env = "PACKSMITH_SYNC_CACHE_MAX_SIZE", default_value = "5Gi", value_parser = super::byte_size)]
    cache_max_size: u64,
    /// Most bytes one content may download or unpack to.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_bytes: u64,
    /// Most files one content may unpack to.
    #[arg(long, default_value_t = Limits::default().max_files)]
    max_files: u64,
    /// Most directories one content may unpack to.
    #[arg(long, default_value_t = Limits::default().max_dirs)]
    max_dirs: u64,
    /// Seconds allowed for fetching one content.
    #[arg(long, default_value_t = Limits::default().source_timeout.as_secs())]
    timeout: u64,
    /// Contents fetched at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// git over ssh with no ssh-knownhosts in its Secret: accept any host key, as vendir does
    /// (StrictHostKeyChecking=no). Without this flag such a source is refused.
    #[arg(long)]
    allow_unknown_ssh_hosts: bool,
    /// For image, imgpkgBundle and oci:// helmChart sources (their secretRef adds credentials).
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn run(
    args: &SyncArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    if let Some(root) = &args.all.all {
        return sync_all(args, root, runtime);
    }
    let root = args.chdir.clone().unwrap_or_else(|| PathBuf::from("."));
    let mut config = None;
    let mut secrets = MemorySecrets::default();
    for file in &args.file {
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for document in documents(&text) {
            read_document(document, &path, &mut config, &mut secrets)?;
        }
    }
    let config = config.with_context(|| {
        format!(
            "no vendir Config (apiVersion vendir.k14s.io/v1alpha1, kind Config) in {}",
            args.file
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let (lock, written) = runtime.block_on(sync_dir(args, &root, &config, &secrets))?;
    evict(args);
    for directory in &lock.directories {
        for contents in &directory.contents {
            eprintln!("synced {} + {}", directory.path, contents.path);
        }
    }
    if let Some(path) = written {
        eprintln!("wrote {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `sync --all ROOT`: every package's contents (its PackageSource's `spec.contents`, or TCE's
/// vendir.yml) into its directory, with its vendir.lock.yml.
fn sync_all(
    args: &SyncArgs,
    root: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    let Some(packages) = super::all::select(root, &args.all)? else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let secrets = MemorySecrets::default();
    let ok = runtime.block_on(super::all::run(packages, args.all.jobs, |found| {
        let secrets = &secrets;
        async move {
            let result = async {
                let spec = found.spec(args.all.repository_prefix.as_deref())?;
                let config = Config::new(spec.contents.clone());
                let (lock, _) = sync_dir(args, &found.dir(), &config, secrets).await?;
                let contents: usize = lock.directories.iter().map(|d| d.contents.len()).sum();
                anyhow::Ok((spec.package.version.clone().unwrap_or_default(), contents))
            }
            .await;
            super::all::Ran::of(
                &found,
                result.map(|(version, n)| (version, format!("synced {n} contents"))),
            )
        }
    }));
    evict(args);
    Ok(super::all::exit_code(ok))
}

/// The cache directory this run uses, if any.
fn cache_dir(args: &SyncArgs) -> Option<PathBuf> {
    if args.no_cache {
        None
    } else {
        args.cache_dir
            .clone()
            .or_else(crate::sync::default_cache_dir)
    }
}

/// Trims the cache after a run (best effort: a cache that cannot be trimmed is not a failed
/// sync).
fn evict(args: &SyncArgs) {
    let Some(cache) = cache_dir(args) else {
        return;
    };
    match crate::sync::evict(&cache, args.cache_max_size) {
        Ok(evicted) if evicted.entries > 0 => eprintln!(
            "cache {}: removed {} least recently used entries ({} bytes), {} bytes kept",
            cache.display(),
            evicted.entries,
            evicted.bytes,
            evicted.kept
        ),
        Ok(_) => {}
        Err(e) => eprintln!("cache {}: could not trim it: {e}", cache.display()),
    }
}

/// Syncs `config` into `root` and writes its lock when it changed; returns the lock and the
/// path written, if it was.
async fn sync_dir(
    args: &SyncArgs,
    root: &Path,
    config: &Config,
    secrets: &MemorySecrets,
) -> anyhow::Result<(LockConfig, Option<PathBuf>)> {
    let lock_path = root.join(&args.lock_file);
    let previous = match std::fs::read_to_string(&lock_path) {
        Ok(text) => Some(
            LockConfig::from_yaml(&text)
                .with_context(|| format!("reading {}", lock_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", lock_path.display())),
    };
    if args.locked && previous.is_none() {
        anyhow::bail!(
            "--locked needs {}, which does not exist; run without --locked first",
            lock_path.display()
        );
    }
    // Only configs with registry sources read the docker config, so a broken one cannot fail
    // a git-only sync. The username/password flags name no host here: registries get
    // credentials from the docker config and from each content's secretRef.
    let registry = if needs_registry(config) {
        Some(args.registry.registry(None)?)
    } else {
        None
    };
    let mut options = SyncOptions::new(secrets);
    options.registry = registry.as_ref();
    options.cache_dir = cache_dir(args);
    options.locked = previous.as_ref().filter(|_| args.locked);
    options.previous = previous.as_ref();
    options.concurrency = args.concurrency;
    options.policy = crate::sync::Policy::cli(args.allow_unknown_ssh_hosts);
    options.github_token = std::env::var("VENDIR_GITHUB_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    options.limits = Limits {
        max_bytes: args.max_bytes,
        max_files: args.max_files,
        max_dirs: args.max_dirs,
        source_timeout: Duration::from_secs(args.timeout),
        ..Limits::default()
    };
    let lock = crate::sync::sync(config, root, &options).await?;
    let yaml = lock.to_yaml()?;
    // vendir writes the lock only when it changed, which keeps mtimes and diffs quiet.
    let written = if std::fs::read_to_string(&lock_path).ok().as_deref() != Some(yaml.as_str()) {
        crate::lock::write_atomically(&lock_path, yaml.as_bytes())
            .with_context(|| format!("writing {}", lock_path.display()))?;
        Some(lock_path)
    } else {
        None
    };
    Ok((lock, written))
}

/// Whether any content is fetched from an OCI registry.
fn needs_registry(config: &Config) -> bool {
    config
        .directories
        .iter()
        .flat_map(|d| &d.contents)
        .any(|c| {
            use crate::carvel::vendir::Source;
            match c.source() {
                Ok(Source::Image(_) | Source::ImgpkgBundle(_)) => true,
                Ok(Source::HelmChart(h)) => h
                    .repository
                    .as_ref()
                    .is_some_and(|r| r.url.starts_with("oci://")),
                Ok(
                    Source::Git(_)
                    | Source::Hg(_)
                    | Source::Http(_)
                    | Source::GithubRelease(_)
                    | Source::Manual(_)
                    | Source::Directory(_)
                    | Source::Inline(_),
                )
                | Err(_) => false,
            }
        })
}

/// Splits a YAML stream at `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn read_document(
    text: String,
    path: &Path,
    config: &mut Option<Config>,
    secrets: &mut MemorySecrets,
) -> anyhow::Result<()> {
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    let strings = |field: &str| -> BTreeMap<String, String> {
        value
            .get(field)
            .and_then(|d| d.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    match kind {
        "Config" => {
            anyhow::ensure!(
                config.is_none(),
                "{}: more than one vendir Config",
                path.display()
            );
            *config = Some(Config::from_yaml(&text)?);
        }
        "Secret" => {
            let mut data = BTreeMap::new();
            for (key, encoded) in strings("data") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .with_context(|| format!("Secret {name:?}: data.{key} is not base64"))?;
                data.insert(key, decoded);
            }
            for (key, value) in strings("stringData") {
                data.insert(key, value.into_bytes());
            }
            secrets.secrets.insert(name, Secret { data });
        }
        "ConfigMap" => {
            secrets.config_maps.insert(name, strings("data"));
        }
        other => anyhow::bail!(
            "{}: unexpected document of kind {other:?} (expected Config, Secret or ConfigMap)",
            path.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_config_maps_come_from_extra_documents() {
        let text = "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: d\n  \
                    contents:\n  - path: .\n    manual: {}\n---\napiVersion: v1\nkind: Secret\n\
                    metadata: {name: creds}\ndata: {password: aHVudGVyMg==}\nstringData: \
                    {username: me}\n---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\n\
                    metadata: {name: files}\ndata: {a.txt: hello}\n";
        let mut config = None;
        let mut secrets = MemorySecrets::default();
        for doc in documents(text) {
            read_document(doc, Path::new("vendir.yml"), &mut config, &mut secrets)
                .expect("document");
        }
        assert_eq!(config.expect("config").directories[0].path, "d");
        assert_eq!(secrets.secrets["creds"].data["password"], b"hunter2");
        assert_eq!(secrets.secrets["creds"].data["username"], b"me");
        assert_eq!(secrets.config_maps["files"]["a.txt"], "hello");
        let err = read_document(
            "kind: Pod\n".to_owned(),
            Path::new("x"),
            &mut None,
            &mut MemorySecrets::default(),
        )
        .expect_err("pod");
        assert!(err.to_string().contains("Pod"), "{err}");
    }
}
