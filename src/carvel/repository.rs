//! kapp-controller's `PackageRepository` and `PackageInstall` (`packaging.carvel.dev/v1alpha1`).
//!
//! Upstream: kapp-controller `pkg/apis/packaging/v1alpha1/package_repository.go`,
//! `package_install.go`, `pkg/apis/kappctrl/v1alpha1/status.go` and its published CRDs
//! (`config/config/crds.yml`). Both implement `kube::Resource`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::app::{
    AppCluster, AppFetchGit, AppFetchHttp, AppFetchImage, AppFetchImgpkgBundle, AppFetchInline,
};
use super::common::carvel_resource;
use super::common::{Rfc3339Time, is_false};
use super::error::expect_type;
use super::selection::VersionSelectionSemver;
use super::{Error, yaml};

pub const API_VERSION: &str = "packaging.carvel.dev/v1alpha1";
pub const PACKAGE_REPOSITORY_KIND: &str = "PackageRepository";
pub const PACKAGE_INSTALL_KIND: &str = "PackageInstall";

/// A bundle (or image, git repo, …) of Package and PackageMetadata documents under `packages/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepository {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PackageRepositorySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PackageRepositoryStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositorySpec {
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// A Go duration; kapp-controller defaults to `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(default)]
    pub fetch: PackageRepositoryFetch,
}

/// Exactly one source is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositoryFetch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<AppFetchImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<AppFetchHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<AppFetchGit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgpkg_bundle: Option<AppFetchImgpkgBundle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<AppFetchInline>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRepositoryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<StageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<StageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<StageStatus>,
    #[serde(default)]
    pub consecutive_reconcile_successes: i64,
    #[serde(default)]
    pub consecutive_reconcile_failures: i64,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub friendly_description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub useful_error_message: String,
}

/// The result of a fetch, template or deploy run (kapp-controller's `AppStatusFetch`,
/// `AppStatusTemplate` and `AppStatusDeploy` merged; each sets a subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Rfc3339Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Rfc3339Time>,
}

/// kapp-controller's condition (no timestamps, unlike `metav1.Condition`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Condition {
    /// `Reconciling`, `ReconcileSucceeded`, `ReconcileFailed`, `Deleting` or `DeleteFailed`
    /// (PackageInstall also reports `ValuesSchemaCheckFailed`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// An installation of one package version chosen by `packageRef.versionSelection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageInstall {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PackageInstallSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PackageInstallStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageInstallSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<AppCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_ref: Option<PackageRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<PackageInstallValues>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub canceled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub noop_delete: bool,
    /// Namespace for the package's resources; defaults to the PackageInstall's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_namespace: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ref_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_selection: Option<VersionSelectionSemver>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageInstallValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<PackageInstallValuesSecretRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PackageInstallValuesSecretRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Only this key of the Secret; all keys when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageInstallStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub friendly_description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub useful_error_message: String,
    /// The version selected (not necessarily deployed yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_attempted_version: String,
}

impl PackageRepository {
    pub fn new(name: impl Into<String>, fetch: PackageRepositoryFetch) -> Self {
        PackageRepository {
            api_version: API_VERSION.to_owned(),
            kind: PACKAGE_REPOSITORY_KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: PackageRepositorySpec {
                fetch,
                ..Default::default()
            },
            status: None,
        }
    }

    /// The PackageRepository kctrl writes for a released repository bundle.
    pub fn for_bundle(name: impl Into<String>, bundle_image: impl Into<String>) -> Self {
        PackageRepository::new(
            name,
            PackageRepositoryFetch {
                imgpkg_bundle: Some(AppFetchImgpkgBundle {
                    image: bundle_image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let repository: PackageRepository = yaml::from_str("PackageRepository", text)?;
        expect_type(
            "PackageRepository",
            API_VERSION,
            PACKAGE_REPOSITORY_KIND,
            &repository.api_version,
            &repository.kind,
        )?;
        Ok(repository)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("PackageRepository", self)
    }
}

impl PackageInstall {
    pub fn new(
        name: impl Into<String>,
        ref_name: impl Into<String>,
        constraints: impl Into<String>,
        service_account_name: impl Into<String>,
    ) -> Self {
        PackageInstall {
            api_version: API_VERSION.to_owned(),
            kind: PACKAGE_INSTALL_KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: PackageInstallSpec {
                service_account_name: service_account_name.into(),
                package_ref: Some(PackageRef {
                    ref_name: ref_name.into(),
                    version_selection: Some(VersionSelectionSemver {
                        constraints: constraints.into(),
                        prereleases: None,
                    }),
                }),
                ..Default::default()
            },
            status: None,
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let install: PackageInstall = yaml::from_str("PackageInstall", text)?;
        expect_type(
            "PackageInstall",
            API_VERSION,
            PACKAGE_INSTALL_KIND,
            &install.api_version,
            &install.kind,
        )?;
        Ok(install)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("PackageInstall", self)
    }
}

carvel_resource!(
    PackageRepository,
    "packaging.carvel.dev",
    PACKAGE_REPOSITORY_KIND,
    "packagerepositories"
);
carvel_resource!(
    PackageInstall,
    "packaging.carvel.dev",
    PACKAGE_INSTALL_KIND,
    "packageinstalls"
);

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn repository_for_a_bundle_looks_like_kctrls() {
        let repository = PackageRepository::for_bundle(
            "tce.example.com",
            "registry.example.com/repo@sha256:0123",
        );
        assert_eq!(
            repository.to_yaml().expect("yaml"),
            "apiVersion: packaging.carvel.dev/v1alpha1\nkind: PackageRepository\nmetadata:\n  \
             name: tce.example.com\nspec:\n  fetch:\n    imgpkgBundle:\n      image: \
             registry.example.com/repo@sha256:0123\n"
        );
    }

    #[test]
    fn install_round_trips_with_status() {
        let text = "\
apiVersion: packaging.carvel.dev/v1alpha1
kind: PackageInstall
metadata:
  name: contour
  namespace: tanzu
spec:
  defaultNamespace: projectcontour
  noopDelete: true
  packageRef:
    refName: contour.community.tanzu.vmware.com
    versionSelection:
      constraints: '>=1.22.0'
      prereleases: {}
  serviceAccountName: contour-sa
  syncPeriod: 10m
  values:
  - secretRef:
      key: values.yml
      name: contour-values
status:
  conditions:
  - status: \"True\"
    type: ReconcileSucceeded
  friendlyDescription: Reconcile succeeded
  lastAttemptedVersion: 1.22.3
  observedGeneration: 2
  version: 1.22.3
";
        let install = PackageInstall::from_yaml(text).expect("parse");
        assert_eq!(
            install
                .spec
                .package_ref
                .as_ref()
                .and_then(|r| r.version_selection.as_ref())
                .map(|s| s.constraints.as_str()),
            Some(">=1.22.0")
        );
        assert_eq!(install.to_yaml().expect("yaml"), text);
    }

    #[test]
    fn new_install_selects_by_constraints() {
        let install = PackageInstall::new("contour", "contour.example.com", "1.x", "sa");
        assert_eq!(install.spec.service_account_name, "sa");
        let reparsed =
            PackageInstall::from_yaml(&install.to_yaml().expect("yaml")).expect("reparse");
        assert_eq!(reparsed, install);
    }
}
