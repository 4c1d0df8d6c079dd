//! The real Helm (built from Go modules by hack/setup.d, found through the test harness), run
//! with private config/cache/data folders so tests never touch the user's Helm state.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// A Helm command failed.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// Helm could not be started.
    #[error("failed to start helm ({path}): {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Helm exited non-zero.
    #[error("`helm {args}` failed ({status}):\n{stderr}{stdout}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// A private Helm home could not be created.
    #[error("failed to create a Helm home: {0}")]
    Home(#[source] std::io::Error),
}

/// A Helm runner with its own home folders and, optionally, a kubeconfig.
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// Helm without a cluster (lint, template, package).
    pub fn new() -> Result<Self, HelmError> {
        Ok(Self {
            binary: crate::tools::helm(),
            home: TempDir::new().map_err(HelmError::Home)?,
            kubeconfig: None,
        })
    }

    /// Helm talking to the cluster of `kubeconfig`.
    pub fn with_kubeconfig(kubeconfig: &Path) -> Result<Self, HelmError> {
        let mut helm = Self::new()?;
        helm.kubeconfig = Some(kubeconfig.to_path_buf());
        Ok(helm)
    }

    /// Helm 4 talking to the cluster of `kubeconfig`.
    pub fn v4_with_kubeconfig(kubeconfig: &Path) -> Result<Self, HelmError> {
        let mut helm = Self::with_kubeconfig(kubeconfig)?;
        helm.binary = crate::tools::helm4();
        Ok(helm)
    }

    /// The Helm command, with its environment set, ready for arguments.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        let home = self.home.path();
        command
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT");
        match &self.kubeconfig {
            Some(path) => command.env("KUBECONFIG", path),
            None => command.env("KUBECONFIG", home.join("no-cluster")),
        };
        command
    }

    /// Runs Helm and returns its output, whether it succeeded or not.
    pub fn output<I, S>(&self, args: I) -> Result<Output, HelmError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command()
            .args(args)
            .output()
            .map_err(|source| HelmError::Spawn {
                path: self.binary.clone(),
                source,
            })
    }

    /// Runs Helm and returns its stdout; an error (with stderr) when it exits non-zero.
    pub fn run<I, S>(&self, args: I) -> Result<String, HelmError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let output = self.output(&args)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        Err(HelmError::Failed {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// `helm template <release> <chart> -n <namespace> <extra...>`: the rendered manifests.
    pub fn template(
        &self,
        release: &str,
        chart: &Path,
        namespace: &str,
        extra: &[&str],
    ) -> Result<String, HelmError> {
        let mut args: Vec<&OsStr> = vec![
            "template".as_ref(),
            release.as_ref(),
            chart.as_os_str(),
            "--namespace".as_ref(),
            namespace.as_ref(),
        ];
        args.extend(extra.iter().map(|a| OsStr::new(*a)));
        self.run(args)
    }
}
