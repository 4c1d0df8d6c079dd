//! What a tenant can make the operator do on its behalf, and the limits on it.
//!
//! A ChatCluster names Secrets (`spec.auth.jwtSecretRef`, `spec.redis.passwordSecretRef`, ...)
//! and images (`spec.image`, ...). The operator mounts those Secrets into pods that run those
//! images, with its own rights, not the author's: without a check, anyone who may create a
//! ChatCluster could read every Secret of the namespace through an image of their choice (a
//! confused deputy). Two checks close that:
//!
//! - the API server refuses a ChatCluster whose author may not `get` a Secret it names, or
//!   that names an image outside the operator-wide allow-list: a ValidatingAdmissionPolicy
//!   ([`policy`]) whose CEL asks the API server's own `authorizer` about the requesting user
//!   (the operator cannot: it never learns who wrote the object);
//! - the reconciler refuses to run an image outside the allow-list ([`ImageAllowList`]), so a
//!   cluster without the policy (or an object admitted before the list was narrowed) still
//!   runs only allowed images.
//!
//! The policy also enforces the operator-wide tenant policy ([`tenant`]), which the reconciler
//! enforces as well.
//!
//! Both read the same tables ([`SECRET_REFERENCES`], [`SECRET_LIST_REFERENCES`],
//! [`IMAGE_FIELDS`]), and a unit test walks
//! the CRD schema so that a new Secret reference cannot be added without joining the table.

pub mod policy;
pub mod tenant;

use serde_json::Value;

use crate::api::ChatClusterSpec;

/// A field of `spec` that names something the operator uses on the author's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The field as users write it, e.g. `spec.auth.jwtSecretRef`.
    pub field: &'static str,
    /// Path below `spec` to the name (or image reference), e.g. `["auth", "jwtSecretRef", "name"]`.
    pub path: &'static [&'static str],
}

/// Every field of `spec` that names a Secret of the ChatCluster's namespace.
pub const SECRET_REFERENCES: &[Reference] = &[
    Reference {
        field: "spec.auth.jwtSecretRef",
        path: &["auth", "jwtSecretRef", "name"],
    },
    Reference {
        field: "spec.auth.jwtPublicKeyRef",
        path: &["auth", "jwtPublicKeyRef", "name"],
    },
    Reference {
        field: "spec.redis.passwordSecretRef",
        path: &["redis", "passwordSecretRef", "name"],
    },
    Reference {
        field: "spec.redis.caSecretRef",
        path: &["redis", "caSecretRef", "name"],
    },
    Reference {
        field: "spec.ingress.tlsSecretName",
        path: &["ingress", "tlsSecretName"],
    },
    Reference {
        field: "spec.observability.collector.caSecretRef",
        path: &["observability", "collector", "caSecretRef", "name"],
    },
    Reference {
        field: "spec.observability.collector.traces.headersSecretRef",
        path: &[
            "observability",
            "collector",
            "traces",
            "headersSecretRef",
            "name",
        ],
    },
    Reference {
        field: "spec.observability.collector.logs.headersSecretRef",
        path: &[
            "observability",
            "collector",
            "logs",
            "headersSecretRef",
            "name",
        ],
    },
    Reference {
        field: "spec.alerting.critical.pagerDuty.routingKeySecretRef",
        path: &[
            "alerting",
            "critical",
            "pagerDuty",
            "routingKeySecretRef",
            "name",
        ],
    },
    Reference {
        field: "spec.alerting.critical.opsGenie.apiKeySecretRef",
        path: &[
            "alerting",
            "critical",
            "opsGenie",
            "apiKeySecretRef",
            "name",
        ],
    },
    Reference {
        field: "spec.alerting.warning.slack.apiUrlSecretRef",
        path: &["alerting", "warning", "slack", "apiUrlSecretRef", "name"],
    },
    Reference {
        field: "spec.alerting.info.slack.apiUrlSecretRef",
        path: &["alerting", "info", "slack", "apiUrlSecretRef", "name"],
    },
];

/// Every list of `spec` whose items name a Secret of the ChatCluster's namespace (each item's
/// `name`): the operator's pods pull their images with them.
pub const SECRET_LIST_REFERENCES: &[Reference] = &[Reference {
    field: "spec.imagePullSecrets",
    path: &["imagePullSecrets"],
}];

/// Every field of `spec` that names an image the operator runs.
pub const IMAGE_FIELDS: &[Reference] = &[
    Reference {
        field: "spec.image",
        path: &["image"],
    },
    Reference {
        field: "spec.redis.image",
        path: &["redis", "image"],
    },
    Reference {
        field: "spec.observability.collector.image",
        path: &["observability", "collector", "image"],
    },
];

/// The values `spec` sets for `references`: `(field, value)` for each that is set.
pub fn values_of(spec: &ChatClusterSpec, references: &[Reference]) -> Vec<(&'static str, String)> {
    let spec = serde_json::to_value(spec).unwrap_or(Value::Null);
    references
        .iter()
        .filter_map(|r| {
            let value = r.path.iter().try_fold(&spec, |v, key| v.get(key))?;
            Some((r.field, value.as_str()?.to_string()))
        })
        .collect()
}

/// Allow-list entry that allows every image.
pub const ANY_IMAGE: &str = "*";

/// The project's own registry: the default allow-list.
pub const DEFAULT_ALLOWED_IMAGE_PREFIXES: &str = "ghcr.io/chatcluster/";

/// The images a ChatCluster may name (`--allowed-image-prefixes`): a reference is allowed when
/// an entry is `*`, equals it, or is a prefix of it that ends at a path, tag or digest
/// boundary (an entry that ends in `/`, `:` or `@`, or is followed by one of those in the
/// reference): `ghcr.io/chatcluster` allows `ghcr.io/chatcluster/chat-node:1` but not
/// `ghcr.io/chatcluster-evil/x`. The operator's own defaults (`--default-node-image`, the
/// Redis and Collector defaults) are the cluster admin's choice and always allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageAllowList {
    prefixes: Vec<String>,
}

impl Default for ImageAllowList {
    fn default() -> Self {
        Self::parse(DEFAULT_ALLOWED_IMAGE_PREFIXES)
    }
}

impl ImageAllowList {
    /// From a comma-separated list (spaces around entries and empty entries are ignored).
    pub fn parse(list: &str) -> Self {
        Self {
            prefixes: list
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// The entries, as given.
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// True when `image` is allowed (see the type's documentation).
    pub fn allows(&self, image: &str) -> bool {
        self.prefixes.iter().any(|p| {
            p == ANY_IMAGE
                || image == p
                || (image.starts_with(p.as_str())
                    && (p.ends_with(['/', ':', '@'])
                        || image[p.len()..].starts_with(['/', ':', '@'])))
        })
    }

    /// The images `spec` names that are not allowed, as `(field, image)`.
    pub fn refused(&self, spec: &ChatClusterSpec) -> Vec<(&'static str, String)> {
        values_of(spec, IMAGE_FIELDS)
            .into_iter()
            .filter(|(_, image)| !self.allows(image))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> ChatClusterSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_secret_reference_is_found() {
        let s = spec(serde_json::json!({
            "auth": {"jwtSecretRef": {"name": "a"}, "jwtPublicKeyRef": {"name": "b"}},
            "redis": {"mode": "external", "url": "rediss://r", "passwordSecretRef": {"name": "c"}, "caSecretRef": {"name": "d"}},
            "ingress": {"host": "chat.example.com", "tlsSecretName": "e"},
            "observability": {"collector": {"endpoint": "https://o", "caSecretRef": {"name": "f"},
                "traces": {"endpoint": "t:4317", "headersSecretRef": {"name": "f2", "headers": ["Authorization"]}},
                "logs": {"endpoint": "http://l/otlp", "headersSecretRef": {"name": "f3", "headers": ["X-Api-Key"]}}}},
            "alerting": {
                "critical": {"pagerDuty": {"routingKeySecretRef": {"name": "g", "key": "k"}},
                             "opsGenie": {"apiKeySecretRef": {"name": "h", "key": "k"}}},
                "warning": {"slack": {"apiUrlSecretRef": {"name": "i", "key": "k"}}},
                "info": {"slack": {"apiUrlSecretRef": {"name": "j", "key": "k"}}}
            }
        }));
        let found = values_of(&s, SECRET_REFERENCES);
        let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b", "c", "d", "e", "f", "f2", "f3", "g", "h", "i", "j"]
        );
        let fields: Vec<&str> = found.iter().map(|(f, _)| *f).collect();
        let table: Vec<&str> = SECRET_REFERENCES.iter().map(|r| r.field).collect();
        assert_eq!(fields, table);
        assert!(values_of(&ChatClusterSpec::default(), SECRET_REFERENCES).is_empty());
    }

    /// Walks the CRD's schema: every property named like a Secret reference must be in the
    /// table, so a new one cannot slip past the admission policy.
    #[test]
    fn the_table_covers_every_secret_reference_of_the_schema() {
        fn walk(schema: &Value, path: &str, found: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    let here = format!("{path}.{name}");
                    let lower = name.to_ascii_lowercase();
                    if lower.contains("secret") || lower.ends_with("keyref") {
                        found.push(here.clone());
                    } else {
                        walk(sub, &here, found);
                    }
                }
            }
            if let Some(items) = schema.get("items") {
                walk(items, &format!("{path}[]"), found);
            }
        }
        let crd = serde_json::to_value(crate::crd::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut found = Vec::new();
        walk(spec, "spec", &mut found);
        found.sort();
        let mut table: Vec<String> = SECRET_REFERENCES
            .iter()
            .chain(SECRET_LIST_REFERENCES)
            .map(|r| r.field.to_string())
            .collect();
        table.sort();
        assert_eq!(found, table);
    }

    #[test]
    fn images_are_allowed_at_path_tag_or_digest_boundaries_only() {
        let list = ImageAllowList::parse(" ghcr.io/chatcluster , registry.example/team/ ,");
        assert_eq!(
            list.prefixes(),
            ["ghcr.io/chatcluster", "registry.example/team/"]
        );
        for ok in [
            "ghcr.io/chatcluster/chat-node:1.0",
            "ghcr.io/chatcluster/chat-node@sha256:00",
            "registry.example/team/x:1",
        ] {
            assert!(list.allows(ok), "{ok}");
        }
        for refused in [
            "ghcr.io/chatcluster-evil/chat-node:1",
            "ghcr.io/chatclusterx",
            "docker.io/library/busybox",
            "registry.example/teamx/y",
            "GHCR.IO/chatcluster/chat-node:1",
            "",
        ] {
            assert!(!list.allows(refused), "{refused}");
        }
        assert!(ImageAllowList::parse("*").allows("anything:1"));
        assert!(!ImageAllowList::parse("").allows("anything:1"));
        assert!(ImageAllowList::default().allows("ghcr.io/chatcluster/chat-node:2"));
    }

    #[test]
    fn refused_names_each_field() {
        let s = spec(serde_json::json!({
            "image": "evil.example/x:1",
            "redis": {"mode": "managed", "image": "ghcr.io/chatcluster/redis:7"},
            "observability": {"collector": {"image": "evil.example/otel:1"}}
        }));
        assert_eq!(
            ImageAllowList::default().refused(&s),
            [
                ("spec.image", "evil.example/x:1".to_string()),
                (
                    "spec.observability.collector.image",
                    "evil.example/otel:1".to_string()
                )
            ]
        );
    }
}
