//! The Argo CD health check for ChatCluster, run by Lua 5.1 (gopher-lua's semantics) on status
//! objects in the shapes the operator writes. The same check runs on real objects taken from the
//! control plane in `lifecycle.rs`.

use chart_tests::lua::{Health, health_check_dir, health_check_path, run_health_check};
use serde_json::{Value, json};

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3
    })
}

fn chat(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": "demo", "namespace": "default", "generation": generation},
        "spec": {"replicas": 2},
        "status": status,
    })
}

fn health(object: &Value) -> Health {
    run_health_check(&health_check_path(), object).expect("the health check runs")
}

fn ready_status(observed: i64) -> Value {
    json!({
        "observedGeneration": observed,
        "phase": "Ready",
        "readyReplicas": 2,
        "conditions": [
            condition("Ready", "True", "AllReplicasReady", "2/2 chat-node pods ready"),
            condition("Progressing", "False", "RolloutComplete", "rollout complete"),
            condition("Degraded", "False", "Reconciled", "all children applied"),
        ],
    })
}

#[test]
fn ready_and_current_is_healthy() {
    let h = health(&chat(3, ready_status(3)));
    assert_eq!(h.status, "Healthy", "{h:?}");
    assert_eq!(h.message, "2/2 chat-node pods ready");
}

#[test]
fn ready_but_for_an_older_generation_is_progressing() {
    let h = health(&chat(4, ready_status(3)));
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert!(h.message.contains("generation 4"), "{h:?}");
}

#[test]
fn ready_condition_of_an_older_generation_is_progressing() {
    // status.observedGeneration is current, but Ready itself was computed for generation 3.
    let h = health(&chat(4, ready_status(4)));
    assert_eq!(h.status, "Progressing", "{h:?}");
}

#[test]
fn no_status_yet_is_progressing() {
    let mut object = chat(1, Value::Null);
    object.as_object_mut().unwrap().remove("status");
    let h = health(&object);
    assert_eq!(h.status, "Progressing", "{h:?}");
    let h = health(&chat(1, json!({})));
    assert_eq!(h.status, "Progressing", "{h:?}");
}

#[test]
fn degraded_wins_even_when_ready() {
    let status = json!({
        "observedGeneration": 3,
        "conditions": [
            condition("Ready", "True", "AllReplicasReady", "2/2 ready"),
            condition("Degraded", "True", "ReconcileFailed", "failed to apply Deployment: forbidden"),
        ],
    });
    let h = health(&chat(3, status));
    assert_eq!(h.status, "Degraded", "{h:?}");
    assert_eq!(h.message, "failed to apply Deployment: forbidden");
}

#[test]
fn rolling_out_is_progressing_with_the_operator_message() {
    let status = json!({
        "observedGeneration": 3,
        "conditions": [
            condition("Ready", "False", "ReplicasNotReady", "1/2 chat-node pods ready"),
            condition("Progressing", "True", "RolloutInProgress", "rolling out 1/2"),
            condition("Degraded", "False", "Reconciled", ""),
        ],
    });
    let h = health(&chat(3, status));
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert_eq!(h.message, "rolling out 1/2");
}

#[test]
fn not_ready_without_a_rollout_is_still_progressing_not_degraded() {
    // Pods starting (phase Pending): only Degraded=True makes Argo CD report Degraded.
    let status = json!({
        "observedGeneration": 3,
        "conditions": [condition("Ready", "False", "ReplicasNotReady", "0/2 chat-node pods ready")],
    });
    let h = health(&chat(3, status));
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert_eq!(h.message, "0/2 chat-node pods ready");
}

#[test]
fn paused_is_suspended() {
    let status = json!({
        "observedGeneration": 3,
        "conditions": [
            condition("Ready", "True", "AllReplicasReady", "2/2 ready"),
            condition("Paused", "True", "SpecPaused", "spec.paused is true"),
        ],
    });
    let h = health(&chat(3, status));
    assert_eq!(h.status, "Suspended", "{h:?}");
}

#[test]
fn argocd_cm_snippet_embeds_the_health_check_verbatim() {
    let script = std::fs::read_to_string(health_check_path()).unwrap();
    let snippet =
        std::fs::read_to_string(chart_tests::repo_path("docs/gitops/argocd-cm.yaml")).unwrap();
    let documents = chart_tests::manifests::parse_documents(&snippet).unwrap();
    let config_map = chart_tests::manifests::one_of_kind(&documents, "ConfigMap");
    let embedded = config_map["data"]["resource.customizations.health.realtime.dev_ChatCluster"]
        .as_str()
        .expect("argocd-cm has the ChatCluster health key");
    assert_eq!(
        embedded, script,
        "docs/gitops/argocd-cm.yaml is stale: copy \
         docs/gitops/resource_customizations/realtime.dev/ChatCluster/health.lua into it"
    );
}

/// Every case of `health_test.yaml` (Argo CD's own test format for resource customizations, so
/// the folder can go upstream as it is): the status and message the check returns on each
/// `testdata/` object are exactly the expected ones, and every testdata file is used.
#[test]
fn argo_cd_health_test_cases_pass() {
    let dir = health_check_dir();
    let tests: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
            .unwrap();
    let cases = tests["tests"].as_array().expect("tests: [...]");
    let mut used = std::collections::BTreeSet::new();
    for case in cases {
        let input = case["inputPath"].as_str().expect("inputPath");
        let object: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(input)).unwrap()).unwrap();
        let h = health(&object);
        let expected = &case["healthStatus"];
        assert_eq!(
            h.status,
            expected["status"].as_str().unwrap(),
            "{input}: {h:?}"
        );
        assert_eq!(
            h.message,
            expected["message"].as_str().unwrap(),
            "{input}: {h:?}"
        );
        used.insert(input.trim_start_matches("testdata/").to_owned());
    }
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(dir.join("testdata"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(used, files, "a testdata file without a case");
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(
            cases.iter().any(|c| c["healthStatus"]["status"] == status),
            "no case for {status}"
        );
    }
}

#[test]
fn stalled_alone_is_degraded() {
    let status = json!({
        "observedGeneration": 3,
        "conditions": [
            condition("Ready", "True", "AllReplicasReady", "2/2 ready"),
            condition("Stalled", "True", "RolloutStuck", "the rollout is stuck"),
        ],
    });
    let h = health(&chat(3, status));
    assert_eq!(h.status, "Degraded", "{h:?}");
    assert_eq!(h.message, "the rollout is stuck");
}
