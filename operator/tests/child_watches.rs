//! The controller watches every kind of child in `children::kinds` (the table the orphan sweep
//! and the API checks read too): a child deleted by hand comes back at once, not at the next
//! resync, for every kind, third-party ones included (prometheus-operator's and the Gateway
//! API's CRDs are installed before the operator starts).
//!
//! One test in its own process: the CRDs are cluster-wide.

#[allow(dead_code)]
#[path = "cluster/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_operator::api::ChatCluster;
use chat_operator::children::kinds::child_kinds;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;

use support::*;

fn fixtures(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds")
        .join(dir)
}

fn cluster(name: &str, ingress: serde_json::Value) -> ChatCluster {
    serde_json::from_value(json!({
    "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
    "metadata": {"name": name},
    "spec": {
        "anonymous": true, "replicas": 2, "ingress": ingress,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        "observability": {"collector": {"traces": {"endpoint": "http://tempo:4317"}}},
        "alerting": {"warning": {"slack": {"apiUrlSecretRef": {"name": "slack", "key": "url"}}}}
    }}))
    .unwrap()
}

/// How long no reconcile may run for the operator to count as idle.
const IDLE: Duration = Duration::from_secs(3);

/// Waits until no reconcile has run for [`IDLE`]: every child has settled, and with the resync
/// an hour away only a watch event can start the next one.
async fn idle(operator: &Operator) {
    let started = Instant::now();
    let (mut runs, mut since) = (operator.runs(), Instant::now());
    while since.elapsed() < IDLE {
        assert!(started.elapsed() < WAIT, "the operator never went idle");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if operator.runs() != runs {
            (runs, since) = (operator.runs(), Instant::now());
        }
    }
}

#[tokio::test]
async fn a_child_of_every_kind_deleted_by_hand_comes_back_through_its_watch() {
    let cp = control_plane().await;
    cp.install_crds(&[
        fixtures("prometheus-operator-v0.93.0"),
        fixtures("gateway-api-v1.4.0"),
    ])
    .await;
    cp.with_temp_ns("watches", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        // A resync an hour away: only a watch can bring a child back within WAIT.
        let operator = start_operator_with(cp, &ns, &["--resync-interval", "1h"]).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        for c in [
            cluster("web", json!({"host": "chat.example.com"})),
            cluster(
                "gw",
                json!({"provider": "gateway", "gateway": {"name": "traefik"}}),
            ),
        ] {
            clusters.create(&PostParams::default(), &c).await.unwrap();
        }

        let mut exercised = BTreeSet::new();
        for kind in child_kinds() {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &kind.resource);
            let managed =
                ListParams::default().labels("app.kubernetes.io/managed-by=chat-operator");
            // Both clusters' children of this kind, once the first reconciles made them.
            let victim = wait_for(&format!("a {}", kind.resource.kind), || async {
                api.list(&managed).await.ok()?.items.into_iter().next()
            })
            .await;
            let (name, uid) = (victim.name_any(), victim.uid().unwrap());
            // Nothing else may wake the ChatCluster: wait until the operator is idle.
            idle(&operator).await;
            api.delete(&name, &DeleteParams::default()).await.unwrap();
            wait_for(
                &format!("{} {name} recreated", kind.resource.kind),
                || async {
                    let now = api.get_opt(&name).await.ok()??;
                    (now.uid() != Some(uid.clone()) && now.metadata.deletion_timestamp.is_none())
                        .then_some(())
                },
            )
            .await;
            exercised.insert(kind.resource.kind.clone());
        }
        assert_eq!(exercised.len(), child_kinds().len(), "{exercised:?}");
    })
    .await;
}
