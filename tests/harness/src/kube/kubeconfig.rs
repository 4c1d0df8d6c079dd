//! Kubeconfig files for the test control plane: the admin user, and impersonated users.

use std::path::Path;

use crate::Error;

/// Who a kubeconfig acts as, on top of the admin token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonation {
    /// The user name (`as:`), e.g. `system:serviceaccount:ns:name`.
    pub user: String,
    /// The groups (`as-groups:`).
    pub groups: Vec<String>,
}

impl Impersonation {
    /// The identity the API server gives ServiceAccount `name` in `namespace`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// Renders a kubeconfig (YAML; strings are JSON-quoted, which YAML reads as they are).
pub(crate) fn render(
    server: &str,
    ca_file: &Path,
    token: &str,
    impersonation: Option<&Impersonation>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut user = format!("    token: {}\n", q(token));
    if let Some(who) = impersonation {
        user.push_str(&format!("    as: {}\n", q(&who.user)));
        if !who.groups.is_empty() {
            user.push_str("    as-groups:\n");
            for group in &who.groups {
                user.push_str(&format!("    - {}\n", q(group)));
            }
        }
    }
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: chatcluster-test\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: chatcluster-test\n  \
           user:\n{user}\
         contexts:\n\
         - name: chatcluster-test\n  \
           context:\n    \
             cluster: chatcluster-test\n    \
             user: chatcluster-test\n    \
             namespace: default\n\
         current-context: chatcluster-test\n",
        server = q(server),
        ca = q(&ca_file.display().to_string()),
    )
}

/// Writes `content` to `path` readable only by the owner (it holds the admin token).
pub(crate) fn write_private(path: &Path, content: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        context: format!("write {}", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(content.as_bytes()).map_err(io)
}

/// Loads a kube-rs client configuration from a kubeconfig file.
pub(crate) async fn load_config(path: &Path) -> Result<kube::Config, Error> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::Other(format!("read kubeconfig {}: {e}", path.display())))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Other(format!("load kubeconfig {}: {e}", path.display())))
}
