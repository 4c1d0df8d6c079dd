//! Per-namespace channel options (`--namespaces-file`), through real WebSocket and HTTP clients:
//! three nodes on one real redis-server and the embedded broker. A `typing` namespace without
//! history delivers live on every node and writes nothing to Redis (no `XADD`, no key); a
//! namespace whose clients may not publish refuses them while the server API publishes; a
//! namespace that wants a user refuses anonymous clients; history size and TTL overrides; and
//! files or flag combinations that cannot be used stop the node at start with a clear error.

mod common;

use std::io::Write;

use common::{Client, Node, SECRET, api_call, http_publish, now_secs, token};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;
use tokio::net::TcpListener;

const API_KEY: &str = "server-api-key-0123456789abcdef";

const FILE: &str = r#"{
  "defaults": {"history": {"size": 100}},
  "namespaces": [
    {"name": "typing", "history": {"enabled": false}},
    {"name": "announce", "clientPublish": false},
    {"name": "members", "anonymousSubscribe": false, "presence": true},
    {"name": "short", "history": {"size": 3, "ttl": "1h"}}
  ]
}"#;

struct Files {
    _dir: tempfile::TempDir,
    namespaces: String,
    key: String,
}

fn files(namespaces: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("namespaces.json");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(namespaces.as_bytes())
        .unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, API_KEY).unwrap();
    Files {
        namespaces: path.to_str().unwrap().to_owned(),
        key: key.to_str().unwrap().to_owned(),
        _dir: dir,
    }
}

fn bearer(claims: Value) -> String {
    format!("Bearer {}", token(SECRET, claims))
}

async fn user(node: &Node, sub: &str) -> Client {
    let auth = bearer(json!({"sub": sub, "exp": now_secs() + 3600}));
    Client::connect(&node.ws_url(), &[("Authorization", &auth)])
        .await
        .expect("websocket handshake")
}

/// A client whose token has no `sub`: anonymous.
async fn anonymous(node: &Node) -> Client {
    let auth = bearer(json!({"exp": now_secs() + 3600}));
    Client::connect(&node.ws_url(), &[("Authorization", &auth)])
        .await
        .expect("websocket handshake")
}

/// Nodes with the options of `files`: from the file with Redis, inline (`--namespaces`, as the
/// operator renders them) with the embedded broker.
async fn nodes(redis: Option<&RedisServer>, files: &Files, count: usize) -> Vec<Node> {
    let url = redis.map(|r| r.url());
    let (flag, value) = match redis {
        Some(_) => ("--namespaces-file", files.namespaces.clone()),
        None => (
            "--namespaces",
            std::fs::read_to_string(&files.namespaces).unwrap(),
        ),
    };
    let mut nodes = Vec::new();
    for i in 0..count {
        let id = format!("n{i}");
        let mut args = vec![
            flag,
            &value,
            "--jwt-secret",
            SECRET,
            "--api-key-file",
            &files.key,
            "--node-id",
            &id,
        ];
        if let Some(url) = &url {
            args.extend(["--redis-url", url]);
        }
        let node = Node::start_with_api(&args).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

/// Publishes `n` frames to `channel` at once (pipelined), then reads their `ack`s in order.
async fn publish_burst(c: &mut Client, channel: &str, n: usize) -> Vec<Value> {
    for i in 0..n {
        c.send(json!({"type":"publish","channel":channel,"data":{"i":i},"ref":format!("p{i}")}))
            .await;
    }
    let mut acks = Vec::new();
    while acks.len() < n {
        let frame = c.recv().await;
        assert_ne!(frame["type"], "error", "publish refused: {frame}");
        if frame["type"] == "ack" {
            acks.push(frame);
        }
    }
    acks
}

/// The next `n` messages of `channel` that `c` receives, with their data's `i` in order.
async fn receive(c: &mut Client, channel: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = c.recv_type("message").await;
        if frame["channel"] == channel {
            got.push(frame);
        }
    }
    got
}

/// The behaviour both brokers share, on `nodes` (clients spread over them).
async fn namespace_options(nodes: &[Node]) {
    let node = |i: usize| &nodes[i % nodes.len()];

    // typing: live on every node, in the order sent, with no offset anywhere.
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut w = user(node(i), &format!("w{i}")).await;
        let subscribed = w.subscribe("typing:room").await;
        assert_eq!(subscribed["recovered"], 0, "{subscribed}");
        assert!(
            subscribed.get("offset").is_none() && subscribed.get("epoch").is_none(),
            "no offsets without history: {subscribed}"
        );
        watchers.push(w);
    }
    let mut typist = user(node(1), "ann").await;
    let acks = publish_burst(&mut typist, "typing:room", 8).await;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["ref"], format!("p{i}"));
        assert!(ack.get("offset").is_none(), "{ack}");
    }
    for w in &mut watchers {
        let got = receive(w, "typing:room", 8).await;
        let order: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "order as sent");
        assert!(got.iter().all(|m| m.get("offset").is_none()), "{got:?}");
        assert_eq!(got[0]["from"], "ann");
    }
    // No recovery, no history, no gap: there is nothing to recover from.
    let mut late = user(node(2), "late").await;
    late.send(json!({"type":"subscribe","channel":"typing:room","since":"1-0","epoch":"x"}))
        .await;
    let subscribed = late.recv_type("subscribed").await;
    assert_eq!(subscribed["recovered"], 0);
    assert!(subscribed.get("gap").is_none(), "{subscribed}");
    late.send(json!({"type":"subscribe","channel":"typing:other","last":10}))
        .await;
    let subscribed = late.recv_type("subscribed").await;
    assert_eq!(subscribed["recovered"], 0, "{subscribed}");
    let answer = late
        .request(json!({"type":"history","channel":"typing:room","limit":10}))
        .await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "not_available");
    let page = reqwest::Client::new()
        .get(node(0).http("/api/history?channel=typing:room"))
        .bearer_auth(token(SECRET, json!({"sub":"ann","exp":now_secs()+60})))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 404);
    let body: Value = page.json().await.unwrap();
    assert_eq!(body["code"], "not_available", "{body}");
    // The server API publishes there too, with no offset in its answer.
    let apikey = format!("apikey {API_KEY}");
    let (status, body) = api_call(
        node(0).api.unwrap(),
        Some(&apikey),
        "publish",
        r#"{"channel":"typing:room","data":"from the backend"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    for w in &mut watchers {
        assert_eq!(
            receive(w, "typing:room", 1).await[0]["data"],
            "from the backend"
        );
    }

    // announce: clients may not publish (WebSocket nor HTTP), the server API may.
    let mut reader = user(node(2), "reader").await;
    reader.subscribe("announce:all").await;
    let refused = typist
        .request(json!({"type":"publish","channel":"announce:all","data":"hi"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden");
    assert!(
        refused["message"].as_str().unwrap().contains("server API"),
        "{refused}"
    );
    let (status, body) = http_publish(
        node(0),
        r#"{"channel":"announce:all","data":"hi"}"#,
        Some(&token(SECRET, json!({"sub":"ann","exp":now_secs()+60}))),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = api_call(
        node(1).api.unwrap(),
        Some(&apikey),
        "publish",
        r#"{"channel":"announce:all","data":"maintenance at 5"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let offset = body["offset"].as_str().expect("history on: an offset");
    let got = receive(&mut reader, "announce:all", 1).await;
    assert_eq!(got[0]["data"], "maintenance at 5");
    assert_eq!(got[0]["offset"], offset);
    // Other namespaces still take client publishes.
    typist.publish("chat:room", json!("still fine")).await;

    // members: a user may subscribe and read presence; an anonymous client may not.
    let mut member = user(node(0), "bob").await;
    member.subscribe("members:club").await;
    let mut stranger = anonymous(node(1)).await;
    for frame in [
        json!({"type":"subscribe","channel":"members:club"}),
        json!({"type":"history","channel":"members:club"}),
        json!({"type":"presence","channel":"members:club"}),
    ] {
        let answer = stranger.request(frame.clone()).await;
        assert_eq!(answer["code"], "forbidden", "{frame} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("needs a user"),
            "{answer}"
        );
    }
    let sse = reqwest::Client::new()
        .get(node(1).http("/sse?channel=members:club"))
        .bearer_auth(token(SECRET, json!({"exp":now_secs()+60})))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 403);
    // ...while other namespaces take anonymous subscribers, and presence is on for members.
    stranger.subscribe("chat:room").await;
    let presence = member
        .request(json!({"type":"presence_stats","channel":"members:club"}))
        .await;
    assert_eq!(presence["type"], "presence_stats", "{presence}");
    let presence = member
        .request(json!({"type":"presence_stats","channel":"chat:room"}))
        .await;
    assert_eq!(presence["code"], "not_available", "{presence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_three_nodes_typing_writes_nothing_and_rights_hold() {
    let redis = RedisServer::start().await;
    let files = files(FILE);
    let nodes = nodes(Some(&redis), &files, 3).await;
    redis.command(&["CONFIG", "RESETSTAT"]).await.unwrap();
    namespace_options(&nodes).await;

    // Nothing of the typing namespace reached Redis's keyspace, and no XADD ran for it: the
    // only streams written are those of `announce:all` and `chat:room`.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = |pattern: &'static str| {
        let mut conn = conn.clone();
        async move {
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    assert_eq!(keys("*typing*").await, Vec::<String>::new());
    assert_eq!(
        keys("chatnode:history:*").await,
        [
            "chatnode:history:{announce:all}",
            "chatnode:history:{chat:room}"
        ]
    );
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let xadds = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_xadd:"))
        .expect("the two publishes with history ran XADD");
    assert!(xadds.starts_with("cmdstat_xadd:calls=2,"), "{xadds}");

    // The history overrides: `short` expires after 1h, the defaults after 24h (the flag).
    let mut c = user(&nodes[0], "ann").await;
    c.publish("short:a", json!(1)).await;
    c.publish("news:a", json!(1)).await;
    let short: i64 = redis::cmd("PTTL")
        .arg("chatnode:history:{short:a}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((3_500_000..=3_600_000).contains(&short), "{short}");
    let news: i64 = redis::cmd("PTTL")
        .arg("chatnode:history:{news:a}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(news > 23 * 3_600_000, "{news}");
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_broker_keeps_no_typing_history_and_honours_the_size() {
    let files = files(FILE);
    let nodes = nodes(None, &files, 1).await;
    namespace_options(&nodes).await;
    let node = &nodes[0];
    // Only the two channels published to with history are kept: typing never entered it.
    let metrics = node.metrics().await;
    assert_eq!(
        common::metric_value(&metrics, "chat_history_channels"),
        Some(2.0),
        "announce:all and chat:room"
    );
    // `short` keeps 3 messages (the embedded broker trims exactly).
    let mut c = user(node, "ann").await;
    for i in 0..6 {
        c.publish("short:a", json!(i)).await;
    }
    let page = c
        .request(json!({"type":"history","channel":"short:a","limit":50}))
        .await;
    let data: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, [&json!(3), &json!(4), &json!(5)], "{page}");
    for node in nodes {
        node.shutdown().await;
    }
}

/// Starts a node with `args`; returns its start-up error's full text.
async fn start_error(args: &[&str]) -> String {
    let config = chat_node::Config::from_args(args.iter().copied()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = chat_node::run(listener, admin, config, std::future::pending())
        .await
        .expect_err("refused at start");
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[tokio::test]
async fn unusable_files_and_contradicting_flags_stop_the_node_with_a_clear_error() {
    let bad = files(r#"{"namespaces": [{"name": "typing", "histroy": {}}]}"#);
    let e = start_error(&["--namespaces-file", &bad.namespaces]).await;
    assert!(
        e.contains("namespaces file") && e.contains("histroy"),
        "{e}"
    );
    let dup = files(r#"{"namespaces": [{"name": "a"}, {"name": "a"}]}"#);
    let e = start_error(&["--namespaces-file", &dup.namespaces]).await;
    assert!(e.contains("`a` is listed twice"), "{e}");
    let e = start_error(&["--namespaces-file", "/nonexistent/namespaces.json"]).await;
    assert!(
        e.contains("failed to read the namespaces file /nonexistent"),
        "{e}"
    );
    // Inline JSON (what the operator renders) is checked the same way, and not with a file.
    let e = start_error(&["--namespaces", r#"{"namespaces": [{"name": "x:y"}]}"#]).await;
    assert!(
        e.contains("--namespaces (CHAT_NAMESPACES) is not valid"),
        "{e}"
    );
    let e = start_error(&["--namespaces", "{}", "--namespaces-file", &dup.namespaces]).await;
    assert!(e.contains("not both"), "{e}");
    let off = files(r#"{"namespaces": [{"name": "chat", "presence": false}]}"#);
    let e = start_error(&[
        "--namespaces-file",
        &off.namespaces,
        "--presence-namespaces",
        "chat",
    ])
    .await;
    assert!(
        e.contains("--presence-namespaces") && e.contains("`chat`"),
        "{e}"
    );
}
