//! `spec.auth`: JWT verification keys, by Secret reference.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A key inside a Secret in the ChatCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret (each field using a reference documents its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key, or `default` when none is set.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// Client authentication: exactly one of an HS256 shared secret or an RS256/ES256 public key.
/// The Secret is mounted read-only into every chat-node pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.jwtSecretRef) != has(self.jwtPublicKeyRef)")
    .message("set exactly one of spec.auth.jwtSecretRef and spec.auth.jwtPublicKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// HS256 shared secret (key default `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// PEM public key for RS256/ES256 (key default `public.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_ref: Option<SecretKeyRef>,
}

/// Default key of `jwtSecretRef`.
pub const DEFAULT_JWT_SECRET_KEY: &str = "secret";
/// Default key of `jwtPublicKeyRef`.
pub const DEFAULT_JWT_PUBLIC_KEY_KEY: &str = "public.pem";
