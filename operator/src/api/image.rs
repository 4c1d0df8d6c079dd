//! Which chat-node image a ChatCluster runs, and why upgrading the operator does not change it.
//!
//! A ChatCluster without `spec.image` gets the operator's default chat-node image. Re-reading
//! that default on every reconcile (as an operator built with its own version as the default
//! would) means that `helm upgrade` of the operator rewrites every such cluster's pod template
//! and rolls every user's chat nodes, dropping all their WebSocket connections, although the
//! user changed nothing. So, as CloudNativePG records the image it resolved in `status.image`,
//! the operator resolves the default **once**, records it in `status.nodeImage`, and keeps
//! using it ([`ImagePolicy::Pinned`], the default). The image moves only when the user asks:
//! by setting `spec.image`, or by `spec.imagePolicy: followOperator`, under which the cluster
//! always runs the operator's current default (and rolls when the operator is upgraded).
//!
//! The recorded image must survive the loss of status (a backup restored without it, a
//! ChatCluster re-created by a GitOps tool with the same children, or an operator version that
//! did not record it yet): then the image the existing chat-node Deployment runs is kept.
//! Nothing is ever written into `spec` (that would be a perpetual GitOps diff).

use serde::{Deserialize, Serialize};

use super::ChatCluster;

/// Repository of the chat-node image.
pub const NODE_IMAGE_REPOSITORY: &str = "ghcr.io/chatcluster/chat-node";

/// The chat-node image this operator build defaults to: the one of its own version. The
/// `--default-node-image` flag overrides it (mirrors, air-gapped registries, digests).
pub fn default_node_image() -> String {
    format!("{NODE_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// When a ChatCluster without `spec.image` moves to a new default chat-node image.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum ImagePolicy {
    /// Keep the image resolved when the cluster was first reconciled (`status.nodeImage`), even
    /// when the operator is upgraded to one with another default. Default.
    #[default]
    #[serde(rename = "pinned")]
    Pinned,
    /// Always run the operator's current default: upgrading the operator rolls the chat nodes.
    #[serde(rename = "followOperator")]
    FollowOperator,
}

/// Where the resolved chat-node image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `spec.image`.
    Spec,
    /// The operator's default, under `spec.imagePolicy: followOperator`.
    FollowOperator,
    /// `status.nodeImage`, recorded by an earlier reconcile.
    Recorded,
    /// The image the existing chat-node Deployment runs (status was lost or never recorded).
    Running,
    /// The operator's default, for a cluster that runs no chat-node yet.
    NewCluster,
}

/// The chat-node image to run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image reference.
    pub image: String,
    /// Where it came from.
    pub source: ImageSource,
}

/// True when resolving the image of `cluster` needs the image its Deployment runs (so the
/// reconciler reads the Deployment only when it must).
pub fn needs_running_image(cluster: &ChatCluster) -> bool {
    cluster.spec.image.is_none()
        && cluster.spec.image_policy() == ImagePolicy::Pinned
        && recorded(cluster).is_none()
}

fn recorded(cluster: &ChatCluster) -> Option<&str> {
    cluster
        .status
        .as_ref()?
        .node_image
        .as_deref()
        .filter(|i| !i.is_empty())
}

/// Resolves the chat-node image of `cluster`: `spec.image`; else, under `followOperator`, the
/// operator's default; else the recorded image; else the `running` one (the chat-node image of
/// the existing Deployment, if any); else (a new cluster) the operator's default.
pub fn resolve(cluster: &ChatCluster, running: Option<&str>, default: &str) -> ResolvedImage {
    let (image, source) = if let Some(image) = &cluster.spec.image {
        (image.clone(), ImageSource::Spec)
    } else if cluster.spec.image_policy() == ImagePolicy::FollowOperator {
        (default.to_string(), ImageSource::FollowOperator)
    } else if let Some(image) = recorded(cluster) {
        (image.to_string(), ImageSource::Recorded)
    } else if let Some(image) = running.filter(|i| !i.is_empty()) {
        (image.to_string(), ImageSource::Running)
    } else {
        (default.to_string(), ImageSource::NewCluster)
    };
    ResolvedImage { image, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChatClusterSpec, ChatClusterStatus};

    const OLD: &str = "registry.example/chat-node:1.0.0";
    const NEW: &str = "registry.example/chat-node:2.0.0";

    fn cluster(
        image: Option<&str>,
        policy: Option<ImagePolicy>,
        recorded: Option<&str>,
    ) -> ChatCluster {
        let mut c = ChatCluster::new(
            "demo",
            ChatClusterSpec {
                image: image.map(str::to_string),
                image_policy: policy,
                ..ChatClusterSpec::default()
            },
        );
        c.status = recorded.map(|i| ChatClusterStatus {
            node_image: Some(i.into()),
            ..ChatClusterStatus::default()
        });
        c
    }

    #[test]
    fn a_new_cluster_gets_the_operators_default() {
        let r = resolve(&cluster(None, None, None), None, NEW);
        assert_eq!(r.image, NEW);
        assert_eq!(r.source, ImageSource::NewCluster);
        assert!(needs_running_image(&cluster(None, None, None)));
    }

    #[test]
    fn a_recorded_image_survives_a_new_operator_default() {
        let c = cluster(None, None, Some(OLD));
        let r = resolve(&c, Some(NEW), NEW);
        assert_eq!(
            r.image, OLD,
            "an operator upgrade must not roll the chat nodes"
        );
        assert_eq!(r.source, ImageSource::Recorded);
        assert!(!needs_running_image(&c));
    }

    #[test]
    fn without_status_the_running_image_is_kept() {
        let r = resolve(&cluster(None, None, None), Some(OLD), NEW);
        assert_eq!(r.image, OLD);
        assert_eq!(r.source, ImageSource::Running);
        let empty = cluster(None, None, Some(""));
        assert_eq!(resolve(&empty, Some(OLD), NEW).image, OLD);
    }

    #[test]
    fn spec_image_wins_over_everything() {
        for policy in [
            None,
            Some(ImagePolicy::Pinned),
            Some(ImagePolicy::FollowOperator),
        ] {
            let c = cluster(Some("mine:1"), policy, Some(OLD));
            let r = resolve(&c, Some(OLD), NEW);
            assert_eq!(r.image, "mine:1");
            assert_eq!(r.source, ImageSource::Spec);
            assert!(!needs_running_image(&c));
        }
    }

    #[test]
    fn follow_operator_adopts_the_new_default() {
        let c = cluster(None, Some(ImagePolicy::FollowOperator), Some(OLD));
        let r = resolve(&c, Some(OLD), NEW);
        assert_eq!(r.image, NEW);
        assert_eq!(r.source, ImageSource::FollowOperator);
        assert!(!needs_running_image(&c));
    }

    #[test]
    fn pinned_after_following_keeps_what_was_followed() {
        // followOperator -> pinned: the recorded image is the default that was followed.
        let c = cluster(None, Some(ImagePolicy::Pinned), Some(NEW));
        assert_eq!(
            resolve(&c, Some(NEW), "registry.example/chat-node:3").image,
            NEW
        );
    }

    #[test]
    fn policy_serializes_in_camel_case() {
        assert_eq!(
            serde_json::to_value(ImagePolicy::FollowOperator).unwrap(),
            "followOperator"
        );
        assert_eq!(serde_json::to_value(ImagePolicy::Pinned).unwrap(), "pinned");
    }

    #[test]
    fn the_built_in_default_is_this_versions_image() {
        assert_eq!(
            default_node_image(),
            concat!("ghcr.io/chatcluster/chat-node:", env!("CARGO_PKG_VERSION"))
        );
    }
}
