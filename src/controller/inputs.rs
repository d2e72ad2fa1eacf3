//! The pipeline's external inputs, read from the PackageSource's own namespace: every Secret
//! and ConfigMap its contents reference (into a [`MemorySecrets`]), and the registry client
//! built from `spec.bundle` (dockerconfigjson Secret over the controller's defaults, CA
//! Secret, insecure host) and `spec.images.mirrors`.
//!
//! References never leave the namespace: a PackageSource cannot read another tenant's
//! credentials through the controller.

use super::registries::Registries;
use crate::registry::Egress;
use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};

use super::outcome::{Failure, Retry};
use crate::api::common::BundleTarget;
use crate::api::conditions::reasons;
use crate::api::source::RegistryMirror;
use crate::api::{PackageSource, PackageSourceSpec};
use crate::pipeline::Stage;
use crate::registry::{Credentials, Registry, RegistryOptions};
use crate::sync::{self, MemorySecrets};

/// The Secret type `spec.bundle.secretRef` must have, and its key.
pub(super) const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub(super) const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The label a Secret must carry for `inline.pathsFrom.secretRef` to copy it into a bundle.
/// Without it, the right to create a PackageSource would be the right to publish every
/// Secret of the namespace to a registry.
pub(super) const INLINE_ALLOWED_LABEL: &str = "packsmith.dev/inline-allowed";
/// Default key of `spec.bundle.caSecretRef`.
pub(super) const DEFAULT_CA_KEY: &str = "ca.crt";

/// What kind of object a content references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum RefKind {
    Secret,
    ConfigMap,
}

/// One object a content references, with where (for messages).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ContentRef {
    pub kind: RefKind,
    pub name: String,
    /// e.g. `contents[config/upstream].contents[.].git.secretRef`.
    pub field: String,
}

/// Every Secret and ConfigMap `spec.contents` references, sorted, each once.
pub(super) fn content_refs(spec: &PackageSourceSpec) -> Vec<ContentRef> {
    let mut refs = BTreeSet::new();
    for dir in &spec.contents {
        for c in &dir.contents {
            let at = |f: &str| format!("contents[{}].contents[{}].{f}", dir.path, c.path);
            let mut secret = |name: &str, field: String| {
                if !name.is_empty() {
                    refs.insert(ContentRef {
                        kind: RefKind::Secret,
                        name: name.to_owned(),
                        field,
                    });
                }
            };
            use crate::carvel::vendir::Source;
            match c.source() {
                Ok(Source::Git(git)) => {
                    if let Some(r) = &git.secret_ref {
                        secret(&r.name, at("git.secretRef"));
                    }
                    if let Some(r) = git
                        .verification
                        .as_ref()
                        .and_then(|v| v.public_keys_secret_ref.as_ref())
                    {
                        secret(&r.name, at("git.verification.publicKeysSecretRef"));
                    }
                }
                Ok(Source::Http(http)) => {
                    if let Some(r) = &http.secret_ref {
                        secret(&r.name, at("http.secretRef"));
                    }
                }
                Ok(Source::Image(image)) => {
                    if let Some(r) = &image.secret_ref {
                        secret(&r.name, at("image.secretRef"));
                    }
                    if let Some(r) = image.verify.as_ref().and_then(|v| v.secret_ref.as_ref()) {
                        secret(&r.name, at("image.verify.secretRef"));
                    }
                }
                Ok(Source::ImgpkgBundle(bundle)) => {
                    if let Some(r) = &bundle.secret_ref {
                        secret(&r.name, at("imgpkgBundle.secretRef"));
                    }
                    if let Some(r) = bundle.verify.as_ref().and_then(|v| v.secret_ref.as_ref()) {
                        secret(&r.name, at("imgpkgBundle.verify.secretRef"));
                    }
                }
                Ok(Source::GithubRelease(release)) => {
                    if let Some(r) = &release.secret_ref {
                        secret(&r.name, at("githubRelease.secretRef"));
                    }
                }
                Ok(Source::HelmChart(chart)) => {
                    if let Some(r) = chart
                        .repository
                        .as_ref()
                        .and_then(|r| r.secret_ref.as_ref())
                    {
                        secret(&r.name, at("helmChart.repository.secretRef"));
                    }
                    if let Some(r) = chart.verify.as_ref().and_then(|v| v.secret_ref.as_ref()) {
                        secret(&r.name, at("helmChart.verify.secretRef"));
                    }
                }
                Ok(Source::Inline(inline)) => {
                    for (i, from) in inline.paths_from.iter().enumerate() {
                        if let Some(r) = &from.secret_ref {
                            secret(&r.name, at(&format!("inline.pathsFrom[{i}].secretRef")));
                        }
                    }
                    for (i, from) in inline.paths_from.iter().enumerate() {
                        if let Some(r) = from.config_map_ref.as_ref().filter(|r| !r.name.is_empty())
                        {
                            refs.insert(ContentRef {
                                kind: RefKind::ConfigMap,
                                name: r.name.clone(),
                                field: at(&format!("inline.pathsFrom[{i}].configMapRef")),
                            });
                        }
                    }
                }
                // No credentials (hg is refused at sync); an invalid content fails validation.
                Ok(Source::Hg(_) | Source::Manual(_) | Source::Directory(_)) | Err(_) => {}
            }
        }
    }
    if let Some(helm) = &spec.images.helm {
        for (i, from) in helm.values_from.iter().enumerate() {
            if let Some(r) = from.config_map_ref.as_ref().filter(|r| !r.name.is_empty()) {
                refs.insert(ContentRef {
                    kind: RefKind::ConfigMap,
                    name: r.name.clone(),
                    field: format!("images.helm.valuesFrom[{i}].configMapRef"),
                });
            }
            if let Some(r) = from.secret_ref.as_ref().filter(|r| !r.name.is_empty()) {
                refs.insert(ContentRef {
                    kind: RefKind::Secret,
                    name: r.name.clone(),
                    field: format!("images.helm.valuesFrom[{i}].secretRef"),
                });
            }
        }
    }
    // One entry per object: the first field that names it is enough to point a person at it.
    let mut seen = BTreeSet::new();
    refs.into_iter()
        .filter(|r| seen.insert((r.kind, r.name.clone())))
        .collect()
}

/// Every Secret and ConfigMap `spec` names in its own namespace: `bundle.secretRef`,
/// `bundle.caSecretRef`, `bundle.signing.secretRef` and [`content_refs`].
pub(super) fn referenced(spec: &PackageSourceSpec) -> Vec<(RefKind, String)> {
    let bundle = [
        spec.bundle.secret_ref.as_ref().map(|r| &r.name),
        spec.bundle.ca_secret_ref.as_ref().map(|r| &r.name),
        spec.bundle.signing.as_ref().map(|s| &s.secret_ref.name),
    ]
    .into_iter()
    .flatten()
    .map(|name| (RefKind::Secret, name.clone()));
    bundle
        .chain(content_refs(spec).into_iter().map(|r| (r.kind, r.name)))
        .collect()
}

/// Whether `spec` names the `kind` object `name` of its own namespace.
pub(super) fn references(spec: &PackageSourceSpec, kind: RefKind, name: &str) -> bool {
    referenced(spec)
        .iter()
        .any(|(k, n)| *k == kind && n == name)
}

/// The PackageSources among `sources` (a reflector store: no API call) that reference the
/// `kind` object `namespace`/`name`; a Secret or ConfigMap watch maps its events through this.
pub(super) fn referencing<'a>(
    sources: impl IntoIterator<Item = &'a PackageSource>,
    kind: RefKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<PackageSource>> {
    sources
        .into_iter()
        .filter(|s| s.namespace().as_deref() == namespace)
        .filter(|s| references(&s.spec, kind, name))
        .map(ObjectRef::from_obj)
        .collect()
}

/// The Secrets whose contents can reach the bundle, each with how: those `inline.pathsFrom`
/// copies into it, and those a chart is rendered with (`images.helm.valuesFrom`), whose
/// values a template may write into an image reference the lock records.
pub(super) fn inline_secrets(spec: &PackageSourceSpec) -> BTreeSet<&str> {
    let inline = spec
        .contents
        .iter()
        .flat_map(|d| &d.contents)
        .filter_map(|c| c.inline.as_ref())
        .flat_map(|i| &i.paths_from)
        .filter_map(|from| from.secret_ref.as_ref())
        .map(|r| r.name.as_str());
    let helm = spec
        .images
        .helm
        .iter()
        .flat_map(|h| &h.values_from)
        .filter_map(|from| from.secret_ref.as_ref())
        .map(|r| r.name.as_str());
    inline.chain(helm).collect()
}

/// Refuses a Secret bound for a bundle that does not carry [`INLINE_ALLOWED_LABEL`].
fn check_inline_allowed(secret: &Secret, namespace: &str, r: &ContentRef) -> Result<(), Failure> {
    if secret
        .labels()
        .get(INLINE_ALLOWED_LABEL)
        .map(String::as_str)
        == Some("true")
    {
        return Ok(());
    }
    Err(Failure::before_pipeline(
        Stage::Sync,
        reasons::INLINE_SECRET_NOT_ALLOWED,
        format!(
            "Secret {namespace}/{} is {} but lacks the label {INLINE_ALLOWED_LABEL}: \"true\"; \
             label it if its contents may be published (kubectl label secret {} \
             {INLINE_ALLOWED_LABEL}=true -n {namespace})",
            r.name,
            if r.field.starts_with("images.helm") {
                format!(
                    "read by {} (a chart's render can publish it in the lock)",
                    r.field
                )
            } else {
                "copied into the bundle by inline.pathsFrom".to_owned()
            },
            r.name
        ),
        Retry::Never,
    ))
}

/// Reads every referenced Secret and ConfigMap from `namespace`. A missing one is a failure
/// of the sync stage, retried with backoff: it may be created after the PackageSource.
pub(super) async fn load_content_secrets(
    client: &Client,
    namespace: &str,
    spec: &PackageSourceSpec,
) -> Result<MemorySecrets, Failure> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut out = MemorySecrets::default();
    let inline = inline_secrets(spec);
    for r in content_refs(spec) {
        match r.kind {
            RefKind::Secret => {
                let secret = get(&secrets, namespace, &r, Stage::Sync).await?;
                if inline.contains(r.name.as_str()) {
                    check_inline_allowed(&secret, namespace, &r)?;
                }
                out.secrets.insert(r.name.clone(), to_sync_secret(&secret));
            }
            RefKind::ConfigMap => {
                let map = get(&config_maps, namespace, &r, Stage::Sync).await?;
                out.config_maps
                    .insert(r.name.clone(), map.data.unwrap_or_default());
            }
        }
    }
    Ok(out)
}

pub(super) async fn get<K>(
    api: &Api<K>,
    namespace: &str,
    r: &ContentRef,
    stage: Stage,
) -> Result<K, Failure>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = match r.kind {
        RefKind::Secret => "Secret",
        RefKind::ConfigMap => "ConfigMap",
    };
    match api.get_opt(&r.name).await {
        Ok(Some(obj)) => Ok(obj),
        Ok(None) => Err(Failure::before_pipeline(
            stage,
            reasons::REFERENCE_NOT_FOUND,
            format!(
                "{kind} {namespace}/{} named by {} does not exist: create it in namespace \
                 {namespace} (retrying with backoff)",
                r.name, r.field
            ),
            Retry::Backoff,
        )),
        Err(e) => Err(Failure::before_pipeline(
            stage,
            reasons::REFERENCE_NOT_FOUND,
            format!(
                "reading {kind} {namespace}/{} named by {}: {} (check the controller's RBAC: \
                 it needs get on {}s in {namespace})",
                r.name,
                r.field,
                super::outcome::api_message(&e),
                kind.to_lowercase()
            ),
            Retry::Backoff,
        )),
    }
}

fn to_sync_secret(secret: &Secret) -> sync::Secret {
    sync::Secret {
        data: secret
            .data
            .as_ref()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default(),
    }
}

/// The registry client for this PackageSource: `defaults` (the controller's docker config)
/// with the bundle Secret's entries over them, the CA Secret, `bundle.insecure` and the
/// image mirrors.
pub(super) async fn registry(
    client: &Client,
    registries: &Registries,
    namespace: &str,
    spec: &PackageSourceSpec,
    defaults: &Credentials,
    egress: &Egress,
) -> Result<Arc<Registry>, Failure> {
    bundle_registry(
        client,
        registries,
        namespace,
        &spec.bundle,
        &spec.images.mirrors,
        defaults,
        egress,
    )
    .await
}

/// [`registry`] for any object with a `bundle` target (a PackageRepositorySource too):
/// `defaults` with `bundle.secretRef` over them, `bundle.caSecretRef`, `bundle.insecure` and
/// the given image mirrors.
pub(super) async fn bundle_registry(
    client: &Client,
    registries: &Registries,
    namespace: &str,
    bundle: &BundleTarget,
    mirrors: &[RegistryMirror],
    defaults: &Credentials,
    egress: &Egress,
) -> Result<Arc<Registry>, Failure> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut options = target_registry_options(bundle, mirrors, Credentials::default(), Vec::new());
    let mut credentials = operator_credentials(defaults, &options);
    if let Some(secret_ref) = &bundle.secret_ref {
        let r = ContentRef {
            kind: RefKind::Secret,
            name: secret_ref.name.clone(),
            field: "spec.bundle.secretRef".to_owned(),
        };
        let secret = get(&secrets, namespace, &r, Stage::Push).await?;
        credentials.merge(docker_credentials(namespace, &secret_ref.name, &secret)?);
    }
    let mut ca_pems = Vec::new();
    if let Some(ca_ref) = &bundle.ca_secret_ref {
        let key = ca_ref.key.as_deref().unwrap_or(DEFAULT_CA_KEY);
        let r = ContentRef {
            kind: RefKind::Secret,
            name: ca_ref.name.clone(),
            field: "spec.bundle.caSecretRef".to_owned(),
        };
        let secret = get(&secrets, namespace, &r, Stage::Push).await?;
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone())
            .ok_or_else(|| {
                stalled(
                    reasons::REFERENCE_NOT_FOUND,
                    format!(
                        "Secret {namespace}/{} (spec.bundle.caSecretRef) has no key {key:?}: \
                         add the PEM CA bundle under that key or set caSecretRef.key",
                        ca_ref.name
                    ),
                )
            })?;
        ca_pems.push(pem);
    }
    options.credentials = credentials;
    options.ca_pems = ca_pems;
    options.egress = egress.clone();
    registries.get(options).map_err(|e| {
        stalled(
            reasons::INVALID_SPEC,
            format!("configuring registry access from spec.bundle: {e}"),
        )
    })
}

/// The controller's own credentials an object may use: never for a host it speaks plain HTTP
/// to (`bundle.insecure`, an insecure mirror) — the operator's password would cross the
/// network in the clear to an address a tenant chose. The object's own `bundle.secretRef` is
/// its own business and still applies there.
fn operator_credentials(defaults: &Credentials, options: &RegistryOptions) -> Credentials {
    let mut credentials = defaults.clone();
    let insecure_mirrors = options.mirrors.iter().filter(|m| m.insecure);
    for host in options
        .insecure_hosts
        .iter()
        .map(String::as_str)
        .chain(insecure_mirrors.map(|m| m.host()))
    {
        credentials.forget(host);
    }
    credentials
}

#[cfg(test)]
/// The pure part of [`registry`]: which hosts are plain HTTP and which mirrors apply.
pub(super) fn registry_options(
    spec: &PackageSourceSpec,
    credentials: Credentials,
    ca_pems: Vec<Vec<u8>>,
) -> RegistryOptions {
    target_registry_options(&spec.bundle, &spec.images.mirrors, credentials, ca_pems)
}

/// [`registry_options`] for a bare bundle target and mirror list.
pub(super) fn target_registry_options(
    bundle: &BundleTarget,
    mirrors: &[RegistryMirror],
    credentials: Credentials,
    ca_pems: Vec<Vec<u8>>,
) -> RegistryOptions {
    let mut insecure_hosts = Vec::new();
    if bundle.insecure
        && let Some(host) = bundle.repository.split('/').next()
    {
        insecure_hosts.push(host.to_owned());
    }
    RegistryOptions {
        mirrors: mirrors.iter().map(|m| m.to_registry_mirror()).collect(),
        insecure_hosts,
        ca_pems,
        credentials,
        withhold_credentials_over_fallback: true,
        ..RegistryOptions::default()
    }
}

/// Credentials from a `kubernetes.io/dockerconfigjson` Secret.
pub(super) fn docker_credentials(
    namespace: &str,
    name: &str,
    secret: &Secret,
) -> Result<Credentials, Failure> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != DOCKER_CONFIG_JSON_TYPE {
        return Err(stalled(
            reasons::INVALID_SPEC,
            format!(
                "Secret {namespace}/{name} (spec.bundle.secretRef) has type {type_}: it must be \
                 {DOCKER_CONFIG_JSON_TYPE} (kubectl create secret docker-registry {name} \
                 --docker-server=… --docker-username=… --docker-password=…)"
            ),
        ));
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKER_CONFIG_JSON_KEY))
        .ok_or_else(|| {
            stalled(
                reasons::REFERENCE_NOT_FOUND,
                format!(
                    "Secret {namespace}/{name} (spec.bundle.secretRef) has no key \
                     {DOCKER_CONFIG_JSON_KEY}"
                ),
            )
        })?;
    Credentials::from_docker_config_json(&bytes.0, &format!("Secret {namespace}/{name}"))
        .map_err(|e| stalled(reasons::INVALID_SPEC, e.to_string()))
}

/// A Secret that exists but is unusable: retrying will not help until it is fixed.
fn stalled(reason: &'static str, message: String) -> Failure {
    Failure::before_pipeline(
        Stage::Push,
        reason,
        format!(
            "{message}; after fixing the Secret, set the packsmith.dev/requestedAt annotation \
             to retry"
        ),
        Retry::Never,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryAuth;
    use k8s_openapi::ByteString;

    fn spec(yaml: &str) -> PackageSourceSpec {
        crate::carvel::yaml::from_str("spec", yaml).unwrap()
    }

    #[test]
    fn maps_a_secret_or_config_map_to_the_sources_referencing_it() {
        let source = |ns: &str, yaml: &str| -> PackageSource {
            let mut obj = PackageSource::new("s", spec(yaml));
            obj.metadata.namespace = Some(ns.to_owned());
            obj
        };
        let bundle = source(
            "a",
            r#"
package: {refName: a.b.c, version: 1.0.0}
bundle: {repository: r.io/a, secretRef: {name: push}, caSecretRef: {name: ca}}
contents: []
"#,
        );
        let inline = source(
            "a",
            r#"
package: {refName: a.b.c, version: 1.0.0}
bundle: {repository: r.io/a}
contents:
- path: config
  contents:
  - path: .
    inline: {pathsFrom: [{configMapRef: {name: values}}, {secretRef: {name: push}}]}
"#,
        );
        let sources = [bundle.clone(), inline.clone()];
        let found = |kind, ns, name| referencing(&sources, kind, Some(ns), name).len();
        assert_eq!(found(RefKind::Secret, "a", "push"), 2);
        assert_eq!(found(RefKind::Secret, "a", "ca"), 1);
        assert_eq!(found(RefKind::Secret, "b", "push"), 0, "other namespace");
        assert_eq!(found(RefKind::ConfigMap, "a", "values"), 1);
        assert_eq!(found(RefKind::ConfigMap, "a", "push"), 0, "kind matters");
        assert_eq!(found(RefKind::Secret, "a", "values"), 0);
        assert!(!references(&bundle.spec, RefKind::ConfigMap, "ca"));
    }

    #[test]
    fn finds_every_referenced_secret_and_config_map_once() {
        let s = spec(
            r#"
package: {refName: a.b.c, version: 1.0.0}
bundle: {repository: r.io/a, insecure: true}
images:
  mirrors: [{from: quay.io, to: "127.0.0.1:5000", insecure: true}]
contents:
- path: config/a
  contents:
  - path: git
    git: {url: https://g/x.git, ref: main, secretRef: {name: git-creds}}
  - path: http
    http: {url: https://h/x.tgz, secretRef: {name: git-creds}}
  - path: rel
    githubRelease: {slug: a/b, tag: v1, secretRef: {name: gh}}
- path: config/b
  contents:
  - path: .
    inline:
      pathsFrom:
      - secretRef: {name: inline-s}
      - configMapRef: {name: inline-cm, directoryPath: sub}
"#,
        );
        let refs: Vec<(RefKind, String)> = content_refs(&s)
            .into_iter()
            .map(|r| (r.kind, r.name))
            .collect();
        assert_eq!(
            refs,
            vec![
                (RefKind::Secret, "gh".to_owned()),
                (RefKind::Secret, "git-creds".to_owned()),
                (RefKind::Secret, "inline-s".to_owned()),
                (RefKind::ConfigMap, "inline-cm".to_owned()),
            ]
        );
        let field = content_refs(&s)
            .into_iter()
            .find(|r| r.name == "inline-cm")
            .unwrap()
            .field;
        assert_eq!(
            field,
            "contents[config/b].contents[.].inline.pathsFrom[1].configMapRef"
        );

        let options = registry_options(&s, Credentials::default(), vec![]);
        assert_eq!(options.insecure_hosts, vec!["r.io"]);
        assert_eq!(options.mirrors.len(), 1);
        assert!(options.mirrors[0].insecure);
        // A local registry reached over plain HTTP only by the fallback gets no credentials
        // from the controller (the CLI's default sends them).
        assert!(options.withhold_credentials_over_fallback);
        assert!(!RegistryOptions::default().withhold_credentials_over_fallback);

        // The operator's credentials stay off the hosts this object speaks plain HTTP to.
        let mut defaults = Credentials::basic("r.io", "operator", "secret");
        defaults.merge(Credentials::basic("127.0.0.1:5000", "operator", "secret"));
        defaults.merge(Credentials::basic("quay.io", "operator", "secret"));
        let kept = operator_credentials(&defaults, &options);
        assert_eq!(kept.auth_for("r.io"), RegistryAuth::Anonymous);
        assert_eq!(kept.auth_for("127.0.0.1:5000"), RegistryAuth::Anonymous);
        assert_eq!(
            kept.auth_for("quay.io"),
            RegistryAuth::Basic("operator".to_owned(), "secret".to_owned())
        );
    }

    fn secret(type_: &str, key: &str, value: &[u8]) -> Secret {
        Secret {
            type_: Some(type_.to_owned()),
            data: Some([(key.to_owned(), ByteString(value.to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn docker_config_secrets_are_checked_and_never_echoed() {
        let ok = secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            br#"{"auths":{"r.io":{"username":"u","password":"hunter2"}}}"#,
        );
        let creds = docker_credentials("ns", "creds", &ok).unwrap();
        assert!(!creds.is_empty());

        let opaque = secret("Opaque", DOCKER_CONFIG_JSON_KEY, b"{}");
        let err = docker_credentials("ns", "creds", &opaque).unwrap_err();
        assert!(err.is_stalled() && err.message.contains("docker-registry"));
        assert_eq!(err.stage, Some(Stage::Push));

        let garbage = secret(
            DOCKER_CONFIG_JSON_TYPE,
            DOCKER_CONFIG_JSON_KEY,
            b"{\"auths\": hunter2",
        );
        let err = docker_credentials("ns", "creds", &garbage).unwrap_err();
        assert!(
            err.message.contains("Secret ns/creds") && !err.message.contains("hunter2"),
            "{}",
            err.message
        );
        assert!(err.message.contains("requestedAt"));
    }

    #[test]
    fn inline_secrets_need_the_opt_in_label() {
        let spec: PackageSourceSpec = crate::carvel::yaml::from_str(
            "spec",
            r#"
package: {refName: a.example.com, version: 1.0.0}
contents:
- path: config
  contents:
  - path: creds
    git: {url: "https://example.com/r.git", ref: v1, secretRef: {name: git-creds}}
  - path: values
    inline: {pathsFrom: [{secretRef: {name: values}}, {configMapRef: {name: cm}}]}
images:
  helm:
    valuesFrom: [{configMapRef: {name: helm-cm}}, {secretRef: {name: helm-secret}}]
bundle: {repository: registry.example.com/a}
"#,
        )
        .expect("spec");
        assert_eq!(
            inline_secrets(&spec),
            BTreeSet::from(["values", "helm-secret"]),
            "a chart's values can reach the lock"
        );
        let fields: Vec<String> = content_refs(&spec).into_iter().map(|r| r.field).collect();
        assert!(
            fields.contains(&"images.helm.valuesFrom[0].configMapRef".to_owned())
                && fields.contains(&"images.helm.valuesFrom[1].secretRef".to_owned()),
            "their changes trigger a reconcile: {fields:?}"
        );
        let r = ContentRef {
            kind: RefKind::Secret,
            name: "values".to_owned(),
            field: "f".to_owned(),
        };
        let mut secret = Secret::default();
        let refused = check_inline_allowed(&secret, "team-a", &r).expect_err("no label");
        assert_eq!(refused.reason, reasons::INLINE_SECRET_NOT_ALLOWED);
        assert!(refused.is_stalled());
        assert!(
            refused.message.contains(INLINE_ALLOWED_LABEL),
            "{}",
            refused.message
        );
        secret.metadata.labels =
            Some([(INLINE_ALLOWED_LABEL.to_owned(), "true".to_owned())].into());
        assert!(check_inline_allowed(&secret, "team-a", &r).is_ok());
    }
}
