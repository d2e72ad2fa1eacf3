//! The reconcile shell both kinds share: suspend, the finalizer, metrics, the outcome of a
//! reconcile (stalled, waiting, backoff or done), status written by server-side apply only
//! when it changed, events, and the error policy. A kind supplies what is its own — how to
//! apply and how to clean up — through [`Reconciled`]; everything else is the same code for
//! every kind, so a rule (a stalled object waits for a change; a status that did not change
//! is not written) cannot hold for one kind and not the other.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Context, FINALIZER};
use super::outcome::{Failure, Retry};
use super::schedule;
use super::stalls::Mark;
use crate::api::FIELD_MANAGER;
use crate::api::conditions::reasons;

/// A kind the controller reconciles.
pub(super) trait Reconciled:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + fmt::Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The `kind` label of the metrics.
    const KIND: &'static str;
    type Status: Serialize + PartialEq + Send + Sync;

    /// `spec.suspend`.
    fn suspended(&self) -> bool;

    /// Brings the world to the spec; returns when to look again.
    fn apply(
        &self,
        ctx: &Context,
        api: &Api<Self>,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send;

    /// Deletion: removes what the object made (the finalizer comes off after it succeeds).
    fn cleanup(&self, ctx: &Context)
    -> impl Future<Output = Result<Action, ReconcileError>> + Send;
}

/// Why a reconcile returned an error (and is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// A retryable failure, already reported on status.
    #[error("{0}")]
    Failed(Failure),
    #[error("{action}: {}", super::outcome::api_message(source))]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing what the {kind} published: {source}")]
    Cleanup {
        kind: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the {0} has no namespace")]
    NoNamespace(&'static str),
    #[error(transparent)]
    Finalizer(Box<finalizer::Error<ReconcileError>>),
}

impl ReconcileError {
    /// The metrics `reason` label.
    fn reason(&self) -> &str {
        match self {
            ReconcileError::Failed(f) => f.reason,
            ReconcileError::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerFailed",
            },
            ReconcileError::Cleanup { .. } => "CleanupFailed",
            ReconcileError::Kube { .. } | ReconcileError::NoNamespace(_) => "APIError",
        }
    }
}

/// `namespace/name`, for messages and logs.
pub(super) fn key(obj: &impl ResourceExt) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// `Kind:namespace/name`: the key of per-object state (backoff, stalls), distinct across
/// kinds.
pub(super) fn state_key<K: Reconciled>(obj: &K) -> String {
    format!("{}:{}", K::KIND, key(obj))
}

/// The reconcile function of every kind.
pub(super) async fn reconcile<K: Reconciled>(
    obj: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let _in_flight = ctx.metrics.in_flight(K::KIND);
    // Suspended: left alone entirely (not even the finalizer is added); deletion still runs
    // the cleanup when the finalizer was added before.
    if obj.suspended() && obj.meta().deletion_timestamp.is_none() {
        tracing::debug!(kind = K::KIND, object = %key(obj.as_ref()), "suspended: not reconciled");
        ctx.metrics
            .reconciled(K::KIND, "suspended", reasons::SUSPENDED, started.elapsed());
        return Ok(Action::await_change());
    }
    let namespace = obj
        .namespace()
        .ok_or(ReconcileError::NoNamespace(K::KIND))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(obj) => obj.apply(&ctx, &api).await,
            finalizer::Event::Cleanup(obj) => obj.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(Box::new(e)));
    if let Err(e) = &result {
        ctx.metrics
            .reconciled(K::KIND, "failure", e.reason(), started.elapsed());
    }
    result
}

/// Retryable failures wait with the object's exponential backoff (750 ms doubling to 15 min).
pub(super) fn error_policy<K: Reconciled>(
    obj: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let delay = ctx.backoffs.next(&state_key(obj.as_ref()));
    tracing::warn!(
        kind = K::KIND,
        object = %key(obj.as_ref()),
        retry_in_ms = delay.as_millis() as u64,
        error = %error,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Whether nothing the object depends on changed since it stalled with `mark`: then the
/// reconcile does nothing (a Stalled object waits for a change, it is not retried).
pub(super) fn still_stalled<K: Reconciled>(ctx: &Context, obj: &K, mark: &Mark) -> bool {
    let stalled = ctx.stalls.unchanged(&state_key(obj), mark);
    if stalled {
        tracing::debug!(kind = K::KIND, object = %key(obj), "stalled, and nothing it depends on changed since");
    }
    stalled
}

/// The end of every reconcile that ran: remember a stall, count and log the outcome, and
/// decide when to look again — at `interval` (with jitter) after success or while waiting
/// for a dependency, never while stalled, with backoff after a retryable failure.
pub(super) fn conclude<K: Reconciled>(
    ctx: &Context,
    obj: &K,
    started: Instant,
    stall: Mark,
    failure: Option<Failure>,
    interval: Option<Duration>,
) -> Result<Action, ReconcileError> {
    let state = state_key(obj);
    match &failure {
        Some(f) if f.retry == Retry::Never => ctx.stalls.record(&state, stall),
        _ => ctx.stalls.clear(&state),
    }
    let again = || {
        interval.map_or_else(Action::await_change, |i| {
            Action::requeue(schedule::jitter(i))
        })
    };
    let Some(failure) = failure else {
        ctx.backoffs.reset(&state);
        ctx.metrics
            .reconciled(K::KIND, "success", reasons::SUCCEEDED, started.elapsed());
        return Ok(again());
    };
    match failure.retry {
        Retry::Never => {
            ctx.metrics
                .reconciled(K::KIND, "stalled", failure.reason, started.elapsed());
            tracing::warn!(kind = K::KIND, object = %key(obj), reason = failure.reason, message = %failure.message, "stalled");
            Ok(Action::await_change())
        }
        Retry::Interval => {
            ctx.backoffs.reset(&state);
            ctx.metrics
                .reconciled(K::KIND, "waiting", failure.reason, started.elapsed());
            tracing::warn!(kind = K::KIND, object = %key(obj), reason = failure.reason, message = %failure.message, "waiting for a dependency");
            Ok(again())
        }
        // Counted by `reconcile` when the error comes out of the finalizer.
        Retry::Backoff => Err(ReconcileError::Failed(failure)),
    }
}

/// Server-side applies `desired` on the status subresource, only when it differs from
/// `current`. Returns whether it wrote.
pub(super) async fn write_status<K: Reconciled>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    current: &K::Status,
    desired: &K::Status,
) -> Result<bool, ReconcileError> {
    if current == desired {
        return Ok(false);
    }
    let started = Instant::now();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    ctx.metrics.stage(K::KIND, "status", started.elapsed());
    written.map_err(|source| ReconcileError::Kube {
        action: format!("writing the status of {} {}", K::KIND, key(obj)),
        source,
    })?;
    ctx.metrics
        .wrote(K::KIND, &format!("{}/status", K::plural(&())), "apply");
    Ok(true)
}

/// Publishes `event` about `obj`; a failure is logged, never fatal.
pub(super) async fn publish_event<K: Reconciled>(ctx: &Context, obj: &K, event: Event) {
    match ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote(K::KIND, "events", "create"),
        Err(e) => {
            tracing::warn!(kind = K::KIND, object = %key(obj), error = %e, "publishing an event failed");
        }
    }
}

/// The end of a cleanup: the work directory goes, and the object's backoff and stall are
/// forgotten (only now: a failing cleanup keeps backing off).
pub(super) fn forget<K: Reconciled>(ctx: &Context, obj: &K, work: &Path) {
    ctx.work_dirs.forget(work);
    if let Err(e) = std::fs::remove_dir_all(work)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %work.display(), error = %e, "removing the work directory");
    }
    ctx.backoffs.reset(&state_key(obj));
    ctx.stalls.clear(&state_key(obj));
}
