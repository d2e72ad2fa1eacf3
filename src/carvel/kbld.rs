//! kbld's configuration documents (`kbld.k14s.io/v1alpha1`).
//!
//! Upstream: kbld `pkg/kbld/config/config.go` (kinds `Config`, `Sources`, `ImageOverrides`,
//! `ImageDestinations`, `ImageKeys`) and `pkg/kbld/resources/path.go` (key paths).
//!
//! [`ImageOverride`] and [`SearchRule`] also describe `PackageSource.spec.images`, so they
//! derive `JsonSchema` and must stay structural (see [`super::schema`]). Two shapes kbld
//! accepts are not structural and get hand-written schemas, explained where they are defined:
//! key path elements ([`PathPart`]) and the recursive `updateStrategy.{json,yaml}.searchRules`.

use schemars::JsonSchema;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::is_false;
use super::selection::VersionSelection;
use super::{Error, yaml};

pub const API_VERSION: &str = "kbld.k14s.io/v1alpha1";
/// The kinds kbld consumes as configuration (and removes from its output).
pub const CONFIG_KINDS: &[&str] = &[
    "Config",
    "Sources",
    "ImageOverrides",
    "ImageDestinations",
    "ImageKeys",
];

/// One kbld configuration document; all kinds share this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub minimum_required_version: String,
    /// How to build images from source; packsmith does not build, so these stay free-form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<ImageOverride>,
    /// Where built images are pushed; free-form for the same reason as `sources`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<serde_json::Value>,
    /// Extra key names holding image references (the older form of `searchRules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_rules: Vec<SearchRule>,
}

/// Rewrites a found image reference before it is resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageOverride {
    /// Matches the reference exactly.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Matches references whose repository (the part before `:tag`/`@digest`) is this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_repo: String,
    /// The replacement: repository, tag or digest reference.
    pub new_image: String,
    /// Use `newImage` as is, without contacting the registry.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preresolved: bool,
    /// Choose `newImage`'s tag (then written without one) by version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_selection: Option<VersionSelection>,
    /// Resolve a multi-platform index to this platform's image. As in kbld, os and
    /// architecture must both be named and exactly one image of the index may match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_selection: Option<PlatformSelection>,
}

/// go-containerregistry's `v1.Platform` fields, which kbld's platform selection mirrors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlatformSelection {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(default, rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl std::str::FromStr for PlatformSelection {
    type Err = String;

    /// kbld's `--platform` (`NewPlatformSelection` in its `cmd/resolve.go`, itself crane's
    /// parser): `os/arch[/variant][:os.version]`, e.g. `linux/arm/v7`.
    fn from_str(platform: &str) -> Result<Self, Self::Err> {
        let (parts, os_version) = match platform.split_once(':') {
            Some((parts, version)) => (parts, version),
            None => (platform, ""),
        };
        let parts: Vec<&str> = parts.split('/').collect();
        let (os, architecture, variant) = match parts[..] {
            [os, architecture] => (os, architecture, ""),
            [os, architecture, variant] => (os, architecture, variant),
            [_] => {
                return Err(format!(
                    "platform {platform:?}: expected os/arch[/variant], e.g. linux/amd64"
                ));
            }
            _ => return Err(format!("platform {platform:?}: too many slashes")),
        };
        Ok(PlatformSelection {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: os_version.to_owned(),
            variant: variant.to_owned(),
            ..PlatformSelection::default()
        })
    }
}

/// Where to look for image references and what to do with a match. The first matching rule
/// wins; kbld appends its default rule (any `image` key) last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_matcher: Option<KeyMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_matcher: Option<ValueMatcher>,
    /// Defaults to `entireValue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
}

/// Matches by key name anywhere, or by exact path from the document root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeyMatcher {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<PathPart>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatcher {
    /// Matches the value exactly.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Matches values whose repository (before `:tag`/`@digest`) is this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_repo: String,
}

/// Exactly one strategy is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Leave the value alone (and do not search inside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<EmptyStrategy>,
    /// The whole value is an image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entire_value: Option<EmptyStrategy>,
    /// The value is a JSON document to search with its own rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<NestedSearchRules>,
    /// The value is a YAML document (e.g. a ConfigMap entry) to search with its own rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<NestedSearchRules>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EmptyStrategy {}

/// `{searchRules}` applied inside a JSON or YAML string value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NestedSearchRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_rules: Vec<SearchRule>,
}

// A CRD schema cannot recurse: that needs `$ref`, which Kubernetes rejects. The nested rules
// are therefore objects the API server keeps as given; `SearchRule`'s Deserialize checks them
// when packsmith reads the spec, and `Config::validate` reports problems by index.
impl JsonSchema for NestedSearchRules {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NestedSearchRules".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                "searchRules": {
                    "description": "Search rules applied inside the value (same shape as the \
                                    enclosing searchRules).",
                    "type": "array",
                    "items": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                    },
                },
            },
        })
    }
}

/// One step of a key path: a map key, an array index, or every index.
///
/// Written as kbld writes it: a string, `{index: N}` or `{allIndexes: true}`. A bare integer
/// is also read as an index (kbld itself rejects it; it is the obvious spelling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(String),
    Index(i64),
    AllIndexes,
}

impl Serialize for PathPart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            PathPart::Key(key) => serializer.serialize_str(key),
            PathPart::Index(index) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("index", index)?;
                map.end()
            }
            PathPart::AllIndexes => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("allIndexes", &true)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for PathPart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathPartVisitor;

        const EXPECTED: &str = "a key (string), an index ({index: N} or N) or {allIndexes: true}";

        impl<'de> Visitor<'de> for PathPartVisitor {
            type Value = PathPart;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PathPart, E> {
                Ok(PathPart::Key(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PathPart, E> {
                Ok(PathPart::Index(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PathPart, E> {
                i64::try_from(v)
                    .map(PathPart::Index)
                    .map_err(|_| E::custom(format!("path index {v} is too large")))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PathPart, A::Error> {
                let mut part = None;
                while let Some(key) = map.next_key::<String>()? {
                    let next = match key.as_str() {
                        "index" => PathPart::Index(map.next_value()?),
                        "allIndexes" => {
                            if !map.next_value::<bool>()? {
                                return Err(de::Error::custom(
                                    "allIndexes can only be true; use {index: N} for one index",
                                ));
                            }
                            PathPart::AllIndexes
                        }
                        other => {
                            return Err(de::Error::unknown_field(other, &["index", "allIndexes"]));
                        }
                    };
                    if part.replace(next).is_some() {
                        return Err(de::Error::custom(
                            "a path element has either index or allIndexes, not both",
                        ));
                    }
                }
                part.ok_or_else(|| {
                    de::Error::custom(format!("empty path element; expected {EXPECTED}"))
                })
            }
        }

        deserializer.deserialize_any(PathPartVisitor)
    }
}

// A string-or-object element is not structural, and `x-kubernetes-int-or-string` would still
// reject `{allIndexes: true}` (and `{index: N}`, kbld's own spelling). So each element is a
// value the API server keeps as given without a declared type (allowed for nodes marked
// `x-kubernetes-preserve-unknown-fields`); PathPart's Deserialize checks it and says what is
// wrong.
impl JsonSchema for PathPart {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PathPart".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A map key (string), an array index ({index: N} or N) or \
                            {allIndexes: true}.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

impl Config {
    /// An empty `kind: Config` document.
    pub fn new() -> Self {
        Config {
            api_version: API_VERSION.to_owned(),
            kind: "Config".to_owned(),
            minimum_required_version: String::new(),
            sources: Vec::new(),
            overrides: Vec::new(),
            destinations: Vec::new(),
            keys: Vec::new(),
            search_rules: Vec::new(),
        }
    }

    /// Whether a document with this apiVersion and kind is kbld configuration (which kbld
    /// consumes instead of passing through).
    pub fn is_config_document(api_version: &str, kind: &str) -> bool {
        api_version == API_VERSION && CONFIG_KINDS.contains(&kind)
    }

    /// Parses and validates one kbld configuration document.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Config = yaml::from_str("kbld Config", text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        yaml::to_go_yaml("kbld Config", self)
    }

    /// kbld's checks that do not depend on its own version.
    pub fn validate(&self) -> Result<(), Error> {
        const WHAT: &str = "kbld Config";
        if !Config::is_config_document(&self.api_version, &self.kind) {
            return Err(Error::invalid(
                WHAT,
                format!(
                    "apiVersion {:?} kind {:?} is not kbld configuration (expected {API_VERSION} \
                     with kind one of {})",
                    self.api_version,
                    self.kind,
                    CONFIG_KINDS.join(", ")
                ),
            ));
        }
        if self.minimum_required_version.starts_with('v') {
            return Err(Error::invalid(
                WHAT,
                "minimumRequiredVersion must not have a leading 'v' (e.g. \"0.15.0\")",
            ));
        }
        for (index, rule) in self.overrides.iter().enumerate() {
            rule.validate().map_err(|message| {
                Error::invalid(WHAT, format!("overrides[{index}]: {message}"))
            })?;
        }
        if let Some(index) = self.keys.iter().position(String::is_empty) {
            return Err(Error::invalid(WHAT, format!("keys[{index}] is empty")));
        }
        validate_search_rules(&self.search_rules, "searchRules")
            .map_err(|message| Error::invalid(WHAT, message))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl ImageOverride {
    pub fn validate(&self) -> Result<(), String> {
        if self.image.is_empty() && self.image_repo.is_empty() {
            return Err("set image or imageRepo to say which references to override".to_owned());
        }
        if self.new_image.is_empty() {
            return Err("newImage is empty".to_owned());
        }
        Ok(())
    }
}

impl SearchRule {
    /// kbld's `SearchRule.Validate`, applied to nested rules too.
    pub fn validate(&self) -> Result<(), String> {
        if self.key_matcher.is_none() && self.value_matcher.is_none() {
            return Err("set keyMatcher or valueMatcher".to_owned());
        }
        if let Some(key) = &self.key_matcher
            && key.name.is_empty()
            && key.path.is_empty()
        {
            return Err("keyMatcher needs a name or a path".to_owned());
        }
        if let Some(value) = &self.value_matcher
            && value.image.is_empty()
            && value.image_repo.is_empty()
        {
            return Err("valueMatcher needs an image or an imageRepo".to_owned());
        }
        if let Some(strategy) = &self.update_strategy {
            let set = [
                strategy.none.is_some(),
                strategy.entire_value.is_some(),
                strategy.json.is_some(),
                strategy.yaml.is_some(),
            ]
            .into_iter()
            .filter(|set| *set)
            .count();
            if set > 1 {
                return Err(
                    "updateStrategy sets several of none, entireValue, json, yaml; set one"
                        .to_owned(),
                );
            }
            for (name, nested) in [("json", &strategy.json), ("yaml", &strategy.yaml)] {
                if let Some(nested) = nested {
                    validate_search_rules(
                        &nested.search_rules,
                        &format!("updateStrategy.{name}.searchRules"),
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn validate_search_rules(rules: &[SearchRule], field: &str) -> Result<(), String> {
    for (index, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|message| format!("{field}[{index}]: {message}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    /// kbld's `--platform` values, as its `NewPlatformSelection` (crane's parser) reads them.
    #[test]
    fn platform_flags_read_as_kbld_reads_them() {
        let parsed: PlatformSelection = "linux/arm/v7".parse().unwrap();
        assert_eq!(
            (&*parsed.os, &*parsed.architecture, &*parsed.variant),
            ("linux", "arm", "v7")
        );
        let parsed: PlatformSelection = "windows/amd64:10.0.17763.1879".parse().unwrap();
        assert_eq!(
            (&*parsed.os, &*parsed.architecture, &*parsed.os_version),
            ("windows", "amd64", "10.0.17763.1879")
        );
        assert!(parsed.variant.is_empty());
        let error = "amd64".parse::<PlatformSelection>().unwrap_err();
        assert!(error.contains("os/arch"), "{error}");
        let error = "linux/arm/v7/x".parse::<PlatformSelection>().unwrap_err();
        assert!(error.contains("too many slashes"), "{error}");
    }

    #[test]
    fn path_parts_read_every_spelling_and_write_kblds() {
        let matcher: KeyMatcher = yaml::from_str(
            "test",
            "path: [spec, containers, {allIndexes: true}, 0, {index: 2}, image]\n",
        )
        .expect("parse");
        assert_eq!(
            matcher.path,
            vec![
                PathPart::Key("spec".to_owned()),
                PathPart::Key("containers".to_owned()),
                PathPart::AllIndexes,
                PathPart::Index(0),
                PathPart::Index(2),
                PathPart::Key("image".to_owned()),
            ]
        );
        assert_eq!(
            serde_json::to_value(&matcher.path).expect("json"),
            serde_json::json!(["spec", "containers", {"allIndexes": true}, {"index": 0}, {"index": 2}, "image"])
        );
    }

    #[test]
    fn bad_path_parts_say_what_is_expected() {
        for (text, hint) in [
            (
                "path: [{allIndexes: false}]\n",
                "allIndexes can only be true",
            ),
            ("path: [{index: 1, allIndexes: true}]\n", "not both"),
            ("path: [{key: x}]\n", "unknown field"),
            ("path: [[a]]\n", "allIndexes: true"),
        ] {
            let error = yaml::from_str::<KeyMatcher>("test", text)
                .expect_err(text)
                .to_string();
            assert!(error.contains(hint), "{text}: {error}");
        }
    }

    #[test]
    fn nested_search_rules_are_validated() {
        let config = Config::from_yaml(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: Config\nsearchRules:\n- keyMatcher:\n    \
             name: data.yml\n  updateStrategy:\n    yaml:\n      searchRules:\n      - \
             valueMatcher: {}\n",
        );
        let error = config.expect_err("empty valueMatcher").to_string();
        assert!(
            error.contains("searchRules[0]: updateStrategy.yaml.searchRules[0]: valueMatcher"),
            "{error}"
        );
    }

    #[test]
    fn overrides_need_a_matcher_and_a_replacement() {
        let error = Config::from_yaml(
            "apiVersion: kbld.k14s.io/v1alpha1\nkind: ImageOverrides\noverrides:\n- newImage: x\n",
        )
        .expect_err("no matcher")
        .to_string();
        assert!(
            error.contains("overrides[0]: set image or imageRepo"),
            "{error}"
        );
    }

    #[test]
    fn non_kbld_documents_are_not_config() {
        assert!(Config::is_config_document(API_VERSION, "ImageKeys"));
        assert!(!Config::is_config_document(API_VERSION, "Deployment"));
        assert!(!Config::is_config_document("kbld.k14s.io/v1", "Config"));
    }
}
