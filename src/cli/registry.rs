//! Registry flags shared by every command that talks to a registry (lock, push, pull,
//! release), so they are spelled and behave the same everywhere.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::bundle::Location;
use crate::registry::{Credentials, Mirror, Registry, RegistryOptions};

/// How to reach registries: the flags every registry-facing command shares.
#[derive(Args, Debug)]
pub(super) struct RegistryArgs {
    /// Resolve FROM's repositories through the registry TO (repeatable), e.g.
    /// quay.io=127.0.0.1:5000; what is recorded keeps FROM's names.
    #[arg(long, value_name = "FROM=TO")]
    pub registry_mirror: Vec<String>,
    /// Speak plain HTTP to this registry host[:port] (repeatable).
    #[arg(long, value_name = "HOST")]
    registry_insecure_host: Vec<String>,
    /// Trust this PEM CA bundle for registries (repeatable).
    #[arg(long, value_name = "FILE")]
    registry_ca_cert_path: Vec<PathBuf>,
    /// docker config.json with registry credentials [default: $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// Username for the bundle's registry (with --registry-password).
    #[arg(
        long,
        env = "PACKSMITH_REGISTRY_USERNAME",
        requires = "registry_password"
    )]
    registry_username: Option<String>,
    /// Password for the bundle's registry.
    #[arg(
        long,
        env = "PACKSMITH_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "registry_username"
    )]
    registry_password: Option<String>,
}

impl RegistryArgs {
    /// A registry client; `host` is the bundle's registry, which the username/password apply to.
    pub(super) fn registry(&self, host: Option<&str>) -> anyhow::Result<Registry> {
        Ok(Registry::new(self.options(host)?)?)
    }

    /// The options behind [`RegistryArgs::registry`], for commands that add their own.
    pub(super) fn options(&self, host: Option<&str>) -> anyhow::Result<RegistryOptions> {
        let ca_pems = self
            .registry_ca_cert_path
            .iter()
            .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut credentials = match &self.registry_config {
            Some(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Credentials::from_docker_config_json_with_helpers(
                    &bytes,
                    &path.display().to_string(),
                )?
            }
            None => Credentials::from_default_docker_config_with_helpers()?,
        };
        if let (Some(host), Some(user), Some(password)) =
            (host, &self.registry_username, &self.registry_password)
        {
            credentials.merge(Credentials::basic(host, user, password));
        }
        let mirrors = self
            .registry_mirror
            .iter()
            .map(|spec| Mirror::parse(spec, false).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RegistryOptions {
            mirrors,
            insecure_hosts: self.registry_insecure_host.clone(),
            ca_pems,
            credentials,
            ..RegistryOptions::default()
        })
    }
}

/// The registry host of `location`, if it is in a registry.
pub(super) fn registry_host(location: &Location) -> Option<&str> {
    match location {
        Location::Registry(r) => Some(r.registry()),
        Location::Layout(_) => None,
    }
}
