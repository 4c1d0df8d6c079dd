//! The operator-wide policy on what a tenant may ask of the cluster's shared infrastructure
//! through a ChatCluster: Ingress annotations (ingress-nginx `*-snippet` annotations inject raw
//! nginx configuration into the controller every tenant shares), Ingress hosts (another team's
//! host name), priority classes (`system-node-critical` preempts other teams' pods) and
//! tolerations (a dedicated or control-plane node).
//!
//! Each setting is a comma-separated list of patterns in which `*` matches any run of
//! characters. The reconciler refuses a spec that breaks one (`Degraded` / `PolicyViolation`,
//! nothing applied), naming the field and the value; the ValidatingAdmissionPolicy
//! ([`super::policy`]) refuses it at the API server already, with the same messages, reading the
//! same lists from its parameter ConfigMap (keys [`SETTINGS`]; a missing key means the default,
//! as a missing flag does).

use crate::api::ChatClusterSpec;

/// Ingress annotations refused by default: every ingress-nginx snippet (configuration, server,
/// location, auth, stream, modsecurity).
pub const DEFAULT_DENIED_INGRESS_ANNOTATIONS: &str = "*-snippet,*-snippets";
/// Ingress hosts allowed by default: any.
pub const DEFAULT_ALLOWED_INGRESS_HOSTS: &str = "*";
/// Priority classes refused by default: Kubernetes' own, which outrank every workload.
pub const DEFAULT_DENIED_PRIORITY_CLASSES: &str = "system-*";
/// Toleration keys refused by default: the control plane's taints. A toleration without a key
/// tolerates every taint and is refused whenever this list is not empty.
pub const DEFAULT_DENIED_TOLERATION_KEYS: &str = "node-role.kubernetes.io/*";

/// One setting of the policy: its key in the admission policy's parameter ConfigMap (the same
/// name as under the chart's `operator.tenantPolicy`), the operator flag that carries it, and
/// its default (used by both when the setting is not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// Key of the parameter ConfigMap and of the chart's `operator.tenantPolicy` values.
    pub key: &'static str,
    /// The operator's flag.
    pub flag: &'static str,
    /// Comma-separated default patterns.
    pub default: &'static str,
}

/// `--denied-ingress-annotations`.
pub const DENIED_INGRESS_ANNOTATIONS: Setting = Setting {
    key: "deniedIngressAnnotations",
    flag: "--denied-ingress-annotations",
    default: DEFAULT_DENIED_INGRESS_ANNOTATIONS,
};
/// `--allowed-ingress-hosts`.
pub const ALLOWED_INGRESS_HOSTS: Setting = Setting {
    key: "allowedIngressHosts",
    flag: "--allowed-ingress-hosts",
    default: DEFAULT_ALLOWED_INGRESS_HOSTS,
};
/// `--denied-priority-classes`.
pub const DENIED_PRIORITY_CLASSES: Setting = Setting {
    key: "deniedPriorityClasses",
    flag: "--denied-priority-classes",
    default: DEFAULT_DENIED_PRIORITY_CLASSES,
};
/// `--denied-toleration-keys`.
pub const DENIED_TOLERATION_KEYS: Setting = Setting {
    key: "deniedTolerationKeys",
    flag: "--denied-toleration-keys",
    default: DEFAULT_DENIED_TOLERATION_KEYS,
};
/// Every setting of the policy.
pub const SETTINGS: [Setting; 4] = [
    DENIED_INGRESS_ANNOTATIONS,
    ALLOWED_INGRESS_HOSTS,
    DENIED_PRIORITY_CLASSES,
    DENIED_TOLERATION_KEYS,
];

/// A comma-separated list of `*` patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// From a comma-separated list (spaces around entries and empty entries are ignored).
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// True when one of the patterns matches all of `value`.
    pub fn matches(&self, value: &str) -> bool {
        self.0.iter().any(|p| glob(p, value))
    }

    /// True when there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patterns joined by `,`, as given.
    pub fn joined(&self) -> String {
        self.0.join(",")
    }
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((prefix, rest)) => {
            let Some(value) = value.strip_prefix(prefix) else {
                return false;
            };
            (0..=value.len())
                .filter(|&i| value.is_char_boundary(i))
                .any(|i| glob(rest, &value[i..]))
        }
    }
}

/// The policy (`--denied-ingress-annotations`, `--allowed-ingress-hosts`,
/// `--denied-priority-classes`, `--denied-toleration-keys`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Annotation keys `spec.ingress.annotations` may not set.
    pub denied_ingress_annotations: Patterns,
    /// Host names `spec.ingress.host` may name.
    pub allowed_ingress_hosts: Patterns,
    /// Priority classes `spec.podTemplate.priorityClassName` may not name.
    pub denied_priority_classes: Patterns,
    /// Taint keys `spec.podTemplate.tolerations` may not tolerate.
    pub denied_toleration_keys: Patterns,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            denied_ingress_annotations: Patterns::parse(DEFAULT_DENIED_INGRESS_ANNOTATIONS),
            allowed_ingress_hosts: Patterns::parse(DEFAULT_ALLOWED_INGRESS_HOSTS),
            denied_priority_classes: Patterns::parse(DEFAULT_DENIED_PRIORITY_CLASSES),
            denied_toleration_keys: Patterns::parse(DEFAULT_DENIED_TOLERATION_KEYS),
        }
    }
}

impl TenantPolicy {
    /// What `spec` asks that the policy refuses, one message per value.
    pub fn violations(&self, spec: &ChatClusterSpec) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(ingress) = &spec.ingress {
            for key in ingress.annotations.iter().flatten().map(|(k, _)| k) {
                if self.denied_ingress_annotations.matches(key) {
                    found.push(format!(
                        "spec.ingress.annotations sets {key} (refused: {})",
                        self.denied_ingress_annotations.joined()
                    ));
                }
            }
            if let Some(host) = &ingress.host
                && !self.allowed_ingress_hosts.matches(host)
            {
                found.push(format!(
                    "spec.ingress.host is {host} (allowed: {})",
                    self.allowed_ingress_hosts.joined()
                ));
            }
        }
        let template = spec.pod_template();
        if let Some(class) = &template.priority_class_name
            && self.denied_priority_classes.matches(class)
        {
            found.push(format!(
                "spec.podTemplate.priorityClassName is {class} (refused: {})",
                self.denied_priority_classes.joined()
            ));
        }
        for toleration in template.tolerations.iter().flatten() {
            let key = toleration.key.as_deref().unwrap_or_default();
            if key.is_empty() && !self.denied_toleration_keys.is_empty() {
                found.push(
                    "spec.podTemplate.tolerations has a toleration without a key, which tolerates every taint"
                        .into(),
                );
            } else if !key.is_empty() && self.denied_toleration_keys.matches(key) {
                found.push(format!(
                    "spec.podTemplate.tolerations tolerates {key} (refused: {})",
                    self.denied_toleration_keys.joined()
                ));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_values() {
        assert!(glob(
            "*-snippet",
            "nginx.ingress.kubernetes.io/configuration-snippet"
        ));
        assert!(glob("*", ""));
        assert!(glob("*.chat.example.com", "a.chat.example.com"));
        assert!(!glob("*.chat.example.com", "chat.example.com"));
        assert!(!glob("*.chat.example.com", "a.chat.example.com.evil.io"));
        assert!(glob("system-*", "system-node-critical"));
        assert!(!glob("system-*", "high"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn the_defaults_refuse_snippets_system_classes_and_control_plane_tolerations() {
        let spec: ChatClusterSpec = serde_json::from_value(serde_json::json!({
            "anonymous": true,
            "ingress": {"host": "chat.example.com", "annotations": {
                "nginx.ingress.kubernetes.io/configuration-snippet": "return 200;",
                "nginx.ingress.kubernetes.io/server-snippet": "x",
                "nginx.ingress.kubernetes.io/proxy-body-size": "1m"}},
            "podTemplate": {"priorityClassName": "system-node-critical", "tolerations": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
                {"operator": "Exists"},
                {"key": "dedicated", "operator": "Equal", "value": "chat"}]}
        }))
        .unwrap();
        let found = TenantPolicy::default().violations(&spec);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].contains("configuration-snippet"));
        assert!(found[1].contains("server-snippet"));
        assert!(found[2].contains("system-node-critical"));
        assert!(found[3].contains("node-role.kubernetes.io/control-plane"));
        assert!(found[4].contains("without a key"));

        let hosts = TenantPolicy {
            allowed_ingress_hosts: Patterns::parse("*.team-a.example.com"),
            denied_toleration_keys: Patterns::parse(""),
            ..TenantPolicy::default()
        };
        let found = hosts.violations(&spec);
        assert!(
            found
                .iter()
                .any(|f| f.contains("spec.ingress.host is chat.example.com"))
        );
        assert!(!found.iter().any(|f| f.contains("tolera")), "{found:#?}");
    }
}
