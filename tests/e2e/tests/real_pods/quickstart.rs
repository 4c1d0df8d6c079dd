//! The README's "Install with Helm" quickstart, line by line, on the real node: the example's
//! Redis and chat-node pods run and turn Ready through their own probes, the ChatCluster turns
//! Ready by itself, and `status.endpoint` (the address Traefik publishes) is where a client
//! really chats.

use std::time::Duration;

use serde_json::json;

use crate::client::{Client, Frame};
use crate::support::{condition, env, eventually, hostless, readme_quickstart};

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
    // The status of a cluster whose pods are Ready by their own probes.
    assert_eq!(chat["status"]["phase"], "Ready", "{chat}");
    assert_eq!(chat["status"]["readyReplicas"], 2, "{chat}");
    for (type_, status) in [
        ("Ready", "True"),
        ("RedisReady", "True"),
        ("Progressing", "False"),
        ("Degraded", "False"),
    ] {
        let c = condition(&chat, type_).unwrap_or_else(|| panic!("no {type_}: {chat}"));
        assert_eq!(c["status"], status, "{type_}: {c}");
        assert_eq!(
            c["observedGeneration"], chat["metadata"]["generation"],
            "{type_}: {c}"
        );
    }
    // Events for the transitions, as `kubectl describe chat` shows them.
    let events = env.get(ns, &["events.events.k8s.io"]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["kind"] == "ChatCluster" && e["regarding"]["name"] == "demo")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["RedisSecretCreated", "AllReplicasReady"] {
        assert!(reasons.contains(&reason), "{reason} not in {reasons:?}");
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
    // kubectl get chat: the printer columns, with the pods' readiness and the endpoint.
    let table = env.run_readme_line(&["kubectl", "get", "chat", "demo"].map(String::from));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["demo", "2", "2", "Ready", endpoint.as_str()],
        "{table}"
    );
    // Traefik publishes the address when it takes the Ingress; routing to the endpoints follows.
    let mut alice = Client::connect_when_routed(&endpoint, None, None, "demo").await;
    let mut bob = Client::connect(&endpoint, None, None).await.unwrap();
    alice.subscribe("chat:quickstart", None).await;
    bob.subscribe("chat:quickstart", None).await;
    let (offset, seen) = alice
        .publish("chat:quickstart", json!({"text": "hello"}), "q1")
        .await;
    // A publisher subscribed to the channel gets its own message too.
    let echo = match seen.into_iter().next() {
        Some(echo) => echo,
        None => alice.message().await,
    };
    assert_eq!(echo["offset"], offset);
    let received = bob.message().await;
    assert_eq!(received["offset"], offset);
    assert_eq!(received["data"]["text"], "hello");
    // basic.yaml turns on presence and join/leave for `chat:`: alice hears bob join (through
    // Redis when the ingress put them on different pods), and `presence` lists both.
    // (alice also hears her own join, first.)
    let mut joined = Vec::new();
    while !joined.contains(&json!(bob.id)) {
        let event = alice.presence_event().await;
        assert_eq!(
            (&event["type"], &event["channel"]),
            (&json!("join"), &json!("chat:quickstart")),
            "{event}"
        );
        joined.push(event["info"]["client"].clone());
    }
    assert!(joined.len() <= 2, "{joined:?}");
    alice
        .send(json!({"type": "presence", "channel": "chat:quickstart", "ref": "p1"}))
        .await;
    let presence = match alice.next().await {
        Frame::Json(f) => f,
        other => panic!("expected the presence reply, got {other:?}"),
    };
    let mut online: Vec<&str> = presence["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("{presence}"))
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    online.sort();
    let mut expected = [alice.id.as_str(), bob.id.as_str()];
    expected.sort();
    assert_eq!(online, expected, "{presence}");
    alice.close().await;
    bob.close().await;

    // The server API on each pod, keyed by the Secret the operator made (mounted 0440 into the
    // non-root chat-node: readable only through the pod's fsGroup; without it the pods
    // crash-looped): `info` lists both nodes, a wrong key gets 401.
    let key = env
        .kubectl
        .run([
            "get",
            "secret",
            "demo-api-key",
            "-n",
            ns,
            "-o",
            r#"go-template={{index .data "api-key" | base64decode}}"#,
        ])
        .unwrap();
    let http = reqwest::Client::new();
    let info = |ip: String, key: String| {
        let http = http.clone();
        async move {
            let res = http
                .post(format!("http://{ip}:9092/api/info"))
                .header("Authorization", format!("apikey {}", key.trim()))
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&res.text().await.unwrap()).unwrap_or_default();
            (status, body)
        }
    };
    for pod in pods {
        if pod["metadata"]["labels"]["app.kubernetes.io/name"] != "chat-node" {
            continue;
        }
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // nodes announce themselves every few seconds
            let (status, body) = info(ip.clone(), key.clone()).await;
            assert_eq!(status, 200, "{body}");
            if body["nodes"].as_array().map(Vec::len) == Some(2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "info on {ip} does not list both nodes: {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(info(ip.clone(), "wrong".into()).await.0, 401);
    }

    env.delete_chat(ns, "demo").await;
}
