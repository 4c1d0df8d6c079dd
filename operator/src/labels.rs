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

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends (the API server's rule).
pub fn is_valid_value(value: &str) -> bool {
    value.is_empty() || is_qualified_name_part(value)
}

/// A label key: `[prefix/]name`, the name like a value but not empty, the prefix a DNS
/// subdomain of at most 253 characters.
pub fn is_valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && is_qualified_name_part(name)
}

fn is_qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
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
    fn label_syntax_follows_the_api_server() {
        for good in [
            "release",
            "app.kubernetes.io/name",
            "example.com/team",
            "a_b.c-d",
        ] {
            assert!(is_valid_key(good), "{good}");
        }
        for bad in [
            "",
            "/x",
            "x/",
            "a/b/c",
            "-x",
            "x-",
            "Example.com/x",
            "has space",
        ] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
        assert!(!is_valid_key(&"k".repeat(64)));
        assert!(is_valid_key(&format!("{}/k", "p".repeat(253))));
        assert!(!is_valid_key(&format!("{}/k", "p".repeat(254))));
        for good in ["", "kube-prometheus-stack", "v1.2_3"] {
            assert!(is_valid_value(good), "{good:?}");
        }
        for bad in ["-x", "x.", "a b", "a/b"] {
            assert!(!is_valid_value(bad), "{bad:?}");
        }
        assert!(is_valid_value(&"v".repeat(63)));
        assert!(!is_valid_value(&"v".repeat(64)));
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
