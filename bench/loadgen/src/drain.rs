//! The drain-and-reconnect scenario: one node of two is stopped the way Kubernetes stops a
//! pod (SIGTERM) while it holds `connections` clients, and every client reconnects to the other
//! node as soon as its connection ends — a rolling update or a node drain, seen from the
//! clients. Measured: when the old node closed its clients (from the SIGTERM), how long each
//! client took from its close to a usable session on the other node, when the last one got
//! there, and the kernel's listen-overflow counters over the move.
//!
//! chat-node spreads its closes over `--drain-timeout` (1001 each) so that the other nodes see
//! a stream of reconnects rather than a wall; the reference closes every client at once;
//! Centrifugo disconnects every client at shutdown with a reconnect advice. The clients here
//! reconnect at once, without the back-off and jitter a real client adds: the worst case.
//!
//! Like the idle scenario, the clients live in `chat-loadgen drain-worker` processes: a worker
//! prints a JSON line when its connections are open ([`DrainFilled`]), one when every
//! connection has moved or given up ([`DrainMoved`]), and a last one when its stdin closes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, watch};

use crate::burst::quantile;
use crate::client::{self, ConnectError, Endpoint, Proto, now_micros};
use crate::idle::{
    Held, Worker, WorkerClosed, WorkerConfig, hold, process_alive, raise_nofile, sources_for,
};
use crate::procstat::{self, ListenCounters};

/// Attempts of a client to reach the other node before it gives up.
const RECONNECT_ATTEMPTS: u32 = 5;
/// Pause between those attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What a worker reports once its connections to the first node are open.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DrainFilled {
    pub accepted: u64,
    pub failed: BTreeMap<String, u64>,
}

/// What a worker reports once every connection has moved to the other node or given up.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DrainMoved {
    /// When each connection saw its close, µs since the epoch.
    pub closed_at_us: Vec<u64>,
    /// When each moved connection had a usable session on the other node, µs since the epoch.
    pub moved_at_us: Vec<u64>,
    /// Close → usable session on the other node, per moved connection, milliseconds.
    pub reconnect_ms: Vec<f64>,
    /// Connections that could not reach the other node, by the last error.
    pub failed: BTreeMap<String, u64>,
    /// Connections the first node had not closed when the worker stopped waiting.
    pub not_closed: u64,
}

/// Settings of one drain worker.
#[derive(Debug, Clone)]
pub struct DrainWorkerConfig {
    pub endpoint: Endpoint,
    pub fallback: SocketAddr,
    pub connections: u64,
    pub sources: Vec<Ipv4Addr>,
    pub concurrency: usize,
    /// How long to wait for every connection to move, from the fill.
    pub move_timeout: Duration,
}

enum Moved {
    Moved {
        closed_at: u64,
        moved_at: u64,
        ms: f64,
    },
    Failed {
        closed_at: u64,
        error: String,
    },
}

/// Body of `chat-loadgen drain-worker`.
pub async fn worker(cfg: DrainWorkerConfig) -> anyhow::Result<()> {
    raise_nofile();
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let json_pings = matches!(cfg.endpoint.proto, Proto::Centrifugo(_));
    let fallback = Endpoint {
        addr: cfg.fallback,
        ..cfg.endpoint.clone()
    };
    let mut opened = tokio::task::JoinSet::new();
    for i in 0..cfg.connections {
        let permit = limit.clone().acquire_owned().await?;
        let endpoint = cfg.endpoint.clone();
        let source = cfg
            .sources
            .get(i as usize % cfg.sources.len().max(1))
            .map(|ip| IpAddr::V4(*ip));
        opened.spawn(async move {
            let ws = client::connect(&endpoint, source).await;
            drop(permit);
            (ws, source)
        });
    }
    let mut filled = DrainFilled::default();
    let (moved_tx, mut moved_rx) = tokio::sync::mpsc::unbounded_channel();
    let held_closed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while let Some(res) = opened.join_next().await {
        let (ws, source) = res?;
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                *filled.failed.entry(e.label()).or_default() += 1;
                continue;
            }
        };
        filled.accepted += 1;
        let mut stop = stop_rx.clone();
        let fallback = fallback.clone();
        let moved_tx = moved_tx.clone();
        let held_closed = held_closed.clone();
        tokio::spawn(async move {
            if hold(ws, json_pings, &mut stop).await == Held::Stopped {
                return;
            }
            let closed_at = now_micros();
            let began = Instant::now();
            let mut last_error = String::new();
            for attempt in 0..RECONNECT_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                match client::connect(&fallback, source).await {
                    Ok(ws) => {
                        let ms = began.elapsed().as_secs_f64() * 1e3;
                        let _ = moved_tx.send(Moved::Moved {
                            closed_at,
                            moved_at: now_micros(),
                            ms,
                        });
                        if hold(ws, json_pings, &mut stop).await == Held::ClosedByServer {
                            held_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        return;
                    }
                    Err(ConnectError::HttpStatus(s)) => last_error = format!("http_{}", s.as_u16()),
                    Err(e) => last_error = e.label(),
                }
            }
            let _ = moved_tx.send(Moved::Failed {
                closed_at,
                error: last_error,
            });
        });
    }
    drop(moved_tx);
    println!("{}", serde_json::to_string(&filled)?);

    let mut moved = DrainMoved::default();
    let deadline = tokio::time::Instant::now() + cfg.move_timeout;
    let mut settled = 0;
    while settled < filled.accepted {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, moved_rx.recv()).await else {
            break;
        };
        settled += 1;
        match m {
            Moved::Moved {
                closed_at,
                moved_at,
                ms,
            } => {
                moved.closed_at_us.push(closed_at);
                moved.moved_at_us.push(moved_at);
                moved.reconnect_ms.push(ms);
            }
            Moved::Failed { closed_at, error } => {
                moved.closed_at_us.push(closed_at);
                *moved.failed.entry(error).or_default() += 1;
            }
        }
    }
    moved.not_closed = filled.accepted - settled;
    println!("{}", serde_json::to_string(&moved)?);

    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let _ = stop_tx.send(true);
    let closed = WorkerClosed {
        closed_by_server: held_closed.load(std::sync::atomic::Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&closed)?);
    Ok(())
}

/// Settings of the drain scenario.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// Clients on the node that is stopped.
    pub connections: u64,
    pub processes: usize,
    /// Source addresses 127.0.0.<first_source>… (two per worker).
    pub first_source: u8,
    pub concurrency: usize,
    pub fill_timeout: Duration,
    /// How long the clients may take to move, from the SIGTERM.
    pub move_timeout: Duration,
}

/// Results of the drain scenario for one design.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainResult {
    pub connections: u64,
    pub accepted: u64,
    pub moved: u64,
    pub failed: BTreeMap<String, u64>,
    pub not_closed: u64,
    /// SIGTERM → the first and the last client's close, milliseconds.
    pub first_close_ms: f64,
    pub last_close_ms: f64,
    /// SIGTERM → the last client's usable session on the other node, milliseconds.
    pub all_moved_ms: f64,
    /// Close → usable session on the other node, per client.
    pub reconnect_p50_ms: f64,
    pub reconnect_p99_ms: f64,
    pub reconnect_max_ms: f64,
    /// The most reconnects the other node took in any 100 ms window, per second.
    pub peak_reconnects_per_s: f64,
    pub kernel: ListenCounters,
    /// The other node's CPU over the move, per moved client.
    pub target_cpu_us_per_reconnect: f64,
    /// The stopped node had exited by the time every client moved (or the wait ended).
    pub old_exited: bool,
    pub closed_by_target: u64,
}

impl DrainResult {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.accepted != self.connections {
            p.push(format!(
                "only {} of {} clients connected to the first node",
                self.accepted, self.connections
            ));
        }
        if self.moved != self.accepted {
            p.push(format!(
                "{} of {} clients moved (failed: {:?}, never closed: {})",
                self.moved, self.accepted, self.failed, self.not_closed
            ));
        }
        if self.closed_by_target != 0 {
            p.push(format!(
                "{} moved clients closed by the other node",
                self.closed_by_target
            ));
        }
        p
    }
}

/// The most events in any `window` (µs) of sorted timestamps, per second.
fn peak_rate(sorted_us: &[u64], window_us: u64) -> f64 {
    let mut best = 0;
    let mut start = 0;
    for (end, &t) in sorted_us.iter().enumerate() {
        while t - sorted_us[start] >= window_us {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best as f64 * 1e6 / window_us as f64
}

/// Runs the scenario: `clients` on `old` (process `old_pid`) are moved to `target` (process
/// `target_pid`) by a SIGTERM to `old_pid`.
pub async fn run(
    old: &Endpoint,
    old_pid: u32,
    target: &Endpoint,
    target_pid: u32,
    cfg: &DrainConfig,
) -> anyhow::Result<DrainResult> {
    let processes = cfg.processes.max(1);
    let mut result = DrainResult {
        connections: cfg.connections,
        ..Default::default()
    };
    let mut workers = Vec::new();
    for w in 0..processes {
        let share = cfg.connections / processes as u64
            + u64::from((w as u64) < cfg.connections % processes as u64);
        workers.push(Worker::spawn_with(
            &WorkerConfig {
                endpoint: old.clone(),
                connections: share,
                sources: sources_for(cfg.first_source, w),
                concurrency: cfg.concurrency,
                rate: 0.0,
            },
            "drain-worker",
            &[
                "--fallback".to_owned(),
                target.addr.to_string(),
                "--move-timeout".to_owned(),
                (cfg.move_timeout + cfg.fill_timeout)
                    .as_secs_f64()
                    .to_string(),
            ],
        )?);
    }
    for w in &mut workers {
        let filled: DrainFilled = w.read(cfg.fill_timeout).await?;
        result.accepted += filled.accepted;
        for (k, v) in filled.failed {
            *result.failed.entry(format!("connect {k}")).or_default() += v;
        }
    }

    let kernel_before = ListenCounters::read()?;
    let cpu_before = procstat::cpu_seconds(Some(target_pid))?;
    let sigterm_at = now_micros();
    let pid = rustix::process::Pid::from_raw(old_pid as i32)
        .ok_or_else(|| anyhow::anyhow!("no pid for the node to stop"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;

    let mut closed = Vec::new();
    let mut moved_at = Vec::new();
    let mut reconnect = Vec::new();
    for w in &mut workers {
        let m: DrainMoved = w.read(cfg.move_timeout + Duration::from_secs(10)).await?;
        closed.extend(m.closed_at_us);
        moved_at.extend(m.moved_at_us);
        reconnect.extend(m.reconnect_ms);
        for (k, v) in m.failed {
            *result.failed.entry(k).or_default() += v;
        }
        result.not_closed += m.not_closed;
    }
    let target_cpu = procstat::cpu_seconds(Some(target_pid))? - cpu_before;
    result.kernel = ListenCounters::read()?.since(kernel_before);
    result.old_exited = !process_alive(old_pid);
    result.moved = reconnect.len() as u64;
    closed.sort_unstable();
    moved_at.sort_unstable();
    reconnect.sort_by(f64::total_cmp);
    let since = |t: u64| t.saturating_sub(sigterm_at) as f64 / 1e3;
    result.first_close_ms = closed.first().map_or(0.0, |&t| since(t));
    result.last_close_ms = closed.last().map_or(0.0, |&t| since(t));
    result.all_moved_ms = moved_at.last().map_or(0.0, |&t| since(t));
    result.reconnect_p50_ms = quantile(&reconnect, 0.5);
    result.reconnect_p99_ms = quantile(&reconnect, 0.99);
    result.reconnect_max_ms = reconnect.last().copied().unwrap_or(0.0);
    result.peak_reconnects_per_s = peak_rate(&moved_at, 100_000);
    if result.moved > 0 {
        result.target_cpu_us_per_reconnect = target_cpu * 1e6 / result.moved as f64;
    }
    for w in workers {
        result.closed_by_target += w.close().await?.closed_by_server;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rate_counts_the_busiest_window() {
        // 3 events within 100 ms, then 2 far apart: 3 per 100 ms = 30/s
        let t = [0, 10_000, 90_000, 500_000, 900_000];
        assert_eq!(peak_rate(&t, 100_000), 30.0);
        assert_eq!(peak_rate(&[], 100_000), 0.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
