//! Identities, origins and rates (docs/security.md, "chat-node: identities, origins and rates"):
//! each test replays an attack of the security review against a node on port 0 and asserts
//! the bound with numbers.

mod common;

use common::{Client, Node, handshake_status, metric_value};
use serde_json::json;

/// POST /api/publish the way a browser sends a cross-site "simple" request: `text/plain`, no
/// preflight, with the page's Origin. Returns the status.
async fn browser_post(node: &Node, origin: &str, channel: &str) -> u16 {
    reqwest::Client::new()
        .post(node.http("/api/publish"))
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", origin)
        .body(json!({"channel": channel, "data": "from a page"}).to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn sse_status(node: &Node, origin: &str) -> u16 {
    reqwest::Client::new()
        .get(node.http("/sse?channel=news"))
        .header("origin", origin)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The review's attack: with the default settings another site's page published through a
/// cross-site `text/plain` POST (200, delivered). Now every browser-reachable endpoint refuses
/// a foreign Origin by default (403, nothing published), the node's own origin works without
/// configuration, and programs (no Origin) are unaffected.
#[tokio::test]
async fn default_origin_policy_refuses_cross_site_requests_everywhere() {
    let node = Node::start(&[]).await;
    let evil = "https://evil.example";
    let own = format!("http://{}", node.addr);

    let mut watcher = node.connect().await;
    watcher.subscribe("chat:room").await;
    assert_eq!(browser_post(&node, evil, "chat:room").await, 403);
    assert_eq!(
        handshake_status(&node.ws_url(), &[("origin", evil)]).await,
        403
    );
    assert_eq!(sse_status(&node, evil).await, 403);
    assert_eq!(
        handshake_status(&node.ws_url(), &[("origin", "null")]).await,
        403
    );

    // The node's own pages (the demo page), and programs without an Origin, still work.
    assert_eq!(browser_post(&node, &own, "chat:room").await, 200);
    assert_eq!(
        handshake_status(&node.ws_url(), &[("origin", &own)]).await,
        101
    );
    assert_eq!(handshake_status(&node.ws_url(), &[]).await, 101);
    // The only message that arrived is the same-origin one.
    let message = watcher.recv_type("message").await;
    assert_eq!(message["from"], "http");
    let published = metric_value(
        &node.metrics().await,
        "chat_messages_published_total{channel_namespace=\"other\"}",
    );
    assert_eq!(
        published,
        Some(1.0),
        "the cross-site POST published nothing"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn listed_origins_and_the_wildcard() {
    let node = Node::start(&["--allowed-origins", "https://app.example"]).await;
    assert_eq!(browser_post(&node, "https://app.example", "a").await, 200);
    assert_eq!(browser_post(&node, "https://evil.example", "a").await, 403);
    assert_eq!(sse_status(&node, "https://evil.example").await, 403);
    node.shutdown().await;

    let node = Node::start(&["--allowed-origins", "*"]).await;
    assert_eq!(
        browser_post(&node, "https://anyone.example", "a").await,
        200
    );
    assert_eq!(
        handshake_status(&node.ws_url(), &[("origin", "https://anyone.example")]).await,
        101
    );
    node.shutdown().await;
}

/// Auth off is visible without reading logs: `chat_auth_enabled` is 0 (1 with a key).
#[tokio::test]
async fn auth_state_is_a_metric() {
    let node = Node::start(&[]).await;
    assert_eq!(
        metric_value(&node.metrics().await, "chat_auth_enabled"),
        Some(0.0)
    );
    node.shutdown().await;
    let node = Node::start(&["--jwt-secret", common::SECRET]).await;
    assert_eq!(
        metric_value(&node.metrics().await, "chat_auth_enabled"),
        Some(1.0)
    );
    node.shutdown().await;
}

/// Sends `n` publishes without waiting, then reads their `n` answers: (acks, rate_limited).
async fn ws_burst(client: &mut Client, channel: &str, n: usize) -> (usize, usize) {
    for i in 0..n {
        client
            .send(json!({"type":"publish","channel":channel,"data":i,"ref":format!("b{i}")}))
            .await;
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < n {
        let frame = client.recv().await;
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            (Some("error"), _) => panic!("unexpected error {frame}"),
            _ => {}
        }
    }
    (acked, limited)
}

/// `n` HTTP publishes at once: (200s, 429s with `rate_limited`).
async fn http_burst(node: &Node, channel: &str, n: usize, bearer: Option<&str>) -> (usize, usize) {
    let body = json!({"channel": channel, "data": "h"}).to_string();
    let answers =
        futures_util::future::join_all((0..n).map(|_| common::http_publish(node, &body, bearer)))
            .await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let limited = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b["code"] == "rate_limited")
        .count();
    assert_eq!(ok + limited, n, "only 200 or 429: {answers:?}");
    (ok, limited)
}

/// Most publishes a budget of `rate`/s (bursts of `rate`) can allow in `elapsed`, plus one for
/// rounding: the bound every attack below must stay under.
fn budget(rate: f64, elapsed: std::time::Duration) -> usize {
    (rate + (rate * elapsed.as_secs_f64()).ceil() + 1.0) as usize
}

/// The review's attack: at a limit of 5/s, 50 of 50 publishes were accepted by spreading them
/// over connections and `POST /api/publish`. Now one anonymous client address has one budget
/// across two WebSockets and HTTP: at most 5 + 5/s of the 50 pass.
#[tokio::test]
async fn one_budget_per_client_address_across_transports() {
    let node = Node::start(&["--max-publish-rate", "5"]).await;
    let mut first = node.connect().await;
    let mut second = node.connect().await;
    let started = std::time::Instant::now();
    let ((a_ok, a_limited), (b_ok, b_limited), (h_ok, h_limited)) = tokio::join!(
        ws_burst(&mut first, "chat:flood", 17),
        ws_burst(&mut second, "chat:flood", 17),
        http_burst(&node, "chat:flood", 16, None),
    );
    let elapsed = started.elapsed();
    let accepted = a_ok + b_ok + h_ok;
    let bound = budget(5.0, elapsed);
    println!(
        "50 publishes over 2 WebSockets + HTTP at 5/s: {accepted} accepted \
         (ws {a_ok} + ws {b_ok} + http {h_ok}), {} refused, in {elapsed:?}; bound {bound}",
        a_limited + b_limited + h_limited
    );
    assert!(accepted >= 5, "the burst is granted: {accepted}");
    assert!(accepted <= bound, "{accepted} accepted, bound {bound}");
    assert_eq!(accepted + a_limited + b_limited + h_limited, 50);
    let metrics = node.metrics().await;
    let refused = metric_value(&metrics, "websocket_errors_total{code=\"rate_limited\"}");
    assert_eq!(refused, Some((50 - accepted) as f64));
    // Refused publishes leave the connections open.
    node.wait_metric("websocket_active_connections", 2.0).await;
    node.shutdown().await;
}

/// With tokens the budget is the user's (`sub`), wherever they publish from; another user
/// keeps a full budget of their own.
#[tokio::test]
async fn one_budget_per_token_subject() {
    let node = Node::start(&["--jwt-secret", common::SECRET, "--max-publish-rate", "5"]).await;
    let alice = common::token(
        common::SECRET,
        json!({"sub":"alice","exp":common::now_secs() + 600}),
    );
    let bob = common::token(
        common::SECRET,
        json!({"sub":"bob","exp":common::now_secs() + 600}),
    );
    let url = node.ws_url();
    let auth = |t: &str| format!("Bearer {t}");
    let mut alice_ws = Client::connect(&url, &[("authorization", &auth(&alice))])
        .await
        .unwrap();
    let mut alice_ws2 = Client::connect(&format!("{url}?token={alice}"), &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let ((a_ok, _), (a2_ok, _), (h_ok, _)) = tokio::join!(
        ws_burst(&mut alice_ws, "chat:a", 10),
        ws_burst(&mut alice_ws2, "chat:a", 10),
        http_burst(&node, "chat:a", 10, Some(&alice)),
    );
    let accepted = a_ok + a2_ok + h_ok;
    let bound = budget(5.0, started.elapsed());
    println!(
        "alice: 30 publishes over 2 WebSockets + HTTP at 5/s: {accepted} accepted; bound {bound}"
    );
    assert!(
        (5..=bound).contains(&accepted),
        "{accepted} accepted, bound {bound}"
    );
    // Bob, from the same address, is not limited by Alice's flood.
    let mut bob_ws = Client::connect(&url, &[("authorization", &auth(&bob))])
        .await
        .unwrap();
    let (bob_ok, bob_limited) = ws_burst(&mut bob_ws, "chat:b", 5).await;
    assert_eq!((bob_ok, bob_limited), (5, 0));
    node.shutdown().await;
}

/// Behind a proxy, `--client-address-header` gives each client its own budget (the header's
/// last entry, the one the proxy appended), so one flooding client does not spend everyone's.
#[tokio::test]
async fn proxy_header_separates_anonymous_clients() {
    let node = Node::start(&[
        "--max-publish-rate",
        "3",
        "--client-address-header",
        "X-Forwarded-For",
    ])
    .await;
    let post = |forwarded: &'static str| {
        let url = node.http("/api/publish");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", forwarded)
                .body(r#"{"channel":"x","data":1}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut flooder = Vec::new();
    for _ in 0..10 {
        // A forged first entry does not buy a new budget: the proxy's entry is the last one.
        flooder.push(post("1.2.3.4, 198.51.100.1").await);
    }
    let refused = flooder.iter().filter(|s| **s == 429).count();
    assert!(refused >= 5, "flooder refused {refused} of 10: {flooder:?}");
    assert_eq!(
        post("9.9.9.9, 198.51.100.2").await,
        200,
        "another client is unaffected"
    );
    node.shutdown().await;
}

/// Reads an SSE stream until it ends: every `(event, data)` in order (keep-alive comments
/// skipped). Panics if the stream is still open after `common::WAIT`.
async fn sse_until_end(response: reqwest::Response) -> Vec<(String, String)> {
    use futures_util::StreamExt;
    let mut stream = response.bytes_stream();
    let (mut buffer, mut events) = (String::new(), Vec::new());
    loop {
        let chunk = tokio::time::timeout(common::WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("the stream never ended; events so far {events:?}"));
        let Some(chunk) = chunk else { return events };
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = (String::from("message"), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_owned());
                }
            }
            if let Some(data) = data {
                events.push((event, data));
            }
        }
    }
}

/// The review's attack: an SSE stream kept streaming after its token's `exp` (a WebSocket is
/// closed with 1008). Now the stream ends at `exp` with a final `close` event carrying 1008
/// `token_expired`, and no message published afterwards reaches it.
#[tokio::test]
async fn sse_ends_when_the_token_expires() {
    let node = Node::start(&["--jwt-secret", common::SECRET]).await;
    // Accepted thanks to the 5 s leeway, expired for the server about a second from now.
    let short = common::token(
        common::SECRET,
        json!({"sub":"u","exp":common::now_secs() - 4}),
    );
    let response = reqwest::Client::new()
        .get(node.http("/sse?channel=news"))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = std::time::Instant::now();
    let events = sse_until_end(response).await;
    println!(
        "SSE with an expiring token ended after {:?}: {events:?}",
        started.elapsed()
    );
    let (event, data) = events.last().expect("a final event");
    assert_eq!(event, "close");
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(data, json!({"code":1008,"reason":"token_expired"}));
    node.wait_metric(
        "websocket_disconnections_total{reason=\"token_expired\"}",
        1.0,
    )
    .await;
    node.wait_metric("websocket_active_connections", 0.0).await;
    assert_eq!(
        metric_value(&node.metrics().await, "websocket_active_connections"),
        Some(0.0)
    );
    node.shutdown().await;
}

/// The review's attack: SSE clients that went away while their subscribe waited on Redis
/// left the hub entry and the Redis subscription behind (20 leaked). Redis is paused
/// (`CLIENT PAUSE`), 20 SSE clients each ask for their own channel and give up after 300 ms;
/// once Redis answers again, none of the 20 channels is still subscribed.
#[tokio::test]
async fn sse_clients_that_leave_during_a_slow_subscribe_leak_nothing() {
    let redis = test_harness::redis::RedisServer::start().await;
    let node = Node::start(&["--redis-url", &redis.url()]).await;
    node.wait_ready(200).await;
    const CLIENTS: usize = 20;
    // Shorter than the broker's 2 s response timeout: the session with Redis survives.
    redis
        .command(&["CLIENT", "PAUSE", "1500", "ALL"])
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = futures_util::future::join_all((0..CLIENTS).map(|i| {
        impatient
            .get(node.http(&format!("/sse?channel=leak-{i}")))
            .send()
    }))
    .await;
    assert!(gave_up.iter().all(|r| r.is_err()), "every client timed out");

    // A subscribe after the pause: the broker handles joins and leaves in order, so once
    // this one is live every earlier subscribe and unsubscribe has reached Redis.
    let sentinel = reqwest::Client::new()
        .get(node.http("/sse?channel=sentinel"))
        .send()
        .await
        .unwrap();
    assert_eq!(sentinel.status(), 200);

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut numsub = redis::cmd("PUBSUB");
    numsub.arg("NUMSUB").arg("chatnode:live:{sentinel}");
    for i in 0..CLIENTS {
        numsub.arg(format!("chatnode:live:{{leak-{i}}}"));
    }
    let counts: Vec<(String, i64)> = numsub.query_async(&mut conn).await.unwrap();
    let leaked = counts[1..].iter().filter(|(_, n)| *n > 0).count();
    println!(
        "{CLIENTS} SSE clients left during a paused SUBSCRIBE: {leaked} channels still subscribed; {counts:?}"
    );
    assert_eq!(counts[0].1, 1, "the sentinel is subscribed");
    assert_eq!(leaked, 0, "leaked Redis subscriptions");
    // Only the sentinel holds a connection slot.
    assert_eq!(
        metric_value(&node.metrics().await, "websocket_active_connections"),
        Some(1.0)
    );
    drop(sentinel);
    node.shutdown().await;
}

/// A token's status at the WebSocket handshake (101 or the refusal).
async fn ws_with(node: &Node, token: &str) -> u16 {
    handshake_status(&format!("{}?token={token}", node.ws_url()), &[]).await
}

/// The review's findings on token validation: `nbf` was ignored, tokens with `aud` were always
/// refused and `iss`/`aud` could not be required, and any HS256 secret length was accepted.
#[tokio::test]
async fn token_claims_nbf_iss_aud() {
    let secret = common::SECRET;
    let exp = common::now_secs() + 600;
    let node = Node::start(&["--jwt-secret", secret]).await;
    let not_yet = common::token(
        secret,
        json!({"sub":"u","exp":exp,"nbf":common::now_secs() + 300}),
    );
    assert_eq!(ws_with(&node, &not_yet).await, 401, "nbf in the future");
    let with_aud = common::token(secret, json!({"sub":"u","exp":exp,"aud":"someone"}));
    assert_eq!(
        ws_with(&node, &with_aud).await,
        101,
        "aud is not judged when none is configured"
    );
    node.shutdown().await;

    let node = Node::start(&[
        "--jwt-secret",
        secret,
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "chat,chat-admin",
    ])
    .await;
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"sub":"u","exp":exp});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        common::token(secret, c)
    };
    let good = claims(json!({"iss":"https://id.example","aud":"chat"}));
    assert_eq!(ws_with(&node, &good).await, 101);
    let good_list = claims(json!({"iss":"https://id.example","aud":["x","chat-admin"]}));
    assert_eq!(ws_with(&node, &good_list).await, 101);
    for bad in [
        claims(json!({"iss":"https://evil.example","aud":"chat"})),
        claims(json!({"aud":"chat"})),
        claims(json!({"iss":"https://id.example","aud":"other"})),
        claims(json!({"iss":"https://id.example"})),
    ] {
        assert_eq!(ws_with(&node, &bad).await, 401);
        let (status, _) =
            common::http_publish(&node, r#"{"channel":"a","data":1}"#, Some(&bad)).await;
        assert_eq!(status, 401);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn short_hs256_secrets_are_refused_at_start() {
    for (secret, starts) in [
        ("s", false),
        (&"x".repeat(31)[..], false),
        (&"x".repeat(32)[..], true),
    ] {
        let config = chat_node::Config::from_args(["--jwt-secret", secret]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = chat_node::run(listener, admin, config, async {}).await;
        match result {
            Err(chat_node::ServeError::Auth(e)) => {
                assert!(!starts, "{} bytes refused", secret.len());
                assert!(e.to_string().contains("at least 32"), "{e}");
            }
            Ok(()) => assert!(starts, "{} bytes accepted", secret.len()),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

/// The review's finding: a signed token with `exp` near `u64::MAX` made the session panic
/// (closed 1011 `internal`). Such a token simply never expires now, on WebSocket and SSE.
#[tokio::test]
async fn an_exp_at_the_end_of_time_is_never_an_overflow() {
    let node = Node::start(&["--jwt-secret", common::SECRET]).await;
    let forever = common::token(common::SECRET, json!({"sub":"u","exp":u64::MAX}));
    let mut client = Client::connect(&format!("{}?token={forever}", node.ws_url()), &[])
        .await
        .unwrap();
    client.subscribe("a").await;
    client.publish("a", json!(1)).await;
    assert_eq!(client.recv_type("message").await["data"], 1);
    let sse = reqwest::Client::new()
        .get(node.http("/sse?channel=a"))
        .bearer_auth(&forever)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    client.publish("a", json!(2)).await;
    node.wait_metric(
        "chat_messages_delivered_total{channel_namespace=\"default\"}",
        3.0,
    )
    .await;
    let metrics = node.metrics().await;
    assert_eq!(
        metric_value(&metrics, "websocket_errors_total{code=\"internal\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&metrics, "websocket_active_connections"),
        Some(2.0)
    );
    drop(sse);
    node.shutdown().await;
}

/// The review's attack: 20,000 publishes to new namespaces made 20,001 series and a 1 MB
/// `/metrics`. Only configured namespaces are labels now: the same flood adds no series.
#[tokio::test]
async fn client_chosen_namespaces_add_no_metric_series() {
    let node = Node::start(&[
        "--max-publish-rate",
        "0",
        "--metrics-namespaces",
        "chat,news",
    ])
    .await;
    let before = node.metrics().await.len();
    let mut client = node.connect().await;
    const FLOOD: usize = 20_000;
    const BATCH: usize = 500;
    for batch in 0..FLOOD / BATCH {
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            client
                .send(json!({"type":"publish","channel":format!("ns{n}:x"),"data":n}))
                .await;
        }
        for _ in 0..BATCH {
            client.recv_type("ack").await;
        }
    }
    client.publish("chat:room", json!("counted")).await;
    let text = node.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("chat_messages_published_total{"))
        .collect();
    println!(
        "{FLOOD} publishes to new namespaces: {} published series, /metrics {} bytes (before: {before})",
        series.len(),
        text.len()
    );
    assert_eq!(series.len(), 4, "{series:?}");
    assert_eq!(
        metric_value(
            &text,
            "chat_messages_published_total{channel_namespace=\"other\"}"
        ),
        Some(FLOOD as f64)
    );
    assert_eq!(
        metric_value(
            &text,
            "chat_messages_published_total{channel_namespace=\"chat\"}"
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("ns1999"),
        "no client-chosen namespace in /metrics"
    );
    assert!(
        text.len() < before + 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    node.shutdown().await;
}

/// Generates a key pair with the openssl CLI into `dir`: (private PKCS#8 PEM, public SPKI PEM).
fn key_pair(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let private_path = private.to_str().unwrap();
    run(&[&["genpkey"][..], genpkey, &["-out", private_path]].concat());
    run(&[
        "pkey",
        "-in",
        private_path,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

fn signed(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    claims: serde_json::Value,
) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
}

/// RS256 and ES256 tokens (`--jwt-public-key-file`, the key's type picks the algorithm), tested
/// as HS256 is: a good token is accepted on WebSocket, HTTP publish and SSE, and its `channels`
/// bound it; an expired one, one not valid yet, one signed by another key, one of the other
/// algorithm, and one signed with HS256 using the public key as the secret (the algorithm
/// confusion attack) are refused with 401.
#[tokio::test]
async fn rs256_and_es256_tokens_are_verified_with_the_public_key() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let (rsa_private, rsa_public) = key_pair(dir.path(), "rsa", &rsa);
    let (other_rsa_private, _) = key_pair(dir.path(), "rsa-other", &rsa);
    let (ec_private, ec_public) = key_pair(dir.path(), "ec", &ec);
    let (other_ec_private, _) = key_pair(dir.path(), "ec-other", &ec);
    let rsa_key = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let other_rsa_key = EncodingKey::from_rsa_pem(&other_rsa_private).unwrap();
    let ec_key = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let other_ec_key = EncodingKey::from_ec_pem(&other_ec_private).unwrap();

    let now = common::now_secs();
    let good_claims = json!({"sub":"alice","exp":now + 600,"channels":["room:*"]});
    for (alg, key, other_key, public, wrong_alg) in [
        (
            Algorithm::RS256,
            &rsa_key,
            &other_rsa_key,
            &rsa_public,
            (Algorithm::ES256, &ec_key),
        ),
        (
            Algorithm::ES256,
            &ec_key,
            &other_ec_key,
            &ec_public,
            (Algorithm::RS256, &rsa_key),
        ),
    ] {
        let node = Node::start(&["--jwt-public-key-file", public.to_str().unwrap()]).await;
        assert_eq!(
            metric_value(&node.metrics().await, "chat_auth_enabled"),
            Some(1.0)
        );
        let good = signed(alg, key, good_claims.clone());
        assert_eq!(ws_with(&node, &good).await, 101, "{alg:?}");
        let mut client = Client::connect(&format!("{}?token={good}", node.ws_url()), &[])
            .await
            .unwrap();
        client.subscribe("room:1").await;
        assert_eq!(
            client
                .expect_error(json!({"type":"subscribe","channel":"secret:1"}))
                .await,
            "forbidden",
            "{alg:?}: the token's channels bound it"
        );
        let (status, _) =
            common::http_publish(&node, r#"{"channel":"room:1","data":"h"}"#, Some(&good)).await;
        assert_eq!(status, 200, "{alg:?}");
        let message = client.recv_type("message").await;
        assert_eq!(message["data"], "h");
        let sse = reqwest::Client::new()
            .get(node.http("/sse?channel=room:1"))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200, "{alg:?}");
        drop(sse);

        let public_pem = std::fs::read(public).unwrap();
        let refused = [
            (
                "expired",
                signed(alg, key, json!({"sub":"a","exp":now - 60})),
            ),
            (
                "not valid yet",
                signed(alg, key, json!({"sub":"a","exp":now + 600,"nbf":now + 300})),
            ),
            ("another key", signed(alg, other_key, good_claims.clone())),
            (
                "the other algorithm",
                signed(wrong_alg.0, wrong_alg.1, good_claims.clone()),
            ),
            (
                "HS256 with the public key as secret",
                signed(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(&public_pem),
                    good_claims.clone(),
                ),
            ),
        ];
        for (what, token) in &refused {
            assert_eq!(ws_with(&node, token).await, 401, "{alg:?}: {what}");
            let (status, _) =
                common::http_publish(&node, r#"{"channel":"room:1","data":1}"#, Some(token)).await;
            assert_eq!(status, 401, "{alg:?}: {what}");
        }
        // Only the good token's publish arrived.
        let metrics = node.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "chat_messages_published_total{channel_namespace=\"other\"}"
            ),
            Some(1.0),
            "{metrics}"
        );
        drop(client);
        node.shutdown().await;
    }

    // A file that holds no RSA or EC public key: the node does not start.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let config =
        chat_node::Config::from_args(["--jwt-public-key-file", garbage.to_str().unwrap()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match chat_node::run(listener, admin, config, async {}).await {
        Err(chat_node::ServeError::Auth(e)) => {
            assert!(e.to_string().contains("garbage.pem"), "{e}")
        }
        other => panic!("a node started with a garbage key: {other:?}"),
    }
}
