//! The public keys an upstream's signatures must verify with, from one Secret: armored
//! OpenPGP public keys (vendir reads every value of its `publicKeysSecretRef`, whatever the
//! key, split on armor headers) and SSH public keys (`authorized_keys` lines, for git's
//! `gpg.format=ssh`). Verifies git's detached signatures (`git_verify.rs`) and Helm's
//! clearsigned provenance files (`helm.rs`).

use gix::bstr::{BStr, ByteSlice as _};
use gix::objs::signature::Format;
use pgp::composed::{
    CleartextSignedMessage, Deserializable as _, DetachedSignature, SignedPublicKey,
};

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
    pub(super) fn verify(&self, signature: &BStr, signed: &[u8]) -> Result<(), String> {
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

    /// The text of a clearsigned OpenPGP message (a Helm `.prov`) signed by one of the OpenPGP
    /// keys; `Err` says why not.
    pub(super) fn verify_cleartext(&self, armored: &str) -> Result<String, String> {
        if armored.len() > MAX_SIGNATURE_BYTES {
            return Err(format!("a signed message of {} bytes", armored.len()));
        }
        let (message, _) = CleartextSignedMessage::from_string(armored)
            .map_err(|e| format!("not a clearsigned OpenPGP message: {e}"))?;
        let by_key = self.pgp.iter().any(|key| {
            message.verify(key).is_ok()
                || key
                    .public_subkeys
                    .iter()
                    .any(|subkey| message.verify(subkey).is_ok())
        });
        if !by_key {
            return Err("signed by none of the keys (or altered)".to_owned());
        }
        Ok(message.text().to_owned())
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
