//! Rights in tokens, through real WebSocket, SSE and HTTP clients on a node: `subscribe` and
//! `publish` patterns beside `channels` (read-only channels), personal channels
//! (`user:#<sub>`), private namespaces and per-channel subscription tokens (wrong channel, user,
//! expiry, signature), and the per-user connection limit against a user opening many
//! connections at once.

mod common;

use std::time::Duration;

use common::{Client, Node, SECRET, WAIT, api_call, handshake_status, http_publish, now_secs};
use serde_json::{Value, json};
use tokio::time::Instant;

const API_KEY: &str = "server-api-key-0123456789abcdef";

fn token(claims: Value) -> String {
    common::token(SECRET, claims)
}

fn bearer(claims: Value) -> String {
    format!("Bearer {}", token(claims))
}

fn hour() -> u64 {
    now_secs() + 3600
}

async fn connect(node: &Node, claims: Value) -> Client {
    Client::connect(&node.ws_url(), &[("Authorization", &bearer(claims))])
        .await
        .expect("websocket handshake")
}

/// Sends `frame` and returns the answer to it: the `subscribed` of a subscribe (which carries
/// no `ref`), else the reply carrying the frame's `ref` (an answer or an `error`).
async fn answer(c: &mut Client, frame: Value) -> Value {
    if frame["type"] != "subscribe" {
        return c.request(frame).await;
    }
    c.send(frame).await;
    loop {
        let reply = c.recv().await;
        if reply["type"] == "subscribed" || reply["type"] == "error" {
            return reply;
        }
    }
}

struct KeyFile(tempfile::TempDir);

impl KeyFile {
    fn new() -> KeyFile {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), API_KEY).unwrap();
        KeyFile(dir)
    }

    fn path(&self) -> String {
        self.0.path().join("key").to_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_publish_patterns_make_read_only_channels() {
    let node = Node::start(&["--jwt-secret", SECRET]).await;
    let claims = json!({"sub":"ann","exp":hour(),
        "subscribe":["news:*","chat:*"],"publish":["chat:*"]});
    let mut ann = connect(&node, claims.clone()).await;
    ann.subscribe("news:today").await;
    ann.subscribe("chat:room").await;
    let refused = answer(
        &mut ann,
        json!({"type":"publish","channel":"news:today","data":"x"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    ann.publish("chat:room", json!("hi")).await;
    let refused = answer(&mut ann, json!({"type":"subscribe","channel":"admin:x"})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Over HTTP the same rights hold.
    let (status, body) = http_publish(
        &node,
        r#"{"channel":"news:today","data":1}"#,
        Some(&token(claims)),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    // `channels` keeps meaning both where no specific claim is given.
    let mut bob = connect(
        &node,
        json!({"sub":"bob","exp":hour(),"channels":["chat:*"],"subscribe":["chat:*","news:*"]}),
    )
    .await;
    bob.subscribe("news:today").await;
    bob.publish("chat:room", json!("from bob")).await;
    let refused = answer(
        &mut bob,
        json!({"type":"publish","channel":"news:today","data":"x"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_channel_is_its_users_alone() {
    let key = KeyFile::new();
    let node = Node::start_with_api(&["--jwt-secret", SECRET, "--api-key-file", &key.path()]).await;
    // Alice's token allows `chat:*` only: her own channel is hers all the same.
    let mut alice = connect(
        &node,
        json!({"sub":"alice","exp":hour(),"channels":["chat:*"]}),
    )
    .await;
    alice.subscribe("user:#alice").await;
    alice.subscribe("notifications:#alice").await;
    let mut bob = connect(&node, json!({"sub":"bob","exp":hour()})).await;
    for frame in [
        json!({"type":"subscribe","channel":"user:#alice"}),
        json!({"type":"history","channel":"user:#alice"}),
        json!({"type":"subscribe","channel":"user:#"}),
    ] {
        let refused = answer(&mut bob, frame.clone()).await;
        assert_eq!(refused["code"], "forbidden", "{frame} -> {refused}");
    }
    let mut nobody = connect(&node, json!({"exp":hour()})).await;
    let refused = answer(
        &mut nobody,
        json!({"type":"subscribe","channel":"user:#alice"}),
    )
    .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let sse = reqwest::Client::new()
        .get(node.http("/sse?channel=user:%23alice"))
        .bearer_auth(token(json!({"sub":"bob","exp":hour()})))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 403);
    // The backend reaches her there.
    let (status, body) = api_call(
        node.api.unwrap(),
        Some(&format!("apikey {API_KEY}")),
        "publish",
        r##"{"channel":"user:#alice","data":"for alice only"}"##,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = alice.recv_type("message").await;
    assert_eq!(
        (got["channel"].as_str(), got["data"].as_str()),
        (Some("user:#alice"), Some("for alice only"))
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_namespaces_and_subscription_tokens() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--namespaces",
        r#"{"namespaces":[{"name":"secret","private":true}]}"#,
    ])
    .await;
    let mut alice = connect(&node, json!({"sub":"alice","exp":hour()})).await;
    let sub_token =
        |channel: &str, sub: &str, exp: u64| token(json!({"sub":sub,"channel":channel,"exp":exp}));
    let subscribe = |channel: &str, token: Option<String>| {
        let mut frame = json!({"type":"subscribe","channel":channel});
        if let Some(token) = token {
            frame["token"] = json!(token);
        }
        frame
    };
    // Without a token: refused, and so are its history and presence.
    for frame in [
        subscribe("secret:plans", None),
        json!({"type":"history","channel":"secret:plans"}),
    ] {
        let refused = answer(&mut alice, frame.clone()).await;
        assert_eq!(refused["code"], "forbidden", "{frame}: {refused}");
        assert!(
            refused["message"].as_str().unwrap().contains("private"),
            "{refused}"
        );
    }
    // Tokens that are not hers for this channel, each with its reason.
    let forged = common::token(
        "another-secret-0123456789abcdef0123456789",
        json!({"sub":"alice","channel":"secret:plans","exp":hour()}),
    );
    for (token, reason) in [
        (
            sub_token("secret:other", "alice", hour()),
            "another channel",
        ),
        (sub_token("secret:plans", "bob", hour()), "another user"),
        (
            sub_token("secret:plans", "alice", now_secs() - 60),
            "expired",
        ),
        (forged, "invalid"),
        ("not.a.jwt".to_owned(), "invalid"),
    ] {
        let refused = answer(&mut alice, subscribe("secret:plans", Some(token))).await;
        assert_eq!(refused["code"], "forbidden", "{refused}");
        let message = refused["message"].as_str().unwrap();
        assert!(message.contains(reason), "{reason}: {message}");
    }
    // Hers: subscribed, live messages flow, history and presence rights follow.
    let ok = answer(
        &mut alice,
        subscribe(
            "secret:plans",
            Some(sub_token("secret:plans", "alice", hour())),
        ),
    )
    .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    alice.publish("secret:plans", json!("step 1")).await;
    assert_eq!(alice.recv_type("message").await["data"], "step 1");
    let page = answer(
        &mut alice,
        json!({"type":"history","channel":"secret:plans"}),
    )
    .await;
    assert_eq!(page["type"], "history", "{page}");
    // Bob, without the token, reads nothing of it.
    let mut bob = connect(&node, json!({"sub":"bob","exp":hour()})).await;
    let refused = answer(&mut bob, json!({"type":"history","channel":"secret:plans"})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let sse = reqwest::Client::new()
        .get(node.http("/sse?channel=secret:plans"))
        .bearer_auth(token(json!({"sub":"alice","exp":hour()})))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 403);
    // A subscription token is a grant of its own outside private namespaces too: Carol's
    // connection allows `chat:*`, her token for `news:vip` lets her in there alone.
    let mut carol = connect(
        &node,
        json!({"sub":"carol","exp":hour(),"channels":["chat:*"]}),
    )
    .await;
    let refused = answer(&mut carol, subscribe("news:vip", None)).await;
    assert_eq!(refused["code"], "forbidden");
    let ok = answer(
        &mut carol,
        subscribe("news:vip", Some(sub_token("news:vip", "carol", hour()))),
    )
    .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    // A subscription token is no connection token.
    let status = handshake_status(
        &node.ws_url(),
        &[(
            "Authorization",
            &format!("Bearer {}", sub_token("secret:plans", "alice", hour())),
        )],
    )
    .await;
    assert_eq!(status, 401);
    node.shutdown().await;
}

/// How many of `n` handshakes opened at once for `claims` succeed; the open ones are returned.
async fn connect_many(node: &Node, claims: &Value, n: usize) -> (Vec<Client>, Vec<u16>) {
    let auth = bearer(claims.clone());
    let url = node.ws_url();
    let attempts = (0..n).map(|_| {
        let (url, auth) = (url.clone(), auth.clone());
        tokio::spawn(async move { Client::connect(&url, &[("Authorization", &auth)]).await })
    });
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for attempt in futures_util::future::join_all(attempts).await {
        match attempt.unwrap() {
            Ok(client) => open.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                refused.push(r.status().as_u16())
            }
            Err(e) => panic!("unexpected handshake error {e}"),
        }
    }
    (open, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_user_connection_limit_holds_against_a_flood() {
    const LIMIT: usize = 3;
    let limit = LIMIT.to_string();
    let node = Node::start(&["--jwt-secret", SECRET, "--max-connections-per-user", &limit]).await;
    let mallory = json!({"sub":"mallory","exp":hour()});
    // 30 handshakes at once: exactly LIMIT get through, the rest are 429.
    let (mut open, refused) = connect_many(&node, &mallory, 30).await;
    assert_eq!(open.len(), LIMIT, "refused: {refused:?}");
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
    let response = reqwest::Client::new()
        .get(node.http("/ws"))
        .bearer_auth(token(mallory.clone()))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "too_many_connections", "{body}");
    // SSE counts too.
    let sse = reqwest::Client::new()
        .get(node.http("/sse?channel=chat:a"))
        .bearer_auth(token(mallory.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 429);
    // Everyone else is unaffected: another user, clients without a user, and mallory's own
    // open connections, which still work.
    let (others, refused) = connect_many(&node, &json!({"sub":"alice","exp":hour()}), 2).await;
    assert_eq!((others.len(), refused.len()), (2, 0));
    let (anonymous, refused) = connect_many(&node, &json!({"exp":hour()}), LIMIT + 2).await;
    assert_eq!((anonymous.len(), refused.len()), (LIMIT + 2, 0));
    open[0].subscribe("chat:a").await;
    open[1].publish("chat:a", json!("still here")).await;
    assert_eq!(open[0].recv_type("message").await["data"], "still here");
    // One closes: its slot comes back (once the node has seen the close).
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    let again = loop {
        let (mut got, _) = connect_many(&node, &mallory, 1).await;
        if let Some(client) = got.pop() {
            break client;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (more, _) = connect_many(&node, &mallory, 1).await;
    assert!(more.is_empty(), "still at most {LIMIT}");
    drop((again, others, anonymous));
    node.shutdown().await;
}
