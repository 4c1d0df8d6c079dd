//! The gRPC server API's edges: `Subscribe` with `since` and an epoch (a stale epoch is a
//! gap, as on WebSocket), a caller's deadline (`grpc-timeout`) on a call Redis holds up answered
//! `DEADLINE_EXCEEDED` in time, a cancelled `Subscribe` that frees its subscription, and HTTP/2
//! sockets that never start a request (nothing after the preface, or only pings) or idle after
//! one closed within the port's header and idle timeouts.

mod common;

use std::time::{Duration, Instant};

use chat_node::server_api::proto;
use chat_node::server_api::proto::server_api_client::ServerApiClient;
use common::{Node, WAIT};
use prost::Message as _;
use serde_json::json;
use test_harness::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

const KEY: &str = "grpc-limits-key-0123456789abcdef";

struct KeyFile(std::path::PathBuf);

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn start(extra: &[&str]) -> (Node, KeyFile) {
    let path = std::env::temp_dir().join(format!("chat-grpc-limits-{}", fastrand::u64(..)));
    std::fs::write(&path, KEY).unwrap();
    let key = KeyFile(path);
    let mut args = vec!["--api-key-file", key.0.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Node::start_with_api(&args).await, key)
}

async fn client(node: &Node) -> ServerApiClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", node.api.unwrap()))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects to the API port");
    ServerApiClient::new(channel)
}

fn keyed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("apikey {KEY}").parse().unwrap());
    request
}

fn publish(channel: &str, data: serde_json::Value) -> proto::PublishRequest {
    proto::PublishRequest {
        channel: channel.into(),
        data_json: data.to_string(),
    }
}

fn subscribed(event: Option<proto::SubscribeEvent>) -> proto::Subscribed {
    match event.and_then(|e| e.event) {
        Some(proto::subscribe_event::Event::Subscribed(s)) => s,
        other => panic!("not a `subscribed`: {other:?}"),
    }
}

fn message(event: Option<proto::SubscribeEvent>) -> proto::Message {
    match event.and_then(|e| e.event) {
        Some(proto::subscribe_event::Event::Message(m)) => m,
        other => panic!("not a message: {other:?}"),
    }
}

/// The node's own count of open sessions and subscriptions (`info`, embedded broker: this node).
async fn sessions_and_subscriptions(api: &mut ServerApiClient<Channel>) -> (u64, u64) {
    let info = api
        .info(keyed(proto::InfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    (info.nodes[0].connections, info.nodes[0].subscriptions)
}

#[tokio::test]
async fn subscribe_since_with_epochs_and_gaps() {
    let (node, _key) = start(&[]).await;
    let mut api = client(&node).await;
    let first = api
        .publish(keyed(publish("chat:e", json!(1))))
        .await
        .unwrap()
        .into_inner()
        .offset;
    let second = api
        .publish(keyed(publish("chat:e", json!(2))))
        .await
        .unwrap()
        .into_inner()
        .offset;
    let epoch = api
        .history(keyed(proto::HistoryRequest {
            channel: "chat:e".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .epoch;
    assert!(!epoch.is_empty());

    // The channel's own epoch: the message after `since` is recovered, then live ones follow.
    let mut stream = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:e".into()],
            since: first.clone(),
            epoch: epoch.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let start = subscribed(stream.message().await.unwrap());
    assert_eq!((start.recovered, start.gap), (1, false));
    assert_eq!(
        (start.offset.as_str(), start.epoch.as_str()),
        (second.as_str(), epoch.as_str())
    );
    assert_eq!(message(stream.message().await.unwrap()).offset, second);

    // An offset from a history that is gone (its epoch is another, and this history holds no
    // message at that offset): a gap, nothing recovered, live ones still follow.
    let mut stale = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:e".into()],
            since: "1-1".into(),
            epoch: "an-epoch-long-gone".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let start = subscribed(stale.message().await.unwrap());
    assert_eq!((start.recovered, start.gap), (0, true), "{start:?}");
    assert_eq!(start.epoch, epoch, "the current epoch, to resume from");
    let live = api
        .publish(keyed(publish("chat:e", json!(3))))
        .await
        .unwrap()
        .into_inner()
        .offset;
    assert_eq!(message(stale.message().await.unwrap()).offset, live);
    assert_eq!(message(stream.message().await.unwrap()).offset, live);

    // A stale epoch whose offset this history still holds is no gap (the caller stayed
    // subscribed while the epoch changed), as on WebSocket.
    let mut kept = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:e".into()],
            since: second.clone(),
            epoch: "an-epoch-long-gone".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let start = subscribed(kept.message().await.unwrap());
    assert_eq!((start.recovered, start.gap), (1, false), "{start:?}");
    assert_eq!(message(kept.message().await.unwrap()).offset, live);

    // An epoch longer than any the node makes is refused before anything is subscribed.
    let refused = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:e".into()],
            since: first,
            epoch: "e".repeat(65),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_subscribe_frees_its_subscription() {
    let (node, _key) = start(&[]).await;
    let mut api = client(&node).await;
    assert_eq!(sessions_and_subscriptions(&mut api).await, (0, 0));
    let mut stream = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:c1".into(), "chat:c2".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    subscribed(stream.message().await.unwrap());
    subscribed(stream.message().await.unwrap());
    assert_eq!(sessions_and_subscriptions(&mut api).await, (1, 2));

    // The caller cancels (the stream is dropped: RST_STREAM), the connection stays open.
    drop(stream);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = sessions_and_subscriptions(&mut api).await;
        if now == (0, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {now:?} after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nobody is subscribed any more: a publish is delivered to no one.
    let summary = api
        .broadcast(keyed(proto::BroadcastRequest {
            channels: vec!["chat:c1".into()],
            data_json: "1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.results.len(), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_deadline_on_a_call_redis_holds_up_is_deadline_exceeded() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (node, _key) = start(&["--redis-url", &url]).await;
    node.wait_ready(200).await;
    let mut api = client(&node).await;
    api.publish(keyed(publish("chat:d", json!("warm"))))
        .await
        .expect("a publish before the pause");

    // Redis holds every write (a publish is one) for 5 s; reads and pings still answer, so the
    // node keeps Redis for up and the publish waits.
    redis
        .command(&["CLIENT", "PAUSE", "5000", "WRITE"])
        .await
        .unwrap();
    // By hand over HTTP/2, so the answer is the node's: tonic's client would give up on its
    // own at the deadline (with CANCELLED).
    let mut body = vec![0u8];
    let message = publish("chat:d", json!("late")).encode_to_vec();
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&message);
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let started = Instant::now();
    let answer = http
        .post(format!(
            "http://{}/chatcluster.api.v1.ServerApi/Publish",
            node.api.unwrap()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .header("authorization", format!("apikey {KEY}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // A trailers-only answer: the status in the head. 4 = DEADLINE_EXCEEDED.
    assert_eq!(header("grpc-status").as_deref(), Some("4"), "{answer:?}");
    assert!(
        header("grpc-message").is_some_and(|m| m.starts_with("deadline_exceeded")),
        "{answer:?}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    // tonic's client with a deadline gives up at the same time (its own CANCELLED).
    let mut request = keyed(publish("chat:d", json!("late too")));
    request.set_timeout(Duration::from_millis(300));
    let status = api.publish(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    redis.command(&["CLIENT", "UNPAUSE"]).await.unwrap();

    // The node carries on: the same call without a deadline succeeds.
    api.publish(keyed(publish("chat:d", json!("after"))))
        .await
        .expect("a publish after the pause");
    node.shutdown().await;
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A request head in HPACK, every field a literal without indexing (no Huffman).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(u8::try_from(name.len()).unwrap());
        out.extend_from_slice(name.as_bytes());
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Reads until the server closes the socket; returns what it sent.
async fn read_to_close(socket: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(within, socket.read_to_end(&mut all))
        .await
        .expect("the server closes the socket in time")
        .ok();
    all
}

/// Whether the frames in `bytes` end stream 1 (its response's last frame).
fn ends_stream_one(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        if stream == 1 && (kind == HEADERS || kind == DATA) && flags & END_STREAM != 0 {
            return true;
        }
        at += 9 + len;
    }
    false
}

#[tokio::test]
async fn http2_sockets_that_start_no_request_or_idle_are_closed_in_time() {
    const HEADER_MS: u64 = 400;
    const IDLE_MS: u64 = 700;
    let (header, idle) = (format!("{HEADER_MS}ms"), format!("{IDLE_MS}ms"));
    let (node, _key) = start(&["--header-timeout", &header, "--idle-timeout", &idle]).await;
    let api = node.api.unwrap();
    let bound = |ms: u64| Duration::from_millis(ms);
    // Timers fire late on a busy machine, never early: closing may lag its deadline by this.
    let slack = Duration::from_millis(1500);

    // 1. Nothing at all: closed at the header timeout.
    let started = Instant::now();
    let mut quiet = TcpStream::connect(api).await.unwrap();
    read_to_close(&mut quiet, WAIT).await;
    let took = started.elapsed();
    assert!(
        took >= bound(HEADER_MS) - bound(50) && took < bound(HEADER_MS) + slack,
        "silent socket closed after {took:?}"
    );

    // 2. The preface and SETTINGS, then only pings (as a client that answers keep-alives does):
    //    no request ever starts, so the header timeout from `accept` closes it.
    let started = Instant::now();
    let mut pinger = TcpStream::connect(api).await.unwrap();
    pinger.write_all(PREFACE).await.unwrap();
    pinger.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let pings = tokio::spawn({
        let (_, mut write) = pinger.into_split();
        async move {
            let mut n = 0u64;
            while write
                .write_all(&frame(PING, 0, 0, &n.to_be_bytes()))
                .await
                .is_ok()
            {
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        }
    });
    let sent = tokio::time::timeout(WAIT, pings)
        .await
        .expect("the server closes the pinging socket in time")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= bound(HEADER_MS) - bound(50) && took < bound(HEADER_MS) + slack,
        "a socket sending only pings ({sent}) closed after {took:?}"
    );

    // 3. One request (a health check), answered; then nothing: closed at the idle timeout
    //    after its response, not before.
    let mut caller = TcpStream::connect(api).await.unwrap();
    caller.write_all(PREFACE).await.unwrap();
    caller.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let head = header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "chat-node"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    caller
        .write_all(&frame(HEADERS, END_HEADERS, 1, &head))
        .await
        .unwrap();
    // An empty HealthCheckRequest: uncompressed, length 0.
    caller
        .write_all(&frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = loop {
        let n = tokio::time::timeout(WAIT, caller.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        if ends_stream_one(&got) {
            break Instant::now();
        }
    };
    read_to_close(&mut caller, WAIT).await;
    let idle_for = answered.elapsed();
    assert!(
        idle_for >= bound(IDLE_MS) - bound(50) && idle_for < bound(IDLE_MS) + slack,
        "closed {idle_for:?} after its answer"
    );

    // 4. Many at once, as an attacker would: every one closed, and the port still serves.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut socket = TcpStream::connect(api).await.unwrap();
        socket.write_all(PREFACE).await.unwrap();
        held.push(socket);
    }
    for socket in &mut held {
        read_to_close(socket, WAIT).await;
    }
    let took = started.elapsed();
    assert!(
        took < bound(HEADER_MS) + slack,
        "50 sockets closed after {took:?}"
    );
    let mut api_client = client(&node).await;
    api_client
        .info(keyed(proto::InfoRequest {}))
        .await
        .expect("the port serves after the attack");
    node.shutdown().await;
}
