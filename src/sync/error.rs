//! The sync stage's errors: [`SyncError`] for the stage, [`FetchError`] for one content.

use std::io;
use std::path::Path;

use std::path::PathBuf;
use std::time::Duration;

use super::{ArchiveError, FilterError};

/// A sync failure; the targets are untouched.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid vendir config: {0}")]
    Config(#[from] crate::carvel::Error),
    #[error("directory {directory:?}, contents {contents:?}: {kind} {upstream}: {cause}")]
    Contents {
        directory: String,
        contents: String,
        /// The source type (`git`, `http`, …).
        kind: &'static str,
        /// The upstream, credentials stripped.
        upstream: String,
        #[source]
        cause: Box<FetchError>,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why fetching one content failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not supported yet")]
    NotSupported(String),
    /// The upstream's signature did not verify (`verify`).
    #[error("signature verification failed: {0}")]
    Verification(String),
    /// The controller's egress policy refused the upstream's address.
    #[error(transparent)]
    Denied(#[from] crate::registry::EgressDenied),
    #[error("{0}")]
    Invalid(String),
    #[error("HTTP {status} from {url}")]
    Status { status: u16, url: String },
    #[error("HTTP {status} from {url}: authentication failed; check the credentials in secretRef")]
    Unauthorized { status: u16, url: String },
    #[error("request to {url} failed: {cause}")]
    Request { url: String, cause: String },
    #[error("checksum mismatch for {what}: expected sha256:{expected}, got sha256:{actual}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("download exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("git: {0}")]
    Git(String),
    #[error("ref {reference:?} not found on the remote{hint}")]
    UnknownRef { reference: String, hint: String },
    #[error("no version among {candidates} candidates matches {constraints:?}")]
    NoMatchingVersion {
        constraints: String,
        candidates: usize,
    },
    #[error("secret {name:?}: {problem}")]
    Secret { name: String, problem: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("--locked: {0}")]
    Locked(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
        move |source| FetchError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

pub(super) fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SyncError + 'a {
    move |source| SyncError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}
