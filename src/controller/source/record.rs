//! Releases recorded instead of applied: when a PackageSource's Package must not be applied
//! in-cluster (a PackageRepositorySource selects it, whose PackageRepository makes
//! kapp-controller create that very Package — and kapp-controller cannot create a Package that
//! already exists), the rendered Package and PackageMetadata go into a ConfigMap named like the
//! Package, in the source's namespace, labelled with the source and owned by it. The
//! PackageRepositorySource reads them from there; retention and deletion work as for Packages.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::publish::{self, PublishError};
use crate::api::PackageSource;
use crate::carvel::{Package, PackageMetadata};
use crate::controller::context::Context;
use crate::controller::labels::{self, LABEL_RELEASE, selector};
use crate::controller::ownership::{self, Owner};
use crate::pipeline::Outcome;

/// Keys of a release ConfigMap.
pub(crate) const PACKAGE_KEY: &str = "package.yml";
pub(crate) const METADATA_KEY: &str = "metadata.yml";

/// The label selector of the release records of `name` in `namespace`.
pub(crate) fn records_of(namespace: &str, name: &str) -> String {
    format!("{},{LABEL_RELEASE}=true", selector(namespace, name))
}

/// One recorded release, read back.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub package: Package,
    pub metadata: PackageMetadata,
}

/// Why a ConfigMap is not a usable record.
#[derive(Debug, thiserror::Error)]
#[error("ConfigMap {namespace}/{name}: {reason}")]
pub(crate) struct BadRecord {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// The ConfigMap recording `outcome` for `source`.
/// The record ConfigMap's name for Package `package`: the same, except that a revision's
/// build metadata `+` (valid in kapp-controller's Package names, never in a ConfigMap's)
/// becomes a `.`. Another Package's name could only become the same with a refName ending in
/// a numeric label and numeric build metadata; ownership checks then refuse the record, they
/// never overwrite it.
pub(crate) fn record_name(package: &str) -> String {
    package.replace('+', ".")
}

pub(crate) fn desired(
    source: &PackageSource,
    outcome: &Outcome,
    shard_selector: Option<&str>,
) -> Result<ConfigMap, PublishError> {
    let invalid = |e: crate::carvel::Error| PublishError::Invalid(e.to_string());
    let mut labels = labels::published(source, shard_selector);
    labels.insert(LABEL_RELEASE.to_owned(), "true".to_owned());
    let owner = source.controller_owner_ref(&()).map(|mut o| {
        // Blocking the owner's deletion would need the finalizers permission; GC is enough.
        o.block_owner_deletion = None;
        o
    });
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(&outcome.package.name_any())),
            namespace: source.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o: OwnerReference| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                PACKAGE_KEY.to_owned(),
                strip(&outcome.package).to_yaml().map_err(invalid)?,
            ),
            (
                METADATA_KEY.to_owned(),
                strip_metadata(&outcome.metadata)
                    .to_yaml()
                    .map_err(invalid)?,
            ),
        ])),
        ..ConfigMap::default()
    })
}

/// The Package as a repository carries it: name only, no namespace or labels.
fn strip(p: &Package) -> Package {
    Package {
        metadata: ObjectMeta {
            name: p.metadata.name.clone(),
            ..ObjectMeta::default()
        },
        ..p.clone()
    }
}

fn strip_metadata(m: &PackageMetadata) -> PackageMetadata {
    PackageMetadata {
        metadata: ObjectMeta {
            name: m.metadata.name.clone(),
            ..ObjectMeta::default()
        },
        ..m.clone()
    }
}

/// Reads a record back.
pub(crate) fn parse(cm: &ConfigMap) -> Result<Record, BadRecord> {
    let bad = |reason: String| BadRecord {
        namespace: cm.namespace().unwrap_or_default(),
        name: cm.name_any(),
        reason,
    };
    let data = cm.data.as_ref();
    let get = |key: &str| {
        data.and_then(|d| d.get(key))
            .ok_or_else(|| bad(format!("has no {key}")))
    };
    let package = Package::from_yaml(get(PACKAGE_KEY)?).map_err(|e| bad(e.to_string()))?;
    let metadata =
        PackageMetadata::from_yaml(get(METADATA_KEY)?).map_err(|e| bad(e.to_string()))?;
    Ok(Record { package, metadata })
}

/// The Package recorded in ConfigMap `name`, if there is a readable one. Only its own key is
/// read: a record whose metadata was edited still gives its release time, so restoring the
/// record does not change the Package (nor the repository's digest).
pub(crate) async fn package(ctx: &Context, namespace: &str, name: &str) -> Option<Package> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let cm = api.get_opt(name).await.ok()??;
    Package::from_yaml(cm.data.as_ref()?.get(PACKAGE_KEY)?).ok()
}

/// Whether `existing` is `owner`'s record and holds what applying `desired` would write: the
/// labels it is found by and, byte for byte, every data key packsmith writes. Keys and labels
/// others add beside them are not drift (applying would not remove them).
pub(crate) fn in_place(existing: &ConfigMap, desired: &ConfigMap, owner: &Owner) -> bool {
    let subset = |desired: Option<&BTreeMap<String, String>>,
                  actual: Option<&BTreeMap<String, String>>| {
        desired
            .into_iter()
            .flatten()
            .all(|(k, v)| actual.and_then(|a| a.get(k)) == Some(v))
    };
    ownership::claim(Some(existing.meta()), owner) == ownership::Claim::Ours
        && subset(
            desired.metadata.labels.as_ref(),
            existing.metadata.labels.as_ref(),
        )
        && subset(desired.data.as_ref(), existing.data.as_ref())
}

/// Whether the record of `outcome` is in the cluster as [`apply`] would leave it: status alone
/// is not proof (a person may have deleted or edited it since).
pub(crate) async fn is_in_place(
    ctx: &Context,
    source: &PackageSource,
    outcome: &Outcome,
) -> Result<bool, PublishError> {
    let namespace = source.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let desired = desired(source, outcome, ctx.settings.shard_selector.as_deref())?;
    let existing = publish::read(&ctx.client, &api, &namespace, &desired.name_any()).await?;
    Ok(existing.is_some_and(|e| {
        in_place(&e, &desired, &Owner::of(source))
            && labels::labels_in_place(
                e.metadata.labels.as_ref(),
                desired.metadata.labels.as_ref(),
                ctx.settings.shard_selector.as_deref(),
            )
    }))
}

/// Applies the record, then deletes the source's records beyond the newest `retain` (the
/// current one always stays). Refuses to take over a ConfigMap that is not a record of this
/// source.
pub(crate) async fn apply(
    ctx: &Context,
    source: &PackageSource,
    outcome: &Outcome,
    retain: u32,
) -> Result<Vec<String>, PublishError> {
    let namespace = source.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let owner = Owner::of(source);
    let mut cm = desired(source, outcome, ctx.settings.shard_selector.as_deref())?;
    publish::owned(&mut cm.metadata, &owner);
    let name = cm.name_any();
    let existing = publish::read(&ctx.client, &api, &namespace, &name).await?;
    let claim = publish::checked_claim(existing.as_ref(), &owner, &namespace)?;
    publish::write(ctx, &api, &namespace, cm, claim, existing).await?;

    let all = list(ctx, &namespace, &owner).await?;
    let doomed = beyond_retention(&all, &name, retain);
    for cm in all.iter().filter(|cm| doomed.contains(&cm.name_any())) {
        publish::delete(ctx, &api, &namespace, cm).await?;
    }
    Ok(doomed)
}

/// The release records `owner` owns (labels find them, the owner annotation proves them).
async fn list(
    ctx: &Context,
    namespace: &str,
    owner: &Owner,
) -> Result<Vec<ConfigMap>, PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let name = &owner.name;
    api.list(&ListParams::default().labels(&records_of(namespace, name)))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|cm| ownership::is_ours(cm.meta(), owner))
                .collect()
        })
        .map_err(|e| PublishError::Kube {
            action: format!("listing the release ConfigMaps of {namespace}/{name}"),
            source: e,
        })
}

/// Every release `owner` recorded, newest first; a record that does not parse
/// is an error naming it (someone edited it), not skipped.
pub(crate) async fn read_all(ctx: &Context, owner: &Owner) -> Result<Vec<Record>, PublishError> {
    let mut records = Vec::new();
    for cm in list(ctx, &owner.namespace, owner).await? {
        records.push(parse(&cm).map_err(|e| PublishError::Invalid(e.to_string()))?);
    }
    records.sort_by_key(|r| {
        Reverse((
            r.package.spec.released_at,
            semver::Version::parse(&r.package.spec.version).ok(),
        ))
    });
    Ok(records)
}

/// Names of the records to delete so that `keep` plus the newest others make `retain`.
fn beyond_retention(records: &[ConfigMap], keep: &str, retain: u32) -> Vec<String> {
    let packages: Vec<Package> = records
        .iter()
        .map(|cm| {
            // An unreadable record has no release time: it counts as the oldest.
            let mut p = parse(cm).map_or_else(
                |_| Package::new("unreadable", "0.0.0", Default::default()),
                |r| r.package,
            );
            p.metadata.name = Some(cm.name_any());
            p
        })
        .collect();
    publish::beyond_retention(&packages, keep, retain)
}

/// Deletes every release record of `name` in `namespace` (it now publishes in-cluster, or it
/// is being deleted). Returns how many.
pub(crate) async fn remove_all(ctx: &Context, owner: &Owner) -> Result<usize, PublishError> {
    let namespace = &owner.namespace;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let all = list(ctx, namespace, owner).await?;
    for cm in &all {
        publish::delete(ctx, &api, namespace, cm).await?;
    }
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::Rfc3339Time;

    fn record(version: &str, released: i64) -> ConfigMap {
        let mut p = Package::new("demo.example.com", version, Default::default());
        p.spec.released_at = Some(Rfc3339Time(jiff::Timestamp::from_second(released).unwrap()));
        let m = PackageMetadata::new("demo.example.com", Default::default());
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("demo.example.com.{version}")),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (PACKAGE_KEY.to_owned(), p.to_yaml().unwrap()),
                (METADATA_KEY.to_owned(), m.to_yaml().unwrap()),
            ])),
            ..ConfigMap::default()
        }
    }

    /// A revision's Package name has a `+`; its record's ConfigMap name may not (a DNS
    /// subdomain, as the API server checks every ConfigMap name).
    #[test]
    fn a_revisions_record_has_a_valid_configmap_name() {
        let dns_subdomain = |name: &str| {
            name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        };
        let package = "demo.example.com.1.0.0+packsmith.2";
        let name = record_name(package);
        assert_eq!(name, "demo.example.com.1.0.0.packsmith.2");
        assert!(dns_subdomain(&name), "{name}");
        assert!(
            !dns_subdomain(package),
            "the Package name itself is not one"
        );
        assert_ne!(name, record_name("demo.example.com.1.0.0"));
        assert_eq!(
            record_name("demo.example.com.1.0.0"),
            "demo.example.com.1.0.0"
        );
    }

    #[test]
    fn records_round_trip_and_retention_keeps_the_newest() {
        let all = vec![
            record("1.0.0", 10),
            record("1.1.0", 20),
            record("1.2.0", 30),
        ];
        let r = parse(&all[1]).unwrap();
        assert_eq!(r.package.spec.version, "1.1.0");
        assert_eq!(r.metadata.name_any(), "demo.example.com");
        assert_eq!(
            beyond_retention(&all, "demo.example.com.1.2.0", 2),
            vec!["demo.example.com.1.0.0"]
        );
        assert_eq!(
            records_of("ns", "demo"),
            "packsmith.dev/source-name=demo,packsmith.dev/source-namespace=ns,packsmith.dev/release=true"
        );
    }

    #[test]
    fn a_record_is_in_place_only_when_ours_and_as_written() {
        let owner = Owner::new("PackageSource", "ns", "demo", "uid-demo");
        let mut desired = record("1.0.0", 10);
        desired.metadata.labels = Some(BTreeMap::from([(
            LABEL_RELEASE.to_owned(),
            "true".to_owned(),
        )]));
        let written = || {
            let mut cm = desired.clone();
            cm.metadata.annotations = Some(owner.annotations());
            cm
        };
        assert!(in_place(&written(), &desired, &owner));

        // Additions beside packsmith's are not drift.
        let mut added = written();
        added
            .data
            .get_or_insert_with(Default::default)
            .insert("notes".to_owned(), "x".to_owned());
        added
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("team".to_owned(), "a".to_owned());
        assert!(in_place(&added, &desired, &owner));

        // A key edited (another release time is another record) or removed.
        let mut edited = written();
        edited.data = record("1.0.0", 11).data;
        assert!(!in_place(&edited, &desired, &owner));
        let mut removed = written();
        removed
            .data
            .get_or_insert_with(Default::default)
            .remove(METADATA_KEY);
        assert!(!in_place(&removed, &desired, &owner));
        let mut emptied = written();
        emptied.data = None;
        assert!(!in_place(&emptied, &desired, &owner));

        // The label it is found by removed, or not ours.
        let mut unlabelled = written();
        unlabelled.metadata.labels = None;
        assert!(!in_place(&unlabelled, &desired, &owner));
        let recreated = Owner::new("PackageSource", "ns", "demo", "uid-new");
        assert!(!in_place(&written(), &desired, &recreated));
        assert!(!in_place(&desired, &desired, &owner));
    }

    #[test]
    fn a_broken_record_is_named() {
        let mut cm = record("1.0.0", 10);
        cm.data.as_mut().unwrap().remove(PACKAGE_KEY);
        let e = parse(&cm).unwrap_err().to_string();
        assert!(
            e.contains("ns/demo.example.com.1.0.0") && e.contains(PACKAGE_KEY),
            "{e}"
        );
    }
}
