//! The README's "Install with Helm" quickstart, line by line, on the real node: the example's
//! Redis and chat-node pods run and turn Ready through their own probes, the ChatCluster turns
//! Ready by itself, and `status.endpoint` (the address Traefik publishes) is where a client
//! really chats.

use std::time::Duration;

use serde_json::json;

use crate::client::Client;
use crate::support::{env, eventually, hostless, readme_quickstart};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_runs_in_real_pods_and_its_endpoint_works() {
    let env = env().await;
    let _turn = hostless().await;
    // helm install ran in env(); the rest of the block: apply, wait, get.
    let lines = readme_quickstart();
    assert!(lines.len() >= 4, "{lines:?}");
    let mut printed = String::new();
    for line in lines.iter().filter(|l| l[0] == "kubectl") {
        printed = env.run_readme_line(line);
    }
    assert!(
        printed.contains("demo") && printed.contains("Ready"),
        "kubectl get chat: {printed}"
    );

    let ns = "default";
    let chat = env.wait_chat_ready(ns, "demo").await;
    let pods = env.get(ns, &["pods", "-l", "app.kubernetes.io/instance=demo"]);
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 3, "two chat-nodes and Redis");
    for pod in pods {
        for status in pod["status"]["containerStatuses"].as_array().unwrap() {
            assert_eq!(status["ready"], true, "{status}");
            assert!(status["state"]["running"].is_object(), "{status}");
        }
        assert!(
            pod["status"]["podIP"]
                .as_str()
                .unwrap()
                .starts_with("10.88.")
        );
    }

    // Traefik publishes its address on the Ingress; the operator shows it as the endpoint.
    let published = format!("ws://{}/ws", env.cluster.ingress_addr().ip());
    let endpoint = eventually(
        Duration::from_secs(30),
        "status.endpoint to show Traefik's address",
        || {
            let chat = env.get(ns, &["chat", "demo"]);
            let endpoint = chat["status"]["endpoint"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (endpoint == published).then_some(endpoint)
        },
    )
    .await;
    assert!(chat["status"]["endpoint"].is_string());
    let mut alice = Client::connect(&endpoint, None, None).await.unwrap();
    let mut bob = Client::connect(&endpoint, None, None).await.unwrap();
    alice.subscribe("chat:quickstart", None).await;
    bob.subscribe("chat:quickstart", None).await;
    let (offset, _) = alice
        .publish("chat:quickstart", json!({"text": "hello"}), "q1")
        .await;
    let received = bob.message().await;
    assert_eq!(received["offset"], offset);
    assert_eq!(received["data"]["text"], "hello");
    alice.close().await;
    bob.close().await;

    env.delete_chat(ns, "demo").await;
}
