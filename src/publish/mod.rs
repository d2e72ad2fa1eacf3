//! The publish stage: what kapp-controller reads. Renders Package + PackageMetadata for a
//! pushed bundle, deriving the values schema from the bundle's ytt files (or its Helm chart)
//! when the PackageSource does not give one.

pub mod chart_schema;
pub mod package;
pub mod provenance;
pub mod repository;
pub mod revision;
pub mod values_schema;

pub use package::{Release, RenderError, render};
