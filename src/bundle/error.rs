//! What can go wrong building, pushing and pulling a bundle.

use std::path::PathBuf;

use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A local file could not be read or written; `path` says which.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The inputs do not make an imgpkg bundle (no or several `.imgpkg`, a bad images.yml, …).
    #[error("not a valid bundle: {0}")]
    Invalid(String),

    /// Something the bundle would contain is not a regular file or directory. imgpkg refuses
    /// these too: a symlink could point outside the bundle, and a pulled tree would differ
    /// from the pushed one.
    #[error(
        "{} is a {kind}, not a regular file: bundles hold only regular files and directories \
         (replace the {kind} with a copy of what it points to, or remove it)",
        path.display()
    )]
    NotRegular { path: PathBuf, kind: &'static str },

    /// A file changed size while it was being archived.
    #[error("{} changed while it was being archived (expected {expected} bytes)", path.display())]
    Changed { path: PathBuf, expected: u64 },

    /// The tree no longer gives the layer digest recorded for it: a file changed between the
    /// build (from the layer cache) and the upload that needed the layer's bytes.
    #[error(
        "the files under {} changed while the bundle was being pushed; push again",
        path.display()
    )]
    TreeChanged { path: PathBuf },

    /// `-b`/`--bundle` or an `oci-layout:` target could not be understood.
    #[error("invalid bundle reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },

    /// The registry refused or failed a request (after retries, when retrying could help).
    #[error(transparent)]
    Registry(#[from] RegistryError),

    /// What was fetched is not what its digest promises, or not an imgpkg bundle.
    #[error("{reference}: {reason}")]
    Content { reference: String, reason: String },
    /// A bundle that passed every digest check but would cost more than a limit allows.
    #[error(
        "{reference}: the layer holds more {what} than the limit of {limit}; raise {flag} if \
         the bundle is trusted"
    )]
    Limit {
        reference: String,
        what: &'static str,
        limit: u64,
        flag: &'static str,
    },

    /// A pulled layer holds an entry that would land outside the output directory.
    #[error("{reference}: refusing unsafe path {path:?} in the bundle layer: {reason}")]
    UnsafePath {
        reference: String,
        path: String,
        reason: &'static str,
    },
}

impl BundleError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BundleError::Io {
            action,
            path,
            source,
        }
    }

    /// Whether retrying the whole operation later may succeed (a registry that was down).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BundleError::Registry(e) if e.is_retryable())
    }

    /// Whether the registry refused the credentials.
    pub fn is_auth(&self) -> bool {
        matches!(self, BundleError::Registry(e) if e.is_auth())
    }

    /// Whether the operator's egress policy refused the registry's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, BundleError::Registry(e) if e.is_denied())
    }
}
