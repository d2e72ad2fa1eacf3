//! Derives a Package's `valuesSchema.openAPIv3` from a bundle's ytt files, as
//! `kctrl package release` does with `ytt --data-values-schema-inspect -o openapi-v3`:
//! from a `#@data/values-schema` document when there is one, else from `#@data/values`
//! documents (types from the defaults, descriptions from `#!` comments).
//!
//! ytt itself is a Starlark interpreter; packsmith does not embed one. What is read here is the
//! declarative subset that schema files use: the YAML document after its annotations, and the
//! `#@schema/desc|title|nullable|type any=True|default` annotations on the lines above each
//! node. Annotations whose argument is code (`#@schema/examples (…, fn())`,
//! `#@schema/validation`) are skipped; a `#@schema/default` that is not a literal is an error,
//! so a schema is never silently wrong. The output follows ytt's `pkg/schema/openapi.go`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ValuesSchemaError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Annotations that apply to one node.
#[derive(Debug, Default, Clone)]
struct Annotations {
    title: Option<String>,
    desc: Option<String>,
    nullable: bool,
    any: bool,
    default: Option<Value>,
}

/// Which ytt document kind a schema is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Schema,
    DataValues,
}

/// Derives the schema from the YAML files under `config_dir` (searched in sorted order).
/// `Ok(None)` when there is neither a schema nor a data values document.
pub fn derive(config_dir: &Path) -> Result<Option<Value>, ValuesSchemaError> {
    let mut files = Vec::new();
    collect_yaml_files(config_dir, &mut files)?;
    files.sort();
    let mut by_mode: BTreeMap<u8, Vec<(PathBuf, Document)>> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ValuesSchemaError::Io {
            path: path.clone(),
            source,
        })?;
        for doc in documents(&text) {
            let rank = match doc.mode {
                Some(Mode::Schema) => 0,
                Some(Mode::DataValues) => 1,
                None => continue,
            };
            by_mode.entry(rank).or_default().push((path.clone(), doc));
        }
    }
    // A schema, when present, is authoritative: data values only fill it in ytt.
    let Some((_, docs)) = by_mode.into_iter().next() else {
        return Ok(None);
    };
    let mut root: Option<Value> = None;
    for (path, doc) in docs {
        let schema = doc.to_schema(&path)?;
        root = Some(match root {
            None => schema,
            Some(existing) => merge_objects(existing, schema),
        });
    }
    Ok(root)
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ValuesSchemaError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ValuesSchemaError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ValuesSchemaError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| ValuesSchemaError::Io {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if file_type.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// One YAML document of a ytt file: the annotation lines right above its `---`, and its body.
struct Document {
    mode: Option<Mode>,
    header: Vec<String>,
    /// (1-based line number in the file, text)
    body: Vec<(usize, String)>,
}

fn documents(text: &str) -> Vec<Document> {
    let lines: Vec<&str> = text.lines().collect();
    let mut starts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
            starts.push(i);
        }
    }
    let mut docs = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        // The document's annotations are the comment lines directly above its `---`.
        let mut header = Vec::new();
        let mut j = start;
        while j > 0 {
            let l = lines[j - 1].trim();
            if l.starts_with('#') {
                header.push(l.to_owned());
                j -= 1;
            } else if l.is_empty() {
                j -= 1;
            } else {
                break;
            }
        }
        header.reverse();
        let mode = if header
            .iter()
            .any(|h| annotation_name(h) == Some("data/values-schema"))
        {
            Some(Mode::Schema)
        } else if header
            .iter()
            .any(|h| annotation_name(h) == Some("data/values"))
        {
            Some(Mode::DataValues)
        } else {
            None
        };
        let body = (start + 1..end)
            .map(|i| (i + 1, lines[i].to_owned()))
            .collect();
        docs.push(Document { mode, header, body });
    }
    docs
}

/// `data/values` for `#@data/values`, `schema/desc` for `#@schema/desc "x"`.
fn annotation_name(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("#@")?;
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

impl Document {
    fn to_schema(&self, path: &Path) -> Result<Value, ValuesSchemaError> {
        let first_line = self.body.first().map_or(1, |(n, _)| *n);
        let text: String = self.body.iter().map(|(_, l)| format!("{l}\n")).collect();
        let value: Value =
            crate::carvel::yaml::from_str("ytt values document", &text).map_err(|e| {
                ValuesSchemaError::Invalid {
                    path: path.to_owned(),
                    line: first_line,
                    reason: e.to_string(),
                }
            })?;
        let mode = self.mode.unwrap_or(Mode::DataValues);
        let mut annotations = annotate(&self.body, mode, path)?;
        let doc_annotations = parse_annotations(&self.header, mode, path, first_line)?;
        annotations.insert(String::new(), doc_annotations);
        schema_for(&value, "", &annotations, path)
    }
}

/// Maps each node's path (`a.b`, `a.b[]` for array items) to its annotations, by walking the
/// lines with their indentation: annotation lines attach to the next node line.
fn annotate(
    body: &[(usize, String)],
    mode: Mode,
    path: &Path,
) -> Result<BTreeMap<String, Annotations>, ValuesSchemaError> {
    let mut out = BTreeMap::new();
    // (indent of the node's key or dash, node path)
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut pending_line = 0;
    for (number, raw) in body {
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            if pending.is_empty() {
                pending_line = *number;
            }
            pending.push(trimmed.to_owned());
            continue;
        }
        let mut column = indent;
        let mut rest = trimmed;
        // `- key: v` is an array item holding a map: both the item and the key are nodes.
        while let Some(after_dash) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            while stack.last().is_some_and(|(i, _)| *i >= column) {
                stack.pop();
            }
            let parent = stack.last().map_or(String::new(), |(_, p)| p.clone());
            let item_path = format!("{parent}[]");
            out.insert(
                item_path.clone(),
                parse_annotations(&pending, mode, path, pending_line)?,
            );
            pending.clear();
            stack.push((column, item_path));
            let skipped = rest.len() - after_dash.len();
            let inner = after_dash.trim_start();
            column += skipped + (after_dash.len() - inner.len());
            rest = inner;
        }
        if let Some(key) = map_key(rest) {
            while stack.last().is_some_and(|(i, _)| *i >= column) {
                stack.pop();
            }
            let parent = stack.last().map_or(String::new(), |(_, p)| p.clone());
            let node = if parent.is_empty() {
                key
            } else {
                format!("{parent}.{key}")
            };
            out.insert(
                node.clone(),
                parse_annotations(&pending, mode, path, pending_line)?,
            );
            pending.clear();
            stack.push((column, node));
        } else {
            pending.clear();
        }
    }
    Ok(out)
}

/// The key of a `key: value` or `key:` line, unquoted.
fn map_key(line: &str) -> Option<String> {
    let (key, rest) = if let Some(q) = line.strip_prefix('"') {
        let end = q.find('"')?;
        (q[..end].to_owned(), &q[end + 1..])
    } else if let Some(q) = line.strip_prefix('\'') {
        let end = q.find('\'')?;
        (q[..end].to_owned(), &q[end + 1..])
    } else {
        if line.starts_with(['[', '{', '#', '&', '*', '!', '|', '>']) {
            return None;
        }
        let colon = line
            .char_indices()
            .find(|&(i, c)| {
                c == ':' && line[i + 1..].chars().next().is_none_or(char::is_whitespace)
            })?
            .0;
        (line[..colon].trim_end().to_owned(), &line[colon..])
    };
    let rest = rest.trim_start();
    (rest.starts_with(':')).then_some(key)
}

fn parse_annotations(
    lines: &[String],
    mode: Mode,
    path: &Path,
    line: usize,
) -> Result<Annotations, ValuesSchemaError> {
    let mut a = Annotations::default();
    let invalid = |reason: String| ValuesSchemaError::Invalid {
        path: path.to_owned(),
        line,
        reason,
    };
    for l in lines {
        if mode == Mode::DataValues {
            // Data values documents describe keys in plain `#!` comments.
            if let Some(text) = l.strip_prefix("#!") {
                let text = text.trim();
                if !text.is_empty() {
                    a.desc = Some(match a.desc.take() {
                        Some(d) => format!("{d} {text}"),
                        None => text.to_owned(),
                    });
                }
            }
            continue;
        }
        let Some(name) = annotation_name(l) else {
            continue;
        };
        let args = l.trim().strip_prefix("#@").unwrap_or("").trim_start()[name.len()..].trim();
        match name {
            "schema/desc" => {
                a.desc = Some(starlark_string(args).ok_or_else(|| {
                    invalid(format!(
                        "#@schema/desc needs a string literal, got {args:?}"
                    ))
                })?)
            }
            "schema/title" => {
                a.title = Some(starlark_string(args).ok_or_else(|| {
                    invalid(format!(
                        "#@schema/title needs a string literal, got {args:?}"
                    ))
                })?)
            }
            "schema/nullable" => a.nullable = true,
            "schema/type" if args.replace(' ', "") == "any=True" => a.any = true,
            "schema/default" => {
                let literal = starlark_literal(args);
                let looks_literal = literal.starts_with([
                    '"', '\'', '[', '{', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
                ]) || matches!(literal.as_str(), "true" | "false" | "null");
                if !looks_literal {
                    return Err(invalid(format!(
                        "#@schema/default {args} is not a literal; packsmith cannot evaluate ytt code: set package.valuesSchema on the PackageSource instead"
                    )));
                }
                let value: Value = crate::carvel::yaml::from_str("#@schema/default", &literal).map_err(|_| {
                    invalid(format!(
                        "#@schema/default {args} is not a literal; packsmith cannot evaluate ytt code: set package.valuesSchema on the PackageSource instead"
                    ))
                })?;
                a.default = Some(value);
            }
            _ => {}
        }
    }
    Ok(a)
}

/// A Starlark string literal's value: `"a \"b\""` → `a "b"`.
fn starlark_string(args: &str) -> Option<String> {
    let args = args.trim();
    let quote = args.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut out = String::new();
    let mut chars = args[1..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c if c == quote => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// Starlark's `True`/`False`/`None` spelled as YAML, so literal defaults parse as YAML flow.
fn starlark_literal(args: &str) -> String {
    match args.trim() {
        "True" => "true".to_owned(),
        "False" => "false".to_owned(),
        "None" => "null".to_owned(),
        other => other.to_owned(),
    }
}

fn schema_for(
    value: &Value,
    node: &str,
    annotations: &BTreeMap<String, Annotations>,
    path: &Path,
) -> Result<Value, ValuesSchemaError> {
    let a = annotations.get(node).cloned().unwrap_or_default();
    let mut schema = Map::new();
    if let Some(title) = &a.title {
        schema.insert("title".into(), json!(title));
    }
    if a.any {
        schema.insert("nullable".into(), json!(true));
        schema.insert(
            "default".into(),
            a.default.clone().unwrap_or_else(|| value.clone()),
        );
        add_description(&mut schema, &a);
        return Ok(Value::Object(schema));
    }
    let child = |key: &str| {
        if node.is_empty() {
            key.to_owned()
        } else {
            format!("{node}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            schema.insert("type".into(), json!("object"));
            schema.insert("additionalProperties".into(), json!(false));
            add_description(&mut schema, &a);
            let mut properties = Map::new();
            for (k, v) in map {
                properties.insert(k.clone(), schema_for(v, &child(k), annotations, path)?);
            }
            schema.insert("properties".into(), Value::Object(properties));
        }
        Value::Array(items) => {
            schema.insert("type".into(), json!("array"));
            add_description(&mut schema, &a);
            let item = items.first().ok_or_else(|| ValuesSchemaError::Invalid {
                path: path.to_owned(),
                line: 0,
                reason: format!(
                    "array {node} must hold exactly one item: the schema of its elements"
                ),
            })?;
            schema.insert(
                "items".into(),
                schema_for(item, &format!("{node}[]"), annotations, path)?,
            );
            schema.insert(
                "default".into(),
                a.default.clone().unwrap_or_else(|| json!([])),
            );
        }
        Value::Null => {
            return Err(ValuesSchemaError::Invalid {
                path: path.to_owned(),
                line: 0,
                reason: format!(
                    "{node} is null: give it a typed default and #@schema/nullable, or #@schema/type any=True"
                ),
            });
        }
        scalar => {
            let (ty, float) = match scalar {
                Value::String(_) => ("string", false),
                Value::Bool(_) => ("boolean", false),
                Value::Number(n) if n.is_f64() => ("number", true),
                _ => ("integer", false),
            };
            schema.insert("type".into(), json!(ty));
            schema.insert(
                "default".into(),
                a.default.clone().unwrap_or_else(|| scalar.clone()),
            );
            if float {
                schema.insert("format".into(), json!("float"));
            }
            add_description(&mut schema, &a);
        }
    }
    if a.nullable {
        // ytt's NullType: the inner type, nullable, defaulting to null.
        schema.insert("nullable".into(), json!(true));
        if schema.contains_key("default") {
            schema.insert("default".into(), Value::Null);
        }
    }
    Ok(Value::Object(schema))
}

fn add_description(schema: &mut Map<String, Value>, a: &Annotations) {
    if let Some(desc) = &a.desc {
        schema.insert("description".into(), json!(desc));
    }
}

/// Several values documents add up: later properties are added to (or replace) earlier ones.
fn merge_objects(mut base: Value, next: Value) -> Value {
    if let (Some(b), Value::Object(n)) = (
        base.get_mut("properties").and_then(Value::as_object_mut),
        next.clone(),
    ) {
        if let Some(Value::Object(props)) = n.get("properties") {
            for (k, v) in props {
                b.insert(k.clone(), v.clone());
            }
        }
        return base;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive_text(files: &[(&str, &str)]) -> Option<Value> {
        let tmp = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = tmp.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        derive(tmp.path()).unwrap()
    }

    #[test]
    fn follows_ytt_openapi_for_every_kind_of_node() {
        let schema = derive_text(&[(
            "schema.yaml",
            r#"#@ def example():
---
a: 1
#@ end

#@data/values-schema
#@schema/title "demo values"
#@schema/desc "Root"
---
#@schema/desc "Where it runs"
namespace: demo
replicas: 2
ratio: 0.5
enabled: false
#@schema/desc "Extra args"
args: [""]
#@schema/nullable
env:
  - name: ""
    #@schema/type any=True
    valueFrom: null
#@schema/type any=True
annotations: {}
#@schema/nullable
aws:
  region: "us-east-1"
#@schema/default 3
retries: 1
"#,
        )])
        .unwrap();
        assert_eq!(schema["title"], "demo values");
        assert_eq!(schema["description"], "Root");
        assert_eq!(schema["additionalProperties"], false);
        let p = &schema["properties"];
        assert_eq!(
            p["namespace"],
            json!({"type": "string", "default": "demo", "description": "Where it runs"})
        );
        assert_eq!(p["replicas"], json!({"type": "integer", "default": 2}));
        assert_eq!(
            p["ratio"],
            json!({"type": "number", "default": 0.5, "format": "float"})
        );
        assert_eq!(p["enabled"], json!({"type": "boolean", "default": false}));
        assert_eq!(
            p["args"],
            json!({"type": "array", "description": "Extra args", "items": {"type": "string", "default": ""}, "default": []})
        );
        assert_eq!(p["env"]["nullable"], true);
        assert_eq!(p["env"]["default"], Value::Null);
        assert_eq!(
            p["env"]["items"]["properties"]["valueFrom"],
            json!({"nullable": true, "default": null})
        );
        assert_eq!(p["annotations"], json!({"nullable": true, "default": {}}));
        assert_eq!(p["aws"]["nullable"], true);
        assert!(
            p["aws"].get("default").is_none(),
            "ytt gives nullable maps no default"
        );
        assert_eq!(p["retries"]["default"], 3);
    }

    #[test]
    fn data_values_take_descriptions_from_comments() {
        let schema = derive_text(&[(
            "config/values.yaml",
            "#@data/values\n---\n#! Namespace to deploy into.\nnamespace: demo\nnested:\n  #! How many.\n  count: 1\n",
        )])
        .unwrap();
        assert_eq!(
            schema["properties"]["namespace"],
            json!({"type": "string", "default": "demo", "description": "Namespace to deploy into."})
        );
        assert_eq!(
            schema["properties"]["nested"]["properties"]["count"]["description"],
            "How many."
        );
    }

    #[test]
    fn a_schema_wins_over_data_values_and_no_values_means_none() {
        let schema = derive_text(&[
            ("values.yaml", "#@data/values\n---\nfrom_values: 1\n"),
            ("schema.yaml", "#@data/values-schema\n---\nfrom_schema: 1\n"),
        ])
        .unwrap();
        assert!(schema["properties"].get("from_schema").is_some());
        assert!(schema["properties"].get("from_values").is_none());
        assert!(derive_text(&[("deploy.yaml", "kind: Deployment\n")]).is_none());
    }

    #[test]
    fn refuses_what_it_cannot_know() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("s.yaml"),
            "#@data/values-schema\n---\n#@schema/default fn()\nx: 1\n",
        )
        .unwrap();
        let err = derive(tmp.path()).unwrap_err().to_string();
        assert!(
            err.contains("not a literal") && err.contains("s.yaml:3"),
            "{err}"
        );
        std::fs::write(
            tmp.path().join("s.yaml"),
            "#@data/values-schema\n---\nx: null\n",
        )
        .unwrap();
        let err = derive(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("x is null"), "{err}");
    }

    /// What `kctrl package release` derived for the TCE packages (their committed
    /// package.yaml) is what packsmith derives: property names, types, defaults, nullability.
    #[test]
    fn matches_the_tce_fixtures() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tce");
        let mut checked = 0;
        for (name, version) in [
            ("contour", "1.22.3"),
            ("external-dns", "0.12.2"),
            ("local-path-storage", "0.0.22"),
        ] {
            let dir = root.join(name).join(version);
            let package: crate::carvel::Package = crate::carvel::yaml::from_str(
                "package",
                &std::fs::read_to_string(dir.join("package.yaml")).unwrap(),
            )
            .unwrap();
            let expected = package.spec.values_schema.unwrap().open_api_v3.unwrap();
            let derived = derive(&dir.join("bundle/config"))
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: no schema derived"));
            checked += compare(&expected, &derived, name);
        }
        assert!(checked > 40, "compared only {checked} nodes");
    }

    fn compare(expected: &Value, derived: &Value, at: &str) -> usize {
        let mut n = 1;
        for key in ["type", "default", "nullable", "format"] {
            // Hand-written fixtures sometimes omit what ytt would add at the root.
            if at.contains('.') || expected.get(key).is_some() {
                assert_eq!(expected.get(key), derived.get(key), "{at}: {key}");
            }
        }
        if let Some(props) = expected.get("properties").and_then(Value::as_object) {
            let got = derived["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no properties"));
            let mut want_keys: Vec<_> = props.keys().collect();
            let mut got_keys: Vec<_> = got.keys().collect();
            want_keys.sort();
            got_keys.sort();
            assert_eq!(want_keys, got_keys, "{at}: property names");
            for (k, v) in props {
                n += compare(v, &got[k], &format!("{at}.{k}"));
            }
        }
        if let Some(items) = expected.get("items") {
            n += compare(items, &derived["items"], &format!("{at}[]"));
        }
        n
    }
}
