//! The chart's whole life against the real control plane (kube-apiserver + etcd +
//! kube-controller-manager, v1.36), in one ordered scenario because its steps share cluster-scoped
//! objects (the CRD, the ClusterRole) and one Helm release:
//!
//! 1. the README quickstart, line by line: `helm install`, `kubectl apply -f examples/basic.yaml`,
//!    then — with the operator binary running outside the cluster, authenticated as the chart's
//!    ServiceAccount — `kubectl wait --for=condition=Ready chat/demo` and `kubectl get chat`;
//! 2. the Argo CD health check on the real ChatCluster while progressing and once Ready;
//! 3. no perpetual diff: server-side apply of the example again changes nothing;
//! 4. RBAC not more than needed: the chart's ClusterRole minus one verb -> a clear failure;
//! 5. `helm uninstall`: operator gone, CRD and ChatClusters (and their chat nodes) stay;
//! 6. `helm upgrade` from the previous chart version: CRD updated in place, ChatCluster kept,
//!    chat-node pod template unchanged.
//!
//! No kubelet runs here: pods never start. The operator runs as a local process, and the test
//! marks chat-node/Redis pods Ready through the status subresource (see `mark_pods_ready`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chart_tests::cluster::{
    Kubectl, OperatorProcess, TempNamespace, mark_pods_ready, service_account_kubeconfig, wait_for,
};
use chart_tests::helm::Helm;
use chart_tests::lua::{health_check_path, run_health_check};
use chart_tests::manifests::{one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path};
use serde_json::{Value, json};

const RELEASE: &str = "chat-operator";
const RELEASE_NS: &str = "chat-operator";
/// examples/basic.yaml has no namespace: `kubectl apply` puts it in `default`.
const EXAMPLE_NS: &str = "default";
const EXAMPLE: &str = "demo";
const DEMO_SELECTOR: &str = "app.kubernetes.io/instance=demo";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

struct Env {
    kubectl: Kubectl,
    helm: Helm,
    scratch: tempfile::TempDir,
}

impl Env {
    /// The operator as the chart runs it (same Lease, same settings), but as a local process
    /// authenticated as the chart's ServiceAccount and watching only the example's namespace.
    fn start_operator(&self, identity: &str) -> OperatorProcess {
        let kubeconfig = service_account_kubeconfig(RELEASE_NS, RELEASE);
        OperatorProcess::start(
            &kubeconfig,
            &[
                ("CHAT_OPERATOR_LEADER_ELECTION", "on"),
                ("CHAT_OPERATOR_LEASE_NAMESPACE", RELEASE_NS),
                ("CHAT_OPERATOR_LEASE_NAME", RELEASE),
                ("CHAT_OPERATOR_LEASE_DURATION", "3s"),
                ("CHAT_OPERATOR_LEASE_RENEW_BEFORE", "1s"),
                ("CHAT_OPERATOR_IDENTITY", identity),
                ("CHAT_OPERATOR_NAMESPACE", EXAMPLE_NS),
            ],
        )
        .expect("operator starts")
    }

    fn chat(&self, namespace: &str, name: &str) -> Value {
        self.kubectl
            .json(["get", "chatcluster", name, "-n", namespace])
            .unwrap_or_else(|e| panic!("{e}"))
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

/// Keeps marking the example's pods Ready (as kubelets would) until dropped.
struct Kubelet<'scope> {
    stop: &'scope AtomicBool,
}

impl Drop for Kubelet<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn play_kubelet<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    stop: &'scope AtomicBool,
    kubectl: &'env Kubectl,
    namespace: &'env str,
    selector: &'env str,
) -> Kubelet<'scope> {
    stop.store(false, Ordering::SeqCst);
    scope.spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let _ = mark_pods_ready(kubectl, namespace, selector);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    Kubelet { stop }
}

/// The commands of the README's "Install with Helm" block.
fn readme_quickstart() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let section = readme
        .split("## Install with Helm")
        .nth(1)
        .expect("README has an \"Install with Helm\" section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section starts with a ```sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn run_readme_line(env: &Env, line: &[String]) -> String {
    let (program, args) = line.split_first().expect("non-empty line");
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "charts/chat-operator" {
                chart_dir().to_string_lossy().into_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    match program.as_str() {
        "helm" => env
            .helm
            .run(&args)
            .unwrap_or_else(|e| panic!("README step failed: {e}")),
        "kubectl" => env
            .kubectl
            .run(&args)
            .unwrap_or_else(|e| panic!("README step failed: {e}")),
        other => panic!("README quickstart runs {other:?}; the test knows helm and kubectl only"),
    }
}

#[test]
fn chart_lifecycle_against_the_control_plane() {
    let kubeconfig = chart_tests::cluster::control_plane_kubeconfig();
    let env = Env {
        kubectl: Kubectl::new(&kubeconfig),
        helm: Helm::with_kubeconfig(&kubeconfig).expect("helm"),
        scratch: tempfile::tempdir().unwrap(),
    };
    let kubelet_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut operator = quickstart(&env, scope, &kubelet_stop);
        no_perpetual_diff(&env);
        rbac_is_not_more_than_needed(&env);
        operator.stop();
        uninstall_keeps_crds_and_chatclusters(&env);
        upgrade_from_previous_version(&env, scope, &kubelet_stop);
    });
}

/// 1 + 2: the README quickstart, and the health check on the real objects it produces.
fn quickstart<'scope, 'env>(
    env: &'env Env,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    kubelet_stop: &'scope AtomicBool,
) -> OperatorProcess {
    let lines = readme_quickstart();
    let shown: Vec<String> = lines.iter().map(|l| l.join(" ")).collect();
    assert_eq!(
        shown,
        [
            "helm install chat-operator charts/chat-operator --namespace chat-operator --create-namespace",
            "kubectl apply -f examples/basic.yaml",
            "kubectl wait --for=condition=Ready chat/demo --timeout=5m",
            "kubectl get chat",
        ],
        "the README quickstart changed: update this test so it still runs exactly the README"
    );
    // `helm install` prints NOTES.txt, which tells the user the next step.
    let install = run_readme_line(env, &lines[0]);
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
            env.kubectl.exists(&[
                kind,
                "-n",
                RELEASE_NS,
                "-l",
                "app.kubernetes.io/instance=chat-operator"
            ]),
            "{kind}"
        );
    }
    run_readme_line(env, &lines[1]);

    // The operator: outside the cluster, as system:serviceaccount:chat-operator:chat-operator.
    let mut operator = env.start_operator("quickstart");
    let progressing = wait_for(READY_TIMEOUT, "the operator to write status", || {
        let chat = env.chat(EXAMPLE_NS, EXAMPLE);
        condition(&chat, "Ready").is_some().then_some(chat)
    })
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    assert!(
        operator.is_running(),
        "operator exited:\n{}",
        operator.logs()
    );
    let health = run_health_check(&health_check_path(), &progressing).expect("lua");
    assert_eq!(
        health.status, "Progressing",
        "no pod is Ready yet, so the real object must not look healthy: {health:?}\n{progressing:#}"
    );
    assert!(
        env.kubectl
            .exists(&["deployment", EXAMPLE, "-n", EXAMPLE_NS]),
        "chat-node Deployment applied"
    );

    // kstatus: `kubectl wait --for=condition=Ready` (the README's line) returns once the pods are up.
    {
        let _kubelet = play_kubelet(scope, kubelet_stop, &env.kubectl, EXAMPLE_NS, DEMO_SELECTOR);
        let mut wait = lines[2].clone();
        for arg in wait.iter_mut().filter(|a| a.starts_with("--timeout=")) {
            *arg = format!("--timeout={}s", READY_TIMEOUT.as_secs());
        }
        env.kubectl
            .run(&wait[1..])
            .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    }
    let ready = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(
        ready["status"]["observedGeneration"],
        ready["metadata"]["generation"]
    );
    let listing = run_readme_line(env, &lines[3]);
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
            EXAMPLE_NS,
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
    operator
}

/// 3: apply the example again with server-side apply: nothing changes.
fn no_perpetual_diff(env: &Env) {
    let before = env.chat(EXAMPLE_NS, EXAMPLE);
    for _ in 0..2 {
        env.kubectl
            .run(["apply", "--server-side", "-f", "examples/basic.yaml"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let after = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(before["spec"], after["spec"], "spec changed by a re-apply");
    // Neither the API server (no CRD defaults) nor the operator added anything to the spec.
    let written =
        parse_documents(&std::fs::read_to_string(repo_path("examples/basic.yaml")).unwrap())
            .unwrap();
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
        .run(["diff", "--server-side", "-f", "examples/basic.yaml"])
        .unwrap_or_else(|e| panic!("a perpetual diff:\n{e}"));
    env.kubectl
        .run(["diff", "-f", "examples/basic.yaml"])
        .unwrap_or_else(|e| panic!("a perpetual diff (client-side):\n{e}"));
}

/// The rules of the chart's ClusterRole, as rendered.
fn chart_rules(env: &Env) -> Vec<Value> {
    let yaml = env
        .helm
        .template(
            RELEASE,
            &chart_dir(),
            RELEASE_NS,
            &["--kube-version", "1.36.3"],
        )
        .expect("helm template");
    let objects = parse_documents(&yaml).unwrap();
    one_of_kind(&objects, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .clone()
}

/// `rules` without `verb` on `group/resource` (other resources of the same rule keep it).
fn without_verb(rules: &[Value], group: &str, resource: &str, verb: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut found = false;
    for rule in rules {
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let in_group = rule["apiGroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == group);
        if !in_group || !resources.contains(&resource) {
            out.push(rule.clone());
            continue;
        }
        found = true;
        let others: Vec<&str> = resources
            .iter()
            .copied()
            .filter(|r| *r != resource)
            .collect();
        if !others.is_empty() {
            let mut rest = rule.clone();
            rest["resources"] = json!(others);
            out.push(rest);
        }
        let mut reduced = rule.clone();
        reduced["resources"] = json!([resource]);
        reduced["verbs"] = json!(
            rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| *v != verb)
                .collect::<Vec<_>>()
        );
        out.push(reduced);
    }
    assert!(
        found,
        "the chart grants no {verb} on {group}/{resource}: the test is out of date"
    );
    out
}

/// 4: the operator under the chart's ClusterRole minus one verb fails, and says why.
fn rbac_is_not_more_than_needed(env: &Env) {
    let rules = chart_rules(env);
    for rule in &rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().iter().any(|v| v == "*"),
                "wildcard in the operator's ClusterRole: {rule:#}"
            );
        }
        let verbs = rule["verbs"].as_array().unwrap();
        for dangerous in ["escalate", "bind", "impersonate"] {
            assert!(
                !verbs.iter().any(|v| v == dangerous),
                "{dangerous} granted: {rule:#}"
            );
        }
    }
    // (group, resource, verb, what the operator then cannot do)
    let cases = [
        ("apps", "deployments", "patch", "deployments"),
        ("realtime.dev", "chatclusters", "watch", "chatclusters"),
    ];
    for (group, resource, verb, mentioned) in cases {
        let ns = TempNamespace::create(&env.kubectl, "rbac").expect("namespace");
        let name = format!("chat-operator-{}", ns.name());
        let reduced = without_verb(&rules, group, resource, verb);
        let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": ns.name()}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": reduced},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns.name()}]},
        ]});
        env.kubectl
            .run_with_stdin(["apply", "-f", "-"], Some(&objects.to_string()))
            .expect("reduced RBAC");
        let basic = std::fs::read_to_string(repo_path("examples/basic.yaml")).unwrap();
        env.kubectl
            .run_with_stdin(["apply", "-n", ns.name(), "-f", "-"], Some(&basic))
            .expect("example");
        let kubeconfig = service_account_kubeconfig(ns.name(), "operator");
        let operator = OperatorProcess::start(
            &kubeconfig,
            &[
                ("CHAT_OPERATOR_LEASE_NAMESPACE", ns.name()),
                ("CHAT_OPERATOR_LEASE_DURATION", "3s"),
                ("CHAT_OPERATOR_LEASE_RENEW_BEFORE", "1s"),
                ("CHAT_OPERATOR_NAMESPACE", ns.name()),
            ],
        )
        .expect("operator starts");
        let what = format!("a clear error without {verb} on {group}/{resource}");
        let evidence = wait_for(Duration::from_secs(60), &what, || {
            let logs = operator.logs();
            let log_says = logs
                .lines()
                .find(|l| l.contains("forbidden") && l.contains(mentioned))
                .map(str::to_string);
            let chat = env
                .kubectl
                .json(["get", "chatcluster", EXAMPLE, "-n", ns.name()])
                .ok()?;
            let degraded = condition(&chat, "Degraded")
                .filter(|c| c["status"] == "True")
                .map(|c| c["message"].as_str().unwrap_or_default().to_string());
            log_says.or(degraded.filter(|m| m.contains("forbidden")))
        })
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
        assert!(evidence.contains(mentioned), "{evidence}");
        assert!(
            !env.kubectl
                .exists(&["deployment", EXAMPLE, "-n", ns.name()])
                || verb != "patch"
                || resource != "deployments",
            "the Deployment exists although the operator may not apply it"
        );
        // A Degraded status written by a real operator is also what Argo CD would see.
        if let Ok(chat) = env
            .kubectl
            .json(["get", "chatcluster", EXAMPLE, "-n", ns.name()])
            && is_true(&chat, "Degraded")
        {
            let health = run_health_check(&health_check_path(), &chat).expect("lua");
            assert_eq!(health.status, "Degraded", "{health:?}");
        }
        drop(operator);
        let _ = env.kubectl.run([
            "delete",
            "clusterrolebinding,clusterrole",
            &name,
            "--ignore-not-found",
        ]);
    }
}

/// 5: `helm uninstall` removes the operator and keeps the CRD, the ChatCluster and its chat nodes.
fn uninstall_keeps_crds_and_chatclusters(env: &Env) {
    let chat_before = env.chat(EXAMPLE_NS, EXAMPLE);
    let crd_uid_before = crd_uid(env);
    env.helm
        .run([
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "60s",
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
    assert_eq!(
        crd_uid(env),
        crd_uid_before,
        "the CRD was deleted or replaced by uninstall"
    );
    let chat_after = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(
        chat_before["metadata"]["uid"],
        chat_after["metadata"]["uid"]
    );
    assert_eq!(chat_before["spec"], chat_after["spec"]);
    assert!(
        env.kubectl
            .exists(&["deployment", EXAMPLE, "-n", EXAMPLE_NS]),
        "chat nodes gone with the operator"
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

/// The "previous release" of the chart, constructed (none was published yet): the current chart
/// with version 0.0.1, appVersion 0.0.1, and a CRD without its last printer column, packaged
/// with `helm package` as a release would be. Returns the .tgz path and the removed column.
fn previous_chart(env: &Env) -> (PathBuf, String) {
    let dir = env.scratch.path().join("previous/chat-operator");
    copy_dir(&chart_dir(), &dir);
    let chart_yaml = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap();
    let chart_yaml = chart_yaml
        .lines()
        .map(|l| match l {
            l if l.starts_with("version:") => "version: 0.0.1".to_string(),
            l if l.starts_with("appVersion:") => "appVersion: \"0.0.1\"".to_string(),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("Chart.yaml"), chart_yaml).unwrap();
    let spec_path = dir.join("files/crds/chatclusters.realtime.dev.spec.yaml");
    let mut spec: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let columns = spec["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array_mut()
        .expect("the CRD has printer columns");
    let removed = columns.pop().expect("a printer column")["name"]
        .as_str()
        .unwrap()
        .to_string();
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
    (out.join("chat-operator-0.0.1.tgz"), removed)
}

/// 6: install the previous version over the kept CRD, then `helm upgrade` to this one.
fn upgrade_from_previous_version<'scope, 'env>(
    env: &'env Env,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    kubelet_stop: &'scope AtomicBool,
) {
    let (package, removed_column) = previous_chart(env);
    let crd_uid_before = crd_uid(env);
    env.helm
        .run([
            OsArg::s("install"),
            OsArg::s(RELEASE),
            OsArg::p(&package),
            OsArg::s("--namespace"),
            OsArg::s(RELEASE_NS),
        ])
        .unwrap_or_else(|e| panic!("installing the previous chart over the kept CRD: {e}"));
    assert!(
        !printer_columns(env).contains(&removed_column),
        "the previous chart's CRD was not applied"
    );
    {
        let operator = env.start_operator("previous");
        let _kubelet = play_kubelet(scope, kubelet_stop, &env.kubectl, EXAMPLE_NS, DEMO_SELECTOR);
        wait_for(READY_TIMEOUT, "demo Ready under the previous chart", || {
            is_true(&env.chat(EXAMPLE_NS, EXAMPLE), "Ready").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    }
    let chat_before = env.chat(EXAMPLE_NS, EXAMPLE);
    let nodes_before = env
        .kubectl
        .json(["get", "deployment", EXAMPLE, "-n", EXAMPLE_NS])
        .unwrap();

    let upgrade = env
        .helm
        .run([
            OsArg::s("upgrade"),
            OsArg::s(RELEASE),
            OsArg::p(&chart_dir()),
            OsArg::s("--namespace"),
            OsArg::s(RELEASE_NS),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(upgrade.contains("has been upgraded"), "{upgrade}");
    assert_eq!(
        crd_uid(env),
        crd_uid_before,
        "the CRD was replaced, not updated in place"
    );
    assert!(
        printer_columns(env).contains(&removed_column),
        "helm upgrade did not update the CRD"
    );
    let deployment = env
        .kubectl
        .json(["get", "deployment", RELEASE, "-n", RELEASE_NS])
        .unwrap();
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "operator image not upgraded: {image}"
    );

    // The upgraded operator takes over and reconciles: prove it by deleting a child it must
    // recreate, then check the chat nodes were not touched.
    let operator = env.start_operator("upgraded");
    let admin_service = format!("{EXAMPLE}-admin");
    env.kubectl
        .run(["delete", "service", &admin_service, "-n", EXAMPLE_NS])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        READY_TIMEOUT,
        "the upgraded operator to recreate the admin Service",
        || {
            env.kubectl
                .exists(&["service", &admin_service, "-n", EXAMPLE_NS])
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator.logs()));
    let chat_after = env.chat(EXAMPLE_NS, EXAMPLE);
    assert_eq!(
        chat_before["metadata"]["uid"], chat_after["metadata"]["uid"],
        "ChatCluster replaced"
    );
    assert_eq!(
        chat_before["spec"], chat_after["spec"],
        "ChatCluster spec changed by the upgrade"
    );
    let nodes_after = env
        .kubectl
        .json(["get", "deployment", EXAMPLE, "-n", EXAMPLE_NS])
        .unwrap();
    assert_eq!(
        nodes_before["spec"]["template"], nodes_after["spec"]["template"],
        "the chat-node pod template changed: the upgrade would restart users' chat nodes"
    );
    assert_eq!(
        nodes_before["metadata"]["generation"],
        nodes_after["metadata"]["generation"]
    );
    drop(operator);
    let _ = env
        .helm
        .run(["uninstall", RELEASE, "--namespace", RELEASE_NS]);
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
