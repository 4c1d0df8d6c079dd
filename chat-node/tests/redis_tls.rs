//! chat-node over TLS (`rediss://`) to a real redis-server whose certificate comes from a
//! private CA: cross-node fan-out and `since` recovery with `--redis-ca-file`; a CA that did not
//! sign the server's certificate leaves the node up but not ready, with the reason in its log.

mod common;

use std::process::Stdio;

use common::{Node, WAIT, http_publish, metric_value};
use serde_json::{Value, json};
use test_harness::redis::cluster::RedisCluster;
use test_harness::redis::tls::TestCa;
use test_harness::redis::{RedisOptions, RedisServer};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn fan_out_and_history_over_tls_with_a_private_ca() {
    let redis = RedisServer::start_with(RedisOptions::default().tls()).await;
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = redis.ca_path().unwrap().to_str().unwrap().to_owned();
    let mut nodes = Vec::new();
    for id in ["t0", "t1"] {
        let node =
            Node::start(&["--redis-url", &url, "--redis-ca-file", &ca, "--node-id", id]).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    a.subscribe("chat:secure").await;
    b.subscribe("chat:secure").await;
    let first = b.publish("chat:secure", json!({"text": "over tls"})).await;
    for c in [&mut a, &mut b] {
        let m = c.recv_type("message").await;
        assert_eq!(m["offset"], first.as_str());
        assert_eq!(m["data"]["text"], "over tls");
    }
    let (status, body) =
        http_publish(&nodes[0], r#"{"channel":"chat:secure","data":2}"#, None).await;
    assert_eq!(status, 200);
    assert_eq!(b.recv_type("message").await["offset"], body["offset"]);

    // History over TLS: a late client on the other node recovers both messages.
    let mut late = nodes[1].connect().await;
    late.send(json!({"type":"subscribe","channel":"chat:secure","since":"0-1"}))
        .await;
    assert_eq!(late.recv_type("subscribed").await["recovered"], 2);
    assert_eq!(late.recv_type("message").await["offset"], first.as_str());
    assert_eq!(late.recv_type("message").await["offset"], body["offset"]);

    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_not_ready_never_a_crash() {
    let redis = RedisServer::start_with(RedisOptions::default().tls()).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, TestCa::generate().unwrap().ca_pem).unwrap();

    let node = Node::start(&[
        "--redis-url",
        &redis.url(),
        "--redis-ca-file",
        wrong_ca.to_str().unwrap(),
    ])
    .await;
    node.wait_ready(503).await;
    node.wait_metric("chat_redis_up", 0.0).await;
    let mut client = node.connect().await;
    assert_eq!(
        client
            .expect_error(json!({"type":"publish","channel":"chat:x","data":1}))
            .await,
        "unavailable"
    );
    assert_eq!(node.healthz().await, 200);
    node.shutdown().await;

    // A CA file that is no certificate at all is refused at start with a clear error.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let config = chat_node::Config::from_args([
        "--redis-url",
        redis.url().as_str(),
        "--redis-ca-file",
        junk.to_str().unwrap(),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = chat_node::run(listener, admin, config, std::future::pending())
        .await
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("holds no PEM certificate"), "{chain}");
}

/// The CA file is read again before each connection attempt: a node started with a CA that
/// does not vouch for the server becomes ready once the file holds the right one (as when
/// cert-manager rotates the mounted Secret), without a restart, and a file that turns into
/// junk later keeps the good CA in use.
#[tokio::test]
async fn a_rotated_ca_file_is_used_from_the_next_reconnect_on() {
    let mut redis = RedisServer::start_with(RedisOptions::default().tls()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, TestCa::generate().unwrap().ca_pem).unwrap();
    let node = Node::start(&[
        "--redis-url",
        &redis.url(),
        "--redis-ca-file",
        ca_file.to_str().unwrap(),
    ])
    .await;
    node.wait_ready(503).await;

    // Rotate: replace the file the way the kubelet updates a Secret volume (write, rename).
    let staged = dir.path().join("ca.crt.new");
    std::fs::copy(redis.ca_path().unwrap(), &staged).unwrap();
    std::fs::rename(&staged, &ca_file).unwrap();
    node.wait_ready(200).await;
    node.wait_metric("chat_redis_up", 1.0).await;
    let mut client = node.connect().await;
    client.subscribe("chat:rotated").await;
    let offset = client
        .publish("chat:rotated", json!("after the rotation"))
        .await;
    assert_eq!(client.recv_type("message").await["offset"], offset.as_str());

    // A broken file later does not undo the good CA: after a Redis restart the node
    // reconnects with the CA it loaded last.
    std::fs::write(&ca_file, "not a certificate").unwrap();
    redis.stop();
    node.wait_ready(503).await;
    redis.restart().await;
    node.wait_ready(200).await;
    node.shutdown().await;
}

/// The real binary logs why it cannot reach Redis (the TLS verification failure) and keeps
/// retrying, not ready, instead of exiting.
#[tokio::test]
async fn the_binary_logs_the_certificate_error() {
    let redis = RedisServer::start_with(RedisOptions::default().tls()).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, TestCa::generate().unwrap().ca_pem).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-node"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--redis-url", &redis.url()])
        .arg("--redis-ca-file")
        .arg(&wrong_ca)
        .env_remove("CHAT_REDIS_URL")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chat-node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut admin = None;
    let warning = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let log: Value = serde_json::from_str(&line).expect("JSON log line");
            if log["message"] == "chat-node listening" {
                admin = log["details"]["admin_listen"].as_str().map(str::to_owned);
            }
            if log["message"] == "redis unreachable, retrying" {
                return log;
            }
        }
        panic!("chat-node exited instead of retrying");
    })
    .await
    .expect("a redis warning in time");
    let reason = warning["details"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("certificate"), "{warning}");
    assert_eq!(warning["level"], "warn");
    let readyz = reqwest::get(format!("http://{}/readyz", admin.unwrap()))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(child.try_wait().unwrap().is_none(), "still running");
}

/// `rediss+cluster://`: a three-primary Redis Cluster with TLS for clients and bus, one CA;
/// the per-shard health check speaks TLS too.
#[tokio::test]
async fn fan_out_over_a_tls_cluster() {
    let mut cluster = RedisCluster::start_tls(3).await;
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let ca = cluster.ca_path().unwrap().to_str().unwrap().to_owned();
    let mut nodes = Vec::new();
    for id in ["tc0", "tc1"] {
        let node =
            Node::start(&["--redis-url", &url, "--redis-ca-file", &ca, "--node-id", id]).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    // One channel per shard, so every node's TLS connection carries traffic.
    let mut channels: Vec<Option<String>> = vec![None; 3];
    for i in 0.. {
        let name = format!("chat:tls-{i}");
        let shard = cluster.node_for_slot(cluster.key_slot(&format!("{{{name}}}")).await);
        channels[shard].get_or_insert(name);
        if channels.iter().all(Option::is_some) {
            break;
        }
    }
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    for channel in channels.iter().flatten() {
        a.subscribe(channel).await;
        let offset = b.publish(channel, json!("over tls")).await;
        assert_eq!(a.recv_type("message").await["offset"], offset.as_str());
    }
    // The per-shard health check reaches every primary over TLS on its own connections: with
    // one primary killed exactly one shard is down, and the nodes stay connected.
    cluster.node_mut(1).kill();
    for node in &nodes {
        node.wait_metric("chat_redis_cluster_shards_down", 1.0)
            .await;
        let text = node.metrics().await;
        assert_eq!(
            metric_value(&text, "chat_redis_cluster_shards_down"),
            Some(1.0)
        );
        assert_eq!(metric_value(&text, "chat_redis_up"), Some(1.0));
        assert_eq!(
            metric_value(&text, "chat_redis_reconnects_total"),
            Some(0.0)
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
