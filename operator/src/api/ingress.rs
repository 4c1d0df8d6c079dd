//! `spec.ingress`: an Ingress with sticky sessions for the chosen controller, or a Gateway API
//! HTTPRoute attached to an existing Gateway (provider `gateway`).

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Which ingress controller's annotations to write.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IngressProvider {
    /// ingress-nginx (`nginx.ingress.kubernetes.io/*` annotations). Retired upstream (no
    /// releases since March 2026); kept for clusters that still run it.
    Nginx,
    /// Traefik (`traefik.ingress.kubernetes.io/*` annotations on the Ingress and the Service).
    /// Default.
    #[default]
    Traefik,
    /// Gateway API: an HTTPRoute (`gateway.networking.k8s.io/v1`, standard channel) attached to
    /// the Gateway named in `gateway`, instead of an Ingress.
    Gateway,
}

/// The Gateway an HTTPRoute attaches to (`parentRefs[0]` of the route).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Gateway's namespace; unset: the ChatCluster's namespace. A Gateway in another
    /// namespace must allow routes from this one (`allowedRoutes` of its listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The listener to attach to (`sectionName`); unset: every listener that accepts the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// How a client is kept on one chat-node.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum SessionAffinity {
    /// A cookie set by the ingress controller. Default (except with provider `gateway`).
    #[default]
    #[serde(rename = "cookie")]
    Cookie,
    /// Hash of the client's IP address.
    #[serde(rename = "clientIP")]
    ClientIp,
    /// No stickiness: any node (fine for WebSocket-only clients). The default, and the only
    /// choice, with provider `gateway`.
    #[serde(rename = "none")]
    None,
}

/// The Ingress (or, with provider `gateway`, the HTTPRoute) in front of the client Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.cookieName) || (has(self.provider) && self.provider == 'gateway') || (has(self.sessionAffinity) ? self.sessionAffinity : 'cookie') == 'cookie'")
        .message("spec.ingress.cookieName applies only to sessionAffinity cookie"),
    validation = Rule::new("!has(self.tlsSecretName) || has(self.host) || (has(self.provider) && self.provider == 'gateway')")
        .message("spec.ingress.tlsSecretName needs spec.ingress.host"),
    validation = Rule::new("has(self.gateway) || !has(self.provider) || self.provider != 'gateway'")
        .message("spec.ingress.gateway is required with provider gateway: name the Gateway the HTTPRoute attaches to"),
    validation = Rule::new("!has(self.gateway) || (has(self.provider) && self.provider == 'gateway')")
        .message("spec.ingress.gateway applies only to provider gateway"),
    validation = Rule::new("!has(self.provider) || self.provider != 'gateway' || !has(self.sessionAffinity) || self.sessionAffinity == 'none'")
        .message("spec.ingress.sessionAffinity must be none with provider gateway: the standard channel of Gateway API v1.4.0 has no sessionPersistence on HTTPRoute (it is experimental) and Traefik v3.6's Gateway provider does not implement it; chat-node needs no stickiness (history and fan-out live in Redis)"),
    validation = Rule::new("!has(self.provider) || self.provider != 'gateway' || !has(self.className)")
        .message("spec.ingress.className does not apply to provider gateway: the class is the Gateway's (gatewayClassName)"),
    validation = Rule::new("!has(self.provider) || self.provider != 'gateway' || !has(self.tlsSecretName)")
        .message("spec.ingress.tlsSecretName does not apply to provider gateway: TLS terminates at the Gateway's listener"),
    validation = Rule::new("!has(self.provider) || self.provider != 'gateway' || !has(self.cookieName)")
        .message("spec.ingress.cookieName does not apply to provider gateway: it has no cookie session affinity"),
    validation = Rule::new("(has(self.provider) && self.provider != 'traefik') || !has(self.sessionAffinity) || self.sessionAffinity != 'clientIP'")
        .message("spec.ingress.sessionAffinity clientIP is not available with provider traefik (the default): Traefik's Ingress provider cannot hash by client address, and behind it kube-proxy sees Traefik's own address, so every client of one Traefik replica would stick to one chat-node; use cookie (the default), none, or provider nginx")
)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// `ingressClassName` of the Ingress; unset uses the cluster's default class. Not with
    /// provider `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// `traefik` (default) or `nginx` (an Ingress with that controller's annotations), or
    /// `gateway` (a Gateway API HTTPRoute attached to `gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<IngressProvider>,

    /// With provider `gateway` (and only then, where it is required): the Gateway the
    /// HTTPRoute attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,

    /// Host name clients use, e.g. `chat.example.com` (the HTTPRoute's `hostnames` with provider
    /// `gateway`). Unset: the Ingress or route answers every host name (cookie affinity works
    /// either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.ingress.host must be a lowercase DNS name such as chat.example.com"))]
    pub host: Option<String>,

    /// Secret with the TLS certificate for `host`; unset serves plain HTTP. Not with provider
    /// `gateway` (TLS terminates at the Gateway's listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,

    /// `cookie` (default), `clientIP` (provider `nginx` only) or `none`; with provider
    /// `gateway` only `none` (its default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,

    /// Name of the affinity cookie (default `chat-node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+$')")
        .message("spec.ingress.cookieName may contain only letters, digits, '_' and '-'"))]
    pub cookie_name: Option<String>,

    /// Extra annotations for the Ingress or HTTPRoute (they win over the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Affinity cookie name when `cookieName` is unset.
pub const DEFAULT_COOKIE_NAME: &str = "chat-node";

impl IngressSpec {
    /// The provider, defaulted to Traefik.
    pub fn provider(&self) -> IngressProvider {
        self.provider.unwrap_or_default()
    }
    /// True with provider `gateway`: an HTTPRoute instead of an Ingress.
    pub fn is_gateway(&self) -> bool {
        self.provider() == IngressProvider::Gateway
    }
    /// The session affinity, defaulted: cookie, or none with provider `gateway` (whose standard
    /// HTTPRoute has no session persistence).
    pub fn session_affinity(&self) -> SessionAffinity {
        match self.session_affinity {
            Some(affinity) => affinity,
            None if self.is_gateway() => SessionAffinity::None,
            None => SessionAffinity::default(),
        }
    }
    /// The cookie name, defaulted.
    pub fn cookie_name(&self) -> &str {
        self.cookie_name.as_deref().unwrap_or(DEFAULT_COOKIE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_affinity_defaults_to_cookie_but_to_none_with_provider_gateway() {
        let traefik = IngressSpec::default();
        assert_eq!(traefik.provider(), IngressProvider::Traefik);
        assert_eq!(traefik.session_affinity(), SessionAffinity::Cookie);
        assert!(!traefik.is_gateway());
        let gateway = IngressSpec {
            provider: Some(IngressProvider::Gateway),
            ..IngressSpec::default()
        };
        assert!(gateway.is_gateway());
        assert_eq!(gateway.session_affinity(), SessionAffinity::None);
    }

    #[test]
    fn provider_gateway_is_spelt_gateway() {
        let spec: IngressSpec = serde_json::from_value(serde_json::json!({
            "provider": "gateway",
            "gateway": {"name": "traefik", "namespace": "traefik", "sectionName": "web"},
        }))
        .unwrap();
        assert_eq!(spec.provider, Some(IngressProvider::Gateway));
        let gateway = spec.gateway.unwrap();
        assert_eq!(gateway.name, "traefik");
        assert_eq!(gateway.section_name.as_deref(), Some("web"));
    }
}
