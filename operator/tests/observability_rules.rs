//! The generated alert rules, checked by the real `promtool`: `check rules` on the rule file
//! the builder writes, and `test rules` unit tests (fixtures/observability/alerts_test.yml)
//! that make every alert fire and not fire on synthetic series.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use chat_operator::api::observability::{
    AlertTuning, AlertsSpec, ObservabilitySpec, PrometheusRuleSpec, Severity,
};
use chat_operator::children::observability::ClusterContext;
use chat_operator::children::observability::rules::{ALERTS, build_rule_group, rule_file_yaml};

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

/// Every query of the shared dashboard (its variables given sample values, Grafana's
/// `$__rate_interval` a window) and of a per-cluster dashboard parses in the real promtool:
/// each becomes a recording rule of a rule file that `promtool check rules` must accept.
#[test]
fn every_dashboard_query_passes_promtool() {
    use chat_operator::children::observability::dashboard::{
        dashboard_queries, panel_queries, shared_dashboard,
    };
    let shared: Vec<String> = panel_queries(&shared_dashboard())
        .iter()
        .map(|q| {
            q.replace("$namespace", "chat")
                .replace("$cluster", "demo")
                .replace("$__rate_interval", "1m")
        })
        .collect();
    let per_cluster: Vec<String> = dashboard_queries(&ClusterContext::new("demo", "chat"))
        .iter()
        .map(|q| q.replace("$__rate_interval", "1m"))
        .collect();
    assert_eq!(shared, per_cluster, "one dashboard, two uses");
    let rules: Vec<serde_json::Value> = shared
        .iter()
        .enumerate()
        .map(
            |(i, expr)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expr}),
        )
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(dir.path().join("dashboard.yml"), file.to_string()).unwrap();
    let (ok, out) = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(
        ok,
        "promtool check rules failed on a dashboard query:\n{out}"
    );
    assert!(
        out.contains(&format!("{} rules found", shared.len())),
        "{out}"
    );
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

/// Every alert's `runbook_url`, as the operator builds it by default, names a runbook in this
/// repository: the default base is the repository's `docs/runbooks` on its `main` branch, so
/// the URL minus `<repository>/blob/main/` is a path of this checkout, and that file is the
/// alert's runbook with what an on-call needs (severity, meaning, what to check, how to fix).
/// Every runbook file belongs to an alert (none left behind by a renamed alert).
#[test]
fn every_alerts_runbook_url_resolves_to_a_runbook_file() {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let web_root = format!("{}/blob/main/", env!("CARGO_PKG_REPOSITORY"));
    let group = build_rule_group(
        &ObservabilitySpec::default(),
        &ClusterContext::new("demo", "chat"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(group.rules.len(), ALERTS.len());
    let mut linked = BTreeSet::new();
    for rule in &group.rules {
        let url = &rule.annotations["runbook_url"];
        let relative = url
            .strip_prefix(&web_root)
            .unwrap_or_else(|| panic!("{}: {url} is not under {web_root}", rule.alert));
        assert_eq!(relative, format!("docs/runbooks/{}.md", rule.alert));
        let path = repo_root.join(relative);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{url} -> {}: {e}", path.display()));
        assert_eq!(
            text.lines().next(),
            Some(format!("# {}", rule.alert).as_str()),
            "{} starts with its alert's name",
            path.display()
        );
        let severity = &rule.labels["severity"];
        assert!(
            text.contains(&format!("Severity: **{severity}**")),
            "{} does not say the alert's default severity {severity}",
            path.display()
        );
        for section in ["Meaning", "What to check", "How to fix"] {
            let heading = format!("\n## {section}\n");
            let at = text
                .find(&heading)
                .unwrap_or_else(|| panic!("{} lacks ## {section}", path.display()));
            let body = text[at + heading.len()..]
                .split("\n## ")
                .next()
                .unwrap_or_default();
            assert!(
                body.trim().len() >= 40,
                "{}: ## {section} is (nearly) empty",
                path.display()
            );
        }
        linked.insert(format!("{}.md", rule.alert));
    }
    let files: BTreeSet<String> = std::fs::read_dir(repo_root.join("docs/runbooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files, linked,
        "runbook files without an alert, or alerts without one"
    );
}

/// The operator-wide runbook base URL (`--runbook-base-url`) is used unless the ChatCluster sets
/// its own.
#[test]
fn runbook_base_url_is_the_operators_unless_the_cluster_sets_one() {
    let mut ctx = ClusterContext::new("demo", "chat");
    ctx.monitoring.runbook_base_url = "https://wiki.example.com/chat/runbooks".into();
    let group = build_rule_group(&ObservabilitySpec::default(), &ctx)
        .unwrap()
        .unwrap();
    for rule in &group.rules {
        assert_eq!(
            rule.annotations["runbook_url"],
            format!("https://wiki.example.com/chat/runbooks/{}.md", rule.alert)
        );
    }
    let own = ObservabilitySpec {
        prometheus_rule: Some(PrometheusRuleSpec {
            runbook_base_url: Some("https://team.example.com/rb/".into()),
            ..PrometheusRuleSpec::default()
        }),
        ..ObservabilitySpec::default()
    };
    let group = build_rule_group(&own, &ctx).unwrap().unwrap();
    assert_eq!(
        group.rules[0].annotations["runbook_url"],
        format!("https://team.example.com/rb/{}.md", group.rules[0].alert)
    );
}
