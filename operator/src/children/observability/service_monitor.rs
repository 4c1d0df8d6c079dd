//! ServiceMonitors: Prometheus scrapes the chat-nodes' admin port (through the headless
//! `<name>-admin` Service) and the collector's Prometheus exporter.

use super::monitoring::{
    LabelSelector, NamespaceSelector, ScrapeEndpoint, ServiceMonitor,
    ServiceMonitorSpec as MonitorObjectSpec,
};
use super::{ADMIN_PORT_NAME, ClusterContext, Error, METRICS_PATH, check_duration, collector};
use crate::api::observability::{ObservabilitySpec, ServiceMonitorSpec};

/// Default scrape interval.
pub const DEFAULT_SCRAPE_INTERVAL: &str = "30s";

impl ObservabilitySpec {
    /// The ServiceMonitor settings in force (absent section = defaults, enabled).
    pub fn service_monitor_settings(&self) -> ServiceMonitorSpec {
        self.service_monitor.clone().unwrap_or_default()
    }
}

fn interval(settings: &ServiceMonitorSpec) -> Result<String, Error> {
    match &settings.interval {
        Some(i) => check_duration("observability.serviceMonitor.interval", i),
        None => Ok(DEFAULT_SCRAPE_INTERVAL.to_owned()),
    }
}

/// The ServiceMonitor `<name>` for the chat-nodes' admin port; `None` when disabled.
pub fn build_chat_node_monitor(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<ServiceMonitor>, Error> {
    let settings = spec.service_monitor_settings();
    if settings.enabled == Some(false) {
        return Ok(None);
    }
    let mut monitor = ServiceMonitor::new(
        &ctx.name,
        MonitorObjectSpec {
            selector: LabelSelector {
                match_labels: ctx.chat_node_selector(),
            },
            namespace_selector: NamespaceSelector {
                match_names: vec![ctx.namespace.clone()],
            },
            endpoints: vec![ScrapeEndpoint {
                port: ADMIN_PORT_NAME.to_owned(),
                path: METRICS_PATH.to_owned(),
                interval: Some(interval(&settings)?),
            }],
        },
    );
    monitor.metadata = ctx.metadata(
        ctx.name.clone(),
        "chat-node",
        "monitoring",
        Some(&ctx.monitoring_labels(settings.labels.as_ref())),
    );
    Ok(Some(monitor))
}

/// The ServiceMonitor `<name>-otel-collector` for the collector run by the operator (its
/// Prometheus exporter and its own telemetry); `None` when there is no such collector or
/// monitoring is disabled.
pub fn build_collector_monitor(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<ServiceMonitor>, Error> {
    let settings = spec.service_monitor_settings();
    let Some(collector_spec) = collector::managed_collector(spec) else {
        return Ok(None);
    };
    if settings.enabled == Some(false) {
        return Ok(None);
    }
    let interval = interval(&settings)?;
    let mut endpoints = vec![ScrapeEndpoint {
        port: collector::TELEMETRY_PORT_NAME.to_owned(),
        path: METRICS_PATH.to_owned(),
        interval: Some(interval.clone()),
    }];
    if collector::metrics_exporter_port(collector_spec).is_some() {
        endpoints.push(ScrapeEndpoint {
            port: collector::METRICS_PORT_NAME.to_owned(),
            path: METRICS_PATH.to_owned(),
            interval: Some(interval),
        });
    }
    let mut monitor = ServiceMonitor::new(
        &ctx.collector_name(),
        MonitorObjectSpec {
            selector: LabelSelector {
                match_labels: collector::selector_labels(ctx),
            },
            namespace_selector: NamespaceSelector {
                match_names: vec![ctx.namespace.clone()],
            },
            endpoints,
        },
    );
    monitor.metadata = ctx.metadata(
        ctx.collector_name(),
        collector::APP_NAME,
        "monitoring",
        Some(&ctx.monitoring_labels(settings.labels.as_ref())),
    );
    Ok(Some(monitor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::observability::CollectorSpec;

    #[test]
    fn chat_node_monitor_selects_admin_port_of_the_cluster() {
        let ctx = ClusterContext::new("demo", "chat");
        let monitor = build_chat_node_monitor(&ObservabilitySpec::default(), &ctx)
            .unwrap()
            .unwrap();
        let value = serde_json::to_value(&monitor).unwrap();
        assert_eq!(value["kind"], "ServiceMonitor");
        assert_eq!(value["spec"]["endpoints"][0]["port"], "admin");
        assert_eq!(value["spec"]["endpoints"][0]["interval"], "30s");
        assert_eq!(
            value["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "demo"
        );
        assert_eq!(value["spec"]["namespaceSelector"]["matchNames"][0], "chat");
    }

    #[test]
    fn collector_monitor_only_for_a_managed_collector() {
        let ctx = ClusterContext::new("demo", "chat");
        assert!(
            build_collector_monitor(&ObservabilitySpec::default(), &ctx)
                .unwrap()
                .is_none()
        );
        let external = ObservabilitySpec {
            collector: Some(CollectorSpec {
                endpoint: Some("http://otel.monitoring:4317".into()),
                ..CollectorSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        assert!(build_collector_monitor(&external, &ctx).unwrap().is_none());
        let managed = ObservabilitySpec {
            collector: Some(CollectorSpec::default()),
            ..ObservabilitySpec::default()
        };
        let monitor = build_collector_monitor(&managed, &ctx).unwrap().unwrap();
        assert_eq!(
            monitor.metadata.name.as_deref(),
            Some("demo-otel-collector")
        );
        assert_eq!(monitor.spec.endpoints.len(), 2);
    }
}
