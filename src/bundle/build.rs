//! From input paths to a complete bundle image (layer, config, manifest), as `imgpkg push`
//! would build it: the same walk, the same checks of `.imgpkg/`, the same tar.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::cache::{self, CachedLayer, LayerCache};
use super::error::BundleError;
use super::image::{self, Descriptor};
use super::layer::{Layer, LayerWriter};
use super::tree::{self, Entry};
use crate::carvel::{Bundle, ImagesLock};

/// What to leave out of the bundle, and what to label it with.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Paths relative to an input directory skipped with everything under them; imgpkg's
    /// `--file-exclusion`, whose default is `.git`.
    pub exclude: Vec<String>,
    /// Config labels beside `dev.carvel.imgpkg.bundle` (imgpkg's `push --labels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// A generic image rather than a bundle (imgpkg's `push -i`): no bundle label, no
    /// `.imgpkg` directory allowed.
    pub plain_image: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            exclude: vec![".git".to_owned()],
            labels: Default::default(),
            plain_image: false,
        }
    }
}

/// A bundle image ready to push: every blob with its digest, in memory — except the layer of a
/// bundle whose digests came from the [`LayerCache`], which is built again only if a
/// destination lacks it ([`BuiltBundle::layer_data`]).
#[derive(Debug, Clone)]
pub struct BuiltBundle {
    pub(crate) layer: Blob,
    pub(crate) config: Blob,
    pub(crate) manifest: Blob,
    diff_id: String,
    images_lock: ImagesLock,
    stats: BuildStats,
    /// What to archive again when the layer's bytes are needed after a cache hit.
    source: Option<Arc<(Vec<PathBuf>, BuildOptions)>>,
}

/// One blob (or the manifest) of a built bundle.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    /// `None` only for a layer known from the cache.
    pub data: Option<Bytes>,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>, digest: String) -> Self {
        Blob {
            media_type,
            digest,
            size: data.len() as u64,
            data: Some(Bytes::from(data)),
        }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.to_owned(),
            digest: self.digest.clone(),
            size: self.size,
        }
    }
}

/// What went into the layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub files: usize,
    pub dirs: usize,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
}

impl BuiltBundle {
    /// `sha256:<hex>` of the manifest: the bundle's identity.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The manifest bytes, as pushed.
    pub fn manifest(&self) -> &[u8] {
        self.manifest.data.as_deref().unwrap_or_default()
    }

    /// `sha256:<hex>` of the gzip'd layer.
    pub fn layer_digest(&self) -> &str {
        &self.layer.digest
    }

    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids[0]`).
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }

    /// Bytes a registry stores for this bundle: manifest, config and layer.
    pub fn size(&self) -> u64 {
        self.manifest.size + self.config.size + self.layer.size
    }

    /// Whether the layer's digest came from the [`LayerCache`] (nothing was archived).
    pub fn from_cache(&self) -> bool {
        self.layer.data.is_none()
    }

    /// The gzip'd layer: in memory, or (after a cache hit) archived again, which blocks for as
    /// long as building does. Fails if the tree no longer gives the cached digest.
    pub(crate) fn layer_data(&self) -> Result<Bytes, BundleError> {
        if let Some(data) = &self.layer.data {
            return Ok(data.clone());
        }
        let Some(source) = &self.source else {
            return Err(BundleError::Invalid(
                "the bundle's layer is neither in memory nor rebuildable".to_owned(),
            ));
        };
        let (inputs, options) = &**source;
        let rebuilt = build(inputs, options)?;
        if rebuilt.layer.digest != self.layer.digest {
            return Err(BundleError::TreeChanged {
                path: inputs.first().cloned().unwrap_or_default(),
            });
        }
        rebuilt
            .layer
            .data
            .ok_or_else(|| BundleError::Invalid("a fresh build has no layer".to_owned()))
    }

    /// The same bundle with its layer in memory (see [`BuiltBundle::layer_data`]).
    pub(crate) fn materialized(&self) -> Result<BuiltBundle, BundleError> {
        let mut bundle = self.clone();
        bundle.layer.data = Some(self.layer_data()?);
        Ok(bundle)
    }

    /// The bundle's `.imgpkg/images.yml`.
    pub fn images_lock(&self) -> &ImagesLock {
        &self.images_lock
    }

    pub fn stats(&self) -> BuildStats {
        self.stats
    }

    pub(crate) fn blobs(&self) -> [&Blob; 2] {
        [&self.config, &self.layer]
    }
}

/// Builds the bundle image of `inputs` (directories, or single files placed at the root).
///
/// Exactly one `.imgpkg` directory must exist, as a direct child of an input directory, holding
/// a valid `images.yml` (and optionally `bundle.yml`). Symlinks, devices, sockets and FIFOs are
/// errors. The same tree always gives the same digest.
pub fn build(inputs: &[PathBuf], options: &BuildOptions) -> Result<BuiltBundle, BundleError> {
    build_with_cache(inputs, options, None)
}

/// [`build`], skipping tar and gzip when `cache` knows the digests of a tree whose every file
/// has the same path, size, mode, mtime, ctime and inode as when they were computed. The
/// digests are the same with or without the cache.
pub fn build_with_cache(
    inputs: &[PathBuf],
    options: &BuildOptions,
    cache: Option<&LayerCache>,
) -> Result<BuiltBundle, BundleError> {
    if inputs.is_empty() {
        return Err(BundleError::Invalid("no input paths given".to_owned()));
    }
    let started = std::time::SystemTime::now();
    let tree = tree::walk(inputs, &options.exclude)?;
    let images_lock = if options.plain_image {
        // imgpkg's pushImage: "Images cannot be pushed with '.imgpkg' directories".
        if let Some((dir, _)) = tree.imgpkg_dirs.first() {
            return Err(BundleError::Invalid(format!(
                "{}: an image cannot be pushed with a .imgpkg directory; push it as a bundle \
                 (-b) instead",
                dir.display()
            )));
        }
        ImagesLock::new()
    } else {
        read_metadata(&tree.imgpkg_dir()?)?
    };
    let mut stats = BuildStats {
        files: tree.files,
        dirs: tree.dirs,
        tar_size: 0,
    };
    let entries = tree.entries;

    let fingerprint = cache.map(|c| (c, c.fingerprint(&entries)));
    let cached = fingerprint.as_ref().and_then(|(c, key)| c.get(key));
    let (layer, diff_id, source) = match cached {
        Some(hit) => {
            stats.tar_size = hit.tar_size;
            let layer = Blob {
                media_type: image::LAYER_MEDIA_TYPE,
                digest: hit.digest,
                size: hit.size,
                data: None,
            };
            let source = Arc::new((inputs.to_vec(), options.clone()));
            (layer, hit.diff_id, Some(source))
        }
        None => {
            let Layer {
                data,
                digest,
                diff_id,
                tar_size,
            } = archive(&entries)?;
            stats.tar_size = tar_size;
            let layer = Blob::new(image::LAYER_MEDIA_TYPE, data, digest);
            if let Some((cache, key)) = &fingerprint
                && !cache::is_racy(&entries, started)
            {
                cache.put(
                    key,
                    &CachedLayer {
                        digest: layer.digest.clone(),
                        diff_id: diff_id.clone(),
                        size: layer.size,
                        tar_size,
                    },
                );
            }
            (layer, diff_id, None)
        }
    };

    let config_data =
        image::config_json_with_labels(&diff_id, &options.labels, !options.plain_image);
    let config_digest = image::sha256_digest(&config_data);
    let config = Blob::new(image::CONFIG_MEDIA_TYPE, config_data, config_digest);
    let manifest_data = image::manifest_json(&config.descriptor(), &layer.descriptor());
    let manifest_digest = image::sha256_digest(&manifest_data);
    let manifest = Blob::new(image::MANIFEST_MEDIA_TYPE, manifest_data, manifest_digest);
    Ok(BuiltBundle {
        layer,
        config,
        manifest,
        diff_id,
        images_lock,
        stats,
        source,
    })
}

/// Writes the entries as the layer, reading each file as it goes.
fn archive(entries: &[Entry]) -> Result<Layer, BundleError> {
    let mut writer = LayerWriter::new();
    for entry in entries {
        match &entry.file {
            None => writer
                .append_dir(&entry.name)
                .map_err(BundleError::io("archiving", &entry.path))?,
            Some(meta) => {
                let mut file =
                    fs::File::open(&entry.path).map_err(BundleError::io("reading", &entry.path))?;
                // imgpkg keeps only the owner's bits, so a tree checked out with another umask
                // or by another user still gives the same digest.
                let mode = meta.permissions().mode() & 0o700;
                writer.append_file(&entry.name, mode, meta.len(), &mut file, &entry.path)?;
            }
        }
    }
    let first = entries.first().map(|e| e.path.clone()).unwrap_or_default();
    writer.finish().map_err(BundleError::io("archiving", first))
}

/// Parses `.imgpkg/images.yml` (required) and `.imgpkg/bundle.yml` (optional) so a bundle
/// kapp-controller would reject is never pushed.
fn read_metadata(imgpkg: &Path) -> Result<ImagesLock, BundleError> {
    let images = imgpkg.join("images.yml");
    let text = match fs::read_to_string(&images) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::Invalid(format!(
                "{} does not exist; a bundle needs it even when it references no images",
                images.display()
            )));
        }
        Err(e) => return Err(BundleError::io("reading", &images)(e)),
    };
    let lock = ImagesLock::from_yaml(&text)
        .map_err(|e| BundleError::Invalid(format!("{}: {e}", images.display())))?;
    let bundle = imgpkg.join("bundle.yml");
    match fs::read_to_string(&bundle) {
        Ok(text) => {
            Bundle::from_yaml(&text)
                .map_err(|e| BundleError::Invalid(format!("{}: {e}", bundle.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BundleError::io("reading", &bundle)(e)),
    }
    Ok(lock)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read as _;

    pub(crate) const IMAGES_YML: &str =
        "---\napiVersion: imgpkg.carvel.dev/v1alpha1\nkind: ImagesLock\n";

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    fn entries(bundle: &BuiltBundle) -> Vec<(String, u32, bool)> {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bundle.layer.data.as_deref().unwrap())
            .read_to_end(&mut tar)
            .unwrap();
        tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    h.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.entry_type().is_dir(),
                )
            })
            .collect()
    }

    #[test]
    fn labels_go_into_the_config_and_only_there() {
        let dir = tree(&[(".imgpkg/images.yml", IMAGES_YML), ("a", "x")]);
        let plain = build(&[dir.path().to_owned()], &BuildOptions::default()).unwrap();
        let options = BuildOptions {
            labels: [("team".to_owned(), "payments".to_owned())].into(),
            ..BuildOptions::default()
        };
        let labelled = build(&[dir.path().to_owned()], &options).unwrap();
        let config = String::from_utf8(labelled.config.data.as_deref().unwrap().to_vec()).unwrap();
        assert!(
            config.contains(r#""Labels":{"dev.carvel.imgpkg.bundle":"true","team":"payments"}"#),
            "{config}"
        );
        assert_eq!(labelled.layer_digest(), plain.layer_digest());
        // The library sets the bundle label after the caller's, as imgpkg's bundle package
        // does (its CLI refuses the key, and so does ours): it stays "true".
        let overridden = BuildOptions {
            labels: [("dev.carvel.imgpkg.bundle".to_owned(), "false".to_owned())].into(),
            ..BuildOptions::default()
        };
        let overridden = build(&[dir.path().to_owned()], &overridden).unwrap();
        assert_eq!(overridden.digest(), plain.digest());
        assert_ne!(labelled.digest(), plain.digest());
    }

    #[test]
    fn walks_like_filepath_walk() {
        let dir = tree(&[
            (".imgpkg/images.yml", IMAGES_YML),
            ("a-b", "x"),
            ("a/x", "y"),
            ("B", "upper sorts first"),
            (".git/HEAD", "excluded"),
            ("sub/.git/kept", "only the top-level .git is excluded"),
        ]);
        fs::set_permissions(dir.path().join("a-b"), fs::Permissions::from_mode(0o755)).unwrap();
        let bundle = build(&[dir.path().to_owned()], &BuildOptions::default()).unwrap();
        let names: Vec<(String, u32, bool)> = entries(&bundle);
        let expected = [
            (".", 0o700, true),
            (".imgpkg", 0o700, true),
            (".imgpkg/images.yml", 0o600, false),
            ("B", 0o600, false),
            ("a", 0o700, true),
            ("a/x", 0o600, false),
            ("a-b", 0o700, false),
            ("sub", 0o700, true),
            ("sub/.git", 0o700, true),
            ("sub/.git/kept", 0o600, false),
        ];
        let expected: Vec<(String, u32, bool)> = expected
            .iter()
            .map(|(n, m, d)| ((*n).to_owned(), *m, *d))
            .collect();
        assert_eq!(names, expected);
        assert_eq!(bundle.stats().files, 5);
        assert_eq!(bundle.stats().dirs, 5);
    }

    #[test]
    fn the_same_tree_gives_the_same_digest_whatever_its_metadata() {
        let files = [
            (".imgpkg/images.yml", IMAGES_YML),
            ("config/a.yml", "a: 1\n"),
        ];
        let one = tree(&files);
        let two = tree(&files);
        // Different group/other bits, mtimes and creation order must not matter.
        fs::set_permissions(
            two.path().join("config/a.yml"),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::options()
            .write(true)
            .open(two.path().join("config/a.yml"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let a = build(&[one.path().to_owned()], &BuildOptions::default()).unwrap();
        let b = build(&[two.path().to_owned()], &BuildOptions::default()).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.layer_digest(), b.layer_digest());

        fs::write(two.path().join("config/a.yml"), "a: 2\n").unwrap();
        let c = build(&[two.path().to_owned()], &BuildOptions::default()).unwrap();
        assert_ne!(a.digest(), c.digest());
        fs::write(two.path().join("config/a.yml"), "a: 1\n").unwrap();
        fs::set_permissions(
            two.path().join("config/a.yml"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let d = build(&[two.path().to_owned()], &BuildOptions::default()).unwrap();
        assert_ne!(
            a.digest(),
            d.digest(),
            "the owner's bits are part of the content"
        );
    }

    /// The diff_id Go's `archive/tar` gives this tree through imgpkg's `createTarball` logic
    /// (go1.26; regenerate with a 40-line Go program copying tar_image.go if the tree changes):
    /// plain USTAR names, a name split into the USTAR prefix, a PAX name too long to split, a
    /// PAX non-ASCII name, an empty file, a 0755 file kept as 0700, and an excluded `.git`.
    #[test]
    fn tar_is_byte_identical_to_imgpkgs() {
        let long_dir = "d".repeat(120);
        let pax_name = format!("config/{}", "n".repeat(110));
        let long_file = format!("{long_dir}/file.yml");
        let big = "x".repeat(1000);
        let dir = tree(&[
            (".imgpkg/images.yml", IMAGES_YML),
            ("config/a.yml", "a: 1\n"),
            ("config/sub/empty", ""),
            ("config/big.txt", &big),
            (&long_file, "long\n"),
            (&pax_name, "pax\n"),
            ("config/naïve.yml", "utf8\n"),
            (".git/HEAD", "git\n"),
        ]);
        fs::set_permissions(
            dir.path().join("config/a.yml"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let bundle = build(&[dir.path().to_owned()], &BuildOptions::default()).unwrap();
        assert_eq!(
            bundle.diff_id(),
            "sha256:308f045d11577e295b71ebc07a650ddfb21803df87be49a34a8bdfd17371b932"
        );
    }

    #[test]
    fn symlinks_are_refused_even_inside_the_tree() {
        let dir = tree(&[(".imgpkg/images.yml", IMAGES_YML), ("real.yml", "x")]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("outside")).unwrap();
        let err = build(&[dir.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(
            matches!(&err, BundleError::NotRegular { kind: "symbolic link", path } if path.ends_with("outside")),
            "{err}"
        );
    }

    #[test]
    fn imgpkg_directory_rules() {
        let missing = tree(&[("config.yml", "x")]);
        let err = build(&[missing.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("missing .imgpkg/images.yml"),
            "{err}"
        );

        let nested = tree(&[("sub/.imgpkg/images.yml", IMAGES_YML)]);
        let err = build(&[nested.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(err.to_string().contains("direct child"), "{err}");

        let two = tree(&[
            (".imgpkg/images.yml", IMAGES_YML),
            ("sub/.imgpkg/images.yml", IMAGES_YML),
        ]);
        let err = build(&[two.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(err.to_string().contains("only one .imgpkg"), "{err}");

        let no_images = tree(&[(".imgpkg/bundle.yml", "x")]);
        let err = build(&[no_images.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("images.yml does not exist"),
            "{err}"
        );

        let bad = tree(&[(".imgpkg/images.yml", "apiVersion: v1\nkind: ConfigMap\n")]);
        let err = build(&[bad.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(err.to_string().contains("ImagesLock"), "{err}");

        let bad_bundle = tree(&[
            (".imgpkg/images.yml", IMAGES_YML),
            (
                ".imgpkg/bundle.yml",
                "apiVersion: imgpkg.carvel.dev/v1alpha1\nkind: Nope\n",
            ),
        ]);
        let err = build(&[bad_bundle.path().to_owned()], &BuildOptions::default()).unwrap_err();
        assert!(err.to_string().contains("bundle.yml"), "{err}");
    }

    #[test]
    fn several_inputs_must_not_collide() {
        let one = tree(&[(".imgpkg/images.yml", IMAGES_YML), ("config/a.yml", "a")]);
        let two = tree(&[("config/b.yml", "b")]);
        let err = build(
            &[one.path().to_owned(), two.path().to_owned()],
            &BuildOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"config\""), "{err}");

        let three = tree(&[("extra.yml", "c")]);
        let ok = build(
            &[one.path().to_owned(), three.path().join("extra.yml")],
            &BuildOptions::default(),
        )
        .unwrap();
        let names: Vec<String> = entries(&ok).into_iter().map(|e| e.0).collect();
        assert_eq!(names.last().map(String::as_str), Some("extra.yml"));
    }

    #[test]
    fn a_missing_input_names_the_path() {
        let err = build(
            &[PathBuf::from("/nonexistent/bundle")],
            &BuildOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, BundleError::Io { path, source, .. }
                if path == Path::new("/nonexistent/bundle")
                    && source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }
}
