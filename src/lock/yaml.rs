//! Reading manifests the way kbld does (go-yaml v2 through `sigs.k8s.io/yaml`), within limits.
//!
//! This is not [`crate::carvel::yaml`]'s reader, which is strict on purpose for Carvel's own
//! documents. Manifests are other people's files, often ytt templates, and kbld accepts them
//! as go-yaml v2 does: a repeated key keeps its last value (ytt `#@ if` branches produce
//! those), non-string keys become strings, `.inf`/`.nan` are values. What stays strict is
//! cost: serde-saphyr's budget bounds events, nodes, depth and alias expansion, so an alias
//! bomb or a pathological file fails with an error instead of exhausting memory.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::{Budget, DuplicateKeyPolicy, NonFiniteFloatPolicy, Options};

/// A parse failure with the position serde-saphyr reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct YamlFailure {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

/// Limits for one YAML stream (a file, or a string value searched as YAML).
#[derive(Debug, Clone)]
pub struct YamlLimits {
    /// Parser events (every scalar, collection start and end, alias...).
    pub max_events: usize,
    /// Nesting depth; OpenAPI schemas in CRDs nest deeply, so this is well above the default.
    pub max_depth: usize,
    pub max_nodes: usize,
    pub max_documents: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        // Large enough for the biggest real manifests (multi-megabyte CRD bundles), small
        // enough that a hostile file fails in well under a second.
        YamlLimits {
            max_events: 20_000_000,
            max_depth: 512,
            max_nodes: 10_000_000,
            max_documents: 100_000,
        }
    }
}

fn options(limits: &YamlLimits) -> Options {
    // Both types are `#[non_exhaustive]`: start from the defaults and set what differs.
    let mut budget = Budget::default();
    budget.max_events = limits.max_events;
    budget.max_depth = limits.max_depth;
    budget.max_nodes = limits.max_nodes;
    budget.max_documents = limits.max_documents;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::LastWins;
    options.non_finite_float_policy = NonFiniteFloatPolicy::AsString;
    options.with_snippet = false;
    // go-yaml v2 reads YAML 1.1: `0755` is octal.
    options.legacy_octal_numbers = true;
    // Comments are only read past, as go-yaml does: kept as events, a ytt template's long run
    // of `#!` lines inside a mapping overflowed the parser's look-ahead buffer ("too many
    // buffered comments"). The file's size cap still bounds them.
    options.emit_comments = false;
    options
}

/// Every document of a YAML stream, empty ones dropped (as kbld drops them).
pub(super) fn parse_stream(text: &str, limits: &YamlLimits) -> Result<Vec<Value>, YamlFailure> {
    let documents: Vec<Node> = serde_saphyr::from_multiple_with_options(text, options(limits))
        .map_err(|error| {
            let location = error.location();
            YamlFailure {
                line: location.as_ref().map(|l| l.line()).filter(|l| *l > 0),
                column: location.as_ref().map(|l| l.column()).filter(|c| *c > 0),
                message: error.to_string(),
            }
        })?;
    Ok(documents
        .into_iter()
        .map(|node| node.0)
        .filter(|document| !document.is_null())
        .collect())
}

/// A JSON value read from YAML with `sigs.k8s.io/yaml`'s key conversion.
struct Node(Value);

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(Node)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or_else(|| Value::String(v.to_string()), Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::String(String::from_utf8_lossy(v).into_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Node::deserialize(deserializer).map(|node| node.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Node(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            let Node(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A mapping key as `sigs.k8s.io/yaml` turns it into a JSON object key.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor).map(Key)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar mapping key")
    }

    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }

    fn visit_none<E>(self) -> Result<String, E> {
        Ok("null".to_owned())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(
            "a sequence as a mapping key cannot be converted to JSON",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(de::Error::custom(
            "a mapping as a mapping key cannot be converted to JSON",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Vec<Value>, YamlFailure> {
        parse_stream(text, &YamlLimits::default())
    }

    #[test]
    fn reads_like_go_yaml_v2() {
        let docs = parse(
            "#@ load(\"@ytt:data\", \"data\")\n---\na: 1\na: 2\n80: http\ntrue: yes\nmode: \
             0755\ninf: .inf\n---\n---\n#! only a comment\n",
        )
        .expect("parse");
        assert_eq!(
            docs,
            vec![json!({"a": 2, "80": "http", "true": true, "mode": 493, "inf": ".inf"})]
        );
    }

    #[test]
    fn runs_of_comments_of_any_length_are_read_past() {
        // A ytt template's `#!` documentation inside a mapping: go-yaml reads past any number
        // of comment lines (this overflowed a 96-event look-ahead buffer before).
        let comments: String = (0..3000).map(|i| format!("  #! line {i}\n")).collect();
        let text = format!("a:\n{comments}  image: nginx:1.25\n#! trailing\n");
        assert_eq!(
            parse(&text).expect("parse"),
            vec![json!({"a": {"image": "nginx:1.25"}})]
        );
        let carvel: serde_json::Value =
            crate::carvel::yaml::from_str("test", &text).expect("carvel parse");
        assert_eq!(carvel, json!({"a": {"image": "nginx:1.25"}}));
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let failure = parse("a: 1\nb: [1, 2\nc: 3\n").expect_err("unterminated flow");
        assert!(failure.line.is_some_and(|l| l >= 2), "{failure:?}");
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..=9 {
            let prev = level - 1;
            bomb.push_str(&format!(
                "a{level}: &a{level} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        // The budget, not the clock, is what is asserted: an expansion that completed would
        // return Ok with a billion nodes (timing belongs in benchmarks, not tests).
        let failure = parse(&bomb).expect_err("a billion laughs");
        assert!(!failure.message.is_empty());
    }

    /// Anchors, aliases and merge keys as go-yaml v2 resolves them (kbld sees the merged
    /// mapping: an `image` merged in is an image of that mapping too); an explicit key wins
    /// over a merged one.
    #[test]
    fn anchors_and_merge_keys_resolve_as_go_yaml() {
        let docs = parse(
            "base: &b\n  image: nginx:1\n  pull: Always\nsidecar: *b\nd:\n  <<: *b\n  pull: \
             Never\nlist:\n  <<: [*b, {extra: 1}]\n",
        )
        .expect("parse");
        let base = json!({"image": "nginx:1", "pull": "Always"});
        assert_eq!(
            docs,
            vec![json!({
                "base": base,
                "sidecar": base,
                "d": {"image": "nginx:1", "pull": "Never"},
                "list": {"image": "nginx:1", "pull": "Always", "extra": 1},
            })]
        );
    }

    #[test]
    fn complex_keys_are_an_error_not_a_panic() {
        assert!(parse("? [a, b]\n: c\n").is_err());
    }
}
