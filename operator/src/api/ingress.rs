//! `spec.ingress`: an Ingress with sticky sessions for the chosen controller.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Which ingress controller's annotations to write.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IngressProvider {
    /// ingress-nginx (`nginx.ingress.kubernetes.io/*` annotations). Default.
    #[default]
    Nginx,
    /// Traefik (`traefik.ingress.kubernetes.io/*` annotations on the Ingress and the Service).
    Traefik,
}

/// How a client is kept on one chat-node.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum SessionAffinity {
    /// A cookie set by the ingress controller. Default.
    #[default]
    #[serde(rename = "cookie")]
    Cookie,
    /// Hash of the client's IP address.
    #[serde(rename = "clientIP")]
    ClientIp,
    /// No stickiness: any node (fine for WebSocket-only clients).
    #[serde(rename = "none")]
    None,
}

/// The Ingress in front of the client Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.cookieName) || (has(self.sessionAffinity) ? self.sessionAffinity : 'cookie') == 'cookie'")
        .message("spec.ingress.cookieName applies only to sessionAffinity cookie"),
    validation = Rule::new("!has(self.tlsSecretName) || has(self.host)")
        .message("spec.ingress.tlsSecretName needs spec.ingress.host")
)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// `ingressClassName` of the Ingress; unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// `nginx` (default) or `traefik`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<IngressProvider>,

    /// Host name clients use, e.g. `chat.example.com`. Unset: the Ingress answers every host
    /// name (cookie affinity works either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.ingress.host must be a lowercase DNS name such as chat.example.com"))]
    pub host: Option<String>,

    /// Secret with the TLS certificate for `host`; unset serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,

    /// `cookie` (default), `clientIP` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,

    /// Name of the affinity cookie (default `chat-node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+$')")
        .message("spec.ingress.cookieName may contain only letters, digits, '_' and '-'"))]
    pub cookie_name: Option<String>,

    /// Extra annotations for the Ingress (they win over the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Affinity cookie name when `cookieName` is unset.
pub const DEFAULT_COOKIE_NAME: &str = "chat-node";

impl IngressSpec {
    /// The provider, defaulted to nginx.
    pub fn provider(&self) -> IngressProvider {
        self.provider.unwrap_or_default()
    }
    /// The session affinity, defaulted to cookie.
    pub fn session_affinity(&self) -> SessionAffinity {
        self.session_affinity.unwrap_or_default()
    }
    /// The cookie name, defaulted.
    pub fn cookie_name(&self) -> &str {
        self.cookie_name.as_deref().unwrap_or(DEFAULT_COOKIE_NAME)
    }
}
