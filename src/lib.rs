//! packsmith: turns declarative `PackageSource` resources into published Carvel packages.
//!
//! One library, two front ends: the controller (`packsmith controller`) and the CLI
//! (`packsmith sync|lock|push|…`) call the same stage functions.

pub mod api;
pub mod bundle;
pub mod carvel;
pub mod cli;
pub mod controller;
pub mod lock;
pub mod pipeline;
pub mod publish;
pub mod registry;
pub mod sync;

/// `$XDG_CACHE_HOME/packsmith/<name>`, else `~/.cache/packsmith/<name>`: where the CLI keeps
/// what it may reuse between runs (bundle layers, sync downloads). Never beside the user's
/// files, where it would end up inside the next push.
pub(crate) fn user_cache_dir(name: &str) -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("packsmith").join(name))
}
