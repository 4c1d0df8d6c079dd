//! JWT auth for the handshake, SSE and HTTP publish.
//!
//! Tokens travel as `Authorization: Bearer <jwt>`, `?token=<jwt>` (browsers cannot set headers
//! on a WebSocket) or `Sec-WebSocket-Protocol: bearer.<jwt>`. `exp` is required; the optional
//! `channels` claim limits what the user may subscribe and publish to, and the `subscribe` and
//! `publish` claims each replace it for their own action (a channel in `subscribe` only is
//! read-only). A personal channel (`user:#<sub>`) is its user's alone to subscribe to. `nbf` is honoured when
//! present; `iss` and `aud` are checked against `--jwt-issuer` / `--jwt-audience` when those are
//! set (and then required). HS256 secrets shorter than [`MIN_SECRET_BYTES`] are refused at start:
//! a short shared secret can be brute-forced offline from any one token.

use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::channel::{ChannelPatterns, personal_user};

/// The shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518, 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// What a token must say besides a valid signature and `exp`.
#[derive(Clone, Debug, Default)]
pub struct TokenRules {
    /// Accepted `iss` values; empty = `iss` not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any one of them); empty = `aud` not checked.
    pub audiences: Vec<String>,
}

/// Prefix of the WebSocket subprotocol that carries a token.
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";

/// The auth key could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("failed to read JWT key file {path}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JWT public key {path} is neither an RSA nor an EC PEM key")]
    BadPublicKey { path: PathBuf },
    #[error("JWT secret is empty")]
    EmptySecret,
    #[error(
        "JWT secret is {0} bytes; HS256 needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret(usize),
}

/// Why a request was refused (always HTTP 401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Who is on the other end, from a verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: Option<String>,
    /// Channels it may subscribe to (and read the history and presence of): the token's
    /// `subscribe` claim, else its `channels` claim, else all.
    pub subscribe: ChannelPatterns,
    /// Channels it may publish to: the token's `publish` claim, else `channels`, else all.
    pub publish: ChannelPatterns,
    /// Unix seconds at which the token expires (the session is closed with 1008 then).
    pub expires_at: Option<u64>,
    /// The token's `info` claim (connection info shown in presence and join/leave), as JSON.
    pub info: Option<Box<str>>,
    /// The token's `jti`, by which the server API may revoke it.
    pub token_id: Option<String>,
    /// The token's `iat` (Unix seconds): a revocation of its user covers tokens issued before it.
    pub issued_at: Option<u64>,
}

/// When a session whose token expires at `expires_at` (Unix seconds) must end: `None` without
/// `exp`, or when `exp` lies beyond what the clock can represent (a signed `exp` near
/// `u64::MAX` means "never", not an overflow that takes the session down).
pub fn expiry(expires_at: Option<u64>) -> Option<tokio::time::Instant> {
    let exp = expires_at?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tokio::time::Instant::now().checked_add(std::time::Duration::from_secs(exp.saturating_sub(now)))
}

/// Whether a client with the `subscribe` patterns and user `subject` may subscribe to
/// `channel`: a personal channel (`user:#alice`) is its user's alone, whatever the patterns
/// say (the `#` is the grant); any other channel must match the patterns.
pub fn may_subscribe(subscribe: &ChannelPatterns, subject: Option<&str>, channel: &str) -> bool {
    match personal_user(channel) {
        Some(user) => !user.is_empty() && subject == Some(user),
        None => subscribe.allows(channel),
    }
}

impl Identity {
    /// When a session of this identity must end because its token expires (see [`expiry`]).
    pub fn expiry(&self) -> Option<tokio::time::Instant> {
        expiry(self.expires_at)
    }

    /// Whether it may subscribe to `channel` (and read its history and presence). A personal
    /// channel (`user:#alice`) is its user's alone, whatever the patterns say: the `#` is the
    /// grant; any other channel must match the subscribe patterns.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        may_subscribe(&self.subscribe, self.subject.as_deref(), channel)
    }

    /// Whether it may publish to `channel` (the publish patterns; a personal channel is no
    /// exception: its namespace's `clientPublish` decides whether clients publish there).
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.allows(channel)
    }

    /// Auth is off: anyone, every channel.
    pub fn anonymous() -> Self {
        Identity {
            subject: None,
            subscribe: ChannelPatterns::all(),
            publish: ChannelPatterns::all(),
            expires_at: None,
            info: None,
            token_id: None,
            issued_at: None,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    channels: Option<Vec<String>>,
    /// Patterns for subscribing only; replaces `channels` for subscribing.
    subscribe: Option<Vec<String>>,
    /// Patterns for publishing only; replaces `channels` for publishing.
    publish: Option<Vec<String>>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    jti: Option<String>,
    iat: Option<u64>,
    /// Only in subscription tokens: the one channel it grants.
    channel: Option<String>,
}

/// Why a subscription token was refused (the `forbidden` error's message).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionTokenError {
    #[error("subscription token expired")]
    Expired,
    #[error("subscription token invalid: {0}")]
    Invalid(String),
    #[error("subscription token is for another channel")]
    OtherChannel,
    #[error("subscription token is for another user (its `sub` must be the connection's user)")]
    OtherUser,
    #[error("subscription tokens need auth (this node has no JWT key)")]
    AuthOff,
}

/// Largest `info` claim accepted (as compact JSON): it is copied into every presence answer
/// and `join`/`leave` frame of each channel the connection subscribes to.
pub const MAX_INFO_BYTES: usize = 1024;

/// Verifies tokens with the configured key.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// Builds the authenticator from the configured key, or `None` when auth is off.
    pub fn from_settings(
        secret: Option<&str>,
        secret_file: Option<&Path>,
        public_key_file: Option<&Path>,
        rules: &TokenRules,
    ) -> Result<Option<Self>, AuthSetupError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| AuthSetupError::ReadKey {
                path: path.to_owned(),
                source,
            })
        };
        if let Some(path) = public_key_file {
            let pem = read(path)?;
            let (key, alg) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, Algorithm::ES256)
            } else {
                return Err(AuthSetupError::BadPublicKey {
                    path: path.to_owned(),
                });
            };
            return Ok(Some(Self::new(key, alg, rules)));
        }
        let secret = match (secret_file, secret) {
            (Some(path), _) => {
                let mut bytes = read(path)?;
                // Secrets mounted from files often end with a newline that is not part of the key.
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                bytes
            }
            (None, Some(secret)) => secret.as_bytes().to_vec(),
            (None, None) => return Ok(None),
        };
        if secret.is_empty() {
            return Err(AuthSetupError::EmptySecret);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthSetupError::ShortSecret(secret.len()));
        }
        Ok(Some(Self::new(
            DecodingKey::from_secret(&secret),
            Algorithm::HS256,
            rules,
        )))
    }

    fn new(key: DecodingKey, alg: Algorithm, rules: &TokenRules) -> Self {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp"];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 5;
        if rules.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&rules.issuers);
            required.push("iss");
        }
        if rules.audiences.is_empty() {
            // Without a configured audience a token's `aud` is not ours to judge (it used to
            // refuse every token that had one).
            validation.validate_aud = false;
        } else {
            validation.set_audience(&rules.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Authenticator { key, validation }
    }

    /// Checks a subscription token for `channel` on a connection of `user`: signed with the
    /// same key and rules as connection tokens, not expired, its `channel` claim the channel and
    /// its `sub` the connection's user (a connection without a user has no subscription
    /// tokens).
    pub fn verify_subscription(
        &self,
        token: &str,
        channel: &str,
        user: Option<&str>,
    ) -> Result<(), SubscriptionTokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    SubscriptionTokenError::Expired
                }
                _ => SubscriptionTokenError::Invalid(e.to_string()),
            })?
            .claims;
        if claims.channel.as_deref() != Some(channel) {
            return Err(SubscriptionTokenError::OtherChannel);
        }
        match (claims.sub.as_deref(), user) {
            (Some(sub), Some(user)) if sub == user => Ok(()),
            _ => Err(SubscriptionTokenError::OtherUser),
        }
    }

    /// Checks signature, `exp` and claim shapes.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        // A subscription token grants one channel; as a connection token (no `channels`: all
        // of them) it would grant far more than its issuer meant.
        if claims.channel.is_some() {
            return Err(AuthError::Invalid(
                "this is a subscription token (it has a `channel` claim): send it in a subscribe frame"
                    .to_owned(),
            ));
        }
        let info = match claims.info {
            None | Some(serde_json::Value::Null) => None,
            Some(info) => {
                let json = info.to_string();
                if json.len() > MAX_INFO_BYTES {
                    return Err(AuthError::Invalid(format!(
                        "`info` claim is over {MAX_INFO_BYTES} bytes"
                    )));
                }
                Some(json.into_boxed_str())
            }
        };
        Ok(Identity {
            info,
            subject: claims.sub,
            subscribe: claims
                .subscribe
                .or_else(|| claims.channels.clone())
                .map(ChannelPatterns::only)
                .unwrap_or_default(),
            publish: claims
                .publish
                .or(claims.channels)
                .map(ChannelPatterns::only)
                .unwrap_or_default(),
            expires_at: Some(claims.exp),
            token_id: claims.jti,
            issued_at: claims.iat,
        })
    }
}

/// Where a token was found; a subprotocol token must be echoed back in the handshake.
#[derive(Debug, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub subprotocol: Option<String>,
}

/// Finds a token in the header, the `token` query parameter, or the WebSocket subprotocols.
pub fn find_token(headers: &HeaderMap, query_token: Option<&str>) -> Option<FoundToken> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        if let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Some(FoundToken {
                token: token.trim().to_owned(),
                subprotocol: None,
            });
        }
    }
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Some(FoundToken {
            token: token.to_owned(),
            subprotocol: None,
        });
    }
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| {
            p.strip_prefix(SUBPROTOCOL_PREFIX).map(|t| FoundToken {
                token: t.to_owned(),
                subprotocol: Some(p.to_owned()),
            })
        })
}

/// Resolves the identity of a request: anonymous when auth is off.
pub fn authenticate(
    auth: Option<&Authenticator>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(Identity, Option<String>), AuthError> {
    let Some(auth) = auth else {
        return Ok((Identity::anonymous(), None));
    };
    let found = find_token(headers, query_token).ok_or(AuthError::Missing)?;
    let identity = auth.verify(&found.token)?;
    Ok((identity, found.subprotocol))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn sign(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn subscribe_and_publish_claims_replace_channels_for_their_own_action() {
        let secret = "s".repeat(MIN_SECRET_BYTES);
        let auth = Authenticator::from_settings(Some(&secret), None, None, &TokenRules::default())
            .unwrap()
            .unwrap();
        let exp = 4_000_000_000u64;
        let verify = |claims| auth.verify(&sign(&secret, claims)).unwrap();
        // `channels` alone: both actions.
        let id = verify(serde_json::json!({"sub":"ann","exp":exp,"channels":["chat:*"]}));
        assert!(id.may_subscribe("chat:a") && id.may_publish("chat:a"));
        assert!(!id.may_subscribe("news:a") && !id.may_publish("news:a"));
        // `subscribe` replaces it for subscribing; publishing keeps `channels`.
        let id = verify(serde_json::json!({
            "sub":"ann","exp":exp,"channels":["chat:*"],"subscribe":["chat:*","news:*"]
        }));
        assert!(
            id.may_subscribe("news:a") && !id.may_publish("news:a"),
            "read-only"
        );
        assert!(id.may_publish("chat:a"));
        // `publish` alone: subscribing stays open to all.
        let id = verify(serde_json::json!({"sub":"ann","exp":exp,"publish":[]}));
        assert!(id.may_subscribe("anything") && !id.may_publish("anything"));
        // A personal channel is its user's only, whatever the patterns.
        let id = verify(serde_json::json!({"sub":"ann","exp":exp,"subscribe":["chat:*"]}));
        assert!(id.may_subscribe("user:#ann"));
        assert!(!id.may_subscribe("user:#bob"));
        assert!(!Identity::anonymous().may_subscribe("user:#ann"));
        assert!(!Identity::anonymous().may_subscribe("user:#"));
    }

    #[test]
    fn finds_tokens_in_every_place() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(find_token(&h, None).unwrap().token, "abc");
        assert_eq!(find_token(&HeaderMap::new(), Some("q")).unwrap().token, "q");
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat.v1, bearer.xyz"),
        );
        let found = find_token(&h, None).unwrap();
        assert_eq!(found.token, "xyz");
        assert_eq!(found.subprotocol.as_deref(), Some("bearer.xyz"));
        assert!(find_token(&HeaderMap::new(), None).is_none());
    }
}
