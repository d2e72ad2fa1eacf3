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

use gix::bstr::{BStr, ByteSlice as _};
use gix::objs::signature::Format;
use pgp::composed::{Deserializable as _, DetachedSignature, SignedPublicKey};

use super::FetchError;
use super::options::Secret;

/// Keys read from one Secret at most.
const MAX_KEYS: usize = 64;
/// A git signature is a few KiB; an armored one larger than this is not parsed.
const MAX_SIGNATURE_BYTES: usize = 64 << 10;

/// The keys a git content's signatures must verify with.
pub(super) struct Keyring {
    pgp: Vec<SignedPublicKey>,
    ssh: Vec<ssh_key::PublicKey>,
}

impl Keyring {
    /// Every key of every value of `secret` (named `name` in messages).
    pub(super) fn from_secret(name: &str, secret: &Secret) -> Result<Self, FetchError> {
        let problem = |problem: String| FetchError::Secret {
            name: name.to_owned(),
            problem,
        };
        let mut keyring = Keyring {
            pgp: Vec::new(),
            ssh: Vec::new(),
        };
        for (key, value) in &secret.data {
            let text = std::str::from_utf8(value).map_err(|_| {
                problem(format!("{key:?} is not text (armored OpenPGP or SSH keys)"))
            })?;
            // vendir splits the values on armor headers: one value may hold several keys.
            for block in text.split("-----BEGIN ").skip(1) {
                let armored = format!("-----BEGIN {block}");
                let (public, _) =
                    SignedPublicKey::from_armor_single(armored.as_bytes()).map_err(|e| {
                        problem(format!(
                            "{key:?}: an armored block is not an OpenPGP public key: {e}"
                        ))
                    })?;
                public.verify_bindings().map_err(|e| {
                    problem(format!(
                        "{key:?}: an OpenPGP key's self-signatures do not verify: {e}"
                    ))
                })?;
                keyring.pgp.push(public);
            }
            for line in text.lines().map(str::trim) {
                if line.starts_with("ssh-") || line.starts_with("ecdsa-") || line.starts_with("sk-")
                {
                    let public = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
                        problem(format!("{key:?}: an SSH public key cannot be read: {e}"))
                    })?;
                    keyring.ssh.push(public);
                }
            }
            if keyring.pgp.len() + keyring.ssh.len() > MAX_KEYS {
                return Err(problem(format!("more than {MAX_KEYS} public keys")));
            }
        }
        if keyring.pgp.is_empty() && keyring.ssh.is_empty() {
            return Err(problem(
                "no public key: add armored OpenPGP public keys (gpg --armor --export) or SSH \
                 public keys (ssh-ed25519 AAAA…)"
                    .to_owned(),
            ));
        }
        Ok(keyring)
    }

    /// Whether `signature` over `signed` is by one of the keys; `Err` says why not.
    fn verify(&self, signature: &BStr, signed: &[u8]) -> Result<(), String> {
        if signature.len() > MAX_SIGNATURE_BYTES {
            return Err(format!("a signature of {} bytes", signature.len()));
        }
        match Format::from_signature(signature) {
            Some(Format::OpenPgp) => {
                let (signature, _) = DetachedSignature::from_armor_single(signature.as_bytes())
                    .map_err(|e| format!("an OpenPGP signature that cannot be read: {e}"))?;
                let by_key = self.pgp.iter().any(|key| {
                    signature.verify(key, signed).is_ok()
                        || key
                            .public_subkeys
                            .iter()
                            .any(|subkey| signature.verify(subkey, signed).is_ok())
                });
                by_key.then_some(()).ok_or_else(|| {
                    "an OpenPGP signature by none of the keys (or over other content)".to_owned()
                })
            }
            Some(Format::Ssh) => {
                let text = signature
                    .to_str()
                    .map_err(|_| "an SSH signature that is not text".to_owned())?;
                let signature: ssh_key::SshSig = text
                    .parse()
                    .map_err(|e| format!("an SSH signature that cannot be read: {e}"))?;
                let by_key = self
                    .ssh
                    .iter()
                    .any(|key| key.verify("git", signed, &signature).is_ok());
                by_key.then_some(()).ok_or_else(|| {
                    "an SSH signature by none of the keys (or over other content)".to_owned()
                })
            }
            _ => Err("a signature of a kind that is not verified (X.509)".to_owned()),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const SSH_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINfhEq+6EayPHURL38O6FX0HN3P9yQB6jI7H0Eg3Xtqn t";

    fn secret(values: &[(&str, &str)]) -> Secret {
        Secret {
            data: values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn keyrings_say_what_is_wrong_with_a_secret() {
        let e = Keyring::from_secret("keys", &secret(&[("a", "hello")]))
            .err()
            .expect("no key");
        assert!(e.to_string().contains("no public key"), "{e}");
        let e = Keyring::from_secret(
            "keys",
            &secret(&[("a", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64\n-----END PGP PUBLIC KEY BLOCK-----\n")]),
        )
        .err()
        .expect("a broken block");
        assert!(e.to_string().contains("not an OpenPGP public key"), "{e}");
        let many = vec![SSH_KEY; MAX_KEYS + 1].join("\n");
        let e = Keyring::from_secret("keys", &secret(&[("a", &many)]))
            .err()
            .expect("too many");
        assert!(e.to_string().contains("more than 64"), "{e}");
        let keyring = Keyring::from_secret("keys", &secret(&[("ssh", SSH_KEY)])).unwrap();
        assert_eq!(keyring.ssh.len(), 1);
    }

    #[test]
    fn signatures_of_unknown_kinds_or_sizes_are_refused() {
        let keyring = Keyring::from_secret("keys", &secret(&[("ssh", SSH_KEY)])).unwrap();
        let e = keyring
            .verify(BStr::new("-----BEGIN SIGNED MESSAGE-----\n"), b"x")
            .unwrap_err();
        assert!(e.contains("not verified"), "{e}");
        let huge = format!(
            "-----BEGIN SSH SIGNATURE-----\n{}",
            "A".repeat(MAX_SIGNATURE_BYTES)
        );
        assert!(keyring.verify(BStr::new(&huge), b"x").is_err());
        let e = keyring
            .verify(
                BStr::new("-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"),
                b"x",
            )
            .unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
