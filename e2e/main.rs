//! End-to-end tests against the real test bed (kube-apiserver + etcd, OCI registries, git and
//! HTTP upstreams on 127.0.0.1). Run with `cargo test --test e2e` or `make test`.
//!
//! The bed comes from `PACKSMITH_E2E_ENV` (an env file written by `make e2e-up`) or is started
//! here with `e2e/scripts/up.sh` and stopped at the end. `PACKSMITH_E2E=0` is the only way to
//! skip; a bed that fails to start fails the run with the component's name and log.

#![allow(
    unreachable_pub,
    reason = "a test binary has no API: `pub` marks what its modules share"
)]
// The suite drives real processes (git, ssh-keygen, the packsmith binary, the bed's scripts)
// and builds its own clients to check what packsmith wrote: clippy.toml's run-time rules do
// not apply to it.
#![allow(clippy::disallowed_methods)]

mod support;
mod tests;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let (parallel, serial) = tests::trials();

    if std::env::var("PACKSMITH_E2E").as_deref() == Ok("0") {
        eprintln!("e2e: PACKSMITH_E2E=0, every end-to-end test is skipped");
        let all = parallel
            .into_iter()
            .chain(serial)
            .map(|t| t.with_ignored_flag(true));
        return exit_code(libtest_mimic::run(&args, all.collect()).has_failed());
    }
    if args.list {
        let all: Vec<Trial> = parallel.into_iter().chain(serial).collect();
        return exit_code(libtest_mimic::run(&args, all).has_failed());
    }

    let provisioned = match provision() {
        Ok(p) => p,
        Err(err) => {
            eprintln!("e2e: the test bed did not start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    support::init(provisioned.bed.clone());
    if let Err(err) = support::block_on(tests::crds::install()) {
        eprintln!(
            "e2e: installing CRDs failed: {}",
            err.message().unwrap_or("?")
        );
        provisioned.teardown();
        return ExitCode::FAILURE;
    }

    let mut failed = libtest_mimic::run(&args, parallel).has_failed();
    // Fault-injection trials stop shared components, so they run after the rest, one at a time.
    let serial_args = Arguments {
        test_threads: Some(1),
        ..args.clone()
    };
    failed |= libtest_mimic::run(&serial_args, serial).has_failed();
    provisioned.teardown();
    exit_code(failed)
}

fn exit_code(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

struct Provisioned {
    bed: support::Bed,
    /// State dir to tear down, when this process started the bed.
    owned: Option<PathBuf>,
}

impl Provisioned {
    fn teardown(&self) {
        if let Some(dir) = &self.owned {
            let _ = Command::new("bash")
                .arg(self.bed.scripts_dir.join("down.sh"))
                .arg(dir)
                .status();
        }
    }
}

fn provision() -> anyhow::Result<Provisioned> {
    if let Ok(env) = std::env::var("PACKSMITH_E2E_ENV") {
        let bed = support::Bed::from_env_file(&PathBuf::from(&env))?;
        eprintln!("e2e: using the running bed described by {env}");
        return Ok(Provisioned { bed, owned: None });
    }
    let state = tempfile::Builder::new()
        .prefix("packsmith-e2e-")
        .tempdir()?
        .keep();
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/scripts");
    let status = Command::new("bash")
        .arg(scripts.join("up.sh"))
        .arg(&state)
        .status()?;
    if !status.success() {
        let _ = Command::new("bash")
            .arg(scripts.join("down.sh"))
            .arg(&state)
            .status();
        anyhow::bail!(
            "e2e/scripts/up.sh exited with {status} (its stderr above names the component and log)"
        );
    }
    let bed = support::Bed::from_env_file(&state.join("env"))?;
    Ok(Provisioned {
        bed,
        owned: Some(state),
    })
}
