//! Receivers: webhooks in Flux's shape, served by the controller and called over real HTTP.
//! GitHub's HMAC-SHA256 signature and GitLab's token header are computed here as the
//! providers compute them (an independent HMAC, not packsmith's), forged ones are refused,
//! and a valid call annotates exactly the objects the Receiver names.

use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::Trial;
use packsmith::api::conditions::{reasons, types};
use packsmith::api::receiver::{Receiver, webhook_path};
use packsmith::api::{PackageSource, REQUESTED_AT_ANNOTATION};

use super::controller::{Running, has, inline_source, wait_for};
use crate::support::{apply_yaml, bed, namespace};

pub fn trials() -> Vec<Trial> {
    vec![Trial::test("receiver::webhooks_trigger_reconciles", || {
        crate::support::block_on(webhooks_trigger_reconciles())
    })]
}

const TOKEN: &str = "6f1ed002ab5595859014ebf0951522d9";

fn github_signature(token: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

async fn requested_at(api: &Api<PackageSource>, name: &str) -> anyhow::Result<Option<String>> {
    Ok(api
        .get(name)
        .await?
        .annotations()
        .get(REQUESTED_AT_ANNOTATION)
        .cloned())
}

/// The Receiver once its Ready condition is written, whatever it says.
async fn wait_ready(api: &Api<Receiver>, name: &str) -> anyhow::Result<Receiver> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let receiver = api.get(name).await?;
        let written = receiver
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == types::READY));
        if written {
            return Ok(receiver);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{name}: no Ready condition: {:?}",
            receiver.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the webhook server answers PATH as a Receiver's (an unsigned call: 401), not 404.
async fn served(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = http.post(format!("{base}{path}")).send().await?.status();
        if status != 404 {
            anyhow::ensure!(status == 401, "{path}: an unsigned call answered {status}");
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{path}: the webhook server never served it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_path(api: &Api<Receiver>, name: &str) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let receiver = api.get(name).await?;
        if let Some(path) = receiver
            .status
            .as_ref()
            .and_then(|s| s.webhook_path.clone())
        {
            return Ok(path);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{name}: no webhookPath: {:?}",
            receiver.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn webhooks_trigger_reconciles() -> anyhow::Result<()> {
    let client = bed().client().await?;
    let ns = namespace(&client, "hooks").await?;
    let reg = bed().registry.clone();
    let controller =
        Running::start_with(&ns, |o| o.webhook_addr = Some("127.0.0.1:0".to_owned())).await?;
    let base = format!("http://{}", controller.webhook().expect("webhook server"));
    let sources: Api<PackageSource> = Api::namespaced(client.clone(), &ns);
    let receivers: Api<Receiver> = Api::namespaced(client.clone(), &ns);
    for (name, labels) in [("web", "team: a"), ("api", "team: a"), ("other", "team: b")] {
        let repository = format!("{reg}/hooks-{ns}/{name}");
        let yaml = inline_source(name, &ns, &repository, "    insecure: true\n").replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  labels: {{{labels}}}\n"),
        );
        apply_yaml(&client, &ns, &yaml).await?;
    }
    apply_yaml(
        &client,
        &ns,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-token}}\nstringData: {{token: {TOKEN}}}\n\
             ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: weak-token}}\nstringData: {{token: abc}}\n\
             ---\napiVersion: packsmith.dev/v1alpha1\nkind: Receiver\nmetadata: {{name: gh}}\nspec:\n  \
             type: github\n  events: [push]\n  secretRef: {{name: hook-token}}\n  resources:\n  \
             - {{kind: PackageSource, name: web}}\n\
             ---\napiVersion: packsmith.dev/v1alpha1\nkind: Receiver\nmetadata: {{name: gl}}\nspec:\n  \
             type: gitlab\n  secretRef: {{name: hook-token}}\n  resources:\n  \
             - {{kind: PackageSource, name: '*', matchLabels: {{team: a}}}}\n\
             ---\napiVersion: packsmith.dev/v1alpha1\nkind: Receiver\nmetadata: {{name: weak}}\nspec:\n  \
             type: generic\n  secretRef: {{name: weak-token}}\n  resources:\n  \
             - {{kind: PackageSource, name: other}}\n"
        ),
    )
    .await?;
    for name in ["web", "api", "other"] {
        wait_for(&sources, name, Duration::from_secs(60), "Ready", |o| {
            has(o, types::READY, "True", reasons::SUCCEEDED)
        })
        .await?;
    }
    let gh = wait_path(&receivers, "gh").await?;
    anyhow::ensure!(
        gh == webhook_path(TOKEN, "gh", &ns),
        "{gh} is not Flux's path for the token"
    );
    let gl = wait_path(&receivers, "gl").await?;
    // A token too short to keep a secret serves nothing, and says why.
    let weak = wait_ready(&receivers, "weak").await?;
    let ready = weak
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == types::READY))
        .cloned();
    anyhow::ensure!(
        weak.status
            .as_ref()
            .and_then(|s| s.webhook_path.as_ref())
            .is_none()
            && ready
                .as_ref()
                .is_some_and(|c| c.status == "False" && c.message.contains("shorter than")),
        "{:?}",
        weak.status
    );

    let http = reqwest::Client::new();
    let post = |path: &str, body: &'static [u8], headers: &[(&str, String)]| {
        let mut request = http.post(format!("{base}{path}")).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send()
    };
    let body: &'static [u8] = br#"{"ref":"refs/heads/main"}"#;
    // The server routes by its own cache of Receivers, which may lag the status read above.
    for path in [&gh, &gl] {
        served(&http, &base, path).await?;
    }

    // Forged, or signed with another secret, or for an event it does not want: nothing.
    for (signature, event) in [
        ("sha256=00".to_owned(), "push"),
        (github_signature("not the token", body), "push"),
    ] {
        let response = post(
            &gh,
            body,
            &[
                ("X-Hub-Signature-256", signature),
                ("X-GitHub-Event", event.to_owned()),
            ],
        )
        .await?;
        anyhow::ensure!(response.status() == 401, "forged: {}", response.status());
    }
    let signed = github_signature(TOKEN, body);
    for (event, says) in [("ping", "pong"), ("release", "is not one this Receiver")] {
        let response = post(
            &gh,
            body,
            &[
                ("X-Hub-Signature-256", signed.clone()),
                ("X-GitHub-Event", event.to_owned()),
            ],
        )
        .await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(
            status == 200 && text.contains(says),
            "{event}: {status} {text}"
        );
    }
    anyhow::ensure!(
        requested_at(&sources, "web").await?.is_none(),
        "a refused or ignored call triggered web"
    );

    // Signed as GitHub signs it: web, and only web, is asked to reconcile — and is.
    let response = post(
        &gh,
        body,
        &[
            ("X-Hub-Signature-256", signed.clone()),
            ("X-GitHub-Event", "push".to_owned()),
        ],
    )
    .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(
        status == 200 && text.contains("PackageSource/web"),
        "{status} {text}"
    );
    let asked = requested_at(&sources, "web")
        .await?
        .ok_or_else(|| anyhow::anyhow!("web was not annotated"))?;
    wait_for(&sources, "web", Duration::from_secs(60), "handled", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref())
            == Some(asked.as_str())
    })
    .await?;
    anyhow::ensure!(requested_at(&sources, "api").await?.is_none());

    // GitLab: the token header; `*` with labels reaches web and api, not other.
    let response = post(&gl, body, &[("X-Gitlab-Token", "wrong".to_owned())]).await?;
    anyhow::ensure!(response.status() == 401, "{}", response.status());
    let response = post(
        &gl,
        body,
        &[
            ("X-Gitlab-Token", TOKEN.to_owned()),
            ("X-Gitlab-Event", "Push Hook".to_owned()),
        ],
    )
    .await?;
    anyhow::ensure!(response.status() == 200, "{}", response.status());
    anyhow::ensure!(
        requested_at(&sources, "api").await?.is_some()
            && requested_at(&sources, "other").await?.is_none(),
        "matchLabels selects web and api only"
    );

    // What no Receiver serves, the wrong method, a body over the limit.
    let response = post("/hook/0000", body, &[]).await?;
    anyhow::ensure!(response.status() == 404, "{}", response.status());
    let response = http.get(format!("{base}{gh}")).send().await?;
    anyhow::ensure!(response.status() == 405, "{}", response.status());
    let big: &'static [u8] = Box::leak(vec![b'x'; 2 * 1024 * 1024].into_boxed_slice());
    let response = post(&gl, big, &[("X-Gitlab-Token", TOKEN.to_owned())]).await?;
    anyhow::ensure!(response.status() == 413, "{}", response.status());

    // A rotated token moves the path; the old one serves nothing.
    let rotated = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "hook-token",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"stringData": {"token": rotated}})),
        )
        .await?;
    let moved = webhook_path(rotated, "gh", &ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while wait_path(&receivers, "gh").await? != moved {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the path did not move"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = post(
        &gh,
        body,
        &[
            ("X-Hub-Signature-256", github_signature(rotated, body)),
            ("X-GitHub-Event", "push".to_owned()),
        ],
    )
    .await?;
    anyhow::ensure!(response.status() == 404, "old path: {}", response.status());
    controller.stop().await
}
