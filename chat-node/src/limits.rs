//! File-descriptor awareness: raise `RLIMIT_NOFILE` to its hard limit, derive the connection
//! limit from it, and count connections so the node answers 503 instead of dying of EMFILE.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

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

/// Sockets the admin port serves at once (probes and scrapes need a few); past it a new admin
/// socket is closed at once. Part of the fd reserve, so the probes always find an fd.
pub const ADMIN_SOCKETS: usize = 8;

/// How the fds under the soft limit are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// Client-port sockets served at once (WebSocket, SSE, HTTP), counted from `accept`.
    pub max_connections: usize,
    /// Client-port sockets accepted past the limit and answered 503 (past these: closed at once).
    pub overflow: usize,
    /// fds kept out of `max_connections`: open at start, Redis, the admin port, the overflow
    /// and the spare fd that lets the node accept-and-close when the process is out of fds.
    pub reserve: usize,
}

/// Shares out a soft limit: the fds open at start (listeners, runtime, logs), 8 for Redis and
/// other short-lived files, [`ADMIN_SOCKETS`], the overflow sockets that answer 503 (they grow
/// with the limit: max(16, 1 %)) and one spare fd; the rest are client connections.
pub fn fd_budget(soft: u64, open_at_start: usize) -> FdBudget {
    let overflow = 16usize.max((soft / 100) as usize);
    let redis_and_files = 8;
    let spare = 1;
    let reserve = open_at_start + redis_and_files + ADMIN_SOCKETS + overflow + spare;
    FdBudget {
        max_connections: (soft as usize).saturating_sub(reserve),
        overflow,
        reserve,
    }
}

/// What `/metrics` reports about the process.
pub struct ProcessStats {
    pub open_fds: usize,
    pub max_fds: u64,
    pub resident_bytes: u64,
    /// User + system CPU time since the process started.
    pub cpu_seconds: f64,
}

/// Open fds, fd soft limit, resident memory and CPU time, from `/proc/self`.
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
        cpu_seconds: std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| cpu_seconds(&stat))
            .unwrap_or(0.0),
    }
}

/// `utime` + `stime` (fields 14 and 15 of `/proc/self/stat`, in clock ticks) in seconds. The
/// command name (field 2) is in parentheses and may hold spaces and `)`: count from the last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 3 (state) is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Counts sockets against a limit. The client port takes a permit for every socket it accepts
/// (an upgraded WebSocket carries it on, an SSE stream or HTTP request keeps it on its socket)
/// and gives it back when the socket closes: half-sent requests and idle keep-alive sockets
/// count as much as chat sessions, since each holds an fd.
pub struct ConnectionGate {
    active: AtomicUsize,
    max: usize,
}

impl ConnectionGate {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionGate {
            active: AtomicUsize::new(0),
            max,
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
        Some(ConnectionPermit { gate: self.clone() })
    }
}

/// A socket's slot, released on drop.
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.gate.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_from_the_last_parenthesis() {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        // A command name with spaces and `) ` in it; utime 250 and stime 150 ticks.
        let stat = "4242 (chat) node x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(400.0 / ticks));
        assert_eq!(cpu_seconds("4242 (chat-node) S 1"), None);
        assert!(process_stats().cpu_seconds >= 0.0);
    }

    #[test]
    fn shares_out_the_fds() {
        let budget = fd_budget(20_000, 12);
        assert_eq!(budget.overflow, 200);
        assert_eq!(budget.reserve, 12 + 8 + ADMIN_SOCKETS + 200 + 1);
        assert_eq!(budget.max_connections, 20_000 - budget.reserve);
        let budget = fd_budget(256, 12);
        assert_eq!(budget.overflow, 16);
        assert_eq!(budget.max_connections, 256 - (12 + 8 + 8 + 16 + 1));
        assert_eq!(fd_budget(10, 10).max_connections, 0);
    }

    #[test]
    fn gate_counts() {
        let gate = ConnectionGate::new(2);
        let a = gate.try_acquire().unwrap();
        let _b = gate.try_acquire().unwrap();
        assert!(gate.try_acquire().is_none());
        assert!(gate.at_limit());
        drop(a);
        assert!(gate.try_acquire().is_some());
    }
}
