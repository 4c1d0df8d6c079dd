//! The ingress: an nginx (Debian's) configured from the operator's Ingress.
//!
//! ingress-nginx implements `affinity: cookie` with Lua; plain nginx gets the same behaviour
//! from core modules: the cookie carries a random key (set on the first response), the upstream
//! is chosen by a consistent hash of it, so a browser stays on its node; when that node refuses
//! (draining: 503) or is gone, `proxy_next_upstream` moves the request to another node.
//! `upstream-hash-by` (client IP affinity) becomes `hash <var> consistent`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::networking::v1::{Ingress, ServiceBackendPort};
use test_harness::process::ManagedProcess;

const ANNOTATION: &str = "nginx.ingress.kubernetes.io/";

/// How requests stick to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    Cookie {
        name: String,
        max_age: Option<u64>,
        path: String,
    },
    HashBy(String),
    None,
}

/// One `location` of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub path: String,
    /// `namespace/service:port`, for messages and upstream names
    pub backend: String,
    /// local ports of the ready pods behind the backend
    pub servers: Vec<u16>,
}

/// Everything the nginx config is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub affinity: Affinity,
    pub read_timeout_s: u64,
    pub send_timeout_s: u64,
    pub routes: Vec<Route>,
}

/// Builds the proxy config from an Ingress; `servers(service, port)` returns the local ports
/// of the ready pods behind a backend. Hosts are ignored (everything is served on one
/// loopback port); TLS is not terminated locally.
pub fn from_ingress(
    ingress: &Ingress,
    servers: impl Fn(&str, &ServiceBackendPort) -> Vec<u16>,
) -> ProxyConfig {
    let ns = ingress.metadata.namespace.clone().unwrap_or_default();
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    let get = |k: &str| annotations.get(&format!("{ANNOTATION}{k}")).cloned();
    let affinity = if get("affinity").as_deref() == Some("cookie") {
        Affinity::Cookie {
            name: get("session-cookie-name").unwrap_or_else(|| "INGRESSCOOKIE".into()),
            max_age: get("session-cookie-max-age").and_then(|v| v.parse().ok()),
            path: get("session-cookie-path").unwrap_or_else(|| "/".into()),
        }
    } else if let Some(by) = get("upstream-hash-by") {
        Affinity::HashBy(by)
    } else {
        Affinity::None
    };
    let seconds = |k: &str, default: u64| {
        get(k)
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .unwrap_or(default)
    };
    let mut routes = Vec::new();
    let spec = ingress.spec.as_ref();
    for rule in spec.and_then(|s| s.rules.as_ref()).into_iter().flatten() {
        for p in rule.http.iter().flat_map(|h| &h.paths) {
            if let Some(svc) = &p.backend.service {
                let port = svc.port.clone().unwrap_or_default();
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                if routes.iter().any(|r: &Route| r.path == path) {
                    continue; // first rule wins (hosts are not distinguished here)
                }
                routes.push(Route {
                    path,
                    backend: format!("{ns}/{}:{}", svc.name, port_label(&port)),
                    servers: servers(&svc.name, &port),
                });
            }
        }
    }
    if routes.is_empty()
        && let Some(svc) = spec
            .and_then(|s| s.default_backend.as_ref())
            .and_then(|b| b.service.as_ref())
    {
        let port = svc.port.clone().unwrap_or_default();
        routes.push(Route {
            path: "/".into(),
            backend: format!("{ns}/{}:{}", svc.name, port_label(&port)),
            servers: servers(&svc.name, &port),
        });
    }
    ProxyConfig {
        affinity,
        read_timeout_s: seconds("proxy-read-timeout", 60),
        send_timeout_s: seconds("proxy-send-timeout", 60),
        routes,
    }
}

fn port_label(p: &ServiceBackendPort) -> String {
    p.name
        .clone()
        .or(p.number.map(|n| n.to_string()))
        .unwrap_or_default()
}

/// The nginx.conf for `config`, listening on `127.0.0.1:listen`, temp files under `dir`.
pub fn render(config: &ProxyConfig, listen: u16, dir: &Path) -> String {
    let tmp = dir.join("tmp");
    let tmp = tmp.display();
    let mut maps = String::new();
    let (balance, set_cookie) = match &config.affinity {
        Affinity::Cookie {
            name,
            max_age,
            path,
        } => {
            let var = cookie_var(name);
            let max_age = max_age
                .map(|s| format!("; Max-Age={s}"))
                .unwrap_or_default();
            maps.push_str(&format!(
                "  map $cookie_{var} $route_key {{ '' $request_id; default $cookie_{var}; }}\n  \
                 map $cookie_{var} $route_set_cookie {{ '' '{name}=$request_id; Path={path}{max_age}; HttpOnly; SameSite=Lax'; default ''; }}\n"
            ));
            (
                "    hash $route_key consistent;\n".to_string(),
                "      add_header Set-Cookie $route_set_cookie always;\n",
            )
        }
        Affinity::HashBy(by) => (format!("    hash {by} consistent;\n"), ""),
        Affinity::None => (String::new(), ""),
    };
    let mut upstreams = String::new();
    let mut locations = String::new();
    for (i, route) in config.routes.iter().enumerate() {
        upstreams.push_str(&format!(
            "  # {}\n  upstream backend_{i} {{\n{balance}",
            route.backend
        ));
        if route.servers.is_empty() {
            upstreams.push_str("    server 127.0.0.1:9 down; # no ready pod\n");
        }
        for port in &route.servers {
            upstreams.push_str(&format!(
                "    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n"
            ));
        }
        upstreams.push_str("  }\n");
        locations.push_str(&format!(
            "    location {} {{\n      proxy_pass http://backend_{i};\n      proxy_http_version 1.1;\n      \
             proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      \
             proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_read_timeout {}s;\n      proxy_send_timeout {}s;\n      proxy_connect_timeout 2s;\n      \
             proxy_buffering off;\n      proxy_next_upstream error timeout http_502 http_503;\n{set_cookie}    }}\n",
            route.path, config.read_timeout_s, config.send_timeout_s
        ));
    }
    format!(
        "# generated by chat-sandbox from the Ingress; rewritten on every change\n\
         worker_processes 1;\npid {pid};\nerror_log stderr warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  \
         access_log off;\n  client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  \
         fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n  \
         map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n{maps}{upstreams}  server {{\n    \
         listen 127.0.0.1:{listen};\n    location = /sandbox-proxy-health {{ return 200 'ok'; }}\n{locations}  }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
    )
}

/// nginx's `$cookie_<name>` variable: dashes in the cookie name become underscores.
fn cookie_var(name: &str) -> String {
    name.replace('-', "_")
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("writing the nginx config: {0}")]
    Write(#[from] std::io::Error),
    #[error("starting nginx: {0}")]
    Start(#[from] test_harness::Error),
    #[error("nginx refused the config: {0}")]
    BadConfig(String),
}

/// A running nginx and the config it serves.
pub struct Nginx {
    process: ManagedProcess,
    bin: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    listen: u16,
    current: Option<ProxyConfig>,
}

impl Nginx {
    /// Starts nginx on `127.0.0.1:listen` with no routes yet.
    pub fn start(bin: &Path, dir: &Path, listen: u16) -> Result<Self, ProxyError> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        // workers run as an unprivileged user when we are root: let them into the temp dir
        set_mode(dir, 0o755)?;
        set_mode(&dir.join("tmp"), 0o777)?;
        let conf = dir.join("nginx.conf");
        let empty = ProxyConfig {
            affinity: Affinity::None,
            read_timeout_s: 60,
            send_timeout_s: 60,
            routes: vec![],
        };
        std::fs::write(&conf, render(&empty, listen, dir))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr", "-g", "daemon off;"]);
        let process = ManagedProcess::spawn("nginx", cmd, &dir.join("nginx.log"))?;
        Ok(Self {
            process,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            conf,
            listen,
            current: None,
        })
    }

    pub fn port(&self) -> u16 {
        self.listen
    }

    /// Writes `config` and reloads nginx, when it differs from what is served.
    pub fn apply(&mut self, config: &ProxyConfig) -> Result<bool, ProxyError> {
        if self.current.as_ref() == Some(config) {
            return Ok(false);
        }
        let next = self.dir.join("nginx.conf.next");
        std::fs::write(&next, render(config, self.listen, &self.dir))?;
        let test = Command::new(&self.bin)
            .arg("-t")
            .arg("-q")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&next)
            .args(["-e", "stderr"])
            .output()?;
        if !test.status.success() {
            return Err(ProxyError::BadConfig(
                String::from_utf8_lossy(&test.stderr).into_owned(),
            ));
        }
        std::fs::rename(&next, &self.conf)?;
        // SIGHUP: the master re-reads the config and replaces its workers gracefully
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.process.pid()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .map_err(std::io::Error::from)?;
        self.current = Some(config.clone());
        Ok(true)
    }

    pub fn ensure_running(&mut self) -> Result<(), ProxyError> {
        Ok(self.process.ensure_running()?)
    }

    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(annotations: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": "demo", "namespace": "default", "annotations": annotations},
            "spec": {"rules": [{"host": "chat.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "demo", "port": {"name": "ws"}}}}
            ]}}]}
        }))
        .expect("ingress")
    }

    #[test]
    fn cookie_affinity_from_ingress_nginx_annotations() {
        let ing = ingress(json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "chat-route",
            "nginx.ingress.kubernetes.io/session-cookie-max-age": "172800",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
        }));
        let cfg = from_ingress(&ing, |svc, port| {
            assert_eq!((svc, port.name.as_deref()), ("demo", Some("ws")));
            vec![4001, 4002]
        });
        assert_eq!(
            cfg.affinity,
            Affinity::Cookie {
                name: "chat-route".into(),
                max_age: Some(172800),
                path: "/".into()
            }
        );
        assert_eq!(cfg.read_timeout_s, 3600);
        let conf = render(&cfg, 8000, Path::new("/sb/proxy"));
        assert!(conf.contains("map $cookie_chat_route $route_key"), "{conf}");
        assert!(
            conf.contains(
                "'chat-route=$request_id; Path=/; Max-Age=172800; HttpOnly; SameSite=Lax'"
            ),
            "{conf}"
        );
        assert!(conf.contains("hash $route_key consistent;"), "{conf}");
        assert!(conf.contains("server 127.0.0.1:4001 max_fails=1"), "{conf}");
        assert!(conf.contains("server 127.0.0.1:4002 max_fails=1"), "{conf}");
        assert!(conf.contains("proxy_read_timeout 3600s;"), "{conf}");
        assert!(conf.contains("listen 127.0.0.1:8000;"), "{conf}");
    }

    #[test]
    fn client_ip_affinity_and_no_ready_pod() {
        let ing = ingress(json!({"nginx.ingress.kubernetes.io/upstream-hash-by": "$remote_addr"}));
        let cfg = from_ingress(&ing, |_, _| vec![]);
        assert_eq!(cfg.affinity, Affinity::HashBy("$remote_addr".into()));
        let conf = render(&cfg, 8000, Path::new("/x"));
        assert!(conf.contains("hash $remote_addr consistent;"));
        assert!(conf.contains("down; # no ready pod"));
        assert!(!conf.contains("Set-Cookie"));
    }
}
