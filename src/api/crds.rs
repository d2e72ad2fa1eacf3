//! The CustomResourceDefinitions packsmith serves, as committed under `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON,
};
use kube::CustomResourceExt;

use super::{PackageRepositorySource, PackageSource, receiver::Receiver};

/// Every CRD, with the file name it is committed under in `crds/`, in file-name order (so
/// `cat crds/*.yaml` is exactly what `packsmith crds` prints).
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "packagerepositorysources.yaml",
            PackageRepositorySource::crd(),
        ),
        ("packagesources.yaml", PackageSource::crd()),
        ("receivers.yaml", Receiver::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| (file, unobserved_until_reconciled(crd)))
    .collect()
}

/// Flux's convention (`+kubebuilder:default:={"observedGeneration":-1}` on every Flux kind):
/// the API server gives an object nobody has reconciled yet `status.observedGeneration: -1`,
/// so kstatus — Flux's health checks, `kstatus`-based waits in CI — reads it as in progress
/// from the moment it is created. Without it, an object without status and conditions reads
/// as *Current* until the controller's first status write, and a GitOps apply that waits for
/// its PackageSources can pass before anything was published. A default is applied by the
/// API server when it reads the object, so this costs the controller no write.
fn unobserved_until_reconciled(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({ "observedGeneration": -1 })));
        }
    }
    crd
}

/// One CRD as the YAML document committed in `crds/`, with its own `---` so that the files
/// concatenated are exactly what `packsmith crds` prints.
#[expect(
    clippy::disallowed_methods,
    reason = "a CRD is not a Carvel file; its bytes are compared with crds/, not digested"
)]
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser_error::Error> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}

/// All CRDs as one multi-document YAML stream, in `all()` order (what `packsmith crds` prints).
pub fn render_all() -> Result<String, serde_saphyr::ser_error::Error> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` is what users install; it must be what the code generates, or the schema in
    /// clusters is not the one the controller was built against.
    #[test]
    fn committed_crds_match_the_generator() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (file, crd) in all() {
            let generated = to_yaml(&crd).expect("CRD serialises");
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                committed == generated,
                "crds/{file} differs from the generator: run `make crds` and commit"
            );
        }
    }

    #[test]
    fn every_kind_starts_unobserved() {
        for (file, crd) in all() {
            for version in &crd.spec.versions {
                let status = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .and_then(|s| s.properties.as_ref())
                    .and_then(|p| p.get("status"))
                    .unwrap_or_else(|| panic!("{file} {}: no status schema", version.name));
                assert_eq!(
                    status.default.as_ref().map(|d| &d.0),
                    Some(&serde_json::json!({ "observedGeneration": -1 })),
                    "{file} {}",
                    version.name
                );
            }
        }
    }

    #[test]
    fn printed_stream_holds_every_crd() {
        let text = render_all().expect("renders");
        let docs: Vec<CustomResourceDefinition> =
            serde_saphyr::from_multiple(&text).expect("parses back");
        let names: Vec<_> = docs
            .iter()
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                "packagerepositorysources.packsmith.dev",
                "packagesources.packsmith.dev",
                "receivers.packsmith.dev"
            ]
        );
    }
}
