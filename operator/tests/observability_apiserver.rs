//! The monitoring objects the operator builds are accepted by a real kube-apiserver with
//! prometheus-operator's real CRDs installed (server-side apply with strict field validation,
//! so an unknown or misspelt field fails the test), and so are the collector and dashboard
//! objects.

use std::path::PathBuf;

use chat_operator::api::observability::{
    AlertingSpec, CollectorSpec, CriticalReceiver, DashboardSpec, ObservabilitySpec,
    OpsGenieReceiver, OtlpDestination, PagerDutyReceiver, SecretKeyRef, SlackReceiver,
    WarningReceiver,
};
use chat_operator::children::observability::ClusterContext;
use chat_operator::children::observability::{
    alertmanager, collector, dashboard, monitoring, rules, service_monitor,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::discovery::ApiResource;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use test_harness::kube::ControlPlane;

fn crds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds/prometheus-operator-v0.93.0")
}

async fn apply<K>(client: &kube::Client, ns: &str, object: &K) -> DynamicObject
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let mut params = PatchParams::apply("chat-operator").force();
    params.field_validation = Some(ValidationDirective::Strict);
    let name = object.meta().name.clone().unwrap();
    let mut body = serde_json::to_value(object).unwrap();
    body["apiVersion"] = resource.api_version.clone().into();
    body["kind"] = resource.kind.clone().into();
    api.patch(&name, &params, &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("{} {name} refused: {e}", resource.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_objects_are_accepted_by_the_real_api_server() {
    let cp = ControlPlane::shared().await;
    cp.install_crds(&[crds()]).await;
    cp.with_temp_ns("obs-accept", |client, ns| async move {
        let ctx = ClusterContext::new("demo", &ns);
        let key = |name: &str| SecretKeyRef {
            name: name.into(),
            key: "key".into(),
        };
        let spec = ObservabilitySpec {
            collector: Some(CollectorSpec {
                traces: Some(OtlpDestination {
                    endpoint: "http://tempo.monitoring:4317".into(),
                    ..OtlpDestination::default()
                }),
                ..CollectorSpec::default()
            }),
            dashboard: Some(DashboardSpec::default()),
            ..ObservabilitySpec::default()
        };
        let alerting = AlertingSpec {
            critical: Some(CriticalReceiver {
                pager_duty: Some(PagerDutyReceiver {
                    routing_key_secret_ref: key("pagerduty"),
                    url: None,
                }),
                ops_genie: Some(OpsGenieReceiver {
                    api_key_secret_ref: key("opsgenie"),
                    api_url: None,
                }),
            }),
            warning: Some(WarningReceiver {
                slack: Some(SlackReceiver {
                    api_url_secret_ref: key("slack"),
                    channel: Some("#chat".into()),
                }),
            }),
            ..AlertingSpec::default()
        };

        let rule = rules::build_prometheus_rule(&spec, &ctx).unwrap().unwrap();
        let stored = apply(&client, &ns, &rule).await;
        assert_eq!(
            stored.data["spec"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .len(),
            rules::ALERTS.len()
        );
        let monitor = service_monitor::build_chat_node_monitor(&spec, &ctx)
            .unwrap()
            .unwrap();
        let stored = apply(&client, &ns, &monitor).await;
        assert_eq!(stored.data["spec"]["endpoints"][0]["port"], "admin");
        let collector_monitor = service_monitor::build_collector_monitor(&spec, &ctx)
            .unwrap()
            .unwrap();
        apply(&client, &ns, &collector_monitor).await;
        let routes = alertmanager::build_alertmanager_config(&alerting, &ctx).unwrap();
        let stored = apply(&client, &ns, &routes).await;
        assert_eq!(
            stored.data["spec"]["receivers"][0]["pagerdutyConfigs"][0]["routingKey"]["name"],
            "pagerduty"
        );
        assert_eq!(
            stored.data["spec"]["inhibitRules"][0]["equal"][1],
            "chatcluster"
        );

        apply(
            &client,
            &ns,
            &collector::build_collector_config_map(&spec, &ctx)
                .unwrap()
                .unwrap(),
        )
        .await;
        apply(
            &client,
            &ns,
            &collector::build_collector_service(&spec, &ctx).unwrap(),
        )
        .await;
        let deployment = collector::build_collector_deployment(&spec, &ctx)
            .unwrap()
            .unwrap();
        apply(&client, &ns, &deployment).await;
        let dashboard = dashboard::build_dashboard_config_map(&spec, &ctx)
            .unwrap()
            .unwrap();
        let stored = apply(&client, &ns, &dashboard).await;
        assert_eq!(stored.labels()["grafana_dashboard"], "1");

        // The typed API works too (what the reconciler's `.owns()` watches would read).
        let rules_api: Api<monitoring::PrometheusRule> = Api::namespaced(client.clone(), &ns);
        let read = rules_api.get("demo").await.unwrap();
        assert_eq!(read.spec, rule.spec);
    })
    .await;
}
