//! Helm charts in the lock stage: rendered with helm itself, never read as YAML.
//!
//! A chart's templates are Go templates; what kapp-controller installs is what `helm template`
//! makes of them. So a directory holding a `Chart.yaml` is not scanned: it is rendered the
//! way kapp-controller's `helmTemplate` step renders it (`pkg/template/helm_template.go`:
//! `helm template NAME PATH --namespace NS --include-crds`, then `--values` files), with the
//! chart's default values plus the ones given for rendering, and the manifests of that render
//! are what the lock pins. Each reference keeps the exact string the render produced, so
//! kapp-controller's kbld step finds it in `.imgpkg/images.yml` at install.
//!
//! Rendering a chart runs a program on hostile input, so every cost is bounded before it is
//! paid: the process starts with an empty environment (no kubeconfig, no helm repositories,
//! no plugins; its cache and config in a private temporary directory), its data segment is
//! capped (`RLIMIT_DATA`, which is what bounds a Go heap), its output is read up to the
//! manifest size limit and it is killed at a deadline. `helm template` contacts nothing: it
//! neither fetches dependencies (they must be in `charts/`) nor reaches a cluster.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use super::error::{Location, LockError};
use super::yaml::{YamlLimits, parse_stream};

/// The helm release packsmith is tested with and the container image ships.
pub const HELM_VERSION: &str = "v3.19.5";

/// How charts are rendered.
#[derive(Debug, Clone)]
pub struct HelmOptions {
    /// The helm binary: a path, or a name looked up on PATH.
    pub binary: PathBuf,
    /// The release name (`.Release.Name`); the chart's name when unset.
    pub release_name: Option<String>,
    /// `.Release.Namespace`.
    pub namespace: String,
    /// `--kube-version` (`.Capabilities.KubeVersion`); helm's default when unset.
    pub kube_version: Option<String>,
    /// Values for rendering only, each with where it came from, applied in order after the
    /// chart's own `values.yaml` (as `--values` files).
    pub values: Vec<(String, Value)>,
    /// A render that takes longer is killed.
    pub timeout: Duration,
    /// The data segment the helm process may use (its heap).
    pub max_memory: u64,
}

impl Default for HelmOptions {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("helm"),
            release_name: None,
            namespace: "default".to_owned(),
            kube_version: None,
            values: Vec::new(),
            timeout: Duration::from_secs(60),
            max_memory: 1024 * 1024 * 1024,
        }
    }
}

/// The manifests one chart rendered to.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The chart directory, as discovery found it.
    pub chart: PathBuf,
    /// `helm template`'s standard output.
    pub output: String,
}

/// helm's error output kept for a message (its first lines say what failed).
const MAX_STDERR: u64 = 64 * 1024;

/// Whether `dir` is a chart (helm's `chartutil.IsChartDir`: it holds a Chart.yaml).
pub(super) fn is_chart(dir: &Path) -> bool {
    dir.join("Chart.yaml").is_file()
}

/// Whether `file` is a packaged chart: a `.tgz` whose top directory holds a Chart.yaml, as
/// `helm package` writes it (Chart.yaml first, so the peek is short).
pub(super) fn is_chart_archive(file: &Path) -> bool {
    file.extension().is_some_and(|e| e == "tgz")
        && matches!(chart_file(file, "Chart.yaml", 1024 * 1024), Ok(Some(_)))
}

/// Entries of a chart archive read while looking for one file, and bytes inflated.
const MAX_ARCHIVE_ENTRIES: usize = 10_000;
const MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;

/// The text of `name` (e.g. `values.yaml`) at the top of the chart `chart` — a directory, or
/// a `.tgz` whose single top directory is the chart — up to `limit` bytes; `None` when the
/// chart has no such file.
pub fn chart_file(chart: &Path, name: &str, limit: u64) -> Result<Option<String>, String> {
    if chart.is_dir() {
        let path = chart.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        return read_small(&path, limit).map(Some);
    }
    use std::io::Read as _;
    let file =
        std::fs::File::open(chart).map_err(|e| format!("reading {}: {e}", chart.display()))?;
    let inflated = flate2::read::GzDecoder::new(file).take(MAX_ARCHIVE_BYTES);
    let mut archive = tar::Archive::new(inflated);
    let entries = archive
        .entries()
        .map_err(|e| format!("reading {}: {e}", chart.display()))?;
    for entry in entries.take(MAX_ARCHIVE_ENTRIES) {
        let entry = entry.map_err(|e| format!("reading {}: {e}", chart.display()))?;
        let path = entry
            .path()
            .map_err(|e| format!("reading {}: {e}", chart.display()))?
            .into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() == 2
            && matches!(parts[0], std::path::Component::Normal(_))
            && parts[1].as_os_str() == name
        {
            if entry.header().entry_size().unwrap_or(u64::MAX) > limit {
                return Err(format!(
                    "{}: {name} exceeds the limit of {limit} bytes",
                    chart.display()
                ));
            }
            let mut text = String::new();
            entry
                .take(limit)
                .read_to_string(&mut text)
                .map_err(|e| format!("reading {name} in {}: {e}", chart.display()))?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// Renders the chart at `chart`. Its output may be at most `max_output` bytes.
pub async fn render(
    chart: &Path,
    options: &HelmOptions,
    max_output: u64,
) -> Result<Rendered, LockError> {
    let fail = |message: String| LockError::Helm {
        chart: chart.to_owned(),
        message,
    };
    let binary = find_binary(&options.binary).ok_or_else(|| LockError::HelmMissing {
        chart: chart.to_owned(),
        binary: options.binary.clone(),
    })?;
    let release = match &options.release_name {
        Some(name) => name.clone(),
        None => chart_name(chart).map_err(&fail)?,
    };
    let home = tempfile::Builder::new()
        .prefix("packsmith-helm-")
        .tempdir()
        .map_err(|e| fail(format!("creating helm's private home: {e}")))?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "template".into(),
        release.into(),
        chart.as_os_str().to_owned(),
        "--namespace".into(),
        options.namespace.clone().into(),
        "--include-crds".into(),
    ];
    if let Some(version) = &options.kube_version {
        args.extend(["--kube-version".into(), version.into()]);
    }
    for (index, (origin, values)) in options.values.iter().enumerate() {
        if !values.is_object() {
            return Err(LockError::Config {
                origin: origin.clone(),
                message: "Helm values must be a mapping".to_owned(),
            });
        }
        // JSON is YAML: helm reads it as a values file.
        let path = home.path().join(format!("values-{index}.yaml"));
        std::fs::write(&path, values.to_string())
            .map_err(|e| fail(format!("writing the values of {origin}: {e}")))?;
        args.extend(["--values".into(), path.into_os_string()]);
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "issue 14: charts are rendered by helm itself, as kapp-controller does"
    )]
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(&args)
        .env_clear()
        .env("HOME", home.path())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", binary.display())))?;
    // Set right after the start: a Go program allocates its heap well after this.
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        rlimit::prlimit(
            pid,
            rlimit::Resource::DATA,
            Some((options.max_memory, options.max_memory)),
            None,
        )
        .map_err(|e| fail(format!("limiting helm's memory: {e}")))?;
    }
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            match stdout {
                Some(o) => o.take(max_output + 1).read_to_end(&mut out).await.map(drop),
                None => Ok(()),
            }
        };
        let read_err = async {
            match stderr {
                Some(e) => e.take(MAX_STDERR).read_to_end(&mut err).await.map(drop),
                None => Ok(()),
            }
        };
        let (a, b) = tokio::join!(read_out, read_err);
        a?;
        b?;
        Ok::<_, std::io::Error>((out, err))
    };
    let (out, err) = tokio::time::timeout(options.timeout, run)
        .await
        .map_err(|_| {
            fail(format!(
                "helm template did not finish within {}s: the chart renders too much or loops",
                options.timeout.as_secs()
            ))
        })?
        .map_err(|e| fail(format!("reading helm's output: {e}")))?;
    if out.len() as u64 > max_output {
        // Dropping the child kills it.
        return Err(fail(format!(
            "the rendered manifests exceed the limit of {max_output} bytes"
        )));
    }
    let status = tokio::time::timeout(options.timeout, child.wait())
        .await
        .map_err(|_| fail("helm template did not exit after writing its output".to_owned()))?
        .map_err(|e| fail(format!("waiting for helm: {e}")))?;
    if !status.success() {
        return Err(fail(failure_message(
            &String::from_utf8_lossy(&err),
            status,
            options.max_memory,
        )));
    }
    let output = String::from_utf8(out).map_err(|e| {
        fail(format!(
            "the rendered manifests are not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(Rendered {
        chart: chart.to_owned(),
        output,
    })
}

/// What a person needs from a failed render: helm's own error (file, line and the
/// template's `required`/`fail` message), with a hint where helm's is not enough.
fn failure_message(stderr: &str, status: std::process::ExitStatus, max_memory: u64) -> String {
    if stderr.contains("fatal error: out of memory")
        || stderr.contains("fatal error: runtime: out of memory")
    {
        return format!(
            "helm ran out of its {} MiB of memory rendering the chart",
            max_memory / (1024 * 1024)
        );
    }
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        // Advice for helm's own command line, not for a PackageSource.
        .filter(|l| !l.is_empty() && !l.starts_with("Use --debug flag"))
        .collect();
    // helm prints warnings before its `Error: ` line; the error is what failed.
    let said = match lines.iter().position(|l| l.starts_with("Error: ")) {
        Some(at) => lines[at..].join("; "),
        None => lines.join("; "),
    };
    let said = said.strip_prefix("Error: ").unwrap_or(&said).to_owned();
    let said = if said.is_empty() {
        format!("helm template failed ({status}) without saying why")
    } else {
        said
    };
    if said.contains("missing in charts/ directory") {
        format!(
            "{said} (kapp-controller's helmTemplate does not fetch dependencies: vendor them \
             into the chart's charts/ directory, e.g. with `helm dependency build`)"
        )
    } else {
        said
    }
}

/// The chart's `name` from its Chart.yaml (bounded: the file is read only up to 1 MiB).
fn chart_name(chart: &Path) -> Result<String, String> {
    let path = chart.join("Chart.yaml");
    let text = chart_file(chart, "Chart.yaml", 1024 * 1024)?
        .ok_or_else(|| format!("{}: the chart has no Chart.yaml", chart.display()))?;
    let documents = parse_stream(&text, &YamlLimits::default())
        .map_err(|e| format!("{}: not valid YAML: {}", path.display(), e.message))?;
    documents
        .first()
        .and_then(|d| d.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: the chart has no name", path.display()))
}

fn read_small(path: &Path, limit: u64) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .len();
    if size > limit {
        return Err(format!(
            "{}: {size} bytes exceeds the limit of {limit} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `binary` itself when it names a path, else the first match on PATH.
fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// The manifests of a render, each with the template it came from: helm writes every
/// document as `---\n# Source: CHART/templates/FILE\n…` (its `releaseutil.SplitManifests`
/// order), so a reference is reported at `CHART_DIR/templates/FILE (document N)`.
pub(super) fn documents(
    rendered: &Rendered,
    limits: &YamlLimits,
) -> Result<Vec<(Location, Value)>, LockError> {
    let mut found: Vec<(Location, Value)> = Vec::new();
    for chunk in split_sources(&rendered.output) {
        let path = match chunk.source {
            // `mychart/templates/x.yaml`: the first component is the chart's name, which need
            // not be its directory's.
            Some(source) => {
                let inside = source.split_once('/').map_or(source, |(_, rest)| rest);
                rendered.chart.join(inside)
            }
            None => rendered.chart.clone(),
        };
        let parsed = parse_stream(chunk.text, limits).map_err(|failure| LockError::Yaml {
            path: path.clone(),
            line: failure.line,
            column: failure.column,
            message: format!("{} (in the chart's rendered output)", failure.message),
        })?;
        for document in parsed {
            let index = found.iter().filter(|(l, _)| l.path == path).count() + 1;
            found.push((
                Location {
                    path: path.clone(),
                    document: index,
                },
                document,
            ));
        }
    }
    Ok(found)
}

struct Chunk<'a> {
    source: Option<&'a str>,
    text: &'a str,
}

/// Splits helm's output at its `# Source:` headers.
fn split_sources(output: &str) -> Vec<Chunk<'_>> {
    const HEADER: &str = "# Source: ";
    let mut chunks = Vec::new();
    let mut rest = output;
    let mut source = None;
    loop {
        let next = rest
            .match_indices(HEADER)
            .find(|(at, _)| *at == 0 || rest.as_bytes()[at - 1] == b'\n')
            .map(|(at, _)| at);
        let Some(at) = next else {
            chunks.push(Chunk { source, text: rest });
            break;
        };
        chunks.push(Chunk {
            source,
            text: &rest[..at],
        });
        let after = &rest[at + HEADER.len()..];
        let (line, tail) = after.split_once('\n').unwrap_or((after, ""));
        source = Some(line.trim());
        rest = tail;
    }
    chunks.retain(|c| !c.text.trim().is_empty() && c.text.trim() != "---");
    chunks
}

/// The chart's default values that a reference in its render is made of: a value equal to
/// the whole reference, its repository, the start or end of it (a registry value, a
/// repository after one) or its tag. A PackageInstall that sets one of them installs an image this lock does not pin.
pub(super) fn values_in(reference: &str, leaves: &[(String, String)]) -> Vec<String> {
    let repository = super::reference::url_repo(reference).unwrap_or(reference);
    let tag = reference
        .strip_prefix(repository)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(|t| t.split('@').next().unwrap_or(t));
    leaves
        .iter()
        .filter(|(_, value)| {
            value.len() >= 2
                && (value == reference
                    || value == repository
                    || repository.ends_with(&format!("/{value}"))
                    || repository.starts_with(&format!("{value}/"))
                    || tag == Some(value.as_str()))
        })
        .map(|(path, _)| path.clone())
        .collect()
}

/// The string values of a chart's `values.yaml`, with their dotted paths (a bounded number).
pub(super) fn value_leaves(chart: &Path, limits: &YamlLimits) -> Vec<(String, String)> {
    const MAX_LEAVES: usize = 10_000;
    let Ok(Some(text)) = chart_file(chart, "values.yaml", 16 * 1024 * 1024) else {
        return Vec::new();
    };
    let Ok(documents) = parse_stream(&text, limits) else {
        return Vec::new();
    };
    let mut leaves = Vec::new();
    if let Some(root) = documents.first() {
        collect_leaves(root, String::new(), &mut leaves, MAX_LEAVES);
    }
    leaves
}

fn collect_leaves(value: &Value, path: String, out: &mut Vec<(String, String)>, max: usize) {
    if out.len() >= max {
        return;
    }
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect_leaves(child, child_path, out, max);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                collect_leaves(child, format!("{path}[{index}]"), out, max);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_located_at_their_templates() {
        let rendered = Rendered {
            chart: PathBuf::from("config/upstream"),
            output:
                "---\n# Source: mychart/templates/service.yaml\napiVersion: v1\nkind: Service\n\
                     ---\n# Source: mychart/templates/deployment.yaml\nkind: Deployment\nspec:\n  \
                     image: \"nginx:1.16.0\"\n---\n# Source: mychart/charts/sub/templates/a.yaml\n\
                     kind: A\n---\nkind: B\n"
                    .to_owned(),
        };
        let docs = documents(&rendered, &YamlLimits::default()).unwrap();
        let at: Vec<String> = docs.iter().map(|(l, _)| l.to_string()).collect();
        assert_eq!(
            at,
            [
                "config/upstream/templates/service.yaml (document 1)",
                "config/upstream/templates/deployment.yaml (document 1)",
                "config/upstream/charts/sub/templates/a.yaml (document 1)",
                "config/upstream/charts/sub/templates/a.yaml (document 2)",
            ]
        );
        assert_eq!(docs[1].1["spec"]["image"], "nginx:1.16.0");
    }

    #[test]
    fn a_source_header_inside_a_value_is_not_a_header() {
        let rendered = Rendered {
            chart: PathBuf::from("c"),
            output: "---\n# Source: c/templates/a.yaml\nkind: A\nnote: \"x # Source: y\"\n"
                .to_owned(),
        };
        let docs = documents(&rendered, &YamlLimits::default()).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].1["note"], "x # Source: y");
    }

    #[test]
    fn invalid_rendered_yaml_names_the_template() {
        let rendered = Rendered {
            chart: PathBuf::from("c"),
            output: "---\n# Source: c/templates/bad.yaml\nkind: [\n".to_owned(),
        };
        let error = documents(&rendered, &YamlLimits::default()).unwrap_err();
        assert!(
            error.to_string().starts_with("c/templates/bad.yaml"),
            "{error}"
        );
    }

    #[test]
    fn values_that_make_a_reference_are_named() {
        let leaves = vec![
            ("image.registry".to_owned(), "docker.io".to_owned()),
            ("image.repository".to_owned(), "bitnami/nginx".to_owned()),
            ("image.tag".to_owned(), "1.25.3".to_owned()),
            ("sidecar.image".to_owned(), "busybox:1.36".to_owned()),
            ("name".to_owned(), "x".to_owned()),
            ("other".to_owned(), "redis".to_owned()),
        ];
        assert_eq!(
            values_in("docker.io/bitnami/nginx:1.25.3", &leaves),
            ["image.registry", "image.repository", "image.tag"]
        );
        assert_eq!(values_in("busybox:1.36", &leaves), ["sidecar.image"]);
        assert!(values_in("quay.io/other/thing:v1", &leaves).is_empty());
    }

    fn tgz(path: &Path, files: &[(&str, &str)]) {
        let file = std::fs::File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, text.as_bytes()).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn packaged_charts_are_read_from_their_archive() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("app-1.0.0.tgz");
        tgz(
            &chart,
            &[
                (
                    "app/Chart.yaml",
                    "apiVersion: v2\nname: app\nversion: 1.0.0\n",
                ),
                ("app/charts/sub/values.yaml", "sub: true\n"),
                ("app/values.yaml", "image: nginx\n"),
            ],
        );
        assert!(is_chart_archive(&chart));
        assert_eq!(chart_name(&chart).unwrap(), "app");
        assert_eq!(
            chart_file(&chart, "values.yaml", 1024).unwrap().as_deref(),
            Some("image: nginx\n"),
            "the chart's own values.yaml, not its subchart's"
        );
        assert_eq!(
            chart_file(&chart, "values.schema.json", 1024).unwrap(),
            None
        );
        assert!(chart_file(&chart, "values.yaml", 4).is_err(), "bounded");

        let other = dir.path().join("site.tgz");
        tgz(&other, &[("site/index.html", "<html>")]);
        assert!(!is_chart_archive(&other));
        std::fs::write(dir.path().join("broken.tgz"), "not gzip").unwrap();
        assert!(!is_chart_archive(&dir.path().join("broken.tgz")));
    }

    /// The helm the container image ships is the helm the test bed runs, and the one the
    /// error messages name.
    #[test]
    fn the_image_and_the_bed_build_the_same_helm() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap();
        let value = |text: &str, pattern: &str| -> String {
            let at = text
                .find(pattern)
                .unwrap_or_else(|| panic!("{pattern} not found"));
            text[at + pattern.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect()
        };
        let dockerfile = read("Dockerfile");
        let bed = read("e2e/scripts/install-tools.sh");
        assert_eq!(value(&dockerfile, "ARG HELM_VERSION="), HELM_VERSION);
        assert_eq!(value(&bed, "HELM_VERSION=${HELM_VERSION:-"), HELM_VERSION);
        assert_eq!(
            value(&dockerfile, "ARG HELM_K8S_MINOR="),
            value(&bed, "HELM_K8S_MINOR=")
        );
        assert!(dockerfile.contains("COPY --from=helm /out/helm /usr/local/bin/helm"));
        assert!(dockerfile.contains("PACKSMITH_HELM_BINARY=/usr/local/bin/helm"));
    }

    #[test]
    fn helm_errors_keep_helms_words_and_hint_at_dependencies() {
        let status = std::process::ExitStatus::default();
        assert_eq!(
            failure_message(
                "walk.go:75: found symbolic link\nError: execution error at \
                 (c/templates/d.yaml:4:10): image.tag is required\nUse --debug flag to render \
                 out invalid YAML\n",
                status,
                1 << 30
            ),
            "execution error at (c/templates/d.yaml:4:10): image.tag is required"
        );
        let deps = failure_message(
            "Error: An error occurred while checking for chart dependencies. You may need to \
             run `helm dependency build` to fetch missing dependencies: found in Chart.yaml, \
             but missing in charts/ directory: redis\n",
            status,
            1 << 30,
        );
        assert!(
            deps.contains("missing in charts/ directory: redis"),
            "{deps}"
        );
        assert!(deps.contains("does not fetch dependencies"), "{deps}");
        assert!(
            failure_message("fatal error: out of memory\n", status, 1 << 30)
                .contains("1024 MiB of memory")
        );
    }
}

/// The process around helm, with a stand-in program (the real helm is exercised end to end).
#[cfg(test)]
mod process_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn fake_helm(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("helm");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn chart(dir: &Path) -> PathBuf {
        let chart = dir.join("mychart");
        std::fs::create_dir_all(chart.join("templates")).unwrap();
        std::fs::write(
            chart.join("Chart.yaml"),
            "apiVersion: v2\nname: mychart\nversion: 0.1.0\n",
        )
        .unwrap();
        // A template is not YAML: discovery must never read it as such.
        std::fs::write(
            chart.join("templates/deployment.yaml"),
            "image: {{ .Values.image.repository }}:{{ .Values.image.tag }}\n",
        )
        .unwrap();
        std::fs::write(
            chart.join("values.yaml"),
            "image:\n  repository: nginx\n  tag: \"1.25\"\n",
        )
        .unwrap();
        chart
    }

    fn options(binary: PathBuf) -> HelmOptions {
        HelmOptions {
            binary,
            ..HelmOptions::default()
        }
    }

    #[tokio::test]
    async fn helm_runs_isolated_with_kapp_controllers_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let helm = fake_helm(
            dir.path(),
            r#"printf -- '---\n# Source: mychart/templates/a.yaml\nargs: "%s"\nenv: "%s"\n' "$*" "$(env | sort | tr '\n' ' ')""#,
        );
        let chart = chart(dir.path());
        let mut options = options(helm);
        options.kube_version = Some("1.30.0".to_owned());
        options.values = vec![("inline".to_owned(), serde_json::json!({"a": 1}))];
        let rendered = render(&chart, &options, 1 << 20).await.expect("render");
        let docs = documents(&rendered, &YamlLimits::default()).unwrap();
        let args = docs[0].1["args"].as_str().unwrap();
        assert!(
            args.starts_with(&format!(
                "template mychart {} --namespace default --include-crds --kube-version 1.30.0 --values ",
                chart.display()
            )),
            "{args}"
        );
        let env = docs[0].1["env"].as_str().unwrap();
        let names: Vec<&str> = env
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .filter(|k| !matches!(*k, "PWD" | "SHLVL" | "_"))
            .collect();
        assert_eq!(
            names,
            [
                "HELM_CACHE_HOME",
                "HELM_CONFIG_HOME",
                "HELM_DATA_HOME",
                "HOME",
                "KUBECONFIG"
            ],
            "only helm's private homes reach it: {env}"
        );
        let home = env
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("HOME="))
            .unwrap();
        assert!(home.contains("packsmith-helm-"), "a private home: {env}");
        assert!(
            !Path::new(home).exists(),
            "helm's home is removed after the render"
        );
    }

    #[tokio::test]
    async fn every_cost_of_a_render_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let chart = chart(dir.path());

        let mut slow = options(fake_helm(dir.path(), "exec sleep 30"));
        slow.timeout = Duration::from_millis(300);
        let error = render(&chart, &slow, 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("did not finish within"), "{error}");

        let loud = options(fake_helm(dir.path(), "exec yes kind: A"));
        let error = render(&chart, &loud, 4096).await.unwrap_err().to_string();
        assert!(error.contains("exceed the limit of 4096 bytes"), "{error}");

        let failing = options(fake_helm(
            dir.path(),
            "echo 'Error: execution error at (mychart/templates/d.yaml:1:9): image.tag is required' >&2; exit 1",
        ));
        let error = render(&chart, &failing, 4096)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "rendering the Helm chart {}: execution error at (mychart/templates/d.yaml:1:9): \
                 image.tag is required",
                chart.display()
            )
        );

        let missing = options(dir.path().join("no-such-helm"));
        let error = render(&chart, &missing, 4096)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no-such-helm does not exist"), "{error}");
        assert!(error.contains("--helm-binary"), "{error}");
    }

    #[tokio::test]
    async fn discovery_reads_the_render_never_the_templates() {
        let dir = tempfile::tempdir().unwrap();
        let helm = fake_helm(
            dir.path(),
            r#"printf -- '---\n# Source: mychart/templates/deployment.yaml\nkind: Deployment\nspec:\n  image: "nginx:1.25"\n'"#,
        );
        let tree = dir.path().join("config");
        std::fs::create_dir_all(&tree).unwrap();
        let chart = chart(&tree);
        std::fs::write(tree.join("plain.yaml"), "kind: Pod\nimage: busybox\n").unwrap();
        let config = super::super::LockConfig {
            helm: options(helm),
            ..Default::default()
        };
        let discovery = super::super::discover(std::slice::from_ref(&tree), &config)
            .await
            .expect("discover");
        assert_eq!(
            discovery.references.keys().collect::<Vec<_>>(),
            ["busybox", "nginx:1.25"]
        );
        assert_eq!(
            discovery.references["nginx:1.25"].path,
            chart.join("templates/deployment.yaml")
        );
        assert_eq!(discovery.charts, std::slice::from_ref(&chart));
        // Both of the default values that make the image are named.
        assert_eq!(discovery.warnings.len(), 1, "{:?}", discovery.warnings);
        assert!(
            discovery.warnings[0].contains("nginx:1.25 (image.repository, image.tag)"),
            "{:?}",
            discovery.warnings
        );

        // Without a render, a chart is an error, not a YAML parse of its templates.
        let error = super::super::discover_rendered(std::slice::from_ref(&tree), &config, &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("was not rendered"), "{error}");
    }
}
