//! Each tool the harness hands out is present and really runs.

use std::process::Command;

use test_harness::tools;

fn run(program: std::path::PathBuf, args: &[&str]) -> String {
    let out = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed: {text}",
        program.display()
    );
    text
}

#[test]
fn kubectl_is_the_control_plane_release() {
    let text = run(tools::kubectl(), &["version", "--client", "-o", "json"]);
    assert!(text.contains("\"gitVersion\": \"v1.36.3\""), "{text}");
}

#[test]
fn helm_runs() {
    let text = run(tools::helm(), &["version", "--short"]);
    assert!(text.starts_with(&tools::HELM_VERSION[..3]), "{text}");
    assert!(text.contains(tools::HELM_VERSION), "{text}");
    let text = run(tools::helm4(), &["version", "--short"]);
    assert!(text.starts_with("v4."), "{text}");
    assert!(text.contains(tools::HELM4_VERSION), "{text}");
}

#[test]
fn otelcol_validates_configs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        r#"receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:0}
      http: {endpoint: 127.0.0.1:0}
processors:
  memory_limiter: {check_interval: 1s, limit_mib: 100}
  batch: {}
exporters:
  debug: {}
  otlp_grpc: {endpoint: 127.0.0.1:4317}
  otlp_http: {endpoint: http://127.0.0.1:4318}
  prometheus: {endpoint: 127.0.0.1:8889}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [debug, otlp_grpc, otlp_http]}
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [prometheus]}
"#,
    )
    .unwrap();
    run(
        tools::otelcol(),
        &["validate", &format!("--config={}", good.display())],
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "receivers:\n  nosuchreceiver: {}\n").unwrap();
    let out = Command::new(tools::otelcol())
        .args(["validate", &format!("--config={}", bad.display())])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown receiver was accepted");
}

#[test]
fn promtool_and_prometheus_run() {
    assert!(run(tools::promtool(), &["--version"]).contains("promtool"));
    assert!(run(tools::prometheus(), &["--version"]).contains("prometheus"));
}

#[test]
fn amtool_and_alertmanager_run() {
    assert!(run(tools::amtool(), &["--version"]).contains("amtool"));
    assert!(run(tools::alertmanager(), &["--version"]).contains("alertmanager"));
}

/// Child half of `a_missing_tool_names_the_setup_script` (runs with an empty environment).
#[test]
#[ignore = "helper run by a_missing_tool_names_the_setup_script"]
fn child_looks_up_a_missing_tool() {
    let err = tools::find(tools::Tool::Helm).unwrap_err().to_string();
    assert!(err.contains("hack/setup.sh"), "{err}");
    assert!(err.contains("/nonexistent/helm"), "{err}");
    let err = tools::find(tools::Tool::Kubectl).unwrap_err().to_string();
    assert!(err.contains("hack/setup.sh"), "{err}");
}

#[test]
fn a_missing_tool_names_the_setup_script() {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_looks_up_a_missing_tool", "--ignored"])
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("CHATCLUSTER_CACHE", "/nonexistent/cache")
        .env("CHATCLUSTER_HELM", "/nonexistent/helm")
        .status()
        .unwrap();
    assert!(status.success());
}
