//! The real test bed: kube-apiserver + etcd, two OCI registries, git/HTTP/GitHub upstreams,
//! all on 127.0.0.1, provisioned by `e2e/scripts/up.sh` and described by its env file.

pub mod images;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Everything a test needs to reach the bed.
#[derive(Debug, Clone)]
#[allow(
    dead_code,
    reason = "the whole env contract of up.sh; each stage's tests use their part of it"
)]
pub struct Bed {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub client_ca_crt: PathBuf,
    pub client_ca_key: PathBuf,
    pub k8s_version: String,
    /// `127.0.0.1:port` of the anonymous plain-HTTP registry.
    pub registry: String,
    /// `127.0.0.1:port` of the HTTPS registry with basic auth.
    pub registry_tls: String,
    pub registry_tls_ca: PathBuf,
    pub registry_user: String,
    pub registry_password: String,
    /// The registry with Docker token auth; `None` for a bed started by an up.sh that had none.
    pub token: Option<TokenRegistry>,
    /// `http://127.0.0.1:port/files`, serving `www_dir`.
    pub http_url: String,
    pub www_dir: PathBuf,
    /// `http://127.0.0.1:port/git`, serving bare repositories in `git_dir` as `<name>.git`.
    pub git_url: String,
    pub git_dir: PathBuf,
    /// Fake GitHub REST API base URL, serving releases from `github_dir`.
    pub github_api_url: String,
    pub github_dir: PathBuf,
    /// `ssh://root@127.0.0.1:port/<git_dir>`: sshd serving `git_dir` as `<name>.git`; empty
    /// with the env file of a bed from before sshd was part of it.
    pub ssh_url: String,
    /// The client key sshd accepts (unencrypted ed25519) and a known_hosts file naming sshd.
    pub ssh_key: PathBuf,
    pub ssh_known_hosts: PathBuf,
    /// `e2e/scripts` of this checkout.
    pub scripts_dir: PathBuf,
}

/// docker-registry configured with `auth: token`, and the token server that is its realm.
#[derive(Debug, Clone)]
pub struct TokenRegistry {
    /// `127.0.0.1:port`, plain HTTP.
    pub host: String,
    /// The only user the token server grants pull and push to.
    pub user: String,
    pub password: String,
    /// One JSON line per answer of the token server: `{"status", "user", "scopes"}`.
    pub issued_log: PathBuf,
}

static BED: OnceLock<Bed> = OnceLock::new();

/// The bed of this test run. Panics if called before `init` (a harness bug, not a test failure).
pub fn bed() -> &'static Bed {
    BED.get().expect("e2e bed not initialised")
}

pub fn init(bed: Bed) {
    let _ = BED.set(bed);
}

impl Bed {
    /// Reads the env file `up.sh` wrote.
    pub fn from_env_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading e2e env file {}: {e}", path.display()))?;
        let vars: BTreeMap<String, String> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        let get = |k: &str| -> anyhow::Result<String> {
            vars.get(&format!("PACKSMITH_E2E_{k}"))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{} lacks PACKSMITH_E2E_{k}", path.display()))
        };
        Ok(Self {
            state_dir: get("STATE_DIR")?.into(),
            kubeconfig: get("KUBECONFIG")?.into(),
            client_ca_crt: get("CLIENT_CA_CRT")?.into(),
            client_ca_key: get("CLIENT_CA_KEY")?.into(),
            k8s_version: get("K8S_VERSION")?,
            registry: get("REGISTRY")?,
            registry_tls: get("REGISTRY_TLS")?,
            registry_tls_ca: get("REGISTRY_TLS_CA")?.into(),
            registry_user: get("REGISTRY_USER")?,
            registry_password: get("REGISTRY_PASSWORD")?,
            // Optional, so a bed kept running from before it existed still serves other tests.
            token: match get("REGISTRY_TOKEN") {
                Ok(host) => Some(TokenRegistry {
                    host,
                    user: get("REGISTRY_TOKEN_USER")?,
                    password: get("REGISTRY_TOKEN_PASSWORD")?,
                    issued_log: get("TOKEN_ISSUED_LOG")?.into(),
                }),
                Err(_) => None,
            },
            http_url: get("HTTP_URL")?,
            www_dir: get("WWW_DIR")?.into(),
            git_url: get("GIT_URL")?,
            git_dir: get("GIT_DIR")?.into(),
            github_api_url: get("GITHUB_API_URL")?,
            github_dir: get("GITHUB_DIR")?.into(),
            ssh_url: get("SSH_URL").unwrap_or_default(),
            ssh_key: get("SSH_KEY").unwrap_or_default().into(),
            ssh_known_hosts: get("SSH_KNOWN_HOSTS").unwrap_or_default().into(),
            scripts_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/scripts"),
        })
    }

    /// A kube client for the bed's admin kubeconfig.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs `ctl.sh` (fault injection): `action` is stop|start|pause|resume, `registry` plain|tls.
    pub fn registry_ctl(&self, action: &str, registry: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("bash")
            .arg(self.scripts_dir.join("ctl.sh"))
            .arg(&self.state_dir)
            .arg(action)
            .arg(registry)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "ctl.sh {action} {registry} failed: {status}"
        );
        Ok(())
    }
}

/// Runs an async test body on its own runtime: libtest-mimic runs trials on threads.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(
    f: F,
) -> Result<(), libtest_mimic::Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| libtest_mimic::Failed::from(format!("tokio runtime: {e}")))?;
    rt.block_on(f).map_err(|e| format!("{e:#}").into())
}

/// A fresh namespace for one test, so tests share the apiserver without seeing each other.
pub async fn namespace(client: &kube::Client, prefix: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let name = format!(
        "{prefix}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name }
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(name)
}

/// The API of `obj`'s kind (found through discovery, namespaced ones in their own namespace
/// or else `namespace`) and its name.
pub async fn dynamic_api(
    client: &kube::Client,
    namespace: &str,
    obj: &kube::api::DynamicObject,
) -> anyhow::Result<(kube::Api<kube::api::DynamicObject>, String)> {
    use kube::api::{Api, GroupVersionKind};
    let types = obj
        .types
        .clone()
        .ok_or_else(|| anyhow::anyhow!("document without apiVersion/kind"))?;
    let (group, version) = match types.api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), types.api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &types.kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{} without metadata.name", types.kind))?;
    Ok((api, name))
}

/// Server-side applies every document of a YAML stream (namespaced ones into `namespace`),
/// resolving kinds through discovery, as `kubectl apply --server-side` would.
pub async fn apply_yaml(
    client: &kube::Client,
    namespace: &str,
    yaml: &str,
) -> anyhow::Result<Vec<kube::api::DynamicObject>> {
    use kube::api::{DynamicObject, Patch, PatchParams};
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)?;
    let mut applied = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let obj: DynamicObject = serde_json::from_value(doc)?;
        let (api, name) = dynamic_api(client, namespace, &obj).await?;
        let pp = PatchParams::apply("packsmith-e2e").force();
        applied.push(api.patch(&name, &pp, &Patch::Apply(&obj)).await?);
    }
    Ok(applied)
}

/// A docker config dir whose config.json holds `user:password` for `host`, in the `auth` form
/// `docker login` writes.
pub fn docker_config(host: &str, user: &str, password: &str) -> anyhow::Result<tempfile::TempDir> {
    use base64::Engine as _;
    let dir = tempfile::tempdir()?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { host: { "auth": auth } } });
    std::fs::write(dir.path().join("config.json"), config.to_string())?;
    Ok(dir)
}

/// A name part no other run of a trial uses (nanoseconds since the epoch, in hex), for
/// registry repositories and files the trials share.
pub fn unique_id() -> anyhow::Result<String> {
    Ok(format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ))
}
