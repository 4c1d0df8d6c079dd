//! What `helm rollback` does to the ChatCluster CRD, against the real API server (API-only control
//! plane: the operator's pods never run, only the CRD is looked at), as docs/helm.md says:
//! 1. install a previous chart (its CRD lacks `spec.imagePolicy`), upgrade to this chart (the CRD
//!    gains it), then `helm rollback`: Helm re-applies the CRD stored with the old revision, so the
//!    rollback **downgrades the CRD** (it does not re-render templates, so the chart cannot
//!    prevent it);
//! 2. the documented way back to an older operator that keeps the newer CRD: `helm upgrade` to the
//!    older chart with `crds.create=false`. The CRD keeps the newer schema (the keep policy stops
//!    Helm from deleting it), and a later upgrade with `crds.create=true` takes it over again.

use std::path::{Path, PathBuf};
use std::process::Command;

use chart_tests::chart_dir;
use chart_tests::cluster::control_plane_kubeconfig;
use serde_json::Value;
use test_harness::helm::Helm;
use test_harness::kubectl::{Kubectl, TempNamespace};

const CRD: &str = "chatclusters.realtime.dev";
const PREVIOUS_VERSION: &str = "0.0.1";
/// A field of this chart's CRD that the "previous" chart's CRD lacks.
const NEW_FIELD: &str = "imagePolicy";

/// This chart as version 0.0.1 whose CRD lacks `spec.imagePolicy`.
fn previous_chart(scratch: &Path) -> PathBuf {
    let dir = scratch.join("chat-operator");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(chart_dir())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let chart_yaml = std::fs::read_to_string(dir.join("Chart.yaml")).unwrap();
    let chart_yaml: Vec<String> = chart_yaml
        .lines()
        .map(|l| match l {
            l if l.starts_with("version:") => format!("version: {PREVIOUS_VERSION}"),
            l if l.starts_with("appVersion:") => format!("appVersion: \"{PREVIOUS_VERSION}\""),
            l => l.to_owned(),
        })
        .collect();
    std::fs::write(dir.join("Chart.yaml"), chart_yaml.join("\n")).unwrap();
    let spec_path = dir.join(format!("files/crds/{CRD}.spec.yaml"));
    let mut spec: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    let removed = spec["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]
        .as_object_mut()
        .expect("spec properties")
        .remove(NEW_FIELD);
    assert!(removed.is_some(), "this chart's CRD has spec.{NEW_FIELD}");
    std::fs::write(&spec_path, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    dir
}

/// Whether the stored CRD declares `spec.imagePolicy`.
fn crd_has_new_field(kubectl: &Kubectl) -> bool {
    let crd = kubectl
        .json(["get", "crd", CRD, "-o", "json"])
        .expect("the CRD exists");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        .get(NEW_FIELD)
        .is_some()
}

#[test]
fn rollback_downgrades_the_crd_and_an_upgrade_without_crds_does_not() {
    let kubeconfig = control_plane_kubeconfig();
    let kubectl = Kubectl::new(&kubeconfig);
    let helm = Helm::with_kubeconfig(&kubeconfig).expect("helm home");
    let ns = TempNamespace::create(&kubectl, "rollback").expect("namespace");
    let scratch = tempfile::tempdir().unwrap();
    let previous = previous_chart(scratch.path());
    let current = chart_dir();
    let helm_run = |args: &[&str]| {
        helm.run(args.iter().copied())
            .unwrap_or_else(|e| panic!("helm {args:?}: {e}"))
    };
    let release = |verb: &str, chart: &Path, extra: &[&str]| {
        let mut args = vec![
            verb,
            "chat-operator",
            chart.to_str().unwrap(),
            "--namespace",
            ns.name(),
        ];
        args.extend_from_slice(extra);
        helm_run(&args)
    };

    release("install", &previous, &[]);
    assert!(!crd_has_new_field(&kubectl), "the previous chart's CRD");
    release("upgrade", &current, &[]);
    assert!(crd_has_new_field(&kubectl), "helm upgrade updates the CRD");

    // 1. helm rollback re-applies revision 1's manifest, its CRD included.
    helm_run(&["rollback", "chat-operator", "1", "--namespace", ns.name()]);
    assert!(
        !crd_has_new_field(&kubectl),
        "helm rollback re-applies the old revision's CRD (docs/helm.md says so)"
    );

    // 2. Back to this chart, then to the older operator without touching the CRD.
    release("upgrade", &current, &[]);
    assert!(crd_has_new_field(&kubectl));
    release(
        "upgrade",
        &previous,
        &["--reset-then-reuse-values", "--set", "crds.create=false"],
    );
    assert!(
        crd_has_new_field(&kubectl),
        "an upgrade to the older chart with crds.create=false keeps the newer CRD"
    );
    let deployment = kubectl
        .json([
            "get",
            "deployment",
            "chat-operator",
            "-n",
            ns.name(),
            "-o",
            "json",
        ])
        .expect("the operator Deployment");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.ends_with(&format!(":{PREVIOUS_VERSION}")),
        "the older operator runs: {image}"
    );
    // The CRD is still there, and this chart takes it over again.
    release("upgrade", &current, &["--set", "crds.create=true"]);
    assert!(crd_has_new_field(&kubectl));
    helm_run(&["uninstall", "chat-operator", "--namespace", ns.name()]);
    assert!(
        kubectl.exists(&["crd", CRD]),
        "the CRD outlives the release"
    );
}
