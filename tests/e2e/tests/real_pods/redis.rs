//! `kubectl delete pod` of the managed Redis: the chat-nodes' readiness endpoint (`/readyz`, what
//! their readiness probe asks) answers 503 `redis unavailable` and then 200 again by itself;
//! the ChatCluster's RedisReady flips to False and back with a Warning and a Normal Event; and
//! once the StatefulSet's new Redis pod is up, chat works again on the connections that were
//! open all along (no reconnect: the contract only makes a publish during the outage fail with
//! `unavailable`).
//!
//! The outage lasts as long as the StatefulSet needs to start a new Redis pod, a few seconds
//! here: shorter than the kubelet's probe takes to mark a pod unready (period 5 s, 2 failures),
//! so `/readyz` is watched directly on each pod's address, every 100 ms.

use std::time::Duration;

use serde_json::json;

use crate::client::{Client, Frame};
use crate::support::{chat_cluster, condition, env, eventually};

const HOST: &str = "redis.e2e.test";
const CHANNEL: &str = "chat:redis-loss";
const NODES: &str = "app.kubernetes.io/instance=lossy,app.kubernetes.io/name=chat-node";

/// Reasons of the Events of the ChatCluster `lossy`.
fn event_reasons(env: &crate::support::Env, ns: &str) -> Vec<(String, String)> {
    let events = env.get(
        ns,
        &[
            "events",
            "--field-selector",
            "involvedObject.kind=ChatCluster,involvedObject.name=lossy",
        ],
    );
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_redis_pod_makes_nodes_unready_and_chat_recovers_without_reconnects() {
    let env = env().await;
    let ns = env.namespace("e2e-redis");
    let ns = ns.name().to_owned();
    env.apply(
        &ns,
        &chat_cluster(
            "lossy",
            2,
            &format!("    provider: traefik\n    host: {HOST}\n    sessionAffinity: none\n"),
        ),
    );
    let chat = env.wait_chat_ready(&ns, "lossy").await;
    assert_eq!(condition(&chat, "RedisReady").unwrap()["status"], "True");
    let url = format!("ws://{}/ws", env.cluster.ingress_addr());
    // One client on each chat-node.
    let mut alice = Client::connect_when_routed(&url, Some(HOST), None, "lossy").await;
    let mut bob = loop {
        let client = Client::connect(&url, Some(HOST), None).await.unwrap();
        if client.node != alice.node {
            break client;
        }
        client.close().await;
    };
    alice.subscribe(CHANNEL, None).await;
    bob.subscribe(CHANNEL, None).await;

    // Watch every node's /readyz from now on.
    let pod_ips: Vec<String> = env.get(&ns, &["pods", "-l", NODES])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let answers: Vec<Answers> = pod_ips.iter().map(|_| Answers::default()).collect();
    let watchers: Vec<_> = pod_ips
        .iter()
        .zip(&answers)
        .map(|(ip, answers)| {
            tokio::spawn(watch_readyz(
                format!("http://{ip}:9091/readyz"),
                answers.clone(),
                stopped.clone(),
            ))
        })
        .collect();

    env.kubectl
        .run(["delete", "pod", "lossy-redis-0", "-n", &ns, "--wait=false"])
        .unwrap();
    // Both flips of RedisReady, each with its Event (an Event cannot be missed by polling).
    eventually(
        Duration::from_secs(90),
        "RedisNotReady and then RedisReady Events",
        || {
            let reasons = event_reasons(env, &ns);
            let lost = reasons.iter().position(|r| r.1 == "RedisNotReady")?;
            reasons[lost..]
                .iter()
                .any(|r| r.1 == "RedisReady")
                .then_some(())
        },
    )
    .await;
    env.wait_chat(&ns, "lossy", "RedisReady", "True").await;
    env.wait_chat_ready(&ns, "lossy").await;
    eventually(
        Duration::from_secs(90),
        "both chat-nodes Ready again",
        || (env.ready_pods(&ns, NODES).len() == 2).then_some(()),
    )
    .await;
    // Each node said `redis unavailable` and then, by itself, ready again.
    eventually(
        Duration::from_secs(60),
        "every node's /readyz to recover",
        || {
            answers
                .iter()
                .all(|a| {
                    let a = a.lock().unwrap();
                    a.iter()
                        .position(|(status, body)| *status == 503 && body.contains("redis"))
                        .is_some_and(|lost| a[lost..].iter().any(|(status, _)| *status == 200))
                })
                .then_some(())
        },
    )
    .await;
    stop.send(true).unwrap();
    for watcher in watchers {
        watcher.await.unwrap();
    }
    for (ip, a) in pod_ips.iter().zip(&answers) {
        eprintln!("redis: {ip}/readyz answered {:?}", a.lock().unwrap());
    }
    let reasons = event_reasons(env, &ns);
    assert!(
        reasons.contains(&("Warning".into(), "RedisNotReady".into())),
        "a Warning when Redis was lost: {reasons:?}"
    );
    assert!(
        reasons.contains(&("Normal".into(), "RedisReady".into())),
        "a Normal Event when it came back: {reasons:?}"
    );

    // Chat works on the same connections (the nodes resubscribed to Redis by themselves).
    let (offset, own) = eventually_published(&mut alice).await;
    for m in &own {
        assert_eq!(
            m["offset"], offset,
            "alice's own message before her ack: {m}"
        );
    }
    let message = bob.message().await;
    assert_eq!(message["offset"], offset);
    assert_eq!(message["data"]["text"], "back");
    let (offset, _) = bob
        .publish(CHANNEL, json!({"text": "and back"}), "b1")
        .await;
    let mut got = alice.message().await;
    if own.is_empty() && got["data"]["text"] == "back" {
        got = alice.message().await; // alice's own message first
    }
    assert_eq!(got["offset"], offset);
    alice.close().await;
    bob.close().await;
}

/// The answers (status, body) of one node's /readyz, each recorded when it changed.
type Answers = std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>;

/// GETs `url` every 100 ms until `stop`, recording the answers where they change.
async fn watch_readyz(url: String, answers: Answers, stop: tokio::sync::watch::Receiver<bool>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    while !*stop.borrow() {
        let answer = match http.get(&url).send().await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(err) => (0, err.to_string()),
        };
        {
            let mut recorded = answers.lock().unwrap();
            if recorded.last() != Some(&answer) {
                recorded.push(answer);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes "back" from `client`, retrying while the node still answers `unavailable` (its
/// readiness and its Redis link recover independently).
async fn eventually_published(client: &mut Client) -> (String, Vec<serde_json::Value>) {
    for attempt in 0..60 {
        let reference = format!("back-{attempt}");
        client
            .send(json!({"type": "publish", "channel": CHANNEL, "data": {"text": "back"}, "ref": reference}))
            .await;
        // The client is subscribed: its own message may come before the ack (the protocol
        // orders a connection's acks, not acks against deliveries).
        let mut own = Vec::new();
        loop {
            match client.next().await {
                Frame::Json(f) if f["type"] == "ack" => {
                    return (f["offset"].as_str().unwrap().to_owned(), own);
                }
                Frame::Json(f) if f["code"] == "unavailable" => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Frame::Json(f) if f["type"] == "message" && f["data"]["text"] == "back" => {
                    own.push(f);
                }
                other => panic!("expected an ack, unavailable or its own message, got {other:?}"),
            }
        }
    }
    panic!("publishing never worked again after Redis came back");
}
