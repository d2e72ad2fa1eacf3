//! Labels and selectors: how a published object names its source, how a
//! PackageRepositorySource's `spec.selector` is read (as a list query and as an in-memory
//! match for the watch mappers), and which repositories select which sources. Labels find
//! objects; they prove nothing — ownership is the annotation of [`super::ownership`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::{PackageRepositorySource, PackageSource};

/// Labels on everything a PackageSource publishes.
pub(super) const LABEL_SOURCE_NAME: &str = "packsmith.dev/source-name";

pub(super) const LABEL_SOURCE_NAMESPACE: &str = "packsmith.dev/source-namespace";

/// Labels on the PackageRepository a PackageRepositorySource creates.
pub(super) const LABEL_REPOSITORY_SOURCE_NAME: &str = "packsmith.dev/repository-source-name";

pub(super) const LABEL_REPOSITORY_SOURCE_NAMESPACE: &str =
    "packsmith.dev/repository-source-namespace";

pub(super) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

pub(super) const MANAGED_BY: &str = "packsmith";

/// Marks a ConfigMap as a release record (next to the source labels).
pub(super) const LABEL_RELEASE: &str = "packsmith.dev/release";

/// Labels on everything this source publishes.
pub(super) fn labels(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_SOURCE_NAME.to_owned(), name.to_owned()),
        (LABEL_SOURCE_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

/// The label keys a `labelSelector` query (`k=v`, `k!=v`, `k in (a,b)`, `k notin (…)`, `k`,
/// `!k`, comma-separated) names.
pub(super) fn selector_keys(selector: &str) -> Vec<&str> {
    fn key(requirement: &str) -> Option<&str> {
        let text = requirement.trim().trim_start_matches('!').trim_start();
        let end = text
            .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '('))
            .unwrap_or(text.len());
        (end > 0).then(|| &text[..end])
    }
    let mut requirements = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                requirements.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    requirements.push(&selector[start..]);
    requirements.into_iter().filter_map(key).collect()
}

/// Labels on what `source` publishes: its own, and those its shard's selector names.
pub(super) fn published(
    source: &crate::api::PackageSource,
    shard_selector: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = labels(&source.namespace().unwrap_or_default(), &source.name_any());
    out.extend(shard_labels(source.labels(), shard_selector));
    out
}

/// The labels of a source that its shard's selector (`--watch-label-selector`) names: copied
/// onto what the source publishes, so that the shard's watches of published objects can be
/// narrowed by the same selector.
pub(super) fn shard_labels(
    source: &BTreeMap<String, String>,
    selector: Option<&str>,
) -> BTreeMap<String, String> {
    let Some(selector) = selector else {
        return BTreeMap::new();
    };
    let keys = selector_keys(selector);
    source
        .iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a published object's `existing` labels hold the `desired` ones, with no other value
/// for a key the shard `selector` names: a source moved to another shard (or out of sharding)
/// takes its old shard label off what it published.
pub(super) fn labels_in_place(
    existing: Option<&BTreeMap<String, String>>,
    desired: Option<&BTreeMap<String, String>>,
    selector: Option<&str>,
) -> bool {
    let empty = BTreeMap::new();
    let (existing, desired) = (existing.unwrap_or(&empty), desired.unwrap_or(&empty));
    desired.iter().all(|(k, v)| existing.get(k) == Some(v))
        && selector
            .map(selector_keys)
            .unwrap_or_default()
            .iter()
            .all(|k| existing.get(*k) == desired.get(*k))
}

/// The label selector of what `name` in `namespace` published.
pub(super) fn selector(namespace: &str, name: &str) -> String {
    format!("{LABEL_SOURCE_NAME}={name},{LABEL_SOURCE_NAMESPACE}={namespace}")
}

/// A selector the API server would refuse (an unknown operator, `In` without values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.selector: {0}")]
pub(super) struct SelectorError(pub String);

/// `spec.selector` as a `labelSelector` query string (`k=v,k in (a,b),!k`); empty selects
/// everything, as in Kubernetes.
pub(super) fn selector_string(selector: &LabelSelector) -> Result<String, SelectorError> {
    let mut parts = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        parts.push(format!("{k}={v}"));
    }
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let need_values = |op: &str| {
            if values.is_empty() {
                Err(SelectorError(format!(
                    "matchExpressions {} {op} needs at least one value",
                    e.key
                )))
            } else {
                Ok(values.join(","))
            }
        };
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, need_values("In")?),
            "NotIn" => format!("{} notin ({})", e.key, need_values("NotIn")?),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => {
                return Err(SelectorError(format!(
                    "matchExpressions operator {other:?} on {}: use In, NotIn, Exists or \
                     DoesNotExist",
                    e.key
                )));
            }
        });
    }
    Ok(parts.join(","))
}

/// Whether `labels` match `selector` (same semantics as the API server's list filter; an
/// invalid selector matches nothing).
pub(super) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// How a selector reads in messages.
pub(super) fn describe_selector(query: &str) -> String {
    if query.is_empty() {
        "the empty selector (all PackageSources)".to_owned()
    } else {
        format!("selector {query:?}")
    }
}

/// The PackageRepositorySources (from `store`) in `source`'s namespace whose selector
/// matches its labels: what to reconcile again when the PackageSource changes.
pub(super) fn selecting<'a, S: kube::Resource>(
    store: impl IntoIterator<Item = &'a PackageRepositorySource>,
    source: &S,
) -> Vec<kube::runtime::reflector::ObjectRef<PackageRepositorySource>> {
    let namespace = source.namespace();
    store
        .into_iter()
        .filter(|r| r.namespace() == namespace)
        .filter(|r| selector_matches(&r.spec.selector, source.labels()))
        .map(kube::runtime::reflector::ObjectRef::from_obj)
        .collect()
}

/// The sources (among `sources`) whose placement `repositories` changes: applied in-cluster
/// while now selected (or released through a repository while no longer selected), and those
/// with nothing released yet (a run in progress may have decided before the change).
pub(super) fn placement_changed<'a>(
    repositories: impl IntoIterator<Item = &'a PackageRepositorySource>,
    sources: impl IntoIterator<Item = &'a PackageSource>,
) -> Vec<kube::runtime::reflector::ObjectRef<PackageSource>> {
    let repositories: Vec<&PackageRepositorySource> = repositories.into_iter().collect();
    sources
        .into_iter()
        .filter(|source| {
            let selected = !selecting(repositories.iter().copied(), *source).is_empty();
            let in_cluster = source.spec.publish.enabled.unwrap_or(!selected);
            match source.status.as_ref().and_then(|s| s.package.as_ref()) {
                None => true,
                Some(p) => p.namespace.is_some() != in_cluster,
            }
        })
        .map(kube::runtime::reflector::ObjectRef::from_obj)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::outcome::truncate_note;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn the_keys_a_shard_selector_names_are_copied() {
        assert_eq!(
            selector_keys(
                "sharding.packsmith.dev/key in (shard1, shard2),team=a,!legacy, env notin (x)"
            ),
            ["sharding.packsmith.dev/key", "team", "legacy", "env"]
        );
        assert_eq!(
            selector_keys("!sharding.packsmith.dev/key"),
            ["sharding.packsmith.dev/key"]
        );
        assert_eq!(selector_keys("a!=b"), ["a"]);
        let source = BTreeMap::from([
            ("sharding.packsmith.dev/key".to_owned(), "shard1".to_owned()),
            ("app".to_owned(), "web".to_owned()),
        ]);
        assert_eq!(
            shard_labels(&source, Some("sharding.packsmith.dev/key in (shard1)")),
            BTreeMap::from([("sharding.packsmith.dev/key".to_owned(), "shard1".to_owned())])
        );
        assert!(shard_labels(&source, None).is_empty());
        let shard = |v: &str| BTreeMap::from([(KEY.to_owned(), v.to_owned())]);
        const KEY: &str = "sharding.packsmith.dev/key";
        let selector = Some("sharding.packsmith.dev/key in (shard2)");
        assert!(labels_in_place(
            Some(&shard("shard2")),
            Some(&shard("shard2")),
            selector
        ));
        assert!(!labels_in_place(
            Some(&shard("shard1")),
            Some(&shard("shard2")),
            selector
        ));
        // Moved out of sharding: the old label must come off.
        assert!(!labels_in_place(
            Some(&shard("shard1")),
            None,
            Some("!sharding.packsmith.dev/key")
        ));
        assert!(labels_in_place(Some(&shard("shard1")), None, None));
    }

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then(|| {
                exprs
                    .iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: (*k).to_owned(),
                        operator: (*op).to_owned(),
                        values: (!vs.is_empty())
                            .then(|| vs.iter().map(|v| (*v).to_owned()).collect()),
                    })
                    .collect()
            }),
        }
    }

    fn label_map(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_become_queries_and_match_like_the_api_server() {
        assert_eq!(selector_string(&LabelSelector::default()).unwrap(), "");
        let s = sel(
            &[("repo", "main")],
            &[
                ("tier", "In", &["a", "b"]),
                ("skip", "DoesNotExist", &[]),
                ("team", "Exists", &[]),
                ("env", "NotIn", &["dev"]),
            ],
        );
        assert_eq!(
            selector_string(&s).unwrap(),
            "repo=main,tier in (a,b),!skip,team,env notin (dev)"
        );
        assert!(selector_matches(
            &s,
            &label_map(&[("repo", "main"), ("tier", "a"), ("team", "x")])
        ));
        assert!(!selector_matches(
            &s,
            &label_map(&[("repo", "main"), ("tier", "c"), ("team", "x")])
        ));
        assert!(!selector_matches(
            &s,
            &label_map(&[
                ("repo", "main"),
                ("tier", "a"),
                ("team", "x"),
                ("skip", "1")
            ])
        ));
        assert!(!selector_matches(
            &s,
            &label_map(&[
                ("repo", "main"),
                ("tier", "a"),
                ("team", "x"),
                ("env", "dev")
            ])
        ));
        assert!(selector_matches(&LabelSelector::default(), &label_map(&[])));
        assert!(selector_string(&sel(&[], &[("k", "In", &[])])).is_err());
        assert!(selector_string(&sel(&[], &[("k", "Gt", &["1"])])).is_err());
    }

    #[test]
    fn published_objects_are_labelled_with_their_source() {
        let l = labels("team-a", "cert-manager");
        assert_eq!(l[LABEL_SOURCE_NAME], "cert-manager");
        assert_eq!(l[LABEL_SOURCE_NAMESPACE], "team-a");
        assert_eq!(l[LABEL_MANAGED_BY], "packsmith");
        assert!(truncate_note(&"x".repeat(5000)).len() < 1010);
    }
}
