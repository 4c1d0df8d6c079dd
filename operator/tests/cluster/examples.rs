//! `kubectl apply -f examples/` as a user would: every child appears with the right content,
//! `kubectl get chat` shows the columns, conditions and observedGeneration move, and the
//! cluster becomes Ready once its pods are.

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
        let ready_since = pending
            .status
            .as_ref()
            .unwrap()
            .condition("Degraded")
            .unwrap()
            .last_transition_time
            .clone();

        // Play the kubelet: chat-node and Redis pods become ready.
        mark_pods_ready(
            &client,
            &ns,
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=chat-node",
            2,
        )
        .await;
        mark_pods_ready(
            &client,
            &ns,
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=redis",
            1,
        )
        .await;
        let ready = wait_for("demo Ready", || async {
            let c = clusters.get("demo").await.ok()?;
            (c.status.as_ref()?.phase == Some(Phase::Ready)).then_some(c)
        })
        .await;
        let status = ready.status.as_ref().unwrap();
        assert_eq!(status.ready_replicas, Some(2));
        assert_eq!(condition(&ready, "Ready").unwrap().0, "True");
        assert_eq!(condition(&ready, "RedisReady").unwrap().0, "True");
        assert_eq!(condition(&ready, "Progressing").unwrap().0, "False");
        assert_eq!(
            status.condition("Degraded").unwrap().last_transition_time,
            ready_since,
            "Degraded never flipped, so its lastTransitionTime stays"
        );

        // kubectl get chat shows the printer columns.
        let table = kubectl_ok(cp, &["get", "chat", "demo", "-n", &ns]);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"]
        );
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            &row[..5],
            [
                "demo",
                "2",
                "2",
                "Ready",
                &format!("ws://demo.{ns}.svc:8080/ws")
            ]
        );

        // Events were published for the transitions.
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("demo"))
            .filter_map(|e| e.reason)
            .collect();
        assert!(
            reasons.contains(&"RedisSecretCreated".to_string()),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&"AllReplicasReady".to_string()),
            "{reasons:?}"
        );
        operator.stop().await;
    })
    .await;
}
