//! Registry errors, classified so callers can decide between retrying, reporting an
//! authentication problem (a Stalled condition), or a missing image.

use oci_client::errors::{OciDistributionError, OciErrorCode};

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
    /// Wraps an oci-client error for `operation` on `reference`.
    pub fn request(
        operation: &'static str,
        reference: impl ToString,
        err: &OciDistributionError,
    ) -> Self {
        Self::Request {
            operation,
            reference: reference.to_string(),
            class: classify(err),
            message: describe(err),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Request { class, .. } => *class,
            Self::InvalidReference { .. } | Self::Config(_) | Self::TooLarge { .. } => {
                ErrorClass::Permanent
            }
            Self::Credentials { .. } => ErrorClass::Auth,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    pub fn is_auth(&self) -> bool {
        self.class() == ErrorClass::Auth
    }
}

/// Classifies an oci-client error.
pub fn classify(err: &OciDistributionError) -> ErrorClass {
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ErrorClass::Auth,
        OciDistributionError::ImageManifestNotFoundError(_) => ErrorClass::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ErrorClass::Auth
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                ErrorClass::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                ErrorClass::Retryable
            } else {
                ErrorClass::Permanent
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => ErrorClass::Auth,
            404 => ErrorClass::NotFound,
            408 | 429 | 500..=599 => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        },
        OciDistributionError::RequestError(e) => {
            if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() {
                ErrorClass::Retryable
            } else {
                match e.status().map(|s| s.as_u16()) {
                    Some(401 | 403) => ErrorClass::Auth,
                    Some(404) => ErrorClass::NotFound,
                    Some(429 | 500..=599) => ErrorClass::Retryable,
                    _ => ErrorClass::Permanent,
                }
            }
        }
        OciDistributionError::IoError(_) => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}

/// A one-line description including the causes reqwest keeps in its source chain (where
/// "connection refused" lives), without URLs' query strings, which can carry tokens.
fn describe(err: &OciDistributionError) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    strip_query_strings(&parts.join(": "))
}

fn strip_query_strings(text: &str) -> String {
    text.split(' ')
        .map(|word| match word.find('?') {
            Some(i) if word.starts_with("http") => &word[..i],
            _ => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "https://r.io/v2/".into(),
            message: String::new(),
        };
        assert_eq!(classify(&server(503)), ErrorClass::Retryable);
        assert_eq!(classify(&server(429)), ErrorClass::Retryable);
        assert_eq!(classify(&server(403)), ErrorClass::Auth);
        assert_eq!(classify(&server(404)), ErrorClass::NotFound);
        assert_eq!(classify(&server(400)), ErrorClass::Permanent);
        assert_eq!(
            classify(&OciDistributionError::UnauthorizedError { url: "u".into() }),
            ErrorClass::Auth
        );
    }

    #[test]
    fn descriptions_drop_query_strings() {
        let s = strip_query_strings("GET https://r.io/token?scope=x&secret=y failed");
        assert_eq!(s, "GET https://r.io/token failed");
    }
}
