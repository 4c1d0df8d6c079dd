//! Installing CustomResourceDefinitions the way a user does: `kubectl apply`, then wait for
//! the `Established` condition.

use std::path::Path;
use std::time::Duration;

use super::ControlPlane;
use crate::Error;

/// How long `install_crds` waits for the API server to serve a new CRD.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// Applies the CRD manifests (files or directories, server-side apply) and waits until
    /// every CRD in them is `Established`. Returns the CRD names. Applying the same files
    /// again is fine. Panics with kubectl's message on failure (see `try_install_crds`).
    pub async fn install_crds<P: AsRef<Path>>(&self, paths: &[P]) -> Vec<String> {
        match self.try_install_crds(paths).await {
            Ok(names) => names,
            Err(err) => panic!("test harness: install CRDs: {err}"),
        }
    }

    /// Fallible [`ControlPlane::install_crds`].
    pub async fn try_install_crds<P: AsRef<Path>>(
        &self,
        paths: &[P],
    ) -> Result<Vec<String>, Error> {
        let mut apply = tokio::process::Command::from(self.kubectl());
        apply.args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=chatcluster-test-harness",
            "-o",
            "name",
        ]);
        for path in paths {
            apply.arg("-f").arg(path.as_ref());
        }
        let names: Vec<String> = run(apply, "kubectl apply")
            .await?
            .lines()
            .filter(|line| line.starts_with("customresourcedefinition"))
            .map(|line| line.rsplit('/').next().unwrap_or(line).to_owned())
            .collect();
        if names.is_empty() {
            return Ok(names);
        }
        let mut wait = tokio::process::Command::from(self.kubectl());
        wait.args([
            "wait",
            "--for=condition=Established",
            &format!("--timeout={}s", ESTABLISHED_TIMEOUT.as_secs()),
        ]);
        for name in &names {
            wait.arg(format!("customresourcedefinition/{name}"));
        }
        run(wait, "kubectl wait --for=condition=Established").await?;
        Ok(names)
    }
}

async fn run(mut command: tokio::process::Command, what: &str) -> Result<String, Error> {
    let output = command.output().await.map_err(|source| Error::Spawn {
        program: what.to_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Other(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
