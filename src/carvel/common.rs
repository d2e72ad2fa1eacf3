//! Small pieces shared by several document families.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reference to an object (Secret, ConfigMap) in the same namespace: `{name}`.
///
/// kapp-controller's `AppFetchLocalRef`, `AppTemplateValuesSourceRef` and vendir's
/// `DirectoryContentsLocalRef` all have exactly this shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl LocalRef {
    pub fn new(name: impl Into<String>) -> Self {
        LocalRef { name: name.into() }
    }
}

/// A point in time written as RFC 3339 in UTC with second precision
/// (`2021-10-29T12:00:00Z`), as Kubernetes' `metav1.Time` is.
///
/// Reading accepts any RFC 3339 timestamp (fractional seconds, offsets); writing normalises
/// to the `metav1.Time` form so output matches what kapp-controller and kctrl produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rfc3339Time(pub jiff::Timestamp);

impl Rfc3339Time {
    pub fn now() -> Self {
        Rfc3339Time(jiff::Timestamp::now())
    }
}

impl From<jiff::Timestamp> for Rfc3339Time {
    fn from(timestamp: jiff::Timestamp) -> Self {
        Rfc3339Time(timestamp)
    }
}

impl fmt::Display for Rfc3339Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
    }
}

impl FromStr for Rfc3339Time {
    type Err = jiff::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Rfc3339Time)
    }
}

impl Serialize for Rfc3339Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rfc3339Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 timestamp such as 2021-10-29T12:00:00Z: {e}"
            ))
        })
    }
}

impl JsonSchema for Rfc3339Time {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rfc3339Time".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
        })
    }
}

// serde's `skip_serializing_if` needs a function path; these mirror Go's `omitempty`.
pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

pub(crate) fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Implements `k8s_openapi::Resource` + `Metadata` for a Carvel kind served by kapp-controller,
/// so `kube::Api<T>` works for it like for a built-in type.
macro_rules! carvel_resource {
    ($ty:ty, $group:literal, $kind:expr, $plural:literal) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = concat!($group, "/v1alpha1");
            const GROUP: &'static str = $group;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1alpha1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use carvel_resource;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_in_metav1_form() {
        let time: Rfc3339Time = "2021-10-29T12:00:00Z".parse().expect("parse");
        assert_eq!(time.to_string(), "2021-10-29T12:00:00Z");
        let offset: Rfc3339Time = "2021-10-29T14:00:00.5+02:00".parse().expect("parse");
        assert_eq!(offset.to_string(), "2021-10-29T12:00:00Z");
        assert!("yesterday".parse::<Rfc3339Time>().is_err());
    }
}
