//! Installing CustomResourceDefinitions the way a user does: `kubectl apply`, then wait for
//! the `Established` condition.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use super::ControlPlane;
use crate::Error;

/// How long `install_crds` waits for the API server to serve a new CRD.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// How often it looks.
const POLL: Duration = Duration::from_millis(100);

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
        // Polled through the API rather than `kubectl wait --for=condition=Established`, which
        // fails outright ("<nil> is of the type <nil>") when it reads a CRD whose status has
        // no conditions yet, i.e. right after the apply.
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        let deadline = tokio::time::Instant::now() + ESTABLISHED_TIMEOUT;
        for name in &names {
            loop {
                let established = crds
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|crd| crd.status)
                    .and_then(|status| status.conditions)
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Other(format!(
                        "CRD {name} not Established within {}s",
                        ESTABLISHED_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
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
