//! The committed generated files equal what the code prints. Fix a failure with `make generate`.

use std::path::PathBuf;

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `make generate`", path.display()))
}

#[test]
fn crd_yaml_is_up_to_date() {
    let committed = repo_file(&format!("crds/{}", chat_operator::crd::CRD_FILE));
    assert!(
        committed == chat_operator::crd::crd_yaml().unwrap(),
        "crds/{} is stale: run `make generate`",
        chat_operator::crd::CRD_FILE
    );
}

#[test]
fn clusterrole_yaml_is_up_to_date() {
    let committed = repo_file(&format!(
        "config/rbac/{}",
        chat_operator::rbac::CLUSTER_ROLE_FILE
    ));
    assert!(
        committed == chat_operator::rbac::cluster_role_yaml().unwrap(),
        "config/rbac/{} is stale: run `make generate`",
        chat_operator::rbac::CLUSTER_ROLE_FILE
    );
}

#[test]
fn admission_policy_yaml_is_up_to_date() {
    let committed = repo_file(&format!(
        "config/admission/{}",
        chat_operator::admission::policy::POLICY_FILE
    ));
    assert!(
        committed == chat_operator::admission::policy::policy_yaml().unwrap(),
        "config/admission/{} is stale: run `make generate`",
        chat_operator::admission::policy::POLICY_FILE
    );
}
