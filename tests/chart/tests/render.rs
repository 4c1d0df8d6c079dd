//! The chart without a cluster: `helm lint` (plain and `--strict`), `helm template` with the
//! defaults and with every option on, the values schema rejecting bad values, every value
//! documented, and the chart's copies of the CRD and the ClusterRole equal to their sources.

use std::path::Path;

use chart_tests::manifests::{all_of_kind, kind, name, one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path};
use serde_json::{Value, json};
use test_harness::helm::Helm;

// No `--kube-version`: hack/setup.d/30-helm.sh stamps Helm's default Kubernetes version (as
// upstream's release builds do), so `helm template`/`helm lint` pass the chart's `kubeVersion`
// check out of the box, as they do for users.
const ALL_OPTIONS: &str = "ci/all-options-values.yaml";

fn helm() -> Helm {
    Helm::new().expect("helm home")
}

fn render(extra: &[&str]) -> Vec<Value> {
    let yaml = helm()
        .template("chat-operator", &chart_dir(), "chat-operator", extra)
        .unwrap_or_else(|e| panic!("{e}"));
    parse_documents(&yaml).expect("rendered YAML parses")
}

fn render_error(extra: &[&str]) -> String {
    match helm().template("chat-operator", &chart_dir(), "chat-operator", extra) {
        Ok(yaml) => panic!("expected helm template {extra:?} to fail, it rendered:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn all_options() -> String {
    chart_dir().join(ALL_OPTIONS).to_string_lossy().into_owned()
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = parse_documents(&text).expect("parses");
    assert_eq!(docs.len(), 1, "{} holds one object", path.display());
    docs.remove(0)
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .expect("env list")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {container:#}"))
}

#[test]
fn lint_passes_plain_and_strict_with_defaults_and_all_options() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let values = all_options();
    for args in [
        vec!["lint", chart],
        vec!["lint", "--strict", chart],
        vec!["lint", chart, "-f", &values],
        vec!["lint", "--strict", chart, "-f", &values],
    ] {
        let out = helm().run(&args).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.contains("0 chart(s) failed"),
            "helm {args:?} reported:\n{out}"
        );
    }
}

#[test]
fn defaults_render_a_leader_elected_restricted_operator() {
    let objects = render(&[]);
    let deployment = one_of_kind(&objects, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "chat-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["run"]));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        container["image"],
        format!("ghcr.io/chatcluster/chat-operator:{version}"),
        "the image tag defaults to the chart's appVersion, the workspace version"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE")["value"],
        format!("ghcr.io/chatcluster/chat-node:{version}"),
        "new ChatClusters default to the chat-node of the chart's appVersion"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_LEADER_ELECTION")["value"],
        "on"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_LEASE_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_IDENTITY")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_ADMIN_LISTEN")["value"],
        "0.0.0.0:9090"
    );
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        container["ports"][0],
        json!({"name": "admin", "containerPort": 9090, "protocol": "TCP"})
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "admin"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "admin"})
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let pdb = one_of_kind(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(pdb["spec"]["selector"], spec["selector"]);
    let service = one_of_kind(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(service["spec"]["selector"], spec["selector"]["matchLabels"]);
    one_of_kind(&objects, "ServiceAccount");
    let binding = one_of_kind(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "chat-operator", "namespace": "chat-operator"}])
    );
    for optional in ["ServiceMonitor", "NetworkPolicy"] {
        assert!(
            all_of_kind(&objects, optional).is_empty(),
            "{optional} is off by default"
        );
    }
}

#[test]
fn chart_crd_equals_the_generated_crd_and_is_kept_on_uninstall() {
    let objects = render(&[]);
    let rendered = one_of_kind(&objects, "CustomResourceDefinition");
    let source = read_yaml(&repo_path("crds/chatclusters.realtime.dev.yaml"));
    assert_eq!(rendered["metadata"]["name"], source["metadata"]["name"]);
    assert!(
        rendered["spec"] == source["spec"],
        "the chart's CRD drifted from crds/: run `make generate`"
    );
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let without = render(&["--set", "crds.create=false"]);
    assert!(all_of_kind(&without, "CustomResourceDefinition").is_empty());
}

#[test]
fn chart_rbac_is_exactly_the_operator_rbac_source() {
    let objects = render(&[]);
    let role = one_of_kind(&objects, "ClusterRole");
    let source = read_yaml(&repo_path("config/rbac/clusterrole.yaml"));
    assert!(
        role["rules"] == source["rules"],
        "the chart's ClusterRole drifted from config/rbac/clusterrole.yaml: run `make generate`"
    );
    let without = render(&["--set", "rbac.create=false"]);
    assert!(all_of_kind(&without, "ClusterRole").is_empty());
    assert!(all_of_kind(&without, "ClusterRoleBinding").is_empty());
}

/// The admission policy is the operator's generated one; its binding reads the allow-list from
/// the parameter ConfigMap the chart renders, which holds the same list the operator gets.
#[test]
fn chart_admission_policy_is_the_generated_one_bound_to_the_operators_allow_list() {
    let objects = render(&[
        "--set",
        "operator.allowedImagePrefixes={ghcr.io/chatcluster/,mirror.example/chat}",
    ]);
    let policy = one_of_kind(&objects, "ValidatingAdmissionPolicy");
    let source = read_yaml(&repo_path(
        "config/admission/validatingadmissionpolicy.yaml",
    ));
    assert!(
        policy["spec"] == source["spec"],
        "the chart's admission policy drifted from config/admission/: run `make generate`"
    );
    let binding = one_of_kind(&objects, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        binding["spec"]["paramRef"]["parameterNotFoundAction"],
        "Deny"
    );
    assert_eq!(binding["spec"]["paramRef"]["namespace"], "chat-operator");
    assert!(
        binding["spec"]["matchResources"].is_null(),
        "all namespaces by default"
    );
    let param = one_of_kind(&objects, "ConfigMap");
    assert_eq!(
        binding["spec"]["paramRef"]["name"],
        param["metadata"]["name"]
    );
    let list = "ghcr.io/chatcluster/,mirror.example/chat";
    assert_eq!(param["data"]["allowedImagePrefixes"], list);
    let deployment = one_of_kind(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_ALLOWED_IMAGE_PREFIXES")["value"],
        list
    );

    let scoped = render(&[
        "--set",
        "operator.watchNamespace=team-a",
        "--set",
        "operator.watchNamespaces={team-b,team-a}",
    ]);
    let binding = one_of_kind(&scoped, "ValidatingAdmissionPolicyBinding");
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"],
        json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-b", "team-a"]}])
    );

    let without = render(&["--set", "admissionPolicy.enabled=false"]);
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ConfigMap",
    ] {
        assert!(all_of_kind(&without, kind).is_empty(), "{kind}");
    }
    let error = render_error(&["--set-json", r#"operator.allowedImagePrefixes=["a,b"]"#]);
    assert!(error.contains("allowedImagePrefixes"), "{error}");
}

/// The tenant policy reaches the operator as it is written in values, and the admission policy's
/// parameter ConfigMap holds the same lists (one source for both); an empty list stays empty
/// (nothing of that kind refused) instead of falling back to the default.
#[test]
fn chart_tenant_policy_becomes_the_operators_flags() {
    let env = |objects: &[Value], name: &str| {
        let deployment = one_of_kind(objects, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        env_value(container, name)["value"].clone()
    };
    // (environment variable, parameter key)
    let settings = [
        (
            "CHAT_OPERATOR_DENIED_INGRESS_ANNOTATIONS",
            "deniedIngressAnnotations",
        ),
        ("CHAT_OPERATOR_ALLOWED_INGRESS_HOSTS", "allowedIngressHosts"),
        (
            "CHAT_OPERATOR_DENIED_PRIORITY_CLASSES",
            "deniedPriorityClasses",
        ),
        (
            "CHAT_OPERATOR_DENIED_TOLERATION_KEYS",
            "deniedTolerationKeys",
        ),
    ];
    let same_in_param = |objects: &[Value]| {
        let param = one_of_kind(objects, "ConfigMap");
        for (name, key) in settings {
            assert_eq!(param["data"][key], env(objects, name), "{key}");
        }
    };
    let defaults = render(&[]);
    for (name, value) in [
        (
            "CHAT_OPERATOR_DENIED_INGRESS_ANNOTATIONS",
            "*-snippet,*-snippets",
        ),
        ("CHAT_OPERATOR_ALLOWED_INGRESS_HOSTS", "*"),
        ("CHAT_OPERATOR_DENIED_PRIORITY_CLASSES", "system-*"),
        (
            "CHAT_OPERATOR_DENIED_TOLERATION_KEYS",
            "node-role.kubernetes.io/*",
        ),
    ] {
        assert_eq!(env(&defaults, name), value, "{name}");
    }
    same_in_param(&defaults);
    let set = render(&[
        "--set-json",
        r#"operator.tenantPolicy.allowedIngressHosts=["*.a.example.com","chat.example.com"]"#,
        "--set-json",
        "operator.tenantPolicy.deniedTolerationKeys=[]",
    ]);
    assert_eq!(
        env(&set, "CHAT_OPERATOR_ALLOWED_INGRESS_HOSTS"),
        "*.a.example.com,chat.example.com"
    );
    assert_eq!(env(&set, "CHAT_OPERATOR_DENIED_TOLERATION_KEYS"), "");
    same_in_param(&set);
    let error = render_error(&[
        "--set-json",
        r#"operator.tenantPolicy.deniedPriorityClasses=["a,b"]"#,
    ]);
    assert!(error.contains("deniedPriorityClasses"), "{error}");
}

/// `monitoring.labels` and `monitoring.runbookBaseUrl` reach the operator as its flags; the
/// labels go on the chart's own ServiceMonitor too (its own `labels` win on a shared key).
#[test]
fn chart_monitoring_values_become_the_operators_flags() {
    let env = |objects: &[Value], name: &str| {
        let deployment = one_of_kind(objects, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        container["env"]
            .as_array()
            .expect("env list")
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    let defaults = render(&[]);
    assert_eq!(
        env(&defaults, "CHAT_OPERATOR_MONITORING_LABELS"),
        Some(json!(""))
    );
    assert_eq!(
        env(&defaults, "CHAT_OPERATOR_RUNBOOK_BASE_URL"),
        None,
        "unset: the operator's default (the project's docs/runbooks)"
    );
    let set = render(&[
        "--set",
        "monitoring.labels.release=kube-prometheus-stack,monitoring.labels.team=chat",
        "--set",
        "monitoring.runbookBaseUrl=https://wiki.example.com/runbooks",
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.team=operators",
    ]);
    assert_eq!(
        env(&set, "CHAT_OPERATOR_MONITORING_LABELS"),
        Some(json!("release=kube-prometheus-stack,team=chat"))
    );
    assert_eq!(
        env(&set, "CHAT_OPERATOR_RUNBOOK_BASE_URL"),
        Some(json!("https://wiki.example.com/runbooks"))
    );
    let monitor = one_of_kind(&set, "ServiceMonitor");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(monitor["metadata"]["labels"]["team"], "operators");
    let error = render_error(&["--set", "monitoring.runbookBaseUrl=wiki.example.com"]);
    assert!(error.contains("runbookBaseUrl"), "{error}");
}

/// The operand image values and pull secrets reach the operator as its flags: the defaults as
/// `repo:tag`, a digest pinning the image, the pull secrets comma-joined.
#[test]
fn chart_operand_values_become_the_operators_flags() {
    let env = |objects: &[Value], name: &str| {
        let deployment = one_of_kind(objects, "Deployment");
        env_value(
            &deployment["spec"]["template"]["spec"]["containers"][0],
            name,
        )["value"]
            .clone()
    };
    let defaults = render(&[]);
    assert_eq!(
        env(&defaults, "CHAT_OPERATOR_DEFAULT_REDIS_IMAGE"),
        "docker.io/library/redis:7.4"
    );
    assert_eq!(
        env(&defaults, "CHAT_OPERATOR_DEFAULT_COLLECTOR_IMAGE"),
        "otel/opentelemetry-collector-contrib:0.165.0"
    );
    assert_eq!(env(&defaults, "CHAT_OPERATOR_IMAGE_PULL_SECRETS"), "");
    assert_eq!(
        env(&defaults, "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_SIZE"),
        "1Gi"
    );
    // Unset: the operator looks for the cluster's default StorageClass.
    let deployment = one_of_kind(&defaults, "Deployment");
    assert!(
        !deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_CLASS"),
        "a StorageClass flag by default"
    );
    let all = render(&["-f", &all_options()]);
    assert_eq!(env(&all, "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_SIZE"), "8Gi");
    assert_eq!(
        env(&all, "CHAT_OPERATOR_DEFAULT_REDIS_STORAGE_CLASS"),
        "fast-ssd"
    );
    assert_eq!(
        env(&all, "CHAT_OPERATOR_DEFAULT_REDIS_IMAGE"),
        "registry.example.invalid/mirror/redis@sha256:1111111111111111111111111111111111111111111111111111111111111111"
    );
    assert_eq!(
        env(&all, "CHAT_OPERATOR_DEFAULT_COLLECTOR_IMAGE"),
        "registry.example.invalid/mirror/opentelemetry-collector-contrib:0.165.0"
    );
    assert_eq!(
        env(&all, "CHAT_OPERATOR_IMAGE_PULL_SECRETS"),
        "registry-credentials,team.pull"
    );
    for (bad, value) in [
        (
            "operandImagePullSecrets",
            "operandImagePullSecrets[0]=Bad_Name",
        ),
        ("redis", "redis.image.digest=sha256:short"),
        ("collector", "collector.image.tag="),
        ("size", "redis.storage.size=lots"),
        (
            "storageClassName",
            "redis.storage.storageClassName=Fast_SSD",
        ),
    ] {
        let error = render_error(&["--set", value]);
        assert!(error.contains(bad), "{value}: {error}");
    }
}

/// `grafanaDashboard` ships the shared dashboard, operator/dashboards/chatcluster.json
/// unchanged, in a ConfigMap for the Grafana sidecar; off by default.
#[test]
fn the_chart_ships_the_shared_dashboard_when_asked() {
    let is_dashboard = |o: &&Value| kind(o) == "ConfigMap" && name(o).ends_with("-dashboard");
    assert_eq!(render(&[]).iter().filter(is_dashboard).count(), 0);
    let objects = render(&[
        "--set",
        "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring",
        "--set",
        "grafanaDashboard.folder=Chat",
    ]);
    let maps: Vec<&Value> = objects.iter().filter(is_dashboard).collect();
    assert_eq!(maps.len(), 1);
    let map = maps[0];
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Chat");
    let shipped: Value =
        serde_json::from_str(map["data"]["chatcluster.json"].as_str().expect("the JSON"))
            .expect("the shipped dashboard parses");
    let source: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("operator/dashboards/chatcluster.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, source);
    assert_eq!(shipped["uid"], "chatcluster");
}

/// The parsed `artifacthub.io/<key>` annotation of Chart.yaml (a YAML document in a string).
fn artifact_hub(chart: &Value, key: &str) -> Value {
    let text = chart["annotations"][format!("artifacthub.io/{key}")]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml has no artifacthub.io/{key}"));
    let mut docs = parse_documents(text).expect("annotation parses");
    assert_eq!(docs.len(), 1, "{key}");
    docs.remove(0)
}

/// Artifact Hub's image list names every image the chart and the operator deploy by default,
/// derived here from the same values the chart renders (so it cannot drift from them): the
/// operator's image and the images it passes to the operator for its operands.
#[test]
fn artifact_hub_images_name_every_image_the_chart_deploys() {
    let chart = read_yaml(&chart_dir().join("Chart.yaml"));
    let listed: Vec<String> = artifact_hub(&chart, "images")
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["image"].as_str().expect("image").to_owned())
        .collect();
    let objects = render(&[]);
    let deployment = one_of_kind(&objects, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut deployed = vec![container["image"].as_str().unwrap().to_owned()];
    for flag in [
        "CHAT_OPERATOR_DEFAULT_NODE_IMAGE",
        "CHAT_OPERATOR_DEFAULT_REDIS_IMAGE",
        "CHAT_OPERATOR_DEFAULT_COLLECTOR_IMAGE",
    ] {
        deployed.push(
            env_value(container, flag)["value"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Every `*_IMAGE` flag the chart sets is one of the above: a new operand image joins both.
    let image_flags = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"].as_str().unwrap().ends_with("_IMAGE"))
        .count();
    assert_eq!(
        image_flags, 3,
        "an image flag without an Artifact Hub entry"
    );
    let mut sorted_listed = listed.clone();
    sorted_listed.sort();
    deployed.sort();
    assert_eq!(sorted_listed, deployed);
    assert_eq!(chart["annotations"]["artifacthub.io/operator"], "true");
    assert_eq!(
        chart["annotations"]["artifacthub.io/operatorCapabilities"],
        "Seamless Upgrades"
    );
}

/// The CRD example on Artifact Hub is examples/basic.yaml (which the cluster tests apply), and
/// the icon Chart.yaml points at is a file of the repository.
#[test]
fn artifact_hub_example_and_icon_are_the_repositorys() {
    let chart = read_yaml(&chart_dir().join("Chart.yaml"));
    let examples = artifact_hub(&chart, "crdsExamples");
    assert_eq!(
        examples,
        json!([read_yaml(&repo_path("examples/basic.yaml"))])
    );
    let icon = chart["icon"].as_str().expect("an icon");
    let home = chart["home"].as_str().unwrap();
    let relative = icon
        .strip_prefix(&format!("{home}/raw/main/"))
        .unwrap_or_else(|| panic!("{icon} is not a file of {home}"));
    let svg = std::fs::read_to_string(repo_path(relative)).expect("the icon file exists");
    assert!(svg.starts_with("<svg"), "{relative}");
}

#[test]
fn every_option_on_renders_every_optional_object() {
    let values = all_options();
    let objects = render(&["-f", &values]);
    let deployment = one_of_kind(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "chat-operator-all");
    assert_eq!(deployment["metadata"]["labels"]["team"], "platform");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert!(
        container["image"].as_str().unwrap().contains("@sha256:"),
        "a digest pins the image"
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_NAMESPACE")["value"],
        "chat-staging,chat-production"
    );
    // The operator's rules by a Role in each watched namespace, the Lease rule in the release
    // namespace, and only `get` on Gateways cluster-wide.
    let mut roles: Vec<(String, String)> = all_of_kind(&objects, "Role")
        .into_iter()
        .map(|r| {
            (
                r["metadata"]["namespace"].as_str().unwrap().to_owned(),
                name(r).to_owned(),
            )
        })
        .collect();
    roles.sort();
    let mut bindings: Vec<(String, String)> = all_of_kind(&objects, "RoleBinding")
        .into_iter()
        .map(|b| {
            (
                b["metadata"]["namespace"].as_str().unwrap().to_owned(),
                b["roleRef"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    bindings.sort();
    assert_eq!(roles, bindings);
    let release_ns = deployment["metadata"]["namespace"].as_str().unwrap();
    let mut expected = vec![
        ("chat-production".to_owned(), "chat-operator-all".to_owned()),
        ("chat-staging".to_owned(), "chat-operator-all".to_owned()),
        (
            release_ns.to_owned(),
            "chat-operator-all-leader-election".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(roles, expected);
    assert_eq!(
        one_of_kind(&objects, "ClusterRole")["rules"],
        json!([
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways"], "verbs": ["get"]},
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["list"]},
        ])
    );
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_DEFAULT_NODE_IMAGE")["value"],
        "registry.example.invalid/mirror/chat-node@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
        "a mirrored chat-node image, pinned by digest"
    );
    assert_eq!(
        env_value(container, "OTEL_SERVICE_NAME")["value"],
        "chat-operator"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9191);
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert_eq!(pod["serviceAccountName"], "chat-operator-all-sa");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["whenUnsatisfiable"],
        "DoNotSchedule"
    );

    let monitor = one_of_kind(&objects, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    let service = one_of_kind(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 8443);
    let policy = one_of_kind(&objects, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"],
        "10.0.0.1/32"
    );
    let pdb = one_of_kind(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
}

#[test]
fn schema_and_checks_reject_bad_values_with_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicas=3"], "replicas"),
        (&["--set", "operator.logFormat=xml"], "logFormat"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set-string", "replicaCount=two"], "replicaCount"),
        (
            &["--set", "operator.resyncInterval=5 minutes"],
            "resyncInterval",
        ),
        (&["--set", "admin.port=70000"], "port"),
        (&["--set", "image.digest=latest"], "digest"),
        (&["--set", "chatNode.image.digest=latest"], "digest"),
        (&["--set", "chatNode.image.repository="], "repository"),
        (
            &["--set", "operator.leaderElection.enabled=false"],
            "needs operator.leaderElection.enabled=true",
        ),
        (
            &[
                "--set",
                "metrics.service.enabled=false",
                "--set",
                "metrics.serviceMonitor.enabled=true",
            ],
            "needs metrics.service.enabled=true",
        ),
        (
            &["--set", "podDisruptionBudget.minAvailable=2"],
            "minAvailable must be less than replicaCount",
        ),
    ];
    for (args, expected) in cases {
        let error = render_error(args);
        assert!(
            error.contains(expected),
            "helm template {args:?} failed without naming {expected:?}:\n{error}"
        );
    }
    // One replica without leader election is allowed (e.g. for development).
    let single = render(&[
        "--set",
        "replicaCount=1",
        "--set",
        "operator.leaderElection.enabled=false",
    ]);
    let container =
        &one_of_kind(&single, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "CHAT_OPERATOR_LEADER_ELECTION")["value"],
        "off"
    );
    assert!(
        all_of_kind(&single, "PodDisruptionBudget").is_empty(),
        "no PDB for one replica"
    );
}

/// Every leaf of values.yaml is documented by a `# --` comment on itself or on an ancestor key
/// (helm-docs semantics), and every value the schema knows is in values.yaml.
#[test]
fn every_value_is_documented() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // (indent, documented) of the open ancestor keys.
    let mut ancestors: Vec<(usize, bool)> = Vec::new();
    let mut undocumented = Vec::new();
    let mut leaves = 0;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while ancestors.last().is_some_and(|(a, _)| *a >= indent) {
            ancestors.pop();
        }
        // The comment block right above this key.
        let mut documented = false;
        let mut j = i;
        while j > 0 && lines[j - 1].trim_start().starts_with('#') {
            j -= 1;
            if lines[j].trim_start().starts_with("# --") {
                documented = true;
            }
        }
        let inherited = ancestors.iter().any(|(_, d)| *d);
        let next = lines[i + 1..]
            .iter()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let has_children = rest.trim().is_empty()
            && next.is_some_and(|n| {
                n.len() - n.trim_start().len() > indent && !n.trim_start().starts_with('-')
            });
        if has_children {
            ancestors.push((indent, documented));
        } else {
            leaves += 1;
            if !documented && !inherited {
                undocumented.push(format!("line {}: {}", i + 1, key));
            }
        }
    }
    assert!(leaves > 40, "found only {leaves} values: the parser is off");
    assert!(
        undocumented.is_empty(),
        "values without a `# --` comment: {undocumented:#?}"
    );
}

/// The chart's README lists every value of values.yaml in its table: each leaf, or an ancestor
/// documented as a whole (e.g. `resources`), appears as a `` `path` `` row.
#[test]
fn the_readme_lists_every_value() {
    fn leaves(value: &Value, path: String, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() => {
                for (key, sub) in map {
                    let here = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(sub, here, out);
                }
            }
            _ => out.push(path),
        }
    }
    let values = read_yaml(&chart_dir().join("values.yaml"));
    let mut all = Vec::new();
    leaves(&values, String::new(), &mut all);
    assert!(all.len() > 40, "found only {} values", all.len());
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("README.md");
    let missing: Vec<&String> = all
        .iter()
        .filter(|path| {
            let parts: Vec<&str> = path.split('.').collect();
            !(1..=parts.len()).any(|n| readme.contains(&format!("| `{}` |", parts[..n].join("."))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "values missing from charts/chat-operator/README.md: {missing:#?}"
    );
}

/// `make generate` (hack/generate.d/20-chart.sh) run into a temporary folder produces exactly the
/// committed chart files: a changed CRD or ClusterRole without `make generate` fails here.
#[test]
fn chart_files_are_not_stale() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("bash")
        .arg(repo_path("hack/generate.d/20-chart.sh"))
        .env("CHART_FILES_DIR", out.path())
        .status()
        .expect("bash runs");
    assert!(status.success(), "hack/generate.d/20-chart.sh failed");
    for relative in list_files(out.path()) {
        let fresh = std::fs::read_to_string(out.path().join(&relative)).unwrap();
        let committed = std::fs::read_to_string(chart_dir().join("files").join(&relative))
            .unwrap_or_else(|_| panic!("files/{relative} is missing: run `make generate`"));
        assert!(
            fresh == committed,
            "charts/chat-operator/files/{relative} is stale: run `make generate`"
        );
    }
    assert_eq!(
        list_files(out.path()),
        list_files(&chart_dir().join("files")),
        "charts/chat-operator/files has extra files: run `make generate`"
    );
}

fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[test]
fn chart_versions_follow_the_workspace() {
    let chart = read_yaml(&chart_dir().join("Chart.yaml"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert!(kind(&chart).is_empty());
}

/// chat-node pods use `lifecycle.preStop.sleep` (Kubernetes 1.30+) and the PDBs
/// `unhealthyPodEvictionPolicy`: the chart refuses older clusters up front instead of leaving
/// ChatClusters whose pods the API server rejects.
#[test]
fn chart_refuses_kubernetes_older_than_1_30() {
    let error = render_error(&["--kube-version", "1.29.9"]);
    assert!(error.contains("kubeVersion"), "{error}");
    let objects = render(&["--kube-version", "1.30.0"]);
    one_of_kind(&objects, "Deployment");
}
