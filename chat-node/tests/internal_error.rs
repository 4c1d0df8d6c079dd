//! Close code 1011: a session that fails internally (a panic while handling its frames) is
//! closed with 1011 on its own; the node and every other connection carry on.
//!
//! No client input can make a correct node panic, so the failure is injected through the
//! debug-build-only channel `session::DEBUG_PANIC_CHANNEL` (absent from release builds, hence
//! the `cfg`); everything after the panic (isolation, close frame, cleanup, metrics) is the
//! production path.
#![cfg(debug_assertions)]

mod common;

use common::Node;
use serde_json::json;
use test_harness::redis::RedisServer;

#[tokio::test]
async fn a_session_failing_internally_is_closed_with_1011_alone() {
    let redis = RedisServer::start().await;
    let node = Node::start(&["--redis-url", &redis.url()]).await;
    node.wait_ready(200).await;
    let mut victim = node.connect().await;
    let mut bystander = node.connect().await;
    victim.subscribe("chat:shared").await;
    bystander.subscribe("chat:shared").await;

    victim
        .send(json!({
            "type": "publish",
            "channel": chat_node::session::DEBUG_PANIC_CHANNEL,
            "data": 1
        }))
        .await;
    assert_eq!(victim.closed().await, 1011);
    // Complete the closing handshake (the node waits briefly for it before releasing).
    let _ = victim.ws.close(None).await;
    node.wait_metric("websocket_disconnections_total{reason=\"internal\"}", 1.0)
        .await;
    node.wait_metric("websocket_errors_total{code=\"internal\"}", 1.0)
        .await;

    // The bystander on the same channel keeps publishing and receiving; the victim's
    // subscription was cleaned up (one local subscriber left, so one delivery per message).
    let offset = bystander.publish("chat:shared", json!("still here")).await;
    assert_eq!(
        bystander.recv_type("message").await["offset"],
        offset.as_str()
    );
    node.wait_metric("websocket_active_connections", 1.0).await;
    let text = node.metrics().await;
    assert_eq!(
        common::metric_value(&text, "websocket_active_connections"),
        Some(1.0)
    );
    // New connections are served as before.
    let mut fresh = node.connect().await;
    fresh.subscribe("chat:shared").await;
    node.shutdown().await;
}
