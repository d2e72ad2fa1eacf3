//! vendir's `Config` (vendir.yml) and `LockConfig` (vendir.lock.yml).
//!
//! Upstream: vendir `pkg/vendir/config/config.go`, `directory.go`, `lock_config.go`,
//! `lock_directory.go`.
//!
//! [`Directory`], [`DirectoryContents`] and every source type also describe
//! `PackageSource.spec.contents` (and the lock types `PackageSource.status.contents`), so they
//! derive `JsonSchema` and must stay *structural* (see [`super::schema`]): one optional field
//! per source rather than an enum, every optional field skipped when unset. Code reads a
//! content's source through the [`Source`] view ([`DirectoryContents::source`], which checks
//! "exactly one of" as vendir does) and matches it exhaustively.

#![expect(
    unreachable_pub,
    reason = "kube's KubeSchema/CustomResource derives copy these `pub` items into private \
              scopes, where the lint fires on them; the items are the public API"
)]

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, is_false, is_zero};
use super::error::expect_type;
use super::selection::VersionSelection;
use super::{Error, yaml};

pub const API_VERSION: &str = "vendir.k14s.io/v1alpha1";
pub const CONFIG_KIND: &str = "Config";
pub const LOCK_CONFIG_KIND: &str = "LockConfig";

/// `contents[].path` value meaning "the whole directory" (then the only entry).
pub const ENTIRE_DIR_PATH: &str = ".";

/// The legal files vendir keeps when `legalPaths` is not set (doublestar globs).
pub const DEFAULT_LEGAL_PATHS: &[&str] = &[
    "{LICENSE,LICENCE,License,Licence}{,.md,.txt,.rst}",
    "{COPYRIGHT,Copyright}{,.md,.txt,.rst}",
    "{NOTICE,Notice}{,.md,.txt,.rst}",
];

/// vendir.yml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub minimum_required_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
}

/// A directory vendir manages, filled from one or more sources.
///
/// The CEL rules only take effect where this type is embedded in a CRD (PackageSource's
/// `spec.contents`); vendir.yml files are checked by [`Directory::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.contents.exists(c, c.path == '.') || size(self.contents) == 1").message("a content with path '.' fills the whole directory and must be the directory's only content"))]
pub struct Directory {
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"self != '.' && !self.startsWith('/') && !self.matches('(^|/)\\.\\.(/|$)')").message("directory path must be relative, inside the bundle (no '..'), and not '.'"))]
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["path".into()]))]
    pub contents: Vec<DirectoryContents>,
    /// File mode bits applied to the directory (e.g. `0755`, an octal YAML number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<u32>,
}

/// One source placed at `path` within its directory; exactly one source field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.git), has(self.hg), has(self.http), has(self.image), has(self.imgpkgBundle), has(self.githubRelease), has(self.helmChart), has(self.manual), has(self.directory), has(self.inline)].filter(x, x).size() == 1").message("each content must set exactly one source: git, http, image, imgpkgBundle, githubRelease, helmChart or inline"))]
#[x_kube(validation = Rule::new("!has(self.hg) && !has(self.manual) && !has(self.directory)").message("hg, manual and directory sources work only with the packsmith CLI; in a cluster use git, http, image, imgpkgBundle, githubRelease, helmChart or inline"))]
pub struct DirectoryContents {
    /// Sub-path within the directory, or `.` for the whole directory.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"!self.startsWith('/') && !self.matches('(^|/)\\.\\.(/|$)')").message("content path must be relative and stay inside its directory (no '..')"))]
    pub path: String,
    /// Skip re-fetching when the config digest is unchanged.
    #[serde(default, skip_serializing_if = "is_false")]
    pub lazy: bool,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hg: Option<HgSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgpkg_bundle: Option<ImgpkgBundleSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_release: Option<GithubReleaseSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_chart: Option<HelmChartSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectorySource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineSource>,

    /// Doublestar globs of files to keep (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub include_paths: Vec<String>,
    /// Doublestar globs of files to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub exclude_paths: Vec<String>,
    /// Files kept from the existing directory instead of the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub ignore_paths: Vec<String>,
    /// Files always kept; unset means [`DEFAULT_LEGAL_PATHS`], empty means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub legal_paths: Option<Vec<String>>,
    /// Sub-directory of the source that becomes the root (after filtering).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(r"!self.startsWith('/') && !self.matches('(^|/)\\.\\.(/|$)')").message("newRootPath must be relative and stay inside the fetched contents (no '..')"))]
    pub new_root_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Branch, tag or commit (`origin/` names a remote branch).
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub git_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<GitVerification>,
    /// Keys: `ssh-privatekey`, `ssh-knownhosts`, `username`, `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, rename = "lfsSkipSmudge", skip_serializing_if = "is_false")]
    pub lfs_skip_smudge: bool,
    #[serde(
        default,
        rename = "dangerousSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub dangerous_skip_tls_verify: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_init_submodules: bool,
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
pub struct GitVerification {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_keys_secret_ref: Option<LocalRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HgSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, rename = "ref", skip_serializing_if = "String::is_empty")]
    pub hg_ref: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub evolve: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// A file, or a tgz/zip/tar archive (unpacked unless `disableUnpack`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Keys: `username`, `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_unpack: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    /// Keys: `username`, `password`, `token`, or a dockerconfigjson Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(
        default,
        rename = "dangerousSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub dangerous_skip_tls_verify: bool,
    /// Refuse the image unless its signature verifies (packsmith's, spelled as Flux's
    /// `verify`; not a vendir field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SourceVerification>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImgpkgBundleSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    #[serde(
        default,
        rename = "dangerousSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub dangerous_skip_tls_verify: bool,
    /// Also pull bundles nested in this one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recursive: bool,
    /// Refuse the bundle unless its signature verifies (packsmith's, spelled as Flux's
    /// `verify`; not a vendir field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SourceVerification>,
}

/// An upstream's signature, checked before its content is used; a failure is Stalled
/// `VerificationFailed` and nothing is published. Flux's `spec.verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceVerification {
    /// `cosign`: a key-based cosign signature of the manifest digest (its
    /// `sha256-<digest>.sig` tag), as `cosign verify --key --insecure-ignore-tlog` checks it.
    /// `helm`: a chart of an HTTP repository, by its provenance file.
    pub provider: VerificationProvider,
    /// cosign: Secret whose every key ending in `.pub` is a trusted public key (cosign.pub);
    /// helm: every value holds armored OpenPGP public keys. One must verify. Keyless
    /// verification is not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

/// Who signs what [`SourceVerification`] checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerificationProvider {
    #[default]
    Cosign,
    /// Helm's provenance file (`CHART.tgz.prov`, as `helm install --verify` checks it), for
    /// charts of HTTP repositories: the Secret's values are armored OpenPGP public keys.
    Helm,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubReleaseSource {
    /// `owner/repository`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub slug: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub latest: bool,
    /// The release's API URL; set when locked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Expected sha256 per asset name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_auto_checksum_validation: bool,
    /// Globs of asset names to download (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    pub asset_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack_archive: Option<UnpackArchive>,
    /// Key: `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// Options for the asset downloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// packsmith extension, not in vendir: the GitHub API base URL (GitHub Enterprise, tests);
    /// `https://api.github.com` when empty.
    #[serde(default, rename = "apiURL", skip_serializing_if = "String::is_empty")]
    pub api_url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnpackArchive {
    /// The asset to unpack into the directory.
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartSource {
    /// Chart name, e.g. `stable/redis` (or just `redis` with a repository).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<HelmChartRepository>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub helm_version: String,
    /// Refuse the chart unless its signature verifies: `cosign` for an `oci://` repository
    /// (packsmith's, spelled as Flux's HelmChart `verify`; not a vendir field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<SourceVerification>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmChartRepository {
    /// `https://…`, or `oci://…` for a chart in an OCI registry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
}

/// Leave the directory's contents alone (they are managed by hand).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManualSource {}

/// Copy from a local directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DirectorySource {
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    /// File path to content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paths: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_from: Vec<InlineSourceFrom>,
}

/// Files from every key of a Secret or ConfigMap (one is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSourceFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<InlineSourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<InlineSourceRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSourceRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Sub-directory the keys are written into.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub directory_path: String,
}

impl Config {
    pub fn new(directories: Vec<Directory>) -> Self {
        Config {
            api_version: API_VERSION.to_owned(),
            kind: CONFIG_KIND.to_owned(),
            minimum_required_version: String::new(),
            directories,
        }
    }

    /// Parses and validates a vendir.yml (one Config document).
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Config = yaml::from_str("vendir Config", text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("vendir Config", self)
    }

    /// vendir's checks that do not depend on its own version: the type, every directory,
    /// and that no two contents paths overlap.
    pub fn validate(&self) -> Result<(), Error> {
        const WHAT: &str = "vendir Config";
        expect_type(
            WHAT,
            API_VERSION,
            CONFIG_KIND,
            &self.api_version,
            &self.kind,
        )?;
        if self.minimum_required_version.starts_with('v') {
            return Err(Error::invalid(
                WHAT,
                "minimumRequiredVersion must not have a leading 'v' (e.g. \"0.12.0\")",
            ));
        }
        for (index, directory) in self.directories.iter().enumerate() {
            directory.validate().map_err(|message| {
                Error::invalid(
                    WHAT,
                    format!("directories[{index}] ({:?}): {message}", directory.path),
                )
            })?;
        }
        let paths: Vec<String> = self
            .directories
            .iter()
            .flat_map(|d| d.contents.iter().map(|c| join_path(&d.path, &c.path)))
            .collect();
        for (i, a) in paths.iter().enumerate() {
            for (j, b) in paths.iter().enumerate() {
                if i != j && format!("{b}/").starts_with(&format!("{a}/")) {
                    return Err(Error::invalid(
                        WHAT,
                        format!(
                            "contents paths {b:?} and {a:?} overlap; vendir manages each path once"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Directory {
    /// vendir's `Directory.Validate`, with messages that name the offending field.
    pub fn validate(&self) -> Result<(), String> {
        disallowed_path_problem("path", &self.path)?;
        if self.contents.len() > 1 && self.contents.iter().any(|c| c.path == ENTIRE_DIR_PATH) {
            return Err(format!(
                "a contents entry with path {ENTIRE_DIR_PATH:?} takes the whole directory, so \
                 it must be the only entry"
            ));
        }
        for (index, contents) in self.contents.iter().enumerate() {
            contents
                .validate()
                .map_err(|message| format!("contents[{index}] ({:?}): {message}", contents.path))?;
        }
        Ok(())
    }
}

/// The one source of a content, as a value to match on. The wire format keeps one optional
/// field per source (vendir's, and a structural schema); code goes through
/// [`DirectoryContents::source`], so a new kind is a compile error wherever a content is
/// handled rather than a silently skipped `if let`.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Git(&'a GitSource),
    Hg(&'a HgSource),
    Http(&'a HttpSource),
    Image(&'a ImageSource),
    GithubRelease(&'a GithubReleaseSource),
    HelmChart(&'a HelmChartSource),
    Manual(&'a ManualSource),
    Directory(&'a DirectorySource),
    Inline(&'a InlineSource),
    ImgpkgBundle(&'a ImgpkgBundleSource),
}

impl Source<'_> {
    /// The field name in vendir.yml (`git`, `imgpkgBundle`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Git(_) => "git",
            Source::Hg(_) => "hg",
            Source::Http(_) => "http",
            Source::Image(_) => "image",
            Source::GithubRelease(_) => "githubRelease",
            Source::HelmChart(_) => "helmChart",
            Source::Manual(_) => "manual",
            Source::Directory(_) => "directory",
            Source::Inline(_) => "inline",
            Source::ImgpkgBundle(_) => "imgpkgBundle",
        }
    }
}

/// A content that does not set exactly one source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error(
        "no source set; set exactly one of git, hg, http, image, imgpkgBundle, githubRelease, \
         helmChart, manual, directory, inline"
    )]
    None,
    #[error("several sources set ({}); set exactly one", .0.join(", "))]
    Several(Vec<&'static str>),
}

impl DirectoryContents {
    /// The content's source: exactly one must be set, as vendir requires.
    pub fn source(&self) -> Result<Source<'_>, SourceError> {
        // vendir's order, which error messages keep.
        let set: Vec<Source<'_>> = [
            self.git.as_ref().map(Source::Git),
            self.hg.as_ref().map(Source::Hg),
            self.http.as_ref().map(Source::Http),
            self.image.as_ref().map(Source::Image),
            self.github_release.as_ref().map(Source::GithubRelease),
            self.helm_chart.as_ref().map(Source::HelmChart),
            self.manual.as_ref().map(Source::Manual),
            self.directory.as_ref().map(Source::Directory),
            self.inline.as_ref().map(Source::Inline),
            self.imgpkg_bundle.as_ref().map(Source::ImgpkgBundle),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [] => Err(SourceError::None),
            [one] => Ok(*one),
            several => Err(SourceError::Several(
                several.iter().map(Source::kind).collect(),
            )),
        }
    }

    /// Exactly one source, and a usable path.
    pub fn validate(&self) -> Result<(), String> {
        self.source().map_err(|e| e.to_string())?;
        if self.path != ENTIRE_DIR_PATH {
            disallowed_path_problem("path", &self.path)?;
        }
        Ok(())
    }

    /// The legal paths in effect.
    pub fn legal_paths_with_defaults(&self) -> Vec<String> {
        match &self.legal_paths {
            Some(paths) => paths.clone(),
            None => DEFAULT_LEGAL_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }
}

fn disallowed_path_problem(field: &str, path: &str) -> Result<(), String> {
    if matches!(path, "/" | "." | ".." | "") {
        return Err(format!(
            "{field} {path:?} is not allowed (not '/', '.', '..' or empty)"
        ));
    }
    // vendir joins these onto its working directory and deletes what is there before moving
    // the new contents in: an absolute path or a `..` would aim that at anything on the disk.
    if path.starts_with('/') {
        return Err(format!(
            "{field} {path:?} is absolute; paths are relative to the directory being synced"
        ));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!(
            "{field} {path:?} contains '..'; paths must stay inside the directory being synced"
        ));
    }
    if path.contains(['\0', '\\']) {
        return Err(format!(
            "{field} {path:?} contains a NUL or backslash; use '/'-separated names"
        ));
    }
    Ok(())
}

/// `filepath.Join` for the relative, slash-separated paths vendir configs use.
fn join_path(directory: &str, contents: &str) -> String {
    let joined = format!("{directory}/{contents}");
    let parts: Vec<&str> = joined
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    parts.join("/")
}

/// vendir.lock.yml: what each source resolved to on the last sync.
///
/// Fields Go writes without `omitempty` (`sha`, `commitTitle`, `url`, …) are required here: vendir
/// always writes them, and required fields keep the status schema free of `default: ""`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockConfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub directories: Vec<LockDirectory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockDirectory {
    pub path: String,
    pub contents: Vec<LockDirectoryContents>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockDirectoryContents {
    pub path: String,
    /// Digest of the contents' config, for `lazy` contents.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_digest: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<LockGit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hg: Option<LockHg>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<LockEmpty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<LockImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgpkg_bundle: Option<LockImgpkgBundle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_release: Option<LockGithubRelease>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_chart: Option<LockHelmChart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<LockEmpty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<LockEmpty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<LockEmpty>,
}

/// What a lock entry records, as a value to match on (the lock side of [`Source`]).
#[derive(Debug, Clone, Copy)]
pub enum Locked<'a> {
    Git(&'a LockGit),
    Hg(&'a LockHg),
    Http,
    Image(&'a LockImage),
    GithubRelease(&'a LockGithubRelease),
    HelmChart(&'a LockHelmChart),
    Manual,
    Directory,
    Inline,
    ImgpkgBundle(&'a LockImgpkgBundle),
}

impl LockDirectoryContents {
    /// The one source this entry records; `None` when it records none or several (a lock
    /// written by hand or by another tool), which callers treat as nothing known.
    pub fn locked(&self) -> Option<Locked<'_>> {
        let set: Vec<Locked<'_>> = [
            self.git.as_ref().map(Locked::Git),
            self.hg.as_ref().map(Locked::Hg),
            self.http.as_ref().map(|_| Locked::Http),
            self.image.as_ref().map(Locked::Image),
            self.github_release.as_ref().map(Locked::GithubRelease),
            self.helm_chart.as_ref().map(Locked::HelmChart),
            self.manual.as_ref().map(|_| Locked::Manual),
            self.directory.as_ref().map(|_| Locked::Directory),
            self.inline.as_ref().map(|_| Locked::Inline),
            self.imgpkg_bundle.as_ref().map(Locked::ImgpkgBundle),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockGit {
    pub sha: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// First line of the commit message, `...` appended when there was more.
    pub commit_title: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockHg {
    pub sha: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub change_set_title: String,
}

/// Sources with nothing to record (`http`, `manual`, `directory`, `inline`): written `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockEmpty {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockImage {
    /// `repo@sha256:…`.
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockImgpkgBundle {
    /// `repo@sha256:…`.
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockGithubRelease {
    /// The release's API URL (`https://api.github.com/repos/<slug>/releases/<id>`).
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockHelmChart {
    pub version: String,
    pub app_version: String,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            api_version: API_VERSION.to_owned(),
            kind: LOCK_CONFIG_KIND.to_owned(),
            directories: Vec::new(),
        }
    }
}

impl LockConfig {
    pub fn new(directories: Vec<LockDirectory>) -> Self {
        LockConfig {
            directories,
            ..LockConfig::default()
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let lock: LockConfig = yaml::from_str("vendir LockConfig", text)?;
        expect_type(
            "vendir LockConfig",
            API_VERSION,
            LOCK_CONFIG_KIND,
            &lock.api_version,
            &lock.kind,
        )?;
        Ok(lock)
    }

    /// Byte for byte what vendir writes (keys sorted, no leading `---`); compare with the
    /// existing file and write only on change, as vendir does.
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("vendir LockConfig", self)
    }

    /// The lock entry for `contents_path` within `directory_path`.
    pub fn find_contents(
        &self,
        directory_path: &str,
        contents_path: &str,
    ) -> Option<&LockDirectoryContents> {
        self.directories
            .iter()
            .find(|d| d.path == directory_path)?
            .contents
            .iter()
            .find(|c| c.path == contents_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_contents(path: &str) -> DirectoryContents {
        DirectoryContents {
            path: path.to_owned(),
            git: Some(GitSource {
                url: "https://github.com/example/repo".to_owned(),
                git_ref: "v1.0.0".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn paths_stay_inside_the_synced_directory() {
        for bad in [
            "/etc",
            "/",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "a\\b",
            "a\0b",
        ] {
            let error = git_contents(bad).validate().expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
            let directory = Directory {
                path: bad.to_owned(),
                contents: vec![git_contents(".")],
                ..Default::default()
            };
            directory.validate().expect_err(bad);
        }
        for good in ["config/upstream", "a..b", "..hidden", "x/.y"] {
            assert_eq!(git_contents(good).validate(), Ok(()), "{good}");
        }
    }

    #[test]
    fn contents_need_exactly_one_source() {
        let mut contents = git_contents("upstream");
        assert_eq!(contents.validate(), Ok(()));
        contents.manual = Some(ManualSource {});
        let error = contents.validate().expect_err("two sources");
        assert!(error.contains("git, manual"), "{error}");
        let error = DirectoryContents {
            path: "x".to_owned(),
            ..Default::default()
        }
        .validate()
        .expect_err("no source");
        assert!(error.contains("exactly one of git"), "{error}");
    }

    #[test]
    fn each_source_field_is_its_own_variant() {
        let one = |set: fn(&mut DirectoryContents)| {
            let mut contents = DirectoryContents::default();
            set(&mut contents);
            contents.source().map(|s| s.kind())
        };
        let kinds = [
            one(|c| c.git = Some(GitSource::default())),
            one(|c| c.hg = Some(HgSource::default())),
            one(|c| c.http = Some(HttpSource::default())),
            one(|c| c.image = Some(ImageSource::default())),
            one(|c| c.github_release = Some(GithubReleaseSource::default())),
            one(|c| c.helm_chart = Some(HelmChartSource::default())),
            one(|c| c.manual = Some(ManualSource {})),
            one(|c| c.directory = Some(DirectorySource::default())),
            one(|c| c.inline = Some(InlineSource::default())),
            one(|c| c.imgpkg_bundle = Some(ImgpkgBundleSource::default())),
        ];
        assert_eq!(
            kinds,
            [
                "git",
                "hg",
                "http",
                "image",
                "githubRelease",
                "helmChart",
                "manual",
                "directory",
                "inline",
                "imgpkgBundle"
            ]
            .map(Ok)
        );
        assert_eq!(
            DirectoryContents::default().source().map(|s| s.kind()),
            Err(SourceError::None)
        );
        let mut two = git_contents(".");
        two.inline = Some(InlineSource::default());
        assert_eq!(
            two.source().map(|s| s.kind()),
            Err(SourceError::Several(vec!["git", "inline"]))
        );
    }

    #[test]
    fn a_lock_entry_records_one_source_or_nothing_known() {
        let entry = LockDirectoryContents {
            path: ".".into(),
            helm_chart: Some(LockHelmChart::default()),
            ..Default::default()
        };
        assert!(matches!(entry.locked(), Some(Locked::HelmChart(_))));
        let two = LockDirectoryContents {
            http: Some(LockEmpty {}),
            ..entry.clone()
        };
        assert!(two.locked().is_none());
        assert!(LockDirectoryContents::default().locked().is_none());
    }

    #[test]
    fn whole_directory_contents_must_be_alone() {
        let mut config = Config::new(vec![Directory {
            path: "config/upstream".to_owned(),
            contents: vec![git_contents("."), git_contents("other")],
            permissions: None,
        }]);
        let error = config.validate().expect_err("two with '.'").to_string();
        assert!(error.contains("only entry"), "{error}");
        config.directories[0].contents.pop();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn overlapping_paths_are_rejected() {
        let config = Config::new(vec![
            Directory {
                path: "config".to_owned(),
                contents: vec![git_contents("upstream")],
                permissions: None,
            },
            Directory {
                path: "config/upstream".to_owned(),
                contents: vec![git_contents("x")],
                permissions: None,
            },
        ]);
        let error = config.validate().expect_err("overlap").to_string();
        assert!(error.contains("overlap"), "{error}");
    }

    #[test]
    fn octal_permissions_read_as_go_yaml_does() {
        let config = Config::from_yaml(
            "apiVersion: vendir.k14s.io/v1alpha1\nkind: Config\ndirectories:\n- path: d\n  \
             permissions: 0755\n  contents:\n  - path: .\n    manual: {}\n",
        )
        .expect("parse");
        assert_eq!(config.directories[0].permissions, Some(0o755));
    }

    #[test]
    fn legal_paths_default_only_when_unset() {
        let mut contents = git_contents("x");
        assert_eq!(contents.legal_paths_with_defaults().len(), 3);
        contents.legal_paths = Some(Vec::new());
        assert!(contents.legal_paths_with_defaults().is_empty());
    }

    #[test]
    fn lock_writes_empty_sources_and_required_fields() {
        let lock = LockConfig::new(vec![LockDirectory {
            path: "vendor".to_owned(),
            contents: vec![
                LockDirectoryContents {
                    path: "chart".to_owned(),
                    helm_chart: Some(LockHelmChart {
                        version: "1.2.3".to_owned(),
                        app_version: String::new(),
                    }),
                    ..Default::default()
                },
                LockDirectoryContents {
                    path: "files".to_owned(),
                    http: Some(LockEmpty {}),
                    ..Default::default()
                },
            ],
        }]);
        assert_eq!(
            lock.to_yaml().expect("yaml"),
            "apiVersion: vendir.k14s.io/v1alpha1\ndirectories:\n- contents:\n  - helmChart:\n      \
             appVersion: \"\"\n      version: 1.2.3\n    path: chart\n  - http: {}\n    path: \
             files\n  path: vendor\nkind: LockConfig\n"
        );
        assert!(lock.find_contents("vendor", "files").is_some());
        assert!(lock.find_contents("vendor", "nope").is_none());
    }
}
