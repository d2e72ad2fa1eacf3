//! Package and PackageMetadata in the cluster: server-side apply of what the pipeline
//! rendered, retention of the newest `publish.retain` versions, and removal on deletion.
//!
//! Everything published carries the source's labels, so retention and deletion find exactly
//! what one PackageSource published (and nothing another source or a person applied).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::context::{Context, KIND, LABEL_SOURCE_NAME, LABEL_SOURCE_NAMESPACE};
use super::status::{Failure, Retry};
use crate::api::FIELD_MANAGER;
use crate::api::conditions::reasons;
use crate::carvel::{Package, PackageMetadata};
use crate::pipeline::{Outcome, Stage};

/// API version of kapp-controller's Package and PackageMetadata.
pub const PACKAGING_API: &str = "data.packaging.carvel.dev/v1alpha1";

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
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
    #[error("{action}: {}", super::api_message(source))]
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
    pub fn to_failure(&self) -> Failure {
        match self {
            PublishError::Invalid(message) => Failure {
                stage: Some(Stage::Render),
                reason: reasons::PUBLISH_FAILED,
                message: format!("{message} (retrying with backoff)"),
                retry: Retry::Backoff,
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

/// The label selector of what `name` in `namespace` published.
pub fn selector(namespace: &str, name: &str) -> String {
    format!("{LABEL_SOURCE_NAME}={name},{LABEL_SOURCE_NAMESPACE}={namespace}")
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
pub async fn get(
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

/// The bundle a Package fetches.
pub fn fetched_image(p: &Package) -> Option<&str> {
    p.spec
        .template
        .spec
        .fetch
        .iter()
        .find_map(|f| f.imgpkg_bundle.as_ref().map(|b| b.image.as_str()))
}

/// Applies the Package and PackageMetadata (server-side apply, field manager `packsmith`).
pub async fn apply(ctx: &Context, namespace: &str, outcome: &Outcome) -> Result<(), PublishError> {
    let client = &ctx.client;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let metadata_api: Api<PackageMetadata> = Api::namespaced(client.clone(), namespace);
    let name = outcome.metadata.name_any();
    if let Err(e) = metadata_api
        .patch(&name, &pp, &Patch::Apply(&outcome.metadata))
        .await
    {
        return Err(classify(
            client,
            format!("applying PackageMetadata {namespace}/{name}"),
            e,
        )
        .await);
    }
    ctx.metrics.wrote(KIND, "packagemetadatas", "apply");
    let package_api: Api<Package> = Api::namespaced(client.clone(), namespace);
    let name = outcome.package.name_any();
    if let Err(e) = package_api
        .patch(&name, &pp, &Patch::Apply(&outcome.package))
        .await
    {
        return Err(classify(client, format!("applying Package {namespace}/{name}"), e).await);
    }
    ctx.metrics.wrote(KIND, "packages", "apply");
    Ok(())
}

/// Deletes the Packages `source` published in `namespace` beyond the newest `retain`
/// (by release time, then version); `keep` (the current Package) always stays. Returns the
/// names deleted.
pub async fn prune(
    ctx: &Context,
    namespace: &str,
    source: (&str, &str),
    keep: &str,
    retain: u32,
) -> Result<Vec<String>, PublishError> {
    let api: Api<Package> = Api::namespaced(ctx.client.clone(), namespace);
    let (source_ns, source_name) = source;
    let list = api
        .list(&ListParams::default().labels(&selector(source_ns, source_name)))
        .await
        .map_err(|e| PublishError::kube(format!("listing Packages in {namespace}"), e))?;
    let doomed = beyond_retention(&list.items, keep, retain);
    for name in &doomed {
        delete(ctx, &api, namespace, name).await?;
    }
    Ok(doomed)
}

/// Names of the Packages to delete so that `keep` plus the newest others make `retain`.
pub fn beyond_retention(packages: &[Package], keep: &str, retain: u32) -> Vec<String> {
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

async fn delete<K>(
    ctx: &Context,
    api: &Api<K>,
    namespace: &str,
    name: &str,
) -> Result<(), PublishError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.metrics.wrote(KIND, &K::plural(&()), "delete");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(PublishError::kube(
            format!("deleting {} {namespace}/{name}", K::kind(&())),
            e,
        )),
    }
}

/// Removes every Package `source` published in each of `namespaces`, and its
/// PackageMetadata unless another Package still names it. A cluster without the packaging
/// API has nothing to remove.
pub async fn remove_all(
    ctx: &Context,
    namespaces: &[String],
    source: (&str, &str),
) -> Result<usize, PublishError> {
    let (source_ns, source_name) = source;
    let lp = ListParams::default().labels(&selector(source_ns, source_name));
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
        for p in &ours {
            delete(ctx, &packages, namespace, &p.name_any()).await?;
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
            if !still_used.contains_key(name.as_str()) {
                delete(ctx, &metadata, namespace, &name).await?;
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
}
