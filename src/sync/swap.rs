//! The work directory of one sync and the all-or-nothing swap of its staged directories:
//! a failed sync leaves every target as it was.

use std::path::{Path, PathBuf};

use std::io;

use super::error::io_error;
use super::{SyncError, fsutil};

/// Moves every staged directory into place; on failure, puts back what was already moved.
pub(super) fn swap_all(staged: &[(PathBuf, PathBuf, PathBuf)]) -> Result<(), SyncError> {
    let mut done: Vec<(&Path, &Path, bool)> = Vec::new();
    for (stage, target, old) in staged {
        let had_old = target.symlink_metadata().is_ok();
        let swap = || -> io::Result<()> {
            if had_old {
                std::fs::rename(target, old)?;
            } else if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if let Err(e) = std::fs::rename(stage, target) {
                if had_old {
                    let _ = std::fs::rename(old, target);
                }
                return Err(e);
            }
            Ok(())
        };
        if let Err(source) = swap() {
            for (target, old, had_old) in done.into_iter().rev() {
                let _ = fsutil::remove_any(target);
                if had_old {
                    let _ = std::fs::rename(old, target);
                }
            }
            return Err(SyncError::Io {
                what: "replacing",
                path: target.clone(),
                source,
            });
        }
        done.push((target, old, had_old));
    }
    Ok(())
}

/// The scratch area of one sync, removed when dropped.
pub(super) struct Work {
    pub(super) path: PathBuf,
}

impl Work {
    pub(super) fn create(root: &Path) -> Result<Work, SyncError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = root.join(format!(".packsmith-sync-{}-{nanos:x}", std::process::id()));
        make_dir(&path)?;
        Ok(Work { path })
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the sync work directory");
        }
    }
}

pub(super) fn make_dir(path: &Path) -> Result<(), SyncError> {
    std::fs::create_dir_all(path).map_err(io_error("creating", path))
}

pub(super) fn chmod(path: &Path, mode: u32) -> Result<(), SyncError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("chmod", path))
}
