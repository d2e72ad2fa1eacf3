//! cosign's key files (sigstore/cosign `pkg/cosign/keys.go`): `cosign.key` is PEM
//! `ENCRYPTED SIGSTORE PRIVATE KEY` (or the older `ENCRYPTED COSIGN PRIVATE KEY`) around the
//! JSON of go-securesystemslib's `encrypted` package — scrypt (N 2^15 or 2^16, r 8, p 1) and
//! NaCl secretbox around a PKCS#8 key; `cosign.pub` is PEM `PUBLIC KEY` (PKIX). The password
//! may be empty. The sigstore crate reads and writes both formats; this module bounds what it
//! is given and says in a person's words what is wrong with a key.

use sigstore::crypto::signing_key::{
    COSIGN_PRIVATE_KEY_PEM_LABEL, SIGSTORE_PRIVATE_KEY_PEM_LABEL, SigStoreKeyPair, SigStoreSigner,
    kdf,
};
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

use super::CosignError;
use crate::registry::sha256_digest;

/// A key file is a few hundred bytes; a larger one is not a key, and is not parsed.
const MAX_KEY_BYTES: usize = 16 << 10;

/// The schemes a cosign key pair signs with, by its type (`cosign generate-key-pair` writes
/// ECDSA P-256; `import-key-pair` brings the others).
const SCHEMES: [SigningScheme; 4] = [
    SigningScheme::ECDSA_P256_SHA256_ASN1,
    SigningScheme::ECDSA_P384_SHA384_ASN1,
    SigningScheme::ECDSA_P521_SHA512_ASN1,
    SigningScheme::ED25519,
];

/// A private key that signs, with its public half.
pub struct SigningKey {
    pair: SigStoreKeyPair,
    signer: SigStoreSigner,
    public: VerificationKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads `cosign.key` with its password. Costs one scrypt (64 MiB and a fraction of a
    /// second at cosign's current N): callers that read the same key again keep it.
    pub fn from_encrypted_pem(pem_bytes: &[u8], password: &[u8]) -> Result<Self, CosignError> {
        let bad = |why: String| CosignError::Key(why);
        if pem_bytes.len() > MAX_KEY_BYTES {
            return Err(bad(format!(
                "the private key is {} bytes, more than the {MAX_KEY_BYTES} a key takes",
                pem_bytes.len()
            )));
        }
        let block =
            pem::parse(pem_bytes).map_err(|e| bad(format!("the private key is not PEM: {e}")))?;
        if block.tag() != SIGSTORE_PRIVATE_KEY_PEM_LABEL
            && block.tag() != COSIGN_PRIVATE_KEY_PEM_LABEL
        {
            return Err(bad(format!(
                "the private key is PEM {:?}, not {SIGSTORE_PRIVATE_KEY_PEM_LABEL:?} or \
                 {COSIGN_PRIVATE_KEY_PEM_LABEL:?}: give a key written by `cosign \
                 generate-key-pair` or `packsmith generate-key-pair`",
                block.tag()
            )));
        }
        // The KDF's parameters are checked (only cosign's, a bound on scrypt's cost) before
        // the password is tried.
        let der = kdf::decrypt(block.contents(), password).map_err(|e| {
            bad(format!(
                "the private key cannot be decrypted ({e}): the password is wrong, or the \
                 key was not written by cosign (scrypt with N 32768 or 65536 is read)"
            ))
        })?;
        let pair = SigStoreKeyPair::from_der(&der).map_err(|e| {
            bad(format!(
                "the decrypted private key is not one cosign signs with: {e}"
            ))
        })?;
        Self::from_pair(pair)
    }

    /// A new ECDSA P-256 key, as `cosign generate-key-pair` makes.
    pub fn generate() -> Result<Self, CosignError> {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .map_err(|e| CosignError::Key(format!("generating a key: {e}")))?;
        let pair = signer
            .to_sigstore_keypair()
            .map_err(|e| CosignError::Key(format!("generating a key: {e}")))?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: SigStoreKeyPair) -> Result<Self, CosignError> {
        let signer = SCHEMES
            .iter()
            .find_map(|scheme| pair.to_sigstore_signer(scheme).ok())
            .ok_or_else(|| {
                CosignError::Key(
                    "the private key is not ECDSA (P-256, P-384, P-521) or Ed25519".to_owned(),
                )
            })?;
        let public = pair
            .public_key_to_pem()
            .map_err(|e| CosignError::Key(format!("the key's public half: {e}")))?;
        let public = VerificationKey::from_pem(public.as_bytes())?;
        Ok(Self {
            pair,
            signer,
            public,
        })
    }

    /// `cosign.key`: encrypted with `password` (may be empty), as cosign writes it.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, CosignError> {
        self.pair
            .private_key_to_encrypted_pem(password)
            .map(|pem| pem.to_string())
            .map_err(|e| CosignError::Key(format!("encrypting the private key: {e}")))
    }

    pub fn public(&self) -> &VerificationKey {
        &self.public
    }

    /// The ASN.1 DER signature of `message` (its SHA-256 for ECDSA P-256).
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CosignError> {
        self.signer
            .sign(message)
            .map_err(|e| CosignError::Key(format!("signing: {e}")))
    }
}

/// A public key signatures are verified with (`cosign.pub`).
pub struct VerificationKey {
    key: CosignVerificationKey,
    pem: String,
    fingerprint: String,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VerificationKey")
            .field(&self.fingerprint)
            .finish()
    }
}

impl VerificationKey {
    /// Reads a PEM `PUBLIC KEY` (PKIX), of any type cosign verifies with.
    pub fn from_pem(pem_bytes: &[u8]) -> Result<Self, CosignError> {
        let bad = |why: String| CosignError::Key(why);
        if pem_bytes.len() > MAX_KEY_BYTES {
            return Err(bad(format!(
                "the public key is {} bytes, more than the {MAX_KEY_BYTES} a key takes",
                pem_bytes.len()
            )));
        }
        let block =
            pem::parse(pem_bytes).map_err(|e| bad(format!("the public key is not PEM: {e}")))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(bad(format!(
                "the public key is PEM {:?}, not \"PUBLIC KEY\" (cosign.pub)",
                block.tag()
            )));
        }
        let key = CosignVerificationKey::try_from_der(block.contents())
            .map_err(|e| bad(format!("the public key cannot be used: {e}")))?;
        let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", block.contents().to_vec()));
        Ok(Self {
            key,
            pem,
            fingerprint: sha256_digest(block.contents()),
        })
    }

    /// The key as PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    /// `sha256:<hex>` of the key's DER: names it in messages and on status.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` (DER, or IEEE P1363 as newer cosign also accepts) signs `message`.
    pub fn verifies(&self, signature: &[u8], message: &[u8]) -> bool {
        self.key
            .verify_signature(Signature::Raw(signature), message)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sigstore/cosign `pkg/cosign/keys_test.go` `pemsigstorekey` (password `hello`, N 2^15);
    /// its public key was derived independently (Python `cryptography`).
    const COSIGN_TEST_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjozMjc2OCwiciI6
OCwicCI6MX0sInNhbHQiOiI3T3VGd2VsbWZZNXVId2NoaURSc210anNwZ2ZlZjFG
Mk5lOGFDTjVLYVpZPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJQNHk4OGhCb3ZTa09MbXN0bFVBaGJwdDJ0K2xTNUxQSCJ9LCJj
aXBoZXJ0ZXh0IjoiMnB1QzdyZldJOWh3bnJlQ2s4aUZDRlVwQlRrSzRJNlIvbFBF
cnBDekpXUGpJWXl4eGVIL1A2VW52cFJHdVhla1NNb3JMdGhLamdoQ1JlNy82NDVH
QWtoVm1LRC92eEF0S2EvbE1abENSQ3FlekJGUFd1dzNpeFRtZ2xhb2J1ZFVSbUVs
bmNGOGlZbzBTMVl6Y1ZOMVFwY2J2c0dNcUlYRzVlbmdteGp5dCtBcXlyZTF0Q0Y0
V01tU1BlaEljNlBqd2h1Q2xHaVpJUWRvTGc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";
    const COSIGN_TEST_PUB: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7z9gA/tqa9iHt/f9F3ulyVi4lwqULfHWfhG2mK4eyJ8LDcLstb+VVhxj3pkMjc3fNo+sSfiIY2NLR7c+DG1V4w==";

    /// sigstore-rs `tests/data/keys/cosign_generated_encrypted_empty_private.key`: written by
    /// cosign itself, N 2^16 (cosign ≥ 2.2), empty password.
    const COSIGN_EMPTY_PASSWORD_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJFY3pJR3Z0bnpFcCsxaEpudERnbGI1UnoxN3gwQVMy
YklvWGRNcDQrU1NJPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJtSVVKbG1OMzNINExvZ0dhaG5MamdmK3R4SmJwci93MCJ9LCJj
aXBoZXJ0ZXh0IjoiM3FtS2FidXRuYm1WT1IvTkZGM2NDaUErTXp1WWQ5L0VERDVI
MVlUSGhQVzZsSzAvdjVqdDZCQzlsME12NGV5am9qZkl0d3B6a2JJOXQrZGx5VXZ3
VUgvMWZjbkFZT2dEdXRLQzkvSkNiOE02SVY2VHpVaDF5c0ZFWDFzeG9xb1FzeUpL
bjM0UVlldFNlaVdDaGtmUHUyZXByQjFEV0pwekdzTGZIakxNVTkzOEdmNk1xM1A0
N0ZSd2syZzY1cFZnSGMwVWV1L1N1OUs0Zmc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";
    const COSIGN_EMPTY_PASSWORD_PUB: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEGmsWpZNuu+SUX70n3lVK4JLsaoV7T+rhea2rQUu29EQiatoLB06QdsmSd+GsQGlQzfcDtsKPzb+B2zLggrWZjg==";

    fn public_pem(body: &str) -> String {
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    }

    fn pem_body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn cosign_keys_decrypt_to_their_public_keys() {
        let key = SigningKey::from_encrypted_pem(COSIGN_TEST_KEY.as_bytes(), b"hello").unwrap();
        assert_eq!(pem_body(key.public().to_pem()), COSIGN_TEST_PUB);
        let key =
            SigningKey::from_encrypted_pem(COSIGN_EMPTY_PASSWORD_KEY.as_bytes(), b"").unwrap();
        assert_eq!(pem_body(key.public().to_pem()), COSIGN_EMPTY_PASSWORD_PUB);
    }

    #[test]
    fn a_wrong_password_or_label_says_so() {
        let e = SigningKey::from_encrypted_pem(COSIGN_TEST_KEY.as_bytes(), b"nope").unwrap_err();
        assert!(e.to_string().contains("the password is wrong"), "{e}");
        let e = SigningKey::from_encrypted_pem(public_pem(COSIGN_TEST_PUB).as_bytes(), b"")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("not \"ENCRYPTED SIGSTORE PRIVATE KEY\""),
            "{e}"
        );
        let e = SigningKey::from_encrypted_pem(&vec![b'a'; MAX_KEY_BYTES + 1], b"").unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    /// scrypt parameters outside cosign's set are refused before any work: a Secret cannot
    /// make the controller spend gigabytes on a KDF.
    #[test]
    fn unbounded_kdf_parameters_are_refused() {
        use base64::Engine as _;
        let json = r#"{"kdf":{"name":"scrypt","params":{"N":1073741824,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}"#;
        let pem = format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(json)
        );
        let started = std::time::Instant::now();
        let e = SigningKey::from_encrypted_pem(pem.as_bytes(), b"").unwrap_err();
        assert!(e.to_string().contains("cannot be decrypted"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// A real cosign signature (sigstore-rs `src/cosign/signature_layers.rs`,
    /// `build_correct_signature_layer_without_bundle`) verifies; one byte changed does not.
    #[test]
    fn a_real_cosign_signature_verifies() {
        use base64::Engine as _;
        let key = VerificationKey::from_pem(public_pem("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENptdY/l3nB0yqkXLBWkZWQwo6+cuOSWS1X9vPavpiQOoTTGC0xX57OojUadxF1cdQmrsiReWg2Wn4FneJfa8xw==").as_bytes()).unwrap();
        let signature = base64::engine::general_purpose::STANDARD
            .decode("MEUCIQD6q/COgzOyW0YH1Dk+CCYSt4uAhm3FDHUwvPI55zwnlwIgE0ZK58ZOWpZw8YVmBapJhBqCfdPekIknimuO0xH8Jh8=")
            .unwrap();
        let payload = br#"{"critical":{"identity":{"docker-reference":"registry-testing.svc.lan/busybox"},"image":{"docker-manifest-digest":"sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"},"type":"cosign container image signature"},"optional":null}"#;
        assert!(key.verifies(&signature, payload));
        let mut forged = payload.to_vec();
        forged[100] ^= 1;
        assert!(!key.verifies(&signature, &forged));
    }

    #[test]
    fn generated_keys_round_trip_through_cosigns_format() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(b"pw").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
        let read = SigningKey::from_encrypted_pem(pem.as_bytes(), b"pw").unwrap();
        assert_eq!(read.public().to_pem(), key.public().to_pem());
        let signature = read.sign(b"payload").unwrap();
        assert!(key.public().verifies(&signature, b"payload"));
        assert!(
            !SigningKey::generate()
                .unwrap()
                .public()
                .verifies(&signature, b"payload")
        );
    }
}
