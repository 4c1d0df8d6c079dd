//! The generated alert rules, checked by the real `promtool`: `check rules` on the rule file
//! the builder writes, and `test rules` unit tests (fixtures/observability/alerts_test.yml)
//! that make every alert fire and not fire on synthetic series.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use chat_operator::observability::ClusterContext;
use chat_operator::observability::rules::{ALERTS, build_rule_group, rule_file_yaml};
use chat_operator::observability::spec::{
    AlertTuning, AlertsSpec, ObservabilitySpec, PrometheusRuleSpec, Severity,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/observability/alerts_test.yml"
);

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(test_harness::tools::promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn write_rules(spec: &ObservabilitySpec, dir: &Path) {
    let group = build_rule_group(spec, &ClusterContext::new("demo", "chat"))
        .expect("build rules")
        .expect("rules enabled");
    std::fs::write(dir.join("rules.yml"), rule_file_yaml(&[group]).unwrap()).unwrap();
}

#[test]
fn generated_rules_pass_promtool_check() {
    let dir = tempfile::tempdir().unwrap();
    let tuned = ObservabilitySpec {
        prometheus_rule: Some(PrometheusRuleSpec {
            rate_window: Some("2m".into()),
            interval: Some("15s".into()),
            alerts: Some(AlertsSpec {
                error_rate: Some(AlertTuning {
                    threshold: Some(0.2),
                    for_: Some("1m30s".into()),
                    severity: Some(Severity::Critical),
                    enabled: None,
                }),
                ..AlertsSpec::default()
            }),
            ..PrometheusRuleSpec::default()
        }),
        ..ObservabilitySpec::default()
    };
    for spec in [ObservabilitySpec::default(), tuned] {
        write_rules(&spec, dir.path());
        let (ok, out) = promtool(&["check", "rules", "rules.yml"], dir.path());
        assert!(ok, "promtool check rules failed:\n{out}");
        assert!(
            out.contains(&format!("{} rules found", ALERTS.len())),
            "{out}"
        );
    }
}

#[test]
fn promtool_check_catches_a_broken_rule() {
    // The check above can fail: a rule file with a broken expression is refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(x[5m])\n",
    )
    .unwrap();
    let (ok, _) = promtool(&["check", "rules", "rules.yml"], dir.path());
    assert!(!ok, "promtool accepted a broken rule");
}

#[test]
fn every_alert_fires_and_clears_in_promtool_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ObservabilitySpec {
        prometheus_rule: Some(PrometheusRuleSpec {
            runbook_base_url: Some("https://runbooks.example/chat".into()),
            ..PrometheusRuleSpec::default()
        }),
        ..ObservabilitySpec::default()
    };
    write_rules(&spec, dir.path());
    std::fs::copy(FIXTURE, dir.path().join("alerts_test.yml")).unwrap();
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yml"], dir.path());
    assert!(ok, "promtool test rules failed:\n{out}");

    // The fixture covers every alert with a firing case and a quiet case.
    let fixture: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in fixture["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            if case["exp_alerts"].as_sequence().unwrap().is_empty() {
                quiet.insert(name);
            } else {
                fired.insert(name);
            }
        }
    }
    let all: BTreeSet<String> = ALERTS.iter().map(|a| a.name.to_owned()).collect();
    let missing_fire: Vec<_> = all.difference(&fired).collect();
    let missing_quiet: Vec<_> = all.difference(&quiet).collect();
    assert!(
        missing_fire.is_empty(),
        "alerts never fired in the fixture: {missing_fire:?}"
    );
    assert!(
        missing_quiet.is_empty(),
        "alerts never checked quiet: {missing_quiet:?}"
    );
}

#[test]
fn every_alert_has_a_runbook() {
    let runbooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/runbooks");
    for alert in ALERTS {
        let path = runbooks.join(format!("{}.md", alert.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("runbook {} missing: {e}", path.display()));
        for section in ["## Meaning", "## What to check", "## How to fix"] {
            assert!(text.contains(section), "{} lacks {section}", path.display());
        }
    }
}
