//! One registry client per configuration, shared by every reconcile that uses it: its
//! connections, its one ping per host and its tokens outlive a reconcile, so a fleet of
//! sources pushing to one registry pays for them once, not once per object.
//!
//! The key is the whole configuration ([`RegistryOptions::identity`]): credentials, CAs,
//! mirrors, egress policy. Objects share a client only when they would have built the same
//! one — the per-namespace credential rules decide the options first, so sharing never
//! lends one tenant's credentials to another. Tokens that expire are fetched again on the
//! registry's 401. Clients unused for a while are dropped (a rotated Secret's old client goes
//! with them), and the number kept is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::registry::{Registry, RegistryError, RegistryOptions};

/// Clients kept at most; the least recently used goes first.
const MAX_CLIENTS: usize = 256;
/// A client unused this long is dropped.
const IDLE: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub(super) struct Registries {
    clients: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    registry: Arc<Registry>,
    used: Instant,
}

impl Registries {
    /// The client for `options`, built on first use.
    pub(super) fn get(&self, options: RegistryOptions) -> Result<Arc<Registry>, RegistryError> {
        self.get_at(options, Instant::now())
    }

    fn get_at(
        &self,
        options: RegistryOptions,
        now: Instant,
    ) -> Result<Arc<Registry>, RegistryError> {
        let key = options.identity();
        // A poisoned lock only means another reconcile panicked mid-insert: the map is intact.
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.retain(|_, entry| now.saturating_duration_since(entry.used) < IDLE);
        if let Some(entry) = clients.get_mut(&key) {
            entry.used = now;
            return Ok(Arc::clone(&entry.registry));
        }
        let registry = Arc::new(Registry::new(options)?);
        if clients.len() >= MAX_CLIENTS
            && let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone())
        {
            clients.remove(&oldest);
        }
        clients.insert(
            key,
            Entry {
                registry: Arc::clone(&registry),
                used: now,
            },
        );
        Ok(registry)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().map_or(0, |c| c.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Credentials;

    fn options(password: &str) -> RegistryOptions {
        RegistryOptions {
            credentials: Credentials::basic("r.io", "u", password),
            ..RegistryOptions::default()
        }
    }

    #[test]
    fn alike_configurations_share_a_client_and_others_do_not() {
        let registries = Registries::default();
        let now = Instant::now();
        let a = registries.get_at(options("a"), now).expect("a");
        let again = registries.get_at(options("a"), now).expect("a again");
        assert!(Arc::ptr_eq(&a, &again));
        let b = registries.get_at(options("b"), now).expect("b");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(registries.len(), 2);
    }

    #[test]
    fn idle_clients_go_and_the_count_is_bounded() {
        let registries = Registries::default();
        let start = Instant::now();
        let a = registries.get_at(options("a"), start).expect("a");
        let later = start + IDLE + Duration::from_secs(1);
        let a_later = registries.get_at(options("a"), later).expect("a later");
        assert!(!Arc::ptr_eq(&a, &a_later), "an idle client is built anew");
        for n in 0..MAX_CLIENTS + 5 {
            registries
                .get_at(options(&n.to_string()), later)
                .expect("client");
        }
        assert_eq!(registries.len(), MAX_CLIENTS);
    }
}
