//! A primary with replicas watched by real Redis Sentinels (`redis-server <conf> --sentinel`),
//! all on loopback: for tests of failover.
//!
//! ```no_run
//! # async fn demo() {
//! use test_harness::redis::sentinel::{SentinelOptions, SentinelSet};
//! let mut set = SentinelSet::start(SentinelOptions::default()).await;
//! let url = set.url(); // redis+sentinel://127.0.0.1:<s1>,…/<master name>
//! let old = set.primary_port().await;
//! set.server_mut(old).kill(); // SIGKILL the primary
//! let new = set.wait_failover(old).await; // a replica promoted, seen by every sentinel
//! # }
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{RedisOptions, RedisServer, command, ping};
use crate::process::ManagedProcess;
use crate::{Error, free_port};

/// How long a failover (or the sentinels' agreement at start) may take.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for [`SentinelSet::start`].
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// The primary's name in Sentinel.
    pub master_name: String,
    pub replicas: usize,
    pub sentinels: usize,
    pub quorum: usize,
    /// `sentinel down-after-milliseconds`.
    pub down_after: Duration,
    /// `sentinel failover-timeout`.
    pub failover_timeout: Duration,
    /// `requirepass` (and `masterauth`) of the data nodes, `sentinel auth-pass` of the sentinels.
    pub password: Option<String>,
    /// `requirepass` of the sentinels.
    pub sentinel_password: Option<String>,
    /// More `redis-server` arguments for every data node (e.g. `--min-replicas-to-write 1`).
    pub data_args: Vec<String>,
}

impl Default for SentinelOptions {
    fn default() -> Self {
        SentinelOptions {
            master_name: "chatmaster".into(),
            replicas: 1,
            sentinels: 3,
            quorum: 2,
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
            password: None,
            sentinel_password: None,
            data_args: Vec::new(),
        }
    }
}

/// One `redis-server --sentinel` process.
#[derive(Debug)]
struct Sentinel {
    port: u16,
    process: ManagedProcess,
    _dir: tempfile::TempDir,
    /// Removes the directory if the test process dies without dropping this.
    _cleanup: crate::process::RemoveOnExit,
}

/// A primary, its replicas and the sentinels watching them. Dropping it kills them all.
#[derive(Debug)]
pub struct SentinelSet {
    options: SentinelOptions,
    /// The data nodes; the first was the primary at start.
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Starts the primary, its replicas (link up awaited) and the sentinels, and waits until
    /// every sentinel sees the primary healthy with all replicas and all other sentinels.
    /// Panics with the logs when that does not happen.
    pub async fn start(options: SentinelOptions) -> SentinelSet {
        let data_options = |replica_of: Option<u16>| {
            let mut o = RedisOptions::default();
            if let Some(password) = &options.password {
                o = o.password(password).arg("--masterauth").arg(password);
            }
            for arg in &options.data_args {
                o = o.arg(arg);
            }
            if let Some(port) = replica_of {
                o = o.arg("--replicaof").arg("127.0.0.1").arg(port.to_string());
            }
            o
        };
        let primary = RedisServer::start_with(data_options(None)).await;
        let primary_port = primary.port();
        let mut servers = vec![primary];
        for _ in 0..options.replicas {
            let replica = RedisServer::start_with(data_options(Some(primary_port))).await;
            servers.push(replica);
        }
        for replica in &servers[1..] {
            wait_until(FAILOVER_TIMEOUT, "replica link up", || async {
                let info = replica.command(&["INFO", "replication"]).await.ok()?;
                info.contains("master_link_status:up").then_some(())
            })
            .await;
        }
        let mut set = SentinelSet {
            options,
            servers,
            sentinels: Vec::new(),
        };
        for _ in 0..set.options.sentinels {
            let sentinel = set
                .start_sentinel(primary_port)
                .unwrap_or_else(|e| panic!("test harness: sentinel did not start: {e}"));
            set.sentinels.push(sentinel);
        }
        for sentinel in &mut set.sentinels {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Err(e) = sentinel.process.ensure_running() {
                    panic!("test harness: sentinel exited: {e}");
                }
                if ping(sentinel.port, set.options.sentinel_password.as_deref())
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel on port {} never answered PING; log:\n{}",
                    sentinel.port,
                    sentinel.process.log_tail(20)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let healthy = format!(
            "status=ok,address=127.0.0.1:{primary_port},slaves={},sentinels={}",
            set.options.replicas, set.options.sentinels
        );
        for i in 0..set.sentinels.len() {
            let what = format!("sentinel {i} sees {healthy}");
            let (set, healthy) = (&set, &healthy);
            wait_until(FAILOVER_TIMEOUT, &what, || async move {
                let info = set.sentinel_command(i, &["INFO", "sentinel"]).await.ok()?;
                info.contains(healthy.as_str()).then_some(())
            })
            .await;
            let quorum = set
                .sentinel_command(i, &["SENTINEL", "CKQUORUM", &set.options.master_name])
                .await;
            assert!(
                quorum.as_deref().is_ok_and(|q| q.starts_with("OK")),
                "sentinel {i}: {quorum:?}"
            );
        }
        set
    }

    fn start_sentinel(&self, primary_port: u16) -> Result<Sentinel, Error> {
        let dir = tempfile::Builder::new()
            .prefix("chatcluster-sentinel-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "create a temp dir for a sentinel".into(),
                source,
            })?;
        let port = free_port();
        let o = &self.options;
        let name = &o.master_name;
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
             sentinel monitor {name} 127.0.0.1 {primary_port} {quorum}\n\
             sentinel down-after-milliseconds {name} {down}\n\
             sentinel failover-timeout {name} {failover}\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.path().display(),
            quorum = o.quorum,
            down = o.down_after.as_millis(),
            failover = o.failover_timeout.as_millis(),
        );
        if let Some(password) = &o.password {
            conf.push_str(&format!("sentinel auth-pass {name} {password}\n"));
        }
        if let Some(password) = &o.sentinel_password {
            conf.push_str(&format!("requirepass {password}\n"));
        }
        // Sentinel rewrites its configuration file: it must be its own and writable.
        let conf_path: PathBuf = dir.path().join("sentinel.conf");
        std::fs::write(&conf_path, conf).map_err(|source| Error::Io {
            context: "write sentinel.conf".into(),
            source,
        })?;
        let mut command = Command::new(
            std::env::var_os("CHATCLUSTER_REDIS_SERVER").unwrap_or_else(|| "redis-server".into()),
        );
        command.arg(&conf_path).arg("--sentinel");
        let process =
            ManagedProcess::spawn("redis-sentinel", command, &dir.path().join("sentinel.log"))?;
        Ok(Sentinel {
            port,
            _cleanup: crate::process::RemoveOnExit::arm(dir.path())?,
            _dir: dir,
            process,
        })
    }

    /// `redis+sentinel://127.0.0.1:<port>,…/<master name>` (no password in it).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis+sentinel://{}/{}",
            hosts.join(","),
            self.options.master_name
        )
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// One command on sentinel `index` (replies as [`RedisServer::command`]).
    pub async fn sentinel_command(&self, index: usize, parts: &[&str]) -> Result<String, Error> {
        let port = self.sentinels[index].port;
        command(port, self.options.sentinel_password.as_deref(), parts)
            .await
            .map_err(|e| Error::Other(format!("sentinel {parts:?} on port {port}: {e}")))
    }

    /// The port of the primary as the first sentinel that answers names it.
    pub async fn primary_port(&self) -> u16 {
        for i in 0..self.sentinels.len() {
            if let Some(port) = self.named_primary(i).await {
                return port;
            }
        }
        panic!("no sentinel names a primary");
    }

    /// The primary's port as sentinel `index` sees it (its `INFO sentinel` address).
    async fn named_primary(&self, index: usize) -> Option<u16> {
        let info = self
            .sentinel_command(index, &["INFO", "sentinel"])
            .await
            .ok()?;
        let address = info.split("address=").nth(1)?.split(',').next()?;
        address.rsplit_once(':')?.1.parse().ok()
    }

    /// Waits until every sentinel names a primary other than `old` and that server says
    /// `role:master`; returns its port.
    pub async fn wait_failover(&self, old: u16) -> u16 {
        let what = format!("the sentinels to promote a replica of the primary on port {old}");
        wait_until(FAILOVER_TIMEOUT, &what, || async {
            let mut named = Vec::new();
            for i in 0..self.sentinels.len() {
                named.push(self.named_primary(i).await?);
            }
            let new = named[0];
            if new == old || named.iter().any(|p| *p != new) {
                return None;
            }
            let info = self
                .server(new)
                .command(&["INFO", "replication"])
                .await
                .ok()?;
            info.contains("role:master").then_some(new)
        })
        .await
    }

    /// The data node on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The data node on `port`, to kill or restart it.
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The last log lines of every sentinel (for failure messages).
    pub fn sentinel_logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("sentinel {}:\n{}", s.port, s.process.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Polls `check` every 50 ms until it gives `Some`; panics after `timeout` naming `what`.
async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "test harness: timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
