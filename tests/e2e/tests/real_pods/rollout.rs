//! A rolling update between two locally built image tags, under load, through Traefik: the
//! Deployment never drops below its replicas (`maxUnavailable: 0`); each old pod waits in
//! preStop, then drains, closing its WebSockets with 1001; every client reconnects (to a new
//! pod) and resumes with `since`; every message the steady publisher got an ack for reaches
//! every subscriber exactly once, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use test_harness::node::images;
use tokio::sync::watch;

use crate::client::{Client, Frame};
use crate::support::{Env, chat_cluster, env, eventually};

const HOST: &str = "rollout.e2e.test";
const CHANNEL: &str = "chat:rollout";
const SUBSCRIBERS: usize = 8;

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// (offset, seq) in arrival order.
    messages: Vec<(String, u64)>,
    /// Close codes of the connections it lost.
    closes: Vec<Option<u16>>,
    /// Nodes it was connected to, in order.
    nodes: Vec<String>,
}

/// Subscribes, and on every lost connection reconnects through the ingress and resumes after
/// the last offset it has, until `stop`.
async fn subscriber(
    url: String,
    seen: Arc<Mutex<Seen>>,
    mut stop: watch::Receiver<bool>,
    subscribed: tokio::sync::mpsc::Sender<()>,
) {
    let mut last: Option<String> = None;
    let mut first = true;
    while !*stop.borrow() {
        let mut client = Client::connect_when_routed(&url, Some(HOST), None, "roll").await;
        seen.lock().unwrap().nodes.push(client.node.clone());
        let (frame, early) = client.subscribe(CHANNEL, last.as_deref()).await;
        assert_ne!(frame["gap"], true, "history covers the reconnect: {frame}");
        if last.is_none() {
            last = frame["offset"].as_str().map(str::to_owned);
        }
        if first {
            first = false;
            let _ = subscribed.send(()).await;
        }
        let record = |m: &Value, last: &mut Option<String>| {
            let offset = m["offset"].as_str().unwrap().to_owned();
            let seq = m["data"]["seq"].as_u64().unwrap();
            seen.lock().unwrap().messages.push((offset.clone(), seq));
            *last = Some(offset);
        };
        for m in &early {
            record(m, &mut last);
        }
        loop {
            tokio::select! {
                frame = client.next_within(Duration::from_secs(60)) => match frame {
                    Some(Frame::Json(m)) if m["type"] == "message" => record(&m, &mut last),
                    Some(Frame::Json(other)) => panic!("unexpected frame {other}"),
                    Some(Frame::Closed(code)) => {
                        seen.lock().unwrap().closes.push(code);
                        break;
                    }
                    None => panic!("a subscriber heard nothing for 60 s"),
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Publishes seq 0, 1, ... every 40 ms until `stop`, reconnecting when its node drains; returns
/// the seqs that were acknowledged (unacknowledged ones may or may not have been delivered).
async fn publisher(url: String, stop: watch::Receiver<bool>) -> BTreeSet<u64> {
    let mut acked = BTreeSet::new();
    let mut seq = 0u64;
    'connection: while !*stop.borrow() {
        let mut client = Client::connect_when_routed(&url, Some(HOST), None, "roll").await;
        while !*stop.borrow() {
            client
                .send(json!({"type": "publish", "channel": CHANNEL, "data": {"seq": seq}, "ref": seq.to_string()}))
                .await;
            let this = seq;
            let reference = this.to_string();
            seq += 1;
            loop {
                match client.next_within(Duration::from_secs(10)).await {
                    Some(Frame::Json(f))
                        if f["type"] == "ack" && f["ref"].as_str() == Some(reference.as_str()) =>
                    {
                        acked.insert(this);
                        break;
                    }
                    Some(Frame::Json(f)) if f["type"] == "error" => panic!("publish refused: {f}"),
                    Some(Frame::Json(_)) => {}
                    Some(Frame::Closed(_)) | None => continue 'connection,
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    acked
}

fn deployment_image(env: &Env, ns: &str) -> Value {
    env.get(ns, &["deployment", "roll"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_moves_every_client_and_loses_no_acknowledged_message() {
    let env = env().await;
    let ns = env.namespace("e2e-rollout");
    let ns = ns.name().to_owned();
    env.apply(
        &ns,
        &format!(
            "{}  image: {}\n",
            chat_cluster(
                "roll",
                2,
                &format!("    provider: traefik\n    host: {HOST}\n    sessionAffinity: none\n")
            ),
            images::chat_node()
        ),
    );
    env.wait_chat_ready(&ns, "roll").await;
    let deployment = deployment_image(env, &ns);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "{}",
        deployment["spec"]["strategy"]
    );
    let old_pods: BTreeSet<String> = env
        .ready_pods(
            &ns,
            "app.kubernetes.io/instance=roll,app.kubernetes.io/name=chat-node",
        )
        .into_iter()
        .collect();
    assert_eq!(old_pods.len(), 2);

    let url = format!("ws://{}/ws", env.cluster.ingress_addr());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(SUBSCRIBERS);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..SUBSCRIBERS).map(|_| Arc::default()).collect();
    let subscribers: Vec<_> = seen
        .iter()
        .map(|s| {
            tokio::spawn(subscriber(
                url.clone(),
                s.clone(),
                stop_rx.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..SUBSCRIBERS {
        ready_rx.recv().await.expect("every subscriber subscribes");
    }
    let (publisher_stop_tx, publisher_stop_rx) = watch::channel(false);
    let publishing = tokio::spawn(publisher(url.clone(), publisher_stop_rx));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The rollout: another image tag. Watch availability while it runs.
    env.kubectl
        .run([
            "patch",
            "chat",
            "roll",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &json!({"spec": {"image": images::chat_node_next()}}).to_string(),
        ])
        .unwrap();
    let mut lowest_available = i64::MAX;
    eventually(Duration::from_secs(180), "the rollout to finish", || {
        let d = deployment_image(env, &ns);
        let status = &d["status"];
        if let Some(available) = status["availableReplicas"].as_i64() {
            lowest_available = lowest_available.min(available);
        }
        let image = &d["spec"]["template"]["spec"]["containers"][0]["image"];
        let done = *image == images::chat_node_next()
            && status["updatedReplicas"] == 2
            && status["replicas"] == 2
            && status["availableReplicas"] == 2
            && d["metadata"]["generation"] == status["observedGeneration"];
        let old_gone = env.get(
            &ns,
            &[
                "pods",
                "-l",
                "app.kubernetes.io/instance=roll,app.kubernetes.io/name=chat-node",
            ],
        )["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !old_pods.contains(p["metadata"]["name"].as_str().unwrap()));
        (done && old_gone).then_some(())
    })
    .await;
    assert!(
        lowest_available >= 2,
        "maxUnavailable 0: availability dropped to {lowest_available}"
    );

    // Let everyone settle on the new pods, then stop publishing and let the tail arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher_stop_tx.send(true).unwrap();
    let acked = publishing.await.unwrap();
    assert!(
        acked.len() > 50,
        "the publisher kept publishing: {} acks",
        acked.len()
    );
    eventually(
        Duration::from_secs(30),
        "every subscriber to have every acknowledged message",
        || {
            seen.iter()
                .all(|s| {
                    let got: BTreeSet<u64> =
                        s.lock().unwrap().messages.iter().map(|(_, q)| *q).collect();
                    acked.is_subset(&got)
                })
                .then_some(())
        },
    )
    .await;
    stop_tx.send(true).unwrap();
    for task in subscribers {
        task.await.unwrap();
    }

    let new_pods: BTreeSet<String> = env
        .ready_pods(
            &ns,
            "app.kubernetes.io/instance=roll,app.kubernetes.io/name=chat-node",
        )
        .into_iter()
        .collect();
    eprintln!(
        "rollout: {} acknowledged publishes; lowest availability {lowest_available}; reconnects per subscriber {:?}",
        acked.len(),
        seen.iter()
            .map(|s| s.lock().unwrap().closes.len())
            .collect::<Vec<_>>()
    );
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().unwrap();
        // exactly once, in offset order
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, seq) in &s.messages {
            *counts.entry(*seq).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "subscriber {i} got messages twice: {twice:?}"
        );
        let offsets: Vec<(u64, u64)> = s
            .messages
            .iter()
            .map(|(o, _)| {
                let (ms, n) = o.split_once('-').unwrap();
                (ms.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i} got messages out of order"
        );
        // it was moved off the old pods by their drain and ended on a new one
        assert!(
            !s.closes.is_empty(),
            "subscriber {i} was never disconnected"
        );
        assert!(
            s.closes.iter().all(|c| *c == Some(1001)),
            "subscriber {i}: connections are closed by the drain (1001), got {:?}",
            s.closes
        );
        let last_node = s.nodes.last().unwrap();
        assert!(
            new_pods.contains(last_node),
            "subscriber {i} ended on {last_node}, not a new pod"
        );
    }
}
