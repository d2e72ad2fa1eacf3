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
