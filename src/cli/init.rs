//! `packsmith init NAME`: scaffolds a package directory (the seed's `make create-package`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

#[derive(Args, Debug)]
pub(super) struct InitArgs {
    /// Package name: a DNS label like `foobar`, or a full refName like
    /// `foobar.packages.example.com` (at least three labels).
    pub name: String,
    /// Directory to write into; `./NAME` when unset.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Package refName; `NAME.example.com` when NAME is a plain label.
    #[arg(long)]
    pub ref_name: Option<String>,
    /// Namespace for the PackageSource, the installer ServiceAccount and the PackageInstall.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Package a Helm chart: REPOSITORY_URL/CHART[@VERSION], e.g.
    /// https://kubernetes.github.io/ingress-nginx/ingress-nginx@4.11.0 or
    /// oci://ghcr.io/org/charts/app (VERSION: a version or a constraint; the newest stable
    /// when unset). The package version follows the chart's.
    #[arg(long, value_name = "REPO/CHART[@VERSION]")]
    pub helm_chart: Option<String>,
}

/// A chart named on the command line.
#[derive(Debug, PartialEq, Eq)]
struct ChartRef {
    repository: String,
    name: String,
    version: Option<String>,
}

impl ChartRef {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let (location, version) = match text.rsplit_once('@') {
            Some((location, version)) if !version.contains('/') => {
                (location, Some(version.to_owned()))
            }
            _ => (text, None),
        };
        if !(location.starts_with("https://")
            || location.starts_with("http://")
            || location.starts_with("oci://"))
        {
            bail!(
                "--helm-chart {text:?}: give the repository's URL and the chart's name \
                 (https://charts.example.com/NAME or oci://registry.example.com/charts/NAME); \
                 a `helm repo add` alias means nothing outside your helm config"
            );
        }
        let (repository, name) = location
            .trim_end_matches('/')
            .rsplit_once('/')
            .filter(|(repository, name)| {
                !name.is_empty() && !repository.ends_with(':') && !repository.ends_with('/')
            })
            .with_context(|| {
                format!("--helm-chart {text:?}: no chart name after the repository URL")
            })?;
        if !is_dns_label(name) {
            bail!(
                "--helm-chart {text:?}: {name:?} is not a chart name (lowercase letters, digits and '-')"
            );
        }
        if version
            .as_deref()
            .is_some_and(|v| v.is_empty() || v.contains(['"', '\n', '\\']))
        {
            bail!("--helm-chart {text:?}: invalid version after '@'");
        }
        Ok(Self {
            repository: repository.to_owned(),
            name: name.to_owned(),
            version,
        })
    }
}

/// What `init` derives from its arguments.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    /// Short name: metadata.name of the PackageSource and PackageInstall.
    name: String,
    ref_name: String,
    namespace: String,
    helm_chart: Option<ChartRef>,
}

fn names(args: &InitArgs) -> anyhow::Result<Names> {
    let (name, implied_ref) = match args.name.split_once('.') {
        Some((first, _)) => (first.to_owned(), Some(args.name.clone())),
        None => (args.name.clone(), None),
    };
    if !is_dns_label(&name) {
        bail!(
            "invalid package name {:?}: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (e.g. foobar)",
            args.name
        );
    }
    let ref_name = match (&args.ref_name, implied_ref) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => r,
        (None, None) => format!("{name}.example.com"),
    };
    if !is_ref_name(&ref_name) {
        bail!(
            "invalid refName {ref_name:?}: kapp-controller needs a lowercase DNS subdomain with at least three labels, e.g. {name}.packages.example.com"
        );
    }
    if !is_dns_label(&args.namespace) {
        bail!("invalid namespace {:?}", args.namespace);
    }
    Ok(Names {
        name,
        ref_name,
        namespace: args.namespace.clone(),
        helm_chart: args
            .helm_chart
            .as_deref()
            .map(ChartRef::parse)
            .transpose()?,
    })
}

/// RFC 1123 label, as Kubernetes names and namespaces require.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// kapp-controller's rule for Package refNames and PackageMetadata names.
pub(super) fn is_ref_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 3 && s.split('.').all(is_dns_label)
}

/// Files `init` writes, relative to the package directory, with their contents.
fn files(n: &Names) -> Vec<(&'static str, String)> {
    let (version, contents) = match &n.helm_chart {
        Some(chart) => (
            HELM_VERSION_FROM.to_owned(),
            HELM_CONTENTS
                .replace("__CHART__", &chart.name)
                .replace("__REPOSITORY__", &chart.repository)
                .replace(
                    "__CHART_VERSION__",
                    &chart
                        .version
                        .as_ref()
                        .map(|v| format!("        version: \"{v}\"\n"))
                        .unwrap_or_default(),
                ),
        ),
        None => (FIXED_VERSION.to_owned(), GIT_CONTENTS.to_owned()),
    };
    let fill = |t: &str| {
        t.replace("__VERSION_BLOCK__", &version)
            .replace("__CONTENTS_BLOCK__", &contents)
            .replace("__NAME__", &n.name)
            .replace("__REF_NAME__", &n.ref_name)
            .replace("__NAMESPACE__", &n.namespace)
    };
    let mut files = vec![
        ("packagesource.yaml", fill(PACKAGESOURCE)),
        ("serviceaccount.yaml", fill(SERVICEACCOUNT)),
        ("clusterrolebinding.yaml", fill(CLUSTERROLEBINDING)),
        ("packageinstall.yaml", fill(PACKAGEINSTALL)),
    ];
    // A chart's values are Helm values (the PackageInstall's), not ytt data values.
    if n.helm_chart.is_none() {
        files.push(("config/values.yaml", fill(VALUES)));
    }
    files
}

pub(super) fn run(args: &InitArgs) -> anyhow::Result<()> {
    let names = names(args)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&names.name));
    let written = write(&dir, &names)?;
    for path in written {
        println!("wrote {}", path.display());
    }
    println!(
        "next: edit {}/packagesource.yaml (upstream, bundle repository), then `kubectl apply -f {}/packagesource.yaml` or `packsmith release {}`",
        dir.display(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Writes every file or none: existing files are never overwritten, and the check happens
/// before the first write so a refusal leaves the directory as it was.
fn write(dir: &Path, names: &Names) -> anyhow::Result<Vec<PathBuf>> {
    let files = files(names);
    let existing: Vec<String> = files
        .iter()
        .map(|(rel, _)| dir.join(rel))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite {}; remove them or choose another --dir",
            existing.join(", ")
        );
    }
    let mut written = Vec::new();
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Err(e) = create_new(&path, content.as_bytes()) {
            // Only what this run created goes; nothing that existed before was touched.
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(written)
}

/// Creates `path` with `content`, refusing to replace a file that appeared since the check
/// (O_EXCL: a file or symlink planted there is never written through).
fn create_new(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite it)", path.display()))?;
    let result = file.write_all(content).and_then(|()| file.sync_all());
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

const PACKAGESOURCE: &str = r#"# PackageSource for __NAME__. packsmith syncs the upstream below, locks every image it
# references to a digest, pushes an imgpkg bundle and publishes Package + PackageMetadata for
# kapp-controller.
#
# In a cluster: `kubectl apply -f packagesource.yaml` (packsmith controller running), then
# `kubectl get pkgsrc __NAME__ -n __NAMESPACE__`.
# Locally: `packsmith release .` also bundles this directory's config/ (values, overlays);
# in a cluster the bundle holds only `contents`, so keep such files in git or inline there.
apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: __NAME__
  namespace: __NAMESPACE__
spec:
  package:
    # A DNS subdomain with at least three labels; also the PackageMetadata name.
    refName: __REF_NAME__
__VERSION_BLOCK__    releaseNotes: Initial release of __NAME__.
    licenses:
    - Apache-2.0
    metadata:
      displayName: __NAME__
      shortDescription: __NAME__ packaged for kapp-controller
      providerName: example.com
      maintainers:
      - name: Platform team
      categories:
      - example
  # Upstream contents in vendir's directories schema: git, http, githubRelease, helmChart,
  # image, imgpkgBundle or inline, with includePaths / excludePaths / newRootPath.
  contents:
__CONTENTS_BLOCK__  images:
    # Pin every image the manifests reference to a sha256 digest (.imgpkg/images.yml).
    lock: true
  bundle:
    # OCI repository the bundle is pushed to; tagged with the version.
    repository: registry.example.com/packages/__NAME__
    # Push credentials: a kubernetes.io/dockerconfigjson Secret in this namespace.
    # secretRef:
    #   name: registry-credentials
  publish:
    # Keep the newest 10 published versions.
    retain: 10
  interval: 1h
"#;

const FIXED_VERSION: &str = r#"    # A fixed version (semver, no leading v). To follow upstream tags instead, replace it with:
    #   versionFrom:
    #     directory: config/upstream
    #     constraints: ">=0.1.0"
    version: 0.1.0
"#;

const GIT_CONTENTS: &str = r#"  - path: config/upstream
    contents:
    - path: .
      git:
        url: https://github.com/example/__NAME__
        ref: v0.1.0
      includePaths:
      - deploy/**/*.yaml
"#;

const HELM_VERSION_FROM: &str = r#"    # The package version is the chart's version.
    versionFrom:
      directory: config/upstream
"#;

const HELM_CONTENTS: &str = r#"  # The chart is rendered with helm before its images are locked (set rendering-only values
  # in images.helm.values); the Package renders it with helmTemplate.
  - path: config/upstream
    contents:
    - path: .
      helmChart:
        name: __CHART__
__CHART_VERSION__        repository:
          url: __REPOSITORY__
"#;

const SERVICEACCOUNT: &str = r#"# The identity kapp-controller uses to install __NAME__ (PackageInstall.spec.serviceAccountName).
apiVersion: v1
kind: ServiceAccount
metadata:
  name: __NAME__-installer
  namespace: __NAMESPACE__
"#;

const CLUSTERROLEBINDING: &str = r#"# Lets kapp-controller create what __NAME__ deploys. cluster-admin is what most packages need
# (CRDs, cluster roles, namespaces); bind a narrower ClusterRole when the package's manifests
# allow it.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: __NAME__-installer
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- kind: ServiceAccount
  name: __NAME__-installer
  namespace: __NAMESPACE__
"#;

const PACKAGEINSTALL: &str = r#"# Installs __NAME__ with kapp-controller once its Package is published.
apiVersion: packaging.carvel.dev/v1alpha1
kind: PackageInstall
metadata:
  name: __NAME__
  namespace: __NAMESPACE__
spec:
  serviceAccountName: __NAME__-installer
  packageRef:
    refName: __REF_NAME__
    versionSelection:
      constraints: ">=0.1.0"
"#;

const VALUES: &str = r#"#@data/values
---
#! Namespace __NAME__ is deployed into.
namespace: __NAME__
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PackageSource;

    fn args(name: &str) -> InitArgs {
        InitArgs {
            name: name.into(),
            dir: None,
            ref_name: None,
            namespace: "default".into(),
            helm_chart: None,
        }
    }

    #[test]
    fn derives_names() {
        let n = names(&args("foobar")).unwrap();
        assert_eq!(n.ref_name, "foobar.example.com");
        let n = names(&args("foo.packages.acme.io")).unwrap();
        assert_eq!(
            (n.name.as_str(), n.ref_name.as_str()),
            ("foo", "foo.packages.acme.io")
        );
        for bad in ["", "Foo", "-foo", "foo_bar", "foo.bar", &"a".repeat(64)] {
            assert!(names(&args(bad)).is_err(), "{bad:?} should be rejected");
        }
        let mut a = args("foobar");
        a.ref_name = Some("foobar.io".into());
        let err = names(&a).unwrap_err().to_string();
        assert!(err.contains("at least three labels"), "{err}");
    }

    #[test]
    fn writes_a_valid_package_source_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("foobar");
        let n = names(&args("foobar")).unwrap();
        let written = write(&dir, &n).unwrap();
        assert_eq!(written.len(), 5);

        let text = std::fs::read_to_string(dir.join("packagesource.yaml")).unwrap();
        let ps: PackageSource = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(ps.spec.package.ref_name, "foobar.example.com");
        assert_eq!(ps.spec.package.version.as_deref(), Some("0.1.0"));
        assert_eq!(ps.spec.contents.len(), 1);
        assert_eq!(ps.spec.bundle.tags_for("0.1.0"), vec!["0.1.0"]);

        let values = std::fs::read_to_string(dir.join("config/values.yaml")).unwrap();
        assert!(values.starts_with("#@data/values\n"));

        // A second run must fail and leave the first run's files untouched.
        std::fs::write(dir.join("serviceaccount.yaml"), "edited").unwrap();
        let err = write(&dir, &n).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("serviceaccount.yaml")).unwrap(),
            "edited"
        );
    }

    #[test]
    fn helm_charts_are_scaffolded_from_their_repository() {
        assert_eq!(
            ChartRef::parse("https://kubernetes.github.io/ingress-nginx/ingress-nginx@>=4.0.0")
                .unwrap(),
            ChartRef {
                repository: "https://kubernetes.github.io/ingress-nginx".into(),
                name: "ingress-nginx".into(),
                version: Some(">=4.0.0".into()),
            }
        );
        assert_eq!(
            ChartRef::parse("oci://ghcr.io/org/charts/app").unwrap(),
            ChartRef {
                repository: "oci://ghcr.io/org/charts".into(),
                name: "app".into(),
                version: None,
            }
        );
        for bad in [
            "bitnami/nginx",
            "https://charts.example.com/",
            "oci://app",
            "https://x.io/Bad_Name",
        ] {
            assert!(ChartRef::parse(bad).is_err(), "{bad:?} should be refused");
        }

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ingress");
        let mut a = args("ingress");
        a.helm_chart =
            Some("https://kubernetes.github.io/ingress-nginx/ingress-nginx@4.11.0".into());
        let written = write(&dir, &names(&a).unwrap()).unwrap();
        assert_eq!(written.len(), 4, "no ytt values for a chart: {written:?}");
        let text = std::fs::read_to_string(dir.join("packagesource.yaml")).unwrap();
        let ps: PackageSource = serde_saphyr::from_str(&text).unwrap();
        assert!(ps.spec.package.version.is_none());
        assert_eq!(
            ps.spec
                .package
                .version_from
                .as_ref()
                .map(|v| v.directory.as_str()),
            Some("config/upstream")
        );
        let source = ps.spec.contents[0].contents[0].source().unwrap();
        let crate::carvel::vendir::Source::HelmChart(chart) = source else {
            panic!("not a helmChart: {source:?}");
        };
        assert_eq!(chart.name, "ingress-nginx");
        assert_eq!(chart.version, "4.11.0");
        assert_eq!(
            chart.repository.as_ref().map(|r| r.url.as_str()),
            Some("https://kubernetes.github.io/ingress-nginx")
        );
    }
}

#[cfg(test)]
mod write_tests {
    use super::*;

    /// A dangling symlink planted where init writes (`exists()` is false for it) is neither
    /// followed nor replaced, and what this run already wrote is taken back.
    #[test]
    fn a_planted_symlink_is_not_written_through_and_nothing_is_left_half_done() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pkg");
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let outside = root.path().join("outside.yaml");
        std::os::unix::fs::symlink(&outside, dir.join("config/values.yaml")).unwrap();
        let names = names(&InitArgs {
            name: "foobar".into(),
            dir: None,
            ref_name: None,
            namespace: "default".into(),
            helm_chart: None,
        })
        .unwrap();
        let err = write(&dir, &names).unwrap_err();
        assert!(
            format!("{err:#}").contains("refusing to overwrite"),
            "{err:#}"
        );
        assert!(!outside.exists(), "written through the symlink");
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["config"]);
        assert!(
            std::fs::symlink_metadata(dir.join("config/values.yaml"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
