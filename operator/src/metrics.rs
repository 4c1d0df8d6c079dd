//! The operator's own Prometheus metrics, served on the admin port at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the failures counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label()`.
    pub error: String,
}

/// Every metric of the operator, registered in one registry.
pub struct Metrics {
    /// `chat_operator_reconcile_runs_total`.
    pub reconcile_runs: Counter,
    /// `chat_operator_reconcile_failures_total{error}`.
    pub reconcile_failures: Family<ErrorLabels, Counter>,
    /// `chat_operator_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `chat_operator_paused_clusters`.
    pub paused_clusters: Gauge,
    /// `chat_operator_leader` (1 while this replica holds the Lease or runs without election).
    pub leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let reconcile_runs = Counter::default();
        let reconcile_failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let paused_clusters = Gauge::default();
        let leader = Gauge::default();
        let mut registry = Registry::default();
        registry.register(
            "chat_operator_reconcile_runs",
            "Reconciles of ChatClusters started",
            reconcile_runs.clone(),
        );
        registry.register(
            "chat_operator_reconcile_failures",
            "Reconciles that failed, by the step that failed",
            reconcile_failures.clone(),
        );
        registry.register(
            "chat_operator_reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "chat_operator_paused_clusters",
            "ChatClusters with spec.paused set",
            paused_clusters.clone(),
        );
        registry.register(
            "chat_operator_leader",
            "1 while this replica is the one that reconciles",
            leader.clone(),
        );
        Self {
            reconcile_runs,
            reconcile_failures,
            reconcile_duration,
            paused_clusters,
            leader,
            registry,
        }
    }

    /// Counts a failure under its error label.
    pub fn record_failure(&self, error: &crate::error::Error) {
        self.reconcile_failures
            .get_or_create(&ErrorLabels {
                error: error.metric_label().into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_metric_by_name() {
        let metrics = Metrics::new();
        metrics.reconcile_runs.inc();
        metrics.record_failure(&crate::error::Error::MissingNamespace);
        metrics.reconcile_duration.observe(0.01);
        let text = metrics.encode();
        for name in [
            "chat_operator_reconcile_runs_total 1",
            "chat_operator_reconcile_failures_total{error=\"missing_namespace\"} 1",
            "chat_operator_reconcile_duration_seconds_bucket",
            "chat_operator_paused_clusters 0",
            "chat_operator_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
