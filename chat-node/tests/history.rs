//! History pages through real clients, on three nodes sharing a real redis-server and on the
//! embedded broker: the `history` frame forwards and backwards with exact contents, its
//! `offset` and `epoch`; `last` on subscribe; `GET /api/history` with and without a token; the
//! page cap against a client asking for 1,000,000; history of a channel the token does not
//! allow is refused, on the WebSocket and over HTTP.

mod common;

use common::{Client, Node, SECRET, now_secs, token};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;

const CHANNEL: &str = "chat:paged";
const PUBLISHED: usize = 25;

async fn redis_nodes(redis: &RedisServer, extra: &[&str]) -> Vec<Node> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let mut args = vec![
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--max-publish-rate",
            "0",
        ];
        args.extend_from_slice(extra);
        let node = Node::start(&args).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

/// Sends a `history` request (with a fresh `ref`) and returns the answer.
async fn history(client: &mut Client, mut frame: Value) -> Value {
    let reference = format!("h-{}", fastrand::u32(..));
    frame["type"] = json!("history");
    frame["ref"] = json!(reference);
    client.send(frame).await;
    loop {
        let reply = client.recv().await;
        assert_ne!(reply["type"], "error", "history refused: {reply}");
        if reply["type"] == "history" {
            assert_eq!(reply["ref"], reference.as_str(), "{reply}");
            return reply;
        }
    }
}

/// The `data` of a page's messages, checked to be `message` frames of `channel`.
fn page_data(page: &Value, channel: &str) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(
                (&m["type"], &m["channel"]),
                (&json!("message"), &json!(channel))
            );
            m["data"].as_u64().expect("data")
        })
        .collect()
}

fn page_offsets(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_str().unwrap().to_owned())
        .collect()
}

async fn publish_numbers(client: &mut Client) -> Vec<String> {
    let mut offsets = Vec::with_capacity(PUBLISHED);
    for i in 0..PUBLISHED {
        offsets.push(client.publish(CHANNEL, json!(i)).await);
    }
    offsets
}

/// Pages through [`CHANNEL`] on `reader` (published 0..25 on another connection) both ways,
/// and checks every page's exact contents, `offset` and `epoch`.
async fn assert_paging(reader: &mut Client, offsets: &[String], epoch: &str) {
    let newest = offsets.last().unwrap().as_str();
    let range = |r: std::ops::Range<u64>| r.collect::<Vec<_>>();
    // Forwards from the start, 10 at a time, each page continuing after the last one's end.
    let mut since: Option<String> = None;
    for expected in [range(0..10), range(10..20), range(20..25), vec![]] {
        let mut frame = json!({"channel":CHANNEL,"limit":10});
        if let Some(since) = &since {
            frame["since"] = json!(since);
        }
        let page = history(reader, frame).await;
        assert_eq!(
            page_data(&page, CHANNEL),
            expected,
            "forwards after {since:?}"
        );
        assert_eq!(
            (&page["offset"], &page["epoch"]),
            (&json!(newest), &json!(epoch))
        );
        let got = page_offsets(&page);
        let first = expected.first().map(|&i| i as usize).unwrap_or(PUBLISHED);
        assert_eq!(got, offsets[first..first + got.len()]);
        since = got.last().cloned().or(since);
    }
    // Backwards from the newest, newest first.
    let mut before: Option<String> = None;
    let down = |r: std::ops::Range<u64>| r.rev().collect::<Vec<_>>();
    for expected in [down(15..25), down(5..15), down(0..5), vec![]] {
        let mut frame = json!({"channel":CHANNEL,"limit":10,"reverse":true});
        if let Some(before) = &before {
            frame["before"] = json!(before);
        }
        let page = history(reader, frame).await;
        assert_eq!(
            page_data(&page, CHANNEL),
            expected,
            "backwards before {before:?}"
        );
        before = page_offsets(&page).last().cloned().or(before);
    }
    // Both bounds are exclusive.
    let page = history(
        reader,
        json!({"channel":CHANNEL,"since":offsets[3],"before":offsets[7]}),
    )
    .await;
    assert_eq!(page_data(&page, CHANNEL), [4, 5, 6]);
    // A channel without messages: empty, offset 0-0, and its epoch already.
    let page = history(reader, json!({"channel":"chat:never"})).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["offset"], "0-0");
    assert!(!page["epoch"].as_str().unwrap().is_empty());
}

/// `last` on subscribe: the newest N, then live; capped like a page.
async fn assert_last(node: &Node, offsets: &[String], cap: usize) {
    let mut client = node.connect().await;
    client
        .send(json!({"type":"subscribe","channel":CHANNEL,"last":3}))
        .await;
    let sub = client.recv_type("subscribed").await;
    assert_eq!(
        (&sub["recovered"], sub.get("gap")),
        (&json!(3), None),
        "{sub}"
    );
    assert_eq!(client.recv_offsets(3).await, offsets[PUBLISHED - 3..]);
    let mut greedy = node.connect().await;
    greedy
        .send(json!({"type":"subscribe","channel":CHANNEL,"last":1_000_000}))
        .await;
    let sub = greedy.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], cap.min(PUBLISHED), "{sub}");
    assert_eq!(
        greedy.recv_offsets(cap.min(PUBLISHED)).await,
        offsets[PUBLISHED - cap.min(PUBLISHED)..]
    );
    // Live ones follow, once.
    let mut publisher = node.connect().await;
    let live = publisher.publish(CHANNEL, json!("live")).await;
    assert_eq!(client.recv_offsets(1).await, std::slice::from_ref(&live));
    assert_eq!(greedy.recv_offsets(1).await, [live]);
}

async fn http_history(node: &Node, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(node.http(&format!("/api/history?{query}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn redis_history_pages_across_nodes() {
    let redis = RedisServer::start().await;
    let nodes = redis_nodes(&redis, &["--max-history-page", "12"]).await;
    let mut publisher = nodes[0].connect().await;
    let offsets = publish_numbers(&mut publisher).await;
    let mut subscriber = nodes[2].connect().await;
    let epoch = subscriber.subscribe(CHANNEL).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut reader = nodes[1].connect().await;
    assert_paging(&mut reader, &offsets, &epoch).await;
    // The cap: 1,000,000 asked, 12 given, on the WebSocket and over HTTP; no limit = the cap.
    let page = history(&mut reader, json!({"channel":CHANNEL,"limit":1_000_000})).await;
    assert_eq!(page_data(&page, CHANNEL), (0..12).collect::<Vec<_>>());
    let page = history(&mut reader, json!({"channel":CHANNEL,"reverse":true})).await;
    assert_eq!(
        page_data(&page, CHANNEL),
        (13..25).rev().collect::<Vec<_>>()
    );
    let (status, body) = http_history(
        &nodes[0],
        &format!(
            "channel={CHANNEL}&limit=1000000&reverse=true&before={}",
            offsets[20]
        ),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("type").is_none(), "{body}");
    assert_eq!(page_data(&body, CHANNEL), (8..20).rev().collect::<Vec<_>>());
    assert_eq!(body["epoch"], epoch.as_str());
    assert_last(&nodes[2], &offsets, 12).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn memory_history_pages_and_caps() {
    let node = Node::start(&["--max-publish-rate", "0", "--max-history-page", "12"]).await;
    let mut publisher = node.connect().await;
    let offsets = publish_numbers(&mut publisher).await;
    let epoch = publisher.subscribe(CHANNEL).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut reader = node.connect().await;
    assert_paging(&mut reader, &offsets, &epoch).await;
    let page = history(&mut reader, json!({"channel":CHANNEL,"limit":1_000_000})).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 12);
    let (status, body) =
        http_history(&node, &format!("channel={CHANNEL}&limit=1000000"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(page_data(&body, CHANNEL), (0..12).collect::<Vec<_>>());
    // limit 0: no messages, still the offset and epoch.
    let page = history(&mut reader, json!({"channel":CHANNEL,"limit":0})).await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["offset"], offsets.last().unwrap().as_str());
    assert_last(&node, &offsets, 12).await;
    // Clear errors.
    for (frame, code) in [
        (json!({"type":"history"}), "bad_request"),
        (json!({"type":"history","channel":"a b"}), "bad_channel"),
        (
            json!({"type":"history","channel":CHANNEL,"limit":-5}),
            "bad_request",
        ),
        (
            json!({"type":"history","channel":CHANNEL,"before":"soon"}),
            "bad_request",
        ),
        (
            json!({"type":"subscribe","channel":CHANNEL,"last":5,"since":"0-0"}),
            "bad_request",
        ),
    ] {
        assert_eq!(reader.expect_error(frame.clone()).await, code, "{frame}");
    }
    for (query, status, code) in [
        ("", 400, "bad_request"),
        ("channel=a&channel=b", 400, "bad_request"),
        ("channel=a%20b", 400, "bad_channel"),
        ("channel=a&limit=many", 400, "bad_request"),
        ("channel=a&since=x", 400, "bad_request"),
        ("channel=a&reverse=maybe", 400, "bad_request"),
    ] {
        let (got, body) = http_history(&node, query, &[]).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
    }
    node.shutdown().await;
}

/// History follows the subscribe rights of the token, on the WebSocket and over HTTP, and HTTP
/// follows the Origin rules of `/sse`.
#[tokio::test]
async fn history_needs_the_rights_to_subscribe() {
    let node = Node::start(&["--jwt-secret", SECRET, "--max-publish-rate", "0"]).await;
    let admin = token(SECRET, json!({"sub":"admin","exp":now_secs() + 60}));
    let user = token(
        SECRET,
        json!({"sub":"mallory","exp":now_secs() + 60,"channels":["chat:*"]}),
    );
    let mut owner = Client::connect(&format!("{}?token={admin}", node.ws_url()), &[])
        .await
        .unwrap();
    let secret = owner.publish("secret:plans", json!("the plan")).await;
    owner.publish("chat:lobby", json!(1)).await;

    let mut attacker = Client::connect(&format!("{}?token={user}", node.ws_url()), &[])
        .await
        .unwrap();
    let reply = {
        attacker
            .send(json!({"type":"history","channel":"secret:plans","ref":"x1"}))
            .await;
        attacker.recv_type("error").await
    };
    assert_eq!(
        (&reply["code"], &reply["ref"]),
        (&json!("forbidden"), &json!("x1"))
    );
    assert!(!reply.to_string().contains("the plan"));
    assert_eq!(
        attacker
            .expect_error(json!({"type":"subscribe","channel":"secret:plans","last":10}))
            .await,
        "forbidden"
    );
    let page = history(&mut attacker, json!({"channel":"chat:lobby"})).await;
    assert_eq!(page["messages"][0]["data"], 1);

    let query = format!("channel=secret:plans&before={}9", secret);
    let bearer = |t: &str| format!("Bearer {t}");
    let (status, body) = http_history(&node, &query, &[]).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = http_history(&node, &query, &[("authorization", "Bearer forged")]).await;
    assert_eq!(status, 401);
    let (status, body) = http_history(&node, &query, &[("authorization", &bearer(&user))]).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert!(!body.to_string().contains("the plan"));
    let (status, body) = http_history(&node, &query, &[("authorization", &bearer(&admin))]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["data"], "the plan");
    let (status, body) = http_history(&node, &format!("{query}&token={admin}"), &[]).await;
    assert_eq!(
        (status, &body["messages"][0]["data"]),
        (200, &json!("the plan"))
    );
    // A page of another site may not read it with the visitor's token.
    let (status, body) = http_history(
        &node,
        &query,
        &[
            ("authorization", &bearer(&admin)),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    node.shutdown().await;
}
