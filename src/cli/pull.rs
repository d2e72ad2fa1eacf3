//! `packsmith pull`: `imgpkg pull -b REF -o DIR`, the seed Makefile's get-package-config.

use std::path::PathBuf;

use clap::Args;

use super::registry::{RegistryArgs, registry_host};
use crate::bundle::{self, Location, PullLimits};

#[derive(Args, Debug)]
pub(super) struct PullArgs {
    /// Bundle to pull: REPO:TAG, REPO@sha256:…, or oci-layout:DIR[:TAG|@sha256:…].
    #[arg(short, long, value_name = "REF")]
    bundle: String,
    /// Directory to write; whatever it held is replaced once the pull has been verified. The
    /// working directory, its ancestors, the home directory and / are refused.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Most bytes of file content the bundle may unpack to.
    #[arg(long, default_value_t = PullLimits::default().max_bytes)]
    max_bytes: u64,
    /// Most files the bundle may unpack to (links, which are skipped, count too).
    #[arg(long, default_value_t = PullLimits::default().max_files)]
    max_files: u64,
    /// Most directories the bundle may unpack to.
    #[arg(long, default_value_t = PullLimits::default().max_dirs)]
    max_dirs: u64,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn run(args: &PullArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let location = Location::parse(&args.bundle)?;
    let registry = args.registry.registry(registry_host(&location))?;
    let limits = PullLimits {
        max_bytes: args.max_bytes,
        max_files: args.max_files,
        max_dirs: args.max_dirs,
    };
    let pulled = runtime.block_on(bundle::pull_with(
        &registry,
        &location,
        &args.output,
        &limits,
    ))?;
    for skipped in &pulled.skipped {
        eprintln!("packsmith: skipped link {skipped:?} (bundles carry only regular files)");
    }
    if pulled.skipped_links > pulled.skipped.len() {
        eprintln!(
            "packsmith: skipped {} more links",
            pulled.skipped_links - pulled.skipped.len()
        );
    }
    println!(
        "Pulled '{}' into {} ({} files)",
        pulled.image,
        args.output.display(),
        pulled.files
    );
    if pulled.relocated {
        println!(
            "Updated {}/.imgpkg/images.yml: its images were relocated with the bundle and are \
             taken from the bundle's repository",
            args.output.display()
        );
    }
    Ok(())
}
