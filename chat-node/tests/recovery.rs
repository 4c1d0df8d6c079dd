//! Recovery with `since` when history was trimmed, on both brokers: an offset older than the
//! oldest message kept answers `"recovered":0,"gap":true`; the offset just before the oldest
//! kept one loses nothing and recovers everything kept (no false gap).

mod common;

use common::{Client, Node};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;

const CHANNEL: &str = "chat:trimmed";
const PUBLISHES: usize = 300;

/// Subscribes a fresh client with `since` and returns its `subscribed` frame.
async fn subscribe_since(node: &Node, since: &str) -> (Client, Value) {
    let mut client = node.connect().await;
    client
        .send(json!({"type":"subscribe","channel":CHANNEL,"since":since}))
        .await;
    let sub = client.recv_type("subscribed").await;
    (client, sub)
}

/// Publishes [`PUBLISHES`] messages and returns their offsets.
async fn publish_many(node: &Node) -> Vec<String> {
    let mut publisher = node.connect().await;
    let mut offsets = Vec::with_capacity(PUBLISHES);
    for i in 0..PUBLISHES {
        offsets.push(publisher.publish(CHANNEL, json!(i)).await);
    }
    offsets
}

/// `oldest_kept` is the index (in `offsets`) of the oldest message the broker still keeps.
async fn assert_gaps(node: &Node, offsets: &[String], oldest_kept: usize) {
    assert!(oldest_kept >= 2, "history was trimmed ({oldest_kept})");
    for since in [&offsets[0], &offsets[oldest_kept - 2], "0-0"] {
        let (_, sub) = subscribe_since(node, since).await;
        assert_eq!(
            (&sub["recovered"], &sub["gap"]),
            (&json!(0), &json!(true)),
            "since {since} (oldest kept: {}): {sub}",
            offsets[oldest_kept]
        );
    }
    // Nothing after the message just before the oldest kept one was lost.
    let (mut client, sub) = subscribe_since(node, &offsets[oldest_kept - 1]).await;
    assert_eq!(sub["recovered"], PUBLISHES - oldest_kept, "{sub}");
    assert!(sub.get("gap").is_none(), "{sub}");
    assert_eq!(
        client.recv_offsets(PUBLISHES - oldest_kept).await,
        offsets[oldest_kept..]
    );
}

#[tokio::test]
async fn redis_since_before_the_trimmed_history_is_a_gap() {
    let redis = RedisServer::start().await;
    let node = Node::start(&[
        "--redis-url",
        &redis.url(),
        "--history-size",
        "5",
        "--max-publish-rate",
        "0",
    ])
    .await;
    node.wait_ready(200).await;
    let offsets = publish_many(&node).await;
    // `MAXLEN ~` trims whole stream nodes: ask Redis what it kept.
    let key = format!("chatnode:history:{{{CHANNEL}}}");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
    let first: Entries = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let oldest_kept = offsets
        .iter()
        .position(|o| *o == first[0].0)
        .expect("the oldest kept entry is one of ours");
    assert_gaps(&node, &offsets, oldest_kept).await;
    node.shutdown().await;
}

#[tokio::test]
async fn memory_since_before_the_trimmed_history_is_a_gap() {
    let node = Node::start(&["--history-size", "5", "--max-publish-rate", "0"]).await;
    let offsets = publish_many(&node).await;
    assert_gaps(&node, &offsets, PUBLISHES - 5).await;
    node.shutdown().await;
}
