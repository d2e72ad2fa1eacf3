//! `packsmith push`: a drop-in for `imgpkg push -b REPO:TAG -f DIR [--lock-output F]`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use crate::bundle::{self, BuildOptions, Location, PushEvent, PushOptions};
use crate::carvel::BundleLock;

use super::registry::{RegistryArgs, registry_host};

#[derive(Args, Debug)]
#[group(id = "target", required = true, multiple = false, args = ["bundle", "image", "all"])]
pub(super) struct PushArgs {
    /// Where to push the bundle: REPO:TAG, or oci-layout:DIR[:TAG] for an OCI image layout on
    /// disk.
    #[arg(short, long, value_name = "REF")]
    bundle: Option<String>,
    /// Push the files as a generic image instead (imgpkg's -i): no bundle label, and no
    /// .imgpkg directory among them.
    #[arg(short, long, value_name = "REF", conflicts_with = "lock_output")]
    image: Option<String>,
    /// Directory (or file) to push (repeatable); one of them must hold .imgpkg/images.yml.
    #[arg(short, long, required_unless_present = "all", conflicts_with = "all")]
    file: Vec<PathBuf>,
    /// With --all ROOT: each package's tree (synced and locked) is pushed as its bundle,
    /// tagged with its version, under its PackageSource's versionPolicy.
    #[command(flatten)]
    all: super::all::AllArgs,
    /// Write an imgpkg BundleLock (the pushed digest and tag) here.
    #[arg(long, value_name = "FILE")]
    lock_output: Option<PathBuf>,
    /// Also point this tag at the bundle (repeatable).
    #[arg(long = "additional-tag", value_name = "TAG")]
    additional_tags: Vec<String>,
    /// Path relative to an input directory left out of the bundle (repeatable).
    #[arg(long, value_name = "PATH", default_value = ".git")]
    file_exclusion: Vec<String>,
    /// Set labels on the bundle's image config, as imgpkg: KEY=VALUE[,KEY=VALUE] (repeatable).
    #[arg(short, long, value_name = "KEY=VALUE", value_delimiter = ',', value_parser = label)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    signing: super::sign::SigningArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `push --all ROOT`: the push stage of every package under ROOT, as `release` runs it.
fn push_all(
    args: &PushArgs,
    root: &std::path::Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    let Some(packages) = super::all::select(root, &args.all)? else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let signing = args.signing.load()?;
    let signing = &signing;
    let ok = runtime.block_on(super::all::run(
        packages,
        args.all.jobs,
        |found| async move {
            let result = async {
                let spec = found.spec(args.all.repository_prefix.as_deref())?;
                super::all::bundle_repository(&found, &spec)?;
                let dir = found.dir();
                let output = found.output_dir();
                // Pushing runs no upstream and renders nothing: helm is not needed.
                let prepared = super::release::Prepared::new(
                    &dir,
                    &spec,
                    &output,
                    &args.registry,
                    None,
                    std::path::Path::new("helm"),
                    super::sign::for_spec(signing.as_ref(), &spec)?,
                )?;
                let contents = prepared.previous.clone().unwrap_or_default();
                let input = prepared.input(None, None, false);
                crate::pipeline::push_stage(&input, &contents)
                    .await
                    .map_err(|e| super::release::stage_failed(&e))
            }
            .await;
            super::all::Ran::of(
                &found,
                result.map(|(version, pushed)| (version, pushed.image)),
            )
        },
    ));
    Ok(super::all::exit_code(ok))
}

pub(super) fn run(
    args: &PushArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    match &args.all.all {
        Some(root) => push_all(args, root, runtime),
        None => push_one(args, runtime).map(|()| std::process::ExitCode::SUCCESS),
    }
}

fn push_one(args: &PushArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let (flag, target) = match (&args.bundle, &args.image) {
        (Some(bundle), _) => ("--bundle", bundle),
        (None, Some(image)) => ("--image", image),
        (None, None) => anyhow::bail!("push needs --bundle (-b) or --image (-i)"),
    };
    let location = Location::parse(target)?;
    if location.digest().is_some() {
        anyhow::bail!("{flag} {target}: push needs a tag (REPO:TAG), not a digest");
    }
    let registry = args.registry.registry(registry_host(&location))?;
    let tag = location.tag().map(str::to_owned);
    let tags: Vec<String> = tag.iter().chain(&args.additional_tags).cloned().collect();
    let verbose = std::io::stderr().is_terminal();

    let started = Instant::now();
    let options = BuildOptions {
        exclude: args.file_exclusion.clone(),
        labels: args.labels.iter().cloned().collect(),
        plain_image: args.image.is_some(),
    };
    let cache = bundle::LayerCache::user_default();
    let built = bundle::build_with_cache(&args.file, &options, cache.as_ref())?;
    if verbose {
        let stats = built.stats();
        eprintln!(
            "packsmith: bundled {} files in {} directories ({} of tar, {} gzip'd) in {:.2?}",
            stats.files,
            stats.dirs,
            human(stats.tar_size),
            human(built.size()),
            started.elapsed()
        );
    }

    let progress = |event: &PushEvent| match event {
        PushEvent::BlobExists { digest, size } => {
            eprintln!("packsmith: {digest} ({}) already there", human(*size));
        }
        PushEvent::Uploading { digest, size } => {
            eprintln!("packsmith: uploading {digest} ({})", human(*size));
        }
        PushEvent::Uploaded { digest, .. } => eprintln!("packsmith: uploaded {digest}"),
        PushEvent::Tagged { tag } => eprintln!("packsmith: tagged {tag}"),
        PushEvent::Retrying { what, error, delay } => {
            eprintln!("packsmith: {what} failed ({error}); retrying in {delay:.1?}");
        }
    };
    let push_options = PushOptions {
        progress: verbose.then_some(&progress as &(dyn Fn(&PushEvent) + Send + Sync)),
        ..PushOptions::default()
    };
    // Signed before any tag names it, as the pipeline signs.
    if let (Some(key), Location::Registry(reference)) = (args.signing.load()?, &location) {
        let signed = runtime.block_on(crate::registry::cosign::sign(
            &registry,
            reference,
            built.digest(),
            &key,
        ))?;
        if verbose {
            eprintln!(
                "packsmith: signed {} ({})",
                built.digest(),
                signed.signature()
            );
        }
    }
    let pushed = runtime.block_on(bundle::push(
        &registry,
        &built,
        &location,
        &tags,
        &push_options,
    ))?;

    if let Some(path) = &args.lock_output {
        let lock = BundleLock::new(&pushed.image, tag.unwrap_or_default());
        crate::lock::write_atomically(path, lock.to_yaml()?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if verbose {
        eprintln!(
            "packsmith: done in {:.2?} ({} blobs uploaded, {} tags written)",
            started.elapsed(),
            pushed.uploaded.len(),
            pushed.written_tags.len()
        );
    }
    println!("Pushed '{}'", pushed.image);
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `KEY=VALUE` of `--labels`; `dev.carvel.imgpkg.bundle` is reserved, as imgpkg's
/// `validateFlags` says (`pkg/imgpkg/cmd/push.go`).
fn label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("{text:?}: the label has no key"));
    }
    if key == bundle::image::BUNDLE_LABEL {
        return Err(format!(
            "label '{key}' is reserved and cannot be overridden; use a different key"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::{human, label};

    #[test]
    fn labels_are_key_value_and_never_the_bundle_label() {
        assert_eq!(label("team=a=b"), Ok(("team".to_owned(), "a=b".to_owned())));
        assert_eq!(label("empty="), Ok(("empty".to_owned(), String::new())));
        assert!(label("novalue").is_err());
        assert!(label("=v").is_err());
        assert!(label("dev.carvel.imgpkg.bundle=false").is_err());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
