//! Three nodes sharing one real redis-server: cross-node fan-out, recovery with `since`,
//! Redis kill-and-restart with gap fill (no client reconnects), `unavailable` while Redis is
//! down, `internal` on a Redis error, and a node that starts while Redis is down.

mod common;

use common::{Client, Node, http_publish, metric_value};
use serde_json::json;
use test_harness::redis::RedisServer;

async fn three_nodes(redis: &RedisServer) -> Vec<Node> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let node = Node::start(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--history-size",
            "100",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test]
async fn fan_out_across_nodes_with_shared_offsets() {
    let redis = RedisServer::start().await;
    let nodes = three_nodes(&redis).await;
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        c.subscribe("chat:lobby").await;
        clients.push(c);
    }
    let mut offsets = Vec::new();
    for (i, round) in (0..3).zip(0..) {
        let offset = clients[i].publish("chat:lobby", json!({"n": round})).await;
        offsets.push(offset);
    }
    for c in &mut clients {
        for (round, offset) in offsets.iter().enumerate() {
            let m = c.recv_type("message").await;
            assert_eq!(
                m["offset"],
                offset.as_str(),
                "same offsets, same order on every node"
            );
            assert_eq!(m["data"]["n"], round);
        }
    }
    // HTTP publish on n2 reaches n0.
    let (status, body) = http_publish(
        &nodes[2],
        r#"{"channel":"chat:lobby","data":"via-http"}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        clients[0].recv_type("message").await["offset"],
        body["offset"]
    );
    // Unsubscribing the only subscriber on n1 stops its Redis subscription but not others'.
    clients[1]
        .send(json!({"type":"unsubscribe","channel":"chat:lobby"}))
        .await;
    clients[1].recv_type("unsubscribed").await;
    let o = clients[2].publish("chat:lobby", json!("after-unsub")).await;
    assert_eq!(clients[0].recv_type("message").await["offset"], o.as_str());
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn since_recovers_across_nodes_without_loss_or_duplicates() {
    let redis = RedisServer::start().await;
    let nodes = three_nodes(&redis).await;
    let mut publisher = nodes[0].connect().await;
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(publisher.publish("room:9", json!(i)).await);
    }
    // A client reconnecting to another node with the 4th offset gets 5..9, then live.
    let mut late = nodes[1].connect().await;
    late.send(json!({"type":"subscribe","channel":"room:9","since":offsets[4]}))
        .await;
    let sub = late.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], 5);
    assert_eq!(sub["offset"], offsets[9].as_str());
    // Publishing concurrently with the recovery: still in order, none twice.
    let extra = publisher.publish("room:9", json!("live")).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&extra) {
        seen.push(
            late.recv_type("message").await["offset"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut expected: Vec<String> = offsets[5..].to_vec();
    expected.push(extra);
    assert_eq!(seen, expected);
    // A fresh channel: recovered 0.
    let mut fresh = nodes[2].connect().await;
    fresh
        .send(json!({"type":"subscribe","channel":"empty","since":"1-0"}))
        .await;
    assert_eq!(fresh.recv_type("subscribed").await["recovered"], 0);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn redis_kill_and_restart_is_survived_with_gap_fill() {
    let mut redis = RedisServer::start().await;
    let nodes = three_nodes(&redis).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        c.subscribe("chat:ops").await;
        subscribers.push(c);
    }
    let before = subscribers[0].publish("chat:ops", json!("before")).await;
    for c in &mut subscribers {
        assert_eq!(c.recv_type("message").await["offset"], before.as_str());
    }

    redis.kill();
    for node in &nodes {
        node.wait_ready(503).await;
        node.wait_metric("chat_redis_up", 0.0).await;
        assert_eq!(
            metric_value(&node.metrics().await, "chat_redis_up"),
            Some(0.0)
        );
    }
    // Publishing while Redis is down: `unavailable` (WebSocket) and 503 (HTTP).
    assert_eq!(
        subscribers[1]
            .expect_error(json!({"type":"publish","channel":"chat:ops","data":"lost"}))
            .await,
        "unavailable"
    );
    let (status, err) = http_publish(&nodes[2], r#"{"channel":"chat:ops","data":1}"#, None).await;
    assert_eq!((status, err["code"].as_str()), (503, Some("unavailable")));
    assert_eq!(
        subscribers[2]
            .expect_error(json!({"type":"subscribe","channel":"new"}))
            .await,
        "unavailable"
    );
    assert_eq!(nodes[0].healthz().await, 200);

    redis.restart().await;
    // As soon as the first node is back, publish a burst through it: nodes that reconnect
    // later fill the gap from the stream, nodes already back get them live.
    nodes[0].wait_ready(200).await;
    let mut after = Vec::new();
    for i in 0..20 {
        after.push(subscribers[0].publish("chat:ops", json!(i)).await);
    }
    for (n, c) in subscribers.iter_mut().enumerate() {
        let got = c.recv_offsets(after.len()).await;
        assert_eq!(
            got, after,
            "node {n}: every message once, in order, same connection"
        );
    }
    for node in &nodes {
        node.wait_ready(200).await;
        node.wait_metric("chat_redis_reconnects_total", 1.0).await;
        node.wait_metric("chat_redis_up", 1.0).await;
    }
    // The same connections keep working both ways.
    let last = subscribers[2].publish("chat:ops", json!("end")).await;
    assert_eq!(
        subscribers[1].recv_type("message").await["offset"],
        last.as_str()
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn node_starts_while_redis_is_down_and_errors_map_to_codes() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    redis.stop();
    let node = Node::start(&["--redis-url", &url]).await;
    assert_eq!(node.healthz().await, 200);
    node.wait_ready(503).await;
    let body = reqwest::get(node.admin_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("redis"), "{body}");
    redis.restart().await;
    node.wait_ready(200).await;

    // A Redis-side failure that is not an outage: `internal`, connection stays open.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("chatnode:history:{broken}")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut c = node.connect().await;
    assert_eq!(
        c.expect_error(json!({"type":"publish","channel":"broken","data":1}))
            .await,
        "internal"
    );
    assert_eq!(
        c.expect_error(json!({"type":"subscribe","channel":"broken","since":"1-0"}))
            .await,
        "internal"
    );
    c.subscribe("fine").await;
    let (status, err) = http_publish(&node, r#"{"channel":"broken","data":1}"#, None).await;
    assert_eq!((status, err["code"].as_str()), (500, Some("internal")));

    // History lives in a stream with a TTL; the live feed is a Pub/Sub channel.
    c.publish("fine", json!(1)).await;
    let kind: String = redis::cmd("TYPE")
        .arg("chatnode:history:{fine}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "stream");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("chatnode:history:{fine}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0);
    let subs: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("chatnode:live:{fine}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(subs[0].1, 1);
    drop(Client::connect(&node.ws_url(), &[]).await.unwrap());
    node.shutdown().await;
}

/// Subscribers of `key` as Redis counts them (PUBSUB NUMSUB).
async fn numsub(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    counts[0].1
}

/// Polls `check` every 20 ms until it holds; panics after `common::WAIT`.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Issue 12, item 8: a node holds one Redis subscription per channel however many of its
/// clients subscribe (PUBSUB NUMSUB counts nodes, not clients), keeps it while any local
/// subscriber remains (unsubscribes and disconnects of the others included: messages still
/// arrive through it), drops it when the last one leaves (NUMSUB goes to 0 for that node), and
/// takes it again for a new subscriber.
#[tokio::test]
async fn redis_subscriptions_are_ref_counted_per_node() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1"] {
        let node = Node::start(&["--redis-url", &url, "--node-id", id]).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = "chatnode:live:{chat:rc}";
    assert_eq!(numsub(&mut conn, key).await, 0);

    // Three clients on n0: one Redis subscription.
    let mut a = nodes[0].connect().await;
    a.subscribe("chat:rc").await;
    assert_eq!(numsub(&mut conn, key).await, 1);
    let mut b = nodes[0].connect().await;
    b.subscribe("chat:rc").await;
    let mut c = nodes[0].connect().await;
    c.subscribe("chat:rc").await;
    assert_eq!(
        numsub(&mut conn, key).await,
        1,
        "one per node, not per client"
    );
    // A client on n1: n1's own.
    let mut d = nodes[1].connect().await;
    d.subscribe("chat:rc").await;
    assert_eq!(numsub(&mut conn, key).await, 2);

    // `a` unsubscribes: n0 keeps its subscription (a message from n1 reaches b and c).
    a.send(json!({"type":"unsubscribe","channel":"chat:rc"}))
        .await;
    a.recv_type("unsubscribed").await;
    let o = d.publish("chat:rc", json!("after a left")).await;
    for client in [&mut b, &mut c] {
        assert_eq!(client.recv_type("message").await["offset"], o.as_str());
    }
    assert_eq!(numsub(&mut conn, key).await, 2);

    // `b` disconnects: still kept for `c`.
    drop(b);
    until("n0 counts two connections", || async {
        metric_value(&nodes[0].metrics().await, "websocket_active_connections") == Some(2.0)
    })
    .await;
    let o = d.publish("chat:rc", json!("after b left")).await;
    assert_eq!(c.recv_type("message").await["offset"], o.as_str());
    assert_eq!(numsub(&mut conn, key).await, 2);

    // The last local subscriber leaves: n0's subscription goes, n1's stays.
    c.send(json!({"type":"unsubscribe","channel":"chat:rc"}))
        .await;
    c.recv_type("unsubscribed").await;
    until("n0 unsubscribed from Redis", || async {
        numsub(&mut conn.clone(), key).await == 1
    })
    .await;

    // A new subscriber on n0 takes it again, and gets messages through it.
    a.subscribe("chat:rc").await;
    assert_eq!(numsub(&mut conn, key).await, 2);
    let o = d.publish("chat:rc", json!("a is back")).await;
    assert_eq!(a.recv_type("message").await["offset"], o.as_str());

    // Every subscriber leaves, one by disconnecting: 0.
    drop(d);
    a.send(json!({"type":"unsubscribe","channel":"chat:rc"}))
        .await;
    a.recv_type("unsubscribed").await;
    until("no node subscribed", || async {
        numsub(&mut conn.clone(), key).await == 0
    })
    .await;
    drop((a, c));
    for node in nodes {
        node.shutdown().await;
    }
}
