//! The OpenTelemetry Collector of a ChatCluster: ConfigMap (the pipelines), Deployment and
//! Service, and the `OTEL_*` variables that point the chat-nodes at it.
//!
//! Pipelines: OTLP in (gRPC 4317, HTTP 4318) → `memory_limiter` (first, so an overloaded
//! collector refuses data instead of dying) → `batch` → traces to an OTLP endpoint
//! (Jaeger/Tempo), metrics to a Prometheus exporter, logs to Loki's OTLP endpoint or any OTLP
//! endpoint. chat-nodes push traces and logs over OTLP; their metrics come into the metrics
//! pipeline through the Prometheus receiver, which scrapes each pod's `/metrics` (found by DNS
//! through the headless admin Service, so the collector needs no Kubernetes API access): the
//! prometheus-client registry stays the one source of metric names, for the ServiceMonitor and
//! the collector alike. A signal without a destination goes to the `debug` exporter at `basic`
//! verbosity, so chat-nodes never see their exports refused.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use super::{ClusterContext, Error, METRICS_PATH};
use crate::api::SecretKeyRef;
use crate::api::observability::{CollectorSpec, ObservabilitySpec, OtlpDestination, OtlpProtocol};
use crate::children::ADMIN_PORT;

/// `app.kubernetes.io/name` of the collector's objects.
pub const APP_NAME: &str = "otel-collector";
/// OTLP gRPC port.
pub const OTLP_GRPC_PORT: i32 = 4317;
/// OTLP HTTP port.
pub const OTLP_HTTP_PORT: i32 = 4318;
/// The collector's own metrics.
pub const TELEMETRY_PORT: i32 = 8888;
/// Default port of the Prometheus exporter (metrics received over OTLP).
pub const DEFAULT_METRICS_PORT: i32 = 8889;
/// Service port names.
pub const OTLP_GRPC_PORT_NAME: &str = "otlp-grpc";
pub const OTLP_HTTP_PORT_NAME: &str = "otlp-http";
pub const TELEMETRY_PORT_NAME: &str = "telemetry";
pub const METRICS_PORT_NAME: &str = "metrics";
/// How often the collector scrapes the chat-nodes' `/metrics` (the ServiceMonitor's default
/// interval too).
pub const CHAT_NODE_SCRAPE_INTERVAL: &str = "30s";
/// Key of the configuration in the ConfigMap, and where it is mounted.
pub const CONFIG_KEY: &str = "config.yaml";
const CONFIG_DIR: &str = "/etc/otelcol";
/// Pod annotation whose change rolls the collector when its configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "realtime.dev/config-hash";
/// The contrib image runs as this non-root user.
const COLLECTOR_UID: i64 = 10001;

/// The collector settings when the operator runs the collector itself (enabled, no external
/// endpoint).
pub fn managed_collector(spec: &ObservabilitySpec) -> Option<&CollectorSpec> {
    spec.collector
        .as_ref()
        .filter(|c| c.enabled != Some(false) && c.endpoint.is_none())
}

/// The port of the Prometheus exporter, `None` when disabled.
pub fn metrics_exporter_port(collector: &CollectorSpec) -> Option<i32> {
    let metrics = collector.metrics.clone().unwrap_or_default();
    (metrics.enabled != Some(false)).then(|| metrics.port.unwrap_or(DEFAULT_METRICS_PORT))
}

/// Labels selecting the collector's pods.
pub fn selector_labels(ctx: &ClusterContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), ctx.name.clone()),
    ])
}

/// The OTLP (gRPC) endpoint chat-nodes export to, `None` when there is no collector.
pub fn chat_node_otlp_endpoint(spec: &ObservabilitySpec, ctx: &ClusterContext) -> Option<String> {
    let collector = spec
        .collector
        .as_ref()
        .filter(|c| c.enabled != Some(false))?;
    Some(match &collector.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => format!(
            "http://{}.{}.svc:{OTLP_GRPC_PORT}",
            ctx.collector_name(),
            ctx.namespace
        ),
    })
}

/// Where chat-nodes find the CA certificate of an external collector (`caSecretRef`).
pub const OTLP_CA_MOUNT_PATH: &str = "/etc/chat-node/otlp-ca";
/// Name of that volume.
pub const OTLP_CA_VOLUME: &str = "otlp-ca";
/// Default key of `spec.observability.collector.caSecretRef`.
pub const DEFAULT_OTLP_CA_KEY: &str = "ca.crt";

/// The Secret key with the CA chat-nodes trust for an external collector's certificate, when
/// chat-nodes export to one and it is given.
pub fn chat_node_otlp_ca(spec: &ObservabilitySpec) -> Option<&SecretKeyRef> {
    let collector = spec
        .collector
        .as_ref()
        .filter(|c| c.enabled != Some(false) && c.endpoint.is_some())?;
    collector.ca_secret_ref.as_ref()
}

/// The `OTEL_*` environment of the chat-node container (empty when there is no collector).
pub fn chat_node_env(spec: &ObservabilitySpec, ctx: &ClusterContext) -> Vec<EnvVar> {
    let Some(endpoint) = chat_node_otlp_endpoint(spec, ctx) else {
        return Vec::new();
    };
    let var = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        var("OTEL_SERVICE_NAME", ctx.name.clone()),
        var(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "service.namespace={ns},k8s.namespace.name={ns},chatcluster={name}",
                ns = ctx.namespace,
                name = ctx.name
            ),
        ),
    ];
    if let Some(secret) = chat_node_otlp_ca(spec) {
        env.push(var(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            format!(
                "{OTLP_CA_MOUNT_PATH}/{}",
                secret.key_or(DEFAULT_OTLP_CA_KEY)
            ),
        ));
    }
    env
}

/// `(header, environment variable)` for each header of `destination.headersSecretRef`: the
/// collector container gets the variable from the Secret and its configuration names it as
/// `${env:VAR}`, so the value is never in the ConfigMap. Variables are numbered, not named
/// after the header: a header name need not be a valid variable name.
fn secret_header_vars<'a>(kind: &str, destination: &'a OtlpDestination) -> Vec<(&'a str, String)> {
    destination
        .headers_secret_ref
        .iter()
        .flat_map(|r| r.headers.iter())
        .enumerate()
        .map(|(i, header)| {
            (
                header.as_str(),
                format!("OTLP_{}_HEADER_{i}", kind.to_ascii_uppercase()),
            )
        })
        .collect()
}

/// The collector container's environment: one variable per header of each destination's
/// `headersSecretRef`, read from that Secret by the kubelet.
pub fn collector_secret_env(collector: &CollectorSpec) -> Vec<EnvVar> {
    [("traces", &collector.traces), ("logs", &collector.logs)]
        .into_iter()
        .filter_map(|(kind, d)| Some((kind, d.as_ref()?)))
        .flat_map(|(kind, destination)| {
            let secret = destination.headers_secret_ref.as_ref();
            secret_header_vars(kind, destination)
                .into_iter()
                .map(move |(header, var)| EnvVar {
                    name: var,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.map(|s| s.name.clone()).unwrap_or_default(),
                            key: header.to_owned(),
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                    ..EnvVar::default()
                })
        })
        .collect()
}

/// A user's string as a literal of the collector configuration: the collector expands
/// `${env:…}` and `${file:…}` in every value, so an unescaped `$` would let an inline header
/// send the collector's environment or files (its ServiceAccount token) to any endpoint.
/// `$$` is the collector's escape for `$`.
fn literal(value: &str) -> String {
    value.replace('$', "$$")
}

fn exporter(
    kind: &str,
    destination: &OtlpDestination,
    field: &'static str,
) -> Result<(String, Value), Error> {
    if destination.endpoint.trim().is_empty() {
        return Err(Error::EmptyEndpoint { field });
    }
    let protocol = destination.protocol.unwrap_or(match kind {
        "logs" => OtlpProtocol::Http,
        _ => OtlpProtocol::Grpc,
    });
    let type_name = match protocol {
        OtlpProtocol::Grpc => "otlp_grpc",
        OtlpProtocol::Http => "otlp_http",
    };
    let mut config = Map::new();
    config.insert("endpoint".into(), json!(literal(&destination.endpoint)));
    if let Some(insecure) = destination.insecure {
        config.insert("tls".into(), json!({ "insecure": insecure }));
    }
    let mut headers: Map<String, Value> = destination
        .headers
        .iter()
        .flatten()
        .map(|(name, value)| (name.clone(), json!(literal(value))))
        .collect();
    for (name, var) in secret_header_vars(kind, destination) {
        headers.insert(name.to_owned(), json!(format!("${{env:{var}}}")));
    }
    if !headers.is_empty() {
        config.insert("headers".into(), Value::Object(headers));
    }
    Ok((format!("{type_name}/{kind}"), Value::Object(config)))
}

/// The Prometheus receiver's scrape of the chat-nodes of `ctx`: every address of the headless
/// admin Service (one per pod, ready or not), port 9091, `/metrics`. The job is the
/// ChatCluster's name, which the receiver makes the series' `service.name` — the
/// `OTEL_SERVICE_NAME` of the same nodes' traces and logs.
pub fn chat_node_scrape(ctx: &ClusterContext) -> Value {
    json!({ "config": { "scrape_configs": [{
        "job_name": ctx.name,
        "scrape_interval": CHAT_NODE_SCRAPE_INTERVAL,
        "metrics_path": METRICS_PATH,
        "dns_sd_configs": [{
            "names": [format!("{}.{}.svc", ctx.admin_service_name(), ctx.namespace)],
            "type": "A",
            "port": ADMIN_PORT,
        }],
    }] } })
}

/// The collector configuration of the ChatCluster `ctx`. `listen_host` is where receivers and
/// exporters bind: `0.0.0.0` in a pod, `127.0.0.1` in tests.
pub fn collector_config(
    collector: &CollectorSpec,
    ctx: &ClusterContext,
    listen_host: &str,
) -> Result<Value, Error> {
    let mut exporters = Map::new();
    let mut pipelines = Map::new();
    let mut debug_needed = false;
    let processors = json!(["memory_limiter", "batch"]);

    let mut signal = |kind: &str, exporter_name: Option<String>| {
        // The chat-nodes' metrics are scraped, and only when they have somewhere to go.
        let receivers = if kind == "metrics" && exporter_name.is_some() {
            json!(["otlp", "prometheus"])
        } else {
            json!(["otlp"])
        };
        let name = exporter_name.unwrap_or_else(|| {
            debug_needed = true;
            "debug".to_owned()
        });
        pipelines.insert(
            kind.to_owned(),
            json!({ "receivers": receivers, "processors": processors, "exporters": [name] }),
        );
    };

    let traces = collector
        .traces
        .as_ref()
        .map(|d| exporter("traces", d, "observability.collector.traces.endpoint"))
        .transpose()?;
    let logs = collector
        .logs
        .as_ref()
        .map(|d| exporter("logs", d, "observability.collector.logs.endpoint"))
        .transpose()?;
    let metrics = metrics_exporter_port(collector).map(|port| {
        (
            "prometheus".to_owned(),
            json!({ "endpoint": format!("{listen_host}:{port}") }),
        )
    });
    for (kind, destination) in [("traces", traces), ("metrics", metrics), ("logs", logs)] {
        let name = destination.map(|(name, config)| {
            exporters.insert(name.clone(), config);
            name
        });
        signal(kind, name);
    }
    if debug_needed {
        exporters.insert("debug".into(), json!({ "verbosity": "basic" }));
    }
    let mut receivers = json!({
        "otlp": {
            "protocols": {
                "grpc": { "endpoint": format!("{listen_host}:{OTLP_GRPC_PORT}") },
                "http": { "endpoint": format!("{listen_host}:{OTLP_HTTP_PORT}") },
            }
        }
    });
    if metrics_exporter_port(collector).is_some() {
        receivers["prometheus"] = chat_node_scrape(ctx);
    }

    Ok(json!({
        "receivers": receivers,
        "processors": {
            "memory_limiter": {
                "check_interval": "1s",
                "limit_percentage": 80,
                "spike_limit_percentage": 20,
            },
            "batch": {},
        },
        "exporters": exporters,
        "service": {
            "telemetry": {
                "metrics": {
                    "readers": [{
                        "pull": { "exporter": { "prometheus": {
                            "host": listen_host, "port": TELEMETRY_PORT,
                        } } }
                    }]
                }
            },
            "pipelines": pipelines,
        },
    }))
}

/// The collector configuration as YAML (what the ConfigMap holds).
pub fn collector_config_yaml(
    collector: &CollectorSpec,
    ctx: &ClusterContext,
    listen_host: &str,
) -> Result<String, Error> {
    serde_yaml_ng::to_string(&collector_config(collector, ctx, listen_host)?).map_err(|e| {
        Error::Render {
            what: "collector config",
            message: e.to_string(),
        }
    })
}

fn config_hash(config: &str) -> String {
    // The value only has to change when the configuration does; std's SipHash is enough.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The collector's ConfigMap `<name>-otel-collector`; `None` without a managed collector.
pub fn build_collector_config_map(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<ConfigMap>, Error> {
    let Some(collector) = managed_collector(spec) else {
        return Ok(None);
    };
    Ok(Some(ConfigMap {
        metadata: ctx.metadata(ctx.collector_name(), APP_NAME, "collector", None),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            collector_config_yaml(collector, ctx, "0.0.0.0")?,
        )])),
        ..ConfigMap::default()
    }))
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".into())),
            ("memory".to_owned(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn ports(collector: &CollectorSpec) -> Vec<(&'static str, i32)> {
    let mut ports = vec![
        (OTLP_GRPC_PORT_NAME, OTLP_GRPC_PORT),
        (OTLP_HTTP_PORT_NAME, OTLP_HTTP_PORT),
        (TELEMETRY_PORT_NAME, TELEMETRY_PORT),
    ];
    if let Some(metrics) = metrics_exporter_port(collector) {
        ports.push((METRICS_PORT_NAME, metrics));
    }
    ports
}

/// The collector's Deployment `<name>-otel-collector`; `None` without a managed collector.
pub fn build_collector_deployment(
    spec: &ObservabilitySpec,
    ctx: &ClusterContext,
) -> Result<Option<Deployment>, Error> {
    let Some(collector) = managed_collector(spec) else {
        return Ok(None);
    };
    let config = collector_config_yaml(collector, ctx, "0.0.0.0")?;
    let mut pod_labels = ctx.labels(APP_NAME, "collector");
    pod_labels.extend(selector_labels(ctx));
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(OTLP_GRPC_PORT_NAME.to_owned()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "otel-collector".to_owned(),
        image: Some(
            collector
                .image
                .clone()
                .unwrap_or_else(|| ctx.default_collector_image.clone()),
        ),
        args: Some(vec![format!("--config={CONFIG_DIR}/{CONFIG_KEY}")]),
        env: Some(collector_secret_env(collector)).filter(|env| !env.is_empty()),
        ports: Some(
            ports(collector)
                .into_iter()
                .map(|(n, p)| port(n, p))
                .collect(),
        ),
        resources: Some(
            collector
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        readiness_probe: Some(probe.clone()),
        liveness_probe: Some(probe),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_user: Some(COLLECTOR_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..crate::children::restricted_security_context()
        }),
        ..Container::default()
    };
    Ok(Some(Deployment {
        metadata: ctx.metadata(ctx.collector_name(), APP_NAME, "collector", None),
        spec: Some(DeploymentSpec {
            replicas: Some(collector.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(ctx)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        config_hash(&config),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: ctx.collector_name(),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }))
}

/// The collector's Service `<name>-otel-collector`; `None` without a managed collector.
pub fn build_collector_service(spec: &ObservabilitySpec, ctx: &ClusterContext) -> Option<Service> {
    let collector = managed_collector(spec)?;
    Some(Service {
        metadata: ctx.metadata(ctx.collector_name(), APP_NAME, "collector", None),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(ctx)),
            ports: Some(
                ports(collector)
                    .into_iter()
                    .map(|(name, port)| ServicePort {
                        name: Some(name.to_owned()),
                        port,
                        target_port: Some(IntOrString::String(name.to_owned())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::observability::{CollectorMetricsSpec, HeadersSecretRef};

    fn full() -> CollectorSpec {
        CollectorSpec {
            traces: Some(OtlpDestination {
                endpoint: "http://tempo.monitoring:4317".into(),
                ..OtlpDestination::default()
            }),
            logs: Some(OtlpDestination {
                endpoint: "http://loki.monitoring:3100/otlp".into(),
                headers: Some(BTreeMap::from([("X-Scope-OrgID".into(), "chat".into())])),
                ..OtlpDestination::default()
            }),
            ..CollectorSpec::default()
        }
    }

    fn demo() -> ClusterContext {
        ClusterContext::new("demo", "chat")
    }

    #[test]
    fn pipelines_limit_memory_first_then_batch() {
        let config = collector_config(&full(), &demo(), "0.0.0.0").unwrap();
        for kind in ["traces", "metrics", "logs"] {
            let pipeline = &config["service"]["pipelines"][kind];
            let receivers = if kind == "metrics" {
                json!(["otlp", "prometheus"])
            } else {
                json!(["otlp"])
            };
            assert_eq!(pipeline["receivers"], receivers, "{kind}");
            assert_eq!(pipeline["processors"], json!(["memory_limiter", "batch"]));
        }
        assert_eq!(
            config["service"]["pipelines"]["traces"]["exporters"],
            json!(["otlp_grpc/traces"])
        );
        assert_eq!(
            config["service"]["pipelines"]["metrics"]["exporters"],
            json!(["prometheus"])
        );
        assert_eq!(
            config["service"]["pipelines"]["logs"]["exporters"],
            json!(["otlp_http/logs"])
        );
        assert_eq!(
            config["exporters"]["otlp_http/logs"]["headers"]["X-Scope-OrgID"],
            "chat"
        );
        assert_eq!(
            config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
            "0.0.0.0:4317"
        );
        assert!(config["exporters"].get("debug").is_none());
    }

    /// Credentials given by `headersSecretRef` reach the collector as environment variables
    /// from the Secret; the ConfigMap only names the variables.
    #[test]
    fn secret_headers_are_env_from_the_secret_not_in_the_config_map() {
        let ctx = ClusterContext::new("demo", "chat");
        let mut collector = full();
        collector.traces.as_mut().unwrap().headers_secret_ref = Some(HeadersSecretRef {
            name: "tempo-auth".into(),
            headers: vec!["Authorization".into()],
        });
        let logs = collector.logs.as_mut().unwrap();
        logs.headers_secret_ref = Some(HeadersSecretRef {
            name: "loki-auth".into(),
            headers: vec!["Authorization".into(), "X-Scope-OrgID".into()],
        });
        let spec = ObservabilitySpec {
            collector: Some(collector),
            ..ObservabilitySpec::default()
        };

        let config = collector_config(spec.collector.as_ref().unwrap(), &ctx, "0.0.0.0").unwrap();
        assert_eq!(
            config["exporters"]["otlp_grpc/traces"]["headers"],
            json!({"Authorization": "${env:OTLP_TRACES_HEADER_0}"})
        );
        // The Secret's value wins over the inline one of the same name.
        assert_eq!(
            config["exporters"]["otlp_http/logs"]["headers"],
            json!({
                "Authorization": "${env:OTLP_LOGS_HEADER_0}",
                "X-Scope-OrgID": "${env:OTLP_LOGS_HEADER_1}",
            })
        );
        let yaml = &build_collector_config_map(&spec, &ctx)
            .unwrap()
            .unwrap()
            .data
            .unwrap()[CONFIG_KEY];
        assert!(yaml.contains("${env:OTLP_TRACES_HEADER_0}"), "{yaml}");
        // The inline value `chat` was replaced; nothing but variable names is left. (The
        // namespace `chat` is in the scrape's DNS name, so look for the header's value.)
        assert!(!yaml.contains("OrgID: chat"), "{yaml}");
        assert!(
            yaml.contains("X-Scope-OrgID: ${env:OTLP_LOGS_HEADER_1}"),
            "{yaml}"
        );

        let deployment = build_collector_deployment(&spec, &ctx).unwrap().unwrap();
        let container = &deployment.spec.unwrap().template.spec.unwrap().containers[0];
        let env: Vec<(String, String, String)> = container
            .env
            .iter()
            .flatten()
            .map(|e| {
                assert!(e.value.is_none(), "{e:?}");
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                assert_eq!(r.optional, Some(false));
                (e.name.clone(), r.name.clone(), r.key.clone())
            })
            .collect();
        let expected = [
            ("OTLP_TRACES_HEADER_0", "tempo-auth", "Authorization"),
            ("OTLP_LOGS_HEADER_0", "loki-auth", "Authorization"),
            ("OTLP_LOGS_HEADER_1", "loki-auth", "X-Scope-OrgID"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(env, expected);
    }

    #[test]
    fn signals_without_destination_go_to_debug() {
        let config = collector_config(&CollectorSpec::default(), &demo(), "127.0.0.1").unwrap();
        assert_eq!(
            config["service"]["pipelines"]["traces"]["exporters"],
            json!(["debug"])
        );
        assert_eq!(
            config["service"]["pipelines"]["logs"]["exporters"],
            json!(["debug"])
        );
        assert_eq!(
            config["exporters"]["prometheus"]["endpoint"],
            "127.0.0.1:8889"
        );
    }

    /// The chat-nodes' metrics: every pod behind the headless admin Service, by DNS (no API
    /// access for the collector), under the cluster's name as job (= `service.name`).
    #[test]
    fn metrics_pipeline_scrapes_the_chat_nodes_through_the_admin_service() {
        let config = collector_config(&CollectorSpec::default(), &demo(), "0.0.0.0").unwrap();
        let scrape = &config["receivers"]["prometheus"]["config"]["scrape_configs"][0];
        assert_eq!(scrape["job_name"], "demo");
        assert_eq!(scrape["metrics_path"], "/metrics");
        assert_eq!(
            scrape["dns_sd_configs"],
            json!([{ "names": ["demo-admin.chat.svc"], "type": "A", "port": 9091 }])
        );
        assert_eq!(
            config["service"]["pipelines"]["metrics"]["exporters"],
            json!(["prometheus"])
        );

        // Without the Prometheus exporter the metrics have nowhere to go: no scrape.
        let no_exporter = CollectorSpec {
            metrics: Some(CollectorMetricsSpec {
                enabled: Some(false),
                ..CollectorMetricsSpec::default()
            }),
            ..CollectorSpec::default()
        };
        let config = collector_config(&no_exporter, &demo(), "0.0.0.0").unwrap();
        assert!(config["receivers"].get("prometheus").is_none(), "{config}");
        assert_eq!(
            config["service"]["pipelines"]["metrics"]["receivers"],
            json!(["otlp"])
        );
    }

    #[test]
    fn empty_endpoint_is_refused() {
        let spec = CollectorSpec {
            traces: Some(OtlpDestination::default()),
            ..CollectorSpec::default()
        };
        let err = collector_config(&spec, &demo(), "0.0.0.0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("traces.endpoint"), "{err}");
    }

    #[test]
    fn managed_collector_objects_and_chat_node_env() {
        let ctx = ClusterContext::new("demo", "chat");
        let spec = ObservabilitySpec {
            collector: Some(full()),
            ..ObservabilitySpec::default()
        };
        let deployment = build_collector_deployment(&spec, &ctx).unwrap().unwrap();
        let pod = deployment.spec.unwrap().template;
        assert!(
            pod.metadata
                .unwrap()
                .annotations
                .unwrap()
                .contains_key(CONFIG_HASH_ANNOTATION)
        );
        let pod_spec = pod.spec.unwrap();
        assert!(
            pod_spec.containers[0].env.is_none(),
            "no header Secret, no env"
        );
        let volume = &pod_spec.volumes.unwrap()[0];
        assert_eq!(
            volume.config_map.as_ref().unwrap().name,
            "demo-otel-collector"
        );
        let config_map = build_collector_config_map(&spec, &ctx).unwrap().unwrap();
        assert!(config_map.data.unwrap()[CONFIG_KEY].contains("memory_limiter"));
        let service = build_collector_service(&spec, &ctx).unwrap();
        assert_eq!(service.spec.unwrap().ports.unwrap().len(), 4);

        let env = chat_node_env(&spec, &ctx);
        assert_eq!(env[0].name, "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(
            env[0].value.as_deref(),
            Some("http://demo-otel-collector.chat.svc:4317")
        );
        assert!(
            env.iter()
                .any(|e| e.name == "OTEL_SERVICE_NAME" && e.value.as_deref() == Some("demo"))
        );
    }

    #[test]
    fn external_collector_gets_env_but_no_objects() {
        let ctx = ClusterContext::new("demo", "chat");
        let spec = ObservabilitySpec {
            collector: Some(CollectorSpec {
                endpoint: Some("http://otel.monitoring:4317".into()),
                ..CollectorSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        assert!(build_collector_deployment(&spec, &ctx).unwrap().is_none());
        assert!(build_collector_service(&spec, &ctx).is_none());
        assert_eq!(
            chat_node_env(&spec, &ctx)[0].value.as_deref(),
            Some("http://otel.monitoring:4317")
        );
        assert!(chat_node_env(&ObservabilitySpec::default(), &ctx).is_empty());
        assert!(
            !chat_node_env(&spec, &ctx)
                .iter()
                .any(|e| e.name == "OTEL_EXPORTER_OTLP_CERTIFICATE")
        );
    }

    #[test]
    fn external_https_collector_ca_is_pointed_to() {
        let ctx = ClusterContext::new("demo", "chat");
        let mut spec = ObservabilitySpec {
            collector: Some(CollectorSpec {
                endpoint: Some("https://otel.example:4317".into()),
                ca_secret_ref: Some(SecretKeyRef {
                    name: "otel-ca".into(),
                    key: Some("root.pem".into()),
                }),
                ..CollectorSpec::default()
            }),
            ..ObservabilitySpec::default()
        };
        assert_eq!(chat_node_otlp_ca(&spec).unwrap().name, "otel-ca");
        let env = chat_node_env(&spec, &ctx);
        let ca = env
            .iter()
            .find(|e| e.name == "OTEL_EXPORTER_OTLP_CERTIFICATE")
            .expect("the CA variable");
        assert_eq!(ca.value.as_deref(), Some("/etc/chat-node/otlp-ca/root.pem"));
        // A disabled collector exports nothing, so nothing is mounted either.
        spec.collector.as_mut().unwrap().enabled = Some(false);
        assert!(chat_node_otlp_ca(&spec).is_none());
        assert!(chat_node_env(&spec, &ctx).is_empty());
    }
}
