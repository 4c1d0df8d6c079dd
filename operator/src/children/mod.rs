//! Pure builders of every child object: `fn build(&ChatCluster, …) -> T`, no I/O.
//!
//! Each file builds one kind of thing; [`desired`] gathers what a ChatCluster asks for into a
//! list of type-erased [`Child`]ren that the reconciler applies in one place. Another set of
//! children (the observability stack) joins by pushing more `Child`ren onto that list and
//! naming its kind in the one table of child kinds, [`kinds::child_kinds`], each marked with
//! whether its API may be missing.

pub mod autoscaling;
pub mod deployment;
pub mod gateway_api;
pub mod http_route;
pub mod ingress;
pub mod kinds;
pub mod node_env;
pub mod observability;
pub mod operands;
pub mod pdb;
pub mod redis;
pub mod server_api;
pub mod services;

#[cfg(test)]
pub(crate) mod fixtures;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::api::ChatCluster;
use crate::labels;

/// chat-node's WebSocket port (name `ws`).
pub const WS_PORT: i32 = 8080;
/// chat-node's admin port (name `admin`): /metrics, /healthz, /readyz.
pub const ADMIN_PORT: i32 = 9091;
/// Redis port (name `redis`).
pub const REDIS_PORT: i32 = 6379;
/// chat-node's server API port (name `api`), for backends inside the cluster only.
pub const API_PORT: i32 = 9092;

/// Names of the children of cluster `name` (INTERFACES.md fixes them).
pub mod names {
    /// chat-node Deployment, client Service, Ingress and PodDisruptionBudget.
    pub fn main(cluster: &str) -> String {
        cluster.to_string()
    }
    /// Headless admin/metrics Service.
    pub fn admin_service(cluster: &str) -> String {
        format!("{cluster}-admin")
    }
    /// Redis StatefulSet, Service and NetworkPolicy.
    pub fn redis(cluster: &str) -> String {
        format!("{cluster}-redis")
    }
    /// Secret holding the managed Redis password (key `password`).
    pub fn redis_secret(cluster: &str) -> String {
        format!("{cluster}-redis-auth")
    }
    /// Secret holding the managed Redis' configuration file (key `redis.conf`: the password).
    pub fn redis_config(cluster: &str) -> String {
        format!("{cluster}-redis-config")
    }
    /// Secret holding the chat-node server API key (key `api-key`).
    pub fn api_key_secret(cluster: &str) -> String {
        format!("{cluster}-api-key")
    }
    /// ClusterIP Service of the chat-node server API (port 9092), never routed from outside.
    pub fn api_service(cluster: &str) -> String {
        format!("{cluster}-api")
    }
}

/// Key of the password in the Redis Secret.
pub const REDIS_PASSWORD_KEY: &str = "password";

/// The controller owner reference that ties a child to its ChatCluster (garbage collection,
/// `.owns()` watches). The cluster must come from the API server (it needs a uid).
pub fn owner_reference(cluster: &ChatCluster) -> OwnerReference {
    cluster
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: ChatCluster::api_version(&()).into_owned(),
            kind: ChatCluster::kind(&()).into_owned(),
            name: cluster.name_any(),
            uid: String::new(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

/// True when `object` is controlled by `cluster` (a controller owner reference with its uid).
/// The operator writes, reads back and deletes only such objects (docs/security.md).
pub fn is_controlled_by(cluster: &ChatCluster, object: &ObjectMeta) -> bool {
    let Some(uid) = cluster.meta().uid.as_deref() else {
        return false;
    };
    object
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Who controls `object`, for messages: `ChatCluster/x`, or that nothing does.
pub fn controller_of(object: &ObjectMeta) -> String {
    object
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("controlled by {}/{} (uid {})", o.kind, o.name, o.uid))
        .unwrap_or_else(|| "controlled by nothing".into())
}

/// The security context of every container the operator runs (the restricted Pod Security
/// Standard): no privilege escalation, a read-only root filesystem, not root, no capability.
pub fn restricted_security_context() -> k8s_openapi::api::core::v1::SecurityContext {
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// Metadata of a child: name, namespace, the standard labels, the owner reference.
pub fn child_meta(cluster: &ChatCluster, name: String, app: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels::standard(app, &cluster.name_any(), component)),
        owner_references: Some(vec![owner_reference(cluster)]),
        ..ObjectMeta::default()
    }
}

/// Labels of chat-node children.
pub fn node_labels(cluster: &ChatCluster) -> BTreeMap<String, String> {
    labels::standard(labels::APP_CHAT_NODE, &cluster.name_any(), COMPONENT_SERVER)
}

/// Selector of the chat-node pods.
pub fn node_selector(cluster: &ChatCluster) -> BTreeMap<String, String> {
    labels::selector(labels::APP_CHAT_NODE, &cluster.name_any())
}

/// `app.kubernetes.io/component` of chat-node children.
pub const COMPONENT_SERVER: &str = "server";
/// `app.kubernetes.io/component` of the managed Redis children.
pub const COMPONENT_BROKER: &str = "broker";

/// One desired child, type-erased so one loop can apply every kind.
#[derive(Clone, Debug)]
pub struct Child {
    /// Which API the object belongs to.
    pub resource: ApiResource,
    /// The object, as applied (server-side apply body).
    pub object: DynamicObject,
}

impl Child {
    /// Erases a typed object (a `k8s-openapi` type or a `kube::CustomResource`).
    pub fn new<K>(object: &K) -> Self
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let value = serde_json::to_value(object).expect("k8s types always serialize");
        let mut object: DynamicObject =
            serde_json::from_value(value).expect("a serialized k8s object is a DynamicObject");
        object.types = Some(kube::api::TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
        Self { resource, object }
    }

    /// The child's name.
    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// `Kind/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name())
    }
}

/// Everything the spec asks for, in apply order (Redis first so chat-nodes find it).
/// `node_image` is the resolved chat-node image; `extra_node_env` is added to the chat-node
/// container (the observability stack passes its `OTEL_*` variables through it); `operands`
/// are the operator-wide defaults (the Redis image; pull secrets are added to the whole plan,
/// see [`operands::add_pull_secrets`]).
pub fn desired(
    cluster: &ChatCluster,
    node_image: &str,
    extra_node_env: &[k8s_openapi::api::core::v1::EnvVar],
    operands: &operands::OperandDefaults,
) -> Vec<Child> {
    let mut children = Vec::new();
    if cluster.spec.redis_is_managed() {
        children.push(Child::new(&redis::build_service(cluster)));
        children.push(Child::new(&redis::build_statefulset(
            cluster,
            &operands.redis_image,
        )));
        children.push(Child::new(&redis::build_network_policy(cluster)));
        if let Some(pdb) = redis::build_pdb(cluster) {
            children.push(Child::new(&pdb));
        }
    }
    children.push(Child::new(&services::build_client(cluster)));
    children.push(Child::new(&services::build_admin(cluster)));
    children.push(Child::new(&server_api::build_service(cluster)));
    children.push(Child::new(&deployment::build(
        cluster,
        node_image,
        extra_node_env,
    )));
    if let Some(ingress) = ingress::build(cluster) {
        children.push(Child::new(&ingress));
    }
    if let Some(route) = http_route::build(cluster) {
        children.push(Child::new(&route));
    }
    if let Some(pdb) = pdb::build(cluster) {
        children.push(Child::new(&pdb));
    }
    if let Some(hpa) = autoscaling::build(cluster) {
        children.push(Child::new(&hpa));
    }
    children
}

#[cfg(test)]
mod tests {
    use super::fixtures::cluster;
    use super::*;

    #[test]
    fn minimal_cluster_wants_redis_services_deployment_and_pdb() {
        let kinds: Vec<String> = desired(&cluster("demo"), "chat-node:1", &[], &Default::default())
            .iter()
            .map(Child::describe)
            .collect();
        assert_eq!(
            kinds,
            [
                "Service/demo-redis",
                "StatefulSet/demo-redis",
                "NetworkPolicy/demo-redis",
                "Service/demo",
                "Service/demo-admin",
                "Service/demo-api",
                "Deployment/demo",
                "PodDisruptionBudget/demo",
            ]
        );
    }

    #[test]
    fn every_child_has_owner_labels_and_namespace() {
        let c = cluster("demo");
        for child in desired(&c, "chat-node:1", &[], &Default::default()) {
            let meta = &child.object.metadata;
            assert_eq!(
                meta.namespace.as_deref(),
                Some("chat"),
                "{}",
                child.describe()
            );
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "ChatCluster");
            assert_eq!(owner.uid, "0000-uid");
            assert_eq!(owner.controller, Some(true));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[labels::INSTANCE], "demo");
            assert_eq!(labels[labels::MANAGED_BY], "chat-operator");
            assert!(
                !labels.contains_key("team"),
                "ChatCluster labels must not be copied"
            );
            assert_eq!(
                child.object.types.as_ref().unwrap().kind,
                child.resource.kind
            );
        }
    }

    #[test]
    fn every_desired_kind_is_in_the_table_of_child_kinds() {
        let swept: Vec<String> = kinds::child_kinds()
            .into_iter()
            .map(|k| k.resource.kind)
            .collect();
        let mut c = cluster("demo");
        c.spec.ingress = Some(crate::api::IngressSpec {
            host: Some("chat.example.com".into()),
            ..Default::default()
        });
        let mut gateway = c.clone();
        gateway.spec.ingress = Some(gateway_ingress());
        for cluster in [c, gateway] {
            for child in desired(&cluster, "chat-node:1", &[], &Default::default()) {
                assert!(swept.contains(&child.resource.kind), "{}", child.describe());
            }
        }
        let route = kinds::child_kinds()
            .into_iter()
            .find(|k| k.resource.kind == "HTTPRoute")
            .unwrap();
        assert!(route.optional, "the Gateway API may be missing");
        assert_eq!(route.resource.plural, "httproutes");
    }

    fn gateway_ingress() -> crate::api::IngressSpec {
        crate::api::IngressSpec {
            provider: Some(crate::api::IngressProvider::Gateway),
            gateway: Some(crate::api::GatewayRef {
                name: "traefik".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn provider_gateway_wants_an_http_route_instead_of_an_ingress() {
        let kinds = |c: &ChatCluster| -> Vec<String> {
            desired(c, "chat-node:1", &[], &Default::default())
                .iter()
                .filter(|child| child.resource.group != "apps")
                .map(Child::describe)
                .filter(|d| d.starts_with("Ingress/") || d.starts_with("HTTPRoute/"))
                .collect()
        };
        let mut c = cluster("demo");
        c.spec.ingress = Some(crate::api::IngressSpec::default());
        assert_eq!(kinds(&c), ["Ingress/demo"]);
        c.spec.ingress = Some(gateway_ingress());
        assert_eq!(kinds(&c), ["HTTPRoute/demo"]);
        let route = desired(&c, "chat-node:1", &[], &Default::default())
            .into_iter()
            .find(|child| child.resource.kind == "HTTPRoute")
            .unwrap();
        assert_eq!(route.resource.api_version, "gateway.networking.k8s.io/v1");
    }
}
