//! `redis+sentinel://` (and `rediss+sentinel://`): a primary with replicas watched by Redis
//! Sentinel. The URL names the sentinels and the primary's Sentinel name:
//!
//! `redis+sentinel://[user:password@]host:port[,host:port…]/<master-name>[/<db>]`
//!
//! The user and password are the **data nodes'** (like any `redis://` URL; `--redis-password`
//! fills in a missing one). The sentinels' own password is a separate setting
//! (`--redis-sentinel-password`), since Sentinel and the data nodes usually have different
//! ones and a URL has room for one. A host without a port means Sentinel's 26379. With
//! `rediss+sentinel://` both the sentinels and the data nodes speak TLS (trusting
//! `--redis-ca-file` when set).
//!
//! Every connection attempt of the broker (and of the server API's control channel) resolves
//! the primary anew ([`SentinelTarget::primary`]), through redis-rs's Sentinel client: it asks
//! the sentinels in the order given for their masters, skips a primary they flag as down, and
//! connects to the one named to check that `ROLE` says `master`, as Sentinel's client
//! guidelines ask. So after a failover the broker's usual reconnect (see
//! [`super::redis`]) lands on the new primary by itself; the broker's health probe asks `ROLE`
//! too, so a primary demoted without dropping its connections is left within a probe interval.

use std::sync::Arc;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, TlsCertificates, TlsMode};
use tokio::sync::Mutex;

use super::link::CONNECT_TIMEOUT;
use super::target::{TargetError, redact};

/// Sentinel's default port.
const SENTINEL_PORT: u16 = 26379;

/// Whether `url` is a Sentinel URL (`redis+sentinel://` or `rediss+sentinel://`).
pub fn is_sentinel_url(url: &str) -> bool {
    url.trim()
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.ends_with("+sentinel"))
}

/// A parsed Sentinel URL, before any client is built.
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl {
    tls: bool,
    /// The sentinels, `host:port` each.
    sentinels: Vec<(String, u16)>,
    master: String,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

fn parse(url: &str) -> Result<SentinelUrl, &'static str> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or("missing scheme")?;
    let base = match scheme {
        "redis+sentinel" => "redis",
        "rediss+sentinel" => "rediss",
        _ => return Err("use redis+sentinel:// or rediss+sentinel://"),
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("a sentinel url names the primary: redis+sentinel://host:port/<master-name>")?;
    if path.contains('?') || hosts.contains('?') {
        return Err("a sentinel url takes no query parameters");
    }
    let (master, db) = match path.split_once('/') {
        Some((master, db)) => (master, db),
        None => (path, ""),
    };
    if master.is_empty() {
        return Err("a sentinel url names the primary: redis+sentinel://host:port/<master-name>");
    }
    let db = match db {
        "" => 0,
        db => db
            .parse::<i64>()
            .map_err(|_| "the database after the master name must be a number")?,
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        // No port (a name, an IPv4 address or a bracketed IPv6 one): Sentinel's default.
        let has_port = match host.rfind(']') {
            Some(close) => host[close..].contains(':'),
            None => host.contains(':'),
        };
        let host = match has_port {
            true => host.to_owned(),
            false => format!("{host}:{SENTINEL_PORT}"),
        };
        let info = format!("{base}://{host}/")
            .into_connection_info()
            .map_err(|_| "a sentinel address is not host:port")?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                (host.clone(), *port)
            }
            _ => return Err("a sentinel address is not host:port"),
        };
        sentinels.push((host, port));
    }
    if sentinels.is_empty() {
        return Err("a sentinel url needs at least one sentinel host:port");
    }
    // The credentials, percent-decoded as in any redis:// URL.
    let (username, password) = match userinfo {
        Some(userinfo) => {
            let info = format!("redis://{userinfo}@127.0.0.1/")
                .into_connection_info()
                .map_err(|_| "the user and password of a sentinel url are malformed")?;
            let settings = info.redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        }
        None => (None, None),
    };
    Ok(SentinelUrl {
        tls: base == "rediss",
        sentinels,
        master: master.to_owned(),
        username,
        password,
        db,
    })
}

/// How to reach the current primary: the sentinels and the primary's name. Cheap to clone
/// (clones share the client and its connections to the sentinels).
#[derive(Clone)]
pub struct SentinelTarget {
    client: Arc<Mutex<SentinelClient>>,
    master: String,
    sentinels: usize,
}

impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("master", &self.master)
            .field("sentinels", &self.sentinels)
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    /// Parses `url`; `password` is the data nodes' password where the URL carries none,
    /// `sentinel_password` the sentinels', `ca` the only CA trusted with TLS (when given).
    pub fn new(
        url: &str,
        password: Option<&str>,
        sentinel_password: Option<&str>,
        ca: Option<Vec<u8>>,
    ) -> Result<SentinelTarget, TargetError> {
        let form = |reason| TargetError::Form {
            url: redact(url),
            reason,
        };
        let parsed = parse(url).map_err(form)?;
        if ca.is_some() && !parsed.tls {
            return Err(TargetError::CaWithoutTls { url: redact(url) });
        }
        let addrs = parsed
            .sentinels
            .iter()
            .map(|(host, port)| match parsed.tls {
                true => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                },
                false => ConnectionAddr::Tcp(host.clone(), *port),
            });
        let mut builder =
            SentinelClientBuilder::new(addrs, &parsed.master, SentinelServerType::Master)
                .map_err(TargetError::Client)?
                .set_client_to_redis_db(parsed.db);
        if let Some(username) = &parsed.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = parsed.password.as_deref().or(password) {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if parsed.tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(pem) = ca {
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                builder = builder
                    .set_client_to_redis_certificates(certificates.clone())
                    .set_client_to_sentinel_certificates(certificates);
            }
        }
        let client = builder.build().map_err(TargetError::Client)?;
        Ok(SentinelTarget {
            client: Arc::new(Mutex::new(client)),
            master: parsed.master,
            sentinels: parsed.sentinels.len(),
        })
    }

    /// A client for the current primary: asked of the sentinels in turn, its `ROLE` checked.
    /// Fails when no sentinel names a primary that is up and says it is one (e.g. during a
    /// failover), or after a few connect timeouts.
    pub async fn primary(&self) -> Result<redis::Client, RedisError> {
        let resolve = async { self.client.lock().await.async_get_client().await };
        tokio::time::timeout(CONNECT_TIMEOUT * 2, resolve)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no sentinel named a primary in time",
                )))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let u = parse("redis+sentinel://:pw@a:26380,b,10.0.0.3:1/mymaster").unwrap();
        assert_eq!(
            u,
            SentinelUrl {
                tls: false,
                sentinels: vec![
                    ("a".into(), 26380),
                    ("b".into(), SENTINEL_PORT),
                    ("10.0.0.3".into(), 1)
                ],
                master: "mymaster".into(),
                username: None,
                password: Some("pw".into()),
                db: 0,
            }
        );
        let u = parse("rediss+sentinel://app:p%40ss@s1:26379/main/3").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!((u.master.as_str(), u.db), ("main", 3));
        assert!(is_sentinel_url("redis+sentinel://a/m"));
        assert!(!is_sentinel_url("redis://a:1/"));
        for bad in [
            "http+sentinel://a:1/m",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel:///m",
            "redis+sentinel://a:notaport/m",
            "redis+sentinel://a:1/m/x",
            "redis+sentinel://a:1/m?protocol=resp3",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn passwords_and_tls_settings() {
        let t = SentinelTarget::new("redis+sentinel://a:1,b:2/m", Some("data"), Some("s"), None)
            .unwrap();
        assert_eq!((t.master.as_str(), t.sentinels), ("m", 2));
        let err = SentinelTarget::new("redis+sentinel://a:1/m", None, None, Some(b"x".to_vec()))
            .unwrap_err();
        assert!(matches!(err, TargetError::CaWithoutTls { .. }), "{err}");
        let err = SentinelTarget::new("redis+sentinel://:pw@a:1", None, None, None).unwrap_err();
        assert!(err.to_string().contains("master-name"), "{err}");
        assert!(!err.to_string().contains("pw"), "password redacted: {err}");
    }
}
