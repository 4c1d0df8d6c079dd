//! The generated AlertmanagerConfig, proven with the real Alertmanager: `amtool check-config`
//! accepts its equivalent alertmanager.yml (real PagerDuty/OpsGenie/Slack receivers), and a
//! running Alertmanager with the same routes (receivers swapped for a local webhook) routes
//! by severity, groups, and holds warnings back while a critical of the same cluster fires.

mod observability_support;

use std::process::Command;
use std::time::Duration;

use chat_operator::api::observability::{
    AlertingSpec, CriticalReceiver, OpsGenieReceiver, PagerDutyReceiver, SecretKeyRef,
    SlackReceiver, WarningReceiver,
};
use chat_operator::children::observability::ClusterContext;
use chat_operator::children::observability::alertmanager::build_alertmanager_config;
use observability_support::{Receivers, alertmanager_yaml};
use serde_json::{Value, json};
use test_harness::alertmanager::{AlertmanagerServer, WebhookReceiver};
use test_harness::tools::amtool;

const WAIT: Duration = Duration::from_secs(30);

fn alerting(short: bool) -> AlertingSpec {
    let key = |name: &str, key: &str| SecretKeyRef {
        name: name.into(),
        key: key.into(),
    };
    AlertingSpec {
        critical: Some(CriticalReceiver {
            pager_duty: Some(PagerDutyReceiver {
                routing_key_secret_ref: key("pagerduty", "routingKey"),
                url: None,
            }),
            ops_genie: Some(OpsGenieReceiver {
                api_key_secret_ref: key("opsgenie", "apiKey"),
                api_url: None,
            }),
        }),
        warning: Some(WarningReceiver {
            slack: Some(SlackReceiver {
                api_url_secret_ref: key("slack", "webhookUrl"),
                channel: Some("#chat-alerts".into()),
            }),
        }),
        info: Some(WarningReceiver {
            slack: Some(SlackReceiver {
                api_url_secret_ref: key("slack", "webhookUrl"),
                channel: Some("#chat-capacity".into()),
            }),
        }),
        group_wait: short.then(|| "1s".into()),
        group_interval: short.then(|| "1s".into()),
        ..AlertingSpec::default()
    }
}

fn amtool_check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertmanager.yml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(amtool())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run amtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn amtool_accepts_the_equivalent_config_with_real_receivers() {
    let config =
        build_alertmanager_config(&alerting(false), &ClusterContext::new("demo", "chat")).unwrap();
    let yaml = alertmanager_yaml(&config, Receivers::Real, "http://127.0.0.1:9/unrouted");
    let (ok, out) = amtool_check(&yaml);
    assert!(ok, "amtool check-config failed:\n{out}\n{yaml}");
    assert!(out.contains("SUCCESS"), "{out}");
    // amtool can fail: a route to an undefined receiver is refused.
    let (ok, _) = amtool_check(&yaml.replace("receiver: chat/demo/critical", "receiver: nope"));
    assert!(!ok, "amtool accepted a route to a missing receiver");
}

fn alert(name: &str, severity: &str, cluster: &str, pod: &str) -> Value {
    json!({
        "labels": {
            "alertname": name,
            "severity": severity,
            "chatcluster": cluster,
            "namespace": "chat",
            "job": format!("{cluster}-admin"),
            "pod": pod,
        },
        "annotations": { "summary": format!("{name} on {pod}") },
    })
}

fn alert_names(notification: &Value) -> Vec<String> {
    notification["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_alertmanager_routes_groups_and_inhibits() {
    let webhook = WebhookReceiver::start().await.unwrap();
    let config =
        build_alertmanager_config(&alerting(true), &ClusterContext::new("demo", "chat")).unwrap();
    let yaml = alertmanager_yaml(
        &config,
        Receivers::Webhooks {
            base: webhook.url("").trim_end_matches('/'),
        },
        &webhook.url("unrouted"),
    );
    let (ok, out) = amtool_check(&yaml);
    assert!(ok, "amtool check-config failed:\n{out}\n{yaml}");
    let am = AlertmanagerServer::start(&yaml).await.unwrap();

    // 0. An info alert goes to the info receiver (a quiet Slack channel in production).
    am.post_alerts(&json!([alert("ChatNodeHighCpu", "info", "demo", "demo-1")]))
        .await
        .unwrap();
    webhook
        .wait_for("info notification", WAIT, |r| {
            r.iter()
                .any(|(path, n)| path == "info" && alert_names(n) == ["ChatNodeHighCpu"])
        })
        .await
        .unwrap();

    // 1. A warning goes to the warning receiver (Slack in production).
    am.post_alerts(&json!([alert(
        "ChatNodeNearConnectionLimit",
        "warning",
        "demo",
        "demo-0"
    )]))
    .await
    .unwrap();
    webhook
        .wait_for("warning notification", WAIT, |r| {
            r.iter().any(|(path, n)| {
                path == "warning" && alert_names(n) == ["ChatNodeNearConnectionLimit"]
            })
        })
        .await
        .unwrap();

    // 1b. A new info alert of the cluster while the warning fires is held back by it.
    am.post_alerts(&json!([alert(
        "ChatConnectionsRejected",
        "info",
        "demo",
        "demo-0"
    )]))
    .await
    .unwrap();
    wait_inhibited(&am, "ChatConnectionsRejected").await;

    // 2. Two criticals of one alert name arrive grouped, in one notification, at the
    //    critical receiver (PagerDuty/OpsGenie in production).
    am.post_alerts(&json!([
        alert("ChatRedisDown", "critical", "demo", "demo-0"),
        alert("ChatRedisDown", "critical", "demo", "demo-1"),
    ]))
    .await
    .unwrap();
    let received = webhook
        .wait_for("grouped critical notification", WAIT, |r| {
            r.iter()
                .any(|(path, n)| path == "critical" && n["alerts"].as_array().unwrap().len() == 2)
        })
        .await
        .unwrap();
    let (_, grouped) = received.iter().find(|(p, _)| p == "critical").unwrap();
    assert_eq!(alert_names(grouped), ["ChatRedisDown", "ChatRedisDown"]);
    assert_eq!(grouped["groupLabels"]["alertname"], "ChatRedisDown");
    assert_eq!(grouped["commonLabels"]["chatcluster"], "demo");
    assert!(
        received
            .iter()
            .all(|(p, n)| p != "warning" || !alert_names(n).contains(&"ChatRedisDown".to_owned())),
        "a critical reached the warning receiver"
    );

    // 3. A new warning of the same cluster while the critical fires is inhibited ...
    am.post_alerts(&json!([alert(
        "ChatHighErrorRate",
        "warning",
        "demo",
        "demo-0"
    )]))
    .await
    .unwrap();
    // ... while the same warning of another ChatCluster is not ours: it takes the root route.
    am.post_alerts(&json!([alert(
        "ChatHighErrorRate",
        "warning",
        "other",
        "other-0"
    )]))
    .await
    .unwrap();
    webhook
        .wait_for("other cluster's alert on the root route", WAIT, |r| {
            r.iter()
                .any(|(path, n)| path == "unrouted" && n["commonLabels"]["chatcluster"] == "other")
        })
        .await
        .unwrap();
    wait_inhibited(&am, "ChatHighErrorRate").await;
    for (receiver, name) in [
        ("warning", "ChatHighErrorRate"),
        ("info", "ChatConnectionsRejected"),
    ] {
        assert!(
            !webhook
                .received()
                .iter()
                .any(|(p, n)| p == receiver && alert_names(n).contains(&name.to_owned())),
            "the inhibited {name} was notified"
        );
    }

    // 4. Once the critical resolves, the critical receiver hears so, and the held-back
    //    warning is released to the warning receiver.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut resolved = vec![
        alert("ChatRedisDown", "critical", "demo", "demo-0"),
        alert("ChatRedisDown", "critical", "demo", "demo-1"),
    ];
    for a in &mut resolved {
        a["startsAt"] = json!(rfc3339(now - 3600));
        a["endsAt"] = json!(rfc3339(now - 1));
    }
    am.post_alerts(&json!(resolved)).await.unwrap();
    webhook
        .wait_for("resolved critical and released warning", WAIT, |r| {
            r.iter()
                .any(|(p, n)| p == "critical" && n["status"] == "resolved")
                && r.iter().any(|(p, n)| {
                    p == "warning" && alert_names(n).contains(&"ChatHighErrorRate".to_owned())
                })
        })
        .await
        .unwrap();
}

/// Waits until the demo cluster's alert `name` is held in Alertmanager as inhibited.
async fn wait_inhibited(am: &AlertmanagerServer, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let alerts = am.alerts().await.unwrap();
        let alert = alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"]["chatcluster"] == "demo");
        if let Some(a) = alert
            && a["status"]["state"] == "suppressed"
            && !a["status"]["inhibitedBy"].as_array().unwrap().is_empty()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not inhibited: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unix seconds as an RFC 3339 UTC timestamp (days-to-civil after H. Hinnant).
fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn rfc3339_formats_known_instants() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_764_288_000), "2025-11-28T00:00:00Z");
}
