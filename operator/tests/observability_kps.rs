//! A real prometheus-operator (v0.93.0, built from its Go module by
//! hack/setup.d/63-prometheus-operator.sh) with a `Prometheus` and an `Alertmanager` configured
//! with kube-prometheus-stack's default selectors (`release: kube-prometheus-stack` for
//! ServiceMonitors, PodMonitors, Probes, ScrapeConfigs, PrometheusRules and
//! AlertmanagerConfigs, every namespace) decides which of our monitoring objects it takes:
//! those of a ChatCluster reconciled by an operator with `--monitoring-labels
//! release=kube-prometheus-stack` end up in the Prometheus configuration it generates (scrape
//! jobs `serviceMonitor/<ns>/<name>/0`), in its rule files and in the Alertmanager configuration;
//! those of a ChatCluster reconciled without the labels end up nowhere.
//!
//! prometheus-operator writes the configuration into Secrets and ConfigMaps before any pod
//! runs, so the API-only control plane (no kubelet) is enough: the Prometheus and Alertmanager
//! pods themselves never start here.
//!
//! One test per file: it installs cluster-wide CRDs into this process' control plane.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_operator::api::ChatCluster;
use chat_operator::children::observability::MonitoringDefaults;
use chat_operator::metrics::Metrics;
use chat_operator::reconcile::{Context, Settings, reconcile};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use test_harness::kube::ControlPlane;
use test_harness::process::ManagedProcess;

const KPS_RELEASE: &str = "kube-prometheus-stack";
/// How long prometheus-operator gets to write a configuration (it starts its controllers once
/// its informers have synced, which takes a while on a busy machine).
const WAIT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// kube-prometheus-stack's `Prometheus` and `Alertmanager` with the chart's default selectors
/// (values `*SelectorNilUsesHelmValues: true`, namespace selectors `{}`).
fn kps_objects(ns: &str) -> String {
    let release = format!("{{matchLabels: {{release: {KPS_RELEASE}}}}}");
    format!(
        "apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata: {{name: kps, namespace: {ns}}}
spec:
  serviceMonitorSelector: {release}
  serviceMonitorNamespaceSelector: {{}}
  podMonitorSelector: {release}
  podMonitorNamespaceSelector: {{}}
  probeSelector: {release}
  probeNamespaceSelector: {{}}
  scrapeConfigSelector: {release}
  scrapeConfigNamespaceSelector: {{}}
  ruleSelector: {release}
  ruleNamespaceSelector: {{}}
---
apiVersion: monitoring.coreos.com/v1
kind: Alertmanager
metadata: {{name: kps, namespace: {ns}}}
spec:
  alertmanagerConfigSelector: {release}
  alertmanagerConfigNamespaceSelector: {{}}
"
    )
}

/// The full-stack example as `name` with the labels of its monitoring sections removed.
fn cluster(name: &str, ns: &str) -> ChatCluster {
    let manifest = std::fs::read_to_string(repo().join("examples/full-stack.yaml")).unwrap();
    let mut cluster: ChatCluster = serde_yaml_ng::from_str(&manifest).unwrap();
    cluster.metadata.name = Some(name.into());
    cluster.metadata.namespace = Some(ns.into());
    let observability = cluster.spec.observability.as_mut().unwrap();
    observability.prometheus_rule.as_mut().unwrap().labels = None;
    observability.service_monitor.as_mut().unwrap().labels = None;
    cluster.spec.alerting.as_mut().unwrap().labels = None;
    cluster
}

fn context(client: &Client, labels: BTreeMap<String, String>) -> Arc<Context> {
    Arc::new(Context::new(
        client.clone(),
        Settings {
            discovery_ttl: Duration::ZERO,
            monitoring: MonitoringDefaults {
                labels,
                ..MonitoringDefaults::default()
            },
            ..Settings::default()
        },
        Arc::new(Metrics::new()),
        "kps-test",
    ))
}

fn gunzip(data: &[u8]) -> String {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `check` every 200 ms until it returns `Some`; panics after [`WAIT`] with `what` and the
/// end of prometheus-operator's log.
async fn wait_until<T, F, Fut>(what: &str, operator: &ManagedProcess, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            eprintln!("{what}: after {:.1} s", started.elapsed().as_secs_f64());
            return value;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}; prometheus-operator's log ends:\n{}",
            operator.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gzipped file `key` of Secret `name`, once it exists and `accept` likes it.
async fn secret_file(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    operator: &ManagedProcess,
    accept: impl Fn(&str) -> bool,
) -> String {
    wait_until(&format!("Secret {name} ({key})"), operator, || async {
        let secret = secrets.get_opt(name).await.ok()??;
        let ByteString(data) = secret.data?.get(key)?.clone();
        let text = gunzip(&data);
        accept(&text).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_prometheus_stack_selectors_take_exactly_the_labelled_clusters_objects() {
    let cp = ControlPlane::shared().await;
    cp.install_crds(&[repo().join("crds/chatclusters.realtime.dev.yaml")])
        .await;
    let crds = test_harness::tools::prometheus_operator_crds().unwrap_or_else(|e| panic!("{e}"));
    cp.install_crds(&[crds]).await;
    cp.with_temp_ns("obs-kps", |client, ns| async move {
        // The receivers' Secrets: prometheus-operator refuses an AlertmanagerConfig whose
        // Secret keys are missing.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for (name, key, value) in [
            (
                "pagerduty",
                "routingKey",
                "0123456789abcdef0123456789abcdef",
            ),
            (
                "slack",
                "webhookUrl",
                "https://hooks.slack.example/services/T0/B0/x",
            ),
        ] {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
                ..Secret::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
        let mut apply = cp
            .kubectl()
            .args(["apply", "--server-side", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(kps_objects(&ns).as_bytes())
            .unwrap();
        let out = apply.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let logs = tempfile::tempdir().unwrap();
        let mut command = Command::new(test_harness::tools::prometheus_operator());
        command
            .env("KUBECONFIG", cp.kubeconfig_path())
            .arg(format!("--namespaces={ns}"))
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--kubelet-endpoints=false");
        let operator = ManagedProcess::spawn(
            "prometheus-operator",
            command,
            &logs.path().join("prometheus-operator.log"),
        )
        .expect("prometheus-operator starts");

        // `bare` first: prometheus-operator sees each kind's objects in the order they were
        // written, so a configuration that has `labelled`'s objects was made after `bare`'s
        // existed, and their absence from it is a decision, not a race.
        let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), &ns);
        for (name, labels) in [
            ("bare", BTreeMap::new()),
            (
                "labelled",
                BTreeMap::from([("release".to_owned(), KPS_RELEASE.to_owned())]),
            ),
        ] {
            clusters
                .create(&PostParams::default(), &cluster(name, &ns))
                .await
                .unwrap();
            let current = Arc::new(clusters.get(name).await.unwrap());
            reconcile(current, context(&client, labels))
                .await
                .expect("reconcile");
        }

        // Prometheus: scrape jobs for both ServiceMonitors of `labelled`, none of `bare`.
        let job = |name: &str| format!("serviceMonitor/{ns}/{name}/0");
        let config = secret_file(
            &secrets,
            "prometheus-kps",
            "prometheus.yaml.gz",
            &operator,
            |c| c.contains(&job("labelled")) && c.contains(&job("labelled-otel-collector")),
        )
        .await;
        assert!(!config.contains(&job("bare")), "{config}");
        assert!(!config.contains(&job("bare-otel-collector")), "{config}");

        // Prometheus: the rules of `labelled` in its rule files, none of `bare`.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let rule_files = wait_until("the rule files of Prometheus kps", &operator, || async {
            let cm = config_maps
                .get_opt("prometheus-kps-rulefiles-0")
                .await
                .ok()??;
            let data = cm.data?;
            data.keys().any(|k| k.contains("labelled")).then_some(data)
        })
        .await;
        let keys: Vec<&String> = rule_files.keys().collect();
        assert!(
            keys.iter().all(|k| !k.contains("bare")),
            "rules of the unlabelled cluster selected: {keys:?}"
        );
        let rules = rule_files.values().cloned().collect::<Vec<_>>().join("\n");
        for alert in ["ChatRedisDown", "ChatClusterDown", "ChatHighMessageLatency"] {
            assert!(rules.contains(alert), "{alert} missing from {keys:?}");
        }

        // Alertmanager: the routes of `labelled`'s AlertmanagerConfig, none of `bare`'s.
        let receiver = |name: &str| format!("{ns}/{name}/");
        let am = secret_file(
            &secrets,
            "alertmanager-kps-generated",
            "alertmanager.yaml.gz",
            &operator,
            |c| c.contains(&receiver("labelled")),
        )
        .await;
        assert!(!am.contains(&receiver("bare")), "{am}");
        drop(operator);
    })
    .await;
}
