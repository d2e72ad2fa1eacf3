//! kapp-controller's App spec (`kappctrl.k14s.io/v1alpha1`), which a Package carries as
//! `spec.template.spec` and whose fetch types a PackageRepository reuses.
//!
//! Upstream: kapp-controller `pkg/apis/kappctrl/v1alpha1/types.go`, `types_fetch.go`,
//! `types_template.go`, `types_deploy.go` (and the App CR spec docs for fields added since:
//! `defaultNamespace`, git `depth`/`forceHTTPBasicAuth`, `kubernetesAPIs`). Field names are
//! kapp-controller's; Go `omitempty` fields are skipped when empty so our output matches what
//! kapp-controller and kctrl write.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, is_false, is_zero};
use super::selection::VersionSelection;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<AppCluster>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetch: Vec<AppFetch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub template: Vec<AppTemplate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deploy: Vec<AppDeploy>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub canceled: bool,
    /// A Go duration such as `10m` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_period: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub noop_delete: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_namespace: String,
}

impl AppSpec {
    /// The App kctrl writes into a released Package: fetch the bundle by digest, run ytt over
    /// `config/`, resolve images with the bundle's lock, deploy with kapp.
    pub fn for_bundle(bundle_image: impl Into<String>) -> Self {
        AppSpec {
            fetch: vec![AppFetch {
                imgpkg_bundle: Some(AppFetchImgpkgBundle {
                    image: bundle_image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            template: vec![
                AppTemplate {
                    ytt: Some(AppTemplateYtt {
                        paths: vec!["config/".to_owned()],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                AppTemplate {
                    kbld: Some(AppTemplateKbld {
                        paths: vec!["-".to_owned(), ".imgpkg/images.yml".to_owned()],
                    }),
                    ..Default::default()
                },
            ],
            deploy: vec![AppDeploy {
                kapp: Some(AppDeployKapp::default()),
            }],
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCluster {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<AppClusterKubeconfigSecretRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppClusterKubeconfigSecretRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
}

/// One fetch step; exactly one source is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<AppFetchInline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<AppFetchImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<AppFetchHttp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<AppFetchGit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_chart: Option<AppFetchHelmChart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgpkg_bundle: Option<AppFetchImgpkgBundle>,
    /// Where to place the fetched files, relative to the App's working directory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchInline {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_from: Vec<AppFetchInlineSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchInlineSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<AppFetchInlineSourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<AppFetchInlineSourceRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchInlineSourceRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub directory_path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchImage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchHttp {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchGit {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub git_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
    #[serde(default, rename = "lfsSkipSmudge", skip_serializing_if = "is_false")]
    pub lfs_skip_smudge: bool,
    #[serde(
        default,
        rename = "dangerousSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub dangerous_skip_tls_verify: bool,
    /// Commits to fetch: 1 (kapp-controller's default) is only the latest, 0 is all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: i64,
    #[serde(
        default,
        rename = "forceHTTPBasicAuth",
        skip_serializing_if = "is_false"
    )]
    pub force_http_basic_auth: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchHelmChart {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<AppFetchHelmChartRepo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchHelmChartRepo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppFetchImgpkgBundle {
    /// A bundle reference; packsmith always writes `repo@sha256:…`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

/// One template step; exactly one tool is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ytt: Option<AppTemplateYtt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kbld: Option<AppTemplateKbld>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_template: Option<AppTemplateHelmTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kustomize: Option<AppTemplateKustomize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonnet: Option<AppTemplateJsonnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sops: Option<AppTemplateSops>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cue: Option<AppTemplateCue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateYtt {
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_unknown_comments: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<AppFetchInline>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_marks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<AppTemplateValuesSource>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateKbld {
    /// `-` is the previous step's output; kctrl writes `["-", ".imgpkg/images.yml"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateHelmTemplate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Path to the chart within the fetched files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<AppTemplateValuesSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<AppTemplateVersion>,
    #[serde(
        default,
        rename = "kubernetesAPIs",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_apis: Option<AppTemplateKubernetesApis>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateValuesSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<AppTemplateValuesDownwardApi>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateValuesDownwardApi {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<AppTemplateValuesDownwardApiItem>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateValuesDownwardApiItem {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<AppTemplateVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kapp_controller_version: Option<AppTemplateVersion>,
    #[serde(
        default,
        rename = "kubernetesAPIs",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubernetes_apis: Option<AppTemplateKubernetesApis>,
}

/// An explicit version, or `{}` to ask the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateVersion {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Explicit `group/version`s, or `{}` to ask the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateKubernetesApis {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_versions: Vec<String>,
}

/// kapp-controller accepts no options for kustomize yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateKustomize {}

/// kapp-controller accepts no options for jsonnet yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateJsonnet {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateSops {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgp: Option<AppTemplateSopsKeys>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AppTemplateSopsKeys>,
}

/// `pgp` and `age` both name the Secret holding private keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateSopsKeys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_keys_secret_ref: Option<LocalRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppTemplateCue {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<AppTemplateValuesSource>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input_expression: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_expression: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppDeploy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kapp: Option<AppDeployKapp>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppDeployKapp {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub into_ns: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map_ns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_options: Vec<String>,
    /// `inspect: {}` turns inspection on (off by default since kapp-controller 0.31).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect: Option<AppDeployKappRawOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<AppDeployKappRawOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppDeployKappRawOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_options: Vec<String>,
}
