//! Who owns a published object, decided before every write and delete.
//!
//! Labels are set by whoever writes an object, so they prove nothing: a PackageSource in
//! another namespace could label a Package as someone else's. Ownership is the annotation
//! [`OWNER_ANNOTATION`], `KIND/NAMESPACE/NAME/UID` of the source that created the object. The
//! UID makes it unforgeable in practice (a tenant cannot learn another object's UID without
//! reading it) and tells a recreated source with the same name from the one that wrote.
//!
//! An object written by a packsmith release that only labelled it is adopted when its labels
//! name exactly this source and it carries no owner annotation; anything else is a conflict,
//! and the object is left untouched. Labels alone count only in the source's own namespace
//! ([`is_ours`], [`owning_source`]): in a namespace several teams publish into, anyone can
//! write them.

use std::collections::BTreeMap;
use std::fmt;

use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::labels::{
    LABEL_REPOSITORY_SOURCE_NAME, LABEL_REPOSITORY_SOURCE_NAMESPACE, LABEL_SOURCE_NAME,
    LABEL_SOURCE_NAMESPACE,
};

/// The annotation that records the owning source on everything packsmith publishes.
pub(super) const OWNER_ANNOTATION: &str = "packsmith.dev/owner";

/// A source that publishes: `PackageSource` or `PackageRepositorySource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub(super) fn new(kind: &str, namespace: &str, name: &str, uid: &str) -> Self {
        Owner {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        }
    }

    /// `obj` itself, as the owner of what it publishes.
    pub(super) fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        Owner::new(
            &K::kind(&()),
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
            &obj.uid().unwrap_or_default(),
        )
    }

    /// The annotation's value.
    pub(super) fn annotation(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.kind, self.namespace, self.name, self.uid
        )
    }

    /// Parses an annotation value; `None` when it is not one.
    pub(super) fn parse(value: &str) -> Option<Owner> {
        let mut parts = value.splitn(4, '/');
        let (kind, namespace, name, uid) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        [kind, namespace, name, uid]
            .iter()
            .all(|p| !p.is_empty())
            .then(|| Owner::new(kind, namespace, name, uid))
    }

    /// The annotations to put on a published object.
    pub(super) fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(OWNER_ANNOTATION.to_owned(), self.annotation())])
    }
}

impl fmt::Display for Owner {
    /// `PackageSource team-a/cert-manager`, for messages (the UID is noise to a person).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What `me` may do with an object that may already exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claim {
    /// Nothing there: create it.
    Free,
    /// Ours (the annotation names this very source).
    Ours,
    /// Written by an earlier release with labels only, naming this source: take it over.
    Adopt,
    /// Someone else's: leave it alone and say whose.
    Conflict(Holder),
}

/// Who holds an object we may not touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holder {
    /// Another packsmith source (or an earlier one of the same name, deleted and recreated:
    /// a new UID is a new owner).
    Source(Owner),
    /// An object packsmith did not create (no owner annotation, labels not ours).
    Unowned,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Source(owner) => write!(f, "{owner}"),
            Holder::Unowned => f.write_str("an object packsmith did not create"),
        }
    }
}

/// Decides what `me` may do with the object whose metadata is `existing`.
pub(super) fn claim(existing: Option<&ObjectMeta>, me: &Owner) -> Claim {
    let Some(meta) = existing else {
        return Claim::Free;
    };
    if let Some(value) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
    {
        return match Owner::parse(value) {
            Some(owner) if owner == *me => Claim::Ours,
            Some(owner) => Claim::Conflict(Holder::Source(owner)),
            None => Claim::Conflict(Holder::Unowned),
        };
    }
    let labels = meta.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    // The labels earlier releases put on what each kind publishes.
    let (name_key, namespace_key) = if me.kind == "PackageRepositorySource" {
        (
            LABEL_REPOSITORY_SOURCE_NAME,
            LABEL_REPOSITORY_SOURCE_NAMESPACE,
        )
    } else {
        (LABEL_SOURCE_NAME, LABEL_SOURCE_NAMESPACE)
    };
    if label(name_key) == Some(me.name.as_str())
        && label(namespace_key) == Some(me.namespace.as_str())
    {
        Claim::Adopt
    } else {
        Claim::Conflict(Holder::Unowned)
    }
}

/// The owner a published object names: by its owner annotation (with the owner's UID) or,
/// for an object of an earlier release, by its labels — believed only in the owner's own
/// namespace, where no other team can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Named {
    pub namespace: String,
    pub name: String,
    /// `None` for labels, which carry no UID.
    pub uid: Option<String>,
}

/// The PackageSource that owns the object with `meta` (see [`Named`]): whose reconcile
/// restores it when it drifts.
pub(super) fn owning_source(meta: &ObjectMeta) -> Option<Named> {
    owning(
        meta,
        "PackageSource",
        LABEL_SOURCE_NAMESPACE,
        LABEL_SOURCE_NAME,
    )
}

/// The PackageRepositorySource that owns the PackageRepository with `meta`, as
/// [`owning_source`] decides it for a PackageSource.
pub(super) fn owning_repository_source(meta: &ObjectMeta) -> Option<Named> {
    owning(
        meta,
        "PackageRepositorySource",
        LABEL_REPOSITORY_SOURCE_NAMESPACE,
        LABEL_REPOSITORY_SOURCE_NAME,
    )
}

/// The `kind` object that owns `meta`. The annotation wins: an object annotated as another
/// kind's is not this kind's, whatever its labels say.
fn owning(meta: &ObjectMeta, kind: &str, namespace_label: &str, name_label: &str) -> Option<Named> {
    if let Some(value) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(OWNER_ANNOTATION))
    {
        return Owner::parse(value)
            .filter(|o| o.kind == kind)
            .map(|o| Named {
                namespace: o.namespace,
                name: o.name,
                uid: Some(o.uid),
            });
    }
    let labels = meta.labels.as_ref()?;
    let namespace = labels.get(namespace_label)?;
    let name = labels.get(name_label)?;
    (meta.namespace.as_ref() == Some(namespace)).then(|| Named {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: None,
    })
}

/// Of an object, only its name and what [`owning_source`] and [`owning_repository_source`]
/// read, as a few boxed strings: what a drift watch keeps of every published object to name
/// its owner once the object is gone. (A whole `ObjectMeta` each, inline in a map, was the
/// larger part of a shard's memory.)
#[derive(Debug, Clone)]
pub(super) struct OwnerRecord {
    name: Box<str>,
    namespace: Box<str>,
    /// The owner annotation, when the object has one (it decides alone).
    annotation: Option<Box<str>>,
    /// Otherwise the owner labels (objects published before the annotation existed).
    labels: Box<[(&'static str, Box<str>)]>,
}

const OWNER_LABELS: [&str; 4] = [
    LABEL_SOURCE_NAMESPACE,
    LABEL_SOURCE_NAME,
    LABEL_REPOSITORY_SOURCE_NAMESPACE,
    LABEL_REPOSITORY_SOURCE_NAME,
];

impl OwnerRecord {
    pub(super) fn of(meta: &ObjectMeta) -> Self {
        let annotation = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION))
            .map(|v| v.as_str().into());
        let labels = match (&annotation, &meta.labels) {
            (None, Some(labels)) => OWNER_LABELS
                .iter()
                .filter_map(|key| labels.get(*key).map(|v| (*key, v.as_str().into())))
                .collect(),
            _ => Box::default(),
        };
        OwnerRecord {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            annotation,
            labels,
        }
    }

    /// The metadata the owner functions read, rebuilt.
    pub(super) fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.to_string()),
            namespace: Some(self.namespace.to_string()),
            annotations: self
                .annotation
                .as_ref()
                .map(|a| BTreeMap::from([(OWNER_ANNOTATION.to_owned(), a.to_string())])),
            labels: (!self.labels.is_empty()).then(|| {
                self.labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_string()))
                    .collect()
            }),
            ..ObjectMeta::default()
        }
    }
}

/// Whether the object is `me`'s: the only objects it may read as its own, prune or delete.
/// Owned, or labelled as `me`'s by an earlier release *in `me`'s own namespace*. Labels prove
/// nothing where other teams write too (an `--allowed-publish-namespaces` entry): a
/// label-only object there is never pruned, deleted or put into a repository as `me`'s —
/// `apply` still takes it over when `me` writes that very object, and stamps the annotation.
pub(super) fn is_ours(meta: &ObjectMeta, me: &Owner) -> bool {
    match claim(Some(meta), me) {
        Claim::Ours => true,
        Claim::Adopt => meta.namespace.as_deref() == Some(me.namespace.as_str()),
        Claim::Free | Claim::Conflict(_) => false,
    }
}

/// Whether `actual` holds every field of `desired` with the same value: what server-side
/// apply of `desired` would leave unchanged. Fields someone else set beside ours are not
/// drift (applying would not remove them, so counting them would rewrite forever).
pub(super) fn holds_applied<T: serde::Serialize>(actual: &T, desired: &T) -> bool {
    fn subset(desired: &serde_json::Value, actual: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (desired, actual) {
            (Value::Object(d), Value::Object(a)) => d
                .iter()
                .all(|(k, v)| a.get(k).is_some_and(|actual| subset(v, actual))),
            (Value::Array(d), Value::Array(a)) => {
                d.len() == a.len() && d.iter().zip(a).all(|(d, a)| subset(d, a))
            }
            (d, a) => d == a,
        }
    }
    match (serde_json::to_value(desired), serde_json::to_value(actual)) {
        (Ok(d), Ok(a)) => subset(&d, &a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Owner {
        Owner::new("PackageSource", "team-a", "cert-manager", "uid-a")
    }

    /// Metadata of an object in team-a, `me()`'s namespace.
    fn meta(annotation: Option<&str>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("team-a".to_owned()),
            annotations: annotation
                .map(|a| BTreeMap::from([(OWNER_ANNOTATION.to_owned(), a.to_owned())])),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn what_a_watch_keeps_still_names_the_owner() {
        let kept = |m: &ObjectMeta| OwnerRecord::of(m).meta();
        let annotated = meta(
            Some(&me().annotation()),
            &[("app", "x"), (LABEL_SOURCE_NAME, "cert-manager")],
        );
        assert_eq!(owning_source(&kept(&annotated)), owning_source(&annotated));
        assert_eq!(
            owning_source(&kept(&annotated)).map(|o| (o.namespace, o.name, o.uid)),
            Some(("team-a".into(), "cert-manager".into(), Some("uid-a".into())))
        );
        assert!(
            kept(&annotated).labels.is_none(),
            "the annotation alone decides"
        );
        // Labels only (published before the annotation existed), and a repository's labels.
        let labelled = meta(
            None,
            &[
                (LABEL_SOURCE_NAME, "cert-manager"),
                (LABEL_SOURCE_NAMESPACE, "team-a"),
                (LABEL_REPOSITORY_SOURCE_NAME, "main"),
                (LABEL_REPOSITORY_SOURCE_NAMESPACE, "team-a"),
                ("other", "y"),
            ],
        );
        assert_eq!(owning_source(&kept(&labelled)), owning_source(&labelled));
        assert_eq!(
            owning_repository_source(&kept(&labelled)),
            owning_repository_source(&labelled)
        );
        assert!(kept(&labelled).annotations.is_none());
        assert!(!kept(&labelled).labels.unwrap().contains_key("other"));
        // Another kind's annotation still wins over our labels.
        let theirs = meta(Some("garbage"), &[(LABEL_SOURCE_NAME, "cert-manager")]);
        assert_eq!(owning_source(&kept(&theirs)), None);
    }

    #[test]
    fn the_annotation_decides_and_labels_prove_nothing() {
        let ours_labels = [
            (LABEL_SOURCE_NAME, "cert-manager"),
            (LABEL_SOURCE_NAMESPACE, "team-a"),
        ];
        assert_eq!(claim(None, &me()), Claim::Free);
        assert_eq!(
            claim(Some(&meta(Some(&me().annotation()), &[])), &me()),
            Claim::Ours
        );
        // Upgrade from a release that only labelled: adopted.
        assert_eq!(claim(Some(&meta(None, &ours_labels)), &me()), Claim::Adopt);
        // Another tenant's object that copies our labels is still theirs.
        let theirs = Owner::new("PackageSource", "team-b", "cert-manager", "uid-b");
        assert_eq!(
            claim(Some(&meta(Some(&theirs.annotation()), &ours_labels)), &me()),
            Claim::Conflict(Holder::Source(theirs.clone()))
        );
        // Same name, recreated: a new owner.
        let old = Owner::new("PackageSource", "team-a", "cert-manager", "uid-old");
        assert!(matches!(
            claim(Some(&meta(Some(&old.annotation()), &[])), &me()),
            Claim::Conflict(_)
        ));
        // A person's object, or labels naming another source.
        assert_eq!(
            claim(Some(&meta(None, &[])), &me()),
            Claim::Conflict(Holder::Unowned)
        );
        assert_eq!(
            claim(
                Some(&meta(
                    None,
                    &[
                        (LABEL_SOURCE_NAME, "cert-manager"),
                        (LABEL_SOURCE_NAMESPACE, "team-b")
                    ]
                )),
                &me()
            ),
            Claim::Conflict(Holder::Unowned)
        );
        assert_eq!(
            claim(Some(&meta(Some("garbage"), &ours_labels)), &me()),
            Claim::Conflict(Holder::Unowned)
        );
        assert!(is_ours(&meta(None, &ours_labels), &me()));
        // Labels only, where other teams write too: adopted when written, never pruned or
        // collected as ours.
        let shared = ObjectMeta {
            namespace: Some("shared".to_owned()),
            ..meta(None, &ours_labels)
        };
        assert_eq!(claim(Some(&shared), &me()), Claim::Adopt);
        assert!(!is_ours(&shared, &me()));
        assert!(is_ours(
            &ObjectMeta {
                namespace: Some("shared".to_owned()),
                ..meta(Some(&me().annotation()), &[])
            },
            &me()
        ));
        assert!(!is_ours(
            &meta(Some(&theirs.annotation()), &ours_labels),
            &me()
        ));
        assert_eq!(theirs.to_string(), "PackageSource team-b/cert-manager");
    }

    #[test]
    fn drift_maps_to_the_owner_of_the_right_kind() {
        let repository = Owner::new("PackageRepositorySource", "team-a", "main", "uid-r");
        let pkgr = meta(Some(&repository.annotation()), &[]);
        let key = |o: Option<Named>| o.map(|o| (o.namespace, o.name));
        assert_eq!(
            key(owning_repository_source(&pkgr)),
            Some(("team-a".to_owned(), "main".to_owned()))
        );
        assert_eq!(owning_source(&pkgr), None);
        assert_eq!(
            key(owning_source(&meta(Some(&me().annotation()), &[]))),
            Some(("team-a".to_owned(), "cert-manager".to_owned()))
        );
        assert_eq!(
            owning_repository_source(&meta(Some(&me().annotation()), &[])),
            None
        );
        // An earlier release's PackageRepository: labels only.
        let labelled = meta(
            None,
            &[
                (LABEL_REPOSITORY_SOURCE_NAME, "main"),
                (LABEL_REPOSITORY_SOURCE_NAMESPACE, "team-a"),
            ],
        );
        assert_eq!(
            owning_repository_source(&labelled),
            Some(Named {
                namespace: "team-a".to_owned(),
                name: "main".to_owned(),
                uid: None
            })
        );
        assert_eq!(owning_source(&labelled), None);
        assert_eq!(owning_repository_source(&meta(Some("garbage"), &[])), None);
        // The same labels on an object in another namespace (a shared publish namespace,
        // where another team can write): they name nobody.
        let elsewhere = ObjectMeta {
            namespace: Some("shared".to_owned()),
            ..labelled
        };
        assert_eq!(owning_repository_source(&elsewhere), None);
    }

    #[test]
    fn annotations_round_trip() {
        assert_eq!(Owner::parse(&me().annotation()), Some(me()));
        assert_eq!(Owner::parse("a/b/c"), None);
        assert_eq!(Owner::parse("a//c/d"), None);
    }
}
