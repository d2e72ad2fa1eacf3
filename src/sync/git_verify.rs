//! vendir's `git.verification`: the signature of what a git content checks out, verified
//! before any file is written. As vendir (`pkg/vendir/fetch/git/verification.go`):
//! - the keys are every value of the Secret `publicKeysSecretRef` names, whatever its key;
//! - a ref naming an annotated tag has the **tag's** signature verified, any other ref (a
//!   branch, a commit, a lightweight tag) the **commit's**.
//!
//! Besides vendir's OpenPGP keys (armored blocks), a value may hold SSH public keys
//! (`authorized_keys` lines) for signatures git makes with `gpg.format=ssh` (namespace `git`,
//! as git and Flux verify them). git's signed bytes are the object without its signature
//! (`Documentation/technical/signature-format.txt`); gix gives exactly those.

use super::FetchError;
use super::keyring::Keyring;

/// Verifies what `reference` names: the annotated tag object `tag` when there is one, else
/// `commit`.
pub(super) fn verify(
    repo: &gix::Repository,
    keyring: &Keyring,
    reference: &str,
    tag: Option<gix::ObjectId>,
    commit: gix::ObjectId,
) -> Result<(), FetchError> {
    let failed = |what: String| FetchError::Verification(format!("{reference}: {what}"));
    let read = |id: gix::ObjectId| {
        repo.find_object(id)
            .map_err(|e| failed(format!("reading {id}: {e}")))
    };
    match tag {
        Some(tag) => {
            let object = read(tag)?;
            let (signature, signed) = gix::objs::TagRefIter::signature(&object.data)
                .ok_or_else(|| failed(format!("the tag {tag} is not signed")))?;
            keyring
                .verify(signature.data, &signed.to_bstring())
                .map_err(|why| failed(format!("the tag {tag} has {why}")))
        }
        None => {
            let object = read(commit)?;
            let (signature, signed) =
                gix::objs::CommitRefIter::signature(&object.data, commit.kind())
                    .map_err(|e| failed(format!("reading the commit {commit}: {e}")))?
                    .ok_or_else(|| failed(format!("the commit {commit} is not signed")))?;
            keyring
                .verify(signature.as_ref(), &signed.to_bstring())
                .map_err(|why| failed(format!("the commit {commit} has {why}")))
        }
    }
}
