//! The webhook server (`--webhook-addr`): `POST /hook/<sha256>` finds the Receiver whose
//! `status.webhookPath` it is, checks the request as its provider signs it, and annotates the
//! objects the Receiver names with `packsmith.dev/requestedAt`.
//!
//! Everything a caller sends is hostile: the body is read up to 1 MiB within 10 s, headers
//! within 10 s, at most 64 connections are served at once, and a Receiver triggers at most
//! [`MAX_TRIGGERED`] objects, of its own namespace only.
//!
//! Providers, as they define their checks:
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body, keyed by the token>`
//!   (GitHub's "Validating webhook deliveries"); `X-GitHub-Event` names the event, and `ping`
//!   (sent when the hook is created) answers without triggering.
//! - GitLab: `X-Gitlab-Token` equals the token; `X-Gitlab-Event` names the event.
//! - generic: the unguessable path is the check (Flux's `generic` receiver).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt as _};
use tokio::net::TcpListener;

use super::super::http::{self, Limits};
use crate::api::receiver::{Receiver, ReceiverKind, ReceiverType};
use crate::api::{PackageRepositorySource, PackageSource, REQUESTED_AT_ANNOTATION};

const MAX_BODY: usize = 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;
/// Receivers whose status claims one path that are checked against their Secrets.
const MAX_CLAIMANTS: usize = 8;
/// Objects one request may annotate.
pub(super) const MAX_TRIGGERED: usize = 1000;

/// What the server needs: the API, and the Receivers as a watch keeps them.
pub(in crate::controller) struct Webhooks {
    pub(in crate::controller) client: Client,
    pub(in crate::controller) receivers: Store<Receiver>,
}

/// Header and body each within 10 s; the annotations a request makes (up to
/// [`MAX_TRIGGERED`] API calls) within what is left of a minute.
const LIMITS: Limits = Limits {
    connections: MAX_CONNECTIONS,
    head: READ_TIMEOUT,
    deadline: Duration::from_secs(60),
};

/// Serves `listener` until the task is dropped.
pub(in crate::controller) async fn serve(listener: TcpListener, hooks: Arc<Webhooks>) {
    http::serve(listener, LIMITS, "webhooks", move |request| {
        let hooks = hooks.clone();
        async move { handle(&hooks, request).await }
    })
    .await;
}

fn reply(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    http::text(status, text)
}

async fn handle(hooks: &Webhooks, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POST requests");
    }
    let path = request.uri().path().to_owned();
    // Status says which Receiver a path is; anyone who may write a Receiver's status could
    // claim another's path, so each claimant is checked against its own Secret (the path is
    // a hash of its token, name and namespace) and the one that proves it is served.
    let claimants: Vec<_> = hooks
        .receivers
        .state()
        .into_iter()
        .filter(|r| {
            r.status.as_ref().and_then(|s| s.webhook_path.as_deref()) == Some(path.as_str())
        })
        .take(MAX_CLAIMANTS)
        .collect();
    if claimants.is_empty() {
        return reply(StatusCode::NOT_FOUND, "no Receiver is served at this path");
    }
    let headers = request.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = match tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(request.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
        Ok(Err(_)) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY} bytes, or broken"),
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let client = hooks.client.clone();
    let proven = prove(claimants, &path, |receiver: Arc<Receiver>| {
        let client = client.clone();
        async move {
            let namespace = receiver.namespace().unwrap_or_default();
            let key = format!("{namespace}/{}", receiver.name_any());
            // The token is read again: status may lag a rotation, the Secret does not.
            let secrets: Api<Secret> = Api::namespaced(client, &namespace);
            match secrets.get_opt(&receiver.spec.secret_ref.name).await {
                Ok(Some(secret)) => super::token_of(&secret),
                Ok(None) | Err(_) => Err(format!("Receiver {key}: its Secret cannot be read")),
            }
        }
    })
    .await;
    let (receiver, token) = match proven {
        Ok(proven) => proven,
        Err(Some(why)) => return reply(StatusCode::SERVICE_UNAVAILABLE, why),
        Err(None) => return reply(StatusCode::NOT_FOUND, "no Receiver is served at this path"),
    };
    let namespace = receiver.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", receiver.name_any());
    let event = match receiver.spec.type_ {
        ReceiverType::Github => {
            let signature = header("x-hub-signature-256").unwrap_or_default();
            if !github_signature_valid(&token, &body, &signature) {
                tracing::info!(receiver = %key, "refused a webhook: bad X-Hub-Signature-256");
                return reply(
                    StatusCode::UNAUTHORIZED,
                    "X-Hub-Signature-256 is missing or does not sign this body",
                );
            }
            let event = header("x-github-event").unwrap_or_default();
            if event == "ping" {
                return reply(StatusCode::OK, "pong");
            }
            Some(event)
        }
        ReceiverType::Gitlab => {
            let given = header("x-gitlab-token").unwrap_or_default();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                given.as_bytes(),
                token.as_bytes(),
            )) {
                tracing::info!(receiver = %key, "refused a webhook: bad X-Gitlab-Token");
                return reply(
                    StatusCode::UNAUTHORIZED,
                    "X-Gitlab-Token is missing or wrong",
                );
            }
            Some(header("x-gitlab-event").unwrap_or_default())
        }
        ReceiverType::Generic => None,
    };
    if let Some(event) = &event
        && !receiver.spec.events.is_empty()
        && !receiver
            .spec
            .events
            .iter()
            .any(|e| e.eq_ignore_ascii_case(event))
    {
        return reply(
            StatusCode::OK,
            format!("event {event:?} is not one this Receiver triggers on"),
        );
    }
    match trigger(&hooks.client, &receiver, &namespace).await {
        Ok(triggered) => {
            tracing::info!(receiver = %key, triggered = triggered.len(), "webhook triggered reconciles");
            reply(
                StatusCode::OK,
                format!("requested a reconcile of {}", triggered.join(", ")),
            )
        }
        Err(why) => reply(StatusCode::INTERNAL_SERVER_ERROR, why),
    }
}

/// The claimant of `path` whose token (read by `token`) hashes to it, with that token; else
/// why a claimant's token could not be read, if one could not.
async fn prove<F, Fut>(
    claimants: Vec<Arc<Receiver>>,
    path: &str,
    token: F,
) -> Result<(Arc<Receiver>, String), Option<String>>
where
    F: Fn(Arc<Receiver>) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut unreadable = None;
    for receiver in claimants {
        match token(receiver.clone()).await {
            // A request for an old path after a rotation is refused like a forged one.
            Ok(token)
                if crate::api::receiver::webhook_path(
                    &token,
                    &receiver.name_any(),
                    &receiver.namespace().unwrap_or_default(),
                ) == path =>
            {
                return Ok((receiver, token));
            }
            Ok(_) => {}
            Err(why) => unreadable = Some(why),
        }
    }
    Err(unreadable)
}

/// GitHub's check: `sha256=` and the hex HMAC-SHA256 of the body under the token, compared
/// in constant time.
pub(super) fn github_signature_valid(token: &str, body: &[u8], header: &str) -> bool {
    use hmac::{KeyInit as _, Mac as _};
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Annotates every object the Receiver names, in its namespace; returns `Kind/name` of each.
async fn trigger(
    client: &Client,
    receiver: &Receiver,
    namespace: &str,
) -> Result<Vec<String>, String> {
    let requested_at = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "metadata": {"annotations": {REQUESTED_AT_ANNOTATION: requested_at}}
    });
    let mut triggered = Vec::new();
    for resource in &receiver.spec.resources {
        let names = match resource.kind {
            ReceiverKind::PackageSource => {
                names::<PackageSource>(client, namespace, resource).await?
            }
            ReceiverKind::PackageRepositorySource => {
                names::<PackageRepositorySource>(client, namespace, resource).await?
            }
        };
        for name in names {
            if triggered.len() >= MAX_TRIGGERED {
                return Err(format!(
                    "the Receiver names more than {MAX_TRIGGERED} objects; narrow its resources"
                ));
            }
            let result = match resource.kind {
                ReceiverKind::PackageSource => {
                    Api::<PackageSource>::namespaced(client.clone(), namespace)
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(drop)
                }
                ReceiverKind::PackageRepositorySource => {
                    Api::<PackageRepositorySource>::namespaced(client.clone(), namespace)
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(drop)
                }
            };
            match result {
                Ok(()) => triggered.push(format!("{:?}/{name}", resource.kind)),
                // Deleted since it was listed, or named but not there yet: nothing to do.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(format!(
                        "annotating {:?} {namespace}/{name}: {}",
                        resource.kind,
                        super::super::outcome::api_message(&e)
                    ));
                }
            }
        }
    }
    Ok(triggered)
}

/// The names a resource entry stands for: its name, or with `*` those its labels select.
async fn names<K>(
    client: &Client,
    namespace: &str,
    resource: &crate::api::receiver::ReceiverResource,
) -> Result<Vec<String>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if resource.name != "*" {
        return Ok(vec![resource.name.clone()]);
    }
    let selector = resource
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut params = ListParams::default().limit(MAX_TRIGGERED as u32 + 1);
    if !selector.is_empty() {
        params = params.labels(&selector);
    }
    let api: Api<kube::core::PartialObjectMeta<K>> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list_metadata(&params)
        .await
        .map_err(|e| format!("listing: {}", super::super::outcome::api_message(&e)))?;
    Ok(listed.items.iter().map(|o| o.name_any()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another tenant who may write Receivers' status claims team A's path first: the request
    /// goes to the Receiver whose own token proves the path, never to the claimant.
    #[tokio::test]
    async fn a_path_goes_to_the_receiver_its_token_proves() {
        let receiver = |namespace: &str, name: &str| {
            let mut r: Receiver = serde_json::from_value(serde_json::json!({
                "apiVersion": "packsmith.dev/v1alpha1",
                "kind": "Receiver",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"type": "generic", "secretRef": {"name": "token"},
                         "resources": [{"kind": "PackageSource", "name": "app"}]},
            }))
            .unwrap();
            r.metadata.uid = Some(format!("{namespace}-{name}"));
            Arc::new(r)
        };
        let tokens = |r: Arc<Receiver>| async move {
            match r.namespace().as_deref() {
                Some("team-a") => Ok("team-a-token-0123456789".to_owned()),
                Some("team-b") => Ok("team-b-token-0123456789".to_owned()),
                _ => Err("its Secret cannot be read".to_owned()),
            }
        };
        let path = crate::api::receiver::webhook_path("team-a-token-0123456789", "hook", "team-a");
        let (shadow, unreadable, real) = (
            receiver("team-b", "hook"),
            receiver("team-c", "hook"),
            receiver("team-a", "hook"),
        );
        let (served, _) = prove(
            vec![shadow.clone(), unreadable.clone(), real],
            &path,
            tokens,
        )
        .await
        .unwrap();
        assert_eq!(served.namespace().as_deref(), Some("team-a"));
        assert_eq!(
            prove(vec![shadow, unreadable], &path, tokens)
                .await
                .unwrap_err(),
            Some("its Secret cannot be read".to_owned())
        );
    }

    /// GitHub's documented test vector ("Validating webhook deliveries"): secret
    /// "It's a Secret to Everybody", payload "Hello, World!".
    #[test]
    fn github_signatures_are_checked_as_github_documents_them() {
        let token = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_valid(token, body, signature));
        assert!(!github_signature_valid(token, b"Hello, World?", signature));
        assert!(!github_signature_valid("another secret", body, signature));
        assert!(!github_signature_valid(
            token,
            body,
            &signature.replace("sha256=", "sha1=")
        ));
        assert!(!github_signature_valid(token, body, "sha256=zz"));
        assert!(!github_signature_valid(token, body, ""));
    }
}
