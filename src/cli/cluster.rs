//! Day-2 commands against a cluster, in the shape of `flux reconcile|suspend|resume|get`:
//! they read and patch PackageSources and PackageRepositorySources through the API server
//! with the user's own kubeconfig and permissions, and nothing else.
//!
//! `reconcile` sets the `packsmith.dev/requestedAt` annotation (Flux's
//! `reconcile.fluxcd.io/requestedAt`) and, with `--wait`, waits until the controller echoes it
//! in `status.lastHandledReconcileAt`, which it writes together with the final Ready
//! condition of that reconcile: so the Ready condition then read is the answer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{PackageRepositorySource, PackageSource, REQUESTED_AT_ANNOTATION};

/// Which kind a command acts on (Flux's `flux reconcile source git` → `source`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    /// PackageSource.
    #[value(alias = "sources", alias = "packagesource", alias = "packagesources")]
    Source,
    /// PackageRepositorySource.
    #[value(
        alias = "repositories",
        alias = "packagerepositorysource",
        alias = "packagerepositorysources"
    )]
    Repository,
}

/// Where the cluster is.
#[derive(Args, Debug)]
pub(super) struct ClusterArgs {
    /// kubeconfig to use [default: $KUBECONFIG, ~/.kube/config, else the in-cluster config].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the object [default: the kubeconfig context's namespace].
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct ReconcileArgs {
    /// source or repository.
    kind: Kind,
    name: String,
    /// Wait until the controller has handled the request, print its Ready condition and exit
    /// non-zero unless it is True.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = super::duration)]
    timeout: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub(super) struct SuspendArgs {
    /// source or repository.
    kind: Kind,
    name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum GetOutput {
    /// The printer columns, and the Ready message.
    Wide,
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub(super) struct GetArgs {
    /// sources or repositories.
    kind: Kind,
    /// One object by name [default: all in the namespace].
    name: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    all_namespaces: bool,
    /// Output format [default: the table `kubectl get` prints].
    #[arg(short, long, value_enum)]
    output: Option<GetOutput>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// What these commands read of either kind.
trait Observed:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// How the command line names the kind.
    const ARG: &'static str;
    /// The kind-specific printer columns (between READY and AGE), as the CRD declares them.
    const COLUMNS: &'static [&'static str];
    fn conditions(&self) -> &[Condition];
    fn last_handled(&self) -> Option<&str>;
    fn suspended(&self) -> bool;
    fn columns(&self) -> Vec<String>;
}

impl Observed for PackageSource {
    const ARG: &'static str = "source";
    const COLUMNS: &'static [&'static str] = &["VERSION", "DIGEST"];
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn last_handled(&self) -> Option<&str> {
        self.status.as_ref()?.last_handled_reconcile_at.as_deref()
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn columns(&self) -> Vec<String> {
        let status = self.status.as_ref();
        vec![
            cell(
                status
                    .and_then(|s| s.package.as_ref())
                    .map(|p| p.version.clone()),
            ),
            cell(
                status
                    .and_then(|s| s.bundle.as_ref())
                    .map(|b| b.short_digest.clone()),
            ),
        ]
    }
}

impl Observed for PackageRepositorySource {
    const ARG: &'static str = "repository";
    const COLUMNS: &'static [&'static str] = &["PACKAGES", "DIGEST"];
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
    fn last_handled(&self) -> Option<&str> {
        self.status.as_ref()?.last_handled_reconcile_at.as_deref()
    }
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
    fn columns(&self) -> Vec<String> {
        let status = self.status.as_ref();
        vec![
            cell(status.map(|s| s.package_count.to_string())),
            cell(
                status
                    .and_then(|s| s.bundle.as_ref())
                    .map(|b| b.short_digest.clone()),
            ),
        ]
    }
}

/// kubectl prints `<none>` for a column whose value is missing.
fn cell(value: Option<String>) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "<none>".to_owned())
}

fn ready(obj: &impl Observed) -> Option<&Condition> {
    obj.conditions().iter().find(|c| c.type_ == "Ready")
}

pub(super) fn reconcile(
    args: &ReconcileArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    runtime.block_on(async {
        let (client, namespace) = connect(&args.cluster).await?;
        match args.kind {
            Kind::Source => request::<PackageSource>(client, &namespace, args).await,
            Kind::Repository => request::<PackageRepositorySource>(client, &namespace, args).await,
        }
    })
}

async fn request<K: Observed>(
    client: kube::Client,
    namespace: &str,
    args: &ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let api: Api<K> = Api::namespaced(client, namespace);
    let what = describe::<K>(namespace, &args.name);
    let obj = api
        .get_opt(&args.name)
        .await
        .with_context(|| format!("reading {what}"))?
        .with_context(|| format!("{what} not found"))?;
    if obj.suspended() {
        bail!(
            "{what} is suspended; `packsmith resume {} {}` resumes it",
            K::ARG,
            args.name
        );
    }
    let requested_at = annotate(&api, &args.name, &what).await?;
    eprintln!("requested a reconcile of {what} ({REQUESTED_AT_ANNOTATION}={requested_at})");
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    wait_handled(&api, &args.name, &what, &requested_at, args.timeout).await
}

/// Sets `requestedAt` to now (RFC 3339 with nanoseconds, as `flux reconcile` writes it).
async fn annotate<K: Observed>(api: &Api<K>, name: &str, what: &str) -> anyhow::Result<String> {
    let requested_at = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "metadata": {"annotations": {REQUESTED_AT_ANNOTATION: requested_at}}
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating {what}"))?;
    Ok(requested_at)
}

async fn wait_handled<K: Observed>(
    api: &Api<K>,
    name: &str,
    what: &str,
    requested_at: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let handled = |obj: Option<&K>| obj.is_some_and(|o| o.last_handled() == Some(requested_at));
    let obj = tokio::time::timeout(timeout, await_condition(api.clone(), name, handled))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{what}: the controller did not handle the request within {timeout:?} (is it \
                 running, and does it watch this namespace?)"
            )
        })?
        .with_context(|| format!("watching {what}"))?
        .with_context(|| format!("{what} was deleted while waiting"))?;
    match ready(&obj) {
        Some(c) if c.status == "True" => {
            println!("{what} is ready: {}", c.message);
            Ok(ExitCode::SUCCESS)
        }
        Some(c) => {
            println!("{what} is not ready ({}): {}", c.reason, c.message);
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!("{what} has no Ready condition");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) fn suspend(
    args: &SuspendArgs,
    suspend: bool,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<ExitCode> {
    runtime.block_on(async {
        let (client, namespace) = connect(&args.cluster).await?;
        match args.kind {
            Kind::Source => set_suspend::<PackageSource>(client, &namespace, args, suspend).await,
            Kind::Repository => {
                set_suspend::<PackageRepositorySource>(client, &namespace, args, suspend).await
            }
        }
    })
}

/// `suspend`/`resume`: `spec.suspend` by merge patch, as `flux suspend` does; resuming also
/// requests a reconcile, so the object catches up at once rather than at its interval.
async fn set_suspend<K: Observed>(
    client: kube::Client,
    namespace: &str,
    args: &SuspendArgs,
    suspend: bool,
) -> anyhow::Result<ExitCode> {
    let api: Api<K> = Api::namespaced(client, namespace);
    let what = describe::<K>(namespace, &args.name);
    let mut patch = serde_json::json!({"spec": {"suspend": suspend}});
    if !suspend {
        patch["metadata"] = serde_json::json!({
            "annotations": {REQUESTED_AT_ANNOTATION: jiff::Timestamp::now().to_string()}
        });
    }
    match api
        .patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => bail!("{what} not found"),
        Err(e) => return Err(e).with_context(|| format!("patching {what}")),
    }
    eprintln!("{what} {}", if suspend { "suspended" } else { "resumed" });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn get(args: &GetArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    runtime.block_on(async {
        let (client, namespace) = connect(&args.cluster).await?;
        let out = match args.kind {
            Kind::Source => list::<PackageSource>(client, &namespace, args).await?,
            Kind::Repository => list::<PackageRepositorySource>(client, &namespace, args).await?,
        };
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    })
}

async fn list<K: Observed>(
    client: kube::Client,
    namespace: &str,
    args: &GetArgs,
) -> anyhow::Result<String> {
    let items: Vec<K> = match &args.name {
        Some(name) => {
            let what = describe::<K>(namespace, name);
            let api: Api<K> = Api::namespaced(client, namespace);
            vec![
                api.get_opt(name)
                    .await
                    .with_context(|| format!("reading {what}"))?
                    .with_context(|| format!("{what} not found"))?,
            ]
        }
        None => {
            let api: Api<K> = if args.all_namespaces {
                Api::all(client)
            } else {
                Api::namespaced(client, namespace)
            };
            let mut items = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing {}", K::plural(&())))?
                .items;
            items.sort_by(|a, b| {
                (a.meta().namespace.as_deref(), a.meta().name.as_deref())
                    .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
            });
            items
        }
    };
    render(&items, args, jiff::Timestamp::now())
}

fn render<K: Observed>(
    items: &[K],
    args: &GetArgs,
    now: jiff::Timestamp,
) -> anyhow::Result<String> {
    let one = args.name.is_some();
    match args.output {
        Some(GetOutput::Json) if one => Ok(serde_json::to_string_pretty(&items[0])? + "\n"),
        Some(GetOutput::Yaml) if one => Ok(crate::carvel::yaml::value_to_go_yaml(
            &serde_json::to_value(&items[0])?,
        )),
        // kubectl's list form: a v1 List of the items.
        Some(GetOutput::Json | GetOutput::Yaml) => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": items,
                "metadata": {"resourceVersion": ""},
            });
            Ok(if args.output == Some(GetOutput::Json) {
                serde_json::to_string_pretty(&list)? + "\n"
            } else {
                crate::carvel::yaml::value_to_go_yaml(&list)
            })
        }
        Some(GetOutput::Wide) | None => {
            if items.is_empty() {
                // kubectl says so on stderr and prints nothing.
                eprintln!(
                    "No resources found{}.",
                    if args.all_namespaces {
                        String::new()
                    } else {
                        format!(" in {} namespace", namespace_of(args))
                    }
                );
                return Ok(String::new());
            }
            let wide = args.output == Some(GetOutput::Wide);
            let mut headers = Vec::new();
            if args.all_namespaces {
                headers.push("NAMESPACE");
            }
            headers.extend(["NAME", "READY"]);
            headers.extend(K::COLUMNS);
            headers.push("AGE");
            if wide {
                headers.push("STATUS");
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| {
                    let meta = item.meta();
                    let mut row = Vec::new();
                    if args.all_namespaces {
                        row.push(meta.namespace.clone().unwrap_or_default());
                    }
                    row.push(meta.name.clone().unwrap_or_default());
                    let ready = ready(item);
                    row.push(cell(ready.map(|c| c.status.clone())));
                    row.extend(item.columns());
                    row.push(
                        meta.creation_timestamp
                            .as_ref()
                            .map_or_else(|| "<unknown>".to_owned(), |t| human_age(now, t.0)),
                    );
                    if wide {
                        row.push(cell(ready.map(|c| c.message.clone())));
                    }
                    row
                })
                .collect();
            Ok(super::table::render(&headers, &rows))
        }
    }
}

/// The namespace as the table's "No resources found" names it.
fn namespace_of(args: &GetArgs) -> &str {
    args.cluster.namespace.as_deref().unwrap_or("the current")
}

/// kubectl's AGE column (`k8s.io/apimachinery/pkg/util/duration.HumanDuration`): two
/// significant units while they matter, one after.
fn human_age(now: jiff::Timestamp, then: jiff::Timestamp) -> String {
    let seconds = now.duration_since(then).as_secs();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

async fn connect(args: &ClusterArgs) -> anyhow::Result<(kube::Client, String)> {
    let config = super::kube_config(args.kubeconfig.as_deref()).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((kube::Client::try_from(config)?, namespace))
}

/// `packagesource default/podinfo`, as messages name an object.
fn describe<K: Observed>(namespace: &str, name: &str) -> String {
    format!("{} {namespace}/{name}", K::kind(&()).to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + seconds).expect("timestamp")
    }

    /// kubectl's own expectations (`duration_test.go` of k8s.io/apimachinery).
    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let cases = [
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (121, "2m1s"),
            (9 * 60 + 59, "9m59s"),
            (10 * 60, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (48 * 3600 + 3600, "2d1h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (8 * 365 * 86400, "8y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_age(at(seconds), at(0)), expected, "{seconds}s");
        }
    }

    fn source(name: &str, ready: Option<(&str, &str)>, version: Option<&str>) -> PackageSource {
        let mut obj: PackageSource = serde_json::from_value(serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "PackageSource",
            "metadata": {"name": name, "namespace": "team-a",
                         "creationTimestamp": "2023-11-14T22:13:20Z"},
            "spec": {
                "package": {"refName": "x.example.com", "version": "1.0.0"},
                "contents": [],
                "bundle": {"repository": "r.io/x"},
            },
        }))
        .expect("source");
        if let Some((status, message)) = ready {
            obj.status = Some(
                serde_json::from_value(serde_json::json!({
                    "conditions": [{"type": "Ready", "status": status, "reason": "R",
                                    "message": message,
                                    "lastTransitionTime": "2023-11-14T22:13:20Z"}],
                    "package": version.map(|v| serde_json::json!({"name": "x", "version": v})),
                }))
                .expect("status"),
            );
        }
        obj
    }

    fn args(output: Option<GetOutput>, all_namespaces: bool) -> GetArgs {
        GetArgs {
            kind: Kind::Source,
            name: None,
            all_namespaces,
            output,
            cluster: ClusterArgs {
                kubeconfig: None,
                namespace: Some("team-a".to_owned()),
            },
        }
    }

    #[test]
    fn the_table_has_the_printer_columns_and_none_for_missing_values() {
        let items = [
            source("podinfo", Some(("True", "published 1.0.0")), Some("1.0.0")),
            source("pending", None, None),
        ];
        let table = render(&items, &args(None, false), at(300)).expect("table");
        assert_eq!(
            table,
            "NAME      READY    VERSION   DIGEST   AGE\n\
             podinfo   True     1.0.0     <none>   5m\n\
             pending   <none>   <none>    <none>   5m\n"
        );
        let wide = render(&items, &args(Some(GetOutput::Wide), true), at(300)).expect("wide");
        assert!(wide.starts_with("NAMESPACE   NAME"), "{wide}");
        assert!(wide.contains("published 1.0.0"), "{wide}");
    }

    #[test]
    fn lists_print_as_a_v1_list() {
        let items = [source("podinfo", None, None)];
        let yaml = render(&items, &args(Some(GetOutput::Yaml), false), at(0)).expect("yaml");
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
        assert!(yaml.contains("kind: List\n"), "{yaml}");
    }
}
