//! Which objects are Stalled, and on what inputs.
//!
//! A Stalled object waits for a change a person makes: a new generation, a new
//! `requestedAt`, or a fix to a Secret or ConfigMap it references (a wrong password is fixed in
//! the Secret, not in the PackageSource). The mark is kept here rather than read back from
//! `status`: the object a reconcile receives can come from a reflector cache that has not seen
//! the Stalled status just written yet, and a trigger queued during the failing run (a Secret
//! event) would then run it a second time. A new process has no marks, so it tries every
//! Stalled object once more — a new controller version may well succeed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::inputs::RefKind;

/// What a Stalled reconcile saw: the same again means the same failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mark {
    pub generation: Option<i64>,
    pub requested_at: Option<String>,
    /// [`Inputs::fingerprint`] of the referenced Secrets and ConfigMaps.
    pub inputs: u64,
}

/// Marks by `namespace/name`, per controller process.
#[derive(Debug, Default)]
pub(super) struct Stalls(Mutex<HashMap<String, Mark>>);

impl Stalls {
    /// Whether `key` stalled on exactly `mark`: nothing a person changed since, so running it
    /// again would fail the same way.
    pub(super) fn unchanged(&self, key: &str, mark: &Mark) -> bool {
        self.0
            .lock()
            .map(|m| m.get(key) == Some(mark))
            .unwrap_or(false)
    }

    pub(super) fn record(&self, key: &str, mark: Mark) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key.to_owned(), mark);
        }
    }

    pub(super) fn clear(&self, key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }
}

/// The metadata of the Secrets and ConfigMaps the controller watches (name, namespace and
/// resourceVersion only: never data, annotations or managed fields), so a reconcile learns
/// whether a referenced object changed without an API call.
#[derive(Clone)]
pub(super) struct Inputs {
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs").finish_non_exhaustive()
    }
}

impl Inputs {
    /// A hash of the resourceVersion (or absence) of each `(kind, name)` in `namespace`.
    pub(super) fn fingerprint<'a>(
        &self,
        namespace: &str,
        refs: impl IntoIterator<Item = (RefKind, &'a str)>,
    ) -> u64 {
        let mut refs: Vec<_> = refs.into_iter().collect();
        refs.sort_unstable();
        refs.dedup();
        let mut h = DefaultHasher::new();
        for (kind, name) in refs {
            let version = match kind {
                RefKind::Secret => self
                    .secrets
                    .get(&ObjectRef::new(name).within(namespace))
                    .and_then(|o| o.metadata.resource_version.clone()),
                RefKind::ConfigMap => self
                    .config_maps
                    .get(&ObjectRef::new(name).within(namespace))
                    .and_then(|o| o.metadata.resource_version.clone()),
            };
            (kind, name, version).hash(&mut h);
        }
        h.finish()
    }
}

/// What the store keeps of a watched Secret or ConfigMap.
pub(super) fn strip<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.annotations = None;
    meta.labels = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn meta<K: kube::Resource<DynamicType = ()>>(name: &str, rv: &str) -> PartialObjectMeta<K> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn a_changed_or_created_reference_changes_the_fingerprint() {
        let (secrets, mut sw) = store::<PartialObjectMeta<Secret>>();
        let (config_maps, mut cw) = store::<PartialObjectMeta<ConfigMap>>();
        let inputs = Inputs {
            secrets,
            config_maps,
        };
        let refs = [(RefKind::Secret, "creds"), (RefKind::ConfigMap, "files")];
        let absent = inputs.fingerprint("ns", refs);
        sw.apply_watcher_event(&Event::Apply(meta("creds", "1")));
        let created = inputs.fingerprint("ns", refs);
        assert_ne!(absent, created);
        // Order and repetition of the references do not matter; other objects do not count.
        let again = [
            (RefKind::ConfigMap, "files"),
            (RefKind::Secret, "creds"),
            (RefKind::Secret, "creds"),
        ];
        sw.apply_watcher_event(&Event::Apply(meta("unrelated", "7")));
        assert_eq!(created, inputs.fingerprint("ns", again));
        assert_ne!(created, inputs.fingerprint("other", refs));
        cw.apply_watcher_event(&Event::Apply(meta("files", "3")));
        let with_config_map = inputs.fingerprint("ns", refs);
        assert_ne!(created, with_config_map);
        sw.apply_watcher_event(&Event::Apply(meta("creds", "2")));
        assert_ne!(with_config_map, inputs.fingerprint("ns", refs));
    }

    #[test]
    fn only_the_same_mark_counts_as_unchanged() {
        let stalls = Stalls::default();
        let mark = Mark {
            generation: Some(2),
            requested_at: None,
            inputs: 9,
        };
        assert!(!stalls.unchanged("ns/a", &mark));
        stalls.record("ns/a", mark.clone());
        assert!(stalls.unchanged("ns/a", &mark));
        assert!(!stalls.unchanged("ns/b", &mark));
        for other in [
            Mark {
                generation: Some(3),
                ..mark.clone()
            },
            Mark {
                requested_at: Some("now".into()),
                ..mark.clone()
            },
            Mark {
                inputs: 10,
                ..mark.clone()
            },
        ] {
            assert!(!stalls.unchanged("ns/a", &other));
        }
        stalls.clear("ns/a");
        assert!(!stalls.unchanged("ns/a", &mark));
    }

    #[test]
    fn the_store_keeps_no_annotations_or_managed_fields() {
        let mut m = meta::<Secret>("creds", "1");
        m.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{\"data\":{\"password\":\"c2VjcmV0\"}}".to_owned(),
            )]
            .into(),
        );
        m.metadata.managed_fields = Some(vec![Default::default()]);
        strip(&mut m);
        assert!(m.metadata.annotations.is_none() && m.metadata.managed_fields.is_none());
        assert_eq!(m.metadata.resource_version.as_deref(), Some("1"));
    }
}
