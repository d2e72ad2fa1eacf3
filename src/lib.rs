//! packsmith: turns declarative `PackageSource` resources into published Carvel packages.
//!
//! One library, two front ends: the controller (`packsmith controller`) and the CLI
//! (`packsmith sync|lock|push|…`) call the same stage functions.

pub mod api;
pub mod bundle;
pub mod carvel;
pub mod cli;
pub mod controller;
pub mod lock;
pub mod pipeline;
pub mod publish;
pub mod registry;
pub mod sync;
