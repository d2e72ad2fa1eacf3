//! `Receiver`: a webhook that asks for a reconcile of the sources it names, in Flux's shape
//! (notification-controller's Receiver): a Secret-held token, the path derived from it, the
//! provider's own signature or token checked on every request.

#![expect(
    unreachable_pub,
    reason = "kube's KubeSchema/CustomResource derives copy these `pub` items into private \
              scopes, where the lint fires on them; the items are the public API"
)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::SecretRef;

/// A webhook endpoint served by the controller (`--webhook-addr`) at `status.webhookPath`.
/// A request that passes the provider's check annotates the named objects of this namespace
/// with `packsmith.dev/requestedAt`, as `packsmith reconcile` does.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "packsmith.dev",
    version = "v1alpha1",
    kind = "Receiver",
    plural = "receivers",
    category = "packsmith",
    namespaced,
    status = "ReceiverStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Path","type":"string","jsonPath":".status.webhookPath"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// Who calls: `github` (the `X-Hub-Signature-256` HMAC of the body is checked), `gitlab`
    /// (the `X-Gitlab-Token` header is checked) or `generic` (the secret path is the check).
    #[serde(rename = "type")]
    pub type_: ReceiverType,
    /// Events that trigger (GitHub's `X-GitHub-Event`, GitLab's `X-Gitlab-Event`); all when
    /// empty. GitHub's `ping` never triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub events: Vec<String>,
    /// A Secret of this namespace whose `token` key is the shared secret: it makes the path
    /// (`/hook/` + sha256(token + name + namespace)) and signs or authenticates requests.
    pub secret_ref: SecretRef,
    /// What a request reconciles, in this namespace only.
    #[schemars(length(min = 1, max = 64))]
    pub resources: Vec<ReceiverResource>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverType {
    Github,
    Gitlab,
    Generic,
}

/// Objects a Receiver triggers: one by name, or all of a kind (`*`), optionally those with
/// these labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverResource {
    pub kind: ReceiverKind,
    /// An object's name, or `*` for every object of the kind that `matchLabels` selects.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// With `name: "*"`: only objects with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverKind {
    PackageSource,
    PackageRepositorySource,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Where the webhook is served, relative to `--webhook-addr`: `/hook/<sha256>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
}

/// The path Flux's notification-controller derives for a Receiver: `/hook/` and the hex
/// sha256 of token, name and namespace, so it is unguessable without the token and moves
/// when the token is rotated.
pub fn webhook_path(token: &str, name: &str, namespace: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{token}{name}{namespace}").as_bytes());
    format!("/hook/{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flux's `GetWebhookPath`: `fmt.Sprintf("%s%x", "/hook/", sha256.Sum256(token + name + namespace))`.
    #[test]
    fn the_path_is_fluxs() {
        // printf '%s' 'tokenwebteam-a' | sha256sum
        assert_eq!(
            webhook_path("token", "web", "team-a"),
            "/hook/b2dab7a1703f8c5ffcf70fe2d031ff03da73d1902f9bb1881f7f10f76d7ea88a"
        );
    }
}
