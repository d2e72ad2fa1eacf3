//! Package and PackageMetadata in the cluster: server-side apply of what the pipeline
//! rendered, retention of the newest `publish.retain` versions, and removal on deletion.
//!
//! Everything published carries the source's labels (to find it) and its owner annotation (to
//! prove it, see [`crate::controller::ownership`]): every write and delete first checks that the object is
//! this source's, so one source — in another namespace or the same one — can never replace or
//! remove what another published.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Resource as _, ResourceExt};

use crate::api::FIELD_MANAGER;
use crate::api::conditions::reasons;
use crate::carvel::{Package, PackageMetadata};
use crate::controller::context::{Context, KIND};
use crate::controller::labels::selector;
use crate::controller::outcome::{Failure, Retry};
use crate::controller::ownership::{self, Claim, Holder, Owner};
use crate::pipeline::{Outcome, Stage};

/// API version of kapp-controller's Package and PackageMetadata.
pub(super) const PACKAGING_API: &str = "data.packaging.carvel.dev/v1alpha1";

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The cluster does not serve data.packaging.carvel.dev.
    #[error(
        "the cluster does not serve {PACKAGING_API} (Package, PackageMetadata): kapp-controller \
         is not installed. The bundle is pushed; install kapp-controller and the Package is \
         applied at the next interval, or set spec.publish.enabled: false to only push"
    )]
    ApiMissing,
    /// What was rendered cannot be written as it is (a name taken by another object).
    #[error("{0}")]
    Invalid(String),
    /// The target namespace is another tenant's and not listed by the operator.
    #[error("{0}")]
    NamespaceNotAllowed(String),
    /// The object exists and belongs to someone else; it was left untouched.
    #[error(
        "{object} belongs to {holder}; it was left untouched. Give this source another \
         package.refName or publish.namespace, or delete that object if it is stale \
         (checked again at every interval)"
    )]
    Conflict { object: String, holder: Holder },
    #[error("{action}: {}", crate::controller::outcome::api_message(source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl PublishError {
    fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source,
        }
    }

    /// The condition failure this becomes (on PackagePublished).
    pub(crate) fn to_failure(&self) -> Failure {
        match self {
            PublishError::Invalid(message) => Failure {
                stage: Some(Stage::Render),
                reason: reasons::PUBLISH_FAILED,
                message: format!("{message} (retrying with backoff)"),
                retry: Retry::Backoff,
                earlier_stages_ran: true,
            },
            PublishError::NamespaceNotAllowed(message) => Failure {
                stage: Some(Stage::Render),
                reason: reasons::PUBLISH_NAMESPACE_NOT_ALLOWED,
                message: message.clone(),
                // Fixed by the spec or by the operator's flag (a restart, which retries
                // every Stalled object).
                retry: Retry::Never,
                earlier_stages_ran: true,
            },
            PublishError::Conflict { .. } => Failure {
                stage: Some(Stage::Render),
                reason: reasons::OWNERSHIP_CONFLICT,
                message: self.to_string(),
                // The owner may go away without a change to this object.
                retry: Retry::Interval,
                earlier_stages_ran: true,
            },
            PublishError::ApiMissing => Failure {
                stage: Some(Stage::Render),
                reason: reasons::PACKAGING_API_MISSING,
                message: self.to_string(),
                retry: Retry::Interval,
                earlier_stages_ran: true,
            },
            PublishError::Kube { source, .. } => {
                let invalid =
                    matches!(source, kube::Error::Api(s) if s.code == 422 || s.code == 400);
                Failure {
                    stage: Some(Stage::Render),
                    reason: if invalid {
                        reasons::INVALID_SPEC
                    } else {
                        reasons::PUBLISH_FAILED
                    },
                    message: if invalid {
                        format!("{self}: the API server rejected the Package; fix spec.package")
                    } else {
                        format!("{self} (retrying with backoff)")
                    },
                    retry: if invalid {
                        Retry::Never
                    } else {
                        Retry::Backoff
                    },
                    earlier_stages_ran: true,
                }
            }
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether the cluster serves Package/PackageMetadata (asked after a 404, which can also mean
/// a missing namespace).
async fn api_present(client: &Client) -> Result<bool, PublishError> {
    match client.list_api_group_resources(PACKAGING_API).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == "packages")),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(PublishError::kube(
            format!("discovering {PACKAGING_API}"),
            e,
        )),
    }
}

async fn classify(client: &Client, action: String, e: kube::Error) -> PublishError {
    if is_not_found(&e) {
        match api_present(client).await {
            Ok(false) => return PublishError::ApiMissing,
            Err(other) => return other,
            Ok(true) => {}
        }
    }
    PublishError::kube(action, e)
}

/// Package `namespace/name`, if it exists.
pub(super) async fn get(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Package>, PublishError> {
    let api: Api<Package> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(found) => Ok(found),
        Err(e) => Err(classify(client, format!("reading Package {namespace}/{name}"), e).await),
    }
}

/// Whether the PackageMetadata `desired` names exists in `namespace`, belongs to `owner` and
/// has the spec it would be written with.
pub(super) async fn metadata_in_place(
    ctx: &Context,
    namespace: &str,
    desired: &PackageMetadata,
    owner: &Owner,
) -> Result<bool, PublishError> {
    let api: Api<PackageMetadata> = Api::namespaced(ctx.client.clone(), namespace);
    let found = read(&ctx.client, &api, namespace, &desired.name_any()).await?;
    Ok(found.is_some_and(|m| {
        ownership::holds_applied(&m.spec, &desired.spec)
            && ownership::claim(Some(m.meta()), owner) == Claim::Ours
            && crate::controller::labels::labels_in_place(
                m.metadata.labels.as_ref(),
                desired.metadata.labels.as_ref(),
                ctx.settings.shard_selector.as_deref(),
            )
    }))
}

/// The bundle a Package fetches.
pub(super) fn fetched_image(p: &Package) -> Option<&str> {
    p.spec
        .template
        .spec
        .fetch
        .iter()
        .find_map(|f| f.imgpkg_bundle.as_ref().map(|b| b.image.as_str()))
}

/// Applies the Package and PackageMetadata as `owner`'s (server-side apply, field manager
/// `packsmith`). Both are checked before either is written: an object of someone else's is a
/// [`PublishError::Conflict`] and nothing is written. A new object is created (which fails if
/// another source created it in the meantime); an existing one is applied with its
/// resourceVersion as a precondition, so it cannot have changed hands since it was read.
pub(super) async fn apply(
    ctx: &Context,
    namespace: &str,
    outcome: &Outcome,
    owner: &Owner,
) -> Result<(), PublishError> {
    let client = &ctx.client;
    let metadata_api: Api<PackageMetadata> = Api::namespaced(client.clone(), namespace);
    let package_api: Api<Package> = Api::namespaced(client.clone(), namespace);
    let metadata_name = outcome.metadata.name_any();
    let package_name = outcome.package.name_any();
    let existing_metadata = read(client, &metadata_api, namespace, &metadata_name).await?;
    let existing_package = read(client, &package_api, namespace, &package_name).await?;
    let metadata_claim = checked_claim(existing_metadata.as_ref(), owner, namespace)?;
    let package_claim = checked_claim(existing_package.as_ref(), owner, namespace)?;

    let mut metadata = outcome.metadata.clone();
    owned(&mut metadata.metadata, owner);
    write(
        ctx,
        &metadata_api,
        namespace,
        metadata,
        metadata_claim,
        existing_metadata,
    )
    .await?;
    let mut package = outcome.package.clone();
    owned(&mut package.metadata, owner);
    write(
        ctx,
        &package_api,
        namespace,
        package,
        package_claim,
        existing_package,
    )
    .await
}

/// The object `name`, if it exists.
pub(super) async fn read<K>(
    client: &Client,
    api: &Api<K>,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, PublishError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(found) => Ok(found),
        Err(e) => Err(classify(
            client,
            format!("reading {} {namespace}/{name}", K::kind(&())),
            e,
        )
        .await),
    }
}

/// [`ownership::claim`], with a conflict as the error that names the holder.
pub(super) fn checked_claim<K: kube::Resource<DynamicType = ()>>(
    existing: Option<&K>,
    owner: &Owner,
    namespace: &str,
) -> Result<Claim, PublishError> {
    match ownership::claim(existing.map(|k| k.meta()), owner) {
        Claim::Conflict(holder) => Err(PublishError::Conflict {
            object: format!(
                "{} {namespace}/{}",
                K::kind(&()),
                existing
                    .map(|k| k.meta().name.clone().unwrap_or_default())
                    .unwrap_or_default()
            ),
            holder,
        }),
        claim => Ok(claim),
    }
}

/// Marks `meta` as `owner`'s.
pub(super) fn owned(meta: &mut kube::api::ObjectMeta, owner: &Owner) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(owner.annotations());
}

pub(super) async fn write<K>(
    ctx: &Context,
    api: &Api<K>,
    namespace: &str,
    mut object: K,
    claim: Claim,
    existing: Option<K>,
) -> Result<(), PublishError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let what = format!("{} {namespace}/{name}", K::kind(&()));
    let result = match claim {
        Claim::Free => api
            .create(&PostParams::default(), &object)
            .await
            .map(|_| "create"),
        _ => {
            object.meta_mut().resource_version =
                existing.and_then(|e| e.meta().resource_version.clone());
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map(|_| "apply")
        }
    };
    match result {
        Ok(verb) => {
            ctx.metrics.wrote(KIND, &K::plural(&()), verb);
            Ok(())
        }
        // Created or changed by someone else since it was read: decided again next time.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(PublishError::Invalid(format!(
            "{what} changed while it was being published (another writer); retrying"
        ))),
        Err(e) => Err(classify(&ctx.client, format!("applying {what}"), e).await),
    }
}

/// Deletes the Packages `source` published in `namespace` beyond the newest `retain`
/// (by release time, then version); `keep` (the current Package) always stays. Returns the
/// names deleted.
pub(super) async fn prune(
    ctx: &Context,
    namespace: &str,
    owner: &Owner,
    keep: &str,
    retain: u32,
) -> Result<Vec<String>, PublishError> {
    let api: Api<Package> = Api::namespaced(ctx.client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&selector(&owner.namespace, &owner.name)))
        .await
        .map_err(|e| PublishError::kube(format!("listing Packages in {namespace}"), e))?;
    let ours: Vec<Package> = list
        .items
        .into_iter()
        .filter(|p| ownership::is_ours(p.meta(), owner))
        .collect();
    let doomed = beyond_retention(&ours, keep, retain);
    for package in ours.iter().filter(|p| doomed.contains(&p.name_any())) {
        delete(ctx, &api, namespace, package).await?;
    }
    Ok(doomed)
}

/// Names of the Packages to delete so that `keep` plus the newest others make `retain`.
pub(super) fn beyond_retention(packages: &[Package], keep: &str, retain: u32) -> Vec<String> {
    let mut others: Vec<&Package> = packages.iter().filter(|p| p.name_any() != keep).collect();
    others.sort_by_key(|p| {
        Reverse((
            p.spec.released_at,
            semver::Version::parse(&p.spec.version).ok(),
        ))
    });
    let keep_others = usize::try_from(retain.max(1) - 1).unwrap_or(usize::MAX);
    others
        .into_iter()
        .skip(keep_others)
        .map(|p| p.name_any())
        .collect()
}

/// Deletes `object` as it was read: the uid and resourceVersion are preconditions, so an
/// object that was replaced or changed hands since is not deleted.
pub(super) async fn delete<K>(
    ctx: &Context,
    api: &Api<K>,
    namespace: &str,
    object: &K,
) -> Result<(), PublishError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.meta().uid.clone(),
            resource_version: object.meta().resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            ctx.metrics.wrote(KIND, &K::plural(&()), "delete");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(PublishError::Invalid(format!(
            "{} {namespace}/{name} changed while it was being deleted; retrying",
            K::kind(&())
        ))),
        Err(e) => Err(PublishError::kube(
            format!("deleting {} {namespace}/{name}", K::kind(&())),
            e,
        )),
    }
}

/// Removes every Package `source` published in each of `namespaces`, and its
/// PackageMetadata unless another Package still names it. A cluster without the packaging
/// API has nothing to remove.
pub(super) async fn remove_all(
    ctx: &Context,
    namespaces: &[String],
    owner: &Owner,
) -> Result<usize, PublishError> {
    let lp = ListParams::default().labels(&selector(&owner.namespace, &owner.name));
    let mut removed = 0;
    for namespace in namespaces {
        let packages: Api<Package> = Api::namespaced(ctx.client.clone(), namespace);
        let ours = match packages.list(&lp).await {
            Ok(list) => list.items,
            Err(e) => {
                match classify(&ctx.client, format!("listing Packages in {namespace}"), e).await {
                    PublishError::ApiMissing => return Ok(removed),
                    other => return Err(other),
                }
            }
        };
        for p in ours.iter().filter(|p| ownership::is_ours(p.meta(), owner)) {
            delete(ctx, &packages, namespace, p).await?;
            removed += 1;
        }
        let metadata: Api<PackageMetadata> = Api::namespaced(ctx.client.clone(), namespace);
        let our_metadata = metadata.list(&lp).await.map_err(|e| {
            PublishError::kube(format!("listing PackageMetadata in {namespace}"), e)
        })?;
        if our_metadata.items.is_empty() {
            continue;
        }
        let remaining = packages
            .list(&ListParams::default())
            .await
            .map_err(|e| PublishError::kube(format!("listing Packages in {namespace}"), e))?;
        let still_used: BTreeMap<&str, ()> = remaining
            .items
            .iter()
            .map(|p| (p.spec.ref_name.as_str(), ()))
            .collect();
        for m in &our_metadata.items {
            let name = m.name_any();
            if !still_used.contains_key(name.as_str()) && ownership::is_ours(m.meta(), owner) {
                delete(ctx, &metadata, namespace, m).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::Rfc3339Time;
    use crate::controller::ownership::holds_applied;

    fn package(version: &str, released: i64) -> Package {
        let mut p = Package::new("demo.example.com", version, Default::default());
        p.spec.released_at = Some(Rfc3339Time(jiff::Timestamp::from_second(released).unwrap()));
        p
    }

    #[test]
    fn keeps_the_current_package_and_the_newest_others() {
        let all = vec![
            package("1.0.0", 10),
            package("1.1.0", 20),
            package("1.2.0", 30),
            package("0.9.0", 40), // published last, though a lower version
        ];
        let doomed = beyond_retention(&all, "demo.example.com.1.2.0", 2);
        assert_eq!(
            doomed,
            vec!["demo.example.com.1.1.0", "demo.example.com.1.0.0"]
        );
        assert!(beyond_retention(&all, "demo.example.com.1.2.0", 10).is_empty());
        assert_eq!(beyond_retention(&all, "demo.example.com.1.2.0", 1).len(), 3);
        assert_eq!(
            selector("ns", "demo"),
            "packsmith.dev/source-name=demo,packsmith.dev/source-namespace=ns"
        );
    }

    #[test]
    fn failures_say_what_to_do() {
        let missing = PublishError::ApiMissing.to_failure();
        assert_eq!(missing.reason, reasons::PACKAGING_API_MISSING);
        assert_eq!(missing.retry, Retry::Interval);
        assert!(missing.message.contains("kapp-controller is not installed"));

        let rejected = PublishError::kube(
            "applying Package ns/x",
            kube::Error::Api(
                kube::core::Status::failure("spec.version: Invalid value", "Invalid")
                    .with_code(422)
                    .boxed(),
            ),
        )
        .to_failure();
        assert_eq!(rejected.reason, reasons::INVALID_SPEC);
        assert!(rejected.is_stalled());
    }

    #[test]
    fn drift_is_a_change_to_a_field_packsmith_applies() {
        let desired = package("1.0.0", 10);
        let mut actual = desired.clone();
        assert!(holds_applied(&actual.spec, &desired.spec));
        // A field someone else set beside ours: applying would not remove it.
        actual.spec.release_notes = "added by a person".to_owned();
        assert!(holds_applied(&actual.spec, &desired.spec));
        // One of ours, changed or removed: drift.
        actual.spec.released_at = None;
        assert!(!holds_applied(&actual.spec, &desired.spec));
        let mut edited = desired.clone();
        edited.spec.version = "6.6.6".to_owned();
        assert!(!holds_applied(&edited.spec, &desired.spec));
    }
}
