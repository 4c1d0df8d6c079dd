//! The AlertmanagerConfig: on-call routing of this cluster's alerts.
//!
//! Alerts of this ChatCluster (label `chatcluster=<name>`) are grouped, then routed by
//! severity: `critical` pages (PagerDuty and/or OpsGenie), `warning` goes to Slack, `info` goes to
//! its own receiver (Slack when `alerting.info` is set; else nobody: it only shows in Alertmanager
//! and Grafana). While a critical alert of the cluster fires, its warnings and infos are
//! inhibited, and a warning holds back the infos: they are symptoms of the same incident and
//! would only add noise to the page. Credentials are only ever Secret
//! references; prometheus-operator reads them.

use super::monitoring::{
    AlertmanagerConfig, AlertmanagerConfigSpec, InhibitRule, Matcher, OpsGenieConfig,
    PagerDutyConfig, Receiver, Route, SecretKeySelector, SlackConfig,
};
use super::{ClusterContext, Error, check_duration};
use crate::api::observability::{AlertingSpec, SecretKeyRef, Severity, WarningReceiver};

/// Default grouping labels.
pub const DEFAULT_GROUP_BY: &[&str] = &["alertname", "namespace", "chatcluster"];
pub const DEFAULT_GROUP_WAIT: &str = "30s";
pub const DEFAULT_GROUP_INTERVAL: &str = "5m";
pub const DEFAULT_REPEAT_INTERVAL: &str = "4h";
/// Pages repeat sooner than chat notifications unless the user set `repeatInterval`.
pub const DEFAULT_CRITICAL_REPEAT_INTERVAL: &str = "1h";
/// Labels equal between a critical alert and the warnings it inhibits.
pub const INHIBIT_EQUAL: &[&str] = &["namespace", "chatcluster"];
/// Receiver names (prometheus-operator prefixes them with namespace and object name).
pub const CRITICAL_RECEIVER: &str = "critical";
pub const WARNING_RECEIVER: &str = "warning";
pub const INFO_RECEIVER: &str = "info";

const NOTIFICATION_TITLE: &str =
    "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.chatcluster }})";
const NOTIFICATION_TEXT: &str = "{{ range .Alerts }}{{ .Annotations.summary }}: {{ .Annotations.description }}\nRunbook: {{ .Annotations.runbook_url }}\n{{ end }}";

fn secret(reference: &SecretKeyRef) -> SecretKeySelector {
    SecretKeySelector {
        name: reference.name.clone(),
        key: reference.key.clone(),
    }
}

fn severity_matcher(severity: Severity) -> Vec<Matcher> {
    vec![Matcher::equal("severity", severity.as_str())]
}

/// The AlertmanagerConfig `<name>`.
pub fn build_alertmanager_config(
    alerting: &AlertingSpec,
    ctx: &ClusterContext,
) -> Result<AlertmanagerConfig, Error> {
    let group_wait = check_duration(
        "alerting.groupWait",
        alerting.group_wait.as_deref().unwrap_or(DEFAULT_GROUP_WAIT),
    )?;
    let group_interval = check_duration(
        "alerting.groupInterval",
        alerting
            .group_interval
            .as_deref()
            .unwrap_or(DEFAULT_GROUP_INTERVAL),
    )?;
    let repeat_interval = alerting
        .repeat_interval
        .as_deref()
        .map(|r| check_duration("alerting.repeatInterval", r))
        .transpose()?;
    let group_by = alerting
        .group_by
        .clone()
        .unwrap_or_else(|| DEFAULT_GROUP_BY.iter().map(|s| (*s).to_owned()).collect());

    let mut critical = Receiver {
        name: CRITICAL_RECEIVER.to_owned(),
        ..Receiver::default()
    };
    if let Some(receiver) = &alerting.critical {
        if let Some(pd) = &receiver.pager_duty {
            critical.pagerduty_configs.push(PagerDutyConfig {
                routing_key: secret(&pd.routing_key_secret_ref),
                send_resolved: true,
                url: pd.url.clone(),
                description: Some(NOTIFICATION_TITLE.to_owned()),
                severity: Some("critical".to_owned()),
            });
        }
        if let Some(og) = &receiver.ops_genie {
            critical.opsgenie_configs.push(OpsGenieConfig {
                api_key: secret(&og.api_key_secret_ref),
                send_resolved: true,
                api_url: og.api_url.clone(),
                message: Some(NOTIFICATION_TITLE.to_owned()),
                priority: Some("P1".to_owned()),
            });
        }
    }
    let slack_receiver = |name: &str, receiver: Option<&WarningReceiver>| {
        let mut out = Receiver {
            name: name.to_owned(),
            ..Receiver::default()
        };
        if let Some(slack) = receiver.and_then(|r| r.slack.as_ref()) {
            out.slack_configs.push(SlackConfig {
                api_url: secret(&slack.api_url_secret_ref),
                send_resolved: true,
                channel: slack.channel.clone(),
                title: Some(NOTIFICATION_TITLE.to_owned()),
                text: Some(NOTIFICATION_TEXT.to_owned()),
            });
        }
        out
    };
    let warning = slack_receiver(WARNING_RECEIVER, alerting.warning.as_ref());
    let info = slack_receiver(INFO_RECEIVER, alerting.info.as_ref());

    let route = Route {
        // Anything of this cluster that is neither critical nor warning (a user-defined
        // severity) still reaches the team's channel.
        receiver: WARNING_RECEIVER.to_owned(),
        matchers: vec![Matcher::equal("chatcluster", &ctx.name)],
        group_by,
        group_wait: Some(group_wait),
        group_interval: Some(group_interval),
        repeat_interval: Some(
            repeat_interval
                .clone()
                .unwrap_or_else(|| DEFAULT_REPEAT_INTERVAL.to_owned()),
        ),
        r#continue: false,
        routes: vec![
            Route {
                receiver: CRITICAL_RECEIVER.to_owned(),
                matchers: severity_matcher(Severity::Critical),
                repeat_interval: Some(
                    repeat_interval.unwrap_or_else(|| DEFAULT_CRITICAL_REPEAT_INTERVAL.to_owned()),
                ),
                ..Route::default()
            },
            Route {
                receiver: WARNING_RECEIVER.to_owned(),
                matchers: severity_matcher(Severity::Warning),
                ..Route::default()
            },
            Route {
                receiver: INFO_RECEIVER.to_owned(),
                matchers: severity_matcher(Severity::Info),
                ..Route::default()
            },
        ],
    };
    // A critical holds back warnings and infos; a warning holds back infos.
    let inhibit = |source: Severity, target: Severity| InhibitRule {
        source_match: severity_matcher(source),
        target_match: severity_matcher(target),
        equal: INHIBIT_EQUAL.iter().map(|s| (*s).to_owned()).collect(),
    };
    let inhibit_rules = vec![
        inhibit(Severity::Critical, Severity::Warning),
        inhibit(Severity::Critical, Severity::Info),
        inhibit(Severity::Warning, Severity::Info),
    ];

    let mut config = AlertmanagerConfig::new(
        &ctx.name,
        AlertmanagerConfigSpec {
            route,
            receivers: vec![critical, warning, info],
            inhibit_rules,
        },
    );
    config.metadata = ctx.metadata(
        ctx.name.clone(),
        "chat-node",
        "alerting",
        Some(&ctx.monitoring_labels(alerting.labels.as_ref())),
    );
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::observability::{
        CriticalReceiver, OpsGenieReceiver, PagerDutyReceiver, SlackReceiver, WarningReceiver,
    };

    fn full() -> AlertingSpec {
        AlertingSpec {
            critical: Some(CriticalReceiver {
                pager_duty: Some(PagerDutyReceiver {
                    routing_key_secret_ref: SecretKeyRef {
                        name: "pagerduty".into(),
                        key: "routingKey".into(),
                    },
                    url: None,
                }),
                ops_genie: Some(OpsGenieReceiver {
                    api_key_secret_ref: SecretKeyRef {
                        name: "opsgenie".into(),
                        key: "apiKey".into(),
                    },
                    api_url: None,
                }),
            }),
            warning: Some(WarningReceiver {
                slack: Some(SlackReceiver {
                    api_url_secret_ref: SecretKeyRef {
                        name: "slack".into(),
                        key: "url".into(),
                    },
                    channel: Some("#chat-alerts".into()),
                }),
            }),
            ..AlertingSpec::default()
        }
    }

    #[test]
    fn routes_by_severity_with_secret_references() {
        let config =
            build_alertmanager_config(&full(), &ClusterContext::new("demo", "chat")).unwrap();
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1alpha1");
        let route = &value["spec"]["route"];
        assert_eq!(route["matchers"][0]["name"], "chatcluster");
        assert_eq!(route["routes"][0]["receiver"], "critical");
        assert_eq!(route["routes"][0]["matchers"][0]["value"], "critical");
        assert_eq!(route["routes"][0]["repeatInterval"], "1h");
        assert_eq!(route["routes"][1]["receiver"], "warning");
        assert_eq!(route["groupWait"], "30s");
        let receivers = &value["spec"]["receivers"];
        assert_eq!(
            receivers[0]["pagerdutyConfigs"][0]["routingKey"]["name"],
            "pagerduty"
        );
        assert_eq!(
            receivers[0]["opsgenieConfigs"][0]["apiKey"]["key"],
            "apiKey"
        );
        assert_eq!(receivers[1]["slackConfigs"][0]["apiURL"]["name"], "slack");
        assert_eq!(receivers[1]["slackConfigs"][0]["channel"], "#chat-alerts");
        assert_eq!(route["routes"][2]["receiver"], "info");
        assert_eq!(route["routes"][2]["matchers"][0]["value"], "info");
        assert_eq!(receivers[2]["name"], "info");
        assert!(
            receivers[2].get("slackConfigs").is_none(),
            "info alerts are notified only when alerting.info is set"
        );
        let pairs: Vec<(String, String)> = value["spec"]["inhibitRules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| {
                (
                    rule["sourceMatch"][0]["value"].as_str().unwrap().to_owned(),
                    rule["targetMatch"][0]["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            pairs,
            [
                pair("critical", "warning"),
                pair("critical", "info"),
                pair("warning", "info")
            ]
        );
    }

    #[test]
    fn bad_durations_are_refused() {
        let alerting = AlertingSpec {
            group_wait: Some("soon".into()),
            ..AlertingSpec::default()
        };
        let err = build_alertmanager_config(&alerting, &ClusterContext::new("demo", "chat"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerting.groupWait"), "{err}");
    }
}
