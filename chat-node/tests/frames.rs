//! Hostile frames: breaks of RFC 6455 (written byte by byte onto the socket, past the client
//! library) get their close code (1002, 1007) and their own disconnection reason; `data`
//! nested deeper than `--max-json-depth` is refused over WebSocket and HTTP and never stored
//! or relayed.

mod common;

use common::{Client, Node, http_publish, metric_value};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame: `first` is the FIN/RSV/opcode byte; masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut bytes = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => bytes.push(mask_bit | n as u8),
        n => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&MASK);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// Writes raw bytes onto a connected client's socket and returns the server's close code.
async fn violate(node: &Node, bytes: &[u8]) -> u16 {
    let mut client = node.connect().await;
    match client.ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.unwrap(),
        _ => unreachable!("plain ws:// in tests"),
    }
    client.closed().await
}

#[tokio::test]
async fn protocol_violations_close_with_1002_or_1007_and_count_under_their_reason() {
    let node = Node::start(&[]).await;
    let violations: [(&str, Vec<u8>, u16); 9] = [
        ("unmasked text frame", frame(0x81, b"{}", false), 1002),
        ("ping over 125 bytes", frame(0x89, &[b'p'; 126], true), 1002),
        ("fragmented ping", frame(0x09, b"p", true), 1002),
        ("reserved bit set", frame(0xC1, b"{}", true), 1002),
        ("reserved data opcode", frame(0x83, b"{}", true), 1002),
        ("reserved control opcode", frame(0x8B, b"", true), 1002),
        (
            "continuation without a start",
            frame(0x80, b"{}", true),
            1002,
        ),
        (
            "text frame not UTF-8",
            frame(0x81, &[b'"', 0xff, 0xfe, b'"'], true),
            1007,
        ),
        (
            "fragmented text not UTF-8",
            [
                frame(0x01, &[b'"', 0xe2, 0x82], true),
                frame(0x80, b"(\"", true),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, bytes, expected) in &violations {
        assert_eq!(violate(&node, bytes).await, *expected, "{what}");
    }
    // A bystander connected throughout is unaffected.
    let mut bystander = node.connect().await;
    bystander.subscribe("fine").await;
    bystander.publish("fine", json!("still here")).await;

    node.wait_metric(
        "websocket_disconnections_total{reason=\"invalid_payload\"}",
        2.0,
    )
    .await;
    node.wait_metric(
        "websocket_disconnections_total{reason=\"protocol_error\"}",
        7.0,
    )
    .await;
    let text = node.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "websocket_disconnections_total{reason=\"protocol_error\"}"
        ),
        Some(7.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "websocket_disconnections_total{reason=\"invalid_payload\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "websocket_disconnections_total{reason=\"connection_lost\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, "websocket_errors_total{code=\"bad_frame\"}"),
        Some(9.0)
    );
}

fn nested_arrays(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn data_nested_deeper_than_the_limit_is_refused_and_never_stored_or_relayed() {
    let node = Node::start(&["--max-message-bytes", "262144"]).await;
    let mut subscriber = node.connect().await;
    subscriber.subscribe("deep").await;
    let mut publisher = node.connect().await;

    // 30,000 levels (the issue's attack) and 33 (one past the default of 32), arrays and
    // objects: an `error` with the ref, the connection stays open.
    for data in [
        nested_arrays(30_000),
        nested_objects(30_000),
        nested_arrays(33),
        nested_objects(33),
    ] {
        let frame = format!(r#"{{"type":"publish","channel":"deep","data":{data},"ref":"d"}}"#);
        publisher
            .send_raw(tokio_tungstenite::tungstenite::Message::text(frame))
            .await;
        let error = publisher.recv_type("error").await;
        assert_eq!(error["code"], "bad_request", "{error}");
        assert_eq!(error["ref"], "d");
        assert!(
            error["message"].as_str().unwrap().contains("32 levels"),
            "{error}"
        );
    }
    for data in [nested_arrays(30_000), nested_objects(33)] {
        let body = format!(r#"{{"channel":"deep","data":{data}}}"#);
        let (status, answer) = http_publish(&node, &body, None).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["code"], "bad_request");
    }
    // At the limit: accepted over both transports; the subscriber gets only these two.
    let at_limit: serde_json::Value = serde_json::from_str(&nested_arrays(32)).unwrap();
    publisher.publish("deep", at_limit.clone()).await;
    let body = json!({"channel": "deep", "data": at_limit}).to_string();
    assert_eq!(http_publish(&node, &body, None).await.0, 200);
    let first = subscriber.recv_type("message").await;
    let second = subscriber.recv_type("message").await;
    assert_eq!((&first["data"], &second["data"]), (&at_limit, &at_limit));

    // Nothing deep was stored: a new subscriber recovering the whole history gets the two.
    let mut late = Client::connect(&node.ws_url(), &[]).await.unwrap();
    late.send(json!({"type":"subscribe","channel":"deep","since":"0-0"}))
        .await;
    let subscribed = late.recv_type("subscribed").await;
    assert_eq!(subscribed["recovered"], 2, "{subscribed}");
    // A different limit is a flag away.
    let strict = Node::start(&["--max-json-depth", "2"]).await;
    let mut c = strict.connect().await;
    assert_eq!(
        c.expect_error(json!({"type":"publish","channel":"x","data":[[[1]]]}))
            .await,
        "bad_request"
    );
    c.publish("x", json!([[1]])).await;
}
