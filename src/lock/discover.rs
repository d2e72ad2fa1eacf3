//! Discovery: every YAML document under the given paths, kbld configuration separated from
//! manifests, and the image references the manifests hold.
//!
//! Upstream: kbld `pkg/kbld/resources/file_resources.go` (which files, in which order),
//! `resources/resource.go` (documents must be mappings, `List`s are expanded),
//! `config/conf.go` (which documents are configuration, in which order they apply).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::carvel::imgpkg::{
    self, ImageRef, ImagesLock, KBLD_ID_ANNOTATION, KBLD_ORIGINS_ANNOTATION,
};
use crate::carvel::kbld::{Config, ImageOverride, PlatformSelection, SearchRule};
use crate::carvel::selection::VersionSelection;

use futures::{StreamExt as _, TryStreamExt as _};

use super::error::{Location, LockError};
use super::helm::{self, HelmOptions, Rendered};
use super::reference::url_repo;
use super::rules::{effective_rules, visit_images};
use super::yaml::{YamlLimits, parse_stream};

/// What discovery needs besides the files.
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// kbld configuration from outside the tree (`spec.images`, the command line), each with
    /// a name for error messages. It applies after the tree's own, as a later `kbld -f` would.
    pub configs: Vec<(String, Config)>,
    /// Files larger than this are rejected before they are read.
    pub max_file_bytes: u64,
    pub yaml: YamlLimits,
    /// How Helm charts in the tree are rendered.
    pub helm: HelmOptions,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            configs: Vec::new(),
            max_file_bytes: 64 * 1024 * 1024,
            yaml: YamlLimits::default(),
            helm: HelmOptions::default(),
        }
    }
}

/// Which references an override or build source applies to (kbld's `ImageRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageMatcher {
    /// The reference exactly as written.
    Image(String),
    /// The repository part as written (see [`url_repo`]).
    ImageRepo(String),
}

impl ImageMatcher {
    pub fn matches(&self, url: &str) -> bool {
        match self {
            ImageMatcher::Image(image) => image == url,
            // kbld compares with the whole value when its pattern does not match.
            ImageMatcher::ImageRepo(repo) => url_repo(url).unwrap_or(url) == repo,
        }
    }

    fn of(image: &str, image_repo: &str) -> Option<Self> {
        if !image.is_empty() {
            Some(ImageMatcher::Image(image.to_owned()))
        } else if !image_repo.is_empty() {
            Some(ImageMatcher::ImageRepo(image_repo.to_owned()))
        } else {
            None
        }
    }
}

/// An image override from a kbld `Config` or from an `ImagesLock` in the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub matcher: ImageMatcher,
    pub new_image: String,
    pub preresolved: bool,
    /// `newImage` is a repository; its highest tag these constraints allow is locked.
    pub tag_selection: Option<VersionSelection>,
    /// A multi-platform index resolves to this platform's image, not to the index.
    pub platform_selection: Option<PlatformSelection>,
    /// The entry as an ImagesLock recorded it; reused as is so that re-locking an unchanged
    /// tree reproduces the lock byte for byte (see [`super::resolve`]).
    pub locked: Option<ImageRef>,
    /// Where it was defined, for messages.
    pub defined_in: String,
}

/// A kbld build source: packsmith does not build, so a reference it matches is an error.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSource {
    pub matcher: ImageMatcher,
    pub defined_in: String,
}

/// One manifest document (after `List` expansion).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub location: Location,
    pub document: Value,
}

/// Everything found under the input paths.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Each reference as written in a manifest (kbld's `kbld.carvel.dev/id`), with the first
    /// place it was seen. Sorted, as `--list` prints them.
    pub references: BTreeMap<String, Location>,
    /// In kbld's precedence order: the first matching override applies.
    pub overrides: Vec<Override>,
    pub sources: Vec<BuildSource>,
    /// The effective search rules (the default rule last).
    pub search_rules: Vec<SearchRule>,
    pub manifests: Vec<Manifest>,
    pub warnings: Vec<String>,
    pub files: usize,
    /// The Helm charts whose renders were read instead of their files.
    pub charts: Vec<PathBuf>,
}

/// The path that stands for standard input, as in `kbld -f -`.
pub const STDIN: &str = "-";

/// Charts rendered at once: each is a helm process.
const RENDER_CONCURRENCY: usize = 2;

/// Reads every `.yaml`/`.yml`/`.json` file under `paths` (files given directly are read
/// whatever their name; [`STDIN`] reads standard input) and finds the image references in
/// them. A directory holding a `Chart.yaml` is a Helm chart: it is rendered with
/// [`LockConfig::helm`] and its render is read instead of its files (see [`super::helm`]).
pub async fn discover(paths: &[PathBuf], config: &LockConfig) -> Result<Discovery, LockError> {
    // One walk of the tree: the files it finds are read after the charts are rendered.
    let (files, charts) = collect(paths)?;
    let helm = &config.helm;
    let max_output = config.max_file_bytes;
    let rendered: Vec<Rendered> = futures::stream::iter(charts.clone())
        .map(|chart| async move { helm::render(&chart, helm, max_output).await })
        .buffered(RENDER_CONCURRENCY)
        .try_collect()
        .await?;
    discover_collected(files, charts, config, &rendered)
}

/// [`discover`] with the charts already rendered: a chart without a render is an error.
pub fn discover_rendered(
    paths: &[PathBuf],
    config: &LockConfig,
    rendered: &[Rendered],
) -> Result<Discovery, LockError> {
    let (files, charts) = collect(paths)?;
    discover_collected(files, charts, config, rendered)
}

fn discover_collected(
    files: Vec<PathBuf>,
    charts: Vec<PathBuf>,
    config: &LockConfig,
    rendered: &[Rendered],
) -> Result<Discovery, LockError> {
    let mut discovery = Discovery {
        files: files.len(),
        ..Discovery::default()
    };
    let mut configs: Vec<Config> = Vec::new();
    for chart in &charts {
        let render =
            rendered
                .iter()
                .find(|r| &r.chart == chart)
                .ok_or_else(|| LockError::Helm {
                    chart: chart.clone(),
                    message: "the chart was not rendered (a caller must render it first)"
                        .to_owned(),
                })?;
        for (location, document) in helm::documents(render, &config.yaml)? {
            for resource in resources(document, &location)? {
                classify(resource, location.clone(), &mut discovery, &mut configs)?;
            }
        }
    }
    discovery.charts = charts;
    for path in &files {
        let text = read_limited(path, config.max_file_bytes)?;
        let documents = parse_stream(&text, &config.yaml).map_err(|failure| LockError::Yaml {
            path: path.clone(),
            line: failure.line,
            column: failure.column,
            message: failure.message,
        })?;
        for (index, document) in documents.into_iter().enumerate() {
            let location = Location {
                path: path.clone(),
                document: index + 1,
            };
            for resource in resources(document, &location)? {
                classify(resource, location.clone(), &mut discovery, &mut configs)?;
            }
        }
    }
    for (origin, inline) in &config.configs {
        inline.validate().map_err(|e| LockError::Config {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        add_config(inline, origin, &mut discovery);
        configs.push(inline.clone());
    }

    discovery.search_rules = effective_rules(&configs);
    let mut references = BTreeMap::new();
    for manifest in &mut discovery.manifests {
        visit_images(
            &mut manifest.document,
            &discovery.search_rules,
            &config.yaml,
            &mut |reference| {
                references
                    .entry(reference.to_owned())
                    .or_insert_with(|| manifest.location.clone());
                None
            },
        );
    }
    discovery.references = references;
    warn_about_values(&mut discovery, &config.yaml);
    Ok(discovery)
}

/// Names the images of a chart that its values make: a PackageInstall that sets those values
/// installs an image the lock does not pin (kapp-controller's kbld step resolves it then).
fn warn_about_values(discovery: &mut Discovery, limits: &YamlLimits) {
    for chart in &discovery.charts {
        let leaves = helm::value_leaves(chart, limits);
        let made: Vec<String> = discovery
            .references
            .iter()
            .filter(|(_, location)| location.path.starts_with(chart))
            .filter_map(|(reference, _)| {
                let values = helm::values_in(reference, &leaves);
                (!values.is_empty()).then(|| format!("{reference} ({})", values.join(", ")))
            })
            .collect();
        if made.is_empty() {
            continue;
        }
        let warning = format!(
            "{}: images set by the chart's values: {}; the lock pins them as the defaults \
             render them, and a PackageInstall that changes those values gets images \
             kapp-controller's kbld step resolves at install",
            chart.display(),
            made.join("; ")
        );
        tracing::warn!("{warning}");
        discovery.warnings.push(warning);
    }
}

/// The Helm charts under `paths` (directories holding a Chart.yaml, not those inside another
/// chart: subcharts render with their parent), in byte order.
pub fn find_charts(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LockError> {
    collect(paths).map(|(_, charts)| charts)
}

/// The files to read and the charts to render under `paths`, charts in byte order.
fn collect(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), LockError> {
    let mut files = Vec::new();
    let mut charts = Vec::new();
    for path in paths {
        collect_files(path, &mut files, &mut charts)?;
    }
    charts.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    charts.dedup();
    Ok((files, charts))
}

/// kbld's file selection: a directory's files with a manifest extension, in byte order of
/// their paths (Go's `sort.Strings`, not component order); a file named directly, whatever
/// its extension. Symbolic links are not followed into directories, as `filepath.Walk` does.
fn collect_files(
    path: &Path,
    files: &mut Vec<PathBuf>,
    charts: &mut Vec<PathBuf>,
) -> Result<(), LockError> {
    let read_error = |cause| LockError::Read {
        path: path.to_owned(),
        cause,
    };
    if path == Path::new(STDIN) {
        files.push(path.to_owned());
        return Ok(());
    }
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    let chart = if metadata.is_dir() {
        helm::is_chart(path)
    } else {
        helm::is_chart_archive(path)
    };
    if chart {
        charts.push(path.to_owned());
        return Ok(());
    }
    if !metadata.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut found = Vec::new();
    walk(path, &mut found, charts)?;
    found.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    files.extend(found);
    Ok(())
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>, charts: &mut Vec<PathBuf>) -> Result<(), LockError> {
    let entries = std::fs::read_dir(dir).map_err(|cause| LockError::Read {
        path: dir.to_owned(),
        cause,
    })?;
    for entry in entries {
        let entry = entry.map_err(|cause| LockError::Read {
            path: dir.to_owned(),
            cause,
        })?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|cause| LockError::Read {
            path: path.clone(),
            cause,
        })?;
        if file_type.is_dir() && helm::is_chart(&path) {
            // Templates are not YAML: the chart's render is read instead.
            charts.push(path);
        } else if file_type.is_dir() {
            walk(&path, found, charts)?;
        } else if file_type.is_file() && helm::is_chart_archive(&path) {
            charts.push(path);
        } else if has_manifest_extension(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn has_manifest_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read_limited(path: &Path, limit: u64) -> Result<String, LockError> {
    let read_error = |cause| LockError::Read {
        path: path.to_owned(),
        cause,
    };
    let bytes = if path == Path::new(STDIN) {
        // A pipe has no size to check first: read one byte past the limit to detect it.
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        bytes
    } else {
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > limit {
            return Err(LockError::TooLarge {
                path: path.to_owned(),
                size,
                limit,
            });
        }
        std::fs::read(path).map_err(read_error)?
    };
    // The file may have grown between the two calls.
    if bytes.len() as u64 > limit {
        return Err(LockError::TooLarge {
            path: path.to_owned(),
            size: bytes.len() as u64,
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|e| LockError::Yaml {
        path: path.to_owned(),
        line: None,
        column: None,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// kbld's `NewResourcesFromBytes`: one with an `items` array is a list whose items are the
/// resources; an empty mapping is nothing.
///
/// kbld rejects a document that is not a mapping. ytt templates have them (the body of a
/// `#@ def` returning a list is a top-level sequence, e.g. external-dns's schema.yaml), and
/// they are not Kubernetes objects, so they cannot be kbld configuration either; they are
/// searched like any manifest, which finds what kbld would if it read them at all.
fn resources(document: Value, location: &Location) -> Result<Vec<Value>, LockError> {
    let Value::Object(mut object) = document else {
        return Ok(vec![document]);
    };
    if object.is_empty() {
        return Ok(Vec::new());
    }
    if !matches!(object.get("items"), Some(Value::Array(_))) {
        return Ok(vec![Value::Object(object)]);
    }
    let Some(Value::Array(items)) = object.remove("items") else {
        return Ok(Vec::new());
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::Object(_) => Ok(item),
            other => Err(LockError::Document {
                location: location.clone(),
                message: format!(
                    "items[{index}] is {}, but the items of a list must be objects",
                    describe(&other)
                ),
            }),
        })
        .collect()
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Whether a document is configuration (a kbld `Config` kind or an ImagesLock), which is
/// consumed rather than searched.
pub(super) fn is_configuration(document: &Value) -> bool {
    let field = |name| document.get(name).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    Config::is_config_document(api_version, kind)
        || (api_version == imgpkg::API_VERSION && kind == imgpkg::IMAGES_LOCK_KIND)
}

fn classify(
    resource: Value,
    location: Location,
    discovery: &mut Discovery,
    configs: &mut Vec<Config>,
) -> Result<(), LockError> {
    let field = |name| {
        resource
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let document_error = |message: String| LockError::Document {
        location: location.clone(),
        message,
    };
    if Config::is_config_document(&api_version, &kind) {
        let config: Config = serde_json::from_value(resource)
            .map_err(|e| document_error(format!("kbld {kind} is not valid: {e}")))?;
        config
            .validate()
            .map_err(|e| document_error(e.to_string()))?;
        add_config(&config, &location.to_string(), discovery);
        configs.push(config);
    } else if api_version == imgpkg::API_VERSION && kind == imgpkg::IMAGES_LOCK_KIND {
        let lock: ImagesLock = serde_json::from_value(resource)
            .map_err(|e| document_error(format!("ImagesLock is not valid: {e}")))?;
        lock.validate().map_err(|e| document_error(e.to_string()))?;
        for (index, entry) in lock.images.into_iter().enumerate() {
            let id = entry
                .annotations
                .get(KBLD_ID_ANNOTATION)
                .filter(|id| !id.is_empty())
                .cloned()
                .ok_or_else(|| {
                    document_error(format!(
                        "ImagesLock images[{index}] ({}) has no {KBLD_ID_ANNOTATION} annotation, \
                         so it cannot say which reference it locks",
                        entry.image
                    ))
                })?;
            if let Some(origins) = entry.annotations.get(KBLD_ORIGINS_ANNOTATION) {
                imgpkg::ImageOrigin::parse_annotation(origins)
                    .map_err(|e| document_error(format!("ImagesLock images[{index}]: {e}")))?;
            }
            discovery.overrides.push(Override {
                matcher: ImageMatcher::Image(id),
                new_image: entry.image.clone(),
                preresolved: true,
                tag_selection: None,
                platform_selection: None,
                locked: Some(entry),
                defined_in: location.to_string(),
            });
        }
    } else {
        discovery.manifests.push(Manifest {
            location,
            document: resource,
        });
    }
    Ok(())
}

fn add_config(config: &Config, defined_in: &str, discovery: &mut Discovery) {
    if !config.minimum_required_version.is_empty() {
        let warning = format!(
            "{defined_in}: minimumRequiredVersion {} ignored (it constrains the kbld binary, \
             which packsmith replaces)",
            config.minimum_required_version
        );
        tracing::warn!("{warning}");
        discovery.warnings.push(warning);
    }
    for rule in &config.overrides {
        discovery.overrides.push(override_of(rule, defined_in));
    }
    for source in &config.sources {
        let field = |name| source.get(name).and_then(Value::as_str).unwrap_or("");
        if let Some(matcher) = ImageMatcher::of(field("image"), field("imageRepo")) {
            discovery.sources.push(BuildSource {
                matcher,
                defined_in: defined_in.to_owned(),
            });
        }
    }
}

fn override_of(rule: &ImageOverride, defined_in: &str) -> Override {
    Override {
        // `Config::validate` guarantees one of the two is set.
        matcher: ImageMatcher::of(&rule.image, &rule.image_repo)
            .unwrap_or_else(|| ImageMatcher::Image(String::new())),
        new_image: rule.new_image.clone(),
        preresolved: rule.preresolved,
        tag_selection: rule.tag_selection.clone(),
        platform_selection: rule.platform_selection.clone(),
        locked: None,
        defined_in: defined_in.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn ids(discovery: &Discovery) -> Vec<&str> {
        discovery.references.keys().map(String::as_str).collect()
    }

    #[test]
    fn finds_references_in_every_document_and_list_item() {
        let dir = tree(&[
            (
                "a.yaml",
                "kind: Pod\nspec:\n  containers:\n  - image: nginx:1.25\n---\n---\nimage: busybox\n",
            ),
            (
                "sub/b.yml",
                "kind: List\nitems:\n- kind: Pod\n  image: a:1\n- kind: Pod\n  image: b:1\n",
            ),
            ("c.json", "{\"image\": \"json:1\"}"),
            ("notes.txt", "image: ignored\n"),
            (
                "ytt.yaml",
                "#@ load(\"@ytt:data\", \"data\")\n#@ if True:\nimage: ytt:1\n#@ end\n",
            ),
        ]);
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        assert_eq!(
            ids(&discovery),
            ["a:1", "b:1", "busybox", "json:1", "nginx:1.25", "ytt:1"]
        );
        assert_eq!(discovery.files, 4);
        let busybox = &discovery.references["busybox"];
        assert_eq!(busybox.document, 2);
        assert!(busybox.path.ends_with("a.yaml"));
    }

    #[test]
    fn config_documents_are_consumed_not_searched() {
        let dir = tree(&[
            (
                "kbld.yml",
                "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nminimumRequiredVersion: 0.15.0\n\
                 overrides:\n- image: a\n  newImage: b:1\nkeys: [container]\n",
            ),
            ("m.yml", "container: c:1\nimage: a\n"),
        ]);
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        assert_eq!(ids(&discovery), ["a", "c:1"]);
        assert_eq!(discovery.overrides.len(), 1);
        assert_eq!(
            discovery.overrides[0].matcher,
            ImageMatcher::Image("a".into())
        );
        assert_eq!(discovery.manifests.len(), 1);
        assert_eq!(discovery.warnings.len(), 1, "{:?}", discovery.warnings);
    }

    #[test]
    fn an_images_lock_becomes_preresolved_overrides_in_file_order() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let dir = tree(&[
            (
                ".imgpkg/images.yml",
                &format!(
                    "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n- image: \
                     index.docker.io/library/a@{digest}\n  annotations:\n    kbld.carvel.dev/id: a\n"
                ),
            ),
            (
                "z.yml",
                "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: a\n  newImage: b\n",
            ),
            ("m.yml", "image: a\n"),
        ]);
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        assert_eq!(ids(&discovery), ["a"]);
        // `.imgpkg/…` sorts before `z.yml`, so the lock's entry takes precedence, as in kbld.
        assert!(discovery.overrides[0].locked.is_some());
        assert_eq!(discovery.overrides[1].new_image, "b");
    }

    #[test]
    fn files_sort_by_bytes_like_go() {
        let dir = tree(&[("a/b.yml", "image: first\n"), ("a.yml", "image: second\n")]);
        let mut files = Vec::new();
        collect_files(dir.path(), &mut files, &mut Vec::new()).expect("walk");
        let names: Vec<String> = files
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("prefix")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["a.yml", "a/b.yml"]);
    }

    #[test]
    fn a_directory_named_like_a_manifest_is_walked_not_read() {
        let dir = tree(&[("upstream.yaml/inner.yaml", "image: inner:1\n")]);
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        assert_eq!(ids(&discovery), ["inner:1"]);
    }

    #[test]
    fn bad_inputs_name_the_file_and_line() {
        let dir = tree(&[
            ("ok.yml", "image: a\n"),
            ("bad.yml", "a: 1\nb: [1, 2\nc: 3\n"),
        ]);
        let error = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect_err("syntax error")
            .to_string();
        assert!(error.contains("bad.yml:"), "{error}");

        for (text, hint) in [
            ("items: [1]\n", "items[0] is a number"),
            (
                "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- newImage: x\n",
                "overrides[0]",
            ),
            (
                "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\nimages:\n- image: a:1\n",
                "not a digest reference",
            ),
        ] {
            let dir = tree(&[("x.yml", text)]);
            let error = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
                .expect_err(text)
                .to_string();
            assert!(
                error.contains("x.yml (document 1)") && error.contains(hint),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn documents_that_are_not_mappings_are_searched_too() {
        let dir = tree(&[(
            "schema.yaml",
            "#@ def pods():\n  - image: from-a-ytt-function:1\n#@ end\n---\njust a string\n",
        )]);
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        assert_eq!(ids(&discovery), ["from-a-ytt-function:1"]);
        assert_eq!(discovery.manifests.len(), 2);
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tree(&[("big.yml", &"x".repeat(2048))]);
        let config = LockConfig {
            max_file_bytes: 1024,
            ..LockConfig::default()
        };
        let error =
            discover_rendered(&[dir.path().to_owned()], &config, &[]).expect_err("too large");
        assert!(
            matches!(
                error,
                LockError::TooLarge {
                    size: 2048,
                    limit: 1024,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn inline_configs_apply_after_the_tree() {
        let dir = tree(&[("m.yml", "sidecar: s:1\nimage: a\n")]);
        let inline =
            Config::from_yaml("apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nkeys: [sidecar]\n")
                .expect("config");
        let config = LockConfig {
            configs: vec![("spec.images".to_owned(), inline)],
            ..LockConfig::default()
        };
        let discovery =
            discover_rendered(&[dir.path().to_owned()], &config, &[]).expect("discover");
        assert_eq!(ids(&discovery), ["a", "s:1"]);
    }
}
