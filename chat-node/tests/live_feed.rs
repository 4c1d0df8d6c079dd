//! The live feed from Redis (issue 11, item 8, second half): a slow `SUBSCRIBE` must not reset
//! the other channels, and a resync after a real loss resubscribes in batches. Each test runs
//! a node on port 0 against a real redis-server from the harness.

mod common;

use std::time::{Duration, Instant};

use common::stall::SubscribeStall;
use common::{Client, Node, metric_value};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;
use tokio_tungstenite::tungstenite::Message;

const BUSY: usize = 8;

/// The `calls=` of one command in `INFO commandstats` (0 before its first call).
async fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    let info = redis.command(&["INFO", "commandstats"]).await.unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn subscribers(redis: &RedisServer, channel: &str) -> i64 {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("chatnode:live:{{{channel}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    counts[0].1
}

/// The review's finding: one `SUBSCRIBE` that Redis answered after more than 2 s tore down the
/// session with Redis and resubscribed every channel one by one; meanwhile the busy channels'
/// subscribers got nothing and their publishers got `unavailable`. Here a proxy holds one
/// `SUBSCRIBE` back for 3 s while a publisher keeps 8 other channels busy (a message every
/// 25 ms): the slow subscribe alone fails (`unavailable`, and it works once Redis answers),
/// every other message arrives in order without a pause, and the session is never reset.
#[tokio::test]
async fn a_slow_subscribe_fails_only_its_own_channel() {
    let redis = RedisServer::start().await;
    let stall = SubscribeStall::start(redis.port()).await;
    let node = Node::start(&["--redis-url", &stall.url(), "--max-publish-rate", "0"]).await;
    node.wait_ready(200).await;

    let mut reader = node.connect().await;
    for i in 0..BUSY {
        reader.subscribe(&format!("busy-{i}")).await;
    }
    let mut publisher = node.connect().await;
    let mut slow = node.connect().await;

    // Arrival times of the busy channels' messages, and whether each channel's offsets rise.
    let receiving = tokio::spawn(async move {
        let mut arrivals: Vec<(Instant, String, String)> = Vec::new();
        loop {
            let frame = reader.recv().await;
            match frame["type"].as_str() {
                Some("message") if frame["data"]["last"] == true => return (reader, arrivals),
                Some("message") => arrivals.push((
                    Instant::now(),
                    frame["channel"].as_str().unwrap().to_owned(),
                    frame["offset"].as_str().unwrap().to_owned(),
                )),
                _ => panic!("unexpected frame {frame}"),
            }
        }
    });
    // `chat_redis_up` sampled every 50 ms while the SUBSCRIBE is held.
    let sampling = {
        let url = node.admin_url("/metrics");
        tokio::spawn(async move {
            let mut lowest = f64::MAX;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(3500) {
                let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
                lowest = lowest.min(metric_value(&text, "chat_redis_up").unwrap());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            lowest
        })
    };

    stall.hold();
    let asked = Instant::now();
    slow.send(json!({"type":"subscribe","channel":"slow","ref":"s1"}))
        .await;
    let slow_answer = tokio::spawn(async move {
        let frame = slow.recv().await;
        (slow, frame, asked.elapsed())
    });

    // 3 s of traffic on the busy channels, acks awaited one by one.
    let mut acked = 0usize;
    let mut refused = 0usize;
    let mut n = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let reference = format!("p{n}");
        publisher
            .send(json!({"type":"publish","channel":format!("busy-{}", n % BUSY),"data":{"n":n},"ref":reference}))
            .await;
        let reply = publisher.recv().await;
        assert_eq!(reply["ref"], reference.as_str(), "{reply}");
        match reply["type"].as_str() {
            Some("ack") => acked += 1,
            _ => refused += 1,
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (mut slow, slow_frame, slow_after) = slow_answer.await.unwrap();
    stall.release();
    let lowest_up = sampling.await.unwrap();
    publisher.publish("busy-0", json!({"last": true})).await;
    let (_reader, arrivals) = receiving.await.unwrap();

    let longest_pause = arrivals
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let in_order = (0..BUSY).all(|i| {
        let offsets: Vec<&String> = arrivals
            .iter()
            .filter(|(_, c, _)| *c == format!("busy-{i}"))
            .map(|(_, _, o)| o)
            .collect();
        offsets.windows(2).all(|w| {
            let parse = |o: &str| {
                let (ms, seq) = o.split_once('-').unwrap();
                (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
            };
            parse(w[0]) < parse(w[1])
        })
    });
    let metrics = node.metrics().await;
    let reconnects = metric_value(&metrics, "chat_redis_reconnects_total");
    let timeouts = metric_value(&metrics, "chat_redis_subscribe_timeouts_total");
    println!(
        "slow SUBSCRIBE held 3 s: answer {slow_frame} after {slow_after:?}; {acked} publishes \
         acked, {refused} refused; {} of them received, longest pause {longest_pause:?}; \
         chat_redis_up never below {lowest_up}; reconnects {reconnects:?}, subscribe timeouts \
         {timeouts:?}",
        arrivals.len()
    );
    assert_eq!(slow_frame["type"], "error", "{slow_frame}");
    assert_eq!(slow_frame["code"], "unavailable");
    assert_eq!(slow_frame["ref"], "s1");
    assert!(
        slow_after >= Duration::from_secs(2) && slow_after < Duration::from_secs(3),
        "answered after the 2 s response timeout, while still held: {slow_after:?}"
    );
    assert_eq!(refused, 0, "no publish refused");
    assert!(acked >= 60, "the publisher kept going ({acked})");
    assert_eq!(arrivals.len(), acked, "every acked message arrived");
    assert!(in_order, "each channel's offsets rise");
    assert!(
        longest_pause < Duration::from_millis(1000),
        "the busy channels never paused ({longest_pause:?})"
    );
    assert_eq!(lowest_up, 1.0, "the session with Redis never went down");
    assert_eq!(reconnects, Some(0.0), "the session was never reset");
    assert_eq!(timeouts, Some(1.0), "the one slow request is counted");

    // Once Redis has answered, the channel works and nothing leaked: the late SUBSCRIBE was
    // followed by the UNSUBSCRIBE of the subscriber that gave up.
    slow.subscribe("slow").await;
    publisher.publish("slow", json!({"after": true})).await;
    let frame = slow.recv_type("message").await;
    assert_eq!(frame["data"]["after"], true);
    assert_eq!(subscribers(&redis, "slow").await, 1);
    for i in 0..BUSY {
        assert_eq!(subscribers(&redis, &format!("busy-{i}")).await, 1);
    }
    node.shutdown().await;
}

/// After a real loss of the Pub/Sub connection, the node resubscribes its channels with one
/// `SUBSCRIBE` per 256 channels (it sent one per channel: 600 for 600 channels), and every
/// channel delivers again.
#[tokio::test]
async fn a_resync_resubscribes_in_batches() {
    const CHANNELS: usize = 600;
    let redis = RedisServer::start().await;
    let node = Node::start(&[
        "--redis-url",
        &redis.url(),
        "--max-subscriptions",
        "1000",
        "--max-publish-rate",
        "0",
    ])
    .await;
    node.wait_ready(200).await;
    let mut reader = Client::connect(&node.ws_url(), &[]).await.unwrap();
    // Subscribe to all channels without waiting for each answer.
    for i in 0..CHANNELS {
        reader
            .ws
            .feed(Message::text(
                json!({"type":"subscribe","channel":format!("many-{i}")}).to_string(),
            ))
            .await
            .unwrap();
    }
    reader.ws.flush().await.unwrap();
    let mut subscribed = 0;
    while subscribed < CHANNELS {
        let frame: Value = reader.recv().await;
        assert_eq!(frame["type"], "subscribed", "{frame}");
        subscribed += 1;
    }

    let before = command_calls(&redis, "subscribe").await;
    redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    node.wait_metric("chat_redis_reconnects_total", 1.0).await;
    node.wait_ready(200).await;
    // The kill also takes the server API's control channel (its own Pub/Sub connection), which
    // resubscribes with one SUBSCRIBE of its own; wait for all of them, then check none more.
    let expected = CHANNELS.div_ceil(256) as u64 + 1;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while command_calls(&redis, "subscribe").await - before < expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resubscribes never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let mut publisher = node.connect().await;
    for i in [0, CHANNELS / 2, CHANNELS - 1] {
        publisher
            .publish(&format!("many-{i}"), json!({"i": i}))
            .await;
        let frame = reader.recv_type("message").await;
        assert_eq!(frame["channel"], format!("many-{i}"));
    }
    let resync_calls = command_calls(&redis, "subscribe").await - before;
    println!("resync of {CHANNELS} channels: {resync_calls} SUBSCRIBE commands");
    assert_eq!(
        resync_calls, expected,
        "one SUBSCRIBE per 256 channels, and one for the control channel"
    );
    drop(reader.ws.close(None).await);
    let _ = reader.ws.next().await;
    node.shutdown().await;
}
