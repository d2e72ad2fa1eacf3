//! vendir's path filters: `includePaths`, `excludePaths`, `legalPaths`, `newRootPath` and
//! `ignorePaths`, with the glob semantics of `github.com/bmatcuk/doublestar` v1 (`PathMatch`),
//! which vendir uses.
//!
//! vendir joins every pattern onto the absolute content directory with Go's `filepath.Join`
//! and matches absolute file paths. Joining cleans the pattern (`./a/` is `a`, `a/../b` is
//! `b`), so here a pattern is cleaned the same way and matched against the file's path
//! relative to the content root, which gives the same answers without the directory's own
//! name taking part in the match.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A doublestar v1 glob: `*` and `?` never cross `/`, a whole `**` component spans any number
/// of components (including none), `[abc]`/`[a-z]`/`[^a]`/`[!a]` classes, `{a,b}`
/// alternatives within a component, `\` escapes. Unlike shells, `*` matches a leading dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// Cleaned components; `None` when cleaning climbs out of the root (`../x`): such a pattern
    /// can only name files outside the content and so matches nothing.
    components: Option<Vec<String>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob {
            components: clean(pattern),
        }
    }

    /// Whether `path` (relative, `/`-separated) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(pattern) = &self.components else {
            return false;
        };
        let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
        match_components(&pattern, &names)
    }
}

/// Go's `filepath.Clean` for a relative pattern, as components.
fn clean(pattern: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            other => out.push(other.to_owned()),
        }
    }
    Some(out)
}

fn match_components(pattern: &[&str], names: &[&str]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((&"**", rest)) => {
            // `**` absorbs zero or more whole components.
            (0..=names.len()).any(|skip| match_components(rest, &names[skip..]))
        }
        Some((first, rest)) => match names.split_first() {
            Some((name, names_rest)) => {
                match_component(first, name) && match_components(rest, names_rest)
            }
            None => false,
        },
    }
}

/// One component: expands `{a,b}` then matches the wildcard pattern.
fn match_component(pattern: &str, name: &str) -> bool {
    expand_braces(pattern)
        .iter()
        .any(|p| wildcard(p.as_bytes(), name.as_bytes()))
}

/// Expands the first top-level `{…}` group (recursively for nested and later groups).
/// An unterminated brace is literal, as doublestar treats a malformed pattern as a non-match
/// for the group rather than an error worth aborting a sync for.
fn expand_braces(pattern: &str) -> Vec<String> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    let mut open = None;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => {
                open = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let Some(open) = open else {
        return vec![pattern.to_owned()];
    };
    let mut depth = 0;
    let mut alternatives = Vec::new();
    let mut start = open + 1;
    let mut j = open;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    alternatives.push(&pattern[start..j]);
                    let (prefix, suffix) = (&pattern[..open], &pattern[j + 1..]);
                    return alternatives
                        .iter()
                        .flat_map(|alt| expand_braces(&format!("{prefix}{alt}{suffix}")))
                        .collect();
                }
            }
            b',' if depth == 1 => {
                alternatives.push(&pattern[start..j]);
                start = j + 1;
            }
            _ => {}
        }
        j += 1;
    }
    vec![pattern.to_owned()]
}

/// `*`, `?`, `[…]` and `\` within one component (no `/` in either side).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Backtracking point for the last `*`: (pattern index after it, name index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&pattern[p..], name[n]) {
                Some((true, len)) => Some(len),
                _ => None,
            },
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == name[n]).then_some(2),
            Some(&c) => (c == name[n]).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                p += len;
                n += 1;
            }
            None => match star {
                Some((after, matched)) => {
                    p = after;
                    n = matched + 1;
                    star = Some((after, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pattern`; returns (matched, class length).
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'^' | b'!'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = match pattern.get(i)? {
            b']' if !first => break,
            b'\\' => {
                i += 1;
                *pattern.get(i)?
            }
            &other => other,
        };
        first = false;
        i += 1;
        let hi = if pattern.get(i) == Some(&b'-') && pattern.get(i + 1).is_some_and(|&b| b != b']')
        {
            i += 1;
            let hi = match pattern.get(i)? {
                b'\\' => {
                    i += 1;
                    *pattern.get(i)?
                }
                &other => other,
            };
            i += 1;
            hi
        } else {
            lo
        };
        if (lo..=hi).contains(&c) {
            matched = true;
        }
    }
    Some((matched != negated, i + 1))
}

/// The file filter of one content, vendir's `FileFilter`.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    legal: Vec<Glob>,
}

impl PathFilter {
    pub fn new(include: &[String], exclude: &[String], legal: &[String]) -> Self {
        let globs = |p: &[String]| p.iter().map(|s| Glob::new(s)).collect();
        PathFilter {
            include: globs(include),
            exclude: globs(exclude),
            legal: globs(legal),
        }
    }

    /// Whether a file (not a directory) at `path` survives: included (or no includes), not
    /// excluded, or legal regardless.
    pub fn keeps(&self, path: &str) -> bool {
        let any = |globs: &[Glob]| globs.iter().any(|g| g.matches(path));
        let included = self.include.is_empty() || any(&self.include);
        (included && !any(&self.exclude)) || any(&self.legal)
    }

    /// Removes every non-directory entry under `root` the filter does not keep, then empty
    /// directories; fails when nothing is left, as vendir does.
    pub fn apply(&self, root: &Path) -> Result<(), FilterError> {
        self.remove_unkept(root, "")?;
        if !prune_empty_dirs(root)? {
            return Err(FilterError::NothingLeft);
        }
        Ok(())
    }

    fn remove_unkept(&self, dir: &Path, prefix: &str) -> Result<(), FilterError> {
        for entry in fs::read_dir(dir).map_err(|e| FilterError::io(dir, e))? {
            let entry = entry.map_err(|e| FilterError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let rel = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            // file_type() does not follow symlinks: a link is filtered like a file, as in Go's Walk.
            let kind = entry.file_type().map_err(|e| FilterError::io(&path, e))?;
            if kind.is_dir() {
                self.remove_unkept(&path, &rel)?;
            } else if !self.keeps(&rel) {
                fs::remove_file(&path).map_err(|e| FilterError::io(&path, e))?;
            }
        }
        Ok(())
    }
}

/// Removes empty directories below `dir`; returns whether `dir` holds any file.
pub fn prune_empty_dirs(dir: &Path) -> Result<bool, FilterError> {
    let mut has_files = false;
    for entry in fs::read_dir(dir).map_err(|e| FilterError::io(dir, e))? {
        let entry = entry.map_err(|e| FilterError::io(dir, e))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(|e| FilterError::io(&path, e))?
            .is_dir()
        {
            if prune_empty_dirs(&path)? {
                has_files = true;
            } else {
                fs::remove_dir(&path).map_err(|e| FilterError::io(&path, e))?;
            }
        } else {
            has_files = true;
        }
    }
    Ok(has_files)
}

/// Why filtering a content failed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(
        "no file left after includePaths/excludePaths (vendir requires at least one file in \
         the directory); check the patterns against the upstream layout"
    )]
    NothingLeft,
    #[error("newRootPath {path:?} is not a directory of the fetched contents{hint}")]
    NoNewRoot { path: String, hint: String },
    #[error("newRootPath {0:?} must be a relative path inside the contents")]
    BadNewRoot(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FilterError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        FilterError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Makes `new_root` (relative to `root`) the new `root`, as vendir's `newRootPath`.
pub fn apply_new_root(root: &Path, new_root: &str, scratch: &Path) -> Result<(), FilterError> {
    let Some(components) = clean(new_root).filter(|c| !c.is_empty()) else {
        return Err(FilterError::BadNewRoot(new_root.to_owned()));
    };
    let source = components.iter().fold(root.to_owned(), |p, c| p.join(c));
    match fs::symlink_metadata(&source) {
        Ok(meta) if meta.is_dir() => {}
        _ => {
            let parent = source.parent().unwrap_or(root);
            let mut found: Vec<String> = fs::read_dir(parent)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            found.sort();
            let hint = if found.is_empty() {
                String::new()
            } else {
                format!(" (found directories: {})", found.join(", "))
            };
            return Err(FilterError::NoNewRoot {
                path: new_root.to_owned(),
                hint,
            });
        }
    }
    // Move the new root aside first: it lives inside the directory it replaces.
    fs::rename(&source, scratch).map_err(|e| FilterError::io(&source, e))?;
    fs::remove_dir_all(root).map_err(|e| FilterError::io(root, e))?;
    fs::rename(scratch, root).map_err(|e| FilterError::io(root, e))?;
    Ok(())
}

/// vendir's `ignorePaths`: files of the existing contents directory matching `patterns` are
/// copied over the freshly fetched contents, so they survive the sync.
pub fn copy_ignored(
    existing: &Path,
    staged: &Path,
    patterns: &[String],
) -> Result<(), FilterError> {
    if patterns.is_empty() || !existing.is_dir() {
        return Ok(());
    }
    let globs: Vec<Glob> = patterns.iter().map(|p| Glob::new(p)).collect();
    copy_ignored_in(existing, staged, "", &globs)
}

fn copy_ignored_in(
    dir: &Path,
    staged: &Path,
    prefix: &str,
    globs: &[Glob],
) -> Result<(), FilterError> {
    for entry in fs::read_dir(dir).map_err(|e| FilterError::io(dir, e))? {
        let entry = entry.map_err(|e| FilterError::io(dir, e))?;
        let name = entry.file_name();
        let rel = if prefix.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{prefix}/{}", name.to_string_lossy())
        };
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| FilterError::io(&path, e))?;
        if kind.is_dir() {
            copy_ignored_in(&path, staged, &rel, globs)?;
        } else if kind.is_file() && globs.iter().any(|g| g.matches(&rel)) {
            let target = crate::sync::fsutil::safe_join(staged, &rel)
                .map_err(|e| FilterError::io(&staged.join(&rel), e))?;
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| FilterError::io(parent, e))?;
            }
            // Replace, never write through: the staged path may be a symlink from upstream.
            let _ = fs::remove_file(&target);
            fs::copy(&path, &target).map_err(|e| FilterError::io(&target, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).matches(path)
    }

    #[test]
    fn doublestar_semantics() {
        for (pattern, path, expected) in [
            ("*.yaml", "a.yaml", true),
            ("*.yaml", "dir/a.yaml", false),
            ("**/*.yaml", "a.yaml", true),
            ("**/*.yaml", "x/y/a.yaml", true),
            ("x/**", "x/y/z", true),
            ("x/**", "x", true),
            ("x/**/z", "x/z", true),
            ("deploy/", "deploy", true),
            ("./deploy/a.yaml", "deploy/a.yaml", true),
            ("a/../b", "b", true),
            ("../b", "b", false),
            ("*", ".hidden", true),
            ("?.md", "a.md", true),
            ("?.md", "ab.md", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[!a-c]x", "dx", true),
            ("{LICENSE,NOTICE}{,.md}", "NOTICE.md", true),
            ("{LICENSE,NOTICE}{,.md}", "NOTICE.txt", false),
            ("a{b,{c,d}}e", "ade", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "a", false),
            (
                "kustomize/kustomization.yaml",
                "kustomize/kustomization.yaml",
                true,
            ),
        ] {
            assert_eq!(m(pattern, path), expected, "{pattern:?} vs {path:?}");
        }
    }

    #[test]
    fn legal_paths_always_win() {
        let legal: Vec<String> = crate::carvel::vendir::DEFAULT_LEGAL_PATHS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let filter = PathFilter::new(&["deploy/*".to_owned()], &["LICENSE".to_owned()], &legal);
        assert!(filter.keeps("deploy/a.yaml"));
        assert!(!filter.keeps("README.md"));
        assert!(filter.keeps("LICENSE"), "legal beats exclude");
        assert!(
            !filter.keeps("sub/LICENSE"),
            "legal paths are anchored at the root"
        );
    }

    #[test]
    fn apply_prunes_and_refuses_empty_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("c");
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::create_dir_all(root.join("keep")).expect("mkdir");
        fs::write(root.join("a/b/x.txt"), "x").expect("write");
        fs::write(root.join("keep/y.yaml"), "y").expect("write");
        PathFilter::new(&["**/*.yaml".to_owned()], &[], &[])
            .apply(&root)
            .expect("filter");
        assert!(!root.join("a").exists());
        assert!(root.join("keep/y.yaml").exists());
        let err = PathFilter::new(&["nothing".to_owned()], &[], &[])
            .apply(&root)
            .expect_err("empty");
        assert!(matches!(err, FilterError::NothingLeft));
    }

    #[test]
    fn new_root_moves_subdirectory_up_and_explains_misses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("c");
        fs::create_dir_all(root.join("deploy/sub")).expect("mkdir");
        fs::create_dir_all(root.join("docs")).expect("mkdir");
        fs::write(root.join("deploy/sub/a"), "a").expect("write");
        let err = apply_new_root(&root, "deploi", &dir.path().join("s")).expect_err("missing");
        assert!(err.to_string().contains("deploy, docs"), "{err}");
        apply_new_root(&root, "deploy/", &dir.path().join("s")).expect("new root");
        assert_eq!(fs::read_to_string(root.join("sub/a")).expect("read"), "a");
        assert!(matches!(
            apply_new_root(&root, "../x", &dir.path().join("s")),
            Err(FilterError::BadNewRoot(_))
        ));
    }

    /// A tiny deterministic generator: property checks without a new dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() as usize) % items.len()]
        }
    }

    #[test]
    fn property_literal_paths_match_themselves_and_star_stays_in_component() {
        let mut rng = Lcg(42);
        let parts = ["a", "b.yaml", ".x", "LICENSE", "deploy", "z-1", "ü"];
        for _ in 0..2000 {
            let depth = 1 + (rng.next() % 4) as usize;
            let path: Vec<&str> = (0..depth).map(|_| rng.pick(&parts)).collect();
            let joined = path.join("/");
            assert!(m(&joined, &joined), "{joined}");
            assert!(m("**", &joined), "** matches everything: {joined}");
            assert!(m("**/*", &joined), "**/* matches every file: {joined}");
            let stars = vec!["*"; depth].join("/");
            assert!(m(&stars, &joined), "{stars} vs {joined}");
            let fewer = vec!["*"; depth - 1].join("/");
            assert!(!m(&fewer, &joined), "{fewer:?} vs {joined}");
            // Prefixing with a directory never matches the unprefixed path.
            assert!(!m(&format!("q/{joined}"), &joined));
        }
    }

    #[test]
    fn property_matching_never_panics_on_arbitrary_patterns() {
        let mut rng = Lcg(7);
        let atoms = [
            "*", "**", "?", "[", "]", "{", "}", ",", "\\", "a", "/", "-", "^", "!", "..",
        ];
        for _ in 0..5000 {
            let len = (rng.next() % 10) as usize;
            let pattern: String = (0..len).map(|_| rng.pick(&atoms)).collect();
            let path: String = (0..len)
                .map(|_| rng.pick(&["a", "/", "b", "[", "*"]))
                .collect();
            let _ = m(&pattern, &path);
        }
    }
}
