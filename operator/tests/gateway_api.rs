//! `spec.ingress.provider: gateway` against a real kube-apiserver: first without the Gateway API
//! CRDs (no route, `OptionalApisAvailable=False` / `ApiNotInstalled` with a Warning Event, no
//! error), then with the v1.4.0 standard-channel CRDs (the HTTPRoute is created and accepted by
//! the API server's own validation of the CRD; the ChatCluster follows the route's acceptance
//! and the Gateway's published address through watches; switching to an Ingress provider and
//! back swaps the children; a steady state writes nothing).
//!
//! No Gateway controller runs here: the test writes the route's and the Gateway's status the
//! way one (Traefik's) would. One test per file: the CRDs are cluster-wide, and this process'
//! control plane starts without them.

#[allow(dead_code)]
#[path = "cluster/support.rs"]
mod support;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chat_operator::api::{ChatCluster, ChatClusterStatus};
use chat_operator::children::gateway_api::{Gateway, HTTPRoute};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use support::*;

/// How soon a watched change must show: the operator of phase 2 resyncs once an hour.
const NOTICED_WITHIN: Duration = Duration::from_secs(20);

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds/gateway-api-v1.4.0")
}

fn condition(status: &ChatClusterStatus, type_: &str) -> Option<Condition> {
    status.condition(type_).cloned()
}

async fn status(clusters: &Api<ChatCluster>) -> Option<ChatClusterStatus> {
    clusters.get("gw").await.ok()?.status
}

/// Waits until `check` holds for the ChatCluster's status and returns it.
async fn wait_for_status(
    clusters: &Api<ChatCluster>,
    what: &str,
    check: impl Fn(&ChatClusterStatus) -> bool,
) -> ChatClusterStatus {
    wait_for(what, || async {
        status(clusters).await.filter(|s| check(s))
    })
    .await
}

/// Waits until the operator is quiet, runs `change`, and expects `check` within
/// [`NOTICED_WITHIN`]: with an hour-long resync only a watch event can have triggered that.
async fn noticed(
    operator: &Operator,
    clusters: &Api<ChatCluster>,
    what: &str,
    change: impl Future<Output = ()>,
    check: impl Fn(&ChatClusterStatus) -> bool,
) -> ChatClusterStatus {
    let mut last = operator.runs();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if operator.runs() != last {
            last = operator.runs();
            quiet_since = Instant::now();
        }
    }
    change.await;
    tokio::time::timeout(NOTICED_WITHIN, wait_for_status(clusters, what, check))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {NOTICED_WITHIN:?}"))
}

async fn merge_spec(clusters: &Api<ChatCluster>, spec: Value) {
    clusters
        .patch(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch spec");
}

/// Writes the route's status as the Gateway controller does.
async fn report_route(client: &Client, ns: &str, accepted: &str, reason: &str) {
    let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), ns);
    let generation = routes.get("gw").await.unwrap().metadata.generation;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {status}"),
               "observedGeneration": generation, "lastTransitionTime": now})
    };
    let body = json!({"status": {"parents": [{
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "traefik"},
        "controllerName": "traefik.io/gateway-controller",
        "conditions": [condition("Accepted", accepted, reason), condition("ResolvedRefs", "True", "ResolvedRefs")],
    }]}});
    routes
        .patch_status("gw", &PatchParams::default(), &Patch::Merge(&body))
        .await
        .expect("write the HTTPRoute status");
}

fn warning_events(cp: &test_harness::kube::ControlPlane, ns: &str, reason: &str) -> String {
    kubectl_ok(
        cp,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("reason={reason},type=Warning"),
            "-o",
            "name",
        ],
    )
}

#[tokio::test]
async fn provider_gateway_makes_an_http_route_that_follows_the_gateway() {
    let cp = control_plane().await;
    cp.with_temp_ns("gateway", |client, ns| async move {
        grant_operator_rbac(&client, &ns).await;
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        let manifest = json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "ChatCluster",
            "metadata": {"name": "gw"},
            "spec": {"replicas": 1, "anonymous": true, "ingress": {
                "provider": "gateway",
                "gateway": {"name": "traefik"},
                "annotations": {"team": "chat"},
            }},
        });
        let in_cluster = format!("ws://gw.{ns}.svc:8080/ws");

        // 1. No Gateway API: no route, no error, a condition and a Warning Event say why.
        let operator = start_operator(cp, &ns).await;
        clusters
            .create(&PostParams::default(), &serde_json::from_value(manifest).unwrap())
            .await
            .unwrap();
        let s = wait_for_status(&clusters, "OptionalApisAvailable False", |s| {
            s.condition("OptionalApisAvailable")
                .is_some_and(|c| c.status == "False")
        })
        .await;
        let apis = condition(&s, "OptionalApisAvailable").unwrap();
        assert_eq!(apis.reason, "ApiNotInstalled");
        assert!(apis.message.contains("HTTPRoute"), "{}", apis.message);
        let route = condition(&s, "RouteAccepted").expect("RouteAccepted");
        assert_eq!((route.status.as_str(), route.reason.as_str()), ("Unknown", "ApiNotInstalled"));
        assert_eq!(condition(&s, "Degraded").unwrap().status, "False");
        assert_eq!(s.endpoint.as_deref(), Some(in_cluster.as_str()));
        wait_for("a Warning Event ApiNotInstalled", || async {
            (!warning_events(cp, &ns, "ApiNotInstalled").trim().is_empty()).then_some(())
        })
        .await;
        operator.wait_for_more_runs(2).await;
        let metrics = operator.metrics.encode();
        assert!(
            !metrics.contains("chat_operator_reconcile_failures_total{"),
            "a missing optional API is no reconcile error: {metrics}"
        );
        let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        assert!(ingresses.get_opt("gw").await.unwrap().is_none(), "no Ingress either");
        operator.stop().await;

        // 2. The CRDs are installed: an operator started now creates the route and watches it.
        cp.install_crds(&[fixtures()]).await;
        let operator = start_operator_with(cp, &ns, &["--resync-interval", "1h"]).await;
        let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), &ns);
        let route: HTTPRoute = wait_for_object(&client, &ns, "gw").await;
        let spec = serde_json::to_value(&route.spec).unwrap();
        assert_eq!(spec["parentRefs"][0]["name"], "traefik");
        assert_eq!(spec["rules"][0]["matches"][0]["path"], json!({"type": "PathPrefix", "value": "/"}));
        assert_eq!(spec["rules"][0]["backendRefs"][0], json!({"name": "gw", "port": 8080}));
        assert!(route.spec.hostnames.is_empty());
        assert_eq!(route.annotations()["team"], "chat");
        assert_eq!(route.labels()["app.kubernetes.io/managed-by"], "chat-operator");
        assert_eq!(route.owner_references()[0].kind, "ChatCluster");
        let s = wait_for_status(&clusters, "RouteAccepted Pending", |s| {
            s.condition("RouteAccepted").is_some_and(|c| c.reason == "Pending")
        })
        .await;
        // (prometheus-operator's CRDs are still missing here, and still reported.)
        let apis = condition(&s, "OptionalApisAvailable").unwrap();
        assert!(!apis.message.contains("HTTPRoute"), "{}", apis.message);
        assert_eq!(s.endpoint.as_deref(), Some(in_cluster.as_str()), "no Gateway yet");

        // The Gateway appears, then publishes its address: the endpoint follows (Gateway watch).
        let gateways: Api<Gateway> = Api::namespaced(client.clone(), &ns);
        let gateway: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "traefik"},
            "spec": {"gatewayClassName": "traefik", "listeners": [
                {"name": "web", "protocol": "HTTP", "port": 8000},
                {"name": "websecure", "protocol": "HTTPS", "port": 8443,
                 "tls": {"certificateRefs": [{"name": "chat-tls"}]}},
            ]},
        }))
        .unwrap();
        gateways.create(&PostParams::default(), &gateway).await.unwrap();
        noticed(
            &operator,
            &clusters,
            "endpoint from the Gateway's address",
            async {
                gateways
                    .patch_status(
                        "traefik",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"addresses": [{"type": "IPAddress", "value": "127.0.0.1"}]}})),
                    )
                    .await
                    .expect("write the Gateway status");
            },
            |s| s.endpoint.as_deref() == Some("ws://127.0.0.1:8000/ws"),
        )
        .await;

        // The Gateway controller accepts the route, then refuses it (HTTPRoute watch).
        let s = noticed(
            &operator,
            &clusters,
            "RouteAccepted True",
            report_route(&client, &ns, "True", "Accepted"),
            |s| s.condition("RouteAccepted").is_some_and(|c| c.status == "True"),
        )
        .await;
        assert!(
            condition(&s, "RouteAccepted").unwrap().message.contains(&format!("{ns}/traefik")),
            "{s:#?}"
        );
        let s = noticed(
            &operator,
            &clusters,
            "RouteAccepted False",
            report_route(&client, &ns, "False", "NotAllowedByListeners"),
            |s| s.condition("RouteAccepted").is_some_and(|c| c.status == "False"),
        )
        .await;
        let refused = condition(&s, "RouteAccepted").unwrap();
        assert_eq!(refused.reason, "NotAllowedByListeners");
        assert!(refused.message.contains("traefik.io/gateway-controller"), "{}", refused.message);
        wait_for("a Warning Event NotAllowedByListeners", || async {
            (!warning_events(cp, &ns, "NotAllowedByListeners").trim().is_empty()).then_some(())
        })
        .await;

        // A host and the HTTPS listener: the route's hostnames and parentRef follow, and the
        // endpoint is wss://<host>/ws.
        merge_spec(
            &clusters,
            json!({"ingress": {"host": "chat.example.com", "gateway": {"sectionName": "websecure"}}}),
        )
        .await;
        wait_for("the route on the HTTPS listener", || async {
            let route = routes.get("gw").await.ok()?;
            (route.spec.hostnames == ["chat.example.com"]
                && route.spec.parent_refs[0].section_name.as_deref() == Some("websecure"))
            .then_some(())
        })
        .await;
        wait_for_status(&clusters, "wss endpoint", |s| {
            s.endpoint.as_deref() == Some("wss://chat.example.com/ws")
        })
        .await;

        // To an Ingress provider: the Ingress replaces the route. And back.
        merge_spec(&clusters, json!({"ingress": {"provider": "nginx", "gateway": null}})).await;
        let _: Ingress = wait_for_object(&client, &ns, "gw").await;
        wait_for_absence::<HTTPRoute>(&client, &ns, "gw").await;
        let s = wait_for_status(&clusters, "no RouteAccepted", |s| {
            s.condition("RouteAccepted").is_none()
        })
        .await;
        assert_eq!(s.endpoint.as_deref(), Some("ws://chat.example.com/ws"));
        merge_spec(
            &clusters,
            json!({"ingress": {"provider": "gateway", "gateway": {"name": "traefik"}}}),
        )
        .await;
        let _: HTTPRoute = wait_for_object(&client, &ns, "gw").await;
        wait_for_absence::<Ingress>(&client, &ns, "gw").await;
        operator.stop().await;

        // 3. Steady state: resyncs every second write neither the route nor the status.
        let operator = start_operator(cp, &ns).await;
        let versions = || async {
            (
                clusters.get("gw").await.unwrap().resource_version(),
                routes.get("gw").await.unwrap().resource_version(),
            )
        };
        let mut last = versions().await;
        for _ in 0..10 {
            operator.wait_for_more_runs(1).await;
            let now = versions().await;
            if now == last {
                break;
            }
            last = now;
        }
        operator.wait_for_more_runs(3).await;
        assert_eq!(versions().await, last, "a resync of an unchanged ChatCluster wrote something");
        operator.stop().await;
    })
    .await;
}
