//! Through Traefik's Ingress (provider traefik, cookie affinity) to three real chat-node pods:
//! WebSocket upgrades and SSE streams pass; a browser that keeps its affinity cookie lands on
//! the same pod over 20 reconnects; clients without a cookie spread over every pod; clients on
//! different pods chat with each other.

use std::collections::BTreeSet;

use crate::client::Client;
use crate::support::{chat_cluster, env};
use crate::traffic::spread_chat_and_sse;

const HOST: &str = "sticky.e2e.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_ingress_carries_websockets_and_sse_sticks_by_cookie_and_spreads_the_rest() {
    let env = env().await;
    let ns = env.namespace("e2e-ingress");
    let ns = ns.name();
    env.apply(
        ns,
        &chat_cluster(
            "chat",
            3,
            &format!("    provider: traefik\n    className: traefik\n    host: {HOST}\n"),
        ),
    );
    let chat = env.wait_chat_ready(ns, "chat").await;
    assert_eq!(chat["status"]["endpoint"], format!("ws://{HOST}/ws"));
    let pods = env.chat_node_pods(ns, "chat");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let clients = spread_chat_and_sse(env, HOST, "chat", &pods).await;

    // A browser: the page load sets the affinity cookie; every WebSocket it opens with that
    // cookie lands on the same pod.
    let page = reqwest::Client::new()
        .get(format!("{}/", env.cluster.ingress_url()))
        .header("Host", HOST)
        .send()
        .await
        .unwrap();
    assert!(page.status().is_success());
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("chat-node="))
        .unwrap_or_else(|| panic!("Traefik sets the chat-node cookie: {:?}", page.headers()))
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("ws://{}/ws", env.cluster.ingress_addr());
    let mut sticky = BTreeSet::new();
    for _ in 0..20 {
        let client = Client::connect(&url, Some(HOST), Some(&cookie))
            .await
            .unwrap();
        sticky.insert(client.node.clone());
        client.close().await;
    }
    assert_eq!(
        sticky.len(),
        1,
        "20 reconnects with the cookie reach one pod: {sticky:?}"
    );
    for client in clients {
        client.close().await;
    }
}

/// Traefik's entry points have a 60 s read timeout by default; a WebSocket that is quiet but
/// alive (chat-node's heartbeat Pings every 30 s) must outlive it, as the operator's docs claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_through_traefik_outlives_its_read_timeout() {
    let env = env().await;
    let ns = env.namespace("e2e-idle");
    let ns = ns.name();
    env.apply(
        ns,
        &chat_cluster(
            "idle",
            1,
            "    provider: traefik\n    host: idle.e2e.test\n",
        ),
    );
    env.wait_chat_ready(ns, "idle").await;
    let url = format!("ws://{}/ws", env.cluster.ingress_addr());
    let mut quiet = Client::connect_when_routed(&url, Some("idle.e2e.test"), None, "idle").await;
    quiet.subscribe("chat:idle", None).await;
    // 75 s without a frame from either side (Pings and Pongs only).
    match quiet.next_within(std::time::Duration::from_secs(75)).await {
        None => {}
        Some(frame) => panic!("the quiet connection got {frame:?}"),
    }
    let mut other = Client::connect(&url, Some("idle.e2e.test"), None)
        .await
        .unwrap();
    let (offset, _) = other
        .publish(
            "chat:idle",
            serde_json::json!({"text": "still there?"}),
            "i1",
        )
        .await;
    let message = quiet.message().await;
    assert_eq!(
        message["offset"], offset,
        "the quiet connection still delivers"
    );
}
