//! The chart's life on the real node of the test harness (kubelet + containerd running the
//! repository's images, see docs/testing.md): the operator runs as the pods `helm install`
//! creates, from its image, under the chart's ServiceAccount, and the example's chat-node and
//! Redis pods turn Ready through their own probes. One ordered scenario, because its steps share
//! cluster-scoped objects (the CRD, the ClusterRole) and one Helm release:
//!
//! 1. `helm install` of the previous chart version, whose operator defaults to another chat-node
//!    image: NOTES, the release's objects, the operator's rollout and Lease as NOTES says;
//! 2. `kubectl apply -f examples/basic.yaml`: the Argo CD health check on the real ChatCluster
//!    while progressing (its first status, seen through a watch) and once Ready (`kubectl wait
//!    --for=condition=Ready`); the operator writes under status only;
//! 3. `helm upgrade` to this chart: the CRD is updated in place, the ChatCluster is kept, its
//!    chat-node pod template is byte-for-byte unchanged and its pods are not replaced, while the
//!    upgraded operator (new pods, new image) records the image and reconciles;
//! 4. no perpetual diff: server-side apply of the example again changes nothing;
//! 5. the documented opt-in (`imagePolicy: followOperator`) rolls the chat nodes to the new
//!    image, and the cluster is Ready again on new pods;
//! 6. `helm uninstall`: the operator goes, the CRD, the ChatCluster and its running chat nodes
//!    stay.
//!
//! The README's quickstart lines themselves (and chatting at `status.endpoint` through Traefik)
//! are run by the end-to-end suite (tests/e2e); that the chart's ClusterRole is exactly enough
//! is `rbac.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chart_tests::cluster::node;
use chart_tests::lua::{health_check_path, run_health_check};
use chart_tests::manifests::{one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path};
use serde_json::Value;
use test_harness::helm::Helm;
use test_harness::kubectl::{Kubectl, TempNamespace};
use test_harness::node::images;
use test_harness::wait::wait_for;

const RELEASE: &str = "chat-operator";
const RELEASE_NS: &str = "chat-operator";
const EXAMPLE: &str = "demo";
const EXAMPLE_FILE: &str = "examples/basic.yaml";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/instance=chat-operator";
const NODES_SELECTOR: &str = "app.kubernetes.io/instance=demo,app.kubernetes.io/name=chat-node";
/// Pods start in seconds here (the images are on the node); a rollout takes a few of them.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

struct Env {
    kubectl: Kubectl,
    helm: Helm,
    scratch: tempfile::TempDir,
    /// Extra `helm install` / `helm upgrade` arguments of this run.
    values: &'static [&'static str],
}

impl Env {
    fn chat(&self, namespace: &str) -> Value {
        self.kubectl
            .json(["get", "chatcluster", EXAMPLE, "-n", namespace])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn deployment(&self, namespace: &str, name: &str) -> Value {
        self.kubectl
            .json(["get", "deployment", name, "-n", namespace])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The live (not terminating) pods matching `selector`.
    fn pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        let pods = self
            .kubectl
            .json(["get", "pods", "-n", namespace, "-l", selector])
            .unwrap_or_else(|e| panic!("{e}"));
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }

    /// Pods, events and the operator's log, for failure messages.
    fn diagnostics(&self, namespace: &str) -> String {
        let run = |args: &[&str]| self.kubectl.run(args).unwrap_or_else(|e| format!("({e})"));
        format!(
            "--- pods in {namespace}\n{}\n--- events\n{}\n--- operator pods\n{}\n--- operator log\n{}",
            run(&["get", "pods", "-n", namespace, "-o", "wide"]),
            run(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]),
            run(&["get", "pods", "-n", RELEASE_NS, "-o", "wide"]),
            run(&[
                "logs",
                "-n",
                RELEASE_NS,
                "-l",
                OPERATOR_SELECTOR,
                "--tail=30",
                "--prefix"
            ]),
        )
    }

    /// Waits until the operator runs as exactly two pods (the chart's default), every one from
    /// `image`, under the chart's ServiceAccount and Ready by its probes, and one of them holds
    /// the leader-election Lease.
    fn wait_for_operator(&self, image: &str) {
        let lease = operator_env(self, "CHAT_OPERATOR_LEASE_NAME");
        wait_for(
            READY_TIMEOUT,
            &format!("the operator's pods on {image}"),
            || {
                let pods = self.pods(RELEASE_NS, OPERATOR_SELECTOR);
                let all_ready = pods.len() == 2
                    && pods.iter().all(|p| {
                        p["spec"]["containers"][0]["image"] == image
                            && p["spec"]["serviceAccountName"] == RELEASE
                            && is_true(p, "Ready")
                    });
                let holder = self
                    .kubectl
                    .json(["get", "lease", &lease, "-n", RELEASE_NS])
                    .ok()?["spec"]["holderIdentity"]
                    .as_str()?
                    .to_string();
                (all_ready
                    && pods
                        .iter()
                        .any(|p| p["metadata"]["name"] == holder.as_str()))
                .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics(RELEASE_NS)));
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

fn node_image(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("a chat-node image")
        .to_string()
}

fn operator_env(env: &Env, name: &str) -> String {
    let deployment = env.deployment(RELEASE_NS, RELEASE);
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("the chart sets no {name}"))
        .to_string()
}

/// (name, uid, restart count) of each pod: what changes when a pod is replaced or restarted.
fn identities(pods: &[Value]) -> Vec<(String, String, i64)> {
    let mut ids: Vec<_> = pods
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().into(),
                p["metadata"]["uid"].as_str().unwrap_or_default().into(),
                p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or(-1),
            )
        })
        .collect();
    ids.sort();
    ids
}

/// The whole scenario with Helm 4 (which applies server-side), then again from scratch with
/// Helm 3: one test, because both use the same release and the cluster-scoped CRD and
/// ClusterRole.
///
/// The second run installs without the admission policy: the API server of this process saw
/// the policy, its binding and its parameter ConfigMap deleted together by the first run's
/// `helm uninstall`, and after they are created again together it answers "no params found
/// for policy binding" to every ChatCluster (kubernetes/kubernetes#133827, open; seen here
/// whichever Helm runs second; docs/helm.md says how to get out of it).
#[test]
fn chart_lifecycle_on_the_real_node() {
    let kubeconfig = node().control_plane().kubeconfig_path();
    for (label, helm, values) in [
        (
            "helm 4",
            Helm::v4_with_kubeconfig(kubeconfig).expect("helm 4"),
            &[][..],
        ),
        (
            "helm 3",
            Helm::with_kubeconfig(kubeconfig).expect("helm"),
            &["--set", "admissionPolicy.enabled=false"][..],
        ),
    ] {
        eprintln!("chart lifecycle with {label}");
        let env = Env {
            kubectl: Kubectl::new(kubeconfig),
            helm,
            scratch: tempfile::tempdir().unwrap(),
            values,
        };
        let users = TempNamespace::create(&env.kubectl, "lifecycle").expect("namespace");
        let ns = users.name();
        let crd_uid_before = install_previous_version(&env);
        health_check_while_progressing_and_ready(&env, ns);
        upgrade_keeps_the_chat_nodes(&env, ns, &crd_uid_before);
        no_perpetual_diff(&env, ns);
        opt_in_rolls_to_the_new_image(&env, ns);
        uninstall_keeps_crds_and_chatclusters(&env, ns);
        // What uninstall keeps on purpose goes now, so that the next run starts as a new user's.
        for args in [
            ["delete", "namespace", ns, "--wait=true"],
            ["delete", "crd", "chatclusters.realtime.dev", "--wait=true"],
        ] {
            env.kubectl
                .run(args)
                .unwrap_or_else(|e| panic!("{label}: cleaning up: {e}"));
        }
    }
}

/// 1: the previous chart version, installed as a user would; returns the CRD's uid.
fn install_previous_version(env: &Env) -> Value {
    let package = previous_chart(env);
    tag_previous_images();
    // `helm install` prints NOTES.txt, which tells the user the next steps.
    let install = env
        .helm
        .run(
            [
                OsArg::s("install"),
                OsArg::s(RELEASE),
                OsArg::p(&package),
                OsArg::s("--namespace"),
                OsArg::s(RELEASE_NS),
                OsArg::s("--create-namespace"),
            ]
            .into_iter()
            .chain(env.values.iter().map(|v| OsArg::s(v))),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        install.contains("kubectl apply -f examples/basic.yaml"),
        "NOTES:\n{install}"
    );
    for kind in [
        "deployment",
        "serviceaccount",
        "service",
        "poddisruptionbudget",
    ] {
        assert!(
            env.kubectl
                .exists(&[kind, "-n", RELEASE_NS, "-l", OPERATOR_SELECTOR]),
            "{kind}"
        );
    }
    assert!(
        !printer_columns(env).contains(&NEW_COLUMN.to_string()),
        "the previous chart's CRD was not applied"
    );
    assert_eq!(
        operator_env(env, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE"),
        previous_node_image()
    );
    // NOTES' first step: the rollout finishes and a replica holds the Lease.
    let rollout = format!("deployment/{RELEASE}");
    env.kubectl
        .run([
            "-n",
            RELEASE_NS,
            "rollout",
            "status",
            &rollout,
            &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(RELEASE_NS)));
    env.wait_for_operator(&previous_operator_image());
    crd_uid(env)
}

/// 2: the example's first status is Progressing for Argo CD, Ready once its pods are.
fn health_check_while_progressing_and_ready(env: &Env, ns: &str) {
    // Every status the ChatCluster goes through, from before it exists: a watch from the
    // resourceVersion of the empty list, so that no write is missed however fast pods start.
    let empty = env
        .kubectl
        .json(["get", "chatclusters", "-n", ns])
        .unwrap_or_else(|e| panic!("{e}"));
    let since = empty["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_string();
    let first_status = std::thread::scope(|scope| {
        let watch = scope.spawn(|| first_status_since(env, ns, &since));
        env.kubectl
            .run(["apply", "-n", ns, "-f", EXAMPLE_FILE])
            .unwrap_or_else(|e| panic!("{e}"));
        watch.join().unwrap()
    });
    let health = run_health_check(&health_check_path(), &first_status).expect("lua");
    assert_eq!(
        health.status, "Progressing",
        "no pod can be Ready at the first status, so the real object must not look healthy: {health:?}\n{first_status:#}"
    );
    assert!(
        env.kubectl.exists(&["deployment", EXAMPLE, "-n", ns]),
        "chat-node Deployment applied"
    );

    // kstatus: `kubectl wait --for=condition=Ready` returns once the pods are up.
    let chat = format!("chat/{EXAMPLE}");
    env.kubectl
        .run([
            "wait",
            "--for=condition=Ready",
            &chat,
            "-n",
            ns,
            &format!("--timeout={}s", READY_TIMEOUT.as_secs()),
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(ns)));
    let ready = env.chat(ns);
    assert_eq!(
        ready["status"]["observedGeneration"],
        ready["metadata"]["generation"]
    );
    assert_eq!(ready["status"]["readyReplicas"], 2, "{:#}", ready["status"]);
    let pods = env.pods(ns, NODES_SELECTOR);
    assert_eq!(pods.len(), 2, "two chat-nodes");
    assert!(
        pods.iter().all(|p| is_true(p, "Ready")
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object()),
        "the chat-node pods run and pass their readiness probes: {pods:#?}"
    );
    let listing = env.kubectl.run(["get", "chat", "-n", ns]).unwrap();
    assert!(listing.contains(EXAMPLE), "kubectl get chat:\n{listing}");
    let health = run_health_check(&health_check_path(), &ready).expect("lua");
    assert_eq!(health.status, "Healthy", "{health:?}\n{ready:#}");

    // The operator owns status only: nothing it wrote is under spec.
    let with_fields = env
        .kubectl
        .json([
            "get",
            "chatcluster",
            EXAMPLE,
            "-n",
            ns,
            "--show-managed-fields",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let managed = with_fields["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    assert!(
        managed.iter().any(|e| e["manager"] == "chat-operator"),
        "the operator's field manager wrote nothing: {managed:#?}"
    );
    for entry in managed {
        if entry["manager"] == "chat-operator" {
            assert_eq!(
                entry["subresource"], "status",
                "the operator wrote outside status: {entry:#}"
            );
        }
    }
}

/// The first version of ChatCluster [`EXAMPLE`] in `ns` that has a `Ready` condition, from a
/// watch that starts at resourceVersion `since`.
fn first_status_since(env: &Env, ns: &str, since: &str) -> Value {
    let path = format!(
        "/apis/realtime.dev/v1alpha1/namespaces/{ns}/chatclusters?watch=1&resourceVersion={since}&timeoutSeconds={}",
        READY_TIMEOUT.as_secs()
    );
    let mut watch = env
        .kubectl
        .command()
        .args(["get", "--raw", &path])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --raw (watch)");
    let stdout = watch.stdout.take().expect("piped");
    let found = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .map(|event| event["object"].clone())
        .find(|object| {
            object["metadata"]["name"] == EXAMPLE && condition(object, "Ready").is_some()
        });
    let _ = watch.kill();
    let _ = watch.wait();
    found.unwrap_or_else(|| {
        panic!(
            "the watch ended without a status on {EXAMPLE}\n{}",
            env.diagnostics(ns)
        )
    })
}

/// 3: `helm upgrade` to this chart: the chat nodes are not touched.
fn upgrade_keeps_the_chat_nodes(env: &Env, ns: &str, crd_uid_before: &Value) {
    let previous_image = previous_node_image();
    let nodes_before = env.deployment(ns, EXAMPLE);
    assert_eq!(node_image(&nodes_before), previous_image);
    let pods_before = identities(&env.pods(ns, NODES_SELECTOR));

    // The status as an operator that did not record the image yet leaves it. The previous
    // operator is stopped first, or it would record the image again.
    env.kubectl
        .run([
            "scale",
            "deployment",
            RELEASE,
            "-n",
            RELEASE_NS,
            "--replicas=0",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        READY_TIMEOUT,
        "the previous operator's pods to stop",
        || {
            let pods = env
                .kubectl
                .json(["get", "pods", "-n", RELEASE_NS, "-l", OPERATOR_SELECTOR])
                .ok()?;
            pods["items"].as_array()?.is_empty().then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(RELEASE_NS)));
    env.kubectl
        .run([
            "patch",
            "chat",
            EXAMPLE,
            "-n",
            ns,
            "--subresource=status",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/status/nodeImage"}]"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let chat_before = env.chat(ns);
    assert!(chat_before["status"]["nodeImage"].is_null());

    let upgrade = env
        .helm
        .run(
            [
                OsArg::s("upgrade"),
                OsArg::s(RELEASE),
                OsArg::p(&chart_dir()),
                OsArg::s("--namespace"),
                OsArg::s(RELEASE_NS),
            ]
            .into_iter()
            .chain(env.values.iter().map(|v| OsArg::s(v))),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(upgrade.contains("has been upgraded"), "{upgrade}");
    assert_eq!(
        &crd_uid(env),
        crd_uid_before,
        "the CRD was replaced, not updated in place"
    );
    assert!(
        printer_columns(env).contains(&NEW_COLUMN.to_string()),
        "helm upgrade did not update the CRD"
    );
    let operator = env.deployment(RELEASE_NS, RELEASE);
    assert_eq!(
        operator["spec"]["template"]["spec"]["containers"][0]["image"],
        images::operator().as_str(),
        "operator image not upgraded"
    );
    assert_eq!(
        operator_env(env, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE"),
        images::chat_node()
    );
    assert_ne!(
        images::chat_node(),
        previous_image,
        "the versions must differ"
    );
    // The chart's replica count is back (Helm's three-way merge undoes the scale to 0), on the
    // new image.
    env.wait_for_operator(&images::operator());

    // The upgraded operator records the image the nodes run (read from their Deployment, as
    // the status has none), shown by the printer column only the new CRD has, and it
    // demonstrably reconciles: it recreates a deleted child.
    wait_for(
        READY_TIMEOUT,
        "the upgraded operator to record status.nodeImage",
        || (env.chat(ns)["status"]["nodeImage"] == previous_image.as_str()).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(ns)));
    let wide = env
        .kubectl
        .run(["get", "chat", EXAMPLE, "-n", ns, "-o", "wide"])
        .unwrap();
    assert!(
        wide.contains("IMAGE") && wide.contains(&previous_image),
        "kubectl get chat -o wide:\n{wide}"
    );
    let admin_service = format!("{EXAMPLE}-admin");
    env.kubectl
        .run(["delete", "service", &admin_service, "-n", ns])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        READY_TIMEOUT,
        "the upgraded operator to recreate the admin Service",
        || {
            env.kubectl
                .exists(&["service", &admin_service, "-n", ns])
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(ns)));

    let chat_after = env.chat(ns);
    assert_eq!(
        chat_before["metadata"]["uid"], chat_after["metadata"]["uid"],
        "ChatCluster replaced"
    );
    assert_eq!(
        chat_before["spec"], chat_after["spec"],
        "ChatCluster spec changed by the upgrade"
    );
    let nodes_after = env.deployment(ns, EXAMPLE);
    assert_eq!(
        serde_json::to_string(&nodes_before["spec"]["template"]).unwrap(),
        serde_json::to_string(&nodes_after["spec"]["template"]).unwrap(),
        "the chat-node pod template changed: the upgrade would restart users' chat nodes"
    );
    assert_eq!(
        nodes_before["metadata"]["generation"], nodes_after["metadata"]["generation"],
        "the chat-node Deployment was rewritten"
    );
    assert_eq!(
        identities(&env.pods(ns, NODES_SELECTOR)),
        pods_before,
        "chat-node pods were replaced or restarted by the operator upgrade"
    );
}

/// 4: apply the example again with server-side apply: nothing changes.
fn no_perpetual_diff(env: &Env, ns: &str) {
    let before = env.chat(ns);
    for _ in 0..2 {
        env.kubectl
            .run(["apply", "--server-side", "-n", ns, "-f", EXAMPLE_FILE])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let after = env.chat(ns);
    assert_eq!(before["spec"], after["spec"], "spec changed by a re-apply");
    // Neither the API server (no CRD defaults) nor the operator added anything to the spec.
    let written =
        parse_documents(&std::fs::read_to_string(repo_path(EXAMPLE_FILE)).unwrap()).unwrap();
    assert_eq!(
        after["spec"],
        one_of_kind(&written, "ChatCluster")["spec"],
        "the live spec differs from the file"
    );
    assert_eq!(
        before["metadata"]["generation"],
        after["metadata"]["generation"]
    );
    // `kubectl diff` exits 0 when the live object equals what applying the file would produce.
    env.kubectl
        .run(["diff", "--server-side", "-n", ns, "-f", EXAMPLE_FILE])
        .unwrap_or_else(|e| panic!("a perpetual diff:\n{e}"));
    env.kubectl
        .run(["diff", "-n", ns, "-f", EXAMPLE_FILE])
        .unwrap_or_else(|e| panic!("a perpetual diff (client-side):\n{e}"));
}

/// 5: the documented opt-in (docs/helm.md): follow the operator's default -> one rollout to it.
fn opt_in_rolls_to_the_new_image(env: &Env, ns: &str) {
    let new_image = images::chat_node();
    let pods_before = identities(&env.pods(ns, NODES_SELECTOR));
    env.kubectl
        .run([
            "patch",
            "chat",
            EXAMPLE,
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"imagePolicy":"followOperator"}}"#,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        env.chat(ns)["spec"]["imagePolicy"],
        "followOperator",
        "the new CRD serves spec.imagePolicy"
    );
    wait_for(READY_TIMEOUT, "the nodes to roll to the new image", || {
        let nodes = env
            .kubectl
            .json(["get", "deployment", EXAMPLE, "-n", ns])
            .ok()?;
        let chat = env.chat(ns);
        let pods = env.pods(ns, NODES_SELECTOR);
        (node_image(&nodes) == new_image
            && chat["status"]["nodeImage"] == new_image.as_str()
            && chat["status"]["observedGeneration"] == chat["metadata"]["generation"]
            && is_true(&chat, "Ready")
            && !is_true(&chat, "Progressing")
            && pods.len() == 2
            && pods.iter().all(|p| {
                p["spec"]["containers"][0]["image"] == new_image.as_str() && is_true(p, "Ready")
            }))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(ns)));
    let pods_after = identities(&env.pods(ns, NODES_SELECTOR));
    assert!(
        pods_after.iter().all(|p| !pods_before.contains(p)),
        "the rollout replaced every chat-node pod: {pods_before:?} -> {pods_after:?}"
    );
}

/// 6: `helm uninstall` removes the operator and keeps the CRD, the ChatCluster and its chat
/// nodes, which keep running.
fn uninstall_keeps_crds_and_chatclusters(env: &Env, ns: &str) {
    let chat_before = env.chat(ns);
    let crd_uid_before = crd_uid(env);
    let nodes_before = identities(&env.pods(ns, NODES_SELECTOR));
    env.helm
        .run([
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "120s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    for (kind, name) in [
        ("deployment", RELEASE),
        ("serviceaccount", RELEASE),
        ("service", "chat-operator-metrics"),
    ] {
        assert!(
            !env.kubectl.exists(&[kind, name, "-n", RELEASE_NS]),
            "{kind}/{name} left after uninstall"
        );
    }
    assert!(
        !env.kubectl.exists(&["clusterrole", RELEASE]),
        "ClusterRole left after uninstall"
    );
    wait_for(READY_TIMEOUT, "the operator's pods to go", || {
        env.pods(RELEASE_NS, OPERATOR_SELECTOR)
            .is_empty()
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.diagnostics(RELEASE_NS)));
    assert_eq!(
        crd_uid(env),
        crd_uid_before,
        "the CRD was deleted or replaced by uninstall"
    );
    let chat_after = env.chat(ns);
    assert_eq!(
        chat_before["metadata"]["uid"],
        chat_after["metadata"]["uid"]
    );
    assert_eq!(chat_before["spec"], chat_after["spec"]);
    assert!(
        env.kubectl.exists(&["deployment", EXAMPLE, "-n", ns]),
        "chat nodes gone with the operator"
    );
    let pods = env.pods(ns, NODES_SELECTOR);
    assert_eq!(
        identities(&pods),
        nodes_before,
        "the chat-node pods changed when the operator went"
    );
    assert!(
        pods.iter().all(|p| is_true(p, "Ready")),
        "the chat nodes stopped serving without the operator: {pods:#?}"
    );
}

fn crd_uid(env: &Env) -> Value {
    env.kubectl
        .json(["get", "crd", "chatclusters.realtime.dev"])
        .expect("CRD exists")["metadata"]["uid"]
        .clone()
}

fn printer_columns(env: &Env) -> Vec<String> {
    let crd = env
        .kubectl
        .json(["get", "crd", "chatclusters.realtime.dev"])
        .expect("CRD");
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The version of the previous chart (and of its appVersion, so of its images).
const PREVIOUS_VERSION: &str = "0.0.1";
/// The CRD change of this version that the previous chart's CRD lacks: the `Image` printer
/// column and `spec.imagePolicy`.
const NEW_COLUMN: &str = "Image";

/// The chat-node image the previous chart's operator defaults to (its appVersion's).
fn previous_node_image() -> String {
    format!("ghcr.io/chatcluster/chat-node:{PREVIOUS_VERSION}")
}

/// The previous chart's operator image (its appVersion's).
fn previous_operator_image() -> String {
    format!("ghcr.io/chatcluster/chat-operator:{PREVIOUS_VERSION}")
}

/// The previous release's images on the node, as a registry would hold them under their own
/// tags: the operator is this build's (it plays the previous operator, configured by the
/// previous chart), the chat-node is this build's other variant ([`images::chat_node_next`],
/// another image ID), so that moving from the previous chat-node image to the current one is
/// a real change of image.
fn tag_previous_images() {
    let socket = Path::new(test_harness::node::RUN_DIR).join("containerd.sock");
    for (source, target) in [
        (images::chat_node_next(), previous_node_image()),
        (images::operator(), previous_operator_image()),
    ] {
        test_harness::node::ctr(&socket, &["images", "tag", "--force", &source, &target])
            .unwrap_or_else(|e| panic!("ctr images tag {source} {target}: {e}"));
    }
}

/// The "previous release" of the chart, constructed (none was published yet) as the release
/// before this one looked: the current chart with version and appVersion 0.0.1 (so its images
/// are `chat-operator:0.0.1` and, through the same `chatNode.image` value, `chat-node:0.0.1`),
/// and the CRD without this version's user-facing additions, packaged with `helm package` as a
/// release would be. (`status.nodeImage` stays: the operator binary that plays the previous one
/// writes it, and server-side apply refuses a field the schema does not declare. The status of
/// a previous operator that did not record it is made by removing it.)
fn previous_chart(env: &Env) -> PathBuf {
    let dir = env.scratch.path().join("previous/chat-operator");
    copy_dir(&chart_dir(), &dir);
    let chart_yaml = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap();
    let chart_yaml = chart_yaml
        .lines()
        .map(|l| match l {
            l if l.starts_with("version:") => format!("version: {PREVIOUS_VERSION}"),
            l if l.starts_with("appVersion:") => format!("appVersion: \"{PREVIOUS_VERSION}\""),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("Chart.yaml"), chart_yaml).unwrap();
    let spec_path = dir.join("files/crds/chatclusters.realtime.dev.spec.yaml");
    let mut spec: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let version = &mut spec["spec"]["versions"][0];
    let columns = version["additionalPrinterColumns"]
        .as_array_mut()
        .expect("the CRD has printer columns");
    let before = columns.len();
    columns.retain(|c| c["name"] != NEW_COLUMN);
    assert_eq!(
        columns.len() + 1,
        before,
        "the CRD has an {NEW_COLUMN} column"
    );
    let removed = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .as_object_mut()
        .expect("spec properties")
        .remove("imagePolicy");
    assert!(removed.is_some(), "the CRD has spec.imagePolicy");
    std::fs::write(&spec_path, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    let out = env.scratch.path().join("packages");
    env.helm
        .run([
            OsArg::s("package"),
            OsArg::p(&dir),
            OsArg::s("--destination"),
            OsArg::p(&out),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    out.join(format!("chat-operator-{PREVIOUS_VERSION}.tgz"))
}

/// A command-line argument that is either a string or a path.
enum OsArg<'a> {
    S(&'a str),
    P(&'a Path),
}

impl OsArg<'_> {
    fn s(s: &str) -> OsArg<'_> {
        OsArg::S(s)
    }
    fn p(p: &Path) -> OsArg<'_> {
        OsArg::P(p)
    }
}

impl AsRef<std::ffi::OsStr> for OsArg<'_> {
    fn as_ref(&self) -> &std::ffi::OsStr {
        match self {
            OsArg::S(s) => s.as_ref(),
            OsArg::P(p) => p.as_os_str(),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
