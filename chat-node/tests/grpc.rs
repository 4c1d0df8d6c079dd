//! The server API over gRPC, on the same port as its HTTP form, through tonic's own HTTP/2
//! client: the key (missing and wrong: UNAUTHENTICATED), health and reflection without it,
//! unary calls (a publish reaching a WebSocket client, errors as INVALID_ARGUMENT with the
//! contract's code), server streaming with `since` recovery and a slow reader cut off with
//! RESOURCE_EXHAUSTED, client streaming with a summary, and a bidirectional session.

mod common;

use std::time::Duration;

use chat_node::server_api::proto;
use chat_node::server_api::proto::server_api_client::ServerApiClient;
use common::{Node, WAIT};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

const KEY: &str = "grpc-api-key-0123456789abcdef";

struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new() -> KeyFile {
        let path = std::env::temp_dir().join(format!("chat-grpc-key-{}", fastrand::u64(..)));
        std::fs::write(&path, KEY).unwrap();
        KeyFile(path)
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn channel(node: &Node) -> Channel {
    Channel::from_shared(format!("http://{}", node.api.unwrap()))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects to the API port")
}

fn keyed<T>(message: T) -> Request<T> {
    with_key(message, KEY)
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("apikey {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn publish(channel: &str, data: serde_json::Value) -> proto::PublishRequest {
    proto::PublishRequest {
        channel: channel.into(),
        data_json: data.to_string(),
    }
}

async fn start(extra: &[&str]) -> (Node, KeyFile) {
    let key = KeyFile::new();
    let mut args = vec!["--api-key-file", key.0.to_str().unwrap(), "--node-id", "g1"];
    args.extend_from_slice(extra);
    (Node::start_with_api(&args).await, key)
}

#[tokio::test]
async fn unary_calls_key_health_and_reflection() {
    let (node, _key) = start(&[]).await;
    let channel = channel(&node).await;
    let mut api = ServerApiClient::new(channel.clone());

    // The key: missing and wrong are UNAUTHENTICATED; HTTP on the same port still works.
    let missing = api.info(proto::InfoRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = api
        .info(with_key(
            proto::InfoRequest {},
            "wrong-key-0123456789abcdef",
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let (status, _) = common::api_call(
        node.api.unwrap(),
        Some(&format!("apikey {KEY}")),
        "info",
        "{}",
    )
    .await;
    assert_eq!(status, 200, "HTTP/1.1 shares the port");

    // Health (no key needed) follows readiness.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "chatcluster.api.v1.ServerApi".into(),
            })
            .await;
        if answer.as_ref().is_ok_and(|a| a.get_ref().status == 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Reflection lists the service.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"chatcluster.api.v1.ServerApi"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // Unary publish reaches a WebSocket client; errors carry the contract's code.
    let mut ws = node.connect().await;
    ws.subscribe("chat:g").await;
    let reply = api
        .publish(keyed(publish("chat:g", json!({"text": "from grpc"}))))
        .await
        .unwrap()
        .into_inner();
    let m = ws.recv_type("message").await;
    assert_eq!(m["offset"], reply.offset.as_str());
    assert_eq!(m["data"]["text"], "from grpc");
    assert_eq!(m["from"], "api");
    let bad = api
        .publish(keyed(publish("bad channel", json!(1))))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("bad_channel: "),
        "{}",
        bad.message()
    );
    let not_json = api
        .publish(keyed(proto::PublishRequest {
            channel: "chat:g".into(),
            data_json: "{nope".into(),
        }))
        .await
        .unwrap_err();
    assert!(not_json.message().starts_with("bad_json: "));

    let info = api
        .info(keyed(proto::InfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.nodes.len(), 1);
    assert_eq!(
        (info.nodes[0].node.as_str(), info.nodes[0].connections),
        ("g1", 1)
    );
    let listed = api
        .channels(keyed(proto::ChannelsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.channels[0].channel, "chat:g");
    let broadcast = api
        .broadcast(keyed(proto::BroadcastRequest {
            channels: vec!["chat:g".into(), "chat:h".into()],
            data_json: "2".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(broadcast.results.len(), 2);
    assert_eq!(ws.recv_type("message").await["data"], 2);
    let disconnected = api
        .disconnect(keyed(proto::DisconnectRequest {
            target: Some(proto::disconnect_request::Target::Client(
                ws.welcome["client"].as_str().unwrap().to_owned(),
            )),
            code: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((disconnected.count, disconnected.nodes), (1, 1));
    assert_eq!(ws.closed().await, 4002);
    let metrics = node.metrics().await;
    for (labels, expected) in [
        (
            r#"transport="grpc",method="unknown",code="unauthorized""#,
            2.0,
        ),
        (
            r#"transport="grpc",method="publish",code="bad_channel""#,
            1.0,
        ),
        (r#"transport="grpc",method="disconnect",code="ok""#, 1.0),
    ] {
        let series = format!("chat_server_api_requests_total{{{labels}}}");
        assert_eq!(
            common::metric_value(&metrics, &series),
            Some(expected),
            "{series}"
        );
    }
    node.shutdown().await;
}

fn subscribed(event: proto::SubscribeEvent) -> proto::Subscribed {
    match event.event {
        Some(proto::subscribe_event::Event::Subscribed(s)) => s,
        other => panic!("not a `subscribed`: {other:?}"),
    }
}

fn message(event: proto::SubscribeEvent) -> proto::Message {
    match event.event {
        Some(proto::subscribe_event::Event::Message(m)) => m,
        other => panic!("not a message: {other:?}"),
    }
}

#[tokio::test]
async fn streaming_modes() {
    let (node, _key) = start(&["--send-queue", "8", "--max-publish-rate", "0"]).await;
    let mut api = ServerApiClient::new(channel(&node).await);

    // Client streaming: three publishes, one refused, one summary in order.
    let publishes = vec![
        publish("chat:s", json!(1)),
        publish("bad channel", json!(2)),
        publish("chat:s", json!(3)),
    ];
    let summary = api
        .publish_stream(keyed(futures_util::stream::iter(publishes)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.published, summary.failed), (2, 1));
    let offsets: Vec<Option<String>> = summary
        .results
        .iter()
        .map(|r| match &r.result {
            Some(proto::channel_result::Result::Offset(o)) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert!(offsets[0].is_some() && offsets[1].is_none() && offsets[2].is_some());
    let Some(proto::channel_result::Result::Error(error)) = &summary.results[1].result else {
        panic!("no error for the bad channel");
    };
    assert_eq!(error.code, "bad_channel");

    // Server streaming with `since`: where it starts (one message recovered), the message after
    // the first one, then live ones.
    let mut stream = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:s".into()],
            since: offsets[0].clone().unwrap(),
            epoch: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let started = subscribed(stream.message().await.unwrap().unwrap());
    assert_eq!(
        (started.channel.as_str(), started.recovered, started.gap),
        ("chat:s", 1, false)
    );
    assert_eq!(Some(started.offset), offsets[2].clone());
    assert!(!started.epoch.is_empty());
    let recovered = message(stream.message().await.unwrap().unwrap());
    assert_eq!(Some(recovered.offset), offsets[2].clone());
    assert_eq!(recovered.data_json, "3");
    let live = api
        .publish(keyed(publish("chat:s", json!({"live": true}))))
        .await
        .unwrap()
        .into_inner();
    let got = message(stream.message().await.unwrap().unwrap());
    assert_eq!((got.offset, got.from.as_str()), (live.offset, "api"));

    // Bidirectional: subscribe, publish, and receive the own message with the ack's offset.
    let (requests, inbound) = tokio::sync::mpsc::channel::<proto::SessionRequest>(8);
    let inbound =
        futures_util::stream::unfold(
            inbound,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );
    let mut events = api.session(keyed(inbound)).await.unwrap().into_inner();
    requests
        .send(proto::SessionRequest {
            r#ref: "s1".into(),
            request: Some(proto::session_request::Request::Subscribe(
                "chat:bot".into(),
            )),
        })
        .await
        .unwrap();
    let ack = events.message().await.unwrap().unwrap();
    assert!(
        matches!(&ack.event, Some(proto::session_event::Event::Reply(r))
            if r.r#ref == "s1" && matches!(&r.result, Some(proto::reply::Result::Subscribed(s))
                if s.channel == "chat:bot" && !s.epoch.is_empty())),
        "{ack:?}"
    );
    requests
        .send(proto::SessionRequest {
            r#ref: "p1".into(),
            request: Some(proto::session_request::Request::Publish(publish(
                "chat:bot",
                json!("beep"),
            ))),
        })
        .await
        .unwrap();
    let (mut acked, mut seen) = (None, None);
    while acked.is_none() || seen.is_none() {
        match events.message().await.unwrap().unwrap().event {
            Some(proto::session_event::Event::Reply(proto::Reply {
                r#ref,
                result: Some(proto::reply::Result::Offset(offset)),
            })) if r#ref == "p1" => acked = Some(offset),
            Some(proto::session_event::Event::Message(m)) => seen = Some(m.offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked, seen, "the session receives its own publish");
    requests
        .send(proto::SessionRequest {
            r#ref: "u1".into(),
            request: Some(proto::session_request::Request::Unsubscribe(
                "chat:nothing".into(),
            )),
        })
        .await
        .unwrap();
    let Some(proto::session_event::Event::Reply(proto::Reply {
        r#ref,
        result: Some(proto::reply::Result::Error(error)),
    })) = events.message().await.unwrap().unwrap().event
    else {
        panic!("no error for an unsubscribe of nothing");
    };
    assert_eq!((r#ref.as_str(), error.code.as_str()), ("u1", "bad_request"));
    drop(requests);
    assert!(
        events.message().await.unwrap().is_none(),
        "half-close ends the session"
    );

    // A subscriber that never reads is cut off with RESOURCE_EXHAUSTED, not buffered for.
    let mut slow = api
        .subscribe(keyed(proto::SubscribeRequest {
            channels: vec!["chat:flood".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let big = "x".repeat(4000);
    let flood: Vec<_> = (0..400)
        .map(|i| publish("chat:flood", json!({"i": i, "pad": big})))
        .collect();
    let summary = api
        .publish_stream(keyed(futures_util::stream::iter(flood)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.published, 400);
    let mut read = 0;
    let status = loop {
        match slow.message().await {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended without a status after {read}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("slow_consumer"));
    assert!(read < 400, "read {read} of 400 before the cut");
    node.shutdown().await;
}
