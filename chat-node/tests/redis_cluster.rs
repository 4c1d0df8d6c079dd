//! Three chat-nodes on a real three-primary Redis Cluster (`redis+cluster://`): channels on every
//! shard fan out across nodes with shared offsets, history and the live feed live on the shard
//! that owns the channel's slot (sharded Pub/Sub, not the cluster-wide bus), `since` recovers
//! across nodes (also after a chat-node goes away and a replacement joins), a shard that is
//! down makes only its own channels unavailable and its return is gap-filled, a primary killed
//! for good is failed over to its replica without losing an acknowledged message (and without
//! a reconnect of the chat-nodes), and a channel whose slot is migrated to another primary
//! keeps its subscribers and history.

mod common;

use common::{Client, Node, http_publish, metric_value};
use serde_json::json;
use test_harness::redis::RedisServer;
use test_harness::redis::cluster::RedisCluster;

async fn three_nodes(cluster: &RedisCluster) -> Vec<Node> {
    let url = cluster.url();
    let mut nodes = Vec::new();
    for id in ["c0", "c1", "c2"] {
        let node = Node::start(&["--redis-url", &url, "--node-id", id]).await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    nodes
}

/// One channel name per shard: `channels[i]` is served by primary `cluster.nodes()[i]`.
async fn one_channel_per_shard(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut channels: Vec<Option<String>> = vec![None; cluster.primaries()];
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let shard = cluster.node_for_slot(cluster.key_slot(&format!("{{{name}}}")).await);
        channels[shard].get_or_insert(name);
        if channels.iter().all(Option::is_some) {
            break;
        }
    }
    channels.into_iter().map(Option::unwrap).collect()
}

async fn query(server: &RedisServer, parts: &[&str]) -> String {
    server.command(parts).await.unwrap()
}

#[tokio::test]
async fn fan_out_on_every_shard_with_sharded_pubsub() {
    let cluster = RedisCluster::start(3).await;
    let nodes = three_nodes(&cluster).await;
    let channels = one_channel_per_shard(&cluster, "chat:room").await;

    let mut clients: Vec<Client> = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        for channel in &channels {
            c.subscribe(channel).await;
        }
        clients.push(c);
    }
    for (shard, channel) in channels.iter().enumerate() {
        // Publish from a different node for each channel.
        let offset = clients[(shard + 1) % 3]
            .publish(channel, json!({"shard": shard}))
            .await;
        for c in &mut clients {
            let m = c.recv_type("message").await;
            assert_eq!(
                (m["channel"].as_str(), m["offset"].as_str()),
                (Some(channel.as_str()), Some(offset.as_str()))
            );
            assert_eq!(m["data"]["shard"], shard);
        }
        // History and live feed sit on the shard owning the channel's slot.
        let owner = &cluster.nodes()[shard];
        let history = format!("chatnode:history:{{{channel}}}");
        let live = format!("chatnode:live:{{{channel}}}");
        assert_eq!(query(owner, &["TYPE", &history]).await, "stream");
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", owner.port())).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let sharded: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(&live)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(sharded[0].1, 3, "one sharded subscription per chat-node");
        let global: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&live)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(global[0].1, 0, "no cluster-wide Pub/Sub");
    }
    // HTTP publish reaches every node too.
    let body = format!(r#"{{"channel":"{}","data":"http"}}"#, channels[0]);
    let (status, reply) = http_publish(&nodes[2], &body, None).await;
    assert_eq!(status, 200);
    for c in &mut clients {
        assert_eq!(c.recv_type("message").await["offset"], reply["offset"]);
    }
    // A healthy cluster never made a node reconnect (no spurious `Disconnection` pushes).
    for node in &nodes {
        let text = node.metrics().await;
        assert_eq!(
            metric_value(&text, "chat_redis_reconnects_total"),
            Some(0.0)
        );
        assert_eq!(metric_value(&text, "chat_redis_up"), Some(1.0));
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn since_recovers_on_a_cluster() {
    let cluster = RedisCluster::start(3).await;
    let nodes = three_nodes(&cluster).await;
    let channels = one_channel_per_shard(&cluster, "room").await;
    let mut publisher = nodes[0].connect().await;
    for channel in &channels {
        let mut offsets = Vec::new();
        for i in 0..6 {
            offsets.push(publisher.publish(channel, json!(i)).await);
        }
        let mut late = nodes[2].connect().await;
        late.send(json!({"type":"subscribe","channel":channel,"since":offsets[2]}))
            .await;
        let sub = late.recv_type("subscribed").await;
        assert_eq!(sub["recovered"], 3);
        assert_eq!(sub["offset"], offsets[5].as_str());
        let live = publisher.publish(channel, json!("live")).await;
        let mut seen = Vec::new();
        while seen.last() != Some(&live) {
            seen.push(
                late.recv_type("message").await["offset"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        let mut expected = offsets[3..].to_vec();
        expected.push(live.clone());
        assert_eq!(seen, expected, "{channel}: none lost, none twice, in order");
        // The epoch and history pages on every shard (the scripts touch the stream and its
        // meta hash, one slot): the same epoch from another node, a reverse page, `last`.
        let epoch = sub["epoch"].as_str().expect("epoch").to_owned();
        let mut other = nodes[1].connect().await;
        other
            .send(json!({"type":"history","channel":channel,"limit":2,"reverse":true,"ref":"h"}))
            .await;
        let page = other.recv_type("history").await;
        assert_eq!(
            (&page["epoch"], &page["offset"]),
            (&json!(epoch), &json!(live))
        );
        let got: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_str().unwrap())
            .collect();
        assert_eq!(got, [live.as_str(), offsets[5].as_str()]);
        other
            .send(json!({"type":"subscribe","channel":channel,"last":2}))
            .await;
        let sub = other.recv_type("subscribed").await;
        assert_eq!(
            (&sub["recovered"], &sub["epoch"]),
            (&json!(2), &json!(epoch))
        );
        assert_eq!(other.recv_offsets(2).await, [offsets[5].clone(), live]);
    }

    // A chat-node goes away (drain, 1001): its client resumes on another node with `since`
    // and misses nothing published meanwhile; a replacement node joins the cluster and serves.
    let mut nodes = nodes;
    let channel = &channels[1];
    let mut roamer = nodes[1].connect().await;
    roamer.subscribe(channel).await;
    let seen = publisher.publish(channel, json!("seen")).await;
    assert_eq!(roamer.recv_type("message").await["offset"], seen.as_str());
    nodes.remove(1).shutdown().await;
    assert_eq!(roamer.closed().await, 1001);
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(publisher.publish(channel, json!(i)).await);
    }
    let mut resumed = nodes[1].connect().await;
    resumed
        .send(json!({"type":"subscribe","channel":channel,"since":seen}))
        .await;
    assert_eq!(resumed.recv_type("subscribed").await["recovered"], 3);
    for offset in &missed {
        assert_eq!(
            resumed.recv_type("message").await["offset"],
            offset.as_str()
        );
    }
    let replacement = Node::start(&["--redis-url", &cluster.url(), "--node-id", "c1b"]).await;
    replacement.wait_ready(200).await;
    let mut fresh = replacement.connect().await;
    fresh.subscribe(channel).await;
    let last = resumed.publish(channel, json!("last")).await;
    assert_eq!(fresh.recv_type("message").await["offset"], last.as_str());
    replacement.shutdown().await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// A readiness sampler of [`watch_readiness`]: its stop signal and its task.
type Watcher = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<String>>,
);

/// Samples a node's `/readyz` and `chat_redis_up` every 50 ms until told to stop; returns the
/// samples that were not ready / not up.
fn watch_readiness(node: &Node) -> Watcher {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, metrics) = (node.admin_url("/readyz"), node.admin_url("/metrics"));
    let task = tokio::spawn(async move {
        let mut bad = Vec::new();
        loop {
            let status = reqwest::get(&ready).await.map(|r| r.status().as_u16());
            if !matches!(status, Ok(200)) {
                bad.push(format!("/readyz {status:?}"));
            }
            let text = common::get_text(&metrics).await;
            if metric_value(&text, "chat_redis_up") != Some(1.0) {
                bad.push("chat_redis_up not 1".to_owned());
            }
            tokio::select! {
                _ = &mut stopped => return bad,
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
    });
    (stop, task)
}

/// Stops the `watchers` of [`watch_readiness`] and asserts that every node stayed ready and
/// connected to Redis through `what`, and never reconnected.
async fn rode_through(watchers: Vec<Watcher>, nodes: &[Node], what: &str) {
    for (n, (stop, task)) in watchers.into_iter().enumerate() {
        let _ = stop.send(());
        let bad = task.await.unwrap();
        assert!(
            bad.is_empty(),
            "node {n} stayed ready and up through {what}, got {bad:?}"
        );
    }
    for (n, node) in nodes.iter().enumerate() {
        let text = node.metrics().await;
        assert_eq!(
            metric_value(&text, "chat_redis_reconnects_total"),
            Some(0.0),
            "node {n}: {what} is no reconnect of the node"
        );
    }
}

/// Waits until `series` is exactly `value` on `node`.
async fn wait_metric_eq(node: &Node, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let got = metric_value(&node.metrics().await, series);
        if got == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {value} (last {got:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Per-shard health on a cluster that serves the shards still up
/// (`cluster-require-full-coverage no`): one primary killed makes only its channels
/// unavailable. The chat-nodes stay ready and connected to Redis, never reconnect, the other
/// shards' channels keep publishing, delivering and subscribing on the same connections, and
/// the killed shard's publishes and subscribes are answered `unavailable`. When it returns (no
/// data: a new epoch), its subscribers get every new message once, in order, on their
/// connection.
#[tokio::test]
async fn a_shard_down_makes_only_its_channels_unavailable_until_it_returns() {
    let mut cluster = RedisCluster::start_partial_coverage(3).await;
    let nodes = three_nodes(&cluster).await;
    let channels = one_channel_per_shard(&cluster, "chat:ops").await;
    let victim = 1;
    let channel = channels[victim].clone();
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        for ch in &channels {
            c.subscribe(ch).await;
        }
        subscribers.push(c);
    }
    for ch in &channels {
        let before = subscribers[0].publish(ch, json!("before")).await;
        for c in &mut subscribers {
            assert_eq!(c.recv_type("message").await["offset"], before.as_str());
        }
    }
    let watchers: Vec<_> = nodes.iter().map(watch_readiness).collect();

    cluster.node_mut(victim).kill();
    for node in &nodes {
        wait_metric_eq(node, "chat_redis_cluster_shards_down", 1.0).await;
    }
    // The shard that is down: its channel answers `unavailable`, to publishes and subscribes.
    assert_eq!(
        subscribers[1]
            .expect_error(json!({"type":"publish","channel":channel,"data":"lost"}))
            .await,
        "unavailable"
    );
    let mut late = nodes[2].connect().await;
    assert_eq!(
        late.expect_error(json!({"type":"subscribe","channel":channel}))
            .await,
        "unavailable"
    );
    // The others: published from every node, delivered to every subscriber, and subscribable.
    for round in 0..3 {
        for (shard, ch) in channels.iter().enumerate().filter(|(s, _)| *s != victim) {
            let offset = subscribers[round]
                .publish(ch, json!({"round": round}))
                .await;
            for (n, c) in subscribers.iter_mut().enumerate() {
                let m = c.recv_type("message").await;
                assert_eq!(
                    (m["channel"].as_str(), m["offset"].as_str()),
                    (Some(ch.as_str()), Some(offset.as_str())),
                    "node {n}, shard {shard}: the other shards are served while one is down"
                );
            }
        }
    }
    late.subscribe(&channels[2]).await;
    let o = subscribers[0].publish(&channels[2], json!("late")).await;
    assert_eq!(late.recv_type("message").await["offset"], o.as_str());
    for c in subscribers.iter_mut() {
        assert_eq!(c.recv_type("message").await["offset"], o.as_str());
    }

    cluster.restart_node(victim).await;
    for node in &nodes {
        wait_metric_eq(node, "chat_redis_cluster_shards_down", 0.0).await;
    }
    let mut after = Vec::new();
    for i in 0..10 {
        after.push(subscribers[i % 3].publish(&channel, json!(i)).await);
    }
    for (n, c) in subscribers.iter_mut().enumerate() {
        let got = c.recv_offsets(after.len()).await;
        assert_eq!(
            got, after,
            "node {n}: every message once, in order, same connection"
        );
    }
    late.subscribe(&channel).await;
    let last = subscribers[2].publish(&channel, json!("last")).await;
    assert_eq!(late.recv_type("message").await["offset"], last.as_str());

    rode_through(watchers, &nodes, "one shard down").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// The offsets and epoch of a channel's whole history, read through `client`.
async fn history(client: &mut Client, channel: &str) -> (Vec<String>, String) {
    let page = client
        .request(json!({"type":"history","channel":channel,"limit":100}))
        .await;
    assert_eq!(page["type"], "history", "{page}");
    let offsets = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_str().unwrap().to_owned())
        .collect();
    (offsets, page["epoch"].as_str().unwrap().to_owned())
}

/// Three primaries with two replicas each; chat-nodes acknowledge a publish only once a replica
/// has it (`--redis-min-replicas-ack 1`: `WAIT` on the shard's connection, which redis-rs routes
/// with the publish script's key). The primary of one channel is killed for good: the cluster
/// promotes one of its replicas (the other follows it), the chat-nodes follow the new slot map
/// without reconnecting or turning unready, every acknowledged message is in the history with its offset and the same epoch, and the
/// subscriber gets the messages published after the failover on its connection.
#[tokio::test]
async fn a_primary_killed_for_good_fails_over_to_its_replica_and_loses_no_acknowledged_message() {
    let mut cluster = RedisCluster::start_with_replicas(3, 2).await;
    let url = cluster.url();
    let mut nodes = Vec::new();
    for id in ["f0", "f1"] {
        let node = Node::start(&[
            "--redis-url",
            &url,
            "--node-id",
            id,
            "--redis-min-replicas-ack",
            "1",
        ])
        .await;
        node.wait_ready(200).await;
        nodes.push(node);
    }
    let channels = one_channel_per_shard(&cluster, "chat:failover").await;
    let victim = 1;
    let channel = channels[victim].clone();
    let slot = cluster.key_slot(&format!("{{{channel}}}")).await;

    let mut publisher = nodes[0].connect().await;
    let mut subscriber = nodes[1].connect().await;
    subscriber.subscribe(&channel).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged.push(publisher.publish(&channel, json!(i)).await);
    }
    assert_eq!(subscriber.recv_offsets(20).await, acknowledged);
    let (before, epoch) = history(&mut publisher, &channel).await;
    assert_eq!(before, acknowledged);
    let watchers: Vec<_> = nodes.iter().map(watch_readiness).collect();

    cluster.node_mut(victim).kill();
    // A replica takes the slots over, and the other replica follows it: until then a publish
    // cannot be confirmed by a replica (`unavailable`, by design).
    let promoted = async {
        loop {
            if let Some(primary) = cluster.primary_for_slot(slot).await
                && primary != victim
            {
                let replication = cluster.nodes()[primary]
                    .command(&["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                if replication.contains("connected_slaves:1")
                    && replication.contains("state=online")
                {
                    return primary;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let promoted = tokio::time::timeout(std::time::Duration::from_secs(30), promoted)
        .await
        .expect("a replica promoted, and the other one following it, within 30 s");
    assert!(promoted >= cluster.primaries(), "a replica took over");
    for node in &nodes {
        wait_metric_eq(node, "chat_redis_cluster_shards_down", 0.0).await;
    }

    let mut after = Vec::new();
    for i in 0..20 {
        after.push(publisher.publish(&channel, json!(20 + i)).await);
    }
    assert_eq!(
        subscriber.recv_offsets(20).await,
        after,
        "the subscriber's connection carries on past the failover"
    );
    let (history_after, epoch_after) = history(&mut subscriber, &channel).await;
    assert_eq!(epoch_after, epoch, "same stream: no new epoch");
    let mut expected = acknowledged.clone();
    expected.extend(after);
    assert_eq!(
        history_after, expected,
        "every acknowledged message, same offsets"
    );

    // The other shards serve too.
    for other in channels.iter().filter(|c| **c != channel) {
        publisher.publish(other, json!("other")).await;
    }

    // The shard's last replica gone, no publish on it can be confirmed: `unavailable`, while
    // the other shards still acknowledge theirs.
    let replicas = cluster.primaries() + victim * 2..cluster.primaries() + victim * 2 + 2;
    let follower = replicas.clone().find(|i| *i != promoted).unwrap();
    cluster.node_mut(follower).kill();
    assert_eq!(
        publisher
            .expect_error(json!({"type":"publish","channel":channel,"data":"unconfirmed"}))
            .await,
        "unavailable"
    );
    publisher.publish(&channels[0], json!("still")).await;
    rode_through(watchers, &nodes, "a failover").await;
    for node in nodes {
        node.shutdown().await;
    }
}

/// Resharding under live traffic: the slot of a subscribed channel moves to another primary as
/// `redis-cli --cluster reshard` moves it (IMPORTING/MIGRATING, `MIGRATE` of its keys, then
/// `SETSLOT NODE`). A publish between the keys' move and the ownership change follows the `ASK`
/// redirect to the new owner, where nobody is subscribed yet; when the slot leaves its old
/// owner, Redis drops the channel's sharded subscriptions there (a `sunsubscribe` push). Every
/// subscriber must still get every message on its connection, once and in order, the history
/// must keep its epoch and offsets, the chat-nodes must be subscribed on the new owner, and a
/// channel of another shard must not notice.
#[tokio::test]
async fn a_channel_whose_slot_moves_to_another_primary_keeps_its_subscribers_and_history() {
    let cluster = RedisCluster::start(3).await;
    let nodes = three_nodes(&cluster).await;
    let channels = one_channel_per_shard(&cluster, "chat:reshard").await;
    let (moving, staying) = (channels[0].clone(), channels[1].clone());
    let slot = cluster.key_slot(&format!("{{{moving}}}")).await;
    let mut subscribers = Vec::new();
    for node in &nodes {
        let mut c = node.connect().await;
        c.subscribe(&moving).await;
        c.subscribe(&staying).await;
        subscribers.push(c);
    }
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(subscribers[0].publish(&moving, json!(i)).await);
    }
    for c in &mut subscribers {
        assert_eq!(c.recv_offsets(10).await, sent);
    }
    let (_, epoch) = history(&mut subscribers[0], &moving).await;

    let new_owner = 2;
    assert_eq!(
        cluster.start_slot_migration(slot, new_owner).await.unwrap(),
        0
    );
    let mut resharded = vec![subscribers[1].publish(&moving, json!("during")).await];
    cluster
        .finish_slot_migration(slot, new_owner)
        .await
        .unwrap();
    for i in 0..10 {
        resharded.push(subscribers[2].publish(&moving, json!(10 + i)).await);
    }
    for (n, c) in subscribers.iter_mut().enumerate() {
        assert_eq!(
            c.recv_offsets(resharded.len()).await,
            resharded,
            "node {n}: every message once, in order, on the same connection"
        );
    }
    sent.extend(resharded);
    let (offsets, epoch_after) = history(&mut subscribers[1], &moving).await;
    assert_eq!(
        epoch_after, epoch,
        "the stream moved with its slot: same epoch"
    );
    assert_eq!(offsets, sent);

    // The subscriptions are on the new owner now; the old one has none.
    let live = format!("chatnode:live:{{{moving}}}");
    for (index, wanted) in [(new_owner, "3"), (0, "0")] {
        let numsub = query(&cluster.nodes()[index], &["PUBSUB", "SHARDNUMSUB", &live]).await;
        assert_eq!(
            numsub.lines().nth(1),
            Some(wanted),
            "node {index}: {numsub}"
        );
    }
    // The other shard's channel went on undisturbed.
    let o = subscribers[0].publish(&staying, json!("after")).await;
    for c in &mut subscribers {
        assert_eq!(c.recv_type("message").await["offset"], o.as_str());
    }
    // Nothing needed a new session with Redis, nor a client a new connection.
    for node in &nodes {
        let text = node.metrics().await;
        assert_eq!(
            metric_value(&text, "chat_redis_reconnects_total"),
            Some(0.0)
        );
    }
    drop(subscribers);
    for node in nodes {
        node.shutdown().await;
    }
}

/// One node's connection to a primary dropped while that primary stays up, and kept from
/// coming back for a while: the subscriber's chat-node connects as its own ACL user, whose
/// Pub/Sub connection to the shard is killed (`CLIENT KILL USER … TYPE pubsub`) while the user
/// is switched off there. Messages published on that shard meanwhile (from another chat-node)
/// miss the live feed; the node's health check still reaches the shard (its own connection),
/// so nothing is unavailable. When the user is back on, redis-rs reconnects and subscribes the
/// channel again, and the node fills the gap: the subscriber gets every message once, in order,
/// on its connection, and the node never reconnected.
#[tokio::test]
async fn a_node_connection_that_drops_and_returns_has_its_gap_filled() {
    let cluster = RedisCluster::start(3).await;
    for node in cluster.nodes() {
        query(
            node,
            &[
                "ACL",
                "SETUSER",
                "sub",
                "on",
                ">sub-secret",
                "~*",
                "&*",
                "+@all",
            ],
        )
        .await;
    }
    let publisher_node = Node::start(&["--redis-url", &cluster.url(), "--node-id", "p"]).await;
    let sub_url = cluster
        .url()
        .replace("redis+cluster://", "redis+cluster://sub:sub-secret@");
    let subscriber_node = Node::start(&["--redis-url", &sub_url, "--node-id", "s"]).await;
    publisher_node.wait_ready(200).await;
    subscriber_node.wait_ready(200).await;
    let channels = one_channel_per_shard(&cluster, "chat:blip").await;
    let shard = 1;
    let channel = channels[shard].clone();
    let mut subscriber = subscriber_node.connect().await;
    for ch in &channels {
        subscriber.subscribe(ch).await;
    }
    let mut publisher = publisher_node.connect().await;
    let first = publisher.publish(&channel, json!("first")).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        first.as_str()
    );

    let primary = &cluster.nodes()[shard];
    query(primary, &["ACL", "SETUSER", "sub", "off"]).await;
    let killed = query(
        primary,
        &["CLIENT", "KILL", "USER", "sub", "TYPE", "pubsub"],
    )
    .await;
    assert!(
        killed.trim().parse::<u32>().unwrap() >= 1,
        "the subscriber node's Pub/Sub connection to the shard: {killed}"
    );
    let mut missed = Vec::new();
    for i in 0..20 {
        missed.push(publisher.publish(&channel, json!(i)).await);
    }
    // Another shard's channel is not disturbed meanwhile.
    let other = publisher.publish(&channels[0], json!("other")).await;
    let m = subscriber.recv_type("message").await;
    assert_eq!(
        (m["channel"].as_str(), m["offset"].as_str()),
        (Some(channels[0].as_str()), Some(other.as_str())),
        "nothing of the dropped shard's channel arrives while its subscription is gone"
    );

    query(primary, &["ACL", "SETUSER", "sub", "on"]).await;
    let got = subscriber.recv_offsets(missed.len()).await;
    assert_eq!(
        got, missed,
        "the gap, once, in order, on the same connection"
    );
    let live = publisher.publish(&channel, json!("live")).await;
    assert_eq!(
        subscriber.recv_type("message").await["offset"],
        live.as_str()
    );
    let text = subscriber_node.metrics().await;
    assert_eq!(
        metric_value(&text, "chat_redis_reconnects_total"),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, "chat_redis_cluster_shards_down"),
        Some(0.0)
    );
    publisher_node.shutdown().await;
    subscriber_node.shutdown().await;
}
