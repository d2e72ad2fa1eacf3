//! Registry answers turned into [`RegistryError`]s a person can act on, and bodies read
//! within a cap.

use bytes::Bytes;
use reqwest::StatusCode;

use crate::registry::egress::Denied;
use crate::registry::{ErrorClass, RegistryAuth, RegistryError};

/// The body of `response`, refused once it passes `limit` bytes (by its Content-Length up
/// front, or while it streams in when the length is absent or lies).
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    what: &'static str,
    url: &str,
) -> Result<Bytes, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        what,
        url: url.to_owned(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(
        response
            .content_length()
            .map_or(0, |len| usize::try_from(len).unwrap_or(0)),
    );
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error("GET", url, &e))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// `errors[].code: message` of a distribution error body.
pub(super) fn error_codes(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Envelope>(body)
        .map(|envelope| {
            envelope
                .errors
                .iter()
                .map(|e| format!("{} ({})", e.code, e.message))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub(super) fn request_error(
    operation: &'static str,
    url: &str,
    class: ErrorClass,
    message: String,
) -> RegistryError {
    RegistryError::Request {
        operation,
        reference: url.to_owned(),
        class,
        message,
    }
}

pub(super) fn status_error(
    operation: &'static str,
    url: &str,
    status: StatusCode,
    auth: &RegistryAuth,
    context: &str,
) -> RegistryError {
    let class = match status.as_u16() {
        401 | 403 => ErrorClass::Auth,
        404 => ErrorClass::NotFound,
        408 | 429 | 500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    };
    let hint = match (class, auth) {
        (ErrorClass::Auth, RegistryAuth::Anonymous) => {
            "; no credentials are configured for this host (docker config.json or a \
             dockerconfigjson Secret)"
        }
        (ErrorClass::Auth, _) => "; the configured credentials were refused",
        _ => "",
    };
    let context = if context.is_empty() {
        String::new()
    } else {
        format!(" {context}")
    };
    request_error(operation, url, class, format!("{status}{context}{hint}"))
}

pub(super) fn transport_error(
    operation: &'static str,
    url: &str,
    error: &reqwest::Error,
) -> RegistryError {
    if let Some(denied) = denied(error) {
        // The egress policy: retrying reaches the same address.
        return RegistryError::Denied(denied);
    }
    // reqwest keeps the useful part ("Connection refused") in the source chain.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    let class = if error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
    {
        ErrorClass::Retryable
    } else {
        ErrorClass::Permanent
    };
    request_error(operation, url, class, message)
}

/// The egress policy's refusal of the connection, when that is what failed (it is in the
/// source chain, from the resolver or the redirect policy).
pub(in crate::registry) fn denied(error: &reqwest::Error) -> Option<Denied> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return Some(denied.clone());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_name_their_codes() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{}}]}"#;
        assert_eq!(
            error_codes(body),
            "NAME_UNKNOWN (repository name not known to registry)"
        );
        assert_eq!(error_codes(b"not json"), "");
    }
}
