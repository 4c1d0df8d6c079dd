//! Shared by the observability tests: the Alertmanager configuration that prometheus-operator
//! would generate from our AlertmanagerConfig, with receivers replaced by webhooks.
#![allow(dead_code)]

use chat_operator::children::observability::monitoring::{
    AlertmanagerConfig, Matcher, Receiver, Route,
};
use serde_json::{Value, json};

fn matcher(m: &Matcher) -> String {
    format!("{}{}{:?}", m.name, m.match_type, m.value)
}

fn route(route: &Route, extra: Option<&Matcher>, receiver_name: &dyn Fn(&str) -> String) -> Value {
    let mut matchers: Vec<String> = extra.into_iter().map(matcher).collect();
    matchers.extend(route.matchers.iter().map(matcher));
    let mut out = json!({ "receiver": receiver_name(&route.receiver), "matchers": matchers });
    if !route.group_by.is_empty() {
        out["group_by"] = json!(route.group_by);
    }
    for (key, value) in [
        ("group_wait", &route.group_wait),
        ("group_interval", &route.group_interval),
        ("repeat_interval", &route.repeat_interval),
    ] {
        if let Some(v) = value {
            out[key] = json!(v);
        }
    }
    if extra.is_some() || route.r#continue {
        // prometheus-operator appends each AlertmanagerConfig as a child of the root route
        // with `continue: true`, so other configs still see the alerts.
        out["continue"] = json!(true);
    }
    if !route.routes.is_empty() {
        out["routes"] = json!(
            route
                .routes
                .iter()
                .map(|r| self::route(r, None, receiver_name))
                .collect::<Vec<_>>()
        );
    }
    out
}

/// How the receivers of the AlertmanagerConfig are rendered.
pub enum Receivers<'a> {
    /// Every receiver becomes a webhook to `base/<receiver name>` (for a real Alertmanager).
    Webhooks { base: &'a str },
    /// The real PagerDuty/OpsGenie/Slack configs, with placeholder secrets (for `amtool`).
    Real,
}

fn receiver(r: &Receiver, name: String, receivers: &Receivers) -> Value {
    match receivers {
        Receivers::Webhooks { base } => json!({
            "name": name,
            "webhook_configs": [{ "url": format!("{base}/{}", r.name), "send_resolved": true }],
        }),
        Receivers::Real => {
            let mut out = json!({ "name": name });
            if !r.pagerduty_configs.is_empty() {
                out["pagerduty_configs"] = json!(r.pagerduty_configs.iter().map(|c| json!({
                    "routing_key": format!("secret {}/{}", c.routing_key.name, c.routing_key.key),
                    "send_resolved": c.send_resolved,
                    "description": c.description,
                    "severity": c.severity,
                })).collect::<Vec<_>>());
            }
            if !r.opsgenie_configs.is_empty() {
                out["opsgenie_configs"] = json!(
                    r.opsgenie_configs
                        .iter()
                        .map(|c| json!({
                            "api_key": format!("secret {}/{}", c.api_key.name, c.api_key.key),
                            "send_resolved": c.send_resolved,
                            "message": c.message,
                            "priority": c.priority,
                        }))
                        .collect::<Vec<_>>()
                );
            }
            if !r.slack_configs.is_empty() {
                out["slack_configs"] = json!(
                    r.slack_configs
                        .iter()
                        .map(|c| json!({
                            "api_url": "https://hooks.slack.invalid/services/placeholder",
                            "send_resolved": c.send_resolved,
                            "channel": c.channel,
                            "title": c.title,
                            "text": c.text,
                        }))
                        .collect::<Vec<_>>()
                );
            }
            out
        }
    }
}

/// alertmanager.yml equivalent to what prometheus-operator generates from `config`: the
/// config's route becomes a child of the root (matching only its namespace, `continue: true`),
/// receivers are prefixed with `<namespace>/<name>/`, and inhibit rules get the namespace
/// matcher on both sides. The root route sends everything else to `unrouted_webhook`.
pub fn alertmanager_yaml(
    config: &AlertmanagerConfig,
    receivers: Receivers,
    unrouted_webhook: &str,
) -> String {
    let namespace = config.metadata.namespace.clone().unwrap_or_default();
    let name = config.metadata.name.clone().unwrap_or_default();
    let prefixed = |receiver: &str| format!("{namespace}/{name}/{receiver}");
    let ns_matcher = Matcher::equal("namespace", &namespace);
    let mut all_receivers = vec![json!({
        "name": "unrouted",
        "webhook_configs": [{ "url": unrouted_webhook, "send_resolved": true }],
    })];
    all_receivers.extend(
        config
            .spec
            .receivers
            .iter()
            .map(|r| receiver(r, prefixed(&r.name), &receivers)),
    );
    let inhibit: Vec<Value> = config
        .spec
        .inhibit_rules
        .iter()
        .map(|rule| {
            let with_ns = |ms: &[Matcher]| {
                let mut out = vec![matcher(&ns_matcher)];
                out.extend(ms.iter().map(matcher));
                out
            };
            json!({
                "source_matchers": with_ns(&rule.source_match),
                "target_matchers": with_ns(&rule.target_match),
                "equal": rule.equal,
            })
        })
        .collect();
    let full = json!({
        "route": {
            "receiver": "unrouted",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
            "routes": [route(&config.spec.route, Some(&ns_matcher), &prefixed)],
        },
        "receivers": all_receivers,
        "inhibit_rules": inhibit,
    });
    serde_yaml_ng::to_string(&full).expect("alertmanager.yml renders")
}

/// A real chat-node process (the workspace's `target/debug/chat-node`) on loopback ports.
pub struct ChatNode {
    pub node_id: String,
    pub ws_port: u16,
    pub admin_port: u16,
    redis_url: String,
    max_connections: u32,
    process: Option<test_harness::process::ManagedProcess>,
    dir: tempfile::TempDir,
}

/// Path of the chat-node binary built by `cargo build --workspace --bins` (as `make test` does).
pub fn chat_node_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CHATCLUSTER_CHAT_NODE") {
        return path.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/chat-node");
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p chat-node` first",
        path.display()
    );
    path
}

impl ChatNode {
    /// Starts a node and waits until `/healthz` answers.
    pub async fn start(node_id: &str, redis_url: &str, max_connections: u32) -> Self {
        let mut node = ChatNode {
            node_id: node_id.to_owned(),
            ws_port: test_harness::free_port(),
            admin_port: test_harness::free_port(),
            redis_url: redis_url.to_owned(),
            max_connections,
            process: None,
            dir: tempfile::tempdir().unwrap(),
        };
        node.restart().await;
        node
    }

    /// (Re)starts the process on the same ports.
    pub async fn restart(&mut self) {
        let mut command = std::process::Command::new(chat_node_binary());
        command
            .arg(format!("--listen=127.0.0.1:{}", self.ws_port))
            .arg(format!("--admin-listen=127.0.0.1:{}", self.admin_port))
            .arg(format!("--redis-url={}", self.redis_url))
            .arg(format!("--node-id={}", self.node_id))
            .arg(format!("--max-connections={}", self.max_connections))
            .arg("--drain-timeout=100ms")
            .arg("--log-format=text")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        let log = self.dir.path().join(format!("{}.log", self.node_id));
        self.process = Some(
            test_harness::process::ManagedProcess::spawn(&self.node_id, command, &log)
                .expect("start chat-node"),
        );
        let url = format!("http://127.0.0.1:{}/healthz", self.admin_port);
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "chat-node {} not healthy; log:\n{}",
            self.node_id,
            self.process.as_ref().unwrap().log_tail(40)
        );
    }

    /// Kills the process (like a crashed pod).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// `127.0.0.1:<admin port>`, the scrape target.
    pub fn admin_target(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.ws_port)
    }
}
