//! A real Prometheus server (Debian's `prometheus` package) on a free loopback port.
//!
//! The test gives static scrape targets (with the target labels a ServiceMonitor would give:
//! `namespace`, `pod`, and `job` = the Service name), rule files and optionally an
//! Alertmanager; short scrape and evaluation intervals make alerts observable within seconds.
//! Queries go through the real HTTP API (`/api/v1/query`, `/api/v1/alerts`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::Error;
use crate::process::ManagedProcess;

/// One scrape job with static targets.
#[derive(Clone, Debug, Default)]
pub struct ScrapeJob {
    /// The `job` label.
    pub job_name: String,
    /// `host:port` of each target with its extra target labels (e.g. `namespace`, `pod`).
    pub targets: Vec<(String, BTreeMap<String, String>)>,
}

/// How to configure the server.
#[derive(Clone, Debug)]
pub struct PrometheusOptions {
    pub scrape_interval: Duration,
    pub evaluation_interval: Duration,
    pub jobs: Vec<ScrapeJob>,
    /// Scrape configs as Prometheus takes them (e.g. with `kubernetes_sd_configs`), after `jobs`.
    pub scrape_configs: Vec<Value>,
    /// Rule files' contents (each written to its own file).
    pub rule_files: Vec<String>,
    /// Base URL of an Alertmanager to send alerts to.
    pub alertmanager: Option<String>,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        PrometheusOptions {
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_secs(1),
            jobs: Vec::new(),
            scrape_configs: Vec::new(),
            rule_files: Vec::new(),
            alertmanager: None,
        }
    }
}

/// An alert as reported by `/api/v1/alerts`.
#[derive(Clone, Debug, Deserialize)]
pub struct ActiveAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    pub value: String,
}

impl ActiveAlert {
    /// The `alertname` label.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    process: ManagedProcess,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn seconds(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        context: context.to_owned(),
        source,
    }
}

/// The prometheus.yml for `options`, with rule files at `rule_paths`.
pub fn config_yaml(options: &PrometheusOptions, rule_paths: &[PathBuf]) -> String {
    let jobs: Vec<Value> = options
        .jobs
        .iter()
        .map(|job| {
            json!({
                "job_name": job.job_name,
                "static_configs": job.targets.iter().map(|(target, labels)| json!({
                    "targets": [target],
                    "labels": labels,
                })).collect::<Vec<_>>(),
            })
        })
        .chain(options.scrape_configs.iter().cloned())
        .collect();
    let mut config = json!({
        "global": {
            "scrape_interval": seconds(options.scrape_interval),
            "scrape_timeout": seconds(options.scrape_interval),
            "evaluation_interval": seconds(options.evaluation_interval),
        },
        "rule_files": rule_paths,
        "scrape_configs": jobs,
    });
    if let Some(url) = &options.alertmanager {
        let target = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        config["alerting"] = json!({
            "alertmanagers": [{ "static_configs": [{ "targets": [target] }] }]
        });
    }
    serde_yaml_ng::to_string(&config).expect("prometheus config renders")
}

impl PrometheusServer {
    /// Starts Prometheus and waits until it answers `/-/ready`.
    pub async fn start(options: PrometheusOptions) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .map_err(io("create prometheus dir"))?;
        let mut rule_paths = Vec::new();
        for (i, rules) in options.rule_files.iter().enumerate() {
            let path = dir.path().join(format!("rules-{i}.yml"));
            std::fs::write(&path, rules).map_err(io("write rule file"))?;
            rule_paths.push(path);
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config_yaml(&options, &rule_paths))
            .map_err(io("write prometheus.yml"))?;
        let port = crate::free_port();
        let mut command = std::process::Command::new(crate::tools::prometheus());
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .arg("--log.level=warn");
        let process =
            ManagedProcess::spawn("prometheus", command, &dir.path().join("prometheus.log"))?;
        let mut server = PrometheusServer {
            process,
            port,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        server.wait_ready(Duration::from_secs(30)).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self
                .http
                .get(format!("{}/-/ready", self.url()))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("status {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            self.process.ensure_running()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::NotReady {
            what: "prometheus".into(),
            waited: timeout,
            last_error: last,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.url()))
            .query(query)
            .send()
            .await
            .map_err(|e| Error::Other(format!("GET {path}: {e}")))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| Error::Other(format!("GET {path}: bad JSON: {e}")))?;
        if body["status"] != "success" {
            return Err(Error::Other(format!(
                "GET {path} {query:?}: {} {}",
                body["errorType"], body["error"]
            )));
        }
        Ok(body["data"].clone())
    }

    /// Evaluates an instant query; the `result` array (an error if Prometheus refuses it).
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, Error> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The pending and firing alerts.
    pub async fn alerts(&self) -> Result<Vec<ActiveAlert>, Error> {
        let data = self.api("/api/v1/alerts", &[]).await?;
        serde_json::from_value(data["alerts"].clone())
            .map_err(|e| Error::Other(format!("alerts: {e}")))
    }

    /// The scrape targets' health by `job`/`instance` (`up`, `down`, `unknown`).
    pub async fn targets(&self) -> Result<Vec<Value>, Error> {
        let data = self.api("/api/v1/targets", &[]).await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `predicate` holds for the current alerts; returns them.
    pub async fn wait_for_alerts(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&[ActiveAlert]) -> bool,
    ) -> Result<Vec<ActiveAlert>, Error> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < timeout {
            last = self.alerts().await?;
            if predicate(&last) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady {
            what: what.to_owned(),
            waited: timeout,
            last_error: format!("alerts were {last:#?}"),
        })
    }

    /// Waits until a query returns at least one sample for which `predicate` holds.
    pub async fn wait_for_query(
        &self,
        promql: &str,
        timeout: Duration,
        predicate: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Error> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < timeout {
            last = self.query(promql).await?;
            if predicate(&last) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady {
            what: format!("query {promql}"),
            waited: timeout,
            last_error: format!("last result {last:?}"),
        })
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

/// `true` when some alert named `name` is in `state` (`firing`/`pending`).
pub fn has_alert(alerts: &[ActiveAlert], name: &str, state: &str) -> bool {
    alerts.iter().any(|a| a.name() == name && a.state == state)
}
