//! The generated OpenTelemetry Collector configuration passes `validate` of a real Collector
//! (built from Go modules by hack/setup.d with the components the configuration uses).

use std::collections::BTreeMap;
use std::process::Command;

use chat_operator::observability::ClusterContext;
use chat_operator::observability::collector::{CONFIG_KEY, build_collector_config_map};
use chat_operator::observability::spec::{
    CollectorMetricsSpec, CollectorSpec, DEFAULT_COLLECTOR_IMAGE, ObservabilitySpec,
    OtlpDestination, OtlpProtocol,
};

fn validate(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(test_harness::tools::otelcol())
        .arg("validate")
        .arg(format!("--config={}", path.display()))
        .output()
        .expect("run otelcol");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn config_map_yaml(collector: CollectorSpec) -> String {
    let spec = ObservabilitySpec {
        collector: Some(collector),
        ..ObservabilitySpec::default()
    };
    let config_map = build_collector_config_map(&spec, &ClusterContext::new("demo", "chat"))
        .unwrap()
        .unwrap();
    config_map.data.unwrap()[CONFIG_KEY].clone()
}

#[test]
fn generated_collector_configs_pass_otelcol_validate() {
    let destination = |endpoint: &str, protocol: Option<OtlpProtocol>| OtlpDestination {
        endpoint: endpoint.into(),
        protocol,
        ..OtlpDestination::default()
    };
    let cases = [
        ("defaults (everything to debug)", CollectorSpec::default()),
        (
            "tempo over gRPC, loki over OTLP/HTTP with a tenant header",
            CollectorSpec {
                traces: Some(destination("http://tempo.monitoring:4317", None)),
                logs: Some(OtlpDestination {
                    headers: Some(BTreeMap::from([("X-Scope-OrgID".into(), "chat".into())])),
                    ..destination("http://loki.monitoring:3100/otlp", None)
                }),
                ..CollectorSpec::default()
            },
        ),
        (
            "jaeger over OTLP/HTTP, TLS off, logs over gRPC, no Prometheus exporter",
            CollectorSpec {
                traces: Some(OtlpDestination {
                    insecure: Some(true),
                    ..destination("http://jaeger-collector:4318", Some(OtlpProtocol::Http))
                }),
                logs: Some(destination("otel-gateway:4317", Some(OtlpProtocol::Grpc))),
                metrics: Some(CollectorMetricsSpec {
                    enabled: Some(false),
                    port: None,
                }),
                ..CollectorSpec::default()
            },
        ),
    ];
    for (what, collector) in cases {
        let config = config_map_yaml(collector);
        let (ok, out) = validate(&config);
        assert!(
            ok,
            "otelcol validate refused the config for {what}:\n{out}\n{config}"
        );
    }
}

#[test]
fn otelcol_validate_catches_a_broken_config() {
    // The check above can fail: a pipeline naming an exporter that is not configured.
    let config =
        config_map_yaml(CollectorSpec::default()).replace("- debug", "- otlp_grpc/nowhere");
    let (ok, out) = validate(&config);
    assert!(!ok, "otelcol accepted a broken config:\n{out}");
}

#[test]
fn default_collector_image_is_the_contrib_release_the_tests_validate_with() {
    // `otelcol --version` of the test build prints e.g. `otelcol version 0.165.0`.
    let out = Command::new(test_harness::tools::otelcol())
        .arg("--version")
        .output()
        .expect("run otelcol --version");
    let printed = String::from_utf8_lossy(&out.stdout);
    let version = printed.split_whitespace().last().expect("a version");
    assert_eq!(
        DEFAULT_COLLECTOR_IMAGE,
        format!("otel/opentelemetry-collector-contrib:{version}"),
        "the default image must be the release `otelcol validate` checks the config against"
    );
    // Contrib, because the generated config uses a contrib component (the prometheus exporter).
    let builder = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/tools/otelcol/builder-config.yaml"
    ))
    .unwrap();
    assert!(builder.contains("opentelemetry-collector-contrib/exporter/prometheusexporter"));
}
