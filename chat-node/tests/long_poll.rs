//! Long-polling (`GET /poll`) through a real HTTP client: on the embedded broker (waits, answers
//! a live publish, answers at once from history, times out, gaps on a foreign epoch, ends on
//! drain), across three nodes sharing a real redis-server (a poll waiting on one node answers
//! a publish on another; per-channel cursors lose and repeat nothing), and against an attacker
//! (a flood of polls hits the per-client and per-node caps with 429 / 503 while the node keeps
//! serving others; garbage and huge queries get 400; `wait` and answer sizes are capped).

mod common;

use std::time::{Duration, Instant};

use common::{Node, SECRET, WAIT, http_publish, metric_value, now_secs, token};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    bytes: usize,
}

async fn poll(node: &Node, query: &str, bearer: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().get(node.http(&format!("/poll?{query}")));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(Duration::from_secs(30), request.send())
        .await
        .expect("the poll answers within its wait")
        .expect("the poll gets an answer");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    if status == 200 {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    let text = response.text().await.unwrap();
    Answer {
        status,
        retry_after,
        bytes: text.len(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// The `data` of an answer's messages, each checked to be a `message` frame of `channel`.
fn data_of(body: &Value, channel: &str) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages in {body}"))
        .iter()
        .map(|m| {
            assert_eq!(
                (&m["type"], &m["channel"]),
                (&json!("message"), &json!(channel))
            );
            m["data"].clone()
        })
        .collect()
}

async fn publish(node: &Node, channel: &str, data: Value, bearer: Option<&str>) -> String {
    let (status, body) = http_publish(
        node,
        &json!({"channel": channel, "data": data}).to_string(),
        bearer,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_str().unwrap().to_owned()
}

/// Waits until exactly `n` polls wait for live messages on `node`.
async fn waiting(node: &Node, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = metric_value(&node.metrics().await, "chat_long_polls_waiting");
        if now == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} waiting polls (last {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn result_count(metrics: &str, result: &str) -> f64 {
    metric_value(
        metrics,
        &format!("chat_long_polls_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn embedded_poll_waits_answers_resumes_and_gaps() {
    let node = Node::start(&["--max-publish-rate", "0"]).await;
    let ch = "chat:lp";
    // Nothing yet: the poll waits its `wait`, then answers empty with where to continue.
    let started = Instant::now();
    let empty = poll(&node, &format!("channel={ch}&wait=300ms"), None).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.body["messages"], json!([]));
    assert_eq!(empty.body["offset"], "0-0");
    let epoch = empty.body["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    assert_eq!(empty.body["channels"][ch]["epoch"], epoch.as_str());
    assert!(empty.body.get("gap").is_none());

    // A waiting poll answers the next publish.
    let waiter = tokio::spawn({
        let url = node.http(&format!("/poll?channel={ch}&wait=20s"));
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    waiting(&node, 1.0).await;
    let first = publish(&node, ch, json!({"n": 1}), None).await;
    let live = waiter.await.unwrap();
    assert_eq!(data_of(&live, ch), [json!({"n": 1})]);
    assert_eq!(live["messages"][0]["offset"], first.as_str());
    assert_eq!(live["offset"], first.as_str());
    assert_eq!(live["channels"][ch]["offset"], first.as_str());
    assert_eq!(live["epoch"], epoch.as_str());
    waiting(&node, 0.0).await;

    // Messages after `since` are answered at once from history, in order.
    let mut later = Vec::new();
    for n in 2..=4 {
        later.push(publish(&node, ch, json!({"n": n}), None).await);
    }
    let started = Instant::now();
    let caught_up = poll(
        &node,
        &format!("channel={ch}&since={first}&epoch={epoch}&wait=20s"),
        None,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        data_of(&caught_up.body, ch),
        [json!({"n": 2}), json!({"n": 3}), json!({"n": 4})]
    );
    assert_eq!(caught_up.body["offset"], later[2].as_str());
    // The per-channel form gives the same.
    let same = poll(&node, &format!("channel={ch}@{first}"), None).await;
    assert_eq!(same.body["messages"], caught_up.body["messages"]);

    // An offset from another history (epoch) is a gap: answered at once, nothing replayed,
    // and the cursor is the channel's newest offset.
    let gap = poll(
        &node,
        &format!("channel={ch}&since=1-0&epoch=zzzzzzzzzzzz&wait=20s"),
        None,
    )
    .await;
    assert_eq!(gap.body["gap"], true, "{}", gap.body);
    assert_eq!(gap.body["channels"][ch]["gap"], true);
    assert_eq!(gap.body["messages"], json!([]));
    assert_eq!(gap.body["channels"][ch]["offset"], later[2].as_str());

    let metrics = node.metrics().await;
    assert!(result_count(&metrics, "messages") >= 3.0, "{metrics}");
    assert_eq!(result_count(&metrics, "timeout"), 1.0);
    assert_eq!(result_count(&metrics, "gap"), 1.0);
    assert!(
        metric_value(
            &metrics,
            "chat_messages_delivered_total{channel_namespace=\"other\"}"
        )
        .unwrap()
            >= 7.0,
        "{metrics}"
    );

    // Drain: a waiting poll is answered (empty) at once instead of at the end of its wait.
    let waiter = tokio::spawn({
        let url = node.http(&format!("/poll?channel={ch}&wait=20s"));
        async move {
            let started = Instant::now();
            let response = reqwest::get(url).await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        }
    });
    waiting(&node, 1.0).await;
    node.shutdown().await;
    let (status, body, took) = waiter.await.unwrap();
    assert_eq!((status, &body["messages"]), (200, &json!([])), "{body}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn redis_poll_on_one_node_answers_a_publish_on_another() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let node = Node::start(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--max-publish-rate",
            "0",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    let (a, b) = ("room:a", "room:b");
    // One poll covers two channels; a publish on another node answers it.
    let waiter = tokio::spawn({
        let url = nodes[1].http(&format!("/poll?channel={a}&channel={b}&wait=20s"));
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    waiting(&nodes[1], 1.0).await;
    let offset = publish(&nodes[0], b, json!("across"), None).await;
    let answer = waiter.await.unwrap();
    assert_eq!(data_of(&answer, b), [json!("across")]);
    assert_eq!(answer["channels"][b]["offset"], offset.as_str());
    assert_eq!(answer["channels"][a]["offset"], "0-0");
    assert!(
        answer.get("epoch").is_none(),
        "two channels: epochs per channel"
    );

    // A client following both channels with the answers' cursors, on node 2, while node 0
    // publishes 40 messages alternately: every one arrives once, in order per channel.
    let mut cursors: Vec<(String, String)> = [a, b]
        .iter()
        .map(|c| {
            (
                (*c).to_owned(),
                answer["channels"][*c]["offset"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let publisher = tokio::spawn({
        let url = nodes[0].http("/api/publish");
        async move {
            let client = reqwest::Client::new();
            for n in 0..40 {
                let channel = if n % 2 == 0 { "room:a" } else { "room:b" };
                let body = json!({"channel": channel, "data": n}).to_string();
                let status = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
            }
        }
    });
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while got_a.len() + got_b.len() < 40 {
        assert!(Instant::now() < deadline, "got {got_a:?} {got_b:?}");
        let query: Vec<String> = cursors
            .iter()
            .map(|(c, o)| format!("channel={c}@{o}"))
            .collect();
        let answer = poll(&nodes[2], &format!("{}&wait=5s", query.join("&")), None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.body.get("gap").is_none(), "{}", answer.body);
        for message in answer.body["messages"].as_array().unwrap() {
            let n = message["data"].as_u64().unwrap();
            match message["channel"].as_str().unwrap() {
                "room:a" => got_a.push(n),
                _ => got_b.push(n),
            }
        }
        for (channel, offset) in &mut cursors {
            *offset = answer.body["channels"][channel.as_str()]["offset"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }
    publisher.await.unwrap();
    assert_eq!(got_a, (0..40).step_by(2).collect::<Vec<_>>());
    assert_eq!(got_b, (1..40).step_by(2).collect::<Vec<_>>());
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_flood_of_polls_hits_the_caps_and_the_node_serves_others() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--max-publish-rate",
        "0",
        "--max-polls",
        "4",
        "--max-polls-per-client",
        "2",
    ])
    .await;
    let bearer = |sub: &str| token(SECRET, json!({"sub": sub, "exp": now_secs() + 600}));
    let (mallory, bob, carol) = (bearer("mallory"), bearer("bob"), bearer("carol"));
    let ch = "chat:flood";
    let spawn_poll = |who: &str| {
        let url = node.http(&format!("/poll?channel={ch}&wait=20s"));
        let who = who.to_owned();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(who)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().contains_key("retry-after");
            (status, retry, response.json::<Value>().await.unwrap())
        })
    };
    // 30 polls of one client at once: 2 wait, 28 are refused at once with 429.
    let flood: Vec<_> = (0..30).map(|_| spawn_poll(&mallory)).collect();
    waiting(&node, 2.0).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for task in flood {
        if task.is_finished() {
            let (status, retry, body) = task.await.unwrap();
            assert_eq!((status, retry), (429, true), "{body}");
            assert_eq!(body["code"], "rate_limited");
            refused += 1;
        } else {
            held.push(task);
        }
    }
    // The refused ones answered without waiting; count those still running.
    let deadline = Instant::now() + WAIT;
    while refused < 28 {
        assert!(Instant::now() < deadline, "only {refused} refused");
        let mut still = Vec::new();
        for task in held {
            if task.is_finished() {
                let (status, _, body) = task.await.unwrap();
                assert_eq!(status, 429, "{body}");
                refused += 1;
            } else {
                still.push(task);
            }
        }
        held = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held.len(), 2);
    // Another client still gets its polls, up to the node's cap of 4 ...
    held.push(spawn_poll(&bob));
    held.push(spawn_poll(&bob));
    waiting(&node, 4.0).await;
    // ... past which a poll gets 503 with Retry-After ...
    let full = poll(&node, &format!("channel={ch}&wait=20s"), Some(&carol)).await;
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.body["code"], "at_capacity");
    assert!(full.retry_after.is_some());
    // ... while everything else keeps working for it: history, WebSocket, publish.
    let history = reqwest::Client::new()
        .get(node.http(&format!("/api/history?channel={ch}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 200);
    let mut ws = common::Client::connect(&format!("{}?token={carol}", node.ws_url()), &[])
        .await
        .expect("a WebSocket client is served");
    ws.subscribe(ch).await;
    let offset = publish(&node, ch, json!("wake"), Some(&carol)).await;
    for task in held {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["offset"], offset.as_str());
        assert_eq!(data_of(&body, ch), [json!("wake")]);
    }
    assert_eq!(ws.recv_offsets(1).await, [offset]);
    // The places are free again.
    waiting(&node, 0.0).await;
    let after = poll(&node, &format!("channel={ch}&wait=50ms"), Some(&carol)).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let metrics = node.metrics().await;
    assert_eq!(result_count(&metrics, "limited"), 29.0, "{metrics}");
    node.shutdown().await;
}

#[tokio::test]
async fn garbage_polls_are_refused_and_wait_is_capped() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--max-poll-wait",
        "300ms",
        "--max-subscriptions",
        "8",
    ])
    .await;
    let good = token(
        SECRET,
        json!({"sub": "u", "exp": now_secs() + 600, "channels": ["chat:*"]}),
    );
    let refused = |answer: &Answer, status: u16, code: &str| {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.body["code"], code, "{}", answer.body);
    };
    refused(
        &poll(&node, "channel=chat:x", None).await,
        401,
        "unauthorized",
    );
    refused(
        &poll(&node, "channel=chat:x&token=not-a-jwt", None).await,
        401,
        "unauthorized",
    );
    let bad = [
        ("", "bad_request"),
        ("channel=chat:x&wait=forever", "bad_request"),
        ("channel=chat:x&wait=-1", "bad_request"),
        ("channel=chat:x&wait=184467440737095516160", "bad_request"),
        ("channel=chat:x&since=garbage", "bad_request"),
        ("channel=chat:x@1-x", "bad_request"),
        (
            "channel=chat:x&epoch=%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00",
            "bad_request",
        ),
        ("channel=chat:%F0%9F%92%A9", "bad_channel"),
        ("channel=chat:x%20y", "bad_channel"),
        ("channel=", "bad_channel"),
    ];
    for (query, code) in bad {
        refused(&poll(&node, query, Some(&good)).await, 400, code);
    }
    let many: Vec<String> = (0..9).map(|n| format!("channel=chat:{n}")).collect();
    refused(
        &poll(&node, &many.join("&"), Some(&good)).await,
        400,
        "too_many_subscriptions",
    );
    // A huge query is refused before it is parsed.
    let huge = format!("channel=chat:x&pad={}", "x".repeat(40 * 1024));
    refused(&poll(&node, &huge, Some(&good)).await, 400, "bad_request");
    // Rights as for SSE: a channel the token does not allow is 403.
    refused(
        &poll(&node, "channel=chat:x&channel=secret:y", Some(&good)).await,
        403,
        "forbidden",
    );
    // A token in the query works like the header; an hour's `wait` is cut to --max-poll-wait.
    let started = Instant::now();
    let capped = poll(
        &node,
        &format!("channel=chat:x&wait=3600&token={good}"),
        None,
    )
    .await;
    assert_eq!(capped.status, 200, "{}", capped.body);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let metrics = node.metrics().await;
    assert_eq!(result_count(&metrics, "refused"), 15.0, "{metrics}");
    assert_eq!(result_count(&metrics, "timeout"), 1.0);
    node.shutdown().await;
}

#[tokio::test]
async fn answers_are_bounded_in_messages_and_bytes() {
    let node = Node::start(&[
        "--max-publish-rate",
        "0",
        "--max-history-page",
        "5",
        "--send-queue-bytes",
        "3000",
    ])
    .await;
    // Small messages: 12 come back as pages of 5, 5 and 2, in order.
    let small = "chat:small";
    for n in 0..12 {
        publish(&node, small, json!(n), None).await;
    }
    let mut since = String::from("0-0");
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    loop {
        let answer = poll(
            &node,
            &format!("channel={small}&since={since}&wait=50ms"),
            None,
        )
        .await;
        let data = data_of(&answer.body, small);
        if data.is_empty() {
            break;
        }
        sizes.push(data.len());
        all.extend(data);
        since = answer.body["offset"].as_str().unwrap().to_owned();
    }
    assert_eq!(sizes, [5, 5, 2]);
    assert_eq!(all, (0..12).map(|n| json!(n)).collect::<Vec<_>>());
    // Big messages: at most --send-queue-bytes of them per answer (at least one), none lost.
    let big = "chat:big";
    let text = "x".repeat(900);
    for n in 0..6 {
        publish(&node, big, json!({"n": n, "text": text}), None).await;
    }
    let mut since = String::from("0-0");
    let mut got = Vec::new();
    while got.len() < 6 {
        let answer = poll(
            &node,
            &format!("channel={big}&since={since}&wait=50ms"),
            None,
        )
        .await;
        let data = data_of(&answer.body, big);
        assert!(!data.is_empty() && data.len() <= 3, "{}", data.len());
        assert!(answer.bytes <= 3000 + 512, "{} bytes", answer.bytes);
        got.extend(data.iter().map(|d| d["n"].as_u64().unwrap()));
        since = answer.body["offset"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (0..6).collect::<Vec<_>>());
    node.shutdown().await;
}

/// A poll ends when its token expires (like a WebSocket or an SSE stream), not at the end of
/// its `wait`: an expired token never holds a subscription.
#[tokio::test]
async fn a_poll_ends_when_its_token_expires() {
    let node = Node::start(&["--jwt-secret", SECRET, "--max-poll-wait", "20s"]).await;
    let short = token(SECRET, json!({"sub": "u", "exp": now_secs() + 2}));
    let started = Instant::now();
    let answer = poll(&node, "channel=chat:x&wait=20", Some(&short)).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(data_of(&answer.body, "chat:x"), Vec::<Value>::new());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the poll waited {took:?} for a token that expired after at most 2 s"
    );
    node.shutdown().await;
}
