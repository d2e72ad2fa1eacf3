//! packsmith's own API: group `packsmith.dev`, version `v1alpha1`.

pub mod common;
pub mod conditions;
pub mod crds;
pub mod receiver;
pub mod repository_source;
pub mod source;

pub use common::{BundleTarget, SecretKeyRef, SecretRef};
pub use repository_source::{
    PackageRepositorySource, PackageRepositorySourceSpec, PackageRepositorySourceStatus,
};
pub use source::{PackageSource, PackageSourceSpec, PackageSourceStatus};

/// API group of packsmith's kinds.
pub const GROUP: &str = "packsmith.dev";
/// Field manager for everything packsmith writes with server-side apply.
pub const FIELD_MANAGER: &str = "packsmith";
/// Annotation that asks for a reconcile now (Flux's `reconcile.fluxcd.io/requestedAt`).
pub const REQUESTED_AT_ANNOTATION: &str = "packsmith.dev/requestedAt";
