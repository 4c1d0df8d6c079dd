//! The embedded broker's history caps (issue 11, item 4): one client publishing big messages
//! to 100,000 new channels, against the real binary, whose resident memory is measured.

mod common;

use std::time::Instant;

use common::binary::Binary;
use common::{Client, metric_value};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const CHANNELS: usize = 100_000;
const DATA_BYTES: usize = 4000;
const MAX_CHANNELS: usize = 10_000;
const MAX_HISTORY_BYTES: usize = 16 << 20;
/// Publishes in flight before the client waits for acks (it reads them, never a slow consumer).
const WINDOW: usize = 256;

/// Publishes one message to each of `CHANNELS` new channels; returns the offset of the first.
async fn flood(client: &mut Client) -> String {
    let text = "x".repeat(DATA_BYTES);
    let (mut sent, mut acked) = (0usize, 0usize);
    let mut first = String::new();
    while acked < CHANNELS {
        while sent < CHANNELS && sent - acked < WINDOW {
            let frame = json!({"type":"publish","channel":format!("flood-{sent}"),"data":{"t":text},"ref":sent.to_string()});
            client
                .ws
                .feed(Message::text(frame.to_string()))
                .await
                .unwrap();
            sent += 1;
        }
        client.ws.flush().await.unwrap();
        let reply = client.recv().await;
        assert_eq!(reply["type"], "ack", "{reply}");
        if reply["ref"] == "0" {
            first = reply["offset"].as_str().unwrap().to_owned();
        }
        acked += 1;
    }
    first
}

/// The review's finding: every new channel kept its history for `history-ttl` (24 h), so one
/// client could grow the node without bound. With 10,000 channels and 16 MiB of history
/// allowed, 100,000 channels of 4 KB messages (≈ 400 MB) leave at most those caps held, the
/// node's peak RSS grows by at most the byte cap plus 32 MiB (without the caps: +483 MiB), the
/// metrics say so, and a `since`
/// into an evicted channel is a gap while the newest channels still replay.
#[tokio::test]
async fn a_hundred_thousand_new_channels_stay_under_the_history_caps() {
    let max_channels = MAX_CHANNELS.to_string();
    let max_bytes = MAX_HISTORY_BYTES.to_string();
    let node = Binary::start(
        "true",
        &[
            "--max-publish-rate",
            "0",
            "--max-channels",
            &max_channels,
            "--max-history-bytes",
            &max_bytes,
        ],
    )
    .await;
    node.wait_ready(200).await;
    let mut client = Client::connect(&node.ws_url(), &[]).await.unwrap();
    client
        .publish("warm", json!({"t": "x".repeat(DATA_BYTES)}))
        .await;
    let baseline = node.status_kib("VmRSS");
    node.reset_peak_rss();

    let started = Instant::now();
    let first = flood(&mut client).await;
    let took = started.elapsed();
    let growth_kib = node.status_kib("VmHWM").saturating_sub(baseline);
    let metrics = node.metrics().await;
    let channels = metric_value(&metrics, "chat_history_channels").unwrap();
    let bytes = metric_value(&metrics, "chat_history_bytes").unwrap();
    let by_bytes = metric_value(&metrics, "chat_history_evictions_total{cap=\"bytes\"}").unwrap();
    let by_channels =
        metric_value(&metrics, "chat_history_evictions_total{cap=\"channels\"}").unwrap();
    println!(
        "{CHANNELS} new channels × {DATA_BYTES} B in {took:?}: peak RSS +{growth_kib} KiB \
         (baseline {baseline} KiB); chat_history_channels {channels}, chat_history_bytes \
         {bytes}, evictions: bytes {by_bytes}, channels {by_channels}"
    );
    assert_eq!(channels, MAX_CHANNELS as f64, "channels capped");
    assert!(bytes <= MAX_HISTORY_BYTES as f64, "history bytes capped");
    assert!(
        bytes >= MAX_HISTORY_BYTES as f64 * 0.9,
        "the byte cap is used, not undershot"
    );
    assert!(
        by_bytes + by_channels >= (CHANNELS - MAX_HISTORY_BYTES / DATA_BYTES) as f64,
        "every message beyond the caps was evicted and counted"
    );
    assert!(
        growth_kib <= (MAX_HISTORY_BYTES >> 10) as u64 + 32 * 1024,
        "peak RSS grew by {growth_kib} KiB"
    );

    // The first channel's history is gone: resuming it is a gap, not a silent loss.
    client
        .send(json!({"type":"subscribe","channel":"flood-0","since":first}))
        .await;
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(subscribed["gap"], true, "{subscribed}");
    assert_eq!(subscribed["recovered"], 0);
    // The newest channel still replays.
    let newest = format!("flood-{}", CHANNELS - 1);
    client
        .send(json!({"type":"subscribe","channel":newest,"since":"0-0"}))
        .await;
    let subscribed = client.recv_type("subscribed").await;
    assert_eq!(subscribed["recovered"], 1, "{subscribed}");
    let message = client.recv_type("message").await;
    assert_eq!(message["channel"], newest.as_str());
}
