//! The lock stage: find every container image the manifests of a package reference and pin
//! each to a digest in `.imgpkg/images.yml`, as kbld does (`kbld --imgpkg-lock-output`).
//!
//! 1. [`discover`] reads the tree: every YAML document, kbld configuration and ImagesLocks
//!    separated from manifests, references found by kbld's search rules; Helm charts are
//!    rendered by helm and their render is read instead of their templates ([`helm`]);
//! 2. [`resolve`] turns references into digests: overrides, digest references kept, tags
//!    looked up once each, concurrently, through mirrors, with retries;
//! 3. [`write_lock`] writes the ImagesLock byte for byte as kbld would; [`render_manifests`]
//!    gives the manifests with digests, kbld's default output.
//!
//! [`run`] runs the three for the CLI and the controller.

mod discover;
mod error;
pub mod helm;
mod output;
mod reference;
mod resolve;
mod rules;
mod select;
mod yaml;

#[cfg(test)]
mod fixtures_test;

use std::path::{Path, PathBuf};

pub use crate::registry::RequestStats;
pub use discover::{
    BuildSource, Discovery, ImageMatcher, LockConfig, Manifest, Override, STDIN, discover,
    discover_rendered, find_charts,
};
pub use error::{Location, LockError};
pub use output::{
    Staged, Written, check_lock, render_manifests, rewrite_in_place, stage, write_atomically,
    write_lock,
};
pub use reference::url_repo;
pub use resolve::{Resolution, ResolveOptions, resolve};
pub use rules::{default_rule, effective_rules};
pub use yaml::YamlLimits;

use crate::registry::Registry;

/// The outcome of [`run`].
#[derive(Debug)]
pub struct Locked {
    pub discovery: Discovery,
    pub resolution: Resolution,
    /// Whether the lock file changed, when one was written.
    pub written: Option<Written>,
}

/// Discovers, resolves and (when `output` is given) writes the ImagesLock. With
/// [`ResolveOptions::offline`] (`--locked`) no registry is contacted and `output` must
/// already hold the result: it is checked, never written.
pub async fn run(
    paths: &[PathBuf],
    config: &LockConfig,
    registry: &Registry,
    options: &ResolveOptions,
    output: Option<&Path>,
) -> Result<Locked, LockError> {
    let discovery = discover(paths, config).await?;
    let resolution = resolve(&discovery, registry, options).await?;
    let written = output
        .map(|path| {
            if options.offline {
                check_lock(path, &resolution)
            } else {
                write_lock(path, &resolution)
            }
        })
        .transpose()?;
    Ok(Locked {
        discovery,
        resolution,
        written,
    })
}
