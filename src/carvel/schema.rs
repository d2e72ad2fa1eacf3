//! Checks that a type's JSON schema is usable in a CustomResourceDefinition.
//!
//! Kubernetes accepts only *structural* schemas
//! (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>):
//! every node declares one `type` (unless it is marked `x-kubernetes-int-or-string` or
//! `x-kubernetes-preserve-unknown-fields`), `allOf`/`anyOf`/`oneOf`/`not` carry only value
//! validations, and there are no references. A derive that produces an untagged enum or a
//! recursive type breaks these rules silently until the API server rejects the CRD, so the
//! Carvel types reused in `PackageSource` are checked in unit tests with these helpers.

use schemars::JsonSchema;
use serde_json::Value;

/// The schema of `T` generated the way `#[derive(CustomResource)]` does for a CRD.
pub fn crd_schema_for<T: JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .with_transform(kube::core::schema::OptionalIntOrString)
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Every place `schema` breaks the structural-schema rules, as `path: problem` lines
/// (empty when the schema is structural).
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    check_node(schema, "<root>", true, &mut violations);
    violations
}

const JUNCTORS: &[&str] = &["allOf", "anyOf", "oneOf", "not"];
/// What a junctor branch may not set (the structural rules' list, plus `$ref`).
const NOT_IN_JUNCTORS: &[&str] = &[
    "type",
    "nullable",
    "default",
    "description",
    "title",
    "additionalProperties",
    "$ref",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource",
];

fn check_node(node: &Value, path: &str, needs_type: bool, violations: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        violations.push(format!(
            "{path}: a boolean schema ({node}) has no type; write an object schema"
        ));
        return;
    };
    let flag = |name: &str| object.get(name).and_then(Value::as_bool).unwrap_or(false);

    if object.contains_key("$ref") {
        violations.push(format!(
            "{path}: $ref is not allowed in a CRD (recursive or non-inlined type)"
        ));
    }
    match object.get("type") {
        Some(Value::String(_)) => {}
        Some(other) => violations.push(format!(
            "{path}: type must be a single string, found {other}"
        )),
        None if needs_type
            && !flag("x-kubernetes-int-or-string")
            && !flag("x-kubernetes-preserve-unknown-fields") =>
        {
            violations.push(format!(
                "{path}: no type (and not marked x-kubernetes-int-or-string or \
                 x-kubernetes-preserve-unknown-fields)"
            ));
        }
        None => {}
    }
    if object.contains_key("properties")
        && object
            .get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        violations.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }

    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            check_node(property, &format!("{path}.{name}"), true, violations);
        }
    }
    match object.get("items") {
        Some(Value::Array(_)) => violations.push(format!(
            "{path}: items must be one schema, not a tuple of schemas"
        )),
        Some(items) => check_node(items, &format!("{path}[]"), true, violations),
        None => {}
    }
    if let Some(additional) = object.get("additionalProperties")
        && additional.is_object()
    {
        check_node(additional, &format!("{path}{{*}}"), true, violations);
    }

    for junctor in JUNCTORS {
        let branches: Vec<&Value> = match object.get(*junctor) {
            Some(Value::Array(branches)) => branches.iter().collect(),
            Some(single) => vec![single],
            None => continue,
        };
        for (index, branch) in branches.into_iter().enumerate() {
            let branch_path = format!("{path}.{junctor}[{index}]");
            if let Some(branch) = branch.as_object() {
                for key in NOT_IN_JUNCTORS {
                    if branch.contains_key(*key) {
                        violations.push(format!(
                            "{branch_path}: sets {key}, which only the enclosing schema may \
                             (an untagged enum or Option of a non-object type?)"
                        ));
                    }
                }
            }
            check_node(branch, &branch_path, false, violations);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carvel::{kbld, vendir};
    use serde::{Deserialize, Serialize};

    fn assert_structural<T: JsonSchema>(name: &str) -> Value {
        let schema = crd_schema_for::<T>();
        let violations = structural_violations(&schema);
        assert!(
            violations.is_empty(),
            "{name} is not structural:\n{}\nschema: {}",
            violations.join("\n"),
            serde_json::to_string_pretty(&schema).unwrap_or_default()
        );
        schema
    }

    #[test]
    fn vendir_directory_is_structural() {
        let schema = assert_structural::<vendir::Directory>("vendir::Directory");
        // The sources are separate optional properties, not a oneOf.
        let contents = &schema["properties"]["contents"]["items"]["properties"];
        for source in [
            "git",
            "githubRelease",
            "helmChart",
            "imgpkgBundle",
            "inline",
        ] {
            assert_eq!(contents[source]["type"], "object", "{source}");
        }
        assert_eq!(
            contents["githubRelease"]["properties"]["apiURL"]["type"],
            "string"
        );
        assert_structural::<vendir::DirectoryContents>("vendir::DirectoryContents");
        assert_structural::<vendir::LockDirectory>("vendir::LockDirectory");
    }

    #[test]
    fn kbld_override_and_search_rule_are_structural() {
        assert_structural::<kbld::ImageOverride>("kbld::ImageOverride");
        let schema = assert_structural::<kbld::SearchRule>("kbld::SearchRule");
        let path = &schema["properties"]["keyMatcher"]["properties"]["path"]["items"];
        assert_eq!(path["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn package_types_are_structural() {
        assert_structural::<crate::carvel::PackageSpec>("PackageSpec");
        assert_structural::<crate::carvel::PackageMetadataSpec>("PackageMetadataSpec");
        assert_structural::<crate::carvel::PackageInstallSpec>("PackageInstallSpec");
        assert_structural::<crate::carvel::PackageRepositorySpec>("PackageRepositorySpec");
    }

    #[test]
    fn violations_are_found() {
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum StringOrNumber {
            S(String),
            N(i64),
        }
        #[derive(Serialize, Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Holder {
            value: StringOrNumber,
            free: serde_json::Value,
        }
        let violations = structural_violations(&crd_schema_for::<Holder>());
        assert!(
            violations.iter().any(|v| v.starts_with("<root>.value")),
            "{violations:?}"
        );
        assert!(
            violations.iter().any(|v| v.starts_with("<root>.free")),
            "{violations:?}"
        );

        let recursive = serde_json::json!({
            "type": "object",
            "properties": {"next": {"$ref": "#/components/schemas/Node"}},
        });
        assert!(
            structural_violations(&recursive)
                .iter()
                .any(|v| v.contains("$ref")),
        );
    }
}
