//! The standard `app.kubernetes.io/*` labels every child carries, and the selectors built from them.
//!
//! Children never copy the ChatCluster's own labels: a label added to the ChatCluster must not
//! roll every pod, and selectors must stay stable for the life of the cluster.

use std::collections::BTreeMap;

/// `app.kubernetes.io/name`: what runs (`chat-node`, `redis`, ...).
pub const NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the ChatCluster's name.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the role inside the cluster.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/part-of`: always `chatcluster`.
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// `app.kubernetes.io/managed-by`: always `chat-operator`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Value of `part-of`.
pub const PART_OF_VALUE: &str = "chatcluster";
/// Value of `managed-by`, and the server-side apply field manager.
pub const MANAGER: &str = "chat-operator";

/// `app.kubernetes.io/name` of the chat-node pods.
pub const APP_CHAT_NODE: &str = "chat-node";
/// `app.kubernetes.io/name` of the managed Redis.
pub const APP_REDIS: &str = "redis";

/// The five standard labels of a child of cluster `instance`.
pub fn standard(app: &str, instance: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(app, instance);
    labels.insert(COMPONENT.into(), component.into());
    labels.insert(PART_OF.into(), PART_OF_VALUE.into());
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    labels
}

/// The labels that select the pods of `app` in cluster `instance` (never change for its life).
pub fn selector(app: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), app.to_string()),
        (INSTANCE.to_string(), instance.to_string()),
    ])
}

/// A label map as a selector string (`a=b,c=d`), sorted by key.
pub fn to_selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selects every object the operator manages for cluster `instance` (the orphan sweep uses it).
pub fn managed_by_cluster(instance: &str) -> String {
    format!("{INSTANCE}={instance},{MANAGED_BY}={MANAGER}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_labels_hold_all_five() {
        let labels = standard(APP_CHAT_NODE, "demo", "server");
        assert_eq!(labels.len(), 5);
        assert_eq!(labels[NAME], "chat-node");
        assert_eq!(labels[INSTANCE], "demo");
        assert_eq!(labels[COMPONENT], "server");
        assert_eq!(labels[PART_OF], "chatcluster");
        assert_eq!(labels[MANAGED_BY], "chat-operator");
    }

    #[test]
    fn selector_string_is_sorted_and_joined() {
        assert_eq!(
            to_selector_string(&selector(APP_CHAT_NODE, "demo")),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=chat-node"
        );
        assert_eq!(
            managed_by_cluster("demo"),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/managed-by=chat-operator"
        );
    }
}
