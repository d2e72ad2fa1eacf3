//! Renders the Package and PackageMetadata for a pushed bundle, in the shape
//! `kctrl package release` writes: fetch the bundle by digest, ytt over `config/` (or
//! helmTemplate for a chart), kbld with the bundle's lock, deploy with kapp.

use std::collections::BTreeMap;

use crate::api::source::PackageSpec as SourcePackageSpec;
use crate::carvel::app::{AppTemplate, AppTemplateHelmTemplate, AppTemplateKbld, AppTemplateYtt};
use crate::carvel::package::{PackageSpec, ValuesSchema};
use crate::carvel::{AppSpec, Package, PackageMetadata, Rfc3339Time};

/// Everything a Package needs beyond the PackageSource's `spec.package`.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    pub package: &'a SourcePackageSpec,
    /// The resolved version (from `version` or `versionFrom`).
    pub version: &'a str,
    /// `repository@sha256:…` of the pushed bundle.
    pub bundle_image: &'a str,
    /// Derived from the bundle when `package.valuesSchema` is unset.
    pub derived_values_schema: Option<serde_json::Value>,
    /// When the content is a Helm chart: its path in the bundle (helmTemplate replaces ytt).
    pub helm_chart_path: Option<&'a str>,
    /// ytt files next to the chart (overlays), applied to its render.
    pub overlay_paths: Vec<String>,
    pub released_at: jiff::Timestamp,
    /// Labels for both objects (the controller marks what it owns).
    pub labels: BTreeMap<String, String>,
    pub namespace: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the Package would be rejected by kapp-controller: {0}")]
    Invalid(String),
}

/// Renders both objects and checks them against kapp-controller's validation, so nothing
/// that kapp-controller would reject is ever published.
pub fn render(r: &Release<'_>) -> Result<(Package, PackageMetadata), RenderError> {
    let p = r.package;
    let mut app = AppSpec::for_bundle(r.bundle_image);
    if let Some(chart) = r.helm_chart_path {
        // kctrl's shape for a chart: helm renders it (values from the PackageInstall), ytt
        // overlays next to it apply to the render, kbld pins its images with the lock.
        app.template = vec![AppTemplate {
            helm_template: Some(AppTemplateHelmTemplate {
                path: chart.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        if !r.overlay_paths.is_empty() {
            let mut paths = vec!["-".to_owned()];
            paths.extend(r.overlay_paths.iter().cloned());
            app.template.push(AppTemplate {
                ytt: Some(AppTemplateYtt {
                    paths,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        app.template.push(AppTemplate {
            kbld: Some(AppTemplateKbld {
                paths: vec!["-".to_owned(), ".imgpkg/images.yml".to_owned()],
            }),
            ..Default::default()
        });
    }
    if let Some(template) = &p.template {
        app.template = template.clone();
    }
    if let Some(deploy) = &p.deploy {
        app.deploy = deploy.clone();
    }
    let values_schema = p
        .values_schema
        .clone()
        .or_else(|| r.derived_values_schema.clone())
        .map(|schema| ValuesSchema {
            open_api_v3: Some(schema),
        });
    let spec = PackageSpec {
        ref_name: p.ref_name.clone(),
        version: r.version.to_owned(),
        licenses: p.licenses.clone(),
        released_at: Some(Rfc3339Time(r.released_at)),
        capacity_requirements_description: p
            .capacity_requirements_description
            .clone()
            .unwrap_or_default(),
        release_notes: p.release_notes.clone().unwrap_or_default(),
        kapp_controller_version_selection: p.kapp_controller_version_selection.clone(),
        kubernetes_version_selection: p.kubernetes_version_selection.clone(),
        template: crate::carvel::package::AppTemplateSpec { spec: app },
        values_schema,
        ..Default::default()
    };
    let mut package = Package::new(&p.ref_name, r.version, spec);
    let mut metadata = PackageMetadata::new(&p.ref_name, p.metadata.clone());
    for meta in [&mut package.metadata, &mut metadata.metadata] {
        meta.namespace = r.namespace.map(str::to_owned);
        if !r.labels.is_empty() {
            meta.labels = Some(r.labels.clone());
        }
    }
    package.validate().map_err(|errors| {
        RenderError::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    metadata
        .validate()
        .map_err(|e| RenderError::Invalid(e.to_string()))?;
    Ok((package, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ref_name: &str) -> SourcePackageSpec {
        SourcePackageSpec {
            ref_name: ref_name.into(),
            version: Some("1.9.1".into()),
            licenses: vec!["Apache-2.0".into()],
            ..Default::default()
        }
    }

    fn release<'a>(p: &'a SourcePackageSpec, version: &'a str) -> Release<'a> {
        Release {
            package: p,
            version,
            bundle_image: "registry.example.com/cert-manager@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            derived_values_schema: Some(
                serde_json::json!({"properties": {"namespace": {"type": "string"}}}),
            ),
            helm_chart_path: None,
            overlay_paths: Vec::new(),
            released_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            labels: BTreeMap::from([("packsmith.dev/source".into(), "cert-manager".into())]),
            namespace: Some("packages"),
        }
    }

    #[test]
    fn renders_kctrl_shape() {
        let p = source("cert-manager.packages.example.com");
        let (package, metadata) = render(&release(&p, "1.9.1")).unwrap();
        assert_eq!(
            package.metadata.name.as_deref(),
            Some("cert-manager.packages.example.com.1.9.1")
        );
        assert_eq!(
            metadata.metadata.name.as_deref(),
            Some("cert-manager.packages.example.com")
        );
        let app = &package.spec.template.spec;
        assert!(
            app.fetch[0]
                .imgpkg_bundle
                .as_ref()
                .unwrap()
                .image
                .contains("@sha256:")
        );
        assert_eq!(app.template[0].ytt.as_ref().unwrap().paths, ["config/"]);
        assert_eq!(
            app.template[1].kbld.as_ref().unwrap().paths,
            ["-", ".imgpkg/images.yml"]
        );
        assert!(app.deploy[0].kapp.is_some());
        assert_eq!(
            package.spec.values_schema.unwrap().open_api_v3.unwrap()["properties"]["namespace"]["type"],
            "string"
        );
        assert_eq!(package.metadata.namespace.as_deref(), Some("packages"));
    }

    #[test]
    fn helm_charts_use_helm_template_and_overrides_win() {
        let mut p = source("nginx.packages.example.com");
        let mut r = release(&p, "1.0.0");
        r.helm_chart_path = Some("config/upstream");
        let (package, _) = render(&r).unwrap();
        let t = &package.spec.template.spec.template;
        assert_eq!(t[0].helm_template.as_ref().unwrap().path, "config/upstream");
        assert!(t[1].kbld.is_some());
        assert_eq!(t.len(), 2);

        r.overlay_paths = vec!["config/overlays".to_owned()];
        let (package, _) = render(&r).unwrap();
        let t = &package.spec.template.spec.template;
        assert_eq!(
            t[1].ytt.as_ref().unwrap().paths,
            ["-", "config/overlays"],
            "overlays apply to the render"
        );
        assert_eq!(
            t[2].kbld.as_ref().unwrap().paths,
            ["-", ".imgpkg/images.yml"]
        );

        p.values_schema = Some(serde_json::json!({"title": "explicit"}));
        let (package, _) = render(&release(&p, "1.0.0")).unwrap();
        assert_eq!(
            package.spec.values_schema.unwrap().open_api_v3.unwrap()["title"],
            "explicit"
        );
    }

    /// A packaging revision as kapp-controller's own validation
    /// (`pkg/apiserver/apis/datapackaging/validation/validations.go`) takes it: the name is
    /// exactly `<spec.refName>.<spec.version>` — not itself checked as a DNS name, only
    /// refName is — and the version is semver, build metadata included. (The bed's stand-in
    /// CRDs cannot hold a `+` in a name; kapp-controller's aggregated API can.)
    #[test]
    fn a_revision_renders_a_package_kapp_controller_accepts() {
        let p = source("nginx.example.com");
        let version = crate::publish::revision::revision_version("1.9.1", 2);
        let (package, _) = render(&release(&p, &version)).expect("render");
        let name = package.metadata.name.clone().expect("name");
        assert_eq!(
            name,
            format!("{}.{}", package.spec.ref_name, package.spec.version)
        );
        assert_eq!(name, "nginx.example.com.1.9.1+packsmith.2");
        let parsed = semver::Version::parse(&package.spec.version).expect("semver");
        assert_eq!(parsed.build.as_str(), "packsmith.2");
        // Revisions order after the version they revise for people and tools that sort by
        // build metadata; semver precedence ignores it (kapp-controller's constraints do too).
        assert_eq!(
            parsed.cmp_precedence(&semver::Version::parse("1.9.1").expect("semver")),
            std::cmp::Ordering::Equal
        );
    }

    #[test]
    fn refuses_what_kapp_controller_would_reject() {
        let p = source("nginx.example");
        let err = render(&release(&p, "v1.0.0")).unwrap_err().to_string();
        assert!(err.contains("kapp-controller"), "{err}");
    }
}
