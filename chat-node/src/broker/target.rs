//! Where the Redis broker connects, parsed once from `--redis-url`:
//!
//! - one server: `redis://[user:pass@]host:port[/db]`, or `rediss://…` for TLS;
//! - a Redis Cluster: `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss+cluster://`
//!   for TLS), or a comma-separated list of URLs (`redis://a:7000,redis://b:7000`). The hosts are
//!   seeds: the client learns the rest of the topology from them;
//! - a primary followed through Redis Sentinel:
//!   `redis+sentinel://[user:pass@]host:port[,host:port…]/<master-name>[/<db>]`
//!   (`rediss+sentinel://` for TLS), see [`super::sentinel`].
//!
//! TLS trusts the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured), or only the CA
//! of `--redis-ca-file` when it is set (a private CA, e.g. cert-manager's). A missing or
//! unreadable CA file is a start-up error; a server certificate the CA does not vouch for is a
//! connection error: the node stays up, not ready, and logs why while it retries. The CA file
//! is read again before each connection attempt ([`ReloadingTarget`]), so a rotated CA is
//! picked up on the next reconnect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, PushInfo, RedisError, TlsCertificates,
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use super::link::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use super::sentinel::{self, SentinelTarget};

/// A parsed `--redis-url`.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(ClusterSeeds),
    /// The primary named by the sentinels, resolved anew on every connection attempt.
    Sentinel(SentinelTarget),
}

/// Everything needed to build a fresh cluster client (one per connection attempt, so each has
/// its own push channel).
#[derive(Clone, Debug)]
pub struct ClusterSeeds {
    seeds: Vec<ConnectionInfo>,
    password: Option<String>,
    certificates: Option<TlsCertificates>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("bad redis url {url:?}")]
    Url {
        url: String,
        #[source]
        source: RedisError,
    },
    #[error("bad redis url {url:?}: {reason}")]
    Form { url: String, reason: &'static str },
    #[error("failed to read the redis CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the redis CA file {path} holds no PEM certificate")]
    CaPem { path: PathBuf },
    #[error("--redis-ca-file is set but the redis url {url:?} does not use TLS (rediss://)")]
    CaWithoutTls { url: String },
    #[error("failed to set up the redis client")]
    Client(#[source] RedisError),
}

/// How the URL names its servers, before any connection setting is applied.
#[derive(Debug, PartialEq, Eq)]
enum UrlForm {
    Single(String),
    Cluster(Vec<String>),
}

fn url_form(url: &str) -> Result<UrlForm, &'static str> {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some(base) = scheme.strip_suffix("+cluster")
    {
        if base != "redis" && base != "rediss" {
            return Err("use redis+cluster:// or rediss+cluster://");
        }
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
            None => (String::new(), rest),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (hosts, suffix) = rest.split_at(split);
        let seeds: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| format!("{base}://{userinfo}{host}{suffix}"))
            .collect();
        if seeds.is_empty() {
            return Err("a cluster url needs at least one host:port");
        }
        return Ok(UrlForm::Cluster(seeds));
    }
    if url.contains(',') {
        let seeds: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if seeds.iter().any(|s| !s.contains("://")) {
            return Err("every entry of a url list needs its scheme (redis:// or rediss://)");
        }
        return Ok(UrlForm::Cluster(seeds));
    }
    Ok(UrlForm::Single(url.to_owned()))
}

fn parse_info(url: &str) -> Result<ConnectionInfo, TargetError> {
    url.into_connection_info()
        .map_err(|source| TargetError::Url {
            url: redact(url),
            source,
        })
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

fn read_ca(path: &Path) -> Result<Vec<u8>, TargetError> {
    let pem = std::fs::read(path).map_err(|source| TargetError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(TargetError::CaPem {
            path: path.to_owned(),
        });
    }
    Ok(pem)
}

impl RedisTarget {
    /// Parses `url`, inserts `password` where the URL has none, and trusts only `ca` (a PEM
    /// CA, read by [`ReloadingTarget`]) when it is given.
    fn with_ca(
        url: &str,
        password: Option<&str>,
        sentinel_password: Option<&str>,
        ca: Option<Vec<u8>>,
    ) -> Result<RedisTarget, TargetError> {
        if sentinel::is_sentinel_url(url) {
            return SentinelTarget::new(url, password, sentinel_password, ca)
                .map(RedisTarget::Sentinel);
        }
        let form = url_form(url).map_err(|reason| TargetError::Form {
            url: redact(url),
            reason,
        })?;
        let infos: Vec<ConnectionInfo> = match &form {
            UrlForm::Single(url) => vec![parse_info(url)?],
            UrlForm::Cluster(seeds) => seeds
                .iter()
                .map(|s| parse_info(s))
                .collect::<Result<_, _>>()?,
        };
        if ca.is_some() && !infos.iter().all(is_tls) {
            return Err(TargetError::CaWithoutTls { url: redact(url) });
        }
        let certificates = ca.map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        });
        match form {
            UrlForm::Single(_) => {
                let mut info = infos.into_iter().next().expect("one url");
                if let Some(password) = password
                    && info.redis_settings().password().is_none()
                {
                    let settings = info.redis_settings().clone().set_password(password);
                    info = info.set_redis_settings(settings);
                }
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                };
                Ok(RedisTarget::Single(client.map_err(TargetError::Client)?))
            }
            UrlForm::Cluster(_) => {
                let seeds = ClusterSeeds {
                    password: password
                        .filter(|_| infos[0].redis_settings().password().is_none())
                        .map(str::to_owned),
                    seeds: infos,
                    certificates,
                };
                // Fail now on settings the cluster client refuses (mixed passwords or TLS).
                let (probe, _) = tokio::sync::mpsc::unbounded_channel();
                seeds.client(probe).map_err(TargetError::Client)?;
                Ok(RedisTarget::Cluster(seeds))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, RedisTarget::Sentinel(_))
    }
}

/// A [`RedisTarget`] whose CA file is read again before each connection attempt, so a rotated
/// CA (cert-manager renewing the Secret mounted at `--redis-ca-file`) is used from the next
/// reconnect on, without a restart. A CA file that turns unreadable or invalid keeps the last
/// good one in use, with the reason logged once.
#[derive(Debug)]
pub struct ReloadingTarget {
    url: String,
    password: Option<String>,
    sentinel_password: Option<String>,
    ca_file: Option<PathBuf>,
    ca: Option<Vec<u8>>,
    target: RedisTarget,
    last_problem: Option<String>,
}

impl ReloadingTarget {
    /// Parses `url`, inserts `password` where the URL has none (the data nodes'; the
    /// sentinels' is `sentinel_password`), and loads the CA file: every error is reported
    /// here, at start.
    pub fn new(
        url: &str,
        password: Option<&str>,
        sentinel_password: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<ReloadingTarget, TargetError> {
        let ca = ca_file.map(read_ca).transpose()?;
        let target = RedisTarget::with_ca(url, password, sentinel_password, ca.clone())?;
        Ok(ReloadingTarget {
            url: url.to_owned(),
            password: password.map(str::to_owned),
            sentinel_password: sentinel_password.map(str::to_owned),
            ca_file: ca_file.map(Path::to_path_buf),
            ca,
            target,
            last_problem: None,
        })
    }

    pub fn is_cluster(&self) -> bool {
        self.target.is_cluster()
    }

    pub fn is_sentinel(&self) -> bool {
        self.target.is_sentinel()
    }

    /// The target to connect with now, rebuilt first if the CA file changed.
    pub fn current(&mut self) -> &RedisTarget {
        if let Some(path) = &self.ca_file {
            let reloaded = read_ca(path).and_then(|pem| {
                if self.ca.as_ref() == Some(&pem) {
                    return Ok(None);
                }
                let target = RedisTarget::with_ca(
                    &self.url,
                    self.password.as_deref(),
                    self.sentinel_password.as_deref(),
                    Some(pem.clone()),
                )?;
                Ok(Some((pem, target)))
            });
            match reloaded {
                Ok(None) => self.last_problem = None,
                Ok(Some((pem, target))) => {
                    info!(details.path = %path.display(), "redis CA file changed: using the new CA");
                    self.ca = Some(pem);
                    self.target = target;
                    self.last_problem = None;
                }
                Err(e) => {
                    let problem = e.to_string();
                    if self.last_problem.as_ref() != Some(&problem) {
                        warn!(details.reason = %problem, "redis CA file not reloaded: keeping the CA loaded before");
                    }
                    self.last_problem = Some(problem);
                }
            }
        }
        &self.target
    }
}

impl ClusterSeeds {
    /// A cluster client speaking RESP3 whose Pub/Sub pushes go to `pushes`. Requests fail fast
    /// (few, short retries) so a publish during an outage is answered `unavailable` promptly.
    pub fn client(&self, pushes: UnboundedSender<PushInfo>) -> Result<ClusterClient, RedisError> {
        self.builder(RESPONSE_TIMEOUT).push_sender(pushes).build()
    }

    /// A client for publishes followed by `WAIT` (up to `wait`): connections of their own,
    /// whose response timeout is longer by `wait`, and no live feed.
    pub fn publish_client(&self, wait: Duration) -> Result<ClusterClient, RedisError> {
        self.builder(RESPONSE_TIMEOUT + wait).build()
    }

    /// A client for one node of the cluster at `host:port`, with the seeds' TLS settings,
    /// credentials and CA: the shard probe's own connection to each primary.
    pub fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, RedisError> {
        let seed = &self.seeds[0];
        let addr = match seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let mut info = seed.clone().set_addr(addr);
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match &self.certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
    }

    /// The seeds' `host:port`s.
    pub fn addresses(&self) -> Vec<(String, u16)> {
        self.seeds
            .iter()
            .filter_map(|seed| match seed.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    Some((host.clone(), *port))
                }
                _ => None,
            })
            .collect()
    }

    fn builder(&self, response_timeout: Duration) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.seeds.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .overall_response_timeout(Some(response_timeout * 2))
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if let Some(certificates) = &self.certificates {
            builder = builder.certs(certificates.clone());
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        assert_eq!(
            url_form("redis://127.0.0.1:6379/"),
            Ok(UrlForm::Single("redis://127.0.0.1:6379/".into()))
        );
        assert_eq!(
            url_form("redis+cluster://:pw@a:7000,b:7001/"),
            Ok(UrlForm::Cluster(vec![
                "redis://:pw@a:7000/".into(),
                "redis://:pw@b:7001/".into()
            ]))
        );
        assert_eq!(
            url_form("rediss+cluster://a:7000"),
            Ok(UrlForm::Cluster(vec!["rediss://a:7000".into()]))
        );
        assert_eq!(
            url_form("redis://a:1, redis://b:2"),
            Ok(UrlForm::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        assert!(url_form("http+cluster://a:1").is_err());
        assert!(url_form("redis+cluster://").is_err());
        assert!(url_form("redis://a:1,b:2").is_err());
    }

    #[test]
    fn targets_and_passwords() {
        let t = RedisTarget::with_ca("redis://127.0.0.1:1234", Some("s3cret"), None, None).unwrap();
        let RedisTarget::Single(client) = t else {
            panic!("single")
        };
        assert_eq!(
            client.get_connection_info().redis_settings().password(),
            Some("s3cret")
        );
        let t = RedisTarget::with_ca("redis://:own@127.0.0.1:1234", Some("x"), None, None).unwrap();
        let RedisTarget::Single(client) = t else {
            panic!("single")
        };
        assert_eq!(
            client.get_connection_info().redis_settings().password(),
            Some("own")
        );
        let t = RedisTarget::with_ca(
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            Some("pw"),
            None,
            None,
        )
        .unwrap();
        let RedisTarget::Cluster(seeds) = t else {
            panic!("cluster")
        };
        assert_eq!(seeds.seeds.len(), 2);
        assert_eq!(seeds.password.as_deref(), Some("pw"));
        assert!(RedisTarget::with_ca("redis://a:1,rediss://b:2", None, None, None).is_err());
    }

    #[test]
    fn ca_file_errors_are_clear() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err =
            ReloadingTarget::new("rediss://127.0.0.1:1", None, None, Some(missing)).unwrap_err();
        assert!(matches!(err, TargetError::CaFile { .. }), "{err}");
        let dir = std::env::temp_dir().join(format!("chat-node-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = ReloadingTarget::new("rediss://127.0.0.1:1", None, None, Some(&dir)).unwrap_err();
        assert!(matches!(err, TargetError::CaPem { .. }), "{err}");
        let err = ReloadingTarget::new("redis://127.0.0.1:1", None, None, Some(&dir)).unwrap_err();
        assert!(matches!(err, TargetError::CaPem { .. }), "{err}");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(redact("redis://:pw@h:1/"), "redis://***@h:1/");
    }
}
