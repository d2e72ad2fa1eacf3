//! What a PackageRepositorySource publishes: every release of every selected, Ready
//! PackageSource — read from its release records, or from the Packages it applied — cleaned of
//! cluster metadata and written as the `packages/` tree of the repository bundle.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{api_failure, api_missing, is_not_found};
use crate::api::PackageSource;
use crate::api::conditions::{self, reasons, types};
use crate::carvel::{Package, PackageMetadata, PackageMetadataSpec};
use crate::controller::context::Context;
use crate::controller::labels::selector as published_by;
use crate::controller::outcome::{Failure, Retry};
use crate::controller::ownership::{self, Owner};
use crate::controller::source::record;
use crate::publish::repository as repo;

/// What the selected PackageSources published.
#[derive(Default)]
pub(super) struct Collected {
    /// By `refName.version`.
    pub(super) packages: BTreeMap<String, Package>,
    /// By refName.
    pub(super) metadata: BTreeMap<String, PackageMetadata>,
    /// Names of the selected sources.
    pub(super) selected: Vec<String>,
    /// Selected sources that contributed nothing, with why.
    pub(super) not_ready: Vec<String>,
    /// Sources that contributed.
    pub(super) contributing: usize,
}

impl Collected {
    pub(super) fn names(&self) -> Vec<String> {
        self.packages.keys().cloned().collect()
    }

    pub(super) fn fingerprint(&self) -> u64 {
        let text = serde_json::to_string(&(
            self.packages.values().collect::<Vec<_>>(),
            self.metadata.values().collect::<Vec<_>>(),
        ))
        .unwrap_or_default();
        crate::controller::triggers::hash(&text)
    }
}

/// Lists the selected PackageSources and reads the Packages each Ready one published.
pub(super) async fn collect(
    ctx: &Context,
    namespace: &str,
    query: &str,
) -> Result<Collected, Failure> {
    let sources: Api<PackageSource> = Api::namespaced(ctx.client.clone(), namespace);
    let list = sources
        .list(&ListParams::default().labels(query))
        .await
        .map_err(|e| api_failure(format!("listing PackageSources in {namespace}"), &e))?;
    let mut out = Collected::default();
    for source in list.items {
        let name = source.name_any();
        out.selected.push(name.clone());
        let status = source.status.clone().unwrap_or_default();
        if !conditions::is_true(&status.conditions, types::READY) {
            out.not_ready.push(format!("{name} (not Ready)"));
            continue;
        }
        let Some(published) = status.package.as_ref() else {
            out.not_ready.push(format!("{name} (nothing released yet)"));
            continue;
        };
        if published.namespace.is_none() {
            // Recorded, not applied in-cluster: the ConfigMaps hold every retained release.
            let records = record::read_all(ctx, &Owner::of(&source))
                .await
                .map_err(|e| Failure {
                    stage: None,
                    reason: reasons::PUBLISH_FAILED,
                    message: format!("reading the releases of PackageSource {namespace}/{name}: {e} (retrying with backoff)"),
                    retry: Retry::Backoff,
                    earlier_stages_ran: false,
                })?;
            if records.is_empty() {
                out.not_ready
                    .push(format!("{name} (no release ConfigMap in {namespace})"));
                continue;
            }
            out.contributing += 1;
            for r in records {
                let ref_name = r.package.spec.ref_name.clone();
                out.metadata
                    .entry(ref_name.clone())
                    .or_insert_with(|| clean_metadata(r.metadata));
                out.packages.insert(
                    format!("{ref_name}.{}", r.package.spec.version),
                    clean_package(r.package),
                );
            }
            continue;
        }
        let publish_ns = published
            .namespace
            .clone()
            .or_else(|| source.spec.publish.namespace.clone())
            .unwrap_or_else(|| namespace.to_owned());
        let owner = Owner::of(&source);
        let packages: Api<Package> = Api::namespaced(ctx.client.clone(), &publish_ns);
        let found = match packages
            .list(&ListParams::default().labels(&published_by(namespace, &name)))
            .await
        {
            // Labels find them; only the owner annotation proves they are this source's.
            Ok(l) => l
                .items
                .into_iter()
                .filter(|p| ownership::is_ours(kube::Resource::meta(p), &owner))
                .collect::<Vec<_>>(),
            Err(e) if is_not_found(&e) => return Err(api_missing("data.packaging.carvel.dev")),
            Err(e) => {
                return Err(api_failure(
                    format!("listing the Packages of PackageSource {namespace}/{name}"),
                    &e,
                ));
            }
        };
        if found.is_empty() {
            out.not_ready
                .push(format!("{name} (no Package in {publish_ns})"));
            continue;
        }
        out.contributing += 1;
        let metadata_api: Api<PackageMetadata> = Api::namespaced(ctx.client.clone(), &publish_ns);
        for package in found {
            let ref_name = package.spec.ref_name.clone();
            if !out.metadata.contains_key(&ref_name) {
                let metadata = metadata_api
                    .get_opt(&ref_name)
                    .await
                    .map_err(|e| {
                        api_failure(
                            format!("reading PackageMetadata {publish_ns}/{ref_name}"),
                            &e,
                        )
                    })?
                    // Only the source's own: in a shared publish namespace another team
                    // may have written the PackageMetadata of this refName.
                    .filter(|m| ownership::is_ours(kube::Resource::meta(m), &owner))
                    .map(clean_metadata)
                    .unwrap_or_else(|| {
                        PackageMetadata::new(ref_name.clone(), PackageMetadataSpec::default())
                    });
                out.metadata.insert(ref_name.clone(), metadata);
            }
            let package = clean_package(package);
            out.packages
                .insert(format!("{ref_name}.{}", package.spec.version), package);
        }
    }
    Ok(out)
}

/// A Package as it goes into a repository: name and spec, none of the cluster's metadata.
pub(super) fn clean_package(p: Package) -> Package {
    Package {
        metadata: ObjectMeta {
            name: p.metadata.name,
            ..ObjectMeta::default()
        },
        ..p
    }
}

/// A PackageMetadata as it goes into a repository.
pub(super) fn clean_metadata(m: PackageMetadata) -> PackageMetadata {
    PackageMetadata {
        metadata: ObjectMeta {
            name: m.metadata.name,
            ..ObjectMeta::default()
        },
        ..m
    }
}

/// Replaces `<work>/packages` and `<work>/.imgpkg` with the collected documents.
pub(super) fn write_tree(work: &Path, collected: &Collected) -> Result<(), Failure> {
    let io = |what: String, e: std::io::Error| Failure {
        stage: None,
        reason: reasons::PUSH_FAILED,
        message: format!("{what}: {e} (check the controller's --cache-dir volume)"),
        retry: Retry::Backoff,
        earlier_stages_ran: false,
    };
    for dir in [repo::PACKAGES_DIR, repo::IMGPKG_DIR] {
        let path = work.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(|e| io(format!("clearing {}", path.display()), e))?;
        }
    }
    std::fs::create_dir_all(work).map_err(|e| io(format!("creating {}", work.display()), e))?;
    for package in collected.packages.values() {
        let metadata = &collected.metadata[&package.spec.ref_name];
        repo::write_package_files(work, package, metadata).map_err(|e| Failure {
            stage: None,
            reason: reasons::PUBLISH_FAILED,
            message: e.to_string(),
            retry: Retry::Backoff,
            earlier_stages_ran: false,
        })?;
    }
    Ok(())
}
