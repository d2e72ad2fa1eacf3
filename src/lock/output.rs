//! Writing the results: the ImagesLock file, and manifests with references replaced by
//! digests (kbld's default output, a YAML stream).

use std::collections::BTreeMap;
use std::path::Path;

use crate::carvel::imgpkg::ImageRef;
use crate::carvel::yaml::value_to_go_yaml;

use super::discover::Discovery;
use super::error::LockError;
use super::resolve::Resolution;
use super::rules::visit_images;
use super::yaml::YamlLimits;

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

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<Written, LockError> {
    let write_error = |cause| LockError::Write {
        path: path.to_owned(),
        cause,
    };
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(Written::Unchanged);
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(write_error)?;
    // A sibling, so the rename stays on one filesystem and readers never see half a file.
    let file_name = path.file_name().map_or_else(
        || "images.yml".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let temporary = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(write_error)?;
    Ok(Written::Changed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockConfig, ResolveOptions, discover, resolve};
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
        let discovery =
            discover(&[dir.path().to_owned()], &LockConfig::default()).expect("discover");
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
}
