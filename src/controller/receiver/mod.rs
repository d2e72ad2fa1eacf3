//! Receivers: each gets its webhook path from its Secret's token (Flux's derivation) on
//! status; [`server`] serves the paths and triggers reconciles.
//!
//! A Receiver owns nothing, so it needs neither the finalizer nor the cleanup of the shared
//! reconcile shell: its reconcile reads one Secret and writes status by server-side apply,
//! only when what it would write differs from what is there.

pub(super) mod server;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Client, ResourceExt as _};

use crate::api::FIELD_MANAGER;
use crate::api::conditions::{self, reasons, types};
use crate::api::receiver::{Receiver, webhook_path};

/// The Secret key that holds the token, as in Flux.
pub(super) const TOKEN_KEY: &str = "token";

/// Tokens shorter than this are refused: the path and the signatures are only as strong as
/// the token.
const MIN_TOKEN_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(super) enum ReceiverError {
    #[error("writing the status of {0}: {1}")]
    Status(String, String),
}

/// The Receiver controller and the store the webhook server looks paths up in.
pub(super) fn controller(
    client: &Client,
    namespace: Option<&str>,
    handle_signals: bool,
) -> (Controller<Receiver>, Store<Receiver>) {
    let receivers: Api<Receiver> = super::triggers::scoped(client, namespace);
    let (store, writer) = reflector::store();
    let stream = watcher(receivers, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let referencing = store.clone();
    // Metadata only: the mapping reads names, and a watch of whole Secrets would hold and
    // re-list every Secret's data in the watched namespaces, whatever their size.
    let secrets = watcher(
        super::triggers::scoped::<PartialObjectMeta<Secret>>(client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let controller = Controller::for_stream(stream, store.clone()).watches_stream(
        secrets,
        move |secret: PartialObjectMeta<Secret>| {
            // A rotated token moves the path at once.
            referencing
                .state()
                .iter()
                .filter(|r| {
                    r.namespace() == secret.namespace()
                        && r.spec.secret_ref.name == secret.name_any()
                })
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    // Stops on SIGTERM with the other controllers, or the process would never exit.
    let controller = if handle_signals {
        controller.shutdown_on_signal()
    } else {
        controller
    };
    (controller, store)
}

/// Runs the Receiver controller until `shutdown`.
pub(super) async fn drive(
    controller: Controller<Receiver>,
    client: Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(kind = "Receiver", error = %e, "controller");
            }
        })
        .await;
}

async fn reconcile(receiver: Arc<Receiver>, client: Arc<Client>) -> Result<Action, ReceiverError> {
    let namespace = receiver.namespace().unwrap_or_default();
    let name = receiver.name_any();
    let secrets: Api<Secret> = Api::namespaced(client.as_ref().clone(), &namespace);
    let found = secrets.get_opt(&receiver.spec.secret_ref.name).await;
    let token = match &found {
        Ok(Some(secret)) => token_of(secret),
        Ok(None) => Err(format!(
            "Secret {namespace}/{} does not exist: create it with a `{TOKEN_KEY}` key",
            receiver.spec.secret_ref.name
        )),
        Err(e) => Err(format!(
            "reading Secret {namespace}/{}: {}",
            receiver.spec.secret_ref.name,
            super::outcome::api_message(e)
        )),
    };
    let now = jiff::Timestamp::now();
    let generation = receiver.metadata.generation;
    let mut status = receiver.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let ready = match &token {
        Ok(token) => {
            let path = webhook_path(token, &name, &namespace);
            let message = format!("Receiver initialized for path: {path}");
            status.webhook_path = Some(path);
            (true, reasons::SUCCEEDED, message)
        }
        Err(why) => {
            // No token, no path: a request to the old one must not trigger anything.
            status.webhook_path = None;
            (false, reasons::REFERENCE_NOT_FOUND, why.clone())
        }
    };
    conditions::set(
        &mut status.conditions,
        types::READY,
        ready.0,
        ready.1,
        ready.2,
        generation,
        now,
    );
    if receiver.status.as_ref() != Some(&status) {
        let api: Api<Receiver> = Api::namespaced(client.as_ref().clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": "packsmith.dev/v1alpha1",
            "kind": "Receiver",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| {
            ReceiverError::Status(
                format!("{namespace}/{name}"),
                super::outcome::api_message(&e),
            )
        })?;
    }
    Ok(match token {
        Ok(_) => Action::await_change(),
        // The Secret watch brings it back when the Secret appears; this is the safety net.
        Err(_) => Action::requeue(Duration::from_secs(300)),
    })
}

fn error_policy(_: Arc<Receiver>, error: &ReceiverError, _: Arc<Client>) -> Action {
    tracing::warn!(error = %error, "reconciling a Receiver");
    Action::requeue(Duration::from_secs(30))
}

/// The token of a Receiver's Secret, checked.
pub(super) fn token_of(secret: &Secret) -> Result<String, String> {
    let name = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| b.0.clone())
        .ok_or_else(|| format!("Secret {name} has no `{TOKEN_KEY}` key"))?;
    // Used as it is, as Flux does: the path and the signatures must agree with the sender's.
    let token = String::from_utf8(bytes)
        .map_err(|_| format!("Secret {name}: `{TOKEN_KEY}` is not UTF-8"))?;
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "Secret {name}: `{TOKEN_KEY}` is shorter than {MIN_TOKEN_BYTES} bytes; use a random \
             one (e.g. head -c 32 /dev/urandom | sha256sum)"
        ));
    }
    Ok(token)
}
