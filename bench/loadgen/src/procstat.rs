//! Readings from `/proc`: a process's CPU time and resident memory, the machine's busy time
//! and load average. Every benchmark number about cost comes from here, so that the load
//! generator measures servers the same way whatever language they are written in.

use std::fs;
use std::time::Instant;

use serde::Serialize;

/// Why a `/proc` reading failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {what}")]
    Parse { path: String, what: &'static str },
}

fn read(path: &str) -> Result<String, ProcError> {
    fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// CPU time (user + system) a process has used so far, in seconds. `pid = None` is this
/// process (all its threads).
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64, ProcError> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// User and system CPU time a process has used so far, in seconds.
pub fn cpu_split(pid: Option<u32>) -> Result<(f64, f64), ProcError> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = read(&path)?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(ProcError::Parse {
            path: path.clone(),
            what: "no ')' after the command name",
        })?;
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, ProcError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcError::Parse {
                path: path.clone(),
                what: "utime/stime",
            })
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(14 - 3)? as f64 / hz, ticks(15 - 3)? as f64 / hz))
}

/// Resident memory of a process (`VmRSS` of `/proc/<pid>/status`), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let status = read(&path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(ProcError::Parse {
            path,
            what: "VmRSS",
        })
}

/// Busy and total time of all CPUs since boot (first line of `/proc/stat`), in seconds.
fn machine_times() -> Result<(f64, f64), ProcError> {
    let path = "/proc/stat";
    let stat = read(path)?;
    let line = stat.lines().next().unwrap_or_default();
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    if vals.len() < 5 {
        return Err(ProcError::Parse {
            path: path.to_owned(),
            what: "cpu line",
        });
    }
    let total: u64 = vals.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = vals[3] + vals[4];
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok(((total - idle) as f64 / hz, total as f64 / hz))
}

/// The 1-minute load average.
pub fn loadavg_1m() -> f64 {
    read("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The kernel's TCP counters that tell a handshake burst overflowed a listener: SYNs or
/// completed handshakes dropped (`ListenOverflows`, `ListenDrops`) and SYNs sent again
/// (`TCPSynRetrans`), from `/proc/net/netstat` of this network namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub syn_retrans: u64,
}

impl ListenCounters {
    pub fn read() -> Result<ListenCounters, ProcError> {
        Ok(Self::parse(&read("/proc/net/netstat")?))
    }

    /// `TcpExt:` comes as a line of names and a line of values.
    fn parse(netstat: &str) -> ListenCounters {
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return ListenCounters::default();
        };
        let get = |field: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == field)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        ListenCounters {
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            syn_retrans: get("TCPSynRetrans"),
        }
    }

    /// The counts since `earlier`.
    pub fn since(self, earlier: ListenCounters) -> ListenCounters {
        ListenCounters {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            syn_retrans: self.syn_retrans.saturating_sub(earlier.syn_retrans),
        }
    }
}

/// A set of processes whose CPU use is measured over a window.
#[derive(Debug, Clone)]
pub struct Watched {
    pub servers: Vec<u32>,
    pub redis: Option<u32>,
}

/// CPU readings at the start of a window.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    servers: f64,
    servers_system: f64,
    redis: f64,
    loadgen: f64,
    machine_busy: f64,
}

/// CPU used over a window, in seconds (and busy cores for the whole machine).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub wall_s: f64,
    pub server_s: f64,
    /// The kernel's part of `server_s` (socket writes; on loopback it includes delivering
    /// the bytes to the receiving socket).
    pub server_system_s: f64,
    pub redis_s: f64,
    pub loadgen_s: f64,
    /// Average busy cores of the whole machine (everything, not only the benchmark).
    pub machine_busy_cores: f64,
}

impl Watched {
    /// (user + system, system) of all servers.
    fn servers_cpu(&self) -> Result<(f64, f64), ProcError> {
        let mut total = (0.0, 0.0);
        for p in &self.servers {
            let (user, system) = cpu_split(Some(*p))?;
            total.0 += user + system;
            total.1 += system;
        }
        Ok(total)
    }

    pub fn mark(&self) -> Result<CpuMark, ProcError> {
        let (servers, servers_system) = self.servers_cpu()?;
        Ok(CpuMark {
            at: Instant::now(),
            servers,
            servers_system,
            redis: self
                .redis
                .map(|p| cpu_seconds(Some(p)))
                .transpose()?
                .unwrap_or(0.0),
            loadgen: cpu_seconds(None)?,
            machine_busy: machine_times()?.0,
        })
    }

    pub fn since(&self, mark: &CpuMark) -> Result<CpuUse, ProcError> {
        let now = self.mark()?;
        let wall_s = now.at.duration_since(mark.at).as_secs_f64();
        Ok(CpuUse {
            wall_s,
            server_s: now.servers - mark.servers,
            server_system_s: now.servers_system - mark.servers_system,
            redis_s: now.redis - mark.redis,
            loadgen_s: now.loadgen - mark.loadgen,
            machine_busy_cores: if wall_s > 0.0 {
                (now.machine_busy - mark.machine_busy) / wall_s
            } else {
                0.0
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(Some(pid)).unwrap() >= 0.0);
        assert!(rss_kib(pid).unwrap() > 0);
        let (busy, total) = machine_times().unwrap();
        assert!(total > busy && busy > 0.0);
    }

    #[test]
    fn reads_the_listen_counters_by_name() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                       TcpExt: 0 7 9 12\n\
                       IpExt: InNoRoutes\n\
                       IpExt: 0\n";
        let c = ListenCounters::parse(netstat);
        assert_eq!(
            c,
            ListenCounters {
                listen_overflows: 7,
                listen_drops: 9,
                syn_retrans: 12
            }
        );
        let later = ListenCounters {
            syn_retrans: 20,
            ..c
        };
        assert_eq!(later.since(c).syn_retrans, 8);
        // this machine's file has the fields
        assert!(ListenCounters::read().is_ok());
    }
}
