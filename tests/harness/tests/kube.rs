//! The Go-built control plane: it is real Kubernetes v1.36.3 (API server, etcd, controllers),
//! reachable through kube-rs and kubectl, and it dies with the test process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use test_harness::kube::{ControlPlane, ControlPlaneOptions, Impersonation};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns Some, or panics after `WAIT` naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kubectl_output(mut command: Command) -> (bool, String) {
    let out = command.output().expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn control_plane_serves_the_api() {
    let cp = ControlPlane::shared().await;
    let namespaces: Api<Namespace> = Api::all(cp.client());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    for expected in ["default", "kube-system", "kube-public"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing in {names:?}"
        );
    }
    assert!(cp.server_url().starts_with("https://127.0.0.1:"));
}

#[tokio::test]
async fn kubectl_and_server_are_v1_36_3() {
    let cp = ControlPlane::shared().await;
    let mut command = cp.kubectl();
    command.args(["version", "-o", "json"]);
    let (ok, text) = kubectl_output(command);
    assert!(ok, "{text}");
    let version: serde_json::Value = serde_json::from_str(&text).expect(&text);
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.36.3", "{text}");
    assert_eq!(version["clientVersion"]["gitVersion"], "v1.36.3", "{text}");
    assert_eq!(version["serverVersion"]["minor"], "36", "{text}");
}

#[tokio::test]
async fn a_deployment_gets_a_replicaset() {
    let cp = ControlPlane::shared().await;
    cp.with_temp_ns("deploy", |client, ns| async move {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
                }
            }
        }))
        .unwrap();
        let created = deployments
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
        let rs = eventually("a ReplicaSet owned by the Deployment", || {
            let replicasets = replicasets.clone();
            async move {
                replicasets
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .pop()
            }
        })
        .await;
        let owner = &rs.owner_references()[0];
        assert_eq!(owner.kind, "Deployment");
        assert_eq!(Some(&owner.uid), created.metadata.uid.as_ref());
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(2));
        // Without kubelets the ReplicaSet's pods exist but never run.
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let count = eventually("2 pods created by the ReplicaSet", || {
            let pods = pods.clone();
            async move {
                let n = pods.list(&ListParams::default()).await.ok()?.items.len();
                (n == 2).then_some(n)
            }
        })
        .await;
        assert_eq!(count, 2);
    })
    .await;
}

#[tokio::test]
async fn owned_objects_are_garbage_collected() {
    let cp = ControlPlane::shared().await;
    cp.with_temp_ns("gc", |client, ns| async move {
        let configmaps: Api<ConfigMap> = Api::namespaced(client, &ns);
        let owner = configmaps
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("owner".into()),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                },
            )
            .await
            .unwrap();
        let child = ConfigMap {
            metadata: ObjectMeta {
                name: Some("child".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: ConfigMap::api_version(&()).into(),
                    kind: ConfigMap::kind(&()).into(),
                    name: "owner".into(),
                    uid: owner.metadata.uid.clone().unwrap(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        configmaps
            .create(&PostParams::default(), &child)
            .await
            .unwrap();
        configmaps
            .delete("owner", &DeleteParams::default())
            .await
            .unwrap();
        eventually("the garbage collector to delete the child", || {
            let configmaps = configmaps.clone();
            async move {
                configmaps
                    .get_opt("child")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn temp_namespace_is_deleted_and_panics_propagate() {
    let cp = ControlPlane::shared().await;
    let mut seen = String::new();
    let result = std::panic::AssertUnwindSafe(cp.with_temp_ns("Panics_Here!", |_client, ns| {
        seen = ns.clone();
        async move {
            if !ns.is_empty() {
                panic!("deliberate failure in {ns}");
            }
        }
    }))
    .catch_unwind()
    .await;
    assert!(result.is_err(), "the panic was swallowed");
    assert!(seen.starts_with("panics-here-"), "{seen}");
    let namespaces: Api<Namespace> = Api::all(cp.client());
    // Deleted: gone, or terminating while the namespace controller empties it.
    let ns = namespaces.get_opt(&seen).await.unwrap();
    assert!(
        ns.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        "namespace {seen} not deleted"
    );
    let dump = cp.dump_namespace("kube-system").await;
    assert!(dump.contains("kind: List"), "{dump}");
}

#[tokio::test]
async fn install_crds_waits_until_established() {
    let cp = ControlPlane::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("widgets.yaml");
    std::fs::write(
        &path,
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.test
spec:
  group: harness.test
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, maximum: 10}
"#,
    )
    .unwrap();
    let names = cp.install_crds(&[&path]).await;
    assert_eq!(names, vec!["widgets.harness.test".to_string()]);
    // Idempotent, and the new type is served right away.
    assert_eq!(cp.install_crds(&[&path]).await, names);
    cp.with_temp_ns("crd", |_client, ns| async move {
        let manifest = dir.path().join("widget.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: harness.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 11}\n",
        )
        .unwrap();
        let mut apply = cp.kubectl();
        apply.args(["apply", "-n", &ns, "-f"]).arg(&manifest);
        let (ok, text) = kubectl_output(apply);
        assert!(!ok, "schema validation did not refuse size 11: {text}");
        assert!(text.contains("spec.size"), "{text}");
    })
    .await;
    let missing = cp.try_install_crds(&["/nonexistent/crd.yaml"]).await;
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("kubectl apply failed")
    );
}

#[tokio::test]
async fn impersonated_service_account_gets_only_its_rbac() {
    let cp = ControlPlane::shared().await;
    cp.with_temp_ns("rbac", |client, ns| async move {
        let kubeconfig = cp.kubeconfig_for_service_account(&ns, "robot");
        let can_i = |verb: &str, resource: &str| {
            let mut command = cp.kubectl();
            command
                .env("KUBECONFIG", &kubeconfig)
                .args(["auth", "can-i", verb, resource, "-n", &ns]);
            kubectl_output(command).1.trim().to_owned()
        };
        assert_eq!(can_i("list", "configmaps"), "no");
        let mut whoami = cp.kubectl();
        whoami
            .env("KUBECONFIG", &kubeconfig)
            .args(["auth", "whoami", "-o", "json"]);
        let (ok, text) = kubectl_output(whoami);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("system:serviceaccount:{ns}:robot")),
            "{text}"
        );

        let mut grant = cp.kubectl();
        grant.args([
            "create",
            "role",
            "cm-reader",
            "--verb=list,get",
            "--resource=configmaps",
            "-n",
            &ns,
        ]);
        assert!(kubectl_output(grant).0);
        let mut bind = cp.kubectl();
        bind.args([
            "create",
            "rolebinding",
            "robot-cm",
            "--role=cm-reader",
            "-n",
            &ns,
        ])
        .arg(format!("--serviceaccount={ns}:robot"));
        assert!(kubectl_output(bind).0);
        assert_eq!(can_i("list", "configmaps"), "yes");
        assert_eq!(can_i("list", "secrets"), "no");

        // The kube-rs client with the same identity sees the same RBAC.
        let robot = cp.client_as(&Impersonation::service_account(&ns, "robot"));
        let secrets: Api<Secret> = Api::namespaced(robot.clone(), &ns);
        let err = secrets.list(&ListParams::default()).await.unwrap_err();
        assert!(err.to_string().contains("forbidden"), "{err}");
        let configmaps: Api<ConfigMap> = Api::namespaced(robot, &ns);
        configmaps.list(&ListParams::default()).await.unwrap();
        let _ = client;
    })
    .await;
}

#[tokio::test]
async fn service_account_token_secrets_are_filled_and_authenticate() {
    let cp = ControlPlane::shared().await;
    cp.with_temp_ns("satoken", |client, ns| async move {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "bot"}})).unwrap();
        accounts.create(&PostParams::default(), &account).await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(client, &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "bot-token", "annotations": {"kubernetes.io/service-account.name": "bot"}},
            "type": "kubernetes.io/service-account-token"
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let token = eventually("the token controller to fill the secret", || {
            let secrets = secrets.clone();
            async move {
                let data = secrets.get("bot-token").await.ok()?.data?;
                let token = data.get("token")?;
                Some(String::from_utf8(token.0.clone()).unwrap())
            }
        })
        .await;
        let mut whoami = cp.kubectl();
        whoami.args(["auth", "whoami", "-o", "json", "--token", &token]);
        let (ok, text) = kubectl_output(whoami);
        assert!(ok, "{text}");
        assert!(text.contains(&format!("system:serviceaccount:{ns}:bot")), "{text}");
    })
    .await;
}

#[tokio::test]
async fn private_control_plane_with_scheduler_binds_pods_and_stops() {
    let cp = ControlPlane::start(ControlPlaneOptions {
        scheduler: true,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap();
    let client = cp.client();
    // A Node object without a kubelet: enough for the scheduler to bind to it.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "fake-node", "labels": {"kubernetes.io/hostname": "fake-node"}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/c:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let node_name = eventually("the scheduler to bind the pod", || {
        let pods = pods.clone();
        async move { pods.get("p").await.ok()?.spec?.node_name }
    })
    .await;
    assert_eq!(node_name, "fake-node");
    let port: u16 = cp.server_url().rsplit(':').next().unwrap().parse().unwrap();
    drop(cp);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "kube-apiserver still listening after drop"
    );
}

/// Child half of `control_plane_dies_with_the_test_process`.
#[tokio::test]
#[ignore = "helper run by control_plane_dies_with_the_test_process"]
async fn child_holds_a_control_plane_until_killed() {
    if std::env::var_os("CHATCLUSTER_HARNESS_CHILD").is_none() {
        return;
    }
    let cp = ControlPlane::shared().await;
    println!("DIR={}", cp.log_dir().display());
    println!("SERVER={}", cp.server_url());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn control_plane_dies_with_the_test_process() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_a_control_plane_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("CHATCLUSTER_HARNESS_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let dir = lines
        .find_map(|line| line.strip_prefix("DIR=").map(std::path::PathBuf::from))
        .expect("child printed its control plane directory");
    let server = lines
        .find_map(|line| line.strip_prefix("SERVER=").map(str::to_owned))
        .expect("child printed its API server URL");
    assert!(dir.join("etcd").is_dir());
    let port: u16 = server.rsplit(':').next().unwrap().parse().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "kube-apiserver outlived its test process"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The never-dropped shared control plane's files (etcd data, certs) are removed too.
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} left behind", dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
