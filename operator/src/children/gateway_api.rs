//! The Gateway API objects the operator writes (HTTPRoute) and reads (Gateway), as small serde
//! types of only the fields it uses (`gateway.networking.k8s.io/v1`, standard channel v1.4.0).
//!
//! The maintained `gateway-api` crate is not used: its newest release (0.22) is built on kube 4
//! and k8s-openapi 0.28, while this operator is on kube 5 and k8s-openapi 0.29. The CRDs belong
//! to the Gateway API project and may be absent from a cluster, so these types carry no schema
//! (`schema = "disabled"`): they are never installed by us, only used when present. Fields the
//! operator does not know are ignored when reading and never written.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// `gateway.networking.k8s.io/v1` HTTPRoute: HTTP routing from a Gateway's listeners to Services.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    status = "HttpRouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateways (and listeners) the route attaches to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Host names the route answers; empty: every host name the listener accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Matches and where they are sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// A reference from a route to a Gateway (optionally one of its listeners).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// `gateway.networking.k8s.io` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the Gateway; unset: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the Gateway.
    pub name: String,
    /// Name of the listener; unset: every listener that accepts the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// One rule: requests matching any of `matches` go to `backendRefs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
}

/// A request match (only by path here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
}

/// A path match: `type` is `Exact`, `PathPrefix` or `RegularExpression`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpPathMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

/// Where matching requests go: a Service port (the defaults of `group` and `kind`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// Name of the Service.
    pub name: String,
    /// The Service's port number (a backend reference cannot name a port).
    pub port: i32,
}

/// What the Gateway controllers report about a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteStatus {
    /// One entry per parent (Gateway) and controller.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// The status of a route for one of its parents, as written by one controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent this entry is about.
    pub parent_ref: ParentReference,
    /// The controller that wrote it (e.g. `traefik.io/gateway-controller`).
    #[serde(default)]
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`, ... (metav1.Condition; only the fields used here).
    #[serde(default)]
    pub conditions: Vec<StatusCondition>,
}

/// A `metav1.Condition` as written by another controller: read leniently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `gateway.networking.k8s.io/v1` Gateway: listeners on addresses, run by a Gateway controller.
/// Only read (for the listener a route attaches to and the published address).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// A listener of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: i32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or an implementation-specific protocol.
    pub protocol: String,
}

/// What the Gateway controller reports about a Gateway (only the addresses are used).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// The addresses the Gateway is reachable at, once its controller has them.
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
}

/// An address of a Gateway: `type` `IPAddress` (default), `Hostname` or implementation-specific.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatusAddress {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}
