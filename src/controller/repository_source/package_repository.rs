//! The PackageRepository a PackageRepositorySource creates so kapp-controller fetches its
//! bundle: named, desired, compared (only ours, and only the fields packsmith applies) and
//! applied.

use std::collections::BTreeMap;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::{KIND, api_failure, api_missing, is_not_found};
use crate::api::FIELD_MANAGER;
use crate::api::conditions::reasons;
use crate::api::repository_source::PackageRepositorySource;
use crate::carvel::PackageRepository;
use crate::controller::context::Context;
use crate::controller::labels::{
    LABEL_MANAGED_BY, LABEL_REPOSITORY_SOURCE_NAME, LABEL_REPOSITORY_SOURCE_NAMESPACE, MANAGED_BY,
};
use crate::controller::outcome::{Failure, Retry};
use crate::controller::ownership::{self, Claim, Owner};

/// API group of kapp-controller's PackageRepository.
pub(super) const PACKAGING_API: &str = "packaging.carvel.dev/v1alpha1";

/// `(name, namespace)` of the PackageRepository: `packageRepository.name`/`.namespace`, else
/// the object's own.
pub(super) fn package_repository_name(obj: &PackageRepositorySource) -> (String, String) {
    let target = &obj.spec.package_repository;
    (
        target.name.clone().unwrap_or_else(|| obj.name_any()),
        target
            .namespace
            .clone()
            .unwrap_or_else(|| obj.namespace().unwrap_or_default()),
    )
}

/// The PackageRepository as applied: fetches `image`, labelled as owned by packsmith.
pub(super) fn desired_package_repository(
    obj: &PackageRepositorySource,
    name: &str,
    namespace: &str,
    image: &str,
) -> PackageRepository {
    let mut r = PackageRepository::for_bundle(name, image);
    r.metadata.namespace = Some(namespace.to_owned());
    r.metadata.labels = Some(BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_REPOSITORY_SOURCE_NAME.to_owned(), obj.name_any()),
        (
            LABEL_REPOSITORY_SOURCE_NAMESPACE.to_owned(),
            obj.namespace().unwrap_or_default(),
        ),
    ]));
    r
}

/// Whether `existing` is `owner`'s and holds what applying `desired` would write: its labels
/// and every spec field packsmith sets. Status (kapp-controller's) and fields others add
/// beside packsmith's are not compared: applying would not change them, so counting them
/// would re-apply at every reconcile.
pub(super) fn in_place(
    existing: &PackageRepository,
    desired: &PackageRepository,
    owner: &Owner,
) -> bool {
    ownership::claim(Some(existing.meta()), owner) == Claim::Ours
        && desired
            .labels()
            .iter()
            .all(|(k, v)| existing.labels().get(k) == Some(v))
        && ownership::holds_applied(&existing.spec, &desired.spec)
}

/// Applies the PackageRepository unless it is there, ours, and holds what we apply: status
/// alone is not proof (a person may have deleted or edited it since).
pub(super) async fn ensure_package_repository(
    ctx: &Context,
    obj: &PackageRepositorySource,
    name: &str,
    namespace: &str,
    image: &str,
) -> Result<(), Failure> {
    if let Err(message) = ctx
        .settings
        .check_publish_namespace(&obj.namespace().unwrap_or_default(), namespace)
    {
        return Err(Failure {
            stage: None,
            reason: reasons::PUBLISH_NAMESPACE_NOT_ALLOWED,
            message,
            retry: Retry::Never,
            earlier_stages_ran: false,
        });
    }
    let api: Api<PackageRepository> = Api::namespaced(ctx.client.clone(), namespace);
    let desired = desired_package_repository(obj, name, namespace, image);
    let action = format!("applying PackageRepository {namespace}/{name}");
    let existing = match api.get_opt(name).await {
        Ok(e) => e,
        Err(e) if is_not_found(&e) => return Err(missing_or(ctx, action, e).await),
        Err(e) => return Err(api_failure(action, &e)),
    };
    let owner = Owner::of(obj);
    let claim = ownership::claim(existing.as_ref().map(|e| e.meta()), &owner);
    if let Claim::Conflict(holder) = claim {
        return Err(Failure {
            stage: None,
            reason: reasons::OWNERSHIP_CONFLICT,
            message: format!(
                "PackageRepository {namespace}/{name} belongs to {holder}; it was left \
                 untouched. Set packageRepository.name, or delete that object if it is stale \
                 (checked again at every interval)"
            ),
            retry: Retry::Interval,
            earlier_stages_ran: false,
        });
    }
    if existing
        .as_ref()
        .is_some_and(|existing| in_place(existing, &desired, &owner))
    {
        return Ok(());
    }
    let mut desired = desired;
    desired
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(owner.annotations());
    let result = match &existing {
        None => api
            .create(&kube::api::PostParams::default(), &desired)
            .await
            .map(|_| "create"),
        Some(existing) => {
            desired.metadata.resource_version = existing.meta().resource_version.clone();
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map(|_| "apply")
        }
    };
    match result {
        Ok(verb) => {
            ctx.metrics.wrote(KIND, "packagerepositories", verb);
            Ok(())
        }
        Err(e) if is_not_found(&e) => Err(missing_or(ctx, action, e).await),
        Err(e) => Err(api_failure(action, &e)),
    }
}

/// A 404 is either a missing API (kapp-controller absent) or a missing namespace.
pub(super) async fn missing_or(ctx: &Context, action: String, e: kube::Error) -> Failure {
    match ctx.client.list_api_group_resources(PACKAGING_API).await {
        Ok(list)
            if list
                .resources
                .iter()
                .any(|r| r.name == "packagerepositories") =>
        {
            Failure {
                stage: None,
                reason: reasons::PUBLISH_FAILED,
                message: format!(
                    "{action}: {} (does namespace packageRepository.namespace exist?)",
                    crate::controller::outcome::api_message(&e)
                ),
                retry: Retry::Backoff,
                earlier_stages_ran: false,
            }
        }
        _ => api_missing(PACKAGING_API),
    }
}
