//! One connection's pipelined publishes reach every subscriber, on every node, in the order it
//! sent them, also while Redis loses its script cache (`SCRIPT FLUSH`, a restart).
//!
//! The publisher streams its frames from its own task on a multi-thread runtime, so they reach
//! the node spread over time, as from a real client: a publish read after the node reloaded a
//! flushed script must not overtake earlier ones still being retried.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Client, Node, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;
use tokio_tungstenite::tungstenite::Message;

const CHANNEL: &str = "chat:order";

/// Two nodes on `redis`: the publisher's and a watcher's.
async fn two_nodes(redis: &RedisServer) -> [Node; 2] {
    let mut nodes = Vec::new();
    for id in ["n0", "n1"] {
        let node = Node::start(&[
            "--redis-url",
            &redis.url(),
            "--node-id",
            id,
            "--max-publish-rate",
            "0",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes.try_into().ok().unwrap()
}

/// Subscribes a publisher on the first node and a watcher on the second.
async fn subscribed_pair(nodes: &[Node; 2]) -> (Client, Client) {
    let mut publisher = nodes[0].connect().await;
    publisher.subscribe(CHANNEL).await;
    let mut watcher = nodes[1].connect().await;
    watcher.subscribe(CHANNEL).await;
    (publisher, watcher)
}

/// Offsets `<ms>-<seq>` as comparable pairs.
fn parse(offset: &str) -> (u64, u64) {
    let (ms, seq) = offset.split_once('-').expect("an offset");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Streams `count` publishes (`data` = their index) from its own task while reading the
/// publisher's frames; returns the publisher (reassembled) with its acks' offsets in order and
/// its own messages as `(index, offset)` in arrival order.
async fn stream_publishes(
    publisher: Client,
    count: usize,
) -> (Client, Vec<String>, Vec<(u64, String)>) {
    let Client { ws, welcome, .. } = publisher;
    let (mut sink, mut stream) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..count {
            let frame = json!({"type":"publish","channel":CHANNEL,"data":i,"ref":i.to_string()});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        sink
    });
    let (mut acks, mut own) = (Vec::new(), Vec::new());
    while acks.len() < count || own.len() < count {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("frame ok");
        let Message::Text(text) = next else { continue };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("ack") => {
                assert_eq!(
                    frame["ref"],
                    acks.len().to_string(),
                    "acks in request order"
                );
                acks.push(frame["offset"].as_str().unwrap().to_owned());
            }
            Some("message") => own.push((
                frame["data"].as_u64().unwrap(),
                frame["offset"].as_str().unwrap().to_owned(),
            )),
            _ => panic!("unexpected frame {frame}"),
        }
    }
    let sink = writer.await.unwrap();
    let ws = sink.reunite(stream).unwrap();
    let publisher = Client::from_parts(ws, welcome);
    (publisher, acks, own)
}

/// Every subscriber got message `i` at the offset acked for publish `i`, in sending order.
fn assert_sent_order(who: &str, acks: &[String], got: &[(u64, String)]) {
    for (i, w) in acks.windows(2).enumerate() {
        assert!(
            parse(&w[0]) < parse(&w[1]),
            "{who}: publish {i} got offset {}, publish {} an older one, {}",
            w[0],
            i + 1,
            w[1]
        );
    }
    let indexes: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    let sent: Vec<u64> = (0..acks.len() as u64).collect();
    assert_eq!(
        indexes, sent,
        "{who} receives the publishes in sending order"
    );
    let offsets: Vec<&String> = got.iter().map(|(_, o)| o).collect();
    assert_eq!(
        offsets,
        acks.iter().collect::<Vec<_>>(),
        "{who} sees each at its acked offset"
    );
}

async fn watched(watcher: &mut Client, count: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let m = watcher.recv_type("message").await;
        got.push((
            m["data"].as_u64().unwrap(),
            m["offset"].as_str().unwrap().to_owned(),
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order_while_scripts_are_flushed() {
    const COUNT: usize = 2000;
    let redis = Arc::new(RedisServer::start().await);
    let nodes = two_nodes(&redis).await;
    let (publisher, mut watcher) = subscribed_pair(&nodes).await;
    // Flushes the script cache every few milliseconds while the publisher streams.
    let done = Arc::new(AtomicBool::new(false));
    let flusher = tokio::spawn({
        let (redis, done) = (redis.clone(), done.clone());
        async move {
            let mut flushes = 0u32;
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            while !done.load(Ordering::Acquire) {
                tick.tick().await;
                redis.command(&["SCRIPT", "FLUSH"]).await.unwrap();
                flushes += 1;
            }
            flushes
        }
    });
    let (_publisher, acks, own) = stream_publishes(publisher, COUNT).await;
    done.store(true, Ordering::Release);
    let flushes = flusher.await.unwrap();
    assert!(
        flushes >= 3,
        "the cache was flushed while publishing ({flushes})"
    );
    assert_sent_order("the publisher", &acks, &own);
    assert_sent_order(
        "the other node's watcher",
        &acks,
        &watched(&mut watcher, COUNT).await,
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_keep_their_order_after_redis_restarts() {
    const COUNT: usize = 64;
    let mut redis = RedisServer::start().await;
    let nodes = two_nodes(&redis).await;
    let (mut publisher, mut watcher) = subscribed_pair(&nodes).await;
    for round in 1..=6 {
        redis.restart().await;
        for node in &nodes {
            node.wait_metric("chat_redis_reconnects_total", f64::from(round))
                .await;
            node.wait_ready(200).await;
        }
        let (back, acks, own) = stream_publishes(publisher, COUNT).await;
        publisher = back;
        assert_sent_order(&format!("round {round}: the publisher"), &acks, &own);
        assert_sent_order(
            &format!("round {round}: the other node's watcher"),
            &acks,
            &watched(&mut watcher, COUNT).await,
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
