//! What a reconcile found, for every kind: why it did not reach Ready ([`Failure`]) and what
//! to do about it ([`Retry`]), plus the small rules both kinds' status functions share
//! (second-precision timestamps, capped messages, the `Reconciling` condition). Pure: no
//! I/O, no dependency on the rest of the controller.

use jiff::Timestamp;

use crate::api::conditions::{self, reasons, types};
use crate::pipeline::Stage;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Retry with the object's exponential backoff.
    Backoff,
    /// Retry at the next interval (a dependency outside our control, e.g. kapp-controller).
    Interval,
    /// Stalled: wait for a new generation or a `requestedAt` annotation.
    Never,
}

/// Why a reconcile did not reach Ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub(super) struct Failure {
    /// The stage that failed; `None` for a failure of the whole reconcile (a timeout).
    pub stage: Option<Stage>,
    /// A condition reason from [`reasons`] .
    pub reason: &'static str,
    /// What went wrong and what to do, for a person.
    pub message: String,
    pub retry: Retry,
    /// Whether every stage before `stage` ran and succeeded in this reconcile (false when the
    /// controller failed while preparing the pipeline's inputs).
    pub earlier_stages_ran: bool,
}

impl Failure {
    /// A failure found before the pipeline ran (loading Secrets, building the registry).
    pub(super) fn before_pipeline(
        stage: Stage,
        reason: &'static str,
        message: impl Into<String>,
        retry: Retry,
    ) -> Self {
        Self {
            stage: Some(stage),
            reason,
            message: message.into(),
            retry,
            earlier_stages_ran: false,
        }
    }

    /// The reconcile ran out of time.
    pub(super) fn timeout(after: std::time::Duration) -> Self {
        Self {
            stage: None,
            reason: reasons::TIMEOUT,
            message: format!(
                "the reconcile did not finish within {}s (spec.timeout); it is retried with \
                 backoff — raise spec.timeout if the upstreams or registries are slow",
                after.as_secs()
            ),
            retry: Retry::Backoff,
            earlier_stages_ran: false,
        }
    }

    pub(super) fn is_stalled(&self) -> bool {
        self.retry == Retry::Never
    }
}

/// `now` at second precision, as the API server stores `metav1.Time`: comparing a status we
/// computed with the one read back then never differs by nanoseconds.
pub(super) fn truncate(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The first 12 hex digits of the digest of `repo@sha256:<hex>`.
pub(super) fn short_digest(image: &str) -> String {
    image
        .rsplit_once("@sha256:")
        .map(|(_, hex)| hex.chars().take(12).collect())
        .unwrap_or_default()
}

/// Events notes are limited to 1 kB.
pub(crate) fn truncate_note(s: &str) -> String {
    const MAX: usize = 1000;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Reconciling=True` for `generation`, and `Ready=False/Progressing` when there is no Ready
/// yet (a first reconcile): shared by both kinds, so they read the same in `kubectl get`.
pub(super) fn mark_reconciling(
    conditions_: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = match generation {
        Some(g) => format!("reconciling generation {g}"),
        None => "reconciling".to_owned(),
    };
    let now = truncate(now);
    conditions::set(
        conditions_,
        types::RECONCILING,
        true,
        reasons::PROGRESSING,
        message.clone(),
        generation,
        now,
    );
    if conditions::get(conditions_, types::READY).is_none() {
        conditions::set(
            conditions_,
            types::READY,
            false,
            reasons::PROGRESSING,
            message,
            generation,
            now,
        );
    }
}

/// A Kubernetes API error as a person reads it: the server's message and code, without the
/// client's debug dump; a 403 says where to grant the permission.
pub(super) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{} (403 Forbidden: grant it to the controller's ServiceAccount; the chart's and \
             config/rbac's ClusterRole list what it needs)",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_the_server_said_them() {
        let err = |code, message: &str, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let forbidden = api_message(&err(403, "configmaps \"x\" is forbidden", "Forbidden"));
        assert!(
            forbidden.starts_with("configmaps \"x\" is forbidden (403 Forbidden: grant it")
                && !forbidden.contains("Status {"),
            "{forbidden}"
        );
        assert_eq!(
            api_message(&err(409, "conflict", "Conflict")),
            "conflict (409 Conflict)"
        );
    }
}
