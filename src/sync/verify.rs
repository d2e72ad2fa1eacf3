//! `verify` of registry sources: an upstream's cosign signature, checked against the digest
//! that will be fetched (never a tag read twice), before any of its content is. The keys are
//! every `*.pub` entry of the Secret `verify.secretRef` names — Flux's convention for its
//! OCIRepository and HelmChart `verify`.

use super::{Context, FetchError};
use crate::carvel::vendir::{SourceVerification, VerificationProvider};
use crate::registry::cosign::{self, VerificationKey};
use crate::registry::{Reference, Registry};

/// Public keys read from one Secret at most: a Secret of thousands of keys is not a keyring.
const MAX_KEYS: usize = 64;

/// Checks `verification` for the manifest `digest` of `reference`'s repository.
pub(crate) async fn cosign_signature(
    ctx: &Context<'_>,
    verification: &SourceVerification,
    registry: &Registry,
    reference: &Reference,
    digest: &str,
) -> Result<(), FetchError> {
    if verification.provider != VerificationProvider::Cosign {
        return Err(FetchError::NotSupported(
            "verify.provider helm for an OCI artifact (helm verifies the .prov of a chart from \
             an HTTP repository; use cosign here)"
                .to_owned(),
        ));
    }
    let keys = keys(ctx, verification)?;
    let pinned = reference.clone_with_digest(digest.to_owned());
    match cosign::verify(registry, &pinned, &keys).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_verification_failure() => Err(FetchError::Verification(format!(
            "{e} (keys of Secret {:?})",
            verification
                .secret_ref
                .as_ref()
                .map(|r| r.name.as_str())
                .unwrap_or_default()
        ))),
        Err(cosign::CosignError::Registry { what, source }) => Err(FetchError::Request {
            url: what,
            cause: source.to_string(),
        }),
        Err(e) => Err(FetchError::Verification(e.to_string())),
    }
}

/// Every `*.pub` key of the Secret `verification` names.
fn keys(
    ctx: &Context<'_>,
    verification: &SourceVerification,
) -> Result<Vec<VerificationKey>, FetchError> {
    let Some(secret_ref) = &verification.secret_ref else {
        return Err(FetchError::NotSupported(
            "verify without secretRef (keyless cosign verification); name a Secret holding \
             cosign.pub"
                .to_owned(),
        ));
    };
    let secret = ctx.secret(&secret_ref.name)?;
    let problem = |problem: String| FetchError::Secret {
        name: secret_ref.name.clone(),
        problem,
    };
    let keys = secret
        .data
        .iter()
        .filter(|(name, _)| name.ends_with(".pub"))
        .take(MAX_KEYS + 1)
        .map(|(name, pem)| {
            VerificationKey::from_pem(pem).map_err(|e| problem(format!("key {name:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.len() > MAX_KEYS {
        return Err(problem(format!(
            "more than {MAX_KEYS} public keys; verify reads at most {MAX_KEYS}"
        )));
    }
    if keys.is_empty() {
        return Err(problem(
            "no key ending in .pub: add the signer's public key (e.g. cosign.pub)".to_owned(),
        ));
    }
    Ok(keys)
}
