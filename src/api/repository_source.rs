//! `PackageRepositorySource`: a Carvel package repository aggregated from PackageSources.

#![expect(
    unreachable_pub,
    reason = "kube's KubeSchema/CustomResource derives copy these `pub` items into private \
              scopes, where the lint fires on them; the items are the public API"
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::BundleTarget;

/// Aggregates the Packages published by the selected PackageSources (same namespace) into an
/// imgpkg repository bundle, pushes it, and applies a PackageRepository that points at it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "packsmith.dev",
    version = "v1alpha1",
    kind = "PackageRepositorySource",
    plural = "packagerepositorysources",
    shortname = "pkgreposrc",
    category = "packsmith",
    namespaced,
    status = "PackageRepositorySourceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Packages","type":"integer","jsonPath":".status.packageCount"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.bundle.shortDigest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositorySourceSpec {
    /// Selects PackageSources in this namespace. An empty selector selects all of them.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Where the repository bundle is pushed.
    pub bundle: BundleTarget,
    /// The PackageRepository (packaging.carvel.dev) to apply.
    #[serde(default)]
    pub package_repository: PackageRepositoryTarget,
    /// How often the repository is rebuilt even when no source changed. Default `1h`.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(r"self.matches('^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$')").message("interval must be a duration like 30s, 10m or 1h"))]
    pub interval: String,
    /// Stop reconciling; what was published stays as it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_interval() -> String {
    "1h".to_owned()
}

/// The PackageRepository CR to apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositoryTarget {
    /// Apply the PackageRepository. Default true.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Name of the PackageRepository; this object's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the PackageRepository; this object's namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.size() <= 63").message("packageRepository.namespace must be a namespace name"))]
    pub namespace: Option<String>,
}

impl Default for PackageRepositoryTarget {
    fn default() -> Self {
        Self {
            create: true,
            name: None,
            namespace: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositorySourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Number of packages in the repository bundle.
    #[serde(default)]
    pub package_count: u32,
    /// Packages in the repository bundle, as `refName.version`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<super::source::BundleStatus>,
}
