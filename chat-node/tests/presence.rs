//! Presence (`presence`, `presence_stats`) and `join`/`leave` frames, through real WebSocket
//! clients: three nodes on one real redis-server (entries written by each node, a SIGKILLed
//! node's clients expiring within the TTL) and the embedded broker; the cap on an answer against
//! a client subscribing many connections; refusals (no presence in the namespace, no right to
//! subscribe, an oversized `info` claim); entries restored after Redis lost them; a Redis
//! Cluster (keys and join/leave on the channel's shard).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::binary::Binary;
use common::{Client, Node, SECRET, SseReader, WAIT, handshake_status, now_secs, token};
use serde_json::{Value, json};
use test_harness::redis::RedisServer;
use test_harness::redis::cluster::RedisCluster;
use tokio::time::Instant;

const ROOM: &str = "chat:room";

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now_secs() + 3600})
}

async fn connect_as(node: &Node, claims: Value) -> Client {
    let bearer = format!("Bearer {}", token(SECRET, claims));
    Client::connect(&node.ws_url(), &[("Authorization", &bearer)])
        .await
        .expect("websocket handshake")
}

fn client_id(c: &Client) -> String {
    c.welcome["client"].as_str().unwrap().to_owned()
}

async fn presence(c: &mut Client, channel: &str) -> Value {
    let answer = c
        .request(json!({"type":"presence","channel":channel}))
        .await;
    assert_eq!(answer["type"], "presence", "{answer}");
    assert_eq!(answer["channel"], channel);
    answer
}

async fn stats(c: &mut Client, channel: &str) -> (u64, u64) {
    let answer = c
        .request(json!({"type":"presence_stats","channel":channel}))
        .await;
    assert_eq!(answer["type"], "presence_stats", "{answer}");
    (
        answer["clients"].as_u64().unwrap(),
        answer["users"].as_u64().unwrap(),
    )
}

fn clients_of(answer: &Value) -> BTreeSet<String> {
    answer["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["client"].as_str().unwrap().to_owned())
        .collect()
}

/// Asks `c` for the channel's presence until `done` holds for the answer (entries written on
/// other nodes and expiries take effect without a notification to wait for).
async fn presence_until(
    c: &mut Client,
    channel: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let answer = presence(c, channel).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "presence never settled: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn presence_nodes(redis: &RedisServer, extra: &[&str]) -> Vec<Node> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["n0", "n1", "n2"] {
        let mut args = vec![
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--jwt-secret",
            SECRET,
            "--presence-namespaces",
            "chat",
            "--join-leave-namespaces",
            "chat",
        ];
        args.extend_from_slice(extra);
        let node = Node::start(&args).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

/// Presence, stats and join/leave of one channel whose clients are spread over `nodes` (one
/// node for the embedded broker, three with Redis).
async fn presence_and_join_leave(nodes: &[Node]) {
    let node = |i: usize| &nodes[i % nodes.len()];
    let mut ann_claims = claims("ann");
    ann_claims["info"] = json!({"name": "Ann", "avatar": "a.png"});
    let mut ann = connect_as(node(0), ann_claims).await;
    ann.subscribe(ROOM).await;
    // The joining client gets its own join.
    let own = ann.recv_type("join").await;
    assert_eq!(own["channel"], ROOM);
    assert_eq!(
        own["info"],
        json!({"client": client_id(&ann), "user": "ann", "conn_info": {"name": "Ann", "avatar": "a.png"}})
    );
    let mut bob1 = connect_as(node(1), claims("bob")).await;
    bob1.subscribe(ROOM).await;
    let mut bob2 = connect_as(node(2), claims("bob")).await;
    bob2.subscribe(ROOM).await;
    // Ann (on another node) sees both joins, with their client ids and users.
    let mut joins = BTreeSet::new();
    for _ in 0..2 {
        let join = ann.recv_type("join").await;
        assert_eq!(join["info"]["user"], "bob", "{join}");
        assert!(join["info"].get("conn_info").is_none(), "{join}");
        joins.insert(join["info"]["client"].as_str().unwrap().to_owned());
    }
    assert_eq!(joins, BTreeSet::from([client_id(&bob1), client_id(&bob2)]));
    // Join/leave are not messages: they take no offset, and a later message is the next frame.
    let offset = bob1.publish(ROOM, json!("hi")).await;
    let next = ann.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["offset"].as_str()),
        (Some("message"), Some(offset.as_str())),
        "{next}"
    );

    let all: BTreeSet<String> = [&ann, &bob1, &bob2].iter().map(|c| client_id(c)).collect();
    let answer = presence_until(&mut bob2, ROOM, WAIT, |a| a["total"] == 3).await;
    assert_eq!(clients_of(&answer), all);
    assert!(answer.get("truncated").is_none(), "{answer}");
    let entry = answer["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user"] == "ann")
        .unwrap()
        .clone();
    assert_eq!(entry["conn_info"]["name"], "Ann");
    assert_eq!(stats(&mut ann, ROOM).await, (3, 2), "3 clients of 2 users");

    // Unsubscribing is a leave, seen on the other nodes; presence and stats follow.
    bob1.send(json!({"type":"unsubscribe","channel":ROOM}))
        .await;
    bob1.recv_type("unsubscribed").await;
    let leave = ann.recv_type("leave").await;
    assert_eq!(
        leave["info"],
        json!({"client": client_id(&bob1), "user": "bob"})
    );
    assert_eq!(
        bob2.recv_type("leave").await["info"]["client"],
        client_id(&bob1).as_str()
    );
    assert_eq!(stats(&mut ann, ROOM).await, (2, 2));
    // Disconnecting is a leave too.
    let bob2_id = client_id(&bob2);
    drop(bob2);
    let leave = ann.recv_type("leave").await;
    assert_eq!(leave["info"]["client"], bob2_id.as_str());
    let answer = presence_until(&mut ann, ROOM, WAIT, |a| a["total"] == 1).await;
    assert_eq!(clients_of(&answer), BTreeSet::from([client_id(&ann)]));
    assert_eq!(
        stats(&mut bob1, ROOM).await,
        (1, 1),
        "no subscription needed"
    );

    // A namespace without presence: `not_available`, and no join/leave frames.
    let mut a = connect_as(node(1), claims("ann")).await;
    let mut b = connect_as(node(2), claims("bob")).await;
    a.subscribe("typing:room").await;
    b.subscribe("typing:room").await;
    for frame in [
        json!({"type":"presence","channel":"typing:room"}),
        json!({"type":"presence_stats","channel":"typing:room"}),
    ] {
        let reply = a.request(frame).await;
        assert_eq!(reply["code"], "not_available", "{reply}");
    }
    let offset = b.publish("typing:room", json!("…")).await;
    let next = a.recv().await;
    assert_eq!(next["offset"], offset.as_str(), "no join before: {next}");

    // A token that may not subscribe to the channel may not see its presence.
    let mut only = claims("eve");
    only["channels"] = json!(["chat:other"]);
    let mut eve = connect_as(node(0), only).await;
    for kind in ["presence", "presence_stats"] {
        let reply = eve.request(json!({"type":kind,"channel":ROOM})).await;
        assert_eq!(reply["code"], "forbidden", "{reply}");
    }
    assert_eq!(presence(&mut eve, "chat:other").await["total"], 0);
}

#[tokio::test]
async fn presence_and_join_leave_across_three_redis_nodes() {
    let redis = RedisServer::start().await;
    let nodes = presence_nodes(&redis, &[]).await;
    presence_and_join_leave(&nodes).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn presence_and_join_leave_with_the_embedded_broker() {
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--presence-namespaces",
        "chat",
        "--join-leave-namespaces",
        "chat",
    ])
    .await;
    presence_and_join_leave(std::slice::from_ref(&node)).await;
    // An `info` claim over 1 KiB is refused at the handshake.
    let mut big = claims("ann");
    big["info"] = json!({"blob": "x".repeat(1100)});
    let bearer = format!("Bearer {}", token(SECRET, big));
    assert_eq!(
        handshake_status(&node.ws_url(), &[("Authorization", &bearer)]).await,
        401
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_killed_nodes_clients_vanish_within_the_ttl() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_millis(1500);
    let url = redis.url();
    let flags = [
        "--redis-url",
        &url,
        "--presence-namespaces",
        "chat",
        "--presence-ttl",
        "1500ms",
    ];
    let node = Node::start(&flags).await;
    node.wait_ready(200).await;
    let mut doomed = Binary::start("true", &flags).await;
    doomed.wait_ready(200).await;
    let mut on_doomed = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&doomed.ws_url(), &[]).await.unwrap();
        c.subscribe(ROOM).await;
        on_doomed.push(c);
    }
    let mut watcher = node.connect().await;
    watcher.subscribe(ROOM).await;
    // Refreshed entries outlive several TTLs while their node lives.
    tokio::time::sleep(ttl * 2).await;
    let answer = presence(&mut watcher, ROOM).await;
    assert_eq!(answer["total"], 4, "{answer}");
    assert_eq!(stats(&mut watcher, ROOM).await, (4, 4));

    doomed.child.start_kill().expect("SIGKILL chat-node");
    doomed.child.wait().await.unwrap();
    let killed = Instant::now();
    let answer = presence_until(&mut watcher, ROOM, ttl + WAIT, |a| a["total"] == 1).await;
    let took = killed.elapsed();
    assert!(
        took <= ttl + Duration::from_millis(500),
        "a dead node's clients vanished after {took:?}, TTL {ttl:?}"
    );
    assert_eq!(clients_of(&answer), BTreeSet::from([client_id(&watcher)]));
    assert_eq!(stats(&mut watcher, ROOM).await, (1, 1));
    drop(on_doomed);
    node.shutdown().await;
}

#[tokio::test]
async fn an_answer_is_capped_however_many_clients_subscribe() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let redis_flags = ["--redis-url", url.as_str()];
    for broker in [&redis_flags[..], &[]] {
        let mut args = vec!["--presence-namespaces", "chat", "--max-presence", "5"];
        args.extend_from_slice(broker);
        let node = Node::start(&args).await;
        node.wait_ready(200).await;
        // The attacker: many connections subscribed to one channel.
        let mut attackers = Vec::new();
        for _ in 0..60 {
            let mut c = node.connect().await;
            c.subscribe(ROOM).await;
            attackers.push(c);
        }
        let answer = presence(&mut attackers[0], ROOM).await;
        assert_eq!(answer["clients"].as_array().unwrap().len(), 5, "{answer}");
        assert_eq!(answer["total"], 60);
        assert_eq!(answer["truncated"], true);
        assert_eq!(stats(&mut attackers[0], ROOM).await, (60, 60));
        drop(attackers);
        node.shutdown().await;
    }
}

#[tokio::test]
async fn an_answer_is_cut_to_half_the_send_queue() {
    // Big `info` claims: 20 entries of about 1 KiB would not fit in 8 KiB of send queue.
    let node = Node::start(&[
        "--jwt-secret",
        SECRET,
        "--presence-namespaces",
        "*",
        "--send-queue-bytes",
        "8192",
    ])
    .await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = claims(&format!("user-{i}"));
        c["info"] = json!({"bio": "x".repeat(1000)});
        let mut c = connect_as(&node, c).await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    let answer = presence(&mut clients[0], "lobby").await;
    let listed = answer["clients"].as_array().unwrap().len();
    assert!(
        (1..=4).contains(&listed),
        "{listed} entries of 1 KiB in 4 KiB"
    );
    assert_eq!(
        (answer["total"].clone(), answer["truncated"].clone()),
        (json!(20), json!(true))
    );
    assert!(answer.to_string().len() <= 4096);
    node.shutdown().await;
}

#[tokio::test]
async fn entries_come_back_after_redis_lost_them() {
    let mut redis = RedisServer::start().await;
    // A long TTL: what brings the entries back is the refresh (every TTL/3), not an expiry.
    let nodes = presence_nodes(&redis, &["--presence-ttl", "3s"]).await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = connect_as(node, claims(&format!("user-{i}"))).await;
        c.subscribe(ROOM).await;
        clients.push(c);
    }
    presence_until(&mut clients[0], ROOM, WAIT, |a| a["total"] == 3).await;
    redis.kill();
    redis.restart().await;
    for node in &nodes {
        node.wait_ready(200).await;
    }
    // The restarted server has no data; the nodes' refreshes (every second) write it again.
    let restarted = Instant::now();
    let answer = presence_until(&mut clients[1], ROOM, WAIT, |a| a["total"] == 3).await;
    assert!(
        restarted.elapsed() <= Duration::from_secs(3),
        "rewritten within the TTL, took {:?}",
        restarted.elapsed()
    );
    let all: BTreeSet<String> = clients.iter().map(client_id).collect();
    assert_eq!(clients_of(&answer), all);
    assert_eq!(stats(&mut clients[2], ROOM).await, (3, 3));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn presence_and_join_leave_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).await;
    let url = cluster.url();
    let mut nodes = Vec::new();
    for id in ["c0", "c1", "c2"] {
        let node = Node::start(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--presence-namespaces",
            "chat",
            "--join-leave-namespaces",
            "chat",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    // One channel per shard.
    let mut channels: Vec<Option<String>> = vec![None; cluster.nodes().len()];
    for i in 0.. {
        let name = format!("chat:room-{i}");
        let shard = cluster.node_for_slot(cluster.key_slot(&format!("{{{name}}}")).await);
        channels[shard].get_or_insert(name);
        if channels.iter().all(Option::is_some) {
            break;
        }
    }
    for channel in channels.into_iter().map(Option::unwrap) {
        let mut clients = Vec::new();
        for node in &nodes {
            let mut c = node.connect().await;
            c.subscribe(&channel).await;
            clients.push(c);
        }
        // The first client sees the other two join, through the channel's shard.
        let mut joins = BTreeSet::new();
        while joins.len() < 3 {
            let join = clients[0].recv_type("join").await;
            assert_eq!(join["channel"], channel.as_str());
            joins.insert(join["info"]["client"].as_str().unwrap().to_owned());
        }
        let all: BTreeSet<String> = clients.iter().map(client_id).collect();
        assert_eq!(joins, all);
        let answer = presence_until(&mut clients[2], &channel, WAIT, |a| a["total"] == 3).await;
        assert_eq!(clients_of(&answer), all);
        assert_eq!(stats(&mut clients[1], &channel).await, (3, 3));
        let gone = client_id(&clients[2]);
        drop(clients.pop());
        let leave = clients[0].recv_type("leave").await;
        assert_eq!(leave["info"]["client"], gone.as_str());
        assert_eq!(stats(&mut clients[1], &channel).await, (2, 2));
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_quick_unsubscribe_and_subscribe_ends_present_and_joined() {
    let redis = RedisServer::start().await;
    // The default TTL (60 s): no refresh comes in time to hide a removal that overtook a write.
    let nodes = presence_nodes(&redis, &[]).await;
    let mut watcher = connect_as(&nodes[0], claims("watcher")).await;
    watcher.subscribe(ROOM).await;
    watcher.recv_type("join").await;
    let mut flapper = connect_as(&nodes[1], claims("flapper")).await;
    let id = client_id(&flapper);
    for _ in 0..30 {
        flapper.subscribe(ROOM).await;
        flapper
            .send(json!({"type":"unsubscribe","channel":ROOM}))
            .await;
        flapper.recv_type("unsubscribed").await;
    }
    flapper.subscribe(ROOM).await;
    // The watcher sees 31 joins and 30 leaves of the flapper, alternating, ending with a join.
    let mut last = None;
    for i in 0..61 {
        let frame = loop {
            let frame = watcher.recv().await;
            if frame["type"] == "join" || frame["type"] == "leave" {
                break frame;
            }
        };
        assert_eq!(frame["info"]["client"], id.as_str());
        let expected = if i % 2 == 0 { "join" } else { "leave" };
        assert_eq!(frame["type"], expected, "frame {i}: {frame}");
        last = Some(frame);
    }
    assert_eq!(last.unwrap()["type"], "join");
    let answer = presence(&mut watcher, ROOM).await;
    assert_eq!(answer["total"], 2, "{answer}");
    assert!(clients_of(&answer).contains(&id));
    assert_eq!(stats(&mut flapper, ROOM).await, (2, 2));
    for node in nodes {
        node.shutdown().await;
    }
}

/// SSE clients (the browser fallback) are subscribers like WebSocket ones: they enter presence
/// with their token's user, their joins and leaves are announced, and they receive `join` and
/// `leave` as events of those names (across three nodes through Redis).
#[tokio::test]
async fn sse_clients_are_in_presence_and_hear_joins_and_leaves() {
    let redis = RedisServer::start().await;
    let nodes = presence_nodes(&redis, &[]).await;
    let mut ann = connect_as(&nodes[0], claims("ann")).await;
    ann.subscribe(ROOM).await;
    assert_eq!(ann.recv_type("join").await["info"]["user"], "ann");

    let mut bob_claims = claims("bob");
    bob_claims["info"] = json!({"name": "Bob"});
    let query = format!(
        "channel={}&token={}",
        ROOM.replace(':', "%3A"),
        token(SECRET, bob_claims)
    );
    let mut bob = SseReader::open(&nodes[1], &query).await;
    let (event, subscribed) = bob.next().await;
    assert_eq!(
        (event.as_str(), &subscribed["type"]),
        ("subscribed", &json!("subscribed"))
    );
    let (event, own) = bob.next().await;
    assert_eq!(event, "join", "{own}");
    assert_eq!(own["type"], "join");
    assert_eq!(own["info"]["user"], "bob");
    assert_eq!(own["info"]["conn_info"], json!({"name": "Bob"}));
    let bob_id = own["info"]["client"].as_str().unwrap().to_owned();
    assert_eq!(bob_id.len(), 32, "{own}");

    // Ann, on another node, hears the join and finds bob in presence.
    let join = ann.recv_type("join").await;
    assert_eq!(join["info"], own["info"]);
    let answer = presence_until(&mut ann, ROOM, WAIT, |a| a["total"] == 2).await;
    assert_eq!(
        clients_of(&answer),
        BTreeSet::from([client_id(&ann), bob_id.clone()])
    );
    assert_eq!(stats(&mut ann, ROOM).await, (2, 2));

    // Carol joins on the third node: the SSE stream gets a `join` event, then messages as before.
    let mut carol = connect_as(&nodes[2], claims("carol")).await;
    carol.subscribe(ROOM).await;
    let (event, join) = bob.next().await;
    assert_eq!(
        (event.as_str(), &join["info"]["user"]),
        ("join", &json!("carol"))
    );
    let offset = carol.publish(ROOM, json!("hi")).await;
    let (event, message) = bob.next().await;
    assert_eq!(
        (event.as_str(), &message["offset"]),
        ("message", &json!(offset))
    );

    // The stream ends: a leave, and bob is gone from presence.
    drop(bob);
    let leave = ann.recv_type("leave").await;
    assert_eq!(leave["info"]["client"], bob_id.as_str(), "{leave}");
    let answer = presence_until(&mut ann, ROOM, WAIT, |a| a["total"] == 2).await;
    assert_eq!(
        clients_of(&answer),
        BTreeSet::from([client_id(&ann), client_id(&carol)])
    );
    for node in nodes {
        node.shutdown().await;
    }
}
