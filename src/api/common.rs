//! Types shared by packsmith's kinds.

#![expect(
    unreachable_pub,
    reason = "kube's KubeSchema/CustomResource derives copy these `pub` items into private \
              scopes, where the lint fires on them; the items are the public API"
)]

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Go-style duration as Flux and kubectl users write it: `30s`, `10m`, `1h30m`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A Secret in the same namespace as the object that references it. Cross-namespace references
/// are deliberately impossible: a PackageSource must not be able to read another tenant's
/// credentials through the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("secretRef.name must name a Secret in the same namespace"))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("name must name a Secret in the same namespace"))]
    pub name: String,
    /// Key in the Secret's data; `ca.crt` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Where a bundle is pushed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleTarget {
    /// OCI repository without tag or digest, e.g. `ghcr.io/acme/packages/cert-manager`.
    #[schemars(length(max = 512))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$')").message("repository must be a lowercase OCI repository like registry.example.com/team/name, without tag or digest"))]
    pub repository: String,
    /// Tags to push. `{{version}}` is replaced by the package version with `+` written as `_`
    /// (OCI tags cannot hold `+`). Defaults to `["{{version}}"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("bundle.tags must not be empty: omit it to tag with the version"))]
    #[x_kube(validation = Rule::new(r"self.all(t, t.replace('{{version}}', 'v').matches('^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'))").message("each tag must be a valid OCI tag (letters, digits, '_', '.', '-'; at most 128 characters), optionally containing {{version}}"))]
    #[schemars(length(max = 16), inner(length(max = 160)))]
    pub tags: Option<Vec<String>>,
    /// Secret of type kubernetes.io/dockerconfigjson with push credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Talk plain HTTP (or skip TLS verification) to this registry. For test registries only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Secret holding the PEM CA bundle that signed the registry's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Copy every image the bundle locks (nested bundles with theirs) into `repository`
    /// before the bundle is pushed, as `imgpkg copy --to-repo` does, so the published
    /// package installs from this registry alone. The bundle itself is unchanged: imgpkg
    /// (and kapp-controller) find the images next to it when they pull it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relocate_images: bool,
    /// Sign every bundle pushed here with a cosign key, as `cosign sign --key` does (the
    /// `sha256-<digest>.sig` tag next to it), before any tag points at it; `cosign verify
    /// --key cosign.pub --insecure-ignore-tlog` and `packsmith verify` accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<BundleSigning>,
}

/// A cosign signing key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleSigning {
    /// Secret in the same namespace with `cosign.key` (the private key as `cosign
    /// generate-key-pair` writes it) and, unless the key has an empty password,
    /// `cosign.password` — the keys `cosign generate-key-pair k8s://NS/NAME` creates.
    pub secret_ref: SecretRef,
}

/// Keys of a signing Secret, as cosign names them (`cosign generate-key-pair k8s://…`).
pub const COSIGN_KEY: &str = "cosign.key";
pub const COSIGN_PASSWORD: &str = "cosign.password";
pub const COSIGN_PUB: &str = "cosign.pub";

impl BundleTarget {
    /// The tags to push for `version`, templated and defaulted as documented on `tags`.
    pub fn tags_for(&self, version: &str) -> Vec<String> {
        let oci_version = version.replace('+', "_");
        match &self.tags {
            Some(tags) => tags
                .iter()
                .map(|t| t.replace("{{version}}", &oci_version))
                .collect(),
            None => vec![oci_version],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_default_to_the_version_with_oci_safe_build_metadata() {
        let t = BundleTarget::default();
        assert_eq!(t.tags_for("1.2.3+build.4"), vec!["1.2.3_build.4"]);
        let t = BundleTarget {
            tags: Some(vec!["v{{version}}".into(), "latest".into()]),
            ..Default::default()
        };
        assert_eq!(t.tags_for("1.0.0"), vec!["v1.0.0", "latest"]);
    }
}
