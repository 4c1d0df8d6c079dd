//! An operator that watches a list of namespaces has, as the chart grants it with
//! `operator.watchNamespaces`, its rules bound by a RoleBinding in each watched namespace and
//! one cluster-wide rule only: `get` on Gateways (tests/chart asserts that this is the chart's
//! whole ClusterRole). This proves that exactly that is enough for an HTTPRoute attached to a
//! Gateway of another, unwatched namespace: without the rule the endpoint stays the in-cluster
//! URL (the Gateway cannot be read, and the reconcile does not fail); with it, the endpoint is
//! the Gateway's published address, while listing or watching Gateways there stays refused.
//!
//! One test per file: the Gateway API CRDs are cluster-wide, and the other processes' control
//! planes must start without them (see gateway_api.rs).

#[allow(dead_code)]
#[path = "cluster/support.rs"]
mod support;

use std::path::PathBuf;

use chat_operator::api::ChatCluster;
use chat_operator::children::gateway_api::{Gateway, HTTPRoute};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use support::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds/gateway-api-v1.4.0")
}

/// What `kubectl auth can-i` answers for the operator's ServiceAccount of `home`.
fn operator_can(cp: &test_harness::kube::ControlPlane, home: &str, verb: &str, ns: &str) -> bool {
    let user = format!("system:serviceaccount:{home}:{OPERATOR_SA}");
    let (_, out, _) = kubectl(
        cp,
        &[
            "auth",
            "can-i",
            verb,
            "gateways.gateway.networking.k8s.io",
            "-n",
            ns,
            "--as",
            &user,
        ],
    );
    out.trim() == "yes"
}

#[tokio::test]
async fn a_route_to_a_gateway_of_another_namespace_needs_only_get_on_gateways() {
    let cp = control_plane().await;
    cp.install_crds(&[fixtures()]).await;
    cp.with_temp_ns("gw-watch-a", |client, a| async move {
        cp.with_temp_ns("gw-watch-b", |_, b| async move {
            cp.with_temp_ns("gw-shared", |_, g| async move {
                // The watched namespaces get the operator's rules (a RoleBinding each).
                grant_operator_rbac(&client, &a).await;
                bind_operator_rules(&client, &b, &a).await;

                // The shared Gateway, in a namespace the operator does not watch, with the
                // address its controller published.
                let gateways: Api<Gateway> = Api::namespaced(client.clone(), &g);
                let gateway: Gateway = serde_json::from_value(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                    "metadata": {"name": "shared"},
                    "spec": {"gatewayClassName": "traefik", "listeners": [
                        {"name": "web", "protocol": "HTTP", "port": 8000,
                         "allowedRoutes": {"namespaces": {"from": "All"}}}]},
                }))
                .unwrap();
                gateways.create(&PostParams::default(), &gateway).await.unwrap();
                gateways
                    .patch_status(
                        "shared",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"addresses": [{"type": "IPAddress", "value": "127.0.0.1"}]}})),
                    )
                    .await
                    .unwrap();

                let list = format!("{a},{b}");
                let operator = start_operator_with(cp, &a, &["--namespace", &list]).await;
                let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &a);
                let cluster: ChatCluster = serde_json::from_value(json!({
                    "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
                    "metadata": {"name": "gw"},
                    "spec": {"replicas": 1, "anonymous": true, "ingress": {
                        "provider": "gateway", "gateway": {"name": "shared", "namespace": g}}},
                }))
                .unwrap();
                clusters.create(&PostParams::default(), &cluster).await.unwrap();
                let route: HTTPRoute = wait_for_object(&client, &a, "gw").await;
                let parent = &route.spec.parent_refs[0];
                assert_eq!(
                    (parent.name.as_str(), parent.namespace.as_deref()),
                    ("shared", Some(g.as_str()))
                );

                // 1. The watched namespaces' rules only: the Gateway cannot be read; the
                // endpoint stays in-cluster and the reconcile still succeeds.
                assert!(!operator_can(cp, &a, "get", &g));
                let in_cluster = format!("ws://gw.{a}.svc:8080/ws");
                let s = wait_for("a status without the Gateway", || async {
                    clusters.get("gw").await.ok()?.status
                })
                .await;
                operator.wait_for_more_runs(3).await;
                let s = clusters.get("gw").await.unwrap().status.unwrap_or(s);
                assert_eq!(s.endpoint.as_deref(), Some(in_cluster.as_str()));
                assert_eq!(s.condition("Degraded").map(|c| c.status.as_str()), Some("False"));

                // 2. The chart's ClusterRole for a watched list (`get` on Gateways, nothing else)
                // and its binding: the endpoint follows the Gateway's address.
                let role = format!("gateway-get-{a}");
                let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "metadata": {"name": role},
                     "rules": [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]}]},
                    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": role},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                     "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": a}]},
                ]});
                let (ok, _, stderr) = kubectl_stdin(cp, &["apply", "-f", "-"], &rbac.to_string());
                assert!(ok, "{stderr}");
                let s = wait_for("the endpoint from the other namespace's Gateway", || async {
                    let s = clusters.get("gw").await.ok()?.status?;
                    (s.endpoint.as_deref() == Some("ws://127.0.0.1:8000/ws")).then_some(s)
                })
                .await;
                assert_eq!(s.condition("Degraded").map(|c| c.status.as_str()), Some("False"));
                // Read by name only: no list or watch of the other namespace's Gateways, and no
                // change to them.
                assert!(operator_can(cp, &a, "get", &g));
                for verb in ["list", "watch", "update", "patch", "delete"] {
                    assert!(!operator_can(cp, &a, verb, &g), "{verb} in {g}");
                }
                assert!(operator_can(cp, &a, "watch", &b), "watch in a watched namespace");
                let metrics = operator.metrics.encode();
                assert!(
                    !metrics.contains("chat_operator_reconcile_failures_total{"),
                    "{metrics}"
                );
                operator.stop().await;
                kubectl_ok(cp, &["delete", "clusterrolebinding,clusterrole", &role]);
            })
            .await
        })
        .await
    })
    .await;
}
