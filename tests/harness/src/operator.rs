//! `chat-operator run` as a local process (outside the cluster), for tests that need the
//! operator under an impersonated identity rather than as a pod.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kubectl::KubectlError;

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
    pub fn start(kubeconfig: &Path, env: &[(&str, &str)]) -> Result<Self, KubectlError> {
        let dir = tempfile::tempdir().map_err(|source| KubectlError::File {
            path: std::env::temp_dir(),
            source,
        })?;
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log).map_err(|source| KubectlError::File {
            path: log.clone(),
            source,
        })?;
        let stderr = file.try_clone().map_err(|source| KubectlError::File {
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
        let child = command.spawn().map_err(|source| KubectlError::Spawn {
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
