//! The chart's ClusterRole (the operator's single RBAC source, `config/rbac/clusterrole.yaml`)
//! is exactly enough: with all of it the operator applies every child of a ChatCluster that
//! uses every child kind and is refused nothing, and without any one of its rules, or without
//! one of the verbs it is known to need, it fails and says which resource and verb it was
//! refused.
//!
//! Each case gets its rules the way the chart grants them to an operator that watches one
//! namespace (`operator.watchNamespaces`): a Role in that namespace, the Lease rule in a Role of
//! the release namespace, and a ClusterRole with nothing but `get` on Gateways; so the rules are
//! also enough when granted in the watched namespace only.
//!
//! Every case runs at once, each in its own namespace with its own ServiceAccount, chart RBAC
//! objects and operator process (authenticated as that ServiceAccount through impersonation), so the
//! whole matrix costs about as long as its slowest case. This runs on the API-only control
//! plane: no pod runs, and none needs to, since every request the operator makes is a request
//! to the API server. That the ChatCluster then turns Ready with the chart's RBAC is proven
//! with real pods by the end-to-end suite (tests/e2e), where the operator runs as the chart's
//! pod under the chart's ServiceAccount.

use std::time::Duration;

use chart_tests::cluster::{control_plane, install_crds, service_account_kubeconfig};
use chart_tests::lua::{health_check_path, run_health_check};
use chart_tests::manifests::{kind, name, one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path};
use serde_json::{Value, json};
use test_harness::helm::Helm;
use test_harness::kubectl::{Kubectl, TempNamespace};
use test_harness::operator::OperatorProcess;
use test_harness::wait::wait_for;

/// examples/full-stack.yaml: observability and alerting on, so every rule of the role is used.
const EXAMPLE_FILE: &str = "examples/full-stack.yaml";
const EXAMPLE: &str = "chat-prod";
const WAIT: Duration = Duration::from_secs(90);

/// What the operator applies for examples/full-stack.yaml, by kind and how many of each (owned
/// by the ChatCluster): chat-node and Collector Deployments, the client, admin, Redis and
/// Collector Services, the Redis password and configuration Secrets, the Collector
/// configuration and the Grafana dashboard, the PodDisruptionBudgets of chat-node and of the
/// highly available Redis, the ServiceMonitors of chat-node and of the Collector.
const FULL_STACK_CHILDREN: [(&str, usize); 10] = [
    ("Deployment", 2),
    ("StatefulSet", 1),
    ("Service", 5),
    ("Secret", 3),
    ("ConfigMap", 2),
    ("NetworkPolicy", 1),
    ("PodDisruptionBudget", 2),
    ("PrometheusRule", 1),
    ("ServiceMonitor", 2),
    ("AlertmanagerConfig", 1),
];

/// The rules of the ClusterRole the chart renders.
fn chart_rules() -> Vec<Value> {
    let yaml = Helm::new()
        .expect("helm")
        .template("chat-operator", &chart_dir(), "chat-operator", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let objects = parse_documents(&yaml).unwrap();
    one_of_kind(&objects, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .clone()
}

/// The chart's RBAC objects for an operator that watches `namespace` only, released into it
/// as `release` with the ServiceAccount `operator`.
fn chart_namespaced_rbac(release: &str, namespace: &str) -> Vec<Value> {
    let yaml = Helm::new()
        .expect("helm")
        .template(
            release,
            &chart_dir(),
            namespace,
            &[
                "--set",
                &format!("operator.watchNamespaces={{{namespace}}}"),
                "--set",
                "serviceAccount.name=operator",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    parse_documents(&yaml)
        .unwrap()
        .into_iter()
        .filter(|o| ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"].contains(&kind(o)))
        .collect()
}

fn is_lease_rule(rule: &Value) -> bool {
    strings(&rule["resources"]).iter().any(|r| r == "leases")
}

/// A rule on cluster-scoped objects (StorageClasses): the chart grants it by its ClusterRole
/// even when the operator watches a list of namespaces.
fn is_cluster_scoped_rule(rule: &Value) -> bool {
    strings(&rule["resources"])
        .iter()
        .any(|r| r == "storageclasses")
}

/// True when `granted` allows everything `rule` does (same groups; its resources and verbs).
fn grants(granted: &Value, rule: &Value) -> bool {
    let covers = |field: &str| {
        let granted = strings(&granted[field]);
        strings(&rule[field]).iter().all(|v| granted.contains(v))
    };
    granted["apiGroups"] == rule["apiGroups"] && covers("resources") && covers("verbs")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// One RBAC case: the rules the operator gets, and what it must then report.
struct Case {
    label: String,
    rules: Vec<Value>,
    /// `None`: the full role, every child must be applied without a refusal. `Some`: resources
    /// (as the API server names them in a refusal) of which one must be named with `forbidden`.
    refused: Option<Vec<String>>,
    /// The verb removed, which the refusal must name (`cannot <verb> resource "<resource>"`).
    verb: Option<&'static str>,
}

/// The role without rule `index`, for each rule; and without single verbs the reconciler uses
/// on every pass (their refusal is observable with one example).
fn cases(rules: &[Value]) -> Vec<Case> {
    let mut cases = vec![Case {
        label: "the full role".into(),
        rules: rules.to_vec(),
        refused: None,
        verb: None,
    }];
    for (index, rule) in rules.iter().enumerate() {
        let mut reduced = rules.to_vec();
        reduced.remove(index);
        cases.push(Case {
            label: format!(
                "without the rule for {:?} {:?}",
                strings(&rule["apiGroups"]),
                strings(&rule["resources"])
            ),
            rules: reduced,
            refused: Some(strings(&rule["resources"])),
            verb: None,
        });
    }
    for (group, resource, verb) in [
        ("realtime.dev", "chatclusters", "watch"),
        ("realtime.dev", "chatclusters/status", "patch"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "create"),
        ("", "secrets", "create"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "create"),
    ] {
        cases.push(Case {
            label: format!("without {verb} on {group:?} {resource}"),
            rules: without_verb(rules, group, resource, verb),
            refused: Some(vec![resource.to_string()]),
            verb: Some(verb),
        });
    }
    cases
}

/// `rules` without `verb` on `group/resource` (other resources of the same rule keep it).
fn without_verb(rules: &[Value], group: &str, resource: &str, verb: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut found = false;
    for rule in rules {
        let resources = strings(&rule["resources"]);
        let in_group = strings(&rule["apiGroups"]).iter().any(|g| g == group);
        if !in_group || !resources.iter().any(|r| r == resource) {
            out.push(rule.clone());
            continue;
        }
        found = true;
        let others: Vec<&String> = resources.iter().filter(|r| *r != resource).collect();
        if !others.is_empty() {
            let mut rest = rule.clone();
            rest["resources"] = json!(others);
            out.push(rest);
        }
        let mut reduced = rule.clone();
        reduced["resources"] = json!([resource]);
        let verbs: Vec<String> = strings(&rule["verbs"])
            .into_iter()
            .filter(|v| v != verb)
            .collect();
        assert!(
            verbs.len() < strings(&rule["verbs"]).len(),
            "the role grants no {verb} on {group}/{resource}: the test is out of date"
        );
        if !verbs.is_empty() {
            reduced["verbs"] = json!(verbs);
            out.push(reduced);
        }
    }
    assert!(
        found,
        "the role has no rule for {group}/{resource}: the test is out of date"
    );
    out
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// A refusal of one of `resources` (for `verb`, when given), as the API server words it.
fn names_refusal(text: &str, resources: &[String], verb: Option<&str>) -> bool {
    let text = text.replace("\\\"", "\"");
    let verb = verb.map(|v| format!("cannot {v} ")).unwrap_or_default();
    text.contains("forbidden")
        && resources
            .iter()
            .any(|r| text.contains(&format!("{verb}resource \"{r}\"")))
}

/// A running case: its namespace, its RBAC objects and its operator.
struct Running<'a> {
    case: &'a Case,
    namespace: TempNamespace,
    role: String,
    operator: OperatorProcess,
}

fn start<'a>(kubectl: &Kubectl, case: &'a Case, example: &str) -> Running<'a> {
    let namespace = TempNamespace::create(kubectl, "rbac").expect("namespace");
    let ns = namespace.name().to_string();
    // The release (and so the chart's ClusterRole) is named after the case's namespace.
    let role = format!("chat-operator-{ns}");
    let (leases, namespaced): (Vec<Value>, Vec<Value>) = case
        .rules
        .iter()
        .filter(|r| !is_cluster_scoped_rule(r))
        .cloned()
        .partition(is_lease_rule);
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": ns}}),
    ];
    for mut object in chart_namespaced_rbac(&role, &ns) {
        if kind(&object) == "Role" {
            let rules = if name(&object).ends_with("-leader-election") {
                &leases
            } else {
                &namespaced
            };
            object["rules"] = json!(rules);
        }
        if kind(&object) == "ClusterRole" {
            // The chart's cluster-scoped rules, less what the case takes away.
            let kept: Vec<Value> = object["rules"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| case.rules.iter().any(|granted| grants(granted, rule)))
                .cloned()
                .collect();
            object["rules"] = json!(kept);
        }
        items.push(object);
    }
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": items});
    kubectl
        .run_with_stdin(["apply", "-f", "-"], Some(&objects.to_string()))
        .expect("RBAC objects");
    kubectl
        .run_with_stdin(["apply", "-n", &ns, "-f", "-"], Some(example))
        .expect("example");
    // As the chart runs it: leader election on (the Lease is in the case's namespace).
    let operator = OperatorProcess::start(
        &service_account_kubeconfig(&ns, "operator"),
        &[
            ("CHAT_OPERATOR_LEADER_ELECTION", "on"),
            ("CHAT_OPERATOR_LEASE_NAMESPACE", &ns),
            ("CHAT_OPERATOR_LEASE_DURATION", "3s"),
            ("CHAT_OPERATOR_LEASE_RENEW_BEFORE", "1s"),
            ("CHAT_OPERATOR_NAMESPACE", &ns),
        ],
    )
    .expect("operator starts");
    Running {
        case,
        namespace,
        role,
        operator,
    }
}

impl Running<'_> {
    /// Stops the operator and deletes the case's namespace and cluster-scoped RBAC objects.
    fn remove(self, kubectl: &Kubectl) {
        let Running {
            namespace,
            role,
            mut operator,
            ..
        } = self;
        operator.stop();
        drop(namespace);
        let _ = kubectl.run([
            "delete",
            "clusterrolebinding,clusterrole",
            &role,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// The objects in `namespace` owned by ChatCluster [`EXAMPLE`], counted per kind of
/// [`FULL_STACK_CHILDREN`].
fn owned_children(kubectl: &Kubectl, namespace: &str) -> Option<Vec<(&'static str, usize)>> {
    let kinds: Vec<String> = FULL_STACK_CHILDREN
        .iter()
        .map(|(kind, _)| kind.to_lowercase())
        .collect();
    let list = kubectl
        .json(["get", &kinds.join(","), "-n", namespace])
        .ok()?;
    let owned: Vec<&Value> = list["items"]
        .as_array()?
        .iter()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "ChatCluster" && r["name"] == EXAMPLE)
        })
        .collect();
    Some(
        FULL_STACK_CHILDREN
            .iter()
            .map(|(kind, _)| (*kind, owned.iter().filter(|o| o["kind"] == *kind).count()))
            .collect(),
    )
}

/// Nothing in the operator's log or the ChatCluster's conditions says a request was refused.
fn no_refusal(log: &str, chat: &Value) -> Result<(), String> {
    if let Some(line) = log.lines().find(|l| l.to_lowercase().contains("forbidden")) {
        return Err(format!("the full role, yet a refusal: {line}"));
    }
    let conditions = chat["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten();
    for c in conditions {
        let message = c["message"].as_str().unwrap_or_default();
        if message.to_lowercase().contains("forbidden") {
            return Err(format!(
                "the full role, yet condition {}: {message}",
                c["type"]
            ));
        }
    }
    Ok(())
}

/// Waits for the case's outcome; returns what proves it.
fn outcome(kubectl: &Kubectl, running: &Running<'_>) -> Result<String, String> {
    let ns = running.namespace.name();
    let chat = || kubectl.json(["get", "chatcluster", EXAMPLE, "-n", ns]).ok();
    let result = match &running.case.refused {
        // Every child applied and counted, the last reconcile without error (Degraded=False,
        // reason Reconciled), the monitoring objects in place; then nothing was refused.
        None => wait_for(WAIT, "every child applied with the full role", || {
            let chat = chat()?;
            let reconciled = chat["status"]["observedGeneration"] == chat["metadata"]["generation"]
                && condition(&chat, "Degraded")
                    .is_some_and(|c| c["status"] == "False" && c["reason"] == "Reconciled")
                && condition(&chat, "MonitoringReady").is_some_and(|c| c["status"] == "True");
            (reconciled && owned_children(kubectl, ns)? == FULL_STACK_CHILDREN).then_some(chat)
        })
        .map_err(|e| {
            let children = owned_children(kubectl, ns);
            format!(
                "{e}; children owned by {EXAMPLE}: {children:?}; status: {}",
                chat().unwrap_or_default()["status"]
            )
        })
        .and_then(|chat| {
            no_refusal(&running.operator.logs(), &chat)?;
            let events = kubectl
                .json(["get", "events.events.k8s.io", "-n", ns])
                .map_err(|e| e.to_string())?;
            let published = events["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["regarding"]["name"] == EXAMPLE);
            if !published {
                return Err("no Event published about the ChatCluster".into());
            }
            Ok(format!(
                "{} children applied, Events published, nothing refused",
                FULL_STACK_CHILDREN.iter().map(|(_, n)| n).sum::<usize>()
            ))
        }),
        Some(resources) => wait_for(WAIT, "a refusal naming the resource", || {
            if let Some(line) = running
                .operator
                .logs()
                .lines()
                .find(|l| names_refusal(l, resources, running.case.verb))
            {
                return Some(format!("log: {line}"));
            }
            let chat = chat()?;
            let degraded = condition(&chat, "Degraded")
                .filter(|c| c["status"] == "True")?
                .clone();
            let message = degraded["message"].as_str().unwrap_or_default();
            names_refusal(message, resources, running.case.verb).then(|| {
                // What Argo CD shows for it.
                let health = run_health_check(&health_check_path(), &chat).expect("lua");
                assert_eq!(health.status, "Degraded", "{health:?}");
                format!("Degraded: {message}")
            })
        })
        .map_err(|e| e.to_string()),
    };
    result.map_err(|e| {
        format!(
            "{}: {e}\noperator log:\n{}",
            running.case.label,
            running.operator.logs()
        )
    })
}

#[test]
fn the_operator_needs_every_rule_of_its_role_and_no_more() {
    let control_plane = control_plane();
    let kubectl = Kubectl::new(control_plane.kubeconfig_path());
    // The ChatCluster CRD (the chart's equals it), prometheus-operator's CRDs so that the
    // monitoring rule is exercised, and the Gateway API's (HTTPRoute, Gateway), which the
    // operator lists and watches when they are installed, so that their rules are too.
    let fixtures = repo_path("operator/tests/fixtures/crds");
    let installed = install_crds(
        control_plane,
        &[
            repo_path("crds/chatclusters.realtime.dev.yaml"),
            fixtures.join("prometheus-operator-v0.93.0"),
            fixtures.join("gateway-api-v1.4.0"),
        ],
    );
    for crd in [
        "chatclusters.realtime.dev",
        "prometheusrules.monitoring.coreos.com",
        "servicemonitors.monitoring.coreos.com",
        "alertmanagerconfigs.monitoring.coreos.com",
        "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
    ] {
        assert!(
            installed.iter().any(|n| n == crd),
            "{crd} not in {installed:?}"
        );
    }

    let rules = chart_rules();
    // Watching one namespace, the chart grants the same rules, split: the Lease rule in the
    // release namespace, every other rule in the watched one, and only `get` on Gateways
    // cluster-wide (an HTTPRoute may attach to a Gateway of any namespace).
    let scoped = chart_namespaced_rbac("chat-operator", "team-a");
    let role_rules = |role: &str| -> Vec<Value> {
        let object = scoped
            .iter()
            .find(|o| kind(o) == "Role" && name(o) == role)
            .unwrap_or_else(|| panic!("no Role {role}"));
        object["rules"].as_array().unwrap().clone()
    };
    let mut split = role_rules("chat-operator");
    assert!(!split.iter().any(is_lease_rule));
    assert!(!split.iter().any(is_cluster_scoped_rule));
    let leases = role_rules("chat-operator-leader-election");
    assert!(leases.iter().all(is_lease_rule) && !leases.is_empty());
    split.extend(leases);
    let cluster_roles: Vec<&Value> = scoped.iter().filter(|o| kind(o) == "ClusterRole").collect();
    assert_eq!(cluster_roles.len(), 1);
    let gateways_get = json!({"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]});
    let storage_classes = json!({"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["list"]});
    assert_eq!(
        cluster_roles[0]["rules"],
        json!([gateways_get, storage_classes])
    );
    split.push(storage_classes);
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(|r| r.to_string());
        v
    };
    assert_eq!(sorted(split), sorted(rules.clone()));
    for rule in &rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).iter().any(|v| v == "*"),
                "wildcard in the operator's ClusterRole: {rule:#}"
            );
        }
        for dangerous in ["escalate", "bind", "impersonate"] {
            assert!(
                !strings(&rule["verbs"]).iter().any(|v| v == dangerous),
                "{dangerous} granted: {rule:#}"
            );
        }
    }
    let example = std::fs::read_to_string(repo_path(EXAMPLE_FILE)).unwrap();
    let cases = cases(&rules);
    // Each case in its own thread, from its namespace to its clean-up.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| {
                let (kubectl, example) = (&kubectl, &example);
                scope.spawn(move || {
                    let running = start(kubectl, case, example);
                    let result = outcome(kubectl, &running);
                    running.remove(kubectl);
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .zip(&cases)
            .filter_map(|(result, case)| match result {
                Ok(evidence) => {
                    eprintln!("{}: {evidence}", case.label);
                    None
                }
                Err(e) => Some(e),
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} RBAC cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
