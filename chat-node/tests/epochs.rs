//! Epochs, through real WebSocket and SSE clients: one epoch per channel history, the same on
//! every node; a history that is lost (FLUSHALL, a Redis restart without persistence, its
//! stream evicted, an embedded broker restart) comes back under a new epoch, and a `since`
//! sent with the old epoch answers `"recovered":0,"gap":true`, even once the new history's
//! offsets have passed it. Without an epoch, a `since` past the newest offset is a gap too.

mod common;

use common::{Client, Node};
use futures_util::StreamExt;
use serde_json::{Value, json};
use test_harness::redis::RedisServer;

const CHANNEL: &str = "chat:epochs";

async fn redis_nodes(redis: &RedisServer, history_ttl: &str) -> Vec<Node> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let node = Node::start(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--history-ttl",
            history_ttl,
            "--max-publish-rate",
            "0",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Subscribes a fresh client with `since` (and `epoch` when given); returns it and `subscribed`.
async fn resume(node: &Node, since: &str, epoch: Option<&str>) -> (Client, Value) {
    let mut client = node.connect().await;
    let mut frame = json!({"type":"subscribe","channel":CHANNEL,"since":since});
    if let Some(epoch) = epoch {
        frame["epoch"] = json!(epoch);
    }
    client.send(frame).await;
    let sub = client.recv_type("subscribed").await;
    (client, sub)
}

fn epoch_of(sub: &Value) -> String {
    let epoch = sub["epoch"].as_str().expect("subscribed carries an epoch");
    assert!(!epoch.is_empty(), "{sub}");
    epoch.to_owned()
}

fn assert_gap(sub: &Value, why: &str) {
    assert_eq!(
        (&sub["recovered"], &sub["gap"]),
        (&json!(0), &json!(true)),
        "{why}: {sub}"
    );
}

async fn publish_n(client: &mut Client, n: usize) -> Vec<String> {
    let mut offsets = Vec::with_capacity(n);
    for i in 0..n {
        offsets.push(client.publish(CHANNEL, json!(i)).await);
    }
    offsets
}

#[tokio::test]
async fn redis_epoch_is_shared_by_nodes_and_changes_when_the_stream_is_lost() {
    let mut redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, "1h").await;
    // A subscriber of a channel without messages learns the epoch its messages will carry.
    let mut first = nodes[0].connect().await;
    let epoch = epoch_of(&first.subscribe(CHANNEL).await);
    let offsets = publish_n(&mut first, 5).await;
    for node in &nodes {
        let (mut client, sub) = resume(node, &offsets[1], Some(&epoch)).await;
        assert_eq!(epoch_of(&sub), epoch, "one epoch on every node");
        assert_eq!(sub["recovered"], 3, "{sub}");
        assert!(sub.get("gap").is_none(), "{sub}");
        assert_eq!(client.recv_offsets(3).await, offsets[2..]);
    }
    // The meta hash holding the epoch expires with the stream.
    let mut conn = redis_conn(&redis).await;
    let stored: String = redis::cmd("HGET")
        .arg(format!("chatnode:meta:{{{CHANNEL}}}"))
        .arg("epoch")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, epoch);
    for key in ["chatnode:meta:{", "chatnode:history:{"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{key}{CHANNEL}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{key}: {ttl}");
    }

    // FLUSHALL: the stream is gone. With the old epoch, and without any (the offset is past
    // the newest one, 0-0), the resume is a gap; the epoch is new.
    redis.command(&["FLUSHALL"]).await.unwrap();
    let last = offsets.last().unwrap();
    let (_, sub) = resume(&nodes[1], last, Some(&epoch)).await;
    assert_gap(&sub, "old epoch after FLUSHALL");
    let flushed = epoch_of(&sub);
    assert_ne!(flushed, epoch);
    let (_, sub) = resume(&nodes[2], last, None).await;
    assert_gap(
        &sub,
        "no epoch, since past the newest offset after FLUSHALL",
    );
    assert_eq!(epoch_of(&sub), flushed, "the new epoch is shared too");

    // The new history passes the old offsets: only the epoch still tells them apart.
    let fresh = publish_n(&mut first, 3).await;
    assert!(fresh[0] > *last, "new offsets passed the old ones");
    let (_, sub) = resume(&nodes[0], last, Some(&epoch)).await;
    assert_gap(&sub, "old epoch, new history past its offset");
    let (mut client, sub) = resume(&nodes[1], &fresh[0], Some(&flushed)).await;
    assert_eq!(
        (&sub["recovered"], sub.get("gap")),
        (&json!(2), None),
        "{sub}"
    );
    assert_eq!(client.recv_offsets(2).await, fresh[1..]);

    // A restart without persistence loses the stream as well.
    redis.kill();
    // Meanwhile history and `last` are unavailable, on the WebSocket and over HTTP.
    nodes[0].wait_ready(503).await;
    assert_eq!(
        first
            .expect_error(json!({"type":"history","channel":CHANNEL}))
            .await,
        "unavailable"
    );
    assert_eq!(
        first
            .expect_error(json!({"type":"subscribe","channel":"other","last":5}))
            .await,
        "unavailable"
    );
    let response = reqwest::get(nodes[0].http(&format!("/api/history?channel={CHANNEL}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    redis.restart().await;
    for node in &nodes {
        node.wait_ready(200).await;
    }
    let (_, sub) = resume(&nodes[2], fresh.last().unwrap(), Some(&flushed)).await;
    assert_gap(&sub, "old epoch after a Redis restart");
    let restarted = epoch_of(&sub);
    assert_ne!(restarted, flushed);
    // `client` stayed subscribed through the restart: it receives the new history's messages
    // without learning its epoch. Resuming from one of them with its stale epoch is no gap:
    // the offset is a message the current history holds.
    let after = publish_n(&mut first, 3).await;
    assert_eq!(client.recv_offsets(3).await, after);
    let (mut again, sub) = resume(&nodes[2], &after[1], Some(&flushed)).await;
    assert_eq!(
        (&sub["recovered"], sub.get("gap"), &sub["epoch"]),
        (&json!(1), None, &json!(restarted)),
        "{sub}"
    );
    assert_eq!(again.recv_offsets(1).await, after[2..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A stream evicted on its own (`maxmemory` with an eviction policy) leaves its meta hash
/// behind: the next publish starts a new epoch instead of continuing the old one's offsets.
#[tokio::test]
async fn redis_stream_lost_without_its_meta_gets_a_new_epoch() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, "1h").await;
    let mut publisher = nodes[0].connect().await;
    let offsets = publish_n(&mut publisher, 3).await;
    let (_, sub) = resume(&nodes[1], &offsets[0], None).await;
    let epoch = epoch_of(&sub);
    assert_eq!(sub["recovered"], 2);
    let mut conn = redis_conn(&redis).await;
    let _: i64 = redis::cmd("DEL")
        .arg(format!("chatnode:history:{{{CHANNEL}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let after = publish_n(&mut publisher, 2).await;
    let (_, sub) = resume(&nodes[2], &offsets[2], Some(&epoch)).await;
    assert_gap(&sub, "old epoch after the stream alone was lost");
    let new_epoch = epoch_of(&sub);
    assert_ne!(new_epoch, epoch);
    // The new stream starts afresh: its first entry follows `0-0`, nothing of it is lost.
    let (mut client, sub) = resume(&nodes[0], "0-0", Some(&new_epoch)).await;
    assert_eq!(
        (&sub["recovered"], sub.get("gap")),
        (&json!(2), None),
        "{sub}"
    );
    assert_eq!(client.recv_offsets(2).await, after);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A subscribe to a channel without messages creates its epoch, and a meta hash that expires
/// (it never outlives `history-ttl`).
#[tokio::test]
async fn redis_epoch_made_by_a_subscriber_expires() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, "30s").await;
    let mut client = nodes[0].connect().await;
    let epoch = epoch_of(&client.subscribe("quiet").await);
    let mut conn = redis_conn(&redis).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg("chatnode:meta:{quiet}")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "{ttl}");
    let mut other = nodes[1].connect().await;
    assert_eq!(epoch_of(&other.subscribe("quiet").await), epoch);
    // The first message keeps the epoch the subscribers were told.
    let offset = other.publish("quiet", json!("first")).await;
    let mut late = nodes[2].connect().await;
    late.send(json!({"type":"subscribe","channel":"quiet","since":"0-0","epoch":epoch}))
        .await;
    let sub = late.recv_type("subscribed").await;
    assert_eq!((&sub["recovered"], sub.get("gap")), (&json!(1), None));
    assert_eq!(late.recv_offsets(1).await, [offset]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// Reads SSE `subscribed` events until one per channel arrived; returns their data.
async fn sse_subscribed(response: reqwest::Response, count: usize) -> Vec<Value> {
    let mut stream = response.bytes_stream();
    let (mut buffer, mut found) = (String::new(), Vec::new());
    while found.len() < count {
        let chunk = tokio::time::timeout(common::WAIT, stream.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.lines().any(|l| l.trim() == "event: subscribed") {
                assert!(!block.contains("\nid:"), "no id on `subscribed`: {block}");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .expect("data");
                found.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    found
}

/// The embedded broker: one epoch per process, so a restart changes it; SSE too.
#[tokio::test]
async fn memory_epoch_changes_with_the_process() {
    let node = Node::start(&["--max-publish-rate", "0"]).await;
    let mut publisher = node.connect().await;
    let epoch = epoch_of(&publisher.subscribe(CHANNEL).await);
    let offsets = publish_n(&mut publisher, 4).await;
    let (_, sub) = resume(&node, &offsets[1], Some(&epoch)).await;
    assert_eq!((&sub["recovered"], sub.get("gap")), (&json!(2), None));
    assert_eq!(epoch_of(&publisher.subscribe("other").await), epoch);
    let sse = reqwest::get(node.http(&format!(
        "/sse?channel={CHANNEL}&since={}&epoch={epoch}",
        offsets[2]
    )))
    .await
    .unwrap();
    let subs = sse_subscribed(sse, 1).await;
    assert_eq!(subs[0]["type"], "subscribed");
    assert_eq!(subs[0]["epoch"], epoch.as_str());
    assert_eq!(
        (&subs[0]["recovered"], subs[0].get("gap")),
        (&json!(1), None)
    );
    drop(publisher);
    node.shutdown().await;

    // A new process: the same channel has a new epoch, and the offsets of the old one are gaps
    // (with the epoch, and without it while they are past the newest offset).
    let node = Node::start(&["--max-publish-rate", "0"]).await;
    let last = offsets.last().unwrap();
    let (_, sub) = resume(&node, last, None).await;
    assert_gap(&sub, "no epoch, since from an earlier process");
    let restarted = epoch_of(&sub);
    assert_ne!(restarted, epoch);
    let mut publisher = node.connect().await;
    let fresh = publish_n(&mut publisher, 2).await;
    assert!(fresh[0] > *last);
    let (_, sub) = resume(&node, &offsets[0], Some(&epoch)).await;
    assert_gap(&sub, "old epoch, new history past its offset");
    let sse = reqwest::Client::new()
        .get(node.http(&format!(
            "/sse?channel={CHANNEL}&channel=other&epoch={epoch}"
        )))
        .header("last-event-id", &offsets[0])
        .send()
        .await
        .unwrap();
    let mut subs = sse_subscribed(sse, 2).await;
    subs.sort_by_key(|s| s["channel"].as_str().unwrap().to_owned());
    for sub in &subs {
        assert_gap(sub, "SSE with the old epoch");
        assert_eq!(sub["epoch"], restarted.as_str());
    }
    let (mut client, sub) = resume(&node, &fresh[0], Some(&restarted)).await;
    assert_eq!((&sub["recovered"], sub.get("gap")), (&json!(1), None));
    assert_eq!(client.recv_offsets(1).await, fresh[1..]);
    // An epoch too long to be one is refused.
    let mut bad = node.connect().await;
    let long = "e".repeat(65);
    assert_eq!(
        bad.expect_error(json!({"type":"subscribe","channel":CHANNEL,"since":"0-0","epoch":long}))
            .await,
        "bad_request"
    );
    node.shutdown().await;
}
