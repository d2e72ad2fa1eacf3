//! `PackageSource`: one Carvel package, from upstream contents to a published Package.

#![expect(
    unreachable_pub,
    reason = "kube's KubeSchema/CustomResource derives copy these `pub` items into private \
              scopes, where the lint fires on them; the items are the public API"
)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::BundleTarget;
use crate::carvel::app::{AppDeploy, AppTemplate};
use crate::carvel::package::{PackageMetadataSpec, VersionConstraints};
use crate::carvel::{kbld, vendir};

/// Turns upstream contents into a published Carvel package: sync (vendir), lock images (kbld),
/// push an imgpkg bundle, publish Package + PackageMetadata.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "packsmith.dev",
    version = "v1alpha1",
    kind = "PackageSource",
    plural = "packagesources",
    shortname = "pkgsrc",
    category = "packsmith",
    namespaced,
    status = "PackageSourceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.package.version"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.bundle.shortDigest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PackageSourceSpec {
    /// The Package and PackageMetadata to produce.
    pub package: PackageSpec,
    /// Upstream contents, in vendir's `directories` schema. Each directory is synced
    /// atomically into the bundle at its `path`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["path".into()]))]
    pub contents: Vec<vendir::Directory>,
    /// How container images referenced by the manifests are locked to digests.
    #[serde(default)]
    pub images: ImagesSpec,
    /// Where the imgpkg bundle is pushed.
    pub bundle: BundleTarget,
    /// Where and how the Package and PackageMetadata are published.
    #[serde(default)]
    pub publish: PublishSpec,
    /// How often upstreams are checked for changes. Default `1h`.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(r"self.matches('^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$')").message("interval must be a duration like 30s, 10m or 1h"))]
    pub interval: String,
    /// How long one reconcile (sync, lock, push, publish) may take. Default: the interval, at
    /// most 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(r"self.matches('^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$')").message("timeout must be a duration like 30s, 10m or 1h"))]
    pub timeout: Option<String>,
    /// Stop reconciling; what was published stays as it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_interval() -> String {
    "1h".to_owned()
}

/// The Package to produce.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.version) != has(self.versionFrom)").message("set exactly one of package.version (a fixed version) or package.versionFrom (take it from an upstream tag, release or chart version)"))]
pub struct PackageSpec {
    /// Package refName: a DNS subdomain with at least three labels, e.g.
    /// `cert-manager.example.com`. Also the PackageMetadata name.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(r"self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2,}$')").message("refName must be a lowercase DNS subdomain with at least three dot-separated labels, e.g. cert-manager.packages.example.com"))]
    pub ref_name: String,
    /// A fixed package version (strict semver, no leading `v`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new(r"self.matches('^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?$')").message("version must be semver like 1.2.3 or 1.2.3-rc.1, without a leading v"))]
    pub version: Option<String>,
    /// Take the version from what one content entry fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_from: Option<VersionFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_notes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_requirements_description: Option<String>,
    /// Kubernetes versions the package supports, as a semver range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version_selection: Option<VersionConstraints>,
    /// kapp-controller versions the package supports, as a semver range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kapp_controller_version_selection: Option<VersionConstraints>,
    /// OpenAPI v3 schema of the package's values. Derived from the bundle's ytt schema or
    /// values file when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values_schema: Option<serde_json::Value>,
    /// App template steps (kapp-controller's `template`), replacing the default ytt + kbld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Vec<AppTemplate>>,
    /// App deploy steps (kapp-controller's `deploy`), replacing the default kapp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Vec<AppDeploy>>,
    /// PackageMetadata fields.
    #[serde(default)]
    pub metadata: PackageMetadataSpec,
}

/// Where the version comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionFrom {
    /// `path` of the contents directory whose lock gives the version.
    #[x_kube(validation = Rule::new("self != ''").message("versionFrom.directory must name a contents directory path"))]
    pub directory: String,
    /// `path` of the content entry inside that directory; may be omitted when the directory
    /// has one entry. The entry must be git (a tag), githubRelease (the release tag) or
    /// helmChart (the chart version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Semver range the version must satisfy, e.g. `>=1.9.0 <2.0.0`; the highest match wins.
    /// A leading `v` of a tag is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<String>,
}

/// How images are locked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagesSpec {
    /// Lock every image reference to a digest in `.imgpkg/images.yml`. Default true.
    #[serde(default = "default_true")]
    pub lock: bool,
    /// kbld overrides, applied before resolution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub overrides: Vec<kbld::ImageOverride>,
    /// kbld search rules, tried before the default rule (any `image` key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub search_rules: Vec<kbld::SearchRule>,
    /// Registry mirrors: resolve references to `from` through `to`, keeping the original name
    /// in the lock (air-gapped and test registries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub mirrors: Vec<RegistryMirror>,
    /// How a Helm chart in the contents is rendered for locking: the lock pins the images
    /// its render names with the chart's default values plus these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmRenderSpec>,
}

/// Values for rendering a chart before its images are locked (never part of the Package:
/// a PackageInstall brings its own).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmRenderSpec {
    /// Values files from ConfigMaps or Secrets of this namespace, each key a file, in key
    /// order (kapp-controller's helmTemplate `valuesFrom` shape). A Secret must carry the label
    /// `packsmith.dev/inline-allowed: "true"`: what a render makes of it can reach the lock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub values_from: Vec<HelmValuesFrom>,
    /// Values merged over the chart's values.yaml and `valuesFrom`, as a last `--values`
    /// file would be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub values: Option<serde_json::Value>,
}

/// One source of values files for rendering a chart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapRef) != has(self.secretRef)").message("set exactly one of configMapRef or secretRef"))]
pub struct HelmValuesFrom {
    /// A ConfigMap of this namespace: each data key is a values file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapRef>,
    /// A Secret of this namespace (labelled `packsmith.dev/inline-allowed: "true"`): each data
    /// key is a values file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<super::common::SecretRef>,
}

/// A ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapRef {
    /// Name of the ConfigMap.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("configMapRef.name must name a ConfigMap in the same namespace"))]
    pub name: String,
}

impl RegistryMirror {
    /// The registry layer's view of this mirror.
    pub fn to_registry_mirror(&self) -> crate::registry::Mirror {
        crate::registry::Mirror {
            from: self.from.clone(),
            to: self.to.clone(),
            insecure: self.insecure,
        }
    }
}

impl Default for ImagesSpec {
    fn default() -> Self {
        Self {
            lock: true,
            overrides: Vec::new(),
            search_rules: Vec::new(),
            mirrors: Vec::new(),
            helm: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// A registry host answered by another.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.from != self.to").message("a mirror must point to a different registry host"))]
pub struct RegistryMirror {
    /// Registry host as written in image references, e.g. `quay.io` or `docker.io`.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-zA-Z0-9.-]+(:[0-9]+)?$')").message("mirrors[].from must be a registry host like quay.io or registry.local:5000"))]
    pub from: String,
    /// Registry host that serves the same repositories, optionally under a path prefix
    /// (`registry.local:5000/quay.io` serves `quay.io/jetstack/x` as `quay.io/jetstack/x`).
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$')").message("mirrors[].to must be a registry host like registry.local:5000, optionally with a path prefix"))]
    pub to: String,
    /// Talk plain HTTP to the mirror.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// Where and how Package + PackageMetadata are published.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PublishSpec {
    /// Apply Package and PackageMetadata in the cluster. Unset: applied unless a
    /// PackageRepositorySource in this namespace selects this source — its PackageRepository
    /// makes kapp-controller create them, and kapp-controller cannot create a Package that
    /// already exists. When not applied, the rendered documents are recorded in a ConfigMap
    /// named like the Package (for PackageRepositorySources to read). Set true to apply
    /// in-cluster even when selected (e.g. with publish.namespace elsewhere), false never to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Target namespace; the PackageSource's own when unset. kapp-controller's global
    /// packaging namespace makes packages visible everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.size() <= 63").message("publish.namespace must be a namespace name"))]
    pub namespace: Option<String>,
    /// How many published versions to keep (newest first). Default 10.
    #[serde(default = "default_retain")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("publish.retain must be between 1 and 1000"))]
    pub retain: u32,
    /// What happens to published Packages when the PackageSource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What happens when a version already published is about to be published with other
    /// content (a new upstream commit, lock or overlay under the same version).
    #[serde(default)]
    pub version_policy: VersionPolicy,
}

impl Default for PublishSpec {
    fn default() -> Self {
        Self {
            enabled: None,
            namespace: None,
            retain: default_retain(),
            deletion_policy: DeletionPolicy::default(),
            version_policy: VersionPolicy::default(),
        }
    }
}

/// A published version is a promise: what may become of it when its content changes. Content
/// is compared uncompressed (the layer's diff_id), so a new compressor changes nothing.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum VersionPolicy {
    /// Publish the new content as the next packaging revision, `1.9.1+packsmith.2` (OCI tag
    /// `1.9.1_packsmith.2`), and keep the earlier one; counted by `publish.retain` like a
    /// version.
    #[default]
    Revision,
    /// Publish nothing: the source is Stalled with VersionImmutable until the version is
    /// bumped or the content is back to what was published.
    Refuse,
    /// Move the version's tag to the new content and update the Package in place.
    Overwrite,
}

fn default_retain() -> u32 {
    10
}

/// What happens to published objects when their source is deleted.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    /// Delete the Packages and PackageMetadata this source published.
    #[default]
    Delete,
    /// Leave them in place.
    Orphan,
}

/// Observed state, written by the controller with server-side apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PackageSourceStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled and one condition per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Value of the `packsmith.dev/requestedAt` annotation last handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// What was fetched, in vendir's LockConfig shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contents: Vec<vendir::LockDirectory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImagesStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageStatus>,
    /// Published versions, newest first, at most `publish.retain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PublishedVersion>,
}

/// Locked images.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImagesStatus {
    pub count: u32,
    /// Digest references, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locked: Vec<String>,
}

/// The pushed bundle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// `repository@sha256:…`
    pub image: String,
    /// First 12 hex digits of the digest, for `kubectl get`.
    pub short_digest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Compressed size of the bundle layer in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Where the locked images were copied (`bundle.relocateImages`), each as
    /// `repository@sha256:…`; at most 64 are listed, `relocatedCount` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub relocated_images: Vec<String>,
    /// How many images were copied next to the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relocated_count: Option<u32>,
    /// The bundle's cosign signature (`bundle.signing`): `repository:sha256-<hex>.sig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Images listed on status at most (`status.bundle.relocatedImages`): a status stays small
/// whatever the bundle locks.
pub const MAX_LISTED_RELOCATIONS: usize = 64;

/// The published Package.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PackageStatus {
    /// metadata.name of the Package: `refName.version`.
    pub name: String,
    pub version: String,
    /// Namespace the Package was applied in; absent when not published in-cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// ConfigMap (in the PackageSource's namespace) recording the rendered Package and
    /// PackageMetadata when they are not applied in-cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
}

/// One published version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PublishedVersion {
    pub version: String,
    /// Bundle `repository@sha256:…`
    pub image: String,
    /// RFC 3339 time of publication.
    pub published_at: String,
}

pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
