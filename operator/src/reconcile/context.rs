//! What every reconcile shares: the client, settings, metrics, Events and per-object state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::ApiResource;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use crate::api::ChatCluster;
use crate::error::{ApiError, Error, with_timeout};
use crate::metrics::Metrics;

/// Settings of the reconciler (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Deadline of each API call.
    pub api_timeout: Duration,
    /// Requeue interval of a healthy ChatCluster.
    pub resync_interval: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long "is this optional API installed" answers are cached.
    pub discovery_ttl: Duration,
    /// The chat-node image of new ChatClusters without `spec.image` (and of those that follow
    /// the operator's default, `spec.imagePolicy: followOperator`).
    pub default_node_image: String,
    /// Images a ChatCluster may name (the operator's defaults are always allowed).
    pub allowed_images: crate::admission::ImageAllowList,
    /// What tenants may ask of shared infrastructure (Ingress annotations and hosts, priority
    /// classes, tolerations).
    pub tenant_policy: crate::admission::tenant::TenantPolicy,
    /// Operator-wide labels of the monitoring objects and the runbook base URL.
    pub monitoring: crate::children::observability::MonitoringDefaults,
    /// Operator-wide defaults of the operand pods: pull secrets, Redis and Collector images.
    pub operands: crate::children::operands::OperandDefaults,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            discovery_ttl: Duration::from_secs(60),
            default_node_image: crate::api::default_node_image(),
            allowed_images: crate::admission::ImageAllowList::default(),
            tenant_policy: crate::admission::tenant::TenantPolicy::default(),
            monitoring: crate::children::observability::MonitoringDefaults::default(),
            operands: crate::children::operands::OperandDefaults::default(),
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics (also served by the admin server).
    pub metrics: Arc<Metrics>,
    /// Publishes Events on ChatClusters.
    pub recorder: Recorder,
    failures: Mutex<HashMap<ObjectRef<ChatCluster>, u32>>,
    paused: Mutex<HashSet<ObjectRef<ChatCluster>>>,
    discovery: Mutex<HashMap<String, (Instant, bool)>>,
}

impl Context {
    /// A context publishing Events as `chat-operator` (instance `identity`).
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, identity: &str) -> Self {
        let reporter = Reporter {
            controller: crate::labels::MANAGER.into(),
            instance: Some(identity.into()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
            paused: Mutex::default(),
            discovery: Mutex::default(),
        }
    }

    /// Records one more consecutive failure of `object` and returns the delay before its retry:
    /// `base × 2^(failures−1)`, capped at `max`.
    pub fn next_backoff(&self, object: ObjectRef<ChatCluster>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(object).or_insert(0);
        *count = count.saturating_add(1);
        backoff(
            self.settings.backoff_base,
            self.settings.backoff_max,
            *count,
        )
    }

    /// Forgets the failures of `object` after a successful reconcile.
    pub fn reset_backoff(&self, object: &ObjectRef<ChatCluster>) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(object);
    }

    /// Tracks whether `object` is paused and updates the gauge.
    pub fn set_paused(&self, object: ObjectRef<ChatCluster>, paused: bool) {
        let mut set = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if paused {
            set.insert(object);
        } else {
            set.remove(&object);
        }
        self.metrics.paused_clusters.set(set.len() as i64);
    }

    /// True when the API of `resource` is served (cached for `discovery_ttl`). Core and other
    /// built-in groups are assumed present; this is for third-party CRDs.
    pub async fn api_installed(&self, resource: &ApiResource) -> Result<bool, Error> {
        let key = format!("{}/{}", resource.api_version, resource.kind);
        let cached = self
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some((at, present)) = cached
            && at.elapsed() < self.settings.discovery_ttl
        {
            return Ok(present);
        }
        let present = match with_timeout(
            self.settings.api_timeout,
            self.client.list_api_group_resources(&resource.api_version),
        )
        .await
        {
            Ok(list) => list
                .resources
                .iter()
                .any(|r| r.kind == resource.kind && r.name == resource.plural),
            Err(e) if e.is_not_found() => false,
            Err(source) => {
                return Err(Error::Discovery {
                    api: resource.api_version.clone(),
                    source,
                });
            }
        };
        self.discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), present));
        Ok(present)
    }

    /// Runs an API call under the configured deadline.
    pub async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ApiError> {
        with_timeout(self.settings.api_timeout, call).await
    }
}

/// `base × 2^(failures−1)`, capped at `max`.
pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exponent).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=8).map(|n| backoff(base, max, n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(base, max, u32::MAX), max);
    }
}
