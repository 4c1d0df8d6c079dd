//! Child processes that never outlive the test process.
//!
//! Every server the harness starts is a [`ManagedProcess`]: it runs in its own process group
//! with its output in a log file, and is paired with a tiny watchdog (`sh` blocked on a pipe
//! whose write end only this process holds). When the test process ends in any way — normal
//! exit, panic, `SIGKILL`, a `static` that is never dropped — the kernel closes the pipe, the
//! watchdog's `cat` returns and it kills the server's whole process group. The Go-built
//! control-plane binaries additionally exit on their own when their standard input (another
//! such pipe) closes (`CHATCLUSTER_EXIT_ON_STDIN_EOF=1`).
//!
//! `PR_SET_PDEATHSIG` is deliberately not used: it fires when the spawning *thread* exits, and
//! tokio test runtimes end their threads long before a shared control plane should stop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::Error;

/// A running server process with its watchdog; killed on drop.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log_path: PathBuf,
    exited: bool,
}

impl ManagedProcess {
    /// Spawns `command` (stdout and stderr appended to `log_path`, stdin a pipe held open until
    /// the process is stopped) in its own process group, plus its watchdog.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Result<Self, Error> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|source| Error::Io {
                context: format!("open log file {}", log_path.display()),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| Error::Io {
            context: "clone log file handle".into(),
            source,
        })?;
        command
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: format!("{name} ({:?})", command.get_program()),
            source,
        })?;
        let watchdog = spawn_watchdog(child.id()).map_err(|source| Error::Spawn {
            program: format!("watchdog for {name}"),
            source,
        });
        let mut process = Self {
            name: name.to_owned(),
            child,
            watchdog: None,
            log_path: log_path.to_owned(),
            exited: false,
        };
        process.watchdog = Some(watchdog?);
        Ok(process)
    }

    /// The name given at spawn time (used in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is still running (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        if self.exited {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.exited = true;
                self.stop_watchdog();
                false
            }
        }
    }

    /// Returns an error carrying the log tail when the process has already exited.
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        if self.is_running() {
            Ok(())
        } else {
            Err(Error::Exited {
                name: self.name.clone(),
                log_tail: self.log_tail(40),
            })
        }
    }

    /// Sends `SIGTERM`, waits up to `grace` for the exit, then kills. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        let _ = kill(self.nix_pid(), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.kill_group();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Kills the process group with `SIGKILL` and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if !self.exited {
            self.kill_group();
            let _ = self.child.wait();
            self.exited = true;
        }
        self.stop_watchdog();
    }

    /// The last `lines` lines of the process's log (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        read_log_tail(&self.log_path, lines)
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    fn kill_group(&self) {
        // The child leads its own process group (process_group(0)), so this also reaches any
        // helper it forked.
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
    }

    fn stop_watchdog(&mut self) {
        // Kill the watchdog before it could see EOF: the server's pid must not be signalled
        // after it was reaped (the pid could be reused).
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sh` that waits for EOF on its stdin (a pipe only we hold), then kills process group `pgid`.
/// It runs in its own process group and ignores SIGINT/SIGTERM/SIGHUP, so a Ctrl-C aimed at the
/// test does not take it down before it has done its job.
fn spawn_watchdog(pgid: u32) -> std::io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' INT TERM HUP; cat >/dev/null; kill -KILL "-$1" 2>/dev/null"#)
        .arg("chatcluster-watchdog")
        .arg(pgid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read).
pub(crate) fn read_log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes a directory when the test process dies without dropping its owner (e.g. the
/// never-dropped shared control plane's temp dir with its etcd data). A watchdog like the
/// servers' one: on EOF it waits for the servers' watchdogs to kill them, then removes the
/// path. Dropping the guard cancels the removal (the owner cleans up itself).
#[derive(Debug)]
pub struct RemoveOnExit {
    watchdog: Option<Child>,
}

impl RemoveOnExit {
    /// Arms the removal of `path` for when the test process exits.
    pub fn arm(path: &Path) -> Result<Self, Error> {
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"trap '' INT TERM HUP; cat >/dev/null; sleep 1; rm -rf "$1"; sleep 2; rm -rf "$1""#)
            .arg("chatcluster-cleanup")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: "cleanup watchdog (sh)".into(),
                source,
            })?;
        Ok(Self {
            watchdog: Some(watchdog),
        })
    }
}

impl Drop for RemoveOnExit {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
