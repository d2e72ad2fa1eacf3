//! `--watch-label-selector` shards, as Flux shards its controllers: each process reconciles
//! only the objects its selector picks, the unsharded default excludes sharded ones, and an
//! object moved to another shard by its label is taken over by that shard alone.

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use libtest_mimic::Trial;

use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};

use super::controller::{Running, has, inline_source, never_reconciled, wait_for};
use crate::support::{self, apply_yaml, bed, namespace};

const KEY: &str = "sharding.packsmith.dev/key";

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "sharding::each_shard_reconciles_its_own_objects",
        || support::block_on(each_shard_reconciles_its_own_objects()),
    )]
}

fn labelled(name: &str, ns: &str, shard: Option<&str>) -> String {
    let repository = format!("{}/shard/{ns}/{name}", bed().registry);
    let yaml = inline_source(name, ns, &repository, "    insecure: true\n");
    match shard {
        Some(shard) => yaml.replacen(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels:\n    {KEY}: {shard}\n"),
            1,
        ),
        None => yaml,
    }
}

/// Waits `for_` and checks that nothing reconciled `name` (its status is the API server's
/// default).
async fn untouched(api: &Api<PackageSource>, name: &str, for_: Duration) -> anyhow::Result<()> {
    tokio::time::sleep(for_).await;
    let obj = api.get(name).await?;
    anyhow::ensure!(
        never_reconciled(&obj),
        "{name} was reconciled by a shard that does not select it: {:?}",
        obj.status
    );
    Ok(())
}

async fn each_shard_reconciles_its_own_objects() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "shard").await?;
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let ready = |o: &PackageSource| has(o, types::READY, "True", reasons::SUCCEEDED);

    // Shard 1 alone: its object is reconciled, the unsharded one is not.
    let shard1 = Running::start_with(&ns, |o| {
        o.label_selector = Some(format!("{KEY} in (shard1)"));
    })
    .await?;
    apply_yaml(&client, &ns, &labelled("one", &ns, Some("shard1"))).await?;
    apply_yaml(&client, &ns, &labelled("plain", &ns, None)).await?;
    wait_for(&api, "one", Duration::from_secs(60), "Ready", ready).await?;
    untouched(&api, "plain", Duration::from_secs(3)).await?;

    // The unsharded default excludes every sharded object and takes the rest.
    let default = Running::start_with(&ns, |o| o.label_selector = Some(format!("!{KEY}"))).await?;
    wait_for(&api, "plain", Duration::from_secs(60), "Ready", ready).await?;

    // Moved to shard 2, which does not run yet: neither shard 1 nor the default touches it.
    apply_yaml(&client, &ns, &labelled("moved", &ns, Some("shard1"))).await?;
    wait_for(&api, "moved", Duration::from_secs(60), "Ready", ready).await?;
    let patch = serde_json::json!({"metadata": {
        "labels": {KEY: "shard2"},
        "annotations": {packsmith::api::REQUESTED_AT_ANNOTATION: "after-move"},
    }});
    api.patch("moved", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let obj = api.get("moved").await?;
    anyhow::ensure!(
        obj.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            != Some("after-move"),
        "a shard that no longer selects `moved` handled its request"
    );

    // Shard 2 starts and takes it over: the request is handled, by shard 2 alone.
    let shard2 = Running::start_with(&ns, |o| {
        o.label_selector = Some(format!("{KEY} in (shard2)"));
    })
    .await?;
    wait_for(
        &api,
        "moved",
        Duration::from_secs(60),
        "handled by shard 2",
        |o| {
            o.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some("after-move")
                && ready(o)
        },
    )
    .await?;
    // What a shard's sources publish carries their shard label (moved along with the
    // source), and the shard watches it: a Package deleted behind its back is restored by the
    // shard that owns it, through its narrowed drift watch.
    let packages: Api<packsmith::carvel::Package> = Api::namespaced(client.clone(), &ns);
    let shard_of = |p: &packsmith::carvel::Package| {
        p.metadata.labels.as_ref().and_then(|l| l.get(KEY)).cloned()
    };
    let plain = packages.get("plain.ctl.example.com.0.1.0").await?;
    anyhow::ensure!(shard_of(&plain).is_none(), "{:?}", plain.metadata.labels);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let moved = packages.get("moved.ctl.example.com.0.1.0").await?;
        if shard_of(&moved).as_deref() == Some("shard2") {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the shard label did not move with the source: {:?}",
            moved.metadata.labels
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (package, shard) in [("one", "shard1"), ("moved", "shard2"), ("plain", "default")] {
        let name = format!("{package}.ctl.example.com.0.1.0");
        packages.delete(&name, &Default::default()).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while packages.get_opt(&name).await?.is_none() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{shard} did not restore {name}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // An object for a shard no process runs is left alone by all of them.
    apply_yaml(&client, &ns, &labelled("orphaned", &ns, Some("shard9"))).await?;
    anyhow::ensure!(
        never_reconciled(&api.get("orphaned").await?),
        "reconciled at once"
    );
    untouched(&api, "orphaned", Duration::from_secs(3)).await?;

    shard2.stop().await?;
    default.stop().await?;
    shard1.stop().await
}
