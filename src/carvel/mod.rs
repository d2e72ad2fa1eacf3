//! Typed models of the Carvel documents packsmith reads and writes.
//!
//! One module per document family, named after the tool that owns the format:
//!
//! - [`package`]: kapp-controller's Package and PackageMetadata, with [`app`] holding the App
//!   spec they embed;
//! - [`repository`]: PackageRepository and PackageInstall;
//! - [`imgpkg`]: ImagesLock (`.imgpkg/images.yml`), Bundle (`.imgpkg/bundle.yml`), BundleLock;
//! - [`vendir`]: vendir's Config and LockConfig;
//! - [`kbld`]: kbld's configuration documents.
//!
//! Field names are the upstream tools' own. Readers check apiVersion/kind and what the
//! upstream tool validates; writers produce what the upstream tool would write, byte for byte
//! where that matters (lock files), via [`yaml::to_go_yaml`].

pub mod app;
pub mod common;
mod error;
pub mod imgpkg;
pub mod kbld;
pub mod package;
pub mod repository;
pub mod schema;
pub mod selection;
pub mod vendir;
pub mod yaml;

#[cfg(test)]
mod fixtures_test;

pub use app::AppSpec;
pub use common::{LocalRef, Rfc3339Time};
pub use error::Error;
pub use imgpkg::{Bundle, BundleLock, ImageOrigin, ImageRef, ImagesLock};
pub use package::{
    Package, PackageDocument, PackageMetadata, PackageMetadataSpec, PackageSpec, ValidationError,
    parse_package_documents,
};
pub use repository::{
    PackageInstall, PackageInstallSpec, PackageRepository, PackageRepositorySpec,
};
pub use selection::{RangeError, VersionRange, VersionSelection, VersionSelectionSemver};
