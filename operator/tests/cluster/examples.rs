//! `kubectl apply -f examples/` as a user would: every child appears with the right content,
//! `kubectl get chat` shows the columns, conditions and observedGeneration move. No pod runs on
//! this API-only control plane: that the cluster turns Ready once its pods pass their own probes
//! is proven on the real node (tests/e2e, `real_pods::quickstart`).

use chat_operator::api::{ChatCluster, Phase};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};

use crate::support::*;

fn env_value(d: &Deployment, name: &str) -> Option<String> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn condition(c: &ChatCluster, type_: &str) -> Option<(String, String)> {
    let cond = c.status.as_ref()?.condition(type_)?;
    Some((cond.status.clone(), cond.reason.clone()))
}

#[tokio::test]
async fn applying_the_examples_yields_every_child_and_a_ready_cluster() {
    let cp = control_plane().await;
    cp.with_temp_ns("examples", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let operator = start_operator(cp, &ns).await;
        kubectl_ok(
            cp,
            &["apply", "-n", &ns, "-f", repo("examples").to_str().unwrap()],
        );

        // basic.yaml: managed Redis, two replicas.
        let deployment: Deployment = wait_for_object(&client, &ns, "demo").await;
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            env_value(&deployment, "CHAT_REDIS_URL").as_deref(),
            Some("redis://demo-redis:6379")
        );
        assert_eq!(
            env_value(&deployment, "CHAT_MAX_CONNECTIONS").as_deref(),
            Some("6144"),
            "derived from 256Mi"
        );
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ChatCluster", "demo")
        );
        let client_svc: Service = wait_for_object(&client, &ns, "demo").await;
        assert_eq!(client_svc.spec.unwrap().ports.unwrap()[0].port, 8080);
        let admin_svc: Service = wait_for_object(&client, &ns, "demo-admin").await;
        assert_eq!(admin_svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        let _: StatefulSet = wait_for_object(&client, &ns, "demo-redis").await;
        let _: Service = wait_for_object(&client, &ns, "demo-redis").await;
        let _: NetworkPolicy = wait_for_object(&client, &ns, "demo-redis").await;
        let _: PodDisruptionBudget = wait_for_object(&client, &ns, "demo").await;
        let secret: Secret = wait_for_object(&client, &ns, "demo-redis-auth").await;
        assert_eq!(secret.data.unwrap()["password"].0.len(), 32);

        // external-redis.yaml: no Redis of ours, an nginx Ingress with cookie affinity.
        let external: Deployment = wait_for_object(&client, &ns, "chat-external").await;
        assert_eq!(
            env_value(&external, "CHAT_REDIS_URL").as_deref(),
            Some("redis://redis.data.svc.cluster.local:6379")
        );
        // Its `channels` reach the nodes as chat-node's own JSON (CHAT_NAMESPACES).
        let namespaces: serde_json::Value = serde_json::from_str(
            &env_value(&external, "CHAT_NAMESPACES").expect("CHAT_NAMESPACES is set"),
        )
        .unwrap();
        assert_eq!(
            namespaces,
            serde_json::json!({
                "defaults": {"anonymousSubscribe": false},
                "namespaces": [
                    {"name": "chat", "presence": true, "joinLeave": true, "history": {"ttl": "1h"}},
                    {"name": "typing", "history": {"enabled": false}},
                    {"name": "announce", "clientPublish": false},
                ]
            })
        );
        // basic.yaml's demo rooms show who is online.
        let basic: serde_json::Value = serde_json::from_str(
            &env_value(&deployment, "CHAT_NAMESPACES").expect("basic.yaml sets CHAT_NAMESPACES"),
        )
        .unwrap();
        assert_eq!(
            basic["namespaces"],
            serde_json::json!([{"name": "chat", "presence": true, "joinLeave": true}])
        );
        let ingress: Ingress = wait_for_object(&client, &ns, "chat-external").await;
        let annotations = ingress.metadata.annotations.unwrap();
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/affinity"],
            "cookie"
        );
        assert_eq!(
            annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
            "3600"
        );
        let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        assert!(
            statefulsets
                .get_opt("chat-external-redis")
                .await
                .unwrap()
                .is_none()
        );

        // Status before any pod is ready: Pending, observedGeneration 1.
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let pending = wait_for("demo status", || async {
            let c = clusters.get("demo").await.ok()?;
            (c.status.as_ref()?.observed_generation == Some(1)).then_some(c)
        })
        .await;
        assert_eq!(pending.status.as_ref().unwrap().phase, Some(Phase::Pending));
        assert_eq!(condition(&pending, "Ready").unwrap().0, "False");
        assert_eq!(condition(&pending, "Paused").unwrap().0, "False");
        assert_eq!(condition(&pending, "Degraded").unwrap().0, "False");

        // kubectl get chat shows the printer columns. No pod runs on this API-only control
        // plane: the turn to Ready with pods that pass their own probes, and its Events, are
        // the end-to-end quickstart's (tests/e2e, real_pods::quickstart).
        let table = kubectl_ok(cp, &["get", "chat", "demo", "-n", &ns]);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"]
        );
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[0], "demo", "{table}");
        assert_eq!(row[1], "2", "{table}");
        assert!(row.contains(&"Pending"), "{table}");
        assert!(
            row.contains(&format!("ws://demo.{ns}.svc:8080/ws").as_str()),
            "no Ingress address yet, so the Service URL: {table}"
        );

        // Events were published for what happened so far.
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let reasons = wait_for("the RedisSecretCreated Event", || async {
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("demo"))
                .filter_map(|e| e.reason)
                .collect();
            reasons
                .contains(&"RedisSecretCreated".to_string())
                .then_some(reasons)
        })
        .await;
        assert!(
            !reasons.contains(&"AllReplicasReady".to_string()),
            "no pod runs here: {reasons:?}"
        );
        operator.stop().await;
    })
    .await;
}
