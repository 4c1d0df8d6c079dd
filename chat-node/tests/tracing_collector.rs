//! Traces, logs and metrics end to end through the real OpenTelemetry Collector: three
//! chat-node processes on one real redis-server export OTLP/gRPC to an `otelcol` (built by
//! hack/setup.d/31-otelcol.sh, the pipelines the operator generates: otlp -> memory_limiter ->
//! batch, and the Prometheus receiver scraping `/metrics` for metrics), which forwards OTLP/HTTP
//! JSON to a small loopback receiver standing in for Jaeger/Tempo, Loki and a metrics backend.
//! The log records carry the trace and span ids of the spans they happen in, and the
//! connection gauge arrives as a metric. One message
//! published on node A and delivered on B and C is one trace; the JSON log lines carry its ids;
//! with `OTEL_TRACES_SAMPLER=always_off` nothing reaches the collector; OTLP/HTTP protobuf
//! works as well as gRPC; both over TLS to receivers with a private CA's certificate (the CA
//! from `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` or the system's, mTLS with a client
//! certificate); a CA that did not sign the collector's certificate loses the spans, never the
//! node; an unreadable CA file stops chat-node at start with a clear message.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{Client, WAIT};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;
use test_harness::redis::tls::{TestCa, TlsFiles};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHANNEL: &str = "room:traced";

// ---- the backend stand-in: OTLP/HTTP JSON requests, kept as they came, per signal ----

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

async fn receive(State(received): State<Received>, body: Bytes) -> Json<Value> {
    let request: Value = serde_json::from_slice(&body).expect("OTLP JSON from the collector");
    received.0.lock().unwrap().push(request);
    Json(json!({}))
}

struct Backend {
    addr: SocketAddr,
    received: Received,
    logs: Received,
    metrics: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start() -> Backend {
        let (received, logs, metrics) = Default::default();
        let route = |received: &Received| post(receive).with_state(received.clone());
        let app = axum::Router::new()
            .route("/v1/traces", route(&received))
            .route("/v1/logs", route(&logs))
            .route("/v1/metrics", route(&metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Backend {
            addr,
            received,
            logs,
            metrics,
            task,
        }
    }

    /// Every log record received, flattened with its resource's attributes.
    fn logs(&self) -> Vec<ExportedLog> {
        let mut logs = Vec::new();
        for request in self.logs.all() {
            for rl in request["resourceLogs"].as_array().into_iter().flatten() {
                let resource = attributes(&rl["resource"]["attributes"]);
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    let scope = sl["scope"]["name"].as_str().unwrap_or("").to_owned();
                    for record in sl["logRecords"].as_array().into_iter().flatten() {
                        logs.push(ExportedLog {
                            resource: resource.clone(),
                            scope: scope.clone(),
                            body: record["body"]["stringValue"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                            severity_number: record["severityNumber"].as_u64().unwrap_or(0),
                            severity_text: record["severityText"].as_str().unwrap_or("").to_owned(),
                            trace_id: record["traceId"].as_str().unwrap_or("").to_owned(),
                            span_id: record["spanId"].as_str().unwrap_or("").to_owned(),
                            attributes: attributes(&record["attributes"]),
                        });
                    }
                }
            }
        }
        logs
    }

    /// The values of the gauge `name` received so far, with their resource's attributes.
    fn gauge(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        let mut points = Vec::new();
        for request in self.metrics.all() {
            for rm in request["resourceMetrics"].as_array().into_iter().flatten() {
                let resource = attributes(&rm["resource"]["attributes"]);
                for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                    for metric in sm["metrics"].as_array().into_iter().flatten() {
                        if metric["name"] != name {
                            continue;
                        }
                        let data = metric["gauge"]["dataPoints"].as_array();
                        for point in data.into_iter().flatten() {
                            let value = point["asDouble"]
                                .as_f64()
                                .or_else(|| point["asInt"].as_str().and_then(|v| v.parse().ok()));
                            points.push((resource.clone(), value.expect("a gauge value")));
                        }
                    }
                }
            }
        }
        points
    }

    /// Every span received, flattened with its resource's attributes.
    fn spans(&self) -> Vec<ExportedSpan> {
        let mut spans = Vec::new();
        for request in self.received.all() {
            for rs in request["resourceSpans"].as_array().into_iter().flatten() {
                let resource = attributes(&rs["resource"]["attributes"]);
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        spans.push(ExportedSpan {
                            resource: resource.clone(),
                            name: span["name"].as_str().unwrap().to_owned(),
                            kind: span["kind"].as_u64().unwrap_or(0),
                            trace_id: span["traceId"].as_str().unwrap().to_owned(),
                            span_id: span["spanId"].as_str().unwrap().to_owned(),
                            parent_id: span["parentSpanId"].as_str().unwrap_or("").to_owned(),
                            attributes: attributes(&span["attributes"]),
                        });
                    }
                }
            }
        }
        spans
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// OTLP JSON attributes as strings (`{"key","value":{"stringValue"|"intValue"|…}}`).
fn attributes(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let value = kv["value"]
                .as_object()
                .and_then(|v| v.values().next())
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default();
            (kv["key"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[derive(Clone, Debug)]
struct ExportedSpan {
    resource: HashMap<String, String>,
    name: String,
    kind: u64,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: HashMap<String, String>,
}

impl ExportedSpan {
    fn node(&self) -> &str {
        self.resource
            .get("service.instance.id")
            .map_or("", String::as_str)
    }
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Debug)]
struct ExportedLog {
    resource: HashMap<String, String>,
    /// The instrumentation scope: the event's target.
    scope: String,
    body: String,
    severity_number: u64,
    severity_text: String,
    trace_id: String,
    span_id: String,
    attributes: HashMap<String, String>,
}

/// OTLP severity numbers of tracing's levels.
const SEVERITY_DEBUG: u64 = 5;
const SEVERITY_INFO: u64 = 9;

/// OTLP span kinds.
const KIND_SERVER: u64 = 2;
const KIND_PRODUCER: u64 = 4;
const KIND_CONSUMER: u64 = 5;

// ---- processes ----

fn signal_term(child: &Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

async fn wait_exit(child: &mut Child, what: &str) {
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} exits in time"))
        .expect("wait");
    assert!(status.success(), "{what} exited with {status}");
}

/// The real Collector with OTLP/gRPC and OTLP/HTTP in on free loopback ports (TLS with
/// [`ReceiverTls`]), traces and logs pipelines (and a metrics pipeline scraping one node's
/// `/metrics`, see [`Collector::start_scraping`]), OTLP/HTTP JSON out to `backend`; killed on
/// drop.
struct Collector {
    child: Child,
    /// OTLP/gRPC.
    endpoint: String,
    /// OTLP/HTTP (the exporter appends `/v1/traces`).
    http_endpoint: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// TLS on the collector's OTLP receivers (both protocols).
struct ReceiverTls<'a> {
    files: &'a TlsFiles,
    /// Require client certificates signed by the same CA (mTLS).
    client_auth: bool,
}

impl Collector {
    async fn start(backend: &Backend) -> Collector {
        Collector::start_with(backend, None).await
    }

    async fn start_with(backend: &Backend, tls: Option<ReceiverTls<'_>>) -> Collector {
        Collector::launch(backend, tls, None).await
    }

    /// With a metrics pipeline too: the Prometheus receiver scrapes `http://<admin>/metrics`
    /// every second (what the operator's collector does to the chat-nodes' admin port).
    async fn start_scraping(backend: &Backend, admin: SocketAddr) -> Collector {
        Collector::launch(backend, None, Some(admin)).await
    }

    async fn launch(
        backend: &Backend,
        tls: Option<ReceiverTls<'_>>,
        scrape: Option<SocketAddr>,
    ) -> Collector {
        let (port, http_port) = (free_port(), free_port());
        let mut grpc = json!({"endpoint": format!("127.0.0.1:{port}")});
        let mut http = json!({"endpoint": format!("127.0.0.1:{http_port}")});
        if let Some(tls) = &tls {
            let mut settings = json!({
                "cert_file": tls.files.cert,
                "key_file": tls.files.key,
            });
            if tls.client_auth {
                settings["client_ca_file"] = json!(tls.files.ca);
            }
            grpc["tls"] = settings.clone();
            http["tls"] = settings;
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut config = json!({
            "receivers": {"otlp": {"protocols": {"grpc": grpc, "http": http}}},
            "processors": {
                "memory_limiter": {"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 20},
                "batch": {"timeout": "200ms"}
            },
            "exporters": {"otlp_http/backend": {
                "endpoint": format!("http://{}", backend.addr),
                "encoding": "json",
                "compression": "none"
            }},
            "service": {
                "telemetry": {"metrics": {"level": "none"}},
                "pipelines": {}
            }
        });
        let pipeline = |receiver: &str| {
            json!({
                "receivers": [receiver],
                "processors": ["memory_limiter", "batch"],
                "exporters": ["otlp_http/backend"]
            })
        };
        let pipelines = &mut config["service"]["pipelines"];
        pipelines["traces"] = pipeline("otlp");
        pipelines["logs"] = pipeline("otlp");
        if let Some(admin) = scrape {
            config["receivers"]["prometheus"] = json!({"config": {"scrape_configs": [{
                "job_name": "chat-node",
                "scrape_interval": "1s",
                "static_configs": [{"targets": [admin.to_string()]}]
            }]}});
            config["service"]["pipelines"]["metrics"] = pipeline("prometheus");
        }
        let mut child = Command::new(test_harness::tools::otelcol())
            .arg("--config=env:CHAT_TEST_OTELCOL_CONFIG")
            .env("CHAT_TEST_OTELCOL_CONFIG", config.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn otelcol");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let seen = log.clone();
        let ready = tokio::time::timeout(WAIT * 3, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let is_ready = line.contains("Everything is ready");
                seen.lock().unwrap().push(line);
                if is_ready {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "otelcol did not start:\n{}",
            log.lock().unwrap().join("\n")
        );
        let seen = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.lock().unwrap().push(line);
            }
        });
        Collector {
            child,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            http_endpoint: format!("{scheme}://127.0.0.1:{http_port}"),
            log,
        }
    }

    /// SIGTERM: the collector flushes its batch and queue to the backend, then exits.
    async fn stop(mut self) {
        signal_term(&self.child);
        wait_exit(&mut self.child, "otelcol").await;
        let log = self.log.lock().unwrap().join("\n");
        assert!(
            !log.contains("Exporting failed"),
            "the collector could not deliver to the backend:\n{log}"
        );
    }
}

/// A free loopback port (bound and released: the caller binds it again right away).
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A chat-node process exporting to the collector; its JSON log lines are kept.
struct NodeProcess {
    id: String,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl NodeProcess {
    async fn start(id: &str, redis_url: Option<&str>, otel: &[(&str, &str)]) -> NodeProcess {
        NodeProcess::start_on(id, redis_url, otel, "127.0.0.1:0").await
    }

    /// With the admin port (`/metrics`) on `admin`.
    async fn start_on(
        id: &str,
        redis_url: Option<&str>,
        otel: &[(&str, &str)],
        admin: &str,
    ) -> NodeProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-node"));
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", admin])
            .args(["--node-id", id, "--drain-timeout", "100ms"])
            .args(["--log-format", "json"])
            .env_clear()
            .env("RUST_LOG", "info,chat_node=debug")
            .envs(otel.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
        let mut child = command.spawn().expect("spawn chat-node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let listening = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let log: Value = serde_json::from_str(&line).expect("JSON log line");
                logs.lock().unwrap().push(log.clone());
                if log["message"] == "chat-node listening" {
                    return log;
                }
            }
            panic!("chat-node {id} exited before listening");
        })
        .await
        .expect("chat-node listening in time");
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let log: Value = serde_json::from_str(&line).expect("JSON log line");
                kept.lock().unwrap().push(log);
            }
        });
        let details = &listening["details"];
        let node = NodeProcess {
            id: id.to_owned(),
            child,
            addr: details["listen"].as_str().unwrap().parse().unwrap(),
            admin: details["admin_listen"].as_str().unwrap().parse().unwrap(),
            logs,
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let status = reqwest::get(&url).await.map(|r| r.status().as_u16()).ok();
            if status == Some(200) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never ready",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn connect(&self) -> Client {
        Client::connect(&format!("ws://{}/ws", self.addr), &[])
            .await
            .expect("websocket handshake")
    }

    /// SIGTERM: drain, flush the last spans, exit 0.
    async fn stop(&mut self) {
        signal_term(&self.child);
        wait_exit(&mut self.child, &self.id).await;
    }

    /// Waits until a log line matches `found`; returns it.
    async fn wait_log(&self, found: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| found(l)) {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no such log line in {:?}",
                self.id,
                self.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_lines(&self, message: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect()
    }
}

fn otel_env<'a>(collector: &'a Collector, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "chat-e2e"),
        ("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=e2e"),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test]
async fn one_trace_spans_publish_on_one_node_and_delivery_on_the_others() {
    let backend = Backend::start().await;
    let collector = Collector::start(&backend).await;
    let redis = RedisServer::start().await;
    let url = redis.url();
    let env = otel_env(
        &collector,
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
        ],
    );
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(NodeProcess::start(id, Some(&url), &env).await);
    }

    // One subscriber on B, two on C, a publisher on A.
    let mut subscribers = Vec::new();
    for node in [1, 2, 2] {
        let mut client = nodes[node].connect().await;
        client.subscribe(CHANNEL).await;
        subscribers.push(client);
    }
    let mut publisher = nodes[0].connect().await;
    let offset = publisher
        .publish(CHANNEL, json!({"text": "top secret"}))
        .await;
    for client in &mut subscribers {
        assert_eq!(client.recv_type("message").await["offset"], offset.as_str());
    }
    // An HTTP publish on B joins the caller's trace through its traceparent header.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/publish", nodes[1].addr))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"channel": CHANNEL, "data": "from a backend"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let http_offset = response.json::<Value>().await.unwrap()["offset"]
        .as_str()
        .unwrap()
        .to_owned();
    for client in &mut subscribers {
        assert_eq!(
            client.recv_type("message").await["offset"],
            http_offset.as_str()
        );
    }

    // Stop everything in order: the nodes flush on shutdown, then the collector drains.
    drop(subscribers);
    drop(publisher);
    for node in &mut nodes {
        node.stop().await;
    }
    collector.stop().await;
    let spans = backend.spans();
    assert!(!spans.is_empty(), "no spans reached the backend");
    let summary = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} {}<-{}",
                    s.node(),
                    s.name,
                    s.trace_id,
                    s.span_id,
                    s.parent_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every span: the service name from OTEL_SERVICE_NAME, the node as service.instance.id,
    // OTEL_RESOURCE_ATTRIBUTES kept; only the four span names (nothing per heartbeat).
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("chat-e2e")
        );
        assert_eq!(
            span.resource.get("k8s.namespace.name").map(String::as_str),
            Some("e2e")
        );
        assert!(
            ["node-a", "node-b", "node-c"].contains(&span.node()),
            "{span:?}"
        );
        assert!(
            [
                "chat.connect",
                "chat.receive",
                "chat.publish",
                "chat.deliver"
            ]
            .contains(&span.name.as_str()),
            "unexpected span {span:?}"
        );
        assert!(
            !format!("{span:?}").contains("top secret"),
            "message bodies never go into spans"
        );
    }

    // The WebSocket publish: receive -> publish on A, one delivery each on B and C.
    let publish = spans
        .iter()
        .find(|s| s.name == "chat.publish" && s.node() == "node-a")
        .unwrap_or_else(|| panic!("no publish span on node-a:\n{}", summary()));
    assert_eq!(publish.kind, KIND_PRODUCER);
    assert_eq!(publish.attr("messaging.destination.name"), Some(CHANNEL));
    assert_eq!(publish.attr("messaging.message.id"), Some(offset.as_str()));
    let trace = publish.trace_id.clone();
    let receive = spans
        .iter()
        .find(|s| s.name == "chat.receive" && s.span_id == publish.parent_id)
        .unwrap_or_else(|| panic!("publish has no receive parent:\n{}", summary()));
    assert_eq!((receive.node(), receive.kind), ("node-a", KIND_SERVER));
    assert_eq!(receive.trace_id, trace);
    assert_eq!(receive.attr("chat.result"), Some("published"));
    let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let deliveries: Vec<&&ExportedSpan> = in_trace
        .iter()
        .filter(|s| s.name == "chat.deliver")
        .collect();
    let mut delivered_on: Vec<&str> = deliveries.iter().map(|s| s.node()).collect();
    delivered_on.sort();
    assert_eq!(
        delivered_on,
        ["node-b", "node-c"],
        "one delivery span per node with subscribers, not per subscriber:\n{}",
        summary()
    );
    for delivery in &deliveries {
        assert_eq!(
            delivery.parent_id, publish.span_id,
            "delivery is a child of publish"
        );
        assert_eq!(delivery.kind, KIND_CONSUMER);
        assert_eq!(delivery.attr("messaging.message.id"), Some(offset.as_str()));
        let expected = if delivery.node() == "node-b" {
            "1"
        } else {
            "2"
        };
        assert_eq!(delivery.attr("chat.recipients"), Some(expected));
    }

    // The HTTP publish continues the caller's trace.
    let http_receive = spans
        .iter()
        .find(|s| s.name == "chat.receive" && s.trace_id == caller_trace)
        .unwrap_or_else(|| panic!("no receive span in the caller's trace:\n{}", summary()));
    assert_eq!(http_receive.node(), "node-b");
    assert_eq!(http_receive.parent_id, caller_span);
    assert_eq!(http_receive.attr("chat.transport"), Some("http"));
    let http_publish = spans
        .iter()
        .find(|s| s.name == "chat.publish" && s.parent_id == http_receive.span_id)
        .expect("http publish span");
    let mut http_delivered: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "chat.deliver" && s.parent_id == http_publish.span_id)
        .map(|s| {
            assert_eq!(s.trace_id, caller_trace);
            s.node()
        })
        .collect();
    http_delivered.sort();
    assert_eq!(http_delivered, ["node-b", "node-c"]);

    // Handshakes: one accepted connect span per WebSocket, auth off.
    let connects = spans.iter().filter(|s| s.name == "chat.connect").count();
    assert_eq!(connects, 4, "{}", summary());
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "chat.connect")
            .all(
                |s| s.attr("chat.result") == Some("accepted") && s.attr("chat.auth") == Some("off")
            )
    );

    // The JSON log lines inside those spans carry the same ids.
    let published = nodes[0].log_lines("published");
    assert!(
        published
            .iter()
            .any(|l| l["trace_id"] == trace.as_str() && l["span_id"] == receive.span_id.as_str()),
        "node-a logged the publish with its trace id: {published:?}"
    );
    for delivery in &deliveries {
        let node = nodes.iter().find(|n| n.id == delivery.node()).unwrap();
        let lines = node.log_lines("delivered");
        assert!(
            lines.iter().any(|l| l["trace_id"] == trace.as_str()
                && l["span_id"] == delivery.span_id.as_str()
                && l["service"] == "chat-node"),
            "{} logged the delivery with the trace's ids: {lines:?}",
            node.id
        );
    }
    for node in &nodes {
        let all = node.logs.lock().unwrap();
        assert!(
            !all.iter().any(|l| l.to_string().contains("top secret")),
            "message bodies never go into logs"
        );
        assert!(
            all.iter()
                .filter(|l| l["message"] == "chat-node listening")
                .all(|l| l.get("trace_id").is_none()),
            "no trace id outside spans"
        );
    }
}

#[tokio::test]
async fn always_off_exports_nothing() {
    let backend = Backend::start().await;
    let collector = Collector::start(&backend).await;
    let env = otel_env(&collector, &[("OTEL_TRACES_SAMPLER", "always_off")]);
    let mut node = NodeProcess::start("solo", None, &env).await;
    let mut subscriber = node.connect().await;
    subscriber.subscribe(CHANNEL).await;
    let mut publisher = node.connect().await;
    let offset = publisher.publish(CHANNEL, json!("unsampled")).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        offset.as_str()
    );
    let status = reqwest::Client::new()
        .post(format!("http://{}/api/publish", node.addr))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"channel": CHANNEL, "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    subscriber.recv_type("message").await;
    drop((subscriber, publisher));
    node.stop().await;
    collector.stop().await;
    let spans = backend.spans();
    assert!(spans.is_empty(), "always_off exported {spans:?}");
}

#[tokio::test]
async fn http_protobuf_export_with_the_default_service_name() {
    let backend = Backend::start().await;
    let collector = Collector::start(&backend).await;
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            collector.http_endpoint.as_str(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ];
    let mut node = NodeProcess::start("solo", None, &env).await;
    let mut subscriber = node.connect().await;
    subscriber.subscribe(CHANNEL).await;
    let mut publisher = node.connect().await;
    let offset = publisher.publish(CHANNEL, json!("over http")).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        offset.as_str()
    );
    drop((subscriber, publisher));
    node.stop().await;
    collector.stop().await;
    let spans = backend.spans();
    let publish = spans
        .iter()
        .find(|s| s.name == "chat.publish")
        .unwrap_or_else(|| panic!("no publish span in {spans:?}"));
    let delivery = spans
        .iter()
        .find(|s| s.name == "chat.deliver")
        .expect("a delivery span");
    assert_eq!(delivery.parent_id, publish.span_id, "same node, same trace");
    assert_eq!(delivery.attr("chat.recipients"), Some("1"));
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("chat-node"),
            "without OTEL_SERVICE_NAME"
        );
        assert_eq!(span.node(), "solo");
    }
    // Logs go the same way (OTLP/HTTP, `/v1/logs`).
    let logs = backend.logs();
    let delivered = logs
        .iter()
        .find(|l| l.body == "delivered")
        .unwrap_or_else(|| panic!("no `delivered` log record in {logs:#?}"));
    assert_eq!(
        (delivered.trace_id.as_str(), delivered.span_id.as_str()),
        (delivery.trace_id.as_str(), delivery.span_id.as_str())
    );
    assert_eq!(
        delivered
            .resource
            .get("service.instance.id")
            .map(String::as_str),
        Some("solo")
    );
}

#[tokio::test]
async fn logs_carry_the_span_ids_and_the_connection_gauge_is_scraped() {
    let backend = Backend::start().await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let collector = Collector::start_scraping(&backend, admin).await;
    let env = otel_env(&collector, &[]);
    let mut node = NodeProcess::start_on("solo", None, &env, &admin.to_string()).await;
    let mut subscriber = node.connect().await;
    subscriber.subscribe(CHANNEL).await;
    let mut publisher = node.connect().await;
    let offset = publisher.publish(CHANNEL, json!("top secret")).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        offset.as_str()
    );

    // Metrics: the collector scrapes /metrics and forwards the series as OTLP metrics; the
    // connection gauge reaches 2 while both clients are connected.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let scraped = loop {
        let points = backend.gauge("websocket_active_connections");
        if let Some(point) = points.iter().find(|(_, value)| *value == 2.0) {
            break point.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "websocket_active_connections = 2 never arrived: {points:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        scraped.0.get("service.name").map(String::as_str),
        Some("chat-node"),
        "the scrape job names the service: {:?}",
        scraped.0
    );

    drop((subscriber, publisher));
    node.stop().await;
    collector.stop().await;

    // Logs: the delivery's debug line, inside the chat.deliver span, carries its ids.
    let spans = backend.spans();
    let delivery = spans
        .iter()
        .find(|s| s.name == "chat.deliver")
        .unwrap_or_else(|| panic!("no delivery span in {spans:?}"));
    let logs = backend.logs();
    let delivered = logs
        .iter()
        .find(|l| l.body == "delivered")
        .unwrap_or_else(|| panic!("no `delivered` log record in {logs:#?}"));
    assert_eq!(delivered.trace_id, delivery.trace_id, "{delivered:?}");
    assert_eq!(delivered.span_id, delivery.span_id, "{delivered:?}");
    assert_eq!(
        (delivered.severity_number, delivered.severity_text.as_str()),
        (SEVERITY_DEBUG, "DEBUG")
    );
    assert_eq!(
        delivered.attributes.get("details.offset"),
        Some(&offset),
        "{delivered:?}"
    );
    assert_eq!(delivered.scope, "chat_node::telemetry");
    for (key, value) in [
        ("service.name", "chat-e2e"),
        ("service.instance.id", "solo"),
        ("k8s.namespace.name", "e2e"),
    ] {
        assert_eq!(
            delivered.resource.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    // The JSON log line of the same event has the same ids.
    let line = &node.log_lines("delivered")[0];
    assert_eq!(line["trace_id"], delivered.trace_id.as_str());
    assert_eq!(line["span_id"], delivered.span_id.as_str());
    // Outside any span: no ids.
    let listening = logs
        .iter()
        .find(|l| l.body == "chat-node listening")
        .expect("the start's log record");
    assert_eq!(listening.severity_number, SEVERITY_INFO);
    assert!(listening.trace_id.is_empty() && listening.span_id.is_empty());

    // Every line chat-node logged is a record, and nothing from the exporters' own crates is
    // (exporting a log must not log again); never a message body.
    for line in node.logs.lock().unwrap().iter() {
        let target = line["target"].as_str().unwrap();
        if !target.starts_with("chat_node") {
            continue;
        }
        assert!(
            logs.iter()
                .any(|l| l.body == line["message"].as_str().unwrap() && l.scope == target),
            "log line {line} has no log record"
        );
    }
    for log in &logs {
        assert!(
            !["opentelemetry", "tonic", "h2", "hyper", "tower"]
                .iter()
                .any(|c| log.scope.starts_with(c)),
            "exported the exporter's own log {log:?}"
        );
        assert!(
            !format!("{log:?}").contains("top secret"),
            "message bodies never go into logs"
        );
    }
}

// ---- TLS to the collector ----

/// One publish and its delivery on `node` (one subscriber, one publisher on the same node).
async fn publish_one(node: &NodeProcess, text: &str) {
    let mut subscriber = node.connect().await;
    subscriber.subscribe(CHANNEL).await;
    let mut publisher = node.connect().await;
    let offset = publisher.publish(CHANNEL, json!(text)).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        offset.as_str()
    );
}

/// The nodes whose `chat.publish` span reached the backend, sorted.
fn nodes_with_publish(backend: &Backend) -> Vec<String> {
    let mut nodes: Vec<String> = backend
        .spans()
        .iter()
        .filter(|s| s.name == "chat.publish")
        .map(|s| s.node().to_owned())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// A collector whose OTLP receivers speak TLS with a certificate of a throwaway CA (and ask
/// for client certificates of that CA when `client_auth`), in front of a fresh [`Backend`].
/// The temporary directory holds the CA's files and must outlive the collector.
async fn tls_collector(client_auth: bool) -> (tempfile::TempDir, TlsFiles, Backend, Collector) {
    let dir = tempfile::tempdir().unwrap();
    let files = TestCa::generate().unwrap().write(dir.path()).unwrap();
    let backend = Backend::start().await;
    let tls = ReceiverTls {
        files: &files,
        client_auth,
    };
    let collector = Collector::start_with(&backend, Some(tls)).await;
    (dir, files, backend, collector)
}

/// `(node id, endpoint, OTEL_EXPORTER_OTLP_PROTOCOL)` for one node per protocol of `collector`,
/// named `grpc-<name>` and `http-<name>`.
fn both_protocols<'a>(
    collector: &'a Collector,
    name: &str,
) -> [(String, &'a str, &'static str); 2] {
    [
        (format!("grpc-{name}"), collector.endpoint.as_str(), "grpc"),
        (
            format!("http-{name}"),
            collector.http_endpoint.as_str(),
            "http/protobuf",
        ),
    ]
}

#[tokio::test]
async fn https_export_to_a_collector_with_a_private_ca() {
    let (_dir, files, backend, collector) = tls_collector(false).await;
    let ca = files.ca.to_str().unwrap();
    assert!(collector.endpoint.starts_with("https://"));
    let http_traces = format!("{}/v1/traces", collector.http_endpoint);
    let mut nodes = vec![
        // gRPC with the general variables.
        NodeProcess::start(
            "grpc-ca",
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ],
        )
        .await,
        // OTLP/HTTP with the traces-specific ones (which win over a wrong general CA).
        NodeProcess::start(
            "http-ca",
            None,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", http_traces.as_str()),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            ],
        )
        .await,
    ];
    // No CA variable: the system's CA certificates, which rustls-native-certs takes from
    // SSL_CERT_FILE here, for both transports.
    for (id, endpoint, protocol) in both_protocols(&collector, "system") {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("SSL_CERT_FILE", ca),
        ];
        nodes.push(NodeProcess::start(&id, None, &env).await);
    }
    for node in &nodes {
        publish_one(node, "over tls").await;
    }
    for node in &mut nodes {
        node.stop().await;
    }
    collector.stop().await;
    assert_eq!(
        nodes_with_publish(&backend),
        ["grpc-ca", "grpc-system", "http-ca", "http-system"],
        "{:?}",
        backend.spans()
    );
}

#[tokio::test]
async fn mutual_tls_export_with_a_client_certificate() {
    let (_dir, files, backend, collector) = tls_collector(true).await;
    let (ca, cert, key) = (
        files.ca.to_str().unwrap(),
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
    );
    let mut nodes = Vec::new();
    for (id, endpoint, protocol) in both_protocols(&collector, "mtls") {
        // The test CA's certificate has no extended key usage, so it serves as a client's too.
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        ];
        nodes.push(NodeProcess::start(&id, None, &env).await);
    }
    // Without a client certificate the collector refuses the connection.
    let anonymous = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
    ];
    nodes.push(NodeProcess::start("anonymous", None, &anonymous).await);
    for node in &nodes {
        publish_one(node, "mutual").await;
    }
    for node in &mut nodes {
        node.stop().await;
    }
    collector.stop().await;
    assert_eq!(
        nodes_with_publish(&backend),
        ["grpc-mtls", "http-mtls"],
        "{:?}",
        backend.spans()
    );
}

#[tokio::test]
async fn an_untrusted_collector_loses_the_spans_never_the_node() {
    let (dir, _files, backend, collector) = tls_collector(false).await;
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, TestCa::generate().unwrap().ca_pem).unwrap();
    let wrong_ca = wrong_ca.to_str().unwrap();
    let mut nodes = Vec::new();
    for (id, endpoint, protocol) in both_protocols(&collector, "wrong-ca") {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", wrong_ca),
            // Export soon, so the failure shows while the node runs.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        nodes.push(NodeProcess::start(&id, None, &env).await);
    }
    for node in &nodes {
        publish_one(node, "lost span").await;
        // The export failure is logged with its cause (gRPC: by the SDK, from tonic's
        // status; OTLP/HTTP: by chat-node, as the exporter keeps only "network error") ...
        let line = node
            .wait_log(|l| l.to_string().contains("invalid peer certificate"))
            .await;
        assert!(
            ["warn", "error"].contains(&line["level"].as_str().unwrap_or_default()),
            "{line}"
        );
        // ... and the node serves on.
        publish_one(node, "still serving").await;
        let healthz = reqwest::get(format!("http://{}/healthz", node.admin))
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200);
    }
    for node in &mut nodes {
        node.stop().await;
    }
    collector.stop().await;
    let spans = backend.spans();
    assert!(
        spans.is_empty(),
        "spans crossed an untrusted TLS: {spans:?}"
    );
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for (path, reason) in [
        (&missing, "cannot read"),
        (&junk, "holds no PEM certificate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-node"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env_clear()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(WAIT, output)
            .await
            .expect("chat-node exits at once")
            .expect("run chat-node");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE")
                && stderr.contains(path.to_str().unwrap())
                && stderr.contains(reason),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("chat-node listening"),
            "it never serves"
        );
    }
}
