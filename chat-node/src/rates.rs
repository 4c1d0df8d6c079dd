//! The publish rate limit: one budget per identity, shared by every way of publishing.
//!
//! A client that is limited on one WebSocket must not get a fresh budget by opening another
//! connection or by switching to `POST /api/publish` (the review published 50 of 50 that way at
//! a limit of 5/s). So the budget belongs to who publishes, not to the connection:
//!
//! - a token's `sub`: every connection and request of that user, on every transport;
//! - without a subject (auth off, or a token without `sub`): the client's address, IPv6 by its
//!   /64 (one customer's network; a host gets a whole /64 to pick addresses from).
//!
//! The client's address is the TCP peer, or, behind a proxy that says who its client was, the
//! last address in `--client-address-header` (the entry that proxy added; earlier ones were
//! written by the client and prove nothing). Without that flag, every anonymous client behind
//! the same proxy shares the proxy's budget.
//!
//! The budgets are governor's keyed GCRA limiter: one 8-byte state per identity in a sharded
//! map, bursts of up to `rate` publishes, then `rate` per second. The node forgets identities
//! whose budget is full again ([`PublishRates::forget_idle`], run periodically), so the map
//! holds only identities that published within about the last second, not every one ever seen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::Identity;

/// Whose budget a publish is taken from.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum RateKey {
    /// A token's subject.
    User(Arc<str>),
    /// An anonymous client's address (IPv6: its /64).
    Address(IpAddr),
}

impl RateKey {
    /// The key of `identity` connecting from `address`.
    pub fn of(identity: &Identity, address: IpAddr) -> RateKey {
        match &identity.subject {
            Some(subject) => RateKey::User(Arc::from(subject.as_str())),
            None => RateKey::Address(network_of(address)),
        }
    }
}

/// IPv4 addresses as they are (IPv4-mapped IPv6 too); IPv6 cut to its /64.
fn network_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's address: the last address in `header` when one is configured and present
/// (`X-Forwarded-For: a, b` → `b`, the one the proxy in front appended; `X-Real-IP: a` → `a`),
/// else the TCP peer.
pub fn client_address(header: Option<&HeaderName>, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    header
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(parse_address)
        .unwrap_or(peer)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:80`.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse().ok())
}

/// An address for requests whose peer is unknown (never the case on a real listener).
pub const UNKNOWN_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The node's publish budgets (`--max-publish-rate` per identity; 0 = unlimited).
pub struct PublishRates {
    limiter: Option<DefaultKeyedRateLimiter<RateKey>>,
}

impl PublishRates {
    pub fn new(per_second: u32) -> Self {
        PublishRates {
            limiter: NonZeroU32::new(per_second)
                .map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate))),
        }
    }

    /// Takes one publish from `key`'s budget; false when it is spent.
    pub fn allow(&self, key: &RateKey) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(key).is_ok())
    }

    /// Forgets identities whose budget is full again (they look like new ones) and gives the
    /// memory back.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many identities are tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn anonymous() -> Identity {
        Identity::anonymous()
    }

    #[test]
    fn keys_by_subject_else_by_network() {
        let mut user = anonymous();
        user.subject = Some("u-1".into());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(RateKey::of(&user, a), RateKey::of(&user, b));
        assert_ne!(RateKey::of(&anonymous(), a), RateKey::of(&anonymous(), b));
        let v6a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let v6c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(
            RateKey::of(&anonymous(), v6a),
            RateKey::of(&anonymous(), v6b)
        );
        assert_ne!(
            RateKey::of(&anonymous(), v6a),
            RateKey::of(&anonymous(), v6c)
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            RateKey::of(&anonymous(), mapped),
            RateKey::of(&anonymous(), a)
        );
    }

    #[test]
    fn client_address_from_the_last_proxy_entry() {
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let xff = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        h.insert(&xff, HeaderValue::from_static("6.6.6.6, 203.0.113.7"));
        assert_eq!(
            client_address(Some(&xff), &h, peer),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(None, &h, peer),
            peer,
            "header ignored unless configured"
        );
        h.insert(&xff, HeaderValue::from_static("[2001:db8::1]:443"));
        assert_eq!(
            client_address(Some(&xff), &h, peer),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        h.insert(&xff, HeaderValue::from_static("garbage"));
        assert_eq!(client_address(Some(&xff), &h, peer), peer);
        assert_eq!(client_address(Some(&xff), &HeaderMap::new(), peer), peer);
    }

    #[test]
    fn budgets_are_per_key_and_idle_keys_are_forgotten() {
        let rates = PublishRates::new(1000);
        let a = RateKey::User("a".into());
        let b = RateKey::User("b".into());
        let allowed = (0..1500).filter(|_| rates.allow(&a)).count();
        // A burst of 1000, plus what refilled while the loop ran.
        assert!((1000..1100).contains(&allowed), "{allowed}");
        assert!(rates.allow(&b), "another identity has its own budget");
        for i in 0..200 {
            rates.allow(&RateKey::Address(IpAddr::V4(Ipv4Addr::from(i as u32))));
        }
        assert_eq!(rates.tracked(), 202);
        // 1000/s refills a full burst of 1000 in one second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        rates.forget_idle();
        assert_eq!(rates.tracked(), 0);
        let off = PublishRates::new(0);
        assert!((0..10_000).all(|_| off.allow(&a)));
        assert_eq!(off.tracked(), 0);
    }
}
