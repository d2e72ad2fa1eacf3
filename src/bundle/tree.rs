//! The walk of a bundle's inputs, as imgpkg does it (`filepath.Walk`: names sorted bytewise,
//! depth first): which files and directories the layer holds, in which order and under which
//! names — checked before a byte is archived (UTF-8 names, regular files only, one `.imgpkg`).
//! Both the layer writer ([`super::build`]) and the layer cache ([`super::cache`]) read it.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use super::error::BundleError;

const IMGPKG_DIR: &str = ".imgpkg";

/// Lists what the layer holds, in imgpkg's order, checking names and file types; `exclude`
/// is imgpkg's `--file-exclusion` (paths relative to an input directory).
pub(super) fn walk(inputs: &[PathBuf], exclude: &[String]) -> Result<Tree, BundleError> {
    let mut walker = Walker {
        exclude,
        tree: Tree::default(),
        seen: (inputs.len() > 1).then(HashSet::new),
    };
    for input in inputs {
        walker.add_input(input)?;
    }
    Ok(walker.tree)
}

/// What a walk found.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) entries: Vec<Entry>,
    /// Every `.imgpkg` met, with whether it sits directly in an input directory.
    pub(super) imgpkg_dirs: Vec<(PathBuf, bool)>,
    pub(super) files: usize,
    pub(super) dirs: usize,
}

impl Tree {
    /// imgpkg's `validateImgpkgDirs`: exactly one `.imgpkg`, directly inside an input
    /// directory.
    pub(super) fn imgpkg_dir(&self) -> Result<PathBuf, BundleError> {
        checked_imgpkg_dir(&self.imgpkg_dirs)
    }
}

/// One tar entry to write, in walk order.
pub(super) struct Entry {
    /// The name in the tar.
    pub(super) name: String,
    pub(super) path: PathBuf,
    /// `None` for a directory.
    pub(super) file: Option<fs::Metadata>,
}

struct Walker<'a> {
    exclude: &'a [String],
    tree: Tree,
    /// Paths already archived, when several inputs could collide.
    seen: Option<HashSet<String>>,
}

impl Walker<'_> {
    fn add_input(&mut self, input: &Path) -> Result<(), BundleError> {
        // Like imgpkg (os.Stat), an input given on the command line may itself be a symlink.
        let meta = fs::metadata(input).map_err(BundleError::io("reading input", input))?;
        if meta.is_dir() {
            self.push_dir(".", input);
            self.walk_dir(input, "")
        } else if meta.is_file() {
            let name = utf8_name(input, input.file_name())?;
            if name == IMGPKG_DIR {
                self.tree.imgpkg_dirs.push((input.to_owned(), false));
            }
            self.add_file(input, name, meta)
        } else {
            Err(not_regular(input, &meta))
        }
    }

    fn walk_dir(&mut self, dir: &Path, rel: &str) -> Result<(), BundleError> {
        let mut names = fs::read_dir(dir)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(BundleError::io("listing", dir))?;
        // filepath.Walk's order: names sorted bytewise within each directory, depth first.
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for name in names {
            let path = dir.join(&name);
            let name = utf8_name(&path, Some(&name))?;
            let child = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if self.exclude.contains(&child) {
                continue;
            }
            if name == IMGPKG_DIR {
                self.tree.imgpkg_dirs.push((path.clone(), rel.is_empty()));
            }
            let meta = fs::symlink_metadata(&path).map_err(BundleError::io("reading", &path))?;
            if meta.is_dir() {
                self.check_unique(&child, &path)?;
                self.push_dir(&child, &path);
                self.walk_dir(&path, &child)?;
            } else if meta.is_file() {
                self.add_file(&path, &child, meta)?;
            } else {
                return Err(not_regular(&path, &meta));
            }
        }
        Ok(())
    }

    fn push_dir(&mut self, name: &str, path: &Path) {
        self.tree.entries.push(Entry {
            name: name.to_owned(),
            path: path.to_owned(),
            file: None,
        });
        self.tree.dirs += 1;
    }

    fn add_file(&mut self, path: &Path, name: &str, meta: fs::Metadata) -> Result<(), BundleError> {
        self.check_unique(name, path)?;
        self.tree.entries.push(Entry {
            name: name.to_owned(),
            path: path.to_owned(),
            file: Some(meta),
        });
        self.tree.files += 1;
        Ok(())
    }

    fn check_unique(&mut self, name: &str, path: &Path) -> Result<(), BundleError> {
        match &mut self.seen {
            Some(seen) if seen.contains(name) => Err(BundleError::Invalid(format!(
                "{} would be archived as {name:?}, which another input already provides",
                path.display()
            ))),
            Some(seen) => {
                seen.insert(name.to_owned());
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn utf8_name<'a>(path: &Path, name: Option<&'a std::ffi::OsStr>) -> Result<&'a str, BundleError> {
    name.and_then(|n| n.to_str()).ok_or_else(|| {
        BundleError::Invalid(format!(
            "{}: file names in a bundle must be valid UTF-8",
            path.display()
        ))
    })
}

fn not_regular(path: &Path, meta: &fs::Metadata) -> BundleError {
    let t = meta.file_type();
    let kind = if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "named pipe"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    };
    BundleError::NotRegular {
        path: path.to_owned(),
        kind,
    }
}

fn checked_imgpkg_dir(found: &[(PathBuf, bool)]) -> Result<PathBuf, BundleError> {
    match found {
        [] => Err(BundleError::Invalid(
            "the input is missing .imgpkg/images.yml (write it with `packsmith lock`, or an \
             empty ImagesLock if the bundle references no images)"
                .to_owned(),
        )),
        [(dir, true)] => Ok(dir.clone()),
        [(dir, false)] => Err(BundleError::Invalid(format!(
            "{} must be a direct child of an input directory",
            dir.display()
        ))),
        many => Err(BundleError::Invalid(format!(
            "only one .imgpkg directory may be provided, found {}",
            many.iter()
                .map(|(d, _)| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
