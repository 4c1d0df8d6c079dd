//! Driving a cluster the way a user does: kubectl (1.36, from the harness) bound to one
//! kubeconfig, and a temporary namespace per test.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// A kubectl or operator step failed.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
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
            binary: crate::tools::kubectl(),
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
    pub fn run<I, S>(&self, args: I) -> Result<String, KubectlError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_stdin(args, None)
    }

    /// Runs kubectl with `stdin` piped in (for `-f -`).
    pub fn run_with_stdin<I, S>(&self, args: I, stdin: Option<&str>) -> Result<String, KubectlError>
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
        let spawn_error = |source| KubectlError::Spawn {
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
        Err(KubectlError::Kubectl {
            args: shown,
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs kubectl with `-o json` appended and parses the result.
    pub fn json<I, S>(&self, args: I) -> Result<Value, KubectlError>
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
        serde_json::from_str(&out).map_err(|source| KubectlError::Json {
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
    pub fn create(kubectl: &Kubectl, prefix: &str) -> Result<Self, KubectlError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(kubectl, &name)
    }

    /// Creates (or adopts) the namespace `name`.
    pub fn create_named(kubectl: &Kubectl, name: &str) -> Result<Self, KubectlError> {
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
