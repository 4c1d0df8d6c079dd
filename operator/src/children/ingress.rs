//! The Ingress: sticky sessions for the chosen controller and timeouts long enough for
//! WebSockets and SSE (an idle-but-alive connection must not be cut at the default 60 s).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::ResourceExt;

use super::{COMPONENT_SERVER, child_meta, names};
use crate::api::{ChatCluster, IngressProvider, IngressSpec, SessionAffinity};
use crate::labels;

/// Proxy read/send timeout for ingress-nginx, in seconds (one hour; heartbeats keep it alive).
pub const NGINX_STREAM_TIMEOUT_SECONDS: &str = "3600";
/// Lifetime of the affinity cookie, in seconds (two days).
pub const COOKIE_MAX_AGE_SECONDS: &str = "172800";

fn nginx_annotations(ingress: &IngressSpec) -> BTreeMap<String, String> {
    let p = "nginx.ingress.kubernetes.io";
    let mut a = BTreeMap::from([
        (
            format!("{p}/proxy-read-timeout"),
            NGINX_STREAM_TIMEOUT_SECONDS.to_string(),
        ),
        (
            format!("{p}/proxy-send-timeout"),
            NGINX_STREAM_TIMEOUT_SECONDS.to_string(),
        ),
        // SSE: pass events through as they come instead of buffering responses.
        (format!("{p}/proxy-buffering"), "off".to_string()),
    ]);
    match ingress.session_affinity() {
        SessionAffinity::Cookie => {
            a.insert(format!("{p}/affinity"), "cookie".into());
            a.insert(format!("{p}/affinity-mode"), "persistent".into());
            a.insert(
                format!("{p}/session-cookie-name"),
                ingress.cookie_name().into(),
            );
            a.insert(format!("{p}/session-cookie-path"), "/".into());
            a.insert(format!("{p}/session-cookie-samesite"), "Lax".into());
            a.insert(
                format!("{p}/session-cookie-max-age"),
                COOKIE_MAX_AGE_SECONDS.into(),
            );
            if ingress.tls_secret_name.is_some() {
                a.insert(format!("{p}/session-cookie-secure"), "true".into());
            }
        }
        SessionAffinity::ClientIp => {
            a.insert(format!("{p}/upstream-hash-by"), "$remote_addr".into());
        }
        SessionAffinity::None => {}
    }
    a
}

/// Traefik: stickiness lives on the Service (see `services.rs`); timeouts are entry-point
/// settings of Traefik itself and WebSocket upgrades are not cut by its defaults.
fn traefik_annotations(ingress: &IngressSpec) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if ingress.tls_secret_name.is_some() {
        a.insert(
            "traefik.ingress.kubernetes.io/router.tls".into(),
            "true".into(),
        );
    }
    a
}

/// The client URL: `wss://host/ws` with TLS, `ws://host/ws` without.
pub fn endpoint(ingress: &IngressSpec) -> Option<String> {
    let host = ingress.host.as_ref()?;
    let scheme = if ingress.tls_secret_name.is_some() {
        "wss"
    } else {
        "ws"
    };
    Some(format!("{scheme}://{host}/ws"))
}

/// The Ingress, when `spec.ingress` is set with an Ingress provider (`nginx`, `traefik`; provider
/// `gateway` makes an HTTPRoute instead, see `http_route.rs`).
pub fn build(cluster: &ChatCluster) -> Option<Ingress> {
    let spec = cluster.spec.ingress.as_ref()?;
    let name = cluster.name_any();
    let mut annotations = match spec.provider() {
        IngressProvider::Nginx => nginx_annotations(spec),
        IngressProvider::Traefik => traefik_annotations(spec),
        IngressProvider::Gateway => return None,
    };
    annotations.extend(spec.annotations.clone().unwrap_or_default()); // the user's win

    let mut metadata = child_meta(
        cluster,
        names::main(&name),
        labels::APP_CHAT_NODE,
        COMPONENT_SERVER,
    );
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);

    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: names::main(&name),
            port: Some(ServiceBackendPort {
                name: Some("ws".into()),
                number: None,
            }),
        }),
        resource: None,
    };
    Some(Ingress {
        metadata,
        spec: Some(K8sIngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: spec.host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend,
                    }],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: spec.host.clone().map(|h| vec![h]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::fixtures::cluster;

    fn with_ingress(spec: IngressSpec) -> ChatCluster {
        let mut c = cluster("demo");
        c.spec.ingress = Some(spec);
        c
    }

    fn annotations(i: &Ingress) -> &BTreeMap<String, String> {
        i.metadata.annotations.as_ref().unwrap()
    }

    #[test]
    fn no_ingress_spec_no_ingress() {
        assert!(build(&cluster("demo")).is_none());
    }

    #[test]
    fn provider_gateway_makes_no_ingress() {
        let c = with_ingress(IngressSpec {
            provider: Some(IngressProvider::Gateway),
            gateway: Some(crate::api::GatewayRef {
                name: "traefik".into(),
                ..Default::default()
            }),
            ..IngressSpec::default()
        });
        assert!(build(&c).is_none());
    }

    #[test]
    fn nginx_cookie_affinity_with_websocket_timeouts_and_tls() {
        let i = build(&with_ingress(IngressSpec {
            provider: Some(IngressProvider::Nginx),
            class_name: Some("nginx".into()),
            host: Some("chat.example.com".into()),
            tls_secret_name: Some("chat-tls".into()),
            ..IngressSpec::default()
        }))
        .unwrap();
        let a = annotations(&i);
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        assert_eq!(
            a["nginx.ingress.kubernetes.io/session-cookie-name"],
            "chat-node"
        );
        assert_eq!(
            a["nginx.ingress.kubernetes.io/session-cookie-secure"],
            "true"
        );
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
        let spec = i.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("chat-tls"));
        assert_eq!(
            tls.hosts.as_deref(),
            Some(&["chat.example.com".to_string()][..])
        );
        let rule = &spec.rules.unwrap()[0];
        let backend = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .as_ref()
            .unwrap();
        assert_eq!(backend.name, "demo");
        assert_eq!(backend.port.as_ref().unwrap().name.as_deref(), Some("ws"));
    }

    #[test]
    fn cookie_affinity_without_a_host_is_a_host_less_rule_with_the_cookie() {
        let i = build(&with_ingress(IngressSpec {
            provider: Some(IngressProvider::Nginx),
            ..IngressSpec::default()
        }))
        .unwrap();
        let a = annotations(&i);
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/session-cookie-secure"));
        let spec = i.spec.unwrap();
        assert_eq!(spec.rules.unwrap()[0].host, None, "answers every host name");
        assert!(spec.tls.is_none());
    }

    #[test]
    fn the_default_provider_is_traefik_with_the_cookie_on_the_service() {
        let c = with_ingress(IngressSpec::default());
        let i = build(&c).unwrap();
        let nginx = i
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("nginx."))
            .count();
        assert_eq!(nginx, 0, "no ingress-nginx annotations by default");
        let service = crate::children::services::build_client(&c);
        assert_eq!(
            service.metadata.annotations.unwrap()["traefik.ingress.kubernetes.io/service.sticky.cookie"],
            "true"
        );
    }

    #[test]
    fn nginx_client_ip_hashes_the_remote_address() {
        let i = build(&with_ingress(IngressSpec {
            provider: Some(IngressProvider::Nginx),
            session_affinity: Some(SessionAffinity::ClientIp),
            ..IngressSpec::default()
        }))
        .unwrap();
        let a = annotations(&i);
        assert_eq!(
            a["nginx.ingress.kubernetes.io/upstream-hash-by"],
            "$remote_addr"
        );
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/affinity"));
    }

    #[test]
    fn traefik_ingress_carries_no_nginx_annotations_and_user_annotations_win() {
        let i = build(&with_ingress(IngressSpec {
            provider: Some(IngressProvider::Traefik),
            host: Some("chat.example.com".into()),
            tls_secret_name: Some("tls".into()),
            annotations: Some(BTreeMap::from([(
                "traefik.ingress.kubernetes.io/router.entrypoints".into(),
                "websecure".into(),
            )])),
            ..IngressSpec::default()
        }))
        .unwrap();
        let a = annotations(&i);
        assert!(a.keys().all(|k| !k.starts_with("nginx.")));
        assert_eq!(a["traefik.ingress.kubernetes.io/router.tls"], "true");
        assert_eq!(
            a["traefik.ingress.kubernetes.io/router.entrypoints"],
            "websecure"
        );
    }

    #[test]
    fn endpoint_uses_wss_with_tls() {
        let mut spec = IngressSpec {
            host: Some("chat.example.com".into()),
            ..IngressSpec::default()
        };
        assert_eq!(endpoint(&spec).as_deref(), Some("ws://chat.example.com/ws"));
        spec.tls_secret_name = Some("tls".into());
        assert_eq!(
            endpoint(&spec).as_deref(),
            Some("wss://chat.example.com/ws")
        );
    }
}
