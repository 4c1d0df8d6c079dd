//! kube-prometheus-stack picks up our monitoring objects: with the operator-wide monitoring labels
//! (`--monitoring-labels release=kube-prometheus-stack`, chart value `monitoring.labels`), every
//! ServiceMonitor, PrometheusRule and AlertmanagerConfig of a ChatCluster that sets no labels of
//! its own is selected by kube-prometheus-stack's default selectors, and `MonitoringReady` says
//! which labels each object got; without them nothing is selected and the condition warns.
//!
//! What runs: the real reconciler against a real kube-apiserver with prometheus-operator's CRDs.
//! What stands in for prometheus-operator: its selection is a `metav1.LabelSelector` match
//! (`serviceMonitorSelector`, `ruleSelector`, `alertmanagerConfigSelector`, with kube-prometheus-
//! stack's default namespace selectors `{}`, i.e. every namespace). The test lists each kind
//! through the API server with kube-prometheus-stack's default selectors, so the API server's
//! own label-selector matching (the same apimachinery code prometheus-operator uses) decides;
//! prometheus-operator itself runs in `observability_kps.rs`.
//!
//! One test per file: it installs cluster-wide CRDs into this process' control plane.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_operator::api::ChatCluster;
use chat_operator::api::observability::ServiceMonitorSpec;
use chat_operator::children::observability::MonitoringDefaults;
use chat_operator::children::observability::monitoring::{
    AlertmanagerConfig, PrometheusRule, ServiceMonitor,
};
use chat_operator::metrics::Metrics;
use chat_operator::reconcile::observability::{MONITORING_READY, reasons};
use chat_operator::reconcile::{Context, Settings, reconcile};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use test_harness::kube::ControlPlane;

/// The Helm release name kube-prometheus-stack is most often installed under.
const KPS_RELEASE: &str = "kube-prometheus-stack";

/// kube-prometheus-stack's default selectors (values `*SelectorNilUsesHelmValues: true`):
/// `matchLabels: {release: <release>}` for ServiceMonitors, PodMonitors, Probes, ScrapeConfigs,
/// PrometheusRules and AlertmanagerConfigs, any namespace.
fn kps_default_selector() -> String {
    format!("release={KPS_RELEASE}")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn context(client: &Client, monitoring: MonitoringDefaults) -> Arc<Context> {
    Arc::new(Context::new(
        client.clone(),
        Settings {
            discovery_ttl: Duration::ZERO,
            monitoring,
            ..Settings::default()
        },
        Arc::new(Metrics::new()),
        "selection-test",
    ))
}

/// The full-stack example as `name`, with the labels of its monitoring sections removed (the
/// ServiceMonitor section keeps one label of its own, `team: chat`, to show the merge).
fn cluster(name: &str, ns: &str) -> ChatCluster {
    let manifest = std::fs::read_to_string(repo().join("examples/full-stack.yaml")).unwrap();
    let mut cluster: ChatCluster = serde_yaml_ng::from_str(&manifest).unwrap();
    cluster.metadata.name = Some(name.into());
    cluster.metadata.namespace = Some(ns.into());
    let observability = cluster.spec.observability.as_mut().unwrap();
    observability.prometheus_rule.as_mut().unwrap().labels = None;
    observability.service_monitor = Some(ServiceMonitorSpec {
        labels: Some(BTreeMap::from([("team".into(), "chat".into())])),
        ..observability.service_monitor.clone().unwrap_or_default()
    });
    cluster.spec.alerting.as_mut().unwrap().labels = None;
    cluster
}

/// Names of the objects of kind `K` in `ns` that `selector` selects.
async fn selected<K>(client: &Client, ns: &str, selector: &str) -> Vec<String>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

async fn reconciled(ctx: &Arc<Context>, clusters: &Api<ChatCluster>, name: &str) -> Condition {
    let current = Arc::new(clusters.get(name).await.unwrap());
    reconcile(current, ctx.clone()).await.expect("reconcile");
    clusters
        .get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.condition(MONITORING_READY).cloned())
        .expect("MonitoringReady condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_wide_labels_make_kube_prometheus_stack_select_every_monitoring_object() {
    let cp = ControlPlane::shared().await;
    cp.install_crds(&[repo().join("crds/chatclusters.realtime.dev.yaml")])
        .await;
    cp.install_crds(&[PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds/prometheus-operator-v0.93.0")])
        .await;
    cp.with_temp_ns("obs-selection", |client, ns| async move {
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        for name in ["labelled", "bare"] {
            clusters
                .create(&PostParams::default(), &cluster(name, &ns))
                .await
                .unwrap();
        }
        let selector = kps_default_selector();

        // 1. An operator with the chart's `monitoring.labels: {release: kube-prometheus-stack}`.
        let with_labels = context(
            &client,
            MonitoringDefaults {
                labels: BTreeMap::from([("release".into(), KPS_RELEASE.into())]),
                ..MonitoringDefaults::default()
            },
        );
        let condition = reconciled(&with_labels, &clusters, "labelled").await;
        assert_eq!(
            selected::<ServiceMonitor>(&client, &ns, &selector).await,
            ["labelled", "labelled-otel-collector"]
        );
        assert_eq!(
            selected::<PrometheusRule>(&client, &ns, &selector).await,
            ["labelled"]
        );
        assert_eq!(
            selected::<AlertmanagerConfig>(&client, &ns, &selector).await,
            ["labelled"]
        );
        // The section's own label is merged in, not replaced.
        assert_eq!(
            selected::<ServiceMonitor>(&client, &ns, "release=kube-prometheus-stack,team=chat")
                .await
                .len(),
            2
        );
        assert_eq!(condition.status, "True");
        assert_eq!(condition.reason, reasons::APPLIED);
        assert_eq!(
            condition.message,
            "applied AlertmanagerConfig/labelled, PrometheusRule/labelled with labels \
             release=kube-prometheus-stack; applied ServiceMonitor/labelled, \
             ServiceMonitor/labelled-otel-collector with labels release=kube-prometheus-stack, \
             team=chat"
        );

        // 2. An operator without them: kube-prometheus-stack would ignore the rules and the
        // alert routes of this cluster, and the condition says so (its ServiceMonitors carry
        // only the section's own label, which no default selector matches either).
        let without = context(&client, MonitoringDefaults::default());
        let condition = reconciled(&without, &clusters, "bare").await;
        for names in [
            selected::<ServiceMonitor>(&client, &ns, &selector).await,
            selected::<PrometheusRule>(&client, &ns, &selector).await,
            selected::<AlertmanagerConfig>(&client, &ns, &selector).await,
        ] {
            assert!(
                !names.iter().any(|n| n.starts_with("bare")),
                "selected without labels: {names:?}"
            );
        }
        assert_eq!(condition.status, "True");
        assert!(
            condition.message.starts_with(
                "applied AlertmanagerConfig/bare, PrometheusRule/bare without selection labels"
            ),
            "{}",
            condition.message
        );
        assert!(
            condition.message.contains("monitoring.labels"),
            "{}",
            condition.message
        );
    })
    .await;
}
