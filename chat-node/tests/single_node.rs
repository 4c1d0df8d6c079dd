//! One node with the embedded broker, through a real WebSocket client: protocol v1, every
//! error code a single node can produce, close codes, heartbeat, slow consumer, auth, origins,
//! SSE, HTTP publish, metrics, demo page.

mod common;

use std::time::Duration;

use common::{Client, Node, handshake_status, http_publish, metric_value, now_secs, token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn publish_reaches_subscribers_and_publisher() {
    let node = Node::start(&["--node-id", "node-a", "--heartbeat-interval", "7s"]).await;
    let mut alice = node.connect().await;
    let mut bob = node.connect().await;
    assert_eq!(alice.welcome["node"], "node-a");
    assert_eq!(alice.welcome["heartbeat"], 7);
    assert_ne!(alice.welcome["client"], bob.welcome["client"]);

    let sub = alice.subscribe("chat:room-1").await;
    assert_eq!(sub["offset"], "0-0");
    assert_eq!(sub["recovered"], 0);
    bob.subscribe("chat:room-1").await;

    let offset = alice.publish("chat:room-1", json!({"text":"hi"})).await;
    let alice_id = alice.welcome["client"].clone();
    for client in [&mut alice, &mut bob] {
        let m = client.recv_type("message").await;
        assert_eq!(m["channel"], "chat:room-1");
        assert_eq!(m["offset"], offset.as_str());
        assert_eq!(m["data"], json!({"text":"hi"}));
        assert_eq!(m["from"], alice_id);
        assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }

    bob.send(json!({"type":"unsubscribe","channel":"chat:room-1"}))
        .await;
    assert_eq!(
        bob.recv_type("unsubscribed").await["channel"],
        "chat:room-1"
    );
    let second = alice.publish("chat:room-1", json!(2)).await;
    assert_eq!(alice.recv_type("message").await["offset"], second.as_str());
    // Bob gets nothing more: a publish of his own on another channel arrives first.
    bob.subscribe("other").await;
    bob.publish("other", json!("x")).await;
    assert_eq!(bob.recv_type("message").await["channel"], "other");
    node.shutdown().await;
}

#[tokio::test]
async fn since_recovers_history_in_order_then_live() {
    let node = Node::start(&["--history-size", "5"]).await;
    let mut publisher = node.connect().await;
    let mut offsets = Vec::new();
    for i in 0..4 {
        offsets.push(publisher.publish("room", json!(i)).await);
    }
    let mut late = node.connect().await;
    late.send(json!({"type":"subscribe","channel":"room","since":offsets[0]}))
        .await;
    let sub = late.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], 3);
    assert_eq!(sub["offset"], offsets[3].as_str());
    assert!(sub.get("gap").is_none());
    for expected in &offsets[1..] {
        assert_eq!(late.recv().await["offset"], expected.as_str());
    }
    let live = publisher.publish("room", json!("live")).await;
    assert_eq!(late.recv().await["offset"], live.as_str());

    // Trimmed history: a gap, only live messages follow.
    for i in 0..6 {
        publisher.publish("room", json!(i)).await;
    }
    let mut gap = node.connect().await;
    gap.send(json!({"type":"subscribe","channel":"room","since":offsets[0]}))
        .await;
    let sub = gap.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], 0);
    assert_eq!(sub["gap"], true);
    let next = publisher.publish("room", json!("after-gap")).await;
    assert_eq!(gap.recv().await["offset"], next.as_str());
    node.shutdown().await;
}

#[tokio::test]
async fn every_single_node_error_code_keeps_the_connection() {
    let node = Node::start(&["--max-subscriptions", "2", "--max-publish-rate", "3"]).await;
    let mut c = node.connect().await;
    assert_eq!(c.expect_error(json!("not an object")).await, "bad_request");
    c.send_raw(Message::text("{oops")).await;
    assert_eq!(c.recv_type("error").await["code"], "bad_json");
    assert_eq!(
        c.expect_error(json!({"type":"subscribe"})).await,
        "bad_request"
    );
    assert_eq!(
        c.expect_error(json!({"type":"dance","ref":"r1"})).await,
        "unknown_type"
    );
    assert_eq!(
        c.expect_error(json!({"type":"subscribe","channel":"no spaces"}))
            .await,
        "bad_channel"
    );
    assert_eq!(
        c.expect_error(json!({"type":"subscribe","channel":"x".repeat(129)}))
            .await,
        "bad_channel"
    );
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(c.recv_type("error").await["code"], "bad_frame");
    c.subscribe("a").await;
    c.subscribe("b").await;
    assert_eq!(
        c.expect_error(json!({"type":"subscribe","channel":"c"}))
            .await,
        "too_many_subscriptions"
    );
    // ref is echoed on errors.
    c.send(json!({"type":"publish","channel":"a","ref":"c-17"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("bad_request"), Some("c-17"))
    );
    // Rate limit: a burst of 3, then rate_limited.
    let mut codes = Vec::new();
    for i in 0..5 {
        c.send(json!({"type":"publish","channel":"a","data":i,"ref":format!("p{i}")}))
            .await;
    }
    while codes.len() < 5 {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("ack") => codes.push("ack".to_owned()),
            Some("error") => codes.push(f["code"].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    // Still open and working.
    c.send(json!({"type":"unsubscribe","channel":"a"})).await;
    assert_eq!(c.recv_type("unsubscribed").await["channel"], "a");
    let metrics = node.metrics().await;
    for code in [
        "bad_json",
        "bad_request",
        "bad_frame",
        "unknown_type",
        "bad_channel",
        "too_many_subscriptions",
        "rate_limited",
    ] {
        let v = metric_value(
            &metrics,
            &format!("websocket_errors_total{{code=\"{code}\"}}"),
        )
        .unwrap();
        assert!(v >= 1.0, "{code} counted");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let node = Node::start(&["--max-message-bytes", "1024"]).await;
    let mut c = node.connect().await;
    let big = json!({"type":"publish","channel":"a","data":"x".repeat(2000)});
    c.send(big).await;
    assert_eq!(c.closed().await, 1009);
    node.wait_metric(
        "websocket_disconnections_total{reason=\"message_too_big\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn heartbeat_pings_and_times_out_silent_clients() {
    let node = Node::start(&["--heartbeat-interval", "200ms"]).await;
    // A client that answers (tungstenite answers pings while reading) stays connected.
    let mut lively = node.connect().await;
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, lively.ws.next()).await {
        match m {
            Message::Ping(_) => pings += 1,
            Message::Close(c) => panic!("lively client closed: {c:?}"),
            _ => {}
        }
    }
    assert!(pings >= 2, "got {pings} pings");

    // A client that never reads never answers: closed with 4000 within ~3 intervals.
    let mut silent = node.connect().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(silent.closed().await, 4000);
    node.wait_metric(
        "websocket_disconnections_total{reason=\"heartbeat_timeout\"}",
        1.0,
    )
    .await;
    drop(lively);
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4001_and_others_keep_going() {
    // Unlimited publishes: the publisher floods until the slow client's socket is full.
    let node = Node::start(&[
        "--send-queue",
        "8",
        "--max-message-bytes",
        "70000",
        "--max-publish-rate",
        "0",
    ])
    .await;
    let mut slow = node.connect().await;
    slow.subscribe("firehose").await;
    let mut fast = node.connect().await;
    fast.subscribe("firehose").await;
    let payload = json!("y".repeat(60_000));
    // The slow client never reads: its socket buffer fills, then its queue of 8 overflows.
    let mut publisher = node.connect().await;
    let mut sent = 0;
    loop {
        publisher.publish("firehose", payload.clone()).await;
        sent += 1;
        // Keep the fast client reading.
        fast.recv_type("message").await;
        if metric_value(&node.metrics().await, "chat_slow_consumers_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(sent < 2000, "slow consumer never detected");
    }
    assert_eq!(slow.closed().await, 4001);
    // The fast subscriber still gets messages.
    let offset = publisher.publish("firehose", json!("after")).await;
    loop {
        if fast.recv_type("message").await["offset"] == offset.as_str() {
            break;
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn auth_token_placements_expiry_and_channel_claims() {
    let secret = common::SECRET;
    let node = Node::start(&["--jwt-secret", secret]).await;
    let url = node.ws_url();
    let good = token(
        secret,
        json!({"sub":"user-789","exp":now_secs() + 600,"channels":["chat:*","news"]}),
    );

    // Header, query and subprotocol placements.
    let mut by_header = Client::connect(&url, &[("authorization", &format!("Bearer {good}"))])
        .await
        .unwrap();
    let mut by_query = Client::connect(&format!("{url}?token={good}"), &[])
        .await
        .unwrap();
    let proto = format!("chat.v1, bearer.{good}");
    let mut by_proto = Client::connect(&url, &[("sec-websocket-protocol", &proto)])
        .await
        .unwrap();

    // Refusals: missing, bad signature, expired, no exp.
    assert_eq!(handshake_status(&url, &[]).await, 401);
    let forged = token("other-secret", json!({"sub":"x","exp":now_secs() + 600}));
    assert_eq!(
        handshake_status(&format!("{url}?token={forged}"), &[]).await,
        401
    );
    let expired = token(secret, json!({"sub":"x","exp":now_secs() - 3600}));
    assert_eq!(
        handshake_status(&format!("{url}?token={expired}"), &[]).await,
        401
    );
    let no_exp = token(secret, json!({"sub":"x"}));
    assert_eq!(
        handshake_status(&format!("{url}?token={no_exp}"), &[]).await,
        401
    );

    // Channel claims: chat:* by prefix, news exactly.
    by_header.subscribe("chat:room-42").await;
    by_query.subscribe("news").await;
    assert_eq!(
        by_query
            .expect_error(json!({"type":"subscribe","channel":"news:extra"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        by_proto
            .expect_error(json!({"type":"publish","channel":"admin","data":1}))
            .await,
        "forbidden"
    );
    // `from` is the token subject.
    by_proto.publish("chat:room-42", json!("hello")).await;
    assert_eq!(by_header.recv_type("message").await["from"], "user-789");

    // HTTP publish with the same rules.
    let body = r#"{"channel":"chat:room-42","data":1}"#;
    assert_eq!(http_publish(&node, body, None).await.0, 401);
    assert_eq!(http_publish(&node, body, Some(&expired)).await.0, 401);
    assert_eq!(http_publish(&node, body, Some(&good)).await.0, 200);
    let (status, err) = http_publish(&node, r#"{"channel":"admin","data":1}"#, Some(&good)).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("forbidden")));

    let metrics = node.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "websocket_connections_total{status=\"unauthorized\"}"
        )
        .unwrap()
            >= 4.0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn token_expiry_mid_session_closes_with_1008() {
    let secret = common::SECRET;
    let node = Node::start(&["--jwt-secret", secret]).await;
    // Valid for the 5 s leeway only: expires (for the server) about a second from now.
    let short = token(secret, json!({"sub":"u","exp":now_secs() - 4}));
    let mut c = Client::connect(&format!("{}?token={short}", node.ws_url()), &[])
        .await
        .unwrap();
    assert_eq!(c.closed().await, 1008);
}

#[tokio::test]
async fn origins_outside_the_list_get_403() {
    let node = Node::start(&[
        "--allowed-origins",
        "https://chat.example.com,https://admin.example.com",
    ])
    .await;
    let url = node.ws_url();
    assert_eq!(
        handshake_status(&url, &[("origin", "https://evil.example.com")]).await,
        403
    );
    assert_eq!(
        handshake_status(&url, &[("origin", "https://chat.example.com")]).await,
        101
    );
    assert_eq!(
        handshake_status(&url, &[]).await,
        101,
        "non-browser clients send no Origin"
    );
    let sse = reqwest::Client::new()
        .get(node.http("/sse?channel=a"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 403);
    node.shutdown().await;
}

/// Reads SSE events (`id`, `data`) until `count` arrived.
async fn sse_events(response: reqwest::Response, count: usize) -> Vec<(String, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(common::WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("event in time; have {events:?}, buffer {buffer:?}"))
            .unwrap()
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut data, mut event) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                assert_eq!(event.as_deref(), Some("message"));
                events.push((id, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_and_since() {
    let node = Node::start(&[]).await;
    let mut publisher = node.connect().await;
    let first = publisher.publish("news", json!(1)).await;
    let second = publisher.publish("sport", json!(2)).await;
    let third = publisher.publish("news", json!(3)).await;

    let http = reqwest::Client::new();
    let response = http
        .get(node.http("/sse?channel=news&channel=sport"))
        .header("last-event-id", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let expected_history = [&second, &third]
        .iter()
        .filter(|o| {
            let key = |o: &str| {
                o.split_once('-')
                    .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
            };
            key(o) > key(&first)
        })
        .count();
    let live_task = tokio::spawn(sse_events(response, expected_history + 1));
    // History first (after `first`, both channels), then live.
    let fourth = {
        // The SSE subscription is active once its history was read; wait for it via metrics.
        node.wait_metric("websocket_connections_total{status=\"connected\"}", 2.0)
            .await;
        publisher.publish("sport", json!(4)).await
    };
    let events = live_task.await.unwrap();
    let mut ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    let last = ids.pop().unwrap();
    // Offsets are per channel; Last-Event-ID resumes every listed channel after that offset.
    let parse = |o: &str| -> (u64, u64) {
        let (a, b) = o.split_once('-').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let mut expected: Vec<String> = [&second, &third]
        .into_iter()
        .filter(|o| parse(o) > parse(&first))
        .cloned()
        .collect();
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected);
    assert_eq!(last, fourth);
    assert_eq!(events.last().unwrap().1["type"], "message");
    assert_eq!(events.last().unwrap().1["data"], 4);

    let response = http
        .get(node.http(&format!("/sse?channel=news&since={third}")))
        .send()
        .await
        .unwrap();
    let task = tokio::spawn(sse_events(response, 1));
    node.wait_metric("websocket_connections_total{status=\"connected\"}", 3.0)
        .await;
    let fifth = publisher.publish("news", json!(5)).await;
    assert_eq!(task.await.unwrap()[0].0, fifth);

    let bad = http
        .get(node.http("/sse?channel=bad%20name"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let none = http.get(node.http("/sse")).send().await.unwrap();
    assert_eq!(none.status(), 400);
    node.shutdown().await;
}

#[tokio::test]
async fn http_publish_answers_offsets_and_errors() {
    let node = Node::start(&["--max-message-bytes", "1000"]).await;
    let mut sub = node.connect().await;
    sub.subscribe("alerts").await;
    let (status, body) = http_publish(
        &node,
        r#"{"channel":"alerts","data":{"level":"high"}}"#,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let message = sub.recv_type("message").await;
    assert_eq!(message["offset"], body["offset"]);
    assert_eq!(message["from"], "http");
    for (body, code) in [
        ("{nope", "bad_json"),
        (r#"{"channel":"alerts"}"#, "bad_request"),
        (r#"{"channel":1,"data":1}"#, "bad_request"),
        (r#"{"channel":"bad name","data":1}"#, "bad_channel"),
    ] {
        let (status, err) = http_publish(&node, body, None).await;
        assert_eq!((status, err["code"].as_str()), (400, Some(code)), "{body}");
        assert!(err["message"].is_string());
    }
    let big = format!(r#"{{"channel":"alerts","data":"{}"}}"#, "z".repeat(1500));
    assert_eq!(http_publish(&node, &big, None).await.0, 400);
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_health_and_demo_page() {
    let node = Node::start(&["--metrics-namespaces", "chat"]).await;
    let mut c = node.connect().await;
    c.subscribe("chat:x").await;
    c.publish("chat:x", json!(1)).await;
    c.recv_type("message").await;
    let text = node.metrics().await;
    for name in [
        "websocket_connections_total",
        "websocket_active_connections",
        "websocket_disconnections_total",
        "websocket_errors_total",
        "websocket_message_duration_seconds",
        "chat_messages_published_total",
        "chat_messages_delivered_total",
        "chat_delivery_latency_seconds",
        "chat_slow_consumers_total",
        "chat_redis_up",
        "chat_redis_reconnects_total",
        "chat_max_connections",
        "chat_client_sockets",
        "chat_socket_timeouts_total",
        "chat_long_polls_total",
        "chat_long_polls_waiting",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "metric {name} missing:\n{text}"
        );
    }
    assert_eq!(
        metric_value(&text, "websocket_active_connections"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "chat_messages_published_total{channel_namespace=\"chat\"}"
        ),
        Some(1.0)
    );
    node.wait_metric(
        "chat_messages_delivered_total{channel_namespace=\"chat\"}",
        1.0,
    )
    .await;
    assert!(metric_value(&text, "process_open_fds").unwrap() > 0.0);
    assert!(metric_value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    // The node has done some work by now (a handshake, a publish, a delivery).
    assert!(metric_value(&text, "process_cpu_seconds_total").unwrap() > 0.0);

    assert_eq!(node.healthz().await, 200);
    assert_eq!(
        reqwest::get(node.admin_url("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    let page = reqwest::get(node.http("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let asset = reqwest::get(node.http("/assets/index.html")).await.unwrap();
    assert_eq!(asset.status(), 200);
    let missing = reqwest::get(node.http("/assets/nope.css")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let client = reqwest::get(node.http("/client/index.js")).await.unwrap();
    assert_eq!(client.status(), 200);
    assert!(
        client.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    node.shutdown().await;
}
