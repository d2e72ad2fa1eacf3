//! The `helmChart` source, without a helm binary.
//!
//! vendir runs `helm fetch NAME --version V --repo URL --untar` (or `helm pull oci://…`) and moves
//! the single chart directory helm unpacked into the target, locking `version` and
//! `appVersion` from its Chart.yaml. Here the same happens natively:
//!
//! - HTTP repositories: `index.yaml` is downloaded (ETag-cached like any `http` source), the
//!   version chosen as helm's `IndexFile.Get` does (an exact string match first, else the
//!   highest version satisfying the constraint, newest stable when no version is given), the
//!   chart archive downloaded (URLs relative to the index allowed) and checked against the
//!   index's `digest` when it lists one. Credentials from `secretRef` go to the repository's
//!   own origin only, as helm does without `--pass-credentials`.
//! - `oci://` repositories: the chart is the `application/vnd.cncf.helm.chart.content.v1.tar+gzip`
//!   layer of `REPO/NAME:VERSION` (`+` written `_` in tags, as helm pushes them), pulled through
//!   the shared registry client, so mirrors, CAs and docker credentials apply.
//!
//! Either way the archive goes through the safe unpacker, and the chart's top directory is
//! stripped: the target holds Chart.yaml, values.yaml, templates/, … directly.
//!
//! A chart's dependencies (Chart.yaml `dependencies`) that its archive does not carry in
//! `charts/` are vendored there, as `helm dependency build` would (the versions of Chart.lock
//! when there is one, else the constraint): kapp-controller's helmTemplate step never fetches
//! them, so a bundle must hold them. Only `https://`, `http://` and `oci://` repositories are
//! fetched; a `file://` or alias dependency that is missing is refused with the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::http::{Auth, check_sha256};
use super::image::{self, RegistryHandle};
use super::keyring::Keyring;
use super::{Context, FetchError, Limits, archive, fsutil, redact_url};
use crate::carvel::vendir::{
    HelmChartSource, LockHelmChart, SourceVerification, VerificationProvider,
};
use crate::registry::Reference;

/// The chart layer of an OCI chart, and the media type helm wrote before OCI support left
/// experimental.
const CHART_LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
    "application/tar+gzip",
];

/// Where vendir sends `stable/NAME` charts without a repository (helm's old stable repository,
/// now served from its archive location).
const STABLE_REPOSITORY: &str = "https://charts.helm.sh/stable";

/// What was fetched.
pub(crate) struct Fetched {
    pub lock: LockHelmChart,
    /// The upstream's identity, for the warm path: `VERSION@DIGEST` (or the chart URL when
    /// the index lists no digest), or the OCI manifest digest.
    pub identity: String,
}

/// A chart chosen but not downloaded yet.
enum Chosen<'a> {
    Http {
        version: String,
        url: String,
        auth: Auth,
        digest: Option<String>,
    },
    Oci {
        reference: Reference,
        registry: RegistryHandle<'a>,
    },
}

impl Chosen<'_> {
    fn http_identity(version: &str, url: &str, digest: Option<&str>) -> String {
        format!("{version}@{}", digest.unwrap_or(url))
    }
}

/// Dependencies listed by one chart, at most.
const MAX_DEPENDENCIES: usize = 64;
/// A dependency's own missing dependencies are vendored too, this many levels down.
const MAX_DEPENDENCY_DEPTH: usize = 3;

pub(crate) async fn fetch(
    ctx: &Context<'_>,
    source: &HelmChartSource,
    locked_version: Option<String>,
    out: &Path,
    scratch: &Path,
) -> Result<Fetched, FetchError> {
    fetch_at(ctx, source, locked_version, out, scratch, 0).await
}

async fn fetch_at(
    ctx: &Context<'_>,
    source: &HelmChartSource,
    locked_version: Option<String>,
    out: &Path,
    scratch: &Path,
    depth: usize,
) -> Result<Fetched, FetchError> {
    let fetched = fetch_chart(ctx, source, locked_version, out, scratch).await?;
    Box::pin(vendor_dependencies(ctx, source, out, scratch, depth)).await?;
    Ok(fetched)
}

/// Fetches each dependency of the chart at `chart` that its `charts/` lacks.
async fn vendor_dependencies(
    ctx: &Context<'_>,
    parent: &HelmChartSource,
    chart: &Path,
    scratch: &Path,
    depth: usize,
) -> Result<(), FetchError> {
    let text = tokio::fs::read_to_string(chart.join("Chart.yaml"))
        .await
        .map_err(FetchError::io(&chart.join("Chart.yaml")))?;
    let dependencies = Dependencies::parse(&text, "Chart.yaml")?;
    if dependencies.dependencies.is_empty() {
        return Ok(());
    }
    if dependencies.dependencies.len() > MAX_DEPENDENCIES {
        return Err(FetchError::Invalid(format!(
            "the chart lists {} dependencies, more than {MAX_DEPENDENCIES}",
            dependencies.dependencies.len()
        )));
    }
    let locked = match tokio::fs::read_to_string(chart.join("Chart.lock")).await {
        Ok(text) => Dependencies::parse(&text, "Chart.lock")?.dependencies,
        Err(_) => Vec::new(),
    };
    let charts_dir = chart.join("charts");
    for dependency in &dependencies.dependencies {
        if has_dependency(&charts_dir, &dependency.name)? {
            continue;
        }
        let repository = dependency.repository.trim();
        let fetchable = ["https://", "http://", "oci://"]
            .iter()
            .any(|scheme| repository.starts_with(scheme));
        if !fetchable {
            return Err(FetchError::Invalid(format!(
                "the chart depends on {} (repository {:?}), which is not in its charts/ \
                 directory: only https://, http:// and oci:// dependencies are fetched; vendor \
                 it into the chart (`helm dependency build`) before packaging",
                dependency.name, dependency.repository
            )));
        }
        if depth + 1 > MAX_DEPENDENCY_DEPTH {
            return Err(FetchError::Invalid(format!(
                "the chart's dependencies nest deeper than {MAX_DEPENDENCY_DEPTH} levels ({} \
                 is missing from a dependency's charts/)",
                dependency.name
            )));
        }
        if dependency.name.is_empty() || dependency.name.contains(['/', '\\']) {
            return Err(FetchError::Invalid(format!(
                "dependency name {:?} is not a chart name",
                dependency.name
            )));
        }
        let version = locked
            .iter()
            .find(|l| l.name == dependency.name && l.repository == dependency.repository)
            .map_or_else(|| dependency.version.clone(), |l| l.version.clone());
        // The parent's credentials go only to the parent's own repository.
        let secret_ref = parent
            .repository
            .as_ref()
            .filter(|r| r.url.trim_end_matches('/') == repository.trim_end_matches('/'))
            .and_then(|r| r.secret_ref.clone());
        let source = HelmChartSource {
            name: dependency.name.clone(),
            version,
            repository: Some(crate::carvel::vendir::HelmChartRepository {
                url: repository.to_owned(),
                secret_ref,
            }),
            ..HelmChartSource::default()
        };
        let out = fsutil::safe_join(chart, &format!("charts/{}", dependency.name))
            .map_err(FetchError::io(&charts_dir))?;
        let scratch = scratch.join(format!("dependency-{depth}-{}", dependency.name));
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(FetchError::io(&scratch))?;
        fetch_at(ctx, &source, None, &out, &scratch, depth + 1)
            .await
            .map_err(|e| {
                FetchError::Invalid(format!(
                    "vendoring the chart's dependency {} from {}: {e}",
                    dependency.name,
                    redact_url(repository)
                ))
            })?;
    }
    Ok(())
}

/// Whether `charts/` holds `name`, unpacked or as `name-VERSION.tgz` (how helm stores them).
fn has_dependency(charts_dir: &Path, name: &str) -> Result<bool, FetchError> {
    if charts_dir.join(name).join("Chart.yaml").is_file() {
        return Ok(true);
    }
    let Ok(entries) = std::fs::read_dir(charts_dir) else {
        return Ok(false);
    };
    for entry in entries {
        let entry = entry.map_err(FetchError::io(charts_dir))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = file
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".tgz"))
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == 'v')
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `dependencies` of a Chart.yaml or Chart.lock.
#[derive(Debug, Default, Deserialize)]
struct Dependencies {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

#[derive(Debug, Default, Deserialize)]
struct Dependency {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "scalar_string")]
    version: String,
    #[serde(default)]
    repository: String,
}

impl Dependencies {
    fn parse(text: &str, file: &str) -> Result<Dependencies, FetchError> {
        let mut budget = serde_saphyr::Budget::default();
        budget.max_events = 1_000_000;
        budget.max_depth = 64;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
        options.with_snippet = false;
        let parsed: Dependencies = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| FetchError::Invalid(format!("the chart's {file}: {e}")))?;
        Ok(parsed)
    }
}

async fn fetch_chart(
    ctx: &Context<'_>,
    source: &HelmChartSource,
    locked_version: Option<String>,
    out: &Path,
    scratch: &Path,
) -> Result<Fetched, FetchError> {
    let archive_path = scratch.join("chart.tgz");
    let identity = match choose(ctx, source, locked_version, scratch).await? {
        Chosen::Http {
            version,
            url,
            auth,
            digest,
        } => {
            let downloaded = ctx
                .http
                .download(&url, &auth, &archive_path, ctx.cache("http").as_deref())
                .await?;
            if let Some(expected) = &digest {
                check_sha256(&redact_url(&url), expected, &downloaded.sha256)?;
            }
            if let Some(verification) = &source.verify {
                verify_provenance(ctx, verification, &url, &auth, &downloaded.sha256, scratch)
                    .await?;
            }
            // A 304 answers from the cache's copy, which unpacking only reads.
            unpack_chart(&downloaded.path, scratch, out, &ctx.options.limits).await?;
            let identity = Chosen::http_identity(&version, &url, digest.as_deref());
            return finish(out, identity).await;
        }
        Chosen::Oci {
            reference,
            registry,
        } => {
            let digest = pull_oci_chart(ctx, source, &registry, &reference, &archive_path).await?;
            unpack_chart(&archive_path, scratch, out, &ctx.options.limits).await?;
            digest
        }
    };
    finish(out, identity).await
}

/// The identity [`fetch`] would record, at the cost of the index (usually a 304) or one
/// manifest HEAD.
pub(crate) async fn probe(
    ctx: &Context<'_>,
    source: &HelmChartSource,
    locked_version: Option<String>,
    scratch: &Path,
) -> Result<String, FetchError> {
    match choose(ctx, source, locked_version, scratch).await? {
        Chosen::Http {
            version,
            url,
            digest,
            ..
        } => Ok(Chosen::http_identity(&version, &url, digest.as_deref())),
        Chosen::Oci {
            reference,
            registry,
        } => image::head_digest(&registry, &reference).await,
    }
}

async fn finish(out: &Path, identity: String) -> Result<Fetched, FetchError> {
    let chart_yaml = out.join("Chart.yaml");
    let text = tokio::fs::read_to_string(&chart_yaml)
        .await
        .map_err(|source| FetchError::Invalid(format!("the chart has no Chart.yaml: {source}")))?;
    let meta = ChartMeta::parse(&text)?;
    Ok(Fetched {
        lock: LockHelmChart {
            version: meta.version,
            app_version: meta.app_version,
        },
        identity,
    })
}

async fn choose<'a>(
    ctx: &Context<'a>,
    source: &HelmChartSource,
    locked_version: Option<String>,
    scratch: &Path,
) -> Result<Chosen<'a>, FetchError> {
    if source.name.is_empty() {
        return Err(FetchError::Invalid("helmChart.name is empty".to_owned()));
    }
    let wanted = locked_version.unwrap_or_else(|| source.version.clone());
    let repository = source.repository.as_ref();
    let (name, url) = match repository {
        Some(r) if r.url.is_empty() => {
            return Err(FetchError::Invalid(
                "helmChart.repository.url is empty".to_owned(),
            ));
        }
        Some(r) => (source.name.as_str(), r.url.clone()),
        None => match source.name.strip_prefix("stable/") {
            Some(name) => (name, STABLE_REPOSITORY.to_owned()),
            None => {
                return Err(FetchError::Invalid(
                    "helmChart needs repository.url (or a `stable/` chart name)".to_owned(),
                ));
            }
        },
    };
    let secret_ref = repository.and_then(|r| r.secret_ref.as_ref());
    if let Some(base) = url.strip_prefix("oci://") {
        let repo = format!("{}/{name}", base.trim_end_matches('/'));
        let probe = image::parse(&repo)?;
        let registry = image::registry_for(ctx, secret_ref, &probe)?;
        let tag = oci_tag(&registry, &probe, &wanted).await?;
        let reference = image::parse(&format!("{repo}:{tag}"))?;
        return Ok(Chosen::Oci {
            reference,
            registry,
        });
    }

    let auth = match secret_ref {
        None => Auth::None,
        Some(secret_ref) => {
            let secret = ctx.secret(&secret_ref.name)?;
            // vendir passes `username`/`password` to helm and refuses anything else.
            if let Some(key) = secret
                .data
                .keys()
                .find(|k| !matches!(k.as_str(), "username" | "password"))
            {
                return Err(FetchError::Secret {
                    name: secret_ref.name.clone(),
                    problem: format!("unknown key {key:?} (expected username, password)"),
                });
            }
            Auth::Basic {
                username: secret.get("username").unwrap_or_default(),
                password: secret.get("password").unwrap_or_default(),
            }
        }
    };
    let index_url = format!("{}/index.yaml", url.trim_end_matches('/'));
    let downloaded = ctx
        .http
        .download(
            &index_url,
            &auth,
            &scratch.join("index.yaml"),
            ctx.cache("http").as_deref(),
        )
        .await?;
    let bytes = tokio::fs::read(&downloaded.path)
        .await
        .map_err(FetchError::io(&downloaded.path))?;
    let index = Index::parse(&bytes).map_err(|why| {
        FetchError::Invalid(format!(
            "{} is not a Helm repository index: {why}",
            redact_url(&index_url)
        ))
    })?;
    let Some(versions) = index.entries.get(name) else {
        let mut names: Vec<&str> = index.entries.keys().map(String::as_str).collect();
        names.truncate(20);
        return Err(FetchError::Invalid(format!(
            "chart {name:?} is not in {} (charts: {})",
            redact_url(&index_url),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let entry = select(versions, &wanted)?;
    let raw_url = entry.urls.first().ok_or_else(|| {
        FetchError::Invalid(format!(
            "{} lists {name} {} without a download URL",
            redact_url(&index_url),
            entry.version
        ))
    })?;
    let chart_url = resolve_chart_url(&url, raw_url)?;
    // helm sends the repository's credentials to the chart URL only on the same origin.
    let same_origin = reqwest::Url::parse(&url).ok().map(|u| u.origin())
        == reqwest::Url::parse(&chart_url).ok().map(|u| u.origin());
    Ok(Chosen::Http {
        version: entry.version.clone(),
        url: chart_url,
        auth: if same_origin { auth } else { Auth::None },
        digest: entry.digest.clone().filter(|d| !d.is_empty()),
    })
}

/// helm's `ResolveReferenceURL`: a chart URL relative to the repository, which is taken as a
/// directory whether or not its URL ends in `/`.
fn resolve_chart_url(repository: &str, chart: &str) -> Result<String, FetchError> {
    let mut base = reqwest::Url::parse(repository).map_err(|e| {
        FetchError::Invalid(format!(
            "helm repository URL {}: {e}",
            redact_url(repository)
        ))
    })?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.join(chart).map(String::from).map_err(|e| {
        FetchError::Invalid(format!("chart URL {chart:?} in the repository index: {e}"))
    })
}

/// The OCI tag for `wanted`: the version itself (`+` as `_`) when it is one, else the highest
/// tag satisfying it as a constraint.
async fn oci_tag(
    registry: &RegistryHandle<'_>,
    repo: &Reference,
    wanted: &str,
) -> Result<String, FetchError> {
    if lenient_version(wanted).is_some_and(|v| v.to_string() == wanted.trim_start_matches('v')) {
        return Ok(wanted.replace('+', "_"));
    }
    let tags = image::list_tags(registry, repo).await?;
    let versions: Vec<IndexEntry> = tags
        .iter()
        .map(|t| IndexEntry {
            version: t.replace('_', "+"),
            ..IndexEntry::default()
        })
        .collect();
    Ok(select(&versions, wanted)?.version.replace('+', "_"))
}

/// Helm's provenance check (`pkg/provenance/sign.go` `Signatory.Verify`, as `helm install
/// --verify` runs it): `URL.prov` (`pkg/downloader/chart_downloader.go`: the chart's URL with
/// `.prov` appended) is a clearsigned message by one of the keys whose second half (after
/// the YAML document end `\n...\n`) maps the archive's base name to `sha256:<hex>` of the
/// archive downloaded.
async fn verify_provenance(
    ctx: &Context<'_>,
    verification: &SourceVerification,
    url: &str,
    auth: &Auth,
    sha256: &str,
    scratch: &Path,
) -> Result<(), FetchError> {
    if verification.provider != VerificationProvider::Helm {
        return Err(FetchError::NotSupported(
            "verify.provider cosign for a chart of an HTTP repository (cosign verifies oci:// \
             charts; HTTP repositories sign with .prov files: provider helm)"
                .to_owned(),
        ));
    }
    let secret_ref = verification.secret_ref.as_ref().ok_or_else(|| {
        FetchError::Invalid("verify.provider helm needs secretRef (OpenPGP public keys)".to_owned())
    })?;
    let keyring = Keyring::from_secret(&secret_ref.name, &ctx.secret(&secret_ref.name)?)?;
    let shown = redact_url(url);
    let failed = |why: String| FetchError::Verification(format!("{shown}: {why}"));
    let prov_url = format!("{url}.prov");
    let prov_path = scratch.join("chart.tgz.prov");
    match ctx.http.download(&prov_url, auth, &prov_path, None).await {
        Ok(_) => {}
        Err(FetchError::Status { status: 404, .. }) => {
            return Err(failed(format!(
                "no provenance file ({shown}.prov answered 404): the chart is not signed"
            )));
        }
        Err(e) => return Err(e),
    }
    let size = std::fs::metadata(&prov_path)
        .map_err(FetchError::io(&prov_path))?
        .len();
    if size > MAX_PROVENANCE_BYTES {
        return Err(failed(format!(
            "its provenance file is {size} bytes, more than the {MAX_PROVENANCE_BYTES} read"
        )));
    }
    let armored = std::fs::read_to_string(&prov_path)
        .map_err(|_| failed("its provenance file is not text".to_owned()))?;
    let text = keyring
        .verify_cleartext(&armored)
        .map_err(|why| failed(format!("its provenance file is {why}")))?;
    let (_, sums) = text
        .split_once("\n...\n")
        .ok_or_else(|| failed("its provenance file has no `...` and file sums".to_owned()))?;
    let sums: serde_json::Value = crate::carvel::yaml::from_str("provenance file sums", sums)
        .map_err(|e| failed(format!("its provenance file's sums: {e}")))?;
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap_or_default();
    let claimed = sums
        .get("files")
        .and_then(|f| f.get(name))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| failed(format!("its provenance file names no sum for {name:?}")))?;
    if claimed != format!("sha256:{sha256}") {
        return Err(failed(format!(
            "its provenance file signs {claimed} for {name}, but the chart downloaded is \
             sha256:{sha256}"
        )));
    }
    Ok(())
}

/// A Helm provenance file is Chart.yaml and a sum, signed: a few KiB.
const MAX_PROVENANCE_BYTES: u64 = 256 << 10;

/// Pulls the chart layer of the OCI artifact `reference` into `dest`; returns the manifest
/// digest.
async fn pull_oci_chart(
    ctx: &Context<'_>,
    source: &HelmChartSource,
    registry: &RegistryHandle<'_>,
    reference: &Reference,
    dest: &Path,
) -> Result<String, FetchError> {
    let limits = &ctx.options.limits;
    let (digest, manifest) = image::pull_manifest(registry, reference).await?;
    // The manifest just read, by its digest, is what the layer below comes from.
    if let Some(verification) = &source.verify {
        super::verify::cosign_signature(ctx, verification, registry, reference, &digest).await?;
    }
    let layer = manifest
        .layers
        .iter()
        .find(|l| CHART_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
        .ok_or_else(|| {
            FetchError::Invalid(format!(
                "{reference} is not a Helm chart: no layer of type {}",
                CHART_LAYER_MEDIA_TYPES[0]
            ))
        })?;
    image::pull_blob_to_file(registry, reference, layer, dest, limits.max_bytes).await?;
    Ok(digest)
}

/// Unpacks a chart archive and moves its single top directory's contents to `out`.
async fn unpack_chart(
    archive_path: &Path,
    scratch: &Path,
    out: &Path,
    limits: &Limits,
) -> Result<(), FetchError> {
    let archive_path = archive_path.to_owned();
    let unpacked = scratch.join("chart");
    let out = out.to_owned();
    let limits = limits.clone();
    tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
        let kind = archive::detect(&archive_path)?;
        if kind != archive::Kind::Tgz && kind != archive::Kind::Tar {
            return Err(FetchError::Invalid(
                "the chart archive is not a (gzip'd) tar".to_owned(),
            ));
        }
        std::fs::create_dir_all(&unpacked).map_err(FetchError::io(&unpacked))?;
        archive::unpack(&archive_path, kind, &unpacked, &limits)?;
        let chart_dir = single_chart_dir(&unpacked)?;
        fsutil::replace(&chart_dir, &out).map_err(FetchError::io(&out))
    })
    .await
    .map_err(|e| FetchError::Invalid(format!("unpacking the chart failed: {e}")))?
}

/// vendir's `findChartDir`: exactly one directory at the top of the archive.
fn single_chart_dir(unpacked: &Path) -> Result<PathBuf, FetchError> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(unpacked).map_err(FetchError::io(unpacked))? {
        let entry = entry.map_err(FetchError::io(unpacked))?;
        let is_dir = entry
            .file_type()
            .map_err(FetchError::io(&entry.path()))?
            .is_dir();
        if is_dir {
            dirs.push(entry.path());
        }
    }
    match <[PathBuf; 1]>::try_from(dirs) {
        Ok([dir]) => Ok(dir),
        Err(dirs) => Err(FetchError::Invalid(format!(
            "expected a single chart directory at the top of the archive, found {}",
            if dirs.is_empty() {
                "none".to_owned()
            } else {
                dirs.iter()
                    .filter_map(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))),
    }
}

/// A repository's `index.yaml`, the parts needed to choose and download a chart.
#[derive(Debug, Default, Deserialize)]
struct Index {
    #[serde(default)]
    entries: BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IndexEntry {
    #[serde(default, deserialize_with = "scalar_string")]
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
}

impl Index {
    fn parse(bytes: &[u8]) -> Result<Index, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        // Indexes of big repositories are tens of megabytes; the budget admits them but still
        // stops alias bombs.
        let mut budget = serde_saphyr::Budget::default();
        budget.max_events = 50_000_000;
        budget.max_nodes = 25_000_000;
        budget.max_depth = 64;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
        options.with_snippet = false;
        serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())
    }
}

/// Chart.yaml: what vendir locks.
struct ChartMeta {
    version: String,
    app_version: String,
}

impl ChartMeta {
    fn parse(text: &str) -> Result<ChartMeta, FetchError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default, deserialize_with = "scalar_string")]
            version: String,
            #[serde(default, rename = "appVersion", deserialize_with = "scalar_string")]
            app_version: String,
        }
        let raw: Raw = serde_saphyr::from_str(text)
            .map_err(|e| FetchError::Invalid(format!("the chart's Chart.yaml: {e}")))?;
        if raw.version.is_empty() {
            return Err(FetchError::Invalid(
                "the chart's Chart.yaml has no version".to_owned(),
            ));
        }
        Ok(ChartMeta {
            version: raw.version,
            app_version: raw.app_version,
        })
    }
}

/// A string field written as any YAML scalar (`appVersion: 1.16` is common and helm reads it
/// as the string "1.16").
fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// helm's `IndexFile.Get`: an exact string match first, else the highest version satisfying
/// `wanted` as a constraint; an empty `wanted` is the newest stable version.
fn select<'e>(versions: &'e [IndexEntry], wanted: &str) -> Result<&'e IndexEntry, FetchError> {
    if !wanted.is_empty()
        && let Some(exact) = versions.iter().find(|v| v.version == wanted)
    {
        return Ok(exact);
    }
    let constraint = Constraint::parse(if wanted.is_empty() { "*" } else { wanted })
        .map_err(|why| FetchError::Invalid(format!("helmChart.version {wanted:?}: {why}")))?;
    versions
        .iter()
        .filter_map(|entry| Some((lenient_version(&entry.version)?, entry)))
        .filter(|(version, _)| constraint.matches(version))
        .max_by(|(a, _), (b, _)| a.cmp_precedence(b))
        .map(|(_, entry)| entry)
        .ok_or_else(|| FetchError::NoMatchingVersion {
            constraints: if wanted.is_empty() {
                "newest stable".to_owned()
            } else {
                wanted.to_owned()
            },
            candidates: versions.len(),
        })
}

/// A version as Masterminds/semver (helm) reads it: a leading `v`, and `1` or `1.2` standing
/// for `1.0.0` and `1.2.0`.
fn lenient_version(text: &str) -> Option<semver::Version> {
    let text = text.trim().trim_start_matches('v');
    if let Ok(v) = semver::Version::parse(text) {
        return Some(v);
    }
    let split = text.find(['-', '+']).unwrap_or(text.len());
    let (core, suffix) = text.split_at(split);
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut padded = parts.join(".");
    for _ in parts.len()..3 {
        padded.push_str(".0");
    }
    semver::Version::parse(&format!("{padded}{suffix}")).ok()
}

/// A helm (Masterminds/semver) constraint: `||`-separated alternatives of comparators
/// separated by commas or spaces, with `=`, `!=`, `>`, `>=`, `<`, `<=`, `~`, `^`, `x`/`*`
/// wildcards and hyphen ranges (`1.2 - 1.4.5`). Each alternative is evaluated as a Cargo
/// requirement, which agrees with Masterminds on these operators except for prereleases:
/// they match only a comparator with the same `MAJOR.MINOR.PATCH` and a prerelease.
struct Constraint {
    alternatives: Vec<(semver::VersionReq, Vec<semver::Version>)>,
}

impl Constraint {
    fn parse(text: &str) -> Result<Constraint, String> {
        let mut alternatives = Vec::new();
        for alternative in text.split("||") {
            let mut tokens: Vec<String> = Vec::new();
            for word in alternative
                .split([',', ' ', '\t'])
                .filter(|w| !w.is_empty())
            {
                // An operator written apart from its version (`>= 1.2`) joins the next word.
                match tokens.last_mut() {
                    Some(last) if last.bytes().all(|b| b"=<>!~^".contains(&b)) => {
                        last.push_str(word)
                    }
                    _ => tokens.push(word.to_owned()),
                }
            }
            let mut comparators = Vec::new();
            let mut excluded = Vec::new();
            let mut i = 0;
            while i < tokens.len() {
                if tokens.get(i + 1).is_some_and(|t| t == "-") {
                    let high = tokens
                        .get(i + 2)
                        .ok_or_else(|| format!("hyphen range {:?} has no end", tokens[i]))?;
                    comparators.push(format!(">={}", tokens[i].trim_start_matches('v')));
                    comparators.push(format!("<={}", high.trim_start_matches('v')));
                    i += 3;
                    continue;
                }
                let token = &tokens[i];
                let op_len = token.bytes().take_while(|b| b"=<>!~^".contains(b)).count();
                let (op, version) = token.split_at(op_len);
                let version = version.trim_start_matches('v');
                match op {
                    "!=" | "!" => excluded.push(
                        lenient_version(version)
                            .ok_or_else(|| format!("{version:?} is not a version"))?,
                    ),
                    "" if matches!(version, "*" | "x" | "X") => comparators.push("*".to_owned()),
                    // A bare version means exactly that version (Cargo would read a caret).
                    "" => comparators.push(format!("={version}")),
                    "=>" => comparators.push(format!(">={version}")),
                    "=<" => comparators.push(format!("<={version}")),
                    "==" => comparators.push(format!("={version}")),
                    "~>" => comparators.push(format!("~{version}")),
                    op => comparators.push(format!("{op}{version}")),
                }
                i += 1;
            }
            let req = if comparators.is_empty() {
                semver::VersionReq::STAR
            } else {
                semver::VersionReq::parse(&comparators.join(", "))
                    .map_err(|e| format!("{:?}: {e}", alternative.trim()))?
            };
            alternatives.push((req, excluded));
        }
        Ok(Constraint { alternatives })
    }

    fn matches(&self, version: &semver::Version) -> bool {
        self.alternatives.iter().any(|(req, excluded)| {
            req.matches(version) && !excluded.iter().any(|e| e.cmp_precedence(version).is_eq())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(versions: &[&str]) -> Vec<IndexEntry> {
        versions
            .iter()
            .map(|v| IndexEntry {
                version: (*v).to_owned(),
                ..IndexEntry::default()
            })
            .collect()
    }

    #[test]
    fn versions_are_chosen_as_helm_does() {
        let list = entries(&["1.0.0", "1.2.0", "1.10.1", "2.0.0-rc.1", "v1.3", "junk"]);
        let pick = |wanted: &str| select(&list, wanted).map(|e| e.version.clone());
        assert_eq!(pick("").unwrap(), "1.10.1", "newest stable");
        assert_eq!(pick("1.2.0").unwrap(), "1.2.0", "exact");
        assert_eq!(
            pick("junk").unwrap(),
            "junk",
            "an exact string wins over parsing"
        );
        assert_eq!(pick("~1.2").unwrap(), "1.2.0");
        assert_eq!(pick("^1.0.0").unwrap(), "1.10.1");
        assert_eq!(pick(">= 1.0, < 1.5").unwrap(), "v1.3");
        assert_eq!(pick(">=1.0.0 <1.3.0 || >=5").unwrap(), "1.2.0");
        assert_eq!(pick("1.0 - 1.2.0").unwrap(), "1.2.0");
        assert_eq!(pick("1.x").unwrap(), "1.10.1");
        assert_eq!(pick(">=1.0.0, !=1.10.1").unwrap(), "v1.3");
        assert_eq!(pick(">=2.0.0-rc.0").unwrap(), "2.0.0-rc.1");
        let err = pick("3.0.0").unwrap_err().to_string();
        assert!(err.contains("no version among 6 candidates"), "{err}");
        assert!(matches!(pick(">=>1").unwrap_err(), FetchError::Invalid(_)));
    }

    #[test]
    fn chart_urls_resolve_against_the_repository_directory() {
        let resolve = |repo, chart| resolve_chart_url(repo, chart).unwrap();
        assert_eq!(
            resolve("https://h/charts", "app-1.0.0.tgz"),
            "https://h/charts/app-1.0.0.tgz"
        );
        assert_eq!(
            resolve("https://h/charts/", "../x/app.tgz"),
            "https://h/x/app.tgz"
        );
        assert_eq!(
            resolve("https://h/charts", "https://cdn/app.tgz"),
            "https://cdn/app.tgz"
        );
    }

    #[test]
    fn index_and_chart_yaml_accept_numbers_as_strings() {
        let index = Index::parse(
            b"apiVersion: v1\nentries:\n  app:\n  - version: 1.0\n    appVersion: 2\n    \
              urls: [app-1.0.tgz]\n    digest: abc\n    unknownField: x\ngenerated: now\n",
        )
        .unwrap();
        assert_eq!(index.entries["app"][0].version, "1.0");
        let meta = ChartMeta::parse("name: app\nversion: 1.2.3\nappVersion: 1.16\n").unwrap();
        assert_eq!(
            (meta.version.as_str(), meta.app_version.as_str()),
            ("1.2.3", "1.16")
        );
        assert!(ChartMeta::parse("name: app\n").is_err());
    }

    #[test]
    fn a_chart_archive_needs_exactly_one_top_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(single_chart_dir(dir.path()).is_err());
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("README"), "x").unwrap();
        assert_eq!(
            single_chart_dir(dir.path()).unwrap(),
            dir.path().join("app")
        );
        std::fs::create_dir(dir.path().join("other")).unwrap();
        let err = single_chart_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("app") && err.contains("other"), "{err}");
    }
}
