//! A real `redis-server` on a free loopback port, without persistence.
//!
//! ```no_run
//! # async fn demo() {
//! let mut redis = test_harness::redis::RedisServer::start().await;
//! let url = redis.url(); // redis://127.0.0.1:<port>/
//! redis.stop(); // clients now see the broker gone
//! redis.restart().await; // same port, empty data
//! # }
//! ```
//!
//! With [`RedisOptions::tls`] the server speaks TLS with a certificate of a private CA made for
//! it ([`RedisServer::ca_path`]); [`cluster::RedisCluster`] runs several servers as one Redis
//! Cluster.

pub mod cluster;
pub mod sentinel;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{ManagedProcess, RemoveOnExit};
use crate::{Error, free_port};

/// How long `start`/`restart` wait for the server to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports `start` tries when the server could not bind (a port race).
const PORT_ATTEMPTS: usize = 3;

/// Options for [`RedisServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    password: Option<String>,
    config_file: Option<PathBuf>,
    extra_args: Vec<String>,
    program: Option<PathBuf>,
    tls: bool,
    tls_ca: Option<tls::TestCa>,
}

impl RedisOptions {
    /// Requires this password (`--requirepass`); [`RedisServer::url`] then carries it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Starts `redis-server <file> …`, the configuration file first, as a container given one
    /// does. With [`RedisOptions::password`] the file must set `requirepass` to it: the password
    /// is then not passed as `--requirepass` (only the harness's own clients use it).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Appends a raw `redis-server` argument (e.g. `"--maxmemory"`, `"10mb"`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Serves TLS only to clients: [`RedisServer::url`] is `rediss://127.0.0.1:<tls port>/`,
    /// signed by a fresh private CA at [`RedisServer::ca_path`] (server certificate for
    /// `127.0.0.1` and `localhost`; client certificates not required). A plain port stays open
    /// on loopback for the harness's own readiness checks ([`RedisServer::plain_port`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// [`RedisOptions::tls`] with certificates from `ca` (so several servers share one CA).
    pub fn tls_with(mut self, ca: tls::TestCa) -> Self {
        self.tls = true;
        self.tls_ca = Some(ca);
        self
    }

    /// Uses this `redis-server` binary instead of `$CHATCLUSTER_REDIS_SERVER` / `PATH`.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }
}

/// A `redis-server` process owned by a test. Dropping it kills the server.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    tls: Option<(u16, tls::TlsFiles)>,
    options: RedisOptions,
    process: Option<ManagedProcess>,
    dir: tempfile::TempDir,
    /// Removes `dir` if the test process dies without dropping this (SIGKILL, a `static`).
    _cleanup: RemoveOnExit,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING. Panics with the
    /// server's log when it cannot start (use [`RedisServer::try_start`] to handle that).
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// [`RedisServer::start`] with options (password, extra arguments).
    pub async fn start_with(options: RedisOptions) -> Self {
        match Self::try_start_with(options).await {
            Ok(server) => server,
            Err(err) => panic!("test harness: redis-server did not start: {err}"),
        }
    }

    /// Fallible [`RedisServer::start`].
    pub async fn try_start() -> Result<Self, Error> {
        Self::try_start_with(RedisOptions::default()).await
    }

    /// Fallible [`RedisServer::start_with`].
    pub async fn try_start_with(options: RedisOptions) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("chatcluster-redis-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "create a temp dir for redis-server".into(),
                source,
            })?;
        let tls_files = if options.tls {
            let ca = match &options.tls_ca {
                Some(ca) => ca.clone(),
                None => tls::TestCa::generate()?,
            };
            Some(ca.write(dir.path())?)
        } else {
            None
        };
        let cleanup = RemoveOnExit::arm(dir.path())?;
        let mut server = Self {
            port: 0,
            tls: None,
            options,
            process: None,
            dir,
            _cleanup: cleanup,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            server.tls = tls_files.clone().map(|files| (free_port(), files));
            match server.launch().await {
                Ok(()) => return Ok(server),
                // Exited early: most likely another process took the port; try a fresh one.
                Err(err @ Error::Exited { .. }) => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Other("redis-server did not start".into())))
    }

    /// `redis://127.0.0.1:<port>/` (with `:<password>@` when a password is set), or
    /// `rediss://127.0.0.1:<tls port>/` with [`RedisOptions::tls`].
    pub fn url(&self) -> String {
        let (scheme, port) = match &self.tls {
            Some((tls_port, _)) => ("rediss", *tls_port),
            None => ("redis", self.port),
        };
        match &self.options.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{port}/"),
            None => format!("{scheme}://127.0.0.1:{port}/"),
        }
    }

    /// The port clients use, the one in [`RedisServer::url`] (stays the same across
    /// [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.tls.as_ref().map_or(self.port, |(port, _)| *port)
    }

    /// The password clients authenticate with, if one is set.
    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    /// The plain (non-TLS) port; the same as [`RedisServer::port`] without TLS.
    pub fn plain_port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the CA that signed the server's certificate (TLS only).
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(_, files)| files.ca.as_path())
    }

    /// Sends one command on the plain port and returns the reply as text (simple strings,
    /// integers and bulk strings, an array of those as its elements joined by newlines;
    /// `-ERR …` replies become `Err`).
    pub async fn command(&self, parts: &[&str]) -> Result<String, Error> {
        command(self.port, self.options.password.as_deref(), parts)
            .await
            .map_err(|e| Error::Other(format!("redis {parts:?} on port {}: {e}", self.port)))
    }

    /// The server's log file (stdout/stderr of `redis-server`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(ManagedProcess::is_running)
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 5 s). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5));
        }
    }

    /// Kills the server abruptly (SIGKILL), like a crash. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs), with no data,
    /// and waits for PING. Panics when it cannot (see [`RedisServer::try_restart`]).
    pub async fn restart(&mut self) {
        if let Err(err) = self.try_restart().await {
            panic!(
                "test harness: redis-server did not restart on port {}: {err}",
                self.port
            );
        }
    }

    /// Fallible [`RedisServer::restart`].
    pub async fn try_restart(&mut self) -> Result<(), Error> {
        self.stop();
        // The old socket may linger for a moment; redis-server binds with SO_REUSEADDR, but
        // retry briefly in case the port is still held by the dying process.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(Error::Exited { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn launch(&mut self) -> Result<(), Error> {
        let program = self.program();
        let mut command = Command::new(&program);
        if let Some(file) = &self.options.config_file {
            command.arg(file);
        }
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(password) = &self.options.password
            && self.options.config_file.is_none()
        {
            command.arg("--requirepass").arg(password);
        }
        if let Some((tls_port, files)) = &self.tls {
            command
                .arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca)
                .args(["--tls-auth-clients", "no"]);
        }
        command.args(&self.options.extra_args);
        let mut process =
            ManagedProcess::spawn("redis-server", command, &self.dir.path().join("redis.log"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("no answer yet");
        while Instant::now() < deadline {
            process.ensure_running()?;
            match ping(self.port, self.options.password.as_deref()).await {
                Ok(()) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(err) => last_error = err,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::NotReady {
            what: format!("redis-server on 127.0.0.1:{}", self.port),
            waited: READY_TIMEOUT,
            last_error: format!("{last_error}; log:\n{}", process.log_tail(20)),
        })
    }

    fn program(&self) -> PathBuf {
        if let Some(program) = &self.options.program {
            return program.clone();
        }
        std::env::var_os("CHATCLUSTER_REDIS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new("redis-server").to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `AUTH` (when a password is set) and `PING`; Ok when the server answers `+PONG`.
async fn ping(port: u16, password: Option<&str>) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend_from_slice(&resp_command(&["AUTH", password]));
    }
    request.extend_from_slice(&resp_command(&["PING"]));
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    let expected_lines = if password.is_some() { 2 } else { 1 };
    while reply.iter().filter(|&&b| b == b'\n').count() < expected_lines {
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .map_err(|_| "timed out waiting for PONG".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before PONG".into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply);
    if reply.lines().last() == Some("+PONG") {
        Ok(())
    } else {
        Err(format!("unexpected reply {reply:?}"))
    }
}

/// Sends `AUTH` (when a password is set) and one command; returns the command's reply.
async fn command(port: u16, password: Option<&str>, parts: &[&str]) -> Result<String, String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream = tokio::io::BufReader::new(stream);
    if let Some(password) = password {
        stream
            .get_mut()
            .write_all(&resp_command(&["AUTH", password]))
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_reply(&mut stream).await?;
    }
    stream
        .get_mut()
        .write_all(&resp_command(parts))
        .await
        .map_err(|e| format!("write: {e}"))?;
    read_reply(&mut stream).await
}

/// Reads one RESP reply that is a simple string, error, integer or bulk string, or an array of
/// those (its elements joined by newlines).
async fn read_reply(stream: &mut tokio::io::BufReader<TcpStream>) -> Result<String, String> {
    let read = async {
        let line = read_line(stream).await?;
        match line.split_at_checked(1) {
            Some(("*", count)) => {
                let count: i64 = count
                    .parse()
                    .map_err(|_| format!("bad array length {count}"))?;
                let mut elements = Vec::new();
                for _ in 0..count.max(0) {
                    let line = read_line(stream).await?;
                    elements.push(read_scalar(stream, &line).await?);
                }
                Ok(elements.join("\n"))
            }
            _ => read_scalar(stream, &line).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| "timed out waiting for the reply".to_string())?
}

async fn read_line(stream: &mut tokio::io::BufReader<TcpStream>) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(line.trim_end().to_owned())
}

/// The reply that starts with `line`, when it is no array.
async fn read_scalar(
    stream: &mut tokio::io::BufReader<TcpStream>,
    line: &str,
) -> Result<String, String> {
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => Err(rest.to_owned()),
        Some(("$", len)) => {
            let len: usize = len.parse().map_err(|_| format!("bad bulk length {len}"))?;
            let mut body = vec![0u8; len + 2];
            stream
                .read_exact(&mut body)
                .await
                .map_err(|e| format!("read: {e}"))?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// Encodes one command as a RESP array of bulk strings.
fn resp_command(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n{part}\r\n", part.len()).as_bytes());
    }
    out
}
