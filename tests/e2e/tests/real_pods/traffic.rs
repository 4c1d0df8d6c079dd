//! What every route into a ChatCluster must carry, checked the same way through Traefik's
//! Ingress and through a Gateway API HTTPRoute: clients without affinity spread over every
//! pod, clients on different pods chat with each other, and SSE streams pass unbuffered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::Client;
use crate::support::Env;

/// Runs the checks against the ChatCluster `cluster` behind `host` on Traefik, whose chat-node
/// pods are `pods`. Returns one connected client per pod.
pub async fn spread_chat_and_sse(
    env: &Env,
    host: &str,
    cluster: &str,
    pods: &BTreeSet<String>,
) -> Vec<Client> {
    let url = format!("ws://{}/ws", env.cluster.ingress_addr());
    // Traefik's view of the endpoints follows the pods' readiness within a few seconds.
    let mut clients = vec![Client::connect_when_routed(&url, Some(host), None, cluster).await];
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients
        .iter()
        .map(|c| &c.node)
        .collect::<BTreeSet<_>>()
        .len()
        < pods.len()
    {
        assert!(
            Instant::now() < deadline,
            "clients without a cookie never reached every pod"
        );
        let client = Client::connect(&url, Some(host), None).await.unwrap();
        if clients.iter().any(|c| c.node == client.node) {
            client.close().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            clients.push(client);
        }
    }
    // Then 30 more spread evenly (round robin gives 10 each; at least 5 each is asked).
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let client = Client::connect(&url, Some(host), None).await.unwrap();
        *per_pod.entry(client.node.clone()).or_default() += 1;
        client.close().await;
    }
    assert_eq!(
        &per_pod.keys().cloned().collect::<BTreeSet<_>>(),
        pods,
        "{per_pod:?}"
    );
    assert!(
        per_pod.values().all(|n| *n >= 5),
        "30 clients without a cookie spread over the pods: {per_pod:?}"
    );

    // Chat across pods: one client on each pod; every message reaches all of them.
    for client in &mut clients {
        client.subscribe("chat:across", None).await;
    }
    for sender in 0..clients.len() {
        let text = format!("from pod {sender}");
        let (offset, early) = clients[sender]
            .publish(
                "chat:across",
                json!({ "text": text }),
                &format!("r{sender}"),
            )
            .await;
        for (j, receiver) in clients.iter_mut().enumerate() {
            // The sender is subscribed too: its own copy may have come before the ack.
            if j == sender && early.iter().any(|m| m["offset"] == offset) {
                continue;
            }
            let message = receiver.message().await;
            assert_eq!(
                message["offset"], offset,
                "pod {j} got pod {sender}'s message"
            );
            assert_eq!(message["data"]["text"], text);
        }
    }

    // SSE: the stream is passed through as events come, not buffered.
    let mut stream = reqwest::Client::new()
        .get(format!(
            "{}/sse?channel=chat:sse",
            env.cluster.ingress_url()
        ))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (offset, _) = clients[0]
        .publish("chat:sse", json!({"text": "over sse"}), "sse1")
        .await;
    let mut seen = String::new();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("over sse") {
                return;
            }
        }
    })
    .await;
    assert!(event.is_ok(), "the SSE event came through: {seen}");
    assert!(seen.contains(&format!("id: {offset}")), "{seen}");
    clients
}
