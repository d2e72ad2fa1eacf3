//! Prometheus metrics, in the text exposition format on `/metrics`:
//!
//! - `packsmith_reconcile_duration_seconds{kind}` (histogram, Flux's
//!   `gotk_reconcile_duration_seconds`);
//! - `packsmith_reconcile_total{kind, result, reason}` with result `success`, `failure`
//!   (retried with backoff), `stalled`, `waiting` (retried at the interval) or `suspended`;
//! - `packsmith_stage_duration_seconds{kind, stage}`: `pipeline` (sync → lock → push → render),
//!   `publish` and `status`;
//! - `packsmith_api_writes_total{kind, resource, verb}`: every write the controller makes to
//!   the API server, so a zero-write steady state is observable;
//! - `packsmith_reconcile_in_flight{kind}`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub kind: String,
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StageLabels {
    pub kind: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WriteLabels {
    pub kind: String,
    pub resource: String,
    pub verb: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The controller's metrics and the registry that renders them.
pub(super) struct Metrics {
    registry: Registry,
    reconcile_duration: HistogramFamily<KindLabels>,
    reconciles: Family<ResultLabels, Counter>,
    stage_duration: HistogramFamily<StageLabels>,
    writes: Family<WriteLabels, Counter>,
    in_flight: Family<KindLabels, Gauge>,
    registry_requests: Family<KindLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 10 ms … ~10 min.
    Histogram::new(exponential_buckets(0.01, 2.5, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("packsmith");
        let reconcile_duration: HistogramFamily<KindLabels> =
            Family::new_with_constructor(duration_histogram);
        let reconciles = Family::<ResultLabels, Counter>::default();
        let stage_duration: HistogramFamily<StageLabels> =
            Family::new_with_constructor(duration_histogram);
        let writes = Family::<WriteLabels, Counter>::default();
        let in_flight = Family::<KindLabels, Gauge>::default();
        let registry_requests = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciles by result and condition reason",
            reconciles.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Duration of the parts of a reconcile (pipeline, publish, status)",
            stage_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes the controller made to the Kubernetes API",
            writes.clone(),
        );
        registry.register(
            "reconcile_in_flight",
            "Reconciles running now",
            in_flight.clone(),
        );
        registry.register(
            "registry_requests",
            "HTTP requests to OCI registries by the lock, push and pull stages",
            registry_requests.clone(),
        );
        Self {
            registry,
            reconcile_duration,
            reconciles,
            stage_duration,
            writes,
            in_flight,
            registry_requests,
        }
    }

    pub(super) fn registry_requests(&self, kind: &str, n: usize) {
        self.registry_requests
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n as u64);
    }

    pub(super) fn reconciled(&self, kind: &str, result: &str, reason: &str, took: Duration) {
        self.reconcile_duration
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(super) fn stage(&self, kind: &str, stage: &str, took: Duration) {
        self.stage_duration
            .get_or_create(&StageLabels {
                kind: kind.to_owned(),
                stage: stage.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub(super) fn wrote(&self, kind: &str, resource: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
                resource: resource.to_owned(),
                verb: verb.to_owned(),
            })
            .inc();
    }

    /// Marks one reconcile of `kind` as running until the guard is dropped.
    pub(super) fn in_flight(&self, kind: &str) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// The Prometheus text exposition of every metric.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements the in-flight gauge when dropped.
pub(super) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.reconciled(
            "PackageSource",
            "success",
            "Succeeded",
            Duration::from_millis(20),
        );
        m.stage("PackageSource", "pipeline", Duration::from_millis(15));
        m.wrote("PackageSource", "packagesources/status", "patch");
        {
            let _g = m.in_flight("PackageSource");
        }
        let text = m.render();
        for needle in [
            "packsmith_reconcile_duration_seconds_bucket{le=\"0.01\",kind=\"PackageSource\"}",
            "packsmith_reconcile_total{kind=\"PackageSource\",result=\"success\",reason=\"Succeeded\"} 1",
            "packsmith_stage_duration_seconds_count{kind=\"PackageSource\",stage=\"pipeline\"} 1",
            "packsmith_api_writes_total{kind=\"PackageSource\",resource=\"packagesources/status\",verb=\"patch\"} 1",
            "packsmith_reconcile_in_flight{kind=\"PackageSource\"} 0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
