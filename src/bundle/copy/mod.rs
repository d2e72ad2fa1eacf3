//! Relocation, `imgpkg copy`'s semantics: a bundle with every image its ImagesLock names
//! (nested bundles recursively), an image, or the images of a lock, moved into another
//! repository or into a tar for an air gap, and from such a tar into a repository.
//!
//! The bundle is moved byte for byte, so its digest stays what clusters pinned; its
//! `.imgpkg/images.yml` keeps naming the original locations, and `pull` (imgpkg's and
//! packsmith's) finds the images next to the bundle and rewrites the pulled lock to name
//! them there. `--lock-output` writes the copy's own lock, as imgpkg does.
//!
//! `graph.rs` finds what a source holds, `source.rs` reads a blob from wherever it is,
//! `repo.rs` writes into a repository, `tar.rs` is imgpkg's tar format both ways, and
//! `select.rs` narrows a package repository bundle to the versions asked for.

mod graph;
mod locations;
mod repo;
mod select;
mod source;
mod tar;

use std::path::PathBuf;

pub use graph::WalkLimits;
use graph::{Graph, Kind, Pending, Want};

use super::error::BundleError;
use super::push::PushOptions;
use crate::carvel::{BundleLock, ImagesLock, imgpkg::ImageRef};
use crate::registry::{Reference, Registry, parse_reference};

/// What to copy (imgpkg's `-b`, `-i`, `--lock`, `--tar`).
#[derive(Debug, Clone)]
pub enum CopySource {
    /// A bundle and everything it locks.
    Bundle(String),
    /// One image (or index); a bundle is refused here, as imgpkg does.
    Image(String),
    /// A BundleLock (its bundle) or an ImagesLock (each of its images).
    Lock(PathBuf),
    /// A tar written by `--to-tar` (packsmith's or imgpkg's).
    Tar(PathBuf),
    /// What a bundle about to be pushed locks: each image, bundles among them with
    /// everything they lock (the controller's `bundle.relocateImages`).
    Locked(ImagesLock),
}

/// Where to copy to (imgpkg's `--to-repo`, `--to-tar`).
#[derive(Debug, Clone)]
pub enum CopyTarget {
    Repo(String),
    Tar(PathBuf),
}

/// Something worth telling a person watching a long copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// The walk is done: this much to move.
    Found {
        manifests: usize,
        blobs: usize,
        bytes: u64,
    },
    BlobPresent {
        digest: String,
        size: u64,
    },
    BlobSending {
        digest: String,
        size: u64,
    },
    /// Bytes of a blob sent so far.
    BlobProgress {
        digest: String,
        sent: u64,
    },
    BlobSent {
        digest: String,
        size: u64,
        mounted: bool,
    },
    Tagged {
        reference: String,
    },
}

/// How to copy.
/// Where progress events go.
pub type Progress = std::sync::Arc<dyn Fn(&CopyEvent) + Send + Sync>;

pub struct CopyOptions {
    /// Also copy each image's cosign signature, attestations and SBOM (imgpkg's
    /// `--cosign-signatures`).
    pub cosign_signatures: bool,
    /// `--to-tar`: keep what an earlier, interrupted run wrote to the tar and add the rest.
    /// (Registry targets always skip what they hold.)
    pub resume: bool,
    /// A package repository bundle is narrowed to the packages whose version matches (the
    /// repository bundle is rebuilt, so it gets a new digest).
    pub version_constraint: Option<semver::VersionReq>,
    pub limits: WalkLimits,
    /// Receives progress events (from the tasks that move bytes, hence shared).
    pub progress: Option<Progress>,
    /// Attempts per request when the failure is retryable.
    pub attempts: u32,
    /// Where bundle layers are spooled during the copy (default: the system's temp dir).
    pub scratch: Option<PathBuf>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            cosign_signatures: false,
            resume: false,
            version_constraint: None,
            limits: WalkLimits::default(),
            progress: None,
            attempts: PushOptions::default().attempts,
            scratch: None,
        }
    }
}

impl CopyOptions {
    fn emit(&self, event: CopyEvent) {
        if let Some(progress) = &self.progress {
            progress(&event);
        }
    }

    fn push_options(&self) -> PushOptions<'static> {
        PushOptions {
            attempts: self.attempts,
            ..PushOptions::default()
        }
    }
}

/// What a copy moved and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    /// Blobs the target already held (a re-run sends none).
    pub blobs_present: usize,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
    pub manifests_written: usize,
    pub manifests_present: usize,
    /// Requests made of the target registry.
    pub target_requests: usize,
}

/// The outcome of a copy.
#[derive(Debug, Clone)]
pub struct Copied {
    /// The bundle as copied, `REPO@sha256:…`, and the tag it carries there.
    pub bundle: Option<(String, Option<String>)>,
    /// Every image the source named (roots, and what each bundle locks), from → to. For a
    /// tar target, "to" is the tar's file name and the digest.
    pub images: Vec<(String, String)>,
    pub written: Written,
    /// The lock to write with `--lock-output`: a BundleLock for a bundle, an ImagesLock for
    /// images (`None` for a tar target, which has no location to name).
    pub lock: Option<String>,
}

/// Copies `source` to `target`. `source_registry` reads registry sources, `target_registry`
/// writes registry targets; the CLI passes the same registry twice (credentials per host).
pub async fn copy(
    source_registry: &Registry,
    target_registry: &Registry,
    source: &CopySource,
    target: &CopyTarget,
    options: &CopyOptions,
) -> Result<Copied, BundleError> {
    let scratch_dir = match &options.scratch {
        Some(dir) => tempfile::Builder::new()
            .prefix(".packsmith-copy-")
            .tempdir_in(dir),
        None => tempfile::Builder::new().prefix("packsmith-copy-").tempdir(),
    }
    .map_err(BundleError::io(
        "creating a scratch directory for",
        "the copy",
    ))?;
    let scratch = scratch_dir.path();

    let (graph, tar_source, images_lock) = match source {
        CopySource::Tar(path) => {
            let path = path.clone();
            let limits = options.limits;
            let graph = tokio::task::spawn_blocking(move || tar::read(&path, &limits))
                .await
                .map_err(|e| BundleError::Invalid(format!("reading the tar: {e}")))??;
            (graph, Some(source_path(source)), None)
        }
        _ => {
            let (mut roots, images_lock) = roots(source)?;
            let (graph, pending) = match &options.version_constraint {
                Some(constraint) => {
                    let (Some(root), true) = (roots.pop(), roots.is_empty()) else {
                        return Err(BundleError::Invalid(
                            "--version-constraint applies to one package repository bundle (-b)"
                                .to_owned(),
                        ));
                    };
                    select::narrowed(source_registry, root, constraint, &options.limits, scratch)
                        .await?
                }
                None => (Graph::default(), roots),
            };
            let graph = graph::walk_registry(
                source_registry,
                graph,
                pending,
                options.cosign_signatures,
                &options.limits,
                scratch,
            )
            .await?;
            (graph, None, images_lock)
        }
    };
    options.emit(CopyEvent::Found {
        manifests: graph.manifest_count(),
        blobs: graph.blobs().count(),
        bytes: graph
            .blobs()
            .fold(0u64, |sum, b| sum.saturating_add(b.size)),
    });

    match target {
        CopyTarget::Repo(repo) => {
            let target = parse_repository(repo)?;
            let written = repo::write(
                &graph,
                source_registry,
                target_registry,
                &target,
                tar_source.as_deref(),
                options,
            )
            .await?;
            let repository = repo::repository(&target);
            Ok(outcome(&graph, written, images_lock, |digest| {
                format!("{repository}@{digest}")
            })?)
        }
        CopyTarget::Tar(path) => {
            let written = tar::write(
                &graph,
                source_registry,
                tar_source.as_deref(),
                path,
                options,
            )
            .await?;
            let name = path.display().to_string();
            let mut copied = outcome(&graph, written, None, |digest| format!("{name}@{digest}"))?;
            copied.lock = None;
            Ok(copied)
        }
    }
}

fn source_path(source: &CopySource) -> PathBuf {
    match source {
        CopySource::Tar(p) | CopySource::Lock(p) => p.clone(),
        CopySource::Bundle(s) | CopySource::Image(s) => PathBuf::from(s),
        CopySource::Locked(_) => PathBuf::new(),
    }
}

/// The repository of `--to-repo`: a tag or digest there is a mistake imgpkg refuses too.
fn parse_repository(repo: &str) -> Result<Reference, BundleError> {
    let invalid = |reason: &str| BundleError::Reference {
        reference: repo.to_owned(),
        reason: reason.to_owned(),
    };
    let last = repo.rsplit('/').next().unwrap_or(repo);
    if repo.contains('@') || last.contains(':') {
        return Err(invalid(
            "--to-repo takes a repository without a tag or digest (REGISTRY/PATH)",
        ));
    }
    // A placeholder tag makes a reference of it; only the repository is used.
    parse_reference(&format!("{repo}:copy")).map_err(|e| invalid(&e.to_string()))
}

/// What the walk starts from, and the ImagesLock given as the source (kept to write the
/// relocated lock with its annotations).
fn roots(source: &CopySource) -> Result<(Vec<Pending>, Option<ImagesLock>), BundleError> {
    let one = |s: &str, want: Want, tag: Option<String>| -> Result<Pending, BundleError> {
        let reference = parse_reference(s)?;
        // As imgpkg: the tag of a tag reference (`latest` when none is written) is kept in
        // the target; a digest reference has none.
        let tag = tag.or_else(|| match reference.digest() {
            Some(_) => None,
            None => reference.tag().map(str::to_owned),
        });
        Ok(Pending::root(reference, s.to_owned(), want, tag))
    };
    match source {
        CopySource::Bundle(s) => Ok((vec![one(s, Want::Bundle, None)?], None)),
        CopySource::Image(s) => Ok((vec![one(s, Want::Image, None)?], None)),
        CopySource::Lock(path) => {
            let text = std::fs::read_to_string(path).map_err(BundleError::io("reading", path))?;
            let invalid = |e: String| BundleError::Invalid(format!("{}: {e}", path.display()));
            if text.contains("kind: BundleLock") {
                let lock = BundleLock::from_yaml(&text).map_err(|e| invalid(e.to_string()))?;
                let tag = Some(lock.bundle.tag.clone()).filter(|t| !t.is_empty());
                Ok((vec![one(&lock.bundle.image, Want::Bundle, tag)?], None))
            } else {
                let lock = ImagesLock::from_yaml(&text).map_err(|e| invalid(e.to_string()))?;
                let roots = lock
                    .images
                    .iter()
                    .map(|i| one(&i.image, Want::Image, None))
                    .collect::<Result<_, _>>()?;
                Ok((roots, Some(lock)))
            }
        }
        CopySource::Tar(_) => Ok((Vec::new(), None)),
        CopySource::Locked(lock) => {
            let roots = lock
                .images
                .iter()
                .map(|i| one(&i.image, Want::Any, None))
                .collect::<Result<_, _>>()?;
            Ok((roots, Some(lock.clone())))
        }
    }
}

/// The report and lock of a copy whose manifests now live at `at(digest)`.
fn outcome(
    graph: &Graph,
    written: Written,
    images_lock: Option<ImagesLock>,
    at: impl Fn(&str) -> String,
) -> Result<Copied, BundleError> {
    let images: Vec<(String, String)> = graph
        .named
        .iter()
        .map(|n| (n.reference.clone(), at(&n.digest)))
        .collect();
    let bundle_root = graph.roots().find(|n| n.kind == Kind::Bundle);
    let bundle = bundle_root.map(|n| {
        let tag = graph
            .manifest(&n.digest)
            .and_then(|m| m.tags.iter().find(|t| !graph::is_cosign_tag(t)).cloned());
        (at(&n.digest), tag)
    });
    let invalid = |e: crate::carvel::Error| BundleError::Invalid(e.to_string());
    let lock = match (&bundle, images_lock) {
        (Some((image, tag)), _) => Some(
            BundleLock::new(image.clone(), tag.clone().unwrap_or_default())
                .to_yaml()
                .map_err(invalid)?,
        ),
        (None, Some(mut lock)) => {
            for entry in &mut lock.images {
                if let Some((_, to)) = images.iter().find(|(from, _)| *from == entry.image) {
                    entry.image = to.clone();
                }
            }
            Some(format!(
                "---\n{}",
                crate::carvel::yaml::to_go_yaml("ImagesLock", &lock).map_err(invalid)?
            ))
        }
        (None, None) => {
            let mut lock = ImagesLock::new();
            for n in graph.roots() {
                lock.add_image(ImageRef {
                    image: at(&n.digest),
                    annotations: Default::default(),
                });
            }
            Some(format!(
                "---\n{}",
                crate::carvel::yaml::to_go_yaml("ImagesLock", &lock).map_err(invalid)?
            ))
        }
    };
    Ok(Copied {
        bundle,
        images,
        written,
        lock,
    })
}
