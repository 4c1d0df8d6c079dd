//! A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, and a
//! local webhook receiver that records every notification it gets.
//!
//! Clustering is switched off (`--cluster.listen-address=`), so nothing but the web port is
//! opened. Alerts can be posted directly through the v2 API or come from a
//! [`PrometheusServer`](crate::prometheus::PrometheusServer).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

use crate::Error;
use crate::process::ManagedProcess;

/// A running Alertmanager; killed on drop.
#[derive(Debug)]
pub struct AlertmanagerServer {
    process: ManagedProcess,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl AlertmanagerServer {
    /// Starts Alertmanager with `config_yaml` and waits until it answers `/-/ready`.
    pub async fn start(config_yaml: &str) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("alertmanager-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "create alertmanager dir".into(),
                source,
            })?;
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config_yaml).map_err(|source| Error::Io {
            context: "write alertmanager.yml".into(),
            source,
        })?;
        let port = crate::free_port();
        let mut command = std::process::Command::new(crate::tools::alertmanager());
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        let process = ManagedProcess::spawn(
            "alertmanager",
            command,
            &dir.path().join("alertmanager.log"),
        )?;
        let mut server = AlertmanagerServer {
            process,
            port,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(30) {
            match server
                .http
                .get(format!("{}/-/ready", server.url()))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(server),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            server.process.ensure_running()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::NotReady {
            what: "alertmanager".into(),
            waited: Duration::from_secs(30),
            last_error: last,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Posts alerts (`[{"labels": {...}, "annotations": {...}}]`) to `/api/v2/alerts`.
    pub async fn post_alerts(&self, alerts: &Value) -> Result<(), Error> {
        let response = self
            .http
            .post(format!("{}/api/v2/alerts", self.url()))
            .json(alerts)
            .send()
            .await
            .map_err(|e| Error::Other(format!("POST /api/v2/alerts: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::Other(format!(
                "POST /api/v2/alerts: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The alerts Alertmanager holds (`GET /api/v2/alerts`), with their `status.state`
    /// (`active`, `suppressed`) and `status.inhibitedBy`.
    pub async fn alerts(&self) -> Result<Vec<Value>, Error> {
        let response = self
            .http
            .get(format!("{}/api/v2/alerts", self.url()))
            .send()
            .await
            .map_err(|e| Error::Other(format!("GET /api/v2/alerts: {e}")))?;
        response
            .json()
            .await
            .map_err(|e| Error::Other(format!("GET /api/v2/alerts: bad JSON: {e}")))
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// Notifications received so far: (path without `/`, JSON body).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on 127.0.0.1: every POST body (an Alertmanager notification) is kept,
/// with the path it came to (so one receiver can stand in for several Alertmanager receivers:
/// `/critical`, `/warning`, ...).
pub struct WebhookReceiver {
    port: u16,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts the receiver (on the current tokio runtime).
    pub async fn start() -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| Error::Io {
                context: "bind webhook receiver".into(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Io {
                context: "webhook receiver address".into(),
                source,
            })?
            .port();
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/{*path}", post(record))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            port,
            received,
            task,
        })
    }

    /// URL of `path` on this receiver, e.g. `url("critical")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Every notification so far as (path without `/`, body).
    pub fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().expect("webhook lock").clone()
    }

    /// Waits until `predicate` holds for the notifications received so far.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&[(String, Value)]) -> bool,
    ) -> Result<Vec<(String, Value)>, Error> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if predicate(&received) {
                return Ok(received);
            }
            if start.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: what.to_owned(),
                    waited: timeout,
                    last_error: format!("received {received:#?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(received): State<Received>,
    axum::extract::Path(path): axum::extract::Path<String>,
    axum::Json(body): axum::Json<Value>,
) {
    received.lock().expect("webhook lock").push((path, body));
}
