//! Starting and stopping the processes a benchmark measures: `redis-server`, `chat-node`, the
//! Node.js reference server and Centrifugo, each on a free loopback port, each killed when its
//! handle is dropped (so an error or Ctrl-C never leaves one behind).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::centrifugo;
use crate::client::{Endpoint, Proto};

/// Errors starting or talking to a benchmarked process.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to start {what} ({program}): {source}")]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {timeout:?} (log: {log})")]
    NotReady {
        what: String,
        timeout: Duration,
        log: String,
    },
    #[error("{what} exited before it was ready: {status} (log: {log})")]
    Exited {
        what: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("failed to find a free loopback port: {0}")]
    Port(#[source] std::io::Error),
    #[error("failed to create log file {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chat-node /metrics has no chat_max_connections")]
    NoLimit,
    #[error("failed to write Centrifugo's config {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A free TCP port on 127.0.0.1 for a server to listen on, bound and released.
///
/// It is picked *below* the kernel's ephemeral range (`ip_local_port_range`): a port taken from
/// that range (`bind(:0)`) can be handed to an outgoing connection (a client's, Redis's) in the
/// moment between release and the server's own bind, which then fails with "address in use"
/// (seen in CI). Below the range only another explicit bind can take it.
pub fn free_port() -> Result<u16, ServerError> {
    let low = ephemeral_low().unwrap_or(32768).max(2048);
    let mut last = None;
    for _ in 0..64 {
        let port = fastrand::u16(1024..low);
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return Ok(l.local_addr().map_err(ServerError::Port)?.port()),
            Err(e) => last = Some(e),
        }
    }
    Err(ServerError::Port(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free port below the ephemeral range",
        )
    })))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub what: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc, ServerError> {
        let log = log_dir.join(format!("{what}.log"));
        let file = File::create(&log).map_err(|source| ServerError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let err = file.try_clone().map_err(|source| ServerError::Log {
            path: log.display().to_string(),
            source,
        })?;
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ServerError::Spawn {
                what: what.to_owned(),
                program,
                source,
            })?;
        Ok(Proc {
            what: what.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Polls `ready` until it is true, failing early when the process exits.
    async fn wait_ready<F, Fut>(
        &mut self,
        timeout: Duration,
        mut ready: F,
    ) -> Result<(), ServerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited {
                    what: self.what.clone(),
                    status,
                    log: self.log.display().to_string(),
                });
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady {
                    what: self.what.clone(),
                    timeout,
                    log: self.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A `redis-server` of our own: no persistence, loopback only.
pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub async fn start(program: &Path, name: &str, log_dir: &Path) -> Result<Redis, ServerError> {
        let port = free_port()?;
        let mut cmd = Command::new(program);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().display().to_string()]);
        let mut proc = Proc::spawn(name, cmd, log_dir)?;
        proc.wait_ready(Duration::from_secs(20), || redis_ping(port))
            .await?;
        Ok(Redis { proc, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

async fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(loopback(port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// Which server design is being measured.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Design {
    /// This project's Rust `chat-node`.
    ChatNode,
    /// The Node.js `ws` + `ioredis` reference server in bench/reference-node.
    Reference,
    /// Centrifugo v6 with its Redis engine, channel history off.
    Centrifugo,
    /// Centrifugo v6 with its Redis engine, history on (1,000 messages, 24 h) and forced recovery.
    CentrifugoHistory,
}

impl Design {
    pub fn label(self) -> &'static str {
        match self {
            Design::ChatNode => "chat-node",
            Design::Reference => "reference (Node.js ws+ioredis)",
            Design::Centrifugo => "Centrifugo v6 (Redis engine, history off)",
            Design::CentrifugoHistory => "Centrifugo v6 (Redis engine, history on)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Design::ChatNode => "chat-node",
            Design::Reference => "reference",
            Design::Centrifugo => "centrifugo",
            Design::CentrifugoHistory => "centrifugo-history",
        }
    }

    /// Centrifugo's two settings differ only in a channel option, which an idle connection
    /// (no subscription) never touches: the idle scenario runs once, for history off.
    pub fn has_idle_run(self) -> bool {
        self != Design::CentrifugoHistory
    }
}

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub chat_node: PathBuf,
    pub node: PathBuf,
    pub reference_script: PathBuf,
    pub redis_server: PathBuf,
    pub centrifugo: PathBuf,
    /// The HMAC key of Centrifugo's connection tokens (made up per run).
    pub centrifugo_secret: String,
}

/// One running chat server process.
pub struct ChatServer {
    pub design: Design,
    pub proc: Proc,
    pub endpoint: Endpoint,
    /// chat-node's admin listener (None for the others, which serve health on their port).
    pub admin: Option<SocketAddr>,
}

impl ChatServer {
    pub async fn start(
        design: Design,
        programs: &Programs,
        redis_url: &str,
        name: &str,
        max_connections: Option<u64>,
        log_dir: &Path,
    ) -> Result<ChatServer, ServerError> {
        let listen = loopback(free_port()?);
        let proto = match design {
            Design::Centrifugo | Design::CentrifugoHistory => {
                Proto::Centrifugo(centrifugo::Auth::new(&programs.centrifugo_secret))
            }
            Design::ChatNode | Design::Reference => Proto::ChatV1,
        };
        let path = match proto {
            Proto::Centrifugo(_) => centrifugo::WS_PATH,
            Proto::ChatV1 => "/ws",
        };
        let endpoint = Endpoint {
            addr: listen,
            path: path.to_owned(),
            proto,
        };
        let chat_args = |cmd: &mut Command| {
            cmd.arg("--listen")
                .arg(listen.to_string())
                .arg("--redis-url")
                .arg(redis_url)
                .arg("--node-id")
                .arg(name);
            if let Some(n) = max_connections {
                cmd.arg("--max-connections").arg(n.to_string());
            }
        };
        let (cmd, admin, ready_addr, ready_path) = match design {
            Design::ChatNode => {
                let admin = loopback(free_port()?);
                let mut cmd = Command::new(&programs.chat_node);
                cmd.arg("--admin-listen")
                    .arg(admin.to_string())
                    .args(["--log-format", "json"])
                    // Every load-generator client publishes from 127.0.0.1: one identity to
                    // the per-address publish limit, which would cap the whole benchmark.
                    // The reference server has no such limit either.
                    .args(["--max-publish-rate", "0"])
                    .env("RUST_LOG", "warn");
                chat_args(&mut cmd);
                (cmd, Some(admin), admin, "/readyz")
            }
            Design::Reference => {
                let mut cmd = Command::new(&programs.node);
                cmd.arg(&programs.reference_script);
                chat_args(&mut cmd);
                (cmd, None, listen, "/healthz")
            }
            Design::Centrifugo | Design::CentrifugoHistory => {
                let config = centrifugo::config_json(&centrifugo::NodeConfig {
                    port: listen.port(),
                    redis_url,
                    name,
                    secret: &programs.centrifugo_secret,
                    history: design == Design::CentrifugoHistory,
                    connection_limit: max_connections,
                });
                let path = log_dir.join(format!("{name}.config.json"));
                std::fs::write(&path, config.to_string()).map_err(|source| {
                    ServerError::Config {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                let mut cmd = Command::new(&programs.centrifugo);
                cmd.arg("--config").arg(&path);
                (cmd, None, listen, "/health")
            }
        };
        let mut proc = Proc::spawn(name, cmd, log_dir)?;
        proc.wait_ready(Duration::from_secs(30), || async move {
            matches!(http_get(ready_addr, ready_path).await, Some((200, _)))
        })
        .await?;
        Ok(ChatServer {
            design,
            proc,
            endpoint,
            admin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// chat-node's connection limit, read from `chat_max_connections` on /metrics.
    pub async fn max_connections(&self) -> Result<u64, ServerError> {
        let admin = self.admin.ok_or(ServerError::NoLimit)?;
        let (_, body) = http_get(admin, "/metrics")
            .await
            .ok_or(ServerError::NoLimit)?;
        body.lines()
            .filter(|l| l.starts_with("chat_max_connections"))
            .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or(ServerError::NoLimit)
    }
}
