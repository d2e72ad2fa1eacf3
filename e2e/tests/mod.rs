//! The end-to-end trials, grouped by what they prove.

pub mod bundle;
pub mod controller;
pub mod controller_faults;
pub mod controller_leader;
pub mod controller_repo;
pub mod controller_secrets;
pub mod copy;
pub mod crds;
pub mod day2;
pub mod git;
pub mod helm;
pub mod hostile;
pub mod kbld_cases;
pub mod lock;
pub mod receiver;
pub mod registry;
pub mod release;
pub mod repo;
pub mod sharding;
pub mod ship;
pub mod signing;
pub mod sync;
pub mod tce;
pub mod tenancy;
pub mod token_auth;

use libtest_mimic::Trial;

/// (trials that may run concurrently, trials that must run alone after them)
pub fn trials() -> (Vec<Trial>, Vec<Trial>) {
    let mut parallel = Vec::new();
    parallel.extend(bundle::trials());
    parallel.extend(controller::trials());
    parallel.extend(controller_leader::trials());
    parallel.extend(controller_repo::trials());
    parallel.extend(controller_secrets::trials());
    parallel.extend(copy::trials());
    parallel.extend(crds::trials());
    parallel.extend(day2::trials());
    parallel.extend(git::trials());
    parallel.extend(helm::trials());
    parallel.extend(hostile::trials());
    parallel.extend(kbld_cases::trials());
    parallel.extend(lock::trials());
    parallel.extend(receiver::trials());
    parallel.extend(registry::trials());
    parallel.extend(release::trials());
    parallel.extend(repo::trials());
    parallel.extend(sharding::trials());
    parallel.extend(signing::trials());
    parallel.extend(ship::trials());
    parallel.extend(sync::trials());
    parallel.extend(tce::trials());
    parallel.extend(tenancy::trials());
    parallel.extend(token_auth::trials());
    let mut serial = registry::serial_trials();
    serial.extend(sync::serial_trials());
    serial.extend(bundle::serial_trials());
    serial.extend(copy::serial_trials());
    serial.extend(controller_faults::serial_trials());
    (parallel, serial)
}
