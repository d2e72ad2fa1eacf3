//! A chart's values schema for its Package: `values.schema.json` when the chart has one,
//! converted to the OpenAPI v3 subset a Package's `valuesSchema.openAPIv3` holds; else derived
//! from `values.yaml` as `kctrl package release` derives it
//! (`cli/pkg/kctrl/cmd/package/release/schemagenerator/helm.go`: types and defaults from the
//! values, descriptions from the comment directly above each key), with the comment
//! conventions of helm-docs (`# -- description`) and bitnami's readme generator
//! (`## @param path description`, anywhere in the file) understood.
//!
//! Both inputs are the upstream's: sizes, nesting and `$ref` expansion are bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// values.yaml and values.schema.json larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Nesting of a schema, and of `$ref`s followed inside one another.
const MAX_DEPTH: usize = 64;
/// Schema nodes written, `$ref` expansions included (a ref bomb stops here).
const MAX_NODES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ChartSchemaError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The values schema of the chart directory `chart`; `Ok(None)` when it has neither a schema
/// nor values.
pub fn derive(chart: &Path) -> Result<Option<Value>, ChartSchemaError> {
    derive_from(chart, |name| {
        let path = chart.join(name);
        if path.is_file() {
            read(&path).map(Some)
        } else {
            Ok(None)
        }
    })
}

/// [`derive`] for a chart whose files `read` gives (a packaged chart, say): `read(name)` is
/// the top-level file's text, or `None` when the chart has none. `chart` names it in errors.
pub fn derive_from(
    chart: &Path,
    read: impl Fn(&str) -> Result<Option<String>, ChartSchemaError>,
) -> Result<Option<Value>, ChartSchemaError> {
    let schema_path = chart.join("values.schema.json");
    if let Some(text) = read("values.schema.json")? {
        let schema: Value = serde_json::from_str(&text).map_err(|e| ChartSchemaError::Invalid {
            path: schema_path.clone(),
            reason: format!("not JSON: {e}"),
        })?;
        let mut budget = MAX_NODES;
        return convert(&schema, &schema, 0, &mut budget)
            .map(Some)
            .map_err(|reason| ChartSchemaError::Invalid {
                path: schema_path,
                reason,
            });
    }
    let values_path = chart.join("values.yaml");
    let Some(text) = read("values.yaml")? else {
        return Ok(None);
    };
    let invalid = |reason: String| ChartSchemaError::Invalid {
        path: values_path.clone(),
        reason,
    };
    let values: Value =
        crate::carvel::yaml::from_str("values.yaml", &text).map_err(|e| invalid(e.to_string()))?;
    match values {
        Value::Null => Ok(None),
        Value::Object(_) => {
            let descriptions = descriptions(&text).map_err(invalid)?;
            let mut budget = MAX_NODES;
            let schema = from_value(&values, &mut Vec::new(), &descriptions, 0, &mut budget)
                .map_err(invalid)?;
            Ok(Some(schema))
        }
        _ => Err(invalid("the values must be a mapping".to_owned())),
    }
}

fn read(path: &Path) -> Result<String, ChartSchemaError> {
    let io = |source| ChartSchemaError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ChartSchemaError::Invalid {
            path: path.to_owned(),
            reason: format!("{size} bytes exceeds the limit of {MAX_FILE_BYTES} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Path segments of a value: mapping keys, and `[]` for the items of a sequence.
type ValuePath = Vec<String>;

const ITEMS: &str = "[]";

/// kctrl's schema of a value (`calculateProperties`).
fn from_value(
    value: &Value,
    path: &mut ValuePath,
    descriptions: &BTreeMap<ValuePath, String>,
    depth: usize,
    budget: &mut usize,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| format!("more than {MAX_NODES} values"))?;
    let mut schema = Map::new();
    if let Some(description) = descriptions.get(path) {
        schema.insert("description".to_owned(), json!(description));
    }
    match value {
        Value::Object(map) => {
            schema.insert("type".to_owned(), json!("object"));
            if map.is_empty() {
                schema.insert("default".to_owned(), json!({}));
            } else {
                let mut properties = Map::new();
                for (key, child) in map {
                    path.push(key.clone());
                    let child = from_value(child, path, descriptions, depth + 1, budget);
                    path.pop();
                    properties.insert(key.clone(), child?);
                }
                schema.insert("properties".to_owned(), Value::Object(properties));
            }
        }
        Value::Array(items) => {
            schema.insert("type".to_owned(), json!("array"));
            schema.insert("default".to_owned(), json!([]));
            // kctrl: the first item stands for all of them.
            let items = match items.first() {
                Some(first) => {
                    path.push(ITEMS.to_owned());
                    let item = from_value(first, path, descriptions, depth + 1, budget);
                    path.pop();
                    item?
                }
                None => json!({}),
            };
            schema.insert("items".to_owned(), items);
        }
        // A null says nothing of the type: kctrl allows any.
        Value::Null => {
            let any: Vec<Value> = ["integer", "number", "boolean", "string", "object", "array"]
                .iter()
                .map(|t| {
                    let mut one = json!({"type": t, "default": null, "nullable": true});
                    if *t == "array" {
                        one["items"] = json!({});
                    }
                    one
                })
                .collect();
            schema.insert("oneOf".to_owned(), Value::Array(any));
        }
        Value::Bool(_) => {
            schema.insert("type".to_owned(), json!("boolean"));
            schema.insert("default".to_owned(), value.clone());
        }
        Value::Number(n) if n.is_f64() => {
            schema.insert("type".to_owned(), json!("number"));
            schema.insert("format".to_owned(), json!("float"));
            schema.insert("default".to_owned(), value.clone());
        }
        Value::Number(_) => {
            schema.insert("type".to_owned(), json!("integer"));
            schema.insert("default".to_owned(), value.clone());
        }
        Value::String(_) => {
            schema.insert("type".to_owned(), json!("string"));
            schema.insert("default".to_owned(), value.clone());
        }
    }
    Ok(Value::Object(schema))
}

/// Descriptions by value path, from the comments of values.yaml. A line-based reading of the
/// block style values files are written in: the comment lines directly above a key describe
/// it (as yaml.v3's head comment, which kctrl reads); `@param` lines name their path.
///
/// Lines are read whatever the YAML parser made of them (a `- *anchor` line may sit inside a
/// quoted scalar, where the parser's alias limits never see it), so the descriptions aliases
/// copy are bounded here: at most [`MAX_NODES`] in all, or the file is refused.
fn descriptions(text: &str) -> Result<BTreeMap<ValuePath, String>, String> {
    let mut found: BTreeMap<ValuePath, String> = BTreeMap::new();
    let mut copies_left = MAX_NODES;
    let mut params: BTreeMap<ValuePath, String> = BTreeMap::new();
    let mut anchors: BTreeMap<String, ValuePath> = BTreeMap::new();
    // (column, segment): keys, and `[]` for a sequence item.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Vec<&str> = Vec::new();
    // Inside a block scalar (`key: |`): lines indented past this column are its text.
    let mut block_scalar: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let column = line.len() - trimmed.len();
        if let Some(at) = block_scalar {
            if trimmed.is_empty() || column > at {
                continue;
            }
            block_scalar = None;
        }
        if trimmed.is_empty() || trimmed == "---" {
            pending.clear();
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            if let Some((path, description)) = param(comment) {
                params.insert(path, description);
            }
            pending.push(trimmed);
            continue;
        }
        let mut column = column;
        let mut rest = trimmed;
        // `- ` opens a sequence item (possibly several: `- - a`).
        while rest == "-" || rest.starts_with("- ") {
            while stack
                .last()
                .is_some_and(|(c, s)| *c > column || (*c == column && s == ITEMS))
            {
                stack.pop();
            }
            stack.push((column, ITEMS.to_owned()));
            let after = rest[1..].trim_start();
            column += rest.len() - after.len();
            rest = after;
        }
        if let Some(alias) = rest.strip_prefix('*') {
            // An alias item: the anchored value's descriptions apply here too (yaml.v3 reads
            // the comments of the anchored node).
            let name = alias.split_whitespace().next().unwrap_or("");
            if let Some(anchor) = anchors.get(name).cloned() {
                let here: ValuePath = stack.iter().map(|(_, s)| s.clone()).collect();
                // The paths under `anchor` are one contiguous range of the ordered map: the
                // work is what is copied, not the size of the map.
                let copied: Vec<(ValuePath, String)> = found
                    .range(anchor.clone()..)
                    .take_while(|(p, _)| p.starts_with(&anchor))
                    .filter(|(p, _)| p.len() > anchor.len())
                    .take(copies_left.saturating_add(1))
                    .map(|(p, d)| {
                        let mut path = here.clone();
                        path.extend(p[anchor.len()..].iter().cloned());
                        (path, d.clone())
                    })
                    .collect();
                copies_left = copies_left.checked_sub(copied.len()).ok_or_else(|| {
                    format!(
                        "its aliases (`*name`) copy the comments of more than {MAX_NODES} \
                         values"
                    )
                })?;
                found.extend(copied);
            }
            pending.clear();
            continue;
        }
        let Some((key, value)) = key_of(rest) else {
            pending.clear();
            continue;
        };
        while stack.last().is_some_and(|(c, _)| *c >= column) {
            stack.pop();
        }
        stack.push((column, key.clone()));
        let path: ValuePath = stack.iter().map(|(_, s)| s.clone()).collect();
        if let Some(description) = head_description(&pending, &key) {
            found.insert(path.clone(), description);
        }
        pending.clear();
        let value = value.trim();
        if let Some(anchor) = value.strip_prefix('&') {
            let name = anchor.split_whitespace().next().unwrap_or("");
            anchors.insert(name.to_owned(), path);
        }
        let value = value.strip_prefix('&').map_or(value, |v| {
            v.split_once(' ').map_or("", |(_, rest)| rest.trim())
        });
        if value.starts_with('|') || value.starts_with('>') {
            block_scalar = Some(column);
        }
    }
    found.extend(params);
    Ok(found)
}

/// `key: value` (a plain or quoted key); `None` for anything else.
fn key_of(line: &str) -> Option<(String, &str)> {
    let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let end = quoted.find('"')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else if let Some(quoted) = line.strip_prefix('\'') {
        let end = quoted.find('\'')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else {
        let end = line
            .match_indices(':')
            .map(|(at, _)| at)
            .find(|at| matches!(line.as_bytes().get(at + 1), None | Some(b' ' | b'\t')))?;
        let key = line[..end].trim_end();
        if key.is_empty() || key.starts_with(['{', '[', '!', '&', '*', '|', '>', '%', '@', '`']) {
            return None;
        }
        (key.to_owned(), &line[end..])
    };
    let value = rest.trim_start().strip_prefix(':')?;
    if !(value.is_empty() || value.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, value))
}

/// kctrl's `getDescriptionFromNode` over the comment lines directly above `key`: the lines
/// joined (each later line's leading `##`/`#` dropped), then the first of these prefixes
/// removed: `# KEY`, `# --`, `##`, `#`. A block of readme-generator annotations (`@param`,
/// `@section`, …) is not a description: its `@param`s are read by path instead.
fn head_description(lines: &[&str], key: &str) -> Option<String> {
    let first = lines.first()?;
    if lines
        .iter()
        .any(|l| l.trim_start_matches('#').trim_start().starts_with('@'))
    {
        return None;
    }
    let mut comment = (*first).to_owned();
    for line in &lines[1..] {
        let line = line
            .strip_prefix("##")
            .or_else(|| line.strip_prefix('#'))
            .unwrap_or(line);
        comment.push_str(line);
    }
    let description = if let Some(rest) = comment.strip_prefix(&format!("# {key}")) {
        rest
    } else if let Some(rest) = comment.strip_prefix("# --") {
        rest
    } else if let Some(rest) = comment.strip_prefix("##") {
        rest
    } else {
        comment.strip_prefix('#')?
    };
    Some(description.trim().to_owned())
}

/// `## @param a.b[0].c [modifiers] Description` (bitnami's readme generator): the path and
/// the description. Array indexes name the items.
fn param(comment: &str) -> Option<(ValuePath, String)> {
    let rest = comment.trim_start_matches('#').trim_start();
    let rest = rest.strip_prefix("@param ")?.trim_start();
    let (name, description) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let mut description = description.trim();
    if description.starts_with('[')
        && let Some(end) = description.find(']')
    {
        description = description[end + 1..].trim();
    }
    let mut path = Vec::new();
    for part in name.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            path.push(key.to_owned());
        }
        for _ in indexes.split('[') {
            if !indexes.is_empty() {
                path.push(ITEMS.to_owned());
            }
        }
    }
    (!path.is_empty() && !description.is_empty()).then(|| (path, description.to_owned()))
}

/// JSON Schema (draft 4 to 2020-12, as helm validates with) to the OpenAPI v3.0 schema
/// object subset: local `$ref`s inlined, `type: [T, "null"]` as `nullable`, `const` as a
/// one-value `enum`, `examples` as `example`, numeric `exclusiveMinimum/Maximum` as their
/// 3.0 boolean form; keywords OpenAPI v3.0 does not have are dropped.
fn convert(
    schema: &Value,
    root: &Value,
    depth: usize,
    budget: &mut usize,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "nested (or $ref'd inside itself) deeper than {MAX_DEPTH} levels"
        ));
    }
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| format!("expands to more than {MAX_NODES} schema nodes"))?;
    let object = match schema {
        Value::Object(object) => object,
        // `true`/`false` schemas: anything / nothing; OpenAPI has only the former.
        Value::Bool(_) => return Ok(json!({})),
        other => return Err(format!("a schema must be an object, found {other}")),
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let target = resolve_ref(reference, root)?;
        return convert(target, root, depth + 1, budget);
    }
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "type" => match value {
                Value::Array(types) => {
                    let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if named.len() < types.len() {
                        out.insert("nullable".to_owned(), json!(true));
                    }
                    match named.as_slice() {
                        [] => {}
                        [one] => {
                            out.insert("type".to_owned(), (*one).clone());
                        }
                        several => {
                            let one_of = several.iter().map(|t| json!({"type": t})).collect();
                            out.insert("anyOf".to_owned(), Value::Array(one_of));
                        }
                    }
                }
                Value::String(t) if t == "null" => {
                    out.insert("nullable".to_owned(), json!(true));
                }
                other => {
                    out.insert("type".to_owned(), other.clone());
                }
            },
            "properties" => {
                let Value::Object(properties) = value else {
                    return Err("properties must be an object".to_owned());
                };
                let mut converted = Map::new();
                for (name, property) in properties {
                    converted.insert(name.clone(), convert(property, root, depth + 1, budget)?);
                }
                out.insert(key.clone(), Value::Object(converted));
            }
            "items" => {
                let items = match value {
                    // Tuple validation (draft 4-7): OpenAPI has one items schema.
                    Value::Array(_) => json!({}),
                    other => convert(other, root, depth + 1, budget)?,
                };
                out.insert(key.clone(), items);
            }
            "additionalProperties" | "not" => {
                let converted = match value {
                    Value::Bool(b) => json!(b),
                    other => convert(other, root, depth + 1, budget)?,
                };
                out.insert(key.clone(), converted);
            }
            "allOf" | "anyOf" | "oneOf" => {
                let Value::Array(all) = value else {
                    return Err(format!("{key} must be an array"));
                };
                let converted = all
                    .iter()
                    .map(|s| convert(s, root, depth + 1, budget))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(key.clone(), Value::Array(converted));
            }
            "const" => {
                out.insert("enum".to_owned(), json!([value]));
            }
            "examples" => {
                if let Some(first) = value.as_array().and_then(|a| a.first()) {
                    out.insert("example".to_owned(), first.clone());
                }
            }
            "exclusiveMinimum" | "exclusiveMaximum" if value.is_number() => {
                let bound = if key == "exclusiveMinimum" {
                    "minimum"
                } else {
                    "maximum"
                };
                out.insert(bound.to_owned(), value.clone());
                out.insert(key.clone(), json!(true));
            }
            "title" | "description" | "default" | "enum" | "format" | "required" | "minimum"
            | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" | "minLength"
            | "maxLength" | "pattern" | "minItems" | "maxItems" | "uniqueItems"
            | "minProperties" | "maxProperties" | "nullable" | "readOnly" | "writeOnly"
            | "deprecated" | "example" => {
                out.insert(key.clone(), value.clone());
            }
            // $schema, $id, definitions, if/then/else, patternProperties, … : not OpenAPI v3.0.
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// A local reference (`#/definitions/a`, `#/$defs/a`, any JSON pointer into the document).
fn resolve_ref<'a>(reference: &str, root: &'a Value) -> Result<&'a Value, String> {
    let pointer = reference.strip_prefix('#').ok_or_else(|| {
        format!("$ref {reference:?}: only references inside values.schema.json are followed")
    })?;
    root.pointer(pointer)
        .ok_or_else(|| format!("$ref {reference:?} points at nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(values: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("values.yaml"), values).unwrap();
        derive(dir.path()).unwrap().unwrap()
    }

    /// `- *anchor` lines inside a quoted scalar are text to the YAML parser (no alias limit
    /// applies) but aliases to the comment reader: each level copies the one below twenty
    /// times: four levels are 160,000 descriptions from 3 KiB (eight: 25 billion); refused.
    #[test]
    fn aliases_in_text_cannot_multiply_descriptions() {
        let mut values = String::from("l0: &l0\n  # described\n  x: 1\n");
        for level in 1..=4 {
            values.push_str(&format!("l{level}: &l{level} \"\n"));
            for i in 0..20 {
                values.push_str(&format!("  a{i}:\n    - *l{}\n", level - 1));
            }
            values.push_str("  \"\n");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("values.yaml"), &values).unwrap();
        let err = derive(dir.path()).unwrap_err().to_string();
        assert!(err.contains("aliases"), "{err}");
        // Aliases YAML reads as aliases keep their descriptions (kctrl_cases_alias_…).
    }

    /// kctrl's own cases (`schemagenerator/helm_test.go`), its expected output as JSON.
    #[test]
    fn kctrl_cases_object_with_different_values() {
        let schema = schema_of(
            "\n# Image details\nimage: my-docker-image:1.0.0\n# Container name\nname: test-container\n\
             # Boolean example\nboolExample: true\n# Array example\narrExample:\n- arr1\n\
             # Float example\nfloatExample: 2.3\n# Integer example\nintExample: 3\n\
             # Object example\nobjExample: {}\n",
        );
        assert_eq!(
            schema,
            json!({"type": "object", "properties": {
                "arrExample": {"default": [], "description": "Array example",
                    "items": {"default": "arr1", "type": "string"}, "type": "array"},
                "boolExample": {"default": true, "description": "Boolean example", "type": "boolean"},
                "floatExample": {"default": 2.3, "description": "Float example", "format": "float", "type": "number"},
                "image": {"default": "my-docker-image:1.0.0", "description": "Image details", "type": "string"},
                "intExample": {"default": 3, "description": "Integer example", "type": "integer"},
                "name": {"default": "test-container", "description": "Container name", "type": "string"},
                "objExample": {"default": {}, "description": "Object example", "type": "object"},
            }})
        );
    }

    #[test]
    fn kctrl_cases_arrays_and_nested_objects() {
        let schema = schema_of(
            "\n# arrKeyWithStringValues default value is stringVal1\narrKeyWithStringValues:\n- stringVal1\n\
             # arrKeyWithIntValues default value is 1\narrKeyWithIntValues:\n- 1\n\
             # arrKeyWithFloatValues default value is 1.1. 1.2 is ignored\narrKeyWithFloatValues:\n- 1.1\n- 1.2\n\
             arrKeyEmpty: []\n",
        );
        let p = &schema["properties"];
        assert_eq!(
            p["arrKeyEmpty"],
            json!({"default": [], "items": {}, "type": "array"})
        );
        assert_eq!(
            p["arrKeyWithFloatValues"],
            json!({"default": [], "description": "default value is 1.1. 1.2 is ignored",
                   "items": {"default": 1.1, "format": "float", "type": "number"}, "type": "array"})
        );
        assert_eq!(
            p["arrKeyWithIntValues"]["description"],
            "default value is 1"
        );

        let schema = schema_of(
            "\ncontainers:\n  # Image details\n  image: my-docker-image:1.0.0\n  # Array example\n  env:\n  \
             # key1 example\n  - key1: val1\n  env2:\n  -\n  # key2 example\n    key2: val2\n  \
             # Float example\n  floatExample: 2.3\n",
        );
        let c = &schema["properties"]["containers"]["properties"];
        assert_eq!(c["image"]["description"], "Image details");
        assert_eq!(c["env"]["description"], "Array example");
        // kctrl strips "# KEY" as a prefix: "# key1 example" describes key1 as "example".
        assert_eq!(
            c["env"]["items"],
            json!({"properties": {"key1": {"default": "val1", "description": "example", "type": "string"}}, "type": "object"})
        );
        assert_eq!(
            c["env2"]["items"]["properties"]["key2"]["description"],
            "example"
        );
        assert!(c["env2"].get("description").is_none());
        assert_eq!(c["floatExample"]["description"], "Float example");
    }

    #[test]
    fn kctrl_cases_alias_and_unknown_type() {
        let schema = schema_of(
            "\n# alias Example\naliasExample: &aliasEx\n  # foo bar example\n  foo: bar\n\n\
             # global Example\nglobal:\n  - *aliasEx\n\n\
             # alaisex as key, not an aliasNode here\naliasEx:\n  # foo1bar1 Example\n  foo1: bar1\n",
        );
        let p = &schema["properties"];
        assert_eq!(
            p["aliasEx"]["description"],
            "alaisex as key, not an aliasNode here"
        );
        assert_eq!(
            p["aliasEx"]["properties"]["foo1"]["description"],
            "bar1 Example"
        );
        assert_eq!(p["aliasExample"]["description"], "alias Example");
        assert_eq!(
            p["aliasExample"]["properties"]["foo"]["description"],
            "bar example"
        );
        assert_eq!(p["global"]["description"], "Example");
        assert_eq!(
            p["global"]["items"]["properties"]["foo"]["description"],
            "bar example"
        );

        let schema = schema_of("\n# a field without a type\nanything: null\n");
        let anything = &schema["properties"]["anything"];
        assert_eq!(anything["description"], "a field without a type");
        assert_eq!(anything["oneOf"].as_array().unwrap().len(), 6);
        assert_eq!(
            anything["oneOf"][5],
            json!({"default": null, "items": {}, "nullable": true, "type": "array"})
        );
    }

    #[test]
    fn helm_docs_and_readme_generator_comments_describe_values() {
        let schema = schema_of(
            "## @section Image parameters\n\
             ## @param image.registry [default: REGISTRY_NAME] nginx image registry\n\
             ## @param image.pullSecrets[0] a pull secret\n\
             image:\n  registry: docker.io\n  pullSecrets:\n    - name\n\
             # -- Number of replicas,\n# more than one for HA\nreplicaCount: 1\n\
             script: |\n  # -- not a comment: text of the block\n  key: not a key\n\
             after: x\n",
        );
        let p = &schema["properties"];
        assert_eq!(
            p["image"]["properties"]["registry"]["description"],
            "nginx image registry"
        );
        assert!(
            p["image"].get("description").is_none(),
            "an annotation block describes no key"
        );
        assert_eq!(
            p["image"]["properties"]["pullSecrets"]["items"]["description"],
            "a pull secret"
        );
        assert_eq!(
            p["replicaCount"]["description"],
            "Number of replicas, more than one for HA"
        );
        assert!(p["script"].get("description").is_none());
        assert!(p["after"].get("description").is_none());
        assert_eq!(p["script"]["type"], "string");
    }

    #[test]
    fn a_values_schema_json_is_converted_to_openapi_v3() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("values.yaml"), "a: 1\n").unwrap();
        std::fs::write(
            dir.path().join("values.schema.json"),
            r##"{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "required": ["replicas"],
                "definitions": {"port": {"type": "integer", "exclusiveMinimum": 0, "maximum": 65535}},
                "properties": {
                  "replicas": {"type": ["integer", "null"], "examples": [3]},
                  "mode": {"const": "fast", "if": {"type": "string"}, "then": {}},
                  "port": {"$ref": "#/definitions/port"},
                  "tags": {"type": "array", "items": [{"type": "string"}]},
                  "extra": {"type": "object", "additionalProperties": false, "patternProperties": {"^x": {}}}
                }}"##,
        )
        .unwrap();
        let schema = derive(dir.path()).unwrap().unwrap();
        assert_eq!(
            schema,
            json!({"type": "object", "required": ["replicas"], "properties": {
                "replicas": {"type": "integer", "nullable": true, "example": 3},
                "mode": {"enum": ["fast"]},
                "port": {"type": "integer", "minimum": 0, "exclusiveMinimum": true, "maximum": 65535},
                "tags": {"type": "array", "items": {}},
                "extra": {"type": "object", "additionalProperties": false}
            }})
        );
    }

    #[test]
    fn hostile_schemas_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        // A reference to itself, and a doubling ref bomb.
        for (schema, says) in [
            (r##"{"$ref": "#"}"##, "deeper than"),
            (
                r##"{"definitions": {"a": {"allOf": [{"$ref": "#/definitions/b"}, {"$ref": "#/definitions/b"}]},
                    "b": {"allOf": [{"$ref": "#/definitions/c"}, {"$ref": "#/definitions/c"}]},
                    "c": {"allOf": [{"$ref": "#/definitions/d"}, {"$ref": "#/definitions/d"}]},
                    "d": {"allOf": [{"$ref": "#/definitions/e"}, {"$ref": "#/definitions/e"}]},
                    "e": {"allOf": [{"$ref": "#/definitions/f"}, {"$ref": "#/definitions/f"}]},
                    "f": {"allOf": [{"$ref": "#/definitions/g"}, {"$ref": "#/definitions/g"}]},
                    "g": {"allOf": [{"$ref": "#/definitions/h"}, {"$ref": "#/definitions/h"}]},
                    "h": {"allOf": [{"$ref": "#/definitions/i"}, {"$ref": "#/definitions/i"}]},
                    "i": {"allOf": [{"$ref": "#/definitions/j"}, {"$ref": "#/definitions/j"}]},
                    "j": {"allOf": [{"$ref": "#/definitions/k"}, {"$ref": "#/definitions/k"}]},
                    "k": {"allOf": [{"$ref": "#/definitions/l"}, {"$ref": "#/definitions/l"}]},
                    "l": {"allOf": [{"$ref": "#/definitions/m"}, {"$ref": "#/definitions/m"}]},
                    "m": {"allOf": [{"$ref": "#/definitions/n"}, {"$ref": "#/definitions/n"}]},
                    "n": {"allOf": [{"$ref": "#/definitions/o"}, {"$ref": "#/definitions/o"}]},
                    "o": {"allOf": [{"$ref": "#/definitions/p"}, {"$ref": "#/definitions/p"}]},
                    "p": {"allOf": [{"$ref": "#/definitions/q"}, {"$ref": "#/definitions/q"}]},
                    "q": {"allOf": [{"$ref": "#/definitions/r"}, {"$ref": "#/definitions/r"}]},
                    "r": {"type": "string"}},
                  "$ref": "#/definitions/a"}"##,
                "more than 100000",
            ),
            (
                r#"{"$ref": "https://example.com/s.json"}"#,
                "only references inside",
            ),
        ] {
            std::fs::write(dir.path().join("values.schema.json"), schema).unwrap();
            let error = derive(dir.path()).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
    }
}
