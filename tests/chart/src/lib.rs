//! Helpers for the chart tests: run the real Helm, Lua and kubectl on the chart and the examples.
//!
//! The tests live in `tests/`: `render.rs` (lint, template, schema, generated files),
//! `lua_health.rs` (the Argo CD health check on synthetic status objects), `gitops.rs` (rendered
//! objects and the GitOps examples against the API server), `rbac.rs` (the ClusterRole is
//! exactly enough, against the API server) and `lifecycle.rs` (the operator installed by Helm
//! running as pods on the real node: health check, upgrade, uninstall).

pub mod cluster;
pub mod lua;
pub mod manifests;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// The chart folder, `charts/chat-operator`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/chat-operator")
}

/// A path relative to the repository root.
pub fn repo_path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}
