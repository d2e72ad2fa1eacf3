//! Registry errors, classified so callers can decide between retrying, reporting an
//! authentication problem (a Stalled condition), or a missing image.

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("registry credentials from {source_name}: {reason}")]
    Credentials { source_name: String, reason: String },
    #[error("registry client configuration: {0}")]
    Config(String),
    /// A registry answer larger than packsmith reads: a manifest, token or error body past its
    /// cap, or a blob past the size its manifest declares.
    #[error("{what} from {url} is larger than {limit} bytes; refused")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: u64,
    },
    /// What a registry sent could not be written to local disk (full, or gone).
    #[error("writing {what} from {url} to disk: {message}")]
    Write {
        what: &'static str,
        url: String,
        message: String,
    },
    /// The operator's egress policy refused the address (`--deny-local-upstreams`,
    /// `--deny-upstream-cidrs`).
    #[error(transparent)]
    Denied(#[from] super::EgressDenied),
    /// A request to `reference` failed; `class` says whether retrying can help.
    #[error("{operation} {reference}: {message}")]
    Request {
        operation: &'static str,
        reference: String,
        class: ErrorClass,
        message: String,
    },
}

/// What a failed registry request means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection refused or reset, timeouts, 429 and 5xx: retry with backoff.
    Retryable,
    /// 401/403 or a token that could not be obtained: fix the credentials.
    Auth,
    /// The repository, tag or blob does not exist.
    NotFound,
    /// Anything else (a malformed manifest, a digest mismatch): retrying will not help.
    Permanent,
}

impl RegistryError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Request { class, .. } => *class,
            Self::InvalidReference { .. }
            | Self::Config(_)
            | Self::TooLarge { .. }
            | Self::Denied(_) => ErrorClass::Permanent,
            Self::Credentials { .. } => ErrorClass::Auth,
            // Our own disk: nothing the user changes fixes it, and space may come back.
            Self::Write { .. } => ErrorClass::Retryable,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    pub fn is_auth(&self) -> bool {
        self.class() == ErrorClass::Auth
    }

    /// Whether the operator's egress policy refused the registry's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied(_))
    }
}
