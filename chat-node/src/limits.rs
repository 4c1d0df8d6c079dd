//! File-descriptor awareness: raise `RLIMIT_NOFILE` to its hard limit, derive the connection
//! limit from it, and count connections so the node answers 503 instead of dying of EMFILE.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::metrics::Metrics;

/// The fd limits after start-up.
#[derive(Clone, Copy, Debug)]
pub struct FdLimits {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (best effort) and returns both.
pub fn raise_nofile_limit() -> FdLimits {
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum.unwrap_or(1 << 20);
    let soft = current.current.unwrap_or(hard);
    if soft < hard {
        let wanted = Rlimit {
            current: Some(hard),
            maximum: current.maximum,
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            return FdLimits { soft: hard, hard };
        }
    }
    FdLimits { soft, hard }
}

/// Connections allowed for a soft limit, and the reserve kept for everything else: the fds open
/// at start (listeners, runtime, logs), Redis and admin sockets, and a margin for short-lived
/// sockets (503 answers, scrapes) that grows with the limit.
pub fn derive_max_connections(soft: u64, open_at_start: usize) -> (usize, usize) {
    let margin = 16usize.max((soft / 100) as usize);
    let redis_and_admin = 8;
    let reserve = open_at_start + redis_and_admin + margin;
    ((soft as usize).saturating_sub(reserve), reserve)
}

/// What `/metrics` reports about the process.
pub struct ProcessStats {
    pub open_fds: usize,
    pub max_fds: u64,
    pub resident_bytes: u64,
}

/// Open fds, fd soft limit and resident memory, from `/proc/self`.
pub fn process_stats() -> ProcessStats {
    let max_fds = getrlimit(Resource::Nofile).current.unwrap_or(0);
    let resident_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    ProcessStats {
        open_fds: open_fds(),
        max_fds,
        resident_bytes: resident_pages * rustix::param::page_size() as u64,
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Counts client connections (WebSocket and SSE) against the limit.
pub struct ConnectionGate {
    active: AtomicUsize,
    max: usize,
    metrics: Metrics,
}

impl ConnectionGate {
    pub fn new(max: usize, metrics: Metrics) -> Arc<Self> {
        metrics.max_connections.set(max as i64);
        Arc::new(ConnectionGate {
            active: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn at_limit(&self) -> bool {
        self.active() >= self.max
    }

    /// Takes a slot, or `None` at the limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        self.metrics.active_connections.inc();
        Some(ConnectionPermit { gate: self.clone() })
    }
}

/// A connection slot, released on drop.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.active.fetch_sub(1, Ordering::AcqRel);
        self.gate.metrics.active_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_limit_with_reserve() {
        let (max, reserve) = derive_max_connections(20_000, 12);
        assert_eq!(reserve, 12 + 8 + 200);
        assert_eq!(max, 20_000 - reserve);
        let (max, _) = derive_max_connections(64, 10);
        assert_eq!(max, 64 - 34);
        assert_eq!(derive_max_connections(10, 10).0, 0);
    }

    #[test]
    fn gate_counts() {
        let mut registry = prometheus_client::registry::Registry::default();
        let gate = ConnectionGate::new(2, Metrics::register(&mut registry, &[]));
        let a = gate.try_acquire().unwrap();
        let _b = gate.try_acquire().unwrap();
        assert!(gate.try_acquire().is_none());
        assert!(gate.at_limit());
        drop(a);
        assert!(gate.try_acquire().is_some());
    }
}
