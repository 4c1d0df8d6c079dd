//! The HTTPRoute of provider `gateway`: `/` of every host (or of `host`) to the client Service's
//! WebSocket port, attached to the Gateway named in the spec. Also what the route's status and
//! its Gateway say: whether the route is accepted, which listener it is on, where the Gateway
//! is reachable.
//!
//! No session affinity: the standard channel of Gateway API v1.4.0 has no `sessionPersistence`
//! on HTTPRoute (it is experimental), and chat-node needs none for correctness (history and
//! fan-out live in Redis; a reconnecting client resumes from its offset on any node).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::gateway_api::{
    GROUP, Gateway, HTTPRoute, HttpBackendRef, HttpPathMatch, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, Listener, ParentReference, RouteParentStatus, StatusCondition,
};
use super::{COMPONENT_SERVER, WS_PORT, child_meta, names};
use crate::api::{ChatCluster, GatewayRef};
use crate::labels;

/// Condition type on the ChatCluster (present only with provider `gateway`): has the Gateway
/// controller accepted the HTTPRoute?
pub const ROUTE_ACCEPTED: &str = "RouteAccepted";

/// Reasons of the `RouteAccepted` condition of our own making (a rejection carries the Gateway
/// controller's reason, e.g. `NotAllowedByListeners`, `BackendNotFound`).
pub mod reasons {
    /// Every Gateway controller reporting on the route accepted it and resolved its references.
    pub const ACCEPTED: &str = "Accepted";
    /// No controller has reported on the route's current generation yet (status `Unknown`).
    pub const PENDING: &str = "Pending";
    /// The Gateway API CRDs are not installed, so there is no route (status `Unknown`; the
    /// `OptionalApisAvailable` condition says so with a Warning).
    pub const API_NOT_INSTALLED: &str = "ApiNotInstalled";
    /// A controller refused the route without giving a reason.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
}

/// The route's spec and owner: the Gateway reference of `cluster`, if it uses provider `gateway`.
pub fn gateway_ref(cluster: &ChatCluster) -> Option<&GatewayRef> {
    let spec = cluster.spec.ingress.as_ref().filter(|i| i.is_gateway())?;
    spec.gateway.as_ref()
}

/// `(namespace, name)` of the Gateway `cluster` attaches to (the namespace defaults to the
/// ChatCluster's).
pub fn gateway_key(cluster: &ChatCluster) -> Option<(String, String)> {
    let gateway = gateway_ref(cluster)?;
    let namespace = gateway
        .namespace
        .clone()
        .or_else(|| cluster.namespace())
        .unwrap_or_default();
    Some((namespace, gateway.name.clone()))
}

/// True when `cluster` attaches its route to `gateway` (for the Gateway watch).
pub fn attaches_to(cluster: &ChatCluster, gateway: &Gateway) -> bool {
    gateway_key(cluster).is_some_and(|(namespace, name)| {
        Some(namespace) == gateway.namespace() && name == gateway.name_any()
    })
}

/// The HTTPRoute, when `spec.ingress.provider` is `gateway`.
pub fn build(cluster: &ChatCluster) -> Option<HTTPRoute> {
    let spec = cluster.spec.ingress.as_ref()?;
    let gateway = gateway_ref(cluster)?;
    let name = names::main(&cluster.name_any());
    let mut metadata = child_meta(
        cluster,
        name.clone(),
        labels::APP_CHAT_NODE,
        COMPONENT_SERVER,
    );
    metadata.annotations = spec.annotations.clone().filter(|a| !a.is_empty());
    Some(HTTPRoute {
        metadata,
        spec: HttpRouteSpec {
            parent_refs: vec![ParentReference {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: gateway.namespace.clone(),
                name: gateway.name.clone(),
                section_name: gateway.section_name.clone(),
            }],
            hostnames: spec.host.iter().cloned().collect(),
            rules: vec![HttpRouteRule {
                matches: vec![HttpRouteMatch {
                    path: Some(HttpPathMatch {
                        type_: "PathPrefix".into(),
                        value: "/".into(),
                    }),
                }],
                backend_refs: vec![HttpBackendRef {
                    name,
                    port: WS_PORT,
                }],
            }],
        },
        status: None,
    })
}

/// The listener of `gateway` the route attaches to: the one named `sectionName`, else the first
/// HTTP or HTTPS listener.
pub fn attached_listener<'a>(gateway: &'a Gateway, section: Option<&str>) -> Option<&'a Listener> {
    let mut listeners = gateway.spec.listeners.iter();
    match section {
        Some(section) => listeners.find(|l| l.name == section),
        None => listeners.find(|l| matches!(l.protocol.as_str(), "HTTP" | "HTTPS")),
    }
}

/// The first address the Gateway's controller published (`status.addresses[0].value`).
pub fn gateway_address(gateway: &Gateway) -> Option<&str> {
    gateway
        .status
        .as_ref()?
        .addresses
        .first()
        .map(|a| a.value.as_str())
        .filter(|v| !v.is_empty())
}

/// True when a status entry is about the Gateway `cluster` attaches to (the same name,
/// namespace and listener).
fn is_our_parent(cluster: &ChatCluster, route: &HTTPRoute, parent: &RouteParentStatus) -> bool {
    let (Some((namespace, name)), Some(wanted)) = (gateway_key(cluster), gateway_ref(cluster))
    else {
        return false;
    };
    let reference = &parent.parent_ref;
    let parent_namespace = reference.namespace.clone().or_else(|| route.namespace());
    reference.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && reference.name == name
        && parent_namespace.as_deref() == Some(namespace.as_str())
        && reference.section_name == wanted.section_name
}

/// A condition of `parent` that describes the route as it is now (not an older generation).
fn current<'a>(
    route: &HTTPRoute,
    parent: &'a RouteParentStatus,
    type_: &str,
) -> Option<&'a StatusCondition> {
    let generation = route.metadata.generation;
    parent.conditions.iter().find(|c| {
        c.type_ == type_
            && match (c.observed_generation, generation) {
                (Some(observed), Some(generation)) => observed >= generation,
                _ => true,
            }
    })
}

/// The `RouteAccepted` condition of `cluster` from its HTTPRoute as read back (`None`: there is
/// none yet): `False` with the controller's reason when a Gateway controller reports
/// `Accepted=False` or `ResolvedRefs=False` for our Gateway, `True` when one accepted it and
/// none refused it, else `Unknown` (`Pending`).
pub fn accepted_condition(
    cluster: &ChatCluster,
    route: Option<&HTTPRoute>,
    now: &Time,
) -> Condition {
    let gateway = gateway_key(cluster)
        .map(|(namespace, name)| format!("{namespace}/{name}"))
        .unwrap_or_default();
    let name = names::main(&cluster.name_any());
    let (status, reason, message) = match route {
        None => (
            "Unknown",
            reasons::PENDING.to_string(),
            format!("HTTPRoute {name} is not created yet"),
        ),
        Some(route) => {
            let parents: Vec<&RouteParentStatus> = route
                .status
                .iter()
                .flat_map(|s| &s.parents)
                .filter(|p| is_our_parent(cluster, route, p))
                .collect();
            let refused = parents.iter().find_map(|p| {
                ["Accepted", "ResolvedRefs"]
                    .into_iter()
                    .filter_map(|t| current(route, p, t))
                    .find(|c| c.status == "False")
                    .map(|c| (p, c))
            });
            let accepted = parents
                .iter()
                .find(|p| current(route, p, "Accepted").is_some_and(|c| c.status == "True"));
            match (refused, accepted) {
                (Some((parent, condition)), _) => (
                    "False",
                    if condition.reason.is_empty() {
                        reasons::NOT_ACCEPTED.to_string()
                    } else {
                        condition.reason.clone()
                    },
                    format!(
                        "HTTPRoute {name} on Gateway {gateway}: {} is False ({}): {}",
                        condition.type_, parent.controller_name, condition.message
                    ),
                ),
                (None, Some(parent)) => (
                    "True",
                    reasons::ACCEPTED.to_string(),
                    format!(
                        "HTTPRoute {name} is accepted by Gateway {gateway} ({})",
                        parent.controller_name
                    ),
                ),
                (None, None) => (
                    "Unknown",
                    reasons::PENDING.to_string(),
                    format!(
                        "no Gateway controller has accepted HTTPRoute {name} on Gateway {gateway} yet"
                    ),
                ),
            }
        }
    };
    Condition {
        type_: ROUTE_ACCEPTED.into(),
        status: status.into(),
        reason,
        message,
        observed_generation: cluster.metadata.generation,
        last_transition_time: now.clone(),
    }
}

/// The `RouteAccepted` condition while the Gateway API is not installed.
pub fn api_missing_condition(cluster: &ChatCluster, now: &Time) -> Condition {
    Condition {
        type_: ROUTE_ACCEPTED.into(),
        status: "Unknown".into(),
        reason: reasons::API_NOT_INSTALLED.into(),
        message: "the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute) is not installed: the HTTPRoute is created once it is".into(),
        observed_generation: cluster.metadata.generation,
        last_transition_time: now.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{IngressProvider, IngressSpec};
    use crate::children::fixtures::cluster;
    use crate::children::gateway_api::{
        GatewaySpec, GatewayStatus, GatewayStatusAddress, HttpRouteStatus,
    };

    fn gateway_cluster(gateway: GatewayRef, host: Option<&str>) -> ChatCluster {
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec {
            provider: Some(IngressProvider::Gateway),
            gateway: Some(gateway),
            host: host.map(Into::into),
            ..IngressSpec::default()
        });
        c
    }

    fn traefik() -> GatewayRef {
        GatewayRef {
            name: "traefik".into(),
            ..GatewayRef::default()
        }
    }

    fn now() -> Time {
        Time(Timestamp::from_second(100).unwrap())
    }

    #[test]
    fn no_route_without_provider_gateway() {
        assert!(build(&cluster("demo")).is_none());
        let mut c = cluster("demo");
        c.spec.ingress = Some(IngressSpec::default());
        assert!(build(&c).is_none(), "nginx makes an Ingress, not a route");
    }

    #[test]
    fn route_sends_everything_to_the_client_service_through_the_named_gateway() {
        let mut c = gateway_cluster(
            GatewayRef {
                name: "traefik".into(),
                namespace: Some("traefik".into()),
                section_name: Some("web".into()),
            },
            Some("chat.example.com"),
        );
        c.spec.ingress.as_mut().unwrap().annotations =
            Some(BTreeMap::from([("team".into(), "chat".into())]));
        let route = build(&c).unwrap();
        assert_eq!(route.metadata.name.as_deref(), Some("demo"));
        assert_eq!(route.metadata.namespace.as_deref(), Some("chat"));
        assert_eq!(route.metadata.annotations.as_ref().unwrap()["team"], "chat");
        assert_eq!(
            route.metadata.labels.as_ref().unwrap()[labels::MANAGED_BY],
            "chat-operator"
        );
        assert_eq!(
            route.metadata.owner_references.as_ref().unwrap()[0].kind,
            "ChatCluster"
        );
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(
            json["spec"],
            serde_json::json!({
                "parentRefs": [{
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": "traefik",
                    "name": "traefik",
                    "sectionName": "web",
                }],
                "hostnames": ["chat.example.com"],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "demo", "port": 8080}],
                }],
            })
        );
        assert!(json.get("status").is_none(), "status is never applied");
    }

    #[test]
    fn without_host_namespace_or_listener_those_fields_are_left_out() {
        let route = build(&gateway_cluster(traefik(), None)).unwrap();
        let json = serde_json::to_value(&route).unwrap();
        assert!(json["spec"].get("hostnames").is_none());
        assert_eq!(
            json["spec"]["parentRefs"][0],
            serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "traefik"})
        );
        assert!(route.metadata.annotations.is_none());
    }

    #[test]
    fn a_gateway_namespace_defaults_to_the_clusters() {
        let c = gateway_cluster(traefik(), None);
        assert_eq!(gateway_key(&c), Some(("chat".into(), "traefik".into())));
        let mut gateway = Gateway::new("traefik", GatewaySpec::default());
        gateway.metadata.namespace = Some("chat".into());
        assert!(attaches_to(&c, &gateway));
        gateway.metadata.namespace = Some("traefik".into());
        assert!(!attaches_to(&c, &gateway));
        assert!(!attaches_to(&cluster("demo"), &gateway));
    }

    fn listener(name: &str, protocol: &str, port: i32) -> Listener {
        Listener {
            name: name.into(),
            hostname: None,
            port,
            protocol: protocol.into(),
        }
    }

    #[test]
    fn the_attached_listener_is_the_named_one_else_the_first_http_one() {
        let gateway = Gateway::new(
            "traefik",
            GatewaySpec {
                gateway_class_name: "traefik".into(),
                listeners: vec![
                    listener("tcp", "TCP", 9000),
                    listener("web", "HTTP", 8000),
                    listener("websecure", "HTTPS", 8443),
                ],
            },
        );
        assert_eq!(attached_listener(&gateway, None).unwrap().name, "web");
        assert_eq!(
            attached_listener(&gateway, Some("websecure")).unwrap().port,
            8443
        );
        assert!(attached_listener(&gateway, Some("missing")).is_none());
    }

    #[test]
    fn the_gateway_address_is_its_first_published_one() {
        let mut gateway = Gateway::new("traefik", GatewaySpec::default());
        assert_eq!(gateway_address(&gateway), None);
        gateway.status = Some(GatewayStatus {
            addresses: vec![
                GatewayStatusAddress {
                    type_: Some("IPAddress".into()),
                    value: "10.0.0.7".into(),
                },
                GatewayStatusAddress {
                    type_: Some("Hostname".into()),
                    value: "lb.example.com".into(),
                },
            ],
        });
        assert_eq!(gateway_address(&gateway), Some("10.0.0.7"));
    }

    fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> StatusCondition {
        StatusCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} {status}"),
            observed_generation: Some(generation),
        }
    }

    fn reported(
        c: &ChatCluster,
        parent: ParentReference,
        conditions: Vec<StatusCondition>,
    ) -> HTTPRoute {
        let mut route = build(c).unwrap();
        route.metadata.generation = Some(2);
        route.status = Some(HttpRouteStatus {
            parents: vec![RouteParentStatus {
                parent_ref: parent,
                controller_name: "traefik.io/gateway-controller".into(),
                conditions,
            }],
        });
        route
    }

    fn ours() -> ParentReference {
        ParentReference {
            group: Some(GROUP.into()),
            kind: Some("Gateway".into()),
            name: "traefik".into(),
            ..ParentReference::default()
        }
    }

    #[test]
    fn route_acceptance_follows_the_gateway_controllers_report() {
        let c = gateway_cluster(traefik(), None);
        let status = |route: Option<&HTTPRoute>| {
            let cond = accepted_condition(&c, route, &now());
            (cond.status, cond.reason)
        };
        assert_eq!(
            status(None),
            ("Unknown".into(), reasons::PENDING.into()),
            "not created yet"
        );
        let fresh = build(&c).unwrap();
        assert_eq!(status(Some(&fresh)), ("Unknown".into(), "Pending".into()));

        let accepted = reported(
            &c,
            ours(),
            vec![
                condition("Accepted", "True", "Accepted", 2),
                condition("ResolvedRefs", "True", "ResolvedRefs", 2),
            ],
        );
        assert_eq!(status(Some(&accepted)), ("True".into(), "Accepted".into()));
        let message = accepted_condition(&c, Some(&accepted), &now()).message;
        assert!(message.contains("chat/traefik"), "{message}");

        let refused = reported(
            &c,
            ours(),
            vec![condition("Accepted", "False", "NotAllowedByListeners", 2)],
        );
        let cond = accepted_condition(&c, Some(&refused), &now());
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("False", "NotAllowedByListeners")
        );
        assert!(
            cond.message.contains("Accepted is False"),
            "{}",
            cond.message
        );
        assert!(
            cond.message.contains("traefik.io/gateway-controller"),
            "{}",
            cond.message
        );

        let unresolved = reported(
            &c,
            ours(),
            vec![
                condition("Accepted", "True", "Accepted", 2),
                condition("ResolvedRefs", "False", "BackendNotFound", 2),
            ],
        );
        assert_eq!(
            status(Some(&unresolved)),
            ("False".into(), "BackendNotFound".into())
        );
    }

    #[test]
    fn reports_on_older_generations_or_other_gateways_do_not_count() {
        let c = gateway_cluster(traefik(), None);
        let stale = reported(
            &c,
            ours(),
            vec![condition("Accepted", "False", "NotAllowedByListeners", 1)],
        );
        assert_eq!(
            accepted_condition(&c, Some(&stale), &now()).reason,
            reasons::PENDING
        );
        let elsewhere = reported(
            &c,
            ParentReference {
                name: "other".into(),
                ..ours()
            },
            vec![condition("Accepted", "False", "NoMatchingParent", 2)],
        );
        assert_eq!(
            accepted_condition(&c, Some(&elsewhere), &now()).reason,
            reasons::PENDING
        );
        let other_listener = reported(
            &c,
            ParentReference {
                section_name: Some("websecure".into()),
                ..ours()
            },
            vec![condition("Accepted", "True", "Accepted", 2)],
        );
        assert_eq!(
            accepted_condition(&c, Some(&other_listener), &now()).status,
            "Unknown"
        );
        let mut no_reason = reported(&c, ours(), vec![condition("Accepted", "False", "", 2)]);
        no_reason.status.as_mut().unwrap().parents[0]
            .parent_ref
            .namespace = Some("chat".into());
        assert_eq!(
            accepted_condition(&c, Some(&no_reason), &now()).reason,
            reasons::NOT_ACCEPTED,
            "an explicit namespace equal to the route's is the same parent"
        );
    }
}
