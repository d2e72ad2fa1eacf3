//! imgpkg bundles: build one from a directory, push it to a registry or an OCI image layout,
//! pull one back into a directory.
//!
//! A bundle is an image with one gzip'd tar layer of the directory and the config label
//! `dev.carvel.imgpkg.bundle`, compatible with what `imgpkg push` produces (imgpkg's
//! `pkg/imgpkg/image/tar_image.go` and `pkg/imgpkg/bundle/`): the tar is byte for byte Go's `archive/tar` encoding of imgpkg's
//! `filepath.Walk`, with owner-only modes and zero timestamps and owners, so the same tree
//! always gives the same diff_id as imgpkg. The gzip stream is ours (level 1, like imgpkg's,
//! but zlib-rs rather than Go's encoder, and stored blocks for 1 MiB pieces level 1 cannot
//! shrink), so the layer digest is stable for a given packsmith
//! build and changes only if the compressor library does (it changed once already, from
//! miniz_oxide to zlib-rs, before 1.0). [`build_with_cache`] skips tar and gzip for a tree
//! whose files' metadata has not changed since its digests were recorded ([`LayerCache`]).
//!
//! ```no_run
//! # async fn example(registry: &packsmith::registry::Registry) -> Result<(), packsmith::bundle::BundleError> {
//! use packsmith::bundle::{self, BuildOptions, Location, PushOptions};
//! let built = bundle::build(&["config".into()], &BuildOptions::default())?;
//! let target = Location::parse("registry.example.com/packages/app:1.0.0")?;
//! let pushed = bundle::push(registry, &built, &target, &["1.0.0".into()], &PushOptions::default()).await?;
//! bundle::pull(registry, &Location::parse(&pushed.image)?, "out".as_ref()).await?;
//! # Ok(()) }
//! ```

mod build;
mod cache;
mod copy;
mod error;
mod gotar;
pub mod image;
mod layer;
mod layout;
mod pull;
mod push;
mod target;
mod tree;
mod untar;

pub use build::{BuildOptions, BuildStats, BuiltBundle, build, build_with_cache};
pub use cache::LayerCache;
pub use copy::{
    Copied, CopyEvent, CopyOptions, CopySource, CopyTarget, Progress as CopyProgress, WalkLimits,
    Written, copy,
};
pub use error::BundleError;
pub(crate) use pull::unpack_file;
pub use pull::{PullLimits, Pulled, pull, pull_with};
pub use push::{PushEvent, PushOptions, Pushed, digest_tag, push};
pub use target::{LAYOUT_PREFIX, LayoutRef, Location};
#[cfg(test)]
pub(crate) use untar::testing as untar_testing;
pub(crate) use untar::{CappedReader, entries as tar_entries, headers_too_large};
