//! Writing the results: the ImagesLock file, and manifests with references replaced by
//! digests (kbld's default output, a YAML stream).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::carvel::imgpkg::ImageRef;
use crate::carvel::yaml::value_to_go_yaml;

use super::discover::{Discovery, STDIN, is_configuration};
use super::error::{Location, LockError};
use super::resolve::Resolution;
use super::rules::visit_images;
use super::yaml::{YamlLimits, parse_stream};

/// Whether [`write_lock`] changed the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Changed,
    Unchanged,
}

/// Writes the lock as kbld's `--imgpkg-lock-output` would, creating the parent directory.
/// An identical file is left alone (its mtime too), so a re-lock of an unchanged package
/// touches nothing; otherwise it is replaced atomically.
pub fn write_lock(path: &Path, resolution: &Resolution) -> Result<Written, LockError> {
    let text = resolution.lock().to_kbld_yaml()?;
    write_if_changed(path, text.as_bytes())
}

/// `--locked`: succeeds only if `path` already holds exactly the lock [`write_lock`] would
/// write.
pub fn check_lock(path: &Path, resolution: &Resolution) -> Result<Written, LockError> {
    let text = resolution.lock().to_kbld_yaml()?;
    match std::fs::read(path) {
        Ok(existing) if existing == text.as_bytes() => Ok(Written::Unchanged),
        Ok(_) => Err(LockError::LockWouldChange {
            path: path.to_owned(),
            missing: false,
        }),
        Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => {
            Err(LockError::LockWouldChange {
                path: path.to_owned(),
                missing: true,
            })
        }
        Err(cause) => Err(LockError::Read {
            path: path.to_owned(),
            cause,
        }),
    }
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<Written, LockError> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(Written::Unchanged);
    }
    write_atomically(path, bytes).map_err(|cause| LockError::Write {
        path: path.to_owned(),
        cause,
    })?;
    Ok(Written::Changed)
}

/// A file's new content, written and synced beside it, not yet in place.
pub struct Staged {
    temporary: tempfile::NamedTempFile,
    target: PathBuf,
}

/// Writes `bytes` to a new file beside `path` (same filesystem, so the rename that puts it in
/// place is atomic) with the permissions of the file it will replace, and syncs it. When
/// `path` is a symlink, the file it points to is the one replaced and the link stays, as an
/// editor would do it.
pub fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<Staged> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let target = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(path)?,
        _ => path.to_owned(),
    };
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = target
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    // A new file's mode is 0666 less the umask, as `std::fs::write` would give it.
    let permissions = std::fs::metadata(&target)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| std::fs::Permissions::from_mode(0o666));
    let mut temporary = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(permissions)
        .tempfile_in(&parent)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    Ok(Staged { temporary, target })
}

impl Staged {
    /// Renames the new content over the old file, then syncs the directory so the rename
    /// survives a crash.
    pub fn commit(self) -> std::io::Result<()> {
        let target = self.target;
        self.temporary.persist(&target).map_err(|e| e.error)?;
        if let Some(parent) = target.parent()
            && let Ok(dir) = std::fs::File::open(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Replaces `path` with `bytes` by a rename: readers, and a failure midway, see the old file
/// or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    stage(path, bytes)?.commit()
}

/// Every manifest with its image references replaced by their locked digests, as one YAML
/// stream in kbld's output form (`---` before each document, keys sorted). Configuration
/// documents are not part of it, as in kbld.
pub fn render_manifests(
    discovery: &Discovery,
    resolution: &Resolution,
    limits: &YamlLimits,
) -> String {
    let replacements: BTreeMap<&str, &str> = resolution
        .images
        .iter()
        .map(|(id, entry): (&String, &ImageRef)| (id.as_str(), entry.image.as_str()))
        .collect();
    let mut out = String::new();
    for manifest in &discovery.manifests {
        let mut document = manifest.document.clone();
        visit_images(
            &mut document,
            &discovery.search_rules,
            limits,
            &mut |reference| replacements.get(reference).map(|image| (*image).to_owned()),
        );
        out.push_str("---\n");
        out.push_str(&value_to_go_yaml(&document));
    }
    out
}

/// `--in-place`: rewrites each manifest file under `discovery` with its references replaced
/// by their digests, keeping everything else of the text (comments, ytt annotations, quoting,
/// key order). Returns the files that changed.
///
/// The replacement is textual, at YAML token boundaries, in the documents that are manifests
/// (configuration documents keep their `image:` keys). It is then checked: the rewritten file
/// must parse to exactly what kbld's replacement of the parsed original gives. A file where
/// the two differ (a reference also written where no search rule looks, a JSON or YAML string
/// value kbld re-encodes) is refused, naming the file, before any file is written.
pub fn rewrite_in_place(
    discovery: &Discovery,
    resolution: &Resolution,
    limits: &YamlLimits,
) -> Result<Vec<PathBuf>, LockError> {
    let replacements: BTreeMap<&str, &str> = resolution
        .images
        .iter()
        .map(|(id, entry)| (id.as_str(), entry.image.as_str()))
        .collect();
    if let Some(chart) = discovery.charts.first() {
        return Err(LockError::Config {
            origin: "--in-place".to_owned(),
            message: format!(
                "{} is a Helm chart: its templates are not rewritten (the lock pins what they \
                 render, and kapp-controller's kbld step applies it at install); use \
                 --imgpkg-lock-output or --output",
                chart.display()
            ),
        });
    }
    let mut files: Vec<&Path> = discovery
        .manifests
        .iter()
        .map(|m| m.location.path.as_path())
        .collect();
    files.dedup();
    let mut rewritten = Vec::new();
    for path in files {
        if path == Path::new(STDIN) {
            return Err(LockError::Config {
                origin: "--in-place".to_owned(),
                message: "standard input cannot be rewritten in place; use --output".to_owned(),
            });
        }
        let read_error = |cause| LockError::Read {
            path: path.to_owned(),
            cause,
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let new_text = replace_in_manifests(&text, &replacements, limits);
        if new_text == text {
            continue;
        }
        let expected = parse_stream(&text, limits).map(|documents| {
            documents
                .into_iter()
                .map(|mut document| {
                    if !is_configuration(&document) {
                        visit_images(&mut document, &discovery.search_rules, limits, &mut |r| {
                            replacements.get(r).map(|image| (*image).to_owned())
                        });
                    }
                    document
                })
                .collect::<Vec<_>>()
        });
        let actual = parse_stream(&new_text, limits);
        if expected.is_err() || expected.ok() != actual.ok() {
            return Err(LockError::Document {
                location: Location {
                    path: path.to_owned(),
                    document: 0,
                },
                message: "cannot be rewritten in place: replacing the references in its text \
                          does not give what kbld's replacement does (a reference written \
                          where no search rule looks, or inside a JSON/YAML string value); \
                          use --output"
                    .to_owned(),
            });
        }
        rewritten.push((path.to_owned(), new_text));
    }
    // Every new file is written and synced before the first is renamed into place, so a full
    // disk or a refused write leaves every manifest as it was.
    let mut staged = Vec::new();
    for (path, text) in rewritten {
        let file = stage(&path, text.as_bytes()).map_err(|cause| LockError::Write {
            path: path.clone(),
            cause,
        })?;
        staged.push((path, file));
    }
    let mut changed = Vec::new();
    for (path, file) in staged {
        file.commit().map_err(|cause| LockError::Write {
            path: path.clone(),
            cause,
        })?;
        changed.push(path);
    }
    Ok(changed)
}

/// Replaces references in the documents of `text` that are not configuration. Documents are
/// split at `---` lines; a chunk that does not parse on its own is left alone (the check in
/// [`rewrite_in_place`] then refuses the file if it needed changes).
fn replace_in_manifests(
    text: &str,
    replacements: &BTreeMap<&str, &str>,
    limits: &YamlLimits,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chunk = String::new();
    let flush = |chunk: &mut String, out: &mut String| {
        let configuration = parse_stream(chunk, limits)
            .map(|documents| documents.iter().any(is_configuration))
            .unwrap_or(true);
        if configuration {
            out.push_str(chunk);
        } else {
            out.push_str(&replace_tokens(chunk, replacements));
        }
        chunk.clear();
    };
    for line in text.split_inclusive('\n') {
        if line == "---\n" || line == "---" || line.starts_with("--- ") || line == "---\r\n" {
            flush(&mut chunk, &mut out);
            out.push_str(line);
        } else {
            chunk.push_str(line);
        }
    }
    flush(&mut chunk, &mut out);
    out
}

/// Each reference that stands as a whole YAML token (plain or quoted scalar, flow item)
/// replaced, outside comments; the longest reference wins where several start at one place.
fn replace_tokens(text: &str, replacements: &BTreeMap<&str, &str>) -> String {
    const BEFORE: &[char] = &[' ', '\t', '\n', '"', '\'', '[', ',', '{'];
    const AFTER: &[char] = &[' ', '\t', '\r', '\n', '"', '\'', ']', ',', '}', '#'];
    let mut by_length: Vec<(&str, &str)> = replacements.iter().map(|(k, v)| (*k, *v)).collect();
    by_length.sort_by_key(|(reference, _)| std::cmp::Reverse(reference.len()));
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        // A comment (ytt's `#@`/`#!` included) is kept as written, to the end of its line.
        if c == '#' && previous.is_none_or(|p| p.is_whitespace()) {
            let end = rest.find('\n').unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            previous = Some('#');
            continue;
        }
        if previous.is_none_or(|p| BEFORE.contains(&p))
            && let Some((reference, image)) = by_length.iter().find(|(reference, _)| {
                rest.strip_prefix(reference)
                    .is_some_and(|after| after.chars().next().is_none_or(|a| AFTER.contains(&a)))
            })
        {
            out.push_str(image);
            rest = &rest[reference.len()..];
            previous = reference.chars().last();
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod atomic_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_replaced_file_keeps_its_mode_and_its_symlink_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "old").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
        write_atomically(&script, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&script).unwrap(), "new");
        let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);

        let link = dir.path().join("link.yml");
        std::os::unix::fs::symlink("run.sh", &link).unwrap();
        write_atomically(&link, b"through").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&script).unwrap(), "through");

        // The old fixed temporary name, planted as a symlink, is never written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "safe").unwrap();
        let lock = dir.path().join("images.yml");
        std::os::unix::fs::symlink(
            &victim,
            dir.path()
                .join(format!(".images.yml.{}.tmp", std::process::id())),
        )
        .unwrap();
        write_atomically(&lock, b"lock").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "safe");

        // Staged but never committed: the old content stays, no temporary is left.
        let staged = stage(&lock, b"abandoned").unwrap();
        drop(staged);
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), "lock");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // run.sh, link.yml, victim, images.yml and the planted link: nothing else.
        assert_eq!(names.len(), 5, "{names:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockConfig, ResolveOptions, discover_rendered, resolve};
    use crate::registry::Registry;
    use pretty_assertions::assert_eq;

    #[tokio::test]
    async fn manifests_get_digests_and_the_lock_is_written_once() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("m.yml"),
            format!(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: app\n    name: a\n---\n\
                 apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\noverrides:\n- image: app\n  \
                 newImage: r.io/app@{digest}\n  preresolved: true\n"
            ),
        )
        .expect("write");
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        let registry = Registry::new(Default::default()).expect("registry");
        let resolution = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .expect("resolve");

        assert_eq!(
            render_manifests(&discovery, &resolution, &YamlLimits::default()),
            format!(
                "---\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: r.io/app@{digest}\n    name: a\n"
            )
        );

        let lock = dir.path().join(".imgpkg/images.yml");
        assert_eq!(
            write_lock(&lock, &resolution).expect("write"),
            Written::Changed
        );
        assert_eq!(
            write_lock(&lock, &resolution).expect("write"),
            Written::Unchanged
        );
        assert_eq!(
            std::fs::read_to_string(&lock).expect("read"),
            resolution.lock().to_kbld_yaml().expect("yaml")
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(".imgpkg"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["images.yml"]);
    }

    #[tokio::test]
    async fn check_lock_accepts_only_the_identical_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("m.yml"),
            format!("image: r.io/app@sha256:{}\n", "d".repeat(64)),
        )
        .expect("write");
        let discovery = discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
            .expect("discover");
        let registry = Registry::new(Default::default()).expect("registry");
        let resolution = resolve(&discovery, &registry, &ResolveOptions::default())
            .await
            .expect("resolve");
        let lock = dir.path().join("images.yml");
        assert!(matches!(
            check_lock(&lock, &resolution),
            Err(LockError::LockWouldChange { missing: true, .. })
        ));
        assert_eq!(
            write_lock(&lock, &resolution).expect("write"),
            Written::Changed
        );
        assert_eq!(
            check_lock(&lock, &resolution).expect("same"),
            Written::Unchanged
        );
        let mut text = std::fs::read_to_string(&lock).expect("read");
        text.push_str("# edited\n");
        std::fs::write(&lock, text).expect("write");
        assert!(matches!(
            check_lock(&lock, &resolution),
            Err(LockError::LockWouldChange { missing: false, .. })
        ));
    }

    #[test]
    fn tokens_are_replaced_whole_and_outside_comments() {
        let replacements =
            BTreeMap::from([("app", "r.io/app@sha256:1"), ("app:2", "r.io/app@sha256:2")]);
        assert_eq!(
            replace_tokens(
                "#@ x = \"app\"\nimage: app # app\nimages: [\"app:2\", 'app']\napp: myapp\nc: app:3\n",
                &replacements
            ),
            "#@ x = \"app\"\nimage: r.io/app@sha256:1 # app\nimages: [\"r.io/app@sha256:2\", \
             'r.io/app@sha256:1']\napp: myapp\nc: app:3\n"
        );
    }

    #[tokio::test]
    async fn in_place_keeps_the_text_and_refuses_what_it_cannot_check() {
        let digest = format!("sha256:{}", "e".repeat(64));
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = format!(
            "#@ load(\"@ytt:data\", \"data\")\n---\n# the app\nkind: Pod\nspec:\n  containers:\n  \
             - image: \"app\"  #! pinned below\n---\napiVersion: kbld.k14s.io/v1alpha1\nkind: \
             Config\noverrides:\n- image: app\n  newImage: r.io/app@{digest}\n  preresolved: true\n"
        );
        std::fs::write(dir.path().join("m.yml"), &manifest).expect("write");
        let discover_and_resolve = || async {
            let discovery =
                discover_rendered(&[dir.path().to_owned()], &LockConfig::default(), &[])
                    .expect("discover");
            let registry = Registry::new(Default::default()).expect("registry");
            let resolution = resolve(&discovery, &registry, &ResolveOptions::default()).await;
            (discovery, resolution)
        };
        std::fs::write(
            dir.path().join("pinned.yml"),
            format!("image: r.io/other@{digest}\n"),
        )
        .expect("write");
        let (discovery, resolution) = discover_and_resolve().await;
        let resolution = resolution.expect("resolve");
        let changed =
            rewrite_in_place(&discovery, &resolution, &YamlLimits::default()).expect("rewrite");
        assert_eq!(changed, [dir.path().join("m.yml")]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("m.yml")).expect("read"),
            manifest.replacen("\"app\"", &format!("\"r.io/app@{digest}\""), 1)
        );

        // The same reference also in an annotation no rule searches: refused, nothing written.
        let annotated = "metadata:\n  annotations:\n    source: r.io/app@sha256:zzz\nimage: r.io/app@sha256:zzz\n";
        std::fs::write(dir.path().join("m.yml"), annotated).expect("write");
        let (discovery, _) = discover_and_resolve().await;
        let mut resolution = resolution.clone();
        resolution.images.insert(
            "r.io/app@sha256:zzz".to_owned(),
            ImageRef::kbld(format!("r.io/app@{digest}"), "r.io/app@sha256:zzz", &[]),
        );
        let error = rewrite_in_place(&discovery, &resolution, &YamlLimits::default())
            .expect_err("the annotation would change too");
        assert!(error.to_string().contains("m.yml"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("m.yml")).expect("read"),
            annotated
        );
    }
}
