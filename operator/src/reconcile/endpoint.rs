//! `status.endpoint`: the WebSocket URL clients connect to. Pure functions of the spec and of
//! what the reconciler read back, so every rule is unit-tested.
//!
//! - No `spec.ingress`: the in-cluster Service URL `ws://<name>.<namespace>.svc:8080/ws`.
//! - An Ingress with `host`: `wss://<host>/ws` with `tlsSecretName`, else `ws://<host>/ws`.
//! - An Ingress without `host`: the address the ingress controller publishes in the Ingress's
//!   `status.loadBalancer.ingress[0]` (`ip`, else `hostname`), with `:port` only when the
//!   controller reports ports there and none of them is the scheme's default (80 for `ws`);
//!   until an address is published, the in-cluster URL.

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;

use super::status::Observed;
use crate::api::ChatCluster;
use crate::children::{WS_PORT, ingress, names};

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
        .is_some_and(|i| i.host.is_none())
}

/// Where clients connect, from the spec and what was read back (see the module docs).
pub fn endpoint(cluster: &ChatCluster, observed: &Observed) -> String {
    let Some(spec) = cluster.spec.ingress.as_ref() else {
        return in_cluster(cluster);
    };
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
    use crate::api::IngressSpec;
    use crate::children::fixtures::cluster;

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
