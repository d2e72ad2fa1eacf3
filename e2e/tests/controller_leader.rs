//! Leader election: two controllers (in-process, each on its own runtime) with
//! `--leader-elect` and short timings share one Lease. Only the holder reconciles (the
//! follower's reconcile metrics stay at zero and it serves /readyz); killing the holder
//! (its runtime dropped: no release, as with SIGKILL) hands the Lease to the other within
//! about the lease duration, and the source stays Ready under the new leader.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::PackageSource;
use packsmith::api::conditions::{reasons, types};
use packsmith::controller::LeaderElection;

use crate::support::{apply_yaml, bed, namespace};
use crate::tests::controller::{Running, SUCCESSES, has, inline_source, metric, wait_for};

pub fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "controller_leader::one_leader_and_failover",
        || crate::support::block_on(one_leader_and_failover()),
    )]
}

const LEASE: &str = "packsmith-e2e";
const LEASE_DURATION: Duration = Duration::from_secs(6);

async fn elected(ns: &str, identity: &str) -> anyhow::Result<Running> {
    let (ns, identity) = (ns.to_owned(), identity.to_owned());
    Running::start_with(&ns.clone(), move |o| {
        o.leader_election = Some(LeaderElection {
            namespace: Some(ns),
            lease_name: LEASE.to_owned(),
            identity,
            lease_duration: LEASE_DURATION,
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
        });
    })
    .await
}

async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

async fn wait_holder(leases: &Api<Lease>, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = holder(leases).await? {
            return Ok(h);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no Lease holder after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn one_leader_and_failover() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "ctl-leader").await?;
    let reg = bed().registry.clone();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let api: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let mut a = Some(elected(&ns, "replica-a").await?);
    let mut b = Some(elected(&ns, "replica-b").await?);

    apply_yaml(
        &client,
        &ns,
        &inline_source(
            "ha",
            &ns,
            &format!("{reg}/ctl/{ns}/ha"),
            "    insecure: true\n  interval: 2s\n",
        ),
    )
    .await?;
    let ready = |o: &PackageSource| has(o, types::READY, "True", reasons::SUCCEEDED);
    wait_for(&api, "ha", Duration::from_secs(60), "Ready", ready).await?;
    // A few intervals: only the holder reconciles.
    let leader = wait_holder(&leases, Duration::from_secs(30)).await?;
    let by_leader = |m: &str| metric(m, SUCCESSES);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ma, mb) = (
            a.as_ref().expect("started").metrics().await?,
            b.as_ref().expect("started").metrics().await?,
        );
        if by_leader(&ma) + by_leader(&mb) >= 2.0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fewer than 2 reconciles at a 2s interval in 60s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::ensure!(
        leader == "replica-a" || leader == "replica-b",
        "holder {leader}"
    );
    let (leading, following) = if leader == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let survivor = following.take().expect("started");
    let (lead_metrics, follow_metrics) = (
        leading.as_ref().expect("started").metrics().await?,
        survivor.metrics().await?,
    );
    anyhow::ensure!(
        metric(&lead_metrics, SUCCESSES) >= 2.0,
        "the leader reconciled {} times",
        metric(&lead_metrics, SUCCESSES)
    );
    anyhow::ensure!(
        metric(&follow_metrics, SUCCESSES) == 0.0
            && metric(&follow_metrics, "packsmith_reconcile_total") == 0.0,
        "the follower reconciled:\n{follow_metrics}"
    );
    anyhow::ensure!(survivor.readyz().await? == 200, "a follower reports ready");

    // Kill the leader: its runtime is dropped, the Lease is not released.
    let killed = Instant::now();
    drop(leading.take());
    // Generous: the point is that a successor takes over at all; the figure is printed.
    let deadline = killed + LEASE_DURATION + Duration::from_secs(60);
    let successor = loop {
        let h = holder(&leases).await?;
        if let Some(h) = h.filter(|h| *h != leader) {
            break h;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no takeover {:?} after the leader was killed",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    let before = metric(&survivor.metrics().await?, SUCCESSES);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&survivor.metrics().await?, SUCCESSES) < before + 1.0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the new leader does not reconcile"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(&api, "ha", Duration::from_secs(30), "still Ready", ready).await?;
    eprintln!("controller_leader: {successor} took over {took:?} after {leader} was killed");

    // A graceful stop releases the Lease.
    survivor.stop().await?;
    anyhow::ensure!(
        holder(&leases).await?.is_none(),
        "the Lease is still held after a graceful stop"
    );

    // A leader that finds another holder stops with LeadershipLost (the binary exits 1).
    let c = elected(&ns, "replica-c").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder(&leases).await?.as_deref() != Some("replica-c") {
        anyhow::ensure!(Instant::now() < deadline, "replica-c never leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {
                "holderIdentity": "intruder", "leaseDurationSeconds": 3600,
                "acquireTime": now, "renewTime": now,
            }})),
        )
        .await?;
    let stolen = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), c.finished()).await;
    match result {
        Ok(Err(e)) if format!("{e:#}").contains("lost the leadership") => {}
        Ok(other) => anyhow::bail!("replica-c ended with {other:?}, not LeadershipLost"),
        Err(_) => anyhow::bail!("replica-c still runs 60s after losing its Lease"),
    }
    eprintln!(
        "controller_leader: a robbed leader stopped {:?} after the theft",
        stolen.elapsed()
    );
    Ok(())
}
