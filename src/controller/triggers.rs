//! What wakes a reconcile: watch filters (a new generation, a `requestedAt` annotation, the
//! finalizer and deletion — never the controller's own status writes) and the drift watches
//! that map a published object deleted or edited by someone else back to its owner.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

use super::context::FINALIZER;
use super::{labels, ownership};
use crate::api::{PackageRepositorySource, PackageSource, REQUESTED_AT_ANNOTATION};

/// Metadata of `K` objects packsmith publishes, yielded when one is deleted or its generation
/// (its spec) changes. When the cluster has no packaging API the watch backs off and retries,
/// and starts delivering once kapp-controller is installed.
pub(super) fn drift_triggers<K>(
    client: &Client,
    namespace: Option<&str>,
    shard: Option<&str>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    <K as Resource>::DynamicType: Default + Clone + Eq + std::hash::Hash + Send + Sync,
{
    drift_watch(
        client,
        namespace,
        in_shard(
            format!("{}={}", labels::LABEL_MANAGED_BY, labels::MANAGED_BY),
            shard,
        ),
        |meta| meta.generation.map(|g| g.to_string()),
    )
}

/// Metadata of the release records sources wrote, yielded when one is deleted or changes in
/// any way (a ConfigMap has no generation: every write is a new resourceVersion). The
/// controller's own writes come through too; the reconcile they cause finds the record in
/// place and writes nothing, so they cannot loop.
pub(super) fn record_triggers(
    client: &Client,
    namespace: Option<&str>,
    shard: Option<&str>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<ConfigMap>, watcher::Error>> + Send + 'static
{
    drift_watch(
        client,
        namespace,
        in_shard(
            format!(
                "{}={},{}=true",
                labels::LABEL_MANAGED_BY,
                labels::MANAGED_BY,
                labels::LABEL_RELEASE
            ),
            shard,
        ),
        |meta| meta.resource_version.clone(),
    )
}

/// `selector` and, when sharded, the shard's selector too (both must hold).
fn in_shard(selector: String, shard: Option<&str>) -> String {
    match shard {
        Some(shard) => format!("{selector},{shard}"),
        None => selector,
    }
}

/// A metadata-only watch of the `K` objects `selector` matches, through [`Drift`].
pub(super) fn drift_watch<K>(
    client: &Client,
    namespace: Option<&str>,
    selector: String,
    version: fn(&kube::api::ObjectMeta) -> Option<String>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    <K as Resource>::DynamicType: Default + Clone + Eq + std::hash::Hash + Send + Sync,
{
    let api: Api<PartialObjectMeta<K>> = scoped(client, namespace);
    let mut drift = Drift::new(version);
    watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .flat_map(move |event| {
            let out: Vec<_> = match event {
                Ok(event) => drift.on(event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        })
}

/// Turns watch events into the objects that drifted: deleted, or with a new `version`.
/// Re-list replays of unchanged objects are dropped. An object that a re-list no longer
/// shows (deleted while the watch was down, e.g. after the API server restarted) counts as
/// deleted: a watch that only forwarded Delete events would miss it until the interval.
pub(super) struct Drift<K> {
    version: fn(&kube::api::ObjectMeta) -> Option<String>,
    /// By UID: the last version seen, and who owns the object (to map it to its owner once
    /// it is gone).
    known: std::collections::HashMap<Box<str>, (Option<Box<str>>, ownership::OwnerRecord)>,
    /// UIDs seen since the re-list in progress began.
    relisted: Option<std::collections::HashSet<Box<str>>>,
    _kind: std::marker::PhantomData<K>,
}

impl<K> Drift<K> {
    pub(super) fn new(version: fn(&kube::api::ObjectMeta) -> Option<String>) -> Self {
        Drift {
            version,
            known: Default::default(),
            relisted: None,
            _kind: std::marker::PhantomData,
        }
    }

    pub(super) fn on(
        &mut self,
        event: watcher::Event<PartialObjectMeta<K>>,
    ) -> Vec<PartialObjectMeta<K>> {
        let uid = |o: &PartialObjectMeta<K>| -> Box<str> {
            o.metadata.uid.as_deref().unwrap_or_default().into()
        };
        match event {
            watcher::Event::Init => {
                self.relisted = Some(Default::default());
                Vec::new()
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let id = uid(&o);
                if let Some(seen) = self.relisted.as_mut() {
                    seen.insert(id.clone());
                }
                let version: Option<Box<str>> = (self.version)(&o.metadata).map(Into::into);
                let kept = ownership::OwnerRecord::of(&o.metadata);
                // An object first seen is a creation, not drift: at start every source runs
                // anyway, and later the creator is (nearly always) the owner's own reconcile,
                // which a trigger would only run again — on a store that may not show its
                // status write yet, so it would publish and write a second time.
                match self.known.insert(id, (version.clone(), kept)) {
                    Some((before, _)) if before != version => vec![o],
                    _ => Vec::new(),
                }
            }
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<Box<str>> = self
                    .known
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|uid| self.known.remove(uid))
                    .map(|(_, owner)| PartialObjectMeta {
                        types: None,
                        metadata: owner.meta(),
                        _phantom: std::marker::PhantomData,
                    })
                    .collect()
            }
            watcher::Event::Delete(o) => {
                self.known.remove(&uid(&o));
                vec![o]
            }
        }
    }
}

/// The PackageSource to run again because `object`, which it published, was deleted or
/// edited. Only a source the object can really be of: the object lives in the source's
/// namespace or in one sources may publish into (`publish_namespaces`), and the source in
/// `sources` is the very one its owner annotation names, UID included. Otherwise anyone who
/// can write objects in some namespace could make another team's sources run, over and over,
/// by annotating them as theirs.
pub(super) fn drifted_owner<K>(
    object: &PartialObjectMeta<K>,
    sources: &reflector::Store<PackageSource>,
    publish_namespaces: &[String],
) -> Option<reflector::ObjectRef<PackageSource>> {
    let owner = ownership::owning_source(&object.metadata)?;
    checked_owner(&object.metadata, owner, sources, publish_namespaces)
}

/// [`drifted_owner`] for a PackageRepository and the PackageRepositorySource that made it.
pub(super) fn drifted_repository_owner(
    object: &PartialObjectMeta<crate::carvel::PackageRepository>,
    repositories: &reflector::Store<PackageRepositorySource>,
    publish_namespaces: &[String],
) -> Option<reflector::ObjectRef<PackageRepositorySource>> {
    let owner = ownership::owning_repository_source(&object.metadata)?;
    checked_owner(&object.metadata, owner, repositories, publish_namespaces)
}

fn checked_owner<K>(
    object: &kube::api::ObjectMeta,
    owner: ownership::Named,
    store: &reflector::Store<K>,
    publish_namespaces: &[String],
) -> Option<reflector::ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let here = object.namespace.as_deref().unwrap_or_default();
    if here != owner.namespace && !publish_namespaces.iter().any(|n| n == here) {
        return None;
    }
    let key = reflector::ObjectRef::new(&owner.name).within(&owner.namespace);
    let found = store.get(&key)?;
    match owner.uid {
        Some(uid) if found.meta().uid.as_deref() != Some(uid.as_str()) => None,
        _ => Some(key),
    }
}

pub(super) fn api(client: &Client, namespace: Option<&str>) -> Api<PackageSource> {
    scoped(client, namespace)
}

pub(super) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watch filter of PackageRepositorySources: the `requestedAt` annotation.
pub(super) fn repo_requested_at(obj: &PackageRepositorySource) -> Option<u64> {
    obj.annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .map(|v| hash(&("requestedAt", v)))
}

/// Watch filter: the `requestedAt` annotation (an on-demand reconcile).
pub(super) fn requested_at(obj: &PackageSource) -> Option<u64> {
    obj.annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .map(|v| hash(&("requestedAt", v)))
}

/// Watch filter: deletion started, and whether our finalizer is present (the finalizer helper
/// adds it and expects the resulting event to start the real reconcile).
pub(super) fn lifecycle<K: kube::Resource>(obj: &K) -> Option<u64> {
    Some(hash(&(
        obj.meta().deletion_timestamp.is_some(),
        obj.finalizers().iter().any(|f| f == FINALIZER),
    )))
}

pub(super) fn hash<T: std::hash::Hash>(t: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{Predicate, predicates};

    fn source(generation: i64, requested: Option<&str>, finalized: bool) -> PackageSource {
        let mut obj: PackageSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "PackageSource",
            "metadata": {"name": "a", "namespace": "ns", "generation": generation},
            "spec": {
                "package": {"refName": "a.b.c", "version": "1.0.0"},
                "contents": [],
                "bundle": {"repository": "r.io/a"},
            },
        }))
        .unwrap();
        if let Some(r) = requested {
            obj.annotations_mut()
                .insert(REQUESTED_AT_ANNOTATION.to_owned(), r.to_owned());
        }
        if finalized {
            obj.finalizers_mut().push(FINALIZER.to_owned());
        }
        obj
    }

    fn object(uid: &str, version: &str) -> PartialObjectMeta<ConfigMap> {
        PartialObjectMeta {
            types: None,
            metadata: kube::api::ObjectMeta {
                name: Some(format!("cm-{uid}")),
                uid: Some(uid.to_owned()),
                resource_version: Some(version.to_owned()),
                ..Default::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn drift_is_a_new_version_or_a_disappearance_never_a_replay() {
        use watcher::Event;
        let mut drift = Drift::new(|m| m.resource_version.clone());
        let mut names = |event| {
            drift
                .on(event)
                .into_iter()
                .map(|o| o.name_any())
                .collect::<Vec<_>>()
        };
        // The first list: everything is new, and new is not drift.
        assert!(names(Event::Init).is_empty());
        assert!(names(Event::InitApply(object("a", "1"))).is_empty());
        assert!(names(Event::InitApply(object("b", "1"))).is_empty());
        assert!(names(Event::InitDone).is_empty());
        // An event that changes nothing we compare (a replay) is dropped; a new version and
        // a deletion are drift; a creation is not.
        assert!(names(Event::Apply(object("a", "1"))).is_empty());
        assert_eq!(names(Event::Apply(object("a", "2"))), ["cm-a"]);
        assert_eq!(names(Event::Delete(object("b", "3"))), ["cm-b"]);
        assert!(names(Event::Apply(object("c", "4"))).is_empty());
        // A re-list after the watch was down: a is unchanged, c went away unseen, d is new.
        assert!(names(Event::Init).is_empty());
        assert!(names(Event::InitApply(object("a", "2"))).is_empty());
        assert!(names(Event::InitApply(object("d", "5"))).is_empty());
        assert_eq!(names(Event::InitDone), ["cm-c"]);
        // Gone is gone: the next re-list does not report c again.
        assert!(names(Event::Init).is_empty());
        assert!(names(Event::InitApply(object("a", "2"))).is_empty());
        assert!(names(Event::InitApply(object("d", "5"))).is_empty());
        assert!(names(Event::InitDone).is_empty());
    }

    #[test]
    fn status_writes_do_not_trigger_but_spec_requests_and_finalizers_do() {
        let p = predicates::generation
            .combine(requested_at)
            .combine(lifecycle);
        let base = p.hash_property(&source(1, None, true));
        let mut with_status = source(1, None, true);
        with_status.status = Some(Default::default());
        assert_eq!(p.hash_property(&with_status), base);
        assert_ne!(p.hash_property(&source(2, None, true)), base);
        assert_ne!(p.hash_property(&source(1, Some("t1"), true)), base);
        assert_ne!(
            p.hash_property(&source(1, Some("t1"), true)),
            p.hash_property(&source(1, Some("t2"), true))
        );
        assert_ne!(p.hash_property(&source(1, None, false)), base);
    }

    /// Drift re-runs a source only for an object that can be its: in its namespace or a
    /// publish namespace, naming its UID; labels (no UID) only in its own namespace.
    #[test]
    fn drift_runs_only_the_source_an_object_can_be_of() {
        let (sources, mut writer) = reflector::store::<PackageSource>();
        let mut ours = source(1, None, false);
        ours.metadata.uid = Some("uid-a".to_owned());
        writer.apply_watcher_event(&watcher::Event::Apply(ours));
        let object = |namespace: &str, annotation: Option<&str>, labels: &[(&str, &str)]| {
            let mut meta = kube::api::ObjectMeta {
                name: Some("a.b.c.1.0.0".to_owned()),
                namespace: Some(namespace.to_owned()),
                ..Default::default()
            };
            if let Some(a) = annotation {
                meta.annotations = Some(
                    [(ownership::OWNER_ANNOTATION.to_owned(), a.to_owned())]
                        .into_iter()
                        .collect(),
                );
            }
            meta.labels = Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
            PartialObjectMeta::<crate::carvel::Package> {
                types: None,
                metadata: meta,
                _phantom: std::marker::PhantomData,
            }
        };
        let shared = ["shared".to_owned()];
        let runs = |o: &PartialObjectMeta<crate::carvel::Package>, publish: &[String]| {
            drifted_owner(o, &sources, publish).map(|r| (r.namespace.unwrap_or_default(), r.name))
        };
        let a = Some(("ns".to_owned(), "a".to_owned()));
        let annotated = Some("PackageSource/ns/a/uid-a");
        assert_eq!(runs(&object("ns", annotated, &[]), &[]), a);
        assert_eq!(runs(&object("shared", annotated, &[]), &shared), a);
        // Another team's namespace, not one sources publish into.
        assert_eq!(runs(&object("team-b", annotated, &[]), &shared), None);
        // The right name, not the right source (forged, or a deleted namesake's).
        let forged = Some("PackageSource/ns/a/guessed");
        assert_eq!(runs(&object("shared", forged, &[]), &shared), None);
        // A source this process does not have.
        let other = Some("PackageSource/ns/b/uid-b");
        assert_eq!(runs(&object("ns", other, &[]), &[]), None);
        // An earlier release's labels: believed in the source's own namespace only.
        let labels = [
            (labels::LABEL_SOURCE_NAME, "a"),
            (labels::LABEL_SOURCE_NAMESPACE, "ns"),
        ];
        assert_eq!(runs(&object("ns", None, &labels), &[]), a);
        assert_eq!(runs(&object("shared", None, &labels), &shared), None);
    }
}
