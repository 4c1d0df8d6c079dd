//! The real `chat-node` binary as a child process (for what only a process shows: signals,
//! `ulimit`, its log, fd exhaustion, its resident memory).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{WAIT, get_text};

/// A chat-node process on free loopback ports; killed on drop.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The server API port, when started with `--api-listen` and `--api-key-file`.
    pub api: Option<SocketAddr>,
    pub max_connections: u64,
}

impl Binary {
    /// Starts the binary through `sh -c '<prelude>; exec chat-node …'` and waits for its
    /// "listening" log line (which carries the bound addresses).
    pub async fn start(prelude: &str, args: &[&str]) -> Binary {
        let script = format!("{prelude}; exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_chat-node"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env_remove("CHAT_REDIS_URL")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chat-node");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let log: Value = serde_json::from_str(&line).expect("JSON log line");
                assert_eq!(log["service"], "chat-node");
                assert!(log["timestamp"].is_string() && log["level"].is_string());
                if log["message"] == "chat-node listening" {
                    return log;
                }
            }
            panic!("chat-node exited before listening");
        })
        .await
        .expect("chat-node listening in time");
        // Keep draining the log so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let details = &listening["details"];
        Binary {
            child,
            addr: details["listen"].as_str().unwrap().parse().unwrap(),
            admin: details["admin_listen"].as_str().unwrap().parse().unwrap(),
            api: details["api_listen"].as_str().map(|a| a.parse().unwrap()),
            max_connections: details["max_connections"].as_u64().unwrap(),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(self.admin_url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn wait_ready(&self, status: u16) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.readyz().await.0 != status {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Binary {
    /// Sends SIGTERM (what a kubelet sends first).
    pub fn terminate(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("chat-node still running")
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Resets the peak resident set size (`VmHWM`) to the current one (Linux ≥ 4.0).
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("reset VmHWM");
    }

    pub async fn metrics(&self) -> String {
        get_text(&self.admin_url("/metrics")).await
    }
}
