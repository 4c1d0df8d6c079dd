//! Driving the test control plane the way a user does: kubectl (1.36, from the harness), a
//! temporary namespace per test, the operator binary as a local process, and the one thing no
//! component here does — a kubelet marking pods Ready.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_harness::kube::ControlPlane;

/// A kubectl or operator step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A program could not be started.
    #[error("failed to start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// kubectl exited non-zero.
    #[error("`kubectl {args}` failed ({status}):\n{stderr}{stdout}")]
    Kubectl {
        args: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// kubectl printed something that is not the JSON asked for.
    #[error("`kubectl {args}` printed invalid JSON: {source}")]
    Json {
        args: String,
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be written or read.
    #[error("failed to access {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The shared test control plane of this test process (started on first use; its processes die
/// with the test process). The harness is async; these tests drive kubectl and Helm as
/// processes, so one small runtime, kept for the whole process, runs the harness.
pub fn control_plane() -> &'static ControlPlane {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    runtime.block_on(ControlPlane::shared())
}

/// The admin kubeconfig of the shared test control plane.
pub fn control_plane_kubeconfig() -> PathBuf {
    control_plane().kubeconfig_path().to_path_buf()
}

/// A kubeconfig that authenticates as the admin but impersonates ServiceAccount
/// `namespace/name` (with the groups a ServiceAccount token carries): every request is
/// authorized exactly as the ServiceAccount's would be.
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> PathBuf {
    control_plane().kubeconfig_for_service_account(namespace, name)
}

/// kubectl bound to one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl (the harness's, matching the control plane's version) for `kubeconfig`.
    pub fn new(kubeconfig: &Path) -> Self {
        Self {
            binary: test_harness::tools::kubectl(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// The kubeconfig this kubectl uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubectl command with KUBECONFIG set, ready for arguments.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        // Relative paths (examples/basic.yaml) resolve as in the README: from the repository root.
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(crate::repo_root());
        command
    }

    /// Runs kubectl; stdout on success, an error with stderr otherwise.
    pub fn run<I, S>(&self, args: I) -> Result<String, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `stdin` piped in (for `-f -`).
    pub fn run_with_stdin<I, S>(&self, args: I, stdin: Option<&str>) -> Result<String, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_error = |source| ClusterError::Spawn {
            program: format!("kubectl {shown}"),
            source,
        };
        let mut child = self
            .command()
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes()).map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        Err(ClusterError::Kubectl {
            args: shown,
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs kubectl with `-o json` appended and parses the result.
    pub fn json<I, S>(&self, args: I) -> Result<Value, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        args.push("-o".into());
        args.push("json".into());
        let out = self.run(&args)?;
        serde_json::from_str(&out).map_err(|source| ClusterError::Json {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            source,
        })
    }

    /// True when `kubectl get <args>` finds the object.
    pub fn exists(&self, args: &[&str]) -> bool {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--ignore-not-found", "-o", "name"]);
        self.run(&all).is_ok_and(|out| !out.trim().is_empty())
    }
}

/// A namespace deleted again when dropped (also on panic).
pub struct TempNamespace {
    kubectl: Kubectl,
    name: String,
}

impl TempNamespace {
    /// Creates `<prefix>-<unique suffix>`.
    pub fn create(kubectl: &Kubectl, prefix: &str) -> Result<Self, ClusterError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(kubectl, &name)
    }

    /// Creates (or adopts) the namespace `name`.
    pub fn create_named(kubectl: &Kubectl, name: &str) -> Result<Self, ClusterError> {
        let manifest = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        kubectl.run_with_stdin(["apply", "-f", "-"], Some(&manifest.to_string()))?;
        Ok(Self {
            kubectl: kubectl.clone(),
            name: name.to_string(),
        })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = self.kubectl.run([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Plays kubelet for readiness: every pod in `namespace` matching `selector` that is not Ready
/// gets `phase: Running` and `Ready`/`ContainersReady` conditions through the status
/// subresource. The Deployment/StatefulSet controllers then compute ready replicas as usual.
/// Returns how many pods it marked.
pub fn mark_pods_ready(
    kubectl: &Kubectl,
    namespace: &str,
    selector: &str,
) -> Result<usize, ClusterError> {
    let pods = kubectl.json(["get", "pods", "-n", namespace, "-l", selector])?;
    let mut marked = 0;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if ready || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let now = "2026-01-01T00:00:00Z";
        let condition =
            |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                    "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}
                })
            })
            .collect();
        let patch = json!({"status": {
            "phase": "Running",
            "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
            "containerStatuses": containers,
        }});
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        // A pod replaced meanwhile is not an error: the next round marks its successor.
        if kubectl
            .run([
                "patch",
                "pod",
                name,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .is_ok()
        {
            marked += 1;
        }
    }
    Ok(marked)
}

/// The operator binary built by `cargo build` (hack/test.sh builds every binary first).
pub fn operator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    let path = target.join("debug/chat-operator");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p chat-operator` first (make test does)",
        path.display()
    );
    path
}

/// `chat-operator run` as a local process; killed when dropped (also on panic).
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OperatorProcess {
    /// Starts the operator with `kubeconfig` and extra `CHAT_OPERATOR_*` settings; the admin
    /// server on a free loopback port; logs as text into a file.
    pub fn start(kubeconfig: &Path, env: &[(&str, &str)]) -> Result<Self, ClusterError> {
        let dir = tempfile::tempdir().map_err(|source| ClusterError::File {
            path: std::env::temp_dir(),
            source,
        })?;
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).map_err(|source| ClusterError::File {
            path: log.clone(),
            source,
        })?;
        let stderr = file.try_clone().map_err(|source| ClusterError::File {
            path: log.clone(),
            source,
        })?;
        let mut command = Command::new(operator_binary());
        command
            .arg("run")
            .env("KUBECONFIG", kubeconfig)
            .env("CHAT_OPERATOR_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CHAT_OPERATOR_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env("CHAT_OPERATOR_BACKOFF_BASE", "200ms")
            .env("CHAT_OPERATOR_BACKOFF_MAX", "2s")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().map_err(|source| ClusterError::Spawn {
            program: "chat-operator run".into(),
            source,
        })?;
        Ok(Self {
            child,
            log,
            _dir: dir,
        })
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the operator like the kubelet does: SIGTERM (it releases its Lease on the way out),
    /// SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
