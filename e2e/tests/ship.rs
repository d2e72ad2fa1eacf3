//! What ships: the Helm chart, the kustomize base, the CRD copies and the CRD reference.
//!
//! - the chart's and kustomize's CRDs are the repository's `crds/` byte for byte, and
//!   docs/crd-reference.md is what `e2e/scripts/crd-docs.py` generates from them;
//! - `helm lint --strict` passes for the defaults and the HA / namespaced / ServiceMonitor
//!   variant;
//! - `helm template` output (with its CRDs) and `kubectl kustomize config/default` are accepted
//!   by the bed's apiserver (server-side apply, dry run), run the controller hardened
//!   (non-root, read-only root, no privilege escalation, RuntimeDefault seccomp) and grant the
//!   same rules;
//! - `packsmith controller`, started with the rendered Deployment's arguments and authenticated
//!   as the chart's ServiceAccount (a TokenRequest token, as in a Pod), with only the rendered
//!   Role/RoleBindings applied, takes the Lease, reconciles to Ready a git source (Secret, CA
//!   Secret and ConfigMap references, TLS registry) that a PackageRepositorySource selects (its
//!   release recorded in a ConfigMap), an unselected source (its Package applied) and the
//!   repository, records events, cleans up on deletion, never hits a `forbidden`, and cannot
//!   read Secrets elsewhere.
//!
//! helm and kubectl come from `e2e/scripts/install-tools.sh` (run by install-deps.sh); when
//! they are missing these trials fail saying so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch};
use kube::api::{PatchParams, PostParams};
use libtest_mimic::Trial;
use packsmith::api::conditions::{reasons, types};
use packsmith::api::{PackageRepositorySource, PackageSource};
use packsmith::carvel::Package;
use serde_json::Value;

use crate::support::images::{ImageKind, Registry, push_image};
use crate::support::{apply_yaml, bed, block_on, namespace};
use crate::tests::controller::{bundle_image, has, wait_for};
use crate::tests::git::make_repo;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "packsmith";

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("ship::crd_copies_and_reference_are_current", || {
            crd_copies_and_reference_are_current().map_err(|e| format!("{e:#}").into())
        }),
        Trial::test("ship::chart_lints", || {
            chart_lints().map_err(|e| format!("{e:#}").into())
        }),
        Trial::test("ship::chart_and_kustomize_apply_server_side", || {
            block_on(chart_and_kustomize_apply_server_side())
        }),
        Trial::test("ship::controller_under_chart_rbac_reaches_ready", || {
            block_on(controller_under_chart_rbac_reaches_ready())
        }),
    ]
}

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// `name.yaml -> bytes` of the YAML files directly in `dir`.
fn yaml_files(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

fn crd_copies_and_reference_are_current() -> anyhow::Result<()> {
    let generated = yaml_files(&root().join("crds"))?;
    anyhow::ensure!(!generated.is_empty(), "crds/ holds no CRD");
    for copy in ["charts/packsmith/crds", "config/crds"] {
        let copied = yaml_files(&root().join(copy))?;
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        anyhow::ensure!(
            names(&copied) == names(&generated),
            "{copy} holds {:?} but crds/ holds {:?}: run `make chart-crds`",
            names(&copied),
            names(&generated)
        );
        for ((name, a), (_, b)) in copied.iter().zip(&generated) {
            anyhow::ensure!(
                a == b,
                "{copy}/{name} differs from crds/{name}: run `make chart-crds`"
            );
        }
    }
    let out = Command::new("python3")
        .arg(root().join("e2e/scripts/crd-docs.py"))
        .arg("--check")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "docs/crd-reference.md is not what crds/ generates ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// helm and kubectl, as `install-tools.sh --no-build` reports them.
struct Tools {
    helm: PathBuf,
    kubectl: PathBuf,
}

fn tools() -> anyhow::Result<Tools> {
    let out = Command::new("bash")
        .arg(bed().scripts_dir.join("install-tools.sh"))
        .arg("--no-build")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm/kubectl are missing, so the chart and kustomize cannot be tested (run \
         e2e/scripts/install-deps.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("install-tools.sh printed no {key}= line:\n{text}"))
    };
    Ok(Tools {
        helm: get("helm")?,
        kubectl: get("kubectl")?,
    })
}

/// The bed's helm (the version the container image ships).
pub(crate) fn helm_binary() -> anyhow::Result<PathBuf> {
    tools().map(|t| t.helm)
}

/// Runs a tool, failing with its stderr; returns its stdout.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn chart_dir() -> PathBuf {
    root().join("charts/packsmith")
}

fn helm_template(tools: &Tools, ns: &str, sets: &[&str], crds: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(&tools.helm);
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", ns]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    if crds {
        cmd.arg("--include-crds");
    }
    run(&mut cmd)
}

const HA_NAMESPACED_MONITORED: [&str; 3] = [
    "replicaCount=2",
    "watchNamespace=team-a",
    "metrics.serviceMonitor.enabled=true",
];

fn chart_lints() -> anyhow::Result<()> {
    let tools = tools()?;
    let variants: [&[&str]; 2] = [&[], &HA_NAMESPACED_MONITORED];
    for sets in variants {
        let mut cmd = Command::new(&tools.helm);
        cmd.args(["lint", "--strict"]).arg(chart_dir());
        for set in sets {
            cmd.args(["--set", set]);
        }
        let out = run(&mut cmd)?;
        anyhow::ensure!(
            out.contains("0 chart(s) failed") && !out.contains("[WARNING]"),
            "helm lint {sets:?}:\n{out}"
        );
    }
    // Values that would run replicas racing each other are refused, not rendered.
    let out = Command::new(&tools.helm)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args([
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=false",
        ])
        .output()?;
    anyhow::ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("needs leaderElection"),
        "replicaCount=2 without leader election rendered: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn docs(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == kind).collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => anyhow::bail!("expected one {kind}, found {}", found.len()),
    }
}

/// Server-side applies every document with `dryRun=All`: the apiserver validates, defaults and
/// admits them (schemas, RBAC escalation checks, CEL rules) and stores nothing.
async fn dry_run_apply(client: &kube::Client, ns: &str, docs: &[Value]) -> anyhow::Result<()> {
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let (api, name) = crate::support::dynamic_api(client, ns, &obj).await?;
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let pp = PatchParams::apply("packsmith-e2e-ship").force().dry_run();
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
    }
    Ok(())
}

/// The hardening the issue asks of every install method.
fn check_hardened(deployment: &Value, what: &str) -> anyhow::Result<()> {
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    let checks = [
        (
            "runAsNonRoot",
            pod["securityContext"]["runAsNonRoot"] == true,
        ),
        (
            "seccomp RuntimeDefault",
            pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        ),
        (
            "readOnlyRootFilesystem",
            sc["readOnlyRootFilesystem"] == true,
        ),
        (
            "allowPrivilegeEscalation false",
            sc["allowPrivilegeEscalation"] == false,
        ),
        (
            "capabilities drop ALL",
            sc["capabilities"]["drop"][0] == "ALL",
        ),
        (
            "resources",
            container["resources"]["requests"].is_object()
                && container["resources"]["limits"]["memory"].is_string(),
        ),
        (
            "liveness /healthz",
            container["livenessProbe"]["httpGet"]["path"] == "/healthz",
        ),
        (
            "readiness /readyz",
            container["readinessProbe"]["httpGet"]["path"] == "/readyz",
        ),
    ];
    for (name, ok) in checks {
        anyhow::ensure!(ok, "{what}: the Deployment lacks {name}:\n{deployment:#}");
    }
    Ok(())
}

fn args_of(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Rules as a set of (apiGroups, resources, resourceNames, verbs), order-insensitive.
fn rules(role: &Value) -> BTreeSet<String> {
    let sorted = |v: &Value| {
        let mut items: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_default();
        items.sort();
        items.join(",")
    };
    role["rules"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    format!(
                        "{} | {} | {} | {}",
                        sorted(&r["apiGroups"]),
                        sorted(&r["resources"]),
                        sorted(&r["resourceNames"]),
                        sorted(&r["verbs"])
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn by_name<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| {
            kind_of(d) == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .ok_or_else(|| anyhow::anyhow!("no {kind} named *{suffix}"))
}

async fn chart_and_kustomize_apply_server_side() -> anyhow::Result<()> {
    let tools = tools()?;
    let client = bed().client().await?;
    let ns = namespace(&client, "ship-dry").await?;

    // Defaults, with the CRDs: one replica, cluster-wide, no leader election.
    let default = docs(&helm_template(&tools, &ns, &[], true)?)?;
    let kinds: BTreeSet<&str> = default.iter().map(kind_of).collect();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
    ];
    anyhow::ensure!(
        kinds == want.into_iter().collect(),
        "default render: kinds {kinds:?}"
    );
    dry_run_apply(&client, &ns, &default).await?;
    // People bound to the built-in edit role may patch both kinds (get|reconcile|suspend).
    anyhow::ensure!(
        default.iter().any(|d| {
            kind_of(d) == "ClusterRole"
                && d["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
                && d["rules"].as_array().is_some_and(|rules| {
                    rules.iter().any(|r| {
                        r["resources"].to_string().contains("packagesources")
                            && r["verbs"].to_string().contains("patch")
                    })
                })
        }),
        "the default render aggregates patch on packagesources into the edit role"
    );
    let deployment = find(&default, "Deployment")?;
    check_hardened(deployment, "chart defaults")?;
    anyhow::ensure!(
        !args_of(deployment).contains(&"--leader-elect".to_owned())
            && deployment["spec"]["strategy"]["type"] == "Recreate",
        "one replica: no leader election and Recreate: {deployment:#}"
    );

    // Two replicas in one namespace: leader election on, Roles instead of a ClusterRole.
    let watched = format!("watchNamespace={ns}");
    let ha = docs(&helm_template(
        &tools,
        &ns,
        &["replicaCount=2", &watched],
        false,
    )?)?;
    anyhow::ensure!(
        !ha.iter().any(|d| kind_of(d).starts_with("Cluster")),
        "a watched namespace must grant nothing cluster-wide"
    );
    dry_run_apply(&client, &ns, &ha).await?;

    // Two shards beside the unsharded default: a Deployment each, each with its selector and
    // its own Lease, every Lease grantable.
    let sharded = docs(&helm_template(
        &tools,
        &ns,
        &["replicaCount=2", "sharding.shards={shard1,shard2}"],
        false,
    )?)?;
    dry_run_apply(&client, &ns, &sharded).await?;
    let mut shards: Vec<(String, String)> = sharded
        .iter()
        .filter(|d| kind_of(d) == "Deployment")
        .map(|d| {
            let args = args_of(d);
            let find = |prefix: &str| {
                args.iter()
                    .find_map(|a| a.strip_prefix(prefix).map(str::to_owned))
                    .unwrap_or_default()
            };
            (
                find("--watch-label-selector="),
                find("--leader-election-id="),
            )
        })
        .collect();
    shards.sort();
    anyhow::ensure!(
        shards
            == [
                (
                    "!sharding.packsmith.dev/key".to_owned(),
                    "packsmith-controller".to_owned()
                ),
                (
                    "sharding.packsmith.dev/key in (shard1)".to_owned(),
                    "packsmith-controller-shard1".to_owned()
                ),
                (
                    "sharding.packsmith.dev/key in (shard2)".to_owned(),
                    "packsmith-controller-shard2".to_owned()
                ),
            ],
        "shards: {shards:?}"
    );
    let leases = by_name(&sharded, "Role", "-leader-election")?.to_string();
    anyhow::ensure!(
        leases.contains("packsmith-controller-shard2"),
        "the Role grants every shard's Lease: {leases}"
    );

    let ha_deployment = find(&ha, "Deployment")?;
    check_hardened(ha_deployment, "chart HA")?;
    let args = args_of(ha_deployment);
    anyhow::ensure!(
        args.contains(&"--leader-elect".to_owned()) && args.contains(&format!("--namespace={ns}")),
        "HA args: {args:?}"
    );

    // The ServiceMonitor renders (the bed has no prometheus-operator CRD to apply it to).
    let monitored = docs(&helm_template(
        &tools,
        &ns,
        &["metrics.serviceMonitor.enabled=true"],
        false,
    )?)?;
    let monitor = find(&monitored, "ServiceMonitor")?;
    anyhow::ensure!(
        monitor["spec"]["endpoints"][0]["port"] == "metrics",
        "{monitor:#}"
    );

    // The NetworkPolicy (the bed has no network plugin to enforce it: the API server's
    // validation is what is checked here).
    let fenced = docs(&helm_template(
        &tools,
        &ns,
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.egress.apiServerCIDRs={127.0.0.1/32}",
        ],
        false,
    )?)?;
    dry_run_apply(&client, &ns, &fenced).await?;
    let policy = find(&fenced, "NetworkPolicy")?;
    let egress = policy["spec"]["egress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        egress.iter().any(|rule| rule["to"][0]["ipBlock"]["except"]
            .as_array()
            .is_some_and(|e| e.iter().any(|c| c == "169.254.0.0/16"))),
        "egress to cloud metadata is excepted: {policy:#}"
    );

    // kustomize: its own namespace (created for real: a dry-run Namespace leaves nothing for the
    // namespaced objects to land in), everything else dry run.
    let kustomized = docs(&run(Command::new(&tools.kubectl)
        .arg("kustomize")
        .arg(root().join("config/default")))?)?;
    let namespace_doc = find(&kustomized, "Namespace")?;
    apply_yaml(&client, &ns, &serde_json::to_string(namespace_doc)?).await?;
    let rest: Vec<Value> = kustomized
        .iter()
        .filter(|d| kind_of(d) != "Namespace")
        .cloned()
        .collect();
    dry_run_apply(&client, &ns, &rest).await?;
    let k_deployment = find(&kustomized, "Deployment")?;
    check_hardened(k_deployment, "kustomize")?;

    // One set of rules, whichever way it is installed.
    let pairs = [
        (
            rules(by_name(&default, "ClusterRole", RELEASE)?),
            rules(by_name(&kustomized, "ClusterRole", "packsmith")?),
            "controller rules",
        ),
        (
            rules(by_name(&ha, "Role", "-leader-election")?),
            rules(find(&kustomized, "Role")?),
            "leader-election rules",
        ),
        (
            rules(by_name(&default, "ClusterRole", RELEASE)?),
            rules(by_name(&ha, "Role", RELEASE)?),
            "ClusterRole vs namespaced Role",
        ),
    ];
    for (a, b, what) in pairs {
        anyhow::ensure!(a == b, "{what} differ:\n{a:#?}\nvs\n{b:#?}");
    }

    // The demo example, with the bed's addresses, is a valid PackageSource.
    let demo = std::fs::read_to_string(root().join("examples/demo/packagesource.yaml"))?
        .replace("${DEMO_GIT_URL}", &bed().git_url)
        .replace("${DEMO_REGISTRY}", &bed().registry)
        .replace("namespace: packsmith-demo", &format!("namespace: {ns}"));
    dry_run_apply(&client, &ns, &docs(&demo)?).await?;
    Ok(())
}

/// The controller as a child process; killed if the trial ends early.
struct ControllerProcess {
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, as the kubelet sends, then the exit status.
    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        Ok(self.child.wait()?)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A kubeconfig for the bed's apiserver that authenticates with `token`.
fn token_kubeconfig(token: &str, ns: &str) -> anyhow::Result<String> {
    let admin: Value = serde_saphyr::from_str(&std::fs::read_to_string(&bed().kubeconfig)?)?;
    let cluster = &admin["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().unwrap_or_default();
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .unwrap_or_default();
    anyhow::ensure!(
        !server.is_empty() && !ca.is_empty(),
        "the bed's kubeconfig names no server or CA"
    );
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: packsmith\n  user:\n    token: {token}\n\
         contexts:\n- name: packsmith\n  context:\n    cluster: bed\n    user: packsmith\n    \
         namespace: {ns}\ncurrent-context: packsmith\n"
    ))
}

async fn sa_client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

async fn controller_under_chart_rbac_reaches_ready() -> anyhow::Result<()> {
    let tools = tools()?;
    let client = bed().client().await?;
    let ns = namespace(&client, "ship-rbac").await?;

    // The chart as a namespaced HA install, applied for real (the Deployment has no kubelet
    // to run it: this trial runs its container's command instead).
    let watched = format!("watchNamespace={ns}");
    let rendered = helm_template(&tools, &ns, &["replicaCount=2", &watched], false)?;
    apply_yaml(&client, &ns, &rendered).await?;
    let rendered = docs(&rendered)?;
    let deployment = find(&rendered, "Deployment")?;
    let sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Its identity: a token of that ServiceAccount, as the kubelet would mount.
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(
            &sa_name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await?
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow::anyhow!("the TokenRequest returned no token"))?;
    let work = tempfile::tempdir()?;
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(&token, &ns)?)?;

    // Upstream: a git repo whose manifest names an image served by the plain registry under
    // quay.io's name; the bundle goes to the TLS registry with a Secret's credentials and CA.
    push_image(
        &Registry::plain(bed()),
        "example/ship-app",
        "v1.0.0",
        ImageKind::Oci,
        "ship",
    )
    .await?;
    let repo = format!("ship-{ns}");
    make_repo(
        &repo,
        &[(
            "deploy/app.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: quay.io/example/ship-app:v1.0.0\n",
        )],
        "v1.0.0",
    )?;
    let ca = std::fs::read_to_string(&bed().registry_tls_ca)?;
    let ca_indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    let docker_config = serde_json::json!({"auths": {bed().registry_tls.clone(): {
        "username": bed().registry_user, "password": bed().registry_password}}});
    let (reg, tls, git_url) = (&bed().registry, &bed().registry_tls, &bed().git_url);
    apply_yaml(
        &client,
        &ns,
        &format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: registry-ca}}
stringData:
  ca.crt: |
{ca_indented}---
apiVersion: v1
kind: Secret
metadata: {{name: push-creds}}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{docker_config}'
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-values}}
data:
  values.yaml: "replicas: 1\n"
---
apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: app
  labels: {{repo: ship}}
spec:
  package:
    refName: app.ship.example.com
    versionFrom: {{directory: config/upstream}}
  contents:
  - path: config/upstream
    contents:
    - path: .
      git: {{url: "{git_url}/{repo}.git", ref: v1.0.0}}
  - path: config/values
    contents:
    - path: .
      inline:
        pathsFrom:
        - configMapRef: {{name: app-values}}
  images:
    mirrors:
    - {{from: quay.io, to: "{reg}", insecure: true}}
  bundle:
    repository: {tls}/ship/{ns}/app
    secretRef: {{name: push-creds}}
    caSecretRef: {{name: registry-ca}}
  interval: 1h
---
apiVersion: packsmith.dev/v1alpha1
kind: PackageSource
metadata:
  name: solo
spec:
  package: {{refName: solo.ship.example.com, version: 0.1.0}}
  contents:
  - path: config/app
    contents:
    - path: .
      inline:
        paths:
          app.yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: solo}}\n"
  bundle: {{repository: "{reg}/ship/{ns}/solo", insecure: true}}
  interval: 1h
---
apiVersion: packsmith.dev/v1alpha1
kind: PackageRepositorySource
metadata:
  name: ship
spec:
  selector:
    matchLabels: {{repo: ship}}
  bundle:
    repository: {reg}/ship/{ns}/repository
    insecure: true
  interval: 1h
"#
        ),
    )
    .await?;

    // The Deployment's own command, only with loopback addresses and a temporary cache.
    let local_only = [
        "--metrics-addr=",
        "--health-addr=",
        "--webhook-addr=",
        "--cache-dir=",
    ];
    let mut args: Vec<String> = args_of(deployment)
        .into_iter()
        .filter(|a| !local_only.iter().any(|p| a.starts_with(p)))
        .collect();
    anyhow::ensure!(
        args.first().map(String::as_str) == Some("controller")
            && args.contains(&"--leader-elect".to_owned())
            && args_of(deployment).contains(&"--webhook-addr=0.0.0.0:9292".to_owned()),
        "unexpected Deployment args {args:?}"
    );
    args.extend([
        "--metrics-addr=127.0.0.1:0".to_owned(),
        "--health-addr=127.0.0.1:0".to_owned(),
        "--webhook-addr=127.0.0.1:0".to_owned(),
        format!("--cache-dir={}", work.path().join("cache").display()),
        format!("--kubeconfig={}", kubeconfig.display()),
    ]);
    let pod_name = "packsmith-ship-0";
    let log = work.path().join("controller.log");
    let log_file = std::fs::File::create(&log)?;
    let mut controller = ControllerProcess {
        child: Command::new(env!("CARGO_BIN_EXE_packsmith"))
            .args(&args)
            .env("POD_NAME", pod_name)
            .env("POD_NAMESPACE", &ns)
            .env("PACKSMITH_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?,
        log,
    };

    let result = exercise(&client, &ns, &kubeconfig, pod_name, &mut controller).await;
    let log = controller.log_tail();
    result.map_err(|e| e.context(format!("controller log (tail):\n{log}")))
}

async fn exercise(
    client: &kube::Client,
    ns: &str,
    kubeconfig: &Path,
    pod_name: &str,
    controller: &mut ControllerProcess,
) -> anyhow::Result<()> {
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), ns);
    let ready = wait_for(&sources, "app", Duration::from_secs(120), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    let image = bundle_image(&ready);
    anyhow::ensure!(
        image.starts_with(&format!("{}/ship/{ns}/app@sha256:", bed().registry_tls)),
        "bundle {image}"
    );

    // Receivers under the chart's RBAC: watched, their Secret read, their status written.
    apply_yaml(
        client,
        ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: hook}\nstringData: {token: 0123456789abcdef0123}\n\
         ---\napiVersion: packsmith.dev/v1alpha1\nkind: Receiver\nmetadata: {name: hook}\nspec:\n  \
         type: generic\n  secretRef: {name: hook}\n  resources: [{kind: PackageSource, name: app}]\n",
    )
    .await?;
    let receivers: Api<packsmith::api::receiver::Receiver> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let receiver = receivers.get("hook").await?;
        let path = receiver
            .status
            .as_ref()
            .and_then(|s| s.webhook_path.clone());
        if path.as_deref()
            == Some(
                packsmith::api::receiver::webhook_path("0123456789abcdef0123", "hook", ns).as_str(),
            )
        {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the Receiver got no path under the chart's RBAC: {:?}",
            receiver.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Selected by the PackageRepositorySource: its release is recorded in a ConfigMap (the
    // repository's PackageRepository makes kapp-controller create the Package), not applied.
    let record = ready
        .status
        .as_ref()
        .and_then(|s| s.package.as_ref())
        .and_then(|p| p.config_map.clone())
        .ok_or_else(|| anyhow::anyhow!("app: no release ConfigMap on its status"))?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps.get(&record).await?;

    // Not selected: its Package and PackageMetadata are applied in-cluster.
    wait_for(&sources, "solo", Duration::from_secs(120), "Ready", |o| {
        has(o, types::READY, "True", reasons::SUCCEEDED)
    })
    .await?;
    let packages: Api<Package> = Api::namespaced(client.clone(), ns);
    let solo_packages = ListParams::default().labels("packsmith.dev/source-name=solo");
    let published = packages.list(&solo_packages).await?;
    anyhow::ensure!(
        published.items.len() == 1,
        "expected one Package of solo, found {}",
        published.items.len()
    );

    let repos: Api<PackageRepositorySource> = Api::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let repo = repos.get("ship").await?;
        let status = repo.status.clone().unwrap_or_default();
        let is_ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == types::READY && c.status == "True");
        if is_ready && status.package_count == 1 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "PackageRepositorySource not Ready with 1 package within 120s: {}",
            serde_json::to_string_pretty(&status)?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Leader election ran under the chart's leader-election Role.
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get("packsmith-controller")
        .await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    anyhow::ensure!(
        holder.as_deref() == Some(pod_name),
        "Lease holder {holder:?}"
    );

    // Events were recorded (the chart grants events.k8s.io create/patch).
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    anyhow::ensure!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Published")),
        "no Published event among {:?}",
        events
            .items
            .iter()
            .map(|e| e.reason.clone())
            .collect::<Vec<_>>()
    );

    // Least privilege: the same identity cannot read Secrets outside the watched namespace.
    let sa = sa_client(kubeconfig).await?;
    match Api::<Secret>::namespaced(sa, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => anyhow::bail!(
            "listing Secrets in default as the ServiceAccount: expected 403, got {other:?}"
        ),
    }

    // Deletion: the finalizers remove what each source published (delete verbs on Packages,
    // ConfigMaps and the PackageRepository; the bed has no garbage collector to do it), then
    // the sources go.
    let repository_sources: Api<packsmith::api::PackageRepositorySource> =
        Api::namespaced(client.clone(), ns);
    repository_sources
        .delete("ship", &DeleteParams::default())
        .await?;
    for name in ["app", "solo"] {
        sources.delete(name, &DeleteParams::default()).await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let packages_left = packages.list(&solo_packages).await?.items.len();
        let record_left = config_maps.get_opt(&record).await?.is_some();
        let sources_left = sources.list(&ListParams::default()).await?.items.len()
            + repository_sources
                .list(&ListParams::default())
                .await?
                .items
                .len();
        if packages_left == 0 && !record_left && sources_left == 0 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "after deleting the sources: {packages_left} Package(s), record ConfigMap left: \
             {record_left}, {sources_left} source(s) left"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    anyhow::ensure!(
        matches!(controller.child.try_wait(), Ok(None)),
        "the controller exited early"
    );
    let status = controller.terminate()?;
    anyhow::ensure!(
        status.success(),
        "the controller exited with {status} on SIGTERM"
    );
    let log = std::fs::read_to_string(&controller.log)?;
    anyhow::ensure!(
        !log.to_lowercase().contains("forbidden"),
        "the controller was refused something the chart's RBAC should grant"
    );
    Ok(())
}
