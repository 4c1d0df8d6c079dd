//! A kubelet stand-in: one Node (`sandbox`) whose pods are local processes.
//!
//! The control plane's controllers do their usual work — the Deployment and StatefulSet
//! controllers create pods, the ReplicaSet controller counts ready ones, the garbage collector
//! deletes children of a deleted ChatCluster. This loop does the node's part, once a second:
//! bind pending pods of the operator to the node, start what each pod describes (see
//! `pod_command`), probe readiness, write pod status (phase, IP, conditions, restarts), restart
//! crashed containers, stop and remove pods being deleted (SIGTERM, the pod's grace period,
//! then gone), keep the Node's Lease fresh, and point the proxy at the ready pods.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use test_harness::process::ManagedProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::pod_command::{self, Inputs, LocalCommand, Programs, Readiness};
use crate::ports::{self, PortBook};
use crate::proxy::{self, Nginx, ProxyConfig};

/// Name of the one Node this kubelet plays.
pub const NODE_NAME: &str = "sandbox";
/// Only pods carrying this label are run (the operator's children).
pub const POD_SELECTOR: &str = "app.kubernetes.io/managed-by=chat-operator";
const FIELD_MANAGER: &str = "chat-sandbox";

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("failed to {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("proxy: {0}")]
    Proxy(#[from] proxy::ProxyError),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeletError {
    let action = action.into();
    move |source| KubeletError::Kube { action, source }
}

/// A pod this node runs.
struct LocalPod {
    uid: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    image: String,
    command: LocalCommand,
    ports: BTreeMap<i32, u16>,
    port_names: BTreeMap<i32, String>,
    process: Option<ManagedProcess>,
    started_at: Timestamp,
    last_exit: Option<Instant>,
    restarts: i32,
    ready: bool,
    /// The IP shown in the pod's status (the process itself listens on loopback ports).
    ip: Ipv4Addr,
    reported: Option<(bool, i32)>,
    grace: Duration,
    stopping: Option<JoinHandle<()>>,
}

impl LocalPod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The node: its pods, ports and proxy.
pub struct Kubelet {
    client: Client,
    programs: Programs,
    dir: PathBuf,
    pods: HashMap<String, LocalPod>,
    ports: PortBook,
    proxy: Nginx,
    last_lease: Option<Instant>,
    /// Pods started so far: the source of their status IPs.
    started_pods: u32,
}

impl Kubelet {
    /// Registers the Node and starts the proxy; `dir` holds pod directories and logs.
    pub async fn start(
        client: Client,
        programs: Programs,
        dir: &Path,
        proxy: Nginx,
    ) -> Result<Self, KubeletError> {
        let mut me = Self {
            client,
            programs,
            dir: dir.to_path_buf(),
            pods: HashMap::new(),
            ports: PortBook::default(),
            proxy,
            last_lease: None,
            started_pods: 0,
        };
        me.register_node().await?;
        Ok(me)
    }

    /// The proxy's loopback port (the demo page is served there).
    pub fn proxy_port(&self) -> u16 {
        self.proxy.port()
    }

    async fn register_node(&mut self) -> Result<(), KubeletError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                "topology.kubernetes.io/zone": "sandbox",
            }},
        });
        nodes
            .patch(
                NODE_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&node),
            )
            .await
            .map_err(kube_err("register the sandbox Node"))?;
        self.heartbeat().await
    }

    /// Node status and Lease: the node lifecycle controller would evict the pods of a silent node.
    async fn heartbeat(&mut self) -> Result<(), KubeletError> {
        let now = Timestamp::now();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = json!({"status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "SandboxKubeletReady",
                "message": "chat-sandbox runs this node's pods as local processes",
                "lastHeartbeatTime": now.to_string(), "lastTransitionTime": now.to_string(),
            }],
        }});
        nodes
            .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(kube_err("update the Node status"))?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(NODE_NAME.into()),
                namespace: Some("kube-node-lease".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(NODE_NAME.into()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(now)),
                ..Default::default()
            }),
        };
        let mut value = serde_json::to_value(&lease).unwrap_or_default();
        value["apiVersion"] = "coordination.k8s.io/v1".into();
        value["kind"] = "Lease".into();
        leases
            .patch(
                NODE_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await
            .map_err(kube_err("renew the Node lease"))?;
        self.last_lease = Some(Instant::now());
        Ok(())
    }

    /// One pass of the loop. Errors are returned for logging; the next pass retries.
    pub async fn sync(&mut self) -> Result<(), KubeletError> {
        if self
            .last_lease
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.heartbeat().await?;
        }
        self.proxy.ensure_running()?;
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let pods = pods_api
            .list(&ListParams::default().labels(POD_SELECTOR))
            .await
            .map_err(kube_err("list pods"))?
            .items;
        let services: Vec<Service> = Api::<Service>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list services"))?
            .items;

        self.reap_stopped();
        let mut seen = HashSet::new();
        for pod in &pods {
            let (Some(ns), Some(name), Some(uid)) = (
                &pod.metadata.namespace,
                &pod.metadata.name,
                &pod.metadata.uid,
            ) else {
                continue;
            };
            let key = format!("{ns}/{name}");
            seen.insert(key.clone());
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                match self.pods.get_mut(&key) {
                    Some(local) if local.uid == *uid => self.stop_pod(&key, true),
                    _ => delete_now(self.client.clone(), ns.clone(), name.clone()).await,
                }
                continue;
            }
            match node.as_deref() {
                None => self.bind(ns, name).await,
                Some(NODE_NAME) => {
                    if self.pods.get(&key).is_some_and(|p| p.uid != *uid) {
                        self.stop_pod(&key, false); // same name, new pod (StatefulSet): replace
                    }
                    if !self.pods.contains_key(&key) {
                        self.start_pod(pod, &services).await;
                    }
                }
                Some(_) => {}
            }
        }
        // pods removed from the API without a graceful deletion
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.stop_pod(&key, false);
        }
        self.supervise().await;
        self.report().await;
        self.update_proxy(&services).await
    }

    async fn bind(&self, ns: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME},
        });
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => info!(pod = %format!("{ns}/{name}"), "bound to node {NODE_NAME}"),
            // a scheduler may have been quicker: fine
            Err(kube::Error::Api(e)) if e.is_conflict() => {}
            Err(e) => warn!(pod = %format!("{ns}/{name}"), "binding failed: {e}"),
        }
    }

    async fn start_pod(&mut self, pod: &Pod, services: &[Service]) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let Some((container, kind)) = pod_command::select_container(pod) else {
            warn!(pod = %key, "no container with a known image; not run");
            return;
        };
        let (secrets, config_maps) = match self.namespace_data(&ns).await {
            Ok(d) => d,
            Err(e) => {
                warn!(pod = %key, "{e}");
                return;
            }
        };
        let ns_services: Vec<Service> = services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
            .cloned()
            .collect();
        let table = self.ports.service_table(&ns_services);
        let pod_dir = self.dir.join("pods").join(format!("{ns}_{name}"));
        let ports = self
            .ports
            .claim_container_ports(pod, container, &ns_services, &key);
        let inputs = Inputs {
            secrets: &secrets,
            config_maps: &config_maps,
            services: &table,
            programs: &self.programs,
            pod_dir: &pod_dir,
        };
        let command = match pod_command::translate(pod, container, kind, &ports, &inputs) {
            Ok(c) => c,
            Err(e) => {
                // like a kubelet: CreateContainerConfigError, retried on the next pass
                warn!(pod = %key, "cannot start yet: {e}");
                self.ports.release(&key);
                return;
            }
        };
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        self.started_pods = self.started_pods.wrapping_add(1);
        let mut local = LocalPod {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: ns,
            name,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            image: container.image.clone().unwrap_or_default(),
            command,
            ports,
            port_names: container
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.container_port, p.name.clone()?)))
                .collect(),
            process: None,
            started_at: Timestamp::now(),
            last_exit: None,
            restarts: 0,
            ready: false,
            ip: pod_ip(self.started_pods),
            reported: None,
            grace: Duration::from_secs(u64::try_from(grace).unwrap_or(30)),
            stopping: None,
        };
        match spawn(&local.command, &pod_dir, &local.name) {
            Ok(p) => {
                info!(pod = %key, ports = ?local.ports, log = %pod_dir.join("container.log").display(), "started {}", local.command.container);
                local.process = Some(p);
            }
            Err(e) => warn!(pod = %key, "start failed: {e}"),
        }
        self.pods.insert(key, local);
    }

    async fn namespace_data(
        &self,
        ns: &str,
    ) -> Result<(BTreeMap<String, Secret>, BTreeMap<String, ConfigMap>), KubeletError> {
        let secrets = Api::<Secret>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list secrets"))?
            .items
            .into_iter()
            .filter_map(|s| Some((s.metadata.name.clone()?, s)))
            .collect();
        let config_maps = Api::<ConfigMap>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list config maps"))?
            .items
            .into_iter()
            .filter_map(|c| Some((c.metadata.name.clone()?, c)))
            .collect();
        Ok((secrets, config_maps))
    }

    /// Stops a pod's process in the background (SIGTERM, its grace period, SIGKILL); with
    /// `delete`, removes the pod object afterwards, as a kubelet finishes a graceful deletion.
    fn stop_pod(&mut self, key: &str, delete: bool) {
        let Some(local) = self.pods.get_mut(key) else {
            return;
        };
        if local.stopping.is_some() {
            return;
        }
        info!(pod = %key, grace = ?local.grace, "stopping");
        local.ready = false;
        let process = local.process.take();
        let grace = local.grace;
        let client = self.client.clone();
        let (ns, name) = (local.namespace.clone(), local.name.clone());
        local.stopping = Some(tokio::spawn(async move {
            if let Some(mut p) = process {
                let _ = tokio::task::spawn_blocking(move || p.stop(grace)).await;
            }
            if delete {
                delete_now(client, ns, name).await;
            }
        }));
    }

    fn reap_stopped(&mut self) {
        let done: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.stopping.as_ref().is_some_and(JoinHandle::is_finished))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            self.pods.remove(&key);
            self.ports.release(&key);
            info!(pod = %key, "stopped");
        }
    }

    /// Restarts crashed containers (restartPolicy Always, with a short back-off) and probes.
    async fn supervise(&mut self) {
        for local in self.pods.values_mut().filter(|p| p.stopping.is_none()) {
            let running = local
                .process
                .as_mut()
                .is_some_and(ManagedProcess::is_running);
            if !running {
                if local.process.take().is_some() {
                    local.last_exit = Some(Instant::now());
                    warn!(pod = %local.key(), "container exited; restarting");
                }
                local.ready = false;
                let backoff =
                    Duration::from_secs(u64::try_from(local.restarts.clamp(0, 10)).unwrap_or(10));
                if local.last_exit.is_none_or(|t| t.elapsed() >= backoff) {
                    let pod_dir = self
                        .dir
                        .join("pods")
                        .join(format!("{}_{}", local.namespace, local.name));
                    match spawn(&local.command, &pod_dir, &local.name) {
                        Ok(p) => {
                            local.process = Some(p);
                            local.restarts += 1;
                            local.started_at = Timestamp::now();
                        }
                        Err(e) => warn!(pod = %local.key(), "restart failed: {e}"),
                    }
                }
                continue;
            }
            local.ready = probe(&local.command.readiness).await;
        }
    }

    /// Writes pod status where readiness or restarts changed.
    async fn report(&mut self) {
        for local in self.pods.values_mut().filter(|p| p.stopping.is_none()) {
            let now = (local.ready, local.restarts);
            if local.reported == Some(now) {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &local.namespace);
            let status = pod_status(local);
            match api
                .patch_status(&local.name, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => {
                    if local.reported.map(|r| r.0) != Some(local.ready) {
                        info!(pod = %local.key(), ready = local.ready, "status reported");
                    }
                    local.reported = Some(now);
                }
                Err(e) => warn!(pod = %local.key(), "status update failed: {e}"),
            }
        }
    }

    /// Points nginx at the ready pods behind each Ingress backend (the first Ingress of the
    /// operator; without one, the chat-node Service with cookie affinity).
    async fn update_proxy(&mut self, services: &[Service]) -> Result<(), KubeletError> {
        let ingresses = Api::<Ingress>::all(self.client.clone())
            .list(&ListParams::default().labels(POD_SELECTOR))
            .await
            .map_err(kube_err("list ingresses"))?
            .items;
        let ready_ports =
            |ns: &str,
             svc_name: &str,
             port: &k8s_openapi::api::networking::v1::ServiceBackendPort| {
                let Some(svc) = services.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(ns)
                        && s.metadata.name.as_deref() == Some(svc_name)
                }) else {
                    return Vec::new();
                };
                let Some(sp) = svc
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .find(|sp| {
                        port.number == Some(sp.port)
                            || (port.name.is_some() && port.name == sp.name)
                    })
                else {
                    return Vec::new();
                };
                let mut out: Vec<u16> = self
                    .pods
                    .values()
                    .filter(|p| p.ready && p.stopping.is_none() && p.namespace == ns)
                    .filter(|p| selects_labels(svc, &p.labels))
                    .filter_map(|p| {
                        p.ports.iter().find_map(|(cp, local)| {
                            let name = port_name(p, *cp);
                            ports::targets(sp.target_port.as_ref(), sp.port, *cp, name.as_deref())
                                .then_some(*local)
                        })
                    })
                    .collect();
                out.sort_unstable();
                out
            };
        let config = match ingresses.first() {
            Some(ing) => {
                let ns = ing.metadata.namespace.clone().unwrap_or_default();
                proxy::from_ingress(ing, |svc, port| ready_ports(&ns, svc, port))
            }
            None => fallback_config(services, ready_ports),
        };
        if self.proxy.apply(&config)? {
            info!(routes = ?config.routes.iter().map(|r| (&r.path, &r.servers)).collect::<Vec<_>>(), "proxy reloaded");
        }
        Ok(())
    }

    /// Whether a pod of `namespace/name` is ready.
    pub fn ready_pods(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.ready)
            .map(LocalPod::key)
            .collect();
        v.sort();
        v
    }

    /// Stops every pod (concurrently) and the proxy.
    pub async fn shutdown(mut self, grace: Duration) {
        let mut tasks = Vec::new();
        for (_, mut local) in self.pods.drain() {
            if let Some(t) = local.stopping.take() {
                tasks.push(t);
            }
            if let Some(mut p) = local.process.take() {
                let g = grace.min(local.grace);
                tasks.push(tokio::task::spawn_blocking(move || p.stop(g)));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        self.proxy.stop();
    }
}

/// The container port's name (`ws`, `admin`), for Services that target ports by name.
fn port_name(pod: &LocalPod, container_port: i32) -> Option<String> {
    pod.port_names.get(&container_port).cloned()
}

fn selects_labels(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Without an Ingress: every chat-node client Service (not headless), cookie affinity.
fn fallback_config(
    services: &[Service],
    ready_ports: impl Fn(&str, &str, &k8s_openapi::api::networking::v1::ServiceBackendPort) -> Vec<u16>,
) -> ProxyConfig {
    let mut routes = Vec::new();
    for svc in services {
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        if labels.get("app.kubernetes.io/name").map(String::as_str) != Some("chat-node") || headless
        {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(sp) = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .next()
        else {
            continue;
        };
        let port = k8s_openapi::api::networking::v1::ServiceBackendPort {
            number: Some(sp.port),
            name: None,
        };
        routes.push(proxy::Route {
            path: "/".into(),
            backend: format!("{ns}/{name}:{}", sp.port),
            servers: ready_ports(&ns, &name, &port),
        });
        break;
    }
    ProxyConfig {
        affinity: proxy::Affinity::Cookie {
            name: "INGRESSCOOKIE".into(),
            max_age: None,
            path: "/".into(),
        },
        read_timeout_s: 3600,
        send_timeout_s: 3600,
        routes,
    }
}

/// The `n`-th pod's status IP, in 10.244.0.0/16 (the usual pod network of a one-node cluster):
/// the endpoints controller rejects loopback addresses, so a pod shown as `127.0.0.1` would
/// leave its Services without endpoints and fill the Events with `FailedToUpdateEndpoint`.
fn pod_ip(n: u32) -> Ipv4Addr {
    let host = n % (256 * 254);
    Ipv4Addr::new(10, 244, (host / 254) as u8, (host % 254 + 1) as u8)
}

fn pod_status(local: &LocalPod) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let started = local.started_at.to_string();
    let ready = if local.ready { "True" } else { "False" };
    let running = local.process.is_some();
    let state = if running {
        json!({"running": {"startedAt": started}})
    } else {
        json!({"waiting": {"reason": "CrashLoopBackOff"}})
    };
    json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": local.ip.to_string(), "podIPs": [{"ip": local.ip.to_string()}],
        "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": local.command.container, "image": local.image, "imageID": "",
            "ready": local.ready, "started": running, "restartCount": local.restarts, "state": state,
        }],
    }})
}

async fn delete_now(client: Client, ns: String, name: String) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.is_not_found() => {}
        Err(e) => warn!(pod = %format!("{ns}/{name}"), "delete failed: {e}"),
    }
}

/// Writes the pod's files and starts its process (own process group, log in the pod dir).
fn spawn(
    cmd: &LocalCommand,
    pod_dir: &Path,
    hostname: &str,
) -> Result<ManagedProcess, test_harness::Error> {
    let io = |context: String| move |source| test_harness::Error::Io { context, source };
    std::fs::create_dir_all(pod_dir).map_err(io(format!("create {}", pod_dir.display())))?;
    for dir in &cmd.dirs {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    for (path, content) in &cmd.files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        std::fs::write(path, content).map_err(io(format!("write {}", path.display())))?;
    }
    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", pod_dir)
        .env("HOSTNAME", hostname)
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(pod_dir);
    ManagedProcess::spawn(hostname, command, &pod_dir.join("container.log"))
}

/// One readiness check: HTTP 200 (any 2xx/3xx, as a kubelet) or a TCP connect, within a second.
async fn probe(readiness: &Readiness) -> bool {
    let check = async {
        match readiness {
            Readiness::Running => true,
            Readiness::Tcp { port } => TcpStream::connect(("127.0.0.1", *port)).await.is_ok(),
            Readiness::Http { port, path } => {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", *port)).await else {
                    return false;
                };
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: chat-sandbox-probe\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut buf = [0u8; 32];
                let mut n = 0;
                while n < 12 {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(m) => n += m,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                head.split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .is_some_and(|c| (200..400).contains(&c))
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), check)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::pod_ip;

    #[test]
    fn pod_ips_are_distinct_valid_and_never_loopback() {
        let ips: Vec<_> = (0..256 * 254).map(pod_ip).collect();
        let distinct: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), ips.len());
        for ip in &ips {
            assert!(!ip.is_loopback() && ip.octets()[..2] == [10, 244], "{ip}");
            assert!(ip.octets()[3] != 0 && ip.octets()[3] != 255, "{ip}");
        }
        assert_eq!(pod_ip(0).to_string(), "10.244.0.1");
        assert_eq!(pod_ip(254).to_string(), "10.244.1.1");
    }
}
