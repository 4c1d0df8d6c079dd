//! The liveness check a browser can see: `{"type":"ping"}` answered by `{"type":"pong"}` with
//! the request's `ref`, in order with the other answers; a ping counts as activity for the
//! server's heartbeat; a client that floods pings without reading is closed as a slow consumer;
//! `welcome.heartbeat_ms` gives the exact interval; a plain `GET /ws` with a refused token
//! answers 401 (what the JS client probes, since browsers hide a failed handshake's status); a
//! quiet SSE stream gets a keep-alive comment every interval (what the JS client's stall check
//! relies on).

mod common;

use std::time::Duration;

use common::{Node, SECRET, metric_value, now_secs, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ping_is_answered_with_pong_and_its_ref_in_request_order() {
    let node = Node::start(&["--heartbeat-interval", "1500ms", "--max-publish-rate", "0"]).await;
    let mut client = node.connect().await;
    assert_eq!(client.welcome["heartbeat"], 1, "{}", client.welcome);
    assert_eq!(client.welcome["heartbeat_ms"], 1500, "{}", client.welcome);

    client.send(json!({"type":"ping","ref":"k1"})).await;
    assert_eq!(client.recv().await, json!({"type":"pong","ref":"k1"}));
    client.send(json!({"type":"ping"})).await;
    assert_eq!(client.recv().await, json!({"type":"pong"}));

    // Pipelined publishes, then a ping: the pong comes after every ack, like any answer.
    client.subscribe("chat:live").await;
    for i in 0..5 {
        client
            .send(json!({"type":"publish","channel":"chat:live","data":i,"ref":format!("p{i}")}))
            .await;
    }
    client.send(json!({"type":"ping","ref":"k2"})).await;
    let mut acks = Vec::new();
    loop {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("ack") => acks.push(frame["ref"].as_str().unwrap().to_owned()),
            Some("pong") => {
                assert_eq!(frame["ref"], "k2");
                break;
            }
            Some("message") => {}
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(acks, ["p0", "p1", "p2", "p3", "p4"]);

    // A bad `ref` is refused like on any frame; the connection stays.
    client
        .send(json!({"type":"ping","ref":"r".repeat(129)}))
        .await;
    assert_eq!(client.recv_type("error").await["code"], "bad_request");
    client.send(json!({"type":"ping","ref":"k3"})).await;
    assert_eq!(client.recv_type("pong").await["ref"], "k3");
}

/// The server closes a connection silent for two heartbeat intervals (4000). A client that
/// never reads (so never answers the server's Pings) but sends `ping` frames stays open: the
/// pings are activity. Without them the same client is closed (`single_node.rs` shows 4000).
#[tokio::test]
async fn pings_count_as_activity_for_the_heartbeat() {
    let node = Node::start(&["--heartbeat-interval", "200ms"]).await;
    let mut client = node.connect().await;
    // 1.2 s = 6 intervals, never reading: only the pings keep the connection.
    for i in 0..12 {
        client
            .send(json!({"type":"ping","ref":format!("k{i}")}))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pongs = Vec::new();
    while pongs.len() < 12 {
        let frame: Value = client.recv().await;
        assert_eq!(frame["type"], "pong", "{frame}");
        pongs.push(frame["ref"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    assert_eq!(pongs, expected);
    let text = node.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "websocket_disconnections_total{reason=\"heartbeat_timeout\"}"
        ),
        Some(0.0)
    );
}

/// Attacker: pings as fast as the socket takes them, never reading a pong. The pongs fill the
/// socket buffers, then the send queue (8 frames), and the connection is closed as a slow
/// consumer; the node stays well for everyone else. (The flooder's receive buffer is small and
/// its refs long, so the buffers fill after thousands of pings, not hundreds of thousands.)
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_closed_as_a_slow_consumer() {
    let node = Node::start(&["--send-queue", "8", "--send-queue-bytes", "4096"]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.addr).await.unwrap();
    let (mut flooder, _) =
        tokio_tungstenite::client_async(node.ws_url(), MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let welcome = flooder.next().await.unwrap().unwrap();
    assert!(
        welcome.to_text().unwrap().contains("welcome"),
        "{welcome:?}"
    );
    let ping = Message::text(json!({"type":"ping","ref":"f".repeat(128)}).to_string());
    // Floods from a task of its own: once the node stops reading, its writes block, and the
    // test watches the node meanwhile.
    let flood = tokio::spawn(async move {
        let mut sent: u64 = 0;
        while sent < 1_000_000 {
            for _ in 0..100 {
                if flooder.feed(ping.clone()).await.is_err() {
                    return sent;
                }
            }
            if flooder.flush().await.is_err() {
                return sent;
            }
            sent += 100;
        }
        sent
    });
    // Counted when the node decides (the close handshake may then wait on the full socket).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric_value(&node.metrics().await, "chat_slow_consumers_total").unwrap_or(0.0) < 1.0 {
        if flood.is_finished() {
            // The socket failed (or a million pings went through): the node must have cut it.
            node.wait_metric("chat_slow_consumers_total", 1.0).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a ping flood was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood.abort();
    let mut bystander = node.connect().await;
    bystander.send(json!({"type":"ping","ref":"b"})).await;
    assert_eq!(bystander.recv_type("pong").await["ref"], "b");
}

/// A plain `GET /ws` (no upgrade) is checked like a handshake before the upgrade headers: a
/// missing or refused token answers 401 with the contract's body, a good one the upgrade's own
/// refusal (not 401). The JS client probes this way after a failed handshake.
#[tokio::test]
async fn a_plain_get_of_ws_tells_a_refused_token_from_other_failures() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let good = token(SECRET, json!({"sub":"u1","exp":now_secs() + 600}));
    let expired = token(SECRET, json!({"sub":"u1","exp":now_secs() - 600}));
    let http = reqwest::Client::new();
    let probe = |bearer: Option<String>| {
        let mut request = http.get(node.http("/ws"));
        if let Some(t) = bearer {
            request = request.bearer_auth(t);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for bearer in [None, Some(expired), Some("not-a-jwt".to_owned())] {
        let (status, body) = probe(bearer.clone()).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        assert_eq!(body["code"], "unauthorized");
    }
    let (status, _) = probe(Some(good.clone())).await;
    assert!(
        (400..500).contains(&status) && status != 401,
        "a good token without an upgrade: {status}"
    );
    // The real handshake with the good token still works.
    let auth = format!("Bearer {good}");
    let client = common::Client::connect(&node.ws_url(), &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(client.welcome["type"], "welcome");
}

/// The SSE side of liveness: a quiet stream gets a keep-alive comment every heartbeat interval,
/// so the JS client, which drops a stream after 1.5 intervals without a byte, never drops a live
/// one. Every gap between chunks stays under that threshold.
#[tokio::test]
async fn a_quiet_sse_stream_gets_a_byte_every_heartbeat_interval() {
    let interval = Duration::from_millis(400);
    let node = Node::start(&["--heartbeat-interval", "400ms"]).await;
    let mut response = reqwest::get(node.http("/sse?channel=quiet")).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = tokio::time::Instant::now();
    let mut last = started;
    let mut comments = 0;
    let mut widest = Duration::ZERO;
    while started.elapsed() < interval * 8 {
        let chunk = tokio::time::timeout(interval * 3, response.chunk())
            .await
            .expect("a byte within 3 intervals")
            .unwrap()
            .expect("the stream stays open");
        let now = tokio::time::Instant::now();
        widest = widest.max(now - last);
        last = now;
        if chunk.starts_with(b":") {
            comments += 1;
        }
    }
    assert!(
        comments >= 6,
        "{comments} keep-alive comments in 8 intervals"
    );
    assert!(
        widest < interval * 3 / 2,
        "a {widest:?} gap: the JS client would drop this stream as stalled"
    );
}
