//! Operator-wide defaults of the pods the operator runs for every ChatCluster (its operands:
//! chat-node, the managed Redis, the managed Collector): their image pull secrets and the
//! default images of Redis and the Collector.
//!
//! An air-gapped cluster pulls every image from a mirror that needs credentials; without these,
//! a platform team would have to repeat the mirror's images and pull secret in every
//! ChatCluster. A ChatCluster still overrides each image (`spec.redis.image`,
//! `spec.observability.collector.image`) and adds pull secrets of its own
//! (`spec.imagePullSecrets`) to the operator-wide ones (docs/operator.md, "Air-gapped installs").
//!
//! Pull secrets are added to the finished plan rather than by each builder: every child with a
//! pod template (`spec.template.spec`) gets them, so a workload added later cannot forget them.

use k8s_openapi::api::core::v1::LocalObjectReference;
use serde_json::Value;

use super::Child;
use crate::api::ChatCluster;

/// Operator-wide operand settings (`--image-pull-secrets`, `--default-redis-image`,
/// `--default-collector-image`, `--default-redis-storage-size`, `--default-redis-storage-class`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperandDefaults {
    /// Names of Secrets (in each ChatCluster's namespace) every operand pod pulls with.
    pub image_pull_secrets: Vec<String>,
    /// Image of a managed Redis without `spec.redis.image`; `spec.redis.version` replaces its
    /// tag (and digest).
    pub redis_image: String,
    /// Image of a managed Collector without `spec.observability.collector.image`.
    pub collector_image: String,
    /// Volume of a managed Redis whose ChatCluster does not say where its data goes.
    pub redis_storage: crate::reconcile::redis_storage::DefaultRedisStorage,
}

impl Default for OperandDefaults {
    fn default() -> Self {
        Self {
            image_pull_secrets: Vec::new(),
            redis_image: crate::api::default_redis_image(),
            collector_image: crate::api::observability::DEFAULT_COLLECTOR_IMAGE.to_owned(),
            redis_storage: Default::default(),
        }
    }
}

impl OperandDefaults {
    /// The pull secrets of `cluster`'s pods: the operator-wide ones, then the cluster's own
    /// (`spec.imagePullSecrets`), each name once.
    pub fn pull_secrets(&self, cluster: &ChatCluster) -> Vec<LocalObjectReference> {
        let mut names: Vec<String> = Vec::new();
        let own = cluster.spec.image_pull_secrets.iter().flatten();
        for name in self.image_pull_secrets.iter().chain(own.map(|r| &r.name)) {
            if !name.is_empty() && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
            .into_iter()
            .map(|name| LocalObjectReference { name })
            .collect()
    }
}

/// Sets `imagePullSecrets` in the pod template of every child that has one. Without secrets
/// nothing is written (a pod template without the field, as before).
pub fn add_pull_secrets(children: &mut [Child], secrets: &[LocalObjectReference]) {
    if secrets.is_empty() {
        return;
    }
    let value = serde_json::to_value(secrets).expect("references serialize");
    for child in children {
        if let Some(pod) = pod_spec_mut(child) {
            pod.insert("imagePullSecrets".to_owned(), value.clone());
        }
    }
}

/// The pod spec (`spec.template.spec`) of a workload child, `None` for other kinds.
pub fn pod_spec_mut(child: &mut Child) -> Option<&mut serde_json::Map<String, Value>> {
    child
        .object
        .data
        .pointer_mut("/spec/template/spec")?
        .as_object_mut()
}

/// The repository of an image reference: without its digest and tag
/// (`registry:5000/redis:7.4@sha256:…` → `registry:5000/redis`).
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].find(':') {
        Some(colon) => &image[..last + colon],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures::cluster;

    #[test]
    fn repositories_lose_tag_and_digest_but_keep_the_registry_port() {
        assert_eq!(repository("redis"), "redis");
        assert_eq!(
            repository("docker.io/library/redis:7.4"),
            "docker.io/library/redis"
        );
        assert_eq!(
            repository("registry:5000/mirror/redis:7.4@sha256:abc"),
            "registry:5000/mirror/redis"
        );
        assert_eq!(repository("registry:5000/redis"), "registry:5000/redis");
        assert_eq!(repository("mirror/redis@sha256:abc"), "mirror/redis");
    }

    /// The chart's default operand images (values.yaml) are the operator's built-in ones, so
    /// the chart's Artifact Hub list (checked against values.yaml by the chart tests) names what
    /// an operator started without flags runs too.
    #[test]
    fn the_charts_default_images_are_the_operators() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/chat-operator/values.yaml"
        );
        let values: serde_json::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let image = |section: &str| {
            let image = &values[section]["image"];
            assert_eq!(image["digest"], "", "{section}: no digest by default");
            format!(
                "{}:{}",
                image["repository"].as_str().unwrap(),
                image["tag"].as_str().unwrap()
            )
        };
        let defaults = OperandDefaults::default();
        assert_eq!(image("redis"), defaults.redis_image);
        assert_eq!(image("collector"), defaults.collector_image);
        assert_eq!(
            format!(
                "{}:{}",
                values["chatNode"]["image"]["repository"].as_str().unwrap(),
                env!("CARGO_PKG_VERSION")
            ),
            crate::api::default_node_image(),
            "chatNode.image defaults to the chart's appVersion, the workspace version"
        );
        assert_eq!(values["chatNode"]["image"]["tag"], "");
        assert_eq!(values["operandImagePullSecrets"], serde_json::json!([]));
    }

    #[test]
    fn pull_secrets_are_the_operators_then_the_clusters_each_once() {
        let defaults = OperandDefaults {
            image_pull_secrets: vec!["mirror".into(), "shared".into()],
            ..OperandDefaults::default()
        };
        let mut demo = cluster("demo");
        assert_eq!(
            defaults.pull_secrets(&demo),
            [
                LocalObjectReference {
                    name: "mirror".into()
                },
                LocalObjectReference {
                    name: "shared".into()
                }
            ]
        );
        demo.spec.image_pull_secrets = Some(vec![
            LocalObjectReference {
                name: "team".into(),
            },
            LocalObjectReference {
                name: "shared".into(),
            },
        ]);
        let names: Vec<String> = defaults
            .pull_secrets(&demo)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["mirror", "shared", "team"]);
        assert!(
            OperandDefaults::default()
                .pull_secrets(&cluster("demo"))
                .is_empty()
        );
    }
}
