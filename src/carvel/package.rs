//! kapp-controller's `Package` and `PackageMetadata` (`data.packaging.carvel.dev/v1alpha1`).
//!
//! Upstream: kapp-controller `pkg/apiserver/apis/datapackaging/v1alpha1/types.go` (the
//! aggregated API's types) and `.../datapackaging/validation/validations.go`. Both kinds
//! implement `kube::Resource`, so `kube::Api<Package>` works against kapp-controller's
//! aggregated API and against the CRD stand-ins in `e2e/crds/kapp-controller/`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::app::AppSpec;
use super::common::Rfc3339Time;
use super::common::carvel_resource;
use super::error::expect_type;
use super::selection::VersionRange;
use super::{Error, yaml};

pub const API_VERSION: &str = "data.packaging.carvel.dev/v1alpha1";
pub const PACKAGE_KIND: &str = "Package";
pub const PACKAGE_METADATA_KIND: &str = "PackageMetadata";

/// One version of a package: where its bundle is and how kapp-controller installs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PackageSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageSpec {
    /// The PackageMetadata name: a DNS subdomain with at least three segments.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ref_name: String,
    /// Strict semver without a leading `v`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Rfc3339Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub capacity_requirements_description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub release_notes: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_software: Vec<IncludedSoftware>,
    /// kapp-controller versions that may install this package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kapp_controller_version_selection: Option<VersionConstraints>,
    /// Kubernetes versions this package may be installed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version_selection: Option<VersionConstraints>,
    #[serde(default)]
    pub template: AppTemplateSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_schema: Option<ValuesSchema>,
}

/// `{spec: <App spec>}`: the App kapp-controller creates for a PackageInstall.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AppTemplateSpec {
    #[serde(default)]
    pub spec: AppSpec,
}

/// Values users may set, as an OpenAPI v3 schema (kctrl derives it from ytt or Helm).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValuesSchema {
    #[serde(default, rename = "openAPIv3", skip_serializing_if = "Option::is_none")]
    pub open_api_v3: Option<serde_json::Value>,
}

// The schema is free-form; say so in the form a CRD accepts (schemars' default for
// `serde_json::Value` is an untyped `true`, which is not structural).
impl JsonSchema for ValuesSchema {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ValuesSchema".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                "openAPIv3": {
                    "type": "object",
                    "nullable": true,
                    "x-kubernetes-preserve-unknown-fields": true,
                },
            },
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncludedSoftware {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// `{constraints}` in a semver range syntax (see [`VersionRange`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VersionConstraints {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub constraints: String,
}

/// What a package is, shared by all its versions; named after the packages' `refName`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageMetadata {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PackageMetadataSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageMetadataSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub long_description: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub short_description: String,
    #[serde(
        default,
        rename = "iconSVGBase64",
        skip_serializing_if = "String::is_empty"
    )]
    pub icon_svg_base64: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintainers: Vec<Maintainer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub support_description: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Maintainer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Why a Package or PackageMetadata would be rejected by kapp-controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "{field} {name:?} is not a valid package name: {reason} (use a DNS subdomain you \
         control with at least three dot-separated segments, e.g. \"app.example.com\")"
    )]
    InvalidName {
        field: &'static str,
        name: String,
        reason: String,
    },

    #[error(
        "spec.version {version:?} is not a strict semver version: {reason} (write \
         MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD] without a leading 'v', e.g. \"1.2.3\")"
    )]
    InvalidVersion { version: String, reason: String },

    #[error(
        "metadata.name {name:?} must be spec.refName + \".\" + spec.version, i.e. {expected:?}"
    )]
    NameMismatch { name: String, expected: String },

    #[error("{field}.constraints: {source}")]
    InvalidConstraints {
        field: &'static str,
        #[source]
        source: super::selection::RangeError,
    },
}

impl Package {
    /// A Package named `<refName>.<version>`, as kapp-controller requires.
    pub fn new(ref_name: impl Into<String>, version: impl Into<String>, spec: PackageSpec) -> Self {
        let ref_name = ref_name.into();
        let version = version.into();
        Package {
            api_version: API_VERSION.to_owned(),
            kind: PACKAGE_KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(format!("{ref_name}.{version}")),
                ..Default::default()
            },
            spec: PackageSpec {
                ref_name,
                version,
                ..spec
            },
        }
    }

    /// Parses one Package document, checking its apiVersion and kind.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let package: Package = yaml::from_str("Package", text)?;
        expect_type(
            "Package",
            API_VERSION,
            PACKAGE_KIND,
            &package.api_version,
            &package.kind,
        )?;
        Ok(package)
    }

    /// The Package as `sigs.k8s.io/yaml` would write it (kctrl's output format).
    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("Package", self)
    }

    /// Checks what kapp-controller checks on admission, plus that version constraints parse.
    /// Returns every problem found, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        if let Err(e) = validate_package_name("spec.refName", &self.spec.ref_name) {
            errors.push(e);
        }
        if let Err(reason) = validate_version(&self.spec.version) {
            errors.push(ValidationError::InvalidVersion {
                version: self.spec.version.clone(),
                reason,
            });
        }
        let expected = format!("{}.{}", self.spec.ref_name, self.spec.version);
        let name = self.metadata.name.clone().unwrap_or_default();
        if name != expected {
            errors.push(ValidationError::NameMismatch { name, expected });
        }
        for (field, selection) in [
            (
                "spec.kappControllerVersionSelection",
                &self.spec.kapp_controller_version_selection,
            ),
            (
                "spec.kubernetesVersionSelection",
                &self.spec.kubernetes_version_selection,
            ),
        ] {
            if let Some(selection) = selection
                && !selection.constraints.is_empty()
                && let Err(source) = VersionRange::parse(&selection.constraints)
            {
                errors.push(ValidationError::InvalidConstraints { field, source });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl PackageMetadata {
    pub fn new(name: impl Into<String>, spec: PackageMetadataSpec) -> Self {
        PackageMetadata {
            api_version: API_VERSION.to_owned(),
            kind: PACKAGE_METADATA_KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec,
        }
    }

    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let metadata: PackageMetadata = yaml::from_str("PackageMetadata", text)?;
        expect_type(
            "PackageMetadata",
            API_VERSION,
            PACKAGE_METADATA_KIND,
            &metadata.api_version,
            &metadata.kind,
        )?;
        Ok(metadata)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("PackageMetadata", self)
    }

    /// kapp-controller requires the name to be a package refName.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_package_name(
            "metadata.name",
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

/// A document found in a package repository's `packages/` directory.
#[derive(Debug, Clone, PartialEq)]
pub enum PackageDocument {
    Package(Box<Package>),
    Metadata(Box<PackageMetadata>),
}

/// Parses a YAML stream from a repository bundle's `packages/`, where kapp-controller accepts
/// only Package and PackageMetadata documents; anything else is an error naming it.
pub fn parse_package_documents(text: &str) -> Result<Vec<PackageDocument>, Error> {
    const WHAT: &str = "package repository document";
    let documents: Vec<serde_json::Value> = yaml::from_str_multiple(WHAT, text)?;
    documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let field = |name: &str| {
                document
                    .get(name)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (api_version, kind) = (field("apiVersion"), field("kind"));
            let convert = |source| Error::Convert { what: WHAT, source };
            match (api_version.as_str(), kind.as_str()) {
                (API_VERSION, PACKAGE_KIND) => serde_json::from_value(document)
                    .map(|p| PackageDocument::Package(Box::new(p)))
                    .map_err(convert),
                (API_VERSION, PACKAGE_METADATA_KIND) => serde_json::from_value(document)
                    .map(|m| PackageDocument::Metadata(Box::new(m)))
                    .map_err(convert),
                _ => Err(Error::invalid(
                    WHAT,
                    format!(
                        "document {} is apiVersion {api_version:?} kind {kind:?}; only \
                         {API_VERSION} Package and PackageMetadata are allowed in packages/",
                        index + 1
                    ),
                )),
            }
        })
        .collect()
}

/// kapp-controller's `IsFullyQualifiedName`: a DNS-1123 subdomain with ≥ 3 segments.
fn validate_package_name(field: &'static str, name: &str) -> Result<(), ValidationError> {
    let fail = |reason: &str| ValidationError::InvalidName {
        field,
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(fail("it is empty"));
    }
    if let Some(reason) = dns1123_subdomain_problem(name) {
        return Err(fail(&reason));
    }
    if name.split('.').count() < 3 {
        return Err(fail("it has fewer than three dot-separated segments"));
    }
    Ok(())
}

/// Kubernetes' `IsDNS1123Subdomain`, returning what is wrong.
pub(crate) fn dns1123_subdomain_problem(name: &str) -> Option<String> {
    const MAX_LENGTH: usize = 253;
    if name.len() > MAX_LENGTH {
        return Some(format!(
            "it is {} characters long, more than {MAX_LENGTH}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("it has an empty segment (leading, trailing or doubled '.')".to_owned());
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Some(format!(
                "it contains {bad:?}; only lower-case letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!(
                "segment {label:?} starts or ends with '-'; segments must start and end with a \
                 letter or digit"
            ));
        }
    }
    None
}

/// vendir's `NewSemver` (blang `semver.Parse`): strict semver, no leading `v`.
fn validate_version(version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err("it is empty".to_owned());
    }
    if version.starts_with(['v', 'V']) {
        return Err("it has a leading 'v'".to_owned());
    }
    semver::Version::parse(version)
        .map(drop)
        .map_err(|e| e.to_string())
}

carvel_resource!(
    Package,
    "data.packaging.carvel.dev",
    PACKAGE_KIND,
    "packages"
);
carvel_resource!(
    PackageMetadata,
    "data.packaging.carvel.dev",
    PACKAGE_METADATA_KIND,
    "packagemetadatas"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Package {
        Package::new(
            "cert-manager.community.tanzu.vmware.com",
            "1.9.1",
            PackageSpec {
                template: AppTemplateSpec {
                    spec: AppSpec::for_bundle("registry.example.com/cert-manager@sha256:abc"),
                },
                ..Default::default()
            },
        )
    }

    fn messages(package: &Package) -> Vec<String> {
        package
            .validate()
            .expect_err("expected validation errors")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn new_names_the_package_after_ref_name_and_version() {
        let package = valid();
        assert_eq!(
            package.metadata.name.as_deref(),
            Some("cert-manager.community.tanzu.vmware.com.1.9.1")
        );
        assert_eq!(package.validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_ref_names() {
        for (ref_name, hint) in [
            ("cert-manager", "fewer than three"),
            ("cert-manager.example", "fewer than three"),
            ("Cert.Example.com", "lower-case"),
            ("app..example.com", "empty segment"),
            ("-app.example.com", "starts or ends with '-'"),
            ("", "empty"),
        ] {
            let mut package = valid();
            package.spec.ref_name = ref_name.to_owned();
            package.metadata.name = Some(format!("{ref_name}.1.9.1"));
            let all = messages(&package).join("\n");
            assert!(all.contains(hint), "{ref_name:?}: {all}");
            assert!(all.contains("spec.refName"), "{all}");
        }
    }

    #[test]
    fn rejects_bad_versions_with_the_fix() {
        for (version, hint) in [
            ("v1.9.1", "leading 'v'"),
            ("1.9", "MAJOR.MINOR.PATCH"),
            ("01.9.1", "MAJOR.MINOR.PATCH"),
            ("", "empty"),
        ] {
            let mut package = valid();
            package.spec.version = version.to_owned();
            package.metadata.name = Some(format!("{}.{version}", package.spec.ref_name));
            let all = messages(&package).join("\n");
            assert!(all.contains(hint), "{version:?}: {all}");
        }
    }

    #[test]
    fn rejects_a_name_that_is_not_ref_name_dot_version() {
        let mut package = valid();
        package.metadata.name = Some("cert-manager.community.tanzu.vmware.com.v1.9.1".to_owned());
        let all = messages(&package);
        assert_eq!(
            all,
            vec![
                "metadata.name \"cert-manager.community.tanzu.vmware.com.v1.9.1\" must be \
                 spec.refName + \".\" + spec.version, i.e. \
                 \"cert-manager.community.tanzu.vmware.com.1.9.1\""
            ]
        );
    }

    #[test]
    fn rejects_unparseable_constraints() {
        let mut package = valid();
        package.spec.kubernetes_version_selection = Some(VersionConstraints {
            constraints: ">=1.x.0".to_owned(),
        });
        package.spec.kapp_controller_version_selection = Some(VersionConstraints {
            constraints: ">0.40.0 <1.0.0".to_owned(),
        });
        let all = messages(&package);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("spec.kubernetesVersionSelection.constraints"));
    }

    #[test]
    fn metadata_name_must_be_a_ref_name() {
        let metadata = PackageMetadata::new("contour", PackageMetadataSpec::default());
        let error = metadata
            .validate()
            .expect_err("too few segments")
            .to_string();
        assert!(error.contains("metadata.name \"contour\""), "{error}");
        let metadata = PackageMetadata::new("contour.example.com", PackageMetadataSpec::default());
        assert_eq!(metadata.validate(), Ok(()));
    }

    #[test]
    fn package_documents_allow_only_packages_and_metadata() {
        let stream = format!(
            "{}---\n{}",
            valid().to_yaml().expect("yaml"),
            PackageMetadata::new("a.b.c", PackageMetadataSpec::default())
                .to_yaml()
                .expect("yaml")
        );
        let documents = parse_package_documents(&stream).expect("parse");
        assert!(matches!(documents[0], PackageDocument::Package(_)));
        assert!(matches!(documents[1], PackageDocument::Metadata(_)));

        let error = parse_package_documents("apiVersion: v1\nkind: ConfigMap\n")
            .expect_err("ConfigMap is not allowed")
            .to_string();
        assert!(error.contains("kind \"ConfigMap\""), "{error}");
    }

    #[test]
    fn wrong_kind_is_reported() {
        let error = Package::from_yaml(
            "apiVersion: data.packaging.carvel.dev/v1alpha1\nkind: PackageMetadata\n\
             metadata: {name: a.b.c}\nspec: {}\n",
        )
        .expect_err("wrong kind")
        .to_string();
        assert!(error.contains("found apiVersion"), "{error}");
    }
}
