//! Version selection shared by vendir, kbld and kapp-controller, and the semver range syntax
//! their `constraints` strings use.
//!
//! Upstream: vendir `pkg/vendir/versions/v1alpha1/config.go` (`VersionSelection`), which
//! kapp-controller and kbld import; ranges are parsed with `github.com/blang/semver`
//! `ParseRange`.

use std::cmp::Ordering;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `{semver: {constraints, prereleases: {identifiers}}}`: how to choose a tag or ref.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSelection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<VersionSelectionSemver>,
}

/// Semver strategy: the highest version matching `constraints`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSelectionSemver {
    /// A range such as `>1.0.0 <3.0.0 || 4.x` (blang/semver syntax).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub constraints: String,
    /// Present (even empty) to consider prerelease versions at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prereleases: Option<VersionSelectionSemverPrereleases>,
}

/// Restricts prereleases to those carrying one of `identifiers` (all when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSelectionSemverPrereleases {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<String>,
}

/// A semver range in blang/semver's syntax, as vendir and kapp-controller read `constraints`.
///
/// Comparators (`=`, `==`, none, `!=`, `!`, `>`, `>=`, `<`, `<=`) followed by a strict
/// `MAJOR.MINOR.PATCH[-pre][+build]`, an operator may be separated from its version by spaces;
/// space-separated comparators are ANDed; ` || ` separates ORed alternatives. An `x` wildcard
/// (`1.x`, `1.2.x`, `1.x.x`) expands like blang does for the common cases (`1.x` is
/// `>=1.0.0 <2.0.0`, `>1.2.x` is `>=1.3.0`); blang's quirks with wildcards in other
/// positions are not reproduced. Matching ignores build metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRange {
    source: String,
    alternatives: Vec<Vec<Comparator>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparator {
    op: Op,
    version: semver::Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// Why a constraints string is not a valid range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid semver range {range:?}: {reason}")]
pub struct RangeError {
    pub range: String,
    pub reason: String,
}

impl VersionRange {
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let fail = |reason: String| RangeError {
            range: text.to_owned(),
            reason,
        };
        let mut alternatives = Vec::new();
        let mut current = Vec::new();
        for token in tokens(text) {
            if token == "||" {
                if current.is_empty() {
                    return Err(fail("`||` needs a range on both sides".to_owned()));
                }
                alternatives.push(std::mem::take(&mut current));
                continue;
            }
            current.extend(comparators(&token).map_err(fail)?);
        }
        if current.is_empty() {
            return Err(fail(if alternatives.is_empty() {
                "empty range; write e.g. \">=1.0.0\"".to_owned()
            } else {
                "`||` needs a range on both sides".to_owned()
            }));
        }
        alternatives.push(current);
        Ok(VersionRange {
            source: text.to_owned(),
            alternatives,
        })
    }

    pub fn matches(&self, version: &semver::Version) -> bool {
        self.alternatives
            .iter()
            .any(|all| all.iter().all(|c| c.matches(version)))
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for VersionRange {
    type Err = RangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionRange::parse(s)
    }
}

impl Comparator {
    fn matches(&self, version: &semver::Version) -> bool {
        let ordering = version.cmp_precedence(&self.version);
        match self.op {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Gt => ordering == Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
            Op::Lt => ordering == Ordering::Less,
            Op::Le => ordering != Ordering::Greater,
        }
    }
}

/// Splits on spaces, keeping an operator together with a version written after a space
/// (`>= 1.0.0`), like blang's `splitAndTrim`.
fn tokens(text: &str) -> Vec<String> {
    let mut result: Vec<String> = Vec::new();
    let mut pending_operator = false;
    for word in text.split_whitespace() {
        if pending_operator {
            if let Some(last) = result.last_mut() {
                last.push_str(word);
            }
        } else {
            result.push(word.to_owned());
        }
        pending_operator = word.ends_with(['>', '<', '=', '!']);
    }
    result
}

fn comparators(token: &str) -> Result<Vec<Comparator>, String> {
    let split = token
        .find(|c: char| c.is_ascii_digit())
        .ok_or_else(|| format!("{token:?} has no version number"))?;
    let (op_text, version_text) = token.split_at(split);
    let op = match op_text {
        "" | "=" | "==" => Op::Eq,
        "!" | "!=" => Op::Ne,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "<" => Op::Lt,
        "<=" => Op::Le,
        other if other.ends_with(['v', 'V']) => {
            return Err(format!(
                "{token:?}: versions in a range are written without a leading 'v'"
            ));
        }
        other => {
            return Err(format!(
                "unknown operator {other:?} in {token:?} (use =, !=, >, >=, <, <=)"
            ));
        }
    };

    let parts: Vec<&str> = version_text.split('.').collect();
    let wildcard = |p: &&str| matches!(*p, "x" | "X" | "*");
    let Some(first_wildcard) = parts.iter().position(wildcard) else {
        let version = semver::Version::parse(version_text).map_err(|e| {
            format!(
                "{version_text:?} in {token:?} is not a MAJOR.MINOR.PATCH version ({e}); \
                 no leading 'v'"
            )
        })?;
        return Ok(vec![Comparator { op, version }]);
    };
    if first_wildcard == 0
        || parts.len() > 3
        || !parts[first_wildcard..].iter().all(wildcard)
        || parts[..first_wildcard]
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{version_text:?} in {token:?} is not a version or a wildcard such as 1.x or 1.2.x"
        ));
    }
    let number = |i: usize| -> Result<u64, String> {
        parts
            .get(i)
            .filter(|_| i < first_wildcard)
            .map_or(Ok(0), |p| p.parse().map_err(|e| format!("{p:?}: {e}")))
    };
    let floor = semver::Version::new(number(0)?, number(1)?, 0);
    // The first version past the wildcard's span: 1.x -> 2.0.0, 1.2.x -> 1.3.0.
    let ceiling = if first_wildcard == 1 {
        semver::Version::new(floor.major + 1, 0, 0)
    } else {
        semver::Version::new(floor.major, floor.minor + 1, 0)
    };
    let at = |op, version: &semver::Version| Comparator {
        op,
        version: version.clone(),
    };
    Ok(match op {
        Op::Eq => vec![at(Op::Ge, &floor), at(Op::Lt, &ceiling)],
        Op::Gt => vec![at(Op::Ge, &ceiling)],
        Op::Ge => vec![at(Op::Ge, &floor)],
        Op::Lt => vec![at(Op::Lt, &floor)],
        Op::Le => vec![at(Op::Lt, &ceiling)],
        Op::Ne => {
            return Err(format!(
                "{token:?}: a wildcard cannot be negated; write \"<{floor} || >={ceiling}\""
            ));
        }
    })
}

/// A tag or version as vendir, kbld and kapp-controller read candidates: strict semver, one
/// leading `v` allowed (`v1.2.3` is 1.2.3). Anything else is not a version and is skipped.
pub fn parse_version(text: &str) -> Option<semver::Version> {
    semver::Version::parse(text)
        .ok()
        .or_else(|| semver::Version::parse(text.strip_prefix('v')?).ok())
}

/// Which prerelease versions are candidates at all.
#[derive(Debug, Clone, Copy)]
pub enum Prereleases<'a> {
    /// None (vendir's default: `semver.prereleases` absent).
    Excluded,
    /// Those carrying one of these identifiers (`prereleases.identifiers`), or every one when
    /// the list is empty.
    Allowed(&'a [String]),
}

impl Prereleases<'_> {
    fn admit(self, version: &semver::Version) -> bool {
        if version.pre.is_empty() {
            return true;
        }
        match self {
            Prereleases::Excluded => false,
            Prereleases::Allowed([]) => true,
            Prereleases::Allowed(identifiers) => version
                .pre
                .split('.')
                .any(|part| identifiers.iter().any(|i| i == part)),
        }
    }
}

/// The one "highest version" rule every selection in packsmith uses (git tags, registry tags,
/// GitHub releases, `versionFrom`):
///
/// - a candidate that [`parse_version`] rejects is skipped;
/// - prereleases are admitted as `prereleases` says;
/// - `range` (when given) must match, ignoring build metadata, as blang/semver does;
/// - the highest by semver precedence wins (build metadata does not count). Candidates of equal
///   precedence (`1.0.0+a`, `1.0.0+b`, `v1.0.0`) are ordered by semver's total order and then by
///   their text, so the answer never depends on the order the candidates came in.
///
/// Returns the candidate as written, with its parsed version.
pub fn highest<'t>(
    candidates: impl IntoIterator<Item = &'t str>,
    range: Option<&VersionRange>,
    prereleases: Prereleases<'_>,
) -> Option<(&'t str, semver::Version)> {
    candidates
        .into_iter()
        .filter_map(|text| Some((text, parse_version(text)?)))
        .filter(|(_, version)| prereleases.admit(version))
        .filter(|(_, version)| range.is_none_or(|r| r.matches(version)))
        .max_by(|(a_text, a), (b_text, b)| {
            a.cmp_precedence(b)
                .then_with(|| a.cmp(b))
                .then_with(|| a_text.cmp(b_text))
        })
}

/// Why a [`VersionSelection`] chose nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("a version selection needs `semver.constraints`")]
    MissingSemver,
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error("no version among {candidates} candidates satisfies {constraints:?}")]
    NoMatch {
        constraints: String,
        candidates: usize,
    },
}

impl VersionSelection {
    /// vendir's `HighestConstrainedVersion`: the highest candidate `semver.constraints` allows,
    /// prereleases only when `semver.prereleases` is present (see [`highest`]).
    pub fn highest<'t>(
        &self,
        candidates: impl IntoIterator<Item = &'t str>,
    ) -> Result<&'t str, SelectionError> {
        let semver = self.semver.as_ref().ok_or(SelectionError::MissingSemver)?;
        let range = VersionRange::parse(&semver.constraints)?;
        let prereleases = match &semver.prereleases {
            None => Prereleases::Excluded,
            Some(p) => Prereleases::Allowed(&p.identifiers),
        };
        let mut count = 0;
        let counted = candidates.into_iter().inspect(|_| count += 1);
        match highest(counted, Some(&range), prereleases) {
            Some((text, _)) => Ok(text),
            None => Err(SelectionError::NoMatch {
                constraints: semver.constraints.clone(),
                candidates: count,
            }),
        }
    }
}

/// `{semver: {constraints, prereleases: {identifiers}}}` for tests.
#[cfg(test)]
pub(crate) fn test_selection(constraints: &str, pre: Option<&[&str]>) -> VersionSelection {
    VersionSelection {
        semver: Some(VersionSelectionSemver {
            constraints: constraints.to_owned(),
            prereleases: pre.map(|ids| VersionSelectionSemverPrereleases {
                identifiers: ids.iter().map(|s| (*s).to_owned()).collect(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> semver::Version {
        semver::Version::parse(text).expect("test version")
    }

    #[test]
    fn ranges_combine_and_or() {
        let range = VersionRange::parse(">1.0.0 <2.0.0 || >=3.0.0 !=3.1.0").expect("parse");
        assert!(range.matches(&v("1.5.0")));
        assert!(!range.matches(&v("2.0.0")));
        assert!(range.matches(&v("3.0.0")));
        assert!(!range.matches(&v("3.1.0")));
        assert!(range.matches(&v("3.1.0+build.1")) == range.matches(&v("3.1.0")));
    }

    #[test]
    fn operators_may_be_spaced_and_wildcards_expand() {
        let range = VersionRange::parse(">= 1.2.0 < 1.x").expect("parse");
        assert!(!range.matches(&v("1.3.0")));
        let range = VersionRange::parse("1.x").expect("parse");
        assert!(range.matches(&v("1.9.9")));
        assert!(!range.matches(&v("2.0.0")));
        let range = VersionRange::parse(">1.2.x").expect("parse");
        assert!(!range.matches(&v("1.2.9")));
        assert!(range.matches(&v("1.3.0")));
    }

    #[test]
    fn bad_ranges_explain_themselves() {
        for (text, hint) in [
            ("", "empty range"),
            ("v1.0.0", "without a leading 'v'"),
            (">1.0", "MAJOR.MINOR.PATCH"),
            ("~>1.0.0", "unknown operator"),
            ("|| >1.0.0", "both sides"),
            ("!=1.x", "cannot be negated"),
        ] {
            let error = VersionRange::parse(text).expect_err(text).to_string();
            assert!(error.contains(hint), "{text:?}: {error}");
        }
    }

    use super::test_selection as selection;

    #[test]
    fn highest_follows_vendir_on_prereleases_and_prefixes() {
        let tags = [
            "v0.1.0",
            "v0.2.0-pre.20",
            "v0.2.0+build.1",
            "v0.2.1",
            "latest",
            "0.3.0-rc.1",
        ];
        assert_eq!(selection(">=0.1.0", None).highest(tags), Ok("v0.2.1"));
        assert_eq!(
            selection(">=0.1.0", Some(&[])).highest(tags),
            Ok("0.3.0-rc.1")
        );
        assert_eq!(
            selection(">=0.1.0", Some(&["pre"])).highest(tags),
            Ok("v0.2.1")
        );
        assert_eq!(
            selection(">=1.0.0", None).highest(tags),
            Err(SelectionError::NoMatch {
                constraints: ">=1.0.0".to_owned(),
                candidates: 6
            })
        );
        assert_eq!(
            VersionSelection::default().highest(tags),
            Err(SelectionError::MissingSemver)
        );
    }

    #[test]
    fn equal_precedence_never_depends_on_input_order() {
        let forward = ["1.0.0+b", "v1.0.0", "1.0.0+a", "1.0.0"];
        let mut backward = forward;
        backward.reverse();
        let a = highest(forward, None, Prereleases::Excluded).map(|(t, _)| t);
        let b = highest(backward, None, Prereleases::Excluded).map(|(t, _)| t);
        assert_eq!(a, b);
        assert_eq!(a, Some("1.0.0+b"));
        // Build metadata never beats a higher patch.
        assert_eq!(
            highest(["1.0.1", "1.0.0+zzz"], None, Prereleases::Excluded).map(|(t, _)| t),
            Some("1.0.1")
        );
    }
}
