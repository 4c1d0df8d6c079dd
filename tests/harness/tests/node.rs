//! The real node (`test_harness::node::Cluster`): pods run from the images this repository
//! builds, as those images promise (non-root, entrypoint, read-only root filesystem, no shell);
//! probes, logs and exec work; cluster DNS answers only the cluster zone; Traefik routes an
//! Ingress to ready pods; nothing is forwarded off the node's bridge.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::node::{self, Cluster, images};

/// `kubectl ARGS` against the cluster, with `stdin` piped in when given.
fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = cluster.control_plane().kubectl();
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run kubectl");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("kubectl output")
}

fn kubectl_ok(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(cluster, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace for one test, deleted when dropped.
struct Namespace<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl<'a> Namespace<'a> {
    fn new(cluster: &'a Cluster, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        kubectl_ok(cluster, &["create", "namespace", &name], None);
        Self { cluster, name }
    }

    fn apply(&self, manifest: &str) {
        kubectl_ok(
            self.cluster,
            &["apply", "-n", &self.name, "-f", "-"],
            Some(manifest),
        );
    }

    fn wait_ready(&self, what: &str) {
        let out = kubectl(
            self.cluster,
            &[
                "wait",
                "-n",
                &self.name,
                "--for=condition=Ready",
                what,
                "--timeout=90s",
            ],
            None,
        );
        if !out.status.success() {
            let describe = kubectl(self.cluster, &["describe", "-n", &self.name, what], None);
            panic!(
                "{what} not Ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&describe.stdout)
            );
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&kubectl_ok(self.cluster, &all, None)).expect("kubectl json")
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = kubectl(
            self.cluster,
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
        );
    }
}

/// A pod of the Redis image that does nothing but wait (a small toolbox: sh, grep, redis-cli).
fn toolbox_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: redis
    image: {image}
    args: ["--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    readinessProbe:
      exec:
        command: ["sh", "-c", "redis-cli ping | grep -q PONG"]
      periodSeconds: 1
    securityContext:
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: data, mountPath: /data}}
  volumes:
  - {{name: data, emptyDir: {{}}}}
"#,
        image = images::REDIS
    )
}

/// A chat-node pod of the built image, labelled `app: <name>`, Ready through its own probe, with
/// the restricted security context (no runAsUser: the image's USER must satisfy runAsNonRoot).
fn chat_node_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  containers:
  - name: chat-node
    image: {image}
    ports:
    - {{name: ws, containerPort: 8080}}
    - {{name: admin, containerPort: 9091}}
    readinessProbe:
      httpGet: {{path: /readyz, port: admin}}
      periodSeconds: 1
    securityContext:
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
      seccompProfile: {{type: RuntimeDefault}}
"#,
        image = images::chat_node()
    )
}

/// The pid (on the host) of the first container of `pod`, through runc's state.
fn container_pid(namespace: &Namespace<'_>, pod: &str) -> u32 {
    let pod = namespace.json(&["get", "pod", pod]);
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .expect("containerID")
        .trim_start_matches("containerd://")
        .to_string();
    let state = Command::new("runc")
        .args([
            "--root",
            &format!("{}/runc/k8s.io", node::RUN_DIR),
            "state",
            &id,
        ])
        .output()
        .expect("runc state");
    let state: Value = serde_json::from_slice(&state.stdout).expect("runc state json");
    state["pid"].as_u64().expect("pid") as u32
}

fn proc_status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_node_pod_runs_as_its_image_promises() {
    let cluster = Cluster::shared().await;
    let ns = Namespace::new(cluster, "node-image");
    ns.apply(&chat_node_pod("chat"));
    ns.wait_ready("pod/chat");

    let pod = ns.json(&["get", "pod", "chat"]);
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["image"], images::chat_node());
    let built = cluster
        .images()
        .iter()
        .find(|i| i.reference == images::chat_node())
        .expect("the chat-node image was built");
    assert!(
        status["imageID"]
            .as_str()
            .unwrap_or_default()
            .contains(&built.config_digest)
            || status["imageID"]
                .as_str()
                .unwrap_or_default()
                .contains(&built.manifest_digest),
        "runs the image built from chat-node/Dockerfile: {status}"
    );
    assert!(
        pod["status"]["podIP"]
            .as_str()
            .unwrap()
            .starts_with("10.88.")
    );

    // The image's user (65532) and entrypoint, seen from the host.
    let pid = container_pid(&ns, "chat");
    assert_eq!(
        proc_status_field(pid, "Uid:").split_whitespace().next(),
        Some("65532")
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"/usr/local/bin/chat-node"),
        "{cmdline:?}"
    );

    // No shell in the image; exec of its own binary works (API server -> kubelet).
    let shell = kubectl(
        cluster,
        &["exec", "-n", &ns.name, "chat", "--", "sh", "-c", "true"],
        None,
    );
    assert!(!shell.status.success(), "the image has no shell");
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(
        stderr.contains("not found") || stderr.contains("no such file"),
        "{stderr}"
    );
    let help = kubectl_ok(
        cluster,
        &[
            "exec",
            "-n",
            &ns.name,
            "chat",
            "--",
            "/usr/local/bin/chat-node",
            "--help",
        ],
        None,
    );
    assert!(help.contains("--redis-url"), "{help}");
    // Its logs reach `kubectl logs` (JSON lines).
    let logs = kubectl_ok(cluster, &["logs", "-n", &ns.name, "chat"], None);
    assert!(logs.lines().any(|l| l.starts_with('{')), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_answers_the_cluster_zone_and_nothing_else() {
    let cluster = Cluster::shared().await;
    let dig = |name: &str| {
        let out = Command::new("dig")
            .args([&format!("@{}", node::DNS_IP), "+time=2", "+tries=3", name])
            .output()
            .expect("run dig (hack/setup.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answer = dig("kubernetes.default.svc.cluster.local");
    assert!(answer.contains("status: NOERROR"), "{answer}");
    assert!(answer.contains("10.96.0.1"), "{answer}");
    for outside in ["example.com", "registry-1.docker.io", "chatcluster-node"] {
        let answer = dig(outside);
        assert!(
            answer.contains("status: NXDOMAIN"),
            "{outside} must not be resolved: {answer}"
        );
    }

    // From a pod: its resolv.conf names only the cluster DNS, and a Service name resolves.
    let ns = Namespace::new(cluster, "node-dns");
    ns.apply(&toolbox_pod("tools"));
    ns.apply(&format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: store\nspec:\n  selector: {{app: store}}\n  ports:\n  - {{port: 6379}}\n",
        toolbox_pod("store").replacen("name: store\n", "name: store\n  labels: {app: store}\n", 1)
    ));
    ns.wait_ready("pod/tools");
    ns.wait_ready("pod/store");
    let resolv = kubectl_ok(
        cluster,
        &[
            "exec",
            "-n",
            &ns.name,
            "tools",
            "--",
            "grep",
            "nameserver",
            "/etc/resolv.conf",
        ],
        None,
    );
    assert_eq!(resolv.trim(), format!("nameserver {}", node::DNS_IP));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(
            cluster,
            &[
                "exec",
                "-n",
                &ns.name,
                "tools",
                "--",
                "redis-cli",
                "-h",
                "store",
                "ping",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim() == "PONG" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store.<ns>.svc not reachable by name: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_routes_an_ingress_to_a_ready_pod() {
    let cluster = Cluster::shared().await;
    let ns = Namespace::new(cluster, "node-ingress");
    ns.apply(&chat_node_pod("chat"));
    ns.apply(
        r#"apiVersion: v1
kind: Service
metadata:
  name: chat
spec:
  selector: {app: chat}
  ports:
  - {name: ws, port: 8080, targetPort: ws}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: chat
spec:
  ingressClassName: traefik
  rules:
  - host: node-ingress.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service: {name: chat, port: {name: ws}}
"#,
    );
    ns.wait_ready("pod/chat");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let last = match client
            .get(format!("{}/", cluster.ingress_url()))
            .header("Host", "node-ingress.test")
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => break response.text().await.unwrap(),
            Ok(response) => format!("HTTP {}", response.status()),
            Err(err) => err.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "Traefik did not route the Ingress: {last}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(page.contains("ChatCluster"), "the demo page: {page}");
    // Traefik publishes its address on the Ingress.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ingress = ns.json(&["get", "ingress", "chat"]);
        if ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no address on the Ingress: {}",
            ingress["status"]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Packets counted by the node's forwarding guard (mangle/FORWARD DROP rules).
fn guard_packets() -> u64 {
    let out = Command::new("iptables")
        .args(["-w", "-t", "mangle", "-L", "FORWARD", "-v", "-x", "-n"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DROP") && l.contains(node::BRIDGE))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_from_a_pod_is_forwarded_off_the_node() {
    let cluster = Cluster::shared().await;
    let ns = Namespace::new(cluster, "node-guard");
    ns.apply(&toolbox_pod("tools"));
    ns.wait_ready("pod/tools");
    let before = guard_packets();
    // A connection to an address off the machine (TEST-NET-2): the guard drops the SYN.
    let mut attempt = cluster.control_plane().kubectl();
    let mut attempt = attempt
        .args([
            "exec",
            "-n",
            &ns.name,
            "tools",
            "--",
            "redis-cli",
            "-h",
            "198.51.100.7",
            "-p",
            "9",
            "ping",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while guard_packets() == before {
        assert!(
            Instant::now() < deadline,
            "the forwarding guard saw no packet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still no answer: the packet went nowhere.
    assert!(
        attempt.try_wait().unwrap().is_none(),
        "the connection must not complete"
    );
    let _ = attempt.kill();
    let _ = attempt.wait();
}
