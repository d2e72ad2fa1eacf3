//! kbld's search rules: which values of a document are image references.
//!
//! Upstream: kbld `pkg/kbld/search/{fields,rule_matcher,image_refs}.go`,
//! `pkg/kbld/resources/path.go`, `pkg/kbld/config/conf.go`. The details that matter and are
//! easy to get wrong:
//!
//! - every map entry and every array element is offered to the rules with its full path from
//!   the document root; the first matching rule decides;
//! - a matched value is searched further unless its strategy consumed it: a string under
//!   `entireValue`, a string that decoded under `json`/`yaml` (so `image: {repository: …}`
//!   is descended into, and so is a value under `none`);
//! - `json`/`yaml` search the decoded value with the nested rules only (no default rule);
//! - rules are all configs' `keys` first, then all their `searchRules`, duplicates dropped,
//!   then the default rule (any key named `image`).

use serde_json::Value;

use crate::carvel::kbld::{Config, KeyMatcher, PathPart, SearchRule, UpdateStrategy};

use super::reference::url_repo;
use super::yaml::{YamlLimits, parse_stream};

/// One step from the document root to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The effective rule list of a set of kbld configs, default rule last.
pub fn effective_rules<'a>(
    configs: impl IntoIterator<Item = &'a Config> + Clone,
) -> Vec<SearchRule> {
    let mut rules = rules_without_defaults(configs);
    push_unique(&mut rules, default_rule());
    rules
}

/// kbld's `SearchRulesWithoutDefaults`: `keys` of every config, then `searchRules`.
pub(super) fn rules_without_defaults<'a>(
    configs: impl IntoIterator<Item = &'a Config> + Clone,
) -> Vec<SearchRule> {
    let mut rules = Vec::new();
    for config in configs.clone() {
        for key in &config.keys {
            push_unique(&mut rules, name_rule(key));
        }
    }
    for config in configs {
        for rule in &config.search_rules {
            push_unique(&mut rules, rule.clone());
        }
    }
    rules
}

fn push_unique(rules: &mut Vec<SearchRule>, rule: SearchRule) {
    if !rules.contains(&rule) {
        rules.push(rule);
    }
}

fn name_rule(name: &str) -> SearchRule {
    SearchRule {
        key_matcher: Some(KeyMatcher {
            name: name.to_owned(),
            path: Vec::new(),
        }),
        value_matcher: None,
        update_strategy: None,
    }
}

/// Any map key named `image`, anywhere.
pub fn default_rule() -> SearchRule {
    name_rule("image")
}

/// What to do with a matched value.
enum Strategy<'r> {
    None,
    EntireValue,
    Json(&'r [SearchRule]),
    Yaml(&'r [SearchRule]),
}

fn strategy(rule: &SearchRule) -> Strategy<'_> {
    match &rule.update_strategy {
        Some(UpdateStrategy { none: Some(_), .. }) => Strategy::None,
        Some(UpdateStrategy {
            json: Some(nested), ..
        }) => Strategy::Json(&nested.search_rules),
        Some(UpdateStrategy {
            yaml: Some(nested), ..
        }) => Strategy::Yaml(&nested.search_rules),
        // `entireValue`, no strategy, and `updateStrategy: {}` (on which kbld panics).
        _ => Strategy::EntireValue,
    }
}

/// Calls `visit` with every image reference of `document` under `rules`. When `visit`
/// returns a replacement the value is rewritten in place (a JSON/YAML string value holding
/// it is re-encoded, as kbld does); discovery returns `None` and the document stays as read.
pub(super) fn visit_images(
    document: &mut Value,
    rules: &[SearchRule],
    limits: &YamlLimits,
    visit: &mut dyn FnMut(&str) -> Option<String>,
) {
    Searcher {
        rules,
        limits,
        visit,
        replaced: 0,
    }
    .walk(document, None);
}

/// The path from the document root, as a list linked through the walk's stack frames: each
/// step borrows its key from the map being walked, so nothing is copied per entry.
struct PathNode<'p> {
    step: Step<'p>,
    parent: Option<&'p PathNode<'p>>,
    len: usize,
}

impl<'p> PathNode<'p> {
    /// Steps from the last to the first.
    fn rev_steps(&self) -> impl Iterator<Item = Step<'p>> + '_ {
        std::iter::successors(Some(self), |node| node.parent).map(|node| node.step)
    }
}

struct Searcher<'r, 'v> {
    rules: &'r [SearchRule],
    limits: &'r YamlLimits,
    visit: &'v mut dyn FnMut(&str) -> Option<String>,
    /// Values replaced so far. A JSON or YAML string is re-encoded only when something in it
    /// was (kbld re-encodes it regardless), so discovery leaves documents exactly as read.
    replaced: usize,
}

impl Searcher<'_, '_> {
    fn walk(&mut self, value: &mut Value, parent: Option<&PathNode<'_>>) {
        let len = parent.map_or(1, |p| p.len + 1);
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    let node = PathNode {
                        step: Step::Key(key),
                        parent,
                        len,
                    };
                    self.offer(child, &node);
                }
            }
            Value::Array(items) => {
                for (index, child) in items.iter_mut().enumerate() {
                    let node = PathNode {
                        step: Step::Index(index),
                        parent,
                        len,
                    };
                    self.offer(child, &node);
                }
            }
            _ => {}
        }
    }

    fn offer(&mut self, value: &mut Value, path: &PathNode<'_>) {
        let matched = self
            .rules
            .iter()
            .find(|rule| rule_matches(rule, path, value));
        let consumed = match matched {
            Some(rule) => self.apply(strategy(rule), value),
            None => false,
        };
        if !consumed {
            self.walk(value, Some(path));
        }
    }

    /// Whether the strategy consumed the value (kbld's "updated"), which stops the descent.
    fn apply(&mut self, strategy: Strategy<'_>, value: &mut Value) -> bool {
        match strategy {
            Strategy::None => false,
            Strategy::EntireValue => {
                let Value::String(text) = value else {
                    return false;
                };
                match (self.visit)(text) {
                    Some(replacement) => {
                        *text = replacement;
                        self.replaced += 1;
                        true
                    }
                    None => false,
                }
            }
            Strategy::Json(nested) => self.apply_json(nested, value),
            // JSON first, as kbld does: JSON is YAML, and re-encoding keeps it JSON.
            Strategy::Yaml(nested) => {
                self.apply_json(nested, value) || self.apply_yaml(nested, value)
            }
        }
    }

    fn apply_json(&mut self, nested: &[SearchRule], value: &mut Value) -> bool {
        let Value::String(text) = value else {
            return false;
        };
        let Ok(mut decoded) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        if self.search_nested(nested, &mut decoded) {
            // Serialising a Value cannot fail.
            *text = serde_json::to_string(&decoded).unwrap_or_default();
        }
        true
    }

    fn apply_yaml(&mut self, nested: &[SearchRule], value: &mut Value) -> bool {
        let Value::String(text) = value else {
            return false;
        };
        let Ok(mut documents) = parse_stream(text, self.limits) else {
            return false;
        };
        let mut replaced = false;
        for document in &mut documents {
            replaced |= self.search_nested(nested, document);
        }
        if replaced {
            let mut encoded = String::new();
            for document in &documents {
                encoded.push_str("---\n");
                encoded.push_str(&crate::carvel::yaml::value_to_go_yaml(document));
            }
            *text = encoded;
        }
        true
    }

    /// Whether anything inside was replaced.
    fn search_nested(&mut self, nested: &[SearchRule], document: &mut Value) -> bool {
        let mut inner = Searcher {
            rules: nested,
            limits: self.limits,
            visit: &mut *self.visit,
            replaced: 0,
        };
        inner.walk(document, None);
        self.replaced += inner.replaced;
        inner.replaced > 0
    }
}

fn rule_matches(rule: &SearchRule, path: &PathNode<'_>, value: &Value) -> bool {
    let key_matched = match &rule.key_matcher {
        None => true,
        Some(matcher) if !matcher.name.is_empty() => {
            matches!(path.step, Step::Key(key) if key == matcher.name)
        }
        Some(matcher) => !matcher.path.is_empty() && path_matches(&matcher.path, path),
    };
    let value_matched = match &rule.value_matcher {
        None => true,
        Some(matcher) if !matcher.image.is_empty() => value
            .as_str()
            .is_some_and(|value| same_image(&matcher.image, value)),
        Some(matcher) => {
            !matcher.image_repo.is_empty()
                && value
                    .as_str()
                    .and_then(url_repo)
                    .is_some_and(|repo| same_image(&matcher.image_repo, repo))
        }
    };
    key_matched && value_matched
}

/// kbld's value matchers compare the registry host case-insensitively (host names are, RFC
/// 1123; the rule comes from one author, the manifest from another) and the rest exactly
/// (`pkg/kbld/search/rule_matcher_test.go`).
fn same_image(rule: &str, value: &str) -> bool {
    if rule == value {
        return true;
    }
    match (rule.split_once('/'), value.split_once('/')) {
        (Some((rule_host, rule_path)), Some((host, path))) => {
            rule_host.eq_ignore_ascii_case(host) && rule_path == path
        }
        _ => false,
    }
}

/// kbld's `Path.Matches`: same length, keys equal, indexes equal or `allIndexes`.
fn path_matches(rule: &[PathPart], path: &PathNode<'_>) -> bool {
    rule.len() == path.len
        && rule
            .iter()
            .rev()
            .zip(path.rev_steps())
            .all(|(part, step)| match (part, step) {
                (PathPart::Key(want), Step::Key(key)) => want == key,
                (PathPart::Index(want), Step::Index(index)) => {
                    usize::try_from(*want).is_ok_and(|want| want == index)
                }
                (PathPart::AllIndexes, Step::Index(_)) => true,
                _ => false,
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::kbld::{NestedSearchRules, ValueMatcher};
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn found(document: Value, rules: &[SearchRule]) -> Vec<String> {
        let mut document = document;
        let mut refs = Vec::new();
        visit_images(&mut document, rules, &YamlLimits::default(), &mut |r| {
            refs.push(r.to_owned());
            None
        });
        refs.sort();
        refs
    }

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml).expect("kbld config")
    }

    #[test]
    fn default_rule_finds_image_keys_anywhere_with_string_values() {
        let document = json!({
            "spec": {"template": {"spec": {
                "containers": [{"name": "a", "image": "nginx:1.25"}],
                "initContainers": [{"image": "busybox"}],
            }}},
            "data": {"image": "custom:1"},
            "numeric": {"image": 5},
            "list": ["nginx:2"],
            "imagePullPolicy": "Always",
        });
        assert_eq!(
            found(document, &effective_rules(&[])),
            ["busybox", "custom:1", "nginx:1.25"]
        );
    }

    #[test]
    fn a_map_under_a_matched_key_is_searched_further() {
        let document = json!({"image": {"repository": "x", "image": "inner:1"}});
        assert_eq!(found(document, &effective_rules(&[])), ["inner:1"]);
    }

    #[test]
    fn keys_and_value_matchers_add_to_the_default() {
        let config = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nkeys: [sidecarImage]\nsearchRules:\n\
             - valueMatcher: {imageRepo: gcr.io/app}\n",
        );
        let document = json!({
            "sidecarImage": "envoy:1",
            "args": ["--image=gcr.io/app:1", "gcr.io/app:2", "gcr.io/other:3"],
            "image": "nginx",
        });
        assert_eq!(
            found(document, &effective_rules([&config])),
            ["envoy:1", "gcr.io/app:2", "nginx"]
        );
    }

    #[test]
    fn first_matching_rule_wins_and_none_hides_a_value() {
        let config = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher: {name: \
             image}\n  valueMatcher: {image: \"skip:me\"}\n  updateStrategy: {none: {}}\n",
        );
        let document = json!({"a": {"image": "skip:me"}, "b": {"image": "keep:me"}});
        assert_eq!(found(document, &effective_rules([&config])), ["keep:me"]);
    }

    #[test]
    fn path_matchers_are_exact_with_all_indexes() {
        let config = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher:\n    \
             path: [spec, images, {allIndexes: true}, ref]\n- keyMatcher:\n    path: [spec, \
             pinned, {index: 1}]\n",
        );
        let document = json!({"spec": {
            "images": [{"ref": "a:1"}, {"ref": "b:1"}],
            "pinned": ["no:0", "yes:1"],
            "nested": {"images": [{"ref": "c:1"}]},
        }});
        assert_eq!(
            found(document, &effective_rules([&config])),
            ["a:1", "b:1", "yes:1"]
        );
    }

    #[test]
    fn yaml_and_json_strategies_search_inside_strings_with_nested_rules_only() {
        // local-path-storage's kbld config: helperPod.yaml is a YAML document in a ConfigMap.
        let config = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher:\n    \
             name: helperPod.yaml\n  updateStrategy:\n    yaml:\n      searchRules:\n      - \
             keyMatcher:\n          name: image\n- keyMatcher:\n    name: config.json\n  \
             updateStrategy:\n    json:\n      searchRules:\n      - keyMatcher:\n          \
             name: img\n",
        );
        let document = json!({"data": {
            "helperPod.yaml": "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: h\n    image: busybox\n",
            "config.json": "{\"img\": \"json:1\", \"image\": \"not-searched:1\"}",
            "broken.yaml": "image: [",
        }});
        assert_eq!(
            found(document, &effective_rules([&config])),
            ["busybox", "json:1"]
        );
    }

    #[test]
    fn replacements_rewrite_values_and_reencode_nested_documents() {
        let rules = vec![
            SearchRule {
                key_matcher: Some(KeyMatcher {
                    name: "pod.yaml".to_owned(),
                    path: Vec::new(),
                }),
                value_matcher: None,
                update_strategy: Some(UpdateStrategy {
                    yaml: Some(NestedSearchRules {
                        search_rules: vec![default_rule()],
                    }),
                    ..UpdateStrategy::default()
                }),
            },
            default_rule(),
        ];
        let mut document = json!({"image": "a", "pod.yaml": "image: b\n"});
        visit_images(&mut document, &rules, &YamlLimits::default(), &mut |r| {
            Some(format!("{r}@sha256:x"))
        });
        assert_eq!(
            document,
            json!({"image": "a@sha256:x", "pod.yaml": "---\nimage: b@sha256:x\n"})
        );
    }

    #[test]
    fn listing_leaves_nested_documents_as_written() {
        let config = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher: {name: \
             pod.yaml}\n  updateStrategy: {yaml: {searchRules: [{keyMatcher: {name: image}}]}}\n",
        );
        let original = json!({"pod.yaml": "# comment kept\nimage:   spaced\n"});
        let mut document = original.clone();
        let mut seen = Vec::new();
        visit_images(
            &mut document,
            &effective_rules([&config]),
            &YamlLimits::default(),
            &mut |r| {
                seen.push(r.to_owned());
                None
            },
        );
        assert_eq!(seen, ["spaced"]);
        assert_eq!(document, original);
    }

    fn value_rule(image: &str, image_repo: &str) -> SearchRule {
        SearchRule {
            key_matcher: None,
            value_matcher: Some(ValueMatcher {
                image: image.to_owned(),
                image_repo: image_repo.to_owned(),
            }),
            update_strategy: None,
        }
    }

    /// kbld's `TestRuleMatcherValueMatcherCaseInsensitiveHostname`
    /// (`pkg/kbld/search/rule_matcher_test.go`), case by case.
    #[test]
    fn value_matchers_compare_the_host_case_insensitively_as_kbld() {
        let cases = [
            (
                value_rule("Docker.IO/img", ""),
                json!("docker.io/img"),
                true,
            ),
            (
                value_rule("docker.io/img", ""),
                json!("docker.io/img"),
                true,
            ),
            (
                value_rule("docker.io/IMG", ""),
                json!("docker.io/img"),
                false,
            ),
            (value_rule("docker.io/img", ""), json!(123), false),
            (
                value_rule("", "DOCKER.IO/img"),
                json!("docker.io/img:tag"),
                true,
            ),
            (
                value_rule("", "docker.io/IMG"),
                json!("docker.io/img"),
                false,
            ),
        ];
        for (rule, value, matched) in cases {
            let found = found(json!({ "key": value }), std::slice::from_ref(&rule));
            assert_eq!(!found.is_empty(), matched, "{rule:?} on {value}");
        }
    }

    /// kbld's `TestImageRefsMatches` (`pkg/kbld/search/image_refs_test.go`): each rule set,
    /// the references found and the document after every one is replaced by `found:<ref>`.
    #[test]
    fn image_refs_cases_of_kbld() {
        let digest = format!("gcr.io/repo@sha256:{}", "a".repeat(70));
        let key = SearchRule {
            key_matcher: Some(KeyMatcher {
                name: "key".to_owned(),
                path: Vec::new(),
            }),
            value_matcher: None,
            update_strategy: None,
        };
        let key_and_repo = SearchRule {
            value_matcher: value_rule("", "gcr.io/repo").value_matcher,
            ..key.clone()
        };
        let nested = |name: &str, yaml: bool, rules: Vec<SearchRule>| SearchRule {
            key_matcher: Some(KeyMatcher {
                name: name.to_owned(),
                path: Vec::new(),
            }),
            value_matcher: None,
            update_strategy: Some(UpdateStrategy {
                json: (!yaml).then(|| NestedSearchRules {
                    search_rules: rules.clone(),
                }),
                yaml: yaml.then_some(NestedSearchRules {
                    search_rules: rules,
                }),
                ..UpdateStrategy::default()
            }),
        };
        let named = |name: &str| SearchRule {
            key_matcher: Some(KeyMatcher {
                name: name.to_owned(),
                path: Vec::new(),
            }),
            value_matcher: None,
            update_strategy: None,
        };
        /// (name, rules, document, document after replacement, references found)
        type Case<'a> = (&'a str, Vec<SearchRule>, Value, Value, Vec<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                "by key",
                vec![key.clone()],
                json!({"nested": {"key": "gcr.io/repo:something"}}),
                json!({"nested": {"key": "found:gcr.io/repo:something"}}),
                vec!["gcr.io/repo:something"],
            ),
            (
                "by exact image",
                vec![value_rule("gcr.io/repo:something", "")],
                json!({"nested": {"key": "gcr.io/repo:something"}}),
                json!({"nested": {"key": "found:gcr.io/repo:something"}}),
                vec!["gcr.io/repo:something"],
            ),
            (
                "by image repo",
                vec![value_rule("", "gcr.io/repo")],
                json!({"nested": {"key": digest}}),
                json!({"nested": {"key": format!("found:{digest}")}}),
                vec![digest.as_str()],
            ),
            (
                "by key and image repo",
                vec![key_and_repo],
                json!({"nested": {"key": digest, "other": digest}}),
                json!({"nested": {"key": format!("found:{digest}"), "other": digest}}),
                vec![digest.as_str()],
            ),
            (
                "matchers matching the same values",
                vec![key.clone(), key.clone()],
                json!({"nested": {"key": "gcr.io/repo:something"}}),
                json!({"nested": {"key": "found:gcr.io/repo:something"}}),
                vec!["gcr.io/repo:something"],
            ),
            (
                "JSON extraction",
                vec![nested("key", false, vec![named("nestedimage")])],
                json!({"nested": {"key": r#"{"nestedimage":"nginx1"}"#}, "nestedimage": "nginx2"}),
                json!({"nested": {"key": r#"{"nestedimage":"found:nginx1"}"#}, "nestedimage": "nginx2"}),
                vec!["nginx1"],
            ),
            (
                "YAML extraction",
                vec![nested("key", true, vec![named("nestedimage")])],
                json!({
                    "nested": {"key": r#"{"nestedimage":"nginx1"}"#},
                    "nestedimage": "nginx2",
                    "key": "nestedimage: nginx3",
                }),
                json!({
                    "nested": {"key": r#"{"nestedimage":"found:nginx1"}"#},
                    "nestedimage": "nginx2",
                    "key": {"nestedimage": "found:nginx3"},
                }),
                vec!["nginx1", "nginx3"],
            ),
            (
                "nested YAML extraction",
                vec![
                    nested("key", true, vec![named("nestedimage")]),
                    nested(
                        "data",
                        true,
                        vec![nested("nestedimage", true, vec![named("something")])],
                    ),
                ],
                json!({
                    "nested": {"key": r#"{"nestedimage":"nginx1"}"#},
                    "data": "\npath:\n- nestedimage: |\n    something: nginx3\n",
                }),
                json!({
                    "nested": {"key": r#"{"nestedimage":"found:nginx1"}"#},
                    "data": {"path": [{"nestedimage": {"something": "found:nginx3"}}]},
                }),
                vec!["nginx1", "nginx3"],
            ),
        ];
        for (name, rules, mut document, expected, images) in cases {
            let mut seen = Vec::new();
            visit_images(&mut document, &rules, &YamlLimits::default(), &mut |r| {
                seen.push(r.to_owned());
                Some(format!("found:{r}"))
            });
            seen.sort();
            assert_eq!(seen, images, "{name}");
            // A YAML string kbld re-encodes with its own encoder (newer kbld starts it with
            // `---`), so YAML strings are compared by what they parse to; JSON ones exactly.
            assert_eq!(decode_yaml_strings(document), expected, "{name}");
        }
    }

    /// Replaces every string that is a YAML mapping (a re-encoded document) by its value.
    fn decode_yaml_strings(value: Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, decode_yaml_strings(v)))
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(decode_yaml_strings).collect())
            }
            Value::String(text) if text.contains('\n') => {
                match parse_stream(&text, &YamlLimits::default()) {
                    Ok(mut documents) if documents.len() == 1 => {
                        decode_yaml_strings(documents.remove(0))
                    }
                    _ => Value::String(text),
                }
            }
            other => other,
        }
    }

    #[test]
    fn rules_are_deduplicated_keys_first() {
        let a = config(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher: {name: \
             x}\n",
        );
        let b = config("apiVersion: kbld.k14s.io/v1alpha1\nkind: ImageKeys\nkeys: [x, image]\n");
        let rules = effective_rules([&a, &b]);
        let names: Vec<&str> = rules
            .iter()
            .map(|r| r.key_matcher.as_ref().map_or("", |k| k.name.as_str()))
            .collect();
        assert_eq!(names, ["x", "image"]);
        // A value-matcher-only rule matches array elements too.
        let value_only = SearchRule {
            key_matcher: None,
            value_matcher: Some(ValueMatcher {
                image: "exact:1".to_owned(),
                image_repo: String::new(),
            }),
            update_strategy: None,
        };
        assert_eq!(
            found(json!({"a": ["exact:1", "other:1"]}), &[value_only]),
            ["exact:1"]
        );
    }
}
