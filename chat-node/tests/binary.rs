//! The real `chat-node` binary: SIGTERM drain (1001 spread over the window, exit 0) and the
//! fd-derived connection limit under a low `ulimit -n` (503 + Retry-After, /readyz 503, alive).

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::{Client, WAIT, metric_value};
use tokio_tungstenite::tungstenite;

#[tokio::test]
async fn sigterm_drains_with_1001_spread_over_the_window_then_exits_0() {
    let mut node = Binary::start("true", &["--drain-timeout", "1s"]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Client::connect(&node.ws_url(), &[]).await.unwrap());
    }
    // Read every client from now on, so each close is timed when it arrives.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.closed().await;
                (code, tokio::time::Instant::now())
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    node.terminate();
    node.wait_ready(503).await;
    assert!(node.readyz().await.1.contains("draining"));

    let mut closes = Vec::new();
    for wait in waits {
        closes.push(wait.await.unwrap());
    }
    assert!(closes.iter().all(|(code, _)| *code == 1001), "{closes:?}");
    let first = closes.iter().map(|(_, t)| *t).min().unwrap();
    let last = closes.iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "closes spread over the window: {:?}",
        last - first
    );
    assert!(last - started < Duration::from_secs(3));

    let status = tokio::time::timeout(WAIT, node.child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// A SIGTERM that arrives while the node is still starting (its ports already open, so a
/// kubelet may already send it) drains and exits 0 instead of killing the process (the
/// default action of an unhandled SIGTERM): the handler is installed before the ports open.
#[tokio::test]
async fn sigterm_right_after_the_ports_open_still_drains_and_exits_0() {
    for attempt in 0..10 {
        let mut node = Binary::start("true", &["--drain-timeout", "100ms"]).await;
        node.terminate();
        let status = tokio::time::timeout(WAIT, node.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM at start ended the node with {status:?}"
        );
    }
}

#[tokio::test]
async fn connection_limit_from_a_low_ulimit_answers_503_and_never_dies() {
    let node = Binary::start("ulimit -n 64", &[]).await;
    let max = node.max_connections as usize;
    assert!(
        max > 0 && max < 64,
        "limit derived from RLIMIT_NOFILE=64: {max}"
    );
    let metrics = reqwest::get(node.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_value(&metrics, "chat_max_connections"),
        Some(max as f64)
    );
    assert_eq!(metric_value(&metrics, "process_max_fds"), Some(64.0));

    let mut clients = Vec::new();
    for _ in 0..max {
        clients.push(
            Client::connect(&node.ws_url(), &[])
                .await
                .expect("below the limit: accepted"),
        );
    }
    node.wait_ready(503).await;
    assert!(node.readyz().await.1.contains("connection limit"));
    match Client::connect(&node.ws_url(), &[]).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("connection above the limit accepted"),
    }
    // A flood above the limit: refused (or left waiting), the node stays alive.
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let url = node.ws_url();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), Client::connect(&url, &[])).await
            })
        })
        .collect();
    for attempt in flood {
        if let Ok(Ok(_)) = attempt.await.unwrap() {
            panic!("flood connection accepted above the limit");
        }
    }
    assert_eq!(
        reqwest::get(node.admin_url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = reqwest::get(node.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(&metrics, "websocket_connections_total{status=\"rejected\"}").unwrap() >= 1.0
    );

    // A slot frees up: accepted again, ready again.
    drop(clients.pop());
    node.wait_ready(200).await;
    clients.push(
        Client::connect(&node.ws_url(), &[])
            .await
            .expect("slot reused"),
    );
    // Existing connections still work.
    let mut c = clients.pop().unwrap();
    c.subscribe("still-alive").await;
    c.publish("still-alive", serde_json::json!(1)).await;
}

/// `--help` shows which variables a flag reads, never the value of one that can carry a secret
/// (the Redis URL's password, the Redis password, the HS256 secret).
#[test]
fn help_never_prints_secret_values() {
    let secrets = [
        ("CHAT_REDIS_URL", "redis://:url-s3cret@10.0.0.1:6379"),
        ("CHAT_REDIS_PASSWORD", "password-s3cret"),
        ("CHAT_REDIS_SENTINEL_PASSWORD", "sentinel-s3cret"),
        ("CHAT_JWT_SECRET", "jwt-s3cret"),
    ];
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .arg("--help")
        .envs(secrets)
        .output()
        .expect("run chat-node --help");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for (variable, value) in secrets {
        assert!(help.contains(variable), "--help names {variable}");
        assert!(
            !help.contains(value),
            "--help prints the value of {variable}:\n{help}"
        );
    }
    assert!(!help.contains("s3cret"), "{help}");
    // Values that are not secrets are still shown, so `--help` keeps explaining the setup.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .arg("--help")
        .env("CHAT_NODE_ID", "node-from-env")
        .output()
        .expect("run chat-node --help");
    assert!(String::from_utf8_lossy(&output.stdout).contains("CHAT_NODE_ID=node-from-env"));
}

/// The backlog of a listening socket: `ss` shows it as the Send-Q of a LISTEN line.
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no LISTEN socket on {port}: {text}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
}

#[tokio::test]
async fn the_client_port_listens_with_a_backlog_that_takes_a_reconnect_burst() {
    // tokio's own `bind` listens with 1024: a drained node's clients reconnecting at once
    // overflowed it, and every dropped SYN waited a 1 s retransmit.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let node = Binary::start("true", &[]).await;
    assert_eq!(listen_backlog(node.addr.port()), 4096.min(somaxconn));
    let node = Binary::start("true", &["--listen-backlog", "1500"]).await;
    assert_eq!(listen_backlog(node.addr.port()), 1500.min(somaxconn));
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .args(["--listen-backlog", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--listen-backlog"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
