//! docker credential helpers, for the CLI: `credHelpers` (by registry host) and `credsStore`
//! (every other host) of a docker config.json name programs `docker-credential-<name>` that
//! hold the credentials (Docker Desktop's keychain, `gcloud`, `ecr-login`, …).
//!
//! The protocol, as docker runs it (docker/docker-credential-helpers `client.Get`,
//! docker/cli `configfile.GetCredentialsStore`): `docker-credential-<name> get` with the
//! server URL on stdin answers `{"ServerURL", "Username", "Secret"}` on stdout; a Username of
//! `<token>` makes the Secret an identity token; "credentials not found" on stdout with a
//! failing exit means anonymous. A helper named for a host wins over `credsStore`, which wins
//! over the file's own `auths` entry. The controller never runs helpers: its credentials are
//! Secrets.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::OnceCell;

use super::auth::ClassifyMessage as _;
use super::{RegistryAuth, RegistryError};

/// A helper that has not answered by then is stuck (a prompt nobody sees).
const TIMEOUT: Duration = Duration::from_secs(60);
/// An answer is a few hundred bytes; more is not a credential.
const MAX_ANSWER: u64 = 1 << 20;
/// docker's key for Docker Hub (`registry.IndexServer`), the URL its helpers store under.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The helpers a docker config names, and what each host's helper answered (asked once per
/// host and process).
pub(super) struct Helpers {
    by_host: BTreeMap<String, String>,
    store: Option<String>,
    /// The config file that named them, for messages.
    source: String,
    answers: Mutex<HashMap<String, Arc<OnceCell<RegistryAuth>>>>,
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpers")
            .field("by_host", &self.by_host)
            .field("store", &self.store)
            .finish()
    }
}

impl Helpers {
    /// `None` when the config names no helper. Hosts are normalized as the `auths` keys are.
    pub(super) fn new(
        by_host: BTreeMap<String, String>,
        store: Option<String>,
        source: &str,
    ) -> Option<Self> {
        let store = store.filter(|s| !s.is_empty());
        let by_host: BTreeMap<String, String> = by_host
            .into_iter()
            .filter(|(_, helper)| !helper.is_empty())
            .collect();
        (store.is_some() || !by_host.is_empty()).then(|| Helpers {
            by_host,
            store,
            source: source.to_owned(),
            answers: Mutex::default(),
        })
    }

    /// The helper that holds `host`'s credentials (normalized host), if any.
    pub(super) fn helper_for(&self, host: &str) -> Option<&str> {
        self.by_host
            .get(host)
            .or(self.store.as_ref())
            .map(String::as_str)
    }

    /// What `host`'s helper answers, asked once per host.
    pub(super) async fn auth_for(
        &self,
        host: &str,
        helper: &str,
    ) -> Result<RegistryAuth, RegistryError> {
        let cell = {
            let mut answers = self
                .answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(answers.entry(host.to_owned()).or_default())
        };
        cell.get_or_try_init(|| self.ask(host, helper))
            .await
            .cloned()
    }

    async fn ask(&self, host: &str, helper: &str) -> Result<RegistryAuth, RegistryError> {
        let program = format!("docker-credential-{helper}");
        let server = if host == "index.docker.io" {
            DOCKER_HUB_SERVER
        } else {
            host
        };
        let error = |reason: String| RegistryError::Credentials {
            source_name: format!("{program} (named by {})", self.source),
            reason,
        };
        #[expect(
            clippy::disallowed_methods,
            reason = "issue 15 allows running docker credential helpers, as docker does"
        )]
        let mut command = tokio::process::Command::new(&program);
        let mut child = command
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => error(format!(
                    "{program} is not on PATH: install it, or remove the helper from the docker \
                     config"
                )),
                _ => error(format!("starting it: {e}")),
            })?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A helper may answer without reading its input (Go's os/exec ignores the
                // broken pipe too); its answer is what counts.
                match stdin.write_all(server.as_bytes()).await {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                    _ => {}
                }
            }
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let (out, err) = (child.stdout.take(), child.stderr.take());
            let read_out = async {
                match out {
                    Some(o) => o.take(MAX_ANSWER).read_to_end(&mut stdout).await.map(drop),
                    None => Ok(()),
                }
            };
            let read_err = async {
                match err {
                    Some(e) => e.take(MAX_ANSWER).read_to_end(&mut stderr).await.map(drop),
                    None => Ok(()),
                }
            };
            let (a, b) = tokio::join!(read_out, read_err);
            a?;
            b?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, stdout, stderr))
        };
        let (status, stdout, stderr) = tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| error(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(|e| error(format!("talking to it: {e}")))?;
        let stdout = String::from_utf8_lossy(&stdout);
        if !status.success() {
            // docker-credential-helpers' ErrCredentialsNotFound: anonymous, as docker treats it.
            if stdout.contains("credentials not found") {
                return Ok(RegistryAuth::Anonymous);
            }
            let said = [stdout.trim(), String::from_utf8_lossy(&stderr).trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(error(format!("`get {server}` failed ({status}): {said}")));
        }
        parse_answer(&stdout).map_err(|reason| error(format!("`get {server}`: {reason}")))
    }
}

/// The helper's JSON answer as what to send.
fn parse_answer(stdout: &str) -> Result<RegistryAuth, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        #[serde(default)]
        username: String,
        #[serde(default)]
        secret: String,
    }
    let answer: Answer = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("not the credential helper JSON: {}", e.classify_message()))?;
    Ok(match (answer.username.as_str(), answer.secret) {
        (_, secret) if secret.is_empty() => RegistryAuth::Anonymous,
        ("<token>", token) => RegistryAuth::Bearer(token),
        (username, password) => RegistryAuth::Basic(username.to_owned(), password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_basic_bearer_or_anonymous_and_never_echo_the_secret() {
        assert_eq!(
            parse_answer(r#"{"ServerURL":"r.io","Username":"u","Secret":"p"}"#),
            Ok(RegistryAuth::Basic("u".to_owned(), "p".to_owned()))
        );
        assert_eq!(
            parse_answer(r#"{"ServerURL":"r.io","Username":"<token>","Secret":"t"}"#),
            Ok(RegistryAuth::Bearer("t".to_owned()))
        );
        assert_eq!(
            parse_answer(r#"{"ServerURL":"r.io","Username":"","Secret":""}"#),
            Ok(RegistryAuth::Anonymous)
        );
        let err = parse_answer(r#"{"Username":"u","Secret":"hunter2""#).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_host_helper_wins_over_the_store() {
        let helpers = Helpers::new(
            BTreeMap::from([("gcr.io".to_owned(), "gcloud".to_owned())]),
            Some("desktop".to_owned()),
            "config.json",
        )
        .expect("helpers");
        assert_eq!(helpers.helper_for("gcr.io"), Some("gcloud"));
        assert_eq!(helpers.helper_for("r.io"), Some("desktop"));
        assert!(Helpers::new(BTreeMap::new(), Some(String::new()), "c").is_none());
        let only = Helpers::new(
            BTreeMap::from([("gcr.io".to_owned(), "gcloud".to_owned())]),
            None,
            "c",
        )
        .expect("helpers");
        assert_eq!(only.helper_for("r.io"), None);
    }
}
