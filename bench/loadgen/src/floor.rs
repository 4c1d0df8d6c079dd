//! The kernel's floor per delivery, measured in the same run as the servers: the suite runs
//! `bench/floor/write_floor.py` (one process writing a frame to each of N loopback connections
//! in turn, paced, with no server around it) before each fan-out rate, at that rate's
//! deliveries per second, and reports the writer's system CPU per `write()` beside each
//! server's CPU per delivery.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// How to run the floor measurement.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    pub python: PathBuf,
    pub script: PathBuf,
    /// Connections written to (the fan-out's subscriber connections).
    pub conns: usize,
    /// Measuring time per rate.
    pub seconds: f64,
}

/// One floor measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Floor {
    /// The fan-out rate (messages/s) it was measured for.
    pub rate: u64,
    /// Writes per second it was paced at (the rate's deliveries per second).
    pub writes_per_s: u64,
    pub writes: u64,
    pub seconds: f64,
    /// The writer's kernel CPU per write: the floor.
    pub system_us_per_write: f64,
    /// The writer's own (Python) CPU per write; not part of the floor.
    pub user_us_per_write: f64,
}

#[derive(Deserialize)]
struct ScriptOutput {
    writes: u64,
    seconds: f64,
    system_us_per_write: f64,
    user_us_per_write: f64,
}

/// Measures the floor at `writes_per_s` for the fan-out rate `rate`.
pub async fn measure(cfg: &FloorConfig, rate: u64, writes_per_s: u64) -> anyhow::Result<Floor> {
    let writes = ((writes_per_s as f64 * cfg.seconds) as u64).max(200);
    let out = Command::new(&cfg.python)
        .arg(&cfg.script)
        .args(["--conns", &cfg.conns.max(1).to_string()])
        .args(["--rate", &writes_per_s.max(1).to_string()])
        .args(["--writes", &writes.to_string()])
        .arg("--json")
        .kill_on_drop(true)
        .output();
    let timeout = Duration::from_secs_f64(cfg.seconds * 20.0 + 60.0);
    let out = tokio::time::timeout(timeout, out)
        .await
        .map_err(|_| anyhow::anyhow!("{} did not finish", cfg.script.display()))??;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        cfg.script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let o: ScriptOutput = serde_json::from_slice(&out.stdout)?;
    Ok(Floor {
        rate,
        writes_per_s,
        writes: o.writes,
        seconds: o.seconds,
        system_us_per_write: o.system_us_per_write,
        user_us_per_write: o.user_us_per_write,
    })
}
