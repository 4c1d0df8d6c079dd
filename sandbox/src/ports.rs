//! Loopback ports for pods and Services.
//!
//! Every Service port gets one stable local port for the sandbox's lifetime, so the address a
//! pod's env points at (`redis://demo-redis:6379` -> `127.0.0.1:<port>`) never changes. The
//! first running pod behind that Service port listens on it directly (for a one-replica Redis
//! that is exactly "the Service"); further pods of the same Service get fresh ports, which only
//! the proxy needs to know.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pod_command::ServiceTable;

/// Who holds which local port.
#[derive(Debug, Default)]
pub struct PortBook {
    service_ports: HashMap<(String, String, i32), u16>,
    in_use: HashMap<u16, String>,
}

impl PortBook {
    /// The stable local port of `namespace/service:port`.
    pub fn service_port(&mut self, namespace: &str, service: &str, port: i32) -> u16 {
        let key = (namespace.to_string(), service.to_string(), port);
        if let Some(p) = self.service_ports.get(&key) {
            return *p;
        }
        let p = self.fresh();
        self.service_ports.insert(key, p);
        p
    }

    /// Claims `preferred` when nobody runs on it, else a fresh port, for `owner`.
    pub fn claim(&mut self, preferred: &[u16], owner: &str) -> u16 {
        let port = preferred
            .iter()
            .copied()
            .find(|p| !self.in_use.contains_key(p))
            .unwrap_or_else(|| self.fresh());
        self.in_use.insert(port, owner.to_string());
        port
    }

    /// Gives back every port `owner` holds.
    pub fn release(&mut self, owner: &str) {
        self.in_use.retain(|_, o| o != owner);
    }

    fn fresh(&self) -> u16 {
        loop {
            let p = test_harness::free_port();
            if !self.in_use.contains_key(&p) && !self.service_ports.values().any(|v| *v == p) {
                return p;
            }
        }
    }

    /// Local ports for every port of `container` in `pod`, preferring the Service ports that
    /// target them.
    pub fn claim_container_ports(
        &mut self,
        pod: &Pod,
        container: &Container,
        services: &[Service],
        owner: &str,
    ) -> BTreeMap<i32, u16> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let mut out = BTreeMap::new();
        for cp in container.ports.iter().flatten() {
            let mut preferred = Vec::new();
            for svc in services.iter().filter(|s| selects(s, pod)) {
                let name = svc.metadata.name.clone().unwrap_or_default();
                for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                    if targets(
                        sp.target_port.as_ref(),
                        sp.port,
                        cp.container_port,
                        cp.name.as_deref(),
                    ) {
                        preferred.push(self.service_port(&namespace, &name, sp.port));
                    }
                }
            }
            out.insert(cp.container_port, self.claim(&preferred, owner));
        }
        out
    }

    /// Every name each Service answers to, with its ports' local ports.
    pub fn service_table(&mut self, services: &[Service]) -> ServiceTable {
        let mut table = ServiceTable::new();
        for svc in services {
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let name = svc.metadata.name.clone().unwrap_or_default();
            let ports: HashMap<i32, u16> = svc
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|sp| (sp.port, self.service_port(&ns, &name, sp.port)))
                .collect();
            for host in [
                name.clone(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
            ] {
                table.insert(host, ports.clone());
            }
        }
        table
    }
}

/// Whether the Service's selector picks the pod (same namespace, every selector label matches).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    if svc.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a Service port (`port`, `target_port`) lands on this container port.
pub fn targets(
    target_port: Option<&IntOrString>,
    port: i32,
    container_port: i32,
    port_name: Option<&str>,
) -> bool {
    match target_port {
        Some(IntOrString::Int(t)) => *t == container_port,
        Some(IntOrString::String(n)) => Some(n.as_str()) == port_name,
        None => port == container_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ports_are_stable_and_claimed_once() {
        let mut book = PortBook::default();
        let svc = book.service_port("default", "demo-redis", 6379);
        assert_eq!(book.service_port("default", "demo-redis", 6379), svc);
        assert_eq!(book.claim(&[svc], "pod-a"), svc);
        let other = book.claim(&[svc], "pod-b");
        assert_ne!(other, svc, "a second pod of the service gets its own port");
        book.release("pod-a");
        assert_eq!(
            book.claim(&[svc], "pod-c"),
            svc,
            "released ports are reused"
        );
    }

    #[test]
    fn target_ports_match_by_number_name_or_port() {
        assert!(targets(Some(&IntOrString::Int(8080)), 80, 8080, None));
        assert!(targets(
            Some(&IntOrString::String("ws".into())),
            80,
            8080,
            Some("ws")
        ));
        assert!(!targets(
            Some(&IntOrString::String("ws".into())),
            80,
            8080,
            Some("admin")
        ));
        assert!(targets(None, 9091, 9091, None));
    }
}
