//! A test process that holds a real node and is killed with SIGKILL leaves the host as it found
//! it: the node's watchdog tears everything down (containers, shims, mounts, cgroups, the
//! bridge, iptables/nftables, sysctls, files), as `host.sh fingerprint` shows before and after.
//! Its own test binary: it must not hold a node itself while its child starts one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use test_harness::node::{self, Cluster};

/// Waits until no node exists on this machine (the lock is free), up to `timeout`.
fn wait_for_no_node(timeout: Duration) {
    let status = Command::new("flock")
        .args([
            "-w",
            &timeout.as_secs().to_string(),
            node::LOCK_FILE,
            "true",
        ])
        .status()
        .expect("run flock");
    assert!(
        status.success(),
        "a node still holds {} after {timeout:?}",
        node::LOCK_FILE
    );
}

/// Child half of `a_killed_test_process_leaves_the_host_as_it_found_it`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper run by a_killed_test_process_leaves_the_host_as_it_found_it"]
async fn child_holds_a_node_until_killed() {
    if std::env::var_os("CHATCLUSTER_HARNESS_CHILD").is_none() {
        return;
    }
    let cluster = Cluster::shared().await;
    // A running pod, so that there are containers, shims, mounts and a veth to clean up.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sleeper\n  namespace: default\nspec:\n  containers:\n  - name: chat-node\n    image: {}\n",
        node::images::chat_node()
    );
    let mut apply = cluster
        .control_plane()
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), manifest.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success());
    let status = cluster
        .control_plane()
        .kubectl()
        .args([
            "wait",
            "--for=condition=Ready",
            "pod/sleeper",
            "--timeout=90s",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    println!("READY");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[test]
fn a_killed_test_process_leaves_the_host_as_it_found_it() {
    wait_for_no_node(Duration::from_secs(180));
    let before = node::host_fingerprint().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holds_a_node_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("CHATCLUSTER_HARNESS_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "READY");
    assert!(ready, "the child did not get a node with a running pod");
    let during = node::host_fingerprint().unwrap();
    assert_ne!(before, during, "a running node shows in the fingerprint");
    assert!(during.contains(node::BRIDGE), "{during}");

    child.kill().unwrap();
    child.wait().unwrap();
    wait_for_no_node(Duration::from_secs(120));
    let after = node::host_fingerprint().unwrap();
    if before != after {
        let log =
            std::fs::read_to_string(test_harness::tools::cache_dir().join("node-teardown.log"))
                .unwrap_or_default();
        panic!(
            "the host changed:\n--- before\n{before}\n--- after\n{after}\n--- teardown log\n{log}"
        );
    }
}
