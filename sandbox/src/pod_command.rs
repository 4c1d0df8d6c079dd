//! From a Pod object to a local process: the part of a kubelet the sandbox needs.
//!
//! The sandbox runs the operator's real pod templates, so this module follows Kubernetes'
//! semantics where they matter for a chat-node or a redis-server: `command`/`args` over the
//! image's entrypoint, `env` with `valueFrom` (Secret, ConfigMap, downward API) and `$(VAR)`
//! expansion, `envFrom`, Secret/ConfigMap volumes written to files, readiness probes. What a
//! laptop cannot give (a pod IP, fixed ports), it maps: every container port gets a free
//! loopback port, and every `service:port` / `0.0.0.0:port` inside env values and args is
//! rewritten to the matching `127.0.0.1:<local port>`. Pure functions; the kubelet loop does
//! the I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Probe, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regex::Regex;

/// What a container image stands for on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// `…/chat-node:<tag>`: its entrypoint is the chat-node binary.
    ChatNode,
    /// `redis:<tag>` and friends: the official image runs `redis-server`.
    Redis,
}

impl ImageKind {
    /// Recognises an image reference by its repository name.
    pub fn of(image: &str) -> Option<Self> {
        let without_digest = image.split('@').next().unwrap_or(image);
        let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
        let repo = last.split(':').next().unwrap_or(last);
        match repo {
            "chat-node" => Some(Self::ChatNode),
            r if r == "redis" || r.starts_with("redis-") || r == "valkey" => Some(Self::Redis),
            _ => None,
        }
    }
}

/// Local binaries standing in for images.
#[derive(Debug, Clone)]
pub struct Programs {
    pub chat_node: PathBuf,
    pub redis_server: PathBuf,
}

/// `hostname` -> (service port -> local port), for every name a Service answers to
/// (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`).
pub type ServiceTable = HashMap<String, HashMap<i32, u16>>;

/// Everything besides the pod that the translation reads.
pub struct Inputs<'a> {
    pub secrets: &'a BTreeMap<String, Secret>,
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    pub services: &'a ServiceTable,
    pub programs: &'a Programs,
    /// the pod's private directory (volumes, data, HOME)
    pub pod_dir: &'a Path,
}

/// How to check readiness of the local process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// no probe: ready while running
    Running,
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
}

/// A container, ready to be spawned as a local process.
#[derive(Debug, Clone)]
pub struct LocalCommand {
    pub container: String,
    pub kind: ImageKind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// files to write before the start (Secret / ConfigMap volumes)
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// directories to create before the start (other volumes)
    pub dirs: Vec<PathBuf>,
    pub readiness: Readiness,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("pod has no container with a known image (chat-node, redis)")]
    NoKnownContainer,
    #[error("secret {0} not found")]
    MissingSecret(String),
    #[error("key {key} not found in {kind} {name}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("config map {0} not found")]
    MissingConfigMap(String),
    #[error("container port {0} of the probe is not declared")]
    UnknownPort(String),
}

/// The container the sandbox runs for this pod, and what it is. Other containers (sidecars of
/// unknown images) are not run.
pub fn select_container(pod: &Pod) -> Option<(&Container, ImageKind)> {
    pod.spec.as_ref()?.containers.iter().find_map(|c| {
        let kind = ImageKind::of(c.image.as_deref().unwrap_or_default())?;
        Some((c, kind))
    })
}

/// Translates `container` of `pod` into a local command. `ports` maps each container port
/// to the local port it gets.
pub fn translate(
    pod: &Pod,
    container: &Container,
    kind: ImageKind,
    ports: &BTreeMap<i32, u16>,
    inputs: &Inputs<'_>,
) -> Result<LocalCommand, TranslateError> {
    let (mut files, mut dirs, mounts) = volumes(pod, container, inputs)?;
    let rewrite = |value: &str| rewrite_value(value, ports, inputs.services, &mounts);

    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.secret_ref {
            match inputs.secrets.get(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(TranslateError::MissingSecret(r.name.clone())),
            }
        }
        if let Some(r) = &from.config_map_ref {
            match inputs.config_maps.get(&r.name) {
                Some(c) => {
                    for (k, v) in c.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(TranslateError::MissingConfigMap(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_value(pod, container, var, &env, inputs)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect();

    let expand_all = |list: &[String]| -> Vec<String> {
        list.iter().map(|a| rewrite(&expand(a, &env))).collect()
    };
    let command = expand_all(container.command.as_deref().unwrap_or_default());
    let args = expand_all(container.args.as_deref().unwrap_or_default());
    let (program, mut args) = match kind {
        // chat-node's image: ENTRYPOINT is the binary; a `command` would replace it
        ImageKind::ChatNode => match command.split_first() {
            Some((_, rest)) => (inputs.programs.chat_node.clone(), [rest, &args].concat()),
            None => (inputs.programs.chat_node.clone(), args),
        },
        // redis' image: `redis-server …`, or flags only (its entrypoint prepends redis-server)
        ImageKind::Redis => {
            let mut all = [command, args].concat();
            if all.first().is_some_and(|a| a.ends_with("redis-server")) {
                all.remove(0);
            }
            (inputs.programs.redis_server.clone(), all)
        }
    };
    if kind == ImageKind::Redis {
        // Loopback only, on its mapped port, data in the pod directory, logs to stdout:
        // appended, because for redis-server the last occurrence of an option wins.
        let data = inputs.pod_dir.join("data");
        dirs.push(data.clone());
        let port = ports.values().next().copied().unwrap_or(6379);
        args.extend([
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            data.display().to_string(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            String::new(),
        ]);
    }
    files.sort();
    let readiness = readiness(container, ports)?;
    Ok(LocalCommand {
        container: container.name.clone(),
        kind,
        program,
        args,
        env,
        files,
        dirs,
        readiness,
    })
}

type Mounts = Vec<(String, PathBuf)>;

/// `host:port` in a value (host may be empty, as in `:8080`, or `[::]`).
static HOST_PORT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\[::\]|[A-Za-z0-9_.-]*):(\d{1,5})\b").expect("static regex"));
/// `metadata.labels['x']` / `metadata.annotations['x']` in a downward-API field path.
static FIELD_MAP_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^metadata\.(labels|annotations)\['(.+)'\]$").expect("static regex")
});

/// What a pod's volumes become locally: files to write, directories to create, and
/// (mount path -> local path) for rewrites.
type LocalVolumes = (Vec<(PathBuf, Vec<u8>)>, Vec<PathBuf>, Mounts);

fn volumes(
    pod: &Pod,
    container: &Container,
    inputs: &Inputs<'_>,
) -> Result<LocalVolumes, TranslateError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut mounts = Vec::new();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for mount in container.volume_mounts.iter().flatten() {
        let local_dir = inputs.pod_dir.join("volumes").join(&mount.name);
        let Some(volume) = volumes.and_then(|v| v.iter().find(|v| v.name == mount.name)) else {
            continue;
        };
        dirs.push(local_dir.clone());
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        let mut items = None;
        if let Some(src) = &volume.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            match inputs.secrets.get(&name) {
                Some(s) => {
                    keys = s
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect();
                    items = src.items.as_ref();
                }
                None if src.optional == Some(true) => {}
                None => return Err(TranslateError::MissingSecret(name)),
            }
        } else if let Some(src) = &volume.config_map {
            match inputs.config_maps.get(&src.name) {
                Some(c) => {
                    keys = c
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect();
                    items = src.items.as_ref();
                }
                None if src.optional == Some(true) => {}
                None => return Err(TranslateError::MissingConfigMap(src.name.clone())),
            }
        }
        match items {
            Some(items) => {
                for item in items {
                    if let Some((_, v)) = keys.iter().find(|(k, _)| *k == item.key) {
                        files.push((local_dir.join(&item.path), v.clone()));
                    }
                }
            }
            None => files.extend(keys.into_iter().map(|(k, v)| (local_dir.join(k), v))),
        }
        let local = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => local_dir.join(sub),
            None => local_dir,
        };
        mounts.push((mount.mount_path.trim_end_matches('/').to_string(), local));
    }
    // longest mount path first, so /etc/chat/jwt wins over /etc/chat
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    Ok((files, dirs, mounts))
}

fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    env: &[(String, String)],
    inputs: &Inputs<'_>,
) -> Result<Option<String>, TranslateError> {
    if let Some(v) = &var.value {
        return Ok(Some(expand(v, env)));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(r) = &from.secret_key_ref {
        let Some(secret) = inputs.secrets.get(&r.name) else {
            return if r.optional == Some(true) {
                Ok(None)
            } else {
                Err(TranslateError::MissingSecret(r.name.clone()))
            };
        };
        return match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
            None if r.optional == Some(true) => Ok(None),
            None => Err(TranslateError::MissingKey {
                kind: "secret",
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let Some(cm) = inputs.config_maps.get(&r.name) else {
            return if r.optional == Some(true) {
                Ok(None)
            } else {
                Err(TranslateError::MissingConfigMap(r.name.clone()))
            };
        };
        return match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if r.optional == Some(true) => Ok(None),
            None => Err(TranslateError::MissingKey {
                kind: "config map",
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(f) = &from.field_ref {
        let meta = &pod.metadata;
        let value = match f.field_path.as_str() {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            "spec.serviceAccountName" => pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            other => {
                // metadata.labels['x'] / metadata.annotations['x']
                FIELD_MAP_KEY
                    .captures(other)
                    .and_then(|c| {
                        let map = if &c[1] == "labels" {
                            &meta.labels
                        } else {
                            &meta.annotations
                        };
                        map.as_ref()?.get(&c[2]).cloned()
                    })
                    .unwrap_or_default()
            }
        };
        return Ok(Some(value));
    }
    if let Some(r) = &from.resource_field_ref {
        let resources = container.resources.as_ref();
        let (kind, name) = r
            .resource
            .split_once('.')
            .unwrap_or(("limits", r.resource.as_str()));
        let quantity = resources
            .and_then(|res| {
                if kind == "requests" {
                    res.requests.as_ref()
                } else {
                    res.limits.as_ref()
                }
            })
            .and_then(|m| m.get(name))
            .map(|q| q.0.clone());
        return Ok(quantity);
    }
    Ok(Some(String::new()))
}

/// `$(VAR)` expansion as Kubernetes does it: known variables are replaced, `$$(VAR)` escapes,
/// unknown references stay as written.
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites what only makes sense inside a cluster: `svc:port` -> `127.0.0.1:<local>`,
/// `0.0.0.0:<container port>` (and `:port`, `[::]:port`, `localhost:port`) -> `127.0.0.1:<local>`,
/// and volume mount paths -> their local directories.
pub fn rewrite_value(
    value: &str,
    ports: &BTreeMap<i32, u16>,
    services: &ServiceTable,
    mounts: &Mounts,
) -> String {
    let rewritten = HOST_PORT.replace_all(value, |c: &regex::Captures<'_>| {
        let host = &c[1];
        let Ok(port) = c[2].parse::<i32>() else {
            return c[0].to_string();
        };
        let bind_address = matches!(host, "" | "0.0.0.0" | "[::]" | "localhost" | "127.0.0.1");
        if bind_address && let Some(local) = ports.get(&port) {
            return format!("127.0.0.1:{local}");
        }
        if let Some(local) = services.get(host).and_then(|p| p.get(&port)) {
            return format!("127.0.0.1:{local}");
        }
        c[0].to_string()
    });
    let mut out = rewritten.into_owned();
    for (mount_path, local) in mounts {
        if out == *mount_path {
            out = local.display().to_string();
        } else if let Some(rest) = out.strip_prefix(&format!("{mount_path}/")) {
            out = local.join(rest).display().to_string();
        }
    }
    out
}

fn readiness(
    container: &Container,
    ports: &BTreeMap<i32, u16>,
) -> Result<Readiness, TranslateError> {
    let Some(probe) = &container.readiness_probe else {
        return Ok(Readiness::Running);
    };
    let resolve = |port: &IntOrString| -> Result<u16, TranslateError> {
        let container_port = match port {
            IntOrString::Int(p) => *p,
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| TranslateError::UnknownPort(name.clone()))?,
        };
        ports
            .get(&container_port)
            .copied()
            .ok_or_else(|| TranslateError::UnknownPort(container_port.to_string()))
    };
    Ok(match probe {
        Probe {
            http_get: Some(get),
            ..
        } => Readiness::Http {
            port: resolve(&get.port)?,
            path: get.path.clone().unwrap_or_else(|| "/".into()),
        },
        Probe {
            tcp_socket: Some(tcp),
            ..
        } => Readiness::Tcp {
            port: resolve(&tcp.port)?,
        },
        // exec / grpc probes: a TCP connect to the first declared port stands in
        _ => match ports.values().next() {
            Some(port) => Readiness::Tcp { port: *port },
            None => Readiness::Running,
        },
    })
}

#[cfg(test)]
#[path = "pod_command_tests.rs"]
mod tests;
