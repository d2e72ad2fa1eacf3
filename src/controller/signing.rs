//! `bundle.signing`: the cosign key of an object's own Secret, decrypted once. A key costs a
//! scrypt to read (64 MiB and a fraction of a second at cosign's current N), so the
//! decrypted key is kept per Secret, for exactly the bytes it was read from: a rotated key or
//! password is read again, an unchanged one never. Decryption runs off the async threads, one
//! at a time, so many tenants' keys cannot take the controller's memory or its reactor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::inputs::{ContentRef, RefKind, get};
use super::outcome::{Failure, Retry};
use crate::api::common::{BundleTarget, COSIGN_KEY, COSIGN_PASSWORD};
use crate::api::conditions::reasons;
use crate::pipeline::Stage;
use crate::registry::cosign::SigningKey;

/// Decrypted keys kept at most: one per signing Secret in use; past this, the cache starts
/// over (a key is then read again, never a wrong one used).
const MAX_KEYS: usize = 1024;

/// `namespace/name` → (sha256 of the key and password bytes, the key read from them).
type Held = HashMap<String, ([u8; 32], Arc<SigningKey>)>;

/// Decrypted signing keys, by the Secret they were read from.
pub(super) struct SigningKeys {
    keys: Mutex<Held>,
    decrypting: tokio::sync::Semaphore,
}

impl SigningKeys {
    pub(super) fn new() -> Self {
        Self {
            keys: Mutex::default(),
            decrypting: tokio::sync::Semaphore::new(1),
        }
    }

    /// The key `bundle.signing` names, or `None` when the bundle is not signed.
    pub(super) async fn get(
        &self,
        client: &Client,
        namespace: &str,
        bundle: &BundleTarget,
    ) -> Result<Option<Arc<SigningKey>>, Failure> {
        let Some(signing) = &bundle.signing else {
            return Ok(None);
        };
        let name = &signing.secret_ref.name;
        let r = ContentRef {
            kind: RefKind::Secret,
            name: name.clone(),
            field: "spec.bundle.signing.secretRef".to_owned(),
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = get(&secrets, namespace, &r, Stage::Push).await?;
        let data = secret.data.unwrap_or_default();
        let unusable = |why: String| {
            Failure::before_pipeline(
                Stage::Push,
                reasons::SIGNING_FAILED,
                format!("Secret {namespace}/{name} (spec.bundle.signing.secretRef): {why}"),
                Retry::Never,
            )
        };
        let key = data.get(COSIGN_KEY).map(|v| v.0.clone()).ok_or_else(|| {
            unusable(format!(
                "has no key {COSIGN_KEY:?}: create it with `cosign generate-key-pair \
                 k8s://{namespace}/{name}` or `packsmith generate-key-pair` and `kubectl \
                 create secret generic {name} --from-file={COSIGN_KEY} \
                 --from-literal={COSIGN_PASSWORD}=…`"
            ))
        })?;
        let password = data
            .get(COSIGN_PASSWORD)
            .map(|v| v.0.clone())
            .unwrap_or_default();
        let fingerprint = fingerprint(&key, &password);
        let id = format!("{namespace}/{name}");
        if let Some((held, key)) = self.lock().get(&id)
            && *held == fingerprint
        {
            return Ok(Some(Arc::clone(key)));
        }
        let _one_at_a_time = self
            .decrypting
            .acquire()
            .await
            .map_err(|_| unusable("the controller is shutting down".to_owned()))?;
        let decrypted =
            tokio::task::spawn_blocking(move || SigningKey::from_encrypted_pem(&key, &password))
                .await
                .map_err(|e| unusable(format!("decrypting the key: {e}")))?
                .map_err(|e| unusable(e.to_string()))?;
        let decrypted = Arc::new(decrypted);
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(&id) {
            keys.clear();
        }
        keys.insert(id, (fingerprint, Arc::clone(&decrypted)));
        Ok(Some(decrypted))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a decrypted key was read from: its bytes and its password's, unambiguously.
fn fingerprint(key: &[u8], password: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update((key.len() as u64).to_be_bytes());
    hash.update(key);
    hash.update(password);
    hash.finalize().into()
}
