//! Provider `gateway`: the operator generates an HTTPRoute attached to Traefik's Gateway
//! (`traefik/traefik`), Traefik accepts it, and WebSockets, SSE, spreading and chat across
//! pods work through it. There is no cookie affinity here: the standard channel of Gateway API
//! v1.4.0 has no session persistence and Traefik v3.6 does not implement it (chat-node needs no
//! stickiness: history and fan-out live in Redis), so the operator rejects it.

use std::time::Duration;

use crate::support::{chat_cluster, condition, env, eventually};
use crate::traffic::spread_chat_and_sse;

const HOST: &str = "gateway.e2e.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_on_traefiks_gateway_carries_websockets_sse_and_chat_across_pods() {
    let env = env().await;
    let ns = env.namespace("e2e-gateway");
    let ns = ns.name();
    // Cookie affinity is refused with provider gateway, with the reason.
    let refused = env
        .kubectl
        .run_with_stdin(
            ["apply", "-n", ns, "-f", "-"],
            Some(&chat_cluster(
                "chat",
                2,
                "    provider: gateway\n    gateway: {name: traefik, namespace: traefik}\n    sessionAffinity: cookie\n",
            )),
        )
        .expect_err("cookie affinity with provider gateway is invalid")
        .to_string();
    assert!(refused.contains("sessionPersistence"), "{refused}");

    env.apply(
        ns,
        &chat_cluster(
            "chat",
            2,
            &format!("    provider: gateway\n    gateway: {{name: traefik, namespace: traefik}}\n    host: {HOST}\n"),
        ),
    );
    let chat = env.wait_chat_ready(ns, "chat").await;
    assert_eq!(chat["status"]["endpoint"], format!("ws://{HOST}/ws"));
    assert!(
        env.get(ns, &["ingress"])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "an HTTPRoute instead of an Ingress"
    );
    // Traefik accepts the route; the operator shows it.
    eventually(Duration::from_secs(60), "RouteAccepted=True", || {
        let chat = env.get(ns, &["chat", "chat"]);
        condition(&chat, "RouteAccepted")
            .is_some_and(|c| c["status"] == "True")
            .then_some(())
    })
    .await;
    let route = env.get(ns, &["httproute", "chat"]);
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "traefik");
    assert_eq!(route["spec"]["hostnames"][0], HOST);

    let pods = env.chat_node_pods(ns, "chat");
    assert_eq!(pods.len(), 2, "{pods:?}");
    for client in spread_chat_and_sse(env, HOST, "chat", &pods).await {
        client.close().await;
    }
}
