//! The reconciler with `spec.observability` / `spec.alerting`, against a real kube-apiserver:
//! first without prometheus-operator's CRDs (the chat service and the collector are created,
//! the monitoring objects are not, `MonitoringReady=False` with reason `CRDNotInstalled`, no
//! error), then with them (the next reconcile creates PrometheusRule, ServiceMonitors and
//! AlertmanagerConfig, `MonitoringReady=True`), then with a section switched off (its objects
//! are swept).
//!
//! One test per file: the CRDs are cluster-wide, and this process' control plane starts
//! without them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chat_operator::api::ChatCluster;
use chat_operator::children::observability::monitoring::{
    AlertmanagerConfig, PrometheusRule, ServiceMonitor,
};
use chat_operator::metrics::Metrics;
use chat_operator::reconcile::observability::{MONITORING_READY, reasons};
use chat_operator::reconcile::{Context, Settings, next_resync, reconcile};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use test_harness::kube::ControlPlane;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn condition(cluster: &ChatCluster, type_: &str) -> Option<(String, String)> {
    cluster
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn monitoring_condition(cluster: &ChatCluster) -> Condition {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == MONITORING_READY))
        .cloned()
        .expect("MonitoringReady condition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_objects_follow_the_crds_and_the_spec() {
    let cp = ControlPlane::shared().await;
    cp.install_crds(&[repo().join("crds/chatclusters.realtime.dev.yaml")])
        .await;
    cp.with_temp_ns("obs-reconcile", |client, ns| async move {
        let ctx = Arc::new(Context::new(
            client.clone(),
            Settings {
                discovery_ttl: Duration::ZERO,
                ..Settings::default()
            },
            Arc::new(Metrics::new()),
            "observability-test",
        ));
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let manifest = std::fs::read_to_string(repo().join("examples/full-stack.yaml")).unwrap();
        let mut cluster: ChatCluster = serde_yaml_ng::from_str(&manifest).unwrap();
        cluster.metadata.namespace = Some(ns.clone());
        let name = cluster.metadata.name.clone().unwrap();
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .unwrap();

        // 1. No prometheus-operator: no error, the rest is applied, the condition says why.
        let current = Arc::new(clusters.get(&name).await.unwrap());
        let action = reconcile(current, ctx.clone())
            .await
            .expect("reconcile without monitoring CRDs");
        // Looked at again soon (the CRDs may be installed any time), but not in a hot loop.
        assert_eq!(action, Action::requeue(next_resync(&ctx.settings, true)));
        assert!(next_resync(&ctx.settings, true) >= Duration::from_secs(10));
        let current = clusters.get(&name).await.unwrap();
        assert_eq!(
            condition(&current, MONITORING_READY),
            Some(("False".into(), reasons::CRD_NOT_INSTALLED.into())),
            "{:#?}",
            current.status
        );
        let waiting = monitoring_condition(&current);
        assert!(
            waiting.message.contains("PrometheusRule"),
            "{}",
            waiting.message
        );
        // A second reconcile while still waiting keeps the condition as it was (no churn; other
        // parts of the status may move as the controller-manager creates the ReplicaSet).
        reconcile(Arc::new(current), ctx.clone()).await.unwrap();
        let current = clusters.get(&name).await.unwrap();
        assert_eq!(monitoring_condition(&current), waiting);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        assert!(
            config_maps
                .get_opt(&format!("{name}-otel-collector"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            config_maps
                .get_opt(&format!("{name}-dashboard"))
                .await
                .unwrap()
                .is_some()
        );
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        assert!(
            deployments
                .get_opt(&format!("{name}-otel-collector"))
                .await
                .unwrap()
                .is_some()
        );
        let node = deployments.get(&name).await.unwrap();
        let env = node.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default();
        let endpoint = env
            .iter()
            .find(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT")
            .and_then(|e| e.value.clone());
        assert_eq!(
            endpoint.as_deref(),
            Some(format!("http://{name}-otel-collector.{ns}.svc:4317").as_str())
        );
        assert!(env.iter().any(|e| e.name == "OTEL_SERVICE_NAME"));

        // 2. The CRDs appear: the next reconcile creates the monitoring objects.
        cp.install_crds(&[PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/crds/prometheus-operator-v0.93.0")])
            .await;
        let current = Arc::new(clusters.get(&name).await.unwrap());
        let action = reconcile(current, ctx.clone())
            .await
            .expect("reconcile with monitoring CRDs");
        assert_eq!(action, Action::requeue(ctx.settings.resync_interval));
        let rules: Api<PrometheusRule> = Api::namespaced(client.clone(), &ns);
        let rule = rules.get(&name).await.expect("PrometheusRule created");
        assert_eq!(
            rule.metadata.labels.as_ref().unwrap()["release"],
            "kube-prometheus-stack"
        );
        let monitors: Api<ServiceMonitor> = Api::namespaced(client.clone(), &ns);
        monitors.get(&name).await.expect("chat-node ServiceMonitor");
        monitors
            .get(&format!("{name}-otel-collector"))
            .await
            .expect("collector ServiceMonitor");
        let routes: Api<AlertmanagerConfig> = Api::namespaced(client.clone(), &ns);
        routes.get(&name).await.expect("AlertmanagerConfig created");
        let current = clusters.get(&name).await.unwrap();
        assert_eq!(
            condition(&current, MONITORING_READY),
            Some(("True".into(), reasons::APPLIED.into()))
        );

        // 3. Alerting and the dashboard switched off: their objects are swept.
        let mut changed = current.clone();
        changed.spec.alerting = None;
        changed.spec.observability.as_mut().unwrap().dashboard = None;
        changed.metadata.managed_fields = None;
        clusters
            .replace(&name, &PostParams::default(), &changed)
            .await
            .unwrap();
        let current = Arc::new(clusters.get(&name).await.unwrap());
        reconcile(current, ctx.clone())
            .await
            .expect("reconcile after switching off");
        assert!(
            routes.get_opt(&name).await.unwrap().is_none(),
            "AlertmanagerConfig kept"
        );
        assert!(
            config_maps
                .get_opt(&format!("{name}-dashboard"))
                .await
                .unwrap()
                .is_none(),
            "dashboard kept"
        );
        assert!(rules.get_opt(&name).await.unwrap().is_some());
    })
    .await;
}
