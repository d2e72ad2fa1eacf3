//! The lock stage's errors. Each names what a user must look at: the file (and line or
//! document where known), the image reference as written, and the cause.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::registry::RegistryError;

/// Where in the input something was found: a file and the 1-based index of the YAML document
/// in it (after `List` expansion the index is still the source document's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub path: PathBuf,
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.path.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    // Causes are part of the message and not also `#[source]`s: the CLI prints the chain,
    // which would repeat them.
    #[error("reading {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// Checked before reading, so an oversized file costs no memory or time.
    #[error(
        "{}: {size} bytes exceeds the limit of {limit} bytes for one manifest file",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    #[error("{}{}: not valid YAML: {message}", path.display(), line_suffix(*line, *column))]
    Yaml {
        path: PathBuf,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },

    /// A document that parses but cannot be used: not a mapping, a `List` whose items are not
    /// objects, a kbld Config or ImagesLock that does not validate.
    #[error("{location}: {message}")]
    Document { location: Location, message: String },

    /// Configuration given outside the tree (CLI flags, `spec.images`).
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },

    /// Something kbld can do that packsmith does not (building images from `sources`): an
    /// error rather than a silently different lock.
    #[error("{origin}: {message}")]
    Unsupported { origin: String, message: String },

    #[error("image {reference:?} found in {location}: {message}")]
    Reference {
        reference: String,
        location: Location,
        message: String,
    },

    /// Resolving one image failed; `url` is what was resolved when an override changed it.
    #[error(
        "resolving image {reference:?}{} found in {location}: {cause}",
        via(reference, url)
    )]
    Resolve {
        reference: String,
        url: String,
        location: Location,
        /// Shared: one lookup can serve several references.
        cause: Arc<RegistryError>,
    },

    /// `--locked`: the reference is in no lock of the input nor pinned by digest, and
    /// looking it up is not allowed.
    #[error(
        "image {reference:?} found in {location} is not in the lock, and --locked forbids \
         looking it up (lock again without --locked)"
    )]
    NotLocked {
        reference: String,
        location: Location,
    },

    /// `--locked`: the lock at `path` is missing or differs from what the input locks to
    /// (an entry no manifest uses any more, or one a lock elsewhere in the input supplied).
    #[error(
        "{}: the lock {}, and --locked forbids changing it (lock again without --locked)",
        path.display(),
        if *missing { "does not exist" } else { "would change" }
    )]
    LockWouldChange { path: PathBuf, missing: bool },

    /// Every failure of a run, so one invocation reports all broken references.
    #[error("{} images could not be locked:\n- {}", .0.len(), join(.0))]
    Many(Vec<LockError>),

    /// A chart could not be rendered: helm's own message (template, line, `required` text).
    #[error("rendering the Helm chart {}: {message}", chart.display())]
    Helm { chart: PathBuf, message: String },

    #[error(
        "rendering the Helm chart {}: {}; install helm {} or pass --helm-binary (the \
         controller image ships it): packsmith locks what a chart renders, never its templates",
        chart.display(),
        missing_binary(binary),
        super::helm::HELM_VERSION
    )]
    HelmMissing { chart: PathBuf, binary: PathBuf },

    #[error("writing {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error(transparent)]
    Registry(#[from] RegistryError),

    #[error(transparent)]
    Carvel(#[from] crate::carvel::Error),
}

impl LockError {
    /// Several failures become one error; a single one stays itself.
    pub fn from_many(mut errors: Vec<LockError>) -> Option<LockError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(LockError::Many(errors)),
        }
    }

    /// Whether retrying later could help (the registry was unreachable or overloaded), as
    /// opposed to fixing the input or the credentials.
    pub fn is_retryable(&self) -> bool {
        match self {
            LockError::Resolve { cause, .. } => cause.is_retryable(),
            LockError::Many(errors) => errors.iter().all(LockError::is_retryable),
            _ => false,
        }
    }
}

impl LockError {
    /// Whether a registry refused the credentials (or wanted some): fix them, do not retry.
    pub fn is_auth(&self) -> bool {
        match self {
            LockError::Resolve { cause, .. } => cause.is_auth(),
            LockError::Registry(cause) => cause.is_auth(),
            LockError::Many(errors) => errors.iter().any(LockError::is_auth),
            _ => false,
        }
    }

    /// Whether the operator's egress policy refused a registry's address: no retry helps.
    pub fn is_denied(&self) -> bool {
        match self {
            LockError::Resolve { cause, .. } => cause.is_denied(),
            LockError::Registry(cause) => cause.is_denied(),
            LockError::Many(errors) => errors.iter().any(LockError::is_denied),
            _ => false,
        }
    }
}

fn line_suffix(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

fn missing_binary(binary: &std::path::Path) -> String {
    if binary.components().count() > 1 {
        format!("{} does not exist", binary.display())
    } else {
        format!("{} is not on PATH", binary.display())
    }
}

fn via(reference: &str, url: &str) -> String {
    if reference == url {
        String::new()
    } else {
        format!(" (overridden to {url:?})")
    }
}

fn join(errors: &[LockError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n- ")
}
