//! The generated OpenTelemetry Collector configuration passes `validate` of a real Collector
//! (built from Go modules by hack/setup.d with the components the configuration uses), and a
//! running Collector sends the headers of `headersSecretRef` with the values of the variables
//! the Deployment sets from the Secret.

use std::collections::BTreeMap;
use std::process::Command;

use chat_operator::api::observability::{
    CollectorMetricsSpec, CollectorSpec, DEFAULT_COLLECTOR_IMAGE, HeadersSecretRef,
    ObservabilitySpec, OtlpDestination, OtlpProtocol,
};
use chat_operator::children::observability::ClusterContext;
use chat_operator::children::observability::collector::{
    CONFIG_KEY, build_collector_config_map, build_collector_deployment, collector_config,
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
            "credentials from a Secret, by environment variable",
            CollectorSpec {
                traces: Some(OtlpDestination {
                    headers_secret_ref: Some(HeadersSecretRef {
                        name: "tempo-auth".into(),
                        headers: vec!["Authorization".into(), "X-Api-Key".into()],
                    }),
                    ..destination("https://tempo.example:443", None)
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Collector, configured as the operator configures it, with the environment the
/// Deployment gives it: the exporter's request carries the Secret's values, and the ConfigMap
/// carries none of them.
#[test]
fn a_running_collector_sends_the_header_values_from_the_secret_env() {
    use std::io::{BufRead, BufReader, Read, Write};

    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let collector = CollectorSpec {
        traces: Some(OtlpDestination {
            endpoint: format!("http://127.0.0.1:{sink_port}"),
            protocol: Some(OtlpProtocol::Http),
            headers: Some(BTreeMap::from([
                ("X-Scope-OrgID".into(), "chat".into()),
                // An inline value is a literal: it cannot read the collector's variables.
                ("X-Literal".into(), "${env:OTLP_TRACES_HEADER_0}$$".into()),
            ])),
            headers_secret_ref: Some(HeadersSecretRef {
                name: "tempo-auth".into(),
                headers: vec!["Authorization".into()],
            }),
            ..OtlpDestination::default()
        }),
        metrics: Some(CollectorMetricsSpec {
            enabled: Some(false),
            port: None,
        }),
        ..CollectorSpec::default()
    };
    const TOKEN: &str = "Bearer s3cr3t-token-from-the-secret";
    let stored = config_map_yaml(collector.clone());
    assert!(!stored.contains("s3cr3t"), "{stored}");
    assert!(
        stored.contains("Authorization: ${env:OTLP_TRACES_HEADER_0}"),
        "{stored}"
    );

    // The variable the Deployment sets from the Secret (key `Authorization` of `tempo-auth`).
    let spec = ObservabilitySpec {
        collector: Some(collector.clone()),
        ..ObservabilitySpec::default()
    };
    let deployment = build_collector_deployment(&spec, &ClusterContext::new("demo", "chat"))
        .unwrap()
        .unwrap();
    let env = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert_eq!(env.len(), 1);
    let from = env[0]
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("tempo-auth", "Authorization")
    );

    // The same configuration on free loopback ports.
    let mut config = collector_config(
        &collector,
        &ClusterContext::new("demo", "chat"),
        "127.0.0.1",
    )
    .unwrap();
    let (grpc, http, telemetry) = (free_port(), free_port(), free_port());
    let protocols = &mut config["receivers"]["otlp"]["protocols"];
    protocols["grpc"]["endpoint"] = format!("127.0.0.1:{grpc}").into();
    protocols["http"]["endpoint"] = format!("127.0.0.1:{http}").into();
    config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]["port"] =
        telemetry.into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let mut otelcol = Command::new(test_harness::tools::otelcol())
        .arg(format!("--config={}", path.display()))
        .env(&env[0].name, TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start otelcol");

    // Send one span until the receiver is up.
    let span = r#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"probe","kind":1,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let sent = std::net::TcpStream::connect(("127.0.0.1", http)).and_then(|mut s| {
            write!(
                s,
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{span}",
                span.len()
            )?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply.starts_with("HTTP/1.1 200"))
        });
        if matches!(sent, Ok(true)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector's receiver never accepted the span: {sent:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // The exporter's request, as the backend sees it.
    sink.set_nonblocking(false).unwrap();
    let (conn, _) = sink.accept().unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut headers = BTreeMap::new();
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
    }
    let _ = (&conn).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    otelcol.kill().unwrap();
    otelcol.wait().unwrap();

    assert!(
        request_line.starts_with("POST /v1/traces"),
        "{request_line}"
    );
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some(TOKEN)
    );
    assert_eq!(
        headers.get("x-scope-orgid").map(String::as_str),
        Some("chat")
    );
    assert_eq!(
        headers.get("x-literal").map(String::as_str),
        Some("${env:OTLP_TRACES_HEADER_0}$$")
    );
}
