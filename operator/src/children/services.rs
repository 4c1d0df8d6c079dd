//! The client Service (WebSocket/SSE, port 8080) and the headless admin Service (metrics, 9091).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{ADMIN_PORT, COMPONENT_SERVER, WS_PORT, child_meta, names, node_selector};
use crate::api::{ChatCluster, IngressProvider, SessionAffinity};
use crate::labels;

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Traefik reads sticky-session settings from annotations on the Service it routes to.
fn traefik_annotations(cluster: &ChatCluster) -> Option<BTreeMap<String, String>> {
    let ingress = cluster.spec.ingress.as_ref()?;
    if ingress.provider() != IngressProvider::Traefik {
        return None;
    }
    let prefix = "traefik.ingress.kubernetes.io/service";
    let mut annotations = BTreeMap::new();
    match ingress.session_affinity() {
        SessionAffinity::Cookie => {
            annotations.insert(format!("{prefix}.sticky.cookie"), "true".into());
            annotations.insert(
                format!("{prefix}.sticky.cookie.name"),
                ingress.cookie_name().into(),
            );
            annotations.insert(format!("{prefix}.sticky.cookie.httponly"), "true".into());
            annotations.insert(format!("{prefix}.sticky.cookie.samesite"), "lax".into());
            if ingress.tls_secret_name.is_some() {
                annotations.insert(format!("{prefix}.sticky.cookie.secure"), "true".into());
            }
        }
        // Refused by the CRD's validation with provider traefik: Traefik's Ingress provider
        // cannot hash by client address, and routing through the ClusterIP (`nativelb`) made
        // kube-proxy see Traefik's address, so all of one Traefik replica's clients stuck to one
        // chat-node.
        SessionAffinity::ClientIp | SessionAffinity::None => {}
    }
    (!annotations.is_empty()).then_some(annotations)
}

/// The ClusterIP Service clients (and the Ingress) connect to, port 8080 named `ws`.
pub fn build_client(cluster: &ChatCluster) -> Service {
    let client_ip = cluster
        .spec
        .ingress
        .as_ref()
        .is_some_and(|i| i.session_affinity() == SessionAffinity::ClientIp);
    let mut metadata = child_meta(
        cluster,
        names::main(&cluster.name_any()),
        labels::APP_CHAT_NODE,
        COMPONENT_SERVER,
    );
    metadata.annotations = traefik_annotations(cluster);
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(node_selector(cluster)),
            ports: Some(vec![port("ws", WS_PORT)]),
            session_affinity: client_ip.then(|| "ClientIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The headless Service of the admin port: one DNS record per pod, ready or not, so metrics are
/// scraped from every pod (a draining or Redis-less node is exactly the one to watch).
pub fn build_admin(cluster: &ChatCluster) -> Service {
    Service {
        metadata: child_meta(
            cluster,
            names::admin_service(&cluster.name_any()),
            labels::APP_CHAT_NODE,
            "admin",
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(node_selector(cluster)),
            ports: Some(vec![port("admin", ADMIN_PORT)]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IngressSpec;
    use crate::children::fixtures::cluster;

    #[test]
    fn client_service_exposes_ws_on_8080_and_selects_chat_nodes() {
        let s = build_client(&cluster("demo"));
        let spec = s.spec.unwrap();
        let p = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("ws"), 8080));
        assert_eq!(p.target_port, Some(IntOrString::String("ws".into())));
        assert_eq!(spec.selector.unwrap()[labels::NAME], "chat-node");
        assert_eq!(spec.session_affinity, None);
        assert!(s.metadata.annotations.is_none());
    }

    #[test]
    fn admin_service_is_headless_and_publishes_not_ready_pods() {
        let s = build_admin(&cluster("demo"));
        assert_eq!(s.metadata.name.as_deref(), Some("demo-admin"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let p = &spec.ports.unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("admin"), 9091));
    }

    #[test]
    fn traefik_cookie_affinity_is_annotated_on_the_service() {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec {
            provider: Some(IngressProvider::Traefik),
            host: Some("chat.example.com".into()),
            tls_secret_name: Some("tls".into()),
            cookie_name: Some("sticky".into()),
            ..IngressSpec::default()
        });
        let a = build_client(&c).metadata.annotations.unwrap();
        assert_eq!(
            a["traefik.ingress.kubernetes.io/service.sticky.cookie"],
            "true"
        );
        assert_eq!(
            a["traefik.ingress.kubernetes.io/service.sticky.cookie.name"],
            "sticky"
        );
        assert_eq!(
            a["traefik.ingress.kubernetes.io/service.sticky.cookie.secure"],
            "true"
        );
    }

    #[test]
    fn client_ip_affinity_sets_service_affinity() {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec {
            provider: Some(IngressProvider::Nginx),
            session_affinity: Some(SessionAffinity::ClientIp),
            ..IngressSpec::default()
        });
        let s = build_client(&c);
        assert_eq!(
            s.spec.unwrap().session_affinity.as_deref(),
            Some("ClientIP")
        );
        // never routed through the ClusterIP behind Traefik (kube-proxy would see Traefik)
        assert!(s.metadata.annotations.is_none());
    }
}
