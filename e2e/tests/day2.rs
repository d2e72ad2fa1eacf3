//! The day-2 commands (`packsmith get|reconcile|suspend|resume`) against the bed's
//! kube-apiserver and a running controller, through the user's kubeconfig as a person would
//! run them.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use kube::Api;
use libtest_mimic::Trial;

use packsmith::api::{PackageSource, REQUESTED_AT_ANNOTATION};

use super::controller::{Running, has, inline_source, wait_for};
use crate::support::{self, apply_yaml, bed, namespace};

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "day2::get_reconcile_suspend_resume_from_the_cli",
        || support::block_on(get_reconcile_suspend_resume()),
    )]
}

fn packsmith(ns: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_packsmith"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&bed().kubeconfig)
        .args(["-n", ns])
        .output()
        .context("running packsmith")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn get_reconcile_suspend_resume() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "day2").await?;
    let controller = Running::start(&ns).await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let repository = format!("{}/day2/{ns}/app", bed().registry);
    apply_yaml(
        &client,
        &ns,
        &inline_source("app", &ns, &repository, "    insecure: true\n"),
    )
    .await?;
    wait_for(&api, "app", Duration::from_secs(60), "Ready", |o| {
        has(o, "Ready", "True", "Succeeded")
    })
    .await?;

    // get: the printer columns, as kubectl prints them.
    let out = packsmith(&ns, &["get", "sources"])?;
    ensure!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["NAME", "READY", "VERSION", "DIGEST", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(row[..3] == ["app", "True", "0.1.0"], "{table}");
    ensure!(
        row[3].len() == 12 && row[3].bytes().all(|b| b.is_ascii_hexdigit()),
        "{table}"
    );
    let out = packsmith(&ns, &["get", "source", "app", "-o", "yaml"])?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("kind: PackageSource\n"),
        "{out:?}"
    );

    // reconcile --wait: the controller echoes the request with the reconcile's Ready.
    let out = packsmith(
        &ns,
        &["reconcile", "source", "app", "--wait", "--timeout", "60s"],
    )?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(text(&out.stdout).contains("is ready"), "{out:?}");
    let obj = api.get("app").await?;
    let requested = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUESTED_AT_ANNOTATION))
        .context("the annotation was set")?;
    ensure!(
        obj.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_ref())
            == Some(requested),
        "handled: {:?}",
        obj.status
    );

    // suspend: spec.suspend, and a reconcile request is refused with the way out.
    let out = packsmith(&ns, &["suspend", "source", "app"])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(api.get("app").await?.spec.suspend, "suspended");
    let out = packsmith(&ns, &["reconcile", "source", "app"])?;
    ensure!(!out.status.success(), "{out:?}");
    ensure!(
        text(&out.stderr).contains("packsmith resume source app"),
        "{out:?}"
    );

    // resume: spec.suspend back off and a reconcile requested at once.
    let out = packsmith(&ns, &["resume", "source", "app"])?;
    ensure!(out.status.success(), "{out:?}");
    let obj = api.get("app").await?;
    ensure!(!obj.spec.suspend, "resumed");
    let resumed_at = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUESTED_AT_ANNOTATION))
        .context("resume requests a reconcile")?
        .clone();
    ensure!(&resumed_at != requested, "a new request");
    wait_for(&api, "app", Duration::from_secs(60), "resumed", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some(resumed_at.as_str())
    })
    .await?;

    // Objects that do not exist are named.
    let out = packsmith(&ns, &["reconcile", "repository", "missing"])?;
    ensure!(!out.status.success(), "{out:?}");
    ensure!(
        text(&out.stderr).contains(&format!("packagerepositorysource {ns}/missing not found")),
        "{out:?}"
    );
    controller.stop().await
}
