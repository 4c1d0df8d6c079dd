//! The handshake-burst scenario: what a mass reconnect looks like to one node (a drained
//! node's clients all arriving at once). Load processes start `connections` WebSocket
//! connections evenly spaced over `connections / rate` seconds (10,000 in one second by
//! default) and hold them; each connection's time from its TCP connect to a usable session is
//! recorded. A listener whose backlog overflows drops SYNs, and each dropped SYN waits the
//! kernel's 1 s retransmit: the kernel's own counters (`ListenOverflows`, `ListenDrops`,
//! `TCPSynRetrans`) are read around the burst so that the report says why a p99 is high.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Endpoint;
use crate::idle::{Worker, WorkerConfig, WorkerFilled, process_alive, sources_for};
use crate::procstat::{self, ListenCounters};

/// Settings of the burst scenario.
#[derive(Debug, Clone)]
pub struct BurstConfig {
    /// Connections started (capped by the server's connection limit).
    pub connections: u64,
    /// Connections started per second, across all load processes.
    pub rate: f64,
    pub processes: usize,
    /// Source addresses 127.0.0.<first_source>… (two per worker).
    pub first_source: u8,
    pub fill_timeout: Duration,
}

/// Results of the burst scenario for one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BurstResult {
    pub connections: u64,
    pub rate: f64,
    pub accepted: u64,
    pub refused_503: u64,
    pub failed: BTreeMap<String, u64>,
    /// From the first connection started to the last one settled.
    pub seconds: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    /// Connections that took over a second (a SYN retransmit, most likely).
    pub over_1s: u64,
    /// The kernel's listen-overflow counters over the burst (the whole network namespace).
    pub kernel: ListenCounters,
    pub server_cpu_us_per_connection: f64,
    pub loadgen_cpu_s: f64,
    pub closed_by_server: u64,
    pub alive_after: bool,
}

impl BurstResult {
    /// Every connection accepted and held, and the server alive afterwards.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.accepted != self.connections {
            p.push(format!(
                "accepted {} of {} (503: {}, failed: {:?})",
                self.accepted, self.connections, self.refused_503, self.failed
            ));
        }
        if self.closed_by_server != 0 {
            p.push(format!(
                "{} connections closed by the server",
                self.closed_by_server
            ));
        }
        if !self.alive_after {
            p.push("server not alive after the burst".to_owned());
        }
        p
    }
}

/// The value at quantile `q` of sorted values (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the burst against the server process `pid` serving `endpoint`, with at most `limit`
/// connections (the server's connection limit).
pub async fn run(
    endpoint: &Endpoint,
    pid: u32,
    limit: u64,
    cfg: &BurstConfig,
) -> anyhow::Result<BurstResult> {
    let connections = cfg.connections.min(limit);
    let processes = cfg.processes.max(1);
    let mut result = BurstResult {
        connections,
        rate: cfg.rate,
        ..Default::default()
    };
    let kernel_before = ListenCounters::read()?;
    let cpu_before = procstat::cpu_seconds(Some(pid))?;
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..processes {
        let share =
            connections / processes as u64 + u64::from((w as u64) < connections % processes as u64);
        workers.push(Worker::spawn(&WorkerConfig {
            endpoint: endpoint.clone(),
            connections: share,
            sources: sources_for(cfg.first_source, w),
            // every connection may be in flight at once: only the pacing spaces them
            concurrency: share.max(1) as usize,
            rate: cfg.rate / processes as f64,
        })?);
    }
    let mut connect_ms = Vec::with_capacity(connections as usize);
    for w in &mut workers {
        let filled: WorkerFilled = w.read(cfg.fill_timeout).await?;
        result.accepted += filled.accepted;
        result.refused_503 += filled.refused_503;
        for (k, v) in filled.failed {
            *result.failed.entry(k).or_default() += v;
        }
        result.loadgen_cpu_s += filled.cpu_s;
        connect_ms.extend(filled.connect_ms);
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.kernel = ListenCounters::read()?.since(kernel_before);
    let server_cpu = procstat::cpu_seconds(Some(pid))? - cpu_before;
    if result.accepted > 0 {
        result.server_cpu_us_per_connection = server_cpu * 1e6 / result.accepted as f64;
    }
    connect_ms.sort_by(f64::total_cmp);
    result.connect_p50_ms = quantile(&connect_ms, 0.50);
    result.connect_p99_ms = quantile(&connect_ms, 0.99);
    result.connect_max_ms = connect_ms.last().copied().unwrap_or(0.0);
    result.over_1s = connect_ms.iter().filter(|&&ms| ms >= 1000.0).count() as u64;
    result.alive_after = process_alive(pid);
    for w in workers {
        result.closed_by_server += w.close().await?.closed_by_server;
    }
    result.alive_after &= process_alive(pid);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
    }
}
