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

/// Longest pattern accepted, in bytes. Matching costs O(pattern × path), so this bounds the
/// cost of one match; vendir configs in the wild stay far below it.
pub(super) const MAX_PATTERN_LEN: usize = 1024;
/// Most patterns in one of `includePaths`, `excludePaths`, `legalPaths`, `ignorePaths` or
/// `assetNames`.
pub(super) const MAX_PATTERNS: usize = 256;
/// Deepest `{…}` nesting accepted inside one pattern.
const MAX_BRACE_DEPTH: usize = 16;

/// A pattern refused before any matching is paid for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "pattern of {len} bytes is longer than the limit of {MAX_PATTERN_LEN}: \
         use shorter patterns or several of them"
    )]
    Length { len: usize },
    #[error("{count} patterns exceed the limit of {MAX_PATTERNS} per list")]
    Count { count: usize },
    #[error("pattern {pattern:?} nests `{{…}}` deeper than {MAX_BRACE_DEPTH} levels")]
    Nesting { pattern: String },
}

/// A doublestar v1 glob: `*` and `?` never cross `/`, a whole `**` component spans any number
/// of components (including none), `[abc]`/`[a-z]`/`[^a]`/`[!a]` classes, `{a,b}`
/// alternatives within a component, `\` escapes. Unlike shells, `*` matches a leading dot.
///
/// A pattern is compiled once into one small automaton per component (Thompson's
/// construction: alternatives become branches, never a cross product of their expansions), and
/// matching simulates the automata with state sets. A match therefore costs
/// O(pattern length × path length) whatever the pattern, with no recursion: the hostile
/// patterns that made the backtracking and brace-expanding matcher overflow its stack or spin
/// (`{a,{a,{a,…}}}`, `{a,b}{a,b}{a,b}…`, `**/**/**/…/x`, `*a*a*a*…b`) are no costlier than
/// any other pattern of their length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// Cleaned components; `None` when cleaning climbs out of the root (`../x`): such a pattern
    /// can only name files outside the content and so matches nothing.
    components: Option<Vec<Component>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    /// `**`: zero or more whole components.
    AnyDepth,
    Pattern(Nfa),
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(PatternError::Length { len: pattern.len() });
        }
        let components = match clean(pattern) {
            None => None,
            Some(parts) => Some(
                parts
                    .iter()
                    .map(|part| match part.as_str() {
                        "**" => Ok(Component::AnyDepth),
                        other => Nfa::compile(other.as_bytes())
                            .map(Component::Pattern)
                            .ok_or_else(|| PatternError::Nesting {
                                pattern: pattern.to_owned(),
                            }),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Glob { components })
    }

    /// Compiles a list of patterns, refusing more than [`MAX_PATTERNS`].
    pub fn compile_all(patterns: &[String]) -> Result<Vec<Glob>, PatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(PatternError::Count {
                count: patterns.len(),
            });
        }
        patterns.iter().map(|p| Glob::new(p)).collect()
    }

    /// Whether `path` (relative, `/`-separated) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(pattern) = &self.components else {
            return false;
        };
        let names: Vec<&[u8]> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::as_bytes)
            .collect();
        // reach[i]: the pattern's first i components can match the names consumed so far.
        let mut reach = vec![false; pattern.len() + 1];
        reach[0] = true;
        close_any_depth(pattern, &mut reach);
        let mut next = vec![false; pattern.len() + 1];
        let mut scratch = NfaScratch::default();
        for name in &names {
            next.iter_mut().for_each(|r| *r = false);
            for (i, component) in pattern.iter().enumerate() {
                if !reach[i] {
                    continue;
                }
                match component {
                    // `**` stays where it is and eats this name.
                    Component::AnyDepth => next[i] = true,
                    Component::Pattern(nfa) => {
                        if nfa.matches(name, &mut scratch) {
                            next[i + 1] = true;
                        }
                    }
                }
            }
            close_any_depth(pattern, &mut next);
            std::mem::swap(&mut reach, &mut next);
            if !reach.iter().any(|&r| r) {
                return false;
            }
        }
        reach[pattern.len()]
    }
}

/// A `**` may also match no component at all: wherever one is reached, so is what follows it.
fn close_any_depth(pattern: &[Component], reach: &mut [bool]) {
    for (i, component) in pattern.iter().enumerate() {
        if reach[i] && *component == Component::AnyDepth {
            reach[i + 1] = true;
        }
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

/// One component's pattern as a nondeterministic automaton over bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nfa {
    states: Vec<State>,
    start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Consumes one byte for which the test holds, then goes to `next`.
    Byte(ByteTest, usize),
    /// Goes to every listed state without consuming anything.
    Split(Vec<usize>),
    Accept,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ByteTest {
    Is(u8),
    Any,
    /// `[…]`: inclusive ranges, possibly negated.
    Class {
        ranges: Vec<(u8, u8)>,
        negated: bool,
    },
    /// A malformed class: doublestar reports a bad pattern, which never matches.
    Never,
}

impl ByteTest {
    fn accepts(&self, b: u8) -> bool {
        match self {
            ByteTest::Is(c) => *c == b,
            ByteTest::Any => true,
            ByteTest::Class { ranges, negated } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&b)) != *negated
            }
            ByteTest::Never => false,
        }
    }
}

/// The parsed form of a component: a sequence of items, alternatives nested inside.
enum Item {
    Byte(ByteTest),
    Star,
    Alternatives(Vec<Vec<Item>>),
}

#[derive(Default)]
struct NfaScratch {
    current: Vec<usize>,
    next: Vec<usize>,
    seen: Vec<u32>,
    generation: u32,
    stack: Vec<usize>,
}

impl Nfa {
    /// `None` when braces nest deeper than [`MAX_BRACE_DEPTH`].
    fn compile(pattern: &[u8]) -> Option<Nfa> {
        let items = parse_sequence(pattern, 0)?;
        let mut nfa = Nfa {
            states: vec![State::Accept],
            start: 0,
        };
        nfa.start = nfa.build(&items, 0);
        Some(nfa)
    }

    /// Adds states for `items` followed by `next`; returns the entry state. Builds back to
    /// front, so every state's successors exist when it is created.
    fn build(&mut self, items: &[Item], next: usize) -> usize {
        let mut next = next;
        for item in items.iter().rev() {
            next = match item {
                Item::Byte(test) => self.push(State::Byte(test.clone(), next)),
                Item::Star => {
                    // loop: either leave, or consume any byte and come back.
                    let split = self.push(State::Split(Vec::new()));
                    let any = self.push(State::Byte(ByteTest::Any, split));
                    self.states[split] = State::Split(vec![next, any]);
                    split
                }
                Item::Alternatives(alternatives) => {
                    let entries = alternatives
                        .iter()
                        .map(|alternative| self.build(alternative, next))
                        .collect();
                    self.push(State::Split(entries))
                }
            };
        }
        next
    }

    fn push(&mut self, state: State) -> usize {
        self.states.push(state);
        self.states.len() - 1
    }

    fn matches(&self, name: &[u8], scratch: &mut NfaScratch) -> bool {
        scratch.seen.clear();
        scratch.seen.resize(self.states.len(), 0);
        scratch.generation = 0;
        scratch.current.clear();
        self.add(self.start, scratch, true);
        for &b in name {
            if scratch.current.is_empty() {
                return false;
            }
            scratch.generation += 1;
            scratch.next.clear();
            let current = std::mem::take(&mut scratch.current);
            for &state in &current {
                if let State::Byte(test, next) = &self.states[state]
                    && test.accepts(b)
                {
                    self.add(*next, scratch, false);
                }
            }
            scratch.current = current;
            std::mem::swap(&mut scratch.current, &mut scratch.next);
        }
        scratch
            .current
            .iter()
            .any(|&s| self.states[s] == State::Accept)
    }

    /// Adds `state` and everything reachable from it without consuming a byte (an explicit
    /// stack: no recursion however the pattern nests).
    fn add(&self, state: usize, scratch: &mut NfaScratch, first: bool) {
        let mark = scratch.generation + 1;
        scratch.stack.push(state);
        while let Some(s) = scratch.stack.pop() {
            if scratch.seen[s] == mark {
                continue;
            }
            scratch.seen[s] = mark;
            match &self.states[s] {
                State::Split(targets) => scratch.stack.extend(targets.iter().rev()),
                _ if first => scratch.current.push(s),
                _ => scratch.next.push(s),
            }
        }
    }
}

/// Parses a component pattern (or one alternative of a `{…}` group) into items. `None` when
/// braces nest too deeply.
fn parse_sequence(pattern: &[u8], depth: usize) -> Option<Vec<Item>> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' => {
                items.push(Item::Star);
                i += 1;
            }
            b'?' => {
                items.push(Item::Byte(ByteTest::Any));
                i += 1;
            }
            b'\\' if i + 1 < pattern.len() => {
                items.push(Item::Byte(ByteTest::Is(pattern[i + 1])));
                i += 2;
            }
            b'[' => {
                let (test, len) = parse_class(&pattern[i..]);
                items.push(Item::Byte(test));
                i += len;
            }
            b'{' => match brace_group(&pattern[i..]) {
                Some((alternatives, len)) => {
                    if depth >= MAX_BRACE_DEPTH {
                        return None;
                    }
                    let parsed = alternatives
                        .into_iter()
                        .map(|alternative| parse_sequence(alternative, depth + 1))
                        .collect::<Option<Vec<_>>>()?;
                    items.push(Item::Alternatives(parsed));
                    i += len;
                }
                // An unterminated brace is literal, as the matcher always treated it.
                None => {
                    items.push(Item::Byte(ByteTest::Is(b'{')));
                    i += 1;
                }
            },
            c => {
                items.push(Item::Byte(ByteTest::Is(c)));
                i += 1;
            }
        }
    }
    Some(items)
}

/// The alternatives of the `{…}` group that starts `pattern` (split at top-level commas,
/// escapes honoured) and the group's length; `None` when it is never closed.
fn brace_group(pattern: &[u8]) -> Option<(Vec<&[u8]>, usize)> {
    let mut depth = 0usize;
    let mut alternatives = Vec::new();
    let mut start = 1;
    let mut j = 0;
    while j < pattern.len() {
        match pattern[j] {
            b'\\' => j += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    alternatives.push(&pattern[start..j]);
                    return Some((alternatives, j + 1));
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
    None
}

/// The class at the start of `pattern` (`[` included) and its length. `]` right after `[` (or
/// after the negation) is a member; a class that is never closed matches nothing.
fn parse_class(pattern: &[u8]) -> (ByteTest, usize) {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'^' | b'!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    let escaped = |i: &mut usize| -> Option<u8> {
        match pattern.get(*i)? {
            b'\\' => {
                *i += 1;
                pattern.get(*i).copied()
            }
            &other => Some(other),
        }
    };
    loop {
        match pattern.get(i) {
            None => return (ByteTest::Never, pattern.len()),
            Some(b']') if !first => break,
            Some(_) => {}
        }
        let Some(lo) = escaped(&mut i) else {
            return (ByteTest::Never, pattern.len());
        };
        first = false;
        i += 1;
        let hi = if pattern.get(i) == Some(&b'-') && pattern.get(i + 1).is_some_and(|&b| b != b']')
        {
            i += 1;
            let Some(hi) = escaped(&mut i) else {
                return (ByteTest::Never, pattern.len());
            };
            i += 1;
            hi
        } else {
            lo
        };
        ranges.push((lo, hi));
    }
    (ByteTest::Class { ranges, negated }, i + 1)
}

/// The file filter of one content, vendir's `FileFilter`.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    legal: Vec<Glob>,
}

impl PathFilter {
    pub fn new(
        include: &[String],
        exclude: &[String],
        legal: &[String],
    ) -> Result<Self, PatternError> {
        Ok(PathFilter {
            include: Glob::compile_all(include)?,
            exclude: Glob::compile_all(exclude)?,
            legal: Glob::compile_all(legal)?,
        })
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
pub(super) fn prune_empty_dirs(dir: &Path) -> Result<bool, FilterError> {
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
    #[error(
        "newRootPath {path:?} passes through the symlink {link:?}; a new root must be a real \
         directory of the fetched contents"
    )]
    NewRootSymlink { path: String, link: String },
    #[error(transparent)]
    Pattern(#[from] PatternError),
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
pub(super) fn apply_new_root(
    root: &Path,
    new_root: &str,
    scratch: &Path,
) -> Result<(), FilterError> {
    let Some(components) = clean(new_root).filter(|c| !c.is_empty()) else {
        return Err(FilterError::BadNewRoot(new_root.to_owned()));
    };
    // Walk the new root one component at a time without following links: a symlink on the
    // way (`deploy -> ../../other-tenant`) would make the rename below move a directory from
    // outside the contents into them.
    let mut source = root.to_owned();
    for (i, component) in components.iter().enumerate() {
        source.push(component);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(FilterError::NewRootSymlink {
                    path: new_root.to_owned(),
                    link: components[..=i].join("/"),
                });
            }
            Ok(meta) if meta.is_dir() => {}
            _ => return Err(no_new_root(&source, root, new_root)),
        }
    }
    // Move the new root aside first: it lives inside the directory it replaces.
    fs::rename(&source, scratch).map_err(|e| FilterError::io(&source, e))?;
    fs::remove_dir_all(root).map_err(|e| FilterError::io(root, e))?;
    fs::rename(scratch, root).map_err(|e| FilterError::io(root, e))?;
    Ok(())
}

/// Names the directories next to a missing new root, so a typo is obvious.
fn no_new_root(source: &Path, root: &Path, new_root: &str) -> FilterError {
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
    FilterError::NoNewRoot {
        path: new_root.to_owned(),
        hint,
    }
}

/// vendir's `ignorePaths`: files of the existing contents directory matching `patterns` are
/// copied over the freshly fetched contents, so they survive the sync.
pub(super) fn copy_ignored(
    existing: &Path,
    staged: &Path,
    patterns: &[String],
) -> Result<(), FilterError> {
    if patterns.is_empty() || !existing.is_dir() {
        return Ok(());
    }
    let globs = Glob::compile_all(patterns)?;
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
        Glob::new(pattern).expect("pattern").matches(path)
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
        let filter = PathFilter::new(&["deploy/*".to_owned()], &["LICENSE".to_owned()], &legal)
            .expect("patterns");
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
            .expect("patterns")
            .apply(&root)
            .expect("filter");
        assert!(!root.join("a").exists());
        assert!(root.join("keep/y.yaml").exists());
        let err = PathFilter::new(&["nothing".to_owned()], &[], &[])
            .expect("patterns")
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

    #[test]
    fn hostile_patterns_are_refused_or_cheap() {
        // Deep nesting: refused by name, never a stack overflow.
        let nested = format!("{}a{}", "{a,".repeat(200), "}".repeat(200));
        assert!(matches!(
            Glob::new(&nested),
            Err(PatternError::Nesting { .. })
        ));
        assert!(matches!(
            Glob::new(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::Length { .. })
        ));
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("f{i}")).collect();
        assert!(matches!(
            PathFilter::new(&many, &[], &[]),
            Err(PatternError::Count { .. })
        ));
        // 2^40 expansions and exponential backtracking for the old matcher; a few thousand
        // automaton steps each here.
        let groups = "{a,b}".repeat(40);
        assert!(m(&groups, &"ab".repeat(20)));
        assert!(!m(&groups, &"ab".repeat(21)));
        let stars = "*a".repeat(100) + "b";
        assert!(!m(&stars, &"a".repeat(500)));
        assert!(m(&stars, &("a".repeat(500) + "b")));
        let deep = "**/".repeat(200) + "x";
        assert!(!m(&deep, &"d/".repeat(200)));
        assert!(m(&deep, &("d/".repeat(200) + "x")));
    }

    #[test]
    fn new_root_never_follows_a_symlink_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("c");
        let outside = dir.path().join("other-tenant");
        fs::create_dir_all(outside.join("secrets")).expect("mkdir");
        fs::write(outside.join("secrets/key"), "k").expect("write");
        fs::create_dir_all(&root).expect("mkdir");
        std::os::unix::fs::symlink("../other-tenant", root.join("deploy")).expect("symlink");
        for new_root in ["deploy", "deploy/secrets", "./deploy/"] {
            let err = apply_new_root(&root, new_root, &dir.path().join("s")).expect_err(new_root);
            assert!(
                matches!(&err, FilterError::NewRootSymlink { link, .. } if link == "deploy"),
                "{new_root}: {err}"
            );
        }
        assert_eq!(
            fs::read_to_string(outside.join("secrets/key")).expect("still there"),
            "k"
        );
        assert!(root.join("deploy").symlink_metadata().is_ok());
    }

    /// The matcher before it was compiled to automata: brace expansion and backtracking.
    /// Exponential on hostile patterns, but the reference for the semantics on small ones.
    mod reference {
        pub(super) fn matches(pattern: &str, path: &str) -> bool {
            let Some(pattern) = super::clean(pattern) else {
                return false;
            };
            let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            let pattern: Vec<&str> = pattern.iter().map(String::as_str).collect();
            components(&pattern, &names)
        }

        fn components(pattern: &[&str], names: &[&str]) -> bool {
            match pattern.split_first() {
                None => names.is_empty(),
                Some((&"**", rest)) => {
                    (0..=names.len()).any(|skip| components(rest, &names[skip..]))
                }
                Some((first, rest)) => match names.split_first() {
                    Some((name, names_rest)) => {
                        expand(first)
                            .iter()
                            .any(|p| wildcard(p.as_bytes(), name.as_bytes()))
                            && components(rest, names_rest)
                    }
                    None => false,
                },
            }
        }

        fn expand(pattern: &str) -> Vec<String> {
            let Some(open) = pattern.find('{') else {
                return vec![pattern.to_owned()];
            };
            let bytes = pattern.as_bytes();
            let (mut depth, mut start, mut alternatives) = (0, open + 1, Vec::new());
            for j in open..bytes.len() {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            alternatives.push(&pattern[start..j]);
                            let (prefix, suffix) = (&pattern[..open], &pattern[j + 1..]);
                            return alternatives
                                .iter()
                                .flat_map(|alt| expand(&format!("{prefix}{alt}{suffix}")))
                                .collect();
                        }
                    }
                    b',' if depth == 1 => {
                        alternatives.push(&pattern[start..j]);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            vec![pattern.to_owned()]
        }

        fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
            match pattern.split_first() {
                None => name.is_empty(),
                Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
                Some((b'?', rest)) => !name.is_empty() && wildcard(rest, &name[1..]),
                Some((b'[', _)) => {
                    let close = pattern
                        .iter()
                        .position(|&b| b == b']')
                        .expect("closed class");
                    let (class, rest) = (&pattern[1..close], &pattern[close + 1..]);
                    let (negated, class) = match class.split_first() {
                        Some((b'^' | b'!', c)) => (true, c),
                        _ => (false, class),
                    };
                    name.split_first().is_some_and(|(&c, name_rest)| {
                        class.contains(&c) != negated && wildcard(rest, name_rest)
                    })
                }
                Some((&c, rest)) => name.first() == Some(&c) && wildcard(rest, &name[1..]),
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Patterns of the shapes the reference understands: literals, `*`, `?`, simple classes,
        /// `{…}` groups, `**` components.
        fn component() -> impl Strategy<Value = String> {
            let atom = prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just(".".to_owned()),
                Just("*".to_owned()),
                Just("?".to_owned()),
                Just("[ab]".to_owned()),
                Just("[^a]".to_owned()),
            ];
            let group = prop::collection::vec(prop::collection::vec(atom.clone(), 0..3), 1..4)
                .prop_map(|alts| {
                    let alts: Vec<String> = alts.into_iter().map(|a| a.concat()).collect();
                    format!("{{{}}}", alts.join(","))
                });
            prop::collection::vec(prop_oneof![4 => atom, 1 => group], 1..5).prop_map(|v| v.concat())
        }

        fn pattern() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![4 => component(), 1 => Just("**".to_owned())],
                1..4,
            )
            .prop_map(|c| c.join("/"))
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec("[ab.]{0,5}", 1..4).prop_map(|c| c.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn automata_agree_with_the_reference(pattern in pattern(), path in path()) {
                prop_assert_eq!(
                    m(&pattern, &path),
                    reference::matches(&pattern, &path),
                    "pattern {:?} path {:?}", pattern, path
                );
            }

            #[test]
            fn any_pattern_compiles_or_is_refused_and_never_panics(
                pattern in "[*?\\[\\]{},a/!^\\\\.-]{0,64}",
                path in "[a/\\[*.]{0,32}",
            ) {
                if let Ok(glob) = Glob::new(&pattern) {
                    let _ = glob.matches(&path);
                }
            }
        }
    }
}
