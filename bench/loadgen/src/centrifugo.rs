//! Centrifugo's side of the benchmark: its configuration file and the client side of its
//! bidirectional protocol (v2, JSON), written from its protocol description (centrifugal/protocol's
//! `client.proto`): a command is `{"id":N,"<method>":{…}}`, a reply
//! `{"id":N,"<method>":{…}}` or `{"id":N,"error":{…}}`, a push `{"push":{"channel":…,"pub":{…}}}`.
//! One WebSocket frame may carry several of them, one per line. The server's ping is an empty
//! reply `{}`; the client answers it with an empty command `{}`.
//!
//! Connections authenticate the way a production deployment does: an HS256 JWT per connection
//! (claim `sub`, the user id), signed with the `client.token.hmac_secret_key` of the config.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::Payload;

/// The WebSocket path Centrifugo serves its bidirectional protocol on.
pub const WS_PATH: &str = "/connection/websocket";

/// The answer to a server ping (and the ping itself).
pub const PONG: &str = "{}";

/// Mints connection tokens: HS256, one user id per connection.
#[derive(Clone)]
pub struct Auth {
    secret: String,
    key: jsonwebtoken::EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

static NEXT_USER: AtomicU64 = AtomicU64::new(0);

impl Auth {
    pub fn new(secret: &str) -> Auth {
        Auth {
            secret: secret.to_owned(),
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// The HMAC key (handed to the idle scenario's worker processes).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A token for a new user id (`bench-<pid>-<n>`), valid for a day.
    pub fn token(&self) -> String {
        let user = format!(
            "bench-{}-{}",
            std::process::id(),
            NEXT_USER.fetch_add(1, Ordering::Relaxed)
        );
        let claims = Claims {
            sub: &user,
            exp: crate::client::now_micros() / 1_000_000 + 86_400,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.key,
        )
        .expect("HS256 signing cannot fail")
    }
}

/// How one Centrifugo node of the benchmark is configured.
#[derive(Debug, Clone)]
pub struct NodeConfig<'a> {
    pub port: u16,
    pub redis_url: &'a str,
    pub name: &'a str,
    pub secret: &'a str,
    /// Channel history (and forced recovery) in the `bench` namespace.
    pub history: bool,
    pub connection_limit: Option<u64>,
}

/// The config file of one node (Centrifugo v6 layout). The benchmark's channels are
/// `bench:c-N`, i.e. in the `bench` namespace.
pub fn config_json(c: &NodeConfig<'_>) -> serde_json::Value {
    let mut namespace = json!({
        "name": "bench",
        // Subscribing and publishing straight from the client, as chat-node allows; Centrifugo
        // needs both switched on (publishers are not subscribed, so allow_publish_for_subscriber
        // would not do).
        "allow_subscribe_for_client": true,
        "allow_publish_for_client": true,
    });
    if c.history {
        // As chat-node keeps it: 1,000 messages per channel for 24 h; recovery forced on so
        // a resubscribing client gets what it missed, without asking.
        namespace["history_size"] = json!(1000);
        namespace["history_ttl"] = json!("24h");
        namespace["force_recovery"] = json!(true);
    }
    json!({
        "http_server": { "address": "127.0.0.1", "port": c.port },
        "log": { "level": "warn" },
        "node": { "name": c.name },
        "engine": { "type": "redis", "redis": { "address": [c.redis_url] } },
        "client": {
            "token": { "hmac_secret_key": c.secret },
            "connection_limit": c.connection_limit.unwrap_or(0),
        },
        "channel": { "namespaces": [namespace] },
        "health": { "enabled": true },
        // No packet leaves the machine.
        "usage_stats": { "disabled": true },
    })
}

/// A command: `{"id":…,"connect":{"token":…}}`.
pub fn connect_command(id: u32, token: &str) -> String {
    json!({ "id": id, "connect": { "token": token, "name": "chat-loadgen" } }).to_string()
}

/// A command: `{"id":…,"subscribe":{"channel":…}}`.
pub fn subscribe_command(id: u32, channel: &str) -> String {
    json!({ "id": id, "subscribe": { "channel": channel } }).to_string()
}

#[derive(Serialize)]
struct PublishCommand<'a> {
    id: u32,
    publish: PublishRequest<'a>,
}

#[derive(Serialize)]
struct PublishRequest<'a> {
    channel: &'a str,
    data: &'a Payload<'a>,
}

/// A command: `{"id":…,"publish":{"channel":…,"data":…}}`.
pub fn publish_command(id: u32, channel: &str, data: &Payload<'_>) -> String {
    serde_json::to_string(&PublishCommand {
        id,
        publish: PublishRequest { channel, data },
    })
    .expect("serializable")
}

/// An error in a reply.
#[derive(Debug, Deserialize)]
pub struct ReplyError {
    pub code: u32,
    #[serde(default)]
    pub message: String,
}

/// A publication pushed to a subscriber.
#[derive(Debug, Deserialize)]
pub struct Publication<'a> {
    #[serde(borrow)]
    pub data: Payload<'a>,
    /// The stream offset (history on only).
    #[serde(default)]
    pub offset: Option<u64>,
}

/// A push (only publications matter to the benchmark).
#[derive(Debug, Deserialize)]
pub struct Push<'a> {
    #[serde(default)]
    pub channel: Option<&'a str>,
    #[serde(default, rename = "pub", borrow)]
    pub publication: Option<Publication<'a>>,
    #[serde(default)]
    pub disconnect: Option<serde::de::IgnoredAny>,
}

/// The part of a subscribe reply the benchmark checks.
#[derive(Debug, Deserialize)]
pub struct SubscribeResult {
    /// True when the channel keeps history and the subscription can recover from it.
    #[serde(default)]
    pub recoverable: bool,
}

/// One reply or push; the fields the benchmark does not need are ignored.
#[derive(Debug, Deserialize)]
pub struct Reply<'a> {
    #[serde(default)]
    pub id: Option<u32>,
    #[serde(default)]
    pub error: Option<ReplyError>,
    #[serde(default, borrow)]
    pub push: Option<Push<'a>>,
    #[serde(default)]
    pub connect: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub subscribe: Option<SubscribeResult>,
    #[serde(default)]
    pub publish: Option<serde::de::IgnoredAny>,
}

impl Reply<'_> {
    /// The server's ping: an empty reply.
    pub fn is_ping(&self) -> bool {
        self.id.is_none()
            && self.error.is_none()
            && self.push.is_none()
            && self.connect.is_none()
            && self.subscribe.is_none()
            && self.publish.is_none()
    }
}

/// The replies and pushes of one WebSocket text frame (one per line). Lines that do not parse
/// are skipped.
pub fn replies(frame: &str) -> impl Iterator<Item = Reply<'_>> {
    frame
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_frame_of_several_replies() {
        let frame = concat!(
            r#"{"push":{"channel":"bench:c-1","pub":{"data":{"t":42,"text":"x","s":3},"info":{"user":"u","client":"c"},"offset":7}}}"#,
            "\n",
            r#"{"id":5,"publish":{}}"#,
            "\n",
            "{}",
        );
        let r: Vec<Reply<'_>> = replies(frame).collect();
        assert_eq!(r.len(), 3);
        let p = r[0].push.as_ref().unwrap().publication.as_ref().unwrap();
        assert_eq!((p.data.t, p.data.s, p.offset), (42, Some(3), Some(7)));
        assert_eq!(r[1].id, Some(5));
        assert!(r[1].publish.is_some() && !r[1].is_ping());
        assert!(r[2].is_ping());
    }

    #[test]
    fn reads_an_error_reply() {
        let r: Vec<Reply<'_>> =
            replies(r#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#).collect();
        assert_eq!(r[0].error.as_ref().unwrap().code, 103);
        let r: Vec<Reply<'_>> = replies(
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"abc","offset":0,"positioned":true}}"#,
        )
        .collect();
        assert!(r[0].subscribe.as_ref().unwrap().recoverable);
    }

    #[test]
    fn writes_commands() {
        let data = Payload {
            t: 7,
            text: "x",
            s: Some(1),
        };
        assert_eq!(
            publish_command(3, "bench:c-0", &data),
            r#"{"id":3,"publish":{"channel":"bench:c-0","data":{"t":7,"text":"x","s":1}}}"#
        );
        assert_eq!(
            subscribe_command(2, "bench:c-0"),
            r#"{"id":2,"subscribe":{"channel":"bench:c-0"}}"#
        );
    }

    #[test]
    fn signs_hs256_tokens_the_server_can_check() {
        let token = Auth::new("secret").token();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &v,
        )
        .unwrap();
        assert!(d.claims["sub"].as_str().unwrap().starts_with("bench-"));
    }

    #[test]
    fn config_turns_history_on_in_the_namespace() {
        let c = NodeConfig {
            port: 1,
            redis_url: "redis://127.0.0.1:2",
            name: "n",
            secret: "s",
            history: true,
            connection_limit: Some(10),
        };
        let v = config_json(&c);
        let ns = &v["channel"]["namespaces"][0];
        assert_eq!(ns["history_size"], 1000);
        assert_eq!(ns["force_recovery"], true);
        assert_eq!(v["client"]["connection_limit"], 10);
        assert_eq!(v["usage_stats"]["disabled"], true);
        let off = config_json(&NodeConfig {
            history: false,
            ..c
        });
        assert!(
            off["channel"]["namespaces"][0]
                .get("history_size")
                .is_none()
        );
    }
}
