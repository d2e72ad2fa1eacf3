//! The end-to-end trials, grouped by what they prove.

pub mod crds;
pub mod git;
pub mod registry;

use libtest_mimic::Trial;

/// (trials that may run concurrently, trials that must run alone after them)
pub fn trials() -> (Vec<Trial>, Vec<Trial>) {
    let mut parallel = Vec::new();
    parallel.extend(crds::trials());
    parallel.extend(git::trials());
    parallel.extend(registry::trials());
    (parallel, registry::serial_trials())
}
