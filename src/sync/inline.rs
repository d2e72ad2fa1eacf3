//! `inline` contents: files written from the config itself (and from Secrets/ConfigMaps).

use std::path::Path;

use super::{Context, FetchError, fsutil, hex};

/// `inline`'s files: `paths` verbatim, `pathsFrom` every key of a Secret or ConfigMap.
pub(super) fn inline_files(
    ctx: &Context<'_>,
    source: &crate::carvel::vendir::InlineSource,
) -> Result<Vec<(String, Vec<u8>)>, FetchError> {
    let mut files: Vec<(String, Vec<u8>)> = source
        .paths
        .iter()
        .map(|(rel, content)| (rel.clone(), content.as_bytes().to_vec()))
        .collect();
    let prefix = |dir: &str, key: &str| {
        if dir.is_empty() {
            key.to_owned()
        } else {
            format!("{dir}/{key}")
        }
    };
    for from in &source.paths_from {
        if let Some(secret_ref) = &from.secret_ref {
            let secret = ctx.secret(&secret_ref.name)?;
            for (key, value) in secret.data {
                files.push((prefix(&secret_ref.directory_path, &key), value));
            }
        } else if let Some(map_ref) = &from.config_map_ref {
            let map = ctx
                .options
                .secrets
                .config_map(&map_ref.name)
                .ok_or_else(|| {
                    FetchError::Invalid(format!("configMap {:?} not found", map_ref.name))
                })?;
            for (key, value) in map {
                files.push((prefix(&map_ref.directory_path, &key), value.into_bytes()));
            }
        } else {
            return Err(FetchError::Invalid(
                "pathsFrom entry needs secretRef or configMapRef".to_owned(),
            ));
        }
    }
    Ok(files)
}

pub(super) fn write_inline(files: &[(String, Vec<u8>)], out: &Path) -> Result<(), FetchError> {
    for (rel, data) in files {
        let path = fsutil::safe_join(out, rel)
            .map_err(|e| FetchError::Invalid(format!("inline path {rel:?}: {e}")))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(FetchError::io(parent))?;
        }
        std::fs::write(&path, data).map_err(FetchError::io(&path))?;
    }
    Ok(())
}

/// A digest of inline files, names and contents (length-prefixed, so no two lists collide).
pub(super) fn inline_identity(files: &[(String, Vec<u8>)]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, data) in files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((data.len() as u64).to_le_bytes());
        hasher.update(data);
    }
    format!("inline:{}", hex(&hasher.finalize()))
}
