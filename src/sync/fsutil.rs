//! File-system helpers that never write outside a root, whatever the names they are given.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// `root/rel` for an untrusted, `/`-separated `rel`: refuses absolute paths, `..`, empty
/// names, and any existing symlink among the parents (writing through one could land outside
/// `root`).
pub(super) fn safe_join(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let invalid =
        |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{rel:?}: {why}"));
    if rel.starts_with('/') || rel.starts_with('\\') {
        return Err(invalid("absolute path"));
    }
    let mut path = root.to_owned();
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(invalid("empty path"));
    }
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            return Err(invalid("'..' leaves the target directory"));
        }
        if Path::new(part)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(invalid("not a plain file name"));
        }
        path.push(part);
        if i + 1 < parts.len()
            && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(invalid("a parent directory is a symlink"));
        }
    }
    Ok(path)
}

/// Whether a symlink at `link` (inside `root`) with target `target` resolves inside `root`,
/// judged lexically from the link's directory. Only sound when no other symlink is followed on
/// the way, which is why [`validate_symlinks`] re-checks the real paths after extraction.
pub(super) fn symlink_target_inside(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let Ok(rel_dir) = link.parent().unwrap_or(root).strip_prefix(root) else {
        return false;
    };
    let mut depth: Vec<&std::ffi::OsStr> = rel_dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    for component in target.components() {
        match component {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Refuses any symlink under `root` whose real target lies outside `root` (vendir's
/// `ValidateSymlinks`). Dangling links are refused too: what they would point at cannot be
/// checked, and a later writer could create it.
pub(super) fn validate_symlinks(root: &Path) -> io::Result<()> {
    let real_root = fs::canonicalize(root)?;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let resolved = fs::canonicalize(&path).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("symlink {} does not resolve: {e}", path.display()),
                    )
                })?;
                if !resolved.starts_with(&real_root) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "symlink {} points outside the contents",
                            path.strip_prefix(root).unwrap_or(&path).display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Copies a directory tree (files, directories, symlinks as symlinks).
pub(super) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Removes a file or a directory tree; absent is fine.
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves `from` to `to` (same file system), replacing whatever is at `to`.
pub(super) fn replace(from: &Path, to: &Path) -> io::Result<()> {
    remove_any(to)?;
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(from, to)
}

/// Counts regular files and their bytes below `root` (for limits on non-archive sources).
pub(super) fn tree_size(root: &Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_refuses_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert!(safe_join(root, "a/b.txt").is_ok());
        assert!(safe_join(root, "./a//b").is_ok());
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/.."] {
            assert!(safe_join(root, bad).is_err(), "{bad:?}");
        }
        std::os::unix::fs::symlink("/tmp", root.join("link")).expect("symlink");
        assert!(safe_join(root, "link/x").is_err());
        assert!(
            safe_join(root, "link").is_ok(),
            "the link itself may be replaced"
        );
    }

    #[test]
    fn symlink_targets_are_judged_from_the_link_directory() {
        let root = Path::new("/r");
        assert!(symlink_target_inside(
            root,
            Path::new("/r/a/l"),
            Path::new("../b")
        ));
        assert!(!symlink_target_inside(
            root,
            Path::new("/r/a/l"),
            Path::new("../../b")
        ));
        assert!(!symlink_target_inside(
            root,
            Path::new("/r/l"),
            Path::new("/etc")
        ));
        assert!(symlink_target_inside(
            root,
            Path::new("/r/l"),
            Path::new("./x/./y")
        ));
    }

    #[test]
    fn validate_symlinks_catches_chained_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(&root).expect("mkdir");
        // Each link looks inside on its own; followed together they leave the root.
        std::os::unix::fs::symlink(".", root.join("d")).expect("symlink");
        std::os::unix::fs::symlink("d/..", root.join("e")).expect("symlink");
        assert!(symlink_target_inside(
            &root,
            &root.join("e"),
            Path::new("d/..")
        ));
        assert!(validate_symlinks(&root).is_err());
    }
}
