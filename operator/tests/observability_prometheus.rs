//! End to end with the real thing: a real Prometheus scrapes two real chat-nodes (with a real
//! redis-server) using the rule group the operator generates, and sends its alerts to a real
//! Alertmanager routed like the generated AlertmanagerConfig. The test causes the symptoms —
//! Redis stops, a node fills to its connection limit, nodes stop — and watches the matching
//! alerts fire through Prometheus' HTTP API and resolve after the fix, the critical one
//! reaching the critical receiver. Every dashboard query is evaluated against that Prometheus.
//!
//! Scrape targets carry the labels a ServiceMonitor would give them (`job` = the admin
//! Service `<name>-admin`, `namespace`, `pod`), so the expressions are exactly the generated
//! ones. Intervals are short (1s scrape/evaluation, 2s `for:`), configured through the spec.

mod observability_support;

use std::collections::BTreeMap;
use std::time::Duration;

use chat_operator::api::observability::{
    AlertTuning, AlertingSpec, AlertsSpec, ObservabilitySpec, PrometheusRuleSpec,
};
use chat_operator::children::observability::ClusterContext;
use chat_operator::children::observability::alertmanager::build_alertmanager_config;
use chat_operator::children::observability::dashboard::dashboard_queries;
use chat_operator::children::observability::rules::{build_rule_group, rule_file_yaml};
use observability_support::{ChatNode, Receivers, alertmanager_yaml};
use test_harness::alertmanager::{AlertmanagerServer, WebhookReceiver};
use test_harness::prometheus::{
    ActiveAlert, PrometheusOptions, PrometheusServer, ScrapeJob, has_alert,
};
use test_harness::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(60);

fn quick(for_: &str) -> Option<AlertTuning> {
    Some(AlertTuning {
        for_: Some(for_.into()),
        ..AlertTuning::default()
    })
}

fn spec() -> ObservabilitySpec {
    ObservabilitySpec {
        prometheus_rule: Some(PrometheusRuleSpec {
            rate_window: Some("10s".into()),
            alerts: Some(AlertsSpec {
                redis_down: quick("2s"),
                node_near_connection_limit: quick("2s"),
                node_down: quick("2s"),
                cluster_down: quick("2s"),
                ..AlertsSpec::default()
            }),
            ..PrometheusRuleSpec::default()
        }),
        ..ObservabilitySpec::default()
    }
}

fn firing_for<'a>(alerts: &'a [ActiveAlert], name: &str) -> Vec<&'a ActiveAlert> {
    alerts
        .iter()
        .filter(|a| a.name() == name && a.state == "firing")
        .collect()
}

fn pods(alerts: &[&ActiveAlert]) -> Vec<String> {
    let mut pods: Vec<String> = alerts
        .iter()
        .map(|a| a.labels.get("pod").cloned().unwrap_or_default())
        .collect();
    pods.sort();
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_on_real_chat_nodes() {
    let ctx = ClusterContext::new("demo", "chat");
    let mut redis = RedisServer::start().await;
    let mut node0 = ChatNode::start("demo-0", &redis.url(), 3).await;
    let mut node1 = ChatNode::start("demo-1", &redis.url(), 1000).await;

    // Alertmanager with the generated routes, receivers swapped for a local webhook.
    let webhook = WebhookReceiver::start().await.unwrap();
    let alerting = AlertingSpec {
        group_wait: Some("1s".into()),
        group_interval: Some("1s".into()),
        ..AlertingSpec::default()
    };
    let am_config = build_alertmanager_config(&alerting, &ctx).unwrap();
    let base = webhook.url("");
    let am = AlertmanagerServer::start(&alertmanager_yaml(
        &am_config,
        Receivers::Webhooks {
            base: base.trim_end_matches('/'),
        },
        &webhook.url("unrouted"),
    ))
    .await
    .unwrap();

    let group = build_rule_group(&spec(), &ctx).unwrap().unwrap();
    let target = |node: &ChatNode| {
        (
            node.admin_target(),
            BTreeMap::from([
                ("namespace".to_owned(), "chat".to_owned()),
                ("pod".to_owned(), node.node_id.clone()),
            ]),
        )
    };
    let prometheus = PrometheusServer::start(PrometheusOptions {
        jobs: vec![ScrapeJob {
            job_name: ctx.admin_service_name(),
            targets: vec![target(&node0), target(&node1)],
        }],
        rule_files: vec![rule_file_yaml(&[group]).unwrap()],
        alertmanager: Some(am.url()),
        ..PrometheusOptions::default()
    })
    .await
    .unwrap();

    // Healthy: both targets up, Redis up everywhere, nothing firing.
    prometheus
        .wait_for_query(
            "sum(up{job=\"demo-admin\"}) == 2 and sum(chat_redis_up{job=\"demo-admin\"}) == 2",
            WAIT,
            |r| !r.is_empty(),
        )
        .await
        .unwrap();
    // (ChatClusterDown may have been pending before the first scrape; it must clear.)
    prometheus
        .wait_for_alerts("no alert on a healthy cluster", WAIT, |a| a.is_empty())
        .await
        .unwrap();

    // Every dashboard query is valid PromQL against the real series (Grafana's
    // $__rate_interval stands for a window of a few scrapes).
    let mut with_data = 0;
    for query in dashboard_queries(&ctx) {
        let query = query.replace("$__rate_interval", "10s");
        let result = prometheus
            .query(&query)
            .await
            .unwrap_or_else(|e| panic!("dashboard query refused: {query}: {e}"));
        if !result.is_empty() {
            with_data += 1;
        }
    }
    assert!(
        with_data >= 8,
        "only {with_data} dashboard queries returned data"
    );
    // The CPU panel: one series per node (cores used, from process_cpu_seconds_total).
    let cpu = dashboard_queries(&ctx)
        .into_iter()
        .find(|q| q.contains("process_cpu_seconds_total"))
        .expect("a CPU panel")
        .replace("$__rate_interval", "10s");
    // (A rate needs two scrapes of the series.)
    prometheus
        .wait_for_query(&cpu, WAIT, |per_node| per_node.len() == 2)
        .await
        .unwrap_or_else(|e| panic!("{cpu}: {e}"));

    // 1. Redis stops: every node loses it -> ChatRedisDown (critical) fires for both pods and
    //    reaches the critical receiver; Redis returns -> it resolves.
    redis.stop();
    let alerts = prometheus
        .wait_for_alerts("ChatRedisDown firing on both nodes", WAIT, |a| {
            firing_for(a, "ChatRedisDown").len() == 2
        })
        .await
        .unwrap();
    let redis_down = firing_for(&alerts, "ChatRedisDown");
    assert_eq!(pods(&redis_down), ["demo-0", "demo-1"]);
    assert_eq!(redis_down[0].labels["severity"], "critical");
    assert_eq!(redis_down[0].labels["chatcluster"], "demo");
    assert!(redis_down[0].annotations["runbook_url"].ends_with("/ChatRedisDown.md"));
    webhook
        .wait_for("ChatRedisDown at the critical receiver", WAIT, |r| {
            r.iter().any(|(path, n)| {
                path == "critical" && n["commonLabels"]["alertname"] == "ChatRedisDown"
            })
        })
        .await
        .unwrap();
    redis.restart().await;
    prometheus
        .wait_for_alerts("ChatRedisDown resolved", WAIT, |a| {
            !a.iter().any(|x| x.name() == "ChatRedisDown")
        })
        .await
        .unwrap();

    // 2. Node demo-0 (limit 3) is filled to its limit -> ChatNodeNearConnectionLimit fires
    //    for demo-0 only; the clients leave -> it resolves.
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (socket, _) = tokio_tungstenite::connect_async(node0.ws_url())
            .await
            .expect("WebSocket connect");
        sockets.push(socket);
    }
    let alerts = prometheus
        .wait_for_alerts("ChatNodeNearConnectionLimit firing", WAIT, |a| {
            has_alert(a, "ChatNodeNearConnectionLimit", "firing")
        })
        .await
        .unwrap();
    assert_eq!(
        pods(&firing_for(&alerts, "ChatNodeNearConnectionLimit")),
        ["demo-0"]
    );
    // At the limit the node refuses the next client.
    assert!(
        tokio_tungstenite::connect_async(node0.ws_url())
            .await
            .is_err(),
        "a fourth connection was accepted past the limit of 3"
    );
    for mut socket in sockets {
        let _ = socket.close(None).await;
    }
    prometheus
        .wait_for_alerts("ChatNodeNearConnectionLimit resolved", WAIT, |a| {
            !a.iter().any(|x| x.name() == "ChatNodeNearConnectionLimit")
        })
        .await
        .unwrap();

    // 3. Node demo-1 stops -> ChatNodeDown (warning) for demo-1; then demo-0 too ->
    //    ChatClusterDown (critical). Both restart -> everything resolves.
    node1.kill();
    let alerts = prometheus
        .wait_for_alerts("ChatNodeDown firing", WAIT, |a| {
            has_alert(a, "ChatNodeDown", "firing")
        })
        .await
        .unwrap();
    assert_eq!(pods(&firing_for(&alerts, "ChatNodeDown")), ["demo-1"]);
    assert!(!has_alert(&alerts, "ChatClusterDown", "firing"));
    node0.kill();
    prometheus
        .wait_for_alerts("ChatClusterDown firing", WAIT, |a| {
            has_alert(a, "ChatClusterDown", "firing")
        })
        .await
        .unwrap();
    node0.restart().await;
    node1.restart().await;
    prometheus
        .wait_for_alerts("node alerts resolved", WAIT, |a| {
            !a.iter()
                .any(|x| x.name() == "ChatNodeDown" || x.name() == "ChatClusterDown")
        })
        .await
        .unwrap();
    let alerts = prometheus.alerts().await.unwrap();
    assert!(
        alerts.iter().all(|a| a.state != "firing"),
        "alerts still firing after recovery: {alerts:#?}"
    );
}
