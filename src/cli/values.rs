//! `packsmith values REF|DIR [--schema] [-o FILE]`: a package's default values, or its values
//! schema — the seed Makefile's get-package-config, and what `kctrl package available get
//! --default-values-file-output` prints. Both come from the package's ytt files, read as the
//! release stage reads them for the Package's `valuesSchema` ([`values_schema::derive`]), so
//! what this prints is what a PackageInstall gets by default.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Map, Value};

use super::registry::{RegistryArgs, registry_host};
use crate::bundle::{self, Location};
use crate::carvel::yaml;
use crate::publish::values_schema;

#[derive(Args, Debug)]
pub(super) struct ValuesArgs {
    /// A package directory (its config/ is read), or a bundle to pull: REPO:TAG,
    /// REPO@sha256:…, oci-layout:DIR[:TAG].
    #[arg(value_name = "REF|DIR")]
    source: String,
    /// Print the values schema (OpenAPI v3, as in the Package's valuesSchema) instead of the
    /// default values.
    #[arg(long)]
    schema: bool,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub(super) fn run(args: &ValuesArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let local = Path::new(&args.source);
    // Kept until the end: the pulled bundle lives in it.
    let mut pulled_into = None;
    let root = if local.is_dir() {
        local.to_owned()
    } else {
        let location = Location::parse(&args.source)?;
        let registry = args.registry.registry(registry_host(&location))?;
        let work = tempfile::tempdir().context("creating a scratch directory")?;
        let out = work.path().join("bundle");
        runtime.block_on(bundle::pull(&registry, &location, &out))?;
        pulled_into = Some(work);
        out
    };
    let config = match root.join("config") {
        dir if dir.is_dir() => dir,
        _ => root.clone(),
    };
    let schema = values_schema::derive(&config)?.with_context(|| {
        format!(
            "{} has no values: no ytt document annotated #@data/values-schema or #@data/values",
            config.display()
        )
    })?;
    let printed = if args.schema {
        yaml::to_go_yaml("values schema", &schema)?
    } else {
        yaml::to_go_yaml("default values", &defaults(&schema))?
    };
    match &args.output {
        Some(path) => crate::lock::write_atomically(path, printed.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{printed}"),
    }
    drop(pulled_into);
    Ok(())
}

/// The values a schema gives when nothing is set, as ytt fills data values from a schema:
/// each property's `default`; `null` for a nullable one (`#@schema/nullable`); objects built
/// from their properties' defaults; arrays empty.
fn defaults(schema: &Value) -> Value {
    if let Some(default) = schema.get("default") {
        return default.clone();
    }
    if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return Value::Null;
    }
    match schema.get("properties").and_then(Value::as_object) {
        Some(properties) => Value::Object(
            properties
                .iter()
                .map(|(name, property)| (name.clone(), defaults(property)))
                .collect::<Map<String, Value>>(),
        ),
        None => match schema.get("type").and_then(Value::as_str) {
            Some("array") => Value::Array(Vec::new()),
            Some("object") => Value::Object(Map::new()),
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_the_schema() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "namespace": {"type": "string", "default": "cert-manager"},
                "deployment": {
                    "type": "object",
                    "properties": {
                        "replicas": {"type": "integer", "default": 2},
                        "tolerations": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "ports": {"type": "array", "default": [80]},
                "extra": {"nullable": true, "default": null},
                "aws": {
                    "type": "object",
                    "nullable": true,
                    "properties": {"region": {"type": "string", "default": "us-east-1"}},
                },
            },
        });
        assert_eq!(
            defaults(&schema),
            json!({
                "namespace": "cert-manager",
                "deployment": {"replicas": 2, "tolerations": []},
                "ports": [80],
                "extra": null,
                "aws": null,
            })
        );
    }
}
