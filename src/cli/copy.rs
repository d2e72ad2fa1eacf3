//! `packsmith copy`: `imgpkg copy` — a bundle with its images, an image, or the images of a
//! lock, into another repository or a tar, and from such a tar into a repository.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use clap::{ArgGroup, Args};

use super::registry::RegistryArgs;
use crate::bundle::{self, CopyEvent, CopyOptions, CopySource, CopyTarget};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["bundle", "image", "lock", "tar"])))]
#[command(group(ArgGroup::new("destination").required(true).args(["to_repo", "to_tar"])))]
pub(super) struct CopyArgs {
    /// Bundle to copy with every image it locks (nested bundles too): REPO:TAG or REPO@sha256:….
    #[arg(short, long, value_name = "REF")]
    bundle: Option<String>,
    /// Image (or index) to copy.
    #[arg(short, long, value_name = "REF")]
    image: Option<String>,
    /// A BundleLock (its bundle) or an ImagesLock (each of its images) to copy.
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// A tar written by --to-tar (packsmith's or imgpkg's) to copy into --to-repo.
    #[arg(long, value_name = "FILE", requires = "to_repo")]
    tar: Option<PathBuf>,
    /// Repository to copy into (REGISTRY/PATH, no tag): every image by digest, tagged
    /// sha256-<hex>.imgpkg, and the bundle under its own tag.
    #[arg(long, value_name = "REPO")]
    to_repo: Option<String>,
    /// Write everything into this tar instead, for a registry without network access.
    #[arg(long, value_name = "FILE")]
    to_tar: Option<PathBuf>,
    /// With --to-tar: keep what an interrupted run wrote and add the rest. (A registry
    /// target always skips the blobs and manifests it holds.)
    #[arg(long)]
    resume: bool,
    /// Write the copy's lock here: a BundleLock naming the copied bundle, or an ImagesLock
    /// naming the copied images.
    #[arg(long, value_name = "FILE", conflicts_with = "to_tar")]
    lock_output: Option<PathBuf>,
    /// Also copy each image's cosign signature, attestations and SBOM
    /// (sha256-<hex>.sig|.att|.sbom), when present.
    #[arg(long)]
    cosign_signatures: bool,
    /// Copy a package repository bundle with only the packages whose version matches (e.g.
    /// ">=1.2.0, <2"): the repository bundle is rebuilt with those packages and gets a new
    /// digest.
    #[arg(long, value_name = "CONSTRAINT", value_parser = version_req)]
    version_constraint: Option<semver::VersionReq>,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn version_req(s: &str) -> Result<semver::VersionReq, String> {
    semver::VersionReq::parse(s).map_err(|e| format!("not a semver constraint: {e}"))
}

pub(super) fn run(args: &CopyArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let source = match (&args.bundle, &args.image, &args.lock, &args.tar) {
        (Some(b), ..) => CopySource::Bundle(b.clone()),
        (_, Some(i), ..) => CopySource::Image(i.clone()),
        (_, _, Some(l), _) => CopySource::Lock(l.clone()),
        (_, _, _, Some(t)) => CopySource::Tar(t.clone()),
        _ => anyhow::bail!("one of -b, -i, --lock or --tar is required"),
    };
    let target = match (&args.to_repo, &args.to_tar) {
        (Some(repo), _) => CopyTarget::Repo(repo.clone()),
        (_, Some(tar)) => CopyTarget::Tar(tar.clone()),
        _ => anyhow::bail!("one of --to-repo or --to-tar is required"),
    };
    if args.resume && args.to_tar.is_none() {
        eprintln!(
            "packsmith: --resume has no effect with --to-repo: a registry copy always skips \
             what the repository holds"
        );
    }
    // --registry-username/--registry-password go to the destination, whose credentials a
    // CI job is most likely to be handed.
    let host = args
        .to_repo
        .as_deref()
        .and_then(|r| r.split('/').next())
        .filter(|h| h.contains(['.', ':']) || *h == "localhost");
    let mut options = args.registry.options(host)?;
    options.max_concurrency = args.concurrency.max(1);
    let registry = crate::registry::Registry::new(options)?;

    let bars = std::io::stderr().is_terminal().then(Bars::new);
    let copy_options = CopyOptions {
        cosign_signatures: args.cosign_signatures,
        resume: args.resume,
        version_constraint: args.version_constraint.clone(),
        progress: bars.as_ref().map(Bars::sink),
        ..CopyOptions::default()
    };
    let started = Instant::now();
    let copied = runtime.block_on(bundle::copy(
        &registry,
        &registry,
        &source,
        &target,
        &copy_options,
    ))?;
    if let Some(bars) = &bars {
        bars.finish();
    }
    let w = &copied.written;
    for (from, to) in &copied.images {
        println!("copied {from} -> {to}");
    }
    if let Some((image, tag)) = &copied.bundle {
        match tag {
            Some(tag) => println!("bundle {image} (tag {tag})"),
            None => println!("bundle {image}"),
        }
    }
    println!(
        "{} blobs sent ({}), {} mounted, {} already there; {} manifests written, {} already \
         there; {} requests to the target, in {:.1}s",
        w.blobs_sent,
        human_bytes(w.bytes_sent),
        w.blobs_mounted,
        w.blobs_present,
        w.manifests_written,
        w.manifests_present,
        w.target_requests,
        started.elapsed().as_secs_f64()
    );
    if let (Some(path), Some(lock)) = (&args.lock_output, &copied.lock) {
        crate::lock::write_atomically(path, lock.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Blobs smaller than this get no bar of their own.
const LARGE_BLOB: u64 = 4 << 20;

/// Progress on a terminal: one bar for every byte of the copy, one per large blob in flight.
struct Bars {
    multi: indicatif::MultiProgress,
    total: indicatif::ProgressBar,
    blobs: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Bars {
    fn new() -> Arc<Self> {
        let multi = indicatif::MultiProgress::new();
        let total = multi.add(indicatif::ProgressBar::new(0));
        total.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_message("copying");
        Arc::new(Bars {
            multi,
            total,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    fn sink(self: &Arc<Self>) -> crate::bundle::CopyProgress {
        let bars = Arc::clone(self);
        Arc::new(move |event: &CopyEvent| bars.event(event))
    }

    fn event(&self, event: &CopyEvent) {
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            CopyEvent::Found {
                manifests, bytes, ..
            } => {
                self.total.set_length(*bytes);
                self.total.set_message(format!("{manifests} images"));
            }
            CopyEvent::BlobPresent { size, .. } => self.total.inc(*size),
            CopyEvent::BlobSending { digest, size } if *size >= LARGE_BLOB => {
                let bar = self.multi.add(indicatif::ProgressBar::new(*size));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:>12} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(short(digest));
                blobs.insert(digest.clone(), bar);
            }
            CopyEvent::BlobProgress { digest, sent } => {
                if let Some(bar) = blobs.get(digest) {
                    bar.set_position(*sent);
                }
            }
            CopyEvent::BlobSent { digest, size, .. } => {
                self.total.inc(*size);
                if let Some(bar) = blobs.remove(digest) {
                    bar.finish_and_clear();
                }
            }
            CopyEvent::Tagged { reference } => {
                let _ = self.multi.println(format!("tagged {reference}"));
            }
            _ => {}
        }
    }

    fn finish(&self) {
        self.total.finish_and_clear();
    }
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overall bar counts every byte, present or sent; a large blob has a bar of its own
    /// while it is in flight.
    #[test]
    fn bars_follow_the_copy() {
        let bars = Bars::new();
        let sink = bars.sink();
        let big = "sha256:big".to_owned();
        sink(&CopyEvent::Found {
            manifests: 2,
            blobs: 2,
            bytes: 10 + LARGE_BLOB,
        });
        sink(&CopyEvent::BlobPresent {
            digest: "sha256:small".to_owned(),
            size: 10,
        });
        sink(&CopyEvent::BlobSending {
            digest: big.clone(),
            size: LARGE_BLOB,
        });
        sink(&CopyEvent::BlobProgress {
            digest: big.clone(),
            sent: 1024,
        });
        let in_flight = bars.blobs.lock().unwrap().get(&big).map(|b| b.position());
        assert_eq!(in_flight, Some(1024));
        sink(&CopyEvent::BlobSent {
            digest: big,
            size: LARGE_BLOB,
            mounted: false,
        });
        assert!(bars.blobs.lock().unwrap().is_empty());
        assert_eq!(bars.total.position(), 10 + LARGE_BLOB);
        assert_eq!(bars.total.length(), Some(10 + LARGE_BLOB));
    }
}
