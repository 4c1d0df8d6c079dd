//! Rendered chart objects and the GitOps examples against the real API server (its own control
//! plane: this test binary is its own process).
//!
//! - `helm template` output, with the defaults and with every option on, is accepted by
//!   `kubectl apply --dry-run=server` (the ServiceMonitor against prometheus-operator's real CRD);
//! - every `examples/*.yaml` and the kustomize base and overlay are applied for real, with
//!   server-side apply, and a second `kubectl diff --server-side` finds nothing;
//! - the Argo CD Applications and Flux objects are applied (server-side) against those projects'
//!   real CRDs (fetched from their Go modules by hack/setup.d/61-gitops-crds.sh); Argo CD and Flux
//!   themselves do not run here, so what they would do is checked another way: the paths they
//!   point at exist and build (`helm template` with the Application's values, `kubectl
//!   kustomize`) and are applied for real by the tests above and in lifecycle.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chart_tests::cluster::control_plane_kubeconfig;
use chart_tests::manifests::{all_of_kind, kind, name, one_of_kind, parse_documents};
use chart_tests::{chart_dir, repo_path, repo_root};
use serde_json::Value;
use test_harness::helm::Helm;
use test_harness::kubectl::{Kubectl, TempNamespace};
use test_harness::wait::wait_for;

const OVERLAY: &str = "examples/kustomize/overlays/production";
const BASE: &str = "examples/kustomize/base";

fn kubectl() -> Kubectl {
    Kubectl::new(&control_plane_kubeconfig())
}

fn install_crd(kubectl: &Kubectl, path: &Path, name: &str) {
    kubectl
        .run([
            "apply".as_ref(),
            "--server-side".as_ref(),
            "--force-conflicts".as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    // Polled rather than `kubectl wait`, which fails when the CRD has no status yet.
    wait_for(
        Duration::from_secs(60),
        &format!("CRD {name} Established"),
        || {
            let crd = kubectl.json(["get", "crd", name]).ok()?;
            crd["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// prometheus-operator's ServiceMonitor CRD (v0.93.0, as released; see testdata/README.md).
fn service_monitor_crd() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/prometheus-operator-v0.93.0/monitoring.coreos.com_servicemonitors.yaml")
}

#[test]
fn rendered_chart_is_accepted_by_the_api_server() {
    let kubectl = kubectl();
    install_crd(
        &kubectl,
        &service_monitor_crd(),
        "servicemonitors.monitoring.coreos.com",
    );
    let all_options = chart_dir().join("ci/all-options-values.yaml");
    let all_options = all_options.to_str().unwrap();
    for (label, extra) in [
        ("defaults", vec![]),
        ("every option on", vec!["-f", all_options]),
    ] {
        let ns = TempNamespace::create(&kubectl, "render").expect("namespace");
        let mut args = extra;
        // A watched namespace must exist for its Role to be accepted: watch the test's own.
        let watch = format!("operator.watchNamespace={}", ns.name());
        let watch_list = format!("operator.watchNamespaces={{{}}}", ns.name());
        if !args.is_empty() {
            args.extend(["--set", watch.as_str(), "--set", watch_list.as_str()]);
        }
        let yaml = Helm::new()
            .unwrap()
            .template("chat-operator", &chart_dir(), ns.name(), &args)
            .unwrap_or_else(|e| panic!("{e}"));
        let objects = parse_documents(&yaml).unwrap();
        let out = kubectl
            .run_with_stdin(["apply", "--dry-run=server", "-f", "-"], Some(&yaml))
            .unwrap_or_else(|e| {
                panic!("{label}: the API server rejected the chart's objects: {e}")
            });
        // Every rendered object was sent and accepted.
        for object in &objects {
            let shown = format!("{} ({} dry run)", name(object), "server");
            assert!(
                out.lines()
                    .any(|l| l.contains(name(object)) && l.contains("(server dry run)")),
                "{label}: {} {shown} not accepted:\n{out}",
                kind(object)
            );
        }
    }
}

/// Applies with server-side apply, then checks that `kubectl diff --server-side` finds nothing.
fn apply_twice_without_diff(kubectl: &Kubectl, args: &[&str]) {
    let mut apply = vec!["apply", "--server-side"];
    apply.extend_from_slice(args);
    kubectl.run(&apply).unwrap_or_else(|e| panic!("{e}"));
    let mut diff = vec!["diff", "--server-side"];
    diff.extend_from_slice(args);
    kubectl
        .run(&diff)
        .unwrap_or_else(|e| panic!("a diff right after applying {args:?}:\n{e}"));
}

#[test]
fn examples_apply_and_leave_no_diff() {
    let kubectl = kubectl();
    install_crd(
        &kubectl,
        &repo_path("crds/chatclusters.realtime.dev.yaml"),
        "chatclusters.realtime.dev",
    );

    // Every plain example.
    let ns = TempNamespace::create(&kubectl, "examples").expect("namespace");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.iter().any(|p| p.ends_with("basic.yaml")),
        "examples/basic.yaml is missing"
    );
    for example in &examples {
        let relative = example.strip_prefix(repo_root()).unwrap().to_str().unwrap();
        apply_twice_without_diff(&kubectl, &["-n", ns.name(), "-f", relative]);
    }

    // The kustomize base, into a namespace of ours.
    let base_ns = TempNamespace::create(&kubectl, "kustomize-base").expect("namespace");
    apply_twice_without_diff(&kubectl, &["-n", base_ns.name(), "-k", BASE]);
    let chat = kubectl
        .json(["get", "chatcluster", "chat", "-n", base_ns.name()])
        .unwrap();
    assert_eq!(chat["spec"]["replicas"], 2);
    assert_eq!(
        chat["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "chatcluster"
    );

    // The production overlay brings its own namespace.
    let built = kubectl
        .run(["kustomize", OVERLAY])
        .unwrap_or_else(|e| panic!("{e}"));
    let objects = parse_documents(&built).unwrap();
    let overlay_ns = one_of_kind(&objects, "Namespace")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let _cleanup = TempNamespace::create_named(&kubectl, &overlay_ns).expect("namespace");
    apply_twice_without_diff(&kubectl, &["-k", OVERLAY]);
    let chat = kubectl
        .json(["get", "chatcluster", "chat", "-n", &overlay_ns])
        .unwrap();
    assert_eq!(chat["spec"]["replicas"], 4, "the overlay's patch applies");
    assert_eq!(chat["spec"]["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(chat["metadata"]["labels"]["environment"], "production");
    assert_eq!(
        chat["spec"]["redis"]["mode"], "managed",
        "the base's spec is kept"
    );
}

/// A CRD fetched by hack/setup.d/61-gitops-crds.sh.
fn gitops_crd(file: &str) -> PathBuf {
    let dir = std::env::var_os("CHATCLUSTER_GITOPS_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("CHATCLUSTER_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/chatcluster")
                });
            cache.join("gitops-crds-argocd-v3.6.1-flux-v1.9.0-v1.9.0")
        });
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: run hack/setup.d/61-gitops-crds.sh (make test does)",
        path.display()
    );
    path
}

/// Applies each file (server-side, for real) into the namespace its objects name, which the test
/// creates and removes; then `kubectl diff` finds nothing.
fn apply_against_real_crds(kubectl: &Kubectl, files: &[&str], namespace: &str) {
    let _ns = TempNamespace::create_named(kubectl, namespace).expect("namespace");
    for relative in files {
        apply_twice_without_diff(kubectl, &["-f", relative]);
        for object in read_objects(relative) {
            let kind = kind(&object).to_lowercase();
            assert!(
                kubectl.exists(&[&kind, name(&object), "-n", namespace]),
                "{kind} {} not stored",
                name(&object)
            );
        }
    }
}

fn read_objects(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_path(relative)).unwrap();
    parse_documents(&text).unwrap()
}

fn sync_options(app: &Value) -> Vec<&str> {
    app["spec"]["syncPolicy"]["syncOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The Applications are accepted by Argo CD's real Application CRD (v3.6.1). Argo CD does not
/// run here, so what it would sync is checked instead: what each Application points at exists
/// and renders — the chart with the Application's own values, the overlay with `kubectl kustomize`.
#[test]
fn argocd_applications_are_valid_and_point_at_what_renders() {
    let kubectl = kubectl();
    install_crd(
        &kubectl,
        &gitops_crd("application-crd.yaml"),
        "applications.argoproj.io",
    );
    apply_against_real_crds(
        &kubectl,
        &[
            "examples/argocd/chat-operator.yaml",
            "examples/argocd/chatcluster-production.yaml",
        ],
        "argocd",
    );
    let operator = read_objects("examples/argocd/chat-operator.yaml");
    let operator = one_of_kind(&operator, "Application");
    let clusters = read_objects("examples/argocd/chatcluster-production.yaml");
    let clusters = one_of_kind(&clusters, "Application");
    for app in [operator, clusters] {
        assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
        for field in ["project", "source", "destination"] {
            assert!(
                !app["spec"][field].is_null(),
                "{}: spec.{field} is required",
                name(app)
            );
        }
        assert!(app["spec"]["source"]["repoURL"].is_string());
        assert!(app["spec"]["destination"]["server"].is_string());
        assert!(
            sync_options(app).contains(&"ServerSideApply=true"),
            "{}: server-side apply avoids client-side drift",
            name(app)
        );
        let path = app["spec"]["source"]["path"].as_str().unwrap();
        assert!(
            repo_path(path).is_dir(),
            "{}: {path} does not exist",
            name(app)
        );
    }

    // The operator Application: the chart, rendered with its valuesObject.
    assert_eq!(operator["spec"]["source"]["path"], "charts/chat-operator");
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        values.path(),
        serde_json::to_string(&operator["spec"]["source"]["helm"]["valuesObject"]).unwrap(),
    )
    .unwrap();
    let release = operator["spec"]["source"]["helm"]["releaseName"]
        .as_str()
        .unwrap();
    let namespace = operator["spec"]["destination"]["namespace"]
        .as_str()
        .unwrap();
    let yaml = Helm::new()
        .unwrap()
        .template(
            release,
            &chart_dir(),
            namespace,
            &["-f", values.path().to_str().unwrap()],
        )
        .unwrap_or_else(|e| panic!("the Application's values do not render: {e}"));
    assert!(!all_of_kind(&parse_documents(&yaml).unwrap(), "Deployment").is_empty());
    assert!(sync_options(operator).contains(&"CreateNamespace=true"));
    // The operator (and CRD) sync before the ChatClusters.
    let wave = |app: &Value| {
        app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap_or("0")
            .parse::<i32>()
            .unwrap()
    };
    assert!(wave(operator) < wave(clusters));

    // The ChatCluster Application: the overlay builds, and its namespace is the destination.
    let path = clusters["spec"]["source"]["path"].as_str().unwrap();
    let built = kubectl
        .run(["kustomize", path])
        .unwrap_or_else(|e| panic!("{e}"));
    let objects = parse_documents(&built).unwrap();
    assert_eq!(
        one_of_kind(&objects, "Namespace")["metadata"]["name"],
        clusters["spec"]["destination"]["namespace"]
    );
    assert!(!all_of_kind(&objects, "ChatCluster").is_empty());
}

/// The Flux objects are accepted by Flux's real CRDs (source-controller and kustomize-controller
/// v1.9.0). Flux does not run here, so what it would do is checked instead: the Kustomization's
/// source is the GitRepository, its path exists, is not ignored by the source, and builds with
/// `kubectl kustomize`; `wait: true` makes Flux check ChatCluster health through kstatus (proven
/// with `kubectl wait` in lifecycle.rs).
#[test]
fn flux_objects_are_valid_and_point_at_what_builds() {
    let kubectl = kubectl();
    install_crd(
        &kubectl,
        &gitops_crd("source.toolkit.fluxcd.io_gitrepositories.yaml"),
        "gitrepositories.source.toolkit.fluxcd.io",
    );
    install_crd(
        &kubectl,
        &gitops_crd("kustomize.toolkit.fluxcd.io_kustomizations.yaml"),
        "kustomizations.kustomize.toolkit.fluxcd.io",
    );
    apply_against_real_crds(
        &kubectl,
        &[
            "examples/flux/gitrepository.yaml",
            "examples/flux/chatcluster-kustomization.yaml",
        ],
        "flux-system",
    );
    let source = read_objects("examples/flux/gitrepository.yaml");
    let source = one_of_kind(&source, "GitRepository");
    let sync = read_objects("examples/flux/chatcluster-kustomization.yaml");
    let sync = one_of_kind(&sync, "Kustomization");
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(sync["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
    assert!(source["spec"]["url"].is_string() && source["spec"]["interval"].is_string());
    for field in ["interval", "sourceRef", "prune"] {
        assert!(
            !sync["spec"][field].is_null(),
            "Kustomization spec.{field} is required"
        );
    }
    assert_eq!(sync["spec"]["sourceRef"]["kind"], "GitRepository");
    assert_eq!(
        sync["spec"]["sourceRef"]["name"],
        source["metadata"]["name"]
    );
    assert_eq!(
        sync["metadata"]["namespace"],
        source["metadata"]["namespace"]
    );
    assert_eq!(
        sync["spec"]["wait"], true,
        "Flux waits for ChatClusters to be Ready"
    );
    let path = sync["spec"]["path"]
        .as_str()
        .unwrap()
        .trim_start_matches("./");
    assert!(repo_path(path).is_dir(), "{path} does not exist");
    let ignore = source["spec"]["ignore"].as_str().unwrap_or_default();
    assert!(
        ignore.lines().any(|l| l.trim() == "!/examples/kustomize/"),
        "the GitRepository ignores the folder the Kustomization applies"
    );
    kubectl
        .run(["kustomize", path])
        .unwrap_or_else(|e| panic!("{e}"));
    let timeout = sync["spec"]["timeout"].as_str().unwrap_or("5m");
    assert!(timeout.ends_with('m') || timeout.ends_with('s'));
}
