//! `status.endpoint`: the WebSocket URL clients connect to. Pure functions of the spec and of
//! what the reconciler read back, so every rule is unit-tested.
//!
//! - No `spec.ingress`: the in-cluster Service URL `ws://<name>.<namespace>.svc:8080/ws`.
//! - An Ingress with `host`: `wss://<host>/ws` with `tlsSecretName`, else `ws://<host>/ws`.
//! - An Ingress without `host`: the address the ingress controller publishes in the Ingress's
//!   `status.loadBalancer.ingress[0]` (`ip`, else `hostname`), with `:port` only when the
//!   controller reports ports there and none of them is the scheme's default (80 for `ws`);
//!   until an address is published, the in-cluster URL.
//! - An HTTPRoute (provider `gateway`) with `host`: `ws://<host>/ws`, `wss` when the listener
//!   the route attaches to (`sectionName`, else the Gateway's first HTTP/HTTPS listener) is
//!   HTTPS. Without `host`: the Gateway's `status.addresses[0].value` with that listener's port
//!   (`:port` only when it is not 80 for `ws` / 443 for `wss`); until the Gateway publishes an
//!   address (or while it cannot be read), the in-cluster URL.

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;

use super::status::Observed;
use crate::api::{ChatCluster, IngressSpec};
use crate::children::{WS_PORT, http_route, ingress, names};

/// The path chat-node serves WebSockets on.
const WS_PATH: &str = "/ws";

/// An address published for the cluster by an ingress controller: a host (IP address or DNS
/// name) and the ports it reports (empty when it reports none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// IP address or host name.
    pub host: String,
    /// Ports the controller reports for the address (empty: the scheme's default).
    pub ports: Vec<i32>,
}

/// `ws://host[:port]/ws` (`wss` with `tls`). The port is written only when `ports` is not empty
/// and does not contain the scheme's default port (80 for `ws`, 443 for `wss`); then it is the
/// first one. An IPv6 address is bracketed.
pub fn url(tls: bool, host: &str, ports: &[i32]) -> String {
    let (scheme, default) = if tls { ("wss", 443) } else { ("ws", 80) };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match ports.first() {
        Some(port) if !ports.contains(&default) => format!("{scheme}://{host}:{port}{WS_PATH}"),
        _ => format!("{scheme}://{host}{WS_PATH}"),
    }
}

/// The in-cluster URL of the client Service.
pub fn in_cluster(cluster: &ChatCluster) -> String {
    format!(
        "ws://{}.{}.svc:{WS_PORT}{WS_PATH}",
        names::main(&cluster.name_any()),
        cluster.namespace().unwrap_or_default()
    )
}

/// The first address the ingress controller published on `ingress`
/// (`status.loadBalancer.ingress[0]`): its `ip`, else its `hostname`, with the ports it reports
/// (those without an `error`).
pub fn ingress_address(ingress: &Ingress) -> Option<Published> {
    let point = ingress
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?;
    let host = [&point.ip, &point.hostname]
        .into_iter()
        .flatten()
        .find(|h| !h.is_empty())?
        .clone();
    let ports = point
        .ports
        .iter()
        .flatten()
        .filter(|p| p.error.is_none())
        .map(|p| p.port)
        .collect();
    Some(Published { host, ports })
}

/// True when the endpoint of `cluster` comes from its Ingress's status: an Ingress without a host.
pub fn needs_ingress_status(cluster: &ChatCluster) -> bool {
    cluster
        .spec
        .ingress
        .as_ref()
        .is_some_and(|i| i.host.is_none() && !i.is_gateway())
}

/// The endpoint of provider `gateway`, from the Gateway as read back.
fn gateway_endpoint(cluster: &ChatCluster, spec: &IngressSpec, observed: &Observed) -> String {
    let gateway = observed.gateway.as_ref().and_then(|g| g.gateway.as_ref());
    let section = spec
        .gateway
        .as_ref()
        .and_then(|g| g.section_name.as_deref());
    let listener = gateway.and_then(|g| http_route::attached_listener(g, section));
    let tls = listener.is_some_and(|l| l.protocol == "HTTPS");
    if let Some(host) = &spec.host {
        return url(tls, host, &[]);
    }
    match (gateway.and_then(http_route::gateway_address), listener) {
        (Some(address), Some(listener)) => url(tls, address, &[listener.port]),
        _ => in_cluster(cluster),
    }
}

/// Where clients connect, from the spec and what was read back (see the module docs).
pub fn endpoint(cluster: &ChatCluster, observed: &Observed) -> String {
    let Some(spec) = cluster.spec.ingress.as_ref() else {
        return in_cluster(cluster);
    };
    if spec.is_gateway() {
        return gateway_endpoint(cluster, spec, observed);
    }
    if let Some(url) = ingress::endpoint(spec) {
        return url;
    }
    observed
        .ingress
        .as_ref()
        .and_then(ingress_address)
        .map(|address| url(false, &address.host, &address.ports))
        .unwrap_or_else(|| in_cluster(cluster))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{
        IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressPortStatus, IngressStatus,
    };

    use super::*;
    use crate::api::{GatewayRef, IngressProvider};
    use crate::children::fixtures::cluster;
    use crate::children::gateway_api::{
        Gateway, GatewaySpec, GatewayStatus, GatewayStatusAddress, Listener,
    };
    use crate::reconcile::status::GatewayObserved;

    fn published(point: IngressLoadBalancerIngress) -> Ingress {
        Ingress {
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(vec![point]),
                }),
            }),
            ..Ingress::default()
        }
    }

    fn port(port: i32) -> IngressPortStatus {
        IngressPortStatus {
            port,
            protocol: "TCP".into(),
            error: None,
        }
    }

    fn hostless() -> ChatCluster {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec::default());
        c
    }

    fn with_ingress(ingress: Ingress) -> Observed {
        Observed {
            ingress: Some(ingress),
            ..Observed::default()
        }
    }

    #[test]
    fn urls_omit_default_ports_and_bracket_ipv6() {
        assert_eq!(url(false, "127.0.0.1", &[]), "ws://127.0.0.1/ws");
        assert_eq!(url(false, "127.0.0.1", &[80]), "ws://127.0.0.1/ws");
        assert_eq!(url(false, "127.0.0.1", &[8000]), "ws://127.0.0.1:8000/ws");
        assert_eq!(url(false, "127.0.0.1", &[8000, 80]), "ws://127.0.0.1/ws");
        assert_eq!(
            url(true, "lb.example.com", &[443]),
            "wss://lb.example.com/ws"
        );
        assert_eq!(
            url(true, "lb.example.com", &[80]),
            "wss://lb.example.com:80/ws"
        );
        assert_eq!(url(false, "2001:db8::1", &[]), "ws://[2001:db8::1]/ws");
    }

    #[test]
    fn no_ingress_is_the_in_cluster_url() {
        let c = cluster("demo");
        assert_eq!(
            endpoint(&c, &Observed::default()),
            "ws://demo.chat.svc:8080/ws"
        );
        assert!(!needs_ingress_status(&c));
    }

    #[test]
    fn a_host_wins_over_the_published_address() {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec {
            host: Some("chat.example.com".into()),
            tls_secret_name: Some("tls".into()),
            ..IngressSpec::default()
        });
        let observed = with_ingress(published(IngressLoadBalancerIngress {
            ip: Some("10.0.0.1".into()),
            ..Default::default()
        }));
        assert_eq!(endpoint(&c, &observed), "wss://chat.example.com/ws");
        assert!(!needs_ingress_status(&c));
    }

    #[test]
    fn without_a_host_the_published_address_is_the_endpoint_once_there() {
        let c = hostless();
        assert!(needs_ingress_status(&c));
        // Not published yet: the Ingress has no status, or an empty one.
        assert_eq!(
            endpoint(&c, &Observed::default()),
            "ws://demo.chat.svc:8080/ws"
        );
        assert_eq!(
            endpoint(&c, &with_ingress(Ingress::default())),
            "ws://demo.chat.svc:8080/ws"
        );
        let ip = IngressLoadBalancerIngress {
            ip: Some("127.0.0.1".into()),
            ..Default::default()
        };
        assert_eq!(
            endpoint(&c, &with_ingress(published(ip.clone()))),
            "ws://127.0.0.1/ws"
        );
        let on_8000 = IngressLoadBalancerIngress {
            ports: Some(vec![port(8000)]),
            ..ip.clone()
        };
        assert_eq!(
            endpoint(&c, &with_ingress(published(on_8000))),
            "ws://127.0.0.1:8000/ws"
        );
        let on_80 = IngressLoadBalancerIngress {
            ports: Some(vec![port(80)]),
            ..ip
        };
        assert_eq!(
            endpoint(&c, &with_ingress(published(on_80))),
            "ws://127.0.0.1/ws"
        );
        let dns = IngressLoadBalancerIngress {
            hostname: Some("lb-123.elb.example.com".into()),
            ..Default::default()
        };
        assert_eq!(
            endpoint(&c, &with_ingress(published(dns))),
            "ws://lb-123.elb.example.com/ws"
        );
    }

    fn gateway_cluster(host: Option<&str>, section: Option<&str>) -> ChatCluster {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec {
            provider: Some(IngressProvider::Gateway),
            gateway: Some(GatewayRef {
                name: "traefik".into(),
                namespace: Some("traefik".into()),
                section_name: section.map(Into::into),
            }),
            host: host.map(Into::into),
            ..IngressSpec::default()
        });
        c
    }

    fn gateway(address: Option<&str>) -> Gateway {
        let listener = |name: &str, protocol: &str, port| Listener {
            name: name.into(),
            hostname: None,
            port,
            protocol: protocol.into(),
        };
        let mut gateway = Gateway::new(
            "traefik",
            GatewaySpec {
                gateway_class_name: "traefik".into(),
                listeners: vec![
                    listener("web", "HTTP", 80),
                    listener("websecure", "HTTPS", 443),
                    listener("alt", "HTTP", 8000),
                    listener("altsecure", "HTTPS", 8443),
                ],
            },
        );
        gateway.status = address.map(|value| GatewayStatus {
            addresses: vec![GatewayStatusAddress {
                type_: None,
                value: value.into(),
            }],
        });
        gateway
    }

    fn with_gateway(gateway: Option<Gateway>) -> Observed {
        Observed {
            gateway: Some(GatewayObserved {
                api_installed: true,
                route: None,
                gateway,
            }),
            ..Observed::default()
        }
    }

    #[test]
    fn gateway_with_a_host_is_the_host_with_the_listeners_scheme() {
        let plain = gateway_cluster(Some("chat.example.com"), None);
        assert!(!needs_ingress_status(&plain));
        assert_eq!(
            endpoint(&plain, &with_gateway(Some(gateway(None)))),
            "ws://chat.example.com/ws"
        );
        assert_eq!(
            endpoint(&plain, &Observed::default()),
            "ws://chat.example.com/ws",
            "the Gateway not readable: plain ws"
        );
        let secure = gateway_cluster(Some("chat.example.com"), Some("altsecure"));
        assert_eq!(
            endpoint(&secure, &with_gateway(Some(gateway(Some("10.0.0.7"))))),
            "wss://chat.example.com/ws",
            "no port with a host"
        );
    }

    #[test]
    fn gateway_without_a_host_is_its_published_address_and_listener_port() {
        let in_cluster = "ws://demo.chat.svc:8080/ws";
        let web = gateway_cluster(None, None);
        assert!(!needs_ingress_status(&web));
        assert_eq!(endpoint(&web, &with_gateway(None)), in_cluster);
        assert_eq!(
            endpoint(&web, &with_gateway(Some(gateway(None)))),
            in_cluster,
            "no address published yet"
        );
        let published = with_gateway(Some(gateway(Some("127.0.0.1"))));
        assert_eq!(endpoint(&web, &published), "ws://127.0.0.1/ws");
        let at = |section| endpoint(&gateway_cluster(None, Some(section)), &published);
        assert_eq!(at("websecure"), "wss://127.0.0.1/ws");
        assert_eq!(at("alt"), "ws://127.0.0.1:8000/ws");
        assert_eq!(at("altsecure"), "wss://127.0.0.1:8443/ws");
        assert_eq!(at("missing"), in_cluster, "no such listener");
    }

    #[test]
    fn ports_reported_with_an_error_are_ignored() {
        let broken = IngressPortStatus {
            error: Some("PortAllocationFailed".into()),
            ..port(8443)
        };
        let address = ingress_address(&published(IngressLoadBalancerIngress {
            ip: Some("10.0.0.1".into()),
            ports: Some(vec![broken, port(8000)]),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(address.ports, [8000]);
    }
}
