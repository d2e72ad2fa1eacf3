//! The CustomResourceDefinitions packsmith serves, as committed under `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
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
