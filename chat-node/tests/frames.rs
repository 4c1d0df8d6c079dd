//! Hostile frames: breaks of RFC 6455 (written byte by byte onto the socket, past the client
//! library) get their close code (1002, 1007) and their own disconnection reason.

mod common;

use common::{Node, metric_value};
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
