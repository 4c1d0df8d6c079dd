//! Which browser pages may use the client port: the `Origin` check of `/ws`, `/sse` and
//! `POST /api/publish`.
//!
//! A browser sends `Origin` on every WebSocket handshake and on every cross-site request that
//! can change something (a POST, even a "simple" `text/plain` one that needs no CORS
//! preflight). Without this check another site's page could publish or subscribe with the
//! visitor's cookies and network position. Requests without `Origin` come from programs, not
//! browsers, and pass: they carry no one else's ambient authority.
//!
//! Allowed: the node's own origin (the `Origin`'s host equals the request's `Host`, so the demo
//! page and any page served from the same host and port work without configuration), every
//! origin in `--allowed-origins`, or any origin when that list holds `*`. The literal origin
//! `null` (sandboxed frames, `file:` pages) is only allowed by `*`.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

/// The configured allow-list, checked against each request.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
}

impl OriginPolicy {
    /// A policy from `--allowed-origins` (empty = the node's own origin only).
    pub fn new(allowed: &[String]) -> Self {
        OriginPolicy {
            any: allowed.iter().any(|o| o.trim() == "*"),
            allowed: allowed
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty() && o != "*")
                .collect(),
        }
    }

    /// Whether `*` lets every origin in (worth a warning at start).
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether the request may go on: no `Origin` (not a browser), the node's own origin, a
    /// listed one, or anything with `*`.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(ORIGIN) else {
            return true;
        };
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim().trim_end_matches('/');
        same_origin(origin, headers) || self.allowed.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// `Origin` is `scheme://host[:port]`; the request is same-origin when that authority is the
/// `Host` it was sent to (the scheme is not compared: TLS usually ends at the Ingress).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| !host.is_empty() && host.trim().eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn default_allows_programs_and_the_same_origin_only() {
        let p = OriginPolicy::new(&[]);
        assert!(p.allows(&headers(None, "chat.example.com")));
        assert!(p.allows(&headers(
            Some("https://chat.example.com"),
            "chat.example.com"
        )));
        assert!(p.allows(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")));
        assert!(!p.allows(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080")));
        assert!(!p.allows(&headers(Some("https://evil.example"), "chat.example.com")));
        assert!(!p.allows(&headers(Some("null"), "chat.example.com")));
        assert!(!p.allows(&headers(
            Some("https://chat.example.com.evil.example"),
            "chat.example.com"
        )));
    }

    #[test]
    fn lists_and_wildcard() {
        let p = OriginPolicy::new(&["https://App.example/".into(), " https://b.example".into()]);
        assert!(p.allows(&headers(Some("https://app.example"), "chat.example.com")));
        assert!(p.allows(&headers(Some("https://b.example"), "chat.example.com")));
        assert!(!p.allows(&headers(Some("http://app.example"), "chat.example.com")));
        assert!(!p.allows_any());
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows_any());
        assert!(any.allows(&headers(Some("null"), "x")));
    }
}
