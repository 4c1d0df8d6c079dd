//! The demo page in headless Chromium (tests/browser, node's test runner + playwright-core)
//! against examples/basic.yaml in real pods, through Traefik at the address `make run` shows:
//! two pages on different pods chat, a deleted pod's page moves and recovers every message once,
//! the pages survive the Redis pod's deletion, and a page whose WebSockets are broken falls back
//! to SSE.

use std::process::Command;

use serde_json::json;

use crate::support::{env, hostless};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_in_chromium_through_traefik_from_real_pods() {
    let env = env().await;
    let _turn = hostless().await;
    let ns = env.namespace("e2e-browser");
    let ns = ns.name().to_owned();
    let example = test_harness::repo_root().join("examples/basic.yaml");
    env.kubectl
        .run(["apply", "-n", &ns, "-f", &example.display().to_string()])
        .unwrap();
    // A short drain, so that a page notices a deleted pod within seconds.
    env.kubectl
        .run([
            "patch",
            "chat",
            "demo",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &json!({"spec": {"node": {"drainTimeout": "3s"}}}).to_string(),
        ])
        .unwrap();
    // the patch rolls the pods: the pages must not land on pods that are about to go
    env.wait_chat_settled(&ns, "demo").await;

    let browser_dir = test_harness::repo_root().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: hack/setup.sh runs npm ci there"
    );
    let output = Command::new("node")
        .args(["--test", "--test-concurrency=1", "test/"])
        .current_dir(&browser_dir)
        .env("CHATCLUSTER_DEMO_URL", env.cluster.ingress_url())
        .env("CHATCLUSTER_NAMESPACE", &ns)
        .env("CHATCLUSTER_CHAT", "demo")
        .env("CHATCLUSTER_KUBECTL", test_harness::tools::kubectl())
        .env("KUBECONFIG", env.cluster.control_plane().kubeconfig_path())
        .output()
        .expect("run node (hack/setup.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("# pass") || l.starts_with("# fail"))
        .collect();
    eprintln!("browser: {}", summary.join(", "));
    assert!(
        output.status.success() && report.contains("# fail 0"),
        "the browser tests failed:\n{report}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        env.diagnostics(&ns)
    );
    env.delete_chat(&ns, "demo").await;
}
