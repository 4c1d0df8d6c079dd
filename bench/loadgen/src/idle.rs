//! The idle-connections scenario: fill one node up to its connection limit with idle
//! WebSockets from several load processes and loopback source addresses, check that every
//! connection below the limit is accepted and the rest refused with 503, and measure the
//! node's resident memory and handshake CPU per connection.
//!
//! One process cannot do it alone: the hard `RLIMIT_NOFILE` (20,000 here) caps its sockets,
//! and one source address has ~28,000 ephemeral ports. So the coordinator ([`run`]) starts
//! `chat-loadgen idle-worker` children, each with its own source addresses; a worker prints
//! one JSON line when its connections are open, holds them until its stdin closes, then
//! prints a last line and exits.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::centrifugo;
use crate::client::{self, ConnectError, Endpoint, Proto};
use crate::procstat;

/// What a worker reports once all its connection attempts have ended.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerFilled {
    pub accepted: u64,
    pub refused_503: u64,
    /// Other failures, by kind (`tcp_…`, `http_…`, `handshake`).
    pub failed: BTreeMap<String, u64>,
    pub seconds: f64,
    pub cpu_s: f64,
    /// Each accepted connection's time from its TCP connect to a usable session (the
    /// WebSocket handshake done; Centrifugo's connect reply too), milliseconds.
    #[serde(default)]
    pub connect_ms: Vec<f64>,
}

/// What a worker reports when it is told to close.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerClosed {
    /// Connections the server closed while they were held (should be 0).
    pub closed_by_server: u64,
}

/// Settings of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub endpoint: Endpoint,
    pub connections: u64,
    pub sources: Vec<Ipv4Addr>,
    pub concurrency: usize,
    /// Connections started per second, evenly spaced (0: as fast as `concurrency` allows).
    pub rate: f64,
}

/// How holding a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// `stop` was set.
    Stopped,
    /// The server closed it (or it broke).
    ClosedByServer,
}

/// Holds a connection until `stop` is set or the server closes it; reading answers the
/// server's pings (WebSocket pings by itself; Centrifugo's, sent as `{}` frames, here).
pub(crate) async fn hold(
    mut ws: client::Ws,
    json_pings: bool,
    stop: &mut watch::Receiver<bool>,
) -> Held {
    loop {
        tokio::select! {
            _ = stop.changed() => return Held::Stopped,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text)))
                    if json_pings && centrifugo::replies(text.as_str()).any(|r| r.is_ping()) =>
                {
                    if ws.send(Message::text(centrifugo::PONG)).await.is_err() {
                        return Held::ClosedByServer;
                    }
                }
                Some(Ok(_)) => {}
                _ => return Held::ClosedByServer,
            },
        }
    }
}

/// Raises this process's soft fd limit to the hard limit.
pub(crate) fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// Body of `chat-loadgen idle-worker`.
pub async fn worker(cfg: WorkerConfig) -> anyhow::Result<()> {
    raise_nofile();
    let start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..cfg.connections {
        if cfg.rate > 0.0 {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / cfg.rate)).into())
                .await;
        }
        let permit = limit.clone().acquire_owned().await?;
        let endpoint = cfg.endpoint.clone();
        let source = cfg
            .sources
            .get(i as usize % cfg.sources.len().max(1))
            .map(|ip| IpAddr::V4(*ip));
        let mut stop = stop_rx.clone();
        let closed = closed_by_server.clone();
        let json_pings = matches!(cfg.endpoint.proto, Proto::Centrifugo(_));
        attempts.spawn(async move {
            let began = Instant::now();
            let result = client::connect(&endpoint, source).await;
            let took_ms = began.elapsed().as_secs_f64() * 1e3;
            drop((permit, endpoint));
            match result {
                Ok(ws) => {
                    tokio::spawn(async move {
                        if hold(ws, json_pings, &mut stop).await == Held::ClosedByServer {
                            closed.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    Ok(took_ms)
                }
                Err(e) => Err(e),
            }
        });
    }
    let mut filled = WorkerFilled::default();
    while let Some(res) = attempts.join_next().await {
        match res? {
            Ok(took_ms) => {
                filled.accepted += 1;
                filled.connect_ms.push(took_ms);
            }
            Err(ConnectError::HttpStatus(s)) if s.as_u16() == 503 => filled.refused_503 += 1,
            Err(e) => *filled.failed.entry(e.label()).or_default() += 1,
        }
    }
    filled.seconds = start.elapsed().as_secs_f64();
    filled.cpu_s = procstat::cpu_seconds(None)?;
    println!("{}", serde_json::to_string(&filled)?);

    // Hold until the coordinator closes our stdin.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let closed = WorkerClosed {
        closed_by_server: closed_by_server.load(Ordering::Relaxed),
    };
    let _ = stop_tx.send(true);
    println!("{}", serde_json::to_string(&closed)?);
    Ok(())
}

/// A running load process (`chat-loadgen idle-worker`, or a scenario's own subcommand that
/// takes the same flags and reports the same way: one JSON line per phase on stdout, the last
/// one when its stdin closes).
pub(crate) struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub(crate) fn spawn(cfg: &WorkerConfig) -> anyhow::Result<Worker> {
        Self::spawn_with(cfg, "idle-worker", &[])
    }

    /// Starts `chat-loadgen <subcommand>` with `cfg`'s flags and `extra` ones after them.
    pub(crate) fn spawn_with(
        cfg: &WorkerConfig,
        subcommand: &str,
        extra: &[String],
    ) -> anyhow::Result<Worker> {
        let sources: Vec<String> = cfg.sources.iter().map(|s| s.to_string()).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .arg(subcommand)
            .arg("--addr")
            .arg(cfg.endpoint.addr.to_string())
            .arg("--path")
            .arg(&cfg.endpoint.path)
            .arg("--connections")
            .arg(cfg.connections.to_string())
            .arg("--sources")
            .arg(sources.join(","))
            .arg("--concurrency")
            .arg(cfg.concurrency.to_string())
            .arg("--rate")
            .arg(cfg.rate.to_string())
            .args(extra)
            .env(
                "BENCH_CENTRIFUGO_SECRET",
                match &cfg.endpoint.proto {
                    Proto::Centrifugo(auth) => auth.secret(),
                    Proto::ChatV1 => "",
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    pub(crate) async fn read<T: for<'de> Deserialize<'de>>(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("load worker did not report within {timeout:?}"))??
            .ok_or_else(|| anyhow::anyhow!("load worker exited without reporting"))?;
        Ok(serde_json::from_str(&line)?)
    }

    pub(crate) async fn close(mut self) -> anyhow::Result<WorkerClosed> {
        drop(self.stdin.take());
        let closed = self.read(Duration::from_secs(30)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(closed)
    }
}

/// Settings of the idle scenario.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// Connections expected to be accepted (the node's limit).
    pub limit: u64,
    /// Connections attempted past the limit (all must get 503).
    pub extra: u64,
    pub processes: usize,
    /// Source addresses 127.0.0.<first_source>… (two per worker).
    pub first_source: u8,
    pub concurrency: usize,
    /// Wait after filling before reading the memory (lets a garbage collector settle).
    pub settle: Duration,
    pub fill_timeout: Duration,
}

/// Results of the idle scenario for one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleResult {
    pub limit: u64,
    pub accepted: u64,
    pub refused_503: u64,
    pub failed: BTreeMap<String, u64>,
    pub fill_seconds: f64,
    pub extra_attempted: u64,
    pub extra_accepted: u64,
    pub extra_refused_503: u64,
    pub extra_failed: BTreeMap<String, u64>,
    pub closed_by_server: u64,
    pub rss_before_kib: u64,
    pub rss_full_kib: u64,
    pub rss_per_connection_bytes: f64,
    pub server_cpu_fill_s: f64,
    pub handshake_cpu_us_per_connection: f64,
    pub loadgen_cpu_s: f64,
    pub alive_after: bool,
    pub accepts_after_close: bool,
}

impl IdleResult {
    /// Every connection below the limit accepted, the rest refused with 503, none dropped,
    /// and the node still serving afterwards.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.accepted != self.limit {
            p.push(format!(
                "accepted {} of limit {}",
                self.accepted, self.limit
            ));
        }
        if self.extra_accepted != 0 || self.extra_refused_503 != self.extra_attempted {
            p.push(format!(
                "past the limit: {} accepted, {} of {} refused with 503",
                self.extra_accepted, self.extra_refused_503, self.extra_attempted
            ));
        }
        if !self.failed.is_empty() || !self.extra_failed.is_empty() {
            p.push(format!(
                "failed attempts: {:?} {:?}",
                self.failed, self.extra_failed
            ));
        }
        if self.closed_by_server != 0 {
            p.push(format!(
                "{} idle connections closed by the server",
                self.closed_by_server
            ));
        }
        if !self.alive_after || !self.accepts_after_close {
            p.push("node not serving after the run".to_owned());
        }
        p
    }
}

/// The two loopback source addresses of load process `worker`: 127.0.0.<first + 2·worker> and
/// the next (each scenario starts at its own `first`, so their sockets never share a port range).
pub(crate) fn sources_for(first: u8, worker: usize) -> Vec<Ipv4Addr> {
    let base = first as usize + 2 * worker;
    (base..base + 2)
        .map(|b| Ipv4Addr::new(127, 0, 0, b.min(254) as u8))
        .collect()
}

/// Runs the idle scenario against the server process `pid` serving `endpoint`.
pub async fn run(endpoint: &Endpoint, pid: u32, cfg: &IdleConfig) -> anyhow::Result<IdleResult> {
    let mut result = IdleResult {
        limit: cfg.limit,
        extra_attempted: cfg.extra,
        rss_before_kib: procstat::rss_kib(pid)?,
        ..Default::default()
    };
    let cpu_before = procstat::cpu_seconds(Some(pid))?;
    let start = Instant::now();

    let processes = cfg.processes.max(1);
    let mut workers = Vec::new();
    for w in 0..processes {
        let share =
            cfg.limit / processes as u64 + u64::from((w as u64) < cfg.limit % processes as u64);
        workers.push(Worker::spawn(&WorkerConfig {
            endpoint: endpoint.clone(),
            connections: share,
            sources: sources_for(cfg.first_source, w),
            concurrency: cfg.concurrency,
            rate: 0.0,
        })?);
    }
    for w in &mut workers {
        let filled: WorkerFilled = w.read(cfg.fill_timeout).await?;
        result.accepted += filled.accepted;
        result.refused_503 += filled.refused_503;
        for (k, v) in filled.failed {
            *result.failed.entry(k).or_default() += v;
        }
        result.loadgen_cpu_s += filled.cpu_s;
    }
    result.fill_seconds = start.elapsed().as_secs_f64();
    result.server_cpu_fill_s = procstat::cpu_seconds(Some(pid))? - cpu_before;
    tokio::time::sleep(cfg.settle).await;
    result.rss_full_kib = procstat::rss_kib(pid)?;
    if result.accepted > 0 {
        result.rss_per_connection_bytes =
            (result.rss_full_kib as f64 - result.rss_before_kib as f64) * 1024.0
                / result.accepted as f64;
        result.handshake_cpu_us_per_connection =
            result.server_cpu_fill_s * 1e6 / result.accepted as f64;
    }

    // Past the limit: every attempt must be refused with 503.
    if cfg.extra > 0 {
        let mut extra = Worker::spawn(&WorkerConfig {
            endpoint: endpoint.clone(),
            connections: cfg.extra,
            sources: sources_for(cfg.first_source, processes),
            concurrency: cfg.concurrency,
            rate: 0.0,
        })?;
        let filled: WorkerFilled = extra.read(cfg.fill_timeout).await?;
        result.extra_accepted = filled.accepted;
        result.extra_refused_503 = filled.refused_503;
        result.extra_failed = filled.failed;
        result.loadgen_cpu_s += filled.cpu_s;
        workers.push(extra);
    }
    result.alive_after = process_alive(pid);
    for w in workers {
        result.closed_by_server += w.close().await?.closed_by_server;
    }
    result.accepts_after_close = accepts_again(endpoint).await;
    result.alive_after &= process_alive(pid);
    Ok(result)
}

/// True while `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Once the held connections are closed the node must accept again (it may take a moment
/// to notice the closes).
pub(crate) async fn accepts_again(endpoint: &Endpoint) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut ws) = client::connect(endpoint, None).await {
            let _ = ws.close(None).await;
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
