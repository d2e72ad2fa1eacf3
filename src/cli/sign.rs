//! cosign-compatible signing from the command line: `--sign-key` for the commands that push
//! bundles, `packsmith verify` (`cosign verify --key --insecure-ignore-tlog`), and
//! `packsmith generate-key-pair` (`cosign generate-key-pair`). The password is cosign's
//! `COSIGN_PASSWORD`: set (even empty) means no prompt.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::registry::{RegistryArgs, registry_host};
use crate::bundle::Location;
use crate::registry::cosign::{self, SigningKey, VerificationKey};

/// cosign's password variable (`pkg/cosign/env`: `COSIGN_PASSWORD`).
const PASSWORD_VARIABLE: &str = "COSIGN_PASSWORD";

/// `--sign-key`: the flag of every command that pushes a bundle.
#[derive(Args, Debug, Clone, Default)]
pub(super) struct SigningArgs {
    /// Sign each pushed bundle with this cosign private key (cosign.key; password in
    /// COSIGN_PASSWORD), as `cosign sign --key` does: the `sha256-<digest>.sig` tag next to
    /// the bundle, written before any tag names the bundle.
    #[arg(long, env = "PACKSMITH_SIGN_KEY", value_name = "cosign.key")]
    pub(super) sign_key: Option<PathBuf>,
}

impl SigningArgs {
    /// The key, read once for the whole command (a key costs a scrypt to read).
    pub(super) fn load(&self) -> anyhow::Result<Option<Arc<SigningKey>>> {
        self.sign_key
            .as_deref()
            .map(|path| read_signing_key(path).map(Arc::new))
            .transpose()
    }
}

/// The key that signs `spec`'s bundle. `bundle.signing` names a Secret, which the CLI does
/// not read: a spec that asks for signatures is not pushed unsigned.
pub(super) fn for_spec(
    key: Option<&Arc<SigningKey>>,
    spec: &crate::api::PackageSourceSpec,
) -> anyhow::Result<Option<Arc<SigningKey>>> {
    match (key, &spec.bundle.signing) {
        (Some(key), _) => Ok(Some(Arc::clone(key))),
        (None, Some(signing)) => anyhow::bail!(
            "spec.bundle.signing names Secret {}, which the CLI does not read: pass \
             --sign-key cosign.key (password in {PASSWORD_VARIABLE}) to sign the bundle",
            signing.secret_ref.name
        ),
        (None, None) => Ok(None),
    }
}

fn password() -> Vec<u8> {
    std::env::var_os(PASSWORD_VARIABLE)
        .map(|p| p.into_encoded_bytes())
        .unwrap_or_default()
}

fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = read_small(path)?;
    SigningKey::from_encrypted_pem(&pem, &password())
        .with_context(|| format!("{} (password from {PASSWORD_VARIABLE})", path.display()))
}

/// A key file, refused past a size no key has before it is read whole.
fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(64 << 10)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    /// Image or bundle to verify: REPO:TAG or REPO@sha256:….
    #[arg(value_name = "REF")]
    image: String,
    /// Public key (cosign.pub) the signature must verify with; repeat for any of several.
    #[arg(long, required = true, value_name = "cosign.pub")]
    key: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `packsmith verify`: as `cosign verify --key K --insecure-ignore-tlog=true REF` — what was
/// checked on stderr, the verified payloads as a JSON array on stdout, non-zero when no
/// signature verifies.
pub(super) fn verify(args: &VerifyArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let keys = args
        .key
        .iter()
        .map(|path| {
            VerificationKey::from_pem(&read_small(path)?)
                .with_context(|| format!("{}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let Location::Registry(reference) = Location::parse(&args.image)? else {
        anyhow::bail!("{}: verify reads signatures from a registry", args.image);
    };
    let registry = args
        .registry
        .registry(registry_host(&Location::Registry(reference.clone())))?;
    let (digest, verified) = runtime.block_on(cosign::verify(&registry, &reference, &keys))?;
    eprintln!(
        "\nVerification for {}@{digest} --\nThe following checks were performed on each of \
         these signatures:\n  - The cosign claims were validated\n  - The signatures were \
         verified against the specified public key",
        reference.whole().split(['@']).next().unwrap_or_default()
    );
    let payloads: Vec<_> = verified.into_iter().map(|v| v.payload).collect();
    println!("{}", serde_json::to_string(&payloads)?);
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct GenerateKeyPairArgs {
    /// Write PREFIX.key and PREFIX.pub.
    #[arg(long, default_value = "cosign", value_name = "PREFIX")]
    output_key_prefix: String,
}

/// `packsmith generate-key-pair`: an ECDSA P-256 key pair in cosign's files, the private key
/// encrypted with `COSIGN_PASSWORD` (empty when unset) and readable by its owner only.
pub(super) fn generate_key_pair(args: &GenerateKeyPairArgs) -> anyhow::Result<()> {
    let private = PathBuf::from(format!("{}.key", args.output_key_prefix));
    let public = PathBuf::from(format!("{}.pub", args.output_key_prefix));
    for path in [&private, &public] {
        anyhow::ensure!(
            !path.exists(),
            "{} already exists: remove it, or choose another --output-key-prefix",
            path.display()
        );
    }
    let key = SigningKey::generate()?;
    let pem = key.to_encrypted_pem(&password())?;
    let mut file = {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&private)
            .with_context(|| format!("creating {}", private.display()))?
    };
    file.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", private.display()))?;
    std::fs::write(&public, key.public().to_pem())
        .with_context(|| format!("writing {}", public.display()))?;
    eprintln!(
        "Private key written to {}\nPublic key written to {}",
        private.display(),
        public.display()
    );
    Ok(())
}
