//! Registry credentials in the docker config.json shape, which is also the payload of a
//! `kubernetes.io/dockerconfigjson` Secret, so the CLI and the controller share one parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::RegistryError;
use super::helper::Helpers;

/// Credentials by registry host. Debug output never shows secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
    /// docker credential helpers (the CLI only; see `helper.rs`).
    helpers: Option<std::sync::Arc<Helpers>>,
    /// Hosts whose entry was given outright (flags, a Secret, [`Credentials::basic`]): no
    /// helper is asked for them.
    explicit: std::collections::BTreeSet<String>,
}

#[derive(Clone, PartialEq, Eq)]
enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`) or a registry token used as a bearer token.
    Bearer(String),
}

/// What is sent to one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    /// Username and password: sent as basic credentials, or exchanged for a token.
    Basic(String, String),
    /// Sent as is as a bearer token.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which kind, never the secret.
        f.write_str(match self {
            RegistryAuth::Anonymous => "Anonymous",
            RegistryAuth::Basic(..) => "Basic",
            RegistryAuth::Bearer(_) => "Bearer",
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .field("helpers", &self.helpers)
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl Credentials {
    /// A digest of every credential and the helpers in use: equal for equal credentials,
    /// and revealing nothing of them.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for (host, credential) in &self.by_host {
            let explicit = self.explicit.contains(host);
            let line = match credential {
                Credential::Basic { username, password } => {
                    format!("{host} {explicit} basic {username:?} {password:?}\n")
                }
                Credential::Bearer(token) => format!("{host} {explicit} bearer {token:?}\n"),
            };
            text.push_str(&line);
        }
        if let Some(helpers) = &self.helpers {
            // Helpers answer at request time: two sets of helpers are one identity only when
            // they are the same object.
            text.push_str(&format!("helpers {:p}\n", std::sync::Arc::as_ptr(helpers)));
        }
        super::digest::sha256_digest(text.as_bytes())
    }

    /// Parses a docker config.json / `.dockerconfigjson` payload. `source` names it in errors
    /// (a path or `Secret ns/name`); the payload itself never appears in an error.
    /// `credsStore` and `credHelpers` are ignored: the controller's credentials are Secrets
    /// (see [`Credentials::from_docker_config_json_with_helpers`] for the CLI's).
    pub fn from_docker_config_json(bytes: &[u8], source: &str) -> Result<Self, RegistryError> {
        Self::parse(bytes, source, false)
    }

    /// [`Credentials::from_docker_config_json`], honouring the config's `credsStore` and
    /// `credHelpers` as docker does: their programs (`docker-credential-<name>`) are asked for
    /// a host's credentials when it is first contacted.
    pub fn from_docker_config_json_with_helpers(
        bytes: &[u8],
        source: &str,
    ) -> Result<Self, RegistryError> {
        Self::parse(bytes, source, true)
    }

    fn parse(bytes: &[u8], source: &str, helpers: bool) -> Result<Self, RegistryError> {
        let config: DockerConfig =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::Credentials {
                source_name: source.to_owned(),
                reason: format!("not a docker config.json: {}", e.classify_message()),
            })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in config.auths {
            let host = host_of(&key);
            let credential =
                entry
                    .into_credential()
                    .map_err(|reason| RegistryError::Credentials {
                        source_name: source.to_owned(),
                        reason: format!("entry {host:?}: {reason}"),
                    })?;
            if let Some(c) = credential {
                by_host.insert(host, c);
            }
        }
        let helpers = helpers
            .then(|| {
                let by_host = config
                    .cred_helpers
                    .into_iter()
                    .map(|(key, helper)| (host_of(&key), helper))
                    .collect();
                Helpers::new(by_host, config.creds_store, source)
            })
            .flatten()
            .map(std::sync::Arc::new);
        Ok(Self {
            by_host,
            helpers,
            explicit: Default::default(),
        })
    }

    /// Reads `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when present, as docker,
    /// crane and imgpkg do; no file means no credentials. Credential helpers are ignored (the
    /// controller's rule); the CLI uses [`Credentials::from_default_docker_config_with_helpers`].
    pub fn from_default_docker_config() -> Result<Self, RegistryError> {
        Self::default_docker_config(false)
    }

    /// [`Credentials::from_default_docker_config`] with its `credsStore` and `credHelpers`.
    pub fn from_default_docker_config_with_helpers() -> Result<Self, RegistryError> {
        Self::default_docker_config(true)
    }

    fn default_docker_config(helpers: bool) -> Result<Self, RegistryError> {
        let Some(path) = default_docker_config_path() else {
            return Ok(Self::default());
        };
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes, &path.display().to_string(), helpers),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RegistryError::Credentials {
                source_name: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Basic credentials for one host.
    pub fn basic(host: &str, username: &str, password: &str) -> Self {
        let mut c = Self::default();
        c.explicit.insert(host_of(host));
        c.by_host.insert(
            host_of(host),
            Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        );
        c
    }

    /// Adds `other`'s entries; on a host both know, `other` wins (a Secret named on the object
    /// overrides the controller's defaults).
    pub fn merge(&mut self, other: Credentials) {
        self.explicit.extend(other.explicit);
        if other.helpers.is_none() {
            self.explicit.extend(other.by_host.keys().cloned());
        }
        self.by_host.extend(other.by_host);
        if other.helpers.is_some() {
            self.helpers = other.helpers;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// Drops what is known for `host` (as contacted).
    pub fn forget(&mut self, host: &str) {
        self.by_host.remove(&host_of(host));
    }

    /// What to send to `host`, asking its credential helper when the docker config names one
    /// (a helper wins over the file's own entry, as in docker).
    pub async fn resolve(&self, host: &str) -> Result<RegistryAuth, RegistryError> {
        let key = host_of(host);
        match self.helpers.as_deref() {
            Some(helpers) if !self.explicit.contains(&key) => match helpers.helper_for(&key) {
                Some(helper) => helpers.auth_for(&key, helper).await,
                None => Ok(self.auth_for(host)),
            },
            _ => Ok(self.auth_for(host)),
        }
    }

    /// What to send to `host` (as contacted: `Reference::resolve_registry`), from the config's
    /// own entries.
    pub fn auth_for(&self, host: &str) -> RegistryAuth {
        let key = host_of(host);
        match self.by_host.get(&key) {
            Some(Credential::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(Credential::Bearer(token)) => RegistryAuth::Bearer(token.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

impl DockerAuth {
    fn into_credential(self) -> Result<Option<Credential>, String> {
        if let Some(token) = self
            .registrytoken
            .or(self.identitytoken)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(Credential::Bearer(token)));
        }
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            return Ok(Some(Credential::Basic {
                username: username.clone(),
                password: password.clone(),
            }));
        }
        let Some(auth) = self.auth.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "`auth` is not base64".to_owned())?;
        let decoded = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8".to_owned())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "`auth` must encode username:password".to_owned())?;
        Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }))
    }
}

/// docker config keys may be URLs (`https://index.docker.io/v1/`); match on the host, with
/// Docker Hub's aliases folded to the host that references resolve to.
fn host_of(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => "index.docker.io".to_owned(),
        h => h.to_owned(),
    }
}

fn default_docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker/config.json"))
}

/// serde_json errors can quote the input; only say where parsing failed, never what was there.
pub(super) trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        format!(
            "invalid JSON at line {} column {}",
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_asked_only_in_the_cli_and_never_over_explicit_credentials() {
        let json = br#"{"credsStore": "packsmith-test-absent",
            "auths": {"r.io": {"username": "file", "password": "pw"}}}"#;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // The controller's parse ignores helpers: the file's entry.
        let controller = Credentials::from_docker_config_json(json, "c").expect("parse");
        assert_eq!(
            runtime
                .block_on(controller.resolve("r.io"))
                .expect("no helper"),
            RegistryAuth::Basic("file".to_owned(), "pw".to_owned())
        );
        // The CLI's asks the store, which wins over the file's entry (here: it is missing).
        let mut cli = Credentials::from_docker_config_json_with_helpers(json, "c").expect("parse");
        let err = runtime
            .block_on(cli.resolve("r.io"))
            .expect_err("the helper is not installed")
            .to_string();
        assert!(
            err.contains("docker-credential-packsmith-test-absent is not on PATH"),
            "{err}"
        );
        // Credentials given outright (flags) are not looked up.
        cli.merge(Credentials::basic("r.io", "flag", "pw2"));
        assert_eq!(
            runtime.block_on(cli.resolve("r.io")).expect("explicit"),
            RegistryAuth::Basic("flag".to_owned(), "pw2".to_owned())
        );
    }

    #[test]
    fn reads_every_docker_config_form() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"username": "u", "password": "p"},
            "ghcr.io": {"identitytoken": "tok"},
            "empty.example.com": {}
        }}"#;
        let c = Credentials::from_docker_config_json(json, "test").unwrap();
        assert_eq!(
            c.auth_for("index.docker.io"),
            RegistryAuth::Basic("user".into(), "pass".into())
        );
        assert_eq!(
            c.auth_for("127.0.0.1:5000"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(c.auth_for("ghcr.io"), RegistryAuth::Bearer("tok".into()));
        assert_eq!(c.auth_for("empty.example.com"), RegistryAuth::Anonymous);
        assert_eq!(c.auth_for("quay.io"), RegistryAuth::Anonymous);
    }

    #[test]
    fn errors_name_the_source_but_never_the_secret() {
        let err = Credentials::from_docker_config_json(
            br#"{"auths": {"r.io": {"auth": "c2VjcmV0"}}}"#,
            "Secret ns/creds",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("Secret ns/creds") && err.contains("username:password"),
            "{err}"
        );
        assert!(
            !err.contains("c2VjcmV0") && !err.contains("secret"),
            "{err}"
        );

        let err = Credentials::from_docker_config_json(b"{\"auths\": s3cr3t", "f.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.json") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn merge_prefers_the_newer_entry_and_debug_hides_secrets() {
        let mut a = Credentials::basic("r.io", "a", "pa");
        a.merge(Credentials::basic("r.io", "b", "pb"));
        assert_eq!(
            a.auth_for("r.io"),
            RegistryAuth::Basic("b".into(), "pb".into())
        );
        assert!(!format!("{a:?}").contains("pb"));
    }
}
