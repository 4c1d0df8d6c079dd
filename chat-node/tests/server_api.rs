//! The server API (`POST /api/<method>` on `--api-listen`, keyed by `--api-key-file`):
//! - across three chat-node processes sharing one real redis-server: a publish on A reaches
//!   WebSocket clients on B and C, a disconnect on A closes a client on C with its code, an
//!   unsubscribe on A reaches a client on C, revoked tokens are refused on connect (also by a
//!   node started later) and closed when live, `info` and `channels` see every node;
//! - the key: missing, wrong, a client token instead, and a rotation without restart;
//! - every bound (body size, channel count, ids, codes, times) answered with a JSON error.

mod common;

use std::path::{Path, PathBuf};

use chat_node::server_api::proto;
use chat_node::server_api::proto::server_api_client::ServerApiClient;
use common::binary::Binary;
use common::{
    Client, Node, SECRET, SseReader, WAIT, api_call, handshake_status, http_publish, metric_value,
    now_secs, token,
};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;

const KEY: &str = "server-api-key-0123456789abcdef";

struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    fn new(key: &str) -> KeyFile {
        let dir = std::env::temp_dir().join(format!("chat-api-test-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api-key");
        std::fs::write(&path, format!("{key}\n")).unwrap();
        KeyFile { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Replaces the key the way a Secret volume does: a new file renamed over the old one.
    fn rotate(&self, key: &str) {
        let next = self.dir.join("next");
        std::fs::write(&next, key).unwrap();
        std::fs::rename(&next, &self.path).unwrap();
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn apikey() -> String {
    format!("apikey {KEY}")
}

async fn call(api: std::net::SocketAddr, method: &str, body: Value) -> (u16, Value) {
    api_call(api, Some(&apikey()), method, &body.to_string()).await
}

fn user_token(user: &str, extra: Value) -> String {
    let mut claims = json!({"sub": user, "exp": now_secs() + 600});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    token(SECRET, claims)
}

async fn connect_as(url: &str, token: &str) -> Client {
    Client::connect(&format!("{url}?token={token}"), &[])
        .await
        .expect("handshake")
}

async fn api_node(redis: &RedisServer, id: &str, key: &Path) -> Binary {
    let url = redis.url();
    let node = Binary::start(
        "true",
        &[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--jwt-secret",
            SECRET,
            "--api-listen",
            "127.0.0.1:0",
            "--api-key-file",
            key.to_str().unwrap(),
            "--node-announce-interval",
            "100ms",
            "--drain-timeout",
            "200ms",
            "--presence-namespaces",
            "room",
        ],
    )
    .await;
    node.wait_ready(200).await;
    node
}

/// The server API's gRPC client on `api`, and a request carrying the key.
async fn grpc(api: std::net::SocketAddr) -> ServerApiClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{api}"))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects to the API port");
    ServerApiClient::new(channel)
}

fn keyed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", apikey().parse().unwrap());
    request
}

/// Calls `method` until `done` holds for its answer (announcements are periodic).
async fn until(
    api: std::net::SocketAddr,
    method: &str,
    body: Value,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, answer) = call(api, method, body.clone()).await;
        assert_eq!(status, 200, "{method}: {answer}");
        if done(&answer) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{method} never settled: last {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// History and presence are read through node C and node A of three: messages published
/// through node A, a client connected to node B; the same answers over HTTP and gRPC.
#[tokio::test]
async fn history_and_presence_across_three_nodes() {
    let redis = RedisServer::start().await;
    let key = KeyFile::new(KEY);
    let a = api_node(&redis, "node-a", &key.path).await;
    let b = api_node(&redis, "node-b", &key.path).await;
    let c = api_node(&redis, "node-c", &key.path).await;
    let (api_a, api_c) = (a.api.unwrap(), c.api.unwrap());

    // History: three messages published on A, read on C, paged both ways.
    let mut offsets = Vec::new();
    for n in 1..=3 {
        let (status, answer) = call(
            api_a,
            "publish",
            json!({"channel": "chat:log", "data": {"n": n}}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        offsets.push(answer["offset"].as_str().unwrap().to_owned());
    }
    let (status, page) = call(api_c, "history", json!({"channel": "chat:log"})).await;
    assert_eq!(status, 200, "{page}");
    let ns: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"]["n"])
        .collect();
    assert_eq!(ns, [1, 2, 3], "{page}");
    assert_eq!(page["channel"], "chat:log");
    assert_eq!(page["offset"], offsets[2].as_str(), "newest offset");
    assert_eq!(page["messages"][0]["type"], "message");
    assert_eq!(page["messages"][0]["from"], "api");
    let epoch = page["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    let (status, older) = call(
        api_c,
        "history",
        json!({"channel": "chat:log", "before": offsets[2], "reverse": true, "limit": 1}),
    )
    .await;
    assert_eq!(status, 200, "{older}");
    assert_eq!(older["messages"].as_array().unwrap().len(), 1, "{older}");
    assert_eq!(older["messages"][0]["offset"], offsets[1].as_str());
    let (status, newer) = call(
        api_c,
        "history",
        json!({"channel": "chat:log", "since": offsets[0]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(newer["messages"].as_array().unwrap().len(), 2, "{newer}");
    let (status, refused) = call(
        api_c,
        "history",
        json!({"channel": "chat:log", "since": "x"}),
    )
    .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("bad_request"))
    );

    let mut api = grpc(api_c).await;
    let page = api
        .history(keyed(proto::HistoryRequest {
            channel: "chat:log".into(),
            reverse: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = page.messages.iter().map(|m| m.offset.as_str()).collect();
    assert_eq!(got, [&offsets[2], &offsets[1], &offsets[0]]);
    assert_eq!(page.messages[0].data_json, r#"{"n":3}"#);
    assert_eq!(
        (page.offset.as_str(), page.epoch.as_str()),
        (offsets[2].as_str(), epoch.as_str())
    );

    // Presence: a client on B, asked on A, over both transports.
    let mut dana = connect_as(
        &b.ws_url(),
        &user_token("dana", json!({"info": {"role": "mod"}})),
    )
    .await;
    dana.subscribe("room:1").await;
    let client = dana.welcome["client"].as_str().unwrap().to_owned();
    let present = until(api_a, "presence", json!({"channel": "room:1"}), |v| {
        v["total"] == 1
    })
    .await;
    assert_eq!(
        present["clients"][0]["client"],
        client.as_str(),
        "{present}"
    );
    assert_eq!(present["clients"][0]["user"], "dana");
    assert_eq!(present["clients"][0]["conn_info"]["role"], "mod");
    assert_eq!(present["truncated"], false);
    let (status, stats) = call(api_a, "presence_stats", json!({"channel": "room:1"})).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(1), Some(1))
    );
    let mut api = grpc(api_a).await;
    let present = api
        .presence(keyed(proto::ChannelRequest {
            channel: "room:1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(present.clients.len(), 1);
    assert_eq!(
        (
            present.clients[0].client.as_str(),
            present.clients[0].user.as_str()
        ),
        (client.as_str(), "dana")
    );
    assert_eq!(present.clients[0].conn_info_json, r#"{"role":"mod"}"#);
    let stats = api
        .presence_stats(keyed(proto::ChannelRequest {
            channel: "room:1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.clients, stats.users), (1, 1));

    // A namespace without presence: HTTP 409 / FAILED_PRECONDITION, code not_available.
    let (status, refused) = call(api_a, "presence", json!({"channel": "chat:log"})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("not_available")),
        "{refused}"
    );
    let refused = api
        .presence_stats(keyed(proto::ChannelRequest {
            channel: "chat:log".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().starts_with("not_available: "));

    // The client leaves: presence on A forgets it.
    drop(dana);
    until(api_a, "presence_stats", json!({"channel": "room:1"}), |v| {
        v["clients"] == 0
    })
    .await;
}

#[tokio::test]
async fn every_method_across_three_nodes() {
    let redis = RedisServer::start().await;
    let key = KeyFile::new(KEY);
    let a = api_node(&redis, "node-a", &key.path).await;
    let b = api_node(&redis, "node-b", &key.path).await;
    let c = api_node(&redis, "node-c", &key.path).await;
    let api = a.api.expect("node A serves the API");

    // info: every node, once each has announced itself.
    let info = until(api, "info", json!({}), |v| {
        v["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await;
    let names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["node-a", "node-b", "node-c"]);

    let mut bob = connect_as(&b.ws_url(), &user_token("bob", json!({}))).await;
    let mut carol = connect_as(&c.ws_url(), &user_token("carol", json!({}))).await;
    bob.subscribe("chat:news").await;
    carol.subscribe("chat:news").await;
    bob.subscribe("chat:other").await;

    // publish on A reaches B and C with the same offset, from "api".
    let (status, published) = call(
        api,
        "publish",
        json!({"channel":"chat:news","data":{"text":"hello"}}),
    )
    .await;
    assert_eq!(status, 200, "{published}");
    for client in [&mut bob, &mut carol] {
        let m = client.recv_type("message").await;
        assert_eq!(m["offset"], published["offset"]);
        assert_eq!(m["from"], "api");
        assert_eq!(m["data"]["text"], "hello");
    }

    // broadcast: one message, two channels, one result each in order.
    let (status, answer) = call(
        api,
        "broadcast",
        json!({"channels":["chat:news","chat:other"],"data":"both"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["channel"], "chat:news");
    assert_eq!(results[1]["channel"], "chat:other");
    let mut got = [
        bob.recv_type("message").await,
        bob.recv_type("message").await,
    ];
    got.sort_by_key(|m| m["channel"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["channel"], "chat:news");
    assert_eq!(got[0]["offset"], results[0]["offset"]);
    assert_eq!(got[1]["channel"], "chat:other");
    assert_eq!(got[1]["offset"], results[1]["offset"]);
    assert_eq!(
        carol.recv_type("message").await["offset"],
        results[0]["offset"]
    );

    // channels and info count the subscribers and connections of every node.
    let listed = until(api, "channels", json!({"prefix":"chat:"}), |v| {
        v["channels"] == json!([{"channel":"chat:news","subscribers":2},{"channel":"chat:other","subscribers":1}])
    })
    .await;
    assert_eq!(listed["total"], 2);
    until(api, "info", json!({}), |v| {
        v["nodes"]
            == json!([
                {"node":"node-a","connections":0,"subscriptions":0},
                {"node":"node-b","connections":1,"subscriptions":2},
                {"node":"node-c","connections":1,"subscriptions":1},
            ])
    })
    .await;

    // unsubscribe on A: carol (on C) is told and gets no more messages of the channel.
    let (status, answer) = call(
        api,
        "unsubscribe",
        json!({"user":"carol","channel":"chat:news"}),
    )
    .await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"unsubscribed":1,"nodes":3}))
    );
    assert_eq!(
        carol.recv_type("unsubscribed").await["channel"],
        "chat:news"
    );
    let (_, second) = call(
        api,
        "publish",
        json!({"channel":"chat:news","data":"after"}),
    )
    .await;
    assert_eq!(bob.recv_type("message").await["offset"], second["offset"]);
    // carol may subscribe again (the server-side unsubscribe left nothing stale behind).
    carol.subscribe("chat:news").await;
    let (_, third) = call(
        api,
        "publish",
        json!({"channel":"chat:news","data":"again"}),
    )
    .await;
    let m = carol.recv_type("message").await;
    assert_eq!(
        m["offset"], third["offset"],
        "carol got nothing in between: {m}"
    );
    assert_eq!(bob.recv_type("message").await["offset"], third["offset"]);

    // disconnect by user on A closes carol's connection on C with 4002.
    let (status, answer) = call(api, "disconnect", json!({"user":"carol"})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":3}))
    );
    assert_eq!(carol.closed().await, 4002);
    // ... and by client id, with a code of the backend's choice.
    let client_id = bob.welcome["client"].as_str().unwrap().to_owned();
    let (status, answer) = call(api, "disconnect", json!({"client":client_id,"code":4100})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":3}))
    );
    assert_eq!(bob.closed().await, 4100);

    // revoke by jti: the live connection on C closes with 1008, a new one is refused anywhere.
    let dave = user_token("dave", json!({"jti":"t-dave-1"}));
    let mut dave_live = connect_as(&c.ws_url(), &dave).await;
    let until_time = now_secs() + 600;
    let (status, answer) = call(api, "revoke", json!({"jti":"t-dave-1","until":until_time})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":3}))
    );
    assert_eq!(dave_live.closed().await, 1008);
    for node in [&a, &b, &c] {
        assert_eq!(
            handshake_status(&format!("{}?token={dave}", node.ws_url()), &[]).await,
            401
        );
    }
    let other = user_token("dave", json!({"jti":"t-dave-2"}));
    connect_as(&b.ws_url(), &other).await;

    // revoke by user: tokens issued before are refused (WebSocket and HTTP publish), newer ones work.
    let old = user_token("erin", json!({"iat": now_secs() - 10}));
    let mut erin_live = connect_as(&b.ws_url(), &old).await;
    let (status, answer) = call(api, "revoke", json!({"user":"erin","until":until_time})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":3}))
    );
    assert_eq!(erin_live.closed().await, 1008);
    assert_eq!(
        handshake_status(&format!("{}?token={old}", c.ws_url()), &[]).await,
        401
    );
    let newer = user_token("erin", json!({"iat": now_secs() + 5}));
    connect_as(&c.ws_url(), &newer).await;

    // A node that starts after the revocations loads them from Redis.
    let d = api_node(&redis, "node-d", &key.path).await;
    assert_eq!(
        handshake_status(&format!("{}?token={dave}", d.ws_url()), &[]).await,
        401
    );
    assert_eq!(
        handshake_status(&format!("{}?token={old}", d.ws_url()), &[]).await,
        401
    );
}

#[tokio::test]
async fn wrong_missing_and_rotated_keys() {
    let key = KeyFile::new(KEY);
    let node = Node::start_with_api(&["--api-key-file", key.path(), "--jwt-secret", SECRET]).await;
    let api = node.api.unwrap();
    let body = r#"{"channel":"chat:a","data":1}"#;
    let jwt = user_token("mallory", json!({}));
    for authorization in [
        None,
        Some("apikey wrong-key-0123456789abcdef".to_owned()),
        Some(format!("Bearer {KEY}")),
        Some(format!("Bearer {jwt}")),
        Some(format!("apikey {KEY}x")),
        Some(format!("apikey {}", &KEY[..KEY.len() - 1])),
        Some("apikey".to_owned()),
        Some(format!("apikey {}", "k".repeat(5000))),
    ] {
        let (status, answer) = api_call(api, authorization.as_deref(), "publish", body).await;
        assert_eq!(status, 401, "{authorization:?}: {answer}");
        assert_eq!(answer["code"], "unauthorized");
    }
    let (status, _) = api_call(api, Some(&apikey()), "publish", body).await;
    assert_eq!(status, 200);
    // Rotation: the new key works at once, the old one stops working, no restart.
    let rotated = "rotated-key-abcdef0123456789";
    key.rotate(rotated);
    let (status, _) = api_call(api, Some(&format!("apikey {rotated}")), "publish", body).await;
    assert_eq!(status, 200, "the rotated key works without a restart");
    let (status, _) = api_call(api, Some(&apikey()), "publish", body).await;
    assert_eq!(status, 401, "the old key no longer works");
    // A broken key file keeps the last good key.
    key.rotate("short");
    let (status, _) = api_call(api, Some(&format!("apikey {rotated}")), "publish", body).await;
    assert_eq!(status, 200);
    // The client port knows nothing of the API key.
    let (status, _) = http_publish(&node, body, Some(KEY)).await;
    assert_eq!(status, 401);
    // Every call is counted by outcome.
    let metrics = node.metrics().await;
    let count = |labels: &str| {
        common::metric_value(
            &metrics,
            &format!("chat_server_api_requests_total{{{labels}}}"),
        )
    };
    assert_eq!(
        count(r#"transport="http",method="publish",code="unauthorized""#),
        Some(9.0)
    );
    assert_eq!(
        count(r#"transport="http",method="publish",code="ok""#),
        Some(3.0)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_without_a_key_serves_no_api() {
    // `run_with_api` refuses a listener without a key file, so nothing can serve unkeyed.
    let config = chat_node::Config::from_args(["--drain-timeout", "100ms"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = chat_node::run_with_api(listener, admin, Some(api), config, async {}).await;
    assert!(
        matches!(served, Err(chat_node::ServeError::ApiWithoutKey)),
        "{served:?}"
    );
    // A key file that is too short is a start-up error, not an open API.
    let key = KeyFile::new("short");
    let config = chat_node::Config::from_args(["--api-key-file", key.path()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = chat_node::run_with_api(listener, admin, Some(api), config, async {}).await;
    assert!(
        matches!(served, Err(chat_node::ServeError::ApiKey(_))),
        "{served:?}"
    );
}

#[tokio::test]
async fn embedded_broker_single_node() {
    let key = KeyFile::new(KEY);
    let node = Node::start_with_api(&[
        "--api-key-file",
        key.path(),
        "--jwt-secret",
        SECRET,
        "--node-id",
        "solo",
    ])
    .await;
    let api = node.api.unwrap();
    let bob_token = user_token("bob", json!({"jti":"j-1"}));
    let mut bob = connect_as(&node.ws_url(), &bob_token).await;
    bob.subscribe("chat:x").await;
    let (status, published) = call(api, "publish", json!({"channel":"chat:x","data":[1,2]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        bob.recv_type("message").await["offset"],
        published["offset"]
    );
    let (_, listed) = call(api, "channels", json!({})).await;
    assert_eq!(
        listed["channels"],
        json!([{"channel":"chat:x","subscribers":1}])
    );
    let (_, info) = call(api, "info", json!({})).await;
    assert_eq!(
        info["nodes"],
        json!([{"node":"solo","connections":1,"subscriptions":1}])
    );
    let (_, answer) = call(api, "unsubscribe", json!({"user":"bob","channel":"chat:x"})).await;
    assert_eq!(answer, json!({"unsubscribed":1,"nodes":1}));
    assert_eq!(bob.recv_type("unsubscribed").await["channel"], "chat:x");
    let (_, listed) = call(api, "channels", json!({})).await;
    assert_eq!(listed["channels"], json!([]));
    let (_, answer) = call(api, "disconnect", json!({"user":"nobody"})).await;
    assert_eq!(answer, json!({"disconnected":0,"nodes":1}));
    let (_, answer) = call(api, "revoke", json!({"jti":"j-1","until":now_secs() + 60})).await;
    assert_eq!(answer, json!({"disconnected":1,"nodes":1}));
    assert_eq!(bob.closed().await, 1008);
    // The browser publish path of the client port refuses the revoked token too.
    let body = r#"{"channel":"chat:x","data":1}"#;
    let (status, answer) = http_publish(&node, body, Some(&bob_token)).await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (401, Some("token revoked"))
    );
    let fresh = user_token("bob", json!({"jti":"j-2"}));
    assert_eq!(http_publish(&node, body, Some(&fresh)).await.0, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn every_input_is_bounded() {
    let key = KeyFile::new(KEY);
    let node = Node::start_with_api(&[
        "--api-key-file",
        key.path(),
        "--max-message-bytes",
        "1024",
        "--max-json-depth",
        "4",
        "--max-history-page",
        "3",
    ])
    .await;
    let api = node.api.unwrap();
    let expect = |status: u16, code: &'static str| {
        move |(s, v): (u16, Value)| {
            assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{v}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    };
    let raw = |method: &'static str, body: String| async move {
        api_call(api, Some(&apikey()), method, &body).await
    };

    expect(404, "unknown_method")(raw("history_of_everything", "{}".into()).await);

    // Reads: a page is at most --max-history-page messages whatever `limit` says; offsets and
    // channels are checked; presence needs its namespace.
    for n in 0..5 {
        let (status, _) = call(api, "publish", json!({"channel": "chat:p", "data": n})).await;
        assert_eq!(status, 200);
    }
    let (status, page) = call(
        api,
        "history",
        json!({"channel": "chat:p", "limit": u64::MAX}),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 3, "{page}");
    expect(400, "bad_request")(
        raw("history", r#"{"channel":"chat:p","before":"x-y"}"#.into()).await,
    );
    expect(400, "bad_request")(raw("history", r#"{"channel":"chat:p","limit":-1}"#.into()).await);
    expect(400, "bad_channel")(raw("history", r#"{"channel":"bad channel"}"#.into()).await);
    expect(400, "bad_request")(raw("presence", r#"{"channel":"chat:p","extra":1}"#.into()).await);
    expect(409, "not_available")(raw("presence_stats", r#"{"channel":"chat:p"}"#.into()).await);
    expect(400, "bad_json")(raw("publish", "{not json".into()).await);
    expect(400, "bad_request")(raw("publish", r#"{"channel":"chat:a"}"#.into()).await);
    expect(400, "bad_request")(
        raw(
            "publish",
            r#"{"channel":"chat:a","data":1,"extra":2}"#.into(),
        )
        .await,
    );
    expect(400, "bad_channel")(
        raw("publish", r#"{"channel":"bad channel!","data":1}"#.into()).await,
    );
    expect(400, "bad_channel")(
        raw(
            "publish",
            format!(r#"{{"channel":"{}","data":1}}"#, "c".repeat(129)),
        )
        .await,
    );
    expect(400, "bad_request")(
        raw(
            "publish",
            format!(r#"{{"channel":"chat:a","data":"{}"}}"#, "x".repeat(1100)),
        )
        .await,
    );
    expect(400, "bad_request")(
        raw(
            "publish",
            r#"{"channel":"chat:a","data":[[[[[1]]]]]}"#.into(),
        )
        .await,
    );
    // A body past max-message-bytes plus the envelope never gets read whole.
    let huge = format!(
        r#"{{"channel":"chat:a","data":"{}"}}"#,
        "x".repeat(1024 + 200_000)
    );
    expect(413, "too_large")(raw("publish", huge).await);
    // Broadcast: 1-1000 channels, each valid.
    let many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    expect(400, "bad_request")(
        raw("broadcast", json!({"channels":many,"data":1}).to_string()).await,
    );
    expect(400, "bad_request")(raw("broadcast", json!({"channels":[],"data":1}).to_string()).await);
    expect(400, "bad_channel")(
        raw(
            "broadcast",
            json!({"channels":["ok","not ok"],"data":1}).to_string(),
        )
        .await,
    );
    let most: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let (status, answer) = raw("broadcast", json!({"channels":most,"data":1}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"].as_array().unwrap().len(), 1000);
    // Disconnect: exactly one target, an application close code, bounded ids.
    expect(400, "bad_request")(raw("disconnect", "{}".into()).await);
    expect(400, "bad_request")(
        raw("disconnect", json!({"user":"a","client":"b"}).to_string()).await,
    );
    expect(400, "bad_request")(
        raw("disconnect", json!({"user":"a","code":1000}).to_string()).await,
    );
    expect(400, "bad_request")(
        raw("disconnect", json!({"user":"a","code":5000}).to_string()).await,
    );
    expect(400, "bad_request")(
        raw("disconnect", json!({"user":"u".repeat(257)}).to_string()).await,
    );
    expect(400, "bad_request")(raw("disconnect", json!({"user":""}).to_string()).await);
    expect(400, "bad_request")(
        raw(
            "disconnect",
            json!({"client":"not-a-client-id"}).to_string(),
        )
        .await,
    );
    expect(400, "bad_request")(
        raw("disconnect", json!({"client":"f".repeat(33)}).to_string()).await,
    );
    expect(400, "bad_channel")(
        raw(
            "unsubscribe",
            json!({"user":"a","channel":"no spaces"}).to_string(),
        )
        .await,
    );
    // Channels: 1-10000.
    expect(400, "bad_request")(raw("channels", json!({"limit":0}).to_string()).await);
    expect(400, "bad_request")(raw("channels", json!({"limit":10001}).to_string()).await);
    // Revoke: exactly one target, `until` in the future and at most a year ahead.
    let now = now_secs();
    expect(400, "bad_request")(raw("revoke", json!({"jti":"a","until":now - 1}).to_string()).await);
    expect(400, "bad_request")(
        raw(
            "revoke",
            json!({"jti":"a","until":now + 400 * 86400}).to_string(),
        )
        .await,
    );
    expect(400, "bad_request")(
        raw(
            "revoke",
            json!({"jti":"a","user":"b","until":now + 60}).to_string(),
        )
        .await,
    );
    expect(400, "bad_request")(
        raw(
            "revoke",
            json!({"jti":"j".repeat(257),"until":now + 60}).to_string(),
        )
        .await,
    );
    // Only POST /api/<method>.
    let response = reqwest::get(format!("http://{api}/metrics")).await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    node.shutdown().await;
}

/// The control channel and the announcements on a Redis Cluster (sharded Pub/Sub, keys of one
/// slot): a disconnect and a revoke issued on one node reach a client on the other.
#[tokio::test]
async fn across_nodes_on_a_redis_cluster() {
    let cluster = test_harness::redis::cluster::RedisCluster::start(3).await;
    let key = KeyFile::new(KEY);
    let url = cluster.url();
    let mut nodes = Vec::new();
    for id in ["k0", "k1"] {
        let node = Node::start_with_api(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--jwt-secret",
            SECRET,
            "--api-key-file",
            key.path(),
            "--node-announce-interval",
            "100ms",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    let api = nodes[0].api.unwrap();
    let mut zoe = connect_as(&nodes[1].ws_url(), &user_token("zoe", json!({}))).await;
    zoe.subscribe("chat:c").await;
    until(api, "info", json!({}), |v| {
        v["nodes"]
            == json!([
                {"node":"k0","connections":0,"subscriptions":0},
                {"node":"k1","connections":1,"subscriptions":1},
            ])
    })
    .await;
    let (_, published) = call(api, "publish", json!({"channel":"chat:c","data":1})).await;
    assert_eq!(
        zoe.recv_type("message").await["offset"],
        published["offset"]
    );
    let (status, answer) = call(api, "disconnect", json!({"user":"zoe","code":4321})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":2}))
    );
    assert_eq!(zoe.closed().await, 4321);
    let token = user_token("yan", json!({"jti":"c-1"}));
    let mut yan = connect_as(&nodes[1].ws_url(), &token).await;
    let (status, answer) = call(api, "revoke", json!({"jti":"c-1","until":now_secs() + 60})).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"disconnected":1,"nodes":2}))
    );
    assert_eq!(yan.closed().await, 1008);
    assert_eq!(
        handshake_status(&format!("{}?token={token}", nodes[1].ws_url()), &[]).await,
        401
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// `unsubscribe` takes the user out of the channel's presence too, with one `leave` per session
/// (WebSocket and SSE alike), and the session's end later adds no second `leave`.
#[tokio::test]
async fn unsubscribe_leaves_presence_once() {
    let key = KeyFile::new(KEY);
    let node = Node::start_with_api(&[
        "--api-key-file",
        key.path(),
        "--jwt-secret",
        SECRET,
        "--presence-namespaces",
        "chat",
        "--join-leave-namespaces",
        "chat",
    ])
    .await;
    let api = node.api.unwrap();
    let mut ann = connect_as(&node.ws_url(), &user_token("ann", json!({}))).await;
    ann.subscribe("chat:x").await;
    let mut bob = connect_as(&node.ws_url(), &user_token("bob", json!({}))).await;
    bob.subscribe("chat:x").await;
    // Bob's second session: an SSE stream, read until its own join (it is then present).
    let query = format!("channel=chat%3Ax&token={}", user_token("bob", json!({})));
    let mut sse = SseReader::open(&node, &query).await;
    assert_eq!(sse.next().await.0, "subscribed");
    let (event, own) = sse.next().await;
    assert_eq!(
        (event.as_str(), &own["info"]["user"]),
        ("join", &json!("bob"))
    );
    assert_eq!(presence_stats(&mut ann).await["clients"], 3);

    let (_, answer) = call(api, "unsubscribe", json!({"user":"bob","channel":"chat:x"})).await;
    assert_eq!(answer, json!({"unsubscribed":2,"nodes":1}));
    assert_eq!(bob.recv_type("unsubscribed").await["channel"], "chat:x");
    let mut left = Vec::new();
    while left.len() < 2 {
        // ann's frames: bob's two joins (already queued), then two leaves.
        let frame = ann.recv().await;
        match frame["type"].as_str() {
            Some("join") => {}
            Some("leave") => left.push(frame["info"]["user"].clone()),
            _ => panic!("{frame}"),
        }
    }
    assert_eq!(left, [json!("bob"), json!("bob")]);
    let stats = presence_stats(&mut ann).await;
    assert_eq!((&stats["clients"], &stats["users"]), (&json!(1), &json!(1)));

    // Both sessions end: no second leave. Once only ann's session is open, her own publish is
    // the next frame she gets.
    drop(sse);
    drop(bob);
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric_value(&node.metrics().await, "websocket_active_connections") != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's sessions never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let offset = ann.publish("chat:x", json!("after")).await;
    let next = ann.recv().await;
    assert_eq!(next["offset"], offset.as_str(), "no late leave: {next}");
    let stats = presence_stats(&mut ann).await;
    assert_eq!(stats["clients"], 1);
    node.shutdown().await;
}

async fn presence_stats(client: &mut Client) -> Value {
    client
        .request(json!({"type":"presence_stats","channel":"chat:x"}))
        .await
}
